//! Test worker wrapper: `mn-gate DIR PROGRAM [ARGS...]` lets a test decide when a slot's
//! worker becomes ready (run multinode with `--ready notify`).
//!
//! While `DIR/hold.<MULTINODE_WORKER_ID>` exists it waits; then it sends `READY=1` to
//! NOTIFY_SOCKET and execs PROGRAM. The exec keeps the pid (so LISTEN_PID stays right) and the
//! inherited fds (the listening sockets or route channels at 3..), so PROGRAM serves as if
//! multinode had started it directly.

use std::os::unix::net::UnixDatagram;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

fn main() {
    let mut args = std::env::args_os().skip(1);
    let (Some(dir), Some(program)) = (args.next(), args.next()) else {
        eprintln!("usage: mn-gate DIR PROGRAM [ARGS...]");
        std::process::exit(2);
    };
    let slot = std::env::var("MULTINODE_WORKER_ID").unwrap_or_else(|_| "-".into());
    let hold = PathBuf::from(dir).join(format!("hold.{slot}"));
    if hold.exists() {
        println!("mn-gate: holding until {} is removed", hold.display());
        while hold.exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if let Some(path) = std::env::var_os("NOTIFY_SOCKET") {
        let sock = UnixDatagram::unbound().expect("a datagram socket");
        sock.send_to(b"READY=1", &path).expect("send READY=1");
    }
    let err = Command::new(&program).args(args).exec();
    eprintln!("mn-gate: cannot exec {}: {err}", program.to_string_lossy());
    std::process::exit(127);
}
