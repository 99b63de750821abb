//! `--balance reuseport --route ip-hash`: client-IP affinity applied by the kernel. A classic
//! BPF program attached to each TCP port's SO_REUSEPORT group (`SO_ATTACH_REUSEPORT_CBPF`)
//! picks the socket, and so the worker slot, from a hash of the client's source address;
//! multinode never touches a connection.
//!
//! # What the program sees
//! For TCP the kernel runs the group's program on the SYN while it looks up the listener
//! (`inet_lhash2_lookup` → `reuseport_select_sock` → `run_bpf_filter` in
//! net/core/sock_reuseport.c). `run_bpf_filter` first pulls the skb's data pointer past the TCP
//! header ("BPF filter expects skb data pointer at payload data"), so offsets from 0 reach the
//! payload, which a SYN does not have. The IP header is still there behind it, and classic
//! BPF reaches it with negative offsets: a load at `SKF_NET_OFF + k` reads byte `k` of the
//! network header (`bpf_internal_load_pointer_neg_helper`). The source address is at
//! `SKF_NET_OFF + 12` (4 bytes) in IPv4 and `SKF_NET_OFF + 8` (16 bytes) in IPv6; the version
//! is the high nibble of byte 0. A dual-stack `[::]` socket gets its IPv4 clients as IPv4
//! packets (they only look v4-mapped through the socket API), so the program checks the
//! version and hashes an IPv4 client's 4 bytes either way: the same client, the same slot,
//! whichever socket family it reached.
//!
//! The return value is an index into the group's array of sockets, which holds them in the
//! order they called listen(2); an index at or past the number of sockets makes the kernel
//! fall back to its own hash of the connection (socket(7), SO_ATTACH_REUSEPORT_CBPF). So the
//! program returns `hash % N` for the N live slots, and slot k's socket must sit at index k:
//! `slots.rs` keeps that true (a socket that leaves the group moves the last one into its
//! hole, so no slot's socket ever leaves while multinode runs) and attaches a new program
//! whenever N changes.
//!
//! # The hash
//! 32-bit words of the address (as the program loads them: big-endian), each folded in with
//! MurmurHash3's 32-bit finalizer (`fmix32`), then `% N` (classic BPF's `BPF_MOD`): an IPv4
//! address `a` goes to `fmix32(a) % N`; an IPv6 address `w0..w3` to
//! `fmix32(fmix32(fmix32(fmix32(w0) ^ w1) ^ w2) ^ w3) % N`; the tests run the program against
//! the same computed in Rust. Unlike route mode's rendezvous hashing, a change of N remaps most clients; a restart
//! or a reload (same N) remaps none.
//!
//! No privilege is needed: any process may attach a classic program to its own sockets, so the
//! dropped supervisor re-attaches when it scales. (An eBPF `sk_reuseport` program with a
//! socket array would place sockets explicitly, but needs `bpf(2)` with CAP_BPF, which
//! multinode no longer has after the drop, and hand-built eBPF bytecode.)

use std::os::fd::{AsRawFd, BorrowedFd};

use libc::sock_filter;

/// The offset of the network header for classic BPF loads (`SKF_NET_OFF`, a negative `k`).
const NET: u32 = libc::SKF_NET_OFF as u32;

fn stmt(code: u32, k: u32) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt: 0,
        jf: 0,
        k,
    }
}

fn jump(code: u32, k: u32, jt: u8, jf: u8) -> sock_filter {
    sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    }
}

/// `A = fmix32(A)`, with X as scratch.
fn mix(p: &mut Vec<sock_filter>) {
    use libc::*;
    for (shift, mul) in [(16, Some(0x85eb_ca6b)), (13, Some(0xc2b2_ae35)), (16, None)] {
        p.push(stmt(BPF_MISC | BPF_TAX, 0)); // X = A
        p.push(stmt(BPF_ALU | BPF_RSH | BPF_K, shift)); // A >>= shift
        p.push(stmt(BPF_ALU | BPF_XOR | BPF_X, 0)); // A ^= X
        if let Some(m) = mul {
            p.push(stmt(BPF_ALU | BPF_MUL | BPF_K, m)); // A *= m
        }
    }
}

/// `A = 32-bit word at byte `off` of the network header` (big-endian, as BPF loads).
fn load_word(p: &mut Vec<sock_filter>, off: u32) {
    p.push(stmt(
        libc::BPF_LD | libc::BPF_W | libc::BPF_ABS,
        NET.wrapping_add(off),
    ));
}

/// The classic BPF program that returns `hash(source address) % slots` (see the module's
/// documentation).
pub fn program(slots: u32) -> Vec<sock_filter> {
    use libc::*;
    let mut v6 = Vec::new();
    load_word(&mut v6, 8);
    mix(&mut v6);
    for off in [12, 16, 20] {
        v6.push(stmt(BPF_MISC | BPF_TAX, 0));
        load_word(&mut v6, off);
        v6.push(stmt(BPF_ALU | BPF_XOR | BPF_X, 0));
        if off != 20 {
            mix(&mut v6);
        }
    }
    let mut p = vec![
        // A = IP version (the high nibble of the network header's first byte).
        stmt(BPF_LD | BPF_B | BPF_ABS, NET),
        stmt(BPF_ALU | BPF_RSH | BPF_K, 4),
        // IPv6: skip the two IPv4 instructions that follow.
        jump(BPF_JMP | BPF_JEQ | BPF_K, 6, 2, 0),
    ];
    load_word(&mut p, 12);
    p.push(stmt(BPF_JMP | BPF_JA, v6.len() as u32));
    p.extend(v6);
    mix(&mut p);
    p.push(stmt(BPF_ALU | BPF_MOD | BPF_K, slots.max(1)));
    p.push(stmt(BPF_RET | BPF_A, 0));
    p
}

/// Attaches [`program`] for `slots` slots to the reuseport group of `fd` (any listening
/// socket of the group), replacing the group's program. Takes effect at once for every new
/// connection to the group.
pub fn attach(fd: BorrowedFd<'_>, slots: u32) -> std::io::Result<()> {
    let mut filter = program(slots);
    let prog = libc::sock_fprog {
        len: filter.len() as libc::c_ushort,
        filter: filter.as_mut_ptr(),
    };
    // SAFETY: `prog` points at `filter`, which outlives the call; the kernel copies the
    // program, and `optlen` is the size of the `sock_fprog` passed.
    let rc = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            (&raw const prog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    /// MurmurHash3's 32-bit finalizer: every input bit flips each output bit with probability ½.
    fn fmix32(mut h: u32) -> u32 {
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }

    /// The hash the program computes of a client address. An IPv4-mapped IPv6 address is the
    /// IPv4 client it stands for (the kernel sees that client's packets as IPv4).
    fn hash(ip: IpAddr) -> u32 {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match ip {
            IpAddr::V4(a) => fmix32(u32::from(a)),
            IpAddr::V6(a) => {
                let o = a.octets();
                let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
                [4, 8, 12]
                    .into_iter()
                    .fold(fmix32(w(0)), |h, i| fmix32(h ^ w(i)))
            }
        }
    }

    /// The slot, out of `slots`, the kernel gives a client address.
    fn slot_of(ip: IpAddr, slots: u32) -> u32 {
        hash(ip) % slots.max(1)
    }

    /// Runs a classic BPF program the way the kernel does for the instructions [`program`]
    /// uses, over a packet of which only the network header is reachable (at `SKF_NET_OFF`).
    /// A load out of the header ends the program with 0, as in the kernel.
    fn run(prog: &[sock_filter], net: &[u8]) -> u32 {
        use libc::*;
        let (mut a, mut x, mut pc) = (0u32, 0u32, 0usize);
        let load = |k: u32, size: usize| -> Option<u32> {
            let off = k.wrapping_sub(NET) as usize;
            let bytes = net.get(off..off + size)?;
            Some(bytes.iter().fold(0, |v, b| (v << 8) | u32::from(*b)))
        };
        loop {
            let i = prog[pc];
            pc += 1;
            let code = u32::from(i.code);
            match code {
                c if c == BPF_LD | BPF_W | BPF_ABS => match load(i.k, 4) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_LD | BPF_B | BPF_ABS => match load(i.k, 1) {
                    Some(v) => a = v,
                    None => return 0,
                },
                c if c == BPF_MISC | BPF_TAX => x = a,
                c if c == BPF_ALU | BPF_RSH | BPF_K => a >>= i.k,
                c if c == BPF_ALU | BPF_XOR | BPF_X => a ^= x,
                c if c == BPF_ALU | BPF_MUL | BPF_K => a = a.wrapping_mul(i.k),
                c if c == BPF_ALU | BPF_MOD | BPF_K => a %= i.k,
                c if c == BPF_JMP | BPF_JA => pc += i.k as usize,
                c if c == BPF_JMP | BPF_JEQ | BPF_K => {
                    pc += usize::from(if a == i.k { i.jt } else { i.jf })
                }
                c if c == BPF_RET | BPF_A => return a,
                other => panic!("instruction {other:#x} not expected"),
            }
        }
    }

    fn ipv4_header(src: Ipv4Addr) -> Vec<u8> {
        let mut h = vec![0x45, 0, 0, 40, 0, 0, 0x40, 0, 64, 6, 0, 0];
        h.extend(src.octets());
        h.extend([127, 0, 0, 1]);
        h
    }

    fn ipv6_header(src: Ipv6Addr) -> Vec<u8> {
        let mut h = vec![0x60, 0, 0, 0, 0, 20, 6, 64];
        h.extend(src.octets());
        h.extend(Ipv6Addr::LOCALHOST.octets());
        h
    }

    /// A spread of addresses: a run of neighbours and scattered ones.
    fn addresses() -> Vec<IpAddr> {
        let mut ips: Vec<IpAddr> = (1..=200u8)
            .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
            .collect();
        let mut s = 0x1234_5678_9abc_def0u64;
        for _ in 0..300 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ips.push(IpAddr::V4(Ipv4Addr::from((s >> 32) as u32)));
            ips.push(IpAddr::V6(Ipv6Addr::from(
                u128::from(s) * 0x9e37_79b9_7f4a_7c15,
            )));
        }
        ips.push("::1".parse().unwrap());
        ips.push("2001:db8::7".parse().unwrap());
        ips
    }

    #[test]
    fn the_program_computes_slot_of_for_both_families() {
        for slots in [1, 2, 3, 5, 8, 64, 4096] {
            let prog = program(slots);
            assert!(prog.len() <= libc::BPF_MAXINSNS as usize);
            for ip in addresses() {
                let got = match ip {
                    IpAddr::V4(a) => run(&prog, &ipv4_header(a)),
                    IpAddr::V6(a) => run(&prog, &ipv6_header(a)),
                };
                assert_eq!(got, slot_of(ip, slots), "{ip} over {slots} slots");
                assert!(got < slots);
            }
        }
    }

    #[test]
    fn an_ipv4_client_of_a_dual_stack_socket_hashes_as_its_ipv4_address() {
        let v4: Ipv4Addr = "198.51.100.9".parse().unwrap();
        let mapped = IpAddr::V6(v4.to_ipv6_mapped());
        assert_eq!(hash(mapped), hash(IpAddr::V4(v4)));
        // What the kernel sees of that client: an IPv4 packet.
        assert_eq!(run(&program(7), &ipv4_header(v4)), slot_of(mapped, 7));
    }

    #[test]
    fn neighbouring_addresses_spread_evenly() {
        let mut per = [0u32; 4];
        for n in 0..4096u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x7f00_0000 + n));
            per[slot_of(ip, 4) as usize] += 1;
        }
        assert!(per.iter().all(|&c| (900..1150).contains(&c)), "{per:?}");
    }

    #[test]
    fn the_kernel_accepts_the_program() {
        use std::net::TcpListener;
        use std::os::fd::AsFd;
        // A socket with SO_REUSEPORT set, listening: a group of one.
        let fd = nix::sys::socket::socket(
            nix::sys::socket::AddressFamily::Inet,
            nix::sys::socket::SockType::Stream,
            nix::sys::socket::SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        nix::sys::socket::setsockopt(&fd, nix::sys::socket::sockopt::ReusePort, &true).unwrap();
        let any = nix::sys::socket::SockaddrIn::new(127, 0, 0, 1, 0);
        nix::sys::socket::bind(fd.as_raw_fd(), &any).unwrap();
        nix::sys::socket::listen(&fd, nix::sys::socket::Backlog::new(8).unwrap()).unwrap();
        for slots in [1, 3, 4096] {
            attach(fd.as_fd(), slots).unwrap();
        }
        // A socket without SO_REUSEPORT has no group: refused.
        let plain = TcpListener::bind("127.0.0.1:0").unwrap();
        assert!(attach(plain.as_fd(), 2).is_err());
    }
}
