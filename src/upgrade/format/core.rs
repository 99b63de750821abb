//! The core's part of the state format (see the parent module for the conventions).

use serde::{Deserialize, Serialize};

use super::{Rel, RuntimeState};

/// The supervisor core: every slot and worker and every rule's memory.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CoreState {
    pub rt: RuntimeState,
    pub slots: Vec<SlotState>,
    pub workers: Vec<WorkerState>,
    pub generation: u64,
    pub newest: u64,
    pub reload: Option<ReloadState>,
    pub rereading: Option<String>,
    pub watch_at: Option<(Rel, String)>,
    pub watch_path: Option<String>,
    pub phase: PhaseState,
    /// Restarts within `--restart-window`, when each was.
    pub budget: Vec<Rel>,
    /// The jitter generator's state.
    pub jitter: u64,
    pub reload_waiters: Vec<u64>,
    /// `scale` callers: (client, workers wanted, give up at).
    pub scale_waiters: Vec<(u64, u32, Rel)>,
    pub upgrade_waiters: Vec<u64>,
    pub sd_status: String,
    pub sd_ready: bool,
    pub any_started: bool,
    pub said_all_ready: bool,
    pub stop_why: String,
    pub sd_ping_at: Option<Rel>,
    pub reloads_ok: u64,
    pub reloads_failed: u64,
    /// The exit status so far.
    pub exit: u8,
    /// The upgrade under way: the binary asked for (`None`: the one multinode runs from).
    pub upgrading: Option<Option<String>>,
    pub upgrades_ok: u64,
    pub upgrades_failed: u64,
    /// The last successful upgrade.
    pub last_upgrade: Option<LastUpgradeState>,
}

/// When multinode last upgraded (RFC 3339, UTC), from which version, to which binary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LastUpgradeState {
    pub at: String,
    pub from: String,
    pub binary: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotState {
    pub start_at: Option<Rel>,
    pub open: bool,
    /// Consecutive quick crashes (the backoff's exponent).
    pub failures: u32,
    pub last_error: Option<String>,
    pub last_ok: bool,
    /// Restarts by cause: crash, watchdog, memory, requests.
    pub restarts: [u32; 4],
    pub last_exit: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerState {
    pub slot: u32,
    pub pid: i32,
    pub generation: u64,
    pub started: Rel,
    pub state: WorkerPhase,
    pub status_text: Option<String>,
    pub watchdog_ns: Option<u64>,
    pub watchdog_at: Option<Rel>,
    pub request_limit: Option<u64>,
}

/// A worker's state (`supervisor::worker::State`), with its deadlines.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum WorkerPhase {
    Starting {
        ready_at: Option<Rel>,
        deadline: Rel,
    },
    Ready,
    Recycling {
        cause: RecycleState,
    },
    Draining {
        why: LeaveState,
        kill_at: Rel,
    },
    Killed {
        why: LeaveState,
    },
    Exited {
        status: ExitState,
        why: Option<LeaveState>,
        kill_at: Option<Rel>,
    },
}

/// Why a worker is being recycled, with the figure that triggered it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum RecycleState {
    Memory(u64),
    Requests(u64),
}

/// Why a worker was asked to stop (`supervisor::worker::Leave`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum LeaveState {
    Replaced,
    ScaledDown,
    ServiceStop,
    NotReady,
    Superseded,
    Abandoned,
    Leftovers,
    Hung,
    Recycled(RecycleState),
}

/// How a worker's leader ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum ExitState {
    Code(i32),
    Signal { signal: String, core_dumped: bool },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadState {
    pub generation: u64,
    pub why: String,
    pub queue: Vec<u32>,
    pub in_flight: Vec<u32>,
    pub replaced: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub enum PhaseState {
    Running,
    LameDuck { until: Rel },
    Stopping { kill_at: Rel },
    Killing,
}
