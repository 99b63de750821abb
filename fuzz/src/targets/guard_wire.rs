//! `guard_wire`: the guard's protocol (`src/guard/wire.rs`). The guard keeps root's rights
//! and reads requests from the supervisor, which runs as the workers' user once it has
//! dropped them: the stream is as trusted as the least trusted of those.
//!
//! The input is a stream of frames, read in chunks of a size the first byte picks. The frames
//! (and the error that ends the stream, a frame announced larger than the maximum) are the
//! same however the stream is cut; none is larger than the maximum. A request or reply that
//! decodes encodes back to its frame's bytes; a path request names an absolute path without
//! NUL.

use std::os::unix::ffi::OsStrExt;

use crate::guard_wire::{Decoder, MAX_CONFIG, MAX_REQUEST, Reply, Request};

type Frames = (Vec<(u8, Vec<u8>)>, Option<String>);

pub fn check(data: &[u8]) {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut % 64) + 1;
    for max in [MAX_REQUEST, MAX_CONFIG, 16] {
        let whole = frames(stream, stream.len().max(1), max);
        assert_eq!(frames(stream, chunk, max), whole, "in chunks of {chunk}");
        assert_eq!(frames(stream, 1, max), whole, "a byte at a time");
        for (tag, payload) in &whole.0 {
            assert!(payload.len() <= max);
            if max == MAX_REQUEST {
                request(*tag, payload);
            } else if max == MAX_CONFIG {
                reply(*tag, payload);
            }
        }
    }
}

/// The frames of `stream` pushed `chunk` bytes at a time, and the error that ended it.
fn frames(stream: &[u8], chunk: usize, max: usize) -> Frames {
    let mut d = Decoder::new(max);
    let mut out = Vec::new();
    for piece in stream.chunks(chunk) {
        d.push(piece);
        loop {
            match d.next_frame() {
                Ok(Some(frame)) => out.push(frame),
                Ok(None) => break,
                Err(e) => return (out, Some(e)),
            }
        }
    }
    (out, None)
}

fn request(tag: u8, payload: &[u8]) {
    let Ok(req) = Request::decode(tag, payload) else {
        return;
    };
    if let Request::SocketFile(p) | Request::Dir(p) | Request::Cgroup(p) = &req {
        let bytes = p.as_os_str().as_bytes();
        assert!(
            bytes.starts_with(b"/") && !bytes.contains(&0),
            "{}",
            p.display()
        );
    }
    let mut out = Vec::new();
    req.encode(&mut out);
    assert_eq!(out, framed(tag, payload), "{req:?}");
}

fn reply(tag: u8, payload: &[u8]) {
    let Ok(rep) = Reply::decode(tag, payload) else {
        return;
    };
    let mut out = Vec::new();
    rep.encode(&mut out);
    match rep {
        // An error's text is read lossily: it encodes back as what was understood.
        Reply::ConfigError(text) if std::str::from_utf8(payload).is_err() => {
            assert_eq!(out, framed(tag, text.as_bytes()));
        }
        _ => assert_eq!(out, framed(tag, payload)),
    }
}

fn framed(tag: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![tag];
    f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    f.extend_from_slice(payload);
    f
}
