//! The control socket: `multinode status | reload | scale | stop` talk to a running supervisor
//! through a Unix stream socket, one JSON request line and one JSON answer line each
//! (`protocol.rs` has the types, `server.rs` the supervisor's end, `client.rs` the commands).
//!
//! Where it lives: `--control PATH`, else `BASE/NAME/control.sock` with BASE `/run/multinode`
//! as root, `$XDG_RUNTIME_DIR/multinode` otherwise (or `$TMPDIR/multinode-UID`, normally
//! `/tmp`, without one). Started as root, BASE and NAME/ belong to root (0755) and the socket
//! (0666) too: the workers' user can change none of them, and the supervisor keeps serving on
//! its bound fd after the drop. Who may do what is decided per connection by `SO_PEERCRED`
//! (server.rs): `status` for anyone who can reach the socket, the rest for root and the user
//! who started multinode. Another user's BASE must be theirs (and 0700 in /tmp); clients
//! refuse a directory someone else could change. A second supervisor with the same name finds
//! the socket alive and refuses to start.

pub mod client;
mod handover;
pub mod protocol;
pub mod server;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AT_FDCWD, OFlag, openat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{Gid, Uid, fchown};

use crate::error::{Error, Exit, Result};
use crate::socket::file::Dir;
use protocol::{Reply, Request};

/// Where root's supervisors keep their control sockets; other users' clients look there too
/// for a service named with `--name` that is not theirs.
pub const SYSTEM_BASE: &str = "/run/multinode";

/// The kinds of base directory, each with its own rule.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Base {
    /// `/run/multinode`: root's, 0755 (anyone may reach a socket; `SO_PEERCRED` decides).
    System,
    /// `$XDG_RUNTIME_DIR/multinode`: ours, writable by nobody else.
    Runtime,
    /// `$TMPDIR/multinode-UID` (`/tmp/...`): ours and exactly 0700, since anyone can create a
    /// name in /tmp first.
    Tmp,
}

fn base() -> (PathBuf, Base) {
    if Uid::effective().is_root() {
        return (PathBuf::from(SYSTEM_BASE), Base::System);
    }
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_absolute() && d.is_dir());
    match runtime {
        Some(d) => (d.join("multinode"), Base::Runtime),
        None => (
            std::env::temp_dir().join(format!("multinode-{}", Uid::effective())),
            Base::Tmp,
        ),
    }
}

/// The directory the control sockets of all supervisors of this user are in (not checked).
pub fn base_dir() -> PathBuf {
    base().0
}

pub fn default_path(name: &str) -> PathBuf {
    base_dir().join(name).join("control.sock")
}

/// What decides whether a directory can be trusted.
#[derive(Clone, Copy)]
struct Attrs {
    is_dir: bool,
    uid: u32,
    mode: u32,
}

impl From<&std::fs::Metadata> for Attrs {
    fn from(m: &std::fs::Metadata) -> Attrs {
        Attrs {
            is_dir: m.file_type().is_dir(),
            uid: m.uid(),
            mode: m.mode() & 0o7777,
        }
    }
}

impl From<&nix::sys::stat::FileStat> for Attrs {
    fn from(st: &nix::sys::stat::FileStat) -> Attrs {
        Attrs {
            is_dir: st.st_mode & libc::S_IFMT == libc::S_IFDIR,
            uid: st.st_uid,
            mode: st.st_mode & 0o7777,
        }
    }
}

/// What is wrong with `path` (the base directory of `kind` when `is_base`, else one service's
/// directory in it) for this user to trust it, in one sentence; `None`: nothing. `repair`: as
/// root, an owner or mode that `serve` fixes through the directory's fd is fine.
fn distrust(path: &Path, kind: Base, is_base: bool, a: Attrs, repair: bool) -> Option<String> {
    let shown = path.display();
    let me = Uid::effective().as_raw();
    if !a.is_dir {
        return Some(format!(
            "control directory {shown} is a symbolic link or not a directory; remove it (rm {shown}) and start again"
        ));
    }
    let system = kind == Base::System;
    if repair && system {
        return None;
    }
    let fix = if system {
        "start multinode serve as root to repair it, or: chown root:root; chmod 755"
    } else {
        "remove it, or set XDG_RUNTIME_DIR to a private directory of yours"
    };
    if a.uid != me && !(a.uid == 0 && system) {
        return Some(format!(
            "control directory {shown} belongs to uid {}, not to uid {me}: that user could impersonate your services there; {fix}",
            a.uid
        ));
    }
    if kind == Base::Tmp && is_base && a.mode != 0o700 {
        return Some(format!(
            "control directory {shown} has mode {:04o}, not 0700: other users may have put files in it; remove it (rm -r {shown}) and start again, or set XDG_RUNTIME_DIR",
            a.mode
        ));
    }
    if a.mode & 0o022 != 0 {
        return Some(format!(
            "control directory {shown} is writable by other users (mode {:04o}): they could impersonate your services there; {fix}",
            a.mode
        ));
    }
    None
}

/// Checks this user's base directory if it exists (never creating it): the clients' view, and
/// `multinode check`'s (`repair`: what `serve` will fix as root is fine).
pub fn checked_base(repair: bool) -> Result<PathBuf> {
    let (path, kind) = base();
    if let Ok(meta) = std::fs::symlink_metadata(&path) {
        if let Some(why) = distrust(&path, kind, true, (&meta).into(), repair) {
            return Err(Error::socket(why));
        }
    }
    Ok(path)
}

/// The directory of the service `name` in `base` (of `kind`), if it exists and can be trusted.
fn service_dir(base: &Path, kind: Base, name: &str) -> Result<Option<PathBuf>> {
    let dir = base.join(name);
    match std::fs::symlink_metadata(&dir) {
        Ok(meta) => match distrust(&dir, kind, false, (&meta).into(), false) {
            None => Ok(Some(dir)),
            Some(why) => Err(Error::socket(why)),
        },
        Err(_) => Ok(None),
    }
}

/// `/run/multinode` as another user's client sees it: only if root's and not writable by others.
fn system_base() -> Option<PathBuf> {
    let meta = std::fs::symlink_metadata(SYSTEM_BASE).ok()?;
    distrust(
        Path::new(SYSTEM_BASE),
        Base::System,
        true,
        (&meta).into(),
        false,
    )
    .is_none()
    .then(|| PathBuf::from(SYSTEM_BASE))
}

// ---- the supervisor's side: making the directory ----

fn open_dir_nofollow(at: std::os::fd::BorrowedFd<'_>, path: &Path) -> nix::Result<OwnedFd> {
    openat(
        at,
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Creates `name` under `at` if missing (mode `mode`) and opens it without following a
/// symbolic link. `made`: it was created now.
fn make_dir(
    at: std::os::fd::BorrowedFd<'_>,
    path: &Path,
    full: &Path,
    mode: u32,
    (kind, is_base): (Base, bool),
) -> Result<(OwnedFd, bool)> {
    let shown = full.display();
    let made = match mkdirat(at, path, Mode::from_bits_truncate(mode)) {
        Ok(()) => true,
        Err(Errno::EEXIST) => false,
        Err(e) => {
            return Err(Error::socket(format!(
                "cannot create the control directory {shown}: {}",
                e.desc().to_lowercase()
            )));
        }
    };
    let fd = open_dir_nofollow(at, path).map_err(|e| match e {
        Errno::ELOOP | Errno::ENOTDIR => Error::socket(format!(
            "control directory {shown} is a symbolic link or not a directory; remove it (rm {shown}) and start again"
        )),
        e => {
            // Say why when it is not ours (another user's 0700 directory cannot be opened).
            let why = nix::sys::stat::fstatat(at, path, nix::fcntl::AtFlags::AT_SYMLINK_NOFOLLOW)
                .ok()
                .and_then(|st| distrust(full, kind, is_base, (&st).into(), false));
            Error::socket(why.unwrap_or_else(|| {
                format!(
                    "cannot open the control directory {shown}: {}",
                    e.desc().to_lowercase()
                )
            }))
        }
    })?;
    Ok((fd, made))
}

/// As root: gives the open directory `fd` owner root and `mode` if it has others (through the
/// fd, never the path). As another user: refuses a directory that is not ours (or, for the
/// base in /tmp, not 0700).
fn settle(
    fd: &OwnedFd,
    path: &Path,
    kind: Base,
    is_base: bool,
    mode: u32,
    made: bool,
) -> Result<()> {
    let shown = path.display();
    let fail = |what: &str, e: Errno| {
        Error::socket(format!(
            "control directory {shown}: cannot {what}: {}",
            e.desc().to_lowercase()
        ))
    };
    let mut st = fstat(fd).map_err(|e| fail("stat it", e))?;
    if Uid::effective().is_root() {
        if st.st_uid != 0 || st.st_gid != 0 {
            fchown(fd, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
                .map_err(|e| fail("give it to root", e))?;
        }
        if st.st_mode & 0o7777 != mode {
            fchmod(fd, Mode::from_bits_truncate(mode)).map_err(|e| fail("chmod it", e))?;
        }
        return Ok(());
    }
    if made && st.st_mode & 0o7777 != mode {
        // Our umask took bits away from a directory we just made.
        fchmod(fd, Mode::from_bits_truncate(mode)).map_err(|e| fail("chmod it", e))?;
        st = fstat(fd).map_err(|e| fail("stat it", e))?;
    }
    match distrust(path, kind, is_base, (&st).into(), false) {
        None => Ok(()),
        Some(why) => Err(Error::socket(why)),
    }
}

/// For `serve`: the directory of the control socket, made safe. The default, BASE/NAME: BASE
/// and NAME created if missing; as root both belong to root (0755; an existing one with
/// another owner or mode is fixed through its fd, a symbolic link refused), for another user
/// both must be theirs (BASE 0700 in /tmp). `--control PATH`: its directory is created if
/// missing (0755) and must be one that only root and this user can change.
pub fn socket_dir(explicit: Option<&Path>, name: &str) -> Result<(PathBuf, Dir)> {
    if let Some(path) = explicit {
        let shown = path.display();
        let (parent, _) = crate::socket::split(path).ok_or_else(|| {
            Error::socket(format!(
                "--control {shown} does not name a file; give the path of the socket file"
            ))
        })?;
        if !parent.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|e| {
                    Error::socket(format!(
                        "--control {shown}: cannot create its directory: {}",
                        crate::config::io_reason(&e)
                    ))
                })?;
        }
        let dir = Dir::open(parent).map_err(|e| {
            Error::socket(format!(
                "--control {shown}: cannot open its directory: {}",
                crate::config::io_reason(&e)
            ))
        })?;
        if dir.exposed {
            let me = Uid::effective();
            let trusted = if me.is_root() {
                "root".to_string()
            } else {
                format!("root and uid {me}")
            };
            return Err(Error::socket(format!(
                "--control {shown}: {} (or a directory or link on the way to it) can be changed by users other than {trusted}, who could then impersonate this service; choose a directory only {trusted} can change (the default, {}, is one)",
                parent.display(),
                base_dir().join(name).display()
            )));
        }
        return Ok((path.to_path_buf(), dir));
    }
    let (base, kind) = base();
    let root = Uid::effective().is_root();
    if let Some(up) = base.parent() {
        std::fs::create_dir_all(up).map_err(|e| {
            Error::socket(format!(
                "cannot create {}: {}",
                up.display(),
                crate::config::io_reason(&e)
            ))
        })?;
    }
    let base_mode = if root { 0o755 } else { 0o700 };
    let (base_fd, made) = make_dir(AT_FDCWD, &base, &base, base_mode, (kind, true))?;
    settle(&base_fd, &base, kind, true, base_mode, made)?;
    let dir_path = base.join(name);
    let (fd, made) = make_dir(
        std::os::fd::AsFd::as_fd(&base_fd),
        Path::new(name),
        &dir_path,
        0o755,
        (kind, false),
    )?;
    settle(&fd, &dir_path, kind, false, 0o755, made)?;
    let dir = Dir::from_fd(fd, dir_path.clone());
    Ok((dir_path.join("control.sock"), dir))
}

// ---- the client side: `multinode status | reload | scale | stop` ----

/// Finds the control socket to talk to: `--control`, `--name`, or the only one running.
///
/// With `--name`, this user's base directory first; a user other than root also finds a
/// service root started (in `/run/multinode`), to ask its status (or be told no).
pub fn locate(name: Option<&str>, control: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = control {
        return Ok(p.to_path_buf());
    }
    let (own, kind) = base();
    if let Some(n) = name {
        let own = checked_base(false)?;
        if let Some(dir) = service_dir(&own, kind, n)? {
            return Ok(dir.join("control.sock"));
        }
        if kind != Base::System {
            if let Some(sys) = system_base() {
                if let Some(dir) = service_dir(&sys, Base::System, n)? {
                    return Ok(dir.join("control.sock"));
                }
            }
        }
        return Ok(own.join(n).join("control.sock"));
    }
    let live = running()?;
    match live.as_slice() {
        [(_, path)] => Ok(path.clone()),
        [] => Err(Error::new(
            Exit::Unreachable,
            format!(
                "no multinode is running here (looked in {}); give --control PATH if it uses another socket",
                own.display()
            ),
        )),
        _ => Err(Error::usage(format!(
            "several multinode services are running ({}); pick one with --name",
            live.iter()
                .map(|(n, _)| n.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

/// (name, control socket) of every supervisor that answers in this user's base directory.
/// Service directories that cannot be trusted are left out.
pub fn running() -> Result<Vec<(String, PathBuf)>> {
    let (_, kind) = base();
    let base = checked_base(false)?;
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(&base)
        .map(|r| {
            r.flatten()
                .filter(|e| {
                    e.metadata().is_ok_and(|m| {
                        distrust(&e.path(), kind, false, (&m).into(), false).is_none()
                    })
                })
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.path().join("control.sock"),
                    )
                })
                .filter(|(_, p)| {
                    std::fs::symlink_metadata(p).is_ok_and(|m| m.file_type().is_socket())
                        && UnixStream::connect(p).is_ok()
                })
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    Ok(found)
}

/// Sends one request and returns the answer, with the connection (a `stop` caller reads it to
/// its end to learn when the supervisor has exited).
pub fn request(path: &Path, req: &Request) -> Result<(Reply, UnixStream)> {
    let unreachable = |e: &dyn std::fmt::Display| {
        Error::new(Exit::Unreachable, format!("{}: {e}", path.display()))
    };
    let s = UnixStream::connect(path).map_err(|e| {
        Error::new(
            Exit::Unreachable,
            format!(
                "cannot reach multinode at {}: {} (is it running?)",
                path.display(),
                crate::config::io_reason(&e)
            ),
        )
    })?;
    let mut line = serde_json::to_vec(req).map_err(|e| unreachable(&e))?;
    line.push(b'\n');
    (&s).write_all(&line).map_err(|e| unreachable(&e))?;
    let mut answer = String::new();
    BufReader::new(&s)
        .read_line(&mut answer)
        .map_err(|e| unreachable(&e))?;
    let reply: Reply =
        serde_json::from_str(&answer).map_err(|_| unreachable(&"no answer (multinode exited?)"))?;
    Ok((reply, s))
}
