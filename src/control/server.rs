//! The supervisor's end of the control socket: binding it, and its clients, none of which can
//! block the event loop.
//!
//! Each connection is non-blocking and has its own buffers: the request line is read as it
//! arrives (at most [`MAX_REQUEST`] bytes, within [`REQUEST_TIMEOUT`]), handed to the core,
//! and the reply is queued and written whenever the socket takes more (the loop polls it for
//! writability). At most [`MAX_CLIENTS`] connections are served at once; more are closed at
//! once. A reply larger than [`MAX_REPLY`] is replaced by an error. A client that stops
//! reading its reply for [`WRITE_TIMEOUT`] is dropped. `multinode stop` callers are held open
//! after their reply until the supervisor exits. Out of file descriptors, the listening
//! socket is not polled for [`ACCEPT_PAUSE`] (it would stay readable and spin the loop);
//! connections wait in its queue meanwhile.
//!
//! Who may ask what: each accepted connection's `SO_PEERCRED` uid is read once. Root and the
//! user who started multinode (the real uid at start) may ask anything; every other peer —
//! the workers' user too, when it is not the one who started multinode — may ask only for
//! `status`: anything else is answered `{"failed":{"error":"permission denied: ..."}}` here
//! and never reaches the core. Those peers hold at most [`MAX_GUESTS`] of the places, so they
//! can never lock root out.

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
use nix::unistd::Uid;

use super::protocol::{MAX_REQUEST, Reply, Request};
use crate::error::{Error, Result};
use crate::socket::file::{Failure, SocketFile, bind_in};

/// Connections served at once.
pub const MAX_CLIENTS: usize = 64;
/// The largest reply sent (a `status` of thousands of workers fits easily).
pub const MAX_REPLY: usize = 4 << 20;
/// How long a client may take to send its request line.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a reply may wait for a client that does not read it.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once from users who may only ask for `status`, so that they can
/// never take every place from root and the user who started multinode.
pub const MAX_GUESTS: usize = MAX_CLIENTS / 2;
/// Connections accepted per wake-up.
const ACCEPT_BURST: usize = 16;
/// How long accepting pauses when the supervisor is out of fds.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

pub type ClientId = u64;

pub(super) enum Phase {
    /// Reading the request line, until the deadline.
    Reading(Instant),
    /// The request is with the core; the reply is not ready yet.
    Waiting,
    /// Writing the reply, until the deadline; then close, or hold.
    Writing(Instant),
    /// Reply sent; kept open until the supervisor exits.
    Held,
}

pub(super) struct Client {
    pub(super) id: ClientId,
    pub(super) stream: UnixStream,
    pub(super) buf: Vec<u8>,
    pub(super) sent: usize,
    pub(super) phase: Phase,
    /// Keep it open after the reply, until the supervisor exits.
    pub(super) hold: bool,
    /// The peer's uid (`SO_PEERCRED`), if the kernel told it.
    pub(super) uid: Option<u32>,
    /// The peer is root or the user who started multinode: it may ask for anything, not just
    /// `status`.
    pub(super) may_act: bool,
}

/// What polling a client's socket is for.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Interest {
    Read,
    Write,
}

pub struct ControlServer {
    /// Its directory was still at its path once the socket was in it.
    pub(super) dir_linked: bool,
    pub(super) listener: UnixListener,
    pub path: PathBuf,
    pub(super) file: SocketFile,
    pub(super) clients: Vec<Client>,
    pub(super) next_id: ClientId,
    /// Out of fds: the listening socket is not polled until then.
    pub(super) paused_until: Option<Instant>,
    /// Out-of-fds warnings: one a second at most.
    pub(super) warnings: crate::route::RateLimit,
    /// The real uid at start: the user who started multinode.
    pub(super) starter: Uid,
}

impl ControlServer {
    /// Binds the control socket (`--control PATH`, else BASE/NAME/control.sock; mod.rs makes
    /// the directory safe), refusing one that another supervisor still serves. The file is
    /// born 0666 and belongs to whoever starts multinode (root, usually): anyone who can reach
    /// it may connect, and each connection's `SO_PEERCRED` decides what it may ask.
    ///
    /// Call before the privilege drop: the real uid now is the user who started multinode,
    /// who may act on it (with root).
    pub fn bind(explicit: Option<&Path>, name: &str) -> Result<ControlServer> {
        // Another multinode of this name that just ended may have its guard remove the
        // directory between our open and our bind: then bind again in the new one.
        for _ in 0..3 {
            let server = Self::bind_once(explicit, name)?;
            if server.dir_linked {
                return Ok(server);
            }
        }
        Err(Error::socket(format!(
            "control socket for {name}: its directory keeps being removed while multinode binds in it; is another multinode of this name stopping?"
        )))
    }

    fn bind_once(explicit: Option<&Path>, name: &str) -> Result<ControlServer> {
        let (path, dir) = super::socket_dir(explicit, name)?;
        let shown = path.display();
        let file_name = path.file_name().unwrap_or_default();
        let bind = |at: &Path| {
            UnixListener::bind(at)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        };
        // From here on, an error (or the end of the run) removes the file again.
        let (listener, file) = bind_in(&dir, file_name, 0o666, None, bind).map_err(|f| {
            Error::socket(match f {
                Failure::InUse => format!(
                    "control socket {shown} is in use by another running multinode; give this one another --name (or --control)"
                ),
                Failure::NotSocket => format!(
                    "control socket {shown}: exists and is not a socket; refusing to replace it"
                ),
                Failure::Bind(e, _) => format!(
                    "control socket {shown}: cannot bind: {}",
                    e.desc().to_lowercase()
                ),
                Failure::Changed => format!(
                    "control socket {shown}: replaced right after it was bound (by another process?); refusing to use it"
                ),
                Failure::Io(what, e) => format!(
                    "control socket {shown}: {what}: {}",
                    crate::config::io_reason(&e)
                ),
            })
        })?;
        listener.set_nonblocking(true).map_err(|e| {
            Error::socket(format!(
                "control socket {shown}: cannot make it non-blocking: {e}"
            ))
        })?;
        let dir_linked = dir.still_at_path();
        Ok(ControlServer {
            dir_linked,
            listener,
            path,
            file,
            clients: Vec::new(),
            next_id: 0,
            paused_until: None,
            warnings: crate::route::RateLimit::new(),
            starter: Uid::current(),
        })
    }

    /// The socket file, to be removed at exit (by whoever still may).
    pub fn file(&self) -> &SocketFile {
        &self.file
    }

    /// Removes the socket file if it is still ours.
    pub fn remove(&mut self) -> std::io::Result<()> {
        self.file.remove().map(drop)
    }

    /// Whether the listening socket should be polled now (not while out of fds).
    pub fn accepting(&self, now: Instant) -> bool {
        self.paused_until.is_none_or(|t| t <= now)
    }

    /// Accepts waiting connections (a burst); over [`MAX_CLIENTS`] (or [`MAX_GUESTS`] for
    /// those who may only ask for `status`) they are closed at once. Out of fds, pauses
    /// accepting and returns a warning to log (one a second at most).
    pub fn accept(&mut self, now: Instant) -> Option<crate::log::Event> {
        self.paused_until = None;
        for _ in 0..ACCEPT_BURST {
            let stream = match self.listener.accept() {
                Ok((stream, _)) => stream,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                    self.paused_until = Some(now + ACCEPT_PAUSE);
                    let held = self.warnings.allow(now)?;
                    let more = match held {
                        0 => String::new(),
                        n => format!(" ({n} more like it not shown)"),
                    };
                    return Some(
                        crate::log::Event::warn(
                            "accept",
                            format!(
                                "control socket: out of file descriptors; connections wait in its queue{more}"
                            ),
                        )
                        .with("socket", "control")
                        .with("held", held),
                    );
                }
                Err(_) => return None,
            };
            let uid = getsockopt(&stream, PeerCredentials).ok().map(|c| c.uid());
            let may_act = uid.is_some_and(|u| u == 0 || u == self.starter.as_raw());
            let guests = self.clients.iter().filter(|c| !c.may_act).count();
            if self.clients.len() >= MAX_CLIENTS
                || (!may_act && guests >= MAX_GUESTS)
                || stream.set_nonblocking(true).is_err()
            {
                continue; // dropped: closed
            }
            self.next_id += 1;
            self.clients.push(Client {
                id: self.next_id,
                stream,
                buf: Vec::new(),
                sent: 0,
                phase: Phase::Reading(now + REQUEST_TIMEOUT),
                hold: false,
                uid,
                may_act,
            });
        }
        None
    }

    /// The clients to poll, and for what.
    pub fn polled(&self) -> impl Iterator<Item = (ClientId, BorrowedFd<'_>, Interest)> {
        self.clients.iter().filter_map(|c| {
            let interest = match c.phase {
                Phase::Reading(_) => Interest::Read,
                Phase::Writing(_) => Interest::Write,
                Phase::Waiting | Phase::Held => return None,
            };
            Some((c.id, c.stream.as_fd(), interest))
        })
    }

    /// A client's socket is readable: its request, once the line is complete. A malformed
    /// request is answered here and never reaches the core.
    pub fn read(&mut self, id: ClientId, now: Instant) -> Option<Request> {
        let c = self.clients.iter_mut().find(|c| c.id == id)?;
        if !matches!(c.phase, Phase::Reading(_)) {
            return None;
        }
        let mut chunk = [0u8; 1024];
        let line_end = loop {
            match c.stream.read(&mut chunk) {
                Ok(0) => break None,
                Ok(n) => {
                    c.buf.extend_from_slice(&chunk[..n]);
                    if let Some(end) = c.buf.iter().position(|&b| b == b'\n') {
                        break Some(end);
                    }
                    if c.buf.len() > MAX_REQUEST {
                        break None;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return None,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break None,
            }
        };
        let Some(end) = line_end else {
            // End of file, an error or an overlong line: nothing to answer.
            self.drop_client(id);
            return None;
        };
        let parsed = serde_json::from_slice::<Request>(&c.buf[..end]);
        c.buf.clear();
        match parsed {
            Ok(req) if !c.may_act && req != Request::Status => {
                let reply = Reply::failed(denied(&req, c.uid, self.starter));
                self.reply(id, &reply, now);
                None
            }
            Ok(req) => {
                c.phase = Phase::Waiting;
                Some(req)
            }
            Err(e) => {
                let reply = Reply::failed(format!("not a valid request: {e}"));
                self.reply(id, &reply, now);
                None
            }
        }
    }

    /// Queues `reply` for a client and writes what the socket takes now.
    pub fn reply(&mut self, id: ClientId, reply: &Reply, now: Instant) {
        let Some(c) = self.clients.iter_mut().find(|c| c.id == id) else {
            return;
        };
        let mut text = serde_json::to_vec(reply).unwrap_or_default();
        if text.len() > MAX_REPLY {
            let too_big = Reply::failed(format!(
                "the reply is larger than {} MiB; ask for less",
                MAX_REPLY >> 20
            ));
            text = serde_json::to_vec(&too_big).unwrap_or_default();
        }
        text.push(b'\n');
        c.buf = text;
        c.sent = 0;
        c.phase = Phase::Writing(now + WRITE_TIMEOUT);
        self.write(id);
    }

    /// Marks a client to be held open after its reply (`multinode stop`), until the
    /// supervisor exits.
    pub fn hold(&mut self, id: ClientId) {
        if let Some(c) = self.clients.iter_mut().find(|c| c.id == id) {
            c.hold = true;
        }
    }

    /// A client's socket is writable: send more of its reply.
    pub fn write(&mut self, id: ClientId) {
        let Some(c) = self.clients.iter_mut().find(|c| c.id == id) else {
            return;
        };
        if !matches!(c.phase, Phase::Writing(_)) {
            return;
        }
        while c.sent < c.buf.len() {
            match c.stream.write(&c.buf[c.sent..]) {
                Ok(0) => break,
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        if c.sent >= c.buf.len() && c.hold {
            c.phase = Phase::Held;
            c.buf = Vec::new();
        } else {
            self.drop_client(id);
        }
    }

    /// Drops clients past their deadline; ends an accept pause that is over.
    pub fn expire(&mut self, now: Instant) {
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
        }
        self.clients.retain(|c| match c.phase {
            Phase::Reading(until) | Phase::Writing(until) => until > now,
            Phase::Waiting | Phase::Held => true,
        });
    }

    /// The next client deadline, or the end of an accept pause.
    pub fn deadline(&self) -> Option<Instant> {
        self.clients
            .iter()
            .filter_map(|c| match c.phase {
                Phase::Reading(until) | Phase::Writing(until) => Some(until),
                Phase::Waiting | Phase::Held => None,
            })
            .chain(self.paused_until)
            .min()
    }

    /// The connections held open (`multinode stop` callers), to close last at exit; every
    /// other client is dropped.
    pub fn take_held(&mut self) -> Vec<UnixStream> {
        let clients = std::mem::take(&mut self.clients);
        clients
            .into_iter()
            .filter(|c| c.hold)
            .map(|c| {
                let _ = c.stream.set_nonblocking(false);
                c.stream
            })
            .collect()
    }

    fn drop_client(&mut self, id: ClientId) {
        self.clients.retain(|c| c.id != id);
    }
}

/// The refusal of `req` to the peer `uid`: starts with "permission denied:", which the client
/// turns into exit code 4.
fn denied(req: &Request, uid: Option<u32>, starter: Uid) -> String {
    let what = match req {
        Request::Status => "status",
        Request::Reload => "reload",
        Request::Scale { .. } => "scale",
        Request::Stop => "stop",
        Request::Upgrade { .. } => "upgrade",
    };
    let who = uid.map_or_else(
        || "a peer of unknown uid".to_string(),
        |u| format!("uid {u}"),
    );
    let allowed = if starter.is_root() {
        "root".to_string()
    } else {
        format!("root and uid {starter}")
    };
    format!(
        "permission denied: {what} is for {allowed} (who started this multinode); {who} may only ask for status"
    )
}

impl AsFd for ControlServer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}
