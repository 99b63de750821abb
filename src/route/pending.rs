//! Connections whose PROXY protocol header is still arriving (`--proxy-protocol`): read
//! without blocking, exactly the header's bytes, with a deadline.

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{self, MsgFlags};

/// How long a connection may take to send its PROXY header.
pub const PROXY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Connections waiting for their PROXY header at most; more are closed at once.
pub const MAX_PENDING: usize = 1024;

/// A connection whose PROXY header is still arriving.
pub struct Pending {
    pub id: u64,
    pub fd: OwnedFd,
    pub listener: usize,
    pub peer: Option<SocketAddr>,
    pub deadline: std::time::Instant,
    /// Header bytes consumed so far (all of it is header: only complete prefixes are read).
    got: Vec<u8>,
}

/// What became of a pending connection after its socket was readable.
pub enum Progress {
    Waiting,
    Done(Option<SocketAddr>),
    Failed(&'static str),
}

impl Pending {
    pub fn new(
        id: u64,
        fd: OwnedFd,
        listener: usize,
        peer: Option<SocketAddr>,
        now: std::time::Instant,
    ) -> Self {
        Pending {
            id,
            fd,
            listener,
            peer,
            deadline: now + PROXY_TIMEOUT,
            got: Vec::new(),
        }
    }

    /// Peeks at what arrived, consumes exactly the header bytes (never the data after them).
    pub fn advance(&mut self) -> Progress {
        use crate::proxy::{PEEK_MAX, Parsed, parse};
        let mut buf = [0u8; PEEK_MAX];
        let room = PEEK_MAX - self.got.len();
        let n = match socket::recv(
            self.fd.as_raw_fd(),
            &mut buf[..room],
            MsgFlags::MSG_PEEK | MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(0) => return Progress::Failed("closed before a PROXY header"),
            Ok(n) => n,
            Err(Errno::EAGAIN) | Err(Errno::EINTR) => return Progress::Waiting,
            Err(_) => return Progress::Failed("connection error before a PROXY header"),
        };
        let mut seen = self.got.clone();
        seen.extend_from_slice(&buf[..n]);
        let take = match parse(&seen) {
            Parsed::Invalid(why) => return Progress::Failed(why),
            Parsed::Incomplete if seen.len() >= PEEK_MAX => {
                return Progress::Failed("PROXY header too long");
            }
            Parsed::Incomplete => n,
            Parsed::Header { len, .. } => len - self.got.len(),
        };
        match socket::recv(
            self.fd.as_raw_fd(),
            &mut buf[..take],
            MsgFlags::MSG_DONTWAIT,
        ) {
            Ok(k) if k == take => {}
            _ => return Progress::Failed("connection error while reading the PROXY header"),
        }
        self.got.extend_from_slice(&buf[..take]);
        match parse(&self.got) {
            Parsed::Header { client, .. } => Progress::Done(client.or(self.peer)),
            _ => Progress::Waiting,
        }
    }
}
