//! Rolling reload: replace every worker, `--reload-parallel` slots at a time, without ever
//! leaving a slot unserved. For each slot: start the new generation's worker, wait until it is
//! ready, then ask the old one to drain (stop signal, SIGKILL after `--grace`). The sockets
//! stay open in the supervisor throughout, so the kernel keeps queueing connections.
//!
//! The path of a reload, whatever asked for it (SIGHUP, `multinode reload`, `--watch`):
//! [`Core::request_reload`] asks the shell to read the config file again
//! ([`Action::ReadConfig`]); [`Core::config_read`] applies what may change at run time and
//! begins the roll; `advance_reload` (called by `reconcile` after every event) starts new
//! workers and drains old ones as new ones become ready, and finishes the roll.
//!
//! A new worker that exits or misses `--ready-timeout` aborts the roll: slots already replaced
//! keep their new workers, the others keep their old ones, and the error is reported. A reload
//! request during a roll starts the roll over (in-flight new workers are stopped first), so
//! two rolls never race.

use std::collections::VecDeque;
use std::time::Instant;

use super::{Action, Core, Phase, Reread, SdNote};
use crate::control::protocol::Reply;
use crate::log::Event as Log;
use crate::supervisor::backoff::Budget;
use crate::supervisor::worker::{Leave, later};

/// Why a roll was abandoned.
pub(super) struct Failure {
    /// `exited`, `not-ready` or `start-failed`.
    pub(super) cause: &'static str,
    /// The new worker that failed, if one ran.
    pub(super) worker: Option<(u32, nix::unistd::Pid)>,
    pub(super) reason: String,
}

#[derive(Debug)]
pub(super) struct Reload {
    pub(super) generation: u64,
    pub(super) why: String,
    /// Slots still to replace.
    pub(super) queue: VecDeque<u32>,
    /// Slots whose new worker is starting and not ready yet.
    pub(super) in_flight: Vec<u32>,
    pub(super) replaced: u32,
}

impl Core {
    /// Asks for the config file to be read again; the roll begins when it has been.
    pub(super) fn request_reload(&mut self, why: String) {
        if self.phase != Phase::Running {
            self.reload_finished(Err("multinode is stopping".into()));
            return;
        }
        self.rereading = Some(why);
        self.out.push(Action::ReadConfig);
    }

    /// The config file was read again (or there is none): begin the roll.
    pub(super) fn config_read(
        &mut self,
        result: Result<Option<Box<Reread>>, String>,
        now: Instant,
    ) {
        let why = self.rereading.take().unwrap_or_else(|| "reload".into());
        let path = self.watch_path.take();
        if self.phase != Phase::Running {
            return;
        }
        if let Some(old) = self.reload.take() {
            self.log(
                Log::warn(
                    "reload-superseded",
                    format!(
                        "{why} during the reload to generation {}: starting over",
                        old.generation
                    ),
                )
                .with("why", why.as_str())
                .with("generation", old.generation),
            );
            self.cancel_in_flight(&old, now);
        }
        let reread = match result {
            Ok(r) => r,
            Err(e) => {
                let msg = format!("{why}: not reloading: {e}; the workers keep running");
                self.log(
                    Log::error("reload-failed", msg)
                        .with("why", why.as_str())
                        .with("cause", "config")
                        .with("reason", e.as_str()),
                );
                self.reload_finished(Err(e));
                return;
            }
        };
        if self.fixed.systemd {
            self.out.push(Action::Systemd(SdNote::Reloading));
        }
        self.newest += 1;
        let generation = self.newest;
        // The roll covers the slots there are now; slots a re-read config adds start on the
        // new generation directly, and slots it removes are skipped.
        self.reload = Some(Reload {
            generation,
            why: why.clone(),
            queue: (0..self.rt.workers).collect(),
            in_flight: Vec::new(),
            replaced: 0,
        });
        if let Some(r) = reread {
            if !r.needs_restart.is_empty() {
                self.log(
                    Log::warn(
                        "reload-needs-restart",
                        format!(
                            "{} changed in the config file: restart multinode to apply that",
                            r.needs_restart.join(", ")
                        ),
                    )
                    .with("keys", r.needs_restart.clone()),
                );
            }
            let workers = r.runtime.workers;
            self.rt = crate::config::Runtime {
                workers: self.rt.workers,
                ..r.runtime
            };
            self.budget = Budget::new(self.rt.max_restarts);
            self.scale_to(workers, "config reload", now);
        }
        let mut ev = Log::info(
            "reload",
            format!(
                "{why}: rolling {} worker(s) over to generation {generation}, {} at a time",
                self.rt.workers, self.rt.reload_parallel
            ),
        )
        .with("why", why.as_str())
        .with("generation", generation)
        .with("workers", self.rt.workers)
        .with("parallel", self.rt.reload_parallel);
        if let Some(path) = path {
            ev = ev.with("path", path);
        }
        self.log(ev);
    }

    /// Moves the roll on: drains the old worker of every slot whose new worker is ready,
    /// starts a new worker while fewer than `--reload-parallel` are in flight, and finishes
    /// the roll when every slot is done. True if it asked for a spawn.
    pub(super) fn advance_reload(&mut self, now: Instant) -> bool {
        let Some(mut r) = self.reload.take() else {
            return false;
        };
        let kill_at = later(now, self.rt.grace);
        let mut i = 0;
        while i < r.in_flight.len() {
            let slot = r.in_flight[i];
            let new = self
                .workers
                .iter()
                .find(|w| w.slot == slot && w.generation == r.generation && w.is_ready())
                .map(|w| w.pid);
            let Some(new) = new else {
                i += 1;
                continue;
            };
            r.in_flight.remove(i);
            r.replaced += 1;
            for j in 0..self.workers.len() {
                let old = &mut self.workers[j];
                if old.slot != slot || old.pid == new || !old.serving() {
                    continue;
                }
                let sig = old.stop(Leave::Replaced, self.rt.stop_signal, kill_at);
                let pid = old.pid;
                self.log(
                    Log::info(
                        "draining",
                        format!("replaced by worker.{slot}[{new}]; draining"),
                    )
                    .worker(slot, pid.as_raw())
                    .with("replaced_by", new.as_raw()),
                );
                self.signal(pid, sig);
            }
        }
        while r.in_flight.len() < self.rt.reload_parallel as usize {
            let Some(slot) = r.queue.pop_front() else {
                break;
            };
            let Some(s) = self.slots.get(slot as usize) else {
                continue; // scaled away meanwhile
            };
            if !s.open {
                // A slot whose sockets are still being bound: its first worker will be of
                // this generation anyway.
                continue;
            }
            let current = self
                .workers
                .iter()
                .any(|w| w.slot == slot && w.serving() && w.generation == r.generation);
            if current {
                r.replaced += 1;
                continue;
            }
            r.in_flight.push(slot);
            let generation = r.generation;
            self.reload = Some(r);
            self.spawn(slot, generation);
            return true;
        }
        if r.queue.is_empty() && r.in_flight.is_empty() {
            self.generation = r.generation;
            self.out.push(Action::RolledOut {
                generation: r.generation,
            });
            self.log(
                Log::info(
                    "reloaded",
                    format!(
                        "reload ({}) done: {} worker(s) on generation {}",
                        r.why, r.replaced, r.generation
                    ),
                )
                .with("why", r.why.as_str())
                .with("generation", r.generation)
                .with("replaced", r.replaced),
            );
            self.reload_finished(Ok(r.generation));
        } else {
            self.reload = Some(r);
        }
        false
    }

    /// Stops the roll; old workers of the slots not yet replaced keep serving.
    pub(super) fn abort_reload(&mut self, failure: Failure, now: Instant) {
        let Some(r) = self.reload.take() else { return };
        let Failure {
            cause,
            worker,
            reason,
        } = failure;
        self.cancel_in_flight(&r, now);
        let kept = self.rt.workers.saturating_sub(r.replaced);
        let msg = format!(
            "reload to generation {} failed: {reason}; {kept} worker(s) keep serving the previous generation, {} run the new one",
            r.generation, r.replaced
        );
        let mut ev = Log::error("reload-failed", msg.clone())
            .with("why", r.why.as_str())
            .with("cause", cause)
            .with("reason", reason.as_str())
            .with("generation", r.generation)
            .with("replaced", r.replaced)
            .with("kept", kept);
        if let Some((slot, pid)) = worker {
            ev = ev.worker(slot, pid.as_raw());
        }
        self.log(ev);
        // The caller prints "reload failed: ": this says the rest.
        self.reload_finished(Err(format!(
            "generation {} rolled back: {reason}; {kept} worker(s) keep serving the previous generation, {} run the new one",
            r.generation, r.replaced
        )));
    }

    /// Drops a roll because the service stops; its waiters learn why.
    pub(super) fn end_reload(&mut self, why: &str) {
        self.rereading = None;
        if self.reload.take().is_some() || !self.waiters.reload.is_empty() {
            self.reload_finished(Err(why.into()));
        }
    }

    /// Stops the new workers of a roll that is abandoned; a slot that has no other worker (its
    /// old one had crashed) restarts as usual once its new one has ended.
    fn cancel_in_flight(&mut self, r: &Reload, now: Instant) {
        let kill_at = later(now, self.rt.grace);
        for &slot in &r.in_flight {
            let Some(i) = self
                .workers
                .iter()
                .position(|w| w.slot == slot && w.generation == r.generation && w.serving())
            else {
                continue;
            };
            let pid = self.workers[i].pid;
            let has_old = self
                .workers
                .iter()
                .any(|w| w.slot == slot && w.pid != pid && w.serving());
            let why = if has_old {
                Leave::Superseded
            } else {
                Leave::Abandoned
            };
            let sig = self.workers[i].stop(why, self.rt.stop_signal, kill_at);
            self.signal(pid, sig);
        }
    }

    /// The generation a slot's next worker runs: a reload's once the roll has reached that
    /// slot, the service's otherwise.
    pub(super) fn generation_for(&self, slot: u32) -> u64 {
        match &self.reload {
            Some(r) if !r.queue.contains(&slot) => r.generation,
            _ => self.generation,
        }
    }

    /// Tells `multinode reload` callers how the reload ended, and systemd that it is over.
    pub(super) fn reload_finished(&mut self, outcome: Result<u64, String>) {
        let reply = match outcome {
            Ok(generation) => {
                self.reloads_ok += 1;
                Reply::Reloaded { generation }
            }
            Err(e) => {
                self.reloads_failed += 1;
                Reply::failed(e)
            }
        };
        for client in std::mem::take(&mut self.waiters.reload) {
            self.out.push(Action::Reply {
                client,
                reply: reply.clone(),
            });
        }
        if self.fixed.systemd && self.phase == Phase::Running {
            let status = self.status_line();
            self.out.push(Action::Systemd(SdNote::Ready(status)));
        }
    }
}
