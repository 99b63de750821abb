//! Supervision (issue 3): crash restarts with backoff and a restart budget, graceful stop with
//! a grace period, no orphans and no zombies, and output that stays readable. Every test runs
//! the real binary with real worker processes and real signals.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;

/// The restart delay of every `exited` event that schedules a restart, in order.
fn restart_delays(exits: &[Event]) -> Vec<Duration> {
    exits.iter().filter_map(Event::restart_in).collect()
}

/// Whether `pid` has a thread named `name` (hello names a connection's thread `conn`).
fn has_thread(pid: i32, name: &str) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks
        .flatten()
        .any(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.trim_end() == name))
}

/// Whether `pid` ignores signal `sig` (the SigIgn mask of /proc/PID/status).
fn ignores(pid: i32, sig: i32) -> bool {
    status_field(pid, "SigIgn")
        .and_then(|m| u64::from_str_radix(&m, 16).ok())
        .is_some_and(|m| m & (1 << (sig - 1)) != 0)
}

/// Whether any entry for `pid` exists in /proc (a zombie counts: it is not reaped yet).
fn exists(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// A client that keeps making requests on fresh connections until stopped (or, at the
/// latest, after twice the tests' deadline), logging the answering pid or the error of each.
struct Client {
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Vec<Result<i32, String>>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Client {
    fn start(addr: std::net::SocketAddr) -> Client {
        let stop = Arc::new(AtomicBool::new(false));
        let log = Arc::new(Mutex::new(Vec::new()));
        let (s, l) = (stop.clone(), log.clone());
        let thread = std::thread::spawn(move || {
            let start = std::time::Instant::now();
            while !s.load(Ordering::SeqCst) && start.elapsed() < 2 * DEADLINE {
                let r = match http_get(addr, "/") {
                    Ok((200, body)) => body_pid(&body).ok_or(format!("no pid in {body:?}")),
                    Ok((st, body)) => Err(format!("status {st}: {body:?}")),
                    Err(e) => Err(e.to_string()),
                };
                l.lock().unwrap().push(r);
            }
        });
        Client {
            stop,
            log,
            thread: Some(thread),
        }
    }

    fn log(&self) -> Vec<Result<i32, String>> {
        self.log.lock().unwrap().clone()
    }

    fn finish(mut self) -> Vec<Result<i32, String>> {
        self.halt();
        self.log()
    }

    fn halt(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.halt();
    }
}

#[test]
fn killed_worker_is_replaced_while_the_service_answers() {
    let m = Multinode::serve_hello("4", &[]);
    let addr = m.tcp_addr("listen0");
    let first: BTreeSet<i32> = m.wait_started(4).into_iter().collect();
    let victim = m.wait_started_in_slot(2, &[]);

    let client = Client::start(addr);
    assert!(
        eventually(DEADLINE, || client
            .log()
            .iter()
            .filter(|r| r.is_ok())
            .count()
            >= 20),
        "the service does not answer: {:?}",
        client.log()
    );
    kill(victim, libc::SIGKILL);
    let killed = m.wait_exited(victim);
    assert_eq!(killed.signal(), Some("SIGKILL"), "{killed}");
    assert_eq!(
        killed.restart_in(),
        Some(Duration::ZERO),
        "a first crash restarts at once: {killed}"
    );
    let first_pids: Vec<i32> = first.iter().copied().collect();
    let replacement = m.wait_started_in_slot(2, &first_pids);
    let mark = client.log().len();
    // The service keeps answering, and the replacement takes its share of connections.
    let served = eventually(DEADLINE, || {
        let log = client.log();
        let after = &log[mark.min(log.len())..];
        after.iter().filter(|r| r.is_ok()).count() >= 50 && after.contains(&Ok(replacement))
    });
    let log = client.finish();
    assert!(
        served,
        "after the restart: want 50 answers, one from the new worker.2[{replacement}]; got {:?}",
        &log[mark..]
    );
    // One sequential client has one request in flight: the kill can fail that one (accepted
    // by the killed worker), never a request still queued on the shared socket.
    let errors: Vec<&String> = log.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.len() <= 1,
        "{} failed requests of {}: {errors:?}",
        errors.len(),
        log.len()
    );
    assert!(
        log.iter().all(|r| r
            .as_ref()
            .map_or(true, |p| first.contains(p) || *p == replacement)),
        "answered by a process that is not a worker: {log:?}"
    );
    assert!(!alive(victim), "killed worker {victim} still there");
}

#[test]
fn crash_loop_backs_off_without_spinning() {
    let mut m = Multinode::serve(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--",
        "/bin/sh",
        "-c",
        "exit 3",
    ]);
    let restarting = |e: &Event| e.restart_in().is_some();
    m.wait_event("exited", restarting);
    let ticks_before = cpu_ticks(m.pid);
    // At once, then 100ms, 200ms, 400ms, 800ms, 1.6s (each ±25%): seven exits take seconds.
    let exits = m.wait_events("exited", 7, restarting);
    let ticks = cpu_ticks(m.pid) - ticks_before;
    for e in &exits {
        assert_eq!(e.code(), Some(3), "the exit code: {e}");
    }
    let delays = restart_delays(&exits);
    assert!(
        delays.windows(2).all(|w| w[1] >= w[0]),
        "restart delays must not shrink: {delays:?}"
    );
    assert!(
        !delays[1].is_zero() && *delays.last().unwrap() > delays[1] * 4,
        "restart delays must grow: {delays:?}"
    );
    // A supervisor spinning through those seconds would burn hundreds of ticks.
    assert!(
        ticks < 50,
        "the supervisor used {ticks} clock ticks of CPU over six restarts"
    );
    m.signal(libc::SIGTERM);
    let st = m.wait_exit();
    assert!(st.code().is_some(), "{st:?}");
}

#[test]
fn crash_loop_gives_up_after_max_restarts() {
    let mut m = Multinode::serve(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--max-restarts",
        "3",
        "--restart-window",
        "60s",
        "--",
        "/bin/sh",
        "-c",
        "exit 3",
    ]);
    let st = m.wait_exit();
    let out = m.output();
    assert_eq!(st.code(), Some(6), "documented exit code 6; output:\n{out}");
    let gave_up = m.events("gave-up");
    assert!(
        gave_up.len() == 1
            && gave_up[0].u64("max_restarts") == Some(3)
            && gave_up[0].u64("window_ms") == Some(60_000),
        "gave up after more than 3 restarts within 60s:\n{out}"
    );
    let starts = m.worker_pids();
    assert_eq!(starts.len(), 4, "the first start and 3 restarts:\n{out}");
    for pid in starts {
        assert!(!alive(pid), "worker {pid} left running");
    }
}

#[test]
fn sigterm_lets_a_slow_request_finish() {
    let mut m = Multinode::serve_hello("2", &[]);
    let addr = m.tcp_addr("listen0");
    let pids = m.wait_started(2);
    let slow = std::thread::spawn(move || http_get(addr, "/sleep/2000"));
    // In flight: a worker has accepted it (hello serves each connection on a `conn` thread).
    assert!(
        eventually(DEADLINE, || pids.iter().any(|&p| has_thread(p, "conn"))),
        "no worker accepted the slow request; output:\n{}",
        m.output()
    );
    m.signal(libc::SIGTERM);
    m.wait_event("stopping", |e| {
        e.why() == Some("SIGTERM") && e.workers() == Some(2)
    });
    let (status, body) = slow
        .join()
        .unwrap()
        .expect("the slow request is answered, not cut");
    assert_eq!(status, 200, "{body}");
    let st = m.wait_exit();
    let out = m.output();
    assert_eq!(st.code(), Some(0), "output:\n{out}");
    for pid in pids {
        assert!(
            m.events("exited")
                .iter()
                .any(|e| e.pid == Some(pid) && e.code() == Some(0)),
            "worker {pid} should drain and exit 0:\n{out}"
        );
    }
}

#[test]
fn worker_ignoring_sigterm_is_killed_after_grace() {
    let mut m = Multinode::serve(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--grace",
        "1s",
        "--",
        "/bin/sh",
        "-c",
        "trap '' TERM; sleep 1000",
    ]);
    let pid = m.wait_started(1)[0];
    assert!(
        eventually(DEADLINE, || ignores(pid, libc::SIGTERM)),
        "the worker never ignored SIGTERM"
    );
    let helpers = children_of(pid);
    m.signal(libc::SIGTERM);
    let st = m.wait_exit();
    let out = m.output();
    assert_eq!(
        st.code(),
        Some(1),
        "a worker had to be killed; output:\n{out}"
    );
    assert!(
        m.events("kill")
            .iter()
            .any(|e| e.grace() == Some(Duration::from_secs(1))),
        "SIGKILL after --grace 1s:\n{out}"
    );
    assert_eq!(m.wait_exited(pid).signal(), Some("SIGKILL"), "{out}");
    for p in std::iter::once(pid).chain(helpers) {
        assert!(!alive(p), "process {p} of the worker survived");
    }
}

#[test]
fn supervisor_killed_leaves_no_worker() {
    let mut m = Multinode::serve_hello("3", &[]);
    let pids = m.wait_started(3);
    m.wait_events(OUTPUT, 3, |e| e.msg.starts_with("hello: worker"));
    for &p in &pids {
        assert!(alive(p), "worker {p} not running");
    }
    m.signal(libc::SIGKILL);
    let st = m.wait_exit();
    assert!(st.code().is_none(), "killed by a signal: {st:?}");
    for p in pids {
        assert!(
            eventually(DEADLINE, || !alive(p)),
            "worker {p} outlived its supervisor"
        );
    }
}

#[test]
fn grandchildren_are_reaped() {
    // worker.0 starts a helper in its process group and one in a session of its own, then
    // exits 0 (not restarted: --restart on-failure); worker.1 just keeps the service up.
    // Process groups only (--cgroup off): with a cgroup per worker, the escaped one would be
    // killed with its worker's group (tests/contain.rs), not left to be reaped.
    let script = r#"if [ "$MULTINODE_WORKER_ID" = 0 ]; then
  sleep 1000 & echo "helper $!"
  setsid sleep 1000 & e=$!
  # Exit only once it has its own session (field 6 of stat), or the group stop may catch it.
  while [ "$(cut -d' ' -f6 /proc/$e/stat)" != "$e" ]; do sleep 0.01; done
  echo "escaped $e"
  exit 0
fi
exec sleep 1000"#;
    let m = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--restart",
        "on-failure",
        "--cgroup",
        "off",
        "--",
        "/bin/sh",
        "-c",
        script,
    ]);
    let helper = m.printed_pid("helper", None);
    let escaped = m.printed_pid("escaped", None);
    // Outside the supervisor's process groups: the Multinode guard cannot reach it.
    let _guard = KillOnDrop {
        pids: vec![escaped],
        comm: "sleep",
    };
    m.wait_event("exited", |e| e.slot == Some(0) && e.code() == Some(0));
    // The helper left in the worker's group is stopped with it, and reaped.
    assert!(
        eventually(DEADLINE, || !exists(helper)),
        "helper {helper} still exists: {:?}",
        stat_of(helper)
    );
    // The one that left the group is reparented to multinode (a subreaper) ...
    assert!(
        eventually(DEADLINE, || stat_of(escaped).is_some_and(|s| s.1 == m.pid)),
        "escaped grandchild {escaped} not reparented to multinode: {:?}",
        stat_of(escaped)
    );
    // ... and reaped by it when it exits.
    kill(escaped, libc::SIGKILL);
    assert!(
        eventually(DEADLINE, || !exists(escaped)),
        "escaped grandchild {escaped} left as {:?} under multinode",
        stat_of(escaped)
    );
    let zombies = || {
        children_of(m.pid)
            .into_iter()
            .filter(|&p| stat_of(p).is_some_and(|s| s.0 == 'Z'))
            .collect::<Vec<_>>()
    };
    assert!(
        eventually(DEADLINE, || zombies().is_empty()),
        "zombies under multinode: {:?}",
        zombies()
    );
}

/// A worker command in which the shell stays the parent of the real server: `; true` keeps
/// it from exec'ing. The server then needs LISTEN_PID to name its own pid (sd_listen_fds
/// ignores fds meant for another process, here the shell): a second shell sets it to its own
/// pid and execs hello, which keeps that pid. So each worker is `sh` with `hello` as its child.
fn shell_running_hello() -> Vec<String> {
    let hello = worker_bin("hello");
    let script = format!(
        "/bin/sh -c 'export LISTEN_PID=$$; exec {}'; true",
        hello.display()
    );
    vec!["/bin/sh".into(), "-c".into(), script]
}

/// Starts `workers` shell-wrapped hello workers; returns multinode, its address and
/// shell pid → hello pid.
fn serve_shells(workers: &str) -> (Multinode, std::net::SocketAddr, BTreeMap<i32, i32>) {
    let cmd = shell_running_hello();
    let mut args = vec!["-w", workers, "-l", "127.0.0.1:0", "--"];
    args.extend(cmd.iter().map(String::as_str));
    let m = Multinode::serve(&args);
    let addr = m.tcp_addr("listen0");
    let shells = m.wait_started(workers.parse().unwrap());
    let mut servers = BTreeMap::new();
    for &sh in &shells {
        let hello_child = || children_of(sh).into_iter().find(|&c| comm(c) == "hello");
        assert!(
            eventually(DEADLINE, || hello_child().is_some()),
            "shell {sh} never ran hello; output:\n{}",
            m.output()
        );
        servers.insert(sh, hello_child().unwrap());
    }
    let (status, body) = http_get(addr, "/").expect("served through the shell");
    assert_eq!(status, 200);
    let pid = body_pid(&body).unwrap();
    assert!(
        servers.values().any(|&s| s == pid),
        "answered by {pid}, not one of the servers {servers:?}"
    );
    (m, addr, servers)
}

#[test]
fn stop_ends_the_shell_and_the_server_it_runs() {
    let (mut m, _, servers) = serve_shells("2");
    m.signal(libc::SIGTERM);
    let st = m.wait_exit();
    assert_eq!(st.code(), Some(0), "output:\n{}", m.output());
    // multinode waits for each worker's whole process group before it exits.
    for (sh, server) in servers {
        assert!(!alive(sh), "shell {sh} survived the stop");
        assert!(
            !alive(server),
            "hello {server} (child of shell {sh}) survived the stop"
        );
    }
}

#[test]
fn supervisor_killed_leaves_no_server_under_a_shell() {
    // The parent-death signal reaches the shell, the process multinode forked; the server the
    // shell started must not outlive multinode either (it holds the listening socket).
    let (mut m, addr, servers) = serve_shells("1");
    m.signal(libc::SIGKILL);
    m.wait_exit();
    for (sh, server) in servers {
        assert!(
            eventually(DEADLINE, || !alive(sh)),
            "shell {sh} outlived its supervisor"
        );
        assert!(
            eventually(DEADLINE, || !alive(server)),
            "hello {server} (child of worker shell {sh}) outlived its supervisor \
             (still answering on {addr}: {:?})",
            http_get(addr, "/").map(|r| r.1)
        );
    }
}

#[test]
fn long_lines_of_two_workers_stay_whole() {
    // Each worker writes 300 lines, alternately 12000 and 20000 bytes, one write(2) each:
    // larger than PIPE_BUF and than one read of the supervisor, so lines arrive in pieces.
    const COUNT: usize = 300;
    const SHORT: usize = 12_000;
    const LONG: usize = 20_000;
    /// multinode's cap (src/log.rs): a longer line may be printed in pieces of at most this.
    const MAX_LINE: usize = 16 * 1024;
    let spew = worker_bin("mn-spew");
    let mut m = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--restart",
        "never",
        "--",
        spew.to_str().unwrap(),
        &COUNT.to_string(),
        &SHORT.to_string(),
        &LONG.to_string(),
    ]);
    let st = m.wait_exit();
    let summary = || {
        m.lines()
            .iter()
            .map(|l| l.chars().take(200).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    };
    assert_eq!(st.code(), Some(0), "output:\n{}", summary());
    let slot_pid = m.slot_pids();
    assert_eq!(slot_pid.len(), 2, "{}", summary());
    let mut whole = BTreeMap::<u32, usize>::new();
    let mut bytes = BTreeMap::<u32, usize>::new();
    for e in m.events(OUTPUT) {
        let slot = e.slot.unwrap();
        let prefix = format!("worker.{slot}[{}]", e.pid.unwrap());
        let text = &e.msg;
        assert_eq!(e.pid.as_ref(), slot_pid.get(&slot), "{prefix}");
        let ch = (b'A' + slot as u8) as char;
        assert!(!text.is_empty(), "empty line from {prefix}");
        assert!(
            text.chars().all(|c| c == ch),
            "{prefix}: a line mixing other output into worker.{slot}'s {ch}s: {:.200}",
            text
        );
        // Whole lines; a line longer than the cap may also come as the cap and the rest.
        assert!(
            [SHORT, LONG, MAX_LINE, LONG - MAX_LINE].contains(&text.len()),
            "{prefix}: a line of {} bytes",
            text.len()
        );
        if text.len() == SHORT {
            *whole.entry(slot).or_default() += 1;
        }
        *bytes.entry(slot).or_default() += text.len();
    }
    for slot in [0, 1] {
        assert_eq!(
            whole.get(&slot).copied().unwrap_or(0),
            COUNT / 2,
            "worker.{slot}'s {SHORT}-byte lines must each be printed whole"
        );
        assert_eq!(
            bytes.get(&slot).copied().unwrap_or(0),
            COUNT / 2 * (SHORT + LONG),
            "worker.{slot}: no byte lost or added"
        );
    }
    assert!(
        m.events("dropped").is_empty(),
        "output dropped: {}",
        summary()
    );
}

#[test]
fn partial_last_line_of_a_crashed_worker_is_printed() {
    let mut m = Multinode::serve(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--restart",
        "never",
        "--",
        "/bin/sh",
        "-c",
        r#"printf "last words"; kill -9 $$"#,
    ]);
    let st = m.wait_exit();
    let out = m.output();
    let pid = m.worker_pids()[0];
    assert!(
        m.events(OUTPUT)
            .iter()
            .any(|e| e.msg == "last words" && e.slot == Some(0) && e.pid == Some(pid)),
        "the unfinished last line, from worker.0:\n{out}"
    );
    let exited = m.wait_exited(pid);
    assert_eq!(exited.signal(), Some("SIGKILL"), "{out}");
    assert_eq!(st.code(), Some(1), "a worker failed for good:\n{out}");
}

/// The text format, which people read: each worker line (stdout, stderr, and the unfinished
/// last one of a worker that dies) is prefixed `worker.N[PID] | `, and every supervisor line
/// is `multinode | ...`, with `worker.N[PID]` first when it concerns a worker.
#[test]
fn text_format_prefixes_every_line() {
    let mut m = Multinode::serve(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--log-format",
        "text",
        "--restart",
        "never",
        "--",
        "/bin/sh",
        "-c",
        r#"echo "out $$"; echo "err $$" >&2; printf "last $$"; kill -9 $$"#,
    ]);
    let st = m.wait_exit();
    let out = m.output();
    assert_eq!(st.code(), Some(1), "a worker failed for good:\n{out}");
    // The worker's own pid, from what it printed.
    let line = m.wait_line("the worker's stdout line", |l| l.contains(" | out "));
    let pid: i32 = line.rsplit(' ').next().unwrap().parse().unwrap();
    let lines = m.lines();
    for what in ["out", "err", "last"] {
        let want = format!("worker.0[{pid}] | {what} {pid}");
        assert!(lines.contains(&want), "no line {want:?}:\n{out}");
    }
    for l in &lines {
        assert!(
            l.starts_with("multinode | ") || l.starts_with(&format!("worker.0[{pid}] | ")),
            "a line with neither prefix: {l:?}\n{out}"
        );
    }
    let about_it = format!("multinode | worker.0[{pid}] ");
    assert!(
        lines.iter().any(|l| l.starts_with(&about_it)),
        "no supervisor line names worker.0[{pid}]:\n{out}"
    );
}

#[test]
fn json_log_format() {
    let mut m = Multinode::serve(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--log-format",
        "json",
        "--restart",
        "never",
        "--",
        "/bin/sh",
        "-c",
        "echo 'to \"stdout\"'; echo to-stderr >&2",
    ]);
    let st = m.wait_exit();
    let lines = m.lines();
    assert_eq!(st.code(), Some(0), "output:\n{}", m.output());
    let objs: Vec<serde_json::Value> = lines
        .iter()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l)
                .unwrap_or_else(|e| panic!("not one JSON object per line ({e}): {l}"));
            assert!(v.is_object(), "{l}");
            assert!(v["time"].is_string(), "{l}");
            assert!(v["msg"].is_string(), "{l}");
            v
        })
        .collect();
    let pid = objs
        .iter()
        .find(|o| o["source"] == "multinode" && o["event"] == "started")
        .unwrap_or_else(|| panic!("no started event:\n{}", m.output()));
    assert_eq!(pid["slot"], 0);
    let pid = pid["pid"].as_i64().expect("a numeric pid");
    let worker_line = |stream: &str, msg: &str| {
        objs.iter().any(|o| {
            o["source"] == "worker"
                && o["stream"] == stream
                && o["msg"] == msg
                && o["slot"] == 0
                && o["pid"] == pid
        })
    };
    assert!(worker_line("stdout", "to \"stdout\""), "{}", m.output());
    assert!(worker_line("stderr", "to-stderr"), "{}", m.output());
    assert!(
        objs.iter().any(|o| o["source"] == "multinode"
            && o["event"] == "exited"
            && o["slot"] == 0
            && o["pid"] == pid),
        "{}",
        m.output()
    );
    assert!(
        objs.iter()
            .all(|o| o["source"] == "worker" || o["event"].is_string()),
        "every supervisor line names its event:\n{}",
        m.output()
    );
}

/// As PID 1 of a PID namespace (a container's init), multinode reaps every orphan that is
/// reparented to it and still drains its workers on SIGTERM.
#[test]
fn as_pid_1_it_reaps_orphans_and_stops_cleanly() {
    if !require(is_root(), "needs root for a PID namespace")
        || !require(
            std::process::Command::new("unshare")
                .arg("--version")
                .output()
                .is_ok(),
            "unshare(1) is not installed (Debian package util-linux)",
        )
    {
        return;
    }
    let hello = worker_bin("hello");
    // Each worker leaves two orphans behind (the subshells exit at once), then becomes hello.
    let script = format!("(sleep 0.3 &); (sleep 0.6 &); exec {}", hello.display());
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--pid", "--fork", "--mount-proc"])
        .arg(multinode_bin())
        .args(serve_args(&[
            "-w",
            "2",
            "-l",
            "127.0.0.1:0",
            "--",
            "/bin/sh",
            "-c",
            &script,
        ]));
    let mut m = Multinode::spawn(cmd);
    // The pids multinode prints are its namespace's, not ours.
    m.kill_workers = false;
    let addr = m.tcp_addr("listen0");
    m.wait_started(2);
    let sup = pid_1_under(&m);
    let mut end = EndNamespace(Some(sup));
    let (status, body) = http_get(addr, "/").expect("served as PID 1");
    assert_eq!(status, 200, "{body}");
    // The sleeps were reparented to PID 1 = multinode; once they end, nothing is left of them.
    let clean = eventually(DEADLINE, || {
        children_of(sup)
            .iter()
            .all(|&c| comm(c) == "hello" && stat_of(c).is_some_and(|s| s.0 != 'Z'))
    });
    assert!(
        clean,
        "orphans not reaped under PID 1: {:?}",
        children_of(sup)
            .iter()
            .map(|&c| (c, comm(c), stat_of(c)))
            .collect::<Vec<_>>()
    );
    kill(sup, libc::SIGTERM);
    let st = m.wait_exit();
    end.0 = None;
    assert_eq!(st.code(), Some(0), "{}", m.output());
    let exit = m.wait_event("exit", |_| true);
    assert_eq!(exit.i64("status"), Some(0), "{}", m.output());
}

#[test]
fn restart_policies_decide_what_comes_back() {
    // on-failure: a clean exit is not restarted, and once every worker is gone for good
    // multinode exits 0.
    let mut m = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--restart",
        "on-failure",
        "--",
        "/bin/sh",
        "-c",
        "exit 0",
    ]);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
    assert_eq!(
        m.worker_pids().len(),
        2,
        "nothing restarted: {}",
        m.output()
    );
    assert!(
        m.events("exited").iter().all(|e| e.restart_in().is_none()),
        "{}",
        m.output()
    );

    // never: a failure is not restarted either, and the exit status says one failed.
    let mut m = Multinode::serve(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--restart",
        "never",
        "--",
        "/bin/sh",
        "-c",
        "exit 3",
    ]);
    assert_eq!(m.wait_exit().code(), Some(1), "{}", m.output());
    assert_eq!(m.worker_pids().len(), 1, "{}", m.output());
    assert!(
        m.events("exited").iter().any(|e| e.code() == Some(3)),
        "{}",
        m.output()
    );
}

#[test]
fn sigquit_and_a_second_sigterm_stop_at_once() {
    // Workers that ignore SIGTERM, and a grace long enough that only a fast stop ends them.
    let ignore = [
        "--",
        "/bin/sh",
        "-c",
        "trap '' TERM; while :; do sleep 1; done",
    ];
    for (first, second) in [(libc::SIGQUIT, None), (libc::SIGTERM, Some(libc::SIGTERM))] {
        let mut args = vec!["-w", "2", "-l", "127.0.0.1:0", "--grace", "5m"];
        args.extend(ignore);
        let mut m = Multinode::serve(&args);
        let pids = m.wait_started(2);
        assert!(
            eventually(DEADLINE, || pids.iter().all(|&p| ignores(p, libc::SIGTERM))),
            "the shells never ignored SIGTERM"
        );
        m.signal(first);
        if let Some(sig) = second {
            m.wait_event("stopping", |e| e.workers() == Some(2));
            m.signal(sig);
            // The fast stop: `kill` naming the signal (the --grace kill names none).
            m.wait_event("kill", |e| e.signal() == Some("SIGTERM"));
        } else {
            m.wait_event("kill", |e| e.signal() == Some("SIGQUIT"));
        }
        // Long before --grace 5m: the workers were killed, so the status is 1.
        assert_eq!(m.wait_exit().code(), Some(1), "{}", m.output());
        assert!(
            pids.iter().all(|&p| !alive(p)),
            "a worker outlived the fast stop"
        );
    }
}

/// Bytes the process has read with read(2) and friends (`rchar` of /proc/PID/io).
fn bytes_read(pid: i32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("read /proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("rchar in /proc/PID/io")
}

/// A restarted worker is still checked for a port of its own (the `foreign-socket` warning),
/// and that check costs the supervisor the same however many connections the host has: it
/// asks the kernel for listening sockets only (sock_diag), never reads /proc/net/tcp, which
/// lists every connection. bench/chaos.sh kill found that read at 2 MB and half a second per
/// worker start on a loaded host: the loop stalled (route mode accepted nothing meanwhile)
/// and the heap grew with every restart.
#[test]
fn restarts_do_not_read_the_hosts_connection_table() {
    if !require(
        is_root(),
        "needs root to read the supervisor's /proc/PID/io (it is not dumpable)",
    ) {
        return;
    }
    // 2,000 loopback connections held open: 4,000 rows of /proc/net/tcp.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut held = Vec::new();
    for _ in 0..2000 {
        let c = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (s, _) = listener.accept().unwrap();
        held.push((c, s));
    }
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap().len() as u64;

    let m = Multinode::serve(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--ready",
        "delay:100ms",
        "--backoff-max",
        "100ms",
        "--",
        worker_bin("mn-selfbind").to_str().unwrap(),
    ]);
    let mut pid = m.wait_started_in_slot(0, &[]);
    m.wait_event("foreign-socket", |e| e.pid == Some(pid));
    let before = bytes_read(m.pid);
    let restarts = 5;
    let mut old = vec![pid];
    for _ in 0..restarts {
        kill(pid, libc::SIGKILL);
        pid = m.wait_started_in_slot(0, &old);
        old.push(pid);
        // The check ran for the new worker, and still finds its port.
        m.wait_event("foreign-socket", |e| e.pid == Some(pid));
    }
    let per_restart = (bytes_read(m.pid) - before) / restarts;
    assert!(
        per_restart < table / 4,
        "the supervisor read {per_restart} bytes per restart; /proc/net/tcp is {table} bytes"
    );
    drop(held);
}
