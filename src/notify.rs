//! The NOTIFY_SOCKET server: the sd_notify(3) datagram protocol, so workers can say
//! `READY=1`, `STATUS=...` and `STOPPING=1` with any sd_notify library.
//!
//! The socket is a filesystem path (the `sd-notify` crate and most libraries cannot reach
//! abstract sockets, and an abstract name is reachable by every local process) inside a fresh
//! directory of mode 0700 owned by the user the supervisor runs as — the workers' user. Each
//! datagram's sender is known from SO_PASSCRED credentials, so a message is attributed to the
//! worker that sent it (or to a process in that worker's process group) and anything else is
//! ignored.

use std::io::IoSliceMut;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::socket::{
    self, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType, UnixAddr, sockopt,
};

use crate::error::{Error, Result};
use crate::upgrade::format::NotifyState;

/// One datagram: the sender's pid and its `KEY=VALUE` assignments (at most
/// `multinode_worker::sd_notify::MAX_ASSIGNMENTS`, in order).
pub struct Message {
    pub pid: i32,
    pub fields: Vec<(String, String)>,
}

/// Datagrams read per wake-up.
pub const BURST: usize = 64;

pub struct NotifyServer {
    fd: OwnedFd,
    dir: PathBuf,
    path: PathBuf,
}

impl NotifyServer {
    /// Creates the private directory and binds the socket in it. Call after the privilege drop,
    /// so both belong to the workers' user.
    pub fn bind() -> Result<NotifyServer> {
        let dir = private_dir()?;
        let path = dir.join("notify");
        let fail = |what: &str, e: Errno| {
            let _ = std::fs::remove_dir(&dir);
            Error::sys(&format!("{what} {}", path.display()), e.desc())
        };
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
            None,
        )
        .map_err(|e| fail("notify socket for", e))?;
        socket::setsockopt(&fd, sockopt::PassCred, &true).map_err(|e| fail("SO_PASSCRED on", e))?;
        let addr = UnixAddr::new(&path).map_err(|e| fail("notify socket path", e))?;
        socket::bind(fd.as_raw_fd(), &addr).map_err(|e| fail("cannot bind", e))?;
        Ok(NotifyServer { fd, dir, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The socket as an upgrade hands it over.
    pub fn save(&self, t: &mut crate::upgrade::state::FdTable) -> NotifyState {
        NotifyState {
            fd: t.add(
                self.fd.as_fd(),
                format!("the notify socket {}", self.path.display()),
            ),
            dir: self.dir.as_path().into(),
            path: self.path.as_path().into(),
        }
    }

    /// The socket an upgrade handed over.
    pub fn load(s: NotifyState, r: &mut crate::upgrade::restore::Restorer) -> NotifyServer {
        NotifyServer {
            fd: r.take(s.fd),
            dir: s.dir.path(),
            path: s.path.path(),
        }
    }

    /// The datagrams waiting now, at most [`BURST`] per call, so a flood cannot hold up the
    /// loop or fill memory: the rest wait in the socket's bounded buffer for the next turn.
    pub fn recv_all(&self) -> Vec<Message> {
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        for _ in 0..BURST {
            let mut cmsg = nix::cmsg_space!(libc::ucred);
            let mut iov = [IoSliceMut::new(&mut buf)];
            let (len, pid) = match socket::recvmsg::<()>(
                self.fd.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Ok(msg) => {
                    let pid = msg.cmsgs().ok().and_then(|mut c| {
                        c.find_map(|m| match m {
                            ControlMessageOwned::ScmCredentials(cred) => Some(cred.pid()),
                            _ => None,
                        })
                    });
                    (msg.bytes, pid)
                }
                Err(Errno::EINTR) => continue,
                Err(_) => break,
            };
            let Some(pid) = pid else { continue };
            let fields = multinode_worker::sd_notify::parse(&buf[..len]);
            out.push(Message { pid, fields });
        }
        out
    }
}

impl AsFd for NotifyServer {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl Drop for NotifyServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
        let _ = std::fs::remove_dir(&self.dir);
    }
}

/// A new directory of mode 0700 under $XDG_RUNTIME_DIR (when it is ours) or the temp dir.
fn private_dir() -> Result<PathBuf> {
    let me = nix::unistd::Uid::effective();
    let runtime = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| {
            use std::os::unix::fs::MetadataExt;
            d.is_absolute()
                && std::fs::metadata(d).is_ok_and(|m| m.is_dir() && m.uid() == me.as_raw())
        });
    let base = runtime.unwrap_or_else(std::env::temp_dir);
    let template = base.join("multinode-XXXXXX");
    nix::unistd::mkdtemp(&template).map_err(|e| {
        Error::sys(
            &format!("creating a private directory in {}", base.display()),
            e.desc(),
        )
    })
}
