//! Several hosts behind HAProxy (issue 14), for real, in network namespaces this test makes and
//! removes: three "hosts", each running `multinode serve --route ip-hash --proxy-protocol
//! --proxy-from <balancer> --metrics ... --stop-delay 2s -- affinity`, a balancer running
//! HAProxy with examples/haproxy/haproxy.cfg (`balance source`, `send-proxy-v2`, checks on
//! `/healthz`), and a client namespace with 16 addresses, from which threads of this test send
//! requests all along (each on a new connection, from its own source address):
//!
//! ```text
//! client 198.19.1.1-16 --- 198.19.0.1:80 [lb: haproxy] 198.18.N.1 --- 198.18.N.2 [host N]
//!                                                                        :8080 multinode
//!                                                                        :9100 /healthz
//! ```
//!
//! Under that load it runs the operations of a deployment — a rolling reload of each host in
//! turn, a host taken out with SIGTERM and `--stop-delay` and brought back, a host killed with
//! SIGKILL and brought back — and prints, for each, the requests sent, those that failed, and
//! the share of each client's requests that reached its first worker. Every worker's answer
//! must name the client's own address (through HAProxy and PROXY v2), every client must keep
//! its worker while nothing changes (affinity across both tiers), and no operation but the
//! SIGKILL may fail a request.
//!
//! Needs root (namespaces), `ip` (iproute2) and `haproxy` (`.ci/run` installs it).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Every namespace this file makes is named `mnha-<pid of the test process>-<n>-<role>`.
const PREFIX: &str = "mnha-";
const HOSTS: usize = 3;
const WORKERS: &str = "2";
const CLIENTS: usize = 16;
/// Where HAProxy listens, in the balancer's namespace.
const FRONTEND: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(198, 19, 0, 1), 80);
/// What each client waits between two requests: bounded load (at most ~1,600 requests a
/// second in all), heavy enough that every operation happens with requests in flight.
const PACE: Duration = Duration::from_millis(10);
const STOP_DELAY: &str = "2s";

/// A worker's place: (host, slot).
type Slot = (usize, u32);
/// HAProxy's view of a server: (status, check status, check code).
type ServerState = (String, String, String);

fn client_addr(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 19, 1, i as u8 + 1)
}

fn host_addr(h: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, h as u8 + 1, 2)
}

fn lb_addr_towards(h: usize) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, h as u8 + 1, 1)
}

/// Runs `ip ARGS`; panics with its stderr if it fails.
#[track_caller]
fn ip(args: &[&str]) {
    let out = run({
        let mut c = Command::new("ip");
        c.args(args);
        c
    });
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        stderr(&out)
    );
}

/// The names of the network namespaces that exist (`ip netns list`).
fn netns_list() -> Vec<String> {
    let out = run({
        let mut c = Command::new("ip");
        c.args(["netns", "list"]);
        c
    });
    stdout(&out)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

/// SIGKILLs every process in namespace `name`, then deletes it (which deletes its links).
fn netns_remove(name: &str) {
    let out = run({
        let mut c = Command::new("ip");
        c.args(["netns", "pids", name]);
        c
    });
    // Never this test process: its client threads enter a namespace (`ip netns pids` looks at
    // each process's main thread, but be sure).
    let me = std::process::id() as i32;
    let pids = stdout(&out)
        .split_whitespace()
        .filter_map(|p| p.parse::<i32>().ok())
        .filter(|&p| p != me)
        .collect::<Vec<_>>();
    for pid in pids {
        kill(pid, libc::SIGKILL);
    }
    let _ = run({
        let mut c = Command::new("ip");
        c.args(["netns", "delete", name]);
        c
    });
}

/// Namespaces of this file left by a test process that no longer runs (killed outright, so
/// its guards never ran). Those of a run still going, in parallel, are left alone.
fn remove_stalenamespaces() {
    for name in netns_list() {
        let Some(rest) = name.strip_prefix(PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            netns_remove(&name);
        }
    }
    // The hosts' control sockets (a killed multinode leaves its directory), by the same names.
    let Ok(dirs) = std::fs::read_dir("/run/multinode") else {
        return;
    };
    for d in dirs.flatten() {
        let name = d.file_name().to_string_lossy().into_owned();
        let pid = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists()) {
            let _ = std::fs::remove_dir_all(d.path());
        }
    }
}

/// A network namespace this test made: removed on drop, with every process still in it.
struct Netns {
    name: String,
}

impl Netns {
    fn add(name: String) -> Netns {
        ip(&["netns", "add", &name]);
        let ns = Netns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.name))
    }

    /// `cmd`, to be started inside this namespace (and no other: the mount namespace stays,
    /// unlike `ip netns exec`, which remounts /sys and would hide the cgroup hierarchy).
    fn command(&self, mut cmd: Command) -> Command {
        let f = File::open(self.path()).expect("open the namespace");
        // SAFETY: setns is async-signal-safe and touches only the child's own state; the fd
        // lives as long as the closure, which the Command owns.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Moves the calling thread into this namespace (sockets it makes from then on live there).
    fn enter_this_thread(path: &Path) {
        let f = File::open(path).expect("open the namespace");
        // SAFETY: a plain syscall on an fd we own; it changes only this thread's namespace.
        let r = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(r, 0, "setns: {}", std::io::Error::last_os_error());
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        netns_remove(&self.name);
    }
}

/// A child process SIGKILLed (and reaped) on drop.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One host: its namespace and every multinode run it had (the last is the current one).
struct Host {
    idx: usize,
    name: String,
    runs: Vec<Multinode>,
}

/// The whole topology. Fields drop in order: processes first, namespaces last.
struct Lab {
    hosts: Vec<Host>,
    haproxy: Option<Killed>,
    stats: PathBuf,
    haproxy_log: PathBuf,
    affinity: PathBuf,
    _scratch: Scratch,
    client_ns: PathBuf,
    namespaces: Vec<Netns>,
    /// The multinode every host runs, a copy a package upgrade can replace (dropped last).
    install: Install,
}

impl Lab {
    fn new() -> Lab {
        static RUN: AtomicUsize = AtomicUsize::new(0);
        let run = RUN.fetch_add(1, Ordering::Relaxed);
        let base = format!("{PREFIX}{}-{run}", std::process::id());
        let scratch = Scratch::new("haproxy");
        // The guards exist before anything they remove, so a failure half-way still cleans up.
        let mut namespaces = Vec::new();
        namespaces.push(Netns::add(format!("{base}-lb")));
        namespaces.push(Netns::add(format!("{base}-client")));
        let lb = namespaces[0].name.clone();
        let client = namespaces[1].name.clone();
        // Every link is made inside the namespaces (nothing in this machine's own network):
        // deleting a namespace deletes its end and so the pair.
        ip(&[
            "-n", &lb, "link", "add", "client", "type", "veth", "peer", "name", "eth0", "netns",
            &client,
        ]);
        ip(&["-n", &lb, "addr", "add", "198.19.0.1/16", "dev", "client"]);
        ip(&["-n", &lb, "link", "set", "client", "up"]);
        for i in 0..CLIENTS {
            let a = format!("{}/16", client_addr(i));
            ip(&["-n", &client, "addr", "add", &a, "dev", "eth0"]);
        }
        ip(&["-n", &client, "link", "set", "eth0", "up"]);
        let mut hosts = Vec::new();
        for h in 0..HOSTS {
            let ns = Netns::add(format!("{base}-h{}", h + 1));
            let link = format!("h{}", h + 1);
            ip(&[
                "-n", &lb, "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns",
                &ns.name,
            ]);
            let lb_side = format!("{}/24", lb_addr_towards(h));
            let host_side = format!("{}/24", host_addr(h));
            ip(&["-n", &lb, "addr", "add", &lb_side, "dev", &link]);
            ip(&["-n", &lb, "link", "set", &link, "up"]);
            ip(&["-n", &ns.name, "addr", "add", &host_side, "dev", "eth0"]);
            ip(&["-n", &ns.name, "link", "set", "eth0", "up"]);
            hosts.push(Host {
                idx: h,
                name: ns.name.clone(),
                runs: Vec::new(),
            });
            namespaces.push(ns);
        }
        Lab {
            hosts,
            haproxy: None,
            stats: scratch.path("haproxy.sock"),
            haproxy_log: scratch.path("haproxy.log"),
            affinity: worker_bin("affinity"),
            client_ns: namespaces[1].path(),
            _scratch: scratch,
            namespaces,
            install: Install::new(),
        }
    }

    fn ns_of(&self, h: usize) -> &Netns {
        &self.namespaces[2 + h]
    }

    /// Starts multinode on host `h` and waits until its workers are ready.
    fn start_host(&mut self, h: usize) {
        let listen = format!("{}:8080", host_addr(h));
        let metrics = format!("{}:9100", host_addr(h));
        let from = lb_addr_towards(h).to_string();
        let affinity = self.affinity.display().to_string();
        let name = self.hosts[h].name.clone();
        let cmd = self.install.serve_command(
            &name,
            &[
                "--workers",
                WORKERS,
                "--route",
                "ip-hash",
                "--proxy-protocol",
                "--proxy-from",
                &from,
                "--listen",
                &listen,
                "--metrics",
                &metrics,
                "--stop-delay",
                STOP_DELAY,
                "--",
                &affinity,
            ],
        );
        let m = Multinode::spawn(self.ns_of(h).command(cmd));
        m.wait_ready(WORKERS.parse().unwrap());
        self.hosts[h].runs.push(m);
    }

    fn current(&self, h: usize) -> &Multinode {
        self.hosts[h].runs.last().expect("host started")
    }

    fn start_haproxy(&mut self) {
        let cfg = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/haproxy/haproxy.cfg");
        let log = File::create(&self.haproxy_log).unwrap();
        let mut cmd = Command::new("haproxy");
        cmd.arg("-db")
            .arg("-f")
            .arg(&cfg)
            .env("MN_FRONTEND", FRONTEND.to_string())
            .env("MN_STATS_SOCKET", &self.stats)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        for h in 0..HOSTS {
            cmd.env(format!("MN_HOST{}", h + 1), host_addr(h).to_string());
        }
        let child = self.namespaces[0]
            .command(cmd)
            .spawn()
            .expect("start haproxy");
        self.haproxy = Some(Killed(child));
    }

    fn haproxy_log(&self) -> String {
        std::fs::read_to_string(&self.haproxy_log).unwrap_or_default()
    }

    /// HAProxy's `show stat` (its runtime API), one map of column → value per row.
    fn show_stat(&self) -> Option<Vec<BTreeMap<String, String>>> {
        let mut s = UnixStream::connect(&self.stats).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        s.write_all(b"show stat\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let mut lines = out.lines();
        let head: Vec<String> = lines
            .next()?
            .trim_start_matches("# ")
            .split(',')
            .map(str::to_string)
            .collect();
        Some(
            lines
                .filter(|l| !l.is_empty())
                .map(|l| {
                    head.iter()
                        .cloned()
                        .zip(l.split(',').map(str::to_string))
                        .collect()
                })
                .collect(),
        )
    }

    /// One row of `show stat` of the backend `hosts`: server `hN`, or `BACKEND`.
    fn stat_row(&self, svname: &str) -> Option<BTreeMap<String, String>> {
        self.show_stat()?.into_iter().find(|r| {
            r.get("pxname").map(String::as_str) == Some("hosts")
                && r.get("svname").map(String::as_str) == Some(svname)
        })
    }

    /// HAProxy's view of host `h`: (status, check status, check code), e.g. ("UP", "L7OK",
    /// "200"), ("DOWN", "L7STS", "503"), ("DOWN", "L4CON", "").
    fn server_state(&self, h: usize) -> Option<ServerState> {
        let r = self.stat_row(&format!("h{}", h + 1))?;
        let f = |k: &str| r.get(k).cloned().unwrap_or_default();
        Some((f("status"), f("check_status"), f("check_code")))
    }

    /// The backend's retries and redispatches so far (`wretr`, `wredis`).
    fn retries(&self) -> (u64, u64) {
        let r = self.stat_row("BACKEND").unwrap_or_default();
        let f = |k: &str| r.get(k).and_then(|v| v.parse().ok()).unwrap_or(0);
        (f("wretr"), f("wredis"))
    }

    /// HAProxy's log lines about the hosts' state (`Server hosts/h2 is DOWN, reason: ...`).
    fn state_changes(&self) -> Vec<String> {
        self.haproxy_log()
            .lines()
            .filter(|l| l.contains("Server hosts/"))
            .map(str::to_string)
            .collect()
    }

    /// Waits until HAProxy's state of host `h` satisfies `pred`; returns it and how long that
    /// took. Panics with HAProxy's log on timeout.
    #[track_caller]
    fn wait_server(
        &self,
        h: usize,
        what: &str,
        pred: impl Fn(&ServerState) -> bool,
    ) -> (ServerState, Duration) {
        let t0 = Instant::now();
        let mut last = None;
        while t0.elapsed() < DEADLINE {
            last = self.server_state(h);
            if let Some(s) = last.as_ref().filter(|s| pred(s)) {
                return (s.clone(), t0.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!(
            "HAProxy never saw h{} {what} (last state {last:?}); its log:\n{}",
            h + 1,
            self.haproxy_log()
        );
    }

    #[track_caller]
    fn wait_up(&self, h: usize) -> Duration {
        self.wait_server(h, "UP", |s| s.0 == "UP").1
    }

    /// worker pid → (host, slot), from every run's `started` events.
    fn workers(&self) -> BTreeMap<i32, Slot> {
        let mut map = BTreeMap::new();
        for host in &self.hosts {
            for run in &host.runs {
                for e in run.events("started") {
                    if let (Some(pid), Some(slot)) = (e.pid, e.slot) {
                        map.insert(pid, (host.idx, slot));
                    }
                }
            }
        }
        map
    }
}

/// One request of the load: when it started and ended, in which phase, from which client, and
/// the worker's answer (its pid and the client address it saw) or what went wrong.
struct Sample {
    phase: usize,
    client: usize,
    start: Instant,
    end: Instant,
    outcome: Result<(i32, String), String>,
}

/// A TCP connection to `dst` from source address `src` (port chosen by the kernel).
fn connect_from(src: Ipv4Addr, dst: SocketAddrV4) -> std::io::Result<TcpStream> {
    fn sockaddr(ip: Ipv4Addr, port: u16) -> libc::sockaddr_in {
        libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(ip).to_be(),
            },
            sin_zero: [0; 8],
        }
    }
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a new socket that nothing else owns; the stream closes it.
    let sock = unsafe { TcpStream::from_raw_fd(fd) };
    // SO_SNDTIMEO also bounds connect().
    sock.set_write_timeout(Some(Duration::from_secs(10)))?;
    sock.set_read_timeout(Some(Duration::from_secs(10)))?;
    let one: libc::c_int = 1;
    let (src, dst) = (sockaddr(src, 0), sockaddr(*dst.ip(), dst.port()));
    // SAFETY: valid pointers and lengths for the duration of each call.
    unsafe {
        // The port is picked at connect time, per destination: no exhausting of a port range.
        libc::setsockopt(
            fd,
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        if libc::bind(fd, (&src as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::connect(fd, (&dst as *const libc::sockaddr_in).cast(), len) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(sock)
}

/// One GET through the balancer from client `i`: the worker's pid and the `client=` it saw.
fn request(i: usize) -> Result<(i32, String), String> {
    let mut s = connect_from(client_addr(i), FRONTEND).map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: multinode\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read: {e}"))?;
    let resp = String::from_utf8_lossy(&resp);
    let status = resp.lines().next().unwrap_or("").to_string();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(if status.is_empty() {
            "closed without a response".to_string()
        } else {
            status
        });
    }
    let body = resp.split_once("\r\n\r\n").map(|b| b.1).unwrap_or("");
    let field = |k: &str| {
        body.split(';')
            .find_map(|p| p.trim().strip_prefix(k).map(|v| v.trim().to_string()))
    };
    let pid = field("process=").and_then(|p| p.parse().ok());
    match (pid, field("client=")) {
        (Some(pid), Some(client)) => Ok((pid, client)),
        _ => Err(format!("unexpected body {body:?}")),
    }
}

/// The client threads: each, in the client namespace, sends requests from its own address
/// until told to stop, and files every one under the phase in force when it started.
struct Load {
    stop: Arc<AtomicBool>,
    phase: Arc<AtomicUsize>,
    samples: Arc<Mutex<Vec<Sample>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(client_ns: &Path) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let phase = Arc::new(AtomicUsize::new(0));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..CLIENTS)
            .map(|i| {
                let (stop, phase, samples) = (stop.clone(), phase.clone(), samples.clone());
                let ns = client_ns.to_path_buf();
                std::thread::spawn(move || {
                    Netns::enter_this_thread(&ns);
                    while !stop.load(Ordering::Relaxed) {
                        let start = Instant::now();
                        let p = phase.load(Ordering::SeqCst);
                        let outcome = request(i);
                        samples.lock().unwrap().push(Sample {
                            phase: p,
                            client: i,
                            start,
                            end: Instant::now(),
                            outcome,
                        });
                        std::thread::sleep(PACE);
                    }
                })
            })
            .collect();
        Load {
            stop,
            phase,
            samples,
            threads,
        }
    }

    fn set_phase(&self, p: usize) {
        self.phase.store(p, Ordering::SeqCst);
    }

    /// Lets the load run for `d`, and on until every client has completed `n` more requests in
    /// phase `p` than it had (so that a phase has load on a slow machine too; at most DEADLINE).
    fn hold(&self, p: usize, d: Duration, n: usize) {
        std::thread::sleep(d);
        self.wait_requests(p, n);
    }

    /// Waits until every client has completed `n` more requests in phase `p` than it had; at
    /// most DEADLINE.
    fn wait_requests(&self, p: usize, n: usize) {
        let per = |samples: &[Sample]| {
            let mut per = vec![0usize; CLIENTS];
            for s in samples.iter().filter(|s| s.phase == p) {
                per[s.client] += 1;
            }
            per
        };
        let before = per(&self.samples.lock().unwrap());
        eventually(DEADLINE, || {
            let now = per(&self.samples.lock().unwrap());
            now.iter().zip(&before).all(|(a, b)| a - b >= n)
        });
    }

    fn finish(mut self) -> Vec<Sample> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("a client thread panicked");
        }
        std::mem::take(&mut *self.samples.lock().unwrap())
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// What one phase showed.
struct Figures {
    sent: usize,
    failed: usize,
    /// Failures by what went wrong.
    why: BTreeMap<String, usize>,
    /// Answers whose `client=` was not the sender's address.
    wrong_client: usize,
    /// Per client, the share of its answered requests that its first worker of the phase
    /// answered (by pid), and that its first host+slot answered (a slot's worker changes in a
    /// reload; the slot does not): min and mean over the clients.
    pid_share: (f64, f64),
    slot_share: (f64, f64),
    /// Per client, the host+slot that answered it first.
    first_slot: BTreeMap<usize, Slot>,
}

fn figures(samples: &[&Sample], workers: &BTreeMap<i32, Slot>) -> Figures {
    let mut f = Figures {
        sent: samples.len(),
        failed: 0,
        why: BTreeMap::new(),
        wrong_client: 0,
        pid_share: (1.0, 1.0),
        slot_share: (1.0, 1.0),
        first_slot: BTreeMap::new(),
    };
    let mut per: BTreeMap<usize, Vec<(i32, Option<Slot>)>> = BTreeMap::new();
    for s in samples {
        match &s.outcome {
            Ok((pid, client)) => {
                if *client != client_addr(s.client).to_string() {
                    f.wrong_client += 1;
                }
                per.entry(s.client)
                    .or_default()
                    .push((*pid, workers.get(pid).copied()));
            }
            Err(e) => {
                f.failed += 1;
                *f.why.entry(e.clone()).or_default() += 1;
            }
        }
    }
    let share = |v: &[(i32, Option<Slot>)], same: &dyn Fn(usize) -> bool| {
        (0..v.len()).filter(|&k| same(k)).count() as f64 / v.len() as f64
    };
    let (mut pid, mut slot) = (Vec::new(), Vec::new());
    for (&c, v) in &per {
        pid.push(share(v, &|k| v[k].0 == v[0].0));
        slot.push(share(v, &|k| v[k].1 == v[0].1));
        if let Some(s) = v[0].1 {
            f.first_slot.insert(c, s);
        }
    }
    let min_mean = |x: &[f64]| {
        if x.is_empty() {
            (1.0, 1.0)
        } else {
            (
                x.iter().copied().fold(1.0, f64::min),
                x.iter().sum::<f64>() / x.len() as f64,
            )
        }
    };
    f.pid_share = min_mean(&pid);
    f.slot_share = min_mean(&slot);
    f
}

fn pct(x: f64) -> String {
    format!("{:.1}%", x * 100.0)
}

/// Writes past libtest's capture, so that CI's log shows the figures of a passing run.
fn report(text: &str) {
    let _ = std::io::stderr().lock().write_all(text.as_bytes());
}

/// Whether `prog ARG` can be run (the argument asks for its version).
fn have(prog: &str, arg: &str) -> bool {
    Command::new(prog)
        .arg(arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Whether this machine can run these tests; says why not (see `require`).
fn can_run() -> bool {
    require(is_root(), "needs root (network namespaces)")
        && require(have("ip", "-V"), "ip (iproute2) is not installed")
        && require(
            have("haproxy", "-v"),
            "haproxy is not installed (.ci/run installs it)",
        )
}

/// One operation of the test, as it is reported.
struct Phase {
    name: String,
    start: Instant,
    time: Duration,
    /// What else it showed (timings, HAProxy's state changes).
    notes: Vec<String>,
    /// HAProxy's retries and redispatches at its start, then during it.
    retries: (u64, u64),
    log_lines: usize,
}

/// Starts phase `name`: requests from now on are filed under it.
fn begin(phases: &mut Vec<Phase>, load: &Load, lab: &Lab, name: String) -> usize {
    phases.push(Phase {
        name,
        start: Instant::now(),
        time: Duration::ZERO,
        notes: Vec::new(),
        retries: lab.retries(),
        log_lines: lab.state_changes().len(),
    });
    let p = phases.len() - 1;
    load.set_phase(p);
    p
}

/// Ends phase `p` (the next `begin` switches the load over): its duration, HAProxy's retries
/// and state changes meanwhile.
fn end(phases: &mut [Phase], p: usize, lab: &Lab) {
    let ph = &mut phases[p];
    ph.time = ph.start.elapsed();
    let (r, d) = lab.retries();
    ph.retries = (r - ph.retries.0, d - ph.retries.1);
    let changes = lab.state_changes();
    ph.notes
        .extend(changes[ph.log_lines.min(changes.len())..].iter().map(|l| {
            // "[WARNING]  (123) : Server hosts/h2 is DOWN, reason: ...": from "Server" on.
            let l = l.trim_start_matches(|c: char| c != 'S');
            let l = l.split(", check duration").next().unwrap_or(l);
            format!("haproxy: {l}")
        }));
}

#[test]
fn hosts_behind_haproxy_keep_affinity_and_lose_no_request() {
    if !can_run() {
        return;
    }
    remove_stalenamespaces();
    let t_all = Instant::now();
    let mut lab = Lab::new();
    for h in 0..HOSTS {
        lab.start_host(h);
    }
    lab.start_haproxy();
    for h in 0..HOSTS {
        lab.wait_up(h);
    }
    let load = Load::start(&lab.client_ns);
    let mut phases: Vec<Phase> = Vec::new();
    let short = Duration::from_millis(300);

    // 1. Steady state: which host and worker each client has.
    let steady = begin(&mut phases, &load, &lab, "steady (no operation)".into());
    load.hold(steady, Duration::from_millis(1500), 20);
    end(&mut phases, steady, &lab);
    let first = {
        let all = load.samples.lock().unwrap();
        let of_steady: Vec<&Sample> = all.iter().filter(|s| s.phase == steady).collect();
        figures(&of_steady, &lab.workers())
    };
    let clients_on = |h: usize| first.first_slot.values().filter(|s| s.0 == h).count();
    for h in 0..HOSTS {
        assert!(
            clients_on(h) > 0,
            "no client reached h{} (HAProxy's source hash of these addresses); first slots: {:?}",
            h + 1,
            first.first_slot
        );
    }
    let spread: Vec<String> = (0..HOSTS)
        .map(|h| {
            let slots: BTreeSet<u32> = first
                .first_slot
                .values()
                .filter(|s| s.0 == h)
                .map(|s| s.1)
                .collect();
            format!("h{} {} (slots {slots:?})", h + 1, clients_on(h))
        })
        .collect();
    phases[steady]
        .notes
        .push(format!("clients per host: {}", spread.join(", ")));
    // The host taken out gracefully, and the one killed: the two with the most clients.
    let mut by_clients: Vec<usize> = (0..HOSTS).collect();
    by_clients.sort_by_key(|&h| std::cmp::Reverse(clients_on(h)));
    let (term_host, kill_host) = (by_clients[0], by_clients[1]);

    // 2. `multinode reload` on each host in turn.
    let reload = begin(
        &mut phases,
        &load,
        &lab,
        "multinode reload, each host in turn".into(),
    );
    for h in 0..HOSTS {
        let t = Instant::now();
        let out = mn(&["reload", "--name", &lab.hosts[h].name]);
        assert!(
            out.status.success(),
            "reload h{}: {}{}",
            h + 1,
            stdout(&out),
            stderr(&out)
        );
        phases[reload].notes.push(format!(
            "h{}: {} ({} ms)",
            h + 1,
            stdout(&out).trim(),
            t.elapsed().as_millis()
        ));
        load.hold(reload, short, 3);
    }
    end(&mut phases, reload, &lab);

    // 3. `multinode upgrade` on each host in turn: a new copy moved over the path every
    // host started from (a new inode, as a package upgrade leaves it), then each supervisor
    // executes it in place: the same pid, the same workers, the new file behind /proc/PID/exe.
    let upgrade = begin(
        &mut phases,
        &load,
        &lab,
        "multinode upgrade, each host in turn".into(),
    );
    let new_ino = lab.install.replace();
    for h in 0..HOSTS {
        let pid = lab.current(h).pid;
        let before = status_pids(&lab.hosts[h].name);
        let t = Instant::now();
        let out = mn(&["upgrade", "--name", &lab.hosts[h].name]);
        assert!(
            out.status.success(),
            "upgrade h{}: {}{}",
            h + 1,
            stdout(&out),
            stderr(&out)
        );
        assert_eq!(exe_ino(pid), new_ino, "h{}: runs the new file", h + 1);
        assert_eq!(
            status_pids(&lab.hosts[h].name),
            before,
            "h{}: every worker kept its slot and pid",
            h + 1
        );
        phases[upgrade].notes.push(format!(
            "h{}: {} (the command {} ms; pid {pid} and its {} workers kept)",
            h + 1,
            stdout(&out).trim(),
            t.elapsed().as_millis(),
            before.len()
        ));
        load.hold(upgrade, short, 3);
    }
    end(&mut phases, upgrade, &lab);

    // 4. A host out with SIGTERM and --stop-delay, then back.
    let name = format!(
        "h{}: SIGTERM (--stop-delay {STOP_DELAY}), then back",
        term_host + 1
    );
    let out_back = begin(&mut phases, &load, &lab, name);
    load.hold(out_back, short, 3);
    let old_pids: BTreeSet<i32> = lab.current(term_host).worker_pids().into_iter().collect();
    lab.current(term_host).signal(libc::SIGTERM);
    let t_term = Instant::now();
    // HAProxy sees /healthz answer 503 while the workers still serve, and takes the host out.
    let (state, down_after) = lab.wait_server(term_host, "DOWN", |s| s.0 == "DOWN");
    let t_down = Instant::now();
    let st = lab.hosts[term_host].runs.last_mut().unwrap().wait_exit();
    let exited_after = t_term.elapsed();
    assert!(st.success(), "h{} exited {st}", term_host + 1);
    assert_eq!(
        lab.current(term_host).events("stopping").len(),
        1,
        "h{}: the drain began (event `stopping`)",
        term_host + 1
    );
    assert!(
        state.1 == "L7STS" && state.2 == "503",
        "HAProxy took h{} out for /healthz 503 (during --stop-delay), not for {state:?}",
        term_host + 1
    );
    lab.start_host(term_host);
    let up_after = lab.wait_up(term_host);
    load.hold(out_back, short, 3);
    phases[out_back].notes.push(format!(
        "HAProxy DOWN ({}) {} ms after SIGTERM; host drained and exited after {} ms; \
         restarted, UP after {} ms",
        format!("{} {}", state.1, state.2).trim(),
        down_after.as_millis(),
        exited_after.as_millis(),
        up_after.as_millis()
    ));
    end(&mut phases, out_back, &lab);

    // 5. A host killed with SIGKILL (its supervisor and workers at once), then back.
    let name = format!("h{}: SIGKILL, then back", kill_host + 1);
    let killed = begin(&mut phases, &load, &lab, name);
    load.hold(killed, short, 3);
    let victims: Vec<i32> = lab.current(kill_host).worker_pids();
    let t_kill = Instant::now();
    lab.current(kill_host).signal(libc::SIGKILL);
    for &pid in &victims {
        kill(-pid, libc::SIGKILL);
    }
    let (kstate, kdown_after) = lab.wait_server(kill_host, "DOWN", |s| s.0 == "DOWN");
    load.hold(killed, short, 3);
    assert!(
        eventually(DEADLINE, || victims.iter().all(|&p| !alive(p))),
        "the killed host's workers are gone"
    );
    lab.hosts[kill_host].runs.last_mut().unwrap().wait_exit();
    let restart_after = t_kill.elapsed();
    lab.start_host(kill_host);
    let kup_after = lab.wait_up(kill_host);
    load.hold(killed, short, 3);
    phases[killed].notes.push(format!(
        "HAProxy DOWN ({}) {} ms after SIGKILL; restarted at {} ms, UP after {} ms",
        format!("{} {}", kstate.1, kstate.2).trim(),
        kdown_after.as_millis(),
        restart_after.as_millis(),
        kup_after.as_millis()
    ));
    end(&mut phases, killed, &lab);

    // 6. Steady again: every client back on the host and slot it started on.
    let after = begin(
        &mut phases,
        &load,
        &lab,
        "steady again, after all of it".into(),
    );
    load.hold(after, Duration::from_millis(1500), 20);
    end(&mut phases, after, &lab);

    let samples = load.finish();
    let workers = lab.workers();
    // The requests in flight on the killed host when it died: of its clients, those that started
    // before the SIGKILL and ended after it.
    let in_flight = samples
        .iter()
        .filter(|s| {
            first
                .first_slot
                .get(&s.client)
                .is_some_and(|f| f.0 == kill_host)
        })
        .filter(|s| s.start < t_kill && s.end > t_kill)
        .count();
    phases[killed].notes.push(format!(
        "requests in flight on h{} at the SIGKILL: {in_flight}",
        kill_host + 1
    ));
    let mut text = format!(
        "\nhaproxy: {HOSTS} hosts x {WORKERS} affinity workers behind HAProxy, {CLIENTS} clients, \
         each sending one request per connection every {} ms\n\
         same worker / same host+slot: per client, the share of its answered requests that \
         reached its first worker (pid) / first host and slot of the phase; min and mean over \
         the clients\n\
         retried/redispatched: by HAProxy (retry-on conn-failure empty-response, redispatch)\n\n\
         {:<44} {:>6} {:>6} {:>6}  {:<15}  {:<15}  {}\n",
        PACE.as_millis(),
        "operation",
        "time",
        "sent",
        "failed",
        "same worker",
        "same host+slot",
        "retried/redispatched",
    );
    let mut figs = Vec::new();
    for (p, ph) in phases.iter().enumerate() {
        let of_phase: Vec<&Sample> = samples.iter().filter(|s| s.phase == p).collect();
        let f = figures(&of_phase, &workers);
        text += &format!(
            "{:<44} {:>5.1}s {:>6} {:>6}  {:<15}  {:<15}  {}/{}\n",
            ph.name,
            ph.time.as_secs_f64(),
            f.sent,
            f.failed,
            format!("{} / {}", pct(f.pid_share.0), pct(f.pid_share.1)),
            format!("{} / {}", pct(f.slot_share.0), pct(f.slot_share.1)),
            ph.retries.0,
            ph.retries.1,
        );
        for n in &ph.notes {
            text += &format!("    {n}\n");
        }
        for (why, n) in &f.why {
            text += &format!("    failed: {n} x {why}\n");
        }
        figs.push(f);
    }
    text += &format!("total {:.1}s\n\n", t_all.elapsed().as_secs_f64());
    report(&text);

    // What the figures must show.
    for (p, f) in figs.iter().enumerate() {
        assert_eq!(
            f.wrong_client, 0,
            "{}: a worker saw another client address than the sender's\n{text}",
            phases[p].name
        );
    }
    for p in [steady, reload, upgrade, out_back, after] {
        assert_eq!(
            figs[p].failed, 0,
            "{}: no request may fail\n{text}",
            phases[p].name
        );
    }
    // SIGKILL: only requests in flight on the killed host may fail, at most one per client of
    // that host (each client has one request out at a time).
    assert!(
        figs[killed].failed <= clients_on(kill_host),
        "SIGKILL: {} failures, more than the {} clients of h{} had in flight\n{text}",
        figs[killed].failed,
        clients_on(kill_host),
        kill_host + 1
    );
    // Affinity across both tiers: with nothing changing, one worker per client; through the
    // reloads, one host and slot per client.
    for p in [steady, after] {
        assert_eq!(
            figs[p].pid_share.0, 1.0,
            "{}: a client reached two workers\n{text}",
            phases[p].name
        );
    }
    assert_eq!(
        figs[reload].slot_share.0, 1.0,
        "reload: a client changed host or slot\n{text}",
    );
    // After a host left and came back, and another died and came back, every client is where it
    // started: HAProxy's consistent hash and multinode's rendezvous hash both bring it back.
    assert_eq!(
        figs[after].first_slot, first.first_slot,
        "clients did not come back to their first host and slot\n{text}"
    );
    // HAProxy stopped sending to the host taken out once it saw the 503: no request that started
    // after that reached that host's (old) workers.
    let late = samples
        .iter()
        .filter(|s| s.start > t_down)
        .filter(|s| matches!(&s.outcome, Ok((pid, _)) if old_pids.contains(pid)))
        .count();
    assert_eq!(
        late,
        0,
        "requests reached h{} after HAProxy took it out\n{text}",
        term_host + 1
    );
}

/// The namespaces of examples/haproxy/demo.sh runs that are over (`mnhademo-<pid>-...` whose
/// pid is gone).
fn demo_leftovers() -> Vec<String> {
    netns_list()
        .into_iter()
        .filter(|n| {
            n.strip_prefix("mnhademo-")
                .and_then(|r| r.split('-').next())
                .and_then(|p| p.parse::<i32>().ok())
                .is_some_and(|pid| !Path::new(&format!("/proc/{pid}")).exists())
        })
        .collect()
}

/// examples/haproxy/demo.sh, as a user runs it (with DEMO_SECONDS=0: show, then clean up):
/// every client address keeps one worker, which sees that address, and whose visits count
/// climbs; and nothing of it is left afterwards.
#[test]
fn demo_script_shows_affinity_and_cleans_up() {
    if !can_run() || !require(have("curl", "-V"), "curl is not installed") {
        return;
    }
    for ns in demo_leftovers() {
        netns_remove(&ns);
    }
    // The workspace's binaries, multinode among them, where nobody can reach them.
    let bins = worker_bin("affinity").parent().unwrap().to_path_buf();
    assert!(bins.join("multinode").exists(), "{}", bins.display());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/haproxy/demo.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(&script)
        .env("BIN_DIR", &bins)
        .env("DEMO_SECONDS", "0");
    let out = run(cmd);
    let (o, e) = (stdout(&out), stderr(&out));
    let left = demo_leftovers();
    for ns in &left {
        netns_remove(ns);
    }
    assert!(out.status.success(), "demo.sh: {}\n{o}\n{e}", out.status);
    assert!(
        left.is_empty(),
        "demo.sh left namespaces {left:?}\n{o}\n{e}"
    );
    // "  198.19.1.3 -> process=123; reqno=4; client=198.19.1.3; visits=2"
    // Per client address, each answer's (process, client, visits).
    let mut seen: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    for line in o.lines() {
        let Some((from, body)) = line.trim().split_once(" -> ") else {
            continue;
        };
        let field = |k: &str| {
            body.split(';')
                .find_map(|p| p.trim().strip_prefix(k).map(str::to_string))
                .unwrap_or_default()
        };
        seen.entry(from.to_string()).or_default().push((
            field("process="),
            field("client="),
            field("visits="),
        ));
    }
    assert_eq!(seen.len(), 4, "four client addresses:\n{o}\n{e}");
    for (from, answers) in &seen {
        assert_eq!(answers.len(), 3, "{from}:\n{o}");
        for (k, (pid, client, visits)) in answers.iter().enumerate() {
            assert_eq!(pid, &answers[0].0, "{from} kept its worker:\n{o}");
            assert_eq!(client, from, "the worker saw {from}:\n{o}");
            assert_eq!(visits, &(k + 1).to_string(), "{from}'s visits climb:\n{o}");
        }
    }
}
