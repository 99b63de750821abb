//! multinode under systemd: socket activation (taking the listening sockets systemd passes
//! instead of binding) and readiness notifications to systemd (`Type=notify`).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr as UnixAddr, UnixDatagram};

use nix::sys::socket::{self, SockaddrStorage, sockopt};

use crate::error::{Error, Result};
use crate::socket::Bound;

/// The sockets systemd (or `systemd-socket-activate`) passed to this process, if any: fds
/// 3.. with LISTEN_PID naming us, as sd_listen_fds(3) reads them. Each must be a listening
/// stream socket. They are marked CLOEXEC; workers get their own copies at the same numbers.
pub fn inherited(backlog: u32) -> Result<Option<Vec<Bound>>> {
    let pid_ok =
        std::env::var("LISTEN_PID").is_ok_and(|p| p.trim() == std::process::id().to_string());
    let Some(n) = std::env::var("LISTEN_FDS").ok().filter(|_| pid_ok) else {
        return Ok(None);
    };
    let n: usize = n
        .trim()
        .parse()
        .ok()
        .filter(|n| *n <= 1024)
        .ok_or_else(|| {
            Error::usage(format!("LISTEN_FDS={n} from systemd is not a socket count"))
        })?;
    if n == 0 {
        return Ok(None);
    }
    let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
        .map(|v| v.split(':').map(str::to_string).collect())
        .unwrap_or_default();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let raw = 3 + i as RawFd;
        let bad = |what: &str| {
            Error::socket(format!(
                "fd {raw} passed by systemd (LISTEN_FDS={n}): {what}"
            ))
        };
        // SAFETY: F_GETFD on an fd number only reads its flags; on a closed number it fails
        // with EBADF. No memory is involved.
        if unsafe { libc::fcntl(raw, libc::F_GETFD) } == -1 {
            return Err(bad("not open"));
        }
        // SAFETY: the fd is open (checked above) and was passed to us by systemd for us to own
        // (LISTEN_FDS); nothing else wraps it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let st = nix::sys::stat::fstat(&fd)
            .map_err(|e| bad(&format!("cannot stat it: {}", e.desc())))?;
        if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
            return Err(bad("not a socket"));
        }
        if !socket::getsockopt(&fd, sockopt::AcceptConn).unwrap_or(false) {
            return Err(bad(
                "not a listening socket (use ListenStream= in the .socket unit)",
            ));
        }
        nix::fcntl::fcntl(
            &fd,
            nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
        )
        .map_err(|e| bad(&format!("cannot set FD_CLOEXEC: {}", e.desc())))?;
        let local = socket::getsockname::<SockaddrStorage>(raw).ok();
        let tcp = local.as_ref().and_then(|s| {
            let v6only = socket::getsockopt(&fd, sockopt::Ipv6V6Only).unwrap_or(true);
            s.as_sockaddr_in()
                .map(|a| (std::net::SocketAddr::from((a.ip(), a.port())), false))
                .or_else(|| {
                    s.as_sockaddr_in6()
                        .map(|a| (std::net::SocketAddr::from((a.ip(), a.port())), v6only))
                })
        });
        let shown = match (&tcp, local.as_ref().and_then(|s| s.as_unix_addr())) {
            (Some((a, _)), _) => a.to_string(),
            (None, Some(u)) => u.path().map_or_else(
                || "unix:(abstract)".into(),
                |p| format!("unix:{}", p.display()),
            ),
            _ => format!("fd {raw}"),
        };
        let name = names
            .get(i)
            .filter(|s| !s.is_empty() && *s != "unknown")
            .cloned()
            .unwrap_or_else(|| format!("listen{i}"));
        out.push(Bound::adopted(name, shown, fd, tcp, backlog));
    }
    Ok(Some(out))
}

/// Notifications to the service manager that started us (NOTIFY_SOCKET), if any.
pub struct Notifier {
    sock: UnixDatagram,
    addr: UnixAddr,
}

impl Notifier {
    /// Reads NOTIFY_SOCKET once, at start (before the privilege drop: the socket is opened now).
    pub fn from_env() -> Option<Notifier> {
        let path = std::env::var_os("NOTIFY_SOCKET")?;
        let bytes = path.as_encoded_bytes();
        let addr = match bytes.strip_prefix(b"@") {
            Some(abs) => UnixAddr::from_abstract_name(abs).ok()?,
            None => UnixAddr::from_pathname(std::path::Path::new(&path)).ok()?,
        };
        let sock = UnixDatagram::unbound().ok()?;
        Some(Notifier { sock, addr })
    }

    /// Sends `KEY=VALUE` lines; failures are ignored (systemd may be gone, e.g. at shutdown).
    pub fn send(&self, state: &str) {
        let _ = self.sock.send_to_addr(state.as_bytes(), &self.addr);
    }
}

/// CLOCK_MONOTONIC in microseconds, for `RELOADING=1` + `MONOTONIC_USEC=` (systemd 253+).
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}
