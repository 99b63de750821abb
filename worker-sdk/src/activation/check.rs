//! The checks of inherited fds: is each one open and a socket a server can
//! use ([`check_fd`], [`check_all`], [`SocketKind`]), and marking them
//! close-on-exec ([`set_cloexec`]).

use std::io;
use std::mem;
use std::os::fd::RawFd;

use crate::error::Error;

use super::Plan;

/// One inherited fd that [`check_all`] checked, not taken over yet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InheritedFd {
    /// The descriptor number, from [`LISTEN_FDS_START`](super::LISTEN_FDS_START).
    pub fd: RawFd,
    /// Its name (see [`Plan::name`]).
    pub name: String,
    /// What kind of socket it is.
    pub kind: SocketKind,
}

/// Checks every fd of `plan` ([`check_fd`]), then marks each close-on-exec,
/// so programs this process runs do not inherit them. It takes none over:
/// the caller wraps each one (once). The first fd that fails is an
/// [`Error::BadFd`] naming it; none is closed.
///
/// A route channel ([`SocketKind::Route`]) passes; a caller that serves
/// only listening sockets rejects it.
pub fn check_all(plan: &Plan) -> Result<Vec<InheritedFd>, Error> {
    check_each(plan.fds())
}

/// [`check_all`] of these fds (tests pass fds of their own).
fn check_each<'a>(fds: impl Iterator<Item = (RawFd, &'a str)>) -> Result<Vec<InheritedFd>, Error> {
    let mut found = Vec::new();
    for (fd, name) in fds {
        let kind = check_fd(fd).map_err(|problem| Error::BadFd {
            fd,
            name: name.to_owned(),
            problem,
        })?;
        found.push(InheritedFd {
            fd,
            name: name.to_owned(),
            kind,
        });
    }
    for f in &found {
        set_cloexec(f.fd).map_err(|e| Error::BadFd {
            fd: f.fd,
            name: f.name.clone(),
            problem: format!("cannot be marked close-on-exec: {e}"),
        })?;
    }
    Ok(found)
}
/// The kinds of inherited socket a server can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SocketKind {
    /// A listening TCP socket, IPv4 or IPv6.
    Tcp,
    /// A listening Unix stream socket.
    Unix,
    /// A multinode route channel: a connected Unix `SOCK_SEQPACKET` socket
    /// (see [`route`](crate::route)).
    Route,
}

/// Checks that `fd` is a listening TCP or Unix stream socket, or a route
/// channel, without taking it over. `Err` says what it is instead, as a
/// phrase that follows "fd N …", e.g. "is a pipe or FIFO, not a socket".
pub fn check_fd(fd: RawFd) -> Result<SocketKind, String> {
    // SAFETY: an all-zero `stat` is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { mem::zeroed() };
    // SAFETY: fstat only writes into `st`; an invalid fd yields EBADF.
    if unsafe { libc::fstat(fd, &mut st) } == -1 {
        let e = io::Error::last_os_error();
        return Err(if e.raw_os_error() == Some(libc::EBADF) {
            "is not open (LISTEN_FDS promised more sockets than were passed)".to_owned()
        } else {
            format!("cannot be inspected: fstat: {e}")
        });
    }
    let what = match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => None,
        libc::S_IFREG => Some("a regular file"),
        libc::S_IFDIR => Some("a directory"),
        libc::S_IFIFO => Some("a pipe or FIFO"),
        libc::S_IFCHR => Some("a character device (a terminal, /dev/null, …)"),
        libc::S_IFBLK => Some("a block device"),
        libc::S_IFLNK => Some("a symbolic link (opened with O_PATH)"),
        _ => Some("an unknown kind of file"),
    };
    if let Some(what) = what {
        return Err(format!("is {what}, not a socket"));
    }
    let inspect =
        |what: &str, e: io::Error| format!("is a socket whose {what} cannot be read: {e}");
    let ty = sockopt_int(fd, libc::SO_TYPE).map_err(|e| inspect("type (SO_TYPE)", e))?;
    let family = socket_family(fd).map_err(|e| inspect("address family", e))?;
    let kind = match (family, ty) {
        (libc::AF_INET | libc::AF_INET6, libc::SOCK_STREAM) => SocketKind::Tcp,
        (libc::AF_UNIX, libc::SOCK_STREAM) => SocketKind::Unix,
        (libc::AF_UNIX, libc::SOCK_SEQPACKET) => SocketKind::Route,
        _ => {
            return Err(format!(
                "is {}, not a TCP or Unix stream socket or a route channel",
                describe(family, ty)
            ));
        }
    };
    let listening =
        sockopt_int(fd, libc::SO_ACCEPTCONN).map_err(|e| inspect("state (SO_ACCEPTCONN)", e))?;
    if kind == SocketKind::Route {
        // A route channel is one end of a connected pair, never listening.
        if listening != 0 {
            return Err("is a listening Unix seqpacket socket, not a route channel \
                 (multinode passes one end of a connected pair)"
                .to_owned());
        }
        if let Err(e) = peer_name(fd) {
            return Err(format!(
                "is a Unix seqpacket socket that is not connected, not a route channel \
                 (getpeername: {e})"
            ));
        }
        return Ok(kind);
    }
    if listening != 1 {
        return Err(format!(
            "is {} that is not listening (connected, or listen() was never called)",
            describe(family, ty)
        ));
    }
    Ok(kind)
}

/// "a UDP socket (IPv4)", "a Unix datagram socket", "a netlink socket", …
fn describe(family: libc::c_int, ty: libc::c_int) -> String {
    let fam = match family {
        libc::AF_INET => "IPv4",
        libc::AF_INET6 => "IPv6",
        libc::AF_UNIX => "Unix",
        libc::AF_NETLINK => "netlink",
        libc::AF_PACKET => "packet",
        libc::AF_VSOCK => "vsock",
        _ => "",
    };
    let fam = if fam.is_empty() {
        format!("address family {family}")
    } else {
        fam.to_owned()
    };
    let inet = matches!(family, libc::AF_INET | libc::AF_INET6);
    match ty {
        libc::SOCK_STREAM if inet => format!("a TCP socket ({fam})"),
        libc::SOCK_DGRAM if inet => format!("a UDP socket ({fam})"),
        libc::SOCK_STREAM => format!("a {fam} stream socket"),
        libc::SOCK_DGRAM => format!("a {fam} datagram socket"),
        libc::SOCK_SEQPACKET => format!("a {fam} seqpacket socket"),
        libc::SOCK_RAW => format!("a {fam} raw socket"),
        other => format!("a {fam} socket of type {other}"),
    }
}

pub(crate) fn sockopt_int(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are valid for writes and `len` is its size.
    let r =
        unsafe { libc::getsockopt(fd, libc::SOL_SOCKET, opt, (&raw mut value).cast(), &mut len) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// Succeeds for a connected socket (getpeername).
pub(crate) fn peer_name(fd: RawFd) -> io::Result<()> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is valid for `len` bytes of writes.
    if unsafe { libc::getpeername(fd, (&raw mut ss).cast(), &mut len) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The address family, from getsockname (works for unbound sockets too).
pub(crate) fn socket_family(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is valid for `len` bytes of writes.
    if unsafe { libc::getsockname(fd, (&raw mut ss).cast(), &mut len) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(libc::c_int::from(ss.ss_family))
}

/// Sets `FD_CLOEXEC` on `fd`, if it is not set yet.
pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: F_GETFD/F_SETFD only read and write the fd's flags.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
    if flags == -1 {
        return Err(io::Error::last_os_error());
    }
    if flags & libc::FD_CLOEXEC == 0 {
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } == -1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::tests::routed;
    use crate::listener::Listener;
    use crate::test_util::{self, TempDir, seqpacket_pair, sockaddr_un};
    use std::fs::File;
    use std::net::{TcpListener, TcpStream, UdpSocket};
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::net::{UnixDatagram, UnixListener, UnixStream};

    /// Moves `fd`'s file to a fresh fd of at least 500, so the tests never
    /// touch fd 3.. (which belong to the harness), then closes the original.
    fn high(fd: impl Into<OwnedFd>) -> OwnedFd {
        let fd: OwnedFd = fd.into();
        // SAFETY: F_DUPFD_CLOEXEC picks the lowest free fd >= 500 atomically.
        let new = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 500) };
        assert!(new >= 500, "{}", io::Error::last_os_error());
        // SAFETY: `new` was just created and nothing else owns it.
        unsafe { OwnedFd::from_raw_fd(new) }
    }

    fn problem(fd: &OwnedFd) -> String {
        check_fd(fd.as_raw_fd()).unwrap_err()
    }

    #[test]
    fn listening_sockets_pass() {
        let tcp = high(TcpListener::bind("127.0.0.1:0").unwrap());
        assert_eq!(check_fd(tcp.as_raw_fd()), Ok(SocketKind::Tcp));
        if let Ok(v6) = TcpListener::bind("[::1]:0") {
            assert_eq!(check_fd(high(v6).as_raw_fd()), Ok(SocketKind::Tcp));
        }
        let dir = TempDir::new("listen");
        let unix = high(UnixListener::bind(dir.0.join("s")).unwrap());
        assert_eq!(check_fd(unix.as_raw_fd()), Ok(SocketKind::Unix));
    }

    #[test]
    fn closed_fd_is_not_open() {
        // No process can have an fd this high open (RLIMIT_NOFILE is far lower).
        assert_eq!(
            check_fd(i32::MAX - 1).unwrap_err(),
            "is not open (LISTEN_FDS promised more sockets than were passed)"
        );
    }

    #[test]
    fn pipe_is_not_a_socket() {
        let mut fds = [0; 2];
        // SAFETY: pipe2 writes two new fds into the array.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both fds were just created and are owned here only.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        assert_eq!(problem(&high(r)), "is a pipe or FIFO, not a socket");
        drop(w);
    }

    #[test]
    fn file_and_directory_are_not_sockets() {
        let file = high(File::open("/proc/self/status").unwrap());
        assert_eq!(problem(&file), "is a regular file, not a socket");
        let dir = high(File::open("/").unwrap());
        assert_eq!(problem(&dir), "is a directory, not a socket");
        let null = high(File::open("/dev/null").unwrap());
        assert!(problem(&null).starts_with("is a character device"));
    }

    #[test]
    fn udp_socket_is_rejected() {
        let udp = high(UdpSocket::bind("127.0.0.1:0").unwrap());
        assert_eq!(
            problem(&udp),
            "is a UDP socket (IPv4), not a TCP or Unix stream socket or a route channel"
        );
        let unix = high(UnixDatagram::unbound().unwrap());
        assert_eq!(
            problem(&unix),
            "is a Unix datagram socket, not a TCP or Unix stream socket or a route channel"
        );
    }

    #[test]
    fn non_listening_stream_sockets_are_rejected() {
        let server = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = high(TcpStream::connect(server.local_addr().unwrap()).unwrap());
        assert_eq!(
            problem(&client),
            "is a TCP socket (IPv4) that is not listening (connected, or listen() was never called)"
        );
        let (a, _b) = UnixStream::pair().unwrap();
        assert!(problem(&high(a)).starts_with("is a Unix stream socket that is not listening"),);
        // A bound but not listening TCP socket.
        // SAFETY: plain socket(2) call; the result is checked and owned below.
        let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0);
        // SAFETY: `raw` is a new fd owned only here.
        let unbound = high(unsafe { OwnedFd::from_raw_fd(raw) });
        assert!(problem(&unbound).contains("not listening"));
    }

    fn seqpacket() -> OwnedFd {
        high(test_util::seqpacket())
    }

    #[test]
    fn connected_seqpacket_is_a_route_channel() {
        let (ours, theirs) = seqpacket_pair();
        let theirs = high(theirs);
        assert_eq!(check_fd(theirs.as_raw_fd()), Ok(SocketKind::Route));
        // Still one after the supervisor's end is gone (it then reads EOF).
        drop(ours);
        assert_eq!(check_fd(theirs.as_raw_fd()), Ok(SocketKind::Route));
    }

    #[test]
    fn other_seqpacket_sockets_are_rejected() {
        assert!(
            problem(&seqpacket()).starts_with("is a Unix seqpacket socket that is not connected"),
            "{}",
            problem(&seqpacket())
        );
        let dir = TempDir::new("seqpacket");
        let path = dir.0.join("s");
        let l = seqpacket();
        let (sun, len) = sockaddr_un(&path);
        // SAFETY: bind and listen on a socket owned here, with an address
        // built above.
        unsafe {
            assert_eq!(libc::bind(l.as_raw_fd(), (&raw const sun).cast(), len), 0);
            assert_eq!(libc::listen(l.as_raw_fd(), 1), 0);
        }
        assert!(
            problem(&l).starts_with("is a listening Unix seqpacket socket, not a route channel"),
            "{}",
            problem(&l)
        );
    }

    fn cloexec(fd: RawFd) -> bool {
        // SAFETY: reads the fd flags only.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        flags & libc::FD_CLOEXEC == libc::FD_CLOEXEC
    }

    fn clear_cloexec(fd: RawFd) {
        // SAFETY: clears the flag of an fd owned by the test.
        assert_eq!(unsafe { libc::fcntl(fd, libc::F_SETFD, 0) }, 0);
    }
    #[test]
    fn check_each_checks_all_then_marks_all() {
        let tcp = high(TcpListener::bind("127.0.0.1:0").unwrap());
        let dir = TempDir::new("check");
        let unix = high(UnixListener::bind(dir.0.join("s")).unwrap());
        let (Listener::Routed(r), _sup) = routed() else {
            unreachable!("routed() makes a route channel")
        };
        let route = high(OwnedFd::from(r));
        let fds = [
            (tcp.as_raw_fd(), "http"),
            (unix.as_raw_fd(), "unknown"),
            (route.as_raw_fd(), "api"),
        ];
        fds.iter().for_each(|(fd, _)| clear_cloexec(*fd));
        let found = check_each(fds.into_iter()).unwrap();
        let kinds: Vec<_> = found
            .iter()
            .map(|f| (f.fd, f.name.as_str(), f.kind))
            .collect();
        assert_eq!(
            kinds,
            [
                (tcp.as_raw_fd(), "http", SocketKind::Tcp),
                (unix.as_raw_fd(), "unknown", SocketKind::Unix),
                (route.as_raw_fd(), "api", SocketKind::Route),
            ]
        );
        assert!(fds.iter().all(|(fd, _)| cloexec(*fd)));

        // A bad fd anywhere: an error naming it, and no fd marked.
        let file = high(File::open("/proc/self/status").unwrap());
        clear_cloexec(tcp.as_raw_fd());
        let e = check_each([(tcp.as_raw_fd(), "http"), (file.as_raw_fd(), "web")].into_iter())
            .unwrap_err();
        match &e {
            Error::BadFd { fd, name, problem } => {
                assert_eq!((*fd, name.as_str()), (file.as_raw_fd(), "web"));
                assert_eq!(problem, "is a regular file, not a socket");
            }
            other => panic!("{other:?}"),
        }
        assert!(!cloexec(tcp.as_raw_fd()), "checked before marking");
        assert_eq!(
            e.to_string(),
            format!(
                "socket activation: inherited fd {} (named \"web\") is a regular file, not a socket",
                file.as_raw_fd()
            )
        );
    }

    #[test]
    fn cloexec_is_set() {
        let fd = TcpListener::bind("127.0.0.1:0").unwrap();
        // SAFETY: clear the flag so the test shows set_cloexec sets it.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0) };
        set_cloexec(fd.as_raw_fd()).unwrap();
        // SAFETY: reads the fd flags only.
        let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFD) };
        assert_eq!(flags & libc::FD_CLOEXEC, libc::FD_CLOEXEC);
    }
}
