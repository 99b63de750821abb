//! Route mode (`--route`): the supervisor accepts every connection itself, picks a worker by
//! policy, and hands the connected socket over a per-worker Unix SOCK_SEQPACKET channel with
//! SCM_RIGHTS — the seed article's master.js/worker.js design, for any worker that reads the
//! channel (the SDK does; the wire format is simple enough for any language).
//!
//! # Wire format
//! One datagram per batch, supervisor → worker, with the connections as SCM_RIGHTS; close
//! notices back (they feed `least-conn`). The format and its one codec live in the worker SDK,
//! `multinode_worker::wire`, which the workers decode with; here are only the sends and
//! receives.
//!
//! # Pieces
//! `router.rs` (accept, PROXY headers, dispatch, the channels of every worker), `channel.rs`
//! (one worker's channel and its queue), `pending.rs` (connections awaiting a PROXY header),
//! `policy.rs` (which worker: ip-hash, round-robin, least-conn).
//!
//! # Back-pressure
//! Each worker's channel has a bounded queue in the supervisor ([`MAX_QUEUE`] connections)
//! for when its socket buffer is full. A worker whose queue is full is skipped: the connection
//! goes to the next worker the policy ranks (for `ip-hash`, the client's next-best slot), and
//! only when every worker is full is the connection closed. Connections that arrive while no
//! worker runs at all wait in a bounded backlog ([`MAX_BACKLOG`]) until one starts.
//!
//! Every connection fd is an `OwnedFd` from accept to hand-over: sent, it is closed once after
//! `sendmsg` succeeded; not sent, it is closed once when dropped. Nothing else closes it.

pub mod channel;
mod handover;
mod pending;
mod policy;
pub mod router;

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, SockaddrStorage};

/// The most fds the kernel passes in one message (SCM_MAX_FD).
pub use multinode_worker::wire::MAX_BATCH;
/// Connections held per channel while its socket buffer is full.
pub const MAX_QUEUE: usize = 1024;
/// Connections held while no worker at all can take them.
pub const MAX_BACKLOG: usize = 4096;

/// An accepted connection on its way to a worker.
#[derive(Debug)]
pub struct Conn {
    pub fd: OwnedFd,
    /// The client: the TCP peer, or the address a PROXY header named.
    pub peer: Option<SocketAddr>,
    pub seq: u64,
    /// Which listening socket it came from (which channel of the worker it goes to).
    pub listener: usize,
}

/// The peer of an accepted socket, as a std address.
pub fn peer_of(fd: &OwnedFd) -> Option<SocketAddr> {
    let s: SockaddrStorage = socket::getpeername(fd.as_raw_fd()).ok()?;
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    s.as_sockaddr_in6().map(|v6| {
        let ip = v6.ip();
        // A v4 client on a dual-stack socket hashes as the v4 address it is.
        match ip.to_ipv4_mapped() {
            Some(v4) => SocketAddr::from((v4, v6.port())),
            None => SocketAddr::from((ip, v6.port())),
        }
    })
}

/// Prints at most one line a second for a recurring problem, counting what it held back.
pub struct RateLimit {
    last: Option<std::time::Instant>,
    held: u64,
}

impl RateLimit {
    pub const fn new() -> Self {
        RateLimit {
            last: None,
            held: 0,
        }
    }

    /// `Some(n)`: print now, mentioning `n` earlier occurrences that were not printed.
    pub fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < std::time::Duration::from_secs(1))
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}
