//! `multinode serve` and `multinode check`: the start-up sequence, in the order the security
//! model needs.
//!
//! validate everything (config, program, user) → block signals → start the file watcher →
//! take systemd's sockets or bind every socket (as root if started so) → bind the control
//! socket → drop privileges for good → become a subreaper → the notify socket → run the event
//! loop → remove the socket files we still may. A failure before the loop leaves no socket
//! file behind: bound sockets are closed and their files removed while we still have the
//! rights to.

use std::ffi::OsString;

use crate::cli::ServeArgs;
use crate::config::{Config, Mode};
use crate::control::{self, server::ControlServer};
use crate::error::{Error, Exit, Result};
use crate::guard::Guard;
use crate::log::{Event, Output};
use crate::notify::NotifyServer;
use crate::privilege::{self, Target};
use crate::socket::file::{FileId, SocketFile};
use crate::supervisor::{self, Parts};
use crate::systemd::{self, Notifier};
use crate::watch::Watch;
use crate::{socket, spawn};

/// Everything `serve` builds before binding or starting anything. `check` runs exactly this,
/// so that it refuses what `serve` would refuse, with the same message and exit code.
fn prepare(args: ServeArgs, explicit: Vec<String>) -> Result<Prepared> {
    let cfg = Config::from_args(args, explicit)?;
    let target = privilege::resolve(cfg.user.as_deref(), cfg.group.as_deref())?;
    if let Some(t) = &target {
        privilege::check_executable_as(t, &cfg.program.path)?;
    }
    crate::watch::check(&cfg.watch)?;
    let overrides: Vec<(String, OsString)> = match &target {
        Some(t) => vec![
            ("USER".into(), t.user.clone().into()),
            ("LOGNAME".into(), t.user.clone().into()),
            ("HOME".into(), t.home.clone().into()),
        ],
        None => Vec::new(),
    };
    // The worker command as execve will get it (no NUL in an argument or a variable); serve
    // builds it again once NOTIFY_SOCKET is known.
    spawner(&cfg, &overrides)?;
    Ok(Prepared {
        cfg,
        target,
        overrides,
    })
}

/// What [`prepare`] gives `serve`.
struct Prepared {
    cfg: Config,
    target: Option<Target>,
    /// Environment every worker gets besides the configured one (USER, LOGNAME, HOME).
    overrides: Vec<(String, OsString)>,
}

/// The spawner of the configured worker command, with `overrides` under the configured `env`.
fn spawner(cfg: &Config, overrides: &[(String, OsString)]) -> Result<spawn::Spawner> {
    let mut env = overrides.to_vec();
    env.extend(cfg.env.iter().map(|(k, v)| (k.clone(), v.into())));
    spawn::Spawner::new(&cfg.program, &env, cfg.workdir.as_deref())
        .map_err(|e| Error::usage(format!("worker command: {e}")))
}

/// `multinode check`: validates the configuration and says what `serve` would run.
pub fn check(args: ServeArgs, explicit: Vec<String>) -> Result<Exit> {
    let Prepared { cfg, target, .. } = prepare(args, explicit)?;
    if cfg.control.is_none() {
        control::checked_base(true)?;
    }
    let listen: Vec<&str> = cfg.listen.iter().map(|l| l.text.as_str()).collect();
    let user = target.as_ref().map_or_else(
        || "the current user".to_string(),
        |t| format!("user {}", t.user),
    );
    println!(
        "configuration ok: {} worker(s) of {} on {} as {user}; control socket {}",
        cfg.runtime.workers,
        cfg.program.path.display(),
        listen.join(", "),
        cfg.control
            .clone()
            .unwrap_or_else(|| control::default_path(&cfg.name))
            .display()
    );
    Ok(Exit::Ok)
}

pub fn serve(args: ServeArgs, explicit: Vec<String>) -> Result<Exit> {
    let listen_given = explicit.iter().any(|e| e == "listen");
    let Prepared {
        cfg,
        target,
        mut overrides,
    } = prepare(args, explicit)?;
    let inherited = systemd::inherited(cfg.backlog)?;
    if inherited.is_some() && listen_given {
        return Err(Error::usage(
            "--listen given, but systemd passed sockets (LISTEN_FDS): configure them in the .socket unit and leave out --listen",
        ));
    }
    let systemd = Notifier::from_env();
    if matches!(cfg.mode, Mode::Route(_)) {
        spawn::raise_nofile_limit().map_err(|e| Error::sys("raising RLIMIT_NOFILE", e))?;
    }

    // Before any thread exists, so that every thread inherits the mask and the signals reach
    // only the signalfd.
    let signals = supervisor::block_signals()?;
    // Still one thread: the only moment the guard can be forked without an exec.
    let guard = Guard::start(target.as_ref())?;
    // The watcher's inotify watches are made with our current rights; its thread inherits the
    // blocked signals and, through glibc's setuid broadcast, the privilege drop below.
    let watch = if cfg.watch.is_empty() {
        None
    } else {
        Some(Watch::start(&cfg.watch, &cfg.watch_ignore)?)
    };
    let owner = target.as_ref().map(|t| (t.uid, t.gid));
    let reuseport = cfg.mode == Mode::ReusePort;
    let from_systemd = inherited.is_some();
    let sockets = match inherited {
        Some(s) => s,
        None => socket::bind_all(&cfg.listen, cfg.backlog, cfg.socket_mode, owner, reuseport)?,
    };
    // reuseport: every slot gets its own sockets, bound now while we may still be root. Slot 0
    // takes the ones bound above: the kernel spreads connections over every socket of the
    // group, so none may be left without a worker accepting on it.
    let mut slot_fds = Vec::new();
    if reuseport {
        for slot in 0..cfg.runtime.workers {
            let set = sockets
                .iter()
                .map(|b| match slot {
                    0 => {
                        b.fd.try_clone()
                            .map_err(|e| Error::sys("duplicating a socket", e))
                    }
                    _ => socket::bind_sibling(b, &b.local, owner.map(|(uid, _)| uid)),
                })
                .collect::<Result<Vec<_>>>()?;
            slot_fds.push(set);
        }
    }
    let control = ControlServer::bind(cfg.control.as_deref(), &cfg.name)?;
    // The socket files this run made, each with its inode: what must be removed at exit. The
    // dropped supervisor removes those it still may (at the end below); the others (the
    // control socket in root's /run/multinode/NAME, a socket in a directory only root can
    // write) need root: this list is what a root helper that outlives us is to be handed.
    let created: Vec<FileId> = sockets
        .iter()
        .filter_map(|s| s.file.as_ref())
        .chain([control.file()])
        .map(SocketFile::id)
        .collect();
    if !cfg.allow_new_privileges {
        privilege::clear_bounding_set()?;
    }
    if let Some(t) = &target {
        privilege::drop_to(t)?;
    }
    if !cfg.allow_new_privileges {
        privilege::no_new_privileges()?;
    }
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| Error::sys("becoming a child subreaper (PR_SET_CHILD_SUBREAPER)", e))?;

    let notify = NotifyServer::bind()?;
    overrides.push(("NOTIFY_SOCKET".into(), notify.path().as_os_str().to_owned()));
    let spawner = spawner(&cfg, &overrides)?;

    let mut out = Output::start(cfg.log_format, cfg.color);
    for (i, s) in sockets.iter().enumerate() {
        let origin = if from_systemd { ", from systemd" } else { "" };
        out.event(
            Event::info(
                "listening",
                format!("listening on {} {} (fd {}{origin})", s.name, s.local, 3 + i),
            )
            .with("name", s.name.as_str())
            .with("addr", s.local.as_str())
            .with("fd", 3 + i)
            .with("systemd", from_systemd),
        );
    }
    if let Some(t) = &target {
        out.event(
            Event::info(
                "privileges",
                format!(
                    "running as user {} group {} (uid {}, gid {})",
                    t.user, t.group, t.uid, t.gid
                ),
            )
            .with("user", t.user.as_str())
            .with("group", t.group.as_str())
            .with("uid", t.uid.as_raw())
            .with("gid", t.gid.as_raw()),
        );
    }
    out.event(
        Event::info(
            "control",
            format!("control socket {}", control.path.display()),
        )
        .with("path", control.path.display().to_string()),
    );
    out.event(
        Event::info(
            "notify",
            format!("notify socket {}", notify.path().display()),
        )
        .with("path", notify.path().display().to_string()),
    );
    let parts = Parts {
        sockets,
        slot_fds,
        spawner,
        out,
        signals,
        notify,
        watch,
        control: Some(control),
        systemd,
        overrides,
        guard: Some(guard),
        stop_clients: Vec::new(),
    };
    let (exit, parts) = supervisor::run(cfg, parts);
    let Parts {
        mut sockets,
        mut out,
        mut control,
        ..
    } = parts;
    for s in &mut sockets {
        if let Some(file) = &mut s.file {
            let _ = file.remove();
        }
    }
    if let Some(c) = &mut control {
        let _ = c.remove();
    }
    for id in created.iter().filter(|id| id.present()) {
        let shown = id.path.display();
        out.event(
            Event::info(
                "socket-file",
                format!(
                    "left {shown} in place: uid {} may not remove it (the next start replaces it)",
                    nix::unistd::Uid::effective()
                ),
            )
            .with("path", shown.to_string()),
        );
    }
    out.event(
        Event::info("exit", format!("exiting with status {}", exit as i32))
            .with("status", exit as i32),
    );
    out.finish();
    Ok(exit)
}
