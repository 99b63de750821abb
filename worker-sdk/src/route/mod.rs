//! Route mode: connections the supervisor accepted and passes to this
//! worker over a Unix `SOCK_SEQPACKET` channel.
//!
//! With `multinode serve --route ip-hash|round-robin|least-conn`, the
//! supervisor accepts every connection itself, picks a worker by policy
//! and sends it the connected socket with `SCM_RIGHTS`, along with the
//! client's address and a sequence number. The worker inherits the channel
//! where the listening socket would be (fd 3 onwards, `LISTEN_FDS`, under
//! the listener's name in `LISTEN_FDNAMES`), so [`listeners()`] returns it
//! as [`Listener::Routed`]. Its [`accept`](RouteChannel::accept) and
//! [`accept_until`](RouteChannel::accept_until) return an [`Accepted`] like
//! a listening socket's, with `seq: Some(n)`; the connection is a
//! [`Connection::Routed`] that tells the supervisor when it closes.
//!
//! # Wire format
//!
//! The channel carries one datagram per batch of connections, their
//! descriptors attached, and the worker's close notices back. The format
//! and its codec are in [`wire`](crate::wire), for workers in any language
//! that can `recvmsg` file descriptors.
//!
//! # What this implementation does
//!
//! - One `recvmsg` can carry up to 253 connections. They are received at
//!   once (close-on-exec), buffered in the channel and handed out one per
//!   accept. Handles made with [`RouteChannel::try_clone`] share the buffer,
//!   and a thread waiting in an accept wakes up for connections another
//!   thread buffered, so no connection waits while an acceptor is idle.
//! - Every received descriptor is owned (`OwnedFd`) from the moment
//!   `recvmsg` returns, so each is closed exactly once, whatever happens.
//! - A malformed message (bad magic or version, a length or `count` that
//!   does not match its descriptors, an unknown address family, a message
//!   too long) is an error of kind `InvalidData`; its descriptors are
//!   closed.
//! - A message whose descriptors did not all arrive (`MSG_CTRUNC`; in
//!   practice: this process is out of file descriptors) is an error of kind
//!   `Other`; the descriptors that did arrive are closed and the supervisor
//!   is sent a close notice for all of its connections.
//! - When a [`RoutedConnection`] is dropped (after its socket is closed),
//!   a close notice for its seq goes to the supervisor, one datagram per
//!   connection, `MSG_DONTWAIT`, errors ignored.
//!
//! [`listeners()`]: crate::listeners
//! [`Listener::Routed`]: crate::Listener::Routed
//! [`Accepted`]: crate::Accepted
//! [`Connection::Routed`]: crate::Connection::Routed

// This file: `RouteChannel` and `RoutedConnection`. Receiving a batch is
// in `recv.rs`, close notices in `notice.rs`.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::activation::{peer_name, socket_family, sockopt_int};
use crate::addr::PeerAddr;
use crate::listener::{Accepted, Connection, timed_out};
use crate::stop::{self, Stop, Waited};
pub use crate::wire::{MAX_BATCH, MAX_NOTICE};

mod notice;
mod recv;

pub use notice::CloseNotice;
use notice::send_notice;
use recv::{Received, receive};

/// The worker's end of a route channel: hands out the connections the
/// supervisor routes to this worker. See the [module docs](self) for what
/// it does, and [`wire`](crate::wire) for the protocol.
///
/// Usually reached as [`Listener::Routed`](crate::Listener::Routed), whose
/// methods cover every kind of listener; use it directly when you know the
/// worker runs in route mode.
pub struct RouteChannel {
    shared: Arc<Shared>,
}

/// What every handle of one channel shares. Connections hold it weakly, to
/// send their close notices while the channel is open; the channel closes
/// when its last handle is dropped, so the supervisor sees the worker leave.
struct Shared {
    fd: OwnedFd,
    /// An eventfd that is readable exactly while `queue` is non-empty
    /// (maintained under the lock), so threads waiting in poll wake for
    /// connections another thread received.
    wake: OwnedFd,
    queue: Mutex<VecDeque<Item>>,
}

/// A received connection, not handed out yet.
struct Item {
    fd: OwnedFd,
    seq: u64,
    peer: Option<SocketAddr>,
}

/// A connection the supervisor routed to this worker: a TCP or Unix
/// stream, and the notice that tells the supervisor when it closes.
///
/// Reach it through [`Connection`] (it is [`Connection::Routed`]), which
/// reads, writes and has every other method for all kinds of connection.
/// Dropping it closes the socket, then sends the close notice.
#[derive(Debug)]
pub struct RoutedConnection {
    // Declared first, so dropped first: the socket closes before the notice
    // says so.
    conn: Box<Connection>,
    notice: CloseNotice,
}

/// What one attempt to get a connection found.
enum Next {
    Conn(Box<Accepted>),
    /// Nothing buffered and nothing in the channel now.
    Empty,
    /// The supervisor closed the channel, and nothing is buffered.
    Eof,
}

impl RouteChannel {
    /// Wraps the worker's end of a route channel, a connected Unix
    /// `SOCK_SEQPACKET` socket ([`listeners()`](crate::listeners) does this
    /// for an inherited one). An fd of any other kind is an error of kind
    /// `InvalidInput` (and is closed).
    pub fn new(fd: OwnedFd) -> io::Result<RouteChannel> {
        let raw = fd.as_raw_fd();
        let ty = sockopt_int(raw, libc::SO_TYPE)?;
        let family = socket_family(raw)?;
        let listening = sockopt_int(raw, libc::SO_ACCEPTCONN)?;
        let connected = peer_name(raw).is_ok();
        if family != libc::AF_UNIX || ty != libc::SOCK_SEQPACKET || listening != 0 || !connected {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a route channel is a connected Unix SOCK_SEQPACKET socket",
            ));
        }
        Ok(RouteChannel::with_wake(fd, new_wake()?))
    }

    /// The channel `fd` (already checked) with the eventfd from [`new_wake`].
    pub(crate) fn with_wake(fd: OwnedFd, wake: OwnedFd) -> RouteChannel {
        RouteChannel {
            shared: Arc::new(Shared {
                fd,
                wake,
                queue: Mutex::new(VecDeque::new()),
            }),
        }
    }

    /// Waits for a routed connection and returns it, like a listening
    /// socket's `accept`: a buffered one first, else the next message.
    ///
    /// - The supervisor closed the channel (it is gone): an error of kind
    ///   `UnexpectedEof`, once nothing is buffered.
    /// - The channel is non-blocking ([`set_nonblocking`](Self::set_nonblocking)):
    ///   `WouldBlock` when no connection is there.
    /// - A malformed message: `InvalidData`; a message whose descriptors did
    ///   not all arrive: `Other` (see the [module docs](self)). The next
    ///   call goes on with the next message.
    ///
    /// It waits through signals. A connection whose client left before it
    /// was handed out (family 0 and `getpeername` fails) is skipped.
    pub fn accept(&self) -> io::Result<Accepted> {
        loop {
            match self.next()? {
                Next::Conn(a) => return Ok(*a),
                Next::Eof => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "route channel closed: the supervisor sends no more connections",
                    ));
                }
                Next::Empty => {
                    if self.is_nonblocking()? {
                        return Err(io::ErrorKind::WouldBlock.into());
                    }
                    stop::wait_any(&self.poll_fds(), false)?;
                }
            }
        }
    }

    /// Waits for a routed connection, or for a stop request.
    ///
    /// Once `stop` is requested it no longer waits, but it still returns
    /// every connection already buffered or queued in the channel, one per
    /// call (received with `MSG_DONTWAIT`), and only then `Ok(None)`: the
    /// supervisor sent them to this worker and to no other, so a draining
    /// worker must serve them. Call it until it returns `None`.
    ///
    /// It also returns `Ok(None)` when the supervisor closed the channel
    /// (it is gone; no connection will ever come) and nothing is buffered.
    /// [`Stop::is_requested`] tells the two apart: a worker that sees
    /// `None` without a stop should drain and exit. Errors are those of
    /// [`accept`](Self::accept); after an error, call it again.
    ///
    /// It works the same whether the channel is blocking or not.
    pub fn accept_until(&self, stop: &Stop) -> io::Result<Option<Accepted>> {
        self.accept_before(stop, None)
    }

    /// [`accept_until`](Self::accept_until) that also gives up after
    /// `timeout` with an error of kind [`TimedOut`](io::ErrorKind::TimedOut)
    /// when no connection came (see [`Listener::accept_timeout`]). After a
    /// stop it returns what is buffered or queued, then `Ok(None)`, without
    /// waiting.
    ///
    /// [`Listener::accept_timeout`]: crate::Listener::accept_timeout
    pub fn accept_timeout(&self, stop: &Stop, timeout: Duration) -> io::Result<Option<Accepted>> {
        self.accept_before(stop, Instant::now().checked_add(timeout))
    }

    /// `accept_until` with an optional deadline.
    pub(crate) fn accept_before(
        &self,
        stop: &Stop,
        deadline: Option<Instant>,
    ) -> io::Result<Option<Accepted>> {
        loop {
            let stopping = stop.is_requested();
            match self.next()? {
                Next::Conn(a) => return Ok(Some(*a)),
                Next::Eof => return Ok(None),
                Next::Empty if stopping => return Ok(None),
                // Readable, or a stop: either way, look again.
                Next::Empty => {
                    if stop::wait_any_until(&self.poll_fds(), true, deadline)? == Waited::TimedOut {
                        return Err(timed_out());
                    }
                }
            }
        }
    }

    /// How many received connections are buffered, waiting to be handed out.
    pub fn buffered(&self) -> usize {
        self.shared.lock().len()
    }

    /// Sets `O_NONBLOCK` on the channel (this worker's alone). It only
    /// changes [`accept`](Self::accept), which then returns `WouldBlock`
    /// instead of waiting.
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        let fd = self.shared.fd.as_raw_fd();
        // SAFETY: F_GETFL/F_SETFL only read and write the file's flags.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags == -1 {
            return Err(io::Error::last_os_error());
        }
        let new = if nonblocking {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        // SAFETY: as above.
        if new != flags && unsafe { libc::fcntl(fd, libc::F_SETFL, new) } == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A second handle to the same channel, for accepting on several
    /// threads. Unlike a socket's `try_clone` it duplicates no fd: the
    /// handles share the channel and its buffer, and it never fails. The
    /// channel closes when the last handle is dropped.
    pub fn try_clone(&self) -> io::Result<RouteChannel> {
        Ok(RouteChannel {
            shared: Arc::clone(&self.shared),
        })
    }

    fn poll_fds(&self) -> [RawFd; 2] {
        [self.shared.fd.as_raw_fd(), self.shared.wake.as_raw_fd()]
    }

    fn is_nonblocking(&self) -> io::Result<bool> {
        // SAFETY: F_GETFL only reads the file's flags.
        let flags = unsafe { libc::fcntl(self.shared.fd.as_raw_fd(), libc::F_GETFL) };
        if flags == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(flags & libc::O_NONBLOCK != 0)
    }

    /// One connection: a buffered one, else from the message received now
    /// (never waits).
    fn next(&self) -> io::Result<Next> {
        loop {
            if let Some(item) = self.shared.pop() {
                match hand_out(&self.shared, item) {
                    Ok(a) => return Ok(Next::Conn(Box::new(a))),
                    // The client is gone already; its notice went out.
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => continue,
                    Err(e) => return Err(e),
                }
            }
            match receive(self.shared.fd.as_fd(), MAX_BATCH) {
                Ok(Received::Batch(items)) => self.shared.push(items),
                Ok(Received::Eof) => return Ok(Next::Eof),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Next::Empty),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

impl fmt::Debug for RouteChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteChannel")
            .field("fd", &self.shared.fd.as_raw_fd())
            .field("buffered", &self.buffered())
            .finish()
    }
}

impl AsFd for RouteChannel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.shared.fd.as_fd()
    }
}

impl AsRawFd for RouteChannel {
    fn as_raw_fd(&self) -> RawFd {
        self.shared.fd.as_raw_fd()
    }
}

impl From<RouteChannel> for OwnedFd {
    /// The channel's fd, for code that reads the protocol itself. If this
    /// was the last handle, that is the channel's own fd, and the
    /// connections still buffered in it are closed (and reported closed to
    /// the supervisor); otherwise (other handles, or a connection sending
    /// its close notice right now) a duplicate, and the buffer stays with
    /// the other handles.
    ///
    /// # Panics
    ///
    /// When the duplicate cannot be made (the process is out of fds).
    fn from(c: RouteChannel) -> OwnedFd {
        match Arc::try_unwrap(c.shared) {
            Ok(shared) => {
                let queue = shared.queue.into_inner().unwrap_or_else(|e| e.into_inner());
                let seqs: Vec<u64> = queue.iter().map(|i| i.seq).collect();
                drop(queue);
                send_notice(shared.fd.as_fd(), &seqs);
                shared.fd
            }
            Err(shared) => shared
                .fd
                .try_clone()
                .expect("duplicating a route channel's fd"),
        }
    }
}

impl IntoRawFd for RouteChannel {
    /// As `OwnedFd::from`, which see (it can panic).
    fn into_raw_fd(self) -> RawFd {
        OwnedFd::from(self).into_raw_fd()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, VecDeque<Item>> {
        // A queue of owned fds is valid after a panic.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, items: Vec<Item>) {
        let mut queue = self.lock();
        let was_empty = queue.is_empty();
        queue.extend(items);
        if was_empty && !queue.is_empty() {
            let one: u64 = 1;
            // SAFETY: writes 8 bytes from `one`. It cannot fail: the counter
            // is 0 here (it is 0 while the queue is empty).
            unsafe { libc::write(self.wake.as_raw_fd(), (&raw const one).cast(), 8) };
        }
    }

    fn pop(&self) -> Option<Item> {
        let mut queue = self.lock();
        let item = queue.pop_front()?;
        if queue.is_empty() {
            let mut count: u64 = 0;
            // SAFETY: reads 8 bytes into `count`, resetting the counter to 0
            // (the eventfd is non-blocking; it is non-zero here).
            unsafe { libc::read(self.wake.as_raw_fd(), (&raw mut count).cast(), 8) };
        }
        Some(item)
    }
}

impl RoutedConnection {
    /// The supervisor's sequence number for this connection.
    pub fn seq(&self) -> u64 {
        self.notice.seq
    }

    /// The stream: [`Connection::Tcp`] or [`Connection::Unix`].
    pub fn get_ref(&self) -> &Connection {
        &self.conn
    }

    /// The stream, mutably: [`Connection::Tcp`] or [`Connection::Unix`].
    pub fn get_mut(&mut self) -> &mut Connection {
        &mut self.conn
    }

    /// Separates the stream ([`Connection::Tcp`] or [`Connection::Unix`])
    /// from the close notice, which is sent when the [`CloseNotice`] is
    /// dropped: drop it after closing the stream.
    pub fn into_parts(self) -> (Connection, CloseNotice) {
        let RoutedConnection { conn, notice } = self;
        (*conn, notice)
    }
}

/// Turns a received connection into what `accept` returns. On error the
/// connection is closed and reported closed.
fn hand_out(shared: &Arc<Shared>, item: Item) -> io::Result<Accepted> {
    let Item { fd, seq, peer } = item;
    let notice = CloseNotice {
        seq,
        channel: Arc::downgrade(shared),
    };
    let conn = match sockopt_int(fd.as_raw_fd(), libc::SO_DOMAIN)? {
        libc::AF_INET | libc::AF_INET6 => Connection::Tcp(TcpStream::from(fd)),
        libc::AF_UNIX => Connection::Unix(UnixStream::from(fd)),
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("route channel: connection {seq} is a socket of address family {other}"),
            ));
        }
    };
    let peer = match peer {
        Some(a) => PeerAddr::Tcp(a),
        None => conn.peer_addr()?,
    };
    Ok(Accepted {
        conn: Connection::Routed(RoutedConnection {
            conn: Box::new(conn),
            notice,
        }),
        peer,
        seq: Some(seq),
    })
}

/// A non-blocking eventfd for [`Shared::wake`].
pub(crate) fn new_wake() -> io::Result<OwnedFd> {
    // SAFETY: plain eventfd(2) call; the result is checked.
    let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
    if fd == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::test_util;
    use crate::wire;
    use std::io::{Read, Write};
    use std::mem;
    use std::net::{Shutdown, TcpListener};
    use std::thread;
    use std::time::Duration;

    /// A connected SOCK_SEQPACKET pair: (the supervisor's end, the worker's
    /// channel).
    pub(crate) fn pair() -> (OwnedFd, RouteChannel) {
        let (a, b) = test_util::seqpacket_pair();
        (a, RouteChannel::new(b).unwrap())
    }

    pub(crate) const HEADER: usize = wire::HEADER_LEN;
    const RECORD: usize = wire::RECORD_LEN;

    /// A record as the supervisor encodes it.
    pub(crate) fn record(seq: u64, peer: Option<SocketAddr>) -> [u8; RECORD] {
        let mut m = Vec::new();
        wire::encode_batch([wire::Record { seq, peer }], &mut m);
        m[HEADER..].try_into().unwrap()
    }

    pub(crate) fn message(records: &[[u8; RECORD]]) -> Vec<u8> {
        let mut m = b"MNRT\x01\x00".to_vec();
        m.extend_from_slice(&(records.len() as u16).to_le_bytes());
        records.iter().for_each(|r| m.extend_from_slice(r));
        m
    }

    /// sendmsg with `fds` as SCM_RIGHTS.
    pub(crate) fn send(sup: &OwnedFd, data: &[u8], fds: &[RawFd]) {
        let payload = mem::size_of_val(fds);
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: data.as_ptr().cast_mut().cast(),
            iov_len: data.len(),
        };
        // SAFETY: an all-zero msghdr is valid; the pointers set below stay
        // valid during sendmsg, and the cmsg is written within `control`.
        unsafe {
            let mut msg: libc::msghdr = mem::zeroed();
            msg.msg_iov = &raw mut iov;
            msg.msg_iovlen = 1;
            if !fds.is_empty() {
                msg.msg_control = control.as_mut_ptr().cast();
                msg.msg_controllen = space as _;
                let c = libc::CMSG_FIRSTHDR(&msg);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
                std::ptr::copy_nonoverlapping(
                    fds.as_ptr(),
                    libc::CMSG_DATA(c).cast::<RawFd>(),
                    fds.len(),
                );
            }
            let n = libc::sendmsg(sup.as_raw_fd(), &msg, libc::MSG_NOSIGNAL);
            assert_eq!(n, data.len() as isize, "{}", io::Error::last_os_error());
        }
    }

    /// `n` connected Unix stream pairs: (ends to pass, ends kept here).
    pub(crate) fn streams(n: usize) -> (Vec<UnixStream>, Vec<UnixStream>) {
        (0..n).map(|_| UnixStream::pair().unwrap()).unzip()
    }

    pub(crate) fn raw(s: &[UnixStream]) -> Vec<RawFd> {
        s.iter().map(|s| s.as_raw_fd()).collect()
    }

    /// Whether the far end of `kept` has been closed: a read sees EOF.
    pub(crate) fn sees_eof(kept: &mut UnixStream) -> bool {
        kept.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        matches!(kept.read(&mut [0u8; 1]), Ok(0))
    }

    /// The seqs of the close notices that have arrived on `sup`.
    pub(crate) fn notices(sup: &OwnedFd) -> Vec<u64> {
        let mut seqs = Vec::new();
        let mut buf = [0u8; HEADER + 8 * MAX_NOTICE];
        loop {
            // SAFETY: receives into `buf`, valid for its length.
            let n = unsafe {
                libc::recv(
                    sup.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                return seqs;
            }
            seqs.extend(wire::decode_notice(&buf[..n as usize]).unwrap().seqs());
        }
    }

    #[test]
    fn decodes_peers_and_seqs() {
        let (sup, ch) = pair();
        let v4: SocketAddr = "192.0.2.7:4242".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        let (pass, mut kept) = streams(3);
        let m = message(&[
            record(7, Some(v4)),
            record(8, Some(v6)),
            record(u64::MAX, None),
        ]);
        send(&sup, &m, &raw(&pass));
        drop(pass);

        let a = ch.accept().unwrap();
        assert_eq!((a.seq, a.peer.to_string()), (Some(7), v4.to_string()));
        let b = ch.accept().unwrap();
        assert_eq!((b.seq, b.peer.to_string()), (Some(8), v6.to_string()));
        assert_eq!(ch.buffered(), 1);
        let c = ch.accept().unwrap();
        // Family 0: the address comes from the socket (an unnamed Unix peer).
        assert_eq!(c.seq, Some(u64::MAX));
        assert_eq!(c.peer.to_string(), "unix:(unnamed)");
        assert_eq!(ch.buffered(), 0);

        // The connections are the streams that were passed, in record order.
        for (acc, k) in [a, b, c].into_iter().zip(kept.iter_mut()) {
            let Connection::Routed(r) = &acc.conn else {
                panic!("not routed: {:?}", acc.conn)
            };
            assert_eq!(Some(r.seq()), acc.seq);
            assert!(matches!(r.get_ref(), Connection::Unix(_)));
            let mut conn = acc.conn;
            conn.write_all(&r_byte(acc.seq.unwrap())).unwrap();
            let mut got = [0u8; 1];
            k.read_exact(&mut got).unwrap();
            assert_eq!(got, r_byte(acc.seq.unwrap()));
        }
    }

    fn r_byte(seq: u64) -> [u8; 1] {
        [seq as u8]
    }

    #[test]
    fn tcp_connections_are_tcp() {
        let (sup, ch) = pair();
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, peer) = l.accept().unwrap();
        send(
            &sup,
            &message(&[record(1, Some(peer)), record(2, None)]),
            &[server.as_raw_fd(), server.as_raw_fd()],
        );
        drop(server);
        let a = ch.accept().unwrap();
        assert_eq!(a.peer.to_string(), peer.to_string());
        assert!(
            matches!(&a.conn, Connection::Routed(r) if matches!(r.get_ref(), Connection::Tcp(_)))
        );
        // Family 0 on a TCP socket: getpeername.
        let b = ch.accept().unwrap();
        assert_eq!(b.peer.to_string(), client.local_addr().unwrap().to_string());
        assert_eq!(
            b.conn.local_addr().unwrap().to_string(),
            l.local_addr().unwrap().to_string()
        );
        (&a.conn).write_all(b"hi").unwrap();
        let mut buf = [0u8; 2];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        drop((a, b));
        assert_eq!(notices(&sup), [1, 2]);
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(client.read(&mut buf).unwrap(), 0, "both copies closed");
    }

    #[test]
    fn a_full_batch_gives_253_accepts() {
        let (sup, ch) = pair();
        let (pass, mut kept) = streams(MAX_BATCH);
        let records: Vec<_> = (0..MAX_BATCH as u64)
            .map(|i| record(1000 + i, Some(SocketAddr::from(([10, 0, 0, 1], i as u16)))))
            .collect();
        send(&sup, &message(&records), &raw(&pass));
        drop(pass);
        let mut accepted = Vec::new();
        for i in 0..MAX_BATCH as u64 {
            let a = ch.accept().unwrap();
            assert_eq!(a.seq, Some(1000 + i));
            assert_eq!(a.peer.to_string(), format!("10.0.0.1:{i}"));
            accepted.push(a);
        }
        assert_eq!(ch.buffered(), 0);
        ch.set_nonblocking(true).unwrap();
        assert_eq!(
            ch.accept().unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "nothing more"
        );
        drop(accepted);
        let mut seqs = notices(&sup);
        seqs.sort_unstable();
        assert_eq!(seqs, (1000..1000 + MAX_BATCH as u64).collect::<Vec<_>>());
        assert!(kept.iter_mut().all(sees_eof));
    }

    #[test]
    fn eof_when_the_supervisor_leaves() {
        let (sup, ch) = pair();
        let (pass, _kept) = streams(1);
        send(&sup, &message(&[record(5, None)]), &raw(&pass));
        drop(sup);
        // What was sent before still arrives, then end of file.
        assert_eq!(ch.accept().unwrap().seq, Some(5));
        let e = ch.accept().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
        assert_eq!(
            ch.accept().unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }

    #[test]
    fn accept_until_ends_at_eof() {
        // No stop is requested here (only stop.rs's test does), but one may
        // be meanwhile: queued connections come first either way.
        let stop = crate::catch_stop_signals().unwrap();
        let (sup, ch) = pair();
        let (pass, _kept) = streams(2);
        send(
            &sup,
            &message(&[record(1, None), record(2, None)]),
            &raw(&pass),
        );
        drop(sup);
        let l = crate::Listener::Routed(ch);
        assert_eq!(l.accept_until(&stop).unwrap().unwrap().seq, Some(1));
        assert_eq!(l.accept_until(&stop).unwrap().unwrap().seq, Some(2));
        assert!(l.accept_until(&stop).unwrap().is_none());
        assert!(l.accept_until(&stop).unwrap().is_none(), "and stays so");
        assert_eq!(l.accept().unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn buffered_connections_wake_other_acceptors() {
        // Two threads wait in accept on one channel; one message of two
        // connections arrives. Whichever thread receives it takes one; the
        // other must wake up for the one left in the buffer.
        let (sup, ch) = pair();
        let waiting: Vec<_> = (0..2)
            .map(|_| {
                let ch = ch.try_clone().unwrap();
                thread::spawn(move || ch.accept().map(|a| a.seq))
            })
            .collect();
        thread::sleep(Duration::from_millis(50));
        let (pass, _kept) = streams(2);
        send(
            &sup,
            &message(&[record(1, None), record(2, None)]),
            &raw(&pass),
        );
        let (tx, rx) = std::sync::mpsc::channel();
        thread::spawn(move || {
            let mut seqs: Vec<_> = waiting
                .into_iter()
                .map(|t| t.join().unwrap().unwrap())
                .collect();
            seqs.sort();
            tx.send(seqs).unwrap();
        });
        let seqs = rx
            .recv_timeout(Duration::from_secs(10))
            .expect("both acceptors got a connection");
        assert_eq!(seqs, [Some(1), Some(2)]);
    }

    #[test]
    fn into_owned_fd_reports_buffered_connections() {
        let (sup, ch) = pair();
        let (pass, mut kept) = streams(3);
        let records: Vec<_> = (1..=3).map(|s| record(s, None)).collect();
        send(&sup, &message(&records), &raw(&pass));
        drop(pass);
        let a = ch.accept().unwrap();
        let other = ch.try_clone().unwrap();
        // Another handle: a duplicate; the buffer stays with it.
        let dup = OwnedFd::from(ch);
        assert_eq!(other.buffered(), 2);
        drop(dup);
        // The last handle: its own fd; seqs 2 and 3 are closed and reported.
        let fd = OwnedFd::from(other);
        assert_eq!(notices(&sup), [2, 3]);
        assert!(kept[1..].iter_mut().all(sees_eof));
        drop(a);
        assert!(notices(&sup).is_empty(), "the channel's handles are gone");
        drop(fd);
    }

    #[test]
    fn rejects_other_sockets() {
        let (a, _b) = UnixStream::pair().unwrap();
        let e = RouteChannel::new(a.into()).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        let unconnected = test_util::seqpacket();
        let e = RouteChannel::new(unconnected).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn shutdown_and_clone_reach_the_stream() {
        let (sup, ch) = pair();
        let (pass, mut kept) = streams(1);
        send(&sup, &message(&[record(3, None)]), &raw(&pass));
        drop(pass);
        let a = ch.accept().unwrap();
        let plain = a.conn.try_clone().unwrap();
        assert!(matches!(plain, Connection::Unix(_)));
        a.conn.shutdown(Shutdown::Write).unwrap();
        assert!(sees_eof(&mut kept[0]));
        drop(plain);
        assert!(notices(&sup).is_empty(), "the original is still open");
        drop(a);
        assert_eq!(notices(&sup), [3]);
    }
}
