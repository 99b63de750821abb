//! Workers that live but do not work: a hung worker (its watchdog ran out) is stopped with
//! `--watchdog-signal` and its slot restarts on the normal path; a worker past
//! `--max-memory` or `--max-requests` is recycled — its replacement is started and ready
//! before it drains, as in a rolling reload, so no request fails.

use std::time::Instant;

use nix::unistd::Pid;

use super::reload::Failure;
use super::{Core, HUNG_GRACE};
use crate::log::Event as Log;
use crate::supervisor::worker::{Leave, Recycle, later};

impl Core {
    /// Worker `i` is hung (`why` says how it was found out): `--watchdog-signal` now, SIGKILL
    /// after [`HUNG_GRACE`]; its slot restarts once it has ended. A hung worker of a reload's
    /// new generation aborts the roll, like a crash.
    pub(super) fn hung(&mut self, i: usize, why: &str, now: Instant) {
        let (slot, pid, generation) = {
            let w = &self.workers[i];
            (w.slot, w.pid, w.generation)
        };
        if !self.workers[i].serving() {
            return;
        }
        let signal = self.rt.watchdog_signal;
        self.log(
            Log::error(
                "hung",
                format!(
                    "hung: {why}; sending {}, SIGKILL in {}",
                    signal.as_str(),
                    crate::supervisor::human(HUNG_GRACE)
                ),
            )
            .worker(slot, pid.as_raw())
            .with("reason", why)
            .with("signal", signal.as_str()),
        );
        let sig = self.workers[i].stop(Leave::Hung, signal, later(now, HUNG_GRACE));
        self.signal(pid, sig);
        if self
            .reload
            .as_ref()
            .is_some_and(|r| r.generation == generation)
        {
            let failure = Failure {
                cause: "hung",
                worker: Some((slot, pid)),
                reason: format!("worker.{slot}[{pid}] hung: {why}"),
            };
            self.abort_reload(failure, now);
        }
    }

    /// `--max-memory`: the workers' memory now; those past the limit are recycled.
    pub(super) fn on_usage(&mut self, memory: Vec<(Pid, u64)>, now: Instant) {
        let Some(max) = self.rt.max_memory else {
            return;
        };
        for (pid, bytes) in memory {
            if bytes > max {
                self.recycle(pid, Recycle::Memory(bytes), now);
            }
        }
    }

    /// Replaces a worker that still serves: it stays ready until a new worker of its slot is
    /// (see [`Core::replace_recycled`]). Only a ready worker, once, and not while stopping.
    pub(super) fn recycle(&mut self, pid: Pid, cause: Recycle, now: Instant) {
        if !self.live() {
            return;
        }
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        if !self.workers[i].recycle(cause) {
            return;
        }
        let slot = self.workers[i].slot;
        let (what, limit) = match cause {
            Recycle::Memory(bytes) => (
                format!("uses {} MiB", bytes >> 20),
                self.rt.max_memory.unwrap_or_default(),
            ),
            Recycle::Requests(n) => (
                format!("was handed {n} connections"),
                self.workers[i].request_limit.unwrap_or_default(),
            ),
        };
        let mut ev = Log::info(
            "recycle",
            format!("{what}, past its limit: starting its replacement"),
        )
        .worker(slot, pid.as_raw())
        .with("cause", cause.name())
        .with("limit", limit);
        ev = match cause {
            Recycle::Memory(bytes) => ev.with("memory_bytes", bytes),
            Recycle::Requests(n) => ev.with("requests", n),
        };
        self.log(ev);
        if let Some(s) = self.slots.get_mut(slot as usize) {
            match cause {
                Recycle::Memory(_) => s.restarts.memory += 1,
                Recycle::Requests(_) => s.restarts.requests += 1,
            }
            s.start_at = Some(now);
        }
    }

    /// Drains every recycled worker whose slot has a new ready worker.
    pub(super) fn replace_recycled(&mut self, now: Instant) {
        let kill_at = later(now, self.rt.grace);
        for i in 0..self.workers.len() {
            let crate::supervisor::worker::State::Recycling(cause) = self.workers[i].state else {
                continue;
            };
            let slot = self.workers[i].slot;
            let Some(new) = self
                .workers
                .iter()
                .find(|w| w.slot == slot && w.covers() && w.is_ready())
                .map(|w| w.pid)
            else {
                continue;
            };
            let old = self.workers[i].pid;
            let sig = self.workers[i].stop(Leave::Recycled(cause), self.rt.stop_signal, kill_at);
            self.log(
                Log::info(
                    "draining",
                    format!("replaced by worker.{slot}[{new}]; draining"),
                )
                .worker(slot, old.as_raw())
                .with("replaced_by", new.as_raw())
                .with("cause", cause.name()),
            );
            self.signal(old, sig);
        }
    }
}
