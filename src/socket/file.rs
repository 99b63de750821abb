//! Unix socket files and the directories they are made in, handled so that root never changes
//! a file by path where a less privileged user could swap it for something else. Shared by the
//! listening sockets (`socket`) and the control socket (`control`).
//!
//! - [`Dir::open`] resolves a directory one component at a time (`openat` with `O_NOFOLLOW`,
//!   symbolic links read and followed by hand) and notes whether anything on the way could have
//!   been changed by a user other than root and us: a directory such a user owns, or can write
//!   without the sticky bit, or a symbolic link such a user owns. Such a directory is
//!   *exposed*. Every later step works through the directory's fd, never its path again.
//! - [`bind_in`] clears a stale socket, binds with a umask that gives `--socket-mode` at once
//!   (no chmod afterwards), and then finds the new file through the directory fd
//!   (`O_PATH|O_NOFOLLOW`) and checks it is a socket created by us with one link. Who the file
//!   must belong to (the workers' user) is then settled without a path:
//!   - in a directory that is not exposed, nobody else can rename its entries, so root gives
//!     the checked fd its owner with `fchownat(fd, "", AT_EMPTY_PATH)`;
//!   - in an exposed directory, root does nothing there as root: the stale check, the unlink
//!     and the bind run with the workers' user as filesystem uid and gid (`setfsuid`, this
//!     thread only), so the file is born theirs and root's rights are never lent to a path
//!     someone else chose. If that user cannot create files there, the start fails with a
//!     message saying so.
//! - [`SocketFile`] remembers the file by device and inode and removes it (through the
//!   directory fd) only while it is still that file.

use std::collections::VecDeque;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, AtFlags, OFlag, openat, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchownat, unlinkat};

use crate::upgrade::format::SocketFileState;

/// Symbolic links followed while resolving one directory, as the kernel allows.
const MAX_LINKS: u32 = 40;

/// Whether `st` (a directory or a symbolic link) could be changed by a user other than root
/// and us: owned by such a user, or (a directory) writable by group or others without the
/// sticky bit.
pub fn exposed(st: &FileStat) -> bool {
    let me = Uid::effective().as_raw();
    let trusted_owner = st.st_uid == 0 || st.st_uid == me;
    let is_dir = st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFDIR.bits();
    let writable = st.st_mode & 0o022 != 0;
    let sticky = st.st_mode & libc::S_ISVTX != 0;
    !trusted_owner || (is_dir && writable && !sticky)
}

fn errno(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// A directory held open (`O_PATH`): socket files are made, checked and removed through it.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    /// The path it was opened by, for messages.
    pub path: PathBuf,
    /// Something on the way to it, or the directory itself, can be changed by a user other
    /// than root and us.
    pub exposed: bool,
}

impl Dir {
    /// Whether the directory this fd holds is still the one at its path: a directory removed
    /// (and perhaps made again) since it was opened would take a socket nobody can reach by
    /// the path. Checked after a bind: a directory with a socket in it can no longer be
    /// removed.
    pub fn still_at_path(&self) -> bool {
        let (Ok(held), Ok(at)) = (fstat(&self.fd), std::fs::metadata(&self.path)) else {
            return false;
        };
        use std::os::unix::fs::MetadataExt;
        held.st_dev == at.dev() && held.st_ino == at.ino()
    }

    /// Opens the directory at `path`, following symbolic links as the kernel would (a path an
    /// operator gives may go through `/var/run`), one component at a time.
    pub fn open(path: &Path) -> io::Result<Dir> {
        let abs = if path.is_absolute() {
            path.to_path_buf()
        } else {
            std::env::current_dir()?.join(path)
        };
        let flags = OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC;
        let root = || openat(AT_FDCWD, "/", flags, Mode::empty()).map_err(errno);
        let mut todo: VecDeque<OsString> = components(&abs);
        let mut cur = root()?;
        let mut exposed = false;
        let mut links = 0;
        while let Some(name) = todo.pop_front() {
            if name == ".." {
                cur = openat(&cur, "..", flags, Mode::empty()).map_err(errno)?;
                continue;
            }
            exposed |= self::exposed(&fstat(&cur).map_err(errno)?);
            let st =
                fstatat(&cur, name.as_os_str(), AtFlags::AT_SYMLINK_NOFOLLOW).map_err(errno)?;
            if st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFLNK.bits() {
                links += 1;
                if links > MAX_LINKS {
                    return Err(errno(Errno::ELOOP));
                }
                exposed |= self::exposed(&st);
                let target = PathBuf::from(readlinkat(&cur, name.as_os_str()).map_err(errno)?);
                if target.is_absolute() {
                    cur = root()?;
                }
                for c in components(&target).into_iter().rev() {
                    todo.push_front(c);
                }
                continue;
            }
            cur = openat(
                &cur,
                name.as_os_str(),
                flags | OFlag::O_NOFOLLOW,
                Mode::empty(),
            )
            .map_err(errno)?;
        }
        exposed |= self::exposed(&fstat(&cur).map_err(errno)?);
        Ok(Dir {
            fd: cur,
            path: path.to_path_buf(),
            exposed,
        })
    }

    /// A directory opened by the caller, which has made sure that only root and we can change
    /// it or anything on the way to it.
    pub fn from_fd(fd: OwnedFd, path: PathBuf) -> Dir {
        Dir {
            fd,
            path,
            exposed: false,
        }
    }

    /// A path to `name` in this very directory, whatever happened to the path it was opened
    /// by since: `/proc/self/fd/N/NAME`. Without /proc (or when that would be too long for a
    /// socket address), the plain path; [`bind_in`] checks the result through the fd anyway.
    fn reach(&self, name: &OsStr) -> PathBuf {
        use std::os::fd::AsRawFd;
        let fd_dir = PathBuf::from(format!("/proc/self/fd/{}", self.fd.as_raw_fd()));
        let via = fd_dir.join(name);
        if via.as_os_str().len() < 108 && fd_dir.is_dir() {
            via
        } else {
            self.path.join(name)
        }
    }
}

impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The normal components of `p` (`.` dropped, `..` kept), as a queue.
fn components(p: &Path) -> VecDeque<OsString> {
    p.components()
        .filter_map(|c| match c {
            Component::Normal(n) => Some(n.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// Why a path cannot take a new Unix socket.
#[derive(Debug)]
pub enum Failure {
    /// Something other than a socket is there (a symbolic link, a file, a directory).
    NotSocket,
    /// A server accepts on the socket there.
    InUse,
    /// `bind` failed; `as_owner`: it ran as the workers' user (an exposed directory).
    Bind(Errno, bool),
    /// The file found at the path right after the bind is not the socket we made.
    Changed,
    /// Something else could not be done.
    Io(&'static str, io::Error),
}

/// Clears `name` in `dir` for a new socket: nothing there is fine, a socket nobody accepts on
/// (left by a process that died) is removed; a live socket or a file of another kind is
/// refused.
fn clear_stale(dir: &Dir, name: &OsStr) -> Result<(), Failure> {
    let st = match fstatat(dir, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => st,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(Failure::Io("cannot stat", errno(e))),
    };
    if st.st_mode & SFlag::S_IFMT.bits() != SFlag::S_IFSOCK.bits() {
        return Err(Failure::NotSocket);
    }
    match std::os::unix::net::UnixStream::connect(dir.reach(name)) {
        Ok(_) => Err(Failure::InUse),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => {
            match unlinkat(dir, name, UnlinkatFlags::NoRemoveDir) {
                Ok(()) | Err(Errno::ENOENT) => Ok(()),
                Err(e) => Err(Failure::Io("cannot replace the stale socket", errno(e))),
            }
        }
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        Err(e) => Err(Failure::Io("cannot check whether something listens on", e)),
    }
}

/// Runs `f` with `umask`, restoring the old one after. The umask is per process: callers run
/// before any other thread creates files.
fn with_umask<T>(umask: u32, f: impl FnOnce() -> T) -> T {
    let old = nix::sys::stat::umask(Mode::from_bits_truncate(umask));
    let r = f();
    nix::sys::stat::umask(old);
    r
}

/// Runs `f` with `ids` as this thread's filesystem uid and gid (as root only), so that what it
/// creates is born theirs and what it may touch is what they may touch.
fn with_fs_ids<T>(ids: Option<(Uid, Gid)>, f: impl FnOnce() -> T) -> io::Result<T> {
    let Some((uid, gid)) = ids else {
        return Ok(f());
    };
    let old_gid = nix::unistd::setfsgid(gid);
    let old_uid = nix::unistd::setfsuid(uid);
    // setfsuid reports no error: ask again (an invalid id changes nothing and returns it).
    let took = nix::unistd::setfsuid(Uid::from_raw(u32::MAX)) == uid
        && nix::unistd::setfsgid(Gid::from_raw(u32::MAX)) == gid;
    let r = took.then(f);
    nix::unistd::setfsuid(old_uid);
    nix::unistd::setfsgid(old_gid);
    r.ok_or_else(|| io::Error::other("could not take the workers' filesystem ids"))
}

/// Makes the socket file `name` in `dir`: clears a stale one, calls `bind` with the path to
/// bind to (under a umask that gives `mode`), checks that the file now there is the socket it
/// made, and gives it `owner` (see the module docs for how, in each kind of directory).
pub fn bind_in<T>(
    dir: &Dir,
    name: &OsStr,
    mode: u32,
    owner: Option<(Uid, Gid)>,
    bind: impl FnOnce(&Path) -> nix::Result<T>,
) -> Result<(T, SocketFile), Failure> {
    let root = Uid::effective().is_root();
    let owner = owner.filter(|(uid, _)| root && !uid.is_root());
    // In an exposed directory everything runs as the workers' user.
    let as_owner = owner.filter(|_| dir.exposed);
    let creator = as_owner.map_or(Uid::effective(), |(uid, _)| uid);
    let path = dir.reach(name);
    let bound = with_fs_ids(as_owner, || {
        clear_stale(dir, name)?;
        with_umask(0o777 & !mode, || bind(&path)).map_err(|e| Failure::Bind(e, as_owner.is_some()))
    })
    .map_err(|e| Failure::Io("cannot switch to the workers' user to create", e))??;
    let file = openat(
        dir,
        name,
        OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|_| Failure::Changed)?;
    let st = fstat(&file).map_err(|e| Failure::Io("cannot stat", errno(e)))?;
    let is_socket = st.st_mode & SFlag::S_IFMT.bits() == SFlag::S_IFSOCK.bits();
    if !is_socket || st.st_nlink != 1 || st.st_uid != creator.as_raw() {
        return Err(Failure::Changed);
    }
    let made = SocketFile {
        path: dir.path.join(name),
        dev: st.st_dev,
        ino: st.st_ino,
        dir: dir
            .fd
            .try_clone()
            .map_err(|e| Failure::Io("cannot keep the directory of", e))?,
        name: name.to_os_string(),
        present: true,
    };
    // Not exposed: only root can rename entries here, so the checked fd is the file we made.
    if let Some((uid, gid)) = owner.filter(|_| as_owner.is_none()) {
        fchownat(&file, "", Some(uid), Some(gid), AtFlags::AT_EMPTY_PATH)
            .map_err(|e| Failure::Io("cannot give the workers' user", errno(e)))?;
    }
    Ok((bound, made))
}

/// A socket file this process created, identified by device and inode so that a file some
/// other process put at the same path since is never removed. Removed on drop if still there.
#[derive(Debug)]
pub struct SocketFile {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
    dir: OwnedFd,
    name: OsString,
    present: bool,
}

/// Which file to remove at exit: `path`, while it is still the inode (`dev`, `ino`) this run
/// made there. What a helper that outlives the supervisor is handed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileId {
    pub path: PathBuf,
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The file is still at its path.
    pub fn present(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        std::fs::symlink_metadata(&self.path)
            .is_ok_and(|m| m.dev() == self.dev && m.ino() == self.ino)
    }
}

impl SocketFile {
    pub fn id(&self) -> FileId {
        FileId {
            path: self.path.clone(),
            dev: self.dev,
            ino: self.ino,
        }
    }

    /// Removes the file if it is still ours. `Ok(false)`: it was already gone or replaced.
    pub fn remove(&mut self) -> io::Result<bool> {
        if !self.present {
            return Ok(false);
        }
        let ours = fstatat(
            &self.dir,
            self.name.as_bytes(),
            AtFlags::AT_SYMLINK_NOFOLLOW,
        )
        .map(|st| st.st_dev == self.dev && st.st_ino == self.ino)
        .unwrap_or(false);
        if !ours {
            self.present = false;
            return Ok(false);
        }
        match unlinkat(&self.dir, self.name.as_bytes(), UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(Errno::ENOENT) => {
                self.present = false;
                Ok(true)
            }
            Err(e) => Err(errno(e)),
        }
    }
}

impl SocketFile {
    /// The file as an upgrade hands it over: its directory's fd goes too.
    pub fn save(&self, t: &mut crate::upgrade::state::FdTable) -> SocketFileState {
        SocketFileState {
            path: self.path.as_path().into(),
            dev: self.dev,
            ino: self.ino,
            dir_fd: t.add(
                self.dir.as_fd(),
                format!("the directory of {}", self.path.display()),
            ),
            name: self.name.as_os_str().into(),
            present: self.present,
        }
    }

    /// The file an upgrade handed over.
    pub fn load(s: SocketFileState, r: &mut crate::upgrade::restore::Restorer) -> SocketFile {
        SocketFile {
            path: s.path.path(),
            dev: s.dev,
            ino: s.ino,
            dir: r.take(s.dir_fd),
            name: s.name.0,
            present: s.present,
        }
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = self.remove();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("mn-file-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn open_follows_links_and_notes_exposure() {
        let d = scratch("open");
        std::fs::create_dir(d.join("real")).unwrap();
        std::os::unix::fs::symlink("real", d.join("link")).unwrap();
        let via_link = Dir::open(&d.join("link")).unwrap();
        let direct = Dir::open(&d.join("real")).unwrap();
        let a = fstat(&via_link).unwrap();
        let b = fstat(&direct).unwrap();
        assert_eq!((a.st_dev, a.st_ino), (b.st_dev, b.st_ino));
        assert!(Dir::open(&d.join("real/../real")).is_ok());
        assert!(Dir::open(&d.join("missing")).is_err());
        std::fs::write(d.join("file"), "").unwrap();
        assert!(Dir::open(&d.join("file")).is_err());
        // 1777: writable by all but sticky, so not exposed by itself; 0777 is.
        use std::os::unix::fs::PermissionsExt;
        let perm = |m| std::fs::Permissions::from_mode(m);
        std::fs::set_permissions(d.join("real"), perm(0o1777)).unwrap();
        assert!(!Dir::open(&d.join("real")).unwrap().exposed);
        std::fs::set_permissions(d.join("real"), perm(0o777)).unwrap();
        assert!(Dir::open(&d.join("real")).unwrap().exposed);
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn bind_gives_the_mode_and_refuses_what_is_not_a_socket() {
        let d = scratch("bind");
        let dir = Dir::open(&d).unwrap();
        let bind = |p: &Path| {
            std::os::unix::net::UnixListener::bind(p)
                .map_err(|e| Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))
        };
        let (l, mut f) = bind_in(&dir, OsStr::new("a.sock"), 0o640, None, bind).unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::symlink_metadata(d.join("a.sock"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
        // Live: refused; once closed: stale, replaced.
        assert!(matches!(
            bind_in(&dir, OsStr::new("a.sock"), 0o600, None, bind),
            Err(Failure::InUse)
        ));
        drop(l);
        f.present = false; // keep the file: it is stale now
        let (_l, g) = bind_in(&dir, OsStr::new("a.sock"), 0o600, None, bind).unwrap();
        assert_ne!(g.ino, 0);
        std::os::unix::fs::symlink("/etc/hostname", d.join("b.sock")).unwrap();
        assert!(matches!(
            bind_in(&dir, OsStr::new("b.sock"), 0o600, None, bind),
            Err(Failure::NotSocket)
        ));
        drop(g);
        assert!(!d.join("a.sock").exists(), "removed on drop");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
