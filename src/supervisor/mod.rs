//! The supervisor: one sans-IO core that decides, and one thin shell that does.
//!
//! - `core/`: [`core::Core`] — the state of every slot and worker and every rule about them
//!   (restarts and backoff, rolling reloads, scaling, stopping, control requests, systemd
//!   notifications), as `handle(event, now) -> Vec<Action>`. No I/O; unit-tested.
//! - `worker.rs`: one worker's state machine (Starting → Ready → Draining → Killed/Exited).
//! - `backoff.rs`: restart pacing (exponential backoff with jitter, the restart budget).
//! - `shell.rs`: the one event loop — poll, signals, reaping, notify datagrams, control
//!   clients, worker output, route mode's sockets — turning what happens into events.
//! - `execute.rs`: carrying out the core's actions (spawn, signal, reply, systemd, log).
//! - `reap.rs`: how a worker ends (reaping, lingering groups, cgroups, the sweep at exit) and
//!   whom a notify datagram is from.
//! - `pipes.rs`: workers' output pipes.
//! - `inspect.rs`: a look at a worker that became ready (does it listen on its own port?).
//! - `scrape.rs`: the answers to `/metrics` and `/healthz` (`--metrics`).
//! - `handover.rs`: an in-place upgrade's hand-over of all of it (see `upgrade/`).

mod backoff;
mod core;
mod execute;
mod handover;
mod inspect;
mod pipes;
mod reap;
mod scrape;
mod shell;
mod worker;

use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use crate::error::{Error, Result};

pub use core::{Event, Target};
pub use handover::{Found, load, resume};
pub use shell::{Parts, run};
pub use worker::{ExitStatus, human, later};

/// The signals the supervisor handles; they are blocked in every thread and read from a
/// signalfd by the loop. Workers get a clean mask (see spawn.rs).
pub fn handled_signals() -> SigSet {
    let mut set = SigSet::empty();
    for s in [
        Signal::SIGCHLD,
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGQUIT,
        Signal::SIGHUP,
        Signal::SIGTTIN,
        Signal::SIGTTOU,
        Signal::SIGUSR2,
    ] {
        set.add(s);
    }
    set
}

/// Blocks the handled signals in the calling thread; threads started later inherit the mask.
pub fn block_signals() -> Result<SignalFd> {
    let set = handled_signals();
    set.thread_block()
        .map_err(|e| Error::sys("blocking signals", e))?;
    SignalFd::with_flags(&set, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK)
        .map_err(|e| Error::sys("creating a signalfd", e))
}
