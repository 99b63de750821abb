//! multinode under systemd: socket activation (taking the listening sockets systemd passes
//! instead of binding) and readiness notifications to systemd (`Type=notify`).

use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{self, SockaddrStorage, sockopt};

use multinode_worker::activation::{self, SocketKind};

use crate::error::{Error, Result};
use crate::socket::Bound;

/// The sockets systemd (or `systemd-socket-activate`) passed to this process, if any: fds
/// 3.. with LISTEN_PID naming us, as sd_listen_fds(3) reads them (the worker SDK's parser and
/// fd checks, so multinode and its workers read the variables alike). Each must be a listening
/// stream socket. They are marked CLOEXEC; workers get their own copies at the same numbers.
/// A malformed variable is a usage error (exit 2), a bad fd a socket error (exit 3).
pub fn inherited(backlog: u32) -> Result<Option<Vec<Bound>>> {
    let plan = activation::from_env().map_err(|e| Error::usage(e.to_string()))?;
    if plan.is_empty() {
        return Ok(None);
    }
    let n = plan.len();
    // Unnamed (the SDK's "unknown"): listen0, listen1, … like the sockets multinode binds.
    let name_of = |fd: RawFd, name: String| {
        Some(name)
            .filter(|s| s != activation::UNKNOWN_NAME)
            .unwrap_or_else(|| format!("listen{}", fd - activation::LISTEN_FDS_START))
    };
    let bad = |fd: RawFd, name: String, problem: &str| {
        Error::socket(format!(
            "fd {fd} passed by systemd (LISTEN_FDS={n}, named {:?}) {problem}; multinode takes \
             listening stream sockets (ListenStream= in the .socket unit)",
            name_of(fd, name)
        ))
    };
    let checked = activation::check_all(&plan).map_err(|e| match e {
        multinode_worker::Error::BadFd { fd, name, problem } => bad(fd, name, &problem),
        other => Error::socket(other.to_string()),
    })?;
    // A route channel passes the SDK's checks (workers take one); not ours. Checked for every
    // fd before any is wrapped.
    if let Some(c) = checked
        .iter()
        .find(|c| !matches!(c.kind, SocketKind::Tcp | SocketKind::Unix))
    {
        return Err(bad(
            c.fd,
            c.name.clone(),
            "is a connected Unix seqpacket socket (a multinode route channel), not a listening \
             socket",
        ));
    }
    let mut out = Vec::with_capacity(checked.len());
    for c in checked {
        let raw = c.fd;
        // SAFETY: the fd is open and a listening socket (checked above), and was passed to us
        // by systemd for us to own (LISTEN_FDS); nothing else wraps it.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
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
        out.push(Bound::adopted(
            name_of(raw, c.name),
            shown,
            fd,
            tcp,
            backlog,
        ));
    }
    Ok(Some(out))
}

/// Notifications to the service manager that started us (NOTIFY_SOCKET), if any.
pub struct Notifier {
    /// `WATCHDOG_USEC` (when `WATCHDOG_PID` is unset or ours): systemd's watchdog for
    /// multinode itself, which it then pings at half that.
    pub watchdog: Option<std::time::Duration>,
    /// NOTIFY_SOCKET's value, checked: an absolute path or an @abstract name.
    addr: std::ffi::OsString,
}

impl Notifier {
    /// Reads NOTIFY_SOCKET once, at start.
    pub fn from_env() -> Option<Notifier> {
        let addr = std::env::var_os("NOTIFY_SOCKET")?;
        multinode_worker::sd_notify::address(&addr).ok()?;
        // As sd_watchdog_enabled(3): for us only if WATCHDOG_PID is ours (or unset); a bad
        // value means no watchdog.
        let watchdog = multinode_worker::Watchdog::parse_env(
            std::env::var("WATCHDOG_USEC").ok().as_deref(),
            std::env::var("WATCHDOG_PID").ok().as_deref(),
            std::process::id(),
        )
        .ok()
        .flatten();
        Some(Notifier { watchdog, addr })
    }

    /// Sends `KEY=VALUE` lines; failures are ignored (systemd may be gone, e.g. at shutdown).
    pub fn send(&self, state: &str) {
        let _ = multinode_worker::sd_notify::send_to(&self.addr, state);
    }
}

/// CLOCK_MONOTONIC in microseconds, for `RELOADING=1` + `MONOTONIC_USEC=` (systemd 253+).
pub fn monotonic_usec() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000 + t.tv_nsec() as u64 / 1000)
        .unwrap_or(0)
}
