//! Before the exec: is the new binary one that can take this state? It must exist, be a
//! regular file this user may execute (and, once privileges were dropped, not one this user
//! could have written: the workers run as this user too), and answer
//! `BINARY __upgrade-check --state-format N` with exit 0 and a line saying it reads format N.
//! A script that exits 1, a binary that crashes, an older multinode that has no such command,
//! one that does not read this format: each fails here, and the old image simply goes on.
//!
//! The check runs as a child whose output the event loop reads without blocking (it is polled
//! like any other fd, and reaped with the other children), with a deadline
//! ([`CHECK_TIMEOUT`]).

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use super::rollback::{EXE_ENV, ROLLBACK_ENV, STATE_ENV};
use crate::supervisor::ExitStatus;

/// How long the new binary has to answer.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of its output kept.
const MAX_OUTPUT: usize = 8 * 1024;

/// What `__upgrade-check` prints on its one line of output.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Answer {
    /// Its version.
    pub multinode: String,
    /// The format it writes.
    pub state_format: u32,
    /// The formats it reads, oldest and newest.
    pub reads: [u32; 2],
}

/// The checks on the file itself. `dropped`: multinode dropped privileges at start, so this
/// user is the workers' user too.
pub fn check_file(path: &Path, dropped: bool) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let shown = path.display();
    if !path.is_absolute() {
        return Err(format!("{shown} is not an absolute path"));
    }
    let meta = std::fs::metadata(path)
        .map_err(|e| format!("{shown}: {}", crate::config::io_reason(&e)))?;
    if !meta.is_file() {
        return Err(format!("{shown} is not a regular file"));
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("{shown}: a NUL byte in the path"))?;
    // SAFETY: a NUL-terminated path; faccessat only reads it.
    let may =
        |mode| unsafe { libc::faccessat(libc::AT_FDCWD, c.as_ptr(), mode, libc::AT_EACCESS) == 0 };
    if !may(libc::X_OK) {
        return Err(format!(
            "{shown} is not executable by uid {} (the user multinode runs as)",
            nix::unistd::Uid::effective()
        ));
    }
    if dropped {
        let dir = path.parent().unwrap_or(Path::new("/"));
        let dir_c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap_or_default();
        // SAFETY: as above.
        let dir_writable = unsafe {
            libc::faccessat(libc::AT_FDCWD, dir_c.as_ptr(), libc::W_OK, libc::AT_EACCESS) == 0
        };
        if may(libc::W_OK) || dir_writable {
            return Err(format!(
                "{shown} (or its directory) is writable by uid {}, the user the workers run as: a worker could have replaced it; install it where only root can write",
                nix::unistd::Uid::effective()
            ));
        }
    }
    Ok(())
}

/// The check under way.
pub struct Preflight {
    pub pid: Pid,
    pub binary: PathBuf,
    format: u32,
    /// Its output (stdout and stderr), until end of file.
    out: Option<OwnedFd>,
    buf: Vec<u8>,
    status: Option<ExitStatus>,
    pub deadline: Instant,
    killed: bool,
}

impl Preflight {
    /// Checks `binary` and starts `binary __upgrade-check --state-format FORMAT`.
    pub fn start(
        binary: &Path,
        format: u32,
        dropped: bool,
        now: Instant,
    ) -> Result<Preflight, String> {
        check_file(binary, dropped)?;
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| format!("a pipe for its answer: {}", e.desc()))?;
        let w2 = w
            .try_clone()
            .map_err(|e| format!("a pipe for its answer: {e}"))?;
        let child = Command::new(binary)
            .args(["__upgrade-check", "--state-format", &format.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(w))
            .stderr(Stdio::from(w2))
            .env_remove(STATE_ENV)
            .env_remove(EXE_ENV)
            .env_remove(ROLLBACK_ENV)
            .spawn()
            .map_err(|e| format!("{}: {}", binary.display(), crate::config::io_reason(&e)))?;
        let pid = Pid::from_raw(child.id() as i32);
        // Not waited for here: the loop reaps it with every other child.
        drop(child);
        let _ = crate::route::channel::set_nonblocking(&r);
        Ok(Preflight {
            pid,
            binary: binary.to_path_buf(),
            format,
            out: Some(r),
            buf: Vec::new(),
            status: None,
            deadline: now + CHECK_TIMEOUT,
            killed: false,
        })
    }

    /// Its output pipe, to poll, until end of file.
    pub fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.out.as_ref().map(|f| f.as_fd())
    }

    /// Reads what it wrote (without blocking; at most [`MAX_OUTPUT`] is kept).
    pub fn read(&mut self) {
        let mut chunk = [0u8; 4096];
        while let Some(fd) = &self.out {
            match nix::unistd::read(fd, &mut chunk) {
                Ok(0) => self.out = None,
                Ok(n) => {
                    let room = MAX_OUTPUT.saturating_sub(self.buf.len());
                    self.buf.extend_from_slice(&chunk[..n.min(room)]);
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(nix::errno::Errno::EAGAIN) => return,
                Err(_) => self.out = None,
            }
        }
    }

    /// The loop reaped it.
    pub fn reaped(&mut self, status: ExitStatus) {
        self.status = Some(status);
    }

    /// Once it has exited (or the deadline passed): the new binary's version, or why it
    /// cannot take the state.
    pub fn outcome(&mut self, now: Instant) -> Option<Result<String, String>> {
        let cmd = format!(
            "{} __upgrade-check --state-format {}",
            self.binary.display(),
            self.format
        );
        let Some(status) = self.status else {
            if now < self.deadline {
                return None;
            }
            if !self.killed {
                self.killed = true;
                let _ = nix::sys::signal::kill(self.pid, nix::sys::signal::Signal::SIGKILL);
            }
            return Some(Err(format!(
                "`{cmd}` did not answer within {}s",
                CHECK_TIMEOUT.as_secs()
            )));
        };
        self.read();
        let text = String::from_utf8_lossy(&self.buf);
        let said = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty())
            .map_or_else(
                || "it printed nothing".to_string(),
                |l| format!("it said: {l}"),
            );
        if !status.success() {
            return Some(Err(format!("`{cmd}` {}; {said}", status.describe())));
        }
        let answer = text
            .lines()
            .find_map(|l| serde_json::from_str::<Answer>(l.trim()).ok());
        Some(match answer {
            Some(a) if a.reads[0] <= self.format && self.format <= a.reads[1] => Ok(a.multinode),
            Some(a) => Err(format!(
                "{} is multinode {}, which reads state formats {} to {}, not {}",
                self.binary.display(),
                a.multinode,
                a.reads[0],
                a.reads[1],
                self.format
            )),
            None => Err(format!(
                "`{cmd}` exited 0 without saying it reads state format {}; {said}",
                self.format
            )),
        })
    }
}
