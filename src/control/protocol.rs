//! The control protocol, typed: what `multinode status | reload | scale | stop` send and what
//! the supervisor answers. Server and client both use these types, so they cannot disagree.
//!
//! On the wire: one request per connection, a JSON object on one line
//! (`{"cmd":"scale","workers":6}`); one answer, a JSON object on one line
//! (`{"scaled":{"workers":6}}`, `{"failed":{"error":"..."}}`). `reload` and `scale` answer
//! when the outcome is known; `stop` answers at once and the connection then stays open until
//! the supervisor has exited, so the client sees end of file at that moment.

use serde::{Deserialize, Serialize};

/// Longest request line the supervisor reads.
pub const MAX_REQUEST: usize = 4096;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    Reload,
    Scale {
        workers: u32,
    },
    Stop,
    /// Execute a new multinode binary in place (`None`: the one multinode runs from).
    Upgrade {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<String>,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reply {
    Status(Box<Status>),
    /// Every worker runs this generation now.
    Reloaded {
        generation: u64,
    },
    /// This many workers are ready.
    Scaled {
        workers: u32,
    },
    /// The stop has begun; the connection closes when the supervisor has exited.
    Stopping,
    /// multinode `version` runs now, executed from `binary`, in the same process `pid`; the
    /// state was handed over from multinode `from` in `took_ms`.
    Upgraded {
        version: String,
        from: String,
        binary: String,
        pid: u32,
        took_ms: u64,
    },
    /// The supervisor's last word to a `stop` caller: its exit status.
    Exited {
        status: u8,
    },
    Failed {
        error: String,
    },
}

impl Reply {
    pub fn failed(error: impl Into<String>) -> Reply {
        Reply::Failed {
            error: error.into(),
        }
    }
}

/// `multinode status --json` prints this object.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Status {
    pub name: String,
    pub pid: u32,
    /// The generation every slot runs once no reload is under way.
    pub generation: u64,
    pub workers: u32,
    /// Every slot has a ready worker.
    pub ready: bool,
    /// The generation a reload under way rolls out.
    pub reloading: Option<u64>,
    pub stopping: bool,
    /// Why `/healthz` says 503 now (`None`: healthy).
    #[serde(default)]
    pub unhealthy: Option<String>,
    /// Reloads done and failed since start.
    #[serde(default)]
    pub reloads_ok: u64,
    #[serde(default)]
    pub reloads_failed: u64,
    /// The multinode that runs (`multinode --version`).
    #[serde(default)]
    pub version: String,
    /// The binary it was executed from (its start path, or the last `upgrade --binary`).
    #[serde(default)]
    pub binary: Option<String>,
    /// In-place upgrades done since the start, and failed (the old binary went on).
    #[serde(default)]
    pub upgrades: u64,
    #[serde(default)]
    pub upgrades_failed: u64,
    /// The last one, if any.
    #[serde(default)]
    pub last_upgrade: Option<LastUpgrade>,
    /// An upgrade is under way.
    #[serde(default)]
    pub upgrading: bool,
    pub control: Option<String>,
    pub slots: Vec<SlotStatus>,
}

/// An in-place upgrade: when (RFC 3339, UTC), from which version, to which binary.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LastUpgrade {
    pub at: String,
    pub from: String,
    pub binary: String,
}

/// Workers of a slot replaced unasked, by cause.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restarts {
    /// Exited or crashed unasked (or not ready in time).
    pub crash: u32,
    /// Hung: the watchdog ran out.
    pub watchdog: u32,
    /// Recycled past `--max-memory`.
    pub memory: u32,
    /// Recycled after `--max-requests`.
    pub requests: u32,
}

impl Restarts {
    pub fn total(&self) -> u32 {
        self.crash + self.watchdog + self.memory + self.requests
    }
}

/// One row of `multinode status`: a worker, or a slot that has none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SlotStatus {
    pub slot: u32,
    pub pid: Option<i32>,
    /// starting, ready, draining, exiting, restarting, stopped.
    pub state: String,
    pub generation: Option<u64>,
    pub uptime_ms: Option<u64>,
    /// Workers of the slot replaced unasked: all causes.
    pub restarts: u32,
    /// The same, by cause.
    #[serde(default)]
    pub restart_causes: Restarts,
    pub last_exit: Option<String>,
    /// The worker's last STATUS= text.
    pub status: Option<String>,
    /// CPU time the worker (with all it started) used, in seconds.
    #[serde(default)]
    pub cpu_seconds: Option<f64>,
    /// Memory it uses now, in bytes.
    #[serde(default)]
    pub memory_bytes: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_on_the_wire() {
        let r: Request = serde_json::from_str(r#"{"cmd":"scale","workers":6}"#).unwrap();
        assert_eq!(r, Request::Scale { workers: 6 });
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"cmd":"status"}"#
        );
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"explode"}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"scale","workers":-1}"#).is_err());
        let r: Request = serde_json::from_str(r#"{"cmd":"upgrade"}"#).unwrap();
        assert_eq!(r, Request::Upgrade { binary: None });
        assert_eq!(
            serde_json::to_string(&Request::Upgrade {
                binary: Some("/usr/bin/multinode".into())
            })
            .unwrap(),
            r#"{"cmd":"upgrade","binary":"/usr/bin/multinode"}"#
        );
    }

    #[test]
    fn replies_round_trip() {
        for r in [
            Reply::Reloaded { generation: 3 },
            Reply::Scaled { workers: 2 },
            Reply::Stopping,
            Reply::Upgraded {
                version: "0.2.0".into(),
                from: "0.1.0".into(),
                binary: "/usr/bin/multinode".into(),
                pid: 42,
                took_ms: 12,
            },
            Reply::failed("no"),
        ] {
            let text = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<Reply>(&text).unwrap(), r, "{text}");
        }
    }
}
