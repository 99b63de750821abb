//! Upgrading multinode in place (issue 12), with real processes: a copy of the multinode
//! binary is installed in a directory of its own and started from there; the "new version" is
//! another copy moved over that path (a new inode, as a package upgrade leaves it), or a
//! broken binary given with `--binary`. The supervisor must keep its pid and every worker,
//! and no request may fail, whether the upgrade works or is rolled back.
//!
//! The crashes while restoring use the debug builds' failpoints (`MULTINODE_FAILPOINT`, see
//! README "Upgrading multinode"), set by a wrapper script for the new image only; they are
//! skipped in release builds, which ignore the variable.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// Scripts and failing wrappers beside the installed copy (see [`Install`] in common).
impl Install {
    /// An executable script in the directory.
    fn script(&self, name: &str, text: &str) -> PathBuf {
        let p = self.dir.join(name);
        write_mode(&p, text, 0o755);
        p
    }

    /// A wrapper that answers the check as the real multinode, then runs it as the new image
    /// with debug failpoint `fp` (see the module doc).
    fn failing(&self, fp: &str) -> PathBuf {
        let text = format!(
            "#!/bin/sh\ncase \"$1\" in __upgrade-check) ;; *) export MULTINODE_FAILPOINT={fp} ;; esac\nexec {} \"$@\"\n",
            self.dir.join("real").display()
        );
        if !self.dir.join("real").exists() {
            std::fs::copy(multinode_bin(), self.dir.join("real")).unwrap();
            set_mode(&self.dir.join("real"), 0o755);
        }
        self.script(&format!("fp-{}", fp.replace('=', "-")), &text)
    }
}

/// `multinode upgrade --name NAME [--binary B]`.
fn upgrade(name: &str, binary: Option<&Path>) -> std::process::Output {
    let mut args = vec!["upgrade", "--name", name];
    let b;
    if let Some(p) = binary {
        b = p.display().to_string();
        args.extend(["--binary", &b]);
    }
    mn(&args)
}

fn have_wrk() -> bool {
    if std::env::var_os("MULTINODE_TEST_NO_WRK").is_some() {
        return false; // to run the clients of our own instead
    }
    Command::new("wrk")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// Requests on new connections until stopped: wrk where installed (`.ci/run` installs it),
/// else client threads of our own. Bounded in time; loopback only. SIGKILLed on drop.
enum Load {
    Wrk(Option<Child>),
    Threads {
        stop: Arc<AtomicBool>,
        sent: Arc<AtomicU64>,
        failures: Arc<Mutex<Vec<String>>>,
        threads: Vec<std::thread::JoinHandle<()>>,
    },
}

/// What a load saw: requests answered and failed, and the first failures.
struct Seen {
    sent: u64,
    failed: u64,
    detail: String,
}

impl Load {
    fn start(addr: SocketAddr, secs: u64) -> Load {
        if have_wrk() {
            let child = Command::new("wrk")
                .args(["-t2", "-c8", &format!("-d{secs}s"), "--timeout", "10s"])
                .args(["-H", "Connection: close"])
                .arg(format!("http://{addr}/"))
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("start wrk");
            return Load::Wrk(Some(child));
        }
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let until = Instant::now() + Duration::from_secs(secs);
        let threads = (0..4)
            .map(|_| {
                let (stop, sent, failures) = (stop.clone(), sent.clone(), failures.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::SeqCst) && Instant::now() < until {
                        match http_get(addr, "/") {
                            Ok((200, _)) => {}
                            Ok((st, body)) => failures.lock().unwrap().push(format!("{st} {body}")),
                            Err(e) => failures.lock().unwrap().push(e.to_string()),
                        }
                        sent.fetch_add(1, Ordering::SeqCst);
                    }
                })
            })
            .collect();
        Load::Threads {
            stop,
            sent,
            failures,
            threads,
        }
    }

    /// Waits for the end of the load and says what it saw.
    fn finish(mut self) -> Seen {
        match &mut self {
            Load::Wrk(child) => {
                let out = child.take().unwrap().wait_with_output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let number = |line: &str, key: &str| -> u64 {
                    line.split(key)
                        .nth(1)
                        .and_then(|r| r.trim().split(|c: char| !c.is_ascii_digit()).next())
                        .and_then(|n| n.parse().ok())
                        .unwrap_or(0)
                };
                let mut seen = Seen {
                    sent: 0,
                    failed: 0,
                    detail: text.clone(),
                };
                for line in text.lines().map(str::trim) {
                    if line.contains("requests in") {
                        seen.sent = line.split_whitespace().next().unwrap().parse().unwrap();
                    }
                    if line.starts_with("Socket errors:") {
                        seen.failed += ["connect", "read", "write", "timeout"]
                            .iter()
                            .map(|k| number(line, k))
                            .sum::<u64>();
                    }
                    if line.starts_with("Non-2xx or 3xx responses:") {
                        seen.failed += number(line, ":");
                    }
                }
                assert!(out.status.success(), "wrk failed: {text}");
                seen
            }
            Load::Threads {
                stop,
                sent,
                failures,
                threads,
            } => {
                for t in threads.drain(..) {
                    t.join().unwrap();
                }
                stop.store(true, Ordering::SeqCst);
                let f = failures.lock().unwrap();
                Seen {
                    sent: sent.load(Ordering::SeqCst),
                    failed: f.len() as u64,
                    detail: f.iter().take(5).cloned().collect::<Vec<_>>().join("\n"),
                }
            }
        }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        match self {
            Load::Wrk(Some(c)) => {
                let _ = c.kill();
                let _ = c.wait();
            }
            Load::Threads { stop, .. } => stop.store(true, Ordering::SeqCst),
            Load::Wrk(None) => {}
        }
    }
}

/// The upgrade of `--workers 3` hello workers in a `mode` under load: same pid, the new file
/// runs, every worker kept, no request failed; then a reload and a stop work as ever.
fn upgrade_under_load(mode: &[&str]) {
    let inst = Install::new();
    let name = unique_name();
    let hello = hello();
    let mut args = vec!["-w", "3", "-l", "127.0.0.1:0", "--ready", "notify"];
    args.extend_from_slice(mode);
    args.extend(["--", hello.as_str()]);
    let mut m = inst.serve(&name, &args);
    let addr = m.tcp_addr("listen0");
    m.wait_ready(3);
    let before = status_pids(&name);
    assert_eq!(before.len(), 3, "{}", m.output());
    let old_exe = exe_ino(m.pid);
    let load = Load::start(addr, 5);
    std::thread::sleep(Duration::from_millis(1500));
    let new_ino = inst.replace();
    assert_ne!(new_ino, old_exe);
    let out = upgrade(&name, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stderr(&out),
        m.output()
    );
    assert!(
        stdout(&out).starts_with("upgraded: multinode "),
        "{}",
        stdout(&out)
    );
    let done = m.wait_event("upgraded", |_| true);
    assert_eq!(exe_ino(m.pid), new_ino, "/proc/PID/exe is the new file");
    assert!(alive(m.pid));
    assert_eq!(status_pids(&name), before, "every worker kept its pid");
    let seen = load.finish();
    eprintln!(
        "upgrade under load {mode:?}: {} requests, {} failed; the upgrade took {} ms",
        seen.sent,
        seen.failed,
        done.u64("took_ms").unwrap_or(0)
    );
    assert!(seen.sent > 0, "{}", seen.detail);
    assert_eq!(
        seen.failed,
        0,
        "failed requests:\n{}\n{}",
        seen.detail,
        m.output()
    );
    let status = status_json(&name);
    assert_eq!(status["upgrades"], 1);
    assert_eq!(status["binary"], inst.bin.display().to_string());

    // The adopted workers drain on a reload (exit 0), and the stop is clean.
    m.signal(libc::SIGHUP);
    m.wait_event("reloaded", |e| e.generation() == Some(2));
    for (_, pid) in &before {
        let e = m.wait_exited(*pid as i32);
        assert_eq!(e.code(), Some(0), "{e}");
    }
    m.signal(libc::SIGTERM);
    let st = m.wait_exit();
    assert_eq!(st.code(), Some(0), "{}", m.output());
}

#[test]
fn upgrade_in_shared_mode_under_load_keeps_pid_workers_and_requests() {
    upgrade_under_load(&[]);
}

#[test]
fn upgrade_in_reuseport_mode_under_load_keeps_pid_workers_and_requests() {
    upgrade_under_load(&["--balance", "reuseport"]);
}

#[test]
fn upgrade_in_route_mode_under_load_keeps_pid_workers_and_requests() {
    upgrade_under_load(&["--route", "least-conn"]);
}

/// Asserts a failed upgrade: exit 1, one error line naming `needle`, the stage logged, and
/// nothing changed (the pid, the executable, every worker).
#[track_caller]
fn assert_rolled_back(
    m: &Multinode,
    name: &str,
    out: &std::process::Output,
    stage: &str,
    needle: &str,
    exe: u64,
    pids: &[(u64, i64)],
) {
    assert_error(
        out,
        1,
        &[
            "upgrade failed",
            needle,
            "keeps running",
            "workers untouched",
        ],
    );
    m.wait_event("upgrade-failed", |e| {
        e.str("stage") == Some(stage) && e.str("reason").is_some_and(|r| r.contains(needle))
    });
    assert!(alive(m.pid));
    assert_eq!(exe_ino(m.pid), exe, "the old executable runs");
    assert_eq!(status_pids(name), pids, "every worker kept its pid");
}

#[test]
fn failed_upgrades_leave_the_old_image_serving() {
    let inst = Install::new();
    let name = unique_name();
    let hello = hello();
    let mut m = inst.serve(
        &name,
        &[
            "-w",
            "2",
            "-l",
            "127.0.0.1:0",
            "--ready",
            "notify",
            "--",
            &hello,
        ],
    );
    let addr = m.tcp_addr("listen0");
    m.wait_ready(2);
    let pids = status_pids(&name);
    let exe = exe_ino(m.pid);
    let load = Load::start(addr, 8);

    // A binary that fails its check: the old image never left.
    let broken = inst.script("broken", "#!/bin/sh\necho 'no such luck' >&2\nexit 1\n");
    let out = upgrade(&name, Some(&broken));
    assert_rolled_back(&m, &name, &out, "check", "exited with code 1", exe, &pids);
    assert!(stderr(&out).contains("no such luck"), "{}", stderr(&out));
    // Not a file at all: refused by the client, exit 2.
    let out = upgrade(&name, Some(&inst.dir.join("missing")));
    assert_error(&out, 2, &["--binary", "missing"]);
    if is_root() {
        // One the workers' user (multinode's own after the drop) may not execute, and one it
        // could have replaced: refused before anything runs.
        let private = inst.dir.join("private");
        std::fs::copy(multinode_bin(), &private).unwrap();
        set_mode(&private, 0o700);
        let out = upgrade(&name, Some(&private));
        assert_rolled_back(
            &m,
            &name,
            &out,
            "check",
            "not executable by uid",
            exe,
            &pids,
        );
        let open = Scratch::new("upgrade-writable");
        let planted = open.path("multinode");
        std::fs::copy(multinode_bin(), &planted).unwrap();
        set_mode(&planted, 0o755);
        let out = upgrade(&name, Some(&planted));
        assert_rolled_back(&m, &name, &out, "check", "writable by uid", exe, &pids);
    }

    if cfg!(debug_assertions) {
        // A new image that panics, crashes or finds a state format it does not know while
        // restoring: the old one comes back from the same state.
        let cases = [
            ("restore-panic", "panicked"),
            ("restore-segv", "SIGSEGV"),
            ("restore-exit", "exited before"),
            ("restore-format=99", "state format 99"),
        ];
        for (fp, needle) in cases {
            let out = upgrade(&name, Some(&inst.failing(fp)));
            assert_rolled_back(&m, &name, &out, "restore", needle, exe, &pids);
        }
    } else {
        skip("failpoints are compiled into debug builds only");
    }
    let seen = load.finish();
    eprintln!(
        "failed upgrades under load: {} requests, {} failed",
        seen.sent, seen.failed
    );
    assert!(seen.sent > 0, "{}", seen.detail);
    assert_eq!(
        seen.failed,
        0,
        "failed requests:\n{}\n{}",
        seen.detail,
        m.output()
    );
    // It still upgrades, and still stops cleanly.
    let out = upgrade(&name, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(status_pids(&name), pids);
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
}

#[test]
fn a_state_format_the_new_binary_does_not_read_is_refused_before_the_exec() {
    if !cfg!(debug_assertions) {
        skip("failpoints are compiled into debug builds only");
        return;
    }
    let inst = Install::new();
    let name = unique_name();
    let hello = hello();
    let mut cmd = Command::new(&inst.bin);
    cmd.args(serve_args(&[
        "--name",
        &name,
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--",
        &hello,
    ]))
    .env("MULTINODE_FAILPOINT", "state-format=99");
    let mut m = Multinode::spawn(cmd);
    let addr = m.tcp_addr("listen0");
    m.wait_ready(1);
    let pids = status_pids(&name);
    let exe = exe_ino(m.pid);
    inst.replace();
    let out = upgrade(&name, None);
    assert_rolled_back(&m, &name, &out, "check", "state format 99", exe, &pids);
    assert!(m.events("upgrade").is_empty(), "no exec was tried");
    assert_eq!(http_get(addr, "/").expect("still serving").0, 200);
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
}

/// The Prometheus sample `line_start` (a metric with its labels), as a number.
fn sample(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
}

#[test]
fn counters_go_on_across_an_upgrade() {
    let inst = Install::new();
    let name = unique_name();
    let hello = hello();
    let mut m = inst.serve(
        &name,
        &[
            "-w",
            "2",
            "-l",
            "127.0.0.1:0",
            "--route",
            "round-robin",
            "--ready",
            "notify",
            "--metrics",
            "127.0.0.1:0",
            "--",
            &hello,
        ],
    );
    let addr = m.tcp_addr("listen0");
    let metrics: SocketAddr = m
        .wait_event("metrics", |_| true)
        .str("addr")
        .unwrap()
        .parse()
        .unwrap();
    m.wait_ready(2);
    // A crash (restart cause `crash`), a reload, some routed connections.
    let victim = status_pids(&name)[0].1 as i32;
    kill(victim, libc::SIGKILL);
    m.wait_exited(victim);
    m.wait_started_in_slot(0, &[victim]);
    m.signal(libc::SIGHUP);
    m.wait_event("reloaded", |e| e.generation() == Some(2));
    for _ in 0..10 {
        assert_eq!(http_get(addr, "/").unwrap().0, 200);
    }
    let (_, before) = http_get(metrics, "/metrics").unwrap();
    let handed = sample(&before, "multinode_route_connections_total{slot=\"0\"}")
        + sample(&before, "multinode_route_connections_total{slot=\"1\"}");
    assert!(handed >= 10.0, "{before}");

    // SIGUSR2: the same upgrade, nobody waiting.
    inst.replace();
    m.signal(libc::SIGUSR2);
    m.wait_event("upgraded", |_| true);
    let st = status_json(&name);
    assert_eq!(st["reloads_ok"], 1, "{st}");
    assert_eq!(st["slots"][0]["restart_causes"]["crash"], 1, "{st}");
    assert_eq!(st["generation"], 2);
    let (_, after) = http_get(metrics, "/metrics").unwrap();
    assert_eq!(
        sample(&after, "multinode_reloads_total{outcome=\"ok\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &after,
            "multinode_slot_restarts_total{slot=\"0\",cause=\"crash\"}"
        ),
        1.0
    );
    let handed_after = sample(&after, "multinode_route_connections_total{slot=\"0\"}")
        + sample(&after, "multinode_route_connections_total{slot=\"1\"}");
    assert!(handed_after >= handed, "{handed} then {handed_after}");
    // And they go on counting.
    let victim = status_pids(&name)[0].1 as i32;
    kill(victim, libc::SIGKILL);
    m.wait_exited(victim);
    assert!(eventually(
        DEADLINE,
        || status_json(&name)["slots"][0]["restart_causes"]["crash"] == 2
    ));
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
}

#[test]
fn as_pid_1_of_a_pid_namespace_it_upgrades_and_stops_cleanly() {
    if !require(is_root(), "needs root for a PID namespace")
        || !require(
            Command::new("unshare").arg("--version").output().is_ok(),
            "unshare(1) is not installed (Debian package util-linux)",
        )
    {
        return;
    }
    let inst = Install::new();
    let name = unique_name();
    let hello = hello();
    let mut cmd = Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(&inst.bin)
        .args(serve_args(&[
            "--name",
            &name,
            "-w",
            "2",
            "-l",
            "127.0.0.1:0",
            "--ready",
            "notify",
            "--",
            &hello,
        ]));
    let mut m = Multinode::spawn(cmd);
    // The pids multinode prints are its namespace's.
    m.kill_workers = false;
    let addr = m.tcp_addr("listen0");
    m.wait_ready(2);
    let sup = pid_1_under(&m);
    let mut end = EndNamespace(Some(sup));
    let workers = children_of(sup);
    assert_eq!(workers.len(), 2, "{workers:?}");
    let new_ino = inst.replace();
    let out = upgrade(&name, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stderr(&out),
        m.output()
    );
    assert!(stdout(&out).contains("pid 1;"), "{}", stdout(&out));
    assert_eq!(exe_ino(sup), new_ino);
    assert_eq!(
        children_of(sup),
        workers,
        "the workers are still PID 1's children"
    );
    assert_eq!(
        http_get(addr, "/").expect("served after the upgrade").0,
        200
    );
    kill(sup, libc::SIGTERM);
    let st = m.wait_exit();
    end.0 = None;
    assert_eq!(st.code(), Some(0), "{}", m.output());
    assert!(workers.iter().all(|&w| !alive(w)), "everything reaped");
}

#[test]
fn upgrade_is_for_root_and_the_starter_and_says_its_versions() {
    let out = mn(&["--version"]);
    let v = stdout(&out);
    assert!(
        v.contains("state format 2;") && v.contains("reads formats 1 to 2"),
        "{v}"
    );
    let out = mn(&["__upgrade-check", "--state-format", "1"]);
    assert_eq!(out.status.code(), Some(0));
    let answer: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(answer["state_format"], 2);
    let out = mn(&["__upgrade-check", "--state-format", "99"]);
    assert_error(&out, 1, &["state format 99", "newer"]);
    if !require(
        is_root() && have_setpriv(),
        "needs root and setpriv to ask as nobody",
    ) {
        return;
    }
    let inst = Install::new();
    let name = unique_name();
    let hello = hello();
    let mut m = inst.serve(&name, &["-w", "1", "-l", "127.0.0.1:0", "--", &hello]);
    m.wait_ready(1);
    let control = m.control_path().display().to_string();
    let out = run(multinode_as_nobody(&["upgrade", "--control", &control]));
    assert_error(&out, 4, &["permission denied", "upgrade"]);
    assert!(m.events("upgrade").is_empty());
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
}

/// Under systemd (`Type=notify`): RELOADING=1 with the time before the exec, READY=1 after,
/// both from the same MAINPID.
#[test]
fn systemd_hears_reloading_then_ready_from_the_same_main_pid() {
    let s = Scratch::new("upgrade-notify");
    let path = s.path("notify");
    let sd = ServiceManager::bind(&path);
    let inst = Install::new();
    let name = unique_name();
    let hello = hello();
    let mut cmd = Command::new(&inst.bin);
    cmd.args(serve_args(&[
        "--name",
        &name,
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--",
        &hello,
    ]))
    .env("NOTIFY_SOCKET", &path);
    let mut m = Multinode::spawn(cmd);
    let (_, from) = sd.wait_line("READY=1");
    assert_eq!(from, m.pid);
    inst.replace();
    let t0 = monotonic_usec();
    let out = upgrade(&name, None);
    let t1 = monotonic_usec();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let (reloading, from) = sd.wait_line("RELOADING=1");
    assert_eq!(from, m.pid, "RELOADING=1 from MAINPID");
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .unwrap();
    assert!(
        t0 <= usec && usec <= t1,
        "MONOTONIC_USEC={usec} not within [{t0}, {t1}]"
    );
    let (ready, from) = sd.wait_line("READY=1");
    assert_eq!(from, m.pid, "READY=1 from the same MAINPID, after the exec");
    assert!(ready.contains("STATUS=2/2 workers ready"), "{ready:?}");
    m.signal(libc::SIGTERM);
    sd.wait_line("STOPPING=1");
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
}

/// `PROXY TCP4 ...` and a GET in one write, on a new connection; the response.
fn proxied_get(addr: SocketAddr, client: &str) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr)?;
    s.set_read_timeout(Some(DEADLINE))?;
    let req = format!(
        "PROXY TCP4 {client} 127.0.0.1 4000 80\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes())?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    Ok((status, resp))
}

/// The `--metrics` address of `m`.
fn addr_of_metrics(m: &Multinode) -> SocketAddr {
    m.wait_event("metrics", |_| true)
        .str("addr")
        .unwrap()
        .parse()
        .unwrap()
}

/// Route mode holds connections itself: handed to a worker that is not reading its channel,
/// and waiting for their PROXY header. Across an upgrade none is dropped: each is answered
/// once the worker reads again and the header is complete.
#[test]
fn connections_route_mode_holds_go_over_and_are_answered() {
    use std::io::{Read, Write};
    let inst = Install::new();
    let name = unique_name();
    let hello = hello();
    let mut m = inst.serve(
        &name,
        &[
            "-w",
            "1",
            "-l",
            "127.0.0.1:0",
            "--route",
            "ip-hash",
            "--proxy-protocol",
            "--metrics",
            "127.0.0.1:0",
            "--ready",
            "notify",
            "--",
            &hello,
        ],
    );
    let addr = m.tcp_addr("listen0");
    m.wait_ready(1);
    assert_eq!(proxied_get(addr, "192.0.2.1").unwrap().0, 200);
    let worker = status_pids(&name)[0].1 as i32;
    // The worker stops reading its channel; clients keep coming.
    kill(worker, libc::SIGSTOP);
    let held: Vec<_> = (0..6)
        .map(|i| std::thread::spawn(move || proxied_get(addr, &format!("192.0.2.{}", 10 + i))))
        .collect();
    // A connection that has sent half its PROXY header.
    let mut half = std::net::TcpStream::connect(addr).unwrap();
    half.write_all(b"PROXY TCP4 198.51.").unwrap();
    assert!(
        eventually(DEADLINE, || {
            let (_, text) = http_get(addr_of_metrics(&m), "/metrics").unwrap_or_default();
            text.contains("multinode_route_proxy_pending 1")
        }),
        "the half header is pending"
    );
    let out = upgrade(&name, None);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}\n{}",
        stderr(&out),
        m.output()
    );
    half.write_all(
        b"100.7 127.0.0.1 4000 80\r\nGET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    kill(worker, libc::SIGCONT);
    half.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut resp = String::new();
    half.read_to_string(&mut resp).unwrap();
    assert!(
        resp.starts_with("HTTP/1.1 200"),
        "the PROXY-pending connection: {resp:?}"
    );
    for h in held {
        let (status, resp) = h.join().unwrap().expect("a held connection answered");
        assert_eq!(status, 200, "{resp}");
    }
    assert_eq!(status_pids(&name)[0].1 as i32, worker);
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
}

/// A reload under way goes over: its new worker (still starting) is adopted, the roll goes
/// on in the new image, and the `multinode reload` that was waiting is answered by it.
#[test]
fn a_reload_under_way_goes_on_and_its_caller_is_answered_by_the_new_image() {
    let inst = Install::new();
    let slow = inst.script(
        "slow-hello",
        &format!("#!/bin/sh\nsleep 2\nexec {}\n", hello()),
    );
    let name = unique_name();
    let slow = slow.display().to_string();
    let mut m = inst.serve(
        &name,
        &[
            "-w",
            "2",
            "-l",
            "127.0.0.1:0",
            "--ready",
            "notify",
            "--",
            &slow,
        ],
    );
    m.wait_ready(2);
    let first = status_pids(&name);
    let reload = {
        let name = name.clone();
        std::thread::spawn(move || mn(&["reload", "--name", &name]))
    };
    m.wait_event("started", |e| e.generation() == Some(2));
    let out = upgrade(&name, None);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let upgraded = m.wait_event("upgraded", |_| true);
    let reloaded = m.wait_event("reloaded", |e| e.generation() == Some(2));
    assert!(
        upgraded.seq < reloaded.seq,
        "the roll ended after the upgrade:\n{}",
        m.output()
    );
    let out = reload.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains("generation 2"), "{}", stdout(&out));
    for (_, pid) in first {
        assert_eq!(m.wait_exited(pid as i32).code(), Some(0));
    }
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
}
