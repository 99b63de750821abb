//! Socket addresses: [`PeerAddr`] and how it displays, and reading the
//! addresses accept4 and getsockname fill in.

use std::fmt;
use std::io;
use std::mem;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::RawFd;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net as unix;
use std::sync::OnceLock;

/// A socket address of either kind: the peer of a
/// [`Connection`](crate::Connection), or the local address of a
/// [`Listener`](crate::Listener).
///
/// Displays as `1.2.3.4:80`, `[::1]:80`, `unix:/path/to.sock`,
/// `unix:@abstract-name`, or `unix:(unnamed)` (the usual Unix peer: clients
/// rarely bind their end).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum PeerAddr {
    /// An IPv4 or IPv6 address and port.
    Tcp(SocketAddr),
    /// A Unix socket address: a path, an abstract name or unnamed.
    Unix(unix::SocketAddr),
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerAddr::Tcp(a) => a.fmt(f),
            PeerAddr::Unix(a) => {
                if let Some(path) = a.as_pathname() {
                    write!(f, "unix:{}", path.display())
                } else if let Some(name) = a.as_abstract_name() {
                    write!(f, "unix:@{}", String::from_utf8_lossy(name))
                } else {
                    f.write_str("unix:(unnamed)")
                }
            }
        }
    }
}
/// An IPv4 or IPv6 address as accept4 filled it in.
pub(crate) fn inet_addr(ss: &libc::sockaddr_storage) -> io::Result<SocketAddr> {
    match libc::c_int::from(ss.ss_family) {
        libc::AF_INET => {
            // SAFETY: the family says `ss` holds a sockaddr_in, which is
            // smaller than sockaddr_storage and less strictly aligned.
            let sin =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            Ok(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)),
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 =
                unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>() };
            Ok(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(sin6.sin6_addr.s6_addr),
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("accept returned address family {other} on a TCP listener"),
        )),
    }
}

/// A Unix address as accept4 filled it in (`len` bytes of `ss`).
pub(crate) fn unix_addr(
    ss: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> io::Result<unix::SocketAddr> {
    // SAFETY: a Unix listener's accept fills in a sockaddr_un, which fits in
    // sockaddr_storage.
    let sun = unsafe { &*(ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_un>() };
    let offset = mem::offset_of!(libc::sockaddr_un, sun_path);
    let path_len = (len as usize)
        .saturating_sub(offset)
        .min(sun.sun_path.len());
    let path: Vec<u8> = sun.sun_path[..path_len].iter().map(|&c| c as u8).collect();
    match path.first() {
        None => unnamed_unix_addr(),
        Some(0) => unix::SocketAddr::from_abstract_name(&path[1..]),
        Some(_) => {
            let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
            unix::SocketAddr::from_pathname(std::ffi::OsStr::from_bytes(&path[..end]))
        }
    }
}

/// The address a Unix socket is bound to (getsockname).
pub(crate) fn sock_name(fd: RawFd) -> io::Result<unix::SocketAddr> {
    // SAFETY: an all-zero sockaddr_storage is a valid value.
    let mut ss: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `ss` is valid for `len` bytes of writes.
    if unsafe { libc::getsockname(fd, (&raw mut ss).cast(), &mut len) } == -1 {
        return Err(io::Error::last_os_error());
    }
    unix_addr(&ss, len)
}

/// std has no constructor for an unnamed Unix address; an unbound socket's
/// own address is one. Made once and cloned.
fn unnamed_unix_addr() -> io::Result<unix::SocketAddr> {
    static UNNAMED: OnceLock<unix::SocketAddr> = OnceLock::new();
    if let Some(a) = UNNAMED.get() {
        return Ok(a.clone());
    }
    let a = unix::UnixDatagram::unbound()?.local_addr()?;
    Ok(UNNAMED.get_or_init(|| a).clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::listener::Listener;
    use crate::test_util::sockaddr_un;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::{FromRawFd, OwnedFd};
    use std::os::unix::net::{UnixListener, UnixStream};

    #[test]
    fn accept_once_fills_in_peer_addresses() {
        for bind in ["127.0.0.1:0", "[::1]:0"] {
            let Ok(l) = TcpListener::bind(bind) else {
                continue; // no IPv6 here
            };
            let addr = l.local_addr().unwrap();
            let l = Listener::Tcp(l);
            let c = TcpStream::connect(addr).unwrap();
            let a = l.accept_once().unwrap();
            assert_eq!(a.peer.to_string(), c.local_addr().unwrap().to_string());
            assert_eq!(a.conn.peer_addr().unwrap().to_string(), a.peer.to_string());
        }
    }

    #[test]
    fn unix_peer_addresses_display() {
        let name = format!("multinode-worker-test-{}", std::process::id());
        let abs = unix::SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let l = Listener::Unix(UnixListener::bind_addr(&abs).unwrap());
        assert_eq!(l.local_addr().unwrap().to_string(), format!("unix:@{name}"));
        let _c = UnixStream::connect_addr(&abs).unwrap();
        let a = l.accept_once().unwrap();
        assert_eq!(a.peer.to_string(), "unix:(unnamed)");

        let path = std::env::temp_dir().join(format!("{name}.sock"));
        let _ = std::fs::remove_file(&path);
        let l = Listener::Unix(UnixListener::bind(&path).unwrap());
        assert_eq!(
            l.local_addr().unwrap().to_string(),
            format!("unix:{}", path.display())
        );
        // A client bound to a path of its own shows that path.
        let client_path = std::env::temp_dir().join(format!("{name}.client"));
        let _ = std::fs::remove_file(&client_path);
        let bound = bound_unix_client(&client_path, &path);
        let a = l.accept_once().unwrap();
        assert_eq!(
            a.peer.to_string(),
            format!("unix:{}", client_path.display())
        );
        drop(bound);
        let _ = std::fs::remove_file(&path);
        let _ = std::fs::remove_file(&client_path);
    }

    /// A Unix stream socket bound to `own` and connected to `to`.
    fn bound_unix_client(own: &std::path::Path, to: &std::path::Path) -> OwnedFd {
        // SAFETY: plain socket/bind/connect calls on a fd owned here, with
        // addresses built above; results are checked.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let owned = OwnedFd::from_raw_fd(fd);
            let (a, len) = sockaddr_un(own);
            assert_eq!(libc::bind(fd, (&raw const a).cast(), len), 0);
            let (b, len) = sockaddr_un(to);
            assert_eq!(libc::connect(fd, (&raw const b).cast(), len), 0);
            owned
        }
    }
}
