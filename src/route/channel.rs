//! The supervisor's end of one worker's route channel: a bounded queue of connections
//! waiting for room in the socket, sent in batches (the wire codec is the SDK's).

use std::collections::VecDeque;
use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use multinode_worker::wire::{self, Record};
use nix::errno::Errno;
use nix::sys::socket::{self, ControlMessage, MsgFlags};

use super::{Conn, MAX_BATCH, MAX_QUEUE};

/// The supervisor's end of one worker channel.
pub struct Channel {
    pub(super) fd: OwnedFd,
    pub(super) queue: VecDeque<Conn>,
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

    /// Connections waiting here for room in the socket.
    pub fn queued(&self) -> usize {
        self.queue.len()
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
        let mut msg = Vec::new();
        while !self.queue.is_empty() {
            let n = self.queue.len().min(MAX_BATCH);
            let batch = self.queue.iter().take(n);
            wire::encode_batch(
                batch.clone().map(|c| Record {
                    seq: c.seq,
                    peer: c.peer,
                }),
                &mut msg,
            );
            let fds: Vec<RawFd> = batch.map(|c| c.fd.as_raw_fd()).collect();
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
        let mut buf = [0u8; wire::MAX_NOTICE_LEN];
        loop {
            match socket::recv(self.fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                Ok(0) => {
                    self.closed = true;
                    return Err(Gone);
                }
                Ok(n) => {
                    // A malformed notice is ignored: it only skews least-conn.
                    if let Ok(notice) = wire::decode_notice(&buf[..n]) {
                        self.outstanding = self.outstanding.saturating_sub(notice.len() as u64);
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::SocketAddr;
    use std::os::unix::net::UnixStream;

    /// What `flush` sends, the SDK's channel receives: each connection, its seq and peer.
    #[test]
    fn the_sdk_receives_what_flush_sends() {
        let (sup, worker) = socket::socketpair(
            socket::AddressFamily::Unix,
            socket::SockType::SeqPacket,
            None,
            socket::SockFlag::SOCK_CLOEXEC,
        )
        .unwrap();
        let mut ch = Channel::new(sup);
        let rx = multinode_worker::RouteChannel::new(worker).unwrap();
        let peers: [Option<SocketAddr>; 3] = [
            Some("192.0.2.1:4242".parse().unwrap()),
            Some("[2001:db8::7]:443".parse().unwrap()),
            None,
        ];
        // More than one batch, the last one short.
        let total = MAX_BATCH + 2;
        let mut kept = Vec::new();
        for i in 0..total {
            let (a, b) = UnixStream::pair().unwrap();
            kept.push(b);
            ch.push(Conn {
                fd: a.into(),
                peer: peers[i % 3],
                seq: 100 + i as u64,
                listener: 0,
            });
        }
        ch.flush(std::time::Instant::now()).unwrap();
        assert!(!ch.has_queue());
        for (i, k) in kept.iter_mut().enumerate() {
            let mut got = rx.accept().unwrap();
            assert_eq!(got.seq, Some(100 + i as u64));
            match peers[i % 3] {
                Some(p) => assert_eq!(got.peer.to_string(), p.to_string()),
                None => assert_eq!(got.peer.to_string(), "unix:(unnamed)"),
            }
            // The connection is the one pushed.
            got.conn.write_all(&[i as u8]).unwrap();
            let mut b = [0u8; 1];
            k.read_exact(&mut b).unwrap();
            assert_eq!(b[0], i as u8);
            drop(got);
        }
        // Every close comes back as a notice.
        assert_eq!(ch.outstanding, total as u64);
        let end = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while ch.outstanding > 0 && std::time::Instant::now() < end {
            ch.read_notices().unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(ch.outstanding, 0);
        drop(rx);
        assert!(ch.read_notices().is_err(), "EOF when the worker leaves");
    }
}
