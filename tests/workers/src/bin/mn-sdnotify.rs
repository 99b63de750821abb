//! Interop worker: a program written for systemd, using only the `sd-notify` crate. It takes
//! its socket with `sd_notify::listen_fds_with_names()` (which, like sd_listen_fds(3), ignores
//! the fds unless LISTEN_PID is its own pid), prepares for a while, then reports
//! `STATUS=` and `READY=1` on NOTIFY_SOCKET and answers HTTP requests with
//! `sdnotify pid=P name=NAME`.
//!
//! Usage: `mn-sdnotify [--delay MS] [--gate PATH]`: before READY=1, wait until the file
//! PATH exists (when given), then sleep MS milliseconds (default 1000).

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::time::Duration;

use sd_notify::NotifyState;

fn main() {
    let mut delay = Duration::from_millis(1000);
    let mut gate = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--delay" => {
                let ms: u64 = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .expect("--delay MS");
                delay = Duration::from_millis(ms);
            }
            "--gate" => gate = Some(std::path::PathBuf::from(args.next().expect("--gate PATH"))),
            other => panic!("mn-sdnotify: unknown argument {other}"),
        }
    }
    let mut fds = sd_notify::listen_fds_with_names().expect("listen_fds_with_names");
    let Some((fd, name)) = fds.next() else {
        eprintln!("mn-sdnotify: no sockets (LISTEN_PID is not our pid, or LISTEN_FDS unset)");
        std::process::exit(2);
    };
    // SAFETY: sd_notify validated LISTEN_PID/LISTEN_FDS; fd 3 is ours and nothing else owns it.
    let listener = unsafe { std::net::TcpListener::from_raw_fd(fd) };
    let pid = std::process::id();
    println!("mn-sdnotify pid={pid} got {name} (fd {fd}); preparing");
    let _ = std::io::stdout().flush();
    if let Some(gate) = gate {
        while !gate.exists() {
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    std::thread::sleep(delay);
    sd_notify::notify(&[
        NotifyState::Status("serving from sd-notify"),
        NotifyState::Ready,
    ])
    .expect("sd_notify READY=1");
    println!("mn-sdnotify pid={pid} sent READY=1");
    let _ = std::io::stdout().flush();
    for mut c in listener.incoming().flatten() {
        let mut buf = [0u8; 2048];
        let _ = c.read(&mut buf);
        let body = format!("sdnotify pid={pid} name={name}\n");
        let _ = write!(
            c,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
