//! The supervisor's event loop: the one thread that owns every worker, forks, reaps and
//! decides. Signals (through a signalfd), child exits, worker output, sd_notify datagrams,
//! file-change wake-ups, control requests and (in route mode) connections all wake one `poll`;
//! the only timeouts are pending restarts, readiness and stop deadlines, so an idle supervisor
//! sleeps in `poll` with no timeout at all.
//!
//! This file has the loop and what wakes it; the rest is split by job: `lifecycle` (start,
//! exit, restart, stop, scale), `reload` (rolling reload), `routing` (route mode), `control`
//! (control socket, systemd notifications), `worker` (one process), `backoff` (pacing).

mod backoff;
mod control;
mod lifecycle;
mod reload;
mod routing;
mod worker;

use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use crate::config::{Config, Mode};
use crate::control::ControlServer;
use crate::error::{Error, Exit, Result};
use crate::guard::Guard;
use crate::log::{Event, Output};
use crate::notify::NotifyServer;
use crate::route::Router;
use crate::socket::Bound;
use crate::spawn::Spawner;
use crate::systemd::Notifier;
use crate::watch::Watch;
use backoff::{Backoff, Budget, Jitter};
use lifecycle::set_nonblocking;
use reload::Reload;
use worker::Worker;
pub use worker::human;

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

/// How often a group whose leader died after a SIGKILL is re-checked: the rare case where its
/// last member is not our child, so no SIGCHLD tells us it is gone.
const RECHECK: Duration = Duration::from_millis(100);

#[derive(Default)]
struct Slot {
    backoff: Backoff,
    restart_at: Option<Instant>,
    /// The last start error printed, so a slot that cannot start says so once, not per try.
    last_error: Option<String>,
    /// Whether the slot's last worker ended well (exit 0, or by our stop signal).
    last_ok: bool,
    /// Workers of this slot that ended unasked (crashes and exits), for `status`.
    restarts: u32,
    /// How the last of those ended, for `status`.
    last_exit: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Stop signal sent; SIGKILL at the deadline.
    Stopping(Instant),
    /// Everything SIGKILLed; waiting for the groups to be gone.
    Killing,
}

/// What the event loop needs besides the config: sockets, the spawner and the I/O endpoints.
pub struct Parts {
    pub sockets: Vec<Bound>,
    /// `--balance reuseport`: each slot's own sockets, in `sockets` order.
    pub slot_fds: Vec<Vec<OwnedFd>>,
    pub spawner: Spawner,
    pub out: Output,
    pub signals: SignalFd,
    pub notify: NotifyServer,
    pub watch: Option<Watch>,
    pub control: Option<ControlServer>,
    /// systemd's NOTIFY_SOCKET, when it started us.
    pub systemd: Option<Notifier>,
    /// Kills the workers' process groups if the supervisor dies.
    pub guard: Option<Guard>,
    /// `multinode stop` callers, answered already; their connections close when these drop,
    /// which the caller does last, after cleaning up.
    pub stop_clients: Vec<std::os::unix::net::UnixStream>,
    /// Environment every worker gets on top of ours (USER, HOME, NOTIFY_SOCKET, ...), before
    /// the configured `env`: what a reload needs to build a new spawner.
    pub overrides: Vec<(String, std::ffi::OsString)>,
}

pub struct Supervisor {
    cfg: Config,
    p: Parts,
    slots: Vec<Slot>,
    workers: Vec<Worker>,
    /// The generation crash restarts and new slots start: the last one fully rolled out.
    generation: u64,
    /// The highest generation ever started (a reload takes the next one).
    newest: u64,
    reload: Option<Reload>,
    /// A file change was seen; reload once nothing changed until then.
    watch_reload_at: Option<Instant>,
    watch_changed: Option<PathBuf>,
    phase: Phase,
    /// Route mode's state.
    router: Option<Router>,
    budget: Budget,
    jitter: Jitter,
    waiters: control::Waiters,
    /// The last STATUS= sent to systemd, and whether READY=1 was.
    sd_status: String,
    sd_ready: bool,
    /// Whether any worker of the service ever started: a program that cannot start at all is a
    /// start-up error, not something to retry forever.
    any_started: bool,
    exit: Exit,
}

enum Wake {
    Signals,
    Notify,
    Watch,
    Pipe(Pid, usize),
    Listener(usize),
    Pending(u64),
    Channel(Pid, usize),
    Control,
    ControlClient(usize),
}

impl Supervisor {
    pub fn new(cfg: Config, p: Parts) -> Self {
        let router = match cfg.mode {
            Mode::Route(policy) => Some(Router::new(policy, cfg.proxy_protocol)),
            _ => None,
        };
        let slots = (0..cfg.runtime.workers).map(|_| Slot::default()).collect();
        Supervisor {
            budget: Budget::new(cfg.runtime.max_restarts),
            cfg,
            p,
            slots,
            workers: Vec::new(),
            generation: 1,
            newest: 1,
            reload: None,
            watch_reload_at: None,
            watch_changed: None,
            phase: Phase::Running,
            router,
            jitter: Jitter::new(),
            waiters: control::Waiters::default(),
            sd_status: String::new(),
            sd_ready: false,
            any_started: false,
            exit: Exit::Ok,
        }
    }

    /// Runs until every worker is gone; returns the exit class and the parts (for cleanup).
    pub fn run(mut self) -> (Exit, Parts) {
        if self.router.is_some() {
            for b in &self.p.sockets {
                if let Err(e) = set_nonblocking(&b.fd) {
                    let msg = format!("{}: cannot make it non-blocking: {e}", b.local);
                    self.p.out.event(Event::error("internal", msg));
                    return (Exit::Internal, self.p);
                }
            }
        }
        for slot in 0..self.cfg.runtime.workers {
            if self.phase != Phase::Running {
                break;
            }
            self.start(slot, self.generation);
        }
        while !self.finished() {
            let wakes = match self.wait() {
                Ok(w) => w,
                Err(e) => {
                    // Without poll the loop can neither reap nor read: kill the workers
                    // (their parent-death signal and the guard finish the job) and leave.
                    let msg = format!("poll failed: {e}; killing every worker and exiting");
                    self.p.out.event(Event::error("internal", msg));
                    self.exit = self.exit.worst(Exit::Internal);
                    self.kill_all();
                    break;
                }
            };
            for wake in wakes {
                match wake {
                    Wake::Signals => self.on_signals(),
                    Wake::Notify => self.on_notify(),
                    Wake::Watch => self.on_watch(),
                    Wake::Pipe(pid, idx) => {
                        if let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) {
                            w.read_pipe(idx, &mut self.p.out);
                        }
                    }
                    Wake::Listener(i) => self.on_listener(i),
                    Wake::Pending(id) => self.on_pending(id),
                    Wake::Channel(pid, i) => self.on_channel(pid, i),
                    Wake::Control => self.on_control(),
                    Wake::ControlClient(i) => self.on_control_client(i),
                }
            }
            let now = Instant::now();
            self.on_timers(now);
            self.settle(now);
            self.advance_reload(now);
            self.flush_channels();
            self.housekeeping(now);
        }
        if self.phase == Phase::Running
            && self.exit == Exit::Ok
            && !self.slots.iter().all(|s| s.last_ok)
        {
            // Every worker exited for good (--restart never / on-failure) and one failed.
            self.exit = Exit::Unclean;
        }
        self.p.stop_clients = self.waiters.take_stop_clients();
        (self.exit, self.p)
    }

    fn finished(&self) -> bool {
        self.workers.is_empty()
            && (self.phase != Phase::Running || self.slots.iter().all(|s| s.restart_at.is_none()))
    }

    /// Sleeps in poll until a signal, a datagram, output, a file change or the next deadline.
    fn wait(&mut self) -> nix::Result<Vec<Wake>> {
        let timeout = match self.next_deadline() {
            None => PollTimeout::NONE,
            Some(at) => {
                let ms = at.saturating_duration_since(Instant::now()).as_millis();
                // Round up so the loop never wakes a millisecond early and spins.
                PollTimeout::try_from(ms.saturating_add(1).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        let mut keys = vec![Wake::Signals, Wake::Notify];
        let mut fds = vec![
            PollFd::new(self.p.signals.as_fd(), PollFlags::POLLIN),
            PollFd::new(self.p.notify.as_fd(), PollFlags::POLLIN),
        ];
        if let Some(w) = &self.p.watch {
            keys.push(Wake::Watch);
            fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
        }
        if let Some(c) = &self.p.control {
            keys.push(Wake::Control);
            fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
        }
        for (i, fd) in self.waiters.client_fds() {
            keys.push(Wake::ControlClient(i));
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        for w in &self.workers {
            for (idx, fd) in w.pipe_fds() {
                keys.push(Wake::Pipe(w.pid, idx));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
            for (idx, ch) in w.channels.iter().enumerate().filter(|(_, c)| !c.closed) {
                let mut ev = PollFlags::POLLIN;
                if ch.wants_write() {
                    ev |= PollFlags::POLLOUT;
                }
                keys.push(Wake::Channel(w.pid, idx));
                fds.push(PollFd::new(ch.as_fd(), ev));
            }
        }
        if let Some(router) = &mut self.router {
            if router
                .accept_paused_until
                .is_some_and(|t| t <= Instant::now())
            {
                router.accept_paused_until = None;
            }
        }
        if let Some(router) = &self.router {
            if self.phase == Phase::Running && router.accept_paused_until.is_none() {
                for (i, b) in self.p.sockets.iter().enumerate() {
                    keys.push(Wake::Listener(i));
                    fds.push(PollFd::new(b.fd.as_fd(), PollFlags::POLLIN));
                }
            }
            for p in &router.pending {
                keys.push(Wake::Pending(p.id));
                fds.push(PollFd::new(p.fd.as_fd(), PollFlags::POLLIN));
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
        // Pipes in reverse, so that removing a pipe at EOF keeps the lower indices valid.
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
        let now = Instant::now();
        let restarts = self.slots.iter().filter_map(|s| s.restart_at);
        let per_worker = self.workers.iter().flat_map(|w| {
            let recheck = (w.killed && w.status.is_some()).then(|| now + RECHECK);
            [w.kill_at, w.ready_at, w.ready_deadline, recheck]
        });
        let stop = match self.phase {
            Phase::Stopping(at) => Some(at),
            _ => None,
        };
        restarts
            .chain(per_worker.flatten())
            .chain(stop)
            .chain(self.watch_reload_at)
            .chain(self.next_route_deadline())
            .chain(self.waiters.deadlines())
            .min()
    }

    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.p.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            match sig {
                Signal::SIGCHLD => self.reap(),
                Signal::SIGTERM | Signal::SIGINT => match self.phase {
                    Phase::Running => self.stop(sig.as_str()),
                    _ => {
                        self.p.out.event(
                            Event::warn(
                                "kill",
                                format!("{} again: killing every worker now", sig.as_str()),
                            )
                            .with("signal", sig.as_str()),
                        );
                        self.kill_all();
                    }
                },
                Signal::SIGQUIT => {
                    self.p.out.event(
                        Event::warn("kill", "SIGQUIT: fast stop, killing every worker now")
                            .with("signal", "SIGQUIT"),
                    );
                    self.kill_all();
                }
                Signal::SIGHUP => self.begin_reload("SIGHUP".into()),
                // The terminal sends these too (job control: a background process reading it,
                // or writing to it with `stty tostop`); only a process's kill means "scale".
                Signal::SIGTTIN | Signal::SIGTTOU if info.ssi_code == libc::SI_KERNEL => {}
                Signal::SIGTTIN => self.scale_up("SIGTTIN"),
                Signal::SIGTTOU => self.scale_down("SIGTTOU"),
                _ => {}
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

    /// sd_notify datagrams: attributed to the worker that sent them, or to the worker whose
    /// process group the sender is in; anything else is ignored.
    fn on_notify(&mut self) {
        for msg in self.p.notify.recv_all() {
            let pgid = nix::unistd::getpgid(Some(Pid::from_raw(msg.pid))).ok();
            let Some(w) = self
                .workers
                .iter_mut()
                .find(|w| w.pid.as_raw() == msg.pid || Some(w.pid) == pgid)
            else {
                continue;
            };
            if w.status.is_some() {
                continue;
            }
            for (k, v) in msg.fields {
                match k.as_str() {
                    "READY" if v == "1" && !w.ready && !w.signalled => {
                        w.ready = true;
                        w.ready_at = None;
                        w.ready_deadline = None;
                        self.p.out.event(
                            Event::info("ready", "ready (READY=1)")
                                .worker(w.slot, w.pid.as_raw())
                                .with("via", "notify"),
                        );
                    }
                    "STATUS" => w.status_text = Some(v),
                    "STOPPING" if v == "1" => {
                        self.p.out.event(
                            Event::info("worker-stopping", "reports it is stopping (STOPPING=1)")
                                .worker(w.slot, w.pid.as_raw()),
                        );
                    }
                    _ => {}
                }
            }
        }
    }

    fn on_watch(&mut self) {
        let Some(w) = &self.p.watch else { return };
        let changed = w.drain();
        if let Some(first) = changed.into_iter().next() {
            self.watch_changed.get_or_insert(first);
            self.watch_reload_at = Some(Instant::now() + self.cfg.runtime.watch_debounce);
        }
    }

    fn on_timers(&mut self, now: Instant) {
        if self.phase == Phase::Running {
            let due: Vec<u32> = (0..self.slots.len() as u32)
                .filter(|&i| self.slots[i as usize].restart_at.is_some_and(|t| t <= now))
                .collect();
            for slot in due {
                if self.phase == Phase::Running {
                    self.start(slot, self.generation);
                }
            }
            if self.watch_reload_at.is_some_and(|t| t <= now) {
                self.watch_reload_at = None;
                let path = self
                    .watch_changed
                    .take()
                    .map_or_else(String::new, |p| p.display().to_string());
                self.begin_reload(format!("change in {path}"));
            }
        }
        self.expire_pending(now);
        if let Phase::Stopping(at) = self.phase {
            if at <= now {
                let left = self.workers.iter().filter(|w| !w.killed).count();
                self.p.out.event(
                    Event::warn(
                        "kill",
                        format!(
                            "{left} worker(s) did not stop within --grace {}; sending SIGKILL",
                            human(self.cfg.runtime.grace)
                        ),
                    )
                    .with("workers", left)
                    .with("grace_ms", self.cfg.runtime.grace.as_millis() as u64),
                );
                self.kill_all();
            }
        }
        let mut late = Vec::new();
        for w in &mut self.workers {
            if w.kill_at.is_some_and(|t| t <= now) {
                self.p.out.event(
                    Event::warn(
                        "kill",
                        format!(
                            "did not stop within --grace {}; sending SIGKILL",
                            human(self.cfg.runtime.grace)
                        ),
                    )
                    .worker(w.slot, w.pid.as_raw())
                    .with("grace_ms", self.cfg.runtime.grace.as_millis() as u64),
                );
                w.kill();
                self.exit = self.exit.worst(Exit::Unclean);
            }
            if w.ready_at.is_some_and(|t| t <= now) && w.status.is_none() {
                w.ready_at = None;
                w.ready_deadline = None;
                w.ready = true;
                self.p.out.event(
                    Event::info("ready", "ready (up for the --ready delay)")
                        .worker(w.slot, w.pid.as_raw())
                        .with("via", "delay"),
                );
            }
            if w.ready_deadline.is_some_and(|t| t <= now) {
                w.ready_deadline = None;
                late.push(w.pid);
            }
        }
        for pid in late {
            self.not_ready_in_time(pid, now);
        }
    }
}
