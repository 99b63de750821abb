//! The guard process: forked at start, it keeps the rights multinode started with (root, as a
//! rule) and does only what the supervisor registered before it dropped them.
//!
//! It reads requests (wire.rs) until the supervisor says `X` (a clean exit) or its end of
//! the socket closes (the supervisor exited or was killed), then cleans up and exits:
//!
//! 1. SIGKILL to every worker process group still tracked — only to processes the workers'
//!    user could signal itself, so a supervisor that lies about a group id gains nothing;
//! 2. the service's cgroup (if registered): on a clean exit the supervisor is first moved out
//!    of it, back to the group the guard runs in; then `cgroup.kill`, a bounded wait until it
//!    is empty, and its removal;
//! 3. the registered socket files and directories, each only if it is still the file that was
//!    registered (same device and inode, same kind).
//!
//! What it will ever do with its rights is fixed when the supervisor seals it: paths
//! registered after `S` are ignored, and the config file it reads is the one path it was
//! given at fork, never a path from a message.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{AtFlags, OFlag, open};
use nix::sys::signal::{Signal, kill, killpg};
use nix::sys::stat::{Mode, SFlag, fstatat};
use nix::unistd::{Pid, Uid, UnlinkatFlags, unlinkat};

use super::wire::{Decoder, MAX_REQUEST, Reply, Request};
use crate::cgroup;

/// What the guard is given at fork.
pub(super) struct Settings {
    /// `--config`, made absolute: the one file it reads for a reload.
    pub config: Option<PathBuf>,
    /// The user the workers run as, when multinode drops privileges to it.
    pub workers_uid: Option<Uid>,
}

/// Bounds on what the guard keeps.
const MAX_GROUPS: usize = 65536;
const MAX_PATHS: usize = 1024;
/// How long it waits for the service's cgroup to empty after `cgroup.kill`.
const EMPTY_WAIT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Socket,
    Dir,
    Cgroup,
}

/// A path registered for removal, as it was when registered. The directory it is in is held
/// open, and the check and the removal go through it: when the directory is removed and made
/// again (a multinode of the same name starting while this guard cleans up), the new one's
/// files are out of reach.
struct Registered {
    path: PathBuf,
    parent: OwnedFd,
    name: OsString,
    kind: Kind,
    dev: u64,
    ino: u64,
}

impl Registered {
    fn new(path: PathBuf, kind: Kind) -> Option<Registered> {
        let name = path.file_name()?.to_os_string();
        // A relative path is relative to the directory multinode started in, the guard's too.
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let parent = open(parent, flags, Mode::empty()).ok()?;
        let st = fstatat(&parent, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).ok()?;
        let r = Registered {
            dev: st.st_dev,
            ino: st.st_ino,
            path,
            parent,
            name,
            kind,
        };
        r.still_there().then_some(r)
    }

    /// Whether the name in the directory still names what was registered.
    fn still_there(&self) -> bool {
        let Ok(st) = fstatat(
            &self.parent,
            self.name.as_os_str(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        ) else {
            return false;
        };
        let format = st.st_mode & SFlag::S_IFMT.bits();
        let kind = match self.kind {
            Kind::Socket => format == SFlag::S_IFSOCK.bits(),
            Kind::Dir => format == SFlag::S_IFDIR.bits(),
            Kind::Cgroup => format == SFlag::S_IFDIR.bits() && is_cgroup2(&self.path),
        };
        kind && st.st_dev == self.dev && st.st_ino == self.ino
    }

    /// Removes a socket file or an (empty) directory through the directory it is in.
    fn remove(&self) {
        if self.still_there() {
            let how = match self.kind {
                Kind::Socket => UnlinkatFlags::NoRemoveDir,
                Kind::Dir | Kind::Cgroup => UnlinkatFlags::RemoveDir,
            };
            let _ = unlinkat(&self.parent, self.name.as_os_str(), how);
        }
    }
}

fn is_cgroup2(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

struct Guard {
    supervisor: Pid,
    settings: Settings,
    groups: HashSet<i32>,
    /// Socket files and directories, removed in the order they were registered.
    paths: Vec<Registered>,
    cgroup: Option<Registered>,
    sealed: bool,
}

/// The guard's life. Never returns.
pub(super) fn main(sock: UnixStream, settings: Settings) -> ! {
    isolate(&sock);
    let mut g = Guard {
        supervisor: nix::unistd::getppid(),
        settings,
        groups: HashSet::new(),
        paths: Vec::new(),
        cgroup: None,
        sealed: false,
    };
    let clean = g.serve(&sock);
    g.clean_up(clean, &sock);
    // SAFETY: ends this forked child without running the parent's destructors or atexit
    // handlers.
    unsafe { libc::_exit(0) }
}

/// Cuts the guard off from everything of the supervisor's but its socket.
fn isolate(sock: &UnixStream) {
    // Its own process group, so a terminal's Ctrl-C does not reach it. The signals the
    // supervisor blocked stay blocked; only its user (root) can send it any other.
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    let _ = nix::sys::prctl::set_name(c"multinode-guard");
    // No core dump, no /proc/PID/mem for anyone but root.
    let _ = nix::sys::prctl::set_dumpable(false);
    // SAFETY: setting a signal's disposition to ignore, in this single-threaded child. A
    // write to a supervisor that died must fail with EPIPE, not end the guard.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
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
    let keep = sock.as_raw_fd() as libc::c_uint;
    // SAFETY: closes the fds this child inherited and does not use; their owners in the
    // supervisor's code never run here again (the guard does not return).
    unsafe {
        if keep > 3 {
            libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, keep - 1, 0);
        }
        libc::syscall(libc::SYS_close_range, keep + 1, libc::c_uint::MAX, 0);
    }
}

impl Guard {
    /// Serves requests until the supervisor says exit (true) or is gone (false). A stream
    /// that breaks the protocol counts as gone.
    fn serve(&mut self, mut sock: &UnixStream) -> bool {
        let mut frames = Decoder::new(MAX_REQUEST);
        let mut buf = [0u8; 4096];
        loop {
            match sock.read(&mut buf) {
                Ok(0) => return false,
                Ok(n) => frames.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => return false,
            }
            loop {
                let request = match frames.next_frame() {
                    Ok(None) => break,
                    Ok(Some((tag, payload))) => Request::decode(tag, &payload),
                    Err(e) => Err(e),
                };
                match request {
                    Ok(Request::Exit) => return true,
                    Ok(r) => self.handle(r, sock),
                    Err(_) => return false,
                }
            }
        }
    }

    fn handle(&mut self, r: Request, mut sock: &UnixStream) {
        match r {
            Request::Track(g) if g > 1 && self.groups.len() < MAX_GROUPS => {
                self.groups.insert(g);
            }
            Request::Untrack(g) => {
                self.groups.remove(&g);
            }
            Request::SocketFile(p) | Request::Dir(p) | Request::Cgroup(p) if self.sealed => {
                let _ = p; // fixed at the drop: nothing more to remove with our rights
            }
            Request::SocketFile(p) => self.register(p, Kind::Socket),
            Request::Dir(p) => self.register(p, Kind::Dir),
            Request::Cgroup(p) if self.cgroup.is_none() => {
                self.cgroup = Registered::new(p, Kind::Cgroup);
            }
            Request::Seal => self.sealed = true,
            Request::ReadConfig => {
                let reply = match &self.settings.config {
                    Some(path) => match crate::config_file::read(path) {
                        Ok(bytes) => Reply::Config(bytes),
                        Err(e) => Reply::ConfigError(crate::config::io_reason(&e)),
                    },
                    None => Reply::ConfigError("multinode was started without --config".into()),
                };
                let mut out = Vec::new();
                reply.encode(&mut out);
                // Blocking: the supervisor reads it in its loop; if it is gone, EPIPE.
                let _ = sock.write_all(&out);
            }
            Request::Track(_) | Request::Cgroup(_) | Request::Exit => {}
        }
    }

    fn register(&mut self, path: PathBuf, kind: Kind) {
        if self.paths.len() < MAX_PATHS {
            self.paths.extend(Registered::new(path, kind));
        }
    }

    fn clean_up(&mut self, clean: bool, sock: &UnixStream) {
        self.kill_groups();
        if let Some(cg) = self.cgroup.take().filter(Registered::still_there) {
            // On a clean exit the supervisor is still running in the service group: out of it
            // first, back to the group it came from (where the guard is).
            let out = clean
                && cg.path.parent().is_some_and(|parent| {
                    let pid = self.supervisor.to_string();
                    cgroup::write(&parent.join("cgroup.procs"), pid.as_bytes()).is_ok()
                });
            if clean && !out {
                wait_for_end(sock);
            }
            let _ = cgroup::kill(&cg.path);
            cgroup::wait_empty(&cg.path, Instant::now() + EMPTY_WAIT);
            let _ = cgroup::remove_tree(&cg.path);
        }
        for p in &self.paths {
            p.remove();
        }
    }

    /// SIGKILL to the tracked process groups. As root, only to processes the workers' user
    /// could signal itself (its real or saved uid is theirs): a whole group with killpg when
    /// every member is such, else member by member.
    fn kill_groups(&self) {
        if self.groups.is_empty() {
            return;
        }
        let Some(uid) = self.settings.workers_uid else {
            for &g in &self.groups {
                let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
            }
            return;
        };
        let procs = processes();
        for &g in &self.groups {
            let members: Vec<&Proc> = procs.iter().filter(|p| p.pgid == g).collect();
            let theirs = |p: &Proc| p.ruid == uid.as_raw() || p.suid == uid.as_raw();
            if !members.is_empty() && members.iter().all(|p| theirs(p)) {
                let _ = killpg(Pid::from_raw(g), Signal::SIGKILL);
            } else {
                for p in members.into_iter().filter(|p| theirs(p)) {
                    let _ = kill(Pid::from_raw(p.pid), Signal::SIGKILL);
                }
            }
        }
    }
}

/// Reads the socket until the supervisor's end closes (it has exited).
fn wait_for_end(mut sock: &UnixStream) {
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

struct Proc {
    pid: i32,
    pgid: i32,
    ruid: u32,
    suid: u32,
}

/// Every process: its group and its real and saved uid (from /proc/PID/stat and status).
fn processes() -> Vec<Proc> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let pgid = crate::procfs::stat(pid)?.pgrp;
            let (ruid, suid) = crate::procfs::uids(pid)?;
            Some(Proc {
                pid,
                pgid,
                ruid,
                suid,
            })
        })
        .collect()
}
