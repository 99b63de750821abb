//! Upgrading multinode in place: the same process (the same pid: systemd's MAINPID, PID 1 of
//! a container) executes a new multinode binary, which takes over every fd and every piece
//! of the supervisor's state, and adopts the running workers — still its children, since
//! exec keeps the pid — without restarting any.
//!
//! The way there (`multinode upgrade`, SIGUSR2):
//! 1. **check** (`preflight.rs`): the new file exists, this user may execute it, and
//!    `NEW __upgrade-check --state-format N` says it reads this image's state format. Any
//!    failure: the old image goes on; nothing was touched.
//! 2. **hand-over** (`supervisor/handover.rs`, [`exec`]): the log writer is flushed, the whole
//!    state is written as JSON into a memfd, which is then sealed (no image can change it any
//!    more), close-on-exec is cleared on exactly the fds the state lists, and the process
//!    executes the new binary with the same argv, `LISTEN_*` removed from the environment and
//!    [`rollback::STATE_ENV`] / [`rollback::EXE_ENV`] naming the memfd and an `O_PATH` fd to
//!    the old executable (opened at start: after a package upgrade, the old file is gone from
//!    its path). The signals the supervisor handles stay blocked across the exec, so those that
//!    arrive meanwhile wait, pending, for the new image's signalfd; new connections wait in the
//!    kernel's accept queues, routed ones in the state.
//! 3. **restore** (`restore.rs`, in the new image): the ways back are armed first
//!    (`rollback.rs`), then the state is read (its format first), every fd checked against the
//!    table, and the supervisor rebuilt around them; only then are the fds made close-on-exec
//!    again and the ways back disarmed. The core hears `Upgraded` and answers the caller.
//!    Anything that fails before that executes the old image again, which restores from the
//!    same state and reports `upgrade-failed` with stage `restore`.
//!
//! The format is in `format.rs` (the types) and `state.rs` (the envelope and versions).

pub mod format;
pub mod preflight;
pub mod restore;
pub mod rollback;
pub mod state;

use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Exit, Result};
use crate::spawn::env_entry;

/// Variables the new image must not see: systemd's socket activation (the sockets were taken
/// once, at the first start) and an earlier upgrade's.
const NOT_PASSED: [&str; 6] = [
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    rollback::STATE_ENV,
    rollback::EXE_ENV,
    rollback::ROLLBACK_ENV,
];

/// The absolute path multinode was started from: argv\[0\] as given (relative to the
/// working directory at start) or, without a `/`, looked up in PATH as the shell did. Not
/// `/proc/self/exe`, which names the inode that runs: a package upgrade replaces the file at
/// the path and leaves that one deleted. Symbolic links are kept: the path is executed
/// again, wherever it then leads. `None` when it cannot be found.
pub fn start_path() -> Option<PathBuf> {
    let arg0 = PathBuf::from(std::env::args_os().next()?);
    if arg0.as_os_str().as_bytes().contains(&b'/') {
        return std::path::absolute(&arg0).ok();
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(&arg0))
        .find(|p| p.is_absolute() && p.is_file())
}

/// An `O_PATH` fd to the executable that runs, for the way back from a failed upgrade
/// (close-on-exec; the hand-over clears that).
pub fn open_self_exe() -> Option<std::os::fd::OwnedFd> {
    nix::fcntl::open(
        "/proc/self/exe",
        nix::fcntl::OFlag::O_PATH | nix::fcntl::OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )
    .ok()
}

/// What `/proc/self/exe` names (for messages: "multinode 0.1.0 (/usr/bin/multinode)").
pub fn running() -> String {
    let exe = std::fs::read_link("/proc/self/exe")
        .map_or_else(|_| "?".to_string(), |p| p.display().to_string());
    format!("multinode {} ({exe})", env!("CARGO_PKG_VERSION"))
}

/// Executes `binary` in place with the state: `fds` (the table's, the memfd and the old
/// executable among them) lose close-on-exec first and get it back if the exec fails.
/// Returns only on failure.
pub fn exec(binary: &Path, fds: &[i32], state_fd: i32, exe_fd: i32) -> std::io::Error {
    let cstr = |b: &[u8]| CString::new(b).unwrap_or_default();
    let argv: Vec<CString> = std::env::args_os().map(|a| cstr(a.as_bytes())).collect();
    let mut env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| !NOT_PASSED.iter().any(|n| k == n))
        .map(|(k, v)| env_entry(k.as_bytes(), v.as_bytes()))
        .collect();
    env.push(cstr(
        format!("{}={state_fd}", rollback::STATE_ENV).as_bytes(),
    ));
    env.push(cstr(format!("{}={exe_fd}", rollback::EXE_ENV).as_bytes()));
    let path = cstr(binary.as_os_str().as_bytes());
    for &fd in fds {
        state::set_cloexec(fd, false);
    }
    let err = match nix::unistd::execve(&path, &argv, &env) {
        Err(e) => std::io::Error::from(e),
        Ok(never) => match never {},
    };
    for &fd in fds {
        state::set_cloexec(fd, true);
    }
    err
}

/// `multinode __upgrade-check --state-format N`: what an old image asks a new binary before
/// handing it the state. Prints one JSON line ([`preflight::Answer`]) and exits 0 when this
/// multinode reads format N; one error line and exit 1 otherwise.
pub fn check_command(format: u32) -> Result<Exit> {
    if !state::reads(format) {
        return Err(Error::new(Exit::Unclean, state::unknown_format(format)));
    }
    let answer = preflight::Answer {
        multinode: env!("CARGO_PKG_VERSION").into(),
        state_format: state::FORMAT,
        reads: [state::OLDEST, state::FORMAT],
    };
    let line = serde_json::to_string(&answer).map_err(|e| Error::internal(e.to_string()))?;
    println!("{line}");
    Ok(Exit::Ok)
}
