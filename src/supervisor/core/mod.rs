//! The supervisor's decisions, without I/O.
//!
//! [`Core::handle`] takes an [`Event`] (a signal, a reaped child, a notify message, a control
//! request, a timer, the result of an action) and the current time, changes the state, and
//! returns the [`Action`]s the shell must carry out (spawn a worker, signal a process group,
//! answer a client, notify systemd, log a line). It never touches the OS, reads no clock and
//! draws no random number of its own, so every rule here is unit-tested without processes
//! (see `tests.rs`). [`Core::next_deadline`] tells the shell when to come back with
//! [`Event::Tick`]; without a deadline the shell sleeps until an fd wakes it.
//!
//! One spawn at a time: an action whose outcome the core needs (spawning, opening a reuseport
//! slot) is answered by the shell with an event ([`Event::Spawned`], [`Event::SlotOpened`])
//! before anything else happens, and the core emits at most one `Spawn` until its answer is
//! in. So what the core believes and what exists never drift apart. Re-reading the config
//! file is the exception: when the guard reads it, [`Event::ConfigRead`] comes later, and
//! anything may happen meanwhile (the core keeps why it asked in `rereading`).
//!
//! The pieces: `event.rs` (what goes in and out), `lifecycle.rs` (start, exit, restart,
//! stop, scale), `reload.rs` (rolling reload), `control.rs` (control requests, their waiters,
//! status, systemd), `worker.rs` beside this directory (one worker's state machine).

mod control;
mod event;
mod health;
mod lifecycle;
mod reload;
mod snapshot;
#[cfg(test)]
mod tests;
mod upgrade;

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::backoff::{Backoff, Budget, Jitter};
use super::worker::{Leave, State, Worker, human, later};
use crate::config::Runtime;
use crate::control::protocol::{LastUpgrade, Restarts};
use crate::error::Exit;
use crate::log::Event as Log;
use reload::Reload;

pub use event::{Action, ClientId, Event, Fixed, Reread, SdNote, Sig};

/// A worker that takes routed connections (see [`Core::route_targets`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Target {
    pub pid: Pid,
    pub slot: u32,
    pub ready: bool,
    /// `--max-requests` for this worker: report [`Event::Recycle`] once it was handed as many.
    pub request_limit: Option<u64>,
}

/// How long a hung worker gets after `--watchdog-signal` before SIGKILL.
pub const HUNG_GRACE: Duration = Duration::from_secs(5);

/// The most workers multinode runs (`--workers`, `scale`, TTIN).
pub const MAX_WORKERS: u32 = 4096;

#[derive(Debug, Default)]
struct Slot {
    /// When the slot next gets a worker, while none serves it.
    start_at: Option<Instant>,
    /// `--balance reuseport`: its sockets are bound (a new slot waits for them).
    open: bool,
    backoff: Backoff,
    /// The last start error printed, so a slot that cannot start says so once, not per try.
    last_error: Option<String>,
    /// Whether the slot's last worker ended well (exit 0, or by our stop signal).
    last_ok: bool,
    /// Workers of this slot replaced unasked, by cause, for `status`.
    restarts: Restarts,
    /// How the last of those ended, for `status`.
    last_exit: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Running,
    /// `--stop-delay`: asked to stop; unhealthy, still serving until then.
    LameDuck(Instant),
    /// Stop signal sent to every worker; SIGKILL at the deadline.
    Stopping(Instant),
    /// Everything SIGKILLed; waiting for the groups to be gone.
    Killing,
}

pub struct Core {
    rt: Runtime,
    fixed: Fixed,
    slots: Vec<Slot>,
    workers: Vec<Worker>,
    /// The generation every slot runs once no reload is under way.
    generation: u64,
    /// The highest generation a reload has taken.
    newest: u64,
    reload: Option<Reload>,
    /// Why a config re-read was asked for, until its answer is in.
    rereading: Option<String>,
    /// `--watch`: reload once nothing changed until then; the first path that changed.
    watch_at: Option<(Instant, String)>,
    /// The changed path behind the reload being asked for, for its event.
    watch_path: Option<String>,
    phase: Phase,
    /// A spawn was asked for and its answer is not in yet.
    spawning: bool,
    budget: Budget,
    jitter: Jitter,
    waiters: control::Waiters,
    /// The last STATUS= sent to systemd, and whether READY=1 was.
    sd_status: String,
    sd_ready: bool,
    /// Whether any worker ever started: a program that cannot start at all is a start-up
    /// error, not something to retry forever.
    any_started: bool,
    /// Whether "all N workers ready" was said since the service was last not whole.
    said_all_ready: bool,
    /// Why the service was asked to stop (for the drain that follows `--stop-delay`).
    stop_why: String,
    /// When multinode pings systemd's watchdog next (`WATCHDOG_USEC`).
    sd_ping_at: Option<Instant>,
    /// Reloads by outcome, for `/metrics`.
    reloads_ok: u64,
    reloads_failed: u64,
    /// The upgrade under way: the binary asked for (`None`: the one multinode runs from).
    upgrading: Option<Option<String>>,
    /// In-place upgrades by outcome, and the last one done.
    upgrades_ok: u64,
    upgrades_failed: u64,
    last_upgrade: Option<LastUpgrade>,
    exit: Exit,
    out: Vec<Action>,
}

impl Core {
    pub fn new(rt: Runtime, fixed: Fixed, jitter: Jitter) -> Core {
        let slots = (0..rt.workers)
            .map(|_| Slot {
                open: true,
                ..Slot::default()
            })
            .collect();
        Core {
            budget: Budget::new(rt.max_restarts),
            rt,
            fixed,
            slots,
            workers: Vec::new(),
            generation: 1,
            newest: 1,
            reload: None,
            rereading: None,
            watch_at: None,
            watch_path: None,
            phase: Phase::Running,
            spawning: false,
            jitter,
            waiters: control::Waiters::default(),
            sd_status: String::new(),
            sd_ready: false,
            any_started: false,
            said_all_ready: false,
            stop_why: String::new(),
            sd_ping_at: None,
            reloads_ok: 0,
            reloads_failed: 0,
            upgrading: None,
            upgrades_ok: 0,
            upgrades_failed: 0,
            last_upgrade: None,
            exit: Exit::Ok,
            out: Vec::new(),
        }
    }

    /// Takes one event; returns what to do about it, in order.
    pub fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        match event {
            Event::Start => {
                for s in &mut self.slots {
                    s.start_at = Some(now);
                }
                self.sd_ping_at = self.fixed.sd_watchdog.map(|d| later(now, d / 2));
            }
            Event::Signal(sig) => self.on_signal(sig, now),
            Event::Spawned {
                slot,
                generation,
                pid,
            } => self.spawned(slot, generation, pid, now),
            Event::SpawnFailed {
                slot,
                generation,
                error,
            } => self.spawn_failed(slot, generation, error, now),
            Event::Exited {
                pid,
                status,
                group_alive,
            } => self.leader_exited(pid, status, group_alive, now),
            Event::GroupGone { pid } => self.group_gone(pid, now),
            Event::Notify { pid, fields } => self.on_notify(pid, fields, now),
            Event::Usage { memory } => self.on_usage(memory, now),
            Event::Recycle { pid, cause } => self.recycle(pid, cause, now),
            Event::FilesChanged { path } => {
                if self.phase == Phase::Running {
                    let first = self.watch_at.take().map_or(path, |(_, p)| p);
                    let at = super::worker::later(now, self.rt.watch_debounce);
                    self.watch_at = Some((at, first));
                }
            }
            Event::ConfigRead(result) => self.config_read(result, now),
            Event::SlotOpened { slot, result } => self.slot_opened(slot, result),
            Event::Control { client, request } => self.on_request(client, request, now),
            Event::Tick => self.tick(now),
            Event::GuardGone => self.guard_gone(now),
            Event::UpgradeChecked { binary, version } => self.upgrade_checked(binary, version),
            Event::Upgraded {
                from,
                binary,
                took_ms,
                at,
            } => self.upgraded(from, binary, took_ms, at),
            Event::UpgradeFailed {
                stage,
                reason,
                running,
            } => self.upgrade_failed(stage, reason, running),
            Event::Fatal(msg) => {
                self.log(Log::error(
                    "internal",
                    format!("{msg}; killing every worker and exiting"),
                ));
                self.log(Log::warn("kill", "killing every worker").with("why", "internal"));
                self.exit = self.exit.worst(Exit::Internal);
                self.kill_all();
            }
        }
        self.reconcile(now);
        self.housekeeping(now);
        std::mem::take(&mut self.out)
    }

    /// When the shell must come back with [`Event::Tick`]; `None`: only an event wakes it.
    pub fn next_deadline(&self) -> Option<Instant> {
        let running = self.live();
        let starts = self
            .slots
            .iter()
            .filter(|s| running && s.open)
            .filter_map(|s| s.start_at);
        let workers = self
            .workers
            .iter()
            .filter(|w| running || matches!(w.state, State::Starting { .. }))
            .filter_map(|w| w.deadline());
        let stop = match self.phase {
            Phase::Stopping(at) | Phase::LameDuck(at) => Some(at),
            _ => None,
        };
        starts
            .chain(workers)
            .chain(stop)
            .chain(self.sd_ping_at)
            .chain(self.watch_at.as_ref().map(|(at, _)| *at))
            .chain(self.waiters.deadline())
            .min()
    }

    /// Every worker is gone and none will start: the supervisor can exit.
    pub fn finished(&self) -> bool {
        self.workers.is_empty()
            && !self.spawning
            && (!self.live() || self.slots.iter().all(|s| s.start_at.is_none()))
    }

    /// Workers are kept running: restarts, recycling and routing go on (also during
    /// `--stop-delay`).
    fn live(&self) -> bool {
        matches!(self.phase, Phase::Running | Phase::LameDuck(_))
    }

    /// `/healthz`: `Ok` when every slot has a ready worker and no stop was asked for; the
    /// reason otherwise.
    pub fn health(&self) -> Result<(), String> {
        match self.phase {
            Phase::Running => {}
            Phase::LameDuck(_) => return Err("stopping (--stop-delay)".into()),
            Phase::Stopping(_) | Phase::Killing => return Err("stopping".into()),
        }
        match (0..self.rt.workers)
            .find(|&slot| !self.workers.iter().any(|w| w.slot == slot && w.is_ready()))
        {
            Some(slot) => Err(format!("slot {slot} has no ready worker")),
            None => Ok(()),
        }
    }

    /// The exit status, once [`Core::finished`].
    pub fn outcome(&self) -> Exit {
        if self.phase == Phase::Running && !self.slots.iter().all(|s| s.last_ok) {
            // Every worker exited for good (--restart never / on-failure) and one failed.
            return self.exit.worst(Exit::Unclean);
        }
        self.exit
    }

    /// Whether new connections are accepted (route mode): not once the drain has begun.
    pub fn accepting(&self) -> bool {
        self.live()
    }

    /// The workers that take routed connections (route mode), ordered by slot. Ready ones
    /// are preferred; a starting one gets connections only while none is.
    pub fn route_targets(&self) -> Vec<Target> {
        let mut t: Vec<Target> = self
            .workers
            .iter()
            .filter(|w| w.serving())
            .map(|w| Target {
                pid: w.pid,
                slot: w.slot,
                ready: w.is_ready(),
                request_limit: w.request_limit,
            })
            .collect();
        t.sort_by_key(|t| t.slot);
        t
    }

    fn log(&mut self, ev: Log) {
        self.out.push(Action::Log(ev));
    }

    fn signal(&mut self, pid: Pid, signal: Option<Signal>) {
        if let Some(signal) = signal {
            self.out.push(Action::Signal { pid, signal });
        }
    }

    fn on_signal(&mut self, sig: Sig, now: Instant) {
        match sig {
            Sig::Term | Sig::Int if self.phase == Phase::Running => {
                self.begin_stop(sig.name(), now)
            }
            Sig::Term | Sig::Int => {
                self.log(
                    Log::warn(
                        "kill",
                        format!("{} again: killing every worker now", sig.name()),
                    )
                    .with("signal", sig.name())
                    .with("why", "signal-again"),
                );
                self.kill_all();
            }
            Sig::Quit => {
                self.log(
                    Log::warn("kill", "SIGQUIT: fast stop, killing every worker now")
                        .with("signal", "SIGQUIT")
                        .with("why", "fast-stop"),
                );
                self.kill_all();
            }
            Sig::Hup => self.request_reload("SIGHUP".into()),
            Sig::Ttin => self.scale_up("SIGTTIN", now),
            Sig::Ttou => self.scale_down("SIGTTOU", now),
            Sig::Usr2 => self.request_upgrade(None, None, "SIGUSR2"),
        }
    }

    /// sd_notify datagrams of a worker: readiness, status text, stopping, its watchdog.
    fn on_notify(&mut self, pid: Pid, fields: Vec<(String, String)>, now: Instant) {
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        if self.workers[i].exit_status().is_some() {
            return;
        }
        for (k, v) in fields {
            let w = &mut self.workers[i];
            let (slot, raw) = (w.slot, w.pid.as_raw());
            match k.as_str() {
                "READY" if v == "1" && w.ready(now) => {
                    self.log(
                        Log::info("ready", "ready (READY=1)")
                            .worker(slot, raw)
                            .with("via", "notify"),
                    );
                    self.out.push(Action::Inspect { pid });
                }
                "STATUS" => w.status_text = Some(v),
                "STOPPING" if v == "1" => self.log(
                    Log::info("worker-stopping", "reports it is stopping (STOPPING=1)")
                        .worker(slot, raw),
                ),
                "WATCHDOG" if v == "1" => w.ping(now),
                "WATCHDOG" if v == "trigger" => {
                    self.hung(i, "it sent WATCHDOG=trigger", now);
                    return;
                }
                // As systemd: a new interval, which also counts as a ping; 0 turns it off.
                "WATCHDOG_USEC" => {
                    if let Ok(usec) = v.parse::<u64>() {
                        let d = (usec > 0).then(|| Duration::from_micros(usec));
                        w.set_watchdog(d, now);
                    }
                }
                _ => {}
            }
        }
    }

    /// Deadlines: readiness delays and timeouts, SIGKILL after grace, the stop deadline, the
    /// file watcher's debounce. (Restarts that are due are started by `reconcile`.)
    fn tick(&mut self, now: Instant) {
        if self.phase == Phase::Running {
            if let Some((at, path)) = self.watch_at.take() {
                if at <= now {
                    self.watch_path = Some(path.clone());
                    self.request_reload(format!("change in {path}"));
                } else {
                    self.watch_at = Some((at, path));
                }
            }
        }
        if let Phase::LameDuck(at) = self.phase {
            if at <= now {
                let why = std::mem::take(&mut self.stop_why);
                self.stop(&why, now);
            }
        }
        if let Some(at) = self.sd_ping_at.filter(|&at| at <= now) {
            self.out.push(Action::Systemd(SdNote::Watchdog));
            let interval = self.fixed.sd_watchdog.unwrap_or(Duration::from_secs(1));
            self.sd_ping_at = Some(later(at.max(now), interval / 2));
        }
        if let Phase::Stopping(at) = self.phase {
            if at <= now {
                let left = self.workers.len();
                self.log(
                    Log::warn(
                        "kill",
                        format!(
                            "{left} worker(s) did not stop within --grace {}; sending SIGKILL",
                            human(self.rt.grace)
                        ),
                    )
                    .with("workers", left)
                    .with("why", "grace")
                    .with("grace_ms", self.rt.grace.as_millis() as u64),
                );
                self.kill_all();
            }
        }
        let running = self.live();
        let mut late = Vec::new();
        let mut hung = Vec::new();
        for i in 0..self.workers.len() {
            let (slot, pid, state) = {
                let w = &self.workers[i];
                (w.slot, w.pid, w.state)
            };
            match state {
                State::Starting { ready_at, deadline } => {
                    if ready_at.is_some_and(|t| t <= now) {
                        self.workers[i].ready(now);
                        self.log(
                            Log::info("ready", "ready (up for the --ready delay)")
                                .worker(slot, pid.as_raw())
                                .with("via", "delay"),
                        );
                        self.out.push(Action::Inspect { pid });
                    } else if deadline <= now {
                        late.push(pid);
                    }
                }
                State::Ready | State::Recycling(_)
                    if running && self.workers[i].watchdog_at.is_some_and(|t| t <= now) =>
                {
                    hung.push(pid);
                }
                // While the service stops, its own deadline rules.
                State::Draining { why, kill_at } if running && kill_at <= now => {
                    let sig = self.workers[i].kill(why);
                    self.killed_late(slot, pid, Some(why), sig);
                }
                State::Exited {
                    why,
                    kill_at: Some(at),
                    ..
                } if running && at <= now => {
                    let sig = self.workers[i].kill(why.unwrap_or(Leave::Leftovers));
                    self.killed_late(slot, pid, why, sig);
                }
                _ => {}
            }
        }
        for pid in late {
            self.not_ready_in_time(pid, now);
        }
        for pid in hung {
            if let Some(i) = self.workers.iter().position(|w| w.pid == pid) {
                let silent = self.workers[i].watchdog.unwrap_or_default();
                self.hung(i, &format!("no WATCHDOG=1 within {}", human(silent)), now);
            }
        }
    }

    /// A worker outlived its `--grace` (a hung one, [`HUNG_GRACE`] after `--watchdog-signal`):
    /// SIGKILL, and the run is no longer clean.
    fn killed_late(&mut self, slot: u32, pid: Pid, why: Option<Leave>, sig: Option<Signal>) {
        let (grace, after, reason) = if why == Some(Leave::Hung) {
            (
                HUNG_GRACE,
                format!("{} of --watchdog-signal", human(HUNG_GRACE)),
                "hung",
            )
        } else {
            (
                self.rt.grace,
                format!("--grace {}", human(self.rt.grace)),
                "grace",
            )
        };
        self.log(
            Log::warn(
                "kill",
                format!("did not stop within {after}; sending SIGKILL"),
            )
            .worker(slot, pid.as_raw())
            .with("why", reason)
            .with("grace_ms", grace.as_millis() as u64),
        );
        self.signal(pid, sig);
        self.exit = self.exit.worst(Exit::Unclean);
    }

    /// Starts what should run and does not: the next worker of a rolling reload, or a slot
    /// whose (re)start is due. One spawn at a time (see the module doc).
    fn reconcile(&mut self, now: Instant) {
        if !self.live() || self.spawning {
            return;
        }
        self.replace_recycled(now);
        if self.advance_reload(now) {
            return;
        }
        for slot in 0..self.slots.len() {
            let s = &self.slots[slot];
            if !s.open || s.start_at.is_none_or(|t| t > now) {
                continue;
            }
            if self.covered(slot as u32) {
                // Something else (a reload) gave it a worker meanwhile.
                self.slots[slot].start_at = None;
                continue;
            }
            let generation = self.generation_for(slot as u32);
            self.spawn(slot as u32, generation);
            return;
        }
    }

    fn spawn(&mut self, slot: u32, generation: u64) {
        self.spawning = true;
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.start_at = None;
        }
        self.out.push(Action::Spawn {
            slot,
            generation,
            workers: self.rt.workers,
            watchdog: self.rt.watchdog,
        });
    }

    /// Whether `slot` has a worker that is not on its way to being replaced.
    fn covered(&self, slot: u32) -> bool {
        self.workers.iter().any(|w| w.slot == slot && w.covers())
    }

    /// Every slot has a ready worker serving it.
    fn all_ready(&self) -> bool {
        self.ready_count() == self.rt.workers as usize
    }

    fn ready_count(&self) -> usize {
        (0..self.rt.workers)
            .filter(|&slot| self.workers.iter().any(|w| w.slot == slot && w.is_ready()))
            .count()
    }
}
