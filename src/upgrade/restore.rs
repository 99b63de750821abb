//! The new image's side: taking the state over and going on as the same supervisor.
//!
//! In order: the state is read (its header and format first), the process is checked to be
//! the one it was written for, every fd of the table is checked to be what the state says,
//! the configuration is rebuilt (the same command line, the config file's bytes from the
//! state), and every part of the supervisor with it. Until then nothing is closed, no
//! close-on-exec flag is set and no thread exists, and every failure goes back to the old
//! image ([`Restorer::fail`], `rollback.rs`). Then the commit: the fds are made close-on-exec
//! again, the ways back disarmed, the memfd and the old executable's fd closed; the output
//! writer and the file watcher start; the core hears how the upgrade went.

use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use super::format::Rel;
use super::rollback::{self, Incoming, failpoint};
use super::state::{self, Fds};
use crate::cli::{LogFormat, ServeArgs};
use crate::config::{Config, NextGeneration, Program};
use crate::error::{Exit, Result};
use crate::supervisor::{self, Found};

/// The reader's tools: the fd table, and the moment the state's times are relative to.
pub struct Restorer {
    fds: Fds,
    /// The hand-over, on this image's clock.
    pub now: Instant,
}

impl Restorer {
    /// Fd `n` of the table, owned from now on; anything else goes back to the old image.
    pub fn take(&mut self, n: i32) -> OwnedFd {
        match self.fds.take(n) {
            Ok(fd) => fd,
            Err(e) => self.fail(e),
        }
    }

    pub fn ok<T>(&self, r: std::result::Result<T, String>) -> T {
        r.unwrap_or_else(|e| self.fail(e))
    }

    pub fn fail(&self, reason: impl Into<String>) -> ! {
        rollback::fail(reason)
    }

    pub fn at(&self, r: Rel) -> Instant {
        state::at(r, self.now)
    }
}

/// `multinode serve` in a process an upgrade (or a failed one) handed over to.
pub fn resume(args: ServeArgs, explicit: Vec<String>, inc: &Incoming) -> Result<Exit> {
    let format = failpoint("restore-format").and_then(|v| v.parse().ok());
    let s = state::read(inc.state_fd, format).unwrap_or_else(|e| rollback::fail(e));
    if s.pid != std::process::id() {
        rollback::fail(format!(
            "the state was written for pid {}, not {}",
            s.pid,
            std::process::id()
        ));
    }
    let fds = Fds::check(&s.fds).unwrap_or_else(|e| rollback::fail(e));
    // The state's times are relative to the hand-over; the exec took a moment since.
    let elapsed = Duration::from_micros(
        crate::systemd::monotonic_usec().saturating_sub(s.upgrade.monotonic_us),
    );
    let now = Instant::now();
    let mut r = Restorer {
        fds,
        now: now.checked_sub(elapsed).unwrap_or(now),
    };
    let memfd = r.take(s.upgrade.state_fd);
    let old_exe = r.take(s.upgrade.exe_fd);

    let file = s.config.file.as_ref().map(|b| b.0.as_slice());
    let mut cfg = r.ok(Config::restored(args, explicit, file).map_err(|e| e.to_string()));
    let current = &s.config.generation;
    cfg.name = s.config.name.clone();
    cfg.runtime = r.ok(state::runtime_from(&s.config.runtime));
    cfg.log_format = r.ok(state::value_from::<LogFormat>(&s.config.log_format));
    cfg.color = s.config.color;
    cfg.program = Program {
        path: current.path.path(),
        argv: current.argv.iter().map(|a| a.0.clone()).collect(),
    };
    cfg.env = current.env.clone();
    cfg.workdir = current.workdir.as_ref().map(|w| w.path());
    let overrides: Vec<(String, std::ffi::OsString)> = s
        .overrides
        .iter()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    let spawner = r.ok(crate::serve::spawner(&cfg, &overrides).map_err(|e| e.to_string()));
    let next = s.next.as_ref().map(|g| {
        let next = NextGeneration {
            program: Program {
                path: g.path.path(),
                argv: g.argv.iter().map(|a| a.0.clone()).collect(),
            },
            env: g.env.clone(),
            workdir: g.workdir.as_ref().map(|w| w.path()),
        };
        let mut env = overrides.clone();
        env.extend(next.env.iter().map(|(k, v)| (k.clone(), v.into())));
        let spawner = crate::spawn::Spawner::new(&next.program, &env, next.workdir.as_deref());
        (
            next,
            r.ok(spawner.map_err(|e| format!("the next generation's command: {e}"))),
        )
    });
    if let Some(n) = s.worker_nofile {
        crate::spawn::set_worker_nofile(n);
    }
    let signals = r.ok(supervisor::block_signals().map_err(|e| e.to_string()));
    let _ = nix::sys::prctl::set_child_subreaper(true);
    let forward = inc.rollback.is_none();
    let binary = if forward {
        s.upgrade.to_binary.path()
    } else {
        s.upgrade.from_binary.path()
    };
    let found = Found {
        binary: binary.clone(),
        self_exe: super::open_self_exe(),
        signals,
        systemd: crate::systemd::Notifier::from_env(),
        spawner,
        next,
        overrides,
    };
    let from = s.multinode.clone();
    let handed_over_us = s.upgrade.monotonic_us;
    let mut sh = supervisor::load(cfg, s, &mut r, found);

    // Debug builds: a new image that fails here, with everything taken, must leave the old
    // one all it needs (see README, "Upgrading multinode").
    if failpoint("restore-panic").is_some() {
        panic!("failpoint restore-panic");
    }
    if failpoint("restore-segv").is_some() {
        // SAFETY: raising a signal; the handler `rollback::arm` installed takes it.
        unsafe { libc::raise(libc::SIGSEGV) };
    }
    if failpoint("restore-exit").is_some() {
        std::process::exit(3);
    }

    // Commit: from here on this image owns everything.
    for fd in r.fds.all() {
        state::set_cloexec(fd, true);
    }
    let untaken = r.fds.untaken();
    rollback::commit();
    drop(memfd);
    drop(old_exe);
    for fd in untaken {
        // SAFETY: listed in the table, open, and taken by nothing: ours to close.
        drop(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
    }
    let took_ms = crate::systemd::monotonic_usec().saturating_sub(handed_over_us) / 1000;
    sh.start_threads();
    let first = match &inc.rollback {
        None => supervisor::Event::Upgraded {
            from,
            binary: binary.display().to_string(),
            took_ms,
            at: crate::log::rfc3339_now(),
        },
        Some(reason) => supervisor::Event::UpgradeFailed {
            stage: "restore",
            reason: format!("the new image could not take over: {reason}"),
            running: super::running(),
        },
    };
    let (exit, parts) = supervisor::resume(sh, first);
    Ok(crate::serve::finish(exit, parts))
}
