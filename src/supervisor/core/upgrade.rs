//! Upgrading multinode itself in place, as the core decides it: who asked, whether now is a
//! time for it, what is said to systemd and to the log, and who is answered how. The work —
//! checking the new binary, writing the state, the exec, restoring — is the shell's
//! (`supervisor/handover.rs`, `upgrade/`); the core hears how each step went.
//!
//! The path: [`Core::request_upgrade`] (SIGUSR2, `multinode upgrade`) → [`Action::Upgrade`] →
//! the shell checks the binary and asks it whether it reads this state →
//! [`Event::UpgradeChecked`] → event `upgrade`, `RELOADING=1` → [`Action::HandOver`] → the
//! new image restores everything, this core included, and hears [`Event::Upgraded`]: event
//! `upgraded`, `READY=1`, the callers answered. Anything that fails on the way ends in
//! [`Event::UpgradeFailed`] in whichever image runs then (the old one, when the new one could
//! not restore): event `upgrade-failed`, the callers answered with the reason.

use super::{Action, ClientId, Core, Phase, SdNote};
use crate::control::protocol::{LastUpgrade, Reply};
use crate::log::Event as Log;

impl Core {
    /// SIGUSR2 (`client` None) or `multinode upgrade`: `binary` None is the binary multinode
    /// runs from.
    pub(super) fn request_upgrade(
        &mut self,
        client: Option<ClientId>,
        binary: Option<String>,
        why: &str,
    ) {
        if self.phase != Phase::Running {
            self.upgrade_refused(client, why, "multinode is stopping".into());
            return;
        }
        if let Some(under_way) = &self.upgrading {
            if binary.is_none() || binary == *under_way {
                // The same upgrade: its outcome answers this caller too.
                self.waiters.upgrade.extend(client);
                return;
            }
            let msg = format!(
                "an upgrade to {} is under way; ask again when it is over",
                under_way
                    .as_deref()
                    .unwrap_or("the binary multinode runs from")
            );
            self.upgrade_refused(client, why, msg);
            return;
        }
        self.upgrading = Some(binary.clone());
        self.waiters.upgrade.extend(client);
        self.out.push(Action::Upgrade { binary });
    }

    /// A request that cannot start an upgrade now: the caller is told, a signal is logged.
    fn upgrade_refused(&mut self, client: Option<ClientId>, why: &str, msg: String) {
        match client {
            Some(client) => self.out.push(Action::Reply {
                client,
                reply: Reply::failed(msg),
            }),
            None => self.log(
                Log::warn("upgrade-failed", format!("{why}: not upgrading: {msg}"))
                    .with("stage", "check")
                    .with("reason", msg.as_str()),
            ),
        }
    }

    /// The new binary passed its checks: hand over.
    pub(super) fn upgrade_checked(&mut self, binary: String, version: String) {
        if self.upgrading.is_none() {
            return; // a stop called it off meanwhile
        }
        if self.phase != Phase::Running {
            let running = format!("multinode {}", env!("CARGO_PKG_VERSION"));
            self.upgrade_failed("check", "multinode is stopping".into(), running);
            return;
        }
        let from = env!("CARGO_PKG_VERSION");
        self.log(
            Log::info(
                "upgrade",
                format!(
                    "upgrading in place: executing {binary} (multinode {from} -> {version}); the workers keep running"
                ),
            )
            .with("binary", binary.as_str())
            .with("from", from)
            .with("to", version.as_str()),
        );
        if self.fixed.systemd {
            self.out.push(Action::Systemd(SdNote::Reloading));
        }
        self.out.push(Action::HandOver { binary });
    }

    /// The upgrade did not happen (see [`super::Event::UpgradeFailed`]).
    pub(super) fn upgrade_failed(&mut self, stage: &'static str, reason: String, running: String) {
        self.upgrading = None;
        self.upgrades_failed += 1;
        let pid = self.fixed.pid;
        self.log(
            Log::error(
                "upgrade-failed",
                format!(
                    "upgrade failed ({stage}): {reason}; {running} keeps running (pid {pid}), the workers untouched"
                ),
            )
            .with("stage", stage)
            .with("reason", reason.as_str()),
        );
        let reply = Reply::failed(format!(
            "{reason}; {running} keeps running (pid {pid}), the workers untouched"
        ));
        for client in std::mem::take(&mut self.waiters.upgrade) {
            self.out.push(Action::Reply {
                client,
                reply: reply.clone(),
            });
        }
        // systemd heard RELOADING=1 once the check had passed.
        if self.fixed.systemd && stage != "check" && self.phase == Phase::Running {
            let status = self.status_line();
            self.out.push(Action::Systemd(SdNote::Ready(status)));
        }
    }

    /// This image took the state over: the upgrade is done.
    pub(super) fn upgraded(&mut self, from: String, binary: String, took_ms: u64, at: String) {
        self.upgrading = None;
        self.upgrades_ok += 1;
        let version = env!("CARGO_PKG_VERSION");
        let pid = self.fixed.pid;
        self.log(
            Log::info(
                "upgraded",
                format!(
                    "upgraded in place to multinode {version} ({binary}) in {took_ms} ms: pid {pid}, {} worker(s) kept",
                    self.workers.len()
                ),
            )
            .with("version", version)
            .with("from", from.as_str())
            .with("binary", binary.as_str())
            .with("took_ms", took_ms),
        );
        let reply = Reply::Upgraded {
            version: version.into(),
            from: from.clone(),
            binary: binary.clone(),
            pid,
            took_ms,
        };
        for client in std::mem::take(&mut self.waiters.upgrade) {
            self.out.push(Action::Reply {
                client,
                reply: reply.clone(),
            });
        }
        self.last_upgrade = Some(LastUpgrade { at, from, binary });
        if self.fixed.systemd && self.phase == Phase::Running {
            let status = self.status_line();
            self.out.push(Action::Systemd(SdNote::Ready(status)));
        }
    }

    /// The service stops: an upgrade not yet handed over is called off.
    pub(super) fn end_upgrade(&mut self) {
        if self.upgrading.is_some() {
            let running = format!("multinode {}", env!("CARGO_PKG_VERSION"));
            self.upgrade_failed("check", "multinode is stopping".into(), running);
        }
    }

    /// Whether an upgrade is under way (the shell hands over only while one is).
    pub fn upgrading(&self) -> bool {
        self.upgrading.is_some()
    }
}
