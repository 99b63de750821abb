//! `multinode serve`: the start-up sequence, in the order the security model needs.
//!
//! validate everything (config, program, user) → block signals → start the file watcher →
//! bind every socket (as root if started so) → drop privileges for good → become a subreaper
//! → the notify socket → run the event loop → remove our socket files. A failure before the loop leaves no socket file behind: bound
//! sockets are closed and their files removed while we still have the rights to.

use std::ffi::OsString;

use crate::cli::ServeArgs;
use crate::config::{Config, Mode};
use crate::error::{Error, Exit, Result};
use crate::log::{Event, Output};
use crate::notify::NotifyServer;
use crate::supervisor::{self, Parts, Supervisor};
use crate::watch::Watch;
use crate::{privilege, socket, spawn};

pub fn serve(args: ServeArgs) -> Result<Exit> {
    let cfg = Config::from_args(args)?;
    let target = privilege::resolve(cfg.user.as_deref(), cfg.group.as_deref())?;
    if let Some(t) = &target {
        privilege::check_executable_as(t, &cfg.program.path)?;
    }

    // Before any thread exists, so that every thread inherits the mask and the signals reach
    // only the signalfd. The sockets are bound right after it, so they take the lowest fds.
    let signals = supervisor::block_signals()?;
    // The watcher's inotify watches are made with our current rights; its thread inherits the
    // blocked signals and, through glibc's setuid broadcast, the privilege drop below.
    let watch = if cfg.watch.is_empty() {
        None
    } else {
        Some(Watch::start(&cfg.watch, &cfg.watch_ignore)?)
    };
    let owner = target.as_ref().map(|t| (t.uid, t.gid));
    let reuseport = cfg.mode == Mode::ReusePort;
    let sockets = socket::bind_all(&cfg.listen, cfg.backlog, cfg.socket_mode, owner, reuseport)?;
    // reuseport: every slot gets its own sockets, bound now while we may still be root.
    let mut slot_fds = Vec::new();
    if reuseport {
        for _ in 0..cfg.workers {
            let set = sockets
                .iter()
                .map(|b| socket::bind_sibling(b, &b.local))
                .collect::<Result<Vec<_>>>()?;
            slot_fds.push(set);
        }
    }
    if let Some(t) = &target {
        privilege::drop_to(t)?;
    }
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| Error::sys("becoming a child subreaper (PR_SET_CHILD_SUBREAPER)", e))?;

    let mut overrides: Vec<(&str, OsString)> = match &target {
        Some(t) => vec![
            ("USER", t.user.clone().into()),
            ("LOGNAME", t.user.clone().into()),
            ("HOME", t.home.clone().into()),
        ],
        None => Vec::new(),
    };
    let notify = NotifyServer::bind()?;
    overrides.push(("NOTIFY_SOCKET", notify.path().as_os_str().to_owned()));
    let spawner = spawn::Spawner::new(&cfg.program, &overrides)
        .map_err(|e| Error::usage(format!("worker command: {e}")))?;

    let mut out = Output::start(cfg.log_format, cfg.color);
    for (i, s) in sockets.iter().enumerate() {
        out.event(Event::info(
            "listening",
            format!("listening on {} {} (fd {})", s.name, s.local, 3 + i),
        ));
    }
    if let Some(t) = &target {
        out.event(Event::info(
            "privileges",
            format!(
                "running as user {} group {} (uid {}, gid {})",
                t.user, t.group, t.uid, t.gid
            ),
        ));
    }
    let parts = Parts {
        sockets,
        slot_fds,
        spawner,
        out,
        signals,
        notify,
        watch,
    };
    let (exit, parts) = Supervisor::new(cfg, parts).run();
    let Parts {
        mut sockets,
        mut out,
        ..
    } = parts;
    for s in &mut sockets {
        if let Some(file) = &mut s.file {
            if let Err(e) = file.remove() {
                out.event(Event::warn(
                    "socket-file",
                    format!(
                        "left {} in place: {} (the next start replaces it)",
                        file.path.display(),
                        crate::config::io_reason(&e)
                    ),
                ));
            }
        }
    }
    out.event(Event::info(
        "exit",
        format!("exiting with status {}", exit as i32),
    ));
    out.finish();
    Ok(exit)
}
