//! The event loop's side of the control socket (requests from `multinode status | reload |
//! scale | stop`) and of systemd's notification socket.

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::{Phase, Supervisor};
use crate::control::answer;
use crate::log::Event;

/// A control client whose request line is still arriving.
pub struct Client {
    stream: UnixStream,
    buf: Vec<u8>,
    deadline: Instant,
}

/// How long a client may take to send its request line.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Control clients waiting for an outcome.
#[derive(Default)]
pub struct Waiters {
    pub clients: Vec<Client>,
    reload: Vec<UnixStream>,
    /// (client, wanted worker count, give up at)
    scale: Vec<(UnixStream, u32, Instant)>,
    /// Kept open until the supervisor exits: the client sees EOF then.
    stop: Vec<UnixStream>,
}

impl Waiters {
    pub fn client_fds(&self) -> impl Iterator<Item = (usize, std::os::fd::BorrowedFd<'_>)> {
        use std::os::fd::AsFd;
        self.clients
            .iter()
            .enumerate()
            .map(|(i, c)| (i, c.stream.as_fd()))
    }

    pub fn take_stop_clients(&mut self) -> Vec<UnixStream> {
        std::mem::take(&mut self.stop)
    }

    pub fn deadlines(&self) -> impl Iterator<Item = Instant> + '_ {
        self.clients
            .iter()
            .map(|c| c.deadline)
            .chain(self.scale.iter().map(|s| s.2))
    }
}

impl Supervisor {
    /// New control connections: read their request line without blocking the loop.
    pub(super) fn on_control(&mut self) {
        let Some(ctl) = &self.p.control else { return };
        while let Some(s) = ctl.accept() {
            if s.set_nonblocking(true).is_ok() {
                let deadline = Instant::now() + REQUEST_TIMEOUT;
                self.waiters.clients.push(Client {
                    stream: s,
                    buf: Vec::new(),
                    deadline,
                });
            }
        }
    }

    /// A client sent (part of) its request.
    pub(super) fn on_control_client(&mut self, idx: usize) {
        let Some(c) = self.waiters.clients.get_mut(idx) else {
            return;
        };
        let mut chunk = [0u8; 4096];
        let done = match c.stream.read(&mut chunk) {
            Ok(0) => true,
            Ok(n) => {
                c.buf.extend_from_slice(&chunk[..n]);
                c.buf.contains(&b'\n') || c.buf.len() > 64 * 1024
            }
            Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
        };
        if !done {
            return;
        }
        let c = self.waiters.clients.swap_remove(idx);
        let _ = c.stream.set_nonblocking(false);
        let _ = c.stream.set_write_timeout(Some(Duration::from_secs(2)));
        let line = c.buf.split(|b| *b == b'\n').next().unwrap_or_default();
        match serde_json::from_slice::<Value>(line) {
            Ok(req) => self.handle_request(c.stream, &req),
            Err(_) => answer(
                &c.stream,
                &json!({"ok": false, "error": "not a JSON request line"}),
            ),
        }
    }

    fn handle_request(&mut self, s: UnixStream, req: &Value) {
        let running = self.phase == Phase::Running;
        match req["cmd"].as_str() {
            Some("status") => answer(&s, &self.status_json()),
            Some("stop") => {
                answer(&s, &json!({"ok": true, "stopping": true}));
                self.waiters.stop.push(s);
                if running {
                    self.stop("multinode stop");
                }
            }
            Some(_) if !running => {
                answer(&s, &json!({"ok": false, "error": "multinode is stopping"}))
            }
            Some("reload") => {
                self.waiters.reload.push(s);
                self.begin_reload("multinode reload".into());
            }
            Some("scale") => match req["workers"].as_u64() {
                Some(n) if (1..=4096).contains(&n) => {
                    let n = n as u32;
                    self.p.out.event(
                        Event::info("scale-request", format!("multinode scale: {n} worker(s)"))
                            .with("workers", n),
                    );
                    while self.cfg.runtime.workers < n && self.phase == Phase::Running {
                        let before = self.cfg.runtime.workers;
                        self.scale_up("multinode scale");
                        if self.cfg.runtime.workers == before {
                            break;
                        }
                    }
                    while self.cfg.runtime.workers > n {
                        self.scale_down("multinode scale");
                    }
                    let deadline = Instant::now() + self.cfg.runtime.ready_timeout;
                    self.waiters.scale.push((s, n, deadline));
                    self.check_scale_waiters(Instant::now());
                }
                _ => answer(
                    &s,
                    &json!({"ok": false, "error": "scale needs a worker count from 1 to 4096"}),
                ),
            },
            _ => answer(&s, &json!({"ok": false, "error": "unknown command"})),
        }
    }

    /// Tells `multinode reload` callers how the reload ended.
    pub(super) fn reload_finished(&mut self, outcome: Result<u64, String>) {
        let v = match &outcome {
            Ok(generation) => json!({"ok": true, "generation": generation}),
            Err(e) => json!({"ok": false, "error": e}),
        };
        for s in self.waiters.reload.drain(..) {
            answer(&s, &v);
        }
        if let Some(n) = &self.p.systemd {
            n.send(&format!("READY=1\nSTATUS={}", self.status_line()));
        }
    }

    /// Answers `multinode scale` callers whose workers are all ready (or whose time is up),
    /// drops control clients that never sent a request, and keeps systemd's STATUS current.
    pub(super) fn housekeeping(&mut self, now: Instant) {
        // This runs on every turn of the loop (in route mode, per burst of connections), so
        // it does nothing unless someone waits or systemd listens.
        if !self.waiters.clients.is_empty() {
            self.waiters.clients.retain(|c| c.deadline > now);
        }
        if !self.waiters.scale.is_empty() {
            self.check_scale_waiters(now);
        }
        if self.p.systemd.is_none() {
            return;
        }
        let line = self.status_line();
        if self.sd_status != line {
            let first = !self.sd_ready && self.all_ready();
            let msg = if first {
                format!("READY=1\nSTATUS={line}")
            } else {
                format!("STATUS={line}")
            };
            if let Some(n) = &self.p.systemd {
                n.send(&msg);
            }
            self.sd_ready |= first;
            self.sd_status = line;
        }
    }

    fn check_scale_waiters(&mut self, now: Instant) {
        let mut keep = Vec::new();
        for (s, n, deadline) in std::mem::take(&mut self.waiters.scale) {
            if self.cfg.runtime.workers == n && self.all_ready() {
                answer(&s, &json!({"ok": true, "workers": n}));
            } else if self.cfg.runtime.workers != n || now >= deadline {
                let why = if self.cfg.runtime.workers != n {
                    "another scale request changed the count".to_string()
                } else {
                    format!(
                        "not every worker was ready within --ready-timeout {}",
                        super::human(self.cfg.runtime.ready_timeout)
                    )
                };
                answer(&s, &json!({"ok": false, "error": why}));
            } else {
                keep.push((s, n, deadline));
            }
        }
        self.waiters.scale = keep;
    }

    /// Every slot has a ready worker serving it.
    pub(super) fn all_ready(&self) -> bool {
        (0..self.cfg.runtime.workers).all(|slot| {
            self.workers
                .iter()
                .any(|w| w.slot == slot && w.serving() && w.ready)
        })
    }

    /// `3/4 workers ready, generation 2`.
    pub(super) fn status_line(&self) -> String {
        let ready = (0..self.cfg.runtime.workers)
            .filter(|&slot| {
                self.workers
                    .iter()
                    .any(|w| w.slot == slot && w.serving() && w.ready)
            })
            .count();
        let mut line = format!(
            "{ready}/{} workers ready, generation {}",
            self.cfg.runtime.workers, self.generation
        );
        if let Some(r) = &self.reload {
            line.push_str(&format!(", reloading to generation {}", r.generation));
        }
        line
    }

    fn status_json(&self) -> Value {
        let now = Instant::now();
        let mut rows = Vec::new();
        for slot in 0..self.cfg.runtime.workers {
            let s = &self.slots[slot as usize];
            let mut any = false;
            for w in self.workers.iter().filter(|w| w.slot == slot) {
                any = true;
                let state = if w.status.is_some() {
                    "exiting"
                } else if w.retired || w.signalled {
                    "draining"
                } else if w.ready {
                    "ready"
                } else {
                    "starting"
                };
                rows.push(json!({
                    "slot": slot, "pid": w.pid.as_raw(), "state": state, "generation": w.generation,
                    "uptime_ms": now.duration_since(w.started).as_millis() as u64,
                    "restarts": s.restarts, "last_exit": s.last_exit, "status": w.status_text,
                }));
            }
            if !any {
                let state = if s.restart_at.is_some() {
                    "restarting"
                } else {
                    "stopped"
                };
                rows.push(json!({
                    "slot": slot, "pid": null, "state": state, "generation": null, "uptime_ms": null,
                    "restarts": s.restarts, "last_exit": s.last_exit, "status": null,
                }));
            }
        }
        // Draining workers of slots scaled away.
        for w in self
            .workers
            .iter()
            .filter(|w| w.slot >= self.cfg.runtime.workers)
        {
            rows.push(json!({
                "slot": w.slot, "pid": w.pid.as_raw(), "state": "draining", "generation": w.generation,
                "uptime_ms": now.duration_since(w.started).as_millis() as u64,
                "restarts": 0, "last_exit": null, "status": w.status_text,
            }));
        }
        json!({
            "ok": true,
            "name": self.cfg.name,
            "pid": std::process::id(),
            "generation": self.generation,
            "workers": self.cfg.runtime.workers,
            "ready": self.all_ready(),
            "reloading": self.reload.as_ref().map(|r| r.generation),
            "stopping": self.phase != Phase::Running,
            "control": self.p.control.as_ref().map(|c| c.path.display().to_string()),
            "slots": rows,
        })
    }
}
