//! The supervisor's end of one worker's route channel: a bounded queue of connections
//! waiting for room in the socket, sent in batches (the wire codec is the SDK's).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, MsgFlags};

use std::net::SocketAddr;

use super::{Conn, MAX_BATCH, MAX_QUEUE};

const HEADER: usize = 8;
const RECORD: usize = 32;

/// The supervisor's end of one worker channel.
pub struct Channel {
    fd: OwnedFd,
    queue: VecDeque<Conn>,
    /// Connections sent and not yet reported closed.
    pub outstanding: u64,
    /// The worker closed its end: nothing more goes here, and it is not polled.
    pub closed: bool,
    /// A send failed for want of a kernel resource (ETOOMANYREFS, ENOBUFS, ENOMEM): the
    /// queue waits until then instead of polling a socket that stays writable.
    pub retry_at: Option<std::time::Instant>,
}

/// How long a channel waits after a send failed for want of a kernel resource.
pub const RETRY: std::time::Duration = std::time::Duration::from_millis(50);

/// The channel's peer is gone (the worker exited or closed it).
#[derive(Debug)]
pub struct Gone;

impl Channel {
    pub fn new(fd: OwnedFd) -> Channel {
        Channel {
            fd,
            queue: VecDeque::new(),
            outstanding: 0,
            closed: false,
            retry_at: None,
        }
    }

    /// Whether it can take no more connections now.
    pub fn is_full(&self) -> bool {
        self.closed || self.queue.len() >= MAX_QUEUE
    }

    pub fn has_queue(&self) -> bool {
        !self.queue.is_empty()
    }

    /// Whether poll should wait for the socket to take more (a queue, and no retry pending).
    pub fn wants_write(&self) -> bool {
        self.has_queue() && self.retry_at.is_none()
    }

    pub fn push(&mut self, c: Conn) {
        self.outstanding += 1;
        self.queue.push_back(c);
    }

    /// The connections not sent yet (the worker is gone: they go elsewhere).
    pub fn take_queue(&mut self) -> VecDeque<Conn> {
        self.outstanding = self.outstanding.saturating_sub(self.queue.len() as u64);
        std::mem::take(&mut self.queue)
    }

    /// Sends queued connections in batches until the queue is empty or the socket is full.
    pub fn flush(&mut self, now: std::time::Instant) -> Result<(), Gone> {
        if self.retry_at.is_some_and(|t| t > now) {
            return Ok(());
        }
        self.retry_at = None;
        while !self.queue.is_empty() {
            let n = self.queue.len().min(MAX_BATCH);
            let batch: Vec<&Conn> = self.queue.iter().take(n).collect();
            let msg = encode(&batch);
            let fds: Vec<RawFd> = batch.iter().map(|c| c.fd.as_raw_fd()).collect();
            let cmsg = [ControlMessage::ScmRights(&fds)];
            let r = socket::sendmsg::<()>(
                self.fd.as_raw_fd(),
                &[IoSlice::new(&msg)],
                &cmsg,
                MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL,
                None,
            );
            match r {
                // The worker holds its own copies now; ours are closed as the Conns drop.
                Ok(_) => drop(self.queue.drain(..n)),
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                // Too many fds in flight for this user (RLIMIT_NOFILE), or no kernel memory:
                // the worker is fine, the kernel is not ready; try again shortly.
                Err(Errno::ETOOMANYREFS | Errno::ENOBUFS | Errno::ENOMEM) => {
                    self.retry_at = Some(now + RETRY);
                    return Ok(());
                }
                Err(_) => {
                    self.closed = true;
                    return Err(Gone);
                }
            }
        }
        Ok(())
    }

    /// Reads the worker's close notices; `Err(Gone)` at end of file.
    pub fn read_notices(&mut self) -> Result<(), Gone> {
        let mut buf = [0u8; 8 + 8 * 512];
        loop {
            match socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {
                    self.closed = true;
                    return Err(Gone);
                }
                Ok(n) => {
                    if let Some(count) = decode_notice(&buf[..n]) {
                        self.outstanding = self.outstanding.saturating_sub(count);
                    }
                }
                Err(Errno::EAGAIN) => return Ok(()),
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    self.closed = true;
                    return Err(Gone);
                }
            }
        }
    }
}

impl AsFd for Channel {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// The datagram for a batch.
fn encode(batch: &[&Conn]) -> Vec<u8> {
    let mut m = Vec::with_capacity(HEADER + RECORD * batch.len());
    m.extend_from_slice(b"MNRT");
    m.push(1);
    m.push(0);
    m.extend_from_slice(&(batch.len() as u16).to_le_bytes());
    for c in batch {
        let mut r = [0u8; RECORD];
        r[..8].copy_from_slice(&c.seq.to_le_bytes());
        match c.peer {
            Some(SocketAddr::V4(a)) => {
                r[8] = 4;
                r[10..12].copy_from_slice(&a.port().to_le_bytes());
                r[12..16].copy_from_slice(&a.ip().octets());
            }
            Some(SocketAddr::V6(a)) => {
                r[8] = 6;
                r[10..12].copy_from_slice(&a.port().to_le_bytes());
                r[12..28].copy_from_slice(&a.ip().octets());
            }
            None => {}
        }
        m.extend_from_slice(&r);
    }
    m
}

/// The number of closes a worker's notice reports.
fn decode_notice(m: &[u8]) -> Option<u64> {
    if m.len() < HEADER || &m[..4] != b"MNRC" || m[4] != 1 {
        return None;
    }
    let count = u16::from_le_bytes([m[6], m[7]]) as usize;
    (m.len() >= HEADER + 8 * count).then_some(count as u64)
}

/// A SOCK_SEQPACKET pair for a route channel: (ours, non-blocking; the worker's end).
pub fn pair() -> nix::Result<(Channel, OwnedFd)> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, socketpair};
    let (a, b) = socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )?;
    set_nonblocking(&a)?;
    Ok((Channel::new(a), b))
}

pub fn set_nonblocking(fd: &impl AsFd) -> nix::Result<()> {
    use nix::fcntl::{FcntlArg, OFlag, fcntl};
    let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
    fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map(drop)
}
