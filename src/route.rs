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
//! # Back-pressure
//! Each worker's channel has a bounded queue in the supervisor ([`MAX_QUEUE`] connections)
//! for when its socket buffer is full. A worker whose queue is full is skipped: the connection
//! goes to the next worker the policy ranks (for `ip-hash`, the client's next-best slot), and
//! only when every worker is full is the connection closed. Connections that arrive while no
//! worker runs at all wait in a bounded backlog ([`MAX_BACKLOG`]) until one starts.
//!
//! Every connection fd is an `OwnedFd` from accept to hand-over: sent, it is closed once after
//! `sendmsg` succeeded; not sent, it is closed once when dropped. Nothing else closes it.

use std::collections::VecDeque;
use std::io::IoSlice;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use multinode_worker::wire::{self, Record};
use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, MsgFlags, SockaddrStorage};

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

/// The supervisor's end of one worker channel.
pub struct Channel {
    fd: OwnedFd,
    queue: VecDeque<Conn>,
    /// Connections sent and not yet reported closed.
    pub outstanding: u64,
    /// The worker closed its end: nothing more goes here, and it is not polled.
    pub closed: bool,
    /// A send failed for want of a kernel resource (ETOOMANYREFS, ENOBUFS, ENOMEM): the
    /// queue waits until then instead of polling a socket that stays writable.
    pub retry_at: Option<std::time::Instant>,
}

/// How long a channel waits after a send failed for want of a kernel resource.
pub const RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// The channel's peer is gone (the worker exited or closed it).
#[derive(Debug)]
pub struct Gone;

impl Channel {
    pub fn new(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            queue: VecDeque::new(),
            outstanding: 0,
            closed: false,
            retry_at: None,
        }
    }

    /// Whether it can take no more connections now.
    pub fn is_full(&self) -> bool {
        self.closed || self.queue.len() >= MAX_QUEUE
    }

    pub fn has_queue(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether poll should wait for the socket to take more (a queue, and no retry pending).
    pub fn wants_write(&self) -> bool {
        self.has_queue() && self.retry_at.is_none()
    }

    pub fn push(&mut self, c: Conn) {
        self.outstanding += 1;
        self.queue.push_back(c);
    }

    /// The connections not sent yet (the worker is gone: they go elsewhere).
    pub fn take_queue(&mut self) -> VecDeque<Conn> {
        self.outstanding = self.outstanding.saturating_sub(self.queue.len() as u64);
        std::mem::take(&mut self.queue)
    }

    /// Sends queued connections in batches until the queue is empty or the socket is full.
    pub fn flush(&mut self, now: std::time::Instant) -> Result<(), Gone> {
        if self.retry_at.is_some_and(|t| t > now) {
            return Ok(());
        }
        self.retry_at = None;
        let mut msg = Vec::new();
        while !self.queue.is_empty() {
            let n = self.queue.len().min(MAX_BATCH);
            let batch = self.queue.iter().take(n);
            wire::encode_batch(
                batch.clone().map(|c| Record {
                    seq: c.seq,
                    peer: c.peer,
                }),
                &mut msg,
            );
            let fds: Vec<RawFd> = batch.map(|c| c.fd.as_raw_fd()).collect();
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let r = socket::sendmsg::<()>(
                self.fd.as_raw_fd(),
                &[IoSlice::new(&msg)],
                &cmsg,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                None,
            );
            match r {
                // The worker holds its own copies now; ours are closed as the Conns drop.
                Ok(_) => drop(self.queue.drain(..n)),
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                // Too many fds in flight for this user (RLIMIT_NOFILE), or no kernel memory:
                // the worker is fine, the kernel is not ready; try again shortly.
                Err(Errno::ETOOMANYREFS | Errno::ENOBUFS | Errno::ENOMEM) => {
                    self.retry_at = Some(now + RETRY);
                    return Ok(());
                }
                Err(_) => {
                    self.closed = true;
                    return Err(Gone);
                }
            }
        }
        Ok(())
    }

    /// Reads the worker's close notices; `Err(Gone)` at end of file.
    pub fn read_notices(&mut self) -> Result<(), Gone> {
        let mut buf = [0u8; wire::MAX_NOTICE_LEN];
        loop {
            match socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {
                    self.closed = true;
                    return Err(Gone);
                }
                Ok(n) => {
                    // A malformed notice is ignored: it only skews least-conn.
                    if let Ok(notice) = wire::decode_notice(&buf[..n]) {
                        self.outstanding = self.outstanding.saturating_sub(notice.len() as u64);
                    }
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    self.closed = true;
                    return Err(Gone);
                }
            }
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
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

/// Rendezvous (highest random weight) score of `slot` for a client address: each client ranks
/// all slots, takes the best live one, and changing the set of slots moves only the clients
/// whose best slot came or went.
pub fn score(ip: &IpAddr, slot: u32) -> u64 {
    // FNV-1a over the address and the slot, then a 64-bit finalizer (splitmix64) to spread it.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    match ip {
        IpAddr::V4(a) => a.octets().iter().for_each(|b| eat(*b)),
        IpAddr::V6(a) => a.octets().iter().for_each(|b| eat(*b)),
    }
    slot.to_le_bytes().iter().for_each(|b| eat(*b));
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
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

/// Routing state kept by the event loop.
pub struct Router {
    pub policy: crate::cli::RoutePolicy,
    pub proxy: bool,
    seq: u64,
    pub rr: usize,
    next_id: u64,
    pub pending: Vec<Pending>,
    /// Connections no worker could take yet.
    pub backlog: VecDeque<Conn>,
    /// One limiter per kind of warning (`proxy`, `accept`, `route`), so one cannot hide another.
    pub logs: Vec<(&'static str, RateLimit)>,
    /// Out of fds: listening sockets are not polled until then (they would stay readable and
    /// spin the loop); connections wait in the kernel's accept queue meanwhile.
    pub accept_paused_until: Option<std::time::Instant>,
}

/// How long accepting pauses when the supervisor is out of fds.
pub const ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(100);

impl Router {
    pub fn new(policy: crate::cli::RoutePolicy, proxy: bool) -> Self {
        Router {
            policy,
            proxy,
            seq: 0,
            rr: 0,
            next_id: 0,
            pending: Vec::new(),
            backlog: VecDeque::new(),
            logs: Vec::new(),
            accept_paused_until: None,
        }
    }

    pub fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    /// What `flush` sends, the SDK's channel receives: each connection, its seq and peer.
    #[test]
    fn the_sdk_receives_what_flush_sends() {
        let (sup, worker) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let mut ch = Channel::new(sup);
        let rx = multinode_worker::RouteChannel::new(worker).unwrap();
        let peers: [Option<SocketAddr>; 3] = [
            Some("192.0.2.1:4242".parse().unwrap()),
            Some("[2001:db8::7]:443".parse().unwrap()),
            None,
        ];
        // More than one batch, the last one short.
        let total = MAX_BATCH + 2;
        let mut kept = Vec::new();
        for i in 0..total {
            let (a, b) = UnixStream::pair().unwrap();
            kept.push(b);
            ch.push(Conn {
                fd: a.into(),
                peer: peers[i % 3],
                seq: 100 + i as u64,
                listener: 0,
            });
        }
        ch.flush(std::time::Instant::now()).unwrap();
        assert!(!ch.has_queue());
        for (i, k) in kept.iter_mut().enumerate() {
            let mut got = rx.accept().unwrap();
            assert_eq!(got.seq, Some(100 + i as u64));
            match peers[i % 3] {
                Some(p) => assert_eq!(got.peer.to_string(), p.to_string()),
                None => assert_eq!(got.peer.to_string(), "unix:(unnamed)"),
            }
            // The connection is the one pushed.
            got.conn.write_all(&[i as u8]).unwrap();
            let mut b = [0u8; 1];
            k.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i as u8);
            drop(got);
        }
        // Every close came back as a notice.
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(ch.outstanding, total as u64);
        ch.read_notices().unwrap();
        assert_eq!(ch.outstanding, 0);
        drop(rx);
        assert!(ch.read_notices().is_err(), "EOF when the worker leaves");
    }

    #[test]
    fn rendezvous_moves_few_clients() {
        let ips: Vec<IpAddr> = (0..2000u32)
            .map(|i| IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()))
            .collect();
        let best = |ip: &IpAddr, n: u32| (0..n).max_by_key(|s| score(ip, *s)).unwrap();
        let moved = ips.iter().filter(|ip| best(ip, 5) != best(ip, 6)).count();
        // Adding a sixth slot should move about 1/6 of the clients, never most of them.
        assert!(moved > 200 && moved < 500, "moved {moved} of 2000");
        let mut per = [0usize; 5];
        ips.iter().for_each(|ip| per[best(ip, 5) as usize] += 1);
        assert!(per.iter().all(|&n| n > 300), "uneven: {per:?}");
    }
}
