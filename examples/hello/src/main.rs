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
//! request's head has been read.
//!
//! SIGTERM (how multinode drains a worker) or SIGINT: stop accepting,
//! finish the requests in flight (their responses say `Connection: close`),
//! give idle connections (kept alive, or accepted but silent) 2 s from when
//! they went idle to send one more request, then close them, and exit 0. It prints one line at start:
//! `hello: worker <id> pid <pid> serving <n> socket(s)`.

use std::collections::HashMap;
use std::error::Error;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use multinode_worker::{Connection, Listener, Stop};

const DEFAULT_ADDR: &str = "127.0.0.1:8080";
/// The largest request head (request line and headers) accepted.
const MAX_HEAD: usize = 16 * 1024;
/// The longest chunk-size or trailer line of a chunked body.
const MAX_LINE: usize = 4096;
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
        conns: Mutex::new(Conns::default()),
        closed: Condvar::new(),
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
    conns: Mutex<Conns>,
    /// Signalled whenever a connection closes.
    closed: Condvar,
    /// An accept loop failed: exit non-zero after draining.
    failed: AtomicBool,
}

/// The open connections, so a drain can close the idle ones.
#[derive(Default)]
struct Conns {
    next_id: u64,
    open: HashMap<u64, Tracked>,
}

struct Tracked {
    /// A second handle for `shutdown`; `None` if it could not be cloned
    /// (out of fds), then the read timeout ends it.
    handle: Option<Connection>,
    /// Waiting for the next request, with no byte of it read.
    idle: bool,
    /// When it last became idle (its accept, or the end of its last response).
    idle_since: Instant,
    /// The drain has shut its read side.
    shut: bool,
}

impl Server {
    fn accept_loop(self: &Arc<Self>, listener: &Listener) {
        let mut failures = 0;
        loop {
            match listener.accept_until(&self.stop) {
                Ok(Some(accepted)) => {
                    failures = 0;
                    let conn = accepted.conn;
                    // Tracked before the accept loop can return, so the
                    // drain sees every accepted connection.
                    let id = self.track(&conn);
                    let server = Arc::clone(self);
                    let spawned = thread::Builder::new()
                        .name("conn".into())
                        .spawn(move || server.serve(id, conn));
                    if let Err(e) = spawned {
                        eprintln!("hello: cannot start a connection thread: {e}");
                        self.untrack(id);
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

    fn conns(&self) -> MutexGuard<'_, Conns> {
        self.conns.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection, idle: no request read yet.
    fn track(&self, conn: &Connection) -> u64 {
        let handle = conn.try_clone().ok();
        let mut conns = self.conns();
        let id = conns.next_id;
        conns.next_id += 1;
        conns.open.insert(
            id,
            Tracked {
                handle,
                idle: true,
                idle_since: Instant::now(),
                shut: false,
            },
        );
        id
    }

    fn untrack(&self, id: u64) {
        self.conns().open.remove(&id);
        self.closed.notify_all();
    }

    /// Marks the connection idle; false (close it) once a stop is requested.
    fn set_idle(&self, id: u64, idle: bool) -> bool {
        let mut conns = self.conns();
        if let Some(t) = conns.open.get_mut(&id) {
            if idle && !t.idle {
                t.idle_since = Instant::now();
            }
            t.idle = idle;
        }
        if idle && self.stop.is_requested() {
            self.closed.notify_all();
        }
        true
    }

    /// After a stop (and after the accept loops have returned, so every
    /// accepted connection is tracked): waits for the busy connections, which
    /// close after their response because the stop makes it
    /// `Connection: close`, and ends the idle ones by shutting their read
    /// side (a blocked read then returns what is already queued, then end of
    /// file).
    ///
    /// An idle connection (kept alive, or accepted and still silent) gets
    /// up to IDLE_GRACE from when it went idle to send one more request,
    /// answered with `Connection: close`: its client may have sent it
    /// already. Then its read side is shut.
    fn drain(&self) {
        let mut conns = self.conns();
        while !conns.open.is_empty() {
            let now = Instant::now();
            let mut next_deadline: Option<Instant> = None;
            for t in conns.open.values_mut().filter(|t| t.idle && !t.shut) {
                let deadline = t.idle_since + IDLE_GRACE;
                if deadline > now {
                    next_deadline = Some(next_deadline.map_or(deadline, |d| d.min(deadline)));
                    continue;
                }
                if let Some(h) = &t.handle {
                    let _ = h.shutdown(Shutdown::Read);
                }
                t.shut = true;
            }
            conns = match next_deadline {
                Some(d) => {
                    let wait = d.saturating_duration_since(now);
                    self.closed
                        .wait_timeout(conns, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.closed.wait(conns).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    fn serve(&self, id: u64, conn: Connection) {
        let _ = conn.set_read_timeout(Some(READ_TIMEOUT));
        let mut input = Input {
            conn: &conn,
            buf: Vec::with_capacity(1024),
        };
        let mut first = true;
        let mut linger = false;
        loop {
            if input.buf.is_empty() {
                // A new connection is registered idle already; later,
                // becoming idle after a stop means closing.
                if !first && !self.set_idle(id, true) {
                    break;
                }
                match input.fill() {
                    Ok(true) => {}
                    Ok(false) | Err(_) => break,
                }
            }
            first = false;
            self.set_idle(id, false);
            match self.one_request(&mut input) {
                Ok(Next::KeepAlive) => {}
                Ok(Next::Close) => {
                    // Pipelined requests after a `Connection: close` one.
                    linger = !input.buf.is_empty();
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
        self.untrack(id);
    }

    /// Reads one request, discards its body and answers it.
    fn one_request(&self, input: &mut Input<'_>) -> io::Result<Next> {
        let head_len = loop {
            input.skip_leading_blank_lines();
            match head_end(&input.buf) {
                Some(n) if n <= MAX_HEAD => break n,
                Some(_) => return reject(input, 431, "request head larger than 16 KiB"),
                None if input.buf.len() >= MAX_HEAD => {
                    return reject(input, 431, "request head larger than 16 KiB");
                }
                None => {
                    if !input.fill()? {
                        return Err(io::ErrorKind::UnexpectedEof.into());
                    }
                }
            }
        };
        let parsed = parse_head(&input.buf[..head_len]);
        input.consume(head_len);
        let req = match parsed {
            Ok(req) => req,
            Err((status, why)) => return reject(input, status, why),
        };
        let reqno = REQNO.fetch_add(1, Ordering::SeqCst) + 1;

        if req.expect_continue && req.minor == 1 && req.has_body() && input.buf.is_empty() {
            input.conn.write_all(b"HTTP/1.1 100 Continue\r\n\r\n")?;
        }
        if req.chunked {
            if let Err(why) = input.discard_chunked()? {
                return reject(input, 400, why);
            }
        } else if let Some(n) = req.content_length {
            input.discard(n)?;
        }

        let (status, body) = match sleep_ms(&req.target) {
            Some(Ok(ms)) => {
                thread::sleep(Duration::from_millis(ms));
                (200, self.body(reqno, input.conn.seq()))
            }
            Some(Err(())) => (
                400,
                "bad /sleep/<ms>: <ms> must be a decimal number\n".into(),
            ),
            None => (200, self.body(reqno, input.conn.seq())),
        };
        // A request with both Content-Length and Transfer-Encoding may be a
        // smuggling attempt: answer it, then close (RFC 9112, 6.1).
        let keep = status == 200
            && !req.close
            && (req.minor == 1 || req.keep_alive)
            && !(req.chunked && req.content_length.is_some())
            && !self.stop.is_requested();
        respond(
            input.conn,
            status,
            &body,
            keep,
            req.minor,
            req.method == "HEAD",
        )?;
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

/// The parts of a request head this server acts on.
#[derive(Debug, Default, PartialEq)]
struct Request {
    method: String,
    target: String,
    /// HTTP/1.minor
    minor: u8,
    /// `Connection: close`
    close: bool,
    /// `Connection: keep-alive` (what HTTP/1.0 clients send to keep it)
    keep_alive: bool,
    content_length: Option<u64>,
    chunked: bool,
    expect_continue: bool,
}

impl Request {
    fn has_body(&self) -> bool {
        self.chunked || self.content_length.is_some_and(|n| n > 0)
    }
}

/// Parses a request head (request line, header lines, blank line).
/// `Err((status, reason))` for requests that get an error response.
fn parse_head(head: &[u8]) -> Result<Request, (u16, &'static str)> {
    let text = std::str::from_utf8(head).map_err(|_| (400, "request head is not UTF-8"))?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err((400, "malformed request line"));
    };
    if method.is_empty() || !method.bytes().all(is_tchar) {
        return Err((400, "malformed method"));
    }
    if target.is_empty() || target.bytes().any(|b| b.is_ascii_control()) {
        return Err((400, "malformed request target"));
    }
    let minor = match version.strip_prefix("HTTP/1.") {
        Some(m) if m.len() == 1 && m.as_bytes()[0].is_ascii_digit() => {
            // 1.2 and later are answered as 1.1 (RFC 9110, 2.5).
            if m == "0" { 0 } else { 1 }
        }
        _ if version.starts_with("HTTP/") => return Err((505, "only HTTP/1.x is supported")),
        _ => return Err((400, "malformed HTTP version")),
    };
    let mut req = Request {
        method: method.to_owned(),
        target: target.to_owned(),
        minor,
        ..Request::default()
    };
    let mut transfer_encoding: Option<String> = None;
    for line in lines {
        if line.is_empty() {
            continue; // the blank line that ends the head
        }
        if line.starts_with([' ', '\t']) {
            return Err((400, "obsolete header line folding"));
        }
        let Some((name, value)) = line.split_once(':') else {
            return Err((400, "header line without a colon"));
        };
        if name.is_empty() || !name.bytes().all(is_tchar) {
            return Err((400, "malformed header name"));
        }
        let value = value.trim_matches([' ', '\t']);
        if name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                req.close |= token.eq_ignore_ascii_case("close");
                req.keep_alive |= token.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-length") {
            // "5, 5" (a merged duplicate) is allowed, "5, 6" is not.
            for v in value.split(',').map(str::trim) {
                let n = (!v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                    .then(|| v.parse::<u64>().ok())
                    .flatten()
                    .ok_or((400, "malformed Content-Length"))?;
                if req.content_length.is_some_and(|m| m != n) {
                    return Err((400, "conflicting Content-Length headers"));
                }
                req.content_length = Some(n);
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            let all = transfer_encoding.get_or_insert_with(String::new);
            if !all.is_empty() {
                all.push(',');
            }
            all.push_str(value);
        } else if name.eq_ignore_ascii_case("expect") {
            req.expect_continue |= value.eq_ignore_ascii_case("100-continue");
        }
    }
    if let Some(te) = transfer_encoding {
        let last = te.rsplit(',').map(str::trim).find(|c| !c.is_empty());
        if !last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")) {
            // The body's length cannot be known (RFC 9112, 6.3).
            return Err((400, "Transfer-Encoding without final chunked"));
        }
        req.chunked = true;
    }
    Ok(req)
}

/// RFC 9110 token characters.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The length of the head at the start of `buf`, blank line included:
/// up to the first empty line (CRLF CRLF, or bare LF LF as RFC 9112 allows).
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let nl = from + i;
        let rest = &buf[nl + 1..];
        if rest.starts_with(b"\n") {
            return Some(nl + 2);
        }
        if rest.starts_with(b"\r\n") {
            return Some(nl + 3);
        }
        from = nl + 1;
    }
    None
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

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    }
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
fn reject(input: &Input<'_>, status: u16, why: &str) -> io::Result<Next> {
    respond(input.conn, status, &format!("{why}\n"), false, 1, false)?;
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

/// A connection and the bytes read from it but not consumed yet (the rest
/// of a head, a body, or pipelined requests).
struct Input<'a> {
    conn: &'a Connection,
    buf: Vec<u8>,
}

impl Input<'_> {
    /// Reads more into the buffer; false at end of file.
    fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0; 8192];
        loop {
            let mut conn = self.conn;
            match conn.read(&mut chunk) {
                Ok(0) => return Ok(false),
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.buf.drain(..n);
    }

    /// Servers should ignore empty lines before a request line (RFC 9112, 2.2).
    fn skip_leading_blank_lines(&mut self) {
        let n = self
            .buf
            .iter()
            .take_while(|&&b| b == b'\r' || b == b'\n')
            .count();
        // Keep a lone trailing CR: it may be the start of a CRLF.
        let n = if n == self.buf.len() && self.buf.last() == Some(&b'\r') {
            n - 1
        } else {
            n
        };
        self.consume(n);
    }

    /// Reads and drops `n` body bytes.
    fn discard(&mut self, mut n: u64) -> io::Result<()> {
        let buffered = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
        self.consume(buffered);
        n -= buffered as u64;
        let mut scratch = [0; 8192];
        while n > 0 {
            let want = scratch.len().min(usize::try_from(n).unwrap_or(usize::MAX));
            let mut conn = self.conn;
            match conn.read(&mut scratch[..want]) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(got) => n -= got as u64,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// One line (without its line end), at most MAX_LINE bytes.
    fn line(&mut self) -> io::Result<Result<String, &'static str>> {
        loop {
            if let Some(i) = self.buf.iter().position(|&b| b == b'\n') {
                let line = String::from_utf8_lossy(&self.buf[..i])
                    .trim_end_matches('\r')
                    .to_owned();
                self.consume(i + 1);
                return Ok(Ok(line));
            }
            if self.buf.len() > MAX_LINE {
                return Ok(Err("chunked body line too long"));
            }
            if !self.fill()? {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Reads and drops a chunked body and its trailers.
    /// The inner `Err` is a malformed body (answered with 400).
    fn discard_chunked(&mut self) -> io::Result<Result<(), &'static str>> {
        loop {
            let line = match self.line()? {
                Ok(l) => l,
                Err(why) => return Ok(Err(why)),
            };
            let size = line.split(';').next().unwrap_or_default().trim();
            let Ok(size) = u64::from_str_radix(size, 16) else {
                return Ok(Err("malformed chunk size"));
            };
            if size == 0 {
                break;
            }
            self.discard(size)?;
            match self.line()? {
                Ok(l) if l.is_empty() => {}
                Ok(_) => return Ok(Err("chunk not followed by a line end")),
                Err(why) => return Ok(Err(why)),
            }
        }
        // Trailer fields, up to an empty line.
        let mut trailers = 0;
        loop {
            match self.line()? {
                Ok(l) if l.is_empty() => return Ok(Ok(())),
                Ok(_) if trailers < 100 => trailers += 1,
                Ok(_) => return Ok(Err("too many trailer fields")),
                Err(why) => return Ok(Err(why)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_end_of_the_head() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nrest"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.1\nHost: x\n\nrest"), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: x\r\n\r"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }

    #[test]
    fn parses_requests() {
        let r = parse_head(b"GET /a HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, Close\r\n\r\n")
            .unwrap();
        assert_eq!(
            (r.method.as_str(), r.target.as_str(), r.minor),
            ("GET", "/a", 1)
        );
        assert!(r.close && r.keep_alive);
        let r = parse_head(b"POST / HTTP/1.0\r\nContent-Length: 5, 5\r\n\r\n").unwrap();
        assert_eq!((r.minor, r.content_length), (0, Some(5)));
        let r = parse_head(
            b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\nExpect: 100-continue\r\n\r\n",
        )
        .unwrap();
        assert!(r.chunked && r.expect_continue && r.has_body());
        assert_eq!(parse_head(b"GET / HTTP/1.2\r\n\r\n").unwrap().minor, 1);
    }

    #[test]
    fn rejects_bad_requests() {
        for (head, status) in [
            (&b"GET /\r\n\r\n"[..], 400),
            (b"GET  / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/2.0\r\n\r\n", 505),
            (b"GET / FTP/1.0\r\n\r\n", 400),
            (b"G(T / HTTP/1.1\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nNoColon\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nA: b\r\n c\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nContent-Length: -1\r\n\r\n", 400),
            (
                b"GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
            ),
            (
                b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                400,
            ),
            (b"GET / HTTP/1.1\r\nX: \xff\r\n\r\n", 400),
        ] {
            assert_eq!(
                parse_head(head).map_err(|e| e.0),
                Err(status),
                "{}",
                String::from_utf8_lossy(head)
            );
        }
    }

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
