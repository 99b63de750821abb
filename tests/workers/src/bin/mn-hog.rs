//! Test worker for `--max-memory`: an HTTP server that allocates memory when asked.
//!
//! It serves the first inherited TCP socket through the SDK, one request per connection
//! (answered with `Connection: close`), a thread per connection. `GET /grow/<MiB>` allocates
//! `<MiB>` MiB, writes every page of it (so it is resident) and keeps it until the process
//! ends. Every answer is `200` with `process=<pid>; worker=<slot>; held=<MiB held>`. Sends
//! `READY=1` once serving; on SIGTERM stops accepting, finishes the requests in flight and
//! exits 0.

use std::io::{ErrorKind, Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use multinode_worker::{Connection, Listener};

/// What /grow allocated, kept for the life of the process.
static HELD: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

fn main() {
    let mut inherited = multinode_worker::listeners().expect("listeners()");
    let stop = multinode_worker::catch_stop_signals().expect("signal handlers");
    let listener = Listener::from(
        inherited
            .tcp_or_bind("http", "127.0.0.1:0")
            .expect("a TCP socket"),
    );
    let slot = std::env::var("MULTINODE_WORKER_ID").unwrap_or_else(|_| "-".into());
    println!("mn-hog pid={} slot={slot}", std::process::id());
    multinode_worker::ready().expect("READY=1");
    let in_flight = Arc::new(AtomicUsize::new(0));
    loop {
        match listener.accept_until(&stop) {
            Ok(Some(a)) => {
                in_flight.fetch_add(1, Ordering::SeqCst);
                let (in_flight, slot) = (Arc::clone(&in_flight), slot.clone());
                std::thread::spawn(move || {
                    serve(a.conn, &slot);
                    in_flight.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Ok(None) => break,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("accept: {e}"),
        }
    }
    while in_flight.load(Ordering::SeqCst) > 0 {
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn serve(mut conn: Connection, slot: &str) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut head = Vec::new();
    let mut buf = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let target = line.split_whitespace().nth(1).unwrap_or("/");
    let mut held = HELD.lock().unwrap();
    if let Some(mib) = target
        .strip_prefix("/grow/")
        .and_then(|n| n.parse::<usize>().ok())
    {
        // vec![1; n] writes every byte: the pages are resident, not just reserved.
        held.push(vec![1u8; mib << 20]);
    }
    let mib: usize = held.iter().map(|v| v.len() >> 20).sum();
    drop(held);
    let body = format!(
        "process={}; worker={slot}; held={mib}\n",
        std::process::id()
    );
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
