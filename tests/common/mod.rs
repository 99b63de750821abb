//! Shared test harness: runs the real `multinode` binary with real worker programs, collects
//! its output, and kills everything it started when the test ends, pass or fail.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
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
/// carries the pid, so runs never collide). Left in place for inspection after a failure.
pub fn shared_dir(what: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("multinode-test-{}-{what}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir
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

/// A running `multinode`, its output collected line by line. Dropping it SIGKILLs the
/// supervisor (workers follow through their parent-death signal) and any worker it reported.
pub struct Multinode {
    pub child: Option<Child>,
    pub pid: i32,
    /// Whether Drop also SIGKILLs the worker groups it saw start. Off when the pids printed
    /// belong to another PID namespace and mean other processes here.
    pub kill_workers: bool,
    lines: Arc<Mutex<Vec<String>>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Multinode {
    /// `multinode serve <args>` with output captured. Unless the args name the service or
    /// its control socket (or a config file does), each run gets a unique `--name`: tests run
    /// in parallel, and two supervisors may not share a control socket.
    pub fn serve(args: &[&str]) -> Multinode {
        let mut cmd = Command::new(multinode_bin());
        cmd.arg("serve");
        // Only multinode's own options count, not the worker command's after `--`.
        let own = args.iter().take_while(|a| **a != "--");
        let named = own
            .into_iter()
            .any(|a| ["--name", "--control", "--config", "-c"].contains(a));
        if !named {
            cmd.args(["--name", &unique_name()]);
        }
        cmd.args(args);
        Self::spawn(cmd)
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
                    lines.lock().unwrap().push(line);
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

    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }

    pub fn output(&self) -> String {
        self.lines().join("\n")
    }

    /// Waits until a line satisfies `pred`; returns it. Panics with the output on timeout.
    pub fn wait_line(&self, what: &str, pred: impl Fn(&str) -> bool) -> String {
        self.wait_line_within(DEADLINE, what, pred)
    }

    pub fn wait_line_within(&self, d: Duration, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + d;
        loop {
            if let Some(l) = self.lines().into_iter().find(|l| pred(l)) {
                return l;
            }
            if Instant::now() > end {
                panic!(
                    "timed out waiting for {what}; output so far:\n{}",
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until `n` lines satisfy `pred`.
    pub fn wait_count(&self, what: &str, n: usize, pred: impl Fn(&str) -> bool) -> Vec<String> {
        let end = Instant::now() + DEADLINE;
        loop {
            let got: Vec<String> = self.lines().into_iter().filter(|l| pred(l)).collect();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > end {
                panic!(
                    "timed out waiting for {n} x {what} (have {}); output:\n{}",
                    got.len(),
                    self.output()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The address printed for socket `name` ("listening on NAME ADDR (fd N)").
    pub fn addr(&self, name: &str) -> String {
        let prefix = format!("listening on {name} ");
        let line = self.wait_line(&prefix, |l| l.contains(&prefix));
        let rest = &line[line.find(&prefix).unwrap() + prefix.len()..];
        rest.split_whitespace().next().unwrap().to_string()
    }

    pub fn tcp_addr(&self, name: &str) -> SocketAddr {
        self.addr(name).parse().expect("a TCP address")
    }

    /// Waits until `n` workers have reported `started`; returns their pids.
    pub fn wait_started(&self, n: usize) -> Vec<i32> {
        self.wait_count("worker started", n, |l| l.contains("] started"))
            .iter()
            .map(|l| worker_pid(l).expect("pid in started line"))
            .collect()
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

    pub fn wait_exit(&mut self) -> ExitStatus {
        match self.wait_exit_within(DEADLINE) {
            Some(st) => st,
            None => panic!("multinode did not exit; output:\n{}", self.output()),
        }
    }

    /// Every worker pid the supervisor reported starting.
    pub fn worker_pids(&self) -> Vec<i32> {
        self.lines()
            .iter()
            .filter(|l| l.contains("] started"))
            .filter_map(|l| worker_pid(l))
            .collect()
    }
}

impl Drop for Multinode {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for pid in self.worker_pids().into_iter().filter(|_| self.kill_workers) {
            // SAFETY: kill has no memory preconditions. The group may be gone already.
            unsafe { libc::kill(-pid, libc::SIGKILL) };
        }
        // The control and notify sockets' directories: a SIGKILLed supervisor leaves them.
        for what in ["control socket ", "notify socket "] {
            if let Some(line) = self.lines().iter().find(|l| l.contains(what)) {
                let path = Path::new(line.rsplit(what).next().unwrap_or_default().trim());
                let _ = std::fs::remove_file(path);
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

/// The pid in `worker.N[PID]`.
pub fn worker_pid(line: &str) -> Option<i32> {
    let start = line.find("worker.")?;
    let rest = &line[start..];
    let open = rest.find('[')?;
    let close = rest.find(']')?;
    rest[open + 1..close].parse().ok()
}

/// The slot in `worker.N[PID]`.
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
        let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
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

/// `process=<pid>` in a hello response body.
pub fn body_pid(body: &str) -> Option<i32> {
    body.split(';')
        .find_map(|p| p.trim().strip_prefix("process=")?.trim().parse().ok())
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

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => proc_state(&s) != Some('Z'),
        Err(_) => false,
    }
}

fn proc_state(stat: &str) -> Option<char> {
    stat.rsplit_once(") ")?.1.chars().next()
}

/// (state, ppid, pgid) of a process.
pub fn stat_of(pid: i32) -> Option<(char, i32, i32)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
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
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|c| c.trim() == "multinode-guard")
}

/// A `/proc/<pid>/status` field, e.g. "Uid".
pub fn status_field(pid: i32, field: &str) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_string())
    })
}

/// utime + stime of a process, in clock ticks.
pub fn cpu_ticks(pid: i32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
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
