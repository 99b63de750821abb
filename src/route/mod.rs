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
//! # Cost per connection
//! The hand-over is on the path of every connection, so it is kept to the system calls it
//! needs: `accept4` returns the client's address itself (no `getpeername`); the connections
//! one wake-up accepted go to each worker as one `sendmsg` (a batch, buffers reused); and the
//! close notices do not wake the loop while connections arrive: a busy router (one that
//! accepted within the last [`router::BUSY`]) leaves them out of `poll` and reads them with
//! `recvmmsg`, several per call, on the listeners' wake-ups at least that often (every
//! wake-up for `least-conn`) and before `/metrics` answers; an idle one polls them again.
//! bench/RESULTS.md, "Route mode at the ceiling", has the profile behind this.
//!
//! Every connection fd is an `OwnedFd` from accept to hand-over: sent, it is closed once after
//! `sendmsg` succeeded; not sent, it is closed once when dropped. Nothing else closes it.

pub mod channel;
mod handover;
mod pending;
mod policy;
pub mod router;

use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use nix::errno::Errno;

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

/// Accepts one connection from a non-blocking listening socket, close-on-exec, with its
/// peer's address from `accept4` itself (no `getpeername`): the TCP client, or `None` for a
/// Unix socket. An IPv4 client of a dual-stack socket is given as the IPv4 address it is, so
/// it hashes as one.
pub fn accept(listener: BorrowedFd<'_>) -> Result<(OwnedFd, Option<SocketAddr>), Errno> {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut addr: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `addr` has room for `len` bytes, and accept4 writes at most that many.
    let raw = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            (&raw mut addr).cast(),
            &raw mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    if raw < 0 {
        return Err(Errno::last());
    }
    // SAFETY: accept4 just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    Ok((fd, std_addr(&addr, len)))
}

/// A TCP address `accept4` filled in, as a std address (`None` for any other family, or one
/// shorter than its family's).
fn std_addr(addr: &libc::sockaddr_storage, len: libc::socklen_t) -> Option<SocketAddr> {
    let len = len as usize;
    match i32::from(addr.ss_family) {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says it is a sockaddr_in, and `len` covers one;
            // sockaddr_storage is aligned for every sockaddr type.
            let a = unsafe { &*(&raw const *addr).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(a.sin_addr.s_addr));
            Some(SocketAddr::from((ip, u16::from_be(a.sin_port))))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let a = unsafe { &*(&raw const *addr).cast::<libc::sockaddr_in6>() };
            let ip = Ipv6Addr::from(a.sin6_addr.s6_addr);
            let port = u16::from_be(a.sin6_port);
            // A v4 client on a dual-stack socket hashes as the v4 address it is.
            Some(match ip.to_ipv4_mapped() {
                Some(v4) => SocketAddr::from((v4, port)),
                None => SocketAddr::from((ip, port)),
            })
        }
        _ => None,
    }
}
