//! The core as an upgrade hands it over: [`Core::snapshot`] writes every slot, worker,
//! deadline, counter and waiter into the state format (times relative to the hand-over), and
//! [`Core::restore`] builds the same core from it against another clock reading. Restoring
//! a snapshot and taking a snapshot again at the same relative moment gives back the same
//! snapshot (see the round-trip tests in `tests.rs`).

use std::time::Instant;

use nix::unistd::Pid;

use super::reload::Reload;
use super::{Core, Fixed, Phase, Slot, control};
use crate::control::protocol::{LastUpgrade, Restarts};
use crate::error::Exit;
use crate::supervisor::backoff::{Backoff, Budget, Jitter};
use crate::supervisor::worker::{ExitStatus, Leave, Recycle, State, Worker};
use crate::upgrade::format::{
    CoreState, ExitState, LastUpgradeState, LeaveState, PhaseState, RecycleState, ReloadState,
    SlotState, WorkerPhase, WorkerState,
};
use crate::upgrade::state::{at, dur, ns, rel, runtime_from, runtime_state, signal_from};

impl Core {
    /// Everything the core holds, as of `now`. Call between events (never while an action's
    /// answer is due: the core then has no spawn in flight).
    pub fn snapshot(&self, now: Instant) -> CoreState {
        let r = |t: Instant| rel(t, now);
        CoreState {
            rt: runtime_state(&self.rt),
            slots: self
                .slots
                .iter()
                .map(|s| SlotState {
                    start_at: s.start_at.map(r),
                    open: s.open,
                    failures: s.backoff.failures(),
                    last_error: s.last_error.clone(),
                    last_ok: s.last_ok,
                    restarts: [
                        s.restarts.crash,
                        s.restarts.watchdog,
                        s.restarts.memory,
                        s.restarts.requests,
                    ],
                    last_exit: s.last_exit.clone(),
                })
                .collect(),
            workers: self.workers.iter().map(|w| worker_state(w, now)).collect(),
            generation: self.generation,
            newest: self.newest,
            reload: self.reload.as_ref().map(|rl| ReloadState {
                generation: rl.generation,
                why: rl.why.clone(),
                queue: rl.queue.iter().copied().collect(),
                in_flight: rl.in_flight.clone(),
                replaced: rl.replaced,
            }),
            rereading: self.rereading.clone(),
            watch_at: self.watch_at.as_ref().map(|(t, p)| (r(*t), p.clone())),
            watch_path: self.watch_path.clone(),
            phase: match self.phase {
                Phase::Running => PhaseState::Running,
                Phase::LameDuck(t) => PhaseState::LameDuck { until: r(t) },
                Phase::Stopping(t) => PhaseState::Stopping { kill_at: r(t) },
                Phase::Killing => PhaseState::Killing,
            },
            budget: self.budget.times().map(r).collect(),
            jitter: self.jitter.state(),
            reload_waiters: self.waiters.reload.clone(),
            scale_waiters: self
                .waiters
                .scale
                .iter()
                .map(|(c, n, t)| (*c, *n, r(*t)))
                .collect(),
            upgrade_waiters: self.waiters.upgrade.clone(),
            sd_status: self.sd_status.clone(),
            sd_ready: self.sd_ready,
            any_started: self.any_started,
            said_all_ready: self.said_all_ready,
            stop_why: self.stop_why.clone(),
            sd_ping_at: self.sd_ping_at.map(r),
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            exit: self.exit.code(),
            upgrading: self.upgrading.clone(),
            upgrades_ok: self.upgrades_ok,
            upgrades_failed: self.upgrades_failed,
            last_upgrade: self.last_upgrade.as_ref().map(|l| LastUpgradeState {
                at: l.at.clone(),
                from: l.from.clone(),
                binary: l.binary.clone(),
            }),
        }
    }

    /// The core of a snapshot, its times taken against `now`; `fixed` is what the new image
    /// found (the same service, the same pid).
    pub fn restore(s: CoreState, fixed: Fixed, now: Instant) -> Result<Core, String> {
        let t = |r: i64| at(r, now);
        let rt = runtime_from(&s.rt)?;
        let exit = Exit::ALL
            .into_iter()
            .find(|e| e.code() == s.exit)
            .ok_or_else(|| format!("exit status {} is not one multinode has", s.exit))?;
        let workers = s
            .workers
            .into_iter()
            .map(|w| worker_from(w, now))
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Core {
            budget: Budget::with_times(rt.max_restarts, s.budget.into_iter().map(t)),
            slots: s
                .slots
                .into_iter()
                .map(|sl| Slot {
                    start_at: sl.start_at.map(t),
                    open: sl.open,
                    backoff: Backoff::with_failures(sl.failures),
                    last_error: sl.last_error,
                    last_ok: sl.last_ok,
                    restarts: Restarts {
                        crash: sl.restarts[0],
                        watchdog: sl.restarts[1],
                        memory: sl.restarts[2],
                        requests: sl.restarts[3],
                    },
                    last_exit: sl.last_exit,
                })
                .collect(),
            rt,
            fixed,
            workers,
            generation: s.generation,
            newest: s.newest,
            reload: s.reload.map(|rl| Reload {
                generation: rl.generation,
                why: rl.why,
                queue: rl.queue.into_iter().collect(),
                in_flight: rl.in_flight,
                replaced: rl.replaced,
            }),
            rereading: s.rereading,
            watch_at: s.watch_at.map(|(r, p)| (t(r), p)),
            watch_path: s.watch_path,
            phase: match s.phase {
                PhaseState::Running => Phase::Running,
                PhaseState::LameDuck { until } => Phase::LameDuck(t(until)),
                PhaseState::Stopping { kill_at } => Phase::Stopping(t(kill_at)),
                PhaseState::Killing => Phase::Killing,
            },
            spawning: false,
            jitter: Jitter::from_state(s.jitter),
            waiters: control::Waiters {
                reload: s.reload_waiters,
                scale: s
                    .scale_waiters
                    .into_iter()
                    .map(|(c, n, r)| (c, n, t(r)))
                    .collect(),
                upgrade: s.upgrade_waiters,
            },
            sd_status: s.sd_status,
            sd_ready: s.sd_ready,
            any_started: s.any_started,
            said_all_ready: s.said_all_ready,
            stop_why: s.stop_why,
            sd_ping_at: s.sd_ping_at.map(t),
            reloads_ok: s.reloads_ok,
            reloads_failed: s.reloads_failed,
            upgrading: s.upgrading,
            upgrades_ok: s.upgrades_ok,
            upgrades_failed: s.upgrades_failed,
            last_upgrade: s.last_upgrade.map(|l| LastUpgrade {
                at: l.at,
                from: l.from,
                binary: l.binary,
            }),
            exit,
            out: Vec::new(),
        })
    }
}

fn worker_state(w: &Worker, now: Instant) -> WorkerState {
    let r = |t: Instant| rel(t, now);
    WorkerState {
        slot: w.slot,
        pid: w.pid.as_raw(),
        generation: w.generation,
        started: r(w.started),
        state: match w.state {
            State::Starting { ready_at, deadline } => WorkerPhase::Starting {
                ready_at: ready_at.map(r),
                deadline: r(deadline),
            },
            State::Ready => WorkerPhase::Ready,
            State::Recycling(c) => WorkerPhase::Recycling {
                cause: recycle_state(c),
            },
            State::Draining { why, kill_at } => WorkerPhase::Draining {
                why: leave_state(why),
                kill_at: r(kill_at),
            },
            State::Killed { why } => WorkerPhase::Killed {
                why: leave_state(why),
            },
            State::Exited {
                status,
                why,
                kill_at,
            } => WorkerPhase::Exited {
                status: match status {
                    ExitStatus::Code(c) => ExitState::Code(c),
                    ExitStatus::Signal {
                        signal,
                        core_dumped,
                    } => ExitState::Signal {
                        signal: signal.as_str().into(),
                        core_dumped,
                    },
                },
                why: why.map(leave_state),
                kill_at: kill_at.map(r),
            },
        },
        status_text: w.status_text.clone(),
        watchdog_ns: w.watchdog.map(ns),
        watchdog_at: w.watchdog_at.map(r),
        request_limit: w.request_limit,
    }
}

fn worker_from(w: WorkerState, now: Instant) -> Result<Worker, String> {
    let t = |r: i64| at(r, now);
    let state = match w.state {
        WorkerPhase::Starting { ready_at, deadline } => State::Starting {
            ready_at: ready_at.map(t),
            deadline: t(deadline),
        },
        WorkerPhase::Ready => State::Ready,
        WorkerPhase::Recycling { cause } => State::Recycling(recycle_from(cause)),
        WorkerPhase::Draining { why, kill_at } => State::Draining {
            why: leave_from(why),
            kill_at: t(kill_at),
        },
        WorkerPhase::Killed { why } => State::Killed {
            why: leave_from(why),
        },
        WorkerPhase::Exited {
            status,
            why,
            kill_at,
        } => State::Exited {
            status: match status {
                ExitState::Code(c) => ExitStatus::Code(c),
                ExitState::Signal {
                    signal,
                    core_dumped,
                } => ExitStatus::Signal {
                    signal: signal_from(&signal)?,
                    core_dumped,
                },
            },
            why: why.map(leave_from),
            kill_at: kill_at.map(t),
        },
    };
    if w.pid <= 1 {
        return Err(format!("worker pid {} is not a worker's", w.pid));
    }
    Ok(Worker {
        slot: w.slot,
        pid: Pid::from_raw(w.pid),
        generation: w.generation,
        started: t(w.started),
        state,
        status_text: w.status_text,
        watchdog: w.watchdog_ns.map(dur),
        watchdog_at: w.watchdog_at.map(t),
        request_limit: w.request_limit,
    })
}

fn recycle_state(c: Recycle) -> RecycleState {
    match c {
        Recycle::Memory(b) => RecycleState::Memory(b),
        Recycle::Requests(n) => RecycleState::Requests(n),
    }
}

fn recycle_from(c: RecycleState) -> Recycle {
    match c {
        RecycleState::Memory(b) => Recycle::Memory(b),
        RecycleState::Requests(n) => Recycle::Requests(n),
    }
}

fn leave_state(l: Leave) -> LeaveState {
    match l {
        Leave::Replaced => LeaveState::Replaced,
        Leave::ScaledDown => LeaveState::ScaledDown,
        Leave::ServiceStop => LeaveState::ServiceStop,
        Leave::NotReady => LeaveState::NotReady,
        Leave::Superseded => LeaveState::Superseded,
        Leave::Abandoned => LeaveState::Abandoned,
        Leave::Leftovers => LeaveState::Leftovers,
        Leave::Hung => LeaveState::Hung,
        Leave::Recycled(c) => LeaveState::Recycled(recycle_state(c)),
    }
}

fn leave_from(l: LeaveState) -> Leave {
    match l {
        LeaveState::Replaced => Leave::Replaced,
        LeaveState::ScaledDown => Leave::ScaledDown,
        LeaveState::ServiceStop => Leave::ServiceStop,
        LeaveState::NotReady => Leave::NotReady,
        LeaveState::Superseded => Leave::Superseded,
        LeaveState::Abandoned => Leave::Abandoned,
        LeaveState::Leftovers => Leave::Leftovers,
        LeaveState::Hung => Leave::Hung,
        LeaveState::Recycled(c) => Leave::Recycled(recycle_from(c)),
    }
}
