//! Socket activation: the inherited sockets that `LISTEN_PID`,
//! `LISTEN_FDS` and `LISTEN_FDNAMES` describe, as sd_listen_fds(3) defines
//! them.
//!
//! Most programs want [`listeners()`], which does all of it, once per
//! process. The steps are public for programs that take inherited sockets
//! over themselves (multinode does, when systemd socket-activates it):
//!
//! 1. [`parse`] (or [`from_env`]) reads the variables into a [`Plan`]: how
//!    many fds from 3 on, and their names.
//! 2. [`check_all`] checks that every fd the plan names is open and a
//!    socket a server can use ([`check_fd`]) and marks it close-on-exec, but
//!    takes none over: on error nothing has been wrapped or closed.
//! 3. The caller wraps each fd (`OwnedFd::from_raw_fd`), exactly once.

// This file: `listeners()` and `Listeners`. The `LISTEN_*` variables are
// read in `env.rs`, the inherited fds checked in `check.rs`.

use std::io;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Error;
use crate::listener::Listener;
use crate::route::{self, RouteChannel};

mod check;
mod env;

pub use check::{InheritedFd, SocketKind, check_all, check_fd, set_cloexec};
pub(crate) use check::{peer_name, socket_family, sockopt_int};
use env::read_env;
pub use env::{LISTEN_FDS_START, Plan, UNKNOWN_NAME, from_env, parse};

/// Set by the first call of [`listeners()`]: the fds are handed out once.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes over the listening sockets this process inherited from multinode
/// (or systemd, or anything else speaking the socket-activation protocol).
///
/// It follows sd_listen_fds(3):
///
/// - `LISTEN_PID` unset, or not this process's pid: the variables were meant
///   for another process, so nothing is inherited. That is an empty
///   [`Listeners`], not an error — the worker runs standalone.
/// - `LISTEN_FDS=n`: fds 3 .. 3+n-1 are the sockets, in the supervisor's
///   `--listen` order. Unset or `0` means none.
/// - `LISTEN_FDNAMES=a:b:…`: their names. Missing, or not exactly n names:
///   every socket is named `"unknown"`, as systemd does; an empty name is
///   also `"unknown"`.
///
/// Every fd must be a *listening* stream socket, TCP (IPv4 or IPv6) or Unix,
/// or a multinode route channel (a connected Unix `SOCK_SEQPACKET` socket,
/// what a worker gets instead of the listening socket under
/// `multinode serve --route …`; it becomes a [`Listener::Routed`], see
/// [`route`]). Anything else (not open, a pipe, a file, a UDP
/// socket, a connected TCP socket, …) is an [`Error`] naming the fd and what
/// it is. No fd is taken over (or closed) unless all of them pass. They are
/// marked close-on-exec, so programs this worker runs do not inherit them.
///
/// Whatever the outcome, the three variables are removed from the
/// environment, so child processes do not mistake them for their own.
///
/// The fds are handed out once per process: a second call returns an empty
/// [`Listeners`] (then [`Listeners::tcp_or_bind`] binds its own socket).
///
/// # Call it first thing in `main`
///
/// Removing environment variables is only sound while no other thread reads
/// or writes the environment. Call `listeners()` at the start of `main`,
/// before spawning threads or starting an async runtime (the `listenfd` crate
/// has the same contract).
///
/// # Blocking mode
///
/// The sockets come as the supervisor made them. Their `O_NONBLOCK` flag lives
/// on the open file description, which every worker shares: setting it (as
/// async runtimes do) sets it for all of them. [`Listener::accept_until`]
/// works in both modes; [`Listener::accept`] behaves like std's (it returns
/// `WouldBlock` on a non-blocking socket with no connection pending).
pub fn listeners() -> Result<Listeners, Error> {
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Ok(Listeners::default());
    }
    let vars = read_env();
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        // SAFETY: `remove_var` is unsound only while another thread accesses
        // the environment. The documented contract of `listeners()` is that
        // it is called at the start of `main`, before any thread is spawned
        // (the same contract as the listenfd crate and sd_listen_fds(3),
        // which calls unsetenv).
        unsafe { std::env::remove_var(var) };
    }
    let [pid, fds, names] = &vars;
    let plan = parse(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )?;

    // Check every fd before taking any: on error nothing is wrapped, so
    // nothing is closed behind the caller's back.
    let found = check_all(&plan)?;
    // What a route channel needs besides its fd, made before any fd is
    // wrapped, for the same reason.
    let mut wakes = Vec::new();
    for f in &found {
        if f.kind == SocketKind::Route {
            wakes.push(route::new_wake().map_err(|e| Error::BadFd {
                fd: f.fd,
                name: f.name.clone(),
                problem: format!("is a route channel, but its eventfd cannot be made: {e}"),
            })?);
        }
    }
    let mut wakes = wakes.into_iter();
    let items = found
        .into_iter()
        .map(|InheritedFd { fd, name, kind }| {
            // SAFETY: `fd` is open (fstat succeeded) and is a socket of
            // `kind`. The protocol hands it to this process, and the TAKEN
            // flag guarantees this is the only place that wraps it, so the
            // new owner is its only owner.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            let listener = match kind {
                SocketKind::Tcp => Listener::Tcp(TcpListener::from(owned)),
                SocketKind::Unix => Listener::Unix(UnixListener::from(owned)),
                SocketKind::Route => {
                    let wake = wakes.next().expect("one eventfd per route channel");
                    Listener::Routed(RouteChannel::with_wake(owned, wake))
                }
            };
            (name, listener)
        })
        .collect::<Vec<_>>();
    Ok(Listeners {
        activated: !items.is_empty(),
        items,
    })
}

/// The inherited listening sockets, with their names, in fd order.
///
/// Take the ones you want by name ([`take`](Self::take),
/// [`take_tcp`](Self::take_tcp), [`take_unix`](Self::take_unix),
/// [`tcp_or_bind`](Self::tcp_or_bind)) or iterate over all of them
/// (`for (name, listener) in listeners { … }`). A taken socket is removed,
/// so the same name can be taken again to get the next socket with it.
#[derive(Debug, Default)]
pub struct Listeners {
    items: Vec<(String, Listener)>,
    /// At least one socket was inherited (even if all have been taken since).
    activated: bool,
}

impl Listeners {
    /// How many sockets are left.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// No sockets left (or none were inherited).
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Whether this process was socket-activated: at least one socket was
    /// inherited, whether or not it has been taken since.
    pub fn activated(&self) -> bool {
        self.activated
    }

    /// The names of the sockets left, in fd order.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.items.iter().map(|(name, _)| name.as_str())
    }

    /// Takes the first socket named `name`, of any kind (TCP, Unix, route
    /// channel).
    pub fn take(&mut self, name: &str) -> Option<Listener> {
        let i = self.items.iter().position(|(n, _)| n == name)?;
        Some(self.items.remove(i).1)
    }

    /// Takes the first TCP socket named `name`. A Unix socket of that name is
    /// left in place.
    pub fn take_tcp(&mut self, name: &str) -> Option<TcpListener> {
        self.take_kind(name, |l| match l {
            Listener::Tcp(t) => Ok(t),
            other => Err(other),
        })
    }

    /// Takes the first Unix socket named `name`. A TCP socket of that name is
    /// left in place.
    pub fn take_unix(&mut self, name: &str) -> Option<UnixListener> {
        self.take_kind(name, |l| match l {
            Listener::Unix(u) => Ok(u),
            other => Err(other),
        })
    }

    /// Takes the first route channel named `name` (the worker runs under
    /// `multinode serve --route …`). Sockets of that name are left in place.
    pub fn take_routed(&mut self, name: &str) -> Option<RouteChannel> {
        self.take_kind(name, |l| match l {
            Listener::Routed(c) => Ok(c),
            other => Err(other),
        })
    }

    /// Takes the first listener named `name` that `kind` accepts; one it gives
    /// back stays where it was.
    fn take_kind<T>(
        &mut self,
        name: &str,
        kind: impl Fn(Listener) -> Result<T, Listener>,
    ) -> Option<T> {
        let mut i = 0;
        while i < self.items.len() {
            if self.items[i].0 == name {
                let (n, l) = self.items.remove(i);
                match kind(l) {
                    Ok(t) => return Some(t),
                    Err(l) => self.items.insert(i, (n, l)),
                }
            }
            i += 1;
        }
        None
    }

    /// Like [`tcp_or_bind`](Self::tcp_or_bind), but a route channel will do
    /// as well as a TCP socket: what a TCP server wants when it should also
    /// run in multinode's route mode. In order:
    ///
    /// 1. the first TCP socket or route channel named `name`;
    /// 2. otherwise the first TCP socket or route channel left;
    /// 3. otherwise, if the process was socket-activated, an error of kind
    ///    `NotFound`;
    /// 4. otherwise (standalone) `TcpListener::bind(addr)`.
    pub fn listener_or_bind(
        &mut self,
        name: &str,
        addr: impl ToSocketAddrs,
    ) -> io::Result<Listener> {
        let usable = |l: &Listener| matches!(l, Listener::Tcp(_) | Listener::Routed(_));
        let i = self
            .items
            .iter()
            .position(|(n, l)| n == name && usable(l))
            .or_else(|| self.items.iter().position(|(_, l)| usable(l)));
        if let Some(i) = i {
            return Ok(self.items.remove(i).1);
        }
        if self.activated {
            return Err(self.none_left(name, "TCP socket or route channel"));
        }
        TcpListener::bind(addr).map(Listener::Tcp)
    }

    /// An inherited TCP socket, or one bound to `addr` when running standalone,
    /// so the same worker runs under a supervisor and on its own.
    ///
    /// In order:
    ///
    /// 1. the first TCP socket named `name`;
    /// 2. otherwise the first TCP socket left, whatever its name. Supervisors
    ///    name sockets differently (or not at all: `"unknown"`), and a worker
    ///    asking for `"http"` should still get the one socket it was given.
    ///    Several calls with different names and unnamed sockets therefore
    ///    take the sockets in `--listen` order. Use
    ///    [`take_tcp`](Self::take_tcp) to insist on the name;
    /// 3. otherwise, if the process was socket-activated (it inherited at
    ///    least one socket, see [`activated`](Self::activated)), an error of
    ///    kind `NotFound`: binding `addr` in every worker would only race the
    ///    others for the port, and a socket the supervisor does not own
    ///    defeats reloads without refused connections;
    /// 4. otherwise (standalone) `TcpListener::bind(addr)`.
    pub fn tcp_or_bind(&mut self, name: &str, addr: impl ToSocketAddrs) -> io::Result<TcpListener> {
        if let Some(l) = self.take_tcp(name) {
            return Ok(l);
        }
        if let Some(i) = self
            .items
            .iter()
            .position(|(_, l)| matches!(l, Listener::Tcp(_)))
        {
            match self.items.remove(i).1 {
                Listener::Tcp(l) => return Ok(l),
                _ => unreachable!("position() matched a TCP listener"),
            }
        }
        if self.activated {
            return Err(self.none_left(name, "TCP socket"));
        }
        TcpListener::bind(addr)
    }

    /// The `NotFound` error of the `…_or_bind` methods.
    fn none_left(&self, name: &str, what: &str) -> io::Error {
        let left: Vec<&str> = self.names().collect();
        let routed = if self
            .items
            .iter()
            .any(|(_, l)| matches!(l, Listener::Routed(_)))
        {
            " (a route channel is left: the supervisor runs in route mode; \
             use listener_or_bind or take_routed)"
        } else {
            ""
        };
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "no inherited {what} left for {name:?} (sockets left: {left:?}){routed}; \
                 not binding one of our own because this process was socket-activated"
            ),
        )
    }
}

impl IntoIterator for Listeners {
    type Item = (String, Listener);
    type IntoIter = std::vec::IntoIter<(String, Listener)>;

    /// The sockets left, with their names, in fd order.
    fn into_iter(self) -> Self::IntoIter {
        self.items.into_iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::{TempDir, seqpacket_pair};

    fn listeners_of(items: Vec<(&str, Listener)>) -> Listeners {
        Listeners {
            activated: !items.is_empty(),
            items: items.into_iter().map(|(n, l)| (n.to_owned(), l)).collect(),
        }
    }

    fn tcp() -> Listener {
        Listener::Tcp(TcpListener::bind("127.0.0.1:0").unwrap())
    }

    #[test]
    fn take_by_name_in_fd_order() {
        let dir = TempDir::new("take");
        let unix = Listener::Unix(UnixListener::bind(dir.0.join("s")).unwrap());
        let mut ls = listeners_of(vec![("http", tcp()), ("api", unix), ("http", tcp())]);
        assert_eq!(ls.len(), 3);
        assert_eq!(ls.names().collect::<Vec<_>>(), ["http", "api", "http"]);
        assert!(ls.take_tcp("api").is_none(), "api is a Unix socket");
        assert!(ls.take_unix("http").is_none(), "http is TCP");
        assert!(ls.take_tcp("http").is_some());
        assert!(matches!(ls.take("api"), Some(Listener::Unix(_))));
        assert!(ls.take("nope").is_none());
        let rest: Vec<_> = ls.into_iter().collect();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0].0, "http");
    }

    #[test]
    fn tcp_or_bind_prefers_name_then_first_tcp() {
        let a = tcp();
        let b = tcp();
        let (a_addr, b_addr) = (a.local_addr().unwrap(), b.local_addr().unwrap());
        let mut ls = listeners_of(vec![("unknown", a), ("admin", b)]);
        let got = ls.tcp_or_bind("admin", "127.0.0.1:0").unwrap();
        assert_eq!(got.local_addr().unwrap().to_string(), b_addr.to_string());
        let got = ls.tcp_or_bind("http", "127.0.0.1:0").unwrap();
        assert_eq!(got.local_addr().unwrap().to_string(), a_addr.to_string());
        // Activated, nothing left: no socket of our own.
        let e = ls.tcp_or_bind("http", "127.0.0.1:0").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("socket-activated"), "{e}");
    }

    #[test]
    fn tcp_or_bind_standalone_binds() {
        let mut ls = Listeners::default();
        assert!(ls.is_empty() && !ls.activated());
        let l = ls.tcp_or_bind("http", "127.0.0.1:0").unwrap();
        assert!(l.local_addr().unwrap().ip().is_loopback());
    }

    /// A route channel (the worker's end) and the supervisor's end.
    pub(super) fn routed() -> (Listener, OwnedFd) {
        let (ours, theirs) = seqpacket_pair();
        (Listener::Routed(RouteChannel::new(theirs).unwrap()), ours)
    }

    #[test]
    fn route_channels_by_name_and_as_listeners() {
        let (r1, _s1) = routed();
        let (r2, _s2) = routed();
        let mut ls = listeners_of(vec![("http", r1), ("admin", tcp()), ("api", r2)]);
        // tcp_or_bind takes only TCP, and says why when a channel is left.
        assert!(ls.take_tcp("http").is_none());
        assert!(ls.take_routed("admin").is_none());
        assert!(
            ls.tcp_or_bind("http", "127.0.0.1:0").is_ok(),
            "falls back to admin"
        );
        let e = ls.tcp_or_bind("http", "127.0.0.1:0").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(e.to_string().contains("route mode"), "{e}");
        // listener_or_bind takes a channel by name, then any.
        assert!(matches!(
            ls.listener_or_bind("api", "127.0.0.1:0"),
            Ok(Listener::Routed(_))
        ));
        assert!(matches!(
            ls.listener_or_bind("nope", "127.0.0.1:0"),
            Ok(Listener::Routed(_))
        ));
        let e = ls.listener_or_bind("http", "127.0.0.1:0").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(!e.to_string().contains("route mode"), "{e}");

        let (r, _s) = routed();
        let mut ls = listeners_of(vec![("http", r)]);
        assert!(ls.take_routed("http").is_some());
        // Standalone: binds.
        let mut ls = Listeners::default();
        assert!(matches!(
            ls.listener_or_bind("http", "127.0.0.1:0"),
            Ok(Listener::Tcp(_))
        ));
    }
}
