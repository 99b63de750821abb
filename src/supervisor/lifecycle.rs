//! Worker lifecycle: starting a slot's worker, noticing it is over (its whole process group),
//! restarting it after backoff or not, stopping and killing, and scaling the number of slots.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use super::worker::{Worker, describe_exit, human};
use super::{Phase, Slot, Supervisor};
use crate::cli::RestartPolicy;
use crate::config::{Mode, ReadyMode};
use crate::error::{Exit, Result};
use crate::log::Event;
use crate::route::Channel;

impl Supervisor {
    /// Ends workers whose leader exited and whose group is gone; asks lingering groups to stop.
    pub(super) fn settle(&mut self, now: Instant) {
        let mut i = 0;
        while i < self.workers.len() {
            let w = &mut self.workers[i];
            if w.status.is_none() {
                i += 1;
                continue;
            }
            if w.group_alive() {
                if !w.signalled && !w.killed {
                    // The leader died but left helpers behind: they go too, gracefully first.
                    w.stop(self.cfg.runtime.stop_signal, now + self.cfg.runtime.grace);
                }
                i += 1;
                continue;
            }
            let mut w = self.workers.remove(i);
            if let Some(g) = &self.p.guard {
                g.untrack(w.pid);
            }
            w.drain_pipes(&mut self.p.out);
            let unsent = w.unsent();
            self.ended(w, now);
            self.rehome(unsent);
        }
    }

    pub(super) fn ended(&mut self, w: Worker, now: Instant) {
        let status = w.status.expect("ended workers have a status");
        let by_stop =
            matches!(status, WaitStatus::Signaled(_, s, _) if s == self.cfg.runtime.stop_signal);
        let ok = w.succeeded() || (w.retired && by_stop);
        let what = format!("{} after {}", describe_exit(&status), human(w.uptime()));
        let ev = |e: Event| {
            super::worker::exit_fields(e.worker(w.slot, w.pid.as_raw()), &status)
                .with("uptime_ms", w.uptime().as_millis() as u64)
        };
        if let Some(slot) = self.slots.get_mut(w.slot as usize) {
            if !w.retired || self.phase != Phase::Running {
                slot.last_ok = ok;
            }
            let in_reload = self.reload.as_ref().is_some_and(|r| r.is_in_flight(w.pid));
            if !w.retired && !in_reload {
                slot.restarts += 1;
                slot.last_exit = Some(describe_exit(&status));
            }
        }
        if self.reload.as_ref().is_some_and(|r| r.is_in_flight(w.pid)) {
            self.p.out.event(ev(Event::error("exited", what.clone())));
            self.abort_reload(format!(
                "worker.{}[{}] {what} before it was ready",
                w.slot, w.pid
            ));
            return;
        }
        if w.retired || self.phase != Phase::Running || w.slot as usize >= self.slots.len() {
            self.p.out.event(ev(Event::info("exited", what)));
            return;
        }
        if self.workers.iter().any(|o| o.slot == w.slot && o.serving()) {
            // Another worker already serves this slot (a replacement started meanwhile).
            self.p.out.event(ev(Event::info("exited", what)));
            return;
        }
        let restart = match self.cfg.runtime.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !w.succeeded(),
            RestartPolicy::Never => false,
        };
        if !restart {
            let e = if ok {
                Event::info("exited", what)
            } else {
                Event::warn("exited", what)
            };
            self.p.out.event(ev(e));
            return;
        }
        if w.uptime() >= self.cfg.runtime.min_uptime {
            self.slots[w.slot as usize].backoff.reset();
        }
        match self.schedule(w.slot, now) {
            Some(delay) => self.p.out.event(
                ev(Event::warn(
                    "exited",
                    format!("{what}; restarting in {}", human(delay)),
                ))
                .with("restart_in_ms", delay.as_millis() as u64),
            ),
            None => self.p.out.event(ev(Event::warn("exited", what))),
        }
    }

    /// Plans the next start of `slot` after backoff; `None` when the restart budget is spent
    /// (and the service is then stopping).
    pub(super) fn schedule(&mut self, slot: u32, now: Instant) -> Option<Duration> {
        if !self.budget.record(now) {
            let (n, window) = self
                .cfg
                .runtime
                .max_restarts
                .expect("a budget that can run out has a limit");
            self.p.out.event(
                Event::error(
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
            self.stop_workers();
            return None;
        }
        let jitter = self.jitter.next();
        let s = &mut self.slots[slot as usize];
        let delay = s.backoff.next(self.cfg.runtime.backoff_max, jitter);
        s.restart_at = Some(now + delay);
        Some(delay)
    }

    /// Starts a worker of `generation` for `slot`; returns its pid. A start error is printed
    /// once per slot until a start works again.
    pub(super) fn start(&mut self, slot: u32, generation: u64) -> Option<Pid> {
        self.slots[slot as usize].restart_at = None;
        let names: Vec<&str> = self.p.sockets.iter().map(|b| b.name.as_str()).collect();
        let mut ours = Vec::new();
        let mut theirs = Vec::new();
        let fds: Vec<BorrowedFd> = match self.cfg.mode {
            Mode::Shared => self.p.sockets.iter().map(|b| b.fd.as_fd()).collect(),
            Mode::ReusePort => self.p.slot_fds[slot as usize]
                .iter()
                .map(|f| f.as_fd())
                .collect(),
            Mode::Route(_) => {
                for _ in &self.p.sockets {
                    match channel_pair() {
                        Ok((a, b)) => {
                            ours.push(Channel::new(a));
                            theirs.push(b);
                        }
                        Err(e) => {
                            let msg = format!("cannot create a route channel: {e}");
                            self.p
                                .out
                                .event(Event::error("start-failed", msg).with("slot", slot));
                            self.schedule(slot, Instant::now());
                            return None;
                        }
                    }
                }
                theirs.iter().map(|f| f.as_fd()).collect()
            }
        };
        let named: Vec<(&str, BorrowedFd)> = names.iter().copied().zip(fds).collect();
        let spawner = match &self.reload {
            Some(r) if r.generation == generation => {
                r.next.as_ref().map_or(&self.p.spawner, |n| &n.spawner)
            }
            _ => &self.p.spawner,
        };
        let spawned = spawner.spawn(&named, slot, self.cfg.runtime.workers, generation);
        drop(named);
        drop(theirs);
        match spawned {
            Ok(s) => {
                self.any_started = true;
                if let Some(g) = &self.p.guard {
                    g.track(s.pid);
                }
                let mut w = Worker::new(slot, s.pid, generation, s.stdout, s.stderr);
                w.channels = ours;
                let now = Instant::now();
                w.ready_deadline = Some(now + self.cfg.runtime.ready_timeout);
                if let ReadyMode::Delay(d) = self.cfg.runtime.ready {
                    w.ready_at = Some(now + d);
                }
                let recovered = self.slots[slot as usize].last_error.take().is_some();
                let msg = match (recovered, generation) {
                    (true, _) => "started (the program runs again)".to_string(),
                    (false, 1) => "started".to_string(),
                    (false, g) => format!("started (generation {g})"),
                };
                self.p.out.event(
                    Event::info("started", msg)
                        .worker(slot, s.pid.as_raw())
                        .with("generation", generation),
                );
                self.workers.push(w);
                Some(s.pid)
            }
            Err(e) => {
                let msg = format!(
                    "cannot start worker.{slot}: {}: {}",
                    self.cfg.program.path.display(),
                    crate::config::io_reason(&e)
                );
                if !self.any_started {
                    self.p
                        .out
                        .event(Event::error("start-failed", msg).with("slot", slot));
                    self.exit = self.exit.worst(Exit::Program);
                    self.stop_workers();
                    return None;
                }
                if self.reload.is_some() {
                    self.abort_reload(msg);
                    return None;
                }
                let repeated =
                    self.slots[slot as usize].last_error.as_deref() == Some(msg.as_str());
                if let Some(delay) = self.schedule(slot, Instant::now()) {
                    if !repeated {
                        self.p.out.event(
                            Event::error(
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
                self.slots[slot as usize].last_error = Some(msg);
                None
            }
        }
    }

    /// A worker missed --ready-timeout: a reload is rolled back; otherwise it is restarted.
    pub(super) fn not_ready_in_time(&mut self, pid: Pid, now: Instant) {
        let msg = format!(
            "not ready within --ready-timeout {}",
            human(self.cfg.runtime.ready_timeout)
        );
        let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) else {
            return;
        };
        let (slot, in_reload) = (
            w.slot,
            self.reload.as_ref().is_some_and(|r| r.is_in_flight(pid)),
        );
        if in_reload {
            w.retired = true;
        }
        w.stop(self.cfg.runtime.stop_signal, now + self.cfg.runtime.grace);
        if in_reload {
            self.abort_reload(format!("worker.{slot}[{pid}] {msg}"));
        } else {
            self.p.out.event(
                Event::warn("not-ready", format!("{msg}; stopping it"))
                    .worker(slot, pid.as_raw())
                    .with(
                        "timeout_ms",
                        self.cfg.runtime.ready_timeout.as_millis() as u64,
                    ),
            );
        }
    }

    /// Graceful stop: no more restarts or reloads, the stop signal to every worker's group,
    /// SIGKILL at the --grace deadline.
    pub(super) fn stop(&mut self, why: &str) {
        if let Some(n) = &self.p.systemd {
            n.send("STOPPING=1\nSTATUS=stopping");
        }
        let n = self.workers.len();
        self.p.out.event(
            Event::info(
                "stopping",
                format!(
                    "{why}: stopping {n} worker(s) with {} (grace {})",
                    self.cfg.runtime.stop_signal.as_str(),
                    human(self.cfg.runtime.grace)
                ),
            )
            .with("why", why)
            .with("workers", n)
            .with("signal", self.cfg.runtime.stop_signal.as_str())
            .with("grace_ms", self.cfg.runtime.grace.as_millis() as u64),
        );
        self.stop_workers();
    }

    pub(super) fn stop_workers(&mut self) {
        for s in &mut self.slots {
            s.restart_at = None;
        }
        self.reload = None;
        self.watch_reload_at = None;
        let deadline = Instant::now() + self.cfg.runtime.grace;
        self.phase = Phase::Stopping(deadline);
        for w in &mut self.workers {
            w.retired = true;
            if !w.signalled {
                w.stop(self.cfg.runtime.stop_signal, deadline);
            }
            // The service-wide deadline rules now.
            w.kill_at = None;
        }
    }

    pub(super) fn kill_all(&mut self) {
        for s in &mut self.slots {
            s.restart_at = None;
        }
        self.reload = None;
        self.phase = Phase::Killing;
        for w in &mut self.workers {
            w.retired = true;
            w.kill();
        }
        if !self.workers.is_empty() {
            self.exit = self.exit.worst(Exit::Unclean);
        }
    }

    /// SIGTTIN: one more slot, started at once.
    pub(super) fn scale_up(&mut self, why: &str) {
        if self.phase != Phase::Running {
            return;
        }
        if self.cfg.mode == Mode::ReusePort {
            let fds: Result<Vec<OwnedFd>> = self
                .p
                .sockets
                .iter()
                .map(|b| crate::socket::bind_sibling(b, &b.local, None))
                .collect();
            match fds {
                Ok(fds) => self.p.slot_fds.push(fds),
                Err(e) => {
                    let msg = format!("{why}: cannot add a slot: {e}");
                    self.p
                        .out
                        .event(Event::error("scale-failed", msg).with("why", why));
                    return;
                }
            }
        }
        self.cfg.runtime.workers += 1;
        self.slots.push(Slot::default());
        let slot = self.cfg.runtime.workers - 1;
        self.p.out.event(
            Event::info(
                "scale",
                format!(
                    "{why}: scaling up to {} worker(s)",
                    self.cfg.runtime.workers
                ),
            )
            .with("why", why)
            .with("workers", self.cfg.runtime.workers),
        );
        let generation = self
            .reload
            .as_ref()
            .map_or(self.generation, |r| r.generation);
        self.start(slot, generation);
    }

    /// SIGTTOU: the highest slot goes; its worker drains within --grace.
    pub(super) fn scale_down(&mut self, why: &str) {
        if self.phase != Phase::Running {
            return;
        }
        if self.cfg.runtime.workers <= 1 {
            self.p.out.event(
                Event::warn(
                    "scale-failed",
                    format!("{why}: not scaling down: one worker is the minimum"),
                )
                .with("why", why),
            );
            return;
        }
        self.cfg.runtime.workers -= 1;
        self.slots.pop();
        // reuseport: the slot's sockets close with its last worker; connections still queued
        // on them then are reset by the kernel.
        if self.cfg.mode == Mode::ReusePort {
            self.p.slot_fds.pop();
        }
        let slot = self.cfg.runtime.workers;
        self.p.out.event(
            Event::info(
                "scale",
                format!(
                    "{why}: scaling down to {} worker(s)",
                    self.cfg.runtime.workers
                ),
            )
            .with("why", why)
            .with("workers", self.cfg.runtime.workers),
        );
        let deadline = Instant::now() + self.cfg.runtime.grace;
        for w in self.workers.iter_mut().filter(|w| w.slot == slot) {
            w.retired = true;
            w.stop(self.cfg.runtime.stop_signal, deadline);
        }
    }
}

/// A SOCK_SEQPACKET pair for a route channel: (ours, non-blocking; the worker's).
pub(super) fn channel_pair() -> nix::Result<(OwnedFd, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    set_nonblocking(&a)?;
    Ok((a, b))
}

pub(super) fn set_nonblocking(fd: &OwnedFd) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}
