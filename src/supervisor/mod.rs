//! The supervisor's event loop: the one thread that owns every worker, forks, reaps and
//! decides. Signals (through a signalfd), child exits and worker output all wake one `poll`;
//! the only timeouts are pending restarts and stop deadlines, so an idle supervisor sleeps in
//! `poll` with no timeout at all.

mod backoff;
mod worker;

use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};

use crate::cli::RestartPolicy;
use crate::config::Config;
use crate::error::{Error, Exit, Result};
use crate::log::{Event, Output};
use crate::socket::Bound;
use crate::spawn::Spawner;
use backoff::{Backoff, Budget, Jitter};
use worker::{Worker, describe_exit, human};

/// The signals the supervisor handles; they are blocked in every thread and read from a
/// signalfd by the loop. Workers get a clean mask (see spawn.rs).
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the handled signals in the calling thread; threads started later inherit the mask.
pub fn block_signals() -> Result<SignalFd> {
    let set = handled_signals();
    set.thread_block()
        .map_err(|e| Error::sys("blocking signals", e))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::sys("creating a signalfd", e))
}

/// How long a group whose leader died after a SIGKILL is re-checked for: the rare case where
/// its last member is not our child, so no SIGCHLD tells us it is gone.
const RECHECK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Slot {
    backoff: Backoff,
    restart_at: Option<Instant>,
    /// The last start error printed, so a slot that cannot start says so once, not per try.
    last_error: Option<String>,
    /// Whether the slot's last worker ended well (exit 0, or by our stop signal).
    last_ok: bool,
}

#[derive(PartialEq, Eq)]
enum Phase {
    Running,
    /// Stop signal sent; SIGKILL at the deadline.
    Stopping(Instant),
    /// Everything SIGKILLed; waiting for the groups to be gone.
    Killing,
}

pub struct Supervisor {
    cfg: Config,
    sockets: Vec<Bound>,
    spawner: Spawner,
    out: Output,
    signals: SignalFd,
    slots: Vec<Slot>,
    workers: Vec<Worker>,
    generation: u64,
    phase: Phase,
    budget: Budget,
    jitter: Jitter,
    /// Whether any worker of the service ever started: a program that cannot start at all is a
    /// start-up error, not something to retry forever.
    any_started: bool,
    exit: Exit,
}

enum Wake {
    Signals,
    Pipe(nix::unistd::Pid, usize),
}

impl Supervisor {
    pub fn new(
        cfg: Config,
        sockets: Vec<Bound>,
        spawner: Spawner,
        out: Output,
        signals: SignalFd,
    ) -> Self {
        let slots = (0..cfg.workers).map(|_| Slot::default()).collect();
        Supervisor {
            budget: Budget::new(cfg.max_restarts),
            cfg,
            sockets,
            spawner,
            out,
            signals,
            slots,
            workers: Vec::new(),
            generation: 1,
            phase: Phase::Running,
            jitter: Jitter::new(),
            any_started: false,
            exit: Exit::Ok,
        }
    }

    /// Runs until every worker is gone; returns the exit class and the sockets (for cleanup).
    pub fn run(mut self) -> (Exit, Vec<Bound>, Output) {
        for slot in 0..self.cfg.workers {
            self.start(slot);
            if self.phase != Phase::Running {
                break;
            }
        }
        while !self.finished() {
            let wakes = match self.wait() {
                Ok(w) => w,
                Err(e) => {
                    self.out.event(Event::error(
                        "internal",
                        format!("poll failed: {e}; stopping"),
                    ));
                    self.exit = Exit::Internal;
                    self.kill_all();
                    Vec::new()
                }
            };
            for wake in wakes {
                match wake {
                    Wake::Signals => self.on_signals(),
                    Wake::Pipe(pid, idx) => {
                        if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                            w.read_pipe(idx, &mut self.out);
                        }
                    }
                }
            }
            self.on_timers(Instant::now());
            self.settle();
        }
        if self.phase == Phase::Running
            && !self.slots.iter().all(|s| s.last_ok)
            && self.exit == Exit::Ok
        {
            // Every worker exited for good (--restart never / on-failure) and one failed.
            self.exit = Exit::Unclean;
        }
        (self.exit, self.sockets, self.out)
    }

    fn finished(&self) -> bool {
        self.workers.is_empty()
            && (self.phase != Phase::Running || self.slots.iter().all(|s| s.restart_at.is_none()))
    }

    /// Sleeps in poll until a signal, worker output or the next deadline.
    fn wait(&mut self) -> nix::Result<Vec<Wake>> {
        let timeout = match self.next_deadline() {
            None => PollTimeout::NONE,
            Some(at) => {
                let ms = at.saturating_duration_since(Instant::now()).as_millis();
                // Round up so we never wake a millisecond early and spin.
                PollTimeout::try_from(ms.saturating_add(1).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut keys = vec![Wake::Signals];
        let mut fds = vec![PollFd::new(self.signals.as_fd(), PollFlags::POLLIN)];
        for w in &self.workers {
            for (idx, fd) in w.pipe_fds() {
                keys.push(Wake::Pipe(w.pid, idx));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        match poll(&mut fds, timeout) {
            Ok(_) => {}
            Err(Errno::EINTR) => return Ok(Vec::new()),
            Err(e) => return Err(e),
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        // Pipes in reverse so that removing a pipe at EOF keeps lower indices valid.
        let mut wakes: Vec<Wake> = keys
            .into_iter()
            .zip(ready)
            .filter(|(_, r)| *r)
            .map(|(k, _)| k)
            .collect();
        wakes.reverse();
        Ok(wakes)
    }

    fn next_deadline(&self) -> Option<Instant> {
        let restarts = self.slots.iter().filter_map(|s| s.restart_at);
        let kills = self.workers.iter().filter_map(|w| w.kill_at);
        let lingering = self
            .workers
            .iter()
            .filter(|w| w.killed && w.status.is_some())
            .map(|_| Instant::now() + RECHECK);
        let stop = match self.phase {
            Phase::Stopping(at) => Some(at),
            _ => None,
        };
        restarts.chain(kills).chain(lingering).chain(stop).min()
    }

    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGCHLD => self.reap(),
                Signal::SIGTERM | Signal::SIGINT => match self.phase {
                    Phase::Running => self.stop(sig),
                    _ => {
                        self.out.event(Event::warn(
                            "kill",
                            format!("{} again: killing every worker now", sig.as_str()),
                        ));
                        self.kill_all();
                    }
                },
                Signal::SIGQUIT => {
                    self.out.event(Event::warn(
                        "kill",
                        "SIGQUIT: fast stop, killing every worker now",
                    ));
                    self.kill_all();
                }
                other => self.out.event(Event::warn(
                    "signal",
                    format!(
                        "{} ignored: this multinode does not reload or scale at run time yet",
                        other.as_str()
                    ),
                )),
            }
        }
    }

    /// Reaps every exited child: workers and any orphan reparented to us (we are a subreaper).
    fn reap(&mut self) {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(status) => {
                    let Some(pid) = status.pid() else { continue };
                    if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                        w.status = Some(status);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            }
        }
    }

    /// Ends workers whose leader exited and whose group is gone; asks lingering groups to stop.
    fn settle(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.workers.len() {
            let w = &mut self.workers[i];
            if w.status.is_none() {
                i += 1;
                continue;
            }
            if w.group_alive() {
                if !w.stopping && !w.killed {
                    // The leader died but left helpers behind: they go too, gracefully first.
                    w.stopping = true;
                    w.signal(self.cfg.stop_signal);
                    w.kill_at = Some(now + self.cfg.grace);
                }
                i += 1;
                continue;
            }
            let mut w = self.workers.remove(i);
            w.drain_pipes(&mut self.out);
            self.ended(w, now);
        }
    }

    fn ended(&mut self, w: Worker, now: Instant) {
        let status = w.status.expect("ended workers have a status");
        let by_stop = matches!(status, WaitStatus::Signaled(_, s, _) if s == self.cfg.stop_signal);
        let ok = w.succeeded() || (self.phase != Phase::Running && by_stop);
        let slot = w.slot as usize;
        self.slots[slot].last_ok = ok;
        let what = format!("{} after {}", describe_exit(&status), human(w.uptime()));
        let ev = |e: Event| e.worker(w.slot, w.pid.as_raw());
        if self.phase != Phase::Running {
            self.out.event(ev(Event::info("exited", what)));
            return;
        }
        let restart = match self.cfg.restart {
            RestartPolicy::Always => true,
            RestartPolicy::OnFailure => !w.succeeded(),
            RestartPolicy::Never => false,
        };
        if !restart {
            let level = if ok {
                Event::info("exited", what)
            } else {
                Event::warn("exited", what)
            };
            self.out.event(ev(level));
            return;
        }
        if w.uptime() >= self.cfg.min_uptime {
            self.slots[slot].backoff.reset();
        }
        if let Some(delay) = self.schedule(w.slot, now) {
            self.out.event(ev(Event::warn(
                "exited",
                format!("{what}; restarting in {}", human(delay)),
            )));
        } else {
            self.out.event(ev(Event::warn("exited", what)));
        }
    }

    /// Plans the next start of `slot` after backoff; `None` when the restart budget is spent
    /// (and the service is then stopping).
    fn schedule(&mut self, slot: u32, now: Instant) -> Option<Duration> {
        if !self.budget.record(now) {
            let (n, window) = self
                .cfg
                .max_restarts
                .expect("a budget that can run out has a limit");
            self.out.event(Event::error(
                "gave-up",
                format!(
                    "giving up: more than {n} restarts within {}; stopping every worker",
                    human(window)
                ),
            ));
            self.exit = Exit::GaveUp;
            self.stop_quietly();
            return None;
        }
        let jitter = self.jitter.next();
        let s = &mut self.slots[slot as usize];
        let delay = s.backoff.next(self.cfg.backoff_max, jitter);
        s.restart_at = Some(now + delay);
        Some(delay)
    }

    /// Starts a worker for `slot`. A start error is printed once per slot until a start works.
    fn start(&mut self, slot: u32) {
        self.slots[slot as usize].restart_at = None;
        match self
            .spawner
            .spawn(&self.sockets, slot, self.cfg.workers, self.generation)
        {
            Ok(s) => {
                self.any_started = true;
                let w = Worker::new(slot, s.pid, s.stdout, s.stderr);
                let recovered = self.slots[slot as usize].last_error.take().is_some();
                let msg = if recovered {
                    "started (the program runs again)"
                } else {
                    "started"
                };
                self.out
                    .event(Event::info("started", msg).worker(slot, s.pid.as_raw()));
                self.workers.push(w);
            }
            Err(e) => {
                let msg = format!(
                    "cannot start worker.{slot}: {}: {}",
                    self.cfg.program.path.display(),
                    crate::config::io_reason(&e)
                );
                if !self.any_started {
                    self.out.event(Event::error("start-failed", msg));
                    self.exit = Exit::Program;
                    self.stop_quietly();
                    return;
                }
                let repeated =
                    self.slots[slot as usize].last_error.as_deref() == Some(msg.as_str());
                if let Some(delay) = self.schedule(slot, Instant::now()) {
                    if !repeated {
                        self.out.event(Event::error(
                            "start-failed",
                            format!(
                                "{msg}; retrying with backoff (from {}; repeats are not printed)",
                                human(delay)
                            ),
                        ));
                    }
                }
                self.slots[slot as usize].last_error = Some(msg);
            }
        }
    }

    fn on_timers(&mut self, now: Instant) {
        if self.phase == Phase::Running {
            let due: Vec<u32> = (0..self.slots.len() as u32)
                .filter(|&i| self.slots[i as usize].restart_at.is_some_and(|t| t <= now))
                .collect();
            for slot in due {
                if self.phase == Phase::Running {
                    self.start(slot);
                }
            }
        }
        if let Phase::Stopping(at) = self.phase {
            if at <= now {
                let left = self.workers.iter().filter(|w| !w.killed).count();
                self.out.event(Event::warn(
                    "kill",
                    format!(
                        "{left} worker(s) did not stop within --grace {}; sending SIGKILL",
                        human(self.cfg.grace)
                    ),
                ));
                self.kill_all();
            }
        }
        for w in &mut self.workers {
            if w.kill_at.is_some_and(|t| t <= now) {
                w.kill_at = None;
                w.killed = true;
                w.signal(Signal::SIGKILL);
                if self.exit == Exit::Ok {
                    self.exit = Exit::Unclean;
                }
            }
        }
    }

    /// Graceful stop: no more restarts, the stop signal to every worker's group, SIGKILL at
    /// the --grace deadline.
    fn stop(&mut self, why: Signal) {
        let n = self.workers.len();
        self.out.event(Event::info(
            "stopping",
            format!(
                "{}: stopping {n} worker(s) with {} (grace {})",
                why.as_str(),
                self.cfg.stop_signal.as_str(),
                human(self.cfg.grace)
            ),
        ));
        self.stop_quietly();
    }

    fn stop_quietly(&mut self) {
        for s in &mut self.slots {
            s.restart_at = None;
        }
        self.phase = Phase::Stopping(Instant::now() + self.cfg.grace);
        for w in &mut self.workers {
            if !w.killed {
                w.stopping = true;
                w.signal(self.cfg.stop_signal);
            }
            w.kill_at = None;
        }
    }

    fn kill_all(&mut self) {
        for s in &mut self.slots {
            s.restart_at = None;
        }
        self.phase = Phase::Killing;
        for w in &mut self.workers {
            w.stopping = true;
            w.killed = true;
            w.kill_at = None;
            w.signal(Signal::SIGKILL);
        }
        if !self.workers.is_empty() && self.exit == Exit::Ok {
            self.exit = Exit::Unclean;
        }
    }
}
