//! The guard: a tiny process that outlives a killed supervisor just long enough to kill every
//! worker's process group.
//!
//! A worker's parent-death signal reaches only the process multinode forked; a server that a
//! worker shell started, or a helper it forked, would survive `kill -9` of the supervisor and
//! keep serving on the inherited socket. So at start, while multinode is still one thread,
//! it forks the guard, which drops to the workers' user and then only reads a pipe: the
//! supervisor writes each worker's process group id when it starts (`+pgid`) and when it is
//! gone (`-pgid`). When the pipe reaches end of file — the supervisor exited or was killed —
//! the guard sends SIGKILL to every group still listed, and exits. After a clean stop the
//! list is empty and the guard just exits.

use std::collections::HashSet;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::fcntl::OFlag;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::{ForkResult, Pid};

use crate::error::{Error, Result};
use crate::privilege::Target;

pub struct Guard {
    pid: Pid,
    tx: Option<OwnedFd>,
}

impl Guard {
    /// Forks the guard. Call while the process has a single thread.
    pub fn start(target: Option<&Target>) -> Result<Guard> {
        let (rx, tx) = nix::unistd::pipe2(OFlag::O_CLOEXEC)
            .map_err(|e| Error::sys("creating the guard pipe", e))?;
        // SAFETY: multinode has one thread here (serve.rs forks the guard before the file
        // watcher or the output thread exist), so the child may run ordinary Rust code.
        match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("forking the guard", e))? {
            ForkResult::Child => {
                drop(tx);
                guard_main(rx, target)
            }
            ForkResult::Parent { child } => {
                drop(rx);
                let flags = OFlag::O_NONBLOCK;
                nix::fcntl::fcntl(&tx, nix::fcntl::FcntlArg::F_SETFL(flags))
                    .map_err(|e| Error::sys("guard pipe", e))?;
                Ok(Guard {
                    pid: child,
                    tx: Some(tx),
                })
            }
        }
    }

    /// A worker's process group exists now.
    pub fn track(&self, pgid: Pid) {
        self.send(pgid.as_raw());
    }

    /// A worker's process group is gone.
    pub fn untrack(&self, pgid: Pid) {
        self.send(-pgid.as_raw());
    }

    fn send(&self, v: i32) {
        if let Some(tx) = &self.tx {
            // 4 bytes are written whole or not at all (a pipe write below PIPE_BUF is atomic);
            // a full pipe means a guard that stopped reading, and nothing better can be done.
            let _ = nix::unistd::write(tx, &v.to_le_bytes());
        }
    }
}

impl Drop for Guard {
    /// Closes the pipe and waits for the guard to exit (at once: after a clean stop, or a
    /// failed start, it has no group left to kill).
    fn drop(&mut self) {
        self.tx = None;
        let _ = nix::sys::wait::waitpid(self.pid, None);
    }
}

/// The guard process. Never returns.
fn guard_main(rx: OwnedFd, target: Option<&Target>) -> ! {
    // Its own process group, so a terminal's Ctrl-C does not reach it; the signals the
    // supervisor blocked stay blocked here, so only SIGKILL ends it early.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    // `ps` shows it as what it is.
    let _ = nix::sys::prctl::set_name(c"multinode-guard");
    // Nothing of the supervisor's but the pipe: no socket, no terminal, no log pipe kept open.
    if let Ok(null) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard fds of this single-threaded child.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
    let keep = rx.as_raw_fd() as libc::c_uint;
    // SAFETY: closes the fds this child inherited and does not use; their owners in the
    // supervisor's code never run here again (this function does not return).
    unsafe {
        if keep > 3 {
            libc::syscall(
                libc::SYS_close_range,
                3 as libc::c_uint,
                keep - 1,
                0 as libc::c_uint,
            );
        }
        libc::syscall(
            libc::SYS_close_range,
            keep + 1,
            libc::c_uint::MAX,
            0 as libc::c_uint,
        );
    }
    if let Some(t) = target {
        let dropped = nix::unistd::setgroups(&[])
            .and_then(|()| nix::unistd::setgid(t.gid))
            .and_then(|()| nix::unistd::setuid(t.uid));
        if dropped.is_err() {
            // SAFETY: ending this child without running the parent's destructors.
            unsafe { libc::_exit(1) };
        }
    }
    let mut groups: HashSet<i32> = HashSet::new();
    let mut buf = [0u8; 4096];
    let mut partial: Vec<u8> = Vec::new();
    loop {
        match nix::unistd::read(&rx, &mut buf) {
            Ok(0) => break,
            Ok(n) => {
                partial.extend_from_slice(&buf[..n]);
                let whole = partial.len() / 4 * 4;
                for rec in partial[..whole].chunks_exact(4) {
                    let v = i32::from_le_bytes([rec[0], rec[1], rec[2], rec[3]]);
                    if v > 0 {
                        groups.insert(v);
                    } else {
                        groups.remove(&-v);
                    }
                }
                partial.drain(..whole);
            }
            Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    for pgid in groups {
        let _ = killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
    // SAFETY: ending this child without running the parent's destructors or atexit handlers.
    unsafe { libc::_exit(0) }
}
