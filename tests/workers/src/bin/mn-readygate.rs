//! Test worker whose readiness the test controls: it waits until the file `$MN_GATE` (with
//! `{id}` replaced by its MULTINODE_WORKER_ID and `{gen}` by its MULTINODE_GENERATION) exists, then sends `STATUS=gate open` and
//! `READY=1` to NOTIFY_SOCKET, and serves `gate pid=P` over HTTP on every inherited TCP socket
//! until it is killed (SIGTERM's default action ends it).
//!
//! Under `multinode serve --ready notify`, a slot whose gate file is missing stays `starting`.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

fn main() {
    let id = std::env::var("MULTINODE_WORKER_ID").unwrap_or_else(|_| "-".into());
    let generation = std::env::var("MULTINODE_GENERATION").unwrap_or_else(|_| "-".into());
    let Ok(template) = std::env::var("MN_GATE") else {
        eprintln!(
            "mn-readygate: set MN_GATE to the gate file's path ({{id}}: worker id, {{gen}}: generation)"
        );
        std::process::exit(2);
    };
    let gate = PathBuf::from(template.replace("{id}", &id).replace("{gen}", &generation));
    // Take the sockets first: the SDK checks LISTEN_PID before anything else can change.
    let listeners = multinode_worker::listeners().expect("listeners()");
    println!("gate: worker {id} waiting for {}", gate.display());
    while !gate.exists() {
        std::thread::sleep(Duration::from_millis(10));
    }
    multinode_worker::status("gate open").expect("STATUS=");
    multinode_worker::ready().expect("READY=1");
    println!("gate: worker {id} open");
    let _ = std::io::stdout().flush();
    let mut threads = Vec::new();
    for (_, l) in listeners {
        if let multinode_worker::Listener::Tcp(t) = l {
            threads.push(std::thread::spawn(move || {
                for mut c in t.incoming().flatten() {
                    // The whole request head: closing with unread data would reset the
                    // connection before the client read the answer.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let body = format!("gate pid={}\n", std::process::id());
                    let _ = write!(
                        c,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                }
            }));
        }
    }
    for t in threads {
        let _ = t.join();
    }
    loop {
        std::thread::park();
    }
}
