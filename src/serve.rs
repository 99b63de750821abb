//! `multinode serve` and `multinode check`: the start-up sequence, in the order the security
//! model needs.
//!
//! validate everything (config, program, user) → block signals → fork the guard → the
//! service's cgroup (multinode moves into it) → start the file watcher → take systemd's
//! sockets or bind every socket (as root if started so) → bind `--metrics` → bind the control
//! socket → register
//! with the guard what it removes at the end, and seal that → drop privileges for good →
//! empty the capability bounding set → drop privileges for good → no_new_privs → become a
//! subreaper → the notify socket → run the event loop → the guard cleans up (socket files, the
//! control directory, the cgroup) and exits. A failure before the loop leaves no
//! socket file behind: bound sockets are closed and their files removed while we still have
//! the rights to.
//!
//! A process an in-place upgrade executed (`MULTINODE_UPGRADE_STATE` set) does none of this:
//! it takes everything over from the state (`upgrade/restore.rs`), then ends the same way
//! ([`finish`]).

use std::ffi::OsString;
use std::time::Duration;

use nix::unistd::{Gid, Uid};

use crate::cgroup::{self, Service};
use crate::cli::{CgroupMode, ServeArgs};
use crate::config::{Config, Mode};
use crate::control::{self, server::ControlServer};
use crate::error::{Error, Exit, Result};
use crate::guard::{Finish, Guard};
use crate::log::{Event, Output};
use crate::metrics::MetricsServer;
use crate::notify::NotifyServer;
use crate::privilege::{self, Target};
use crate::socket::file::{FileId, SocketFile};
use crate::supervisor::{self, Parts};
use crate::systemd::{self, Notifier};
use crate::watch::Watch;
use crate::{socket, spawn};

/// How long multinode waits at exit for the guard to clean up; a guard that takes longer
/// (stopped, say) finishes on its own.
const GUARD_WAIT: Duration = Duration::from_secs(3);

/// `--cgroup`: the service's cgroup, or why there is none. `required` and none: exit 4.
fn service_cgroup(
    mode: CgroupMode,
    name: &str,
    owner: Option<(Uid, Gid)>,
) -> Result<std::result::Result<Service, String>> {
    match mode {
        CgroupMode::Off => Ok(Err("--cgroup off".into())),
        CgroupMode::Auto => Ok(cgroup::setup(name, owner)),
        CgroupMode::Required => cgroup::setup(name, owner).map(Ok).map_err(|why| {
            Error::privilege(format!(
                "--cgroup required: {why}; give multinode a writable cgroup v2 group (as root, or under systemd with Delegate=yes), or use --cgroup auto"
            ))
        }),
    }
}

/// Everything `serve` builds before binding or starting anything. `check` runs exactly this,
/// so that it refuses what `serve` would refuse, with the same message and exit code.
fn prepare(args: ServeArgs, explicit: Vec<String>) -> Result<Prepared> {
    // Read once: the bytes the settings come from are what an upgrade hands over.
    let config_file = match &args.config {
        Some(path) => Some(crate::config_file::read_for_start(path)?),
        None => None,
    };
    let cfg = match &config_file {
        Some(bytes) => Config::from_args_and_file(args, explicit, bytes)?,
        None => Config::from_args(args, explicit)?,
    };
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
        config_file,
    })
}

/// What [`prepare`] gives `serve`.
struct Prepared {
    cfg: Config,
    target: Option<Target>,
    /// Environment every worker gets besides the configured one (USER, LOGNAME, HOME).
    overrides: Vec<(String, OsString)>,
    /// `--config`'s bytes.
    config_file: Option<Vec<u8>>,
}

/// The spawner of the configured worker command, with `overrides` under the configured `env`.
pub(crate) fn spawner(cfg: &Config, overrides: &[(String, OsString)]) -> Result<spawn::Spawner> {
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
    if let Some(incoming) = crate::upgrade::rollback::incoming() {
        // This process was multinode already: an upgrade hands it over.
        return crate::upgrade::restore::resume(args, explicit, incoming);
    }
    let listen_given = explicit.iter().any(|e| e == "listen");
    let Prepared {
        cfg,
        target,
        mut overrides,
        config_file,
    } = prepare(args, explicit)?;
    // What an upgrade executes, and the way back from one that fails (see upgrade/).
    let binary = crate::upgrade::start_path()
        .or_else(|| std::fs::read_link("/proc/self/exe").ok())
        .unwrap_or_default();
    let self_exe = crate::upgrade::open_self_exe();
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
    // Still one thread, and still with the rights we started with: the only moment the guard
    // can be forked without an exec, and keep them.
    let mut guard = Guard::start(
        cfg.source.args.config.as_deref(),
        target.as_ref().map(|t| t.uid),
    )?;
    let guard_uid = Uid::current();
    let owner = target.as_ref().map(|t| (t.uid, t.gid));
    // Still one thread: multinode moves itself into the service's cgroup whole.
    let cgroups = service_cgroup(cfg.cgroup, &cfg.name, owner)?;
    if let Ok(cg) = &cgroups {
        guard.remove_cgroup(&cg.path);
    }
    // The watcher's inotify watches are made with our current rights; its thread inherits the
    // blocked signals and, through glibc's setuid broadcast, the privilege drop below.
    let watch = if cfg.watch.is_empty() {
        None
    } else {
        Some(Watch::start(&cfg.watch, &cfg.watch_ignore)?)
    };
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
    // Served by the loop itself; bound now, as the listening sockets are (a port below 1024
    // needs root; a socket file is made and owned like theirs).
    let metrics = match &cfg.metrics {
        Some(spec) => Some(MetricsServer::bind(spec, cfg.socket_mode, owner)?),
        None => None,
    };
    let control_path = cfg
        .control
        .clone()
        .unwrap_or_else(|| control::default_path(&cfg.name));
    let new_dir = control_path
        .parent()
        .filter(|d| !d.exists())
        .map(|d| d.to_path_buf());
    let control = ControlServer::bind(cfg.control.as_deref(), &cfg.name)?;
    // The socket files this run made, each with its inode: what must be removed at exit. The
    // root guard removes them at the end (the dropped user may not be able to: the control
    // socket is root's, in root's /run/multinode/NAME).
    let created: Vec<FileId> = sockets
        .iter()
        .filter_map(|s| s.file.as_ref())
        .chain(metrics.as_ref().and_then(MetricsServer::file))
        .chain([control.file()])
        .map(SocketFile::id)
        .collect();
    for id in &created {
        guard.remove_socket_file(&id.path);
    }
    if let Some(dir) = new_dir {
        guard.remove_dir(&dir);
    }
    guard.seal()?;
    if !cfg.allow_new_privileges {
        privilege::clear_bounding_set()?;
    }
    if let Some(t) = &target {
        privilege::drop_to(t)?;
    }
    if !cfg.allow_new_privileges {
        privilege::no_new_privileges()?;
    }
    privilege::not_dumpable()?;
    nix::sys::prctl::set_child_subreaper(true)
        .map_err(|e| Error::sys("becoming a child subreaper (PR_SET_CHILD_SUBREAPER)", e))?;

    let notify = NotifyServer::bind()?;
    overrides.push(("NOTIFY_SOCKET".into(), notify.path().as_os_str().to_owned()));
    let spawner = spawner(&cfg, &overrides)?;

    let mut out = Output::start(cfg.log_format, cfg.color);
    out.event(
        Event::info(
            "start",
            format!(
                "multinode {} (pid {}): {} worker(s) of {} as {}",
                env!("CARGO_PKG_VERSION"),
                std::process::id(),
                cfg.runtime.workers,
                cfg.program.path.display(),
                cfg.name
            ),
        )
        .with("version", env!("CARGO_PKG_VERSION"))
        .with("pid", std::process::id())
        .with("name", cfg.name.as_str())
        .with("workers", cfg.runtime.workers)
        .with("program", cfg.program.path.display().to_string()),
    );
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
            "guard",
            format!(
                "guard process {} (uid {guard_uid}) stops what is left of the workers if multinode is killed",
                guard.pid(),
            ),
        )
        .with("pid", guard.pid().as_raw())
        .with("uid", guard_uid.as_raw()),
    );
    if let Some(w) = &watch {
        out.event(Event::info("watching", w.description.as_str()));
    }
    out.event(match &cgroups {
        Ok(cg) => Event::info(
            "cgroup",
            format!(
                "each worker in a cgroup of its own, under {}",
                cg.path.display()
            ),
        )
        .with("mode", "cgroup")
        .with("path", cg.path.display().to_string()),
        Err(why) => Event::info(
            "cgroup",
            format!("no cgroups ({why}): workers are contained by process groups"),
        )
        .with("mode", "process-group")
        .with("reason", why.as_str()),
    });
    if let Some(m) = &metrics {
        out.event(
            Event::info(
                "metrics",
                format!("metrics and health on {} (/metrics, /healthz)", m.local()),
            )
            .with("addr", m.local()),
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
        metrics,
        systemd,
        overrides,
        guard: Some(guard),
        guard_reads_config: target.is_some(),
        cgroups: cgroups.ok(),
        stop_clients: Vec::new(),
        binary,
        self_exe,
        config_file,
    };
    let (exit, parts) = supervisor::run(cfg, parts);
    Ok(finish(exit, parts))
}

/// After the loop: the guard cleans up (or what the dropped user may is removed here), the
/// files left behind are named, the exit status is said, and `multinode stop` callers hear
/// it last.
pub(crate) fn finish(exit: Exit, parts: Parts) -> Exit {
    // The socket files this run made, each with its inode.
    let created: Vec<FileId> = parts
        .sockets
        .iter()
        .filter_map(|s| s.file.as_ref())
        .chain(parts.metrics.as_ref().and_then(MetricsServer::file))
        .chain(parts.control.as_ref().map(ControlServer::file))
        .map(SocketFile::id)
        .collect();
    let Parts {
        mut sockets,
        mut out,
        mut control,
        mut metrics,
        guard,
        cgroups,
        stop_clients,
        ..
    } = parts;
    let finish = guard.map_or(Finish::Gone, |g| g.finish(GUARD_WAIT));
    if finish == Finish::Busy {
        out.event(Event::warn(
            "guard-busy",
            "the guard has not finished cleaning up; it goes on after multinode exits",
        ));
    }
    if let Some(cg) = cgroups.filter(|_| finish == Finish::Gone) {
        let path = cg.path.display().to_string();
        out.event(
            Event::warn(
                "cgroup-left",
                format!("left {path} in place: without the guard, multinode can neither leave its own cgroup nor remove it"),
            )
            .with("path", path),
        );
    }
    if finish != Finish::Done {
        // Without the guard's help, what the dropped user still may.
        for s in &mut sockets {
            if let Some(file) = &mut s.file {
                let _ = file.remove();
            }
        }
        if let Some(c) = &mut control {
            let _ = c.remove();
        }
        if let Some(m) = &mut metrics {
            m.remove_file();
        }
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
    // Last: `multinode stop` callers learn how multinode ended, then see end of file.
    let line = crate::control::protocol::Reply::Exited {
        status: exit.code(),
    };
    for mut c in stop_clients {
        let _ = c.set_write_timeout(Some(Duration::from_secs(1)));
        if let Ok(mut text) = serde_json::to_vec(&line) {
            text.push(b'\n');
            let _ = std::io::Write::write_all(&mut c, &text);
        }
    }
    exit
}
