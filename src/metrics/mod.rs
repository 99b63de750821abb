//! `--metrics ADDR`: `GET /metrics` and `GET /healthz`, served by the supervisor's own event
//! loop (never by a worker), so they answer while every worker is down, hung or being
//! replaced, and cost nothing while nobody asks.
//!
//! The socket is bound at start with the listening sockets, before the privilege drop (a Unix
//! socket file is made, owned and removed like theirs). This module owns it and its
//! connections; the shell polls them and builds each answer (`supervisor/scrape.rs`).
//!
//! Every bound is explicit, so a client can hold nothing but its own connection:
//! - accepting is a burst of [`ACCEPT_BURST`] per wake-up; out of fds, the socket is not
//!   polled for [`crate::throttle::ACCEPT_PAUSE`] (connections wait in its queue) instead of spinning the loop;
//! - at most [`MAX_CLIENTS`] connections at once; another one closes the oldest connection
//!   that has not finished sending its request (so idle connections cannot lock scrapes out),
//!   or, when every one is being answered, is closed itself;
//! - a request head is at most [`MAX_HEAD`] bytes (else 431) and must arrive within
//!   [`REQUEST_TIMEOUT`] (else the connection is closed);
//! - one response per connection (`Connection: close`), queued and written as the socket takes
//!   it (polled for writability), dropped if the client does not read it within
//!   [`WRITE_TIMEOUT`];
//! - every socket is non-blocking; no call here waits.
//!
//! Nothing here runs on a timer: without connections the loop has no deadline of ours.

mod handover;
pub mod text;

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags, Shutdown, SockFlag};
use nix::unistd::{Gid, Uid};

use crate::control::server::Interest;
use crate::error::{Error, Result};
use crate::listen::ListenSpec;
use crate::socket::Bound;
use crate::socket::file::SocketFile;
use crate::throttle::AcceptPause;

/// Connections served at once.
pub const MAX_CLIENTS: usize = 32;
/// The longest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a response may wait for a client that does not read it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted per wake-up.
const ACCEPT_BURST: usize = 16;
/// The accept queue of the socket.
const BACKLOG: u32 = 64;

pub type ClientId = u64;

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    Metrics,
    Healthz,
}

/// A request the shell must answer ([`MetricsServer::respond`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Request {
    pub page: Page,
    /// `HEAD`: the headers only.
    pub head_only: bool,
}

/// An answer: status, content type, body.
pub struct Response {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

impl Response {
    /// A short plain-text answer.
    pub fn text(status: u16, body: impl Into<String>) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            body: body.into(),
        }
    }
}

enum Phase {
    /// Reading the request head, until the deadline.
    Reading(Instant),
    /// Writing the response, until the deadline; then close.
    Writing(Instant),
}

struct Client {
    id: ClientId,
    fd: OwnedFd,
    /// The head read so far, then the response being written.
    buf: Vec<u8>,
    sent: usize,
    phase: Phase,
}

pub struct MetricsServer {
    bound: Bound,
    clients: Vec<Client>,
    next_id: ClientId,
    /// Out of fds: the listening socket rests, and says so once a second at most.
    pause: AcceptPause,
}

impl MetricsServer {
    /// Binds `--metrics` (call before the privilege drop, like the listening sockets: a port
    /// below 1024 needs root). A Unix socket file gets `mode` and the owner `owner`, as the
    /// `--listen` ones do.
    pub fn bind(spec: &ListenSpec, mode: u32, owner: Option<(Uid, Gid)>) -> Result<MetricsServer> {
        let bound = crate::socket::bind_one(spec, "--metrics", BACKLOG, mode, owner)?;
        crate::route::channel::set_nonblocking(&bound.fd).map_err(|e| {
            Error::socket(format!(
                "--metrics {}: cannot make it non-blocking: {}",
                spec.text,
                e.desc().to_lowercase()
            ))
        })?;
        Ok(MetricsServer {
            bound,
            clients: Vec::new(),
            next_id: 0,
            pause: AcceptPause::new(),
        })
    }

    /// What it listens on: `127.0.0.1:9100` or `unix:/run/app/metrics.sock`.
    pub fn local(&self) -> &str {
        &self.bound.local
    }

    /// The socket file, for a Unix socket: to be removed at exit.
    pub fn file(&self) -> Option<&SocketFile> {
        self.bound.file.as_ref()
    }

    /// Removes the socket file if it is still ours (when the guard could not).
    pub fn remove_file(&mut self) {
        if let Some(f) = &mut self.bound.file {
            let _ = f.remove();
        }
    }

    /// Whether the listening socket should be polled now (not while out of fds).
    pub fn accepting(&self, now: Instant) -> bool {
        self.pause.accepting(now)
    }

    /// Accepts waiting connections (a burst). Out of fds, pauses accepting and returns a
    /// warning to log (one a second at most).
    pub fn accept(&mut self, now: Instant) -> Option<crate::log::Event> {
        for _ in 0..ACCEPT_BURST {
            let flags = SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK;
            let raw = match socket::accept4(self.bound.fd.as_raw_fd(), flags) {
                Ok(fd) => fd,
                Err(Errno::EINTR) | Err(Errno::ECONNABORTED) => continue,
                Err(Errno::EMFILE) | Err(Errno::ENFILE) => {
                    return self.pause.out_of_fds(now, "metrics");
                }
                Err(_) => return None,
            };
            // SAFETY: accept4 just returned this fd and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            if self.clients.len() >= MAX_CLIENTS {
                // Make room by closing the oldest connection still sending its request; if
                // every one is being answered, this one is closed instead.
                let oldest = self
                    .clients
                    .iter()
                    .filter(|c| matches!(c.phase, Phase::Reading(_)))
                    .map(|c| c.id)
                    .min();
                match oldest {
                    Some(id) => self.drop_client(id),
                    None => continue,
                }
            }
            self.next_id += 1;
            self.clients.push(Client {
                id: self.next_id,
                fd,
                buf: Vec::new(),
                sent: 0,
                phase: Phase::Reading(now + REQUEST_TIMEOUT),
            });
        }
        None
    }

    /// The connections to poll, and for what.
    pub fn polled(&self) -> impl Iterator<Item = (ClientId, BorrowedFd<'_>, Interest)> {
        self.clients.iter().map(|c| {
            let interest = match c.phase {
                Phase::Reading(_) => Interest::Read,
                Phase::Writing(_) => Interest::Write,
            };
            (c.id, c.fd.as_fd(), interest)
        })
    }

    /// A connection is readable: its request, once the head is complete. A request for
    /// anything but `/metrics` and `/healthz` is answered here (404, 405, 400, 431).
    pub fn read(&mut self, id: ClientId, now: Instant) -> Option<Request> {
        let c = self.clients.iter_mut().find(|c| c.id == id)?;
        if !matches!(c.phase, Phase::Reading(_)) {
            return None;
        }
        let parsed = match read_head(c) {
            Head::Waiting => return None,
            Head::Closed => {
                // End of file or an error before a whole head: nothing to answer.
                self.drop_client(id);
                return None;
            }
            Head::TooLarge => Err(Response::text(431, "request header too large\n")),
            Head::Complete(end) => parse(&c.buf[..end]),
        };
        c.buf = Vec::new();
        match parsed {
            Ok(req) => Some(req),
            Err(resp) => {
                self.respond(id, resp, false, now);
                None
            }
        }
    }

    /// Queues the response to a client's request and writes what the socket takes now.
    pub fn respond(&mut self, id: ClientId, resp: Response, head_only: bool, now: Instant) {
        let Some(c) = self.clients.iter_mut().find(|c| c.id == id) else {
            return;
        };
        c.buf = encode_response(&resp, head_only);
        c.sent = 0;
        c.phase = Phase::Writing(now + WRITE_TIMEOUT);
        self.write(id);
    }

    /// A connection is writable: send more of its response; close it once all is sent.
    pub fn write(&mut self, id: ClientId) {
        let Some(c) = self.clients.iter_mut().find(|c| c.id == id) else {
            return;
        };
        if !matches!(c.phase, Phase::Writing(_)) {
            return;
        }
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        while c.sent < c.buf.len() {
            match socket::send(c.fd.as_raw_fd(), &c.buf[c.sent..], flags) {
                Ok(0) => break,
                Ok(n) => c.sent += n,
                Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
        if c.sent >= c.buf.len() {
            // The client reads to end of file: say it is the end.
            let _ = socket::shutdown(c.fd.as_raw_fd(), Shutdown::Write);
        }
        self.drop_client(id);
    }

    /// Drops connections past their deadline; ends an accept pause that is over.
    pub fn expire(&mut self, now: Instant) {
        self.pause.expire(now);
        self.clients.retain(|c| match c.phase {
            Phase::Reading(until) | Phase::Writing(until) => until > now,
        });
    }

    /// The next connection deadline, or the end of an accept pause.
    pub fn deadline(&self) -> Option<Instant> {
        self.clients
            .iter()
            .map(|c| match c.phase {
                Phase::Reading(until) | Phase::Writing(until) => until,
            })
            .chain(self.pause.deadline())
            .min()
    }

    fn drop_client(&mut self, id: ClientId) {
        self.clients.retain(|c| c.id != id);
    }
}

impl AsFd for MetricsServer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.bound.fd.as_fd()
    }
}

/// What reading a request head came to.
enum Head {
    Waiting,
    Closed,
    TooLarge,
    /// The head is `buf[..end]`.
    Complete(usize),
}

/// Reads what the client sent, up to the end of its head (and at most [`MAX_HEAD`] bytes).
fn read_head(c: &mut Client) -> Head {
    let mut chunk = [0u8; 2048];
    loop {
        let room = (MAX_HEAD + 4 - c.buf.len()).min(chunk.len());
        match socket::recv(c.fd.as_raw_fd(), &mut chunk[..room], MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return Head::Closed,
            Ok(n) => {
                let from = c.buf.len().saturating_sub(3);
                c.buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = head_end(&c.buf, from) {
                    return Head::Complete(end);
                }
                if c.buf.len() > MAX_HEAD {
                    return Head::TooLarge;
                }
            }
            Err(Errno::EAGAIN) => return Head::Waiting,
            Err(Errno::EINTR) => continue,
            Err(_) => return Head::Closed,
        }
    }
}

/// Where the head in `buf` ends (after its blank line: CRLF CRLF, or LF LF from a lax
/// client), searching from `from`.
fn head_end(buf: &[u8], from: usize) -> Option<usize> {
    let tail = &buf[from..];
    let crlf = tail
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4);
    let lf = tail.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    [crlf, lf].into_iter().flatten().min().map(|i| from + i)
}

/// The request line of a head: `GET|HEAD /metrics|/healthz HTTP/1.x` (a query string is
/// ignored), or the response that refuses it.
fn parse(head: &[u8]) -> std::result::Result<Request, Response> {
    let bad = || Response::text(400, "bad request\n");
    let line = head.split(|&b| b == b'\n').next().ok_or_else(bad)?;
    let line = std::str::from_utf8(line).map_err(|_| bad())?.trim_end();
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(bad());
    };
    if !version.starts_with("HTTP/1.") {
        return Err(bad());
    }
    let path = target.split('?').next().unwrap_or_default();
    let page = match path {
        "/metrics" => Page::Metrics,
        "/healthz" => Page::Healthz,
        _ => return Err(Response::text(404, "not found: try /metrics or /healthz\n")),
    };
    match method {
        "GET" => Ok(Request {
            page,
            head_only: false,
        }),
        "HEAD" => Ok(Request {
            page,
            head_only: true,
        }),
        _ => Err(Response::text(405, "method not allowed: use GET\n")),
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

fn encode_response(r: &Response, head_only: bool) -> Vec<u8> {
    let allow = if r.status == 405 {
        "Allow: GET, HEAD\r\n"
    } else {
        ""
    };
    let mut out = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Cache-Control: no-store\r\nConnection: close\r\n\r\n",
        r.status,
        reason(r.status),
        r.content_type,
        r.body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(r.body.as_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status_of(head: &str) -> u16 {
        match parse(head.as_bytes()) {
            Ok(_) => 200,
            Err(r) => r.status,
        }
    }

    #[test]
    fn requests() {
        let get = |p| parse(format!("GET {p} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes());
        assert_eq!(
            get("/metrics").ok(),
            Some(Request {
                page: Page::Metrics,
                head_only: false
            })
        );
        assert_eq!(
            get("/healthz?verbose").ok().map(|r| r.page),
            Some(Page::Healthz)
        );
        assert_eq!(
            parse(b"HEAD /healthz HTTP/1.0\r\n\r\n").ok(),
            Some(Request {
                page: Page::Healthz,
                head_only: true
            })
        );
        assert_eq!(status_of("GET / HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status_of("GET /metricsx HTTP/1.1\r\n\r\n"), 404);
        assert_eq!(status_of("POST /metrics HTTP/1.1\r\n\r\n"), 405);
        assert_eq!(status_of("GET /metrics\r\n\r\n"), 400);
        assert_eq!(status_of("GET /metrics SPDY/3\r\n\r\n"), 400);
        assert_eq!(status_of("\u{1}\r\n\r\n"), 400);
    }

    #[test]
    fn heads_end_at_the_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest", 0), Some(24));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n", 0), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n", 0), None);
    }

    #[test]
    fn responses() {
        let r = encode_response(&Response::text(503, "stopping\n"), false);
        let text = String::from_utf8(r).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("Content-Length: 9\r\n"));
        assert!(text.contains("Connection: close\r\n"));
        assert!(text.ends_with("\r\n\r\nstopping\n"));
        let head = String::from_utf8(encode_response(&Response::text(200, "ok\n"), true)).unwrap();
        assert!(head.ends_with("\r\n\r\n") && head.contains("Content-Length: 3\r\n"));
        let r405 = String::from_utf8(encode_response(&Response::text(405, ""), false)).unwrap();
        assert!(r405.contains("Allow: GET, HEAD\r\n"));
    }
}
