//! Test worker: floods `$NOTIFY_SOCKET` with sd_notify datagrams, then idles.
//!
//! `mn-flood SECONDS`: sends `READY=1`, waits a second, then for SECONDS sends datagrams as fast as the socket
//! takes them (blocking sends: each waits only for room in the supervisor's receive buffer),
//! each a few KiB of `STATUS=` text with more assignments after it. Then prints
//! `mn-flood sent N` on stdout and sleeps until killed.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

fn main() {
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .expect("usage: mn-flood SECONDS");
    let path = std::env::var("NOTIFY_SOCKET").expect("NOTIFY_SOCKET");
    let sock = UnixDatagram::unbound().expect("a datagram socket");
    sock.send_to(b"READY=1\n", &path).expect("send READY=1");
    std::thread::sleep(Duration::from_secs(1));
    let pad = "x".repeat(3000);
    let end = Instant::now() + Duration::from_secs(secs);
    let mut sent: u64 = 0;
    while Instant::now() < end {
        let msg = format!("STATUS=flood {sent} {pad}\nREADY=1\nWATCHDOG=1\nX_{sent}=y\n");
        if sock.send_to(msg.as_bytes(), &path).is_ok() {
            sent += 1;
        }
    }
    println!("mn-flood sent {sent}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
