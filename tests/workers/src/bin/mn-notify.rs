//! Test worker for readiness: sends `READY=1` to `$NOTIFY_SOCKET` after a delay, or never.
//!
//! Usage: `mn-notify <ready-after-ms> [<never-from-generation>]`. From generation
//! `<never-from-generation>` on (`MULTINODE_GENERATION`), it never sends `READY=1`.
//!
//! Its lines go to stderr, the stream multinode prints its own events on, so that their order
//! relative to multinode's `ready` event is kept in the supervisor's output:
//!
//! - `mn-notify pid=P generation=G notify=PATH` at start;
//! - `mn-notify pid=P sending READY=1` right before the datagram is sent (so any `ready` event
//!   multinode prints because of it comes after this line);
//! - `mn-notify pid=P will never send READY=1` instead, when it never will.
//!
//! Then it sleeps until killed (the stop signal's default action ends it).

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

fn main() {
    let mut args = std::env::args().skip(1);
    let after_ms: u64 = args
        .next()
        .and_then(|a| a.parse().ok())
        .expect("usage: mn-notify <ready-after-ms> [<never-from-generation>]");
    let never_from: Option<u64> = args.next().and_then(|a| a.parse().ok());
    let generation: u64 = std::env::var("MULTINODE_GENERATION")
        .ok()
        .and_then(|g| g.parse().ok())
        .unwrap_or(0);
    let notify = std::env::var("NOTIFY_SOCKET").unwrap_or_default();
    let pid = std::process::id();
    eprintln!("mn-notify pid={pid} generation={generation} notify={notify}");
    if never_from.is_some_and(|g| generation >= g) {
        eprintln!("mn-notify pid={pid} will never send READY=1");
    } else {
        std::thread::sleep(Duration::from_millis(after_ms));
        eprintln!("mn-notify pid={pid} sending READY=1");
        let sock = UnixDatagram::unbound().expect("a datagram socket");
        if let Err(e) = sock.send_to(b"READY=1", &notify) {
            eprintln!("mn-notify pid={pid} cannot send READY=1 to {notify:?}: {e}");
        }
    }
    loop {
        std::thread::park();
    }
}
