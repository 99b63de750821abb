//! Interop: programs no one here wrote, written for systemd socket activation, run unchanged as
//! multinode workers. Each test serves real HTTP on multinode's loopback socket and checks that
//! the answers come from the workers multinode started (several of them), so a program that
//! ignored the inherited socket and bound its own would fail.
//!
//! - `listenfd` crate (tests/workers mn-listenfd): `ListenFd::from_env().take_tcp_listener(0)`.
//! - `sd-notify` crate (mn-sdnotify): `listen_fds_with_names()` and `READY=1` readiness under
//!   `--ready notify`, through a rolling reload.
//! - gunicorn and uvicorn from PyPI, from the venv `.ci/interop-setup` makes at
//!   target/interop-venv (override with MULTINODE_INTEROP_VENV). Without it these tests say so
//!   and skip, except under CI (CI=true), whose job it is to create it.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;

/// Collects answers until `want` distinct pids have answered. Each round holds one connection
/// open with its request unsent while a second connection makes a full request: a worker that
/// serves one connection at a time and took the first is busy, so the second must reach another
/// worker. Then the held request is sent too. `pid_of` reads the answering pid from a body.
/// Returns every (pid, body) seen; panics at the deadline with what it saw.
fn answers_from_distinct_pids(
    addr: SocketAddr,
    want: usize,
    pid_of: impl Fn(&str) -> Option<i32>,
) -> Vec<(i32, String)> {
    let end = Instant::now() + DEADLINE;
    let mut seen: Vec<(i32, String)> = Vec::new();
    let mut errors = Vec::new();
    loop {
        let distinct: BTreeSet<i32> = seen.iter().map(|(p, _)| *p).collect();
        if distinct.len() >= want {
            return seen;
        }
        if Instant::now() > end {
            panic!("wanted answers from {want} distinct pids; got {seen:?}; errors: {errors:?}");
        }
        let round = || -> std::io::Result<Vec<String>> {
            let mut held = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
            held.set_read_timeout(Some(Duration::from_secs(30)))?;
            let (st, first) = http_get(addr, "/")?;
            assert_eq!(st, 200, "status of {first:?}");
            write!(
                held,
                "GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
            )?;
            let mut resp = String::new();
            held.read_to_string(&mut resp)?;
            let (head, second) = resp
                .split_once("\r\n\r\n")
                .ok_or_else(|| std::io::Error::other(format!("bad response {resp:?}")))?;
            assert!(head.starts_with("HTTP/1.1 200"), "held answer: {resp:?}");
            Ok(vec![first, second.to_string()])
        };
        match round() {
            Ok(bodies) => {
                for b in bodies {
                    let pid = pid_of(&b).unwrap_or_else(|| panic!("no pid in answer {b:?}"));
                    seen.push((pid, b));
                }
            }
            // A connection the kernel queued on a worker that is being replaced can be
            // reset; that is not what these tests check. Retry, and report it on timeout.
            Err(e) => {
                errors.push(e.to_string());
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// `key=<number>` in an answer body.
fn field(body: &str, key: &str) -> Option<i32> {
    body.split_whitespace()
        .find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

#[test]
fn listenfd_crate_worker() {
    let mn = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--",
        worker_bin("mn-listenfd").to_str().unwrap(),
    ]);
    let addr = mn.tcp_addr("listen0");
    let workers = mn.wait_started(2);
    // listenfd wrapped fd 3 and found it bound where multinode said (it exits otherwise).
    for pid in &workers {
        let want = format!("mn-listenfd pid={pid} serving {addr}");
        mn.wait_output(|e| e.pid == Some(*pid) && e.msg == want);
    }
    let answers = answers_from_distinct_pids(addr, 2, |b| {
        assert!(b.starts_with("listenfd pid="), "answer {b:?}");
        field(b, "pid")
    });
    for (pid, body) in &answers {
        assert!(
            workers.contains(pid),
            "answer {body:?} from pid {pid}, not one of the workers {workers:?}"
        );
    }
}

#[test]
fn sd_notify_crate_readiness_and_reload() {
    let scratch = Scratch::new("sdnotify");
    let gate = scratch.path("gate");
    let mn = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--",
        worker_bin("mn-sdnotify").to_str().unwrap(),
        "--gate",
        gate.to_str().unwrap(),
        "--delay",
        "1000",
    ]);
    let addr = mn.tcp_addr("listen0");
    let gen1 = mn.wait_started(2);
    // Both workers took their socket through sd_listen_fds semantics (LISTEN_PID is their own
    // pid, LISTEN_FDNAMES names it) and now hold back READY=1 until the gate opens.
    for pid in &gen1 {
        let want = format!("mn-sdnotify pid={pid} got listen0 (fd 3); preparing");
        mn.wait_output(|e| e.pid == Some(*pid) && e.msg == want);
    }
    let early = mn.events("ready");
    assert!(
        early.is_empty(),
        "under --ready notify no worker may count as ready before it sent READY=1: {early:?}"
    );
    std::fs::write(&gate, "").unwrap();
    for pid in &gen1 {
        mn.wait_event("ready", |e| {
            e.pid == Some(*pid) && e.via() == Some("notify")
        });
    }
    let answers = answers_from_distinct_pids(addr, 2, |b| field(b, "pid"));
    for (pid, body) in &answers {
        assert!(gen1.contains(pid), "answer {body:?} not from {gen1:?}");
        assert!(body.contains("name=listen0"), "LISTEN_FDNAMES: {body:?}");
    }

    // Rolling reload: each new worker again takes ~1 s to send READY=1, and the old worker
    // of its slot may be drained only after that.
    mn.signal(libc::SIGHUP);
    mn.wait_event("reloaded", |e| e.why() == Some("SIGHUP"));
    let events = mn.all_events();
    let started = mn.events("started");
    let gen2: Vec<i32> = mn.generation_pids(2).into_iter().collect();
    assert_eq!(gen2.len(), 2, "two new workers; output:\n{}", mn.output());
    let slot_of = |pid: i32| {
        started
            .iter()
            .find(|e| e.pid == Some(pid))
            .and_then(|e| e.slot)
    };
    for new in &gen2 {
        let slot = slot_of(*new).unwrap();
        let old = gen1
            .iter()
            .find(|&&p| slot_of(p) == Some(slot))
            .copied()
            .unwrap_or_else(|| panic!("no first-generation worker in slot {slot}"));
        let index = |pred: &dyn Fn(&Event) -> bool| events.iter().find(|e| pred(e)).map(|e| e.seq);
        let ready = index(&|e| e.is("ready") && e.pid == Some(*new) && e.via() == Some("notify"));
        let replaced = index(&|e| e.is("draining") && e.pid == Some(old));
        let (Some(ready), Some(replaced)) = (ready, replaced) else {
            panic!(
                "slot {slot}: want READY=1 from {new} and {old} replaced; output:\n{}",
                mn.output()
            );
        };
        assert!(
            ready < replaced,
            "slot {slot}: old worker {old} drained before its replacement {new} sent READY=1; output:\n{}",
            mn.output()
        );
    }
    for old in &gen1 {
        assert!(
            eventually(DEADLINE, || !alive(*old)),
            "old worker {old} still running; output:\n{}",
            mn.output()
        );
    }
    let answers = answers_from_distinct_pids(addr, 2, |b| field(b, "pid"));
    for (pid, body) in &answers {
        assert!(
            gen2.contains(pid),
            "after the reload {body:?} not from {gen2:?}"
        );
    }
}

/// The interop venv; when it is missing, the test is reported skipped (a failure under CI).
fn venv(program: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("MULTINODE_INTEROP_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv"),
        PathBuf::from,
    );
    let bin = dir.join("bin").join(program);
    if bin.exists() {
        return Some(dir);
    }
    let why = format!(
        "{} not found: run .ci/interop-setup (it creates the venv with gunicorn and uvicorn)",
        bin.display()
    );
    skip(&why);
    None
}

/// `serve` arguments that let the workers run programs from `venv`.
///
/// As root, multinode drops itself and its workers to `nobody`, who must be able to reach the
/// venv. The checkout (and so target/) may sit under a directory nobody cannot enter, e.g.
/// /root; then the workers stay root. The point of these tests is the worker protocol; the
/// privilege drop is tested elsewhere (and still is here whenever the venv is reachable).
fn user_args(venv: &Path) -> Vec<&'static str> {
    if !is_root() || reachable_by_others(venv) {
        return vec![];
    }
    eprintln!(
        "note: nobody cannot reach {}; running these workers as root",
        venv.display()
    );
    vec!["--user", "root"]
}

/// Whether every directory from / down to `p` (itself included) is searchable by others.
fn reachable_by_others(p: &Path) -> bool {
    let Ok(p) = p.canonicalize() else {
        return false;
    };
    p.ancestors().all(|a| {
        std::fs::metadata(a).is_ok_and(|m| m.is_dir() && m.permissions().mode() & 0o001 != 0)
    })
}

/// A world-readable app file in `scratch` (a /tmp directory every user can enter).
fn app_file(scratch: &Scratch, name: &str, text: &str) {
    write(&scratch.path(name), text);
}

/// `multinode serve <args>` run from `dir` (the workers inherit it as their working directory,
/// and nobody may not be able to enter ours).
fn serve_in(dir: &Path, args: &[&str]) -> Multinode {
    let mut cmd = serve_command(args);
    cmd.current_dir(dir);
    Multinode::spawn(cmd)
}

const WSGI_APP: &str = r#"import os


def app(environ, start_response):
    body = ("gunicorn pid=%d ppid=%d\n" % (os.getpid(), os.getppid())).encode()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
"#;

const ASGI_APP: &str = r#"import os


async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = ("uvicorn pid=%d\n" % os.getpid()).encode()
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
"#;

/// gunicorn adopts the inherited socket (its systemd support: LISTEN_FDS when LISTEN_PID is its
/// own pid), so it gets no --bind. Each multinode worker is a gunicorn arbiter with one sync
/// worker process of its own; the app answers with that process's pid and parent pid.
/// gunicorn also reports READY=1 on NOTIFY_SOCKET once booted, so `--ready notify` works.
#[test]
fn gunicorn() {
    let Some(venv) = venv("gunicorn") else { return };
    let scratch = Scratch::new("gunicorn");
    app_file(&scratch, "pidapp.py", WSGI_APP);
    let gunicorn = venv.join("bin/gunicorn");
    let mut args = vec!["-w", "2", "-l", "127.0.0.1:0", "--ready", "notify"];
    args.extend(user_args(&venv));
    args.extend([
        "--",
        gunicorn.to_str().unwrap(),
        "-w",
        "1",
        // gunicorn >= 24 opens a control socket at ~/.gunicorn/gunicorn.ctl by default: the
        // arbiters of all slots would fight over one path (and nobody's home does not exist).
        "--no-control-socket",
        "--chdir",
        scratch.0.to_str().unwrap(),
        "pidapp:app",
    ]);
    let mn = serve_in(&scratch.0, &args);
    let addr = mn.tcp_addr("listen0");
    let arbiters = mn.wait_started(2);
    for pid in &arbiters {
        // gunicorn says where it listens: multinode's socket, not its default 127.0.0.1:8000.
        let listening = format!("[INFO] Listening at: http://{addr} ({pid})");
        mn.wait_output(|e| e.pid == Some(*pid) && e.msg.contains(&listening));
        mn.wait_event("ready", |e| {
            e.pid == Some(*pid) && e.via() == Some("notify")
        });
    }
    let answers = answers_from_distinct_pids(addr, 2, |b| field(b, "pid"));
    let mut gen1_procs = BTreeSet::new();
    for (pid, body) in &answers {
        let ppid = field(body, "ppid").unwrap_or_else(|| panic!("no ppid in {body:?}"));
        assert!(
            arbiters.contains(&ppid),
            "answer {body:?}: its parent {ppid} is not a multinode worker {arbiters:?}"
        );
        gen1_procs.insert(*pid);
    }

    // A rolling reload replaces the arbiters; their own worker processes go with them.
    mn.signal(libc::SIGHUP);
    mn.wait_event("reloaded", |e| e.why() == Some("SIGHUP"));
    let gen2: Vec<i32> = mn.generation_pids(2).into_iter().collect();
    assert_eq!(gen2.len(), 2, "output:\n{}", mn.output());
    for pid in arbiters.iter().chain(&gen1_procs) {
        assert!(
            eventually(DEADLINE, || !alive(*pid)),
            "first-generation gunicorn process {pid} still running; output:\n{}",
            mn.output()
        );
    }
    let answers = answers_from_distinct_pids(addr, 2, |b| field(b, "pid"));
    for (_, body) in &answers {
        let ppid = field(body, "ppid").unwrap();
        assert!(gen2.contains(&ppid), "{body:?} not under {gen2:?}");
    }
}

/// uvicorn `--fd 3`: a single-process ASGI server that serves on the inherited socket.
#[test]
fn uvicorn_fd_3() {
    let Some(venv) = venv("uvicorn") else { return };
    let scratch = Scratch::new("uvicorn");
    app_file(&scratch, "asgiapp.py", ASGI_APP);
    let uvicorn = venv.join("bin/uvicorn");
    let mut args = vec!["-w", "2", "-l", "127.0.0.1:0"];
    args.extend(user_args(&venv));
    args.extend([
        "--",
        uvicorn.to_str().unwrap(),
        "--fd",
        "3",
        "--app-dir",
        scratch.0.to_str().unwrap(),
        "asgiapp:app",
    ]);
    let mn = serve_in(&scratch.0, &args);
    let addr = mn.tcp_addr("listen0");
    let workers = mn.wait_started(2);
    let (ip, port) = (addr.ip(), addr.port());
    for pid in &workers {
        let running = format!("Uvicorn running on socket ('{ip}', {port})");
        mn.wait_output(|e| e.pid == Some(*pid) && e.msg.contains(&running));
    }
    let answers = answers_from_distinct_pids(addr, 2, |b| {
        assert!(b.starts_with("uvicorn pid="), "answer {b:?}");
        field(b, "pid")
    });
    for (pid, body) in &answers {
        assert!(
            workers.contains(pid),
            "answer {body:?} from {pid}, not a worker {workers:?}"
        );
    }
}
