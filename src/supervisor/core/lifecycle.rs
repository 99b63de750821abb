//! A worker's life as the core decides it: started, ended (and restarted after backoff, or
//! not), stopped with the service, killed, and slots added and removed (scaling).

use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::reload::Failure;
use super::{Action, Core, MAX_WORKERS, Phase, SdNote, Slot};
use crate::cli::RestartPolicy;
use crate::config::Mode;
use crate::error::Exit;
use crate::log::Event as Log;
use crate::supervisor::worker::{ExitStatus, Leave, Worker, human, later};

impl Core {
    /// The shell started a worker.
    pub(super) fn spawned(&mut self, slot: u32, generation: u64, pid: Pid, now: Instant) {
        self.spawning = false;
        self.any_started = true;
        let recovered = self
            .slots
            .get_mut(slot as usize)
            .and_then(|s| s.last_error.take())
            .is_some();
        let msg = match (recovered, generation) {
            (true, _) => "started (the program runs again)".to_string(),
            (false, 1) => "started".to_string(),
            (false, g) => format!("started (generation {g})"),
        };
        self.log(
            Log::info("started", msg)
                .worker(slot, pid.as_raw())
                .with("generation", generation),
        );
        let mut w = Worker::new(
            slot,
            pid,
            generation,
            now,
            self.rt.ready,
            self.rt.ready_timeout,
        );
        w.watchdog = self.rt.watchdog;
        w.request_limit = self.rt.max_requests.map(|(n, jitter)| {
            let extra = (self.jitter.next() * (jitter as f64 + 1.0)) as u64;
            n.saturating_add(extra.min(jitter))
        });
        self.workers.push(w);
        if !self.live() || slot >= self.rt.workers {
            // The service began stopping, or the slot went, while it was being started.
            let why = if self.phase == Phase::Running {
                Leave::ScaledDown
            } else {
                Leave::ServiceStop
            };
            let kill_at = match self.phase {
                Phase::Stopping(at) => at,
                _ => later(now, self.rt.grace),
            };
            let last = self.workers.len() - 1;
            let sig = self.workers[last].stop(why, self.rt.stop_signal, kill_at);
            self.signal(pid, sig);
        }
    }

    /// The shell could not start a worker.
    pub(super) fn spawn_failed(&mut self, slot: u32, generation: u64, error: String, now: Instant) {
        self.spawning = false;
        let msg = format!("cannot start worker.{slot}: {error}");
        if !self.any_started {
            self.log(Log::error("start-failed", msg).with("slot", slot));
            self.exit = self.exit.worst(Exit::Program);
            self.stop_workers(now);
            return;
        }
        if self
            .reload
            .as_ref()
            .is_some_and(|r| r.generation == generation)
        {
            let failure = Failure {
                cause: "start-failed",
                worker: None,
                reason: msg,
            };
            self.abort_reload(failure, now);
            return;
        }
        if slot as usize >= self.slots.len() || self.phase != Phase::Running {
            return;
        }
        let repeated = self.slots[slot as usize].last_error.as_deref() == Some(msg.as_str());
        if let Some(delay) = self.schedule(slot, now) {
            if !repeated {
                self.log(
                    Log::error(
                        "start-failed",
                        format!(
                            "{msg}; retrying with backoff (from {}; repeats are not printed)",
                            human(delay)
                        ),
                    )
                    .with("slot", slot)
                    .with("restart_in_ms", delay.as_millis() as u64),
                );
            }
        }
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.last_error = Some(msg);
        }
    }

    /// A worker's leader was reaped. Its group gone too, the worker has ended; otherwise what
    /// is left of it is stopped and the end waits for [`super::Event::GroupGone`].
    pub(super) fn leader_exited(
        &mut self,
        pid: Pid,
        status: ExitStatus,
        group_alive: bool,
        now: Instant,
    ) {
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            return; // an orphan reparented to us: reaped, nothing more
        };
        let kill_at = match self.phase {
            Phase::Stopping(at) => at,
            _ => later(now, self.rt.grace),
        };
        let sig = self.workers[i].leader_exited(status, self.rt.stop_signal, kill_at);
        if self.phase != Phase::Running {
            self.workers[i].clear_kill_deadline();
        }
        if group_alive {
            self.signal(pid, sig);
        } else {
            self.ended(i, now);
        }
    }

    /// The group of a worker whose leader was reaped is gone: the worker has ended.
    pub(super) fn group_gone(&mut self, pid: Pid, now: Instant) {
        if let Some(i) = self.workers.iter().position(|w| w.pid == pid) {
            self.ended(i, now);
        }
    }

    /// Worker `i` has ended: count it, tell, and restart its slot if it should be.
    fn ended(&mut self, i: usize, now: Instant) {
        let Some(status) = self.workers[i].exit_status() else {
            return; // its leader has not been reaped: not over yet
        };
        let w = self.workers.remove(i);
        let why = w.leaving();
        let retired = why.is_some_and(Leave::retired);
        let by_stop = status
            == ExitStatus::Signal {
                signal: self.rt.stop_signal,
                core_dumped: false,
            };
        let ok = status.success() || (retired && by_stop);
        let in_reload = why.is_none()
            && self
                .reload
                .as_ref()
                .is_some_and(|r| r.generation == w.generation && r.in_flight.contains(&w.slot));
        let running = self.live();
        if let Some(slot) = self.slots.get_mut(w.slot as usize) {
            if !retired || !running {
                slot.last_ok = ok;
            }
            if !retired && !in_reload {
                match why {
                    Some(Leave::Hung) => slot.restarts.watchdog += 1,
                    _ => slot.restarts.crash += 1,
                }
                slot.last_exit = Some(status.describe());
            }
        }
        let uptime = w.uptime(now);
        let what = format!("{} after {}", status.describe(), human(uptime));
        let ev = |e: Log| {
            status
                .fields(e.worker(w.slot, w.pid.as_raw()))
                .with("uptime_ms", uptime.as_millis() as u64)
        };
        if in_reload {
            self.log(ev(Log::error("exited", what.clone())));
            let failure = Failure {
                cause: "exited",
                worker: Some((w.slot, w.pid)),
                reason: format!("worker.{}[{}] {what} before it was ready", w.slot, w.pid),
            };
            self.abort_reload(failure, now);
            return;
        }
        let gone = w.slot as usize >= self.slots.len();
        if retired || !running || gone || self.covered(w.slot) {
            self.log(ev(Log::info("exited", what)));
            return;
        }
        let restart = match self.rt.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !status.success(),
            RestartPolicy::Never => false,
        };
        if !restart {
            let e = if ok {
                Log::info("exited", what)
            } else {
                Log::warn("exited", what)
            };
            self.log(ev(e));
            return;
        }
        if uptime >= self.rt.min_uptime {
            self.slots[w.slot as usize].backoff.reset();
        }
        match self.schedule(w.slot, now) {
            Some(delay) => {
                let when = if delay.is_zero() {
                    "restarting now".to_string()
                } else {
                    format!("restarting in {}", human(delay))
                };
                self.log(
                    ev(Log::warn("exited", format!("{what}; {when}")))
                        .with("restart_in_ms", delay.as_millis() as u64),
                )
            }
            None => self.log(ev(Log::warn("exited", what))),
        }
    }

    /// Plans the next start of `slot` after backoff; `None` when the restart budget is spent
    /// (the service is then stopping).
    pub(super) fn schedule(&mut self, slot: u32, now: Instant) -> Option<Duration> {
        if !self.budget.record(now) {
            let (n, window) = self.rt.max_restarts.unwrap_or((0, Duration::ZERO));
            self.log(
                Log::error(
                    "gave-up",
                    format!(
                        "giving up: more than {n} restarts within {}; stopping every worker",
                        human(window)
                    ),
                )
                .with("max_restarts", n)
                .with("window_ms", window.as_millis() as u64),
            );
            self.exit = self.exit.worst(Exit::GaveUp);
            self.stop_workers(now);
            return None;
        }
        let jitter = self.jitter.next();
        let s = &mut self.slots[slot as usize];
        let delay = s.backoff.next(self.rt.backoff_max, jitter);
        s.start_at = Some(later(now, delay));
        Some(delay)
    }

    /// A worker missed `--ready-timeout`: a reload is rolled back; otherwise it is stopped and
    /// its slot restarts.
    pub(super) fn not_ready_in_time(&mut self, pid: Pid, now: Instant) {
        let msg = format!(
            "not ready within --ready-timeout {}",
            human(self.rt.ready_timeout)
        );
        let Some(i) = self.workers.iter().position(|w| w.pid == pid) else {
            return;
        };
        let (slot, generation) = (self.workers[i].slot, self.workers[i].generation);
        let in_reload = self
            .reload
            .as_ref()
            .is_some_and(|r| r.generation == generation && r.in_flight.contains(&slot));
        if in_reload {
            let failure = Failure {
                cause: "not-ready",
                worker: Some((slot, pid)),
                reason: format!("worker.{slot}[{pid}] {msg}"),
            };
            self.abort_reload(failure, now);
            return;
        }
        self.log(
            Log::warn("not-ready", format!("{msg}; stopping it"))
                .worker(slot, pid.as_raw())
                .with("timeout_ms", self.rt.ready_timeout.as_millis() as u64),
        );
        let sig = self.workers[i].stop(
            Leave::NotReady,
            self.rt.stop_signal,
            later(now, self.rt.grace),
        );
        self.signal(pid, sig);
    }

    /// A stop was asked for (SIGTERM, SIGINT, `multinode stop`): with `--stop-delay`, first
    /// report unhealthy and keep serving that long (so load balancers stop sending), then
    /// drain.
    pub(super) fn begin_stop(&mut self, why: &str, now: Instant) {
        if self.rt.stop_delay.is_zero() {
            return self.stop(why, now);
        }
        self.end_reload("multinode is stopping");
        self.end_upgrade();
        self.watch_at = None;
        self.stop_why = why.to_string();
        self.phase = Phase::LameDuck(later(now, self.rt.stop_delay));
        if self.fixed.systemd {
            self.out.push(Action::Systemd(SdNote::Stopping));
        }
        self.log(
            Log::info(
                "stop-delay",
                format!(
                    "{why}: unhealthy now; serving {} more before the drain",
                    human(self.rt.stop_delay)
                ),
            )
            .with("why", why)
            .with("delay_ms", self.rt.stop_delay.as_millis() as u64),
        );
    }

    /// Graceful stop: no more restarts or reloads, the stop signal to every worker's group,
    /// SIGKILL at the `--grace` deadline.
    pub(super) fn stop(&mut self, why: &str, now: Instant) {
        // After --stop-delay, systemd heard STOPPING=1 already.
        if self.fixed.systemd && self.phase == Phase::Running {
            self.out.push(Action::Systemd(SdNote::Stopping));
        }
        let n = self.workers.len();
        self.log(
            Log::info(
                "stopping",
                format!(
                    "{why}: stopping {n} worker(s) with {} (grace {}){}",
                    self.rt.stop_signal.as_str(),
                    human(self.rt.grace),
                    if why.starts_with("SIG") {
                        "; send it again to kill them at once"
                    } else {
                        ""
                    }
                ),
            )
            .with("why", why)
            .with("workers", n)
            .with("signal", self.rt.stop_signal.as_str())
            .with("grace_ms", self.rt.grace.as_millis() as u64),
        );
        self.stop_workers(now);
    }

    pub(super) fn stop_workers(&mut self, now: Instant) {
        for s in &mut self.slots {
            s.start_at = None;
        }
        self.end_reload("multinode is stopping");
        self.end_upgrade();
        self.watch_at = None;
        let deadline = later(now, self.rt.grace);
        self.phase = Phase::Stopping(deadline);
        for i in 0..self.workers.len() {
            let w = &mut self.workers[i];
            w.retire(Leave::ServiceStop);
            // The service-wide deadline rules now.
            w.clear_kill_deadline();
            let sig = w.stop(Leave::ServiceStop, self.rt.stop_signal, deadline);
            let pid = w.pid;
            self.signal(pid, sig);
        }
    }

    /// The guard died: the protection against a killed supervisor is gone, and a new root
    /// guard cannot be started after the privilege drop. Stop gracefully, exit 70.
    pub(super) fn guard_gone(&mut self, now: Instant) {
        self.exit = self.exit.worst(Exit::Internal);
        let running = self.phase == Phase::Running;
        let then = if running {
            "stopping the service"
        } else {
            "the stop goes on"
        };
        self.log(Log::error(
            "guard-gone",
            format!(
                "the guard process is gone: nothing would stop the workers if multinode were killed; {then}"
            ),
        ));
        if running {
            self.stop("guard-gone", now);
        }
    }

    /// SIGKILL to every worker's group now.
    pub(super) fn kill_all(&mut self) {
        for s in &mut self.slots {
            s.start_at = None;
        }
        self.end_reload("multinode is stopping");
        self.end_upgrade();
        self.phase = Phase::Killing;
        if !self.workers.is_empty() {
            self.exit = self.exit.worst(Exit::Unclean);
        }
        for i in 0..self.workers.len() {
            let sig = self.workers[i].kill(Leave::ServiceStop);
            let pid = self.workers[i].pid;
            self.signal(pid, sig);
        }
    }

    /// SIGTTIN: one more slot.
    pub(super) fn scale_up(&mut self, why: &str, now: Instant) {
        if self.add_slot(why, now) {
            self.said_scale(why, "up");
        }
    }

    /// SIGTTOU: one slot fewer.
    pub(super) fn scale_down(&mut self, why: &str, now: Instant) {
        if self.remove_slot(why, now) {
            self.said_scale(why, "down");
        }
    }

    /// Scales to `n` slots (a control request or a re-read config), in one line.
    pub(super) fn scale_to(&mut self, n: u32, why: &str, now: Instant) {
        let from = self.rt.workers;
        while self.rt.workers > n && self.remove_slot(why, now) {}
        while self.rt.workers < n && self.add_slot(why, now) {}
        if self.rt.workers != from {
            let dir = if self.rt.workers > from { "up" } else { "down" };
            self.said_scale(why, dir);
        }
    }

    fn said_scale(&mut self, why: &str, dir: &str) {
        self.log(
            Log::info(
                "scale",
                format!("{why}: scaling {dir} to {} worker(s)", self.rt.workers),
            )
            .with("why", why)
            .with("workers", self.rt.workers),
        );
    }

    /// One more slot, started at once (reuseport: once its sockets are bound). False if
    /// there is none to add.
    fn add_slot(&mut self, why: &str, now: Instant) -> bool {
        if self.phase != Phase::Running {
            return false;
        }
        if self.rt.workers >= MAX_WORKERS {
            self.log(
                Log::warn(
                    "scale-failed",
                    format!("{why}: not scaling up: {MAX_WORKERS} workers is the maximum"),
                )
                .with("why", why),
            );
            return false;
        }
        let slot = self.rt.workers;
        let open = self.fixed.mode != Mode::ReusePort;
        self.slots.push(Slot {
            open,
            start_at: Some(now),
            ..Slot::default()
        });
        self.rt.workers += 1;
        if !open {
            self.out.push(Action::OpenSlot { slot });
        }
        true
    }

    /// A new slot's sockets are bound (or could not be).
    pub(super) fn slot_opened(&mut self, slot: u32, result: Result<(), String>) {
        match (result, self.slots.get_mut(slot as usize)) {
            (Ok(()), Some(s)) => s.open = true,
            (Ok(()), None) => self.out.push(Action::CloseSlot { slot }),
            (Err(e), _) => {
                self.log(
                    Log::error("scale-failed", format!("cannot add slot {slot}: {e}"))
                        .with("slot", slot),
                );
                self.slots.truncate(slot as usize);
                self.rt.workers = self.slots.len() as u32;
            }
        }
    }

    /// The highest slot goes; its worker drains within `--grace`. False if there is none to
    /// remove.
    fn remove_slot(&mut self, why: &str, now: Instant) -> bool {
        if self.phase != Phase::Running {
            return false;
        }
        if self.rt.workers <= 1 {
            self.log(
                Log::warn(
                    "scale-failed",
                    format!("{why}: not scaling down: one worker is the minimum"),
                )
                .with("why", why),
            );
            return false;
        }
        self.rt.workers -= 1;
        self.slots.pop();
        let slot = self.rt.workers;
        // reuseport: the slot's sockets close with its last worker; connections still queued
        // on them then are reset by the kernel.
        if self.fixed.mode == Mode::ReusePort {
            self.out.push(Action::CloseSlot { slot });
        }
        let deadline = later(now, self.rt.grace);
        for i in 0..self.workers.len() {
            if self.workers[i].slot == slot {
                let sig = self.workers[i].stop(Leave::ScaledDown, self.rt.stop_signal, deadline);
                let pid = self.workers[i].pid;
                self.signal(pid, sig);
            }
        }
        true
    }
}
