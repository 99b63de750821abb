//! Test and bench worker: a minimal HTTP/1.1 keep-alive server that serves fd 3 the same way
//! whether multinode passes a listening socket (`--balance shared|reuseport`) or a route
//! channel (`--route`), so one program can be measured in both modes.
//!
//! Every request gets `200` with the body `process=<pid>; worker=<slot>; seq=<seq>` (seq is
//! the route sequence number, 0 when not routed). `Connection: close` is honoured; an
//! HTTP/1.0 request is answered with `Connection: close`. Requests are read and parsed by the
//! `mini-http` crate (examples/http); a malformed one gets its error status and the connection
//! closes. One thread per connection. Sends READY=1 once serving. Route channel wire format:
//! see src/route.rs.

use std::io::Write;
use std::net::{TcpListener, TcpStream};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixDatagram;

const CHANNEL: RawFd = 3;
const MAX_BATCH: usize = 253;
const HEADER: usize = 8;
const RECORD: usize = 32;

fn main() {
    if std::env::var("LISTEN_FDS").ok().as_deref() != Some("1") {
        eprintln!("mn-http: run me under multinode with one --listen");
        std::process::exit(2);
    }
    let mut kind: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: kind and len are valid for getsockopt to write an int.
    let r = unsafe {
        libc::getsockopt(
            CHANNEL,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            &mut kind as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    assert_eq!(r, 0, "fd 3 is not a socket");
    notify_ready();
    if kind == libc::SOCK_SEQPACKET {
        routed();
    } else {
        // SAFETY: fd 3 is the listening socket multinode passed us; we own it from here.
        let l = unsafe { TcpListener::from_raw_fd(CHANNEL) };
        for s in l.incoming().flatten() {
            std::thread::spawn(move || serve(s, 0));
        }
    }
}

fn notify_ready() {
    if let (Some(path), Ok(s)) = (std::env::var_os("NOTIFY_SOCKET"), UnixDatagram::unbound()) {
        let _ = s.send_to(b"READY=1", &path);
    }
}

/// Reads batches of connections from the route channel until it closes.
fn routed() {
    let mut data = vec![0u8; HEADER + RECORD * MAX_BATCH];
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE((MAX_BATCH * std::mem::size_of::<RawFd>()) as u32) };
    let mut cbuf = vec![0u64; (space as usize).div_ceil(8)];
    loop {
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr() as *mut libc::c_void,
            iov_len: data.len(),
        };
        // SAFETY: all-zero is a valid msghdr; the pointers set below outlive the call.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = cbuf.len() * 8;
        // SAFETY: msg describes valid buffers.
        let n = unsafe { libc::recvmsg(CHANNEL, &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            std::process::exit(1);
        }
        if n == 0 {
            return; // multinode closed the channel
        }
        let mut fds = Vec::new();
        // SAFETY: walking the control messages recvmsg filled in, within msg_controllen.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                        / std::mem::size_of::<RawFd>();
                    let p = libc::CMSG_DATA(c) as *const RawFd;
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(p.add(i))));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let m = &data[..n as usize];
        let count = if m.len() >= HEADER && &m[..4] == b"MNRT" {
            u16::from_le_bytes([m[6], m[7]]) as usize
        } else {
            0
        };
        if msg.msg_flags & libc::MSG_CTRUNC != 0 || count != fds.len() {
            continue; // the fds that did arrive close as `fds` drops
        }
        for (i, fd) in fds.into_iter().enumerate() {
            let at = HEADER + RECORD * i;
            let seq = u64::from_le_bytes(m[at..at + 8].try_into().unwrap());
            std::thread::spawn(move || {
                serve(TcpStream::from(fd), seq);
                closed(seq);
            });
        }
    }
}

/// Tells multinode a routed connection is closed (it feeds least-conn).
fn closed(seq: u64) {
    let mut m = b"MNRC\x01\x00\x01\x00".to_vec();
    m.extend_from_slice(&seq.to_le_bytes());
    // SAFETY: m is a valid buffer; a failed send only loses a notice.
    unsafe {
        libc::send(
            CHANNEL,
            m.as_ptr() as *const libc::c_void,
            m.len(),
            libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
        )
    };
}

fn serve(s: TcpStream, seq: u64) {
    let _ = s.set_nodelay(true);
    let body = format!(
        "process={}; worker={}; seq={seq}\n",
        std::process::id(),
        std::env::var("MULTINODE_WORKER_ID").unwrap_or_else(|_| "-".into())
    );
    let mut input = mini_http::Input::new(&s);
    loop {
        let head_len = match input.read_head() {
            Ok(Some(n)) => n,
            Ok(None) => return error(&s, 431, "request head too large"),
            Err(_) => return,
        };
        let parsed = mini_http::parse_head(&input.buffered()[..head_len]);
        input.consume(head_len);
        let req = match parsed {
            Ok(req) => req,
            Err((status, why)) => return error(&s, status, why),
        };
        let drained = if req.chunked {
            matches!(input.discard_chunked(), Ok(Ok(())))
        } else {
            input.discard(req.content_length.unwrap_or(0)).is_ok()
        };
        if !drained {
            return;
        }
        let keep = req.minor == 1 && !req.close;
        let conn = if keep { "keep-alive" } else { "close" };
        let out = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: {conn}\r\n\r\n{body}",
            body.len()
        );
        if (&s).write_all(out.as_bytes()).is_err() || !keep {
            return;
        }
    }
}

/// Answers a request it cannot serve, then the connection closes.
fn error(mut s: &TcpStream, status: u16, why: &str) {
    let out = format!(
        "HTTP/1.1 {status} {}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{why}\n",
        mini_http::reason(status),
        why.len() + 1
    );
    let _ = s.write_all(out.as_bytes());
}
