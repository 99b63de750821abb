//! Errors of the supervisor and the exit codes they become.
//!
//! Every failure carries the sentence a user reads (what failed, on which path or address, and
//! what to do) and the class that decides the exit code. `main` turns both into one line on
//! stderr and the process status; nothing else in the program picks an exit code.

use std::fmt;

/// The documented exit codes of `multinode` (README "Exit codes", `multinode --help`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Stopped cleanly: every worker exited by itself.
    Ok = 0,
    /// Stopped, but a worker had to be killed (it outlived `--grace`, or a fast stop was asked),
    /// or every worker exited for good and at least one of them failed; for control commands,
    /// the command failed (a reload rolled back, `status --check` found a slot not ready).
    Unclean = 1,
    /// Invalid command line or configuration.
    Usage = 2,
    /// A listening socket could not be set up (address in use, permission, bad path).
    Socket = 3,
    /// A user, group or privilege problem (unknown user, cannot switch users, drop failed).
    Privilege = 4,
    /// The worker program cannot be run (missing, not executable, exec failed).
    Program = 5,
    /// Gave up: workers crashed more than `--max-restarts` times within `--restart-window`.
    GaveUp = 6,
    /// A control command found no running multinode to talk to.
    Unreachable = 7,
    /// A system call the supervisor itself depends on failed.
    Internal = 70,
}

/// The table printed under `--help` and kept in README.
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0   stopped cleanly: every worker exited by itself
  1   stopped, but a worker had to be killed after --grace (or on a fast stop),
      or all workers exited for good and one of them failed;
      status/reload/scale/stop: the command failed (reload rolled back, not ready)
  2   invalid command line or configuration
  3   a listening socket could not be set up (in use, permission, path)
  4   user, group or privilege problem
  5   the worker program cannot be run
  6   gave up: more than --max-restarts crashes within --restart-window
  7   status/reload/scale/stop: no running multinode to talk to
  70  internal error: a system call multinode needs failed";

/// A failure with the exit class it maps to.
#[derive(Debug)]
pub struct Error {
    pub exit: Exit,
    pub msg: String,
}

impl Error {
    pub fn new(exit: Exit, msg: impl Into<String>) -> Self {
        Error {
            exit,
            msg: msg.into(),
        }
    }
    pub fn usage(msg: impl Into<String>) -> Self {
        Self::new(Exit::Usage, msg)
    }
    pub fn socket(msg: impl Into<String>) -> Self {
        Self::new(Exit::Socket, msg)
    }
    pub fn privilege(msg: impl Into<String>) -> Self {
        Self::new(Exit::Privilege, msg)
    }
    pub fn program(msg: impl Into<String>) -> Self {
        Self::new(Exit::Program, msg)
    }
    pub fn internal(msg: impl Into<String>) -> Self {
        Self::new(Exit::Internal, msg)
    }
    /// An internal error from a failed system call: `what` says what was being done.
    pub fn sys(what: &str, err: impl fmt::Display) -> Self {
        Self::internal(format!("{what}: {err}"))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.msg)
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;
