//! Health (issue 11), against the real binary with real workers: the per-worker watchdog
//! (`--watchdog`, `--watchdog-signal`, `WATCHDOG=trigger`, a hung worker during a reload),
//! the watchdog's environment, recycling past `--max-memory` and `--max-requests` with no
//! failed request, `--stop-delay`, and the examples pinging from their serving loops.
//!
//! Nothing here asserts how long something took: every wait polls multinode's JSON events or
//! the workers' output until a generous deadline. Orderings are compared only between lines
//! of one stream (multinode's events are on stderr; the test workers print on stdout).

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use common::*;

fn mn_watchdog() -> String {
    worker_bin("mn-watchdog").display().to_string()
}

/// The `mn-watchdog pid=P ...` start line of worker `pid`, as `key=value` pairs.
#[track_caller]
fn start_line(m: &Multinode, pid: i32) -> BTreeMap<String, String> {
    let prefix = format!("mn-watchdog pid={pid} slot=");
    let line = m.wait_output(|e| e.msg.starts_with(&prefix));
    line.msg
        .split_whitespace()
        .skip(1)
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// How many `ping N` lines worker `pid` has printed so far.
fn pings(m: &Multinode, pid: i32) -> usize {
    let prefix = format!("mn-watchdog pid={pid} ping ");
    m.events(OUTPUT)
        .iter()
        .filter(|e| e.msg.starts_with(&prefix))
        .count()
}

/// Waits until worker `pid` has printed `n` ping lines.
#[track_caller]
fn wait_pings(m: &Multinode, pid: i32, n: usize) {
    if !eventually(DEADLINE, || pings(m, pid) >= n) {
        panic!(
            "worker {pid} printed {} of {n} pings; output:\n{}",
            pings(m, pid),
            m.output()
        );
    }
}

/// Creates `name` in `dir`: how the tests tell mn-watchdog what to do.
fn touch(dir: &Scratch, name: &str) -> PathBuf {
    let p = dir.path(name);
    write(&p, "");
    p
}

/// The worker events (`started` .. `exited`) of `pid` of `kind`.
fn events_of(m: &Multinode, kind: &str, pid: i32) -> Vec<Event> {
    m.events(kind)
        .into_iter()
        .filter(|e| e.pid == Some(pid))
        .collect()
}

#[test]
fn a_silent_worker_is_killed_with_the_watchdog_signal_and_replaced_its_siblings_left_alone() {
    let dir = Scratch::new("watchdog-silent");
    let prog = mn_watchdog();
    let d = dir.0.display().to_string();
    let mut m = Multinode::serve(&[
        "-w",
        "3",
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--watchdog",
        "3s",
        "--watchdog-signal",
        "USR1",
        "--",
        &prog,
        &d,
    ]);
    m.wait_ready(3);
    let first = m.slot_pids();
    let victim = first[&1];
    let siblings = [first[&0], first[&2]];
    // Everyone pings on its own before the test interferes.
    for pid in first.values() {
        wait_pings(&m, *pid, 1);
    }

    touch(&dir, &format!("hang.{victim}"));
    let hung = m.wait_event("hung", |e| e.pid == Some(victim));
    assert_eq!(hung.slot, Some(1));
    assert_eq!(hung.signal(), Some("SIGUSR1"), "{hung}");
    assert!(
        hung.str("reason")
            .is_some_and(|r| r.contains("no WATCHDOG=1 within 3s")),
        "{hung}"
    );
    let exited = m.wait_exited(victim);
    assert_eq!(
        exited.signal(),
        Some("SIGUSR1"),
        "ended by --watchdog-signal, not SIGKILL: {exited}"
    );
    let replacement = m.wait_started_in_slot(1, &[victim]);
    m.wait_event("ready", |e| e.pid == Some(replacement));

    // Through and past all that, the siblings kept pinging; the replacement pings too.
    let at_hang: Vec<usize> = siblings.iter().map(|&p| pings(&m, p)).collect();
    for (pid, n) in siblings.iter().zip(&at_hang) {
        wait_pings(&m, *pid, n + 2);
    }
    wait_pings(&m, replacement, 2);
    assert_eq!(
        m.events("hung").len(),
        1,
        "only the silent one; output:\n{}",
        m.output()
    );
    for pid in siblings {
        assert!(alive(pid), "sibling {pid} alive");
        assert!(
            events_of(&m, "exited", pid).is_empty(),
            "sibling {pid} never exited"
        );
    }
    let now = m.slot_pids();
    assert_eq!(
        (now[&0], now[&2]),
        (siblings[0], siblings[1]),
        "same pids throughout"
    );
    assert_eq!(now[&1], replacement);
    assert!(
        m.events("kill").is_empty(),
        "USR1 sufficed: no SIGKILL; output:\n{}",
        m.output()
    );

    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "output:\n{}", m.output());
}

#[test]
fn watchdog_variables_are_exact_and_absent_without_the_option() {
    let dir = Scratch::new("watchdog-env");
    let prog = mn_watchdog();
    let d = dir.0.display().to_string();
    let m = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--watchdog",
        "1500ms",
        "--",
        &prog,
        &d,
    ]);
    let mut pids = m.wait_started(2);
    // A restarted worker gets its own pid too.
    let killed = pids[0];
    start_line(&m, killed);
    kill(killed, libc::SIGKILL);
    m.wait_exited(killed);
    let slot = m.events("started")[0].slot.unwrap();
    pids.push(m.wait_started_in_slot(slot, &[killed]));
    for pid in pids {
        let vars = start_line(&m, pid);
        assert_eq!(vars["usec"], "1500000", "WATCHDOG_USEC in µs: {vars:?}");
        assert_eq!(
            vars["wpid"],
            pid.to_string(),
            "WATCHDOG_PID is its own: {vars:?}"
        );
        assert_eq!(
            vars["interval_us"], "1500000",
            "what the SDK read: {vars:?}"
        );
        assert_eq!(vars["left"], "no", "the SDK removed them: {vars:?}");
    }
    drop(m);

    // Without --watchdog: none, even when multinode's own environment has them (a service
    // manager's watchdog is multinode's, not its workers').
    let mut cmd = serve_command(&["-w", "2", "-l", "127.0.0.1:0", "--", &prog, &d]);
    cmd.env("WATCHDOG_USEC", "123456789")
        .env("WATCHDOG_PID", "1");
    let m = Multinode::spawn(cmd);
    for pid in m.wait_started(2) {
        let vars = start_line(&m, pid);
        assert_eq!(
            (
                vars["usec"].as_str(),
                vars["wpid"].as_str(),
                vars["interval_us"].as_str()
            ),
            ("-", "-", "-"),
            "{vars:?}"
        );
    }
}

#[test]
fn watchdog_trigger_hangs_a_worker_at_once() {
    let dir = Scratch::new("watchdog-trigger");
    let prog = mn_watchdog();
    let d = dir.0.display().to_string();
    // An hour's watchdog: only the trigger can make a worker hung within this test.
    let mut m = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--watchdog",
        "1h",
        "--watchdog-signal",
        "USR2",
        "--",
        &prog,
        &d,
    ]);
    m.wait_ready(2);
    let first = m.slot_pids();
    let victim = first[&0];
    touch(&dir, &format!("trigger.{victim}"));
    let hung = m.wait_event("hung", |e| e.pid == Some(victim));
    assert_eq!(
        hung.str("reason"),
        Some("it sent WATCHDOG=trigger"),
        "{hung}"
    );
    assert_eq!(hung.signal(), Some("SIGUSR2"));
    assert_eq!(m.wait_exited(victim).signal(), Some("SIGUSR2"));
    let replacement = m.wait_started_in_slot(0, &[victim]);
    m.wait_event("ready", |e| e.pid == Some(replacement));
    assert!(alive(first[&1]), "the other worker is left alone");
    assert_eq!(m.events("hung").len(), 1);
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "output:\n{}", m.output());
}

#[test]
fn a_hung_new_worker_aborts_the_reload() {
    let dir = Scratch::new("watchdog-reload");
    let prog = mn_watchdog();
    let d = dir.0.display().to_string();
    let mut m = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--watchdog",
        "2s",
        "--watchdog-signal",
        "USR1",
        "--",
        &prog,
        &d,
    ]);
    m.wait_ready(2);
    let old = m.slot_pids();
    // Slot 1's new worker will not be ready until the test says so: the roll is still under
    // way when slot 0's new worker hangs.
    touch(&dir, "hold.1.2");
    m.signal(libc::SIGHUP);
    let new0 = m
        .wait_event("started", |e| {
            e.generation() == Some(2) && e.slot == Some(0)
        })
        .pid
        .unwrap();
    m.wait_event("ready", |e| e.pid == Some(new0));
    let held = m
        .wait_event("started", |e| {
            e.generation() == Some(2) && e.slot == Some(1)
        })
        .pid
        .unwrap();
    m.wait_output(|e| e.msg == format!("mn-watchdog pid={held} holding"));
    touch(&dir, &format!("hang.{new0}"));

    let failed = m.wait_event("reload-failed", |_| true);
    assert_eq!(failed.str("cause"), Some("hung"), "{failed}");
    assert_eq!((failed.slot, failed.pid), (Some(0), Some(new0)), "{failed}");
    assert_eq!(failed.generation(), Some(2));
    assert!(m.events("reloaded").is_empty(), "the roll did not complete");
    assert_eq!(m.wait_exited(new0).signal(), Some("SIGUSR1"));
    // The held new worker of slot 1 is stopped; slot 1's old worker keeps serving; slot 0
    // (whose old worker had been replaced already) restarts.
    m.wait_exited(held);
    assert!(alive(old[&1]), "slot 1 keeps its old worker");
    assert!(events_of(&m, "exited", old[&1]).is_empty());
    let restarted = m.wait_started_in_slot(0, &[old[&0], new0]);
    m.wait_event("ready", |e| e.pid == Some(restarted));
    m.signal(libc::SIGTERM);
    m.wait_exit();
}

/// A client that GETs `/` over and over, a new connection each time, until stopped: the
/// answering pids in order, and the failures (connection errors and non-200 answers).
struct Poller {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<i32>>>,
    failures: Arc<Mutex<Vec<String>>>,
    thread: Option<JoinHandle<()>>,
}

impl Poller {
    fn start(addr: SocketAddr) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let thread = {
            let (stop, seen, failures) = (stop.clone(), seen.clone(), failures.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    match http_get(addr, "/") {
                        Ok((200, body)) => seen.lock().unwrap().push(body_pid(&body).unwrap_or(0)),
                        Ok((status, body)) => {
                            failures.lock().unwrap().push(format!("{status} {body}"))
                        }
                        Err(e) => failures.lock().unwrap().push(e.to_string()),
                    }
                    // A few hundred requests a second at most: a poller, not a load test.
                    std::thread::sleep(Duration::from_millis(2));
                }
            })
        };
        Poller {
            stop,
            seen,
            failures,
            thread: Some(thread),
        }
    }

    fn answered_by(&self, pid: i32) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|&&p| p == pid)
            .count()
    }

    /// Stops it; (requests answered, failures).
    fn finish(mut self) -> (usize, Vec<String>) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
        let ok = self.seen.lock().unwrap().len();
        (ok, self.failures.lock().unwrap().clone())
    }
}

impl Drop for Poller {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

#[test]
fn a_worker_past_max_memory_is_replaced_with_no_failed_request() {
    let hog = worker_bin("mn-hog").display().to_string();
    let mut m = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--max-memory",
        "64M",
        "--ready",
        "notify",
        "--",
        &hog,
    ]);
    let addr = m.tcp_addr("listen0");
    m.wait_ready(2);
    let first = m.slot_pids();
    let poller = Poller::start(addr);
    if !eventually(DEADLINE, || {
        first.values().all(|&p| poller.answered_by(p) > 0)
    }) {
        panic!(
            "the poller never reached both workers; output:\n{}",
            m.output()
        );
    }

    // One worker takes 96 MiB.
    let (status, body) = http_get(addr, "/grow/96").expect("GET /grow/96");
    assert_eq!(status, 200, "{body}");
    let big = body_pid(&body).unwrap();
    let slot = *first.iter().find(|(_, p)| **p == big).unwrap().0;
    let other = first[&(1 - slot)];

    let recycle = m.wait_event("recycle", |e| e.pid == Some(big));
    assert_eq!(recycle.str("cause"), Some("memory"), "{recycle}");
    assert!(
        recycle.u64("memory_bytes").is_some_and(|b| b > 64 << 20),
        "the figure that triggered it: {recycle}"
    );
    assert_eq!(recycle.u64("limit"), Some(64 << 20));
    let draining = m.wait_event("draining", |e| e.pid == Some(big));
    assert_eq!(draining.str("cause"), Some("memory"), "{draining}");
    let new = draining.i64("replaced_by").unwrap() as i32;
    let ready = m.wait_event("ready", |e| e.pid == Some(new));
    assert!(
        ready.seq < draining.seq,
        "its replacement was ready before it drained"
    );
    assert_eq!(m.wait_exited(big).code(), Some(0), "it drained cleanly");
    // The client goes on polling through the hand-over and after it.
    if !eventually(DEADLINE, || poller.answered_by(new) >= 20) {
        panic!("the replacement never answered; output:\n{}", m.output());
    }
    let (ok, failures) = poller.finish();
    eprintln!(
        "max-memory: {ok} requests answered, {} failed",
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "failed requests: {failures:?}\noutput:\n{}",
        m.output()
    );
    assert!(
        alive(other) && events_of(&m, "exited", other).is_empty(),
        "the other worker untouched"
    );
    assert_eq!(m.events("recycle").len(), 1, "output:\n{}", m.output());
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "output:\n{}", m.output());
}

#[test]
fn max_requests_recycles_one_slot_three_times_with_no_failed_request() {
    let h = hello();
    // ip-hash: every request of this one client goes to the same slot; the other slot gets
    // none and keeps its worker.
    let mut m = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--route",
        "ip-hash",
        "--max-requests",
        "50",
        "--",
        &h,
    ]);
    let addr = m.tcp_addr("listen0");
    m.wait_ready(2);
    let first = m.slot_pids();
    let mut by_slot: BTreeMap<u32, BTreeSet<i32>> = BTreeMap::new();
    let mut failures = Vec::new();
    for i in 0..200 {
        match http_get(addr, "/") {
            Ok((200, body)) => {
                let pid = body_pid(&body).unwrap();
                let slot: u32 = body_field(&body, "worker")
                    .and_then(|w| w.parse().ok())
                    .unwrap_or_else(|| panic!("no worker= in {body:?}"));
                by_slot.entry(slot).or_default().insert(pid);
            }
            Ok((status, body)) => failures.push(format!("request {i}: {status} {body}")),
            Err(e) => failures.push(format!("request {i}: {e}")),
        }
        // A worker past its limit serves until its replacement is ready (then drains): wait
        // for that hand-over before going on, so that the count per worker stays near 50
        // however slowly a replacement starts on a busy machine.
        for r in m.events("recycle") {
            m.wait_event("draining", |e| e.pid == r.pid);
        }
    }
    eprintln!(
        "max-requests: 200 requests, {} failed, pids by slot {by_slot:?}",
        failures.len()
    );
    assert!(failures.is_empty(), "{failures:?}\noutput:\n{}", m.output());
    assert_eq!(by_slot.len(), 1, "one slot took every request: {by_slot:?}");
    let (&slot, pids) = by_slot.iter().next().unwrap();
    assert!(
        pids.len() >= 3,
        "at least 3 workers of slot {slot}: {pids:?}"
    );
    let recycles = m.events("recycle");
    assert!(recycles.len() >= 2, "output:\n{}", m.output());
    for r in &recycles {
        assert_eq!(r.str("cause"), Some("requests"), "{r}");
        assert_eq!(r.u64("limit"), Some(50), "{r}");
        assert_eq!(r.u64("requests"), Some(50), "{r}");
        assert_eq!(r.slot, Some(slot));
    }
    let other = first[&(1 - slot)];
    assert!(
        alive(other) && events_of(&m, "exited", other).is_empty(),
        "the other slot untouched"
    );
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "output:\n{}", m.output());
}

#[test]
fn stop_delay_keeps_serving_then_drains() {
    let mut m = Multinode::serve_hello("2", &["--stop-delay", "3s"]);
    let addr = m.tcp_addr("listen0");
    m.wait_ready(2);
    let pids: BTreeSet<i32> = m.slot_pids().into_values().collect();
    let control = m.control_path().display().to_string();
    let check = || {
        mn(&["status", "--check", "--control", &control])
            .status
            .code()
    };
    assert_eq!(check(), Some(0), "healthy before the stop");
    m.signal(libc::SIGTERM);
    let delay = m.wait_event("stop-delay", |_| true);
    assert_eq!(delay.u64("delay_ms"), Some(3000), "{delay}");
    // Unhealthy at once, for the load balancer's probe.
    assert_eq!(check(), Some(1), "status --check fails during --stop-delay");
    // The lame duck still answers, with the same workers.
    let mut answered = Vec::new();
    for _ in 0..5 {
        let (status, body) = http_get(addr, "/").expect("answered during --stop-delay");
        assert_eq!(status, 200, "{body}");
        answered.push(body_pid(&body).unwrap());
    }
    assert!(
        answered.iter().all(|p| pids.contains(p)),
        "{answered:?} from {pids:?}"
    );
    // Then the drain, and a clean exit.
    let stopping = m.wait_event("stopping", |_| true);
    assert!(delay.seq < stopping.seq);
    assert_eq!(m.wait_exit().code(), Some(0), "output:\n{}", m.output());
    // Nothing reached the workers before the drain: they said STOPPING=1 only after it.
    for e in m.events("worker-stopping") {
        assert!(e.seq > stopping.seq, "{e}");
    }
    for pid in &pids {
        assert_eq!(events_of(&m, "exited", *pid)[0].code(), Some(0));
    }
}

/// `multinode serve -w 2 [--route POLICY] --watchdog 2s -- PROGRAM [ARGS]`, one per example.
fn serve_watched(route: Option<&str>, program: &[&str]) -> Multinode {
    let mut args = vec!["-w", "2", "-l", "127.0.0.1:0", "--watchdog", "2s"];
    if let Some(policy) = route {
        args.extend(["--route", policy]);
    }
    args.push("--");
    args.extend(program);
    Multinode::serve(&args)
}

/// `name` in /usr/bin or on PATH, executable by others (workers run as nobody).
fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let mut dirs = vec![PathBuf::from("/usr/bin")];
    if let Some(path) = std::env::var_os("PATH") {
        dirs.extend(std::env::split_paths(&path));
    }
    dirs.iter().map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o001 != 0)
    })
}

#[test]
fn the_examples_ping_the_watchdog_from_their_serving_loops() {
    let hello = hello();
    let affinity = worker_bin("affinity").display().to_string();
    let mut services: Vec<(&str, Multinode)> = vec![
        ("hello", serve_watched(None, &[&hello])),
        ("affinity", serve_watched(Some("ip-hash"), &[&affinity])),
    ];
    let python = Path::new("/usr/bin/python3");
    if require(python.exists(), "/usr/bin/python3 is not installed") {
        let hello_py = repo_file("examples/python/hello.py").display().to_string();
        let routed_py = repo_file("examples/python/routed.py").display().to_string();
        services.push((
            "hello.py",
            serve_watched(None, &["/usr/bin/python3", &hello_py]),
        ));
        services.push((
            "routed.py",
            serve_watched(Some("round-robin"), &["/usr/bin/python3", &routed_py]),
        ));
    }
    let node = find_program("node");
    let notify = find_program("systemd-notify");
    if require(
        node.is_some() && notify.is_some(),
        "hello.js needs node and systemd-notify (the systemd package) for its pings",
    ) {
        let node = node.unwrap().display().to_string();
        let hello_js = repo_file("examples/node/hello.js").display().to_string();
        services.push(("hello.js", serve_watched(None, &[&node, &hello_js])));
    }
    for (_, m) in &services {
        m.wait_ready(2);
    }
    // Three watchdog intervals, idle but for a request now and then (which wakes every
    // worker's accept on a shared socket, and one takes it): a worker that did not ping from
    // its loop, idle or not, would have been found hung.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_secs(1));
        for (name, m) in &services {
            let (status, body) = http_get(m.tcp_addr("listen0"), "/")
                .unwrap_or_else(|e| panic!("{name}: {e}; output:\n{}", m.output()));
            assert_eq!(status, 200, "{name}: {body}");
        }
    }
    for (name, m) in &services {
        assert!(
            m.events("hung").is_empty() && m.events("exited").is_empty(),
            "{name} kept its workers; output:\n{}",
            m.output()
        );
        assert_eq!(m.events("started").len(), 2, "{name}: no restart");
    }
    for (name, m) in &mut services {
        m.signal(libc::SIGTERM);
        assert_eq!(
            m.wait_exit().code(),
            Some(0),
            "{name}; output:\n{}",
            m.output()
        );
    }
}
