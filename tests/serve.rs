//! `multinode serve` (issue 2): N workers of any program accept on the sockets the supervisor
//! bound, get the systemd socket-activation contract, and run as nobody. Every test runs the
//! real binary with real worker processes on loopback sockets.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::io::{Read, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

/// The `key=value` fields of a probe line (`probe pid=.. listen_pid=.. ..`), plus `slot` and
/// `prefix_pid`: the worker multinode says printed it.
fn probe_fields(line: &Event) -> HashMap<String, String> {
    let rest = line.msg.strip_prefix("probe ").expect("a probe line");
    let mut f: HashMap<String, String> = rest
        .split_whitespace()
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    f.insert("slot".into(), line.slot.unwrap().to_string());
    f.insert("prefix_pid".into(), line.pid.unwrap().to_string());
    f
}

/// Waits for `n` probe lines and parses them.
fn probes(m: &Multinode, n: usize) -> Vec<HashMap<String, String>> {
    m.wait_events(OUTPUT, n, |e| e.msg.starts_with("probe pid="))
        .iter()
        .map(probe_fields)
        .collect()
}

/// The `socket:[inode]` targets of a process's open fds.
fn socket_links(pid: i32) -> BTreeSet<String> {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .map(|t| t.to_string_lossy().into_owned())
        .filter(|t| t.starts_with("socket:"))
        .collect()
}

/// `GET /` answered 200 with a hello body; returns the body.
fn get_ok(addr: std::net::SocketAddr) -> String {
    let (status, body) = http_get(addr, "/").unwrap_or_else(|e| panic!("GET http://{addr}/: {e}"));
    assert_eq!(status, 200, "GET http://{addr}/: {body}");
    body
}

/// Asserts a process runs as nobody/nogroup in every uid/gid slot with no supplementary groups.
fn assert_nobody(pid: i32, what: &str) {
    let uid = status_field(pid, "Uid").unwrap_or_else(|| panic!("{what} {pid} is gone"));
    let gid = status_field(pid, "Gid").unwrap();
    let groups = status_field(pid, "Groups").unwrap();
    let all = |v: &str| v.split_whitespace().all(|x| x == "65534");
    assert!(
        all(&uid),
        "{what} {pid}: Uid {uid:?}, want 65534 (nobody) in every field"
    );
    assert!(
        all(&gid),
        "{what} {pid}: Gid {gid:?}, want 65534 in every field"
    );
    assert_eq!(groups, "", "{what} {pid}: supplementary groups {groups:?}");
}

#[test]
fn four_hello_workers_share_the_load() {
    let m = Multinode::serve_hello("4", &[]);
    let addr = m.tcp_addr("listen0");
    let started: BTreeSet<i32> = m.wait_started(4).into_iter().collect();
    assert_eq!(started.len(), 4, "four distinct workers");
    let mut answered_by = BTreeSet::new();
    for i in 0..200 {
        let (status, body) = http_get(addr, "/").unwrap_or_else(|e| panic!("request {i}: {e}"));
        assert_eq!(status, 200, "request {i}: {body}");
        let pid = body_pid(&body).unwrap_or_else(|| panic!("request {i}: no pid in {body:?}"));
        assert!(
            started.contains(&pid),
            "request {i} answered by {pid}, not one of the workers {started:?}"
        );
        answered_by.insert(pid);
    }
    assert!(
        answered_by.len() >= 2,
        "200 requests all answered by {answered_by:?}: the kernel should spread them"
    );
}

#[test]
fn probe_sees_the_worker_contract() {
    let scratch = Scratch::new("contract");
    let sock = scratch.path("admin.sock");
    let probe = worker_bin("mn-probe");
    let unix = format!("admin=unix:{}", sock.display());
    let m = Multinode::serve(&[
        "-w",
        "3",
        "-l",
        "web=127.0.0.1:0",
        "-l",
        &unix,
        "--",
        probe.to_str().unwrap(),
    ]);
    m.tcp_addr("web");
    let started: BTreeSet<i32> = m.wait_started(3).into_iter().collect();
    let lines = probes(&m, 3);
    let supervisor_sockets = socket_links(m.pid);
    let mut ids = BTreeSet::new();
    for f in &lines {
        let pid: i32 = f["pid"].parse().unwrap();
        assert!(started.contains(&pid), "probe {pid} not a started worker");
        assert_eq!(f["prefix_pid"], f["pid"], "output prefix names the worker");
        assert_eq!(
            f["listen_pid"], f["pid"],
            "LISTEN_PID must be the worker's own pid"
        );
        assert_eq!(f["listen_fds"], "2");
        assert_eq!(f["listen_fdnames"], "web:admin");
        assert_eq!(f["workers"], "3", "MULTINODE_WORKERS");
        assert_eq!(f["worker_id"], f["slot"], "MULTINODE_WORKER_ID is the slot");
        ids.insert(f["worker_id"].clone());
        assert_eq!(
            f["fds"], "0,1,2,3,4",
            "a worker holds stdio and the two sockets, nothing else"
        );
        assert_eq!(f["sdk"], "web:tcp,admin:unix", "what listeners() returned");
        // The sockets it holds are the supervisor's own listening sockets (same inode). The
        // probe keeps only its TCP listener once the SDK has taken them over.
        let held = socket_links(pid);
        assert!(!held.is_empty(), "worker {pid} holds no socket");
        assert!(
            held.is_subset(&supervisor_sockets),
            "worker {pid} holds sockets {held:?}, not all the supervisor's \
             {supervisor_sockets:?}"
        );
    }
    let want: BTreeSet<String> = ["0", "1", "2"].iter().map(|s| s.to_string()).collect();
    assert_eq!(ids, want, "MULTINODE_WORKER_ID 0..N-1, each once");
}

#[test]
fn sdk_listeners_under_multinode() {
    // Unix first, TCP second: listeners() must name each socket and tell its kind, and the
    // TcpListener it returns must really accept (the probe answers on it).
    let scratch = Scratch::new("sdk");
    let sock = scratch.path("ctl.sock");
    let probe = worker_bin("mn-probe");
    let unix = format!("ctl=unix:{}", sock.display());
    let m = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        &unix,
        "-l",
        "api=127.0.0.1:0",
        "--",
        probe.to_str().unwrap(),
    ]);
    let addr = m.tcp_addr("api");
    let lines = probes(&m, 2);
    for f in &lines {
        assert_eq!(f["sdk"], "ctl:unix,api:tcp", "probe {}", f["pid"]);
    }
    let pids: BTreeSet<String> = lines.iter().map(|f| f["pid"].clone()).collect();
    // The probe answers after one read(2), so the request goes out in one write.
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the SDK's TcpListener");
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).expect("the probe's answer");
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp:?}");
    let body = resp.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    let who = body.trim().strip_prefix("probe pid=").unwrap_or("");
    assert!(
        pids.contains(who),
        "answered by {body:?}, not a probe {pids:?}"
    );
}

#[test]
fn named_tcp_and_unix_sockets_both_served() {
    let scratch = Scratch::new("named");
    let sock = scratch.path("admin.sock");
    let hello = worker_bin("hello");
    let unix = format!("admin=unix:{}", sock.display());
    let m = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "web=127.0.0.1:0",
        "-l",
        &unix,
        "--",
        hello.to_str().unwrap(),
    ]);
    let addr = m.tcp_addr("web");
    assert_eq!(m.addr("admin"), format!("unix:{}", sock.display()));
    let started: BTreeSet<i32> = m.wait_started(2).into_iter().collect();
    let body = get_ok(addr);
    assert!(started.contains(&body_pid(&body).unwrap()), "{body}");
    let (status, body) = http_get_unix(&sock, "/").expect("GET over the Unix socket");
    assert_eq!(status, 200, "{body}");
    assert!(started.contains(&body_pid(&body).unwrap()), "{body}");
}

#[test]
fn ipv6_loopback_served() {
    let hello = worker_bin("hello");
    let m = Multinode::serve(&["-w", "2", "-l", "[::1]:0", "--", hello.to_str().unwrap()]);
    let addr = m.tcp_addr("listen0");
    assert!(addr.is_ipv6() && addr.ip().is_loopback(), "bound {addr}");
    assert_ne!(addr.port(), 0);
    let body = get_ok(addr);
    assert!(body.starts_with("process="), "{body}");
}

#[test]
fn privileged_port_as_root_served_by_nobody() {
    if !require(
        is_root(),
        "binding a port below 1024 and dropping to nobody needs root",
    ) {
        return;
    }
    let hello = worker_bin("hello");
    let port = free_low_port();
    let listen = format!("127.0.0.1:{port}");
    let m = Multinode::serve(&["-w", "2", "-l", &listen, "--", hello.to_str().unwrap()]);
    let addr = m.tcp_addr("listen0");
    assert_eq!(addr.port(), port);
    let pids = m.wait_started(2);
    m.wait_event("privileges", |e| e.str("user") == Some("nobody"));
    let body = get_ok(addr);
    assert!(pids.contains(&body_pid(&body).unwrap()), "{body}");
    for pid in &pids {
        assert_nobody(*pid, "worker");
    }
    // The supervisor itself dropped root for good (real, effective, saved, fs uid).
    let uid = status_field(m.pid, "Uid").unwrap();
    assert!(
        uid.split_whitespace().all(|u| u != "0"),
        "supervisor still has uid 0 somewhere: Uid {uid:?}"
    );
    assert_nobody(m.pid, "supervisor");
}

#[test]
fn unix_socket_file_owned_by_nobody_and_removed_on_exit() {
    let scratch = Scratch::new("sockfile");
    let sock = scratch.path("app.sock");
    let hello = worker_bin("hello");
    let unix = format!("unix:{}", sock.display());
    let mut m = Multinode::serve(&["-w", "2", "-l", &unix, "--", hello.to_str().unwrap()]);
    m.addr("listen0");
    m.wait_started(2);
    let meta = std::fs::metadata(&sock).expect("socket file exists while serving");
    assert!(
        meta.file_type().is_socket(),
        "{} is not a socket",
        sock.display()
    );
    assert_eq!(
        meta.permissions().mode() & 0o7777,
        0o660,
        "default --socket-mode"
    );
    if is_root() {
        assert_eq!(meta.uid(), 65534, "socket file owner should be nobody");
        assert_eq!(
            meta.gid(),
            65534,
            "socket file group should be nobody's (nogroup)"
        );
    } else {
        skip(
            "not root: the socket file's owner is not checked (it belongs to whoever runs multinode)",
        );
    }
    let (status, _) = http_get_unix(&sock, "/").expect("GET over the Unix socket");
    assert_eq!(status, 200);
    m.signal(libc::SIGTERM);
    let st = m.wait_exit();
    assert_eq!(st.code(), Some(0), "output:\n{}", m.output());
    assert!(
        !sock.exists(),
        "{} left behind after SIGTERM; output:\n{}",
        sock.display(),
        m.output()
    );
}

/// The first of `candidates` that exists and is executable by others (workers run as nobody).
fn usable_interpreter(candidates: &[PathBuf]) -> Option<PathBuf> {
    candidates.iter().find_map(|p| {
        let meta = std::fs::metadata(p).ok()?;
        (meta.is_file() && meta.permissions().mode() & 0o001 != 0).then(|| p.clone())
    })
}

/// Runs an interpreted example under multinode: 2 workers answer on TCP, then SIGTERM drains
/// them and multinode exits 0.
fn serve_example(interpreter: &Path, script: &str, banner: &str) {
    let script = repo_file(script);
    let mut m = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--",
        interpreter.to_str().unwrap(),
        script.to_str().unwrap(),
    ]);
    let addr = m.tcp_addr("listen0");
    let pids: BTreeSet<i32> = m.wait_started(2).into_iter().collect();
    // The examples print their banner once they serve.
    m.wait_events(OUTPUT, 2, |e| e.msg.contains(banner));
    for _ in 0..10 {
        let body = get_ok(addr);
        let pid = body_pid(&body).unwrap_or_else(|| panic!("no pid in {body:?}"));
        assert!(
            pids.contains(&pid),
            "answered by {pid}, not a worker {pids:?}"
        );
        assert!(
            body.contains("worker=0") || body.contains("worker=1"),
            "{body}"
        );
    }
    m.signal(libc::SIGTERM);
    let st = m.wait_exit();
    assert_eq!(st.code(), Some(0), "output:\n{}", m.output());
}

#[test]
fn python_example_served() {
    let python = usable_interpreter(&[PathBuf::from("/usr/bin/python3")]);
    if !require(python.is_some(), "/usr/bin/python3 is not installed") {
        return;
    }
    let python = python.unwrap();
    serve_example(&python, "examples/python/hello.py", "hello.py: worker");
}

#[test]
fn node_example_served() {
    let mut candidates = vec![PathBuf::from("/usr/bin/node")];
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("node")));
    }
    let node = usable_interpreter(&candidates);
    if !require(
        node.is_some(),
        "no node executable by others found (/usr/bin/node or PATH)",
    ) {
        return;
    }
    let node = node.unwrap();
    serve_example(&node, "examples/node/hello.js", "hello.js: worker");
}

#[test]
fn not_root_runs_as_is() {
    if !require(
        is_root(),
        "needs root to start multinode as nobody through setpriv",
    ) {
        return;
    }
    // The copy worker_bin() made, which nobody can execute wherever the checkout is.
    let multinode = worker_bin("multinode");
    // Its own TMPDIR: the control directory it makes there (multinode-65534, 0700) never
    // meets one another run left in /tmp.
    let tmp = Scratch::new("not-root");
    let h = hello();
    let mut cmd = as_nobody(
        &multinode,
        &serve_args(&["-w", "2", "-l", "127.0.0.1:0", "--", &h]),
    );
    cmd.env_remove("XDG_RUNTIME_DIR").env("TMPDIR", &tmp.0);
    let m = Multinode::spawn(cmd);
    let addr = m.tcp_addr("listen0");
    let pids = m.wait_started(2);
    let body = get_ok(addr);
    assert!(pids.contains(&body_pid(&body).unwrap()), "{body}");
    assert_nobody(m.pid, "supervisor (setpriv execs it)");
    for pid in &pids {
        assert_nobody(*pid, "worker");
    }
    assert!(
        m.events("privileges").is_empty(),
        "no --user and not root: nothing to drop; output:\n{}",
        m.output()
    );
}

/// README's main command, as printed there.
const README_COMMAND: &str = "./target/release/multinode serve --workers 4 --listen 127.0.0.1:8080 -- ./target/release/hello";

#[test]
fn readme_main_command_works() {
    // README's command with the binaries of this build (target/<profile>/) and a free port
    // instead of 8080: 4 workers, the documented answer, Ctrl-C (SIGINT) stops it cleanly.
    // Its output is the text format a user sees (no --log-format): read as such, on purpose.
    let hello = worker_bin("hello");
    let mut cmd = Command::new(multinode_bin());
    cmd.args(["serve", "--name", &unique_name()]).args([
        "--workers",
        "4",
        "--listen",
        "127.0.0.1:0",
        "--",
        hello.to_str().unwrap(),
    ]);
    let mut m = Multinode::spawn(cmd);
    // `multinode | listening on listen0 127.0.0.1:PORT (fd 3)`
    let line = m.wait_line("the listening line", |l| {
        l.starts_with("multinode | listening on listen0 ")
    });
    let addr: std::net::SocketAddr = line
        .split_whitespace()
        .nth(5)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    // `multinode | worker.N[PID] started`, one per worker.
    let started = |l: &str| l.starts_with("multinode | worker.") && l.contains("] started");
    assert!(
        eventually(DEADLINE, || m.lines().iter().filter(|l| started(l)).count()
            >= 4),
        "four workers started; output:\n{}",
        m.output()
    );
    let pids: Vec<i32> = m
        .lines()
        .iter()
        .filter(|l| started(l))
        .map(|l| worker_pid(l).unwrap())
        .collect();
    let body = get_ok(addr);
    // process=<pid>; worker=<id>; reqno=<n>
    let parts: Vec<&str> = body.trim().split("; ").collect();
    assert_eq!(parts.len(), 3, "{body:?}");
    let pid: i32 = parts[0].strip_prefix("process=").unwrap().parse().unwrap();
    assert!(pids.contains(&pid), "{body:?}");
    let id: u32 = parts[1].strip_prefix("worker=").unwrap().parse().unwrap();
    assert!(id < 4, "{body:?}");
    let n: u64 = parts[2].strip_prefix("reqno=").unwrap().parse().unwrap();
    assert!(n >= 1, "{body:?}");
    m.signal(libc::SIGINT);
    let st = m.wait_exit();
    assert_eq!(st.code(), Some(0), "output:\n{}", m.output());
    for pid in pids {
        assert!(
            eventually(DEADLINE, || !alive(pid)),
            "worker {pid} outlived multinode"
        );
    }
}

#[test]
fn readme_documents_the_main_command() {
    let readme = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
    let text = std::fs::read_to_string(&readme)
        .unwrap_or_else(|e| panic!("{}: {e} (README.md is required)", readme.display()));
    assert!(
        text.contains(README_COMMAND),
        "README.md should show the main command `{README_COMMAND}`"
    );
}

/// A program that binds its own port instead of using fd 3 gets no connection; multinode says
/// so once it is ready, naming the address and the fix. One that uses fd 3 gets no warning.
#[test]
fn a_worker_listening_on_its_own_port_is_named() {
    let m = Multinode::serve(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--",
        worker_bin("mn-selfbind").to_str().unwrap(),
    ]);
    let said = m.wait_output(|e| e.msg.contains("mn-selfbind listening on"));
    let addr = said.msg.rsplit(' ').next().unwrap().to_string();
    let warn = m.wait_event("foreign-socket", |_| true);
    assert_eq!(warn.str("addr"), Some(addr.as_str()), "{warn}");
    assert!(warn.msg.contains("fd 3"), "{warn}");

    let h = Multinode::serve_hello("1", &[]);
    h.wait_ready(1);
    let addr = h.tcp_addr("listen0");
    let (code, _) = http_get(addr, "/").unwrap();
    assert_eq!(code, 200);
    assert!(h.events("foreign-socket").is_empty(), "{}", h.output());
}
