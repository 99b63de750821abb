//! Binding the listening sockets: TCP v4/v6 and Unix stream sockets, from the `--listen`
//! specs (listen.rs), plus the per-slot SO_REUSEPORT siblings of `--balance reuseport`.
//!
//! The supervisor binds every socket once, before it drops privileges, and keeps them open for
//! its whole life; workers inherit duplicates. All fds here are CLOEXEC: only the spawn path
//! hands them to a worker, at the fd numbers the worker contract promises.
//!
//! Unix socket files (file.rs): a stale file (nothing accepts on it) is replaced; a live one is
//! an error. A file is born with `--socket-mode` and given to the workers' user without root
//! ever touching it by path (file.rs says how). It is removed when multinode exits if the
//! directory still lets the (dropped) user do it; otherwise it stays and the next start
//! replaces it as stale.

pub mod file;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::Path;

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, Backlog, SockFlag, SockType, SockaddrStorage, UnixAddr, sockopt,
};
use nix::unistd::{Gid, Uid};

use self::file::{Dir, Failure, SocketFile, bind_in};
use crate::error::{Error, Result};
use crate::listen::{ListenAddr, ListenSpec};
use crate::upgrade::format::BoundState;
use crate::upgrade::restore::Restorer;
use crate::upgrade::state::FdTable;

/// A bound, listening socket owned by the supervisor.
#[derive(Debug)]
pub struct Bound {
    pub name: String,
    /// What it listens on, for messages: `127.0.0.1:8080` or `/run/app.sock`.
    pub local: String,
    pub fd: OwnedFd,
    /// The socket file of a Unix socket, removed on drop if it is still ours.
    pub file: Option<SocketFile>,
    /// For TCP: the bound address and IPV6_V6ONLY, to bind siblings (`--balance reuseport`).
    pub tcp: Option<(SocketAddr, bool)>,
    /// The listen(2) backlog it was given.
    backlog: u32,
}

impl Bound {
    /// A socket that was bound by someone else (systemd) and handed to us.
    pub fn adopted(
        name: String,
        local: String,
        fd: OwnedFd,
        tcp: Option<(SocketAddr, bool)>,
        backlog: u32,
    ) -> Bound {
        Bound {
            name,
            local,
            fd,
            file: None,
            tcp,
            backlog,
        }
    }
}

impl Bound {
    /// The socket as an upgrade hands it over (`what`: what it is, for the fd table).
    pub fn save(&self, t: &mut FdTable, what: &str) -> BoundState {
        BoundState {
            name: self.name.clone(),
            local: self.local.clone(),
            fd: t.add(
                self.fd.as_fd(),
                format!("{what} {} ({})", self.name, self.local),
            ),
            file: self.file.as_ref().map(|f| f.save(t)),
            tcp: self.tcp.map(|(a, v6only)| (a.to_string(), v6only)),
            backlog: self.backlog,
        }
    }

    /// The socket an upgrade handed over.
    pub fn load(s: BoundState, r: &mut Restorer) -> Bound {
        let tcp = s.tcp.map(|(a, v6only)| {
            let addr = a.parse::<SocketAddr>().map_err(|e| format!("{a:?}: {e}"));
            (r.ok(addr), v6only)
        });
        Bound {
            fd: r.take(s.fd),
            file: s.file.map(|f| SocketFile::load(f, r)),
            name: s.name,
            local: s.local,
            tcp,
            backlog: s.backlog,
        }
    }
}

impl AsFd for Bound {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// Binds every spec in order. On an error, what was bound so far is closed and its socket
/// files removed (by drop), so a failed start leaves nothing behind.
///
/// `owner` is who Unix socket files should belong to (the user multinode drops to).
pub fn bind_all(
    specs: &[ListenSpec],
    backlog: u32,
    mode: u32,
    owner: Option<(Uid, Gid)>,
    reuseport: bool,
) -> Result<Vec<Bound>> {
    let mut bound = Vec::with_capacity(specs.len());
    for spec in specs {
        bound.push(bind_spec(
            spec, specs, "--listen", backlog, mode, owner, reuseport,
        )?);
    }
    Ok(bound)
}

/// Binds the one socket of an option other than `--listen` (`flag`: `--metrics`), the way
/// `--listen` sockets are bound, with the same messages under its own name. Never
/// `SO_REUSEPORT`: only multinode accepts on it.
pub fn bind_one(
    spec: &ListenSpec,
    flag: &str,
    backlog: u32,
    mode: u32,
    owner: Option<(Uid, Gid)>,
) -> Result<Bound> {
    bind_spec(spec, &[], flag, backlog, mode, owner, false)
}

/// Binds `spec`; `all` are every spec of its option (a `:PORT` socket is dual-stack unless
/// one of them binds IPv4 on the same port).
fn bind_spec(
    spec: &ListenSpec,
    all: &[ListenSpec],
    flag: &str,
    backlog: u32,
    mode: u32,
    owner: Option<(Uid, Gid)>,
    reuseport: bool,
) -> Result<Bound> {
    let creator = owner.map(|(uid, _)| uid);
    Ok(match &spec.addr {
        ListenAddr::Tcp(addr) => {
            let v6only = addr.is_ipv6();
            bind_tcp(spec, flag, *addr, v6only, backlog, reuseport, creator)?
        }
        ListenAddr::AnyTcp(port) => {
            // Dual-stack unless the user also binds IPv4 on this port themselves.
            let v4_too = all
                .iter()
                .any(|o| matches!(o.addr, ListenAddr::Tcp(SocketAddr::V4(a)) if a.port() == *port));
            let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), *port);
            match bind_tcp(spec, flag, any6, v4_too, backlog, reuseport, creator) {
                Err(e) if !v4_too && ipv6_unavailable() => {
                    let any4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *port);
                    bind_tcp(spec, flag, any4, false, backlog, reuseport, creator).map_err(|_| e)?
                }
                r => r?,
            }
        }
        ListenAddr::Unix(path) => bind_unix(spec, flag, path, backlog, mode, owner)?,
    })
}

fn ipv6_unavailable() -> bool {
    socket::socket(
        AddressFamily::Inet6,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .is_err()
}

fn listen(fd: &OwnedFd, backlog: u32) -> nix::Result<()> {
    let n = i32::try_from(backlog)
        .unwrap_or(i32::MAX)
        .min(libc::SOMAXCONN);
    socket::listen(fd, Backlog::new(n)?)
}

/// Binds another SO_REUSEPORT socket to the address of `b` (a TCP socket bound with
/// `reuseport`), for one more worker slot. For a Unix socket, a duplicate of it.
///
/// `creator`: the user multinode is about to become, while still root (see [`bind_tcp`]).
pub fn bind_sibling(b: &Bound, text: &str, creator: Option<Uid>) -> Result<OwnedFd> {
    let Some((addr, v6only)) = b.tcp else {
        return b
            .fd
            .try_clone()
            .map_err(|e| Error::sys("duplicating a socket", e));
    };
    let spec = ListenSpec {
        name: b.name.clone(),
        addr: ListenAddr::Tcp(addr),
        text: text.to_string(),
    };
    Ok(bind_tcp(&spec, "--listen", addr, v6only, b.backlog, true, creator)?.fd)
}

/// Binds one TCP socket. With `reuseport` and a `creator`, the socket is created with that
/// user as its effective uid (and bound as root): the kernel lets only sockets of one uid
/// share a port, and after the privilege drop multinode adds more as that user.
fn bind_tcp(
    spec: &ListenSpec,
    flag: &str,
    addr: SocketAddr,
    v6only: bool,
    backlog: u32,
    reuseport: bool,
    creator: Option<Uid>,
) -> Result<Bound> {
    let fail = |what: &str, e: Errno| {
        Error::socket(format!(
            "{flag} {}: {what} {addr}: {}",
            spec.text,
            e.desc().to_lowercase()
        ))
    };
    let family = if addr.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    };
    let as_creator = creator.filter(|_| reuseport && Uid::effective().is_root());
    if let Some(uid) = as_creator {
        nix::unistd::seteuid(uid).map_err(|e| fail("cannot take the workers' uid to create", e))?;
    }
    let created = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None);
    if as_creator.is_some() {
        nix::unistd::seteuid(Uid::from_raw(0))
            .map_err(|e| fail("cannot return to root after creating", e))?;
    }
    let fd = created.map_err(|e| fail("cannot create a socket for", e))?;
    socket::setsockopt(&fd, sockopt::ReuseAddr, &true).map_err(|e| fail("SO_REUSEADDR on", e))?;
    if reuseport {
        socket::setsockopt(&fd, sockopt::ReusePort, &true)
            .map_err(|e| fail("SO_REUSEPORT on", e))?;
    }
    if addr.is_ipv6() {
        socket::setsockopt(&fd, sockopt::Ipv6V6Only, &v6only)
            .map_err(|e| fail("IPV6_V6ONLY on", e))?;
    }
    let sa = SockaddrStorage::from(addr);
    socket::bind(fd.as_raw_fd(), &sa).map_err(|e| match e {
        Errno::EADDRINUSE => Error::socket(format!(
            "{flag} {}: address {addr} is already in use; stop the other server or pick another port",
            spec.text
        )),
        Errno::EACCES => Error::socket(format!(
            "{flag} {}: permission denied binding {addr}: ports below 1024 need root (run with sudo; multinode drops to --user after binding)",
            spec.text
        )),
        Errno::EADDRNOTAVAIL => Error::socket(format!(
            "{flag} {}: address {} is not an address of this machine",
            spec.text,
            addr.ip()
        )),
        e => fail("cannot bind", e),
    })?;
    listen(&fd, backlog).map_err(|e| fail("cannot listen on", e))?;
    let local = socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())
        .ok()
        .and_then(|s| to_std(&s))
        .unwrap_or(addr);
    Ok(Bound {
        name: spec.name.clone(),
        local: local.to_string(),
        fd,
        file: None,
        tcp: Some((local, v6only)),
        backlog,
    })
}

fn to_std(s: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = s.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    s.as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}

fn bind_unix(
    spec: &ListenSpec,
    flag: &str,
    path: &Path,
    backlog: u32,
    mode: u32,
    owner: Option<(Uid, Gid)>,
) -> Result<Bound> {
    let shown = path.display();
    let fail = |what: &str, e: &dyn std::fmt::Display| {
        Error::socket(format!("{flag} {}: {what} {shown}: {e}", spec.text))
    };
    let (parent, name) = split(path).ok_or_else(|| {
        Error::socket(format!(
            "{flag} {}: {shown} does not name a file; give the path of the socket file",
            spec.text
        ))
    })?;
    let dir = Dir::open(parent).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => Error::socket(format!(
            "{flag} {}: directory of {shown} does not exist; create it first",
            spec.text
        )),
        _ => fail(
            "cannot open the directory of",
            &crate::config::io_reason(&e),
        ),
    })?;
    let fd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )
    .map_err(|e| fail("cannot create a socket for", &e.desc()))?;
    let bind = |at: &Path| socket::bind(fd.as_raw_fd(), &UnixAddr::new(at)?);
    let (_, file) = bind_in(&dir, name, mode, owner, bind).map_err(|f| {
        Error::socket(match f {
            Failure::NotSocket => format!(
                "{flag} {}: {shown} exists and is not a socket; refusing to replace it",
                spec.text
            ),
            Failure::InUse => format!(
                "{flag} {}: {shown} is in use by a running server; stop it or choose another path",
                spec.text
            ),
            Failure::Bind(Errno::EACCES, true) => format!(
                "{flag} {}: {} (or a directory or link on the way to it) can be changed by users other than root, so multinode creates the socket as the workers' user ({}), who may not create {shown}; make the directory writable by that user, or changeable by root alone",
                spec.text,
                dir.path.display(),
                owner.map_or_else(String::new, |(uid, _)| user_name(uid))
            ),
            Failure::Bind(Errno::EACCES, false) => format!(
                "{flag} {}: permission denied creating {shown}: the directory is not writable by this user (run as root or choose another directory)",
                spec.text
            ),
            Failure::Bind(e, _) => format!(
                "{flag} {}: cannot bind {shown}: {}",
                spec.text,
                e.desc().to_lowercase()
            ),
            Failure::Changed => format!(
                "{flag} {}: {shown} was replaced right after it was bound (by another process?); refusing to use it",
                spec.text
            ),
            Failure::Io(what, e) => format!(
                "{flag} {}: {what} {shown}: {}",
                spec.text,
                crate::config::io_reason(&e)
            ),
        })
    })?;
    listen(&fd, backlog).map_err(|e| fail("cannot listen on", &e.desc()))?;
    Ok(Bound {
        name: spec.name.clone(),
        local: format!("unix:{shown}"),
        fd,
        file: Some(file),
        tcp: None,
        backlog,
    })
}

/// `dir/name` → (`dir`, `name`); a bare name is in the current directory.
pub fn split(path: &Path) -> Option<(&Path, &std::ffi::OsStr)> {
    let name = path.file_name()?;
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    Some((parent.unwrap_or(Path::new(".")), name))
}

/// A user's name for messages, else their uid.
fn user_name(uid: Uid) -> String {
    nix::unistd::User::from_uid(uid)
        .ok()
        .flatten()
        .map_or_else(|| format!("uid {uid}"), |u| u.name)
}
