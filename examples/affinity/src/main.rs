//! affinity: route requests by client IP, so per-client state can live in a
//! worker's memory. The multinode port of the "Using NodeJS to route
//! requests" example (master.js / worker.js) from the Yahoo! Mail team's
//! 2010 article "Multi-Core HTTP Server with NodeJS".
//!
//! Run: cargo build --release --workspace && multinode serve --route ip-hash --workers 5 -l 127.0.0.1:8080 -- ./target/release/affinity
//!
//! In the article, master.js accepts every connection, hashes the client's
//! address to pick one of its workers and passes the socket to it; each
//! worker.js answers with its pid and request count. Here multinode is
//! master.js (`--route ip-hash`: it accepts, hashes, and passes the socket
//! with SCM_RIGHTS) and this program is worker.js: it reads the connections
//! from its route channel through the multinode-worker SDK and answers every
//! request (any method, any path) with `200 OK` and
//!
//! ```text
//! process=<pid>; reqno=<n>; client=<ip>; visits=<v>
//! ```
//!
//! `reqno` counts this process's requests; `visits` counts this client's
//! requests *as this process has seen them*, in an in-memory map that is
//! never shared with the other workers. That is what affinity is for:
//! under `--route ip-hash` a client always reaches the same worker, so
//! `visits` climbs 1, 2, 3, … across connections. Start it with
//! `--route round-robin` (or without `--route`: the kernel balances) and
//! the same client's visits are spread over all workers and restart at 1
//! on each. With `--proxy-protocol` the client is the one the PROXY header
//! names, so affinity survives a load balancer in front.
//!
//! The map forgets an arbitrary client once it holds 100 000, and it is
//! lost when the worker restarts or a reload replaces it (rendezvous
//! hashing then sends each client to the same slot's new worker).
//!
//! Standalone (no inherited sockets): `affinity [ADDR]` binds ADDR, default
//! `127.0.0.1:8080` (one process: every client has affinity to it).
//!
//! HTTP/1.1 with keep-alive, one thread per connection; bodies with
//! `Content-Length` are read and dropped, chunked ones get `501` and the
//! connection closes (requests are read and parsed by the `mini-http` crate,
//! examples/http; a malformed one gets its status and the connection closes). SIGTERM (how multinode drains a worker) or SIGINT:
//! stop accepting (after taking the connections already routed here),
//! finish the requests in flight, close idle connections, exit 0.
//!
//! Under `multinode serve --watchdog D` it sends `WATCHDOG=1` every D/2
//! from its accept loops, which wait for a connection at most until the
//! next ping is due (`Listener::accept_timeout`), so an idle worker pings
//! too and a stuck loop does not. Without a watchdog they wait as before.

use std::collections::HashMap;
use std::error::Error;
use std::io::{self, Write};
use std::net::Shutdown;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use mini_http::{Input, parse_head, reason};
use multinode_worker::{Accepted, Connection, Listener, PeerAddr, Stop, Watchdog};

const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// How long a keep-alive connection may stay silent.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new connection may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Clients remembered at most.
const MAX_CLIENTS: usize = 100_000;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("affinity: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), Box<dyn Error>> {
    // First, while this is the only thread: listeners() edits the environment.
    let mut inherited = multinode_worker::listeners()?;
    // Also before any thread: it removes WATCHDOG_USEC and WATCHDOG_PID.
    let watchdog = Watchdog::from_env()?;
    let stop = multinode_worker::catch_stop_signals()?;
    let sockets: Vec<Listener> = if inherited.is_empty() {
        let addr = std::env::args().nth(1);
        let addr = addr.as_deref().unwrap_or(DEFAULT_ADDR);
        let l = inherited
            .listener_or_bind("http", addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        vec![l]
    } else {
        // Route channels under --route, listening sockets otherwise.
        inherited.into_iter().map(|(_, l)| l).collect()
    };

    let worker = Arc::new(Worker {
        pid: std::process::id(),
        stop,
        watchdog,
        reqno: AtomicU64::new(0),
        visits: Mutex::new(HashMap::new()),
        open: Mutex::new(Open::default()),
        closed: Condvar::new(),
    });
    let routed = sockets.iter().any(|l| matches!(l, Listener::Routed(_)));
    println!(
        "affinity: pid {} serving {} socket(s){}",
        worker.pid,
        sockets.len(),
        if routed {
            " (routed by the supervisor)"
        } else {
            ""
        }
    );

    let mut acceptors = Vec::new();
    for listener in sockets {
        let worker = Arc::clone(&worker);
        acceptors.push(thread::spawn(move || worker.accept_loop(&listener)));
    }
    let _ = multinode_worker::ready();
    worker.stop.wait();
    let _ = multinode_worker::stopping();
    for a in acceptors {
        let _ = a.join();
    }
    worker.drain();
    Ok(())
}

struct Worker {
    pid: u32,
    stop: Stop,
    /// `--watchdog`: pinged by the accept loops.
    watchdog: Option<Watchdog>,
    /// This process's requests.
    reqno: AtomicU64,
    /// Requests per client address: the state affinity keeps in one place.
    visits: Mutex<HashMap<String, u64>>,
    open: Mutex<Open>,
    /// Signalled whenever a connection closes.
    closed: Condvar,
}

/// The open connections, so a drain can end the idle ones.
#[derive(Default)]
struct Open {
    next_id: u64,
    /// A second handle (for shutdown) and whether it waits for a request.
    conns: HashMap<u64, (Option<Connection>, bool)>,
}

/// What became of a request.
enum Next {
    KeepAlive,
    Close,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Worker {
    fn accept_loop(self: &Arc<Self>, listener: &Listener) {
        loop {
            match self.accept(listener) {
                Ok(Some(accepted)) => {
                    let client = match &accepted.peer {
                        PeerAddr::Tcp(a) => a.ip().to_canonical().to_string(),
                        other => other.to_string(),
                    };
                    let conn = accepted.conn;
                    // Registered before the accept loop can return, so the
                    // drain sees every connection.
                    let id = self.track(&conn);
                    let worker = Arc::clone(self);
                    let spawned =
                        thread::Builder::new().spawn(move || worker.serve(id, conn, &client));
                    if let Err(e) = spawned {
                        eprintln!("affinity: cannot start a connection thread: {e}");
                        self.untrack(id);
                    }
                }
                Ok(None) => {
                    if !self.stop.is_requested() {
                        // A route channel the supervisor closed: it is gone.
                        self.stop.request();
                    }
                    return;
                }
                // Time for the watchdog's next ping.
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) => {
                    // Out of fds or threads for a moment, or a bad message
                    // on the route channel: say so, and go on.
                    eprintln!("affinity: accept: {e}");
                    thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    /// The next connection, or `None` on a stop (or a closed channel). With
    /// a watchdog, this is where it is pinged, every half interval: the
    /// accept gives up (`TimedOut`) when the next ping is due.
    fn accept(&self, listener: &Listener) -> io::Result<Option<Accepted>> {
        let Some(w) = &self.watchdog else {
            return listener.accept_until(&self.stop);
        };
        if let Err(e) = w.ping_if_due() {
            eprintln!("affinity: watchdog: {e}");
        }
        listener.accept_timeout(&self.stop, w.due_in())
    }

    fn track(&self, conn: &Connection) -> u64 {
        let handle = conn.try_clone().ok();
        let mut open = lock(&self.open);
        let id = open.next_id;
        open.next_id += 1;
        // Not idle: its first request is on the way.
        open.conns.insert(id, (handle, false));
        id
    }

    fn untrack(&self, id: u64) {
        lock(&self.open).conns.remove(&id);
        self.closed.notify_all();
    }

    /// Marks the connection idle (waiting for its next request) or busy.
    /// False once a stop is requested: an idle connection then closes.
    fn set_idle(&self, id: u64, idle: bool) -> bool {
        let mut open = lock(&self.open);
        if idle && self.stop.is_requested() {
            return false;
        }
        if let Some(c) = open.conns.get_mut(&id) {
            c.1 = idle;
        }
        true
    }

    /// After a stop: ends idle connections (shutting their read side wakes
    /// the thread blocked reading) and waits until every connection closes.
    /// Busy ones close after their response, which says `Connection: close`.
    fn drain(&self) {
        let mut open = lock(&self.open);
        while !open.conns.is_empty() {
            for (handle, idle) in open.conns.values_mut() {
                if *idle && let Some(h) = handle.take() {
                    let _ = h.shutdown(Shutdown::Read);
                }
            }
            open = self.closed.wait(open).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn serve(&self, id: u64, conn: Connection, client: &str) {
        let mut input = Input::new(&conn);
        let mut first = true;
        loop {
            let timeout = if first {
                FIRST_REQUEST_TIMEOUT
            } else {
                IDLE_TIMEOUT
            };
            let _ = conn.set_read_timeout(Some(timeout));
            if !first && input.buffered().is_empty() && !self.set_idle(id, true) {
                break;
            }
            let head = input.read_head();
            self.set_idle(id, false);
            first = false;
            match head {
                // A head larger than mini_http::MAX_HEAD: close.
                Ok(None) | Err(_) => break,
                Ok(Some(n)) => match self.answer(&mut input, n, client) {
                    Ok(Next::KeepAlive) => {}
                    Ok(Next::Close) | Err(_) => break,
                },
            }
        }
        drop(conn);
        self.untrack(id);
    }

    /// Answers the request whose head is the first `head_len` bytes buffered.
    fn answer(
        &self,
        input: &mut Input<&Connection>,
        head_len: usize,
        client: &str,
    ) -> io::Result<Next> {
        let conn = *input.get_ref();
        let parsed = parse_head(&input.buffered()[..head_len]);
        input.consume(head_len);
        let req = match parsed {
            Ok(req) => req,
            Err((status, why)) => return respond(conn, status, &format!("{why}\n"), false, false),
        };
        if req.chunked {
            return respond(conn, 501, "chunked bodies\n", false, false);
        }
        let http11 = req.minor == 1;
        let keep = !req.close && (http11 || req.keep_alive);
        if let Some(length) = req.content_length {
            input.discard(length)?;
        }

        let reqno = self.reqno.fetch_add(1, Ordering::SeqCst) + 1;
        let visits = self.visit(client);
        let body = format!(
            "process={}; reqno={reqno}; client={client}; visits={visits}\n",
            self.pid
        );
        let keep = keep && !self.stop.is_requested();
        respond(conn, 200, &body, keep, !http11)
    }

    /// Counts a request of `client`; its count so far.
    fn visit(&self, client: &str) -> u64 {
        let mut visits = lock(&self.visits);
        if visits.len() >= MAX_CLIENTS && !visits.contains_key(client) {
            let forget = visits.keys().next().cloned();
            if let Some(k) = forget {
                visits.remove(&k);
            }
        }
        let n = visits.entry(client.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
}

/// Sends a response, in one write (two small writes would meet Nagle's
/// algorithm and delayed ACKs). `keep`: the connection stays open for the
/// next request; `http10`: the request was HTTP/1.0, which keeps it open
/// only when the response says so.
fn respond(
    mut conn: &Connection,
    status: u16,
    body: &str,
    keep: bool,
    http10: bool,
) -> io::Result<Next> {
    let connection = match (keep, http10) {
        (false, _) => "Connection: close\r\n",
        (true, true) => "Connection: keep-alive\r\n",
        (true, false) => "",
    };
    let out = format!(
        "HTTP/1.1 {status} {}\r\n{connection}Content-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n\r\n{body}",
        reason(status),
        body.len()
    );
    conn.write_all(out.as_bytes())?;
    Ok(if keep { Next::KeepAlive } else { Next::Close })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::os::unix::net::UnixStream;

    fn worker() -> Arc<Worker> {
        Arc::new(Worker {
            pid: 42,
            stop: multinode_worker::catch_stop_signals().unwrap(),
            watchdog: None,
            reqno: AtomicU64::new(0),
            visits: Mutex::new(HashMap::new()),
            open: Mutex::new(Open::default()),
            closed: Condvar::new(),
        })
    }

    #[test]
    fn counts_visits_per_client_and_stays_bounded() {
        let w = worker();
        assert_eq!(w.visit("192.0.2.1"), 1);
        assert_eq!(w.visit("192.0.2.2"), 1);
        assert_eq!(w.visit("192.0.2.1"), 2);
        for i in 0..MAX_CLIENTS + 10 {
            w.visit(&format!("c{i}"));
        }
        assert_eq!(lock(&w.visits).len(), MAX_CLIENTS);
    }

    /// Sends `requests` on one connection served by `w`; everything it
    /// answered until it closed.
    fn exchange(w: &Arc<Worker>, requests: &str) -> String {
        let (mut client, server) = UnixStream::pair().unwrap();
        let conn = Connection::from(server);
        let id = w.track(&conn);
        let server = {
            let w = Arc::clone(w);
            thread::spawn(move || w.serve(id, conn, "198.51.100.7"))
        };
        client.write_all(requests.as_bytes()).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        let mut out = String::new();
        client.read_to_string(&mut out).unwrap();
        server.join().unwrap();
        out
    }

    #[test]
    fn answers_with_pid_reqno_client_and_visits() {
        let w = worker();
        let out = exchange(
            &w,
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
             GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        let bodies: Vec<&str> = out.lines().filter(|l| l.starts_with("process=")).collect();
        assert_eq!(
            bodies,
            [
                "process=42; reqno=1; client=198.51.100.7; visits=1",
                "process=42; reqno=2; client=198.51.100.7; visits=2",
                "process=42; reqno=3; client=198.51.100.7; visits=3",
            ],
            "{out}"
        );
        assert_eq!(out.matches("Connection: close").count(), 1, "{out}");

        let out = exchange(&w, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        assert!(out.contains("Connection: keep-alive\r\n"), "{out}");
        assert!(out.contains("visits=4"), "{out}");
        assert!(lock(&w.open).conns.is_empty(), "connections untracked");
    }

    #[test]
    fn rejects_what_it_does_not_serve() {
        let w = worker();
        for (req, status) in [
            ("GET /\r\n\r\n", "400"),
            ("GET / HTTP/2.0\r\n\r\n", "505"),
            ("GET / HTTP/1.1\r\nNoColon\r\n\r\n", "400"),
            ("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "400"),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "501",
            ),
        ] {
            let out = exchange(&w, req);
            assert!(
                out.starts_with(&format!("HTTP/1.1 {status} ")),
                "{req:?}: {out}"
            );
            assert!(out.contains("Connection: close\r\n"), "{req:?}: {out}");
        }
    }
}
