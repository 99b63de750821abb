//! The worker side of multinode (a process supervisor for network servers): take over the
//! listening sockets the supervisor passes, tell it when you are ready, and drain on stop.
//!
//! multinode binds the sockets and starts N workers that inherit them by
//! the systemd socket-activation convention, so a worker written with this
//! crate also runs under systemd (`.socket` units), and runs standalone
//! with its own socket when started by hand. What a worker sees:
//!
//! | what | value |
//! |---|---|
//! | fds 3 .. 3+n-1 | the listening sockets, in `--listen` order |
//! | `LISTEN_FDS` | n |
//! | `LISTEN_PID` | the worker's own pid (other processes ignore the fds) |
//! | `LISTEN_FDNAMES` | the sockets' names, joined with `:` |
//! | `NOTIFY_SOCKET` | where [`ready`], [`status`], [`stopping`] and the [`Watchdog`] send sd_notify(3) datagrams |
//! | `WATCHDOG_USEC`, `WATCHDOG_PID` | with `--watchdog`: the interval in µs, and the worker's own pid: [`Watchdog::from_env`] |
//! | `MULTINODE_WORKER_ID` | the worker's slot, 0..N-1, stable across restarts: [`worker_id`] |
//! | `MULTINODE_WORKERS` | N: [`workers`] |
//! | `MULTINODE_GENERATION` | bumped on every reload: [`generation`] |
//!
//! The pieces:
//!
//! - [`listeners()`]: check and take over the inherited sockets (once per
//!   process, at the start of `main`), then pick them by name or take them
//!   all. [`Listeners::tcp_or_bind`] falls back to binding an address when
//!   the worker runs standalone.
//! - [`Listener`]: TCP, Unix, or a route channel (below);
//!   [`accept`](Listener::accept) returns an [`Accepted`]: the
//!   [`Connection`] (`Read + Write`), its [`PeerAddr`], and a sequence
//!   number for connections the supervisor routes to the worker (route
//!   mode), `None` otherwise.
//! - [`catch_stop_signals`] and [`Listener::accept_until`]: SIGTERM (what
//!   multinode sends to drain a worker) stops the accept loop instead of
//!   killing the process, so requests in flight finish.
//! - [`Watchdog`]: the sd_notify watchdog (`multinode serve --watchdog`,
//!   systemd's `WatchdogSec=`), pinged from the serving loop:
//!   [`Watchdog::ping_if_due`] and [`Listener::accept_timeout`], which
//!   returns at least every [`Watchdog::due_in`] even when idle.
//! - [`notify`], [`ready`], [`status`], [`stopping`], [`watchdog()`].
//!
//! Linux only, like multinode. Dependencies: std and libc.
//!
//! # Route mode
//!
//! Under `multinode serve --route ip-hash|round-robin|least-conn`, the
//! supervisor accepts every connection itself and passes each one to the
//! worker its policy picks. Where the worker would inherit a listening
//! socket it gets a *route channel* instead: a connected Unix
//! `SOCK_SEQPACKET` socket at the same fd, under the same name.
//! [`listeners()`] returns it as [`Listener::Routed`], and the same accept
//! loop serves both modes:
//!
//! - [`accept`](Listener::accept) and [`accept_until`](Listener::accept_until)
//!   return the connection (a [`Connection::Routed`]: TCP, or Unix for a
//!   Unix listen socket), the client's address as the supervisor saw it (or
//!   as its PROXY header named it) in [`Accepted::peer`], and the
//!   supervisor's sequence number in [`Accepted::seq`].
//! - Dropping the connection tells the supervisor it closed (this feeds
//!   `least-conn`).
//! - After a stop, `accept_until` still returns the connections already in
//!   the channel (they were sent to this worker alone), then `None`. It
//!   also returns `None` when the supervisor has closed the channel;
//!   [`Stop::is_requested`] tells the two apart.
//! - Connections routed by client address (`ip-hash`) keep coming to the
//!   same worker, so per-client state in memory works (`examples/affinity`).
//! - [`Listeners::tcp_or_bind`] takes TCP sockets only; use
//!   [`Listeners::listener_or_bind`] for a worker that should accept a
//!   route channel as well.
//!
//! The channel's wire format is small and documented in [`wire`], for
//! workers in other languages; `examples/python/routed.py` in the multinode
//! repository is a complete stdlib-Python worker.
//!
//! # The protocols, for supervisors too
//!
//! multinode itself uses this crate for the three protocols it shares with
//! its workers, so each is written once: [`wire`] (the route channel's
//! datagrams), [`sd_notify`] (readiness datagrams: building, parsing,
//! sending) and [`activation`] (`LISTEN_*` and the checks of inherited
//! fds).
//!
//! # Example
//!
//! A worker that serves whatever it inherited, or binds `127.0.0.1:0` when
//! run by hand (as this example is, under `cargo test`):
//!
//! ```
//! use std::io::{Read, Write};
//! use std::net::TcpStream;
//!
//! // First thing in main, before any thread exists.
//! let mut inherited = multinode_worker::listeners()?;
//! // Not started by multinode (or systemd): nothing inherited.
//! assert!(inherited.is_empty());
//! let listener = inherited.tcp_or_bind("http", "127.0.0.1:0")?;
//! // The sockets are handed out once: later calls get nothing.
//! assert!(multinode_worker::listeners()?.is_empty());
//! let _ = multinode_worker::ready(); // Ok(false): no NOTIFY_SOCKET here
//!
//! let worker = multinode_worker::worker_id().map_or("-".into(), |id| id.to_string());
//! # let addr = listener.local_addr()?;
//! # let client = std::thread::spawn(move || -> std::io::Result<String> {
//! #     let mut c = TcpStream::connect(addr)?;
//! #     c.write_all(b"hi")?;
//! #     let mut reply = String::new();
//! #     c.read_to_string(&mut reply)?;
//! #     Ok(reply)
//! # });
//! let listener = multinode_worker::Listener::from(listener);
//! let mut accepted = listener.accept()?;
//! let mut greeting = [0; 2];
//! accepted.conn.read_exact(&mut greeting)?;
//! write!(accepted.conn, "worker {worker} says hi to {}", accepted.peer)?;
//! # drop(accepted);
//! # let reply = client.join().unwrap()?;
//! # assert!(reply.starts_with("worker - says hi to 127.0.0.1:"), "{reply}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! A draining accept loop (a complete HTTP worker is `examples/hello` in
//! the multinode repository):
//!
//! ```no_run
//! let stop = multinode_worker::catch_stop_signals()?;
//! let mut inherited = multinode_worker::listeners()?;
//! let listener = multinode_worker::Listener::from(
//!     inherited.tcp_or_bind("http", "127.0.0.1:8080")?,
//! );
//! let _ = multinode_worker::ready();
//! while let Some(accepted) = listener.accept_until(&stop)? {
//!     std::thread::spawn(move || {
//!         let _conn = accepted.conn; // serve it
//!     });
//! }
//! let _ = multinode_worker::stopping();
//! // wait for the connection threads, then return from main
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!

#![warn(missing_docs)]

#[cfg(not(target_os = "linux"))]
compile_error!("multinode-worker supports Linux only, like multinode");

pub mod activation;
mod addr;
mod error;
mod listener;
pub mod route;
pub mod sd_notify;
mod stop;
#[cfg(test)]
mod test_util;
mod watchdog;
pub mod wire;

pub use activation::{Listeners, UNKNOWN_NAME, listeners};
pub use addr::PeerAddr;
pub use error::Error;
pub use listener::{Accepted, Connection, Listener};
pub use route::{CloseNotice, RouteChannel, RoutedConnection};
pub use sd_notify::{notify, ready, status, stopping, watchdog};
pub use stop::{Stop, catch_stop_signals};
pub use watchdog::Watchdog;

/// `MULTINODE_WORKER_ID`: this worker's slot, 0..N-1. Stable across
/// restarts and reloads, so it suits per-slot resources (a log file, a
/// shard). `None` when unset or not a number (not run by multinode).
pub fn worker_id() -> Option<u32> {
    env_number("MULTINODE_WORKER_ID")
}

/// `MULTINODE_WORKERS`: how many workers multinode runs (N). It changes
/// when the supervisor scales; the value is the one at this worker's start.
pub fn workers() -> Option<u32> {
    env_number("MULTINODE_WORKERS")
}

/// `MULTINODE_GENERATION`: bumped on every reload; workers of one rollout
/// share it.
pub fn generation() -> Option<u64> {
    env_number("MULTINODE_GENERATION")
}

fn env_number<T: std::str::FromStr>(var: &str) -> Option<T> {
    std::env::var(var).ok()?.parse().ok()
}
