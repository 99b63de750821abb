//! `--balance reuseport --route ip-hash`: the kernel sends each client address to one slot (a
//! classic BPF program on each port's reuseport group), multinode touches no connection. The
//! clients are real sockets bound to addresses of 127.0.0.0/8 (all of it is loopback) before
//! they connect; the workers are `hello`, which answers `process=PID; worker=SLOT; …`.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

use common::*;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, SockaddrStorage};

const KERNEL: [&str; 4] = ["--balance", "reuseport", "--route", "ip-hash"];

/// A connection to `to` from address `from` (port chosen by the kernel).
fn connect_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let family = match from {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    let fd: OwnedFd = socket::socket(family, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    if from.is_ipv6() {
        // Any address of a prefix routed to loopback (see the IPv6 test), not only those
        // configured on an interface.
        let on: libc::c_int = 1;
        // SAFETY: `on` is a live c_int and the length passed is its size.
        let r = unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::IPPROTO_IPV6,
                libc::IPV6_FREEBIND,
                (&raw const on).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    socket::bind(
        fd.as_raw_fd(),
        &SockaddrStorage::from(SocketAddr::new(from, 0)),
    )?;
    socket::connect(fd.as_raw_fd(), &SockaddrStorage::from(to))?;
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    Ok(s)
}

/// `GET /` on a new connection from `from`: (slot, pid) of the worker that answered.
fn ask_from(from: IpAddr, to: SocketAddr) -> std::io::Result<(u32, i32)> {
    let mut s = connect_from(from, to)?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let field = |name: &str| {
        resp.split(['\n', ';'])
            .find_map(|p| p.trim().strip_prefix(name)?.trim().parse::<i64>().ok())
    };
    match (
        resp.starts_with("HTTP/1.1 200"),
        field("worker="),
        field("process="),
    ) {
        (true, Some(slot), Some(pid)) => Ok((slot as u32, pid as i32)),
        _ => Err(std::io::Error::other(format!("unexpected answer {resp:?}"))),
    }
}

/// Client addresses 127.0.0.2 ..= 127.0.0.(n+1).
fn sources(n: u8) -> Vec<IpAddr> {
    (2..n + 2)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect()
}

/// Asks three times from each source; each must get the same worker every time. Returns
/// source → (slot, pid).
#[track_caller]
fn who_answers(from: &[IpAddr], to: SocketAddr) -> BTreeMap<IpAddr, (u32, i32)> {
    from.iter()
        .map(|ip| {
            let got: BTreeSet<(u32, i32)> = (0..3)
                .map(|_| ask_from(*ip, to).unwrap_or_else(|e| panic!("GET from {ip}: {e}")))
                .collect();
            assert_eq!(
                got.len(),
                1,
                "{ip} was answered by several workers: {got:?}"
            );
            (*ip, *got.first().unwrap())
        })
        .collect()
}

/// The slot the kernel's program gives `ip` out of `slots`: MurmurHash3's 32-bit finalizer of
/// the address's 32-bit big-endian words, folded, modulo the slot count (src/socket/affinity.rs).
fn expected_slot(ip: IpAddr, slots: u32) -> u32 {
    fn fmix32(mut h: u32) -> u32 {
        h ^= h >> 16;
        h = h.wrapping_mul(0x85eb_ca6b);
        h ^= h >> 13;
        h = h.wrapping_mul(0xc2b2_ae35);
        h ^ (h >> 16)
    }
    let h = match ip {
        IpAddr::V4(a) => fmix32(u32::from(a)),
        IpAddr::V6(a) => {
            let o = a.octets();
            let w = |i: usize| u32::from_be_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            [4, 8, 12]
                .into_iter()
                .fold(fmix32(w(0)), |h, i| fmix32(h ^ w(i)))
        }
    };
    h % slots
}

/// Every source went to the slot the program gives it, and to that slot's current worker.
#[track_caller]
fn assert_placed(seen: &BTreeMap<IpAddr, (u32, i32)>, slots: u32, pids: &BTreeMap<u32, i32>) {
    for (ip, (slot, pid)) in seen {
        assert_eq!(*slot, expected_slot(*ip, slots), "{ip} over {slots} slots");
        assert_eq!(Some(pid), pids.get(slot), "{ip}: not slot {slot}'s worker");
    }
    let used: BTreeSet<u32> = seen.values().map(|(s, _)| *s).collect();
    assert_eq!(
        used.len() as u32,
        slots,
        "every slot gets clients: {used:?}"
    );
}

/// Whether every thread of `pid` is stopped (`T` in /proc/PID/task/*/stat).
fn stopped(pid: i32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|t| {
        std::fs::read_to_string(t.path().join("stat"))
            .ok()
            .and_then(|s| s.rsplit_once(") ")?.1.chars().next())
            == Some('T')
    })
}

/// The socket inode behind fd 3 of `pid` (`socket:[12345]`).
fn fd3_socket(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/3"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn each_client_address_sticks_to_its_slot_and_comes_back_after_a_kill() {
    let m = Multinode::serve_hello("3", &KERNEL);
    let addr = m.tcp_addr("listen0");
    m.wait_event("ip-hash", |e| e.u64("slots") == Some(3));
    m.wait_ready(3);
    let from = sources(60);
    let before = who_answers(&from, addr);
    assert_placed(&before, 3, &m.slot_pids());

    // Slot 1's worker dies; its clients wait in slot 1's queue and come back to its
    // replacement, the others never notice.
    let victim = m.slot_pids()[&1];
    let client = *before.iter().find(|(_, (s, _))| *s == 1).unwrap().0;
    kill(victim, libc::SIGKILL);
    assert!(eventually(DEADLINE, || !alive(victim)), "{victim} lives");
    let during = std::thread::spawn(move || ask_from(client, addr));
    let replacement = m.wait_started_in_slot(1, &[victim]);
    let (slot, pid) = during
        .join()
        .unwrap()
        .expect("a GET while slot 1 restarted");
    assert_eq!(
        (slot, pid),
        (1, replacement),
        "{client} asked while slot 1 restarted"
    );

    let after = who_answers(&from, addr);
    assert_placed(&after, 3, &m.slot_pids());
    for (ip, (slot, pid)) in &after {
        assert_eq!(*slot, before[ip].0, "{ip} moved");
        match slot {
            1 => assert_eq!(*pid, replacement, "{ip}"),
            _ => assert_eq!(*pid, before[ip].1, "{ip}"),
        }
    }
}

#[test]
fn scaling_remaps_by_the_new_count_and_a_slot_that_returns_gets_its_socket_back() {
    let m = Multinode::serve_hello("2", &KERNEL);
    let addr = m.tcp_addr("listen0");
    m.wait_ready(2);
    let from = sources(40);
    assert_placed(&who_answers(&from, addr), 2, &m.slot_pids());

    // Up to 3: the program counts the new slot's socket, which joined its group last.
    m.signal(libc::SIGTTIN);
    m.wait_event("ip-hash", |e| e.u64("slots") == Some(3));
    m.wait_ready(3);
    let third = m.slot_pids()[&2];
    let socket = fd3_socket(third);
    assert!(socket.starts_with("socket:["), "{socket}");
    assert_placed(&who_answers(&from, addr), 3, &m.slot_pids());

    // Down to 2: slot 2's clients go to the other two at once, while its worker drains.
    m.signal(libc::SIGTTOU);
    m.wait_events("ip-hash", 2, |e| e.u64("slots") == Some(2));
    let mut two = m.slot_pids();
    two.remove(&2);
    assert_placed(&who_answers(&from, addr), 2, &two);
    m.wait_exited(third);

    // Up to 3 again: slot 2 takes back the socket it had (still in its group, at index 2).
    m.signal(libc::SIGTTIN);
    m.wait_events("ip-hash", 2, |e| e.u64("slots") == Some(3));
    let back = m.wait_started_in_slot(2, &[third]);
    m.wait_event("ready", |e| e.pid == Some(back));
    assert_eq!(fd3_socket(back), socket, "slot 2 got another socket");
    assert_placed(&who_answers(&from, addr), 3, &m.slot_pids());
    m.signal(libc::SIGTERM);
}

#[test]
fn a_new_slot_takes_its_clients_once_its_worker_is_ready() {
    let gates = Scratch::new("kaffinity-gates");
    let (gate, hello) = (worker_bin("mn-gate").display().to_string(), hello());
    let dir = gates.0.display().to_string();
    let m = Multinode::serve(
        &[
            &KERNEL[..],
            &[
                "-w",
                "2",
                "-l",
                "127.0.0.1:0",
                "--ready",
                "notify",
                "--",
                &gate,
                &dir,
                &hello,
            ],
        ]
        .concat(),
    );
    let addr = m.tcp_addr("listen0");
    m.wait_ready(2);
    let from = sources(40);

    // Slot 2's worker starts but is held before it is ready: its would-be clients are still
    // served by slots 0 and 1, without waiting for it.
    write(&gates.path("hold.2"), "");
    m.signal(libc::SIGTTIN);
    let third = m.wait_started_in_slot(2, &[]);
    assert_placed(&who_answers(&from, addr), 2, &m.slot_pids());
    assert!(
        m.events("ready").iter().all(|e| e.pid != Some(third)),
        "slot 2 was ready too soon"
    );

    // Ready: the kernel counts it.
    std::fs::remove_file(gates.path("hold.2")).unwrap();
    m.wait_event("ip-hash", |e| e.u64("slots") == Some(3));
    assert_placed(&who_answers(&from, addr), 3, &m.slot_pids());
}

#[test]
fn connections_left_on_a_removed_slot_are_closed_once_its_worker_is_gone() {
    let m = Multinode::serve_hello("3", &[&KERNEL[..], &["--grace", "1s"]].concat());
    let addr = m.tcp_addr("listen0");
    m.wait_ready(3);
    let from = sources(40);
    let placed = who_answers(&from, addr);
    let client = *placed.iter().find(|(_, (s, _))| *s == 2).unwrap().0;

    // Slot 2's worker accepts nothing more; a connection waits in its queue.
    let third = m.slot_pids()[&2];
    kill(third, libc::SIGSTOP);
    // Stopped for real, every thread: one still in accept(2) would take the connection.
    assert!(
        eventually(DEADLINE, || stopped(third)),
        "{third} did not stop"
    );
    let mut waiting = connect_from(client, addr).unwrap();
    waiting
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();

    // Slot 2 goes: its worker is killed after --grace, and nobody will accept the connection.
    m.signal(libc::SIGTTOU);
    m.wait_exited(third);
    let shed = m.wait_event("shed", |e| e.slot == Some(2));
    assert_eq!(shed.u64("connections"), Some(1), "{shed}");
    let mut buf = Vec::new();
    match waiting.read_to_end(&mut buf) {
        Ok(0) => {}
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {}
        other => panic!("the waiting connection got {other:?}: {buf:?}"),
    }
    // Its address now belongs to one of the two slots left.
    let (slot, _) = ask_from(client, addr).unwrap();
    assert_eq!(slot, expected_slot(client, 2));
}

#[test]
fn a_dual_stack_socket_places_ipv4_and_ipv6_clients_and_unix_sockets_stay_shared() {
    if !require(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "IPv6 on loopback (::1)",
    ) {
        return;
    }
    let scratch = Scratch::new("kaffinity");
    let unix = scratch.path("admin.sock");
    let unix_spec = format!("admin=unix:{}", unix.display());
    let hello = hello();
    let m = Multinode::serve(
        &[
            &KERNEL[..],
            &["-w", "3", "-l", ":0", "-l", &unix_spec, "--", &hello],
        ]
        .concat(),
    );
    let any: SocketAddr = m.tcp_addr("listen0");
    let started = m.wait_event("ip-hash", |e| e.u64("slots") == Some(3));
    assert!(started.msg.contains("shared"), "{started}");
    m.wait_ready(3);
    let port = any.port();

    // IPv4 clients reach the dual-stack socket as IPv4 packets, hashed as IPv4 addresses.
    let v4 = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
    let seen = who_answers(&sources(30), v4);
    assert_placed(&seen, 3, &m.slot_pids());
    // ::1 always lands in the slot of its IPv6 hash.
    let v6: IpAddr = "::1".parse().unwrap();
    let to6 = SocketAddr::new(v6, port);
    let got = who_answers(&[v6], to6);
    assert_eq!(got[&v6].0, expected_slot(v6, 3), "{got:?}");
    // The Unix socket has no client address: every worker accepts on it.
    let (status, body) = http_get_unix(&unix, "/").unwrap();
    assert_eq!(status, 200, "{body}");
}

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) {
    let st = std::process::Command::new("ip")
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("ip {args:?}: {e}"));
    assert!(st.success(), "ip {args:?}: {st}");
}

#[test]
fn ipv6_client_addresses_stick_to_their_slots() {
    // Loopback has only ::1 for IPv6. In a network namespace of its own, 2001:db8::/64 (the
    // documentation prefix) is made local on its loopback, and the clients bind addresses of
    // it: the namespace, and all in it, ends with the test's processes.
    if !require(is_root(), "needs root (a network namespace)")
        || !require(
            std::process::Command::new("ip").arg("-V").output().is_ok(),
            "ip (iproute2) is not installed",
        )
    {
        return;
    }
    let hello = hello(); // built out here: the namespace has no network
    let inside = std::thread::spawn(move || {
        // SAFETY: unshare takes no pointers; CLONE_NEWNET moves this thread alone (and what it
        // starts) into a new network namespace, whatever the other threads do.
        let r = unsafe { libc::unshare(libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "unshare: {}", std::io::Error::last_os_error());
        ip(&["link", "set", "lo", "up"]);
        ip(&["-6", "route", "add", "local", "2001:db8::/64", "dev", "lo"]);
        let m =
            Multinode::serve(&[&KERNEL[..], &["-w", "3", "-l", "[::1]:0", "--", &hello]].concat());
        let addr = m.tcp_addr("listen0");
        m.wait_ready(3);
        let from: Vec<IpAddr> = (1..=40u16)
            .map(|i| IpAddr::from([0x2001, 0xdb8, 0, 0, 0, 0, 0x7, i]))
            .collect();
        let before = who_answers(&from, addr);
        assert_placed(&before, 3, &m.slot_pids());
        // And after a kill, in the same slots.
        let victim = m.slot_pids()[&0];
        kill(victim, libc::SIGKILL);
        let replacement = m.wait_started_in_slot(0, &[victim]);
        m.wait_event("ready", |e| e.pid == Some(replacement));
        let after = who_answers(&from, addr);
        assert_placed(&after, 3, &m.slot_pids());
        for (ip, (slot, _)) in &after {
            assert_eq!(*slot, before[ip].0, "{ip} moved");
        }
    });
    if let Err(panic) = inside.join() {
        std::panic::resume_unwind(panic);
    }
}

#[test]
fn what_the_kernel_cannot_do_is_refused_and_route_mode_named() {
    let hello = hello();
    let cases: [(&[&str], &[&str]); 4] = [
        (
            &["--route", "least-conn"],
            &[
                "--balance reuseport --route least-conn",
                "route mode",
                "leave out --balance reuseport",
            ],
        ),
        (
            &["--route", "round-robin"],
            &["--route round-robin", "only ip-hash", "route mode"],
        ),
        (
            &["--route", "ip-hash", "--proxy-protocol"],
            &["--proxy-protocol", "PROXY protocol needs route mode"],
        ),
        (
            &["--route", "ip-hash", "--max-requests", "100"],
            &["--max-requests", "route mode"],
        ),
    ];
    for (args, needles) in cases {
        let argv = [&["serve", "--balance", "reuseport"], args, &["--", &hello]].concat();
        assert_error(&mn(&argv), 2, needles);
    }
    // The same from a config file.
    let scratch = Scratch::new("kaffinity-file");
    let file = scratch.path("multinode.toml");
    write(&file, "balance = \"reuseport\"\nroute = \"least-conn\"\n");
    let file = file.display().to_string();
    let out = mn(&["check", "--config", &file, "--", &hello]);
    assert_error(&out, 2, &["least-conn", "route mode"]);
}

#[test]
fn an_upgrade_keeps_the_program_and_every_slot_at_its_index() {
    let inst = Install::new();
    let name = unique_name();
    let hello = hello();
    let m = inst.serve(
        &name,
        &[&KERNEL[..], &["-w", "3", "-l", "127.0.0.1:0", "--", &hello]].concat(),
    );
    let addr = m.tcp_addr("listen0");
    m.wait_ready(3);
    // Down to 2 and back to 3 before the upgrade, so that slot 2's socket is retired and
    // taken back: a retired set must go over too.
    let third = m.slot_pids()[&2];
    let socket = fd3_socket(third);
    assert!(socket.starts_with("socket:["), "{socket}");
    m.signal(libc::SIGTTOU);
    m.wait_event("ip-hash", |e| e.u64("slots") == Some(2));
    m.wait_exited(third);
    let from = sources(40);
    let two = who_answers(&from, addr);
    assert_placed(&two, 2, &m.slot_pids());

    let out = mn(&["upgrade", "--name", &name]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stderr(&out),
        m.output()
    );
    m.wait_event("upgraded", |_| true);
    assert!(alive(m.pid));
    // The same program, over the same group: every address in the same worker.
    assert_eq!(who_answers(&from, addr), two, "moved across the upgrade");

    // The retired socket went over: slot 2 gets it back, at index 2 of its group.
    m.signal(libc::SIGTTIN);
    m.wait_events("ip-hash", 2, |e| e.u64("slots") == Some(3));
    let back = m.wait_started_in_slot(2, &[third]);
    m.wait_event("ready", |e| e.pid == Some(back));
    assert_eq!(fd3_socket(back), socket, "slot 2 got another socket");
    let three = who_answers(&from, addr);
    assert_placed(&three, 3, &m.slot_pids());

    // And a slot's clients still come back to it after its worker is killed.
    let victim = m.slot_pids()[&0];
    kill(victim, libc::SIGKILL);
    let replacement = m.wait_started_in_slot(0, &[victim]);
    m.wait_event("ready", |e| e.pid == Some(replacement));
    let after = who_answers(&from, addr);
    assert_placed(&after, 3, &m.slot_pids());
    for (ip, (slot, _)) in &after {
        assert_eq!(*slot, three[ip].0, "{ip} moved");
    }
}
