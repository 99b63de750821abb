//! The control socket: `multinode status | reload | scale | stop` talk to a running supervisor
//! through a Unix stream socket, one JSON request line and one JSON answer line each
//! (`protocol.rs` has the types, `server.rs` the supervisor's end, `client.rs` the commands).
//!
//! Where it lives: `--control PATH`, else `BASE/NAME/control.sock` with BASE `/run/multinode`
//! as root, `$XDG_RUNTIME_DIR/multinode` otherwise (or `/tmp/multinode-UID` without one). The
//! socket is 0600 and belongs, like its directory (0700), to the user the supervisor runs as,
//! so after dropping privileges it can still remove it at exit. A second supervisor with the
//! same name finds the socket alive and refuses to start.
//!

pub mod client;
pub mod protocol;
pub mod server;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use nix::unistd::Uid;

use crate::error::{Error, Exit, Result};
use protocol::{Reply, Request};

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
    match live.as_slice() {
        [(_, path)] => Ok(path.clone()),
        [] => Err(Error::new(
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
