//! Receiving from the channel: one `recvmsg` of a batch of connections,
//! their descriptors taken over at once (`SCM_RIGHTS`), and what happens to
//! a malformed or truncated message.

use std::io;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use super::Item;
use super::notice::send_notice;
use crate::wire;

/// The longest valid message: a full batch.
const MAX_MESSAGE: usize = wire::MAX_BATCH_LEN;

/// What one `recvmsg` brought.
pub(super) enum Received {
    Batch(Vec<Item>),
    Eof,
}

fn invalid(why: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why)
}

/// Receives one message (never waits: `MSG_DONTWAIT`) with room for
/// `max_fds` descriptors (tests pass fewer than
/// [`MAX_BATCH`](super::MAX_BATCH) to provoke `MSG_CTRUNC`). Every
/// descriptor that arrives is owned at once, so each error path closes
/// them all.
pub(super) fn receive(fd: BorrowedFd<'_>, max_fds: usize) -> io::Result<Received> {
    let mut data = [0u8; MAX_MESSAGE];
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((max_fds * mem::size_of::<libc::c_int>()) as u32) };
    // u64 elements: aligned for cmsghdr.
    let mut control = vec![0u64; (space as usize).div_ceil(8)];
    let mut iov = libc::iovec {
        iov_base: data.as_mut_ptr().cast(),
        iov_len: data.len(),
    };
    // SAFETY: an all-zero msghdr is a valid value.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: `msg` points at `iov` (into `data`) and `control`, valid for
    // the lengths it states, for the duration of the call.
    let n = unsafe {
        libc::recvmsg(
            fd.as_raw_fd(),
            &raw mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n == -1 {
        return Err(io::Error::last_os_error());
    }
    let fds = take_fds(&msg);
    let data = &data[..n as usize];
    if msg.msg_flags & libc::MSG_CTRUNC != 0 {
        return Err(truncated(fd, data, fds));
    }
    if n == 0 && fds.is_empty() {
        return Ok(Received::Eof);
    }
    if msg.msg_flags & libc::MSG_TRUNC != 0 {
        return Err(invalid(format!(
            "route channel: a message longer than {MAX_MESSAGE} bytes; closed its {} connection(s)",
            fds.len()
        )));
    }
    let batch = wire::decode_batch(data).map_err(|why| {
        invalid(format!(
            "route channel: malformed message ({why}); closed its {} connection(s)",
            fds.len()
        ))
    })?;
    if batch.len() != fds.len() {
        return Err(invalid(format!(
            "route channel: malformed message ({} records but {} connections); closed them",
            batch.len(),
            fds.len()
        )));
    }
    Ok(Received::Batch(
        batch
            .records()
            .zip(fds)
            .map(|(r, fd)| Item {
                fd,
                seq: r.seq,
                peer: r.peer,
            })
            .collect(),
    ))
}

/// Owns every descriptor of every `SCM_RIGHTS` message in `msg`'s control
/// data, in order.
fn take_fds(msg: &libc::msghdr) -> Vec<OwnedFd> {
    let mut fds = Vec::new();
    // SAFETY: `msg` was filled in by recvmsg: its control pointer and
    // (updated) length describe the control messages the kernel wrote, and
    // the CMSG_* macros walk them within those bounds.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                let bytes = (*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                for i in 0..bytes / mem::size_of::<libc::c_int>() {
                    // The kernel installed these descriptors for this
                    // process just now; nothing else owns them.
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(msg, c);
        }
    }
    fds
}

/// A message whose descriptors did not all arrive: closes those that did,
/// reports all of its connections closed, and describes the loss.
fn truncated(channel: BorrowedFd<'_>, data: &[u8], fds: Vec<OwnedFd>) -> io::Error {
    let arrived = fds.len();
    drop(fds);
    let what = match wire::decode_batch(data) {
        Ok(batch) => {
            let seqs: Vec<u64> = batch.records().map(|r| r.seq).collect();
            send_notice(channel, &seqs);
            format!("{} connection(s)", batch.len())
        }
        Err(_) => "a malformed message".to_owned(),
    };
    io::Error::other(format!(
        "route channel: lost {what}: only {arrived} of its descriptors arrived \
         (MSG_CTRUNC; is the process out of file descriptors?), closed them"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::tests::{
        HEADER, message, notices, pair, raw, record, sees_eof, send, streams,
    };
    use std::os::fd::AsFd;

    #[test]
    fn malformed_messages_close_their_fds() {
        let good = record(1, None);
        let mut bad_family = record(1, None);
        bad_family[8] = 5;
        let mut bad_magic = message(&[good]);
        bad_magic[..4].copy_from_slice(b"MNRX");
        let mut bad_version = message(&[good]);
        bad_version[4] = 2;
        let mut long = message(&[good]);
        long.push(0);
        let mut zero = message(&[]);
        zero.truncate(HEADER);
        let cases: Vec<(Vec<u8>, usize, &str)> = vec![
            (bad_magic, 1, "magic"),
            (bad_version, 1, "version 2"),
            (message(&[good, good]), 1, "2 records but 1 connections"),
            (message(&[good]), 2, "1 records but 2 connections"),
            (message(&[bad_family]), 1, "address family 5"),
            (long, 1, "41 bytes for 1 records"),
            (zero, 1, "count 0"),
            (b"MNR".to_vec(), 1, "shorter than the header"),
            (vec![0u8; MAX_MESSAGE + 1], 1, "longer than"),
        ];
        for (data, nfds, why) in cases {
            let (sup, ch) = pair();
            let (pass, mut kept) = streams(nfds);
            send(&sup, &data, &raw(&pass));
            drop(pass);
            let e = ch.accept().unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "{why}: {e}");
            assert!(e.to_string().contains(why), "{why}: {e}");
            assert!(kept.iter_mut().all(sees_eof), "{why}: fds closed");
            // The channel goes on with the next message.
            let (pass, _kept) = streams(1);
            send(&sup, &message(&[record(9, None)]), &raw(&pass));
            assert_eq!(ch.accept().unwrap().seq, Some(9), "{why}");
        }
    }

    #[test]
    fn truncated_control_data_closes_what_arrived() {
        let (sup, ch) = pair();
        let (pass, mut kept) = streams(5);
        let records: Vec<_> = (1..=5).map(|s| record(s, None)).collect();
        send(&sup, &message(&records), &raw(&pass));
        drop(pass);
        // Room for 2 descriptors: the kernel installs 2, sets MSG_CTRUNC and
        // closes the other 3.
        let e = match receive(ch.as_fd(), 2) {
            Err(e) => e,
            Ok(_) => panic!("expected MSG_CTRUNC"),
        };
        assert_eq!(e.kind(), io::ErrorKind::Other);
        let text = e.to_string();
        assert!(text.contains("lost 5 connection(s): only 2 of"), "{text}");
        assert!(kept.iter_mut().all(sees_eof), "all closed");
        assert_eq!(notices(&sup), [1, 2, 3, 4, 5]);
        assert_eq!(ch.buffered(), 0);
    }
}
