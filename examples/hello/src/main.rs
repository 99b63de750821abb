//! hello: the bundled multinode example worker (std + multinode-worker only).
//!
//! Run: cargo build --release --workspace && ./target/release/multinode serve --workers 4 --listen 127.0.0.1:8080 -- ./target/release/hello
//!
//! Standalone (no inherited sockets): `hello [ADDR]` binds ADDR, default
//! `127.0.0.1:8080`. Under multinode (or systemd) it serves every inherited
//! socket, TCP or Unix, each on its own accept thread, and ignores ADDR.
//!
//! HTTP/1.1 with keep-alive (HTTP/1.0 too), one thread per connection.
//! Every request, whatever its method and path, gets `200 OK` with the body
//!
//! ```text
//! process=<pid>; worker=<MULTINODE_WORKER_ID or ->; reqno=<n>
//! ```
//!
//! where n counts this process's requests from 1 (like worker.js of the
//! 2010 Yahoo article on multi-core Node servers). In route mode
//! (`multinode serve --route …`, the supervisor accepts and passes each
//! connection over) the line ends with `; seq=<s>`, the supervisor's
//! sequence number of the connection. Except:
//!
//! - `/sleep/<ms>` (any method) answers the same way after sleeping `<ms>`
//!   milliseconds: a request that is in flight for as long as a test needs.
//!   A `<ms>` that is not a decimal number gets `400 Bad Request`.
//! - A request head over 16 KiB gets `431`, a malformed one `400`, an HTTP
//!   version other than 1.x `505`; the connection is then closed.
//!
//! Request bodies are read and discarded (`Content-Length` or chunked;
//! `Expect: 100-continue` is answered). The request counter ticks when a
//! request's head has been read. Reading and parsing requests is the
//! `mini-http` crate's (examples/http), shared with the other workers; this
//! file is the serving and the drain.
//!
//! SIGTERM (how multinode drains a worker) or SIGINT: stop accepting,
//! finish the requests in flight (their responses say `Connection: close`),
//! give idle connections (kept alive, or accepted but silent) 2 s from when
//! they went idle to send one more request, then close them, and exit 0. It prints one line at start:
//! `hello: worker <id> pid <pid> serving <n> socket(s)`.
//!
//! Under `multinode serve --watchdog D` (or systemd's `WatchdogSec=`) it
//! sends `WATCHDOG=1` every D/2 from its accept loops: each waits for a
//! connection at most until the next ping is due
//! (`Listener::accept_timeout`), so an idle worker pings too, and a loop
//! that stops coming round stops pinging and gets the worker restarted. The
//! pings vouch for accepting, not for each connection's thread. Without a
//! watchdog the loops wait as before, with no timer.

use std::error::Error;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::Duration;

use mini_http::drain::Tracker;
use mini_http::{Input, parse_head, reason};
use multinode_worker::{Accepted, Connection, Listener, Stop, Watchdog};

const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// How long a connection may stay silent: idle keep-alive, or a stalled
/// request.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// While draining, how long an idle connection may take to send one more
/// request (counted from when it went idle).
const IDLE_GRACE: Duration = Duration::from_secs(2);

/// An accept that keeps failing is retried this often, this many times in a
/// row (10 s), then the worker gives up and exits non-zero.
const ACCEPT_RETRY_DELAY: Duration = Duration::from_millis(100);
const ACCEPT_RETRIES: u32 = 100;

/// Requests this process has received.
static REQNO: AtomicU64 = AtomicU64::new(0);

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("hello: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<ExitCode, Box<dyn Error>> {
    // First, while this is the only thread: listeners() edits the environment.
    let mut inherited = multinode_worker::listeners()?;
    // Also before any thread: it removes WATCHDOG_USEC and WATCHDOG_PID.
    let watchdog = Watchdog::from_env()?;
    let stop = multinode_worker::catch_stop_signals()?;

    let sockets: Vec<Listener> = if inherited.is_empty() {
        let addr = std::env::args().nth(1);
        let addr = addr.as_deref().unwrap_or(DEFAULT_ADDR);
        let l = inherited
            .tcp_or_bind("http", addr)
            .map_err(|e| format!("cannot listen on {addr}: {e}"))?;
        vec![l.into()]
    } else {
        inherited.into_iter().map(|(_, l)| l).collect()
    };

    let server = Arc::new(Server {
        pid: std::process::id(),
        worker: multinode_worker::worker_id().map_or_else(|| "-".to_owned(), |id| id.to_string()),
        stop,
        watchdog,
        conns: Tracker::new(IDLE_GRACE),
        failed: AtomicBool::new(false),
    });
    println!(
        "hello: worker {} pid {} serving {} socket(s)",
        server.worker,
        server.pid,
        sockets.len()
    );

    let mut acceptors = Vec::new();
    for listener in sockets {
        let server = Arc::clone(&server);
        acceptors.push(
            thread::Builder::new()
                .name("accept".into())
                .spawn(move || server.accept_loop(&listener))?,
        );
    }
    let _ = multinode_worker::ready();

    server.stop.wait();
    let _ = multinode_worker::stopping();
    for a in acceptors {
        let _ = a.join();
    }
    server.drain();
    Ok(if server.failed.load(Ordering::SeqCst) {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

struct Server {
    pid: u32,
    worker: String,
    stop: Stop,
    /// `--watchdog`: pinged by the accept loops.
    watchdog: Option<Watchdog>,
    /// The open connections, so a drain can close the idle ones.
    conns: Tracker<Connection>,
    /// An accept loop failed: exit non-zero after draining.
    failed: AtomicBool,
}

impl Server {
    fn accept_loop(self: &Arc<Self>, listener: &Listener) {
        let mut failures = 0;
        loop {
            match self.accept(listener) {
                Ok(Some(accepted)) => {
                    failures = 0;
                    let conn = accepted.conn;
                    // Tracked before the accept loop can return, so the
                    // drain sees every accepted connection.
                    let id = self.conns.track(conn.try_clone().ok());
                    let server = Arc::clone(self);
                    let spawned = thread::Builder::new()
                        .name("conn".into())
                        .spawn(move || server.serve(id, conn));
                    if let Err(e) = spawned {
                        eprintln!("hello: cannot start a connection thread: {e}");
                        self.conns.untrack(id);
                    }
                }
                Ok(None) => {
                    if !self.stop.is_requested() {
                        // Only a route channel ends without a stop: the
                        // supervisor closed it, nothing more will come.
                        eprintln!("hello: the supervisor closed the route channel; stopping");
                        self.stop.request();
                    }
                    return;
                }
                // Time for the watchdog's next ping.
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) if failures < ACCEPT_RETRIES => {
                    // Most likely out of fds or memory for a moment: wait
                    // for connections to close.
                    failures += 1;
                    eprintln!("hello: accept: {e}; retrying");
                    thread::sleep(ACCEPT_RETRY_DELAY);
                }
                Err(e) => {
                    // Failing for this long, it will not recover: exit
                    // (after draining) so the supervisor starts a fresh one.
                    eprintln!("hello: accept: {e}; giving up");
                    self.failed.store(true, Ordering::SeqCst);
                    self.stop.request();
                    return;
                }
            }
        }
    }

    /// The next connection, or `None` on a stop. With a watchdog, this is
    /// where it is pinged: every half interval, and the accept gives up
    /// (`TimedOut`) when the next ping is due, so an idle loop pings too.
    fn accept(&self, listener: &Listener) -> io::Result<Option<Accepted>> {
        let Some(w) = &self.watchdog else {
            return listener.accept_until(&self.stop);
        };
        if let Err(e) = w.ping_if_due() {
            eprintln!("hello: watchdog: {e}");
        }
        listener.accept_timeout(&self.stop, w.due_in())
    }

    /// After a stop: waits until every connection has closed; an idle one gets IDLE_GRACE to
    /// send one more request (answered with `Connection: close`), then its read side is shut.
    fn drain(&self) {
        self.conns.drain(|h| _ = h.shutdown(Shutdown::Read));
    }

    fn serve(&self, id: u64, conn: Connection) {
        let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
        let mut input = Input::new(&conn);
        let mut first = true;
        let mut linger = false;
        loop {
            if input.buffered().is_empty() {
                // A new connection is registered idle already.
                if !first {
                    self.conns.set_idle(id, true, self.stop.is_requested());
                }
                match input.fill() {
                    Ok(true) => {}
                    Ok(false) | Err(_) => break,
                }
            }
            first = false;
            self.conns.set_idle(id, false, false);
            match self.one_request(&mut input) {
                Ok(Next::KeepAlive) => {}
                Ok(Next::Close) => {
                    // Pipelined requests after a `Connection: close` one.
                    linger = !input.buffered().is_empty();
                    break;
                }
                Ok(Next::Reject) => {
                    linger = true;
                    break;
                }
                // The client went away or timed out: nothing to answer.
                Err(_) => break,
            }
        }
        if linger {
            lingering_close(&conn);
        }
        drop(conn);
        self.conns.untrack(id);
    }

    /// Reads one request, discards its body and answers it.
    fn one_request(&self, input: &mut Input<&Connection>) -> io::Result<Next> {
        let conn = *input.get_ref();
        let Some(head_len) = input.read_head()? else {
            return reject(conn, 431, "request head larger than 16 KiB");
        };
        let parsed = parse_head(&input.buffered()[..head_len]);
        input.consume(head_len);
        let req = match parsed {
            Ok(req) => req,
            Err((status, why)) => return reject(conn, status, why),
        };
        let reqno = REQNO.fetch_add(1, Ordering::SeqCst) + 1;

        if req.expect_continue && req.minor == 1 && req.has_body() && input.buffered().is_empty() {
            let mut w = conn;
            w.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        if req.chunked {
            if let Err(why) = input.discard_chunked()? {
                return reject(conn, 400, why);
            }
        } else if let Some(n) = req.content_length {
            input.discard(n)?;
        }

        let (status, body) = match sleep_ms(&req.target) {
            Some(Ok(ms)) => {
                thread::sleep(Duration::from_millis(ms));
                (200, self.body(reqno, conn.seq()))
            }
            Some(Err(())) => (
                400,
                "bad /sleep/<ms>: <ms> must be a decimal number\n".into(),
            ),
            None => (200, self.body(reqno, conn.seq())),
        };
        // A request with both Content-Length and Transfer-Encoding may be a
        // smuggling attempt: answer it, then close (RFC 9112, 6.1).
        let keep = status == 200
            && !req.close
            && (req.minor == 1 || req.keep_alive)
            && !(req.chunked && req.content_length.is_some())
            && !self.stop.is_requested();
        respond(conn, status, &body, keep, req.minor, req.method == "HEAD")?;
        Ok(if keep { Next::KeepAlive } else { Next::Close })
    }

    /// The answer; `seq` is the routed connection's sequence number.
    fn body(&self, reqno: u64, seq: Option<u64>) -> String {
        let routed = seq.map_or_else(String::new, |s| format!("; seq={s}"));
        format!(
            "process={}; worker={}; reqno={reqno}{routed}\n",
            self.pid, self.worker
        )
    }
}

/// What to do with a connection after a response.
enum Next {
    KeepAlive,
    Close,
    /// Close after an error response: unread request bytes may follow.
    Reject,
}

/// For `/sleep/<ms>` targets: the milliseconds, or Err for a bad number.
fn sleep_ms(target: &str) -> Option<Result<u64, ()>> {
    // Absolute form (`http://host/sleep/5`, as sent to proxies) too.
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |i| &rest[i..]),
        None => target,
    };
    let path = path.split(['?', '#']).next().unwrap_or_default();
    let ms = path.strip_prefix("/sleep/")?;
    Some(
        (!ms.is_empty() && ms.bytes().all(|b| b.is_ascii_digit()))
            .then(|| ms.parse().ok())
            .flatten()
            .ok_or(()),
    )
}

fn respond(
    mut conn: &Connection,
    status: u16,
    body: &str,
    keep: bool,
    minor: u8,
    head_only: bool,
) -> io::Result<()> {
    let connection = match (keep, minor) {
        (false, _) => "Connection: close\r\n",
        (true, 0) => "Connection: keep-alive\r\n",
        (true, _) => "",
    };
    let mut out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\n{connection}\r\n",
        reason(status),
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    conn.write_all(&out)
}

/// Answers an unparseable request with `status`, to be followed by closing.
fn reject(conn: &Connection, status: u16, why: &str) -> io::Result<Next> {
    respond(conn, status, &format!("{why}\n"), false, 1, false)?;
    Ok(Next::Reject)
}

/// Closes after an error response without resetting the connection (closing
/// with unread data sends a reset, which can destroy the response before the
/// client reads it): stop sending, then read what the client still sends,
/// for at most a second.
fn lingering_close(mut conn: &Connection) {
    let _ = conn.shutdown(Shutdown::Write);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
    let mut scratch = [0; 4096];
    let mut left = 256 * 1024;
    while left > 0 {
        match conn.read(&mut scratch) {
            Ok(0) | Err(_) => break,
            Ok(n) => left -= n.min(left),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sleep_targets() {
        assert_eq!(sleep_ms("/sleep/250"), Some(Ok(250)));
        assert_eq!(sleep_ms("/sleep/0?x=1"), Some(Ok(0)));
        assert_eq!(sleep_ms("http://h:1/sleep/7"), Some(Ok(7)));
        assert_eq!(sleep_ms("/sleep/abc"), Some(Err(())));
        assert_eq!(sleep_ms("/sleep/"), Some(Err(())));
        assert_eq!(sleep_ms("/"), None);
        assert_eq!(sleep_ms("/sleepy"), None);
    }
}
