//! Close notices: [`CloseNotice`], which tells the supervisor that a routed
//! connection closed, and sending the notices over the channel.

use std::fmt;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::Weak;

use super::{MAX_NOTICE, Shared};
use crate::wire;

/// Sends the supervisor a close notice for one routed connection when
/// dropped (see the [module docs](crate::route)). From
/// [`RoutedConnection::into_parts`](super::RoutedConnection::into_parts),
/// for callers that move the socket elsewhere (an async runtime, say) and
/// want the notice to go when they close it: keep the two together.
///
/// The notice is skipped when every handle of the channel has been dropped
/// (the supervisor then knows the worker is done with it).
pub struct CloseNotice {
    pub(super) seq: u64,
    pub(super) channel: Weak<Shared>,
}

impl CloseNotice {
    /// The sequence number the notice reports.
    pub fn seq(&self) -> u64 {
        self.seq
    }
}

impl fmt::Debug for CloseNotice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CloseNotice")
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl Drop for CloseNotice {
    fn drop(&mut self) {
        if let Some(shared) = self.channel.upgrade() {
            send_notice(shared.fd.as_fd(), &[self.seq]);
        }
    }
}

/// Sends close notices for `seqs` (in datagrams of at most [`MAX_NOTICE`]),
/// without blocking; errors are ignored (a lost notice only skews the
/// supervisor's least-conn count).
pub(super) fn send_notice(fd: BorrowedFd<'_>, seqs: &[u64]) {
    let mut m = Vec::new();
    for chunk in seqs.chunks(MAX_NOTICE) {
        wire::encode_notice(chunk, &mut m);
        // SAFETY: sends `m.len()` bytes from `m`.
        unsafe {
            libc::send(
                fd.as_raw_fd(),
                m.as_ptr().cast(),
                m.len(),
                libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use crate::Connection;
    use crate::route::tests::{message, notices, pair, raw, record, sees_eof, send, streams};

    #[test]
    fn notice_follows_the_close() {
        let (sup, ch) = pair();
        let (pass, mut kept) = streams(2);
        send(
            &sup,
            &message(&[record(41, None), record(42, None)]),
            &raw(&pass),
        );
        drop(pass);
        let a = ch.accept().unwrap();
        let b = ch.accept().unwrap();
        assert!(notices(&sup).is_empty());
        drop(a);
        assert_eq!(notices(&sup), [41]);
        assert!(sees_eof(&mut kept[0]));

        // into_parts: the stream lives on until the notice's owner drops it.
        let Connection::Routed(r) = b.conn else {
            panic!("not routed")
        };
        let (stream, notice) = r.into_parts();
        assert_eq!(notice.seq(), 42);
        drop(stream);
        assert!(notices(&sup).is_empty());
        drop(notice);
        assert_eq!(notices(&sup), [42]);

        // With every channel handle gone, no notice (and no error).
        let (pass, _kept) = streams(1);
        send(&sup, &message(&[record(43, None)]), &raw(&pass));
        let c = ch.accept().unwrap();
        drop(ch);
        drop(c);
        assert!(notices(&sup).is_empty());
    }
}
