//! Errors of the supervisor and the exit codes they become.
//!
//! Every failure carries the sentence a user reads (what failed, on which path or address, and
//! what to do) and the class that decides the exit code. `main` turns both into one line on
//! stderr and the process status; nothing else in the program picks an exit code.

use std::fmt;

/// The documented exit codes of `multinode`. [`Exit::ALL`] and [`Exit::meaning`] are the one
/// definition: `--help`, the man pages and README's table are checked against them.
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
    /// A listening or control socket could not be set up (address in use, permission, path).
    Socket = 3,
    /// A user, group or privilege problem (unknown user, cannot switch users, drop failed), or
    /// `--cgroup required` where no cgroup can be made.
    Privilege = 4,
    /// The worker program cannot be run (missing, not executable, exec failed).
    Program = 5,
    /// Gave up: workers crashed more than `--max-restarts` times within `--restart-window`.
    GaveUp = 6,
    /// A control command found no running multinode to talk to.
    Unreachable = 7,
    /// A system call the supervisor itself depends on failed, or its guard process died.
    Internal = 70,
}

impl Exit {
    /// Every exit code, in the order the table lists them.
    pub const ALL: [Exit; 9] = [
        Exit::Ok,
        Exit::Unclean,
        Exit::Usage,
        Exit::Socket,
        Exit::Privilege,
        Exit::Program,
        Exit::GaveUp,
        Exit::Unreachable,
        Exit::Internal,
    ];

    /// The process exit status.
    pub fn code(self) -> u8 {
        self as u8
    }

    /// What the code means, as `--help`, the man page and README say it.
    pub fn meaning(self) -> &'static str {
        match self {
            Exit::Ok => "stopped cleanly: every worker exited by itself",
            Exit::Unclean => {
                "stopped, but a worker had to be killed after --grace (or on a fast stop), or \
                 all workers exited for good and one of them failed; status/reload/scale/stop/upgrade: \
                 the command failed (reload or upgrade rolled back, not ready)"
            }
            Exit::Usage => "invalid command line or configuration",
            Exit::Socket => {
                "a listening or control socket could not be set up (in use, permission, path)"
            }
            Exit::Privilege => {
                "user, group or privilege problem; --cgroup required where no cgroup can be made"
            }
            Exit::Program => "the worker program cannot be run",
            Exit::GaveUp => "gave up: more than --max-restarts restarts within --restart-window",
            Exit::Unreachable => {
                "status/reload/scale/stop/upgrade: no running multinode to talk to"
            }
            Exit::Internal => {
                "internal error: a system call multinode needs failed, or its guard process died"
            }
        }
    }

    /// How much an outcome outweighs another when a run ends with several: the supervisor's
    /// exit status is the most severe outcome seen (see [`Exit::worst`]). A failed system call
    /// beats a program that cannot run, which beats giving up on restarts, which beats a
    /// worker that had to be killed, which beats a clean stop.
    fn severity(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::Unclean => 1,
            Exit::GaveUp => 2,
            Exit::Unreachable => 3,
            Exit::Usage => 4,
            Exit::Privilege => 5,
            Exit::Socket => 6,
            Exit::Program => 7,
            Exit::Internal => 8,
        }
    }

    /// The more severe of two outcomes (the first on a tie).
    pub fn worst(self, other: Exit) -> Exit {
        if other.severity() > self.severity() {
            other
        } else {
            self
        }
    }
}

/// The table printed under `--help` (and so in the man page), from [`Exit::ALL`].
pub fn exit_codes_help() -> String {
    let mut out = String::from("Exit codes:");
    for e in Exit::ALL {
        let mut line = format!("\n  {:<4}", e.code());
        let mut width = 6;
        for word in e.meaning().split(' ') {
            if width + word.len() + 1 > 80 && width > 6 {
                line.push_str("\n      ");
                width = 6;
            } else if width > 6 {
                line.push(' ');
                width += 1;
            }
            line.push_str(word);
            width += word.len();
        }
        out.push_str(&line);
    }
    out
}

/// A failure with the exit class it maps to.
#[derive(Debug)]
pub struct Error {
    pub exit: Exit,
    pub msg: String,
    /// Lines printed after the error's own: what to do (`tip: …`).
    pub hints: Vec<String>,
}

impl Error {
    pub fn new(exit: Exit, msg: impl Into<String>) -> Self {
        Error {
            exit,
            msg: msg.into(),
            hints: Vec::new(),
        }
    }
    /// Adds a line of advice under the error.
    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worst_outcome_wins_whatever_the_order() {
        use Exit::*;
        let order = [Ok, Unclean, GaveUp, Program, Internal];
        for (i, a) in order.iter().enumerate() {
            for b in &order[i..] {
                assert_eq!(a.worst(*b), *b, "{a:?} then {b:?}");
                assert_eq!(b.worst(*a), *b, "{b:?} then {a:?}");
            }
        }
    }

    #[test]
    fn help_lists_every_code_once() {
        let help = exit_codes_help();
        for e in Exit::ALL {
            let n = help
                .lines()
                .filter(|l| l.trim_start().starts_with(&format!("{} ", e.code())))
                .count();
            assert_eq!(n, 1, "code {} in:\n{help}", e.code());
        }
        assert!(help.lines().all(|l| l.len() <= 80), "{help}");
    }
}
