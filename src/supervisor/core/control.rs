//! The core's side of the control socket and of systemd: control requests and the clients
//! that wait for an outcome (`reload`, `scale`, `stop`), `status`, and the readiness and
//! status lines systemd gets.

use std::time::Instant;

use super::{Action, ClientId, Core, MAX_WORKERS, Phase, SdNote};
use crate::control::protocol::{Reply, Request, Restarts, SlotStatus, Status};
use crate::log::Event as Log;
use crate::supervisor::worker::{human, later};

/// Control clients waiting for an outcome.
#[derive(Debug, Default)]
pub(super) struct Waiters {
    pub(super) reload: Vec<ClientId>,
    /// (client, wanted worker count, give up at)
    pub(super) scale: Vec<(ClientId, u32, Instant)>,
    pub(super) upgrade: Vec<ClientId>,
}

impl Waiters {
    /// When the first `scale` waiter gives up.
    pub(super) fn deadline(&self) -> Option<Instant> {
        self.scale.iter().map(|s| s.2).min()
    }
}

impl Core {
    pub(super) fn on_request(&mut self, client: ClientId, req: Request, now: Instant) {
        let running = self.phase == Phase::Running;
        match req {
            Request::Status => {
                let reply = Reply::Status(Box::new(self.status(now)));
                self.reply(client, reply);
            }
            Request::Stop => {
                self.out.push(Action::Hold { client });
                self.reply(client, Reply::Stopping);
                if running {
                    self.begin_stop("multinode stop", now);
                }
            }
            _ if !running => self.reply(client, Reply::failed("multinode is stopping")),
            Request::Reload => {
                self.waiters.reload.push(client);
                self.request_reload("multinode reload".into());
            }
            Request::Scale { workers: n } if (1..=MAX_WORKERS).contains(&n) => {
                self.scale_to(n, "multinode scale", now);
                let deadline = later(now, self.rt.ready_timeout);
                self.waiters.scale.push((client, n, deadline));
                self.check_scale_waiters(now);
            }
            Request::Upgrade { binary } => {
                self.request_upgrade(Some(client), binary, "multinode upgrade")
            }
            Request::Scale { .. } => self.reply(
                client,
                Reply::failed(format!(
                    "scale needs a worker count from 1 to {MAX_WORKERS}"
                )),
            ),
        }
    }

    fn reply(&mut self, client: ClientId, reply: Reply) {
        self.out.push(Action::Reply { client, reply });
    }

    /// After every event: answers `scale` callers whose workers are all ready (or whose time is
    /// up) and keeps systemd's STATUS current.
    pub(super) fn housekeeping(&mut self, now: Instant) {
        if !self.waiters.scale.is_empty() {
            self.check_scale_waiters(now);
        }
        // "all 4 workers ready", each time the service becomes whole again.
        let all = self.phase == Phase::Running && self.all_ready();
        if all && !self.said_all_ready {
            let n = self.rt.workers;
            self.log(
                Log::info("all-ready", format!("all {n} worker(s) ready"))
                    .with("workers", n)
                    .with("generation", self.generation),
            );
        }
        self.said_all_ready = all;
        if !self.fixed.systemd {
            return;
        }
        let line = self.status_line();
        if self.sd_status != line {
            let first = !self.sd_ready && self.all_ready() && self.phase == Phase::Running;
            let note = if first {
                SdNote::Ready(line.clone())
            } else {
                SdNote::Status(line.clone())
            };
            self.out.push(Action::Systemd(note));
            self.sd_ready |= first;
            self.sd_status = line;
        }
    }

    fn check_scale_waiters(&mut self, now: Instant) {
        let mut keep = Vec::new();
        for (client, n, deadline) in std::mem::take(&mut self.waiters.scale) {
            if self.rt.workers == n && self.all_ready() {
                self.reply(client, Reply::Scaled { workers: n });
            } else if self.rt.workers != n || now >= deadline || self.phase != Phase::Running {
                let why = if self.phase != Phase::Running {
                    "multinode is stopping".to_string()
                } else if self.rt.workers != n {
                    "another scale request changed the count".to_string()
                } else {
                    format!(
                        "not every worker was ready within --ready-timeout {}",
                        human(self.rt.ready_timeout)
                    )
                };
                self.reply(client, Reply::failed(why));
            } else {
                keep.push((client, n, deadline));
            }
        }
        self.waiters.scale = keep;
    }

    /// `3/4 workers ready, generation 2`.
    pub(super) fn status_line(&self) -> String {
        let mut line = format!(
            "{}/{} workers ready, generation {}",
            self.ready_count(),
            self.rt.workers,
            self.generation
        );
        if let Some(r) = &self.reload {
            line.push_str(&format!(", reloading to generation {}", r.generation));
        }
        line
    }

    /// What `multinode status` and `/metrics` show (the shell adds what workers use).
    pub fn status(&self, now: Instant) -> Status {
        let row =
            |w: &crate::supervisor::worker::Worker, restarts: Restarts, last_exit| SlotStatus {
                slot: w.slot,
                pid: Some(w.pid.as_raw()),
                state: w.label().into(),
                generation: Some(w.generation),
                uptime_ms: Some(w.uptime(now).as_millis() as u64),
                restarts: restarts.total(),
                restart_causes: restarts,
                last_exit,
                status: w.status_text.clone(),
                cpu_seconds: None,
                memory_bytes: None,
            };
        let mut rows = Vec::new();
        for (slot, s) in self.slots.iter().enumerate() {
            let slot = slot as u32;
            let mut any = false;
            for w in self.workers.iter().filter(|w| w.slot == slot) {
                any = true;
                rows.push(row(w, s.restarts, s.last_exit.clone()));
            }
            if !any {
                let state = if s.start_at.is_some() || !s.open {
                    "restarting"
                } else {
                    "stopped"
                };
                rows.push(SlotStatus {
                    slot,
                    pid: None,
                    state: state.into(),
                    generation: None,
                    uptime_ms: None,
                    restarts: s.restarts.total(),
                    restart_causes: s.restarts,
                    last_exit: s.last_exit.clone(),
                    status: None,
                    cpu_seconds: None,
                    memory_bytes: None,
                });
            }
        }
        // Draining workers of slots scaled away.
        for w in self
            .workers
            .iter()
            .filter(|w| w.slot as usize >= self.slots.len())
        {
            rows.push(row(w, Restarts::default(), None));
        }
        Status {
            name: self.fixed.name.clone(),
            pid: self.fixed.pid,
            generation: self.generation,
            workers: self.rt.workers,
            ready: self.all_ready(),
            reloading: self.reload.as_ref().map(|r| r.generation),
            stopping: self.phase != Phase::Running,
            unhealthy: self.health().err(),
            reloads_ok: self.reloads_ok,
            reloads_failed: self.reloads_failed,
            version: env!("CARGO_PKG_VERSION").into(),
            binary: None,
            upgrades: self.upgrades_ok,
            upgrades_failed: self.upgrades_failed,
            last_upgrade: self.last_upgrade.clone(),
            upgrading: self.upgrading.is_some(),
            control: self.fixed.control.clone(),
            slots: rows,
        }
    }
}
