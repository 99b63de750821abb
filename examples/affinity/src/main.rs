//! affinity: route requests by client IP, so per-client state can live in a
//! worker's memory. The multinode port of the "Using NodeJS to route
//! requests" example (master.js / worker.js) from the Yahoo! Mail team's
//! 2010 article "Multi-Core HTTP Server with NodeJS".
//!
//! Run: cargo build --release --workspace && multinode serve --route ip-hash --workers 5 -l 127.0.0.1:8080 -- ./target/release/affinity
//!
//! In the article, master.js accepts every connection, counts it
//! (`++numReqs`), hashes the client's address to pick one of its workers
//! and passes the socket to it together with that count; each worker.js
//! answers with its pid and the count it was handed. Here multinode is
//! master.js (`--route ip-hash`: it accepts, numbers, hashes, and passes
//! the socket with SCM_RIGHTS) and this program is worker.js: it reads the
//! connections from its route channel through the multinode-worker SDK and
//! answers every request (any method, any path) with `200 OK` and
//!
//! ```text
//! process=<pid>; reqno=<n>; client=<ip>; visits=<v>
//! ```
//!
//! `reqno` is the supervisor's number of the connection that carried the
//! request ([`Accepted::seq`], master.js's `numReqs`): global, counted by
//! multinode across all workers and generations from 1, in the order it
//! accepted the connections, so no two connections get the same one. The
//! requests of one kept-alive connection share it. Standalone, or on a
//! plain listening socket (multinode without `--route`, systemd), there is
//! no supervisor's number: `reqno` then counts the connections this
//! process accepted, from 1, and is unique only within the process.
//!
//! `visits` counts this client's requests *as this process has seen them*,
//! in an in-memory map that is never shared with the other workers. That
//! is what affinity is for: under `--route ip-hash` a client always reaches
//! the same worker, so `visits` climbs 1, 2, 3, … across connections. Start
//! it with `--route round-robin` (or without `--route`: the kernel
//! balances) and the same client's visits are spread over all workers and
//! restart at 1 on each. With `--proxy-protocol` the client is the one the
//! PROXY header names, so affinity survives a load balancer in front.
//!
//! The map forgets an arbitrary client once it holds 100 000, and it is
//! lost when the worker restarts or a reload replaces it (rendezvous
//! hashing then sends each client to the same slot's new worker, where its
//! `visits` start again at 1).
//!
//! Standalone (no inherited sockets): `affinity [ADDR]` binds ADDR, default
//! `127.0.0.1:8080` (one process: every client has affinity to it).
//!
//! HTTP/1.1 with keep-alive, one thread per connection; bodies with
//! `Content-Length` are read and dropped, chunked ones get `501` and the
//! connection closes (requests are read and parsed by the `mini-http` crate,
//! examples/http; a malformed one gets its status and the connection
//! closes).
//!
//! SIGTERM (how multinode drains a worker) or SIGINT: stop accepting (after
//! taking the connections already routed here), finish the requests in
//! flight (their responses say `Connection: close`), give idle connections
//! (kept alive, or accepted but silent) 2 s from when they went idle to
//! send one more request, answered with `Connection: close` (its client
//! may have sent it already), then close them, and exit 0. The same drain
//! as `examples/hello`: a rolling reload fails no request.
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
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use mini_http::drain::Tracker;
use mini_http::{Input, parse_head, reason};
use multinode_worker::{Accepted, Connection, Listener, PeerAddr, Stop, Watchdog};

const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// How long a keep-alive connection may stay silent.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a new connection may take to send its first request.
const FIRST_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// While draining, how long an idle connection may take to send one more
/// request (counted from when it went idle).
const IDLE_GRACE: Duration = Duration::from_secs(2);
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

    let worker = Arc::new(Worker::new(std::process::id(), stop, watchdog));
    let routed = sockets.iter().any(|l| matches!(l, Listener::Routed(_)));
    println!(
        "affinity: pid {} serving {} socket(s){}",
        worker.pid,
        sockets.len(),
        if routed {
            " (routed by the supervisor: reqno is its connection number)"
        } else {
            " (reqno counts this process's connections)"
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
    /// The connections this process accepted itself (no supervisor's
    /// `seq`): their `reqno`.
    local_reqno: AtomicU64,
    /// Requests per client address: the state affinity keeps in one place.
    visits: Mutex<HashMap<String, u64>>,
    /// The open connections, so a drain can close the idle ones.
    conns: Tracker<Connection>,
}

/// What becomes of the connection after a response.
enum Next {
    KeepAlive,
    Close,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Worker {
    fn new(pid: u32, stop: Stop, watchdog: Option<Watchdog>) -> Worker {
        Worker {
            pid,
            stop,
            watchdog,
            local_reqno: AtomicU64::new(0),
            visits: Mutex::new(HashMap::new()),
            conns: Tracker::new(IDLE_GRACE),
        }
    }

    fn accept_loop(self: &Arc<Self>, listener: &Listener) {
        loop {
            match self.accept(listener) {
                Ok(Some(accepted)) => {
                    let client = match &accepted.peer {
                        PeerAddr::Tcp(a) => a.ip().to_canonical().to_string(),
                        other => other.to_string(),
                    };
                    let reqno = self.reqno(accepted.seq);
                    let conn = accepted.conn;
                    // Tracked before the accept loop can return, so the
                    // drain sees every accepted connection.
                    let id = self.conns.track(conn.try_clone().ok());
                    let worker = Arc::clone(self);
                    let spawned = thread::Builder::new()
                        .spawn(move || worker.serve(id, conn, &client, reqno));
                    if let Err(e) = spawned {
                        eprintln!("affinity: cannot start a connection thread: {e}");
                        self.conns.untrack(id);
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

    /// The `reqno` of a new connection: the supervisor's sequence number of
    /// a routed one (master.js's `++numReqs`), else this process's count.
    fn reqno(&self, seq: Option<u64>) -> u64 {
        seq.unwrap_or_else(|| self.local_reqno.fetch_add(1, Ordering::SeqCst) + 1)
    }

    /// After a stop: waits until every connection has closed; an idle one gets IDLE_GRACE to
    /// send one more request (answered with `Connection: close`), then its read side is shut.
    fn drain(&self) {
        self.conns.drain(|h| _ = h.shutdown(Shutdown::Read));
    }

    /// Serves connection `id` (tracked) until it closes; every answer on it
    /// carries `reqno`.
    fn serve(&self, id: u64, conn: Connection, client: &str, reqno: u64) {
        let mut input = Input::new(&conn);
        let mut first = true;
        loop {
            if input.buffered().is_empty() {
                // A new connection is registered idle already.
                let timeout = if first {
                    FIRST_REQUEST_TIMEOUT
                } else {
                    self.conns.set_idle(id, true, self.stop.is_requested());
                    IDLE_TIMEOUT
                };
                let _ = conn.set_read_timeout(Some(timeout));
                match input.fill() {
                    Ok(true) => {}
                    // Closed by the client, timed out, or shut by the drain.
                    Ok(false) | Err(_) => break,
                }
            }
            first = false;
            self.conns.set_idle(id, false, false);
            match self.answer(&mut input, client, reqno) {
                Ok(Next::KeepAlive) => {}
                Ok(Next::Close) | Err(_) => break,
            }
        }
        drop(conn);
        self.conns.untrack(id);
    }

    /// Reads one request (the start of it is buffered) and answers it.
    fn answer(&self, input: &mut Input<&Connection>, client: &str, reqno: u64) -> io::Result<Next> {
        let conn = *input.get_ref();
        let Some(head_len) = input.read_head()? else {
            return respond(conn, 431, "request head larger than 16 KiB\n", false, false);
        };
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
    use std::io::{BufRead, BufReader, Read};
    use std::os::unix::net::UnixStream;
    use std::time::Instant;

    // No test here requests a stop: the SDK's stop is process-wide, and
    // would end the keep-alive of the tests running beside it.
    // tests/affinity.rs drains real workers under load.

    fn worker() -> Arc<Worker> {
        Arc::new(Worker::new(
            42,
            multinode_worker::catch_stop_signals().unwrap(),
            None,
        ))
    }

    /// Starts serving one end of a socket pair as a connection `w` accepted
    /// with the supervisor's `seq` (None: accepted by itself); the other
    /// end, and the connection's id.
    fn connect(w: &Arc<Worker>, seq: Option<u64>) -> (UnixStream, u64, thread::JoinHandle<()>) {
        let (client, server) = UnixStream::pair().unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let conn = Connection::from(server);
        let reqno = w.reqno(seq);
        let id = w.conns.track(conn.try_clone().ok());
        let w = Arc::clone(w);
        let server = thread::spawn(move || w.serve(id, conn, "198.51.100.7", reqno));
        (client, id, server)
    }

    /// Sends `requests` on one connection; everything it answered until it
    /// closed.
    fn exchange(w: &Arc<Worker>, seq: Option<u64>, requests: &str) -> String {
        let (mut client, _, server) = connect(w, seq);
        client.write_all(requests.as_bytes()).unwrap();
        client.shutdown(Shutdown::Write).unwrap();
        // Until the end, or the reset of a connection closed with part of
        // a request unread.
        let mut out = Vec::new();
        let mut chunk = [0; 4096];
        while let Ok(n @ 1..) = client.read(&mut chunk) {
            out.extend_from_slice(&chunk[..n]);
        }
        server.join().unwrap();
        String::from_utf8(out).unwrap()
    }

    fn bodies(out: &str) -> Vec<&str> {
        out.lines().filter(|l| l.starts_with("process=")).collect()
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

    #[test]
    fn reqno_is_the_supervisors_seq_else_a_count_of_this_process() {
        let w = worker();
        assert_eq!(w.reqno(Some(17)), 17);
        assert_eq!(w.reqno(None), 1);
        assert_eq!(w.reqno(Some(18)), 18);
        assert_eq!(w.reqno(None), 2, "routed connections do not count");
    }

    #[test]
    fn answers_with_pid_reqno_client_and_visits() {
        let w = worker();
        // Routed: reqno is the supervisor's seq, for every request on the
        // connection; visits count the requests.
        let out = exchange(
            &w,
            Some(7),
            "GET / HTTP/1.1\r\nHost: x\r\n\r\n\
             POST /p HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc\
             GET / HTTP/1.1\r\nConnection: close\r\n\r\n",
        );
        assert_eq!(
            bodies(&out),
            [
                "process=42; reqno=7; client=198.51.100.7; visits=1",
                "process=42; reqno=7; client=198.51.100.7; visits=2",
                "process=42; reqno=7; client=198.51.100.7; visits=3",
            ],
            "{out}"
        );
        assert_eq!(out.matches("Connection: close").count(), 1, "{out}");

        // Accepted by this process: reqno counts its connections.
        for (seq, reqno, visits) in [(None, 1, 4), (Some(9), 9, 5), (None, 2, 6)] {
            let out = exchange(&w, seq, "GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
            assert!(out.contains("Connection: keep-alive\r\n"), "{out}");
            assert_eq!(
                bodies(&out),
                [format!(
                    "process=42; reqno={reqno}; client=198.51.100.7; visits={visits}"
                )],
                "{out}"
            );
        }
        assert!(w.conns.is_empty(), "connections untracked");
    }

    #[test]
    fn rejects_what_it_does_not_serve() {
        let w = worker();
        let huge = format!(
            "GET / HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(mini_http::MAX_HEAD)
        );
        for (req, status) in [
            ("GET /\r\n\r\n", "400"),
            ("GET / HTTP/2.0\r\n\r\n", "505"),
            ("GET / HTTP/1.1\r\nNoColon\r\n\r\n", "400"),
            ("POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", "400"),
            (
                "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                "501",
            ),
            (&huge, "431"),
        ] {
            let out = exchange(&w, None, req);
            let shown = &req[..req.len().min(60)];
            assert!(
                out.starts_with(&format!("HTTP/1.1 {status} ")),
                "{shown:?}: {out}"
            );
            assert!(out.contains("Connection: close\r\n"), "{shown:?}: {out}");
        }
    }

    /// Reads one response's head and body from `r`; the body.
    fn response(r: &mut BufReader<UnixStream>) -> String {
        let mut len = 0;
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            if let Some(v) = line.strip_prefix("Content-Length: ") {
                len = v.trim().parse().unwrap();
            }
            if line == "\r\n" {
                break;
            }
        }
        let mut body = vec![0; len];
        r.read_exact(&mut body).unwrap();
        String::from_utf8(body).unwrap()
    }

    #[test]
    fn drain_gives_an_idle_connection_its_grace_then_closes_it() {
        let w = worker();
        let (client, id, server) = connect(&w, Some(3));
        let mut r = BufReader::new(client.try_clone().unwrap());
        let mut c = &client;
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(response(&mut r).contains("visits=1"));
        let idle = || w.conns.is_idle(id) == Some(true);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !idle() {
            assert!(Instant::now() < deadline, "the connection never went idle");
            thread::sleep(Duration::from_millis(5));
        }
        let drain = {
            let w = Arc::clone(&w);
            thread::spawn(move || w.drain())
        };
        // A request sent while the connection is idle, within its grace,
        // is answered.
        thread::sleep(Duration::from_millis(300));
        c.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        assert!(response(&mut r).contains("reqno=3; client=198.51.100.7; visits=2"));
        let answered = Instant::now();
        // Then silence: closed once IDLE_GRACE has passed since it went idle.
        let mut rest = Vec::new();
        r.read_to_end(&mut rest).unwrap();
        let closed_after = answered.elapsed();
        assert!(rest.is_empty(), "{rest:?}");
        assert!(
            closed_after >= IDLE_GRACE - Duration::from_millis(100)
                && closed_after < IDLE_GRACE + Duration::from_secs(20),
            "closed {closed_after:?} after it went idle"
        );
        server.join().unwrap();
        drain.join().unwrap();
        assert!(w.conns.is_empty());
    }
}
