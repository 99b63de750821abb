//! One listening socket and the connections it accepts: [`Listener`],
//! [`Accepted`] and [`Connection`].

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem;
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::time::{Duration, Instant};

use crate::addr::{PeerAddr, inet_addr, sock_name, unix_addr};
use crate::route::{RouteChannel, RoutedConnection};
use crate::stop::{self, Alarm, Stop, Waited};

/// A listening socket, TCP (IPv4 or IPv6) or Unix stream, or a route
/// channel: where the supervisor passes the connections it accepted
/// (route mode).
///
/// The enum is `#[non_exhaustive]`: match with a `_` arm, or better, use
/// the methods, which cover every kind.
#[derive(Debug)]
#[non_exhaustive]
pub enum Listener {
    /// A TCP listener.
    Tcp(TcpListener),
    /// A Unix stream listener.
    Unix(UnixListener),
    /// A route channel (`multinode serve --route …`): the supervisor
    /// accepts, and passes each connection with its client's address and a
    /// sequence number. See [`route`](crate::route).
    Routed(RouteChannel),
}

/// A connection returned by [`Listener::accept`] and
/// [`Listener::accept_until`].
///
/// The struct is `#[non_exhaustive]`: read its fields (`a.conn`, `a.peer`,
/// `a.seq`), or destructure with `..`; later versions may add fields.
#[derive(Debug)]
#[non_exhaustive]
pub struct Accepted {
    /// The connection.
    pub conn: Connection,
    /// The peer's address. For a Unix socket usually unnamed.
    pub peer: PeerAddr,
    /// The supervisor's sequence number for a routed connection (route
    /// mode: the supervisor accepted it and passed it over with SCM_RIGHTS).
    /// `None` for connections this process accepted itself.
    pub seq: Option<u64>,
}

/// An accepted connection: TCP or Unix stream, or one of those routed by
/// the supervisor. Implements [`Read`] and [`Write`] (also on
/// `&Connection`, so one thread can read while another writes), [`AsFd`]
/// and [`AsRawFd`].
///
/// `#[non_exhaustive]` for the same reason as [`Listener`]: prefer the
/// methods, which cover every kind, to matching.
#[derive(Debug)]
#[non_exhaustive]
pub enum Connection {
    /// A TCP connection.
    Tcp(TcpStream),
    /// A Unix stream connection.
    Unix(UnixStream),
    /// A connection from a route channel: a TCP or Unix stream
    /// ([`RoutedConnection::get_ref`]) that, when dropped, tells the
    /// supervisor it closed.
    Routed(RoutedConnection),
}

/// The error of an accept whose timeout passed.
pub(crate) fn timed_out() -> io::Error {
    io::Error::new(io::ErrorKind::TimedOut, "no connection within the timeout")
}

/// Calls `$body` with `$s` bound to the inner socket of a TCP or Unix
/// variant; for a routed one, `$routed` with `$s` bound to its payload.
macro_rules! either {
    ($value:expr, $s:ident => $body:expr, routed => $routed:expr) => {
        match $value {
            Self::Tcp($s) => $body,
            Self::Unix($s) => $body,
            Self::Routed($s) => $routed,
        }
    };
}

impl Listener {
    /// Waits for a connection and accepts it, like std's `accept`: on a
    /// non-blocking socket (someone set `O_NONBLOCK`, which all workers
    /// share) it fails with `WouldBlock` when none is pending, and it keeps
    /// waiting through signals. See [`accept_until`](Self::accept_until) for
    /// an accept that a stop request interrupts.
    ///
    /// On a route channel, see [`RouteChannel::accept`]: it fails with
    /// `UnexpectedEof` once the supervisor has closed the channel.
    pub fn accept(&self) -> io::Result<Accepted> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept()?;
                Accepted {
                    conn: Connection::Tcp(s),
                    peer: PeerAddr::Tcp(a),
                    seq: None,
                }
            }
            Listener::Unix(l) => {
                let (s, a) = l.accept()?;
                Accepted {
                    conn: Connection::Unix(s),
                    peer: PeerAddr::Unix(a),
                    seq: None,
                }
            }
            Listener::Routed(c) => c.accept()?,
        })
    }

    /// Waits for a connection, or for a stop request: `Ok(None)` once `stop`
    /// is requested (SIGTERM, SIGINT or [`Stop::request`]), so the caller
    /// stops accepting and drains.
    ///
    /// Unlike [`accept`](Self::accept), it works the same whether the shared
    /// socket is blocking or not, and it retries `ECONNABORTED` (a client
    /// that gave up while queued). A connection is either returned or left
    /// in the kernel's queue for another worker; a stop never loses one.
    /// A stop that arrives while several connections are pending wins: the
    /// pending ones stay queued for the other workers.
    ///
    /// A route channel is different ([`RouteChannel::accept_until`]): the
    /// connections in it were sent to this worker alone, so after a stop it
    /// still returns each of them before `Ok(None)`. It also returns
    /// `Ok(None)` when the supervisor has closed the channel; check
    /// [`Stop::is_requested`] to tell that apart from a stop.
    pub fn accept_until(&self, stop: &Stop) -> io::Result<Option<Accepted>> {
        self.accept_before(stop, None)
    }

    /// [`accept_until`](Self::accept_until) that also gives up after
    /// `timeout`, with an error of kind [`TimedOut`](io::ErrorKind::TimedOut),
    /// so that an accept loop runs at least that often when no connection
    /// comes: what a loop that pings a [`Watchdog`](crate::Watchdog) needs.
    ///
    /// ```no_run
    /// # let stop = multinode_worker::catch_stop_signals()?;
    /// # let listener = multinode_worker::Listener::from(std::net::TcpListener::bind("127.0.0.1:0")?);
    /// # let watchdog = multinode_worker::Watchdog::new(std::time::Duration::from_secs(10));
    /// loop {
    ///     watchdog.ping_if_due()?;
    ///     match listener.accept_timeout(&stop, watchdog.due_in()) {
    ///         Ok(Some(accepted)) => { /* serve it */ }
    ///         Ok(None) => break, // stop: drain
    ///         Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
    ///         Err(e) => return Err(e.into()),
    ///     }
    /// }
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// Everything else is as for `accept_until`: `Ok(None)` after a stop,
    /// connections are never lost, blocking and non-blocking sockets work
    /// the same. It returns in time on a blocking socket too: when another
    /// worker takes the connection between this one's `poll` and its
    /// `accept`, a timer interrupts the `accept` at the deadline (SIGURG to
    /// this thread, whose handler [`catch_stop_signals`](crate::catch_stop_signals)
    /// installed). A zero timeout takes a connection that is pending and
    /// does not wait for one.
    pub fn accept_timeout(&self, stop: &Stop, timeout: Duration) -> io::Result<Option<Accepted>> {
        self.accept_before(stop, Instant::now().checked_add(timeout))
    }

    /// `accept_until` with an optional deadline.
    fn accept_before(
        &self,
        stop: &Stop,
        deadline: Option<Instant>,
    ) -> io::Result<Option<Accepted>> {
        if let Listener::Routed(c) = self {
            return c.accept_before(stop, deadline);
        }
        let _acceptor = stop::Acceptor::register();
        loop {
            if stop.is_requested() {
                return Ok(None);
            }
            match stop::wait_any_until(&[self.as_raw_fd()], true, deadline)? {
                Waited::Ready => {}
                Waited::Stop => return Ok(None),
                Waited::TimedOut => return Err(timed_out()),
            }
            // Another worker may take the connection first; a blocking
            // accept then waits for the next one. A stop interrupts it
            // (EINTR), see `stop`; so does the deadline's alarm.
            let _alarm = match deadline {
                Some(d) if !self.is_nonblocking()? => Some(Alarm::arm(d, stop)?),
                _ => None,
            };
            match self.accept_once() {
                Ok(a) => return Ok(Some(a)),
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::ConnectionAborted
                    ) =>
                {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Err(timed_out());
                    }
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Whether `O_NONBLOCK` is set (on the open file description, which
    /// every holder of a shared socket shares).
    fn is_nonblocking(&self) -> io::Result<bool> {
        // SAFETY: F_GETFL only reads the file's flags.
        let flags = unsafe { libc::fcntl(self.as_raw_fd(), libc::F_GETFL) };
        if flags == -1 {
            return Err(io::Error::last_os_error());
        }
        Ok(flags & libc::O_NONBLOCK != 0)
    }

    /// One accept4(2) call, without std's retry on EINTR (on a route
    /// channel: [`RouteChannel::accept`]).
    pub(crate) fn accept_once(&self) -> io::Result<Accepted> {
        if let Listener::Routed(c) = self {
            return c.accept();
        }
        // SAFETY: an all-zero sockaddr_storage is a valid value.
        let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
        // SAFETY: `ss` is valid for `len` bytes of writes.
        let fd = unsafe {
            libc::accept4(
                self.as_raw_fd(),
                (&raw mut ss).cast(),
                &mut len,
                libc::SOCK_CLOEXEC,
            )
        };
        if fd == -1 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: accept4 returned a new fd that nothing else owns.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(match self {
            Listener::Tcp(_) => Accepted {
                conn: Connection::Tcp(TcpStream::from(owned)),
                peer: PeerAddr::Tcp(inet_addr(&ss)?),
                seq: None,
            },
            Listener::Unix(_) => Accepted {
                conn: Connection::Unix(UnixStream::from(owned)),
                peer: PeerAddr::Unix(unix_addr(&ss, len)?),
                seq: None,
            },
            Listener::Routed(_) => unreachable!("handled above"),
        })
    }

    /// The address it listens on. A route channel is an unnamed Unix
    /// socket (`unix:(unnamed)`): the address clients connected to is the
    /// local address of each connection ([`Connection::local_addr`]).
    pub fn local_addr(&self) -> io::Result<PeerAddr> {
        Ok(match self {
            Listener::Tcp(l) => PeerAddr::Tcp(l.local_addr()?),
            Listener::Unix(l) => PeerAddr::Unix(l.local_addr()?),
            Listener::Routed(c) => PeerAddr::Unix(sock_name(c.as_raw_fd())?),
        })
    }

    /// Sets `O_NONBLOCK`. Beware: on a listening socket, the flag is shared
    /// with the supervisor and every other worker holding the same socket
    /// (a route channel is this worker's alone).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        either!(self, l => l.set_nonblocking(nonblocking), routed => l.set_nonblocking(nonblocking))
    }

    /// A second handle to the same socket (for accepting on several
    /// threads). For a route channel, a handle sharing its buffer
    /// ([`RouteChannel::try_clone`]).
    pub fn try_clone(&self) -> io::Result<Listener> {
        Ok(match self {
            Listener::Tcp(l) => Listener::Tcp(l.try_clone()?),
            Listener::Unix(l) => Listener::Unix(l.try_clone()?),
            Listener::Routed(c) => Listener::Routed(c.try_clone()?),
        })
    }
}

impl From<TcpListener> for Listener {
    fn from(l: TcpListener) -> Listener {
        Listener::Tcp(l)
    }
}

impl From<UnixListener> for Listener {
    fn from(l: UnixListener) -> Listener {
        Listener::Unix(l)
    }
}

impl From<RouteChannel> for Listener {
    fn from(c: RouteChannel) -> Listener {
        Listener::Routed(c)
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        either!(self, l => l.as_fd(), routed => l.as_fd())
    }
}

impl AsRawFd for Listener {
    fn as_raw_fd(&self) -> RawFd {
        either!(self, l => l.as_raw_fd(), routed => l.as_raw_fd())
    }
}

impl IntoRawFd for Listener {
    /// The socket's fd. For a route channel, as `OwnedFd::from` a
    /// [`RouteChannel`]: connections still buffered in it are closed (and
    /// reported closed) when it is the last handle, and it can panic.
    fn into_raw_fd(self) -> RawFd {
        either!(self, l => l.into_raw_fd(), routed => l.into_raw_fd())
    }
}

impl From<Listener> for OwnedFd {
    /// As [`IntoRawFd::into_raw_fd`].
    fn from(l: Listener) -> OwnedFd {
        match l {
            Listener::Tcp(l) => l.into(),
            Listener::Unix(l) => l.into(),
            Listener::Routed(c) => c.into(),
        }
    }
}

impl Connection {
    /// The peer's address: the socket's, from getpeername. For a routed
    /// connection with `--proxy-protocol`, [`Accepted::peer`] is the client
    /// the PROXY header named instead.
    pub fn peer_addr(&self) -> io::Result<PeerAddr> {
        Ok(match self {
            Connection::Tcp(s) => PeerAddr::Tcp(s.peer_addr()?),
            Connection::Unix(s) => PeerAddr::Unix(s.peer_addr()?),
            Connection::Routed(r) => r.get_ref().peer_addr()?,
        })
    }

    /// The local address.
    pub fn local_addr(&self) -> io::Result<PeerAddr> {
        Ok(match self {
            Connection::Tcp(s) => PeerAddr::Tcp(s.local_addr()?),
            Connection::Unix(s) => PeerAddr::Unix(s.local_addr()?),
            Connection::Routed(r) => r.get_ref().local_addr()?,
        })
    }

    /// The supervisor's sequence number of a routed connection, `None` for
    /// others (the same as [`Accepted::seq`]).
    pub fn seq(&self) -> Option<u64> {
        match self {
            Connection::Routed(r) => Some(r.seq()),
            _ => None,
        }
    }

    /// Shuts down the read half, the write half or both (shutdown(2)).
    pub fn shutdown(&self, how: Shutdown) -> io::Result<()> {
        either!(self, s => s.shutdown(how), routed => s.get_ref().shutdown(how))
    }

    /// A second handle to the same connection. For a routed connection,
    /// the plain stream ([`Connection::Tcp`] or [`Connection::Unix`]): the
    /// close notice goes when the original is dropped.
    pub fn try_clone(&self) -> io::Result<Connection> {
        Ok(match self {
            Connection::Tcp(s) => Connection::Tcp(s.try_clone()?),
            Connection::Unix(s) => Connection::Unix(s.try_clone()?),
            Connection::Routed(r) => r.get_ref().try_clone()?,
        })
    }

    /// Sets the read timeout (`None`: block forever).
    pub fn set_read_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        either!(self, s => s.set_read_timeout(timeout), routed => s.get_ref().set_read_timeout(timeout))
    }

    /// Sets the write timeout (`None`: block forever).
    pub fn set_write_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        either!(self, s => s.set_write_timeout(timeout), routed => s.get_ref().set_write_timeout(timeout))
    }

    /// Sets `O_NONBLOCK` on this connection (not shared with anyone).
    pub fn set_nonblocking(&self, nonblocking: bool) -> io::Result<()> {
        either!(self, s => s.set_nonblocking(nonblocking), routed => s.get_ref().set_nonblocking(nonblocking))
    }
}

impl Read for Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        either!(self, s => s.read(buf), routed => s.get_mut().read(buf))
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        either!(self, s => s.read_vectored(bufs), routed => s.get_mut().read_vectored(bufs))
    }
}

impl Read for &Connection {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match *self {
            Connection::Tcp(s) => (&*s).read(buf),
            Connection::Unix(s) => (&*s).read(buf),
            Connection::Routed(r) => r.get_ref().read(buf),
        }
    }
    fn read_vectored(&mut self, bufs: &mut [IoSliceMut<'_>]) -> io::Result<usize> {
        match *self {
            Connection::Tcp(s) => (&*s).read_vectored(bufs),
            Connection::Unix(s) => (&*s).read_vectored(bufs),
            Connection::Routed(r) => r.get_ref().read_vectored(bufs),
        }
    }
}

impl Write for Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        either!(self, s => s.write(buf), routed => s.get_mut().write(buf))
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        either!(self, s => s.write_vectored(bufs), routed => s.get_mut().write_vectored(bufs))
    }
    fn flush(&mut self) -> io::Result<()> {
        either!(self, s => s.flush(), routed => s.get_mut().flush())
    }
}

impl Write for &Connection {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match *self {
            Connection::Tcp(s) => (&*s).write(buf),
            Connection::Unix(s) => (&*s).write(buf),
            Connection::Routed(r) => r.get_ref().write(buf),
        }
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        match *self {
            Connection::Tcp(s) => (&*s).write_vectored(bufs),
            Connection::Unix(s) => (&*s).write_vectored(bufs),
            Connection::Routed(r) => r.get_ref().write_vectored(bufs),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match *self {
            Connection::Tcp(s) => (&*s).flush(),
            Connection::Unix(s) => (&*s).flush(),
            Connection::Routed(r) => r.get_ref().flush(),
        }
    }
}

impl From<TcpStream> for Connection {
    fn from(s: TcpStream) -> Connection {
        Connection::Tcp(s)
    }
}

impl From<UnixStream> for Connection {
    fn from(s: UnixStream) -> Connection {
        Connection::Unix(s)
    }
}

impl From<RoutedConnection> for Connection {
    fn from(r: RoutedConnection) -> Connection {
        Connection::Routed(r)
    }
}

impl AsFd for Connection {
    fn as_fd(&self) -> BorrowedFd<'_> {
        either!(self, s => s.as_fd(), routed => s.get_ref().as_fd())
    }
}

impl AsRawFd for Connection {
    fn as_raw_fd(&self) -> RawFd {
        either!(self, s => s.as_raw_fd(), routed => s.get_ref().as_raw_fd())
    }
}

impl IntoRawFd for Connection {
    /// The socket's fd. A routed connection's close notice is sent now:
    /// the SDK no longer sees when it closes (use
    /// [`RoutedConnection::into_parts`] to send it later).
    fn into_raw_fd(self) -> RawFd {
        OwnedFd::from(self).into_raw_fd()
    }
}

impl From<Connection> for OwnedFd {
    /// As [`IntoRawFd::into_raw_fd`].
    fn from(c: Connection) -> OwnedFd {
        match c {
            Connection::Tcp(s) => s.into(),
            Connection::Unix(s) => s.into(),
            Connection::Routed(r) => r.into_parts().0.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::thread;

    #[test]
    fn accept_tcp_reads_and_writes() {
        let l = Listener::Tcp(TcpListener::bind("127.0.0.1:0").unwrap());
        let PeerAddr::Tcp(addr) = l.local_addr().unwrap() else {
            panic!("not TCP")
        };
        let client = thread::spawn(move || {
            let mut c = TcpStream::connect(addr).unwrap();
            c.write_all(b"ping").unwrap();
            let mut buf = [0; 4];
            c.read_exact(&mut buf).unwrap();
            (c.local_addr().unwrap(), buf)
        });
        let mut a = l.accept().unwrap();
        assert_eq!(a.seq, None);
        let mut buf = [0; 4];
        a.conn.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ping");
        a.conn.write_all(b"pong").unwrap();
        let (client_addr, reply) = client.join().unwrap();
        assert_eq!(&reply, b"pong");
        assert_eq!(a.peer.to_string(), client_addr.to_string());
    }

    #[test]
    fn shared_reads_and_writes_through_references() {
        let (a, b) = UnixStream::pair().unwrap();
        let a = Connection::from(a);
        let b = Connection::from(b);
        (&a).write_all(b"hi").unwrap();
        let mut buf = [0; 2];
        (&b).read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hi");
        a.shutdown(Shutdown::Write).unwrap();
        assert_eq!((&b).read(&mut buf).unwrap(), 0);
        assert_eq!(b.peer_addr().unwrap().to_string(), "unix:(unnamed)");
    }
}
