//! `control`: the control socket's protocol (`src/control/protocol.rs`). The supervisor reads
//! a request line from any local user who can connect (`src/control/server.rs`: up to the
//! first newline, at most `MAX_REQUEST` bytes, parsed before the peer's rights are looked
//! at); `multinode status|reload|scale|stop` read the reply line (`src/control/mod.rs`,
//! `client.rs`).
//!
//! A request that parses serializes to one line that parses back to it; one that does not
//! is answered with a `failed` reply that is one line and parses back. A reply that parses
//! serializes to one line that parses back to the same reply.

use crate::control_protocol::{MAX_REQUEST, Reply, Request};

pub fn check(data: &[u8]) {
    let line = data.split(|&b| b == b'\n').next().unwrap_or_default();
    if line.len() <= MAX_REQUEST {
        request(line);
    }
    // The client reads a line into a String: it must be UTF-8.
    if let Ok(text) = std::str::from_utf8(data) {
        reply(text.split('\n').next().unwrap_or_default());
    }
}

fn request(line: &[u8]) {
    match serde_json::from_slice::<Request>(line) {
        Ok(req) => {
            let text = serde_json::to_vec(&req).expect("a request serializes");
            assert!(!text.contains(&b'\n'));
            let back: Request = serde_json::from_slice(&text).expect("and parses back");
            assert_eq!(back, req);
        }
        Err(e) => {
            // What the server answers (server.rs).
            reply_round_trip(&Reply::failed(format!("not a valid request: {e}")));
        }
    }
}

fn reply(line: &str) {
    if let Ok(reply) = serde_json::from_str::<Reply>(line) {
        reply_round_trip(&reply);
    }
}

fn reply_round_trip(reply: &Reply) {
    let text = serde_json::to_string(reply).expect("a reply serializes");
    assert!(!text.contains('\n'), "{text}");
    let back: Reply = serde_json::from_str(&text).expect("and parses back");
    assert_eq!(&back, reply, "{text}");
}
