//! Route mode (`--route`, issue 5) against the real binary: the supervisor accepts, picks a
//! worker by policy and hands the connection over its channel. The worker is the stdlib
//! Python example `examples/python/routed.py`, which answers
//! `process=<pid>; worker=<slot>; reqno=<n>; seq=<seq>; client=<ip:port>` and sends the close
//! notices least-conn counts on. Clients are real TCP connections on loopback, some bound to
//! other loopback source addresses (127.0.0.2, ...) before connecting.
//!
//! `mn-gate` (tests/workers) wraps the worker where a test must decide when a slot becomes
//! ready: with `--ready notify` it holds a slot while `DIR/hold.<slot>` exists, then sends
//! READY=1 and execs routed.py.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, Shutdown, SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::*;

/// The system Python: workers run as nobody, who may not reach a per-user interpreter.
const PYTHON: &str = "/usr/bin/python3";

/// routed.py, copied once per test process where nobody can read it (copying it again while
/// another test's worker starts could hand that worker a half-written file).
fn routed_py() -> String {
    static P: OnceLock<PathBuf> = OnceLock::new();
    P.get_or_init(|| repo_file("examples/python/routed.py"))
        .display()
        .to_string()
}

/// `multinode serve --route POLICY --workers N -l LISTEN [EXTRA] -- python3 routed.py`, returned
/// once every worker is ready.
fn serve_routed(policy: &str, workers: usize, listen: &str, extra: &[&str]) -> Multinode {
    let n = workers.to_string();
    let py = routed_py();
    let mut args = vec![
        "--route",
        policy,
        "--workers",
        &n,
        "-l",
        listen,
        "--ready",
        "delay:300ms",
    ];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", PYTHON, &py]);
    let mn = Multinode::serve(&args);
    wait_ready(&mn, workers);
    mn
}

/// The same with every worker behind `mn-gate DIR` and `--ready notify`: a slot is ready once
/// its hold file is gone. Returns at once (the caller waits for what it needs).
fn serve_gated(policy: &str, workers: usize, gate: &Scratch) -> Multinode {
    let n = workers.to_string();
    let gate_bin = worker_bin("mn-gate").display().to_string();
    let dir = gate.0.display().to_string();
    let py = routed_py();
    Multinode::serve(&[
        "--route",
        policy,
        "--workers",
        &n,
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--ready-timeout",
        "10m",
        "--",
        &gate_bin,
        &dir,
        PYTHON,
        &py,
    ])
}

fn wait_ready(mn: &Multinode, n: usize) {
    mn.wait_ready(n);
}

/// slot → pid of the newest worker started for each slot.
fn slot_pids(mn: &Multinode) -> BTreeMap<u32, i32> {
    mn.slot_pids()
}

/// One answer of routed.py.
#[derive(Debug, Clone)]
struct Reply {
    pid: i32,
    worker: u32,
    seq: u64,
    client: String,
}

fn parse_reply(body: &str) -> Option<Reply> {
    let field = |k: &str| body_field(body, k);
    Some(Reply {
        pid: field("process")?.parse().ok()?,
        worker: field("worker")?.parse().ok()?,
        seq: field("seq")?.parse().ok()?,
        client: field("client")?.to_string(),
    })
}

/// Sends `preamble` (a PROXY header, or nothing) and one `Connection: close` GET in one write,
/// reads the response to its end and parses routed.py's answer.
fn ask(mut s: TcpStream, preamble: &[u8]) -> io::Result<Reply> {
    s.set_read_timeout(Some(DEADLINE))?;
    s.set_write_timeout(Some(DEADLINE))?;
    let mut req = preamble.to_vec();
    req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(&req)?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp)?;
    let resp = String::from_utf8_lossy(&resp);
    let bad = || io::Error::other(format!("unexpected response: {resp:?}"));
    if !resp.starts_with("HTTP/1.1 200 ") {
        return Err(bad());
    }
    let body = resp.split_once("\r\n\r\n").ok_or_else(bad)?.1;
    parse_reply(body).ok_or_else(bad)
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    TcpStream::connect_timeout(&addr, Duration::from_secs(10))
}

/// One request on a fresh connection.
fn get(addr: SocketAddr) -> io::Result<Reply> {
    ask(connect(addr)?, b"")
}

/// One request on a fresh connection from source address `src`.
fn get_from(src: IpAddr, addr: SocketAddr) -> io::Result<Reply> {
    ask(connect_from(src, addr)?, b"")
}

/// A socket address in the C layout.
fn sockaddr(a: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero bytes are a valid sockaddr_storage (and sockaddr_in/in6).
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match a {
        SocketAddr::V4(v4) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            let sin = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in) };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = v4.port().to_be();
            sin.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(v6) => {
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            let sin6 = unsafe { &mut *(&mut ss as *mut _ as *mut libc::sockaddr_in6) };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = v6.port().to_be();
            sin6.sin6_addr.s6_addr = v6.ip().octets();
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (ss, len as libc::socklen_t)
}

/// A TCP connection to `dst` from source address `src` (bind before connect, which std
/// cannot do). Connecting gives up after 10 s (SO_SNDTIMEO).
fn connect_from(src: IpAddr, dst: SocketAddr) -> io::Result<TcpStream> {
    let family = if src.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: socket has no memory preconditions.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: socket just returned this fd and nothing else owns it.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let tv = libc::timeval {
        tv_sec: 10,
        tv_usec: 0,
    };
    // SAFETY: tv is a valid timeval for the length given.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_SNDTIMEO,
            &tv as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let (local, local_len) = sockaddr(SocketAddr::new(src, 0));
    // SAFETY: local is a valid socket address of local_len bytes.
    if unsafe { libc::bind(fd.as_raw_fd(), &local as *const _ as *const _, local_len) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let (remote, remote_len) = sockaddr(dst);
    loop {
        // SAFETY: remote is a valid socket address of remote_len bytes.
        let r =
            unsafe { libc::connect(fd.as_raw_fd(), &remote as *const _ as *const _, remote_len) };
        if r == 0 {
            break;
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
    Ok(TcpStream::from(fd))
}

/// `times` requests from `src`: they must all reach the same worker and show `src` as the
/// client. Returns the last answer.
fn sticky(src: IpAddr, addr: SocketAddr, times: usize) -> Reply {
    let mut first: Option<Reply> = None;
    for i in 0..times {
        let r = get_from(src, addr).unwrap_or_else(|e| panic!("request {i} from {src}: {e}"));
        let shown: SocketAddr = r.client.parse().expect("client=ip:port");
        assert_eq!(shown.ip(), src, "the worker sees the real client: {r:?}");
        if let Some(f) = &first {
            assert_eq!(
                r.pid, f.pid,
                "client {src} moved between workers: {f:?} then {r:?}"
            );
        }
        first = Some(r);
    }
    first.expect("at least one request")
}

/// The fds a process holds now.
fn open_fds(pid: i32) -> Vec<String> {
    let dir = format!("/proc/{pid}/fd");
    let mut v: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{dir}: {e}"))
        .flatten()
        .map(|e| {
            let target = std::fs::read_link(e.path()).unwrap_or_default();
            format!(
                "{} -> {}",
                e.file_name().to_string_lossy(),
                target.display()
            )
        })
        .collect();
    v.sort();
    v
}

/// Sets the flag when dropped, so client threads stop even when the test panics (a scope
/// would otherwise wait for them forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Polls until `cond`, panicking with `what` at the deadline.
fn wait_until(what: &str, cond: impl FnMut() -> bool) {
    assert!(eventually(DEADLINE, cond), "timed out waiting for {what}");
}

fn kill(pid: i32, sig: i32) {
    // SAFETY: kill has no memory preconditions; pid is a worker this test's supervisor started.
    assert_eq!(unsafe { libc::kill(pid, sig) }, 0, "kill({pid}, {sig})");
}

// ---------------------------------------------------------------------------------------------
// (a) ip-hash affinity

/// 40 clients from 127.0.0.2 ... 127.0.0.41: each sticks to one worker, and all 5 slots get
/// some. The busiest slot's worker is SIGKILLed: while its replacement is held back (not
/// ready), that slot's clients are served by other workers (each client by one of them) and
/// every other client stays where it was; once the replacement is ready they return to it.
#[test]
fn ip_hash_sticks_clients_to_slots_across_a_crash() {
    let gate = Scratch::new("gate");
    let mn = serve_gated("ip-hash", 5, &gate);
    wait_ready(&mn, 5);
    let addr = mn.tcp_addr("listen0");
    let before = slot_pids(&mn);
    assert_eq!(before.len(), 5, "{}", mn.output());
    let slot_of: HashMap<i32, u32> = before.iter().map(|(s, p)| (*p, *s)).collect();

    let clients: Vec<IpAddr> = (2..=41u8)
        .map(|i| IpAddr::V4(Ipv4Addr::new(127, 0, 0, i)))
        .collect();
    let mut home: HashMap<IpAddr, i32> = HashMap::new();
    for &c in &clients {
        let r = sticky(c, addr, 3);
        let slot = slot_of
            .get(&r.pid)
            .unwrap_or_else(|| panic!("{c} served by pid {}, not a worker", r.pid));
        assert_eq!(r.worker, *slot, "worker= is the slot of its pid: {r:?}");
        home.insert(c, r.pid);
    }
    let mut per_slot: BTreeMap<u32, Vec<IpAddr>> = BTreeMap::new();
    for (c, pid) in &home {
        per_slot.entry(slot_of[pid]).or_default().push(*c);
    }
    assert_eq!(
        per_slot.len(),
        5,
        "40 clients should reach all 5 slots: {per_slot:?}"
    );

    // Crash the busiest slot's worker; hold its replacement back until the failover is seen.
    let (&victim, moved) = per_slot.iter().max_by_key(|(_, v)| v.len()).unwrap();
    let victim_pid = before[&victim];
    std::fs::write(gate.path(&format!("hold.{victim}")), "").unwrap();
    kill(victim_pid, libc::SIGKILL);
    let exited = mn.wait_exited(victim_pid);
    assert_eq!(exited.signal(), Some("SIGKILL"), "{exited}");
    let new_pid = mn.wait_started_in_slot(victim, &[victim_pid]);
    mn.wait_output(|e| {
        e.slot == Some(victim) && e.pid == Some(new_pid) && e.msg.starts_with("mn-gate: holding")
    });

    for c in moved {
        let r = sticky(*c, addr, 2);
        assert!(
            r.pid != victim_pid && r.pid != new_pid && slot_of.contains_key(&r.pid),
            "while slot {victim} is down, {c} must go to another live worker: {r:?}"
        );
    }
    for (c, pid) in home.iter().filter(|(c, _)| !moved.contains(c)) {
        let r = get_from(*c, addr).unwrap();
        assert_eq!(
            r.pid, *pid,
            "{c} is not of the crashed slot and must not move"
        );
    }

    std::fs::remove_file(gate.path(&format!("hold.{victim}"))).unwrap();
    mn.wait_event("ready", |e| {
        e.slot == Some(victim) && e.pid == Some(new_pid)
    });
    for c in moved {
        let r = sticky(*c, addr, 2);
        assert_eq!(r.pid, new_pid, "{c} returns to slot {victim}'s new worker");
        assert_eq!(r.worker, victim);
    }
    for (c, pid) in home.iter().filter(|(c, _)| !moved.contains(c)) {
        assert_eq!(get_from(*c, addr).unwrap().pid, *pid, "{c} stays");
    }
}

/// An IPv6 listener: a client from ::1 hashes by its address and always reaches one worker.
#[test]
fn ip_hash_ipv6_client_sticks_to_one_worker() {
    if !require(
        std::net::TcpListener::bind("[::1]:0").is_ok(),
        "no IPv6 loopback (::1)",
    ) {
        return;
    }
    let mn = serve_routed("ip-hash", 3, "[::1]:0", &[]);
    let addr = mn.tcp_addr("listen0");
    assert!(addr.is_ipv6(), "{addr}");
    let r = sticky(IpAddr::V6(Ipv6Addr::LOCALHOST), addr, 6);
    assert!(slot_pids(&mn).values().any(|p| *p == r.pid), "{r:?}");
    assert!(r.client.starts_with("[::1]:"), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// (b) round-robin and least-conn

/// 1,000 connections (4 client threads, one request each) over 4 ready workers.
#[test]
fn round_robin_spreads_connections_evenly() {
    let mn = serve_routed("round-robin", 4, "127.0.0.1:0", &[]);
    let addr = mn.tcp_addr("listen0");
    let pids: HashSet<i32> = slot_pids(&mn).into_values().collect();
    let counts: Mutex<HashMap<i32, usize>> = Mutex::new(HashMap::new());
    std::thread::scope(|s| {
        for t in 0..4 {
            let counts = &counts;
            s.spawn(move || {
                for i in 0..250 {
                    let r = get(addr).unwrap_or_else(|e| panic!("thread {t} request {i}: {e}"));
                    *counts.lock().unwrap().entry(r.pid).or_default() += 1;
                }
            });
        }
    });
    let counts = counts.into_inner().unwrap();
    eprintln!("connections per worker: {counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 1000);
    assert_eq!(
        counts.keys().copied().collect::<HashSet<_>>(),
        pids,
        "every worker gets connections, and only workers: {counts:?}"
    );
    // Round-robin over a fixed set of ready workers is exact (250 each): the supervisor turns
    // to the next worker for every connection. ±10% leaves room only for a worker skipped
    // while its channel is full, which these closed-loop clients cannot cause; anything
    // further off means connections are not spread in turn.
    for (pid, n) in &counts {
        assert!(
            (225..=275).contains(n),
            "worker {pid} got {n} of 1000 connections, want 250 ± 25: {counts:?}"
        );
    }
}

/// Slots 1..3 are held back (not ready) while 20 kept-alive connections are opened: they all
/// land on slot 0 and stay open. Once all four are ready, 120 short connections one after the
/// other go to the other three: slot 0 holds 20 open connections, they hold at most one or two
/// each (routed.py reports closes). If closes were not counted their load would reach 20 after
/// 60 connections and slot 0 would get some.
#[test]
fn least_conn_sends_new_connections_away_from_a_loaded_worker() {
    let gate = Scratch::new("gate");
    for slot in 1..4 {
        std::fs::write(gate.path(&format!("hold.{slot}")), "").unwrap();
    }
    let mn = serve_gated("least-conn", 4, &gate);
    let loaded = mn.wait_event("ready", |e| e.slot == Some(0)).pid.unwrap();
    let addr = mn.tcp_addr("listen0");
    let mut held = Vec::new();
    for i in 0..20 {
        let mut k = KeepAlive::connect(addr).unwrap();
        let (status, body, close) = k.get("/").unwrap();
        assert_eq!(status, 200, "{body}");
        assert!(!close, "routed.py keeps the connection open");
        assert_eq!(body_pid(&body), Some(loaded), "held connection {i}: {body}");
        held.push(k);
    }

    for slot in 1..4 {
        std::fs::remove_file(gate.path(&format!("hold.{slot}"))).unwrap();
    }
    wait_ready(&mn, 4);
    let mut counts: HashMap<i32, usize> = HashMap::new();
    for i in 0..120 {
        let r = get(addr).unwrap_or_else(|e| panic!("short connection {i}: {e}"));
        *counts.entry(r.pid).or_default() += 1;
    }
    assert_eq!(
        counts.get(&loaded),
        None,
        "no new connection may go to the worker holding 20: {counts:?}"
    );
    assert_eq!(
        counts.len(),
        3,
        "the three idle workers share them: {counts:?}"
    );

    // The held connections are still there, on their worker.
    for k in &mut held {
        let (status, body, _) = k.get("/").unwrap();
        assert_eq!((status, body_pid(&body)), (200, Some(loaded)), "{body}");
    }
}

// ---------------------------------------------------------------------------------------------
// (c) no fd leak

/// 20,000 connections (4 client threads, request and close each): afterwards the supervisor
/// holds exactly the fds it held before.
#[test]
fn twenty_thousand_connections_leave_no_fd_behind() {
    let mn = serve_routed("round-robin", 4, "127.0.0.1:0", &[]);
    let addr = mn.tcp_addr("listen0");
    for _ in 0..8 {
        get(addr).unwrap();
    }
    let before = open_fds(mn.pid);

    let done = AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..4 {
            let done = &done;
            s.spawn(move || {
                for i in 0..5000 {
                    get(addr).unwrap_or_else(|e| panic!("thread {t} connection {i}: {e}"));
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    assert_eq!(done.load(Ordering::Relaxed), 20_000);
    // Every one of them went through the supervisor: its sequence number counts them.
    let r = get(addr).unwrap();
    assert!(r.seq > 20_000, "{r:?}");

    let mut now = Vec::new();
    let back = eventually(DEADLINE, || {
        now = open_fds(mn.pid);
        now.len() == before.len()
    });
    assert!(
        back,
        "the supervisor held {} fds before the load and {} after:\nbefore: {before:#?}\nafter: {now:#?}",
        before.len(),
        now.len()
    );
}

// ---------------------------------------------------------------------------------------------
// (d) reload under load

/// Three rolling reloads (SIGHUP, each awaited) while three client threads make requests, a
/// fresh connection each: not one fails, and afterwards only the newest generation serves.
#[test]
fn reload_under_load_fails_no_request() {
    let mn = serve_routed("round-robin", 3, "127.0.0.1:0", &[]);
    let addr = mn.tcp_addr("listen0");
    let first: Vec<i32> = slot_pids(&mn).into_values().collect();
    let stop = AtomicBool::new(false);
    let ok = AtomicUsize::new(0);
    let failures: Mutex<Vec<String>> = Mutex::new(Vec::new());
    let mut during = 0;
    std::thread::scope(|s| {
        for _ in 0..3 {
            s.spawn(|| {
                while !stop.load(Ordering::SeqCst) {
                    match get(addr) {
                        Ok(_) => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                }
            });
        }
        let _stop = StopOnDrop(&stop);
        wait_until("requests before the reloads", || {
            ok.load(Ordering::SeqCst) >= 30
        });
        let at_start = ok.load(Ordering::SeqCst);
        for i in 1..=3 {
            mn.signal(libc::SIGHUP);
            mn.wait_events("reloaded", i, |e| e.why() == Some("SIGHUP"));
        }
        during = ok.load(Ordering::SeqCst) - at_start;
        let after = ok.load(Ordering::SeqCst);
        wait_until("requests after the reloads", || {
            ok.load(Ordering::SeqCst) >= after + 30
        });
    });
    let failures = failures.into_inner().unwrap();
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}\noutput:\n{}",
        failures.len(),
        failures.len() + ok.load(Ordering::SeqCst),
        &failures[..failures.len().min(10)],
        mn.output()
    );
    eprintln!(
        "{during} requests during the reloads, {} in all",
        ok.load(Ordering::SeqCst)
    );
    assert!(during > 0, "no request was made during the reloads");

    let newest: HashSet<i32> = mn.generation_pids(4).into_iter().collect();
    assert_eq!(newest.len(), 3, "{}", mn.output());
    for _ in 0..12 {
        let r = get(addr).unwrap();
        assert!(newest.contains(&r.pid), "generation 4 serves: {r:?}");
    }
    // The replaced workers drained and exited.
    let old: Vec<i32> = mn
        .worker_pids()
        .into_iter()
        .filter(|p| !newest.contains(p))
        .collect();
    assert_eq!(old.len(), 9, "{}", mn.output());
    assert!(first.iter().all(|p| old.contains(p)));
    for pid in old {
        wait_until(&format!("old worker {pid} to exit"), || !alive(pid));
    }
}

// ---------------------------------------------------------------------------------------------
// (e) PROXY protocol

fn proxy_v1(client: SocketAddr) -> Vec<u8> {
    let proto = if client.is_ipv4() { "TCP4" } else { "TCP6" };
    let server = if client.is_ipv4() { "127.0.0.1" } else { "::1" };
    format!(
        "PROXY {proto} {} {server} {} 80\r\n",
        client.ip(),
        client.port()
    )
    .into_bytes()
}

/// A v2 header (binary, PROXY command, TCP) as HAProxy sends it.
fn proxy_v2(client: SocketAddr) -> Vec<u8> {
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.push(0x21); // version 2, PROXY
    match client {
        SocketAddr::V4(c) => {
            h.push(0x11); // TCP over IPv4
            h.extend_from_slice(&12u16.to_be_bytes());
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&[127, 0, 0, 1]);
        }
        SocketAddr::V6(c) => {
            h.push(0x21); // TCP over IPv6
            h.extend_from_slice(&36u16.to_be_bytes());
            h.extend_from_slice(&c.ip().octets());
            h.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        }
    }
    h.extend_from_slice(&client.port().to_be_bytes());
    h.extend_from_slice(&80u16.to_be_bytes());
    h
}

/// `times` requests behind `header`: one worker, which sees `client`.
fn sticky_proxied(addr: SocketAddr, header: &[u8], client: SocketAddr, times: usize) -> i32 {
    let mut pid = None;
    for i in 0..times {
        let r = ask(connect(addr).unwrap(), header)
            .unwrap_or_else(|e| panic!("request {i} for {client}: {e}"));
        assert_eq!(
            r.client,
            client.to_string(),
            "the worker sees the PROXY client"
        );
        if let Some(p) = pid {
            assert_eq!(r.pid, p, "{client} moved between workers");
        }
        pid = Some(r.pid);
    }
    pid.unwrap()
}

/// Every connection comes from 127.0.0.1, yet v1 and v2 headers naming different clients are
/// routed by the named address (same address, same worker, whatever the header version),
/// spreading over all three workers, and the worker is handed that address.
#[test]
fn proxy_protocol_routes_by_the_named_client() {
    let mn = serve_routed("ip-hash", 3, "127.0.0.1:0", &["--proxy-protocol"]);
    let addr = mn.tcp_addr("listen0");
    let mut by_ip: HashMap<IpAddr, i32> = HashMap::new();
    for i in 1..=12u8 {
        let c = SocketAddr::from(([192, 0, 2, i], 5555));
        by_ip.insert(c.ip(), sticky_proxied(addr, &proxy_v1(c), c, 3));
    }
    for i in 1..=12u8 {
        let c = SocketAddr::from(([198, 51, 100, i], 6000 + u16::from(i)));
        by_ip.insert(c.ip(), sticky_proxied(addr, &proxy_v2(c), c, 3));
    }
    for i in 1..=6u16 {
        let c = SocketAddr::from((Ipv6Addr::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, i), 7000));
        by_ip.insert(c.ip(), sticky_proxied(addr, &proxy_v2(c), c, 2));
    }
    // The same client through the other header version reaches the same worker.
    let c = SocketAddr::from(([192, 0, 2, 1], 5555));
    assert_eq!(sticky_proxied(addr, &proxy_v2(c), c, 2), by_ip[&c.ip()]);
    let c = SocketAddr::from(([198, 51, 100, 1], 6001));
    assert_eq!(sticky_proxied(addr, &proxy_v1(c), c, 2), by_ip[&c.ip()]);

    let used: HashSet<i32> = by_ip.values().copied().collect();
    let workers: HashSet<i32> = slot_pids(&mn).into_values().collect();
    assert_eq!(
        used, workers,
        "30 client addresses spread over all 3 workers"
    );
}

/// Reads what the supervisor sends on a connection it should close: nothing, then EOF (or a
/// reset, when it closed with our bytes unread).
fn expect_closed_without_answer(mut s: TcpStream, what: &str) {
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut got = Vec::new();
    match s.read_to_end(&mut got) {
        Ok(_) => assert!(
            got.is_empty(),
            "{what}: got an answer: {:?}",
            String::from_utf8_lossy(&got)
        ),
        Err(e) if e.kind() == io::ErrorKind::ConnectionReset => {}
        Err(e) => panic!("{what}: {e}"),
    }
}

/// A silent client, a garbage header and a truncated one (then shutdown) while well-formed
/// clients keep coming: each good request is answered meanwhile; the bad connections are
/// closed with no answer and a `closed a connection` warning; the silent one is closed by the
/// supervisor (EOF), not before its 5 s PROXY header timeout, without ever having sent a byte.
#[test]
fn proxy_protocol_bad_clients_do_not_disturb_others() {
    let mn = serve_routed("ip-hash", 2, "127.0.0.1:0", &["--proxy-protocol"]);
    let addr = mn.tcp_addr("listen0");
    let good = |n: u16| {
        let c = SocketAddr::from(([192, 0, 2, 77], n));
        let r = ask(connect(addr).unwrap(), &proxy_v1(c))
            .unwrap_or_else(|e| panic!("good request {n} while bad clients wait: {e}"));
        assert_eq!(r.client, c.to_string());
    };

    let mut silent = connect(addr).unwrap();
    let opened = Instant::now();
    good(1);

    let mut garbage = connect(addr).unwrap();
    garbage
        .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    good(2);
    expect_closed_without_answer(garbage, "garbage header");

    let mut truncated = connect(addr).unwrap();
    truncated.write_all(b"PROXY TCP4 192.0.2.9 127.").unwrap();
    truncated.shutdown(Shutdown::Write).unwrap();
    good(3);
    expect_closed_without_answer(truncated, "truncated header");
    mn.wait_event("proxy", |e| e.level == "warn");

    // Good requests go on while the silent client sends nothing, until the supervisor closes it.
    silent
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let end = Instant::now() + DEADLINE;
    let mut n = 4;
    let mut buf = [0u8; 64];
    loop {
        good(n);
        n += 1;
        match silent.read(&mut buf) {
            Ok(0) => {
                // The supervisor accepted it after `opened`, so its 5 s PROXY timeout cannot
                // have run out earlier: an earlier close drops slow but valid clients.
                let after = opened.elapsed();
                assert!(
                    after >= Duration::from_secs(5),
                    "the silent connection was closed after {after:?}, before its timeout"
                );
                break;
            }
            Ok(k) => panic!(
                "the silent client got {:?}",
                String::from_utf8_lossy(&buf[..k])
            ),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) => panic!("the silent client: {e}"),
        }
        assert!(
            Instant::now() < end,
            "the supervisor never closed the silent connection; output:\n{}",
            mn.output()
        );
    }
    good(n);
}

/// With `--proxy-from 127.0.0.2` (and a network that is not ours), a PROXY header from
/// 127.0.0.3 is not believed: the connection is closed before a byte is read, a
/// `proxy-refused` warning counts it, and no worker ever gets it (the supervisor's sequence
/// numbers, which count routed connections, show no gap). Headers from 127.0.0.2 are
/// believed and routed by the address they name. No `proxy-untrusted` warning at start.
#[test]
fn proxy_headers_are_believed_only_from_proxy_from() {
    let mn = serve_routed(
        "ip-hash",
        2,
        "127.0.0.1:0",
        &[
            "--proxy-protocol",
            "--proxy-from",
            "127.0.0.2",
            "--proxy-from",
            "10.0.0.0/8",
        ],
    );
    let addr = mn.tcp_addr("listen0");
    let trusted = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let stranger = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let named = SocketAddr::from(([192, 0, 2, 50], 4242));

    let first = ask(connect_from(trusted, addr).unwrap(), &proxy_v1(named)).unwrap();
    assert_eq!(
        first.client,
        named.to_string(),
        "a trusted header is believed"
    );

    for header in [proxy_v1(named), proxy_v2(named)] {
        let mut s = connect_from(stranger, addr).unwrap();
        let mut req = header;
        req.extend_from_slice(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        // The supervisor may have closed it already: then the write fails, which is fine.
        let _ = s.write_all(&req);
        expect_closed_without_answer(s, "a header from outside --proxy-from");
    }
    let refused = mn.wait_event("proxy-refused", |e| e.str("peer") == Some("127.0.0.3"));
    assert_eq!(refused.level, "warn");
    assert!(refused.u64("refused").is_some_and(|n| n >= 1), "{refused}");

    let next = ask(connect_from(trusted, addr).unwrap(), &proxy_v2(named)).unwrap();
    assert_eq!(next.client, named.to_string());
    assert_eq!(
        next.seq,
        first.seq + 1,
        "the refused connections never reached a worker: {first:?}, then {next:?}"
    );
    assert!(mn.events("proxy-untrusted").is_empty(), "{}", mn.output());
}

/// Raises this process's RLIMIT_NOFILE to at least `want` (the hard limit too, as root).
fn raise_nofile(want: u64) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    if lim.rlim_cur >= want {
        return;
    }
    if lim.rlim_max < want && is_root() {
        lim.rlim_max = want;
    }
    lim.rlim_cur = want.min(lim.rlim_max);
    // SAFETY: setrlimit reads the struct we pass.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    assert!(
        lim.rlim_cur >= want,
        "RLIMIT_NOFILE is {} and cannot be raised to {want}",
        lim.rlim_cur
    );
}

/// 2,000 connections from 127.0.0.2 that never send a PROXY header (more than the 1,024 that
/// may wait at once, and a header timeout far away) do not lock out 127.0.0.3: once the limit
/// is reached, each new connection closes the oldest of the source holding the most, so the
/// request from 127.0.0.3 is served with the address its header names. The idle source's
/// oldest connection is closed by then, its newest is still open. Without `--proxy-from`,
/// multinode warned at start that any client can claim any address.
#[test]
fn idle_proxy_connections_from_one_source_do_not_lock_out_another() {
    raise_nofile(8192);
    let mn = serve_routed(
        "ip-hash",
        2,
        "127.0.0.1:0",
        &["--proxy-protocol", "--proxy-timeout", "10m"],
    );
    let warned = mn.wait_event("proxy-untrusted", |_| true);
    assert_eq!(warned.level, "warn");
    let addr = mn.tcp_addr("listen0");
    let idle_src = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let mut idle = Vec::with_capacity(2000);
    for i in 0..2000 {
        let s = connect_from(idle_src, addr)
            .unwrap_or_else(|e| panic!("idle connection {i}: {e}; output:\n{}", mn.output()));
        idle.push(s);
    }
    // The limit was reached: the idle source is losing its oldest connections.
    mn.wait_event("proxy", |e| e.str("cause") == Some("evicted"));

    let named = SocketAddr::from(([203, 0, 113, 9], 5000));
    let other = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    let r = ask(connect_from(other, addr).unwrap(), &proxy_v1(named))
        .unwrap_or_else(|e| panic!("the other source is locked out: {e}"));
    assert_eq!(r.client, named.to_string());

    let newest = idle.pop().unwrap();
    let mut probe = [0u8; 1];
    newest.set_nonblocking(true).unwrap();
    match (&newest).read(&mut probe) {
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
        other => panic!("the newest idle connection was closed: {other:?}"),
    }
    expect_closed_without_answer(idle.remove(0), "the oldest idle connection");
    drop(idle);
    drop(newest);
}

// ---------------------------------------------------------------------------------------------
// (f) the Python example under each policy

/// routed.py under `--route POLICY`: answers with its pid and slot, the real client address
/// and the supervisor's sequence numbers (increasing with each connection).
fn python_example(policy: &str) -> HashSet<i32> {
    let mn = serve_routed(policy, 2, "127.0.0.1:0", &[]);
    mn.wait_events(OUTPUT, 2, |e| e.msg.contains("reading the route channel"));
    let addr = mn.tcp_addr("listen0");
    let slots = slot_pids(&mn);
    let mut last_seq = 0;
    let mut pids = HashSet::new();
    for _ in 0..4 {
        let s = connect(addr).unwrap();
        let local = s.local_addr().unwrap();
        let r = ask(s, b"").unwrap();
        assert_eq!(slots.get(&r.worker), Some(&r.pid), "{r:?} / {slots:?}");
        assert_eq!(r.client, local.to_string(), "the client's own address");
        assert!(r.seq > last_seq, "sequence numbers increase: {r:?}");
        last_seq = r.seq;
        pids.insert(r.pid);
    }
    pids
}

#[test]
fn python_routed_example_ip_hash() {
    assert_eq!(python_example("ip-hash").len(), 1, "one client, one worker");
}

#[test]
fn python_routed_example_round_robin() {
    assert_eq!(python_example("round-robin").len(), 2, "taken in turn");
}

#[test]
fn python_routed_example_least_conn() {
    // One connection at a time, each closed (and reported) before the next: either worker
    // may take any of them.
    assert!(!python_example("least-conn").is_empty());
}

// ---------------------------------------------------------------------------------------------
// Back-pressure: a stalled worker

/// A worker that stops reading its channel (SIGSTOP) while connections keep coming must cost
/// at most the connections waiting for it, never the service. The supervisor runs with a soft
/// RLIMIT_NOFILE of 128 (as under a systemd default of 1024, just smaller): the kernel then
/// refuses to put more than 128 fds in flight in Unix sockets for its user (sendmsg fails with
/// ETOOMANYREFS) until the receiver takes some. That is a temporary condition, like a full
/// channel. 400 connections, each sending its request, alternate between the two workers;
/// then the stalled worker is resumed. Every connection must be answered (the route.rs rules
/// close one only when every worker's queue is full, and worker 0 never stops reading), and
/// new connections afterwards too.
#[test]
fn a_stalled_worker_costs_no_connection() {
    use std::os::unix::process::CommandExt;
    // The workers raise their own soft limit back to the hard one, so that a worker taking 200
    // connections at once is not what fails.
    let wrapper = "ulimit -Sn \"$(ulimit -Hn)\"; exec /usr/bin/python3 \"$0\"";
    let py = routed_py();
    let mut cmd = serve_command(&[
        "--route",
        "round-robin",
        "--workers",
        "2",
        "-l",
        "127.0.0.1:0",
        "--ready",
        "delay:300ms",
        "--",
        "/bin/sh",
        "-c",
        wrapper,
        &py,
    ]);
    // SAFETY: getrlimit/setrlimit are async-signal-safe and touch only the child.
    unsafe {
        cmd.pre_exec(|| {
            let mut l = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) != 0 {
                return Err(io::Error::last_os_error());
            }
            l.rlim_cur = 128;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &l) != 0 {
                return Err(io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mn = Multinode::spawn(cmd);
    wait_ready(&mn, 2);
    let addr = mn.tcp_addr("listen0");
    let pids = slot_pids(&mn);
    get(addr).unwrap();

    kill(pids[&1], libc::SIGSTOP);
    let mut held = Vec::new();
    for i in 0..400 {
        let mut s = connect(addr).unwrap_or_else(|e| panic!("connection {i}: {e}"));
        s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .unwrap_or_else(|e| panic!("connection {i}: {e}"));
        held.push(s);
    }
    kill(pids[&1], libc::SIGCONT);

    let mut answered: HashMap<i32, usize> = HashMap::new();
    let mut failed = Vec::new();
    for (i, mut s) in held.into_iter().enumerate() {
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut resp = Vec::new();
        let r = s.read_to_end(&mut resp).map(|_| {
            let resp = String::from_utf8_lossy(&resp);
            resp.split_once("\r\n\r\n")
                .and_then(|(_, b)| parse_reply(b))
        });
        match r {
            Ok(Some(r)) => *answered.entry(r.pid).or_default() += 1,
            Ok(None) => failed.push(format!("{i}: closed without an answer")),
            Err(e) => failed.push(format!("{i}: {e}")),
        }
    }
    let fresh: Vec<String> = (0..10)
        .map(|_| match get(addr) {
            Ok(r) => format!("pid {}", r.pid),
            Err(e) => e.to_string(),
        })
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 400 connections failed while worker.1 was stopped (answered: {answered:?}); \
         first: {:?}; fresh connections afterwards: {fresh:?}\noutput:\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        mn.output()
    );
    assert_eq!(answered.values().sum::<usize>(), 400);
    assert!(
        fresh.iter().all(|f| f.starts_with("pid ")),
        "fresh connections: {fresh:?}"
    );
}
