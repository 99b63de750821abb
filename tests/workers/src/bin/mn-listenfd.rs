//! Interop worker: takes its socket through the `listenfd` crate (a program written for
//! `systemfd`/systemd socket activation, knowing nothing of multinode) and answers every
//! HTTP request with `listenfd pid=P`.

use std::io::{Read, Write};

fn main() {
    let mut fds = listenfd::ListenFd::from_env();
    let listener = match fds.take_tcp_listener(0) {
        Ok(Some(l)) => l,
        Ok(None) => {
            eprintln!("mn-listenfd: no socket at fd 3 (LISTEN_FDS/LISTEN_PID not for us)");
            std::process::exit(2);
        }
        Err(e) => {
            eprintln!("mn-listenfd: fd 3 is not a TCP listener: {e}");
            std::process::exit(2);
        }
    };
    let addr = listener.local_addr().map(|a| a.to_string());
    println!(
        "mn-listenfd pid={} serving {}",
        std::process::id(),
        addr.unwrap_or_else(|e| e.to_string())
    );
    let _ = std::io::stdout().flush();
    for mut c in listener.incoming().flatten() {
        // One small request per connection; read its head and answer.
        let mut buf = [0u8; 2048];
        let _ = c.read(&mut buf);
        let body = format!("listenfd pid={}\n", std::process::id());
        let _ = write!(
            c,
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        );
    }
}
