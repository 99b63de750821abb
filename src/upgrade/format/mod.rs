//! The state format: what one multinode image hands the next across `execve`, as JSON in a
//! sealed memfd. Every type here is part of the format; a change to any of them (a field
//! added, renamed or given another meaning) is a new [`FORMAT`](super::state::FORMAT) number.
//! Every struct refuses fields it does not know, so an image never half-reads a state.
//!
//! Conventions:
//! - fds are numbers in the writer's fd table, each listed once in [`State::fds`] with what it
//!   is (a socket, a pipe, ...) and its device and inode, so the reader checks that every fd
//!   is still what the state says before it adopts any;
//! - times are [`Rel`]: nanoseconds relative to the moment of the hand-over (negative in the
//!   past), never raw clock readings;
//! - durations are nanoseconds (`_ns`); byte strings that need not be text are [`Bytes`]
//!   (lowercase hex), paths and arguments [`Os`] (a string, or `{"hex": ...}` when not UTF-8);
//! - signals are names (`SIGTERM`), enums are kebab-case strings.

mod bytes;
mod core;

use serde::{Deserialize, Serialize};

pub use self::bytes::{Bytes, Os};
pub use self::core::*;

/// A time relative to the hand-over, in nanoseconds: `-1_500_000` was 1.5 ms before it.
pub type Rel = i64;

/// The whole state: the header (`format`, `multinode`), then the supervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The format number ([`super::state::FORMAT`] of the writer).
    pub format: u32,
    /// The version of the multinode that wrote it.
    pub multinode: String,
    /// The supervisor's pid: a reader with another pid is not the process it was written for.
    pub pid: u32,
    /// When it was written (RFC 3339, UTC), for people.
    pub written_at: String,
    pub upgrade: UpgradeState,
    /// Every fd handed over, each once.
    pub fds: Vec<FdEntry>,
    pub config: ConfigState,
    /// The program of a reload's new generation, until the roll is complete.
    pub next: Option<GenerationState>,
    /// The generation the configured program runs (the service's, outside a reload).
    pub current_generation: u64,
    /// Environment every worker gets on top of the supervisor's (USER, HOME, NOTIFY_SOCKET).
    pub overrides: Vec<(String, Os)>,
    /// The open-files limit workers get back (route mode raises the supervisor's), `[cur, max]`.
    pub worker_nofile: Option<[u64; 2]>,
    /// multinode dropped privileges at start: the guard reads the config file for it.
    pub dropped_privileges: bool,
    pub sockets: Vec<BoundState>,
    /// `--balance reuseport`: each slot's own sockets, in `sockets` order.
    pub slot_sockets: Vec<Vec<i32>>,
    pub notify: NotifyState,
    pub control: Option<ControlState>,
    pub metrics: Option<MetricsState>,
    pub guard: Option<GuardState>,
    /// A config read asked of the guard and not answered; `true`: asked again meanwhile.
    pub reading_config: Option<bool>,
    /// Requests the guard did not take in time, as last reported.
    pub guard_dropped: u64,
    pub cgroups: Option<CgroupState>,
    /// The output pipes of every worker process that exists.
    pub procs: Vec<PipesState>,
    /// Workers whose leader was reaped while their group lives on.
    pub lingering: Vec<LingerState>,
    pub router: Option<RouterState>,
    pub core: CoreState,
    /// `--max-memory`: when the workers' memory is read next.
    pub sample_at: Option<Rel>,
    /// Output lines dropped since the start (for `/metrics`), and since the last note.
    pub log_dropped: [u64; 2],
}

/// The hand-over itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpgradeState {
    /// The binary the writer runs from (its start path, or the last `--binary`).
    pub from_binary: Os,
    /// The binary it executes.
    pub to_binary: Os,
    /// CLOCK_MONOTONIC at the hand-over, in microseconds (for `took_ms`).
    pub monotonic_us: u64,
    /// The memfd this state is in.
    pub state_fd: i32,
    /// The writer's executable (`O_PATH`), which a reader that cannot restore executes again.
    pub exe_fd: i32,
}

/// One fd handed over: its number, what it is for (free text, for people), its kind as
/// `fstat` says it (`socket`, `fifo`, `file`, `dir`, `char`), its device and inode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdEntry {
    pub fd: i32,
    pub what: String,
    pub kind: String,
    pub dev: u64,
    pub ino: u64,
}

/// The running configuration. The reader parses its own command line again (the same argv)
/// with `file` as the config file's contents, then takes the rest from here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigState {
    /// `--config`: the bytes the running settings were built from at start (the file itself
    /// is not read again: it may have changed, or be readable by root only).
    pub file: Option<Bytes>,
    pub name: String,
    /// The settings a reload last applied (the core's own copy is in [`CoreState::rt`]).
    pub runtime: RuntimeState,
    /// `text` or `json`.
    pub log_format: String,
    pub color: bool,
    /// The service's program: the current generation's.
    pub generation: GenerationState,
}

/// A generation's program, environment and working directory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerationState {
    pub path: Os,
    pub argv: Vec<Os>,
    pub env: Vec<(String, String)>,
    pub workdir: Option<Os>,
}

/// The settings the core decides with (`config::Runtime`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeState {
    pub workers: u32,
    /// `always`, `on-failure`, `never`.
    pub restart: String,
    pub backoff_max_ns: u64,
    pub min_uptime_ns: u64,
    /// `--max-restarts` and `--restart-window`.
    pub max_restarts: Option<(u32, u64)>,
    pub stop_signal: String,
    pub grace_ns: u64,
    /// `--ready delay:` in nanoseconds; `None`: `notify`.
    pub ready_delay_ns: Option<u64>,
    pub ready_timeout_ns: u64,
    pub reload_parallel: u32,
    pub watch_debounce_ns: u64,
    pub watchdog_ns: Option<u64>,
    pub watchdog_signal: String,
    pub max_memory: Option<u64>,
    /// `--max-requests` and its jitter.
    pub max_requests: Option<(u64, u64)>,
    pub stop_delay_ns: u64,
}

/// A listening socket.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BoundState {
    pub name: String,
    pub local: String,
    pub fd: i32,
    pub file: Option<SocketFileState>,
    /// TCP: the bound address and IPV6_V6ONLY.
    pub tcp: Option<(String, bool)>,
    pub backlog: u32,
}

/// A Unix socket file this run made: removed at exit while it is still that inode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SocketFileState {
    pub path: Os,
    pub dev: u64,
    pub ino: u64,
    /// Its directory, held open (`O_PATH`).
    pub dir_fd: i32,
    pub name: Os,
    pub present: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotifyState {
    pub fd: i32,
    pub dir: Os,
    pub path: Os,
}

/// The control socket and its clients (a client waiting for an answer keeps its id: the core's
/// waiters name it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlState {
    pub fd: i32,
    pub path: Os,
    pub file: SocketFileState,
    pub next_id: u64,
    /// The real uid that started multinode: it may act, with root.
    pub starter: u32,
    pub paused_until: Option<Rel>,
    pub clients: Vec<ControlClientState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlClientState {
    pub id: u64,
    pub fd: i32,
    /// The request read so far, or the reply being written.
    pub buf: Bytes,
    pub sent: usize,
    pub phase: ClientPhase,
    pub hold: bool,
    pub uid: Option<u32>,
    pub may_act: bool,
}

/// Where a client connection is.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ClientPhase {
    Reading { until: Rel },
    Waiting,
    Writing { until: Rel },
    Held,
}

/// `--metrics`: its socket and the scrapes in progress.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsState {
    pub listener: BoundState,
    pub next_id: u64,
    pub paused_until: Option<Rel>,
    pub clients: Vec<MetricsClientState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsClientState {
    pub id: u64,
    pub fd: i32,
    pub buf: Bytes,
    pub sent: usize,
    /// `reading` or `writing` only.
    pub phase: ClientPhase,
}

/// The root guard: the same process, the same socket (the guard is never restarted).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GuardState {
    pub pid: i32,
    pub fd: i32,
    /// Requests queued and not written yet.
    pub out: Bytes,
    /// Bytes of a reply read and not yet a whole frame.
    pub input: Bytes,
    pub dropped: u64,
    pub exited: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CgroupState {
    pub path: Os,
    pub next: u64,
    /// Each worker's group; its `cgroup.events` is opened again by the reader.
    pub leaves: Vec<LeafState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeafState {
    pub pid: i32,
    pub path: Os,
    pub killed: bool,
}

/// One worker's output pipes, with the unfinished last line read from each.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipesState {
    pub pid: i32,
    pub slot: u32,
    pub pipes: Vec<PipeState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipeState {
    pub fd: i32,
    /// `stdout` or `stderr`.
    pub stream: String,
    pub partial: Bytes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LingerState {
    pub pid: i32,
    pub killed: bool,
}

/// Route mode: every connection multinode holds, and its counters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouterState {
    pub seq: u64,
    pub turn: usize,
    pub next_id: u64,
    /// Refused since the start: full, untrusted, invalid, timeout, evicted.
    pub refused: [u64; 5],
    pub handed_by_slot: Vec<u64>,
    pub paused_until: Option<Rel>,
    /// Connections waiting for their PROXY header.
    pub pending: Vec<PendingState>,
    /// Connections held while no worker runs.
    pub backlog: Vec<ConnState>,
    pub targets: Vec<TargetState>,
    /// Workers that reached `--max-requests`, not yet told to the core.
    pub reached: Vec<(i32, u64)>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConnState {
    pub fd: i32,
    pub peer: Option<String>,
    pub seq: u64,
    pub listener: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingState {
    pub id: u64,
    pub fd: i32,
    pub listener: usize,
    pub peer: Option<String>,
    pub deadline: Rel,
    /// Header bytes consumed so far.
    pub got: Bytes,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetState {
    pub pid: i32,
    pub slot: u32,
    pub serving: bool,
    pub ready: bool,
    pub handed: u64,
    pub limit: Option<u64>,
    pub channels: Vec<ChannelState>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChannelState {
    pub fd: i32,
    /// Connections waiting for room in the channel, in order.
    pub queue: Vec<ConnState>,
    pub outstanding: u64,
    pub closed: bool,
    pub retry_at: Option<Rel>,
}
