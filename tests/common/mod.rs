//! Shared test harness: runs the real `multinode` binary with real worker programs, collects
//! its output, and kills everything it started when the test ends, pass or fail.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Generous deadline for anything a test waits for on a busy 2-core machine.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub fn multinode_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_multinode"))
}

/// The workspace's binaries (examples and test workers), built once per test process with the
/// same profile as this test, then copied to a directory every user can reach: workers run as
/// `nobody` when the tests run as root, and nobody may not be able to enter the checkout.
pub fn worker_bin(name: &str) -> PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let target = multinode_bin().parent().unwrap().to_path_buf();
        let release = target.file_name().is_some_and(|n| n == "release");
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "--workspace", "--bins", "--locked", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if release {
            cmd.arg("--release");
        }
        let st = cmd
            .status()
            .expect("run cargo build for the worker binaries");
        assert!(st.success(), "cargo build --workspace --bins failed");
        let dir = shared_dir("bins");
        for entry in std::fs::read_dir(&target).unwrap().flatten() {
            let p = entry.path();
            let is_exe = p.is_file()
                && p.extension().is_none()
                && p.metadata()
                    .map(|m| m.permissions().mode() & 0o111 != 0)
                    .unwrap_or(false);
            if is_exe {
                let dst = dir.join(p.file_name().unwrap());
                std::fs::copy(&p, &dst).unwrap();
                std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
            }
        }
        dir
    });
    let p = dir.join(name);
    assert!(p.exists(), "worker binary {name} was not built");
    p
}

/// A file of the repository (an example script), copied where `nobody` can read it.
pub fn repo_file(rel: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join(rel);
    let dir = shared_dir("files");
    let dst = dir.join(rel.replace('/', "_"));
    std::fs::copy(&src, &dst).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
    std::fs::set_permissions(&dst, std::fs::Permissions::from_mode(0o755)).unwrap();
    dst
}

/// A world-readable directory under /tmp shared by the tests of one test process (its name
/// carries the pid, so runs never collide). Removed when the test process exits.
pub fn shared_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("multinode-test-{}-{what}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    remove_at_exit(&dir);
    dir
}

/// Directories removed when the test process exits (libtest ends with `exit`, which runs
/// `atexit` handlers), also when a test failed.
static AT_EXIT: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn remove_at_exit(dir: &Path) {
    extern "C" fn clean() {
        if let Ok(dirs) = AT_EXIT.lock() {
            for d in dirs.iter() {
                let _ = std::fs::remove_dir_all(d);
            }
        }
    }
    static REGISTERED: OnceLock<()> = OnceLock::new();
    REGISTERED.get_or_init(|| {
        // SAFETY: registers a plain function with no captured state.
        unsafe { libc::atexit(clean) };
    });
    let mut dirs = AT_EXIT.lock().unwrap_or_else(|e| e.into_inner());
    if !dirs.iter().any(|d| d == dir) {
        dirs.push(dir.to_path_buf());
    }
}

/// A private scratch directory for one test (Unix sockets, marker files), writable by all so
/// that a worker running as nobody can use it too. Removed on drop.
pub struct Scratch(pub PathBuf);

impl Scratch {
    pub fn new(name: &str) -> Scratch {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mn-{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777)).unwrap();
        Scratch(dir)
    }
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// One line of multinode's output, parsed. With `--log-format json` (the harness's default)
/// every line multinode prints is one JSON object: a supervisor event (`source` `multinode`,
/// with `event`, `level`, the worker's `slot` and `pid` when it concerns one, and the event's
/// own fields) or a line of a worker's output (`source` `worker`, `slot`, `pid`, `stream`,
/// `msg`). Any other line (the text format, an error printed before the log was set up, the
/// output of a wrapper such as systemd-socket-activate) has `source` `text` and is `msg`.
#[derive(Clone, Debug)]
pub struct Event {
    /// Position among all the lines read (stdout and stderr are read by two threads, so only
    /// lines of one stream keep their relative order: events and workers' stderr).
    pub seq: usize,
    /// `multinode`, `worker` or `text`.
    pub source: String,
    /// The event kind (`started`, `exited`, ...); [`OUTPUT`] for a line of worker output;
    /// empty for a text line.
    pub event: String,
    pub level: String,
    pub slot: Option<u32>,
    pub pid: Option<i32>,
    /// `stdout` or `stderr`, for worker output.
    pub stream: Option<String>,
    pub msg: String,
    /// The whole object (Null for a text line), for fields without an accessor.
    pub json: serde_json::Value,
    pub raw: String,
}

/// The kind the harness gives a line of worker output (`source` `worker`): `wait_event(OUTPUT, ..)`.
pub const OUTPUT: &str = "output";

impl Event {
    fn parse(seq: usize, raw: String) -> Event {
        let json: serde_json::Value = match serde_json::from_str(&raw) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            _ => serde_json::Value::Null,
        };
        let s = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let source = if json.is_null() {
            "text".to_string()
        } else {
            s("source").unwrap_or_default()
        };
        let event = match source.as_str() {
            "worker" => OUTPUT.to_string(),
            _ => s("event").unwrap_or_default(),
        };
        Event {
            seq,
            event,
            level: s("level").unwrap_or_default(),
            slot: json.get("slot").and_then(|v| v.as_u64()).map(|v| v as u32),
            pid: json.get("pid").and_then(|v| v.as_i64()).map(|v| v as i32),
            stream: s("stream"),
            msg: if json.is_null() {
                raw.clone()
            } else {
                s("msg").unwrap_or_default()
            },
            source,
            json,
            raw,
        }
    }

    /// Whether this is a supervisor event of `kind`, or (for [`OUTPUT`]) a worker's line.
    pub fn is(&self, kind: &str) -> bool {
        match kind {
            OUTPUT => self.source == "worker",
            _ => self.source == "multinode" && self.event == kind,
        }
    }

    pub fn get(&self, key: &str) -> Option<&serde_json::Value> {
        self.json.get(key)
    }
    pub fn str(&self, key: &str) -> Option<&str> {
        self.get(key)?.as_str()
    }
    pub fn u64(&self, key: &str) -> Option<u64> {
        self.get(key)?.as_u64()
    }
    pub fn i64(&self, key: &str) -> Option<i64> {
        self.get(key)?.as_i64()
    }
    pub fn bool(&self, key: &str) -> Option<bool> {
        self.get(key)?.as_bool()
    }
    fn ms(&self, key: &str) -> Option<Duration> {
        self.u64(key).map(Duration::from_millis)
    }

    /// `started`, `reload`, `reloaded`, `reload-failed`: the generation.
    pub fn generation(&self) -> Option<u64> {
        self.u64("generation")
    }
    /// `exited`: the exit code (None when killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.i64("code").map(|c| c as i32)
    }
    /// `exited`: the signal that ended the worker (`SIGKILL`); `kill`, `stopping`: the signal.
    pub fn signal(&self) -> Option<&str> {
        self.str("signal")
    }
    /// `exited`: the delay before the restart (None: not restarted).
    pub fn restart_in(&self) -> Option<Duration> {
        self.ms("restart_in_ms")
    }
    /// `exited`: how long the worker ran.
    pub fn uptime(&self) -> Option<Duration> {
        self.ms("uptime_ms")
    }
    /// `ready`: `notify` (READY=1) or `delay`.
    pub fn via(&self) -> Option<&str> {
        self.str("via")
    }
    /// `reload`, `reloaded`, `reload-failed`, `scale`, `stopping`: what caused it.
    pub fn why(&self) -> Option<&str> {
        self.str("why")
    }
    /// `scale`, `stopping`, `reload`, `kill`: a number of workers.
    pub fn workers(&self) -> Option<u64> {
        self.u64("workers")
    }
    /// `kill`, `stopping`: the --grace in force.
    pub fn grace(&self) -> Option<Duration> {
        self.ms("grace_ms")
    }
    /// `reload-failed`: why the reload failed (text for people).
    pub fn reason(&self) -> Option<&str> {
        self.str("reason")
    }
}

impl std::fmt::Display for Event {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.raw)
    }
}

/// `multinode serve` arguments as the harness passes them: `--log-format json` unless `args`
/// choose a format, and a unique `--name` unless they name the service or its control socket
/// (or a config file does): tests run in parallel, and two supervisors may not share a control
/// socket. For tests that start multinode through another program (setpriv, unshare, ...).
pub fn serve_args(args: &[&str]) -> Vec<String> {
    let mut v = vec!["serve".to_string()];
    // Only multinode's own options count, not the worker command's after `--`.
    let own: Vec<&str> = args.iter().copied().take_while(|a| *a != "--").collect();
    let has = |opts: &[&str]| {
        own.iter().any(|a| {
            opts.iter()
                .any(|o| a == o || a.starts_with(&format!("{o}=")))
        })
    };
    if !has(&["--name", "--control", "--config", "-c"]) {
        v.extend(["--name".to_string(), unique_name()]);
    }
    if !has(&["--log-format"]) {
        v.extend(["--log-format".to_string(), "json".to_string()]);
    }
    v.extend(args.iter().map(|a| a.to_string()));
    v
}

/// A running `multinode`, its output collected and parsed line by line. Dropping it SIGKILLs
/// the supervisor (workers follow through their parent-death signal) and any worker it
/// reported.
pub struct Multinode {
    pub child: Option<Child>,
    pub pid: i32,
    /// Whether Drop also SIGKILLs the worker groups it saw start. Off when the pids printed
    /// belong to another PID namespace and mean other processes here.
    pub kill_workers: bool,
    lines: Arc<Mutex<Vec<Event>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Multinode {
    /// `multinode serve <args>` (see [`serve_args`]) with output captured.
    pub fn serve(args: &[&str]) -> Multinode {
        Self::spawn(serve_command(args))
    }

    /// The plain service of [`hello`] workers (see [`hello_command`]).
    pub fn serve_hello(workers: &str, extra: &[&str]) -> Multinode {
        Self::spawn(hello_command(workers, extra))
    }

    pub fn spawn(mut cmd: Command) -> Multinode {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .env("NO_COLOR", "1");
        let mut child = cmd.spawn().expect("start multinode");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let mut readers = Vec::new();
        let out: Box<dyn Read + Send> = Box::new(child.stdout.take().unwrap());
        let err: Box<dyn Read + Send> = Box::new(child.stderr.take().unwrap());
        for (tag, r) in [("out", out), ("err", err)] {
            let lines = lines.clone();
            readers.push(std::thread::spawn(move || {
                for line in BufReader::new(r).lines() {
                    let Ok(line) = line else { break };
                    if std::env::var_os("MULTINODE_TEST_ECHO").is_some() {
                        eprintln!("[{tag}] {line}");
                    }
                    let mut lines = lines.lock().unwrap();
                    let seq = lines.len();
                    lines.push(Event::parse(seq, line));
                }
            }));
        }
        let pid = child.id() as i32;
        Multinode {
            child: Some(child),
            pid,
            kill_workers: true,
            lines,
            readers,
        }
    }

    /// Every line so far, parsed, in the order read.
    pub fn all_events(&self) -> Vec<Event> {
        self.lines.lock().unwrap().clone()
    }

    /// The events of `kind` so far ([`OUTPUT`]: the workers' output lines).
    pub fn events(&self, kind: &str) -> Vec<Event> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .filter(|e| e.is(kind))
            .cloned()
            .collect()
    }

    /// The raw lines so far (for tests of the text format, and lines that are not JSON).
    pub fn lines(&self) -> Vec<String> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.raw.clone())
            .collect()
    }

    pub fn output(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until an event of `kind` satisfies `pred`; returns it. Panics with the output on
    /// timeout.
    #[track_caller]
    pub fn wait_event(&self, kind: &str, pred: impl Fn(&Event) -> bool) -> Event {
        self.wait_event_within(DEADLINE, kind, pred)
    }

    #[track_caller]
    pub fn wait_event_within(
        &self,
        d: Duration,
        kind: &str,
        pred: impl Fn(&Event) -> bool,
    ) -> Event {
        match self.wait_for(d, |all| all.iter().find(|e| e.is(kind) && pred(e)).cloned()) {
            Some(e) => e,
            None => panic!(
                "timed out waiting for a `{kind}` event; output so far:\n{}",
                self.output()
            ),
        }
    }

    /// Waits until `n` events of `kind` satisfy `pred`; returns all those seen then.
    #[track_caller]
    pub fn wait_events(&self, kind: &str, n: usize, pred: impl Fn(&Event) -> bool) -> Vec<Event> {
        let got = self.wait_for(DEADLINE, |all| {
            let got: Vec<Event> = all
                .iter()
                .filter(|e| e.is(kind) && pred(e))
                .cloned()
                .collect();
            (got.len() >= n).then_some(got)
        });
        match got {
            Some(got) => got,
            None => panic!(
                "timed out waiting for {n} `{kind}` events (have {}); output:\n{}",
                self.events(kind).iter().filter(|e| pred(e)).count(),
                self.output()
            ),
        }
    }

    /// Waits until any event (of any kind, or a text line) satisfies `pred`: for a choice
    /// between kinds. `what` names it in the timeout message.
    #[track_caller]
    pub fn wait_any(&self, what: &str, pred: impl Fn(&Event) -> bool) -> Event {
        match self.wait_for(DEADLINE, |all| all.iter().find(|e| pred(e)).cloned()) {
            Some(e) => e,
            None => panic!(
                "timed out waiting for {what}; output so far:\n{}",
                self.output()
            ),
        }
    }

    /// Waits until a line of worker output satisfies `pred`.
    #[track_caller]
    pub fn wait_output(&self, pred: impl Fn(&Event) -> bool) -> Event {
        self.wait_event(OUTPUT, pred)
    }

    /// Polls the lines read so far until `f` finds something, or the deadline.
    fn wait_for<T>(&self, d: Duration, f: impl Fn(&[Event]) -> Option<T>) -> Option<T> {
        let end = Instant::now() + d;
        loop {
            if let Some(t) = f(&self.lines.lock().unwrap()) {
                return Some(t);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until a raw line satisfies `pred`; returns it. For the text format and lines
    /// that are not multinode's JSON.
    #[track_caller]
    pub fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        match self.wait_for(DEADLINE, |all| {
            all.iter().find(|e| pred(&e.raw)).map(|e| e.raw.clone())
        }) {
            Some(l) => l,
            None => panic!(
                "timed out waiting for {what}; output so far:\n{}",
                self.output()
            ),
        }
    }

    /// The address multinode reports for socket `name` (its `listening` event).
    #[track_caller]
    pub fn addr(&self, name: &str) -> String {
        let e = self.wait_event("listening", |e| e.str("name") == Some(name));
        e.str("addr").expect("listening: addr").to_string()
    }

    #[track_caller]
    pub fn tcp_addr(&self, name: &str) -> SocketAddr {
        self.addr(name).parse().expect("a TCP address")
    }

    /// The path of the supervisor's control socket, from its `control` event.
    #[track_caller]
    pub fn control_path(&self) -> PathBuf {
        let e = self.wait_event("control", |_| true);
        PathBuf::from(e.str("path").expect("control: path"))
    }

    /// The pid a worker printed as `WHAT PID` (a helper it started, say), from the first such
    /// line of worker `pid` (None: of any worker).
    #[track_caller]
    pub fn printed_pid(&self, what: &str, pid: Option<i32>) -> i32 {
        let prefix = format!("{what} ");
        let line = self
            .wait_output(|e| pid.is_none_or(|p| e.pid == Some(p)) && e.msg.starts_with(&prefix));
        line.msg[prefix.len()..].trim().parse().unwrap()
    }

    /// Waits until `n` workers have been reported `started`; returns the pids of all started
    /// so far, in order.
    #[track_caller]
    pub fn wait_started(&self, n: usize) -> Vec<i32> {
        self.wait_events("started", n, |_| true)
            .iter()
            .map(|e| e.pid.expect("started: pid"))
            .collect()
    }

    /// Waits for a `started` event of `slot` whose pid is not in `old`; returns the pid.
    #[track_caller]
    pub fn wait_started_in_slot(&self, slot: u32, old: &[i32]) -> i32 {
        self.wait_event("started", |e| {
            e.slot == Some(slot) && e.pid.is_some_and(|p| !old.contains(&p))
        })
        .pid
        .unwrap()
    }

    /// slot → pid of the newest worker started for each slot.
    pub fn slot_pids(&self) -> BTreeMap<u32, i32> {
        self.events("started")
            .iter()
            .filter_map(|e| Some((e.slot?, e.pid?)))
            .collect()
    }

    /// The pids started for `generation`.
    pub fn generation_pids(&self, generation: u64) -> BTreeSet<i32> {
        self.events("started")
            .iter()
            .filter(|e| e.generation() == Some(generation))
            .filter_map(|e| e.pid)
            .collect()
    }

    /// The `exited` event of worker `pid`, once there is one.
    #[track_caller]
    pub fn wait_exited(&self, pid: i32) -> Event {
        self.wait_event("exited", |e| e.pid == Some(pid))
    }

    /// Waits until `n` workers are ready (`ready` events).
    #[track_caller]
    pub fn wait_ready(&self, n: usize) -> Vec<Event> {
        self.wait_events("ready", n, |_| true)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.pid, sig) };
    }

    /// Waits for the supervisor to exit; None on timeout.
    pub fn wait_exit_within(&mut self, d: Duration) -> Option<ExitStatus> {
        let end = Instant::now() + d;
        let child = self.child.as_mut()?;
        loop {
            if let Some(st) = child.try_wait().unwrap() {
                let child = self.child.take().unwrap();
                drop(child);
                for r in self.readers.drain(..) {
                    let _ = r.join();
                }
                return Some(st);
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    #[track_caller]
    pub fn wait_exit(&mut self) -> ExitStatus {
        match self.wait_exit_within(DEADLINE) {
            Some(st) => st,
            None => panic!("multinode did not exit; output:\n{}", self.output()),
        }
    }

    /// Every worker pid the supervisor reported starting.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.events("started")
            .iter()
            .filter_map(|e| e.pid)
            .collect()
    }
}

impl Drop for Multinode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let all = self.all_events();
        // The workers it started: from `started` events, or in the text format from
        // `multinode | worker.N[PID] started` lines.
        let pids = all.iter().filter_map(|e| match e.source.as_str() {
            "multinode" if e.event == "started" => e.pid,
            "text" if e.raw.starts_with("multinode | ") && e.raw.contains("] started") => {
                worker_pid(&e.raw)
            }
            _ => None,
        });
        for pid in pids.filter(|_| self.kill_workers) {
            // SAFETY: kill has no memory preconditions. The group may be gone already.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        // The control and notify sockets' directories: a SIGKILLed supervisor leaves them.
        for (kind, text) in [("control", "control socket "), ("notify", "notify socket ")] {
            let path = all.iter().find_map(|e| match e.source.as_str() {
                "multinode" if e.event == kind => e.str("path").map(PathBuf::from),
                "text" if e.raw.starts_with("multinode | ") && e.raw.contains(text) => {
                    e.raw.rsplit(text).next().map(|p| PathBuf::from(p.trim()))
                }
                _ => None,
            });
            if let Some(path) = path {
                let _ = std::fs::remove_file(&path);
                if let Some(dir) = path.parent() {
                    let _ = std::fs::remove_dir(dir);
                }
            }
        }
    }
}

/// A service name no other test uses.
pub fn unique_name() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("mn-test-{}-{n}", std::process::id())
}

/// The pid in `worker.N[PID]` (the text format's prefix).
pub fn worker_pid(line: &str) -> Option<i32> {
    let start = line.find("worker.")?;
    let rest = &line[start..];
    let open = rest.find('[')?;
    let close = rest.find(']')?;
    rest[open + 1..close].parse().ok()
}

/// The slot in `worker.N[PID]` (the text format's prefix).
pub fn worker_slot(line: &str) -> Option<u32> {
    let start = line.find("worker.")? + "worker.".len();
    let rest = &line[start..];
    rest[..rest.find('[')?].parse().ok()
}

/// One HTTP/1.1 GET on a fresh connection; returns (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    // One write: write! would send the request in pieces, and Nagle would hold the rest.
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    parse_response(&resp)
}

/// GET over a Unix socket.
pub fn http_get_unix(path: &Path, req_path: &str) -> std::io::Result<(u16, String)> {
    let mut s = std::os::unix::net::UnixStream::connect(path)?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    write!(
        s,
        "GET {req_path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    parse_response(&resp)
}

fn parse_response(resp: &str) -> std::io::Result<(u16, String)> {
    let bad = || std::io::Error::other(format!("bad HTTP response: {resp:?}"));
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let body = resp.split_once("\r\n\r\n").ok_or_else(bad)?.1.to_string();
    Ok((status, body))
}

/// A kept-alive HTTP/1.1 connection.
pub struct KeepAlive {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl KeepAlive {
    pub fn connect(addr: SocketAddr) -> std::io::Result<KeepAlive> {
        Self::from_stream(TcpStream::connect_timeout(&addr, Duration::from_secs(10))?)
    }

    /// A connection made otherwise (from another source address, say).
    pub fn from_stream(s: TcpStream) -> std::io::Result<KeepAlive> {
        s.set_read_timeout(Some(Duration::from_secs(30)))?;
        Ok(KeepAlive {
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    /// Sends a GET and reads one response: (status, body, whether the server said
    /// `Connection: close` — the caller then reconnects).
    pub fn get(&mut self, path: &str) -> std::io::Result<(u16, String, bool)> {
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\n\r\n");
        self.w.write_all(req.as_bytes())?;
        let mut status_line = String::new();
        if self.r.read_line(&mut status_line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed before a response",
            ));
        }
        let status: u16 = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let mut len = 0usize;
        let mut close = false;
        loop {
            let mut h = String::new();
            self.r.read_line(&mut h)?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse().unwrap_or(0);
            }
            if lower.starts_with("connection:") && lower.contains("close") {
                close = true;
            }
        }
        let mut body = vec![0u8; len];
        self.r.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned(), close))
    }
}

/// The value of `key=` in a response body of `key=value` fields joined by `; ` (what hello,
/// affinity and the test workers answer).
pub fn body_field<'a>(body: &'a str, key: &str) -> Option<&'a str> {
    body.split(';')
        .find_map(|p| p.trim().strip_prefix(key)?.strip_prefix('='))
        .map(str::trim)
}

/// `process=<pid>` in a hello response body.
pub fn body_pid(body: &str) -> Option<i32> {
    body_field(body, "process")?.parse().ok()
}

/// Polls `cond` until true or the deadline; returns whether it became true.
pub fn eventually(d: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + d;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > end {
            return false;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// `/proc/<pid>/<file>` as text. Read as bytes: a process names itself (its `comm`, in
/// `stat`, `status` and `comm`), and a name need not be UTF-8; such bytes become U+FFFD.
pub fn proc_file(pid: i32, file: &str) -> Option<String> {
    let bytes = std::fs::read(format!("/proc/{pid}/{file}")).ok()?;
    Some(String::from_utf8_lossy(&bytes).into_owned())
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match proc_file(pid, "stat") {
        Some(s) => proc_state(&s) != Some('Z'),
        None => false,
    }
}

fn proc_state(stat: &str) -> Option<char> {
    stat.rsplit_once(") ")?.1.chars().next()
}

/// (state, ppid, pgid) of a process.
pub fn stat_of(pid: i32) -> Option<(char, i32, i32)> {
    let s = proc_file(pid, "stat")?;
    let rest = s.rsplit_once(") ")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some((f[0].chars().next()?, f[1].parse().ok()?, f[2].parse().ok()?))
}

/// The pids whose parent is `ppid`, less multinode's guard process (a child of every
/// supervisor, see src/guard.rs): what tests call a supervisor's children are its workers
/// and what was reparented to it.
pub fn children_of(ppid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&p| stat_of(p).is_some_and(|(_, pp, _)| pp == ppid))
        .filter(|&p| !is_guard(p))
        .collect()
}

/// Whether `pid` is a multinode guard process.
pub fn is_guard(pid: i32) -> bool {
    comm(pid) == "multinode-guard"
}

/// A `/proc/<pid>/status` field, e.g. "Uid".
pub fn status_field(pid: i32, field: &str) -> Option<String> {
    let s = proc_file(pid, "status")?;
    s.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_string())
    })
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
    let s = proc_file(pid, "stat").unwrap();
    let rest = s.rsplit_once(") ").unwrap().1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

/// A free TCP port on 127.0.0.1 below 1024 (for the privileged-port test).
pub fn free_low_port() -> u16 {
    for port in (900..1024).rev() {
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port below 1024");
}

impl KeepAlive {
    /// Whether the server has already closed (or reset) this idle connection: it is readable
    /// with no request outstanding, which for HTTP/1.1 means end of file or an error. An HTTP
    /// client checks this before reusing a pooled connection, and opens a new one instead.
    pub fn closed_by_server(&self) -> bool {
        use std::os::fd::AsRawFd;
        if !self.r.buffer().is_empty() {
            return true;
        }
        let mut pfd = libc::pollfd {
            fd: self.w.as_raw_fd(),
            events: libc::POLLIN | libc::POLLRDHUP,
            revents: 0,
        };
        // SAFETY: one valid pollfd, zero timeout.
        let n = unsafe { libc::poll(&mut pfd, 1, 0) };
        n > 0 && pfd.revents != 0
    }

    /// Turns Nagle's algorithm off. `get` writes a request in several pieces, and with Nagle
    /// on, each piece after the first waits for the server's (delayed) ACK of the one before:
    /// up to 40 ms per request on loopback. A load test wants the requests back to back.
    pub fn set_nodelay(&self) -> std::io::Result<()> {
        self.w.set_nodelay(true)
    }
}

/// Runs `cmd` to completion and returns its output; it is killed if it outlives DEADLINE.
pub fn run(mut cmd: Command) -> std::process::Output {
    cmd.env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd.spawn().expect("start command");
    let pid = child.id() as i32;
    // The killer acts only while the child has not been waited for, so never on a reused pid.
    let (done, wait_done) = std::sync::mpsc::channel::<()>();
    let killer = std::thread::spawn(move || {
        if wait_done.recv_timeout(DEADLINE).is_err() {
            // SAFETY: kill has no memory preconditions; the child is not reaped yet.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    });
    let out = child.wait_with_output().unwrap();
    let _ = done.send(());
    let _ = killer.join();
    out
}

/// `multinode <args>`, run to completion (see [`run`]).
pub fn mn(args: &[&str]) -> Output {
    let mut cmd = Command::new(multinode_bin());
    cmd.args(args);
    run(cmd)
}

/// `multinode serve <args>` as [`Multinode::serve`] would start it (see [`serve_args`]), not
/// started yet: for a test that sets more on the command (environment, limits) or runs it to
/// completion.
pub fn serve_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(multinode_bin());
    cmd.args(serve_args(args));
    cmd
}

/// `multinode serve -w WORKERS -l 127.0.0.1:0 EXTRA... -- hello` as [`serve_command`] makes
/// it: the plain service of [`hello`] workers, `extra` being more of multinode's options.
pub fn hello_command(workers: &str, extra: &[&str]) -> Command {
    let hello = hello();
    let mut args = vec!["-w", workers, "-l", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    args.extend(["--", hello.as_str()]);
    serve_command(&args)
}

/// A command's standard output, as text.
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A command's standard error, as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts exit `code` and that stderr is one `multinode: error: ...` line mentioning every
/// needle.
#[track_caller]
pub fn assert_error(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "exit code; stderr: {err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 1, "one line of error, got: {err}");
    assert!(lines[0].starts_with("multinode: error: "), "{err}");
    for n in needles {
        assert!(lines[0].contains(n), "error should mention {n:?}: {err}");
    }
}

/// `multinode status --json --name NAME`, parsed; asserts that it exits 0.
#[track_caller]
pub fn status_json(name: &str) -> serde_json::Value {
    let out = mn(&["status", "--json", "--name", name]);
    assert_eq!(out.status.code(), Some(0), "status: {}", stderr(&out));
    serde_json::from_str(stdout(&out).trim())
        .unwrap_or_else(|e| panic!("status --json is not JSON ({e}): {}", stdout(&out)))
}

/// The path of the `hello` example worker (see [`worker_bin`]), for an argument list.
pub fn hello() -> String {
    worker_bin("hello").display().to_string()
}

/// Writes `text` to `path` and gives the file `mode` (the umask does not apply).
pub fn write_mode(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Writes a file every user can read (a worker running as nobody reads it, or multinode
/// re-reads a config after dropping root).
pub fn write(path: &Path, text: &str) {
    write_mode(path, text, 0o644);
}

/// A worker script that leaves two helpers holding the listening socket (fd 3): one in a
/// session of its own (`setsid`), one double-forked (reparented, still in the worker's
/// process group). Each prints `setsid PID` or `forked PID` (see [`Multinode::printed_pid`]);
/// then the shell becomes hello. Written to `helpers.sh` in `s`.
pub fn helpers_script(s: &Scratch) -> PathBuf {
    let path = s.path("helpers.sh");
    let script = format!(
        "#!/bin/sh\n\
         setsid sh -c 'echo \"setsid $$\"; exec sleep 1000' &\n\
         (sh -c 'echo \"forked $$\"; exec sleep 1000' &) &\n\
         exec {}\n",
        hello()
    );
    write_mode(&path, &script, 0o755);
    path
}

/// The pids the helpers of [`helpers_script`] worker `pid` printed: (setsid, forked).
#[track_caller]
pub fn helper_pids(m: &Multinode, pid: i32) -> (i32, i32) {
    (
        m.printed_pid("setsid", Some(pid)),
        m.printed_pid("forked", Some(pid)),
    )
}

/// uid and gid of nobody and nogroup, the workers' user and group when the tests run as root.
pub const NOBODY: u32 = 65534;

/// `program <args>` as nobody:nogroup with no supplementary groups, through setpriv(1) (which
/// needs root; see [`have_setpriv`]): what the workers' user could do.
pub fn as_nobody<S: AsRef<OsStr>>(program: impl AsRef<OsStr>, args: &[S]) -> Command {
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(program)
        .args(args);
    cmd
}

/// `multinode <args>` as nobody (see [`as_nobody`]).
pub fn multinode_as_nobody<S: AsRef<OsStr>>(args: &[S]) -> Command {
    as_nobody(multinode_bin(), args)
}

/// `multinode <args>` as a user other than root: nobody when we are root, else ourselves.
pub fn multinode_not_root<S: AsRef<OsStr>>(args: &[S]) -> Command {
    if is_root() {
        multinode_as_nobody(args)
    } else {
        let mut cmd = Command::new(multinode_bin());
        cmd.args(args);
        cmd
    }
}

/// Whether setpriv(1) (util-linux) is installed.
pub fn have_setpriv() -> bool {
    Command::new("setpriv").arg("--version").output().is_ok()
}

/// Sends `sig` to `pid`, which may be gone already.
pub fn kill(pid: i32, sig: i32) {
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(pid, sig) };
}

/// The name of a process (`/proc/PID/comm`); empty once it is gone.
pub fn comm(pid: i32) -> String {
    proc_file(pid, "comm")
        .map(|c| c.trim_end().to_string())
        .unwrap_or_default()
}

/// SIGKILLs, when dropped, each of `pids` that is still a `comm` (so never a reused pid):
/// processes a test caused outside the supervisor's reach, should it fail before they are
/// gone.
pub struct KillOnDrop {
    pub pids: Vec<i32>,
    pub comm: &'static str,
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for &pid in &self.pids {
            if comm(pid) == self.comm {
                kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// Whether a test that needs something this machine may lack (a tool, root, a venv) can run.
/// `have`: it is there. Otherwise, under `CI=true` (where `.ci/run` installs everything) the
/// test fails; elsewhere it says `SKIPPED <test>: <why>` on the terminal and the caller returns.
///
/// ```ignore
/// if !require(zsh_installed, "zsh is not installed (.ci/run installs it)") {
///     return;
/// }
/// ```
#[track_caller]
pub fn require(have: bool, why: &str) -> bool {
    if !have {
        skip(why);
    }
    have
}

/// Reports that (part of) the calling test cannot run: a failure under `CI=true`, else a
/// `SKIPPED` line that `cargo test` shows even for a passing test. libtest captures what
/// `print!`/`eprint!` write and shows it only for failing tests, so this writes to the
/// process's stderr itself, past the capture.
#[track_caller]
pub fn skip(why: &str) {
    let at = std::panic::Location::caller();
    let thread = std::thread::current();
    // libtest runs each test on a thread named after it (unless tests run on the main thread).
    let test = match thread.name() {
        Some(n) if n != "main" => n.to_string(),
        _ => format!("{}:{}", at.file(), at.line()),
    };
    if std::env::var_os("CI").is_some_and(|v| v == "true") {
        panic!(
            "{test} cannot run: {why}; under CI=true every test must run (.ci/run installs what they need)"
        );
    }
    let line = format!("SKIPPED {test}: {why}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

/// A pseudo-terminal: (master, slave).
pub fn openpty() -> (std::os::fd::OwnedFd, std::os::fd::OwnedFd) {
    use std::os::fd::FromRawFd;
    let (mut master, mut slave) = (-1, -1);
    // SAFETY: openpty writes two fds into the integers we pass; no name, termios or winsize.
    let r = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: openpty just returned these fds and nothing else owns them.
    unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(master),
            std::os::fd::OwnedFd::from_raw_fd(slave),
        )
    }
}

/// What a pty's master holds to read now (non-blocking), as text.
pub fn read_available(master: &std::os::fd::OwnedFd) -> String {
    use std::os::fd::AsRawFd;
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let mut pfd = libc::pollfd {
            fd: master.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut pfd, 1, 200) } <= 0 {
            break;
        }
        // SAFETY: reads into our buffer.
        let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            break;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A copy of multinode in a directory of its own, writable by root only (as an installed
/// binary is: an upgrade refuses one the workers' user could have replaced). Removed on drop.
pub struct Install {
    pub dir: PathBuf,
    pub bin: PathBuf,
}

impl Install {
    pub fn new() -> Install {
        static N: AtomicU64 = AtomicU64::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mn-upgrade-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        set_mode(&dir, 0o755);
        let bin = dir.join("multinode");
        std::fs::copy(multinode_bin(), &bin).unwrap();
        set_mode(&bin, 0o755);
        Install { dir, bin }
    }

    /// A new copy moved over the start path, as a package upgrade does; its inode.
    pub fn replace(&self) -> u64 {
        let tmp = self.dir.join("multinode.new");
        std::fs::copy(multinode_bin(), &tmp).unwrap();
        set_mode(&tmp, 0o755);
        std::fs::rename(&tmp, &self.bin).unwrap();
        ino(&self.bin)
    }

    /// `multinode serve ARGS` started from the installed copy, under `name`.
    pub fn serve(&self, name: &str, args: &[&str]) -> Multinode {
        Multinode::spawn(self.serve_command(name, args))
    }

    /// The command [`Install::serve`] runs, to be started otherwise (in a namespace, say).
    pub fn serve_command(&self, name: &str, args: &[&str]) -> Command {
        let mut all = vec!["--name", name];
        all.extend_from_slice(args);
        let mut cmd = Command::new(&self.bin);
        cmd.args(serve_args(&all));
        cmd
    }
}

impl Drop for Install {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn set_mode(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

pub fn ino(p: &Path) -> u64 {
    std::fs::metadata(p).unwrap().ino()
}

/// The inode of the executable process `pid` runs.
pub fn exe_ino(pid: i32) -> u64 {
    ino(Path::new(&format!("/proc/{pid}/exe")))
}

/// slot → pid of every worker of the service `name`, from `status --json`, by slot.
pub fn status_pids(name: &str) -> Vec<(u64, i64)> {
    let st = status_json(name);
    let mut v: Vec<(u64, i64)> = st["slots"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|s| Some((s["slot"].as_u64()?, s["pid"].as_i64()?)))
        .collect();
    v.sort();
    v
}

/// The supervisor `m` (an `unshare --pid --fork` running multinode) started, seen from here:
/// unshare's child, once its pid inside its namespace is 1.
pub fn pid_1_under(m: &Multinode) -> i32 {
    let mut sup = 0;
    assert!(
        eventually(DEADLINE, || {
            sup = children_of(m.pid).into_iter().next().unwrap_or(0);
            status_field(sup, "NSpid").is_some_and(|ns| ns.split_whitespace().last() == Some("1"))
        }),
        "multinode is not PID 1 of its namespace"
    );
    sup
}

/// On failure: SIGKILL to PID 1 ends the whole namespace (killing unshare would not). Set to
/// `None` once multinode has exited, so it never hits a reused pid.
pub struct EndNamespace(pub Option<i32>);

impl Drop for EndNamespace {
    fn drop(&mut self) {
        if let Some(pid) = self.0 {
            kill(pid, libc::SIGKILL);
        }
    }
}

/// A service manager's notify socket, as systemd gives a `Type=notify` service in
/// NOTIFY_SOCKET: bound by the test, writable by anyone (multinode sends after dropping its
/// privileges), and with each datagram's sender pid (SO_PASSCRED).
pub struct ServiceManager(pub std::os::unix::net::UnixDatagram);

impl ServiceManager {
    pub fn bind(path: &Path) -> ServiceManager {
        let sock = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        set_mode(path, 0o666);
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let on: libc::c_int = 1;
        // SAFETY: setsockopt reads the int we pass.
        unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&sock),
                libc::SOL_SOCKET,
                libc::SO_PASSCRED,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        ServiceManager(sock)
    }

    /// One datagram and its sender's pid (`SCM_CREDENTIALS`); None at the read timeout.
    pub fn recv(&self) -> Option<(String, i32)> {
        let sock = &self.0;
        use std::os::fd::AsRawFd;
        let mut buf = [0u8; 4096];
        let mut cmsg = [0u64; 16];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: a zeroed msghdr is valid; its pointers are set to live buffers below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cmsg.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cmsg);
        // SAFETY: recvmsg writes into the buffers msg points to.
        let n = unsafe { libc::recvmsg(sock.as_raw_fd(), &mut msg, 0) };
        if n < 0 {
            return None;
        }
        let mut pid = 0;
        // SAFETY: walks the control messages the kernel wrote into `cmsg`, as cmsg(3) does.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_CREDENTIALS {
                    let cred: libc::ucred = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    pid = cred.pid;
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        Some((
            String::from_utf8_lossy(&buf[..n as usize]).into_owned(),
            pid,
        ))
    }

    /// Receives until one satisfies `pred`; returns those before it, it and its sender.
    #[track_caller]
    pub fn until(&self, what: &str, pred: impl Fn(&str) -> bool) -> (Vec<String>, String, i32) {
        let end = Instant::now() + DEADLINE;
        let mut before = Vec::new();
        while Instant::now() < end {
            if let Some((msg, pid)) = self.recv() {
                if pred(&msg) {
                    return (before, msg, pid);
                }
                before.push(msg);
            }
        }
        panic!("no {what} notification; got {before:?}");
    }

    /// Receives until a datagram has the line `field`; returns it and its sender.
    #[track_caller]
    pub fn wait_line(&self, field: &str) -> (String, i32) {
        let (_, msg, pid) = self.until(field, |m| has_line(m, field));
        (msg, pid)
    }
}

/// Whether a notification has the line `field` (`READY=1`, ...).
pub fn has_line(msg: &str, field: &str) -> bool {
    msg.lines().any(|l| l == field)
}

/// CLOCK_MONOTONIC in microseconds, as sd_notify's MONOTONIC_USEC counts.
pub fn monotonic_usec() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}
