//! Unix socket files: clearing a stale one before a bind (a live one or a file of another
//! kind is refused), binding with a private umask until the mode and owner are set, and
//! [`SocketFile`], which removes the file it created and never one put there since. Shared by
//! the listening sockets (`socket`) and the control socket (`control`).

use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// Why a path cannot take a new Unix socket.
#[derive(Debug)]
pub enum Occupied {
    /// Something other than a socket is there.
    NotSocket,
    /// A server accepts on the socket there.
    InUse,
    /// It could not be checked or the stale socket could not be removed.
    Io(&'static str, io::Error),
}

/// Clears `path` for a new socket: nothing there is fine, a socket nobody accepts on (left by
/// a process that died) is removed; a live socket or a file of another kind is refused.
pub fn clear_stale(path: &Path) -> std::result::Result<(), Occupied> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Occupied::Io("cannot stat", e)),
    };
    if !meta.file_type().is_socket() {
        return Err(Occupied::NotSocket);
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(Occupied::InUse),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path)
            .map_err(|e| Occupied::Io("cannot replace the stale socket", e)),
        Err(e) => Err(Occupied::Io("cannot check whether something listens on", e)),
    }
}

/// Runs `bind` with umask 0177, so that a socket file it creates is reachable by its owner
/// alone until the caller sets its mode and owner.
pub fn with_private_umask<T>(bind: impl FnOnce() -> T) -> T {
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let r = bind();
    nix::sys::stat::umask(old);
    r
}

/// A socket file this process created, identified by device and inode so that a file some
/// other process put at the same path since is never removed.
#[derive(Debug)]
pub struct SocketFile {
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl SocketFile {
    /// The socket file just bound at `path`.
    pub fn created(path: &Path) -> io::Result<SocketFile> {
        let meta = std::fs::metadata(path)?;
        Ok(SocketFile {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }

    /// Removes the file if it is still ours. `Ok(false)`: it was already gone or replaced.
    pub fn remove(&mut self) -> io::Result<bool> {
        let ours = std::fs::symlink_metadata(&self.path)
            .map(|m| m.dev() == self.dev && m.ino() == self.ino)
            .unwrap_or(false);
        if !ours {
            self.ino = 0;
            return Ok(false);
        }
        std::fs::remove_file(&self.path)?;
        self.ino = 0;
        Ok(true)
    }
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if self.ino != 0 {
            let _ = self.remove();
        }
    }
}
