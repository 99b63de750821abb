//! The control socket: `multinode status | reload | scale | stop` talk to a running supervisor
//! through a Unix stream socket, one JSON request line and one JSON answer line each.
//!
//! Where it lives: `--control PATH`, else `BASE/NAME/control.sock` with BASE `/run/multinode`
//! as root, `$XDG_RUNTIME_DIR/multinode` otherwise (or `/tmp/multinode-UID` without one). The
//! socket is 0600 and belongs, like its directory (0700), to the user the supervisor runs as,
//! so after dropping privileges it can still remove it at exit. A second supervisor with the
//! same name finds the socket alive and refuses to start.
//!
//! Requests: `{"cmd":"status"}`, `{"cmd":"reload"}`, `{"cmd":"scale","workers":N}`,
//! `{"cmd":"stop"}`. Answers: `{"ok":true,...}` or `{"ok":false,"error":"..."}`. `reload` and
//! `scale` answer when the outcome is known; `stop` answers at once and the connection closes
//! when the supervisor has exited.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use nix::unistd::{Gid, Uid};
use serde_json::{Value, json};

use crate::error::{Error, Exit, Result};
use crate::socket::file::{Occupied, SocketFile, clear_stale, with_private_umask};

/// The directory the control sockets of all supervisors of this user are in.
pub fn base_dir() -> PathBuf {
    if Uid::effective().is_root() {
        return PathBuf::from("/run/multinode");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_absolute()) {
        Some(d) => Path::new(&d).join("multinode"),
        None => std::env::temp_dir().join(format!("multinode-{}", Uid::effective())),
    }
}

pub fn default_path(name: &str) -> PathBuf {
    base_dir().join(name).join("control.sock")
}

/// The supervisor's listening end.
pub struct ControlServer {
    listener: UnixListener,
    pub path: PathBuf,
    file: SocketFile,
}

impl ControlServer {
    /// Binds the control socket, refusing one that another supervisor still serves. `owner`:
    /// who the directory and socket must belong to (the user multinode is about to become).
    pub fn bind(path: &Path, owner: Option<(Uid, Gid)>) -> Result<ControlServer> {
        let shown = path.display();
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Error::socket(format!("control socket {shown}: {what}: {e}"))
        };
        if let Some(dir) = path.parent() {
            if !dir.exists() {
                if let Some(base) = dir.parent() {
                    std::fs::create_dir_all(base)
                        .map_err(|e| fail("cannot create its directory", &e))?;
                }
                std::fs::create_dir(dir).map_err(|e| fail("cannot create its directory", &e))?;
                std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
                    .map_err(|e| fail("cannot chmod its directory", &e))?;
                if let Some((uid, gid)) = owner {
                    nix::unistd::chown(dir, Some(uid), Some(gid))
                        .map_err(|e| fail("cannot chown its directory", &e))?;
                }
            }
        }
        clear_stale(path).map_err(|o| match o {
            Occupied::InUse => Error::socket(format!(
                "control socket {shown} is in use by another running multinode; give this one another --name (or --control)"
            )),
            Occupied::NotSocket => fail("exists and is not a socket; refusing to replace it", &""),
            Occupied::Io(what, e) => fail(what, &e),
        })?;
        let listener =
            with_private_umask(|| UnixListener::bind(path)).map_err(|e| fail("cannot bind", &e))?;
        // From here on, an error (or the end of the run) removes the file again.
        let file = SocketFile::created(path).map_err(|e| fail("cannot stat", &e))?;
        if let Some((uid, gid)) = owner {
            nix::unistd::chown(path, Some(uid), Some(gid)).map_err(|e| fail("cannot chown", &e))?;
        }
        listener
            .set_nonblocking(true)
            .map_err(|e| fail("cannot make it non-blocking", &e))?;
        Ok(ControlServer {
            listener,
            path: path.to_path_buf(),
            file,
        })
    }

    /// A waiting client connection, if any.
    pub fn accept(&self) -> Option<UnixStream> {
        let (s, _) = self.listener.accept().ok()?;
        // Requests are one short line; a client that sends nothing for this long is dropped.
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
        Some(s)
    }

    /// Removes the socket file if it is still ours.
    pub fn remove(&mut self) -> std::io::Result<()> {
        self.file.remove().map(drop)
    }
}

impl AsFd for ControlServer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.listener.as_fd()
    }
}

/// Writes one answer line; a client that went away is no concern.
pub fn answer(mut s: &UnixStream, v: &Value) {
    let _ = writeln!(s, "{v}");
}

// ---- the client side: `multinode status | reload | scale | stop` ----

/// Finds the control socket to talk to: `--control`, `--name`, or the only one running.
pub fn locate(name: Option<&str>, control: Option<&Path>) -> Result<PathBuf> {
    if let Some(p) = control {
        return Ok(p.to_path_buf());
    }
    if let Some(n) = name {
        return Ok(default_path(n));
    }
    let live = running();
    match live.len() {
        1 => Ok(live.into_iter().next().expect("one").1),
        0 => Err(Error::new(
            Exit::Unreachable,
            format!(
                "no multinode is running here (looked in {}); give --control PATH if it uses another socket",
                base_dir().display()
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

/// (name, control socket) of every supervisor that answers in the base directory.
pub fn running() -> Vec<(String, PathBuf)> {
    let mut found: Vec<(String, PathBuf)> = std::fs::read_dir(base_dir())
        .map(|r| {
            r.flatten()
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        e.path().join("control.sock"),
                    )
                })
                .filter(|(_, p)| UnixStream::connect(p).is_ok())
                .collect()
        })
        .unwrap_or_default();
    found.sort();
    found
}

/// Sends one request and returns the answer.
pub fn request(path: &Path, req: &Value) -> Result<(Value, UnixStream)> {
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
    let mut w = &s;
    writeln!(w, "{req}")
        .map_err(|e| Error::new(Exit::Unreachable, format!("{}: {e}", path.display())))?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .map_err(|e| Error::new(Exit::Unreachable, format!("{}: {e}", path.display())))?;
    let v: Value = serde_json::from_str(&line).map_err(|_| {
        Error::new(
            Exit::Unreachable,
            format!("{}: no answer (multinode exited?)", path.display()),
        )
    })?;
    Ok((v, s))
}

/// The error an `{"ok":false}` answer carries.
pub fn failure(v: &Value) -> Option<String> {
    (v["ok"] != json!(true)).then(|| v["error"].as_str().unwrap_or("failed").to_string())
}
