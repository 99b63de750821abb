//! Test worker: writes long lines to stdout as fast as the pipe takes them, then exits 0.
//!
//! `mn-spew COUNT LEN...`: COUNT lines, their lengths cycling through LEN..., each made of one
//! character repeated: `A` + MULTINODE_WORKER_ID (so every worker's lines are told apart), and
//! each written with a single write(2) of the line and its newline (larger than PIPE_BUF, so
//! the kernel may hand it to the reader in pieces).

use std::fs::File;
use std::io::Write;
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

fn main() {
    let mut args = std::env::args().skip(1);
    let count: usize = args.next().and_then(|a| a.parse().ok()).expect("COUNT");
    let lens: Vec<usize> = args.map(|a| a.parse().expect("LEN")).collect();
    assert!(!lens.is_empty(), "usage: mn-spew COUNT LEN...");
    let id: u8 = std::env::var("MULTINODE_WORKER_ID")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ch = b'A' + id % 26;
    // fd 1 unbuffered: a blocking write(2) to a pipe writes it all at once.
    // SAFETY: fd 1 is open for the life of the process; ManuallyDrop never closes it.
    let mut out = ManuallyDrop::new(unsafe { File::from_raw_fd(1) });
    for i in 0..count {
        let mut line = vec![ch; lens[i % lens.len()]];
        line.push(b'\n');
        out.write_all(&line).expect("write to stdout");
    }
}
