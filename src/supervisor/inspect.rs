//! A look at a worker that just became ready: does it listen on a socket multinode did not
//! give it? A program that binds its own port instead of using fd 3 (`LISTEN_FDS`) runs, is
//! reported ready, and never gets a connection of multinode's sockets; this finds it in
//! /proc (its fds, and the kernel's tables of listening sockets) and says what to do.

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;

use nix::unistd::Pid;

use super::shell::Shell;
use crate::log::Event as Log;

impl Shell {
    /// Warns about every listening socket worker `pid` holds that multinode did not pass.
    pub(super) fn inspect(&mut self, pid: Pid) {
        let ours: HashSet<u64> = self
            .p
            .sockets
            .iter()
            .map(|b| b.fd.as_fd())
            .chain(self.p.slots.fds())
            .filter_map(|fd| nix::sys::stat::fstat(fd).ok().map(|st| st.st_ino))
            .collect();
        let Some(slot) = self.procs.iter().find(|w| w.pid == pid).map(|w| w.slot) else {
            return;
        };
        for addr in foreign_listeners(pid, &ours) {
            self.p.out.event(
                Log::warn(
                    "foreign-socket",
                    format!(
                        "listens on {addr} itself, not on the socket multinode passed: no connection to multinode's address reaches it there; make it use the inherited socket (fd 3, LISTEN_FDS: listen({{fd: 3}}) in Node, socket.socket(fileno=3) in Python, the multinode-worker or listenfd crate in Rust)"
                    ),
                )
                .worker(slot, pid.as_raw())
                .with("addr", addr),
            );
        }
    }
}

/// The addresses of the listening sockets `pid` holds whose inodes are not in `ours`.
///
/// TCP listeners come from the kernel's sock_diag interface (what `ss -lt` uses), asked for
/// sockets in LISTEN state only, so the kernel walks just its table of listening sockets:
/// /proc/net/tcp lists every connection of the host, TIME_WAIT ones too, and with 44,000 of
/// them it took half a second to read and 7 MB to hold, on every worker start (bench/chaos.sh
/// kill found the loop stalling and the heap growing with each restart). The query runs in
/// multinode's network namespace: a worker in a namespace of its own is not looked at for TCP.
/// Unix listeners are read from /proc/PID/net/unix a line at a time.
fn foreign_listeners(pid: Pid, ours: &HashSet<u64>) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    let held: HashSet<u64> = dir
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter_map(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .filter(|ino| !ours.contains(ino))
        .collect();
    if held.is_empty() {
        return Vec::new();
    }
    let mut found = Vec::new();
    if same_netns(pid) {
        for v6 in [false, true] {
            let _ = diag::tcp_listeners(v6, |ino, addr| {
                if held.contains(&ino) {
                    found.push(addr);
                }
            });
        }
    }
    if let Ok(f) = std::fs::File::open(format!("/proc/{pid}/net/unix")) {
        for line in BufReader::new(f).lines().skip(1).map_while(Result::ok) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // Num RefCount Protocol Flags Type St Inode Path; flag 00010000 is __SO_ACCEPTCON.
            if f.len() > 7 && f[3] == "00010000" {
                if let Ok(ino) = f[6].parse::<u64>() {
                    if held.contains(&ino) {
                        found.push(format!("unix:{}", f[7]));
                    }
                }
            }
        }
    }
    found
}

/// Whether `pid` is in multinode's network namespace.
fn same_netns(pid: Pid) -> bool {
    let ino = |p: String| std::fs::metadata(p).ok().map(|m| m.ino());
    matches!(
        (ino("/proc/self/ns/net".into()), ino(format!("/proc/{pid}/ns/net"))),
        (Some(a), Some(b)) if a == b
    )
}

/// The sock_diag netlink query for listening TCP sockets (netlink(7), sock_diag(7)).
mod diag {
    use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
    use std::os::fd::AsRawFd;

    use nix::errno::Errno;
    use nix::sys::socket::{
        AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, recv, sendto,
        setsockopt, socket, sockopt,
    };
    use nix::sys::time::TimeVal;

    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 0x1;
    const NLM_F_DUMP: u16 = 0x300;
    const NLMSG_ERROR: u16 = 0x2;
    const NLMSG_DONE: u16 = 0x3;
    const TCP_LISTEN: u32 = 10;
    /// struct nlmsghdr
    const HEADER: usize = 16;
    /// struct inet_diag_req_v2
    const REQUEST: usize = 56;
    /// struct inet_diag_msg
    const MSG: usize = 72;
    /// Datagrams read per query at most (a dump sends a few sockets per datagram).
    const MAX_READS: usize = 4096;

    /// Calls `each(inode, address)` for every TCP socket in LISTEN state of one family in
    /// this network namespace.
    pub fn tcp_listeners(v6: bool, mut each: impl FnMut(u64, String)) -> nix::Result<()> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Datagram,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkSockDiag,
        )?;
        // The kernel answers a dump at once; this only bounds a wait that should not happen.
        setsockopt(&fd, sockopt::ReceiveTimeout, &TimeVal::new(1, 0))?;
        let family = if v6 { libc::AF_INET6 } else { libc::AF_INET } as u8;
        let mut req = [0u8; HEADER + REQUEST];
        req[0..4].copy_from_slice(&((HEADER + REQUEST) as u32).to_ne_bytes());
        req[4..6].copy_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
        req[6..8].copy_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
        req[8..12].copy_from_slice(&1u32.to_ne_bytes());
        req[HEADER] = family;
        req[HEADER + 1] = libc::IPPROTO_TCP as u8;
        req[HEADER + 4..HEADER + 8].copy_from_slice(&(1u32 << TCP_LISTEN).to_ne_bytes());
        sendto(
            fd.as_raw_fd(),
            &req,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        let mut buf = vec![0u8; 32 * 1024];
        for _ in 0..MAX_READS {
            let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
            let mut off = 0;
            while off + HEADER <= n {
                let word = |at: usize| {
                    u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]])
                };
                let len = word(off) as usize;
                let kind = u16::from_ne_bytes([buf[off + 4], buf[off + 5]]);
                if len < HEADER || off + len > n {
                    return Err(Errno::EBADMSG);
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => return Err(Errno::EIO),
                    _ => {
                        if let Some((ino, addr)) = parse(&buf[off + HEADER..off + len], v6) {
                            each(ino, addr);
                        }
                    }
                }
                off += (len + 3) & !3;
            }
            if n == 0 {
                return Ok(());
            }
        }
        Ok(())
    }

    /// An inet_diag_msg: the socket's inode and local address.
    fn parse(m: &[u8], v6: bool) -> Option<(u64, String)> {
        if m.len() < MSG {
            return None;
        }
        let port = u16::from_be_bytes([m[4], m[5]]);
        let ip = if v6 {
            let b: [u8; 16] = m[8..24].try_into().ok()?;
            Ipv6Addr::from(b).into()
        } else {
            Ipv4Addr::new(m[8], m[9], m[10], m[11]).into()
        };
        let ino = u32::from_ne_bytes(m[68..72].try_into().ok()?);
        Some((u64::from(ino), SocketAddr::new(ip, port).to_string()))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;
    use std::net::TcpListener;
    use std::os::unix::fs::MetadataExt;

    use super::diag;

    /// The inode of a socket of ours, as /proc/self/fd shows it.
    fn inode(l: &TcpListener) -> u64 {
        use std::os::fd::AsRawFd;
        std::fs::metadata(format!("/proc/self/fd/{}", l.as_raw_fd()))
            .unwrap()
            .ino()
    }

    #[test]
    fn sock_diag_finds_listening_sockets_and_their_addresses() {
        let v4 = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut found = Vec::new();
        diag::tcp_listeners(false, |ino, addr| found.push((ino, addr))).unwrap();
        let want = (inode(&v4), v4.local_addr().unwrap().to_string());
        assert!(found.contains(&want), "{want:?} not in {found:?}");
        // A connected socket is not listed: only LISTEN state is asked for.
        let c = std::net::TcpStream::connect(v4.local_addr().unwrap()).unwrap();
        let (a, _) = v4.accept().unwrap();
        let mut again = HashSet::new();
        diag::tcp_listeners(false, |ino, _| {
            again.insert(ino);
        })
        .unwrap();
        for s in [&c, &a] {
            use std::os::fd::AsRawFd;
            let ino = std::fs::metadata(format!("/proc/self/fd/{}", s.as_raw_fd()))
                .unwrap()
                .ino();
            assert!(
                !again.contains(&ino),
                "a connection was listed as listening"
            );
        }

        // IPv6, where the host has it.
        if let Ok(v6) = TcpListener::bind("[::1]:0") {
            let mut found = Vec::new();
            diag::tcp_listeners(true, |ino, addr| found.push((ino, addr))).unwrap();
            let want = (inode(&v6), v6.local_addr().unwrap().to_string());
            assert!(found.contains(&want), "{want:?} not in {found:?}");
        }
    }
}
