//! What goes into the core ([`Event`]) and what comes out ([`Action`]), with the few types
//! they carry.

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use crate::config::{Mode, Runtime};
use crate::control::protocol::{Reply, Request};
use crate::log::Event as Log;
use crate::supervisor::worker::{ExitStatus, Recycle};

/// A control connection, as the shell numbers them.
pub type ClientId = u64;

/// The signals the supervisor acts on (the shell has already dropped the terminal's own
/// job-control TTIN/TTOU).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sig {
    Term,
    Int,
    Quit,
    Hup,
    Ttin,
    Ttou,
    /// Upgrade multinode itself in place.
    Usr2,
}

impl Sig {
    pub fn name(self) -> &'static str {
        match self {
            Sig::Term => "SIGTERM",
            Sig::Int => "SIGINT",
            Sig::Quit => "SIGQUIT",
            Sig::Hup => "SIGHUP",
            Sig::Ttin => "SIGTTIN",
            Sig::Ttou => "SIGTTOU",
            Sig::Usr2 => "SIGUSR2",
        }
    }
}

/// What happened.
#[derive(Debug)]
pub enum Event {
    /// Start every slot.
    Start,
    Signal(Sig),
    /// Answer to [`Action::Spawn`]: the worker runs.
    Spawned {
        slot: u32,
        generation: u64,
        pid: Pid,
    },
    /// Answer to [`Action::Spawn`]: it could not be started (`error` says why, with the path).
    SpawnFailed {
        slot: u32,
        generation: u64,
        error: String,
    },
    /// A worker's leader was reaped; `group_alive`: processes of the worker live on (in its
    /// process group, or in its cgroup).
    Exited {
        pid: Pid,
        status: ExitStatus,
        group_alive: bool,
    },
    /// Every process of a worker whose leader was reaped is gone (its process group, and its
    /// cgroup).
    GroupGone {
        pid: Pid,
    },
    /// An sd_notify datagram credited to the worker `pid`.
    Notify {
        pid: Pid,
        fields: Vec<(String, String)>,
    },
    /// `--max-memory`: what each worker uses now (bytes: its cgroup's, or its processes'
    /// resident memory).
    Usage {
        memory: Vec<(Pid, u64)>,
    },
    /// A worker reached a limit the shell counts (`--max-requests`: the connections handed
    /// to it).
    Recycle {
        pid: Pid,
        cause: Recycle,
    },
    /// `--watch` saw a change.
    FilesChanged {
        path: String,
    },
    /// Answer to [`Action::ReadConfig`]: `Ok(None)` when there is no config file. It may come
    /// after other events (the guard reads a root-only file).
    ConfigRead(Result<Option<Box<Reread>>, String>),
    /// Answer to [`Action::OpenSlot`].
    SlotOpened {
        slot: u32,
        result: Result<(), String>,
    },
    Control {
        client: ClientId,
        request: Request,
    },
    /// A deadline passed (see [`Core::next_deadline`]).
    Tick,
    /// The guard process died (its socket reached end of file): nothing would clean up
    /// after a killed supervisor any more, and it cannot be restarted without root.
    GuardGone,
    /// The shell cannot go on (poll failed): kill everything and exit.
    Fatal(String),
    /// Answer to [`Action::Upgrade`]: the new binary `binary` passed its checks and says it
    /// is multinode `version` and reads this state (when it does not, the answer is
    /// [`Event::UpgradeFailed`] with stage `check`).
    UpgradeChecked {
        binary: String,
        version: String,
    },
    /// This image took the state over from multinode `from` (after [`Action::HandOver`]):
    /// the upgrade is done. `at`: now, as wall-clock time (RFC 3339) for `status`.
    Upgraded {
        from: String,
        binary: String,
        took_ms: u64,
        at: String,
    },
    /// The upgrade did not happen: `stage` `check` (the new binary was refused), `exec` (the
    /// hand-over failed before the exec) or `restore` (the new image could not take the state
    /// and this one came back). `running`: which multinode runs now, for people.
    UpgradeFailed {
        stage: &'static str,
        reason: String,
        running: String,
    },
}

/// What a config file read again for a reload changes at run time.
#[derive(Debug)]
pub struct Reread {
    pub runtime: Runtime,
    /// Options that changed but need a restart, by key.
    pub needs_restart: Vec<&'static str>,
}

/// What the shell must do.
#[derive(Debug)]
pub enum Action {
    /// Start a worker for `slot` running `generation`'s program (`workers`: how many slots
    /// there are, for its environment); answer with [`Event::Spawned`] or
    /// [`Event::SpawnFailed`].
    Spawn {
        slot: u32,
        generation: u64,
        workers: u32,
        /// `--watchdog`: the worker gets WATCHDOG_USEC and WATCHDOG_PID.
        watchdog: Option<std::time::Duration>,
    },
    /// Send `signal` to the worker's whole process group.
    Signal {
        pid: Pid,
        signal: Signal,
    },
    Log(Log),
    Reply {
        client: ClientId,
        reply: Reply,
    },
    /// Keep the client's connection open after its reply, until the supervisor exits
    /// (`multinode stop`). Comes before that reply.
    Hold {
        client: ClientId,
    },
    Systemd(SdNote),
    /// Read the config file again; answer with [`Event::ConfigRead`].
    ReadConfig,
    /// A reload is complete: `generation`'s program is the service's program now.
    RolledOut {
        generation: u64,
    },
    /// `--balance reuseport`: bind the sockets of a new slot; answer with
    /// [`Event::SlotOpened`].
    OpenSlot {
        slot: u32,
    },
    /// A worker just became ready: look at what it listens on (a program that binds its own
    /// port instead of using the inherited socket gets no connection; say so).
    Inspect {
        pid: Pid,
    },
    /// `--balance reuseport`: close a removed slot's sockets.
    CloseSlot {
        slot: u32,
    },
    /// Check the new binary (`None`: the one multinode runs from) and ask it whether it reads
    /// this state; answer with [`Event::UpgradeChecked`].
    Upgrade {
        binary: Option<String>,
    },
    /// Hand the state over and execute `binary`, once the current event is dealt with. Never
    /// answered when it works (this image is gone); [`Event::UpgradeFailed`] when it does not.
    HandOver {
        binary: String,
    },
}

/// A notification to systemd (when it started multinode with `Type=notify`).
#[derive(Debug, PartialEq, Eq)]
pub enum SdNote {
    /// `READY=1` and the status line.
    Ready(String),
    Status(String),
    /// `RELOADING=1` (the shell adds `MONOTONIC_USEC`).
    Reloading,
    Stopping,
    /// `WATCHDOG=1`: multinode's own keep-alive, when systemd set `WatchdogSec=`.
    Watchdog,
}

/// What stays fixed for the supervisor's life.
#[derive(Debug, Clone)]
pub struct Fixed {
    pub name: String,
    pub mode: Mode,
    /// systemd listens for notifications.
    pub systemd: bool,
    /// The control socket's path, for `status`.
    pub control: Option<String>,
    /// The supervisor's own pid, for `status`.
    pub pid: u32,
    /// systemd's `WATCHDOG_USEC` for multinode itself: it pings at half that.
    pub sd_watchdog: Option<std::time::Duration>,
}
