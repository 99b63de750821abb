//! The thin shell around the core: the one event loop. It owns every fd — the signalfd, the
//! notify socket, the file watcher's pipe, the control socket and its clients, the metrics
//! socket and its clients, the workers' output pipes, and in route mode the listening sockets
//! and worker channels — sleeps in one
//! `poll` until one of them or the core's next deadline wakes it, turns what happened into
//! [`Event`]s for the core, and carries out the [`Action`]s the core returns (`execute.rs`).
//!
//! Only this thread forks, so the workers' parent-death signal (which belongs to the forking
//! thread) fires only when the supervisor itself dies. With no deadline and no traffic the
//! loop sleeps in `poll` with no timeout: an idle supervisor uses no CPU.
//!
//! How a worker ends (reaping, lingering groups, cgroups, the sweep at exit) and whom a
//! notify datagram is from are in `reap.rs`.

use std::collections::VecDeque;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::signal::Signal;
use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

use super::backoff::Jitter;
use super::core::{Core, Event, Fixed, Sig};
use super::pipes::Pipes;
use crate::cgroup::Service;
use crate::config::{Config, Mode};
use crate::control::server::{ControlServer, Interest};
use crate::error::Exit;
use crate::guard::{Guard, Note};
use crate::log::{Event as Log, Output, Stream};
use crate::metrics::MetricsServer;
use crate::notify::NotifyServer;
use crate::route::router::{Router, Wake as RouteWake};
use crate::socket::Bound;
use crate::spawn::Spawner;
use crate::systemd::Notifier;
use crate::upgrade::preflight::Preflight;
use crate::watch::Watch;

/// How often a group whose leader died after a SIGKILL is re-checked: the rare case where its
/// last member is not our child, so no SIGCHLD tells us it is gone.
const RECHECK: Duration = Duration::from_millis(100);

/// How often the workers' memory is read when `--max-memory` is set (and never without it).
const SAMPLE: Duration = Duration::from_secs(1);

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
    /// `--metrics`: `/metrics` and `/healthz`.
    pub metrics: Option<MetricsServer>,
    /// systemd's NOTIFY_SOCKET, when it started us.
    pub systemd: Option<Notifier>,
    /// The root guard: kills what is left of the workers if the supervisor dies, reads the
    /// config file for reloads, removes what root made at the end.
    pub guard: Option<Guard>,
    /// The guard reads the config file for a reload (multinode dropped privileges).
    pub guard_reads_config: bool,
    /// `--cgroup`: the service's cgroup, when in force.
    pub cgroups: Option<Service>,
    /// `multinode stop` callers, answered already; their connections close when these drop,
    /// which the caller does last, after cleaning up.
    pub stop_clients: Vec<UnixStream>,
    /// Environment every worker gets on top of ours (USER, HOME, NOTIFY_SOCKET, ...), before
    /// the configured `env`: what a reload needs to build a new spawner.
    pub overrides: Vec<(String, std::ffi::OsString)>,
    /// The binary this image was executed from (the start path, resolved at start; after an
    /// upgrade, the binary it executed): what an upgrade executes unless told otherwise.
    pub binary: std::path::PathBuf,
    /// An `O_PATH` fd to the executable that runs: the way back from a failed upgrade.
    pub self_exe: Option<OwnedFd>,
    /// `--config`: the bytes the running settings were built from at start.
    pub config_file: Option<Vec<u8>>,
}

pub struct Shell {
    pub(super) cfg: Config,
    pub(super) p: Parts,
    pub(super) core: Core,
    /// Output pipes of every worker process that exists.
    pub(super) procs: Vec<Pipes>,
    /// Workers whose leader was reaped while their group lives on; true once SIGKILLed.
    pub(super) lingering: Vec<(Pid, bool)>,
    pub(super) router: Option<Router>,
    /// The program of a reload's generation, until the roll is complete: the generation the
    /// current spawner runs, and the next one's spawner.
    pub(super) current_generation: u64,
    pub(super) next: Option<(crate::config::NextGeneration, Spawner)>,
    /// `--max-memory`: when the workers' memory is read next (every [`SAMPLE`]).
    pub(super) sample_at: Option<Instant>,
    /// A config read asked of the guard and not answered yet; true: asked again meanwhile.
    pub(super) reading_config: Option<bool>,
    /// Requests the guard did not take in time, as last reported.
    pub(super) guard_dropped: u64,
    /// An upgrade's check of the new binary, under way.
    pub(super) preflight: Option<Preflight>,
    /// An upgrade to hand over to this binary once the current wake-up is dealt with.
    pub(super) hand_over: Option<String>,
}

enum Wake {
    Signals,
    Notify,
    Watch,
    Control,
    Client(u64, Interest),
    Metrics,
    MetricsClient(u64, Interest),
    Pipe(Pid, Stream),
    Listener(usize),
    Route(RouteWake),
    Guard,
    /// A worker's `cgroup.events` changed (checked with every lingering worker).
    Cgroup,
    /// The output of an upgrade's check of the new binary.
    Preflight,
}

/// Runs the supervisor until every worker is gone; returns the exit status and the parts (for
/// cleanup).
pub fn run(cfg: Config, mut p: Parts) -> (Exit, Parts) {
    let fixed = Fixed {
        name: cfg.name.clone(),
        mode: cfg.mode,
        systemd: p.systemd.is_some(),
        control: p.control.as_ref().map(|c| c.path.display().to_string()),
        pid: std::process::id(),
        sd_watchdog: p.systemd.as_ref().and_then(|n| n.watchdog),
    };
    let router = match cfg.mode {
        Mode::Route(policy) => Some(Router::new(policy, &cfg, &mut p.out)),
        _ => None,
    };
    let mut sh = Shell {
        core: Core::new(cfg.runtime.clone(), fixed, Jitter::new()),
        cfg,
        p,
        procs: Vec::new(),
        lingering: Vec::new(),
        router,
        current_generation: 1,
        next: None,
        sample_at: None,
        reading_config: None,
        guard_dropped: 0,
        preflight: None,
        hand_over: None,
    };
    if sh.router.is_some() {
        for b in &sh.p.sockets {
            if let Err(e) = crate::route::channel::set_nonblocking(&b.fd) {
                let msg = format!("{}: cannot make it non-blocking: {e}", b.local);
                sh.p.out.event(Log::error("internal", msg));
                return (Exit::Internal, sh.p);
            }
        }
    }
    sh.dispatch(Event::Start);
    sh.run_loop()
}

impl Shell {
    /// The event loop, until every worker is gone; then the sweep.
    pub(super) fn run_loop(mut self) -> (Exit, Parts) {
        let sh = &mut self;
        while !sh.core.finished() {
            let wakes = match sh.wait() {
                Ok(w) => w,
                Err(e) => {
                    // Without poll the loop can neither reap nor read: kill the workers (their
                    // parent-death signal and the guard finish the job) and leave.
                    sh.dispatch(Event::Fatal(format!("poll failed: {e}")));
                    break;
                }
            };
            for wake in wakes {
                sh.on_wake(wake);
            }
            sh.check_lingering();
            let now = Instant::now();
            sh.sample(now);
            if sh.core.next_deadline().is_some_and(|t| t <= now) {
                sh.dispatch(Event::Tick);
            }
            if let Some(c) = &mut sh.p.control {
                c.expire(now);
            }
            if let Some(m) = &mut sh.p.metrics {
                m.expire(now);
            }
            let mut reached = Vec::new();
            if let Some(r) = &mut sh.router {
                r.expire(now, &mut sh.p.out);
                r.flush(&mut sh.p.out);
                reached = r.take_limits_reached();
            }
            for (pid, handed) in reached {
                let cause = super::worker::Recycle::Requests(handed);
                sh.dispatch(Event::Recycle { pid, cause });
            }
            sh.check_preflight(now);
            // Last: everything this wake-up brought is dealt with, so the state is whole.
            if let Some(binary) = sh.hand_over.take() {
                sh.hand_over(binary);
            }
        }
        sh.sweep();
        let exit = sh.core.outcome();
        if let Some(c) = &mut sh.p.control {
            sh.p.stop_clients = c.take_held();
        }
        (exit, self.p)
    }

    /// Hands one event to the core and carries out what it decides, including the events
    /// those actions answer with, before anything else happens.
    pub(super) fn dispatch(&mut self, event: Event) {
        let mut queue = VecDeque::from([event]);
        while let Some(ev) = queue.pop_front() {
            for action in self.core.handle(ev, Instant::now()) {
                if let Some(answer) = self.execute(action) {
                    queue.push_back(answer);
                }
            }
        }
        if let Some(r) = &mut self.router {
            r.set_targets(&self.core.route_targets());
        }
    }

    /// `--max-memory`: reads what the workers use once a [`SAMPLE`], for the core to recycle
    /// those past the limit. Without the option nothing is read, and no timer runs.
    fn sample(&mut self, now: Instant) {
        if self.cfg.runtime.max_memory.is_none() {
            self.sample_at = None;
            return;
        }
        if self.sample_at.is_some_and(|t| t > now) {
            return;
        }
        self.sample_at = Some(now + SAMPLE);
        let pids: Vec<Pid> = self.procs.iter().map(|w| w.pid).collect();
        let memory = crate::usage::of_workers(&pids, self.p.cgroups.as_ref())
            .into_iter()
            .map(|(pid, u)| (pid, u.memory_bytes))
            .collect();
        self.dispatch(Event::Usage { memory });
    }

    /// Sleeps in poll until an fd is ready or the next deadline; returns what woke it.
    fn wait(&mut self) -> nix::Result<Vec<Wake>> {
        self.flush_guard();
        let now = Instant::now();
        let recheck = self
            .lingering
            .iter()
            .any(|(_, killed)| *killed)
            .then(|| now + RECHECK);
        let deadline = [
            self.core.next_deadline(),
            self.router.as_ref().and_then(Router::deadline),
            self.p.control.as_ref().and_then(ControlServer::deadline),
            self.p.metrics.as_ref().and_then(MetricsServer::deadline),
            recheck,
            self.sample_at,
            self.preflight.as_ref().map(|p| p.deadline),
        ]
        .into_iter()
        .flatten()
        .min();
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(at) => {
                let ms = at.saturating_duration_since(now).as_millis();
                // Round up so the loop never wakes a millisecond early and spins.
                PollTimeout::try_from(ms.saturating_add(1).min(i32::MAX as u128) as i32)
                    .unwrap_or(PollTimeout::MAX)
            }
        };
        // Worker output first: what a worker printed before it notified or exited is shown
        // before the supervisor's line about it.
        let mut keys = Vec::new();
        let mut fds = Vec::new();
        for w in &self.procs {
            for (stream, fd) in w.fds() {
                keys.push(Wake::Pipe(w.pid, stream));
                fds.push(PollFd::new(fd, PollFlags::POLLIN));
            }
        }
        keys.extend([Wake::Signals, Wake::Notify]);
        fds.push(PollFd::new(self.p.signals.as_fd(), PollFlags::POLLIN));
        fds.push(PollFd::new(self.p.notify.as_fd(), PollFlags::POLLIN));
        if let Some(w) = &self.p.watch {
            keys.push(Wake::Watch);
            fds.push(PollFd::new(w.as_fd(), PollFlags::POLLIN));
        }
        if let Some(c) = &self.p.control {
            if c.accepting(now) {
                keys.push(Wake::Control);
                fds.push(PollFd::new(c.as_fd(), PollFlags::POLLIN));
            }
            for (id, fd, interest) in c.polled() {
                let ev = match interest {
                    Interest::Read => PollFlags::POLLIN,
                    Interest::Write => PollFlags::POLLOUT,
                };
                keys.push(Wake::Client(id, interest));
                fds.push(PollFd::new(fd, ev));
            }
        }
        if let Some(m) = &self.p.metrics {
            if m.accepting(now) {
                keys.push(Wake::Metrics);
                fds.push(PollFd::new(m.as_fd(), PollFlags::POLLIN));
            }
            for (id, fd, interest) in m.polled() {
                let ev = match interest {
                    Interest::Read => PollFlags::POLLIN,
                    Interest::Write => PollFlags::POLLOUT,
                };
                keys.push(Wake::MetricsClient(id, interest));
                fds.push(PollFd::new(fd, ev));
            }
        }
        if let Some(r) = &mut self.router {
            if self.core.accepting() && r.accepting(now) {
                for (i, b) in self.p.sockets.iter().enumerate() {
                    keys.push(Wake::Listener(i));
                    fds.push(PollFd::new(b.fd.as_fd(), PollFlags::POLLIN));
                }
            }
        }
        if let Some(g) = &self.p.guard {
            let mut ev = PollFlags::POLLIN;
            if g.wants_write() {
                ev |= PollFlags::POLLOUT;
            }
            keys.push(Wake::Guard);
            fds.push(PollFd::new(g.as_fd(), ev));
        }
        if let Some(cg) = &self.p.cgroups {
            for (pid, _) in &self.lingering {
                if let Some(fd) = cg.events(*pid) {
                    keys.push(Wake::Cgroup);
                    fds.push(PollFd::new(fd, PollFlags::POLLPRI));
                }
            }
        }
        if let Some(fd) = self.preflight.as_ref().and_then(Preflight::fd) {
            keys.push(Wake::Preflight);
            fds.push(PollFd::new(fd, PollFlags::POLLIN));
        }
        if let Some(r) = &self.router {
            for (key, fd, write) in r.polled() {
                let mut ev = PollFlags::POLLIN;
                if write {
                    ev |= PollFlags::POLLOUT;
                }
                keys.push(Wake::Route(key));
                fds.push(PollFd::new(fd, ev));
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
        Ok(keys
            .into_iter()
            .zip(ready)
            .filter(|(_, r)| *r)
            .map(|(k, _)| k)
            .collect())
    }

    fn on_wake(&mut self, wake: Wake) {
        match wake {
            Wake::Signals => self.on_signals(),
            Wake::Notify => self.on_notify(),
            Wake::Watch => {
                let first = self
                    .p
                    .watch
                    .as_ref()
                    .and_then(|w| w.drain().into_iter().next());
                if let Some(path) = first {
                    let path = path.display().to_string();
                    self.dispatch(Event::FilesChanged { path });
                }
            }
            Wake::Control => {
                let warning = self
                    .p
                    .control
                    .as_mut()
                    .and_then(|c| c.accept(Instant::now()));
                if let Some(ev) = warning {
                    self.p.out.event(ev);
                }
            }
            Wake::Client(id, Interest::Read) => {
                let req = self
                    .p
                    .control
                    .as_mut()
                    .and_then(|c| c.read(id, Instant::now()));
                if let Some(request) = req {
                    self.dispatch(Event::Control {
                        client: id,
                        request,
                    });
                }
            }
            Wake::Client(id, Interest::Write) => {
                if let Some(c) = &mut self.p.control {
                    c.write(id);
                }
            }
            Wake::Metrics => {
                let warning = self
                    .p
                    .metrics
                    .as_mut()
                    .and_then(|m| m.accept(Instant::now()));
                if let Some(ev) = warning {
                    self.p.out.event(ev);
                }
            }
            Wake::MetricsClient(id, Interest::Read) => {
                let req = self
                    .p
                    .metrics
                    .as_mut()
                    .and_then(|m| m.read(id, Instant::now()));
                if let Some(req) = req {
                    self.scrape(id, req);
                }
            }
            Wake::MetricsClient(id, Interest::Write) => {
                if let Some(m) = &mut self.p.metrics {
                    m.write(id);
                }
            }
            Wake::Pipe(pid, stream) => {
                if let Some(w) = self.procs.iter_mut().find(|w| w.pid == pid) {
                    w.read(stream, &mut self.p.out);
                }
            }
            Wake::Listener(i) => {
                if let (Some(r), Some(b)) = (&mut self.router, self.p.sockets.get(i)) {
                    r.on_listener(b.fd.as_fd(), i, &mut self.p.out);
                }
            }
            Wake::Route(RouteWake::Pending(id)) => {
                if let Some(r) = &mut self.router {
                    r.on_pending(id, &mut self.p.out);
                }
            }
            Wake::Route(RouteWake::Channel(pid, i)) => {
                if let Some(r) = &mut self.router {
                    r.on_channel(pid, i);
                }
            }
            Wake::Guard => self.on_guard(),
            Wake::Cgroup => {} // check_lingering follows every wake
            Wake::Preflight => {
                if let Some(p) = &mut self.preflight {
                    p.read();
                }
            }
        }
    }

    /// Hands queued requests to the guard, without blocking.
    pub(super) fn flush_guard(&mut self) {
        let Some(g) = &mut self.p.guard else { return };
        // A guard that is gone shows as end of file on its socket, handled there.
        g.flush();
        if g.dropped() > self.guard_dropped {
            self.guard_dropped = g.dropped();
            let msg = format!(
                "the guard (pid {}) is not reading: {} request(s) to it dropped",
                g.pid(),
                self.guard_dropped
            );
            self.p
                .out
                .event(Log::warn("guard-stalled", msg).with("dropped", self.guard_dropped));
        }
    }

    /// What the guard sent: config bytes for a reload, or end of file (it died).
    fn on_guard(&mut self) {
        let Some(g) = &mut self.p.guard else { return };
        for note in g.read() {
            match note {
                Note::Config(bytes) => self.config_arrived(bytes),
                Note::Gone => {
                    self.p.guard = None;
                    self.dispatch(Event::GuardGone);
                    if self.reading_config.take().is_some() {
                        let why = "the guard, which reads the config file, is gone".to_string();
                        self.dispatch(Event::ConfigRead(Err(why)));
                    }
                    return;
                }
            }
        }
    }

    fn on_signals(&mut self) {
        while let Ok(Some(info)) = self.p.signals.read_signal() {
            let Ok(sig) = Signal::try_from(info.ssi_signo as i32) else {
                continue;
            };
            let sig = match sig {
                Signal::SIGCHLD => {
                    self.reap();
                    continue;
                }
                // The terminal sends these too (job control: a background process reading
                // it, or writing to it with `stty tostop`); only a process's kill means
                // "scale".
                Signal::SIGTTIN | Signal::SIGTTOU if info.ssi_code == libc::SI_KERNEL => continue,
                Signal::SIGTERM => Sig::Term,
                Signal::SIGINT => Sig::Int,
                Signal::SIGQUIT => Sig::Quit,
                Signal::SIGHUP => Sig::Hup,
                Signal::SIGTTIN => Sig::Ttin,
                Signal::SIGTTOU => Sig::Ttou,
                Signal::SIGUSR2 => Sig::Usr2,
                _ => continue,
            };
            self.dispatch(Event::Signal(sig));
        }
    }
}
