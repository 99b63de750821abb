//! Fixtures for the unit tests of several modules: the Unix sockets std cannot make (a
//! `SOCK_SEQPACKET` route channel, a client bound to a path), and scratch directories.

use std::mem;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

/// A connected Unix `SOCK_SEQPACKET` pair, close-on-exec: the two ends of a route channel.
pub(crate) fn seqpacket_pair() -> (OwnedFd, OwnedFd) {
    let mut fds = [-1; 2];
    // SAFETY: socketpair writes two new fds into the array.
    let r = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(r, 0, "{}", std::io::Error::last_os_error());
    // SAFETY: both fds were just created and are owned here only.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

/// A Unix `SOCK_SEQPACKET` socket, neither bound nor connected, close-on-exec.
pub(crate) fn seqpacket() -> OwnedFd {
    // SAFETY: plain socket(2) call; the result is checked and owned below.
    let raw = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
    assert!(raw >= 0, "{}", std::io::Error::last_os_error());
    // SAFETY: `raw` is a new fd owned only here.
    unsafe { OwnedFd::from_raw_fd(raw) }
}

/// The address of Unix socket path `p`, and its length, for bind(2) or connect(2).
pub(crate) fn sockaddr_un(p: &Path) -> (libc::sockaddr_un, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_un.
    let mut sun: libc::sockaddr_un = unsafe { mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in sun.sun_path.iter_mut().zip(p.as_os_str().as_bytes()) {
        *d = *s as libc::c_char;
    }
    let len = mem::offset_of!(libc::sockaddr_un, sun_path) + p.as_os_str().len() + 1;
    (sun, len as libc::socklen_t)
}

/// A directory removed on drop, for Unix socket paths.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "multinode-worker-test-{}-{tag}-{n}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
