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
pub mod http;
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
pub use http::{MAX_HEAD, Page, Request, Response};
use http::{encode_response, head_end_after, parse};

/// Connections served at once.
pub const MAX_CLIENTS: usize = 32;
/// How long a client may take to send its request head.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a response may wait for a client that does not read it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections accepted per wake-up.
const ACCEPT_BURST: usize = 16;
/// The accept queue of the socket.
const BACKLOG: u32 = 64;

pub type ClientId = u64;

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
                let before = c.buf.len();
                c.buf.extend_from_slice(&chunk[..n]);
                if let Some(end) = head_end_after(&c.buf, before) {
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
