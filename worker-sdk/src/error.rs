//! The error type of [`listeners()`](crate::listeners) and
//! [`Watchdog::from_env`](crate::Watchdog::from_env).

use std::fmt;
use std::io;
use std::os::fd::RawFd;

/// Why the inherited sockets could not be taken over, or the watchdog's
/// variables could not be read.
///
/// Each variant names the environment variable or file descriptor at fault
/// and what was wrong with it, so printing the error is enough to act on it.
/// It converts into [`io::Error`] (kind `InvalidInput`), so `main` functions
/// that return `io::Result` can use `?`.
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// A socket-activation or watchdog variable has a value that cannot be
    /// right, e.g. `LISTEN_FDS=abc`, `LISTEN_PID=-1` or `WATCHDOG_USEC=0`.
    BadEnv {
        /// The variable, e.g. `"LISTEN_FDS"`.
        var: &'static str,
        /// Its value, as found (lossily converted to UTF-8).
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// An inherited file descriptor is not a listening TCP or Unix stream
    /// socket, or could not be inspected.
    BadFd {
        /// The descriptor number (3 for the first inherited socket).
        fd: RawFd,
        /// Its name from `LISTEN_FDNAMES` (`"unknown"` without one).
        name: String,
        /// What it is instead, e.g. `"is a pipe or FIFO, not a socket"`.
        problem: String,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::BadEnv { var, value, reason } => {
                let what = if var.starts_with("WATCHDOG_") {
                    "watchdog"
                } else {
                    "socket activation"
                };
                write!(f, "{what}: {var}={value:?} is invalid: {reason}")
            }
            Error::BadFd { fd, name, problem } => write!(
                f,
                "socket activation: inherited fd {fd} (named {name:?}) {problem}"
            ),
        }
    }
}

impl std::error::Error for Error {}

impl From<Error> for io::Error {
    fn from(e: Error) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidInput, e)
    }
}
