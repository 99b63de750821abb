//! The supervisor's end of one worker's route channel: a bounded queue of connections
//! waiting for room in the socket, sent in batches, and the worker's close notices read back
//! several per system call (the wire codec is the SDK's). The buffers for both are a
//! [`Scratch`] the router owns: the per-connection path allocates nothing.

use std::collections::VecDeque;
use std::mem;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use multinode_worker::wire::{self, Record};
use nix::errno::Errno;

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
    pub fn flush(&mut self, now: std::time::Instant, scratch: &mut Scratch) -> Result<(), Gone> {
        if self.retry_at.is_some_and(|t| t > now) {
            return Ok(());
        }
        self.retry_at = None;
        while !self.queue.is_empty() {
            let n = self.queue.len().min(MAX_BATCH);
            let batch = self.queue.iter().take(n);
            wire::encode_batch(
                batch.clone().map(|c| Record {
                    seq: c.seq,
                    peer: c.peer,
                }),
                &mut scratch.msg,
            );
            let fds = batch.map(|c| c.fd.as_raw_fd());
            match send_batch(self.fd.as_fd(), &scratch.msg, fds, &mut scratch.control) {
                // The worker holds its own copies now; ours are closed as the Conns drop.
                Ok(()) => drop(self.queue.drain(..n)),
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

    /// Reads the worker's close notices, several per system call; `Err(Gone)` at end of file.
    pub fn read_notices(&mut self, scratch: &mut Scratch) -> Result<(), Gone> {
        loop {
            match recv_notices(self.fd.as_fd(), scratch) {
                Ok(got) => {
                    for i in 0..got.len() {
                        let m = got.message(i);
                        // Zero bytes: end of file (a notice is never empty).
                        if m.is_empty() {
                            self.closed = true;
                            return Err(Gone);
                        }
                        // A malformed notice is ignored: it only skews least-conn.
                        if let Ok(notice) = wire::decode_notice(m) {
                            self.outstanding = self.outstanding.saturating_sub(notice.len() as u64);
                        }
                    }
                    // Fewer than asked for: the socket had no more.
                    if got.len() < NOTICE_SLOTS {
                        return Ok(());
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

/// Notices read per `recvmmsg`.
const NOTICE_SLOTS: usize = 8;

/// The room SCM_RIGHTS needs for a full batch, in u64 words (aligned for `cmsghdr`).
// SAFETY: CMSG_SPACE is a pure computation.
const CONTROL_WORDS: usize =
    unsafe { libc::CMSG_SPACE((MAX_BATCH * mem::size_of::<RawFd>()) as u32) } as usize / 8 + 1;

/// Buffers every channel uses in turn, so that sending a batch and reading notices allocate
/// nothing once they have grown.
pub struct Scratch {
    /// The batch being sent.
    msg: Vec<u8>,
    /// Its SCM_RIGHTS control message.
    control: Vec<u64>,
    /// [`NOTICE_SLOTS`] notices of up to [`wire::MAX_NOTICE_LEN`] bytes, made on first use.
    notices: Vec<u8>,
    /// The length of each notice the last `recvmmsg` read.
    lens: [usize; NOTICE_SLOTS],
}

impl Scratch {
    pub fn new() -> Scratch {
        Scratch {
            msg: Vec::new(),
            control: Vec::new(),
            notices: Vec::new(),
            lens: [0; NOTICE_SLOTS],
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

/// What one `recvmmsg` read: notices in `Scratch`.
struct Got<'a> {
    scratch: &'a Scratch,
    n: usize,
}

impl Got<'_> {
    fn len(&self) -> usize {
        self.n
    }

    fn message(&self, i: usize) -> &[u8] {
        let at = i * wire::MAX_NOTICE_LEN;
        &self.scratch.notices[at..at + self.scratch.lens[i]]
    }
}

/// Sends one datagram of `msg` with `fds` (at most [`MAX_BATCH`]) as SCM_RIGHTS, without
/// blocking.
fn send_batch(
    fd: BorrowedFd<'_>,
    msg: &[u8],
    fds: impl Iterator<Item = RawFd>,
    control: &mut Vec<u64>,
) -> Result<(), Errno> {
    control.clear();
    control.resize(CONTROL_WORDS, 0);
    let mut iov = libc::iovec {
        iov_base: msg.as_ptr().cast_mut().cast(),
        iov_len: msg.len(),
    };
    // SAFETY: all-zero is a valid msghdr.
    let mut hdr: libc::msghdr = unsafe { mem::zeroed() };
    hdr.msg_iov = &raw mut iov;
    hdr.msg_iovlen = 1;
    hdr.msg_control = control.as_mut_ptr().cast();
    let mut n = 0usize;
    // SAFETY: the control buffer has room for a header and MAX_BATCH fds (CONTROL_WORDS);
    // CMSG_FIRSTHDR points at its start, since msg_controllen is at least a header's length.
    unsafe {
        hdr.msg_controllen = (CONTROL_WORDS * 8) as _;
        let c = libc::CMSG_FIRSTHDR(&raw const hdr);
        let data = libc::CMSG_DATA(c).cast::<RawFd>();
        for fd in fds.take(MAX_BATCH) {
            data.add(n).write_unaligned(fd);
            n += 1;
        }
        let bytes = (n * mem::size_of::<RawFd>()) as u32;
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(bytes) as _;
        hdr.msg_controllen = libc::CMSG_SPACE(bytes) as _;
    }
    // SAFETY: `hdr` points at `iov` (into `msg`) and `control`, valid for the lengths it
    // states for the duration of the call; sendmsg only reads them.
    let r = unsafe {
        libc::sendmsg(
            fd.as_raw_fd(),
            &raw const hdr,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if r < 0 { Err(Errno::last()) } else { Ok(()) }
}

/// Reads up to [`NOTICE_SLOTS`] datagrams in one `recvmmsg`, without blocking.
fn recv_notices<'a>(fd: BorrowedFd<'_>, scratch: &'a mut Scratch) -> Result<Got<'a>, Errno> {
    if scratch.notices.is_empty() {
        scratch.notices = vec![0; NOTICE_SLOTS * wire::MAX_NOTICE_LEN];
    }
    let base = scratch.notices.as_mut_ptr();
    let mut iovs: [libc::iovec; NOTICE_SLOTS] = std::array::from_fn(|i| libc::iovec {
        // SAFETY: slot i lies inside `notices` (NOTICE_SLOTS slots of MAX_NOTICE_LEN bytes).
        iov_base: unsafe { base.add(i * wire::MAX_NOTICE_LEN) }.cast(),
        iov_len: wire::MAX_NOTICE_LEN,
    });
    // SAFETY: all-zero is a valid mmsghdr.
    let mut msgs: [libc::mmsghdr; NOTICE_SLOTS] = unsafe { mem::zeroed() };
    for (m, iov) in msgs.iter_mut().zip(iovs.iter_mut()) {
        m.msg_hdr.msg_iov = iov;
        m.msg_hdr.msg_iovlen = 1;
    }
    // SAFETY: each header points at its own iovec, each iovec at its own slot of `notices`,
    // all valid for the call; no control data is asked for.
    let r = unsafe {
        libc::recvmmsg(
            fd.as_raw_fd(),
            msgs.as_mut_ptr(),
            NOTICE_SLOTS as _,
            libc::MSG_DONTWAIT as _,
            std::ptr::null_mut(),
        )
    };
    if r < 0 {
        return Err(Errno::last());
    }
    let n = r as usize;
    for (len, m) in scratch.lens.iter_mut().zip(&msgs[..n]) {
        // A notice longer than its slot was cut (MSG_TRUNC): too long to be valid anyway.
        *len = if m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0 {
            wire::MAX_NOTICE_LEN
        } else {
            m.msg_len as usize
        };
    }
    Ok(Got { scratch, n })
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
    use nix::sys::socket;
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
        let mut scratch = Scratch::new();
        ch.flush(std::time::Instant::now(), &mut scratch).unwrap();
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
            ch.read_notices(&mut scratch).unwrap();
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(ch.outstanding, 0);
        drop(rx);
        assert!(
            ch.read_notices(&mut scratch).is_err(),
            "EOF when the worker leaves"
        );
    }
}
