//! cgroup v2 containment: each worker, and whatever it starts however it detaches (`setsid`,
//! a double fork), in a group of its own that is killed whole when the worker's slot ends.
//!
//! The groups live under the one multinode was started in (its own, `0::/PATH` in
//! /proc/self/cgroup), in the cgroup v2 hierarchy wherever /proc/self/mountinfo says it is
//! mounted (/sys/fs/cgroup, /sys/fs/cgroup/unified on a hybrid layout, the unit's own group
//! under systemd with `Delegate=yes`):
//!
//! ```text
//! OWN/multinode-NAME.PID/     the service group: delegated to the workers' user
//!     supervisor/             multinode itself, root's (no worker can move into it)
//!     worker.SLOT.N/          one per worker process started, made by the supervisor
//! ```
//!
//! Processes live in leaves only (the kernel's no-internal-processes rule), so multinode moves
//! itself into `supervisor/` at start. The service group is delegated the way systemd does it
//! (the directory and its `cgroup.procs`, `cgroup.subtree_control` and `cgroup.threads` given
//! to the workers' user), so the supervisor, once it has dropped privileges, can still create
//! and remove worker leaves, and a forked worker can move itself into its leaf. Its limits
//! (`cgroup.max.depth` 1, `cgroup.max.descendants`) stay root's: no group deeper than a leaf,
//! no unbounded number of them. A worker can move its processes between the service's groups
//! (all of them its user's), never out of the service group: that needs write access to the
//! parent's `cgroup.procs`.
//!
//! A worker's leaf is made before the fork; the child writes `0` to the leaf's `cgroup.procs`
//! (opened before the fork) before exec (spawn.rs). When the worker's leader has been reaped,
//! its process group is stopped as before; once the group is gone, what is left in the leaf is
//! killed with `cgroup.kill` (Linux 5.14), and the worker has ended when `cgroup.events` says
//! `populated 0` (the shell polls it for POLLPRI, which the kernel raises when it changes).

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::poll::{PollFd, PollFlags, poll};
use nix::unistd::{Gid, Pid, Uid};

use crate::config::io_reason;
use crate::upgrade::format::{CgroupState, LeafState};

/// multinode's own leaf in the service group.
const SUPERVISOR: &str = "supervisor";

/// The most groups the service group may hold: two per slot during a reload (of at most 4096
/// slots), and room for the supervisor's leaf.
const MAX_DESCENDANTS: u32 = 2 * 4096 + 16;

/// The service group of a running multinode and the leaves of its workers.
pub struct Service {
    /// The service group's directory.
    pub path: PathBuf,
    /// Numbers the leaves, so that an old and a new worker of a slot never share one.
    next: u64,
    leaves: Vec<(Pid, Leaf)>,
}

/// One worker's group.
pub struct Leaf {
    pub path: PathBuf,
    /// Its `cgroup.events`, read and polled through this one fd: the kernel marks a change
    /// per open file, and a read clears the mark. `None`: the group was gone when an upgraded
    /// image opened it again (it is empty, then).
    events: Option<File>,
    /// `cgroup.kill` was written.
    killed: bool,
}

/// Creates the service group under multinode's own group, moves multinode into its leaf,
/// and delegates the group to `owner` (the user multinode is about to become). Run while
/// still privileged and single-threaded. The error says why cgroups cannot be used here.
pub fn setup(name: &str, owner: Option<(Uid, Gid)>) -> Result<Service, String> {
    let own = own_group()?;
    let path = own.join(format!("multinode-{name}.{}", std::process::id()));
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&path)
        .map_err(|e| format!("cannot create {}: {}", path.display(), io_reason(&e)))?;
    let mut undo = Undo {
        own: &own,
        path: &path,
        moved: false,
    };
    if !path.join("cgroup.kill").exists() {
        return Err("this kernel has no cgroup.kill (Linux 5.14 or later is needed)".into());
    }
    let leaf = path.join(SUPERVISOR);
    std::fs::DirBuilder::new()
        .mode(0o755)
        .create(&leaf)
        .map_err(|e| format!("cannot create {}: {}", leaf.display(), io_reason(&e)))?;
    write(&leaf.join("cgroup.procs"), b"0").map_err(|e| {
        format!(
            "cannot move multinode into {}: {}",
            leaf.display(),
            io_reason(&e)
        )
    })?;
    undo.moved = true;
    // Limits first, while the group is root's alone; they stay root's.
    write(&path.join("cgroup.max.depth"), b"1")
        .and_then(|()| {
            write(
                &path.join("cgroup.max.descendants"),
                MAX_DESCENDANTS.to_string().as_bytes(),
            )
        })
        .map_err(|e| format!("cannot limit {}: {}", path.display(), io_reason(&e)))?;
    if let Some((uid, gid)) = owner {
        delegate(&path, uid, gid)
            .map_err(|e| format!("cannot delegate {}: {}", path.display(), io_reason(&e)))?;
    }
    std::mem::forget(undo);
    Ok(Service {
        path,
        next: 0,
        leaves: Vec::new(),
    })
}

/// Takes back a half-made service group.
struct Undo<'a> {
    own: &'a Path,
    path: &'a Path,
    moved: bool,
}

impl Drop for Undo<'_> {
    fn drop(&mut self) {
        if self.moved {
            let _ = write(&self.own.join("cgroup.procs"), b"0");
        }
        let _ = std::fs::remove_dir(self.path.join(SUPERVISOR));
        let _ = std::fs::remove_dir(self.path);
    }
}

/// Gives the group to the workers' user as systemd's `Delegate=yes` does: the directory and
/// the files that create, populate and structure groups under it. Through fds opened without
/// following links, though nobody else could have changed the new directory yet.
fn delegate(path: &Path, uid: Uid, gid: Gid) -> io::Result<()> {
    let nofollow = |p: &Path, dir: bool| {
        let mut flags = libc::O_NOFOLLOW;
        if dir {
            flags |= libc::O_DIRECTORY;
        }
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags)
            .open(p)
    };
    let chown = |f: File| std::os::unix::fs::fchown(&f, Some(uid.as_raw()), Some(gid.as_raw()));
    chown(nofollow(path, true)?)?;
    for file in ["cgroup.procs", "cgroup.subtree_control", "cgroup.threads"] {
        chown(nofollow(&path.join(file), false)?)?;
    }
    Ok(())
}

impl Service {
    /// A new leaf for a worker of `slot`, and its `cgroup.procs` open for writing: the child
    /// joins the group by writing `0` to it.
    pub fn leaf(&mut self, slot: u32) -> io::Result<(Leaf, File)> {
        self.next += 1;
        let path = self.path.join(format!("worker.{slot}.{}", self.next));
        std::fs::DirBuilder::new().mode(0o755).create(&path)?;
        let opened = std::fs::OpenOptions::new()
            .write(true)
            .open(path.join("cgroup.procs"))
            .and_then(|procs| Ok((File::open(path.join("cgroup.events"))?, procs)));
        match opened {
            Ok((events, procs)) => Ok((
                Leaf {
                    path,
                    events: Some(events),
                    killed: false,
                },
                procs,
            )),
            Err(e) => {
                let _ = std::fs::remove_dir(&path);
                Err(e)
            }
        }
    }

    /// `--max-memory` with the memory controller: a hard ceiling (`memory.max`) at twice the
    /// recycling limit, so that a worker growing faster than the once-a-second sample can
    /// catch is stopped by the kernel before it takes the host down. Without the controller
    /// the file does not exist and this does nothing.
    pub fn limit_memory(leaf: &Leaf, recycle_at: u64) {
        let max = leaf.path.join("memory.max");
        if max.exists() {
            let _ = write(&max, recycle_at.saturating_mul(2).to_string().as_bytes());
        }
    }

    /// The worker whose group process `pid` is in (its `/proc/PID/cgroup`), if any: how a
    /// notify datagram from a helper that left its worker's process tree is credited.
    pub fn worker_of(&self, pid: Pid) -> Option<Pid> {
        let text = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
        let rel = text.lines().find_map(|l| l.strip_prefix("0::"))?;
        let rel = Path::new(rel.trim_start_matches('/'));
        self.leaves
            .iter()
            .find(|(_, l)| !rel.as_os_str().is_empty() && l.path.ends_with(rel))
            .map(|(p, _)| *p)
    }

    /// The worker `pid` runs in `leaf`.
    pub fn adopt(&mut self, pid: Pid, leaf: Leaf) {
        self.leaves.push((pid, leaf));
    }

    /// The directory of worker `pid`'s group.
    pub fn leaf_path(&self, pid: Pid) -> Option<&Path> {
        self.get(pid).map(|l| l.path.as_path())
    }

    fn get(&self, pid: Pid) -> Option<&Leaf> {
        self.leaves.iter().find(|(p, _)| *p == pid).map(|(_, l)| l)
    }

    /// Whether a process of worker `pid` is left in its group; `None`: it has none.
    pub fn populated(&self, pid: Pid) -> Option<bool> {
        self.get(pid)
            .map(|l| l.events.as_ref().is_some_and(populated))
    }

    /// Kills everything in worker `pid`'s group (once; later calls do nothing).
    pub fn kill(&mut self, pid: Pid) {
        if let Some((_, l)) = self.leaves.iter_mut().find(|(p, _)| *p == pid) {
            if !l.killed {
                l.killed = kill(&l.path).is_ok();
            }
        }
    }

    /// The `cgroup.events` of worker `pid`, to poll for POLLPRI.
    pub fn events(&self, pid: Pid) -> Option<BorrowedFd<'_>> {
        self.get(pid)?.events.as_ref().map(|f| f.as_fd())
    }

    /// The groups as an upgrade hands them over (no fd: each `cgroup.events` is opened again,
    /// so the new image gets a change mark of its own).
    pub fn save(&self) -> CgroupState {
        CgroupState {
            path: self.path.as_path().into(),
            next: self.next,
            leaves: self
                .leaves
                .iter()
                .map(|(pid, l)| LeafState {
                    pid: pid.as_raw(),
                    path: l.path.as_path().into(),
                    killed: l.killed,
                })
                .collect(),
        }
    }

    /// The groups an upgrade handed over.
    pub fn load(s: CgroupState) -> Service {
        Service {
            path: s.path.path(),
            next: s.next,
            leaves: s
                .leaves
                .into_iter()
                .map(|l| {
                    let path = l.path.path();
                    let leaf = Leaf {
                        events: File::open(path.join("cgroup.events")).ok(),
                        path,
                        killed: l.killed,
                    };
                    (Pid::from_raw(l.pid), leaf)
                })
                .collect(),
        }
    }

    /// Worker `pid` has ended: its group goes.
    pub fn release(&mut self, pid: Pid) {
        if let Some(i) = self.leaves.iter().position(|(p, _)| *p == pid) {
            let (_, leaf) = self.leaves.swap_remove(i);
            leaf.remove();
        }
    }

    /// At exit: kills every group of the service but multinode's own (what workers left,
    /// including groups they made), waits until they are empty or `until`, and removes them.
    /// Returns how many had processes in them.
    pub fn sweep(&mut self, until: Instant) -> usize {
        self.leaves.clear();
        let Ok(entries) = std::fs::read_dir(&self.path) else {
            return 0;
        };
        let mut busy = 0;
        for e in entries.flatten() {
            if e.file_name() == SUPERVISOR || !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let dir = e.path();
            let full = File::open(dir.join("cgroup.events")).is_ok_and(|f| populated(&f));
            if full {
                busy += 1;
                let _ = kill(&dir);
                wait_empty(&dir, until);
            }
            let _ = remove_tree(&dir);
        }
        busy
    }
}

impl Leaf {
    /// Removes the group (and any a worker made under it, were the depth limit lifted).
    pub fn remove(self) {
        let _ = remove_tree(&self.path);
    }
}

/// The directory of the cgroup v2 group this process is in.
pub fn own_group() -> Result<PathBuf, String> {
    let read = |p: &str| {
        std::fs::read_to_string(p).map_err(|e| format!("cannot read {p}: {}", io_reason(&e)))
    };
    let own = own_path(&read("/proc/self/cgroup")?)
        .ok_or("not in a cgroup v2 hierarchy (no 0:: line in /proc/self/cgroup)")?;
    locate(&read("/proc/self/mountinfo")?, &own)
        .ok_or_else(|| format!("no cgroup v2 hierarchy mounted where this process can see {own}"))
}

/// The group in the unified (v2) hierarchy: the `0::PATH` line of /proc/PID/cgroup.
fn own_path(proc_cgroup: &str) -> Option<String> {
    proc_cgroup
        .lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

/// The directory of group `own` given the mount table: the first cgroup2 mount whose root
/// contains it.
fn locate(mountinfo: &str, own: &str) -> Option<PathBuf> {
    for line in mountinfo.lines() {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPEROPTS
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split(' ').next() != Some("cgroup2") {
            continue;
        }
        let f: Vec<&str> = left.split(' ').collect();
        let (Some(root), Some(point)) = (f.get(3), f.get(4)) else {
            continue;
        };
        let (root, point) = (unescape(root), unescape(point));
        let rel = if root == "/" {
            Some(own)
        } else {
            own.strip_prefix(root.as_str())
                .filter(|r| r.is_empty() || r.starts_with('/'))
        };
        if let Some(rel) = rel {
            return Some(Path::new(&point).join(rel.trim_start_matches('/')));
        }
    }
    None
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Writes `data` in one `write` (what cgroup files expect).
pub fn write(path: &Path, data: &[u8]) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .write_all(data)
}

/// Whether `cgroup.events` says a process is in the group or below it. A file that cannot
/// be read belongs to a group that is gone.
pub fn populated(events: &File) -> bool {
    let mut buf = [0u8; 256];
    let n = events.read_at(&mut buf, 0).unwrap_or(0);
    buf[..n].split(|&c| c == b'\n').any(|l| l == b"populated 1")
}

/// SIGKILLs every process in the group `dir` and below it (`cgroup.kill`).
pub fn kill(dir: &Path) -> io::Result<()> {
    write(&dir.join("cgroup.kill"), b"1")
}

/// Waits until group `dir` is empty, or `until`; true if it is.
pub fn wait_empty(dir: &Path, until: Instant) -> bool {
    let Ok(events) = File::open(dir.join("cgroup.events")) else {
        return true;
    };
    loop {
        if !populated(&events) {
            return true;
        }
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        // The kernel raises POLLPRI when the file changes; wake now and then anyway.
        let ms = left.min(Duration::from_millis(100)).as_millis() as u16;
        let mut fds = [PollFd::new(events.as_fd(), PollFlags::POLLPRI)];
        let _ = poll(&mut fds, ms.max(1));
    }
}

/// Removes group `dir` and the groups under it (at most [`MAX_DESCENDANTS`]), deepest first.
/// A group still populated stays (EBUSY).
pub fn remove_tree(dir: &Path) -> io::Result<()> {
    let mut all = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < all.len() && all.len() < MAX_DESCENDANTS as usize {
        if let Ok(entries) = std::fs::read_dir(&all[i]) {
            for e in entries.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    all.push(e.path());
                }
            }
        }
        i += 1;
    }
    // Breadth-first order: a group comes after its parent, so the reverse removes children first.
    for d in all[1..].iter().rev() {
        let _ = std::fs::remove_dir(d);
    }
    std::fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn the_v2_mount_is_found_wherever_it_is() {
        assert_eq!(
            locate(HYBRID, "/"),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        let unified =
            "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n";
        assert_eq!(
            locate(unified, "/system.slice/app.service"),
            Some(PathBuf::from("/sys/fs/cgroup/system.slice/app.service"))
        );
        assert_eq!(locate("", "/"), None);
        assert_eq!(locate(HYBRID.lines().next().unwrap(), "/"), None);
    }

    #[test]
    fn a_mount_of_a_subtree_holds_only_what_is_under_it() {
        // A container's view: the host's /docker/abc mounted as /sys/fs/cgroup.
        let sub = "50 40 0:26 /docker/abc /sys/fs/cgroup ro - cgroup2 cgroup2 rw\n";
        assert_eq!(
            locate(sub, "/docker/abc/app"),
            Some(PathBuf::from("/sys/fs/cgroup/app"))
        );
        assert_eq!(
            locate(sub, "/docker/abc"),
            Some(PathBuf::from("/sys/fs/cgroup"))
        );
        assert_eq!(locate(sub, "/docker/abcd"), None);
        assert_eq!(locate(sub, "/other"), None);
    }

    #[test]
    fn escaped_mount_points() {
        let spaced = "41 31 0:38 / /mnt/cg\\040two rw - cgroup2 cgroup2 rw\n";
        assert_eq!(locate(spaced, "/a"), Some(PathBuf::from("/mnt/cg two/a")));
        assert_eq!(unescape("a\\134b\\0"), "a\\b\\0");
    }

    #[test]
    fn own_group_is_the_unified_line() {
        let v1_and_v2 = "4:memory:/x\n1:name=systemd:/y\n0::/user.slice/s.scope\n";
        assert_eq!(own_path(v1_and_v2).as_deref(), Some("/user.slice/s.scope"));
        assert_eq!(own_path("4:memory:/x\n"), None);
    }
}
