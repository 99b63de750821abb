//! The shell's side of an in-place upgrade: writing everything it and the core hold into the
//! state and executing the new binary ([`Shell::hand_over`]), and, in the new image, building
//! the same shell from that state ([`load`]) and going on ([`resume`]).
//!
//! What goes over, besides the core: every listening socket and reuseport sibling, the
//! notify socket, the control socket with its clients, the metrics socket with its scrapes,
//! the guard's socket and what is queued to and from it, each worker's output pipes with the
//! unfinished line read from them, route mode's channels and every connection it holds, the
//! cgroups, the running configuration and the next generation's. What does not: the signalfd
//! and the file watcher (made again), the output writer thread (flushed first, started
//! again), rate limiters of warnings.

use std::ffi::OsString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::time::Instant;

use nix::sys::signalfd::SignalFd;
use nix::unistd::Pid;

use super::core::{Core, Event, Fixed};
use super::pipes::Pipes;
use super::shell::{Parts, Shell};
use crate::cgroup::Service;
use crate::config::{Config, Mode, NextGeneration, Program};
use crate::control::server::ControlServer;
use crate::error::Exit;
use crate::guard::Guard;
use crate::log::{Event as Log, Output};
use crate::metrics::MetricsServer;
use crate::notify::NotifyServer;
use crate::route::router::Router;
use crate::socket::Bound;
use crate::spawn::Spawner;
use crate::systemd::Notifier;
use crate::upgrade::format::{
    Bytes, ConfigState, GenerationState, LingerState, Os, State, UpgradeState,
};
use crate::upgrade::restore::Restorer;
use crate::upgrade::state::{self, FdTable, rel, runtime_state, value_name};

/// How long the hand-over waits for the log writer to write what it holds.
const LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(5);

impl Shell {
    /// An upgrade's check of the new binary: once it has answered (or not in time), the core
    /// hears how it went.
    pub(super) fn check_preflight(&mut self, now: Instant) {
        let Some(outcome) = self.preflight.as_mut().and_then(|p| p.outcome(now)) else {
            return;
        };
        let binary = self
            .preflight
            .take()
            .map(|p| p.binary.display().to_string())
            .unwrap_or_default();
        self.dispatch(match outcome {
            Ok(version) => Event::UpgradeChecked { binary, version },
            Err(reason) => Event::UpgradeFailed {
                stage: "check",
                reason,
                running: crate::upgrade::running(),
            },
        });
    }

    /// Writes the state and executes `binary`: returns only when that failed (the core then
    /// hears why), with everything as it was.
    pub(super) fn hand_over(&mut self, binary: String) {
        if !self.core.upgrading() {
            return; // called off (a stop) since it was asked for
        }
        self.flush_guard();
        // Every line so far is written before the exec; none is lost. A terminal or pipe
        // that takes none calls the upgrade off rather than lose them or wait forever.
        let err = if self.p.out.flush_within(LOG_FLUSH) {
            self.exec(&binary)
        } else {
            format!(
                "the log output took nothing for {}s (a stalled terminal or pipe); not executing it, so that no line is lost",
                LOG_FLUSH.as_secs()
            )
        };
        self.p.out.start_writer();
        let running = crate::upgrade::running();
        self.dispatch(Event::UpgradeFailed {
            stage: "exec",
            reason: format!("{binary}: {err}"),
            running,
        });
    }

    fn exec(&mut self, binary: &str) -> String {
        let Some(exe) = &self.p.self_exe else {
            return "no fd to multinode's own executable was opened at start: no way back".into();
        };
        let memfd = match state::memfd() {
            Ok(m) => m,
            Err(e) => return format!("cannot create the state's memfd: {e}"),
        };
        let now = Instant::now();
        let mut t = FdTable::default();
        let state_fd = t.add(memfd.as_fd(), "the state (this)");
        let exe_fd = t.add(
            exe.as_fd(),
            "the executable of the image that wrote the state",
        );
        let s = self.save(now, &mut t, binary, state_fd, exe_fd);
        if let Some(e) = t.error {
            return format!("cannot hand over {e}");
        }
        let bytes = match serde_json::to_vec(&s) {
            Ok(b) => b,
            Err(e) => return format!("cannot write the state: {e}"),
        };
        if let Err(e) = state::fill(&memfd, &bytes) {
            return format!("cannot write the state: {e}");
        }
        let fds: Vec<i32> = t.fds().collect();
        let err = crate::upgrade::exec(std::path::Path::new(binary), &fds, state_fd, exe_fd);
        format!("cannot execute it: {}", crate::config::io_reason(&err))
    }

    fn save(
        &self,
        now: Instant,
        t: &mut FdTable,
        binary: &str,
        state_fd: i32,
        exe_fd: i32,
    ) -> State {
        let p = &self.p;
        let generation =
            |program: &Program, env: &[(String, String)], workdir: &Option<PathBuf>| {
                GenerationState {
                    path: program.path.as_path().into(),
                    argv: program.argv.iter().map(|a| Os(a.clone())).collect(),
                    env: env.to_vec(),
                    workdir: workdir.as_deref().map(Into::into),
                }
            };
        let (log_format, color) = p.out.format();
        let format = crate::upgrade::rollback::failpoint("state-format")
            .and_then(|v| v.parse().ok())
            .unwrap_or(state::FORMAT);
        let mut s = State {
            format,
            multinode: env!("CARGO_PKG_VERSION").into(),
            pid: std::process::id(),
            written_at: crate::log::rfc3339_now(),
            upgrade: UpgradeState {
                from_binary: p.binary.as_path().into(),
                to_binary: Os(binary.into()),
                monotonic_us: crate::systemd::monotonic_usec(),
                state_fd,
                exe_fd,
            },
            config: ConfigState {
                file: p.config_file.clone().map(Bytes),
                name: self.cfg.name.clone(),
                runtime: runtime_state(&self.cfg.runtime),
                log_format: value_name(&log_format),
                color,
                generation: generation(&self.cfg.program, &self.cfg.env, &self.cfg.workdir),
            },
            next: self
                .next
                .as_ref()
                .map(|(n, _)| generation(&n.program, &n.env, &n.workdir)),
            current_generation: self.current_generation,
            overrides: p
                .overrides
                .iter()
                .map(|(k, v)| (k.clone(), Os(v.clone())))
                .collect(),
            worker_nofile: crate::spawn::worker_nofile(),
            dropped_privileges: p.guard_reads_config,
            sockets: p
                .sockets
                .iter()
                .map(|b| b.save(t, "listening socket"))
                .collect(),
            slot_sockets: p
                .slot_fds
                .iter()
                .enumerate()
                .map(|(slot, set)| {
                    set.iter()
                        .enumerate()
                        .map(|(i, fd)| {
                            t.add(fd.as_fd(), format!("reuseport socket {i} of slot {slot}"))
                        })
                        .collect()
                })
                .collect(),
            notify: p.notify.save(t),
            control: p.control.as_ref().map(|c| c.save(t, now)),
            metrics: p.metrics.as_ref().map(|m| m.save(t, now)),
            guard: p.guard.as_ref().map(|g| g.save(t)),
            reading_config: self.reading_config,
            guard_dropped: self.guard_dropped,
            cgroups: p.cgroups.as_ref().map(Service::save),
            procs: self.procs.iter().map(|w| w.save(t)).collect(),
            lingering: self
                .lingering
                .iter()
                .map(|(pid, killed)| LingerState {
                    pid: pid.as_raw(),
                    killed: *killed,
                })
                .collect(),
            router: self.router.as_ref().map(|r| r.save(t, now)),
            core: self.core.snapshot(now),
            sample_at: self.sample_at.map(|s| rel(s, now)),
            log_dropped: p.out.dropped_counts(),
            fds: Vec::new(),
        };
        // The table last: every part above added its fds to it.
        s.fds = t.entries.clone();
        s
    }
}

/// What the new image found for itself, besides the state.
pub struct Found {
    /// The binary it was executed from.
    pub binary: PathBuf,
    pub self_exe: Option<OwnedFd>,
    pub signals: SignalFd,
    pub systemd: Option<Notifier>,
    /// The program of the current generation, and that of the next one (`cfg` may have
    /// been parsed with these already; they win).
    pub spawner: Spawner,
    pub next: Option<(NextGeneration, Spawner)>,
    pub overrides: Vec<(String, OsString)>,
}

/// The shell a state describes, its fds taken from `r` (anything inconsistent calls the
/// way back). Its output writer and file watcher are not started yet: see [`resume`].
pub fn load(cfg: Config, s: State, r: &mut Restorer, found: Found) -> Shell {
    let (format, color) = (cfg.log_format, cfg.color);
    let sockets: Vec<Bound> = s.sockets.into_iter().map(|b| Bound::load(b, r)).collect();
    let slot_fds: Vec<Vec<OwnedFd>> = s
        .slot_sockets
        .into_iter()
        .map(|set| set.into_iter().map(|fd| r.take(fd)).collect())
        .collect();
    let notify = NotifyServer::load(s.notify, r);
    let control = s.control.map(|c| ControlServer::load(c, r));
    let metrics = s.metrics.map(|m| MetricsServer::load(m, r));
    let guard = s.guard.map(|g| Guard::load(g, r));
    let procs: Vec<Pipes> = s.procs.into_iter().map(|p| Pipes::load(p, r)).collect();
    let router = match (cfg.mode, s.router) {
        (Mode::Route(policy), Some(state)) => Some(Router::load(policy, &cfg, state, r)),
        (Mode::Route(_), None) | (_, Some(_)) => {
            r.fail("the state's route mode does not match the configuration's")
        }
        _ => None,
    };
    let mut out = Output::paused(format, color);
    out.set_dropped_counts(s.log_dropped);
    let fixed = Fixed {
        name: cfg.name.clone(),
        mode: cfg.mode,
        systemd: found.systemd.is_some(),
        control: control.as_ref().map(|c| c.path.display().to_string()),
        pid: std::process::id(),
        sd_watchdog: found.systemd.as_ref().and_then(|n| n.watchdog),
    };
    let core = r.ok(Core::restore(s.core, fixed, r.now));
    let parts = Parts {
        sockets,
        slot_fds,
        spawner: found.spawner,
        out,
        signals: found.signals,
        notify,
        watch: None,
        control,
        metrics,
        systemd: found.systemd,
        guard,
        guard_reads_config: s.dropped_privileges,
        cgroups: s.cgroups.map(Service::load),
        stop_clients: Vec::new(),
        overrides: found.overrides,
        binary: found.binary,
        self_exe: found.self_exe,
        config_file: s.config.file.map(|b| b.0),
    };
    Shell {
        cfg,
        p: parts,
        core,
        procs,
        lingering: s
            .lingering
            .into_iter()
            .map(|l| (Pid::from_raw(l.pid), l.killed))
            .collect(),
        router,
        current_generation: s.current_generation,
        next: found.next,
        sample_at: s.sample_at.map(|t| r.at(t)),
        reading_config: s.reading_config,
        guard_dropped: s.guard_dropped,
        preflight: None,
        hand_over: None,
    }
}

impl Shell {
    /// The threads of a shell an upgrade handed over, once the restore has committed: the
    /// output writer, and the file watcher (made again; as the dropped user now, so a path
    /// only root could watch is lost, and said so).
    pub fn start_threads(&mut self) {
        self.p.out.start_writer();
        if self.cfg.watch.is_empty() {
            return;
        }
        match crate::watch::Watch::start(&self.cfg.watch, &self.cfg.watch_ignore) {
            Ok(w) => self.p.watch = Some(w),
            Err(e) => {
                let why = e.to_string();
                self.p.out.event(
                    Log::error(
                        "watch-lost",
                        format!("--watch could not be set up again after the upgrade ({why}); restart multinode to watch again"),
                    )
                    .with("reason", why.as_str()),
                );
            }
        }
    }
}

/// Runs a shell an upgrade handed over (its writer and watcher started by the caller): the
/// core hears `first` (the upgrade's outcome), exits reaped during the exec are reaped, and
/// the loop goes on as if the process had never changed.
pub fn resume(mut sh: Shell, first: Event) -> (Exit, Parts) {
    if let Some(w) = &sh.p.watch {
        sh.p.out
            .event(Log::info("watching", w.description.as_str()));
    }
    sh.dispatch(first);
    sh.reap();
    sh.check_lingering();
    sh.run_loop()
}
