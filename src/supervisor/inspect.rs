//! A look at a worker that just became ready: does it listen on a socket multinode did not
//! give it? A program that binds its own port instead of using fd 3 (`LISTEN_FDS`) runs, is
//! reported ready, and never gets a connection of multinode's sockets; this finds it in
//! /proc (its fds, and the kernel's tables of listening sockets) and says what to do.

use std::collections::HashSet;
use std::os::fd::AsFd;

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
    for (table, v6) in [("tcp", false), ("tcp6", true)] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local rem st tx:rx tr:when retrnsmt uid timeout inode; state 0A is LISTEN.
            if f.len() > 9 && f[3] == "0A" {
                if let Ok(ino) = f[9].parse::<u64>() {
                    if held.contains(&ino) {
                        found.extend(hex_address(f[1], v6));
                    }
                }
            }
        }
    }
    if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/unix")) {
        for line in text.lines().skip(1) {
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

/// `0100007F:1F90` → `127.0.0.1:8080` (and the IPv6 form, 32 hex digits).
fn hex_address(s: &str, v6: bool) -> Option<String> {
    let (ip, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    if !v6 {
        let n = u32::from_str_radix(ip, 16).ok()?;
        return Some(format!(
            "{}:{port}",
            std::net::Ipv4Addr::from(n.to_le_bytes())
        ));
    }
    // Four 32-bit words, each in host (little-endian) order.
    let mut bytes = [0u8; 16];
    for (i, chunk) in ip.as_bytes().chunks(8).enumerate() {
        let word = u32::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
        bytes[i * 4..i * 4 + 4].copy_from_slice(&word.to_le_bytes());
    }
    Some(format!("[{}]:{port}", std::net::Ipv6Addr::from(bytes)))
}

#[cfg(test)]
mod tests {
    use super::hex_address;

    #[test]
    fn proc_net_addresses() {
        assert_eq!(
            hex_address("0100007F:1F90", false).as_deref(),
            Some("127.0.0.1:8080")
        );
        assert_eq!(
            hex_address("00000000000000000000000001000000:0050", true).as_deref(),
            Some("[::1]:80")
        );
        assert_eq!(hex_address("zz:1", false), None);
    }
}
