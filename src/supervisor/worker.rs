//! One worker process as the core sees it, and its life as a state machine.
//!
//! ```text
//!              ready (READY=1 or --ready delay)          recycle (memory, requests)
//!   Starting ─────────────────────────────────▶ Ready ──────────────────────────▶ Recycling
//!      │  \                                       │  \ watchdog silent: hung        │
//!      │   \ stop(why) ── stop signal ──▶ Draining{kill_at} ◀── replacement ready ──┘
//!      │                                          │ kill_at
//!      │                                          ▼
//!      │                                        Killed
//!      └───────────── leader reaped (any state) ──┴──────────────────────────────▶ Exited
//!                                                                                   │
//!                                               nothing of it left ──▶ (ended) ─────┘
//! ```
//!
//! A hung worker (its watchdog ran out) drains with `--watchdog-signal` and a short grace, as
//! `Draining { why: Leave::Hung }`; a recycled one keeps serving until its replacement is ready.
//!
//! A worker is *serving* while Starting or Ready: it is its slot's worker and gets restarted
//! when it ends. Once asked to stop it carries the reason ([`Leave`]), which decides what its
//! slot does when it has ended. A worker ends when its leader has been reaped **and** its
//! process group is gone, so what it forked is accounted for; the exit status travels in the
//! `Exited` state, so the end always has one.
//!
//! Every transition is a method here and returns the signal the shell must send, if any; the
//! core turns that into an action. Nothing here touches the OS.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::ReadyMode;
use crate::log::Event;

/// How a worker's leader process ended, as waitpid reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal { signal: Signal, core_dumped: bool },
}

impl ExitStatus {
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }

    /// "exited with code 3", "was killed by SIGSEGV (core dumped)": the way a shell says it.
    pub fn describe(self) -> String {
        match self {
            ExitStatus::Code(code) => format!("exited with code {code}"),
            ExitStatus::Signal {
                signal,
                core_dumped,
            } => format!(
                "was killed by {}{}",
                signal.as_str(),
                if core_dumped { " (core dumped)" } else { "" }
            ),
        }
    }

    /// The exit's facts as event fields: `code`, or `signal` and `core_dumped`.
    pub fn fields(self, ev: Event) -> Event {
        match self {
            ExitStatus::Code(code) => ev.with("code", code),
            ExitStatus::Signal {
                signal,
                core_dumped,
            } => ev
                .with("signal", signal.as_str())
                .with("core_dumped", core_dumped),
        }
    }
}

/// Why a worker was asked to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Leave {
    /// A worker of a newer generation serves its slot now (rolling reload).
    Replaced,
    /// Its slot was scaled away.
    ScaledDown,
    /// The service is stopping.
    ServiceStop,
    /// It was not ready within `--ready-timeout` (outside a reload): the slot restarts.
    NotReady,
    /// A new worker of a reload that was abandoned, while its slot's previous worker still
    /// serves.
    Superseded,
    /// A new worker of a reload that was abandoned, in a slot that has no other worker: the
    /// slot restarts.
    Abandoned,
    /// The leader exited unasked and left processes in its group: they are stopped too, and
    /// then the slot restarts as for any exit.
    Leftovers,
    /// Its watchdog ran out (or it sent WATCHDOG=trigger): the slot restarts.
    Hung,
    /// Its replacement is ready (`--max-memory`, `--max-requests`).
    Recycled(Recycle),
}

/// Why a worker is replaced while it still serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Recycle {
    /// Its memory passed `--max-memory`: bytes seen.
    Memory(u64),
    /// It was handed this many connections (`--max-requests`).
    Requests(u64),
}

impl Recycle {
    /// `memory` or `requests`: the restart cause it counts as.
    pub fn name(self) -> &'static str {
        match self {
            Recycle::Memory(_) => "memory",
            Recycle::Requests(_) => "requests",
        }
    }
}

impl Leave {
    /// Whether the slot gets a new worker once this one has ended (subject to `--restart`).
    pub fn restarts(self) -> bool {
        matches!(
            self,
            Leave::NotReady | Leave::Abandoned | Leave::Leftovers | Leave::Hung
        )
    }

    /// Whether it was asked to go for good: its stop signal is then an expected end.
    pub fn retired(self) -> bool {
        !self.restarts()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Running, not ready yet: ready at `ready_at` (`--ready delay:`) or on READY=1, given up
    /// at `deadline` (`--ready-timeout`).
    Starting {
        ready_at: Option<Instant>,
        deadline: Instant,
    },
    /// Serving.
    Ready,
    /// Still serving, while a replacement starts (`--max-memory`, `--max-requests`).
    Recycling(Recycle),
    /// Asked to stop with the stop signal; SIGKILL at `kill_at`.
    Draining { why: Leave, kill_at: Instant },
    /// SIGKILLed; waiting for its process group to be gone.
    Killed { why: Leave },
    /// The leader has been reaped. The worker ends when its process group is gone; until
    /// then what is left of it is asked to stop and SIGKILLed at `kill_at` (`None` once it
    /// has been, or while the service-wide deadline rules).
    Exited {
        status: ExitStatus,
        why: Option<Leave>,
        kill_at: Option<Instant>,
    },
}

/// What a transition asks the shell to do to the worker's process group.
pub type Send = Option<Signal>;

#[derive(Clone, Debug)]
pub struct Worker {
    pub slot: u32,
    /// Also the id of the worker's process group.
    pub pid: Pid,
    pub generation: u64,
    pub started: Instant,
    pub state: State,
    /// The last STATUS= text it sent.
    pub status_text: Option<String>,
    /// `--watchdog` (or the worker's own WATCHDOG_USEC=): how often it must ping once ready.
    pub watchdog: Option<Duration>,
    /// When it is hung unless it pings before.
    pub watchdog_at: Option<Instant>,
    /// `--max-requests` for this worker (jitter included).
    pub request_limit: Option<u64>,
}

impl Worker {
    /// A worker just started.
    pub fn new(
        slot: u32,
        pid: Pid,
        generation: u64,
        now: Instant,
        ready: ReadyMode,
        ready_timeout: Duration,
    ) -> Worker {
        let ready_at = match ready {
            ReadyMode::Delay(d) => Some(later(now, d)),
            ReadyMode::Notify => None,
        };
        Worker {
            slot,
            pid,
            generation,
            started: now,
            state: State::Starting {
                ready_at,
                deadline: later(now, ready_timeout),
            },
            status_text: None,
            watchdog: None,
            watchdog_at: None,
            request_limit: None,
        }
    }

    /// Its slot's worker: started, ready or being recycled, and not asked to stop.
    pub fn serving(&self) -> bool {
        matches!(
            self.state,
            State::Starting { .. } | State::Ready | State::Recycling(_)
        )
    }

    /// Serving and ready (a recycled worker serves until its replacement is ready).
    pub fn is_ready(&self) -> bool {
        matches!(self.state, State::Ready | State::Recycling(_))
    }

    /// Covers its slot: serving and not on its way to being replaced.
    pub fn covers(&self) -> bool {
        matches!(self.state, State::Starting { .. } | State::Ready)
    }

    /// Why it was asked to stop, if it was.
    pub fn leaving(&self) -> Option<Leave> {
        match self.state {
            State::Starting { .. } | State::Ready | State::Recycling(_) => None,
            State::Draining { why, .. } | State::Killed { why } => Some(why),
            State::Exited { why, .. } => why,
        }
    }

    /// Starting → Ready; its watchdog starts counting. True if it became ready now.
    pub fn ready(&mut self, now: Instant) -> bool {
        if matches!(self.state, State::Starting { .. }) {
            self.state = State::Ready;
            self.ping(now);
            return true;
        }
        false
    }

    /// WATCHDOG=1: alive. Counts only once ready, as systemd's does.
    pub fn ping(&mut self, now: Instant) {
        if self.is_ready() {
            self.watchdog_at = self.watchdog.map(|d| later(now, d));
        }
    }

    /// Its watchdog counts a whole interval from `now`, as if it had pinged (after multinode
    /// itself was stopped: see [`LOOP_STALL`](super::core::LOOP_STALL)).
    pub fn restart_watchdog(&mut self, now: Instant) {
        self.watchdog_at = self.watchdog.map(|d| later(now, d));
    }

    /// WATCHDOG_USEC=: the worker sets its own watchdog interval (0 turns it off).
    pub fn set_watchdog(&mut self, interval: Option<Duration>, now: Instant) {
        self.watchdog = interval;
        self.watchdog_at = None;
        self.ping(now);
    }

    /// Ready → Recycling: a replacement is to start. True if it changed.
    pub fn recycle(&mut self, cause: Recycle) -> bool {
        if self.state == State::Ready {
            self.state = State::Recycling(cause);
            return true;
        }
        false
    }

    /// Asks it to stop with `signal`, SIGKILL at `kill_at`. A worker already draining keeps
    /// the earlier deadline and its first reason; a killed or exited one is left as it is.
    pub fn stop(&mut self, why: Leave, signal: Signal, kill_at: Instant) -> Send {
        match self.state {
            State::Starting { .. } | State::Ready | State::Recycling(_) => {
                self.state = State::Draining { why, kill_at };
                Some(signal)
            }
            State::Draining {
                why: first,
                kill_at: at,
            } => {
                self.state = State::Draining {
                    why: first,
                    kill_at: at.min(kill_at),
                };
                None
            }
            State::Killed { .. } | State::Exited { .. } => None,
        }
    }

    /// Re-labels why a stopping worker goes (a stop of the whole service overrides a
    /// worker's own reason: nothing restarts then).
    pub fn retire(&mut self, why: Leave) {
        match &mut self.state {
            State::Draining { why: w, .. } | State::Killed { why: w } => *w = why,
            State::Exited { why: w, .. } => *w = Some(why),
            State::Starting { .. } | State::Ready | State::Recycling(_) => {}
        }
    }

    /// SIGKILL to what is left of it.
    pub fn kill(&mut self, why: Leave) -> Send {
        match self.state {
            State::Starting { .. } | State::Ready | State::Recycling(_) => {
                self.state = State::Killed { why };
                Some(Signal::SIGKILL)
            }
            State::Draining { why, .. } => {
                self.state = State::Killed { why };
                Some(Signal::SIGKILL)
            }
            State::Killed { .. } => None,
            State::Exited { status, why: w, .. } => {
                self.state = State::Exited {
                    status,
                    why: w.or(Some(why)),
                    kill_at: None,
                };
                // What is left of the group; a signal to an empty group is harmless.
                Some(Signal::SIGKILL)
            }
        }
    }

    /// The leader was reaped while processes of its group live on. A worker that was not
    /// asked to stop has them stopped now (gracefully, SIGKILL at `kill_at`).
    pub fn leader_exited(&mut self, status: ExitStatus, signal: Signal, kill_at: Instant) -> Send {
        let (why, at, send) = match self.state {
            State::Starting { .. } | State::Ready | State::Recycling(_) => {
                (None, Some(kill_at), Some(signal))
            }
            State::Draining { why, kill_at } => (Some(why), Some(kill_at), None),
            State::Killed { why } => (Some(why), None, None),
            State::Exited { .. } => return None,
        };
        self.state = State::Exited {
            status,
            why,
            kill_at: at,
        };
        send
    }

    /// The leader's exit status, once reaped.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        match self.state {
            State::Exited { status, .. } => Some(status),
            _ => None,
        }
    }

    /// Its own next deadline: becoming ready, giving up on readiness, its watchdog, or
    /// SIGKILL.
    pub fn deadline(&self) -> Option<Instant> {
        match self.state {
            State::Starting { ready_at, deadline } => {
                Some(ready_at.map_or(deadline, |r| r.min(deadline)))
            }
            State::Ready | State::Recycling(_) => self.watchdog_at,
            State::Draining { kill_at, .. } => Some(kill_at),
            State::Exited { kill_at, .. } => kill_at,
            State::Killed { .. } => None,
        }
    }

    /// Leaves the SIGKILL to the service-wide stop deadline.
    pub fn clear_kill_deadline(&mut self) {
        if let State::Exited { kill_at, .. } = &mut self.state {
            *kill_at = None;
        }
    }

    /// The word `multinode status` shows.
    pub fn label(&self) -> &'static str {
        match self.state {
            State::Starting { .. } => "starting",
            State::Ready => "ready",
            State::Recycling(_) => "recycling",
            State::Draining {
                why: Leave::Hung, ..
            }
            | State::Killed { why: Leave::Hung } => "hung",
            State::Draining { .. } | State::Killed { .. } => "draining",
            State::Exited { .. } => "exiting",
        }
    }

    pub fn uptime(&self, now: Instant) -> Duration {
        now.saturating_duration_since(self.started)
    }
}

/// `now + d`, or as far as the clock goes: a deadline from a user's duration never panics.
pub fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// `250ms`, `1.5s`, `2m05s`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.1}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches(".0"))
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(ready: ReadyMode) -> (Worker, Instant) {
        let t = Instant::now();
        let w = Worker::new(0, Pid::from_raw(100), 1, t, ready, Duration::from_secs(60));
        (w, t)
    }

    #[test]
    fn delay_mode_has_a_ready_time_and_a_deadline() {
        let (w, t) = worker(ReadyMode::Delay(Duration::from_secs(1)));
        assert_eq!(w.deadline(), Some(t + Duration::from_secs(1)));
        assert!(w.serving() && !w.is_ready());
        let (w, t) = worker(ReadyMode::Notify);
        assert_eq!(w.deadline(), Some(t + Duration::from_secs(60)));
    }

    #[test]
    fn stop_sends_once_and_keeps_the_earlier_deadline() {
        let (mut w, t) = worker(ReadyMode::Notify);
        assert!(w.ready(t));
        assert!(!w.ready(t), "ready only once");
        let sig = w.stop(
            Leave::Replaced,
            Signal::SIGTERM,
            t + Duration::from_secs(10),
        );
        assert_eq!(sig, Some(Signal::SIGTERM));
        assert!(!w.serving());
        let again = w.stop(
            Leave::ScaledDown,
            Signal::SIGTERM,
            t + Duration::from_secs(5),
        );
        assert_eq!(again, None);
        assert_eq!(w.deadline(), Some(t + Duration::from_secs(5)));
        assert_eq!(w.leaving(), Some(Leave::Replaced));
        assert!(!w.ready(t), "a draining worker never becomes ready");
    }

    #[test]
    fn unasked_exit_with_leftovers_stops_the_group() {
        let (mut w, t) = worker(ReadyMode::Notify);
        let sig = w.leader_exited(ExitStatus::Code(1), Signal::SIGTERM, t);
        assert_eq!(sig, Some(Signal::SIGTERM));
        assert_eq!(w.exit_status(), Some(ExitStatus::Code(1)));
        assert_eq!(w.leaving(), None);
        assert_eq!(w.kill(Leave::Leftovers), Some(Signal::SIGKILL));
        assert_eq!(w.deadline(), None);
    }

    #[test]
    fn a_draining_worker_keeps_its_reason_after_its_leader_exits() {
        let (mut w, t) = worker(ReadyMode::Notify);
        w.stop(Leave::ScaledDown, Signal::SIGTERM, t);
        assert_eq!(
            w.leader_exited(ExitStatus::Code(0), Signal::SIGTERM, t),
            None
        );
        assert_eq!(w.leaving(), Some(Leave::ScaledDown));
        assert_eq!(w.label(), "exiting");
    }

    #[test]
    fn huge_durations_do_not_overflow() {
        let t = Instant::now();
        let far = later(t, Duration::from_secs(u64::MAX));
        assert!(far > t);
    }

    #[test]
    fn exit_descriptions() {
        assert_eq!(ExitStatus::Code(3).describe(), "exited with code 3");
        let s = ExitStatus::Signal {
            signal: Signal::SIGSEGV,
            core_dumped: true,
        };
        assert_eq!(s.describe(), "was killed by SIGSEGV (core dumped)");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
        assert_eq!(human(Duration::from_millis(1500)), "1.5s");
        assert_eq!(human(Duration::from_secs(125)), "2m05s");
    }
}
