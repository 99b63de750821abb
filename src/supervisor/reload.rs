//! Rolling reload: replace every worker, `--reload-parallel` slots at a time, without ever
//! leaving a slot unserved. For each slot: start the new generation's worker, wait until it is
//! ready, then ask the old one to drain (stop signal, SIGKILL after --grace). The sockets stay
//! open in the supervisor throughout, so the kernel keeps queueing connections.
//!
//! A new worker that exits or misses --ready-timeout aborts the roll: slots already replaced
//! keep their new workers, the others keep their old ones, and the error is printed. A reload
//! request during a roll starts the roll over (in-flight new workers are stopped first), so two
//! rolls never race.

use std::collections::VecDeque;
use std::time::Instant;

use nix::unistd::Pid;

use super::{Phase, Supervisor};
use crate::config::Config;
use crate::log::Event;
use crate::spawn::Spawner;

/// What a re-read config file says the new generation runs.
pub struct NextProgram {
    pub spawner: Spawner,
    program: crate::config::Program,
    env: Vec<(String, String)>,
    workdir: Option<std::path::PathBuf>,
}

pub struct Reload {
    pub generation: u64,
    /// The new generation's program and environment, from a re-read config file.
    pub next: Option<NextProgram>,
    why: String,
    /// Slots still to replace.
    queue: VecDeque<u32>,
    /// New workers started and not yet ready: (slot, pid).
    in_flight: Vec<(u32, Pid)>,
    replaced: u32,
}

impl Reload {
    pub fn is_in_flight(&self, pid: Pid) -> bool {
        self.in_flight.iter().any(|(_, p)| *p == pid)
    }
}

impl Supervisor {
    pub(super) fn begin_reload(&mut self, why: String) {
        if self.phase != Phase::Running {
            return;
        }
        if let Some(old) = self.reload.take() {
            self.p.out.event(
                Event::warn(
                    "reload-superseded",
                    format!(
                        "{why} during the reload to generation {}: starting over",
                        old.generation
                    ),
                )
                .with("why", why.as_str())
                .with("generation", old.generation),
            );
            self.cancel_in_flight(&old);
        }
        let next = match self.reread_config() {
            Ok(s) => s,
            Err(e) => {
                let msg = format!("{why}: not reloading: {e}; the workers keep running");
                self.p.out.event(
                    Event::error("reload-failed", msg)
                        .with("why", why.as_str())
                        .with("reason", e.to_string()),
                );
                self.reload_finished(Err(e.to_string()));
                return;
            }
        };
        if let Some(n) = &self.p.systemd {
            n.send(&format!(
                "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
                crate::systemd::monotonic_usec()
            ));
        }
        self.newest += 1;
        let generation = self.newest;
        self.p.out.event(
            Event::info(
                "reload",
                format!(
                    "{why}: rolling {} worker(s) over to generation {generation}, {} at a time",
                    self.cfg.runtime.workers, self.cfg.runtime.reload_parallel
                ),
            )
            .with("why", why.as_str())
            .with("generation", generation)
            .with("workers", self.cfg.runtime.workers)
            .with("parallel", self.cfg.runtime.reload_parallel),
        );
        self.reload = Some(Reload {
            generation,
            why,
            queue: (0..self.cfg.runtime.workers).collect(),
            in_flight: Vec::new(),
            replaced: 0,
            next,
        });
        self.advance_reload(Instant::now());
    }

    /// Moves the roll on: retires the old worker of every slot whose new worker is ready, and
    /// starts new workers while fewer than --reload-parallel are in flight.
    pub(super) fn advance_reload(&mut self, now: Instant) {
        let Some(mut r) = self.reload.take() else {
            return;
        };
        let deadline = now + self.cfg.runtime.grace;
        let mut i = 0;
        while i < r.in_flight.len() {
            let (slot, pid) = r.in_flight[i];
            if !self.workers.iter().any(|w| w.pid == pid && w.ready) {
                i += 1;
                continue;
            }
            r.in_flight.remove(i);
            r.replaced += 1;
            for old in self
                .workers
                .iter_mut()
                .filter(|w| w.slot == slot && w.pid != pid && !w.retired)
            {
                old.retired = true;
                old.stop(self.cfg.runtime.stop_signal, deadline);
                self.p.out.event(
                    Event::info(
                        "draining",
                        format!("replaced by worker.{slot}[{pid}]; draining"),
                    )
                    .worker(slot, old.pid.as_raw())
                    .with("replaced_by", pid.as_raw()),
                );
            }
        }
        while r.in_flight.len() < self.cfg.runtime.reload_parallel as usize {
            let Some(slot) = r.queue.pop_front() else {
                break;
            };
            if slot >= self.cfg.runtime.workers {
                continue; // scaled away meanwhile
            }
            let current = self
                .workers
                .iter()
                .any(|w| w.slot == slot && w.serving() && w.generation == r.generation);
            if current {
                r.replaced += 1;
                continue;
            }
            self.reload = Some(r);
            let started = self.start(slot, self.reload.as_ref().map_or(0, |r| r.generation));
            // `start` may have aborted the reload (the program cannot be started).
            let Some(back) = self.reload.take() else {
                return;
            };
            r = back;
            match started {
                Some(pid) => r.in_flight.push((slot, pid)),
                None => return,
            }
        }
        if r.queue.is_empty() && r.in_flight.is_empty() {
            self.generation = r.generation;
            if let Some(next) = r.next.take() {
                self.p.spawner = next.spawner;
                self.cfg.program = next.program;
                self.cfg.env = next.env;
                self.cfg.workdir = next.workdir;
            }
            self.p.out.event(
                Event::info(
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
    }

    /// Stops the roll; old workers of the slots not yet replaced keep serving.
    pub(super) fn abort_reload(&mut self, reason: String) {
        let Some(r) = self.reload.take() else { return };
        self.cancel_in_flight(&r);
        let kept = self.cfg.runtime.workers.saturating_sub(r.replaced);
        let msg = format!(
            "reload to generation {} failed: {reason}; {kept} worker(s) keep serving the previous generation, {} run the new one",
            r.generation, r.replaced
        );
        self.p.out.event(
            Event::error("reload-failed", msg.clone())
                .with("why", r.why.as_str())
                .with("reason", reason.as_str())
                .with("generation", r.generation)
                .with("replaced", r.replaced)
                .with("kept", kept),
        );
        self.reload_finished(Err(msg));
    }

    /// With `--config`, reads the file again: the settings that can change at run time take
    /// effect now, the worker count is scaled to, and a changed program or environment gives
    /// the new generation its own program. `Ok(None)`: no config file; the program stays.
    fn reread_config(&mut self) -> crate::error::Result<Option<NextProgram>> {
        if self.cfg.source.args.config.is_none() {
            return Ok(None);
        }
        let src = self.cfg.source.clone();
        let new = Config::from_args(src.args, src.explicit)?;
        let plan = self.cfg.reload_plan(new);
        if !plan.needs_restart.is_empty() {
            self.p.out.event(
                Event::warn(
                    "reload-needs-restart",
                    format!(
                        "{} changed in the config file: restart multinode to apply that",
                        plan.needs_restart.join(", ")
                    ),
                )
                .with("keys", plan.needs_restart.clone()),
            );
        }
        // The new generation runs what the file says now; the service's program changes
        // only once the roll has succeeded (a failed reload leaves it as it was).
        let mut env = self.p.overrides.clone();
        env.extend(plan.next.env.iter().map(|(k, v)| (k.clone(), v.into())));
        let spawner = Spawner::new(&plan.next.program, &env, plan.next.workdir.as_deref())
            .map_err(|e| crate::error::Error::usage(format!("worker command: {e}")))?;
        let next = NextProgram {
            spawner,
            program: plan.next.program,
            env: plan.next.env,
            workdir: plan.next.workdir,
        };
        self.p.out.set_format(plan.log_format, plan.color);
        self.cfg.log_format = plan.log_format;
        self.cfg.color = plan.color;
        let workers = plan.runtime.workers;
        let current = self.cfg.runtime.workers;
        self.cfg.runtime = crate::config::Runtime {
            workers: current,
            ..plan.runtime
        };
        self.budget = super::backoff::Budget::new(self.cfg.runtime.max_restarts);
        while self.cfg.runtime.workers > workers {
            self.scale_down("config reload");
        }
        while self.cfg.runtime.workers < workers {
            let before = self.cfg.runtime.workers;
            self.scale_up("config reload");
            if self.cfg.runtime.workers == before {
                break;
            }
        }
        Ok(Some(next))
    }

    /// Stops the new workers of a roll that is abandoned; slots that had no old worker (it had
    /// crashed) restart as usual.
    fn cancel_in_flight(&mut self, r: &Reload) {
        let deadline = Instant::now() + self.cfg.runtime.grace;
        for &(slot, pid) in &r.in_flight {
            let has_old = self
                .workers
                .iter()
                .any(|w| w.slot == slot && w.pid != pid && w.serving());
            if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                w.retired = has_old;
                w.stop(self.cfg.runtime.stop_signal, deadline);
            }
        }
    }
}
