//! Keeping a recurring problem from flooding the log or spinning the loop: [`RateLimit`]
//! (at most one line a second, counting what it held back) and [`AcceptPause`] (a listening
//! socket whose accept fails for want of file descriptors rests a while, its connections
//! waiting in the kernel's queue). One type for the control, metrics and route listeners.

use std::time::{Duration, Instant};

use crate::log::Event;

/// How long accepting pauses when the supervisor is out of fds: a readable socket that cannot
/// be taken from would otherwise wake the loop at once, again and again.
pub const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Prints at most one line a second for a recurring problem, counting what it held back.
pub struct RateLimit {
    last: Option<Instant>,
    held: u64,
}

impl RateLimit {
    pub const fn new() -> Self {
        RateLimit {
            last: None,
            held: 0,
        }
    }

    /// `Some(n)`: print now, mentioning `n` earlier occurrences that were not printed.
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < Duration::from_secs(1))
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// " (N more like it not shown)" after a rate-limited line, or nothing.
pub fn held_note(held: u64) -> String {
    match held {
        0 => String::new(),
        n => format!(" ({n} more like it not shown)"),
    }
}

/// Whether a listening socket rests for want of file descriptors, and its warning's limit.
pub struct AcceptPause {
    until: Option<Instant>,
    warnings: RateLimit,
}

impl AcceptPause {
    pub const fn new() -> Self {
        AcceptPause {
            until: None,
            warnings: RateLimit::new(),
        }
    }

    /// A pause handed over by an upgrade (the warning limit starts afresh).
    pub fn resumed(until: Option<Instant>) -> Self {
        AcceptPause {
            until,
            warnings: RateLimit::new(),
        }
    }

    /// The end of the pause, if one is under way (for an upgrade's state).
    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    /// Whether to poll the socket now.
    pub fn accepting(&self, now: Instant) -> bool {
        self.until.is_none_or(|t| t <= now)
    }

    /// Ends a pause that is over (so that [`AcceptPause::deadline`] no longer names it).
    pub fn expire(&mut self, now: Instant) {
        if self.until.is_some_and(|t| t <= now) {
            self.until = None;
        }
    }

    /// When the loop must wake to poll the socket again.
    pub fn deadline(&self) -> Option<Instant> {
        self.until
    }

    /// accept(2) failed with EMFILE or ENFILE on `socket` (its name in the log): rest, and
    /// the warning to log (one a second at most).
    pub fn out_of_fds(&mut self, now: Instant, socket: &'static str) -> Option<Event> {
        self.until = Some(now + ACCEPT_PAUSE);
        let held = self.warnings.allow(now)?;
        Some(
            Event::warn(
                "accept",
                format!(
                    "{socket} socket: out of file descriptors; connections wait in its queue{}",
                    held_note(held)
                ),
            )
            .with("socket", socket)
            .with("held", held),
        )
    }
}
