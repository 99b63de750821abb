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

use std::env;
use std::io;
use std::mem;
use std::net::{TcpListener, ToSocketAddrs};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::Error;
use crate::listener::Listener;
use crate::route::{self, RouteChannel};

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The name systemd gives a socket when `LISTEN_FDNAMES` does not name it.
pub const UNKNOWN_NAME: &str = "unknown";

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
        unsafe { env::remove_var(var) };
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

/// What the environment promises: [`len`](Self::len) fds from
/// [`LISTEN_FDS_START`] on, with their names. From [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    count: u32,
    /// Exactly `count` names, or `None`: every socket is `"unknown"`.
    names: Option<Vec<String>>,
}

impl Plan {
    /// How many fds were passed (`LISTEN_FDS`), 0 when the variables are
    /// missing or meant for another process.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// No fds were passed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The name of the `i`-th fd (fd `3 + i`): its entry in
    /// `LISTEN_FDNAMES`, or [`UNKNOWN_NAME`] when that entry is empty, when
    /// `LISTEN_FDNAMES` is missing or does not have exactly
    /// [`len`](Self::len) entries, or when `i` is out of range.
    pub fn name(&self, i: usize) -> &str {
        self.names
            .as_ref()
            .and_then(|names| names.get(i))
            .map_or(UNKNOWN_NAME, String::as_str)
    }

    /// Each fd with its name, in order.
    pub fn fds(&self) -> impl Iterator<Item = (RawFd, &str)> + '_ {
        (0..self.len()).map(|i| (LISTEN_FDS_START + i as RawFd, self.name(i)))
    }
}

/// One inherited fd that [`check_all`] checked, not taken over yet.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct InheritedFd {
    /// The descriptor number, from [`LISTEN_FDS_START`].
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

/// The three variables, lossily converted to UTF-8.
fn read_env() -> [Option<String>; 3] {
    ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]
        .map(|var| env::var_os(var).map(|v| v.to_string_lossy().into_owned()))
}

/// [`parse`] of this process's environment (values lossily converted to
/// UTF-8), with this process's pid. Unlike [`listeners()`] it leaves the
/// variables in place.
pub fn from_env() -> Result<Plan, Error> {
    let [pid, fds, names] = read_env();
    parse(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )
}

/// The largest `LISTEN_FDS` whose fds 3..3+n-1 are all valid `int`s.
const MAX_LISTEN_FDS: u32 = (i32::MAX - LISTEN_FDS_START) as u32 + 1;

/// Reads the three variables' values (`None`: unset) the way
/// sd_listen_fds(3) does, for the process `my_pid`:
///
/// - `LISTEN_PID` unset, or another pid: the fds are not this process's;
///   an empty [`Plan`]. Not a positive decimal number: [`Error::BadEnv`].
/// - `LISTEN_FDS` unset or `0`: an empty plan. Not a decimal number (no
///   sign, no spaces), or so large that the fds would run past the largest
///   fd number: [`Error::BadEnv`].
/// - `LISTEN_FDNAMES`: names separated by `:`; see [`Plan::name`].
pub fn parse(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    my_pid: u32,
) -> Result<Plan, Error> {
    let none = Plan {
        count: 0,
        names: None,
    };
    let Some(pid_text) = pid else {
        return Ok(none);
    };
    let pid = match decimal(pid_text) {
        Ok(p) if p > 0 && p <= i32::MAX as u64 => p,
        _ => {
            return Err(Error::BadEnv {
                var: "LISTEN_PID",
                value: pid_text.to_owned(),
                reason: "not a process id (a positive decimal number)".into(),
            });
        }
    };
    if pid != u64::from(my_pid) {
        return Ok(none);
    }
    let Some(fds_text) = fds else {
        return Ok(none);
    };
    let count = match decimal(fds_text) {
        Ok(n) if n <= u64::from(MAX_LISTEN_FDS) => n as u32,
        Ok(_) | Err(Decimal::TooLarge) => {
            return Err(Error::BadEnv {
                var: "LISTEN_FDS",
                value: fds_text.to_owned(),
                reason: format!(
                    "too large: fds 3 onwards would run past the largest fd number (at most {MAX_LISTEN_FDS})"
                ),
            });
        }
        Err(Decimal::NotANumber) => {
            return Err(Error::BadEnv {
                var: "LISTEN_FDS",
                value: fds_text.to_owned(),
                reason: "not a non-negative decimal number".into(),
            });
        }
    };
    let names = names
        .map(|all| {
            all.split(':')
                .map(|n| if n.is_empty() { UNKNOWN_NAME } else { n })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|names| names.len() == count as usize);
    Ok(Plan { count, names })
}

enum Decimal {
    NotANumber,
    TooLarge,
}

/// Strict decimal: ASCII digits only (no sign, no spaces), at least one.
fn decimal(s: &str) -> Result<u64, Decimal> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Decimal::NotANumber);
    }
    s.parse().map_err(|_| Decimal::TooLarge)
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
    /// (see [`route`]).
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
    use std::fs::File;
    use std::net::{TcpStream, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::os::unix::net::{UnixDatagram, UnixStream};

    const ME: u32 = 4242;

    fn plan(count: u32, names: &[&str]) -> Plan {
        Plan {
            count,
            names: Some(names.iter().map(|n| n.to_string()).collect()),
        }
    }

    fn env_err(r: Result<Plan, Error>) -> (&'static str, String, String) {
        match r {
            Err(Error::BadEnv { var, value, reason }) => (var, value, reason),
            other => panic!("expected BadEnv, got {other:?}"),
        }
    }

    #[test]
    fn missing_vars_mean_no_sockets() {
        let none = Plan {
            count: 0,
            names: None,
        };
        assert_eq!(parse(None, None, None, ME).unwrap(), none);
        assert_eq!(parse(None, Some("2"), Some("a:b"), ME).unwrap(), none);
        assert_eq!(parse(Some("4242"), None, Some("a"), ME).unwrap(), none);
        assert_eq!(parse(Some("4242"), Some("0"), None, ME).unwrap().count, 0);
    }

    #[test]
    fn pid_mismatch_means_no_sockets() {
        let p = parse(Some("4243"), Some("2"), Some("a:b"), ME).unwrap();
        assert_eq!(p.count, 0);
        // Even nonsense in LISTEN_FDS is not ours to judge.
        assert_eq!(parse(Some("1"), Some("abc"), None, ME).unwrap().count, 0);
    }

    #[test]
    fn bad_pid_is_an_error() {
        for bad in [
            "",
            "abc",
            "-1",
            "0",
            "+4242",
            " 4242",
            "4242 ",
            "99999999999999999999",
        ] {
            let (var, value, _) = env_err(parse(Some(bad), Some("1"), None, ME));
            assert_eq!((var, value.as_str()), ("LISTEN_PID", bad));
        }
        let (_, _, reason) = env_err(parse(Some("2147483648"), Some("1"), None, ME));
        assert!(reason.contains("process id"), "{reason}");
    }

    #[test]
    fn bad_fds_is_an_error() {
        for bad in ["abc", "-1", "", "1.5", "+1", " 1", "0x3"] {
            let (var, value, reason) = env_err(parse(Some("4242"), Some(bad), None, ME));
            assert_eq!((var, value.as_str()), ("LISTEN_FDS", bad));
            assert!(reason.contains("not a non-negative decimal"), "{reason}");
        }
        for huge in ["2147483646", "4294967296", "99999999999999999999999999"] {
            let (var, _, reason) = env_err(parse(Some("4242"), Some(huge), None, ME));
            assert_eq!(var, "LISTEN_FDS");
            assert!(reason.contains("too large"), "{reason}");
        }
        // The largest count whose fds all fit in an int is accepted (the fd
        // checks then fail at the first fd that is not open).
        let p = parse(Some("4242"), Some("2147483645"), None, ME).unwrap();
        assert_eq!(p.count, 2_147_483_645);
        assert_eq!(p.name(2_147_483_644), UNKNOWN_NAME);
    }

    #[test]
    fn error_messages_name_the_variable_and_value() {
        let e = parse(Some("4242"), Some("abc"), None, ME).unwrap_err();
        assert_eq!(
            e.to_string(),
            "socket activation: LISTEN_FDS=\"abc\" is invalid: not a non-negative decimal number"
        );
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn names() {
        assert_eq!(
            parse(Some("4242"), Some("2"), Some("http:admin"), ME).unwrap(),
            plan(2, &["http", "admin"])
        );
        // Empty entries are "unknown".
        assert_eq!(
            parse(Some("4242"), Some("3"), Some("http::"), ME).unwrap(),
            plan(3, &["http", "unknown", "unknown"])
        );
        let p = parse(Some("4242"), Some("1"), Some(""), ME).unwrap();
        assert_eq!(p.name(0), "unknown");
    }

    #[test]
    fn names_missing_or_miscounted_are_unknown() {
        for names in [None, Some("http"), Some("a:b:c"), Some("a:b:c:d")] {
            let p = parse(Some("4242"), Some("2"), names, ME).unwrap();
            assert_eq!(p.count, 2);
            assert_eq!((p.name(0), p.name(1)), ("unknown", "unknown"), "{names:?}");
        }
    }

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
        // SAFETY: plain socket(2) call; the result is checked and owned below.
        let raw =
            unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        assert!(raw >= 0);
        // SAFETY: `raw` is a new fd owned only here.
        high(unsafe { OwnedFd::from_raw_fd(raw) })
    }

    #[test]
    fn connected_seqpacket_is_a_route_channel() {
        let mut fds = [-1; 2];
        // SAFETY: socketpair writes two new fds into the array.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: both fds were just created and are owned here only.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
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

    fn sockaddr_un(p: &std::path::Path) -> (libc::sockaddr_un, libc::socklen_t) {
        use std::os::unix::ffi::OsStrExt;
        // SAFETY: all-zero is a valid sockaddr_un.
        let mut sun: libc::sockaddr_un = unsafe { mem::zeroed() };
        sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
        for (d, s) in sun.sun_path.iter_mut().zip(p.as_os_str().as_bytes()) {
            *d = *s as libc::c_char;
        }
        let len = mem::offset_of!(libc::sockaddr_un, sun_path) + p.as_os_str().len() + 1;
        (sun, len as libc::socklen_t)
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
    fn the_plan_lists_fds_from_3_with_names() {
        let p = parse(Some("4242"), Some("3"), Some("http::admin"), ME).unwrap();
        assert_eq!((p.len(), p.is_empty()), (3, false));
        assert_eq!(
            p.fds().collect::<Vec<_>>(),
            [(3, "http"), (4, "unknown"), (5, "admin")]
        );
        assert_eq!(p.name(3), UNKNOWN_NAME, "out of range");
        let none = parse(None, None, None, ME).unwrap();
        assert!(none.is_empty() && none.fds().next().is_none());
        assert!(check_all(&none).unwrap().is_empty());
        // The test harness is not socket-activated.
        assert!(from_env().unwrap().is_empty());
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
    fn routed() -> (Listener, OwnedFd) {
        let mut fds = [-1; 2];
        // SAFETY: socketpair writes two new fds into the array.
        let r = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(r, 0);
        // SAFETY: both fds were just created and are owned here only.
        let (ours, theirs) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
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

    /// A directory removed on drop, for Unix socket paths.
    struct TempDir(std::path::PathBuf);

    impl TempDir {
        fn new(tag: &str) -> TempDir {
            static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::Relaxed);
            let dir = env::temp_dir().join(format!(
                "multinode-worker-test-{}-{tag}-{n}",
                std::process::id()
            ));
            std::fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
