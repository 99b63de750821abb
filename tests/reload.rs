//! Zero-downtime operations (issue 4), against the real binary: rolling reloads on SIGHUP under
//! continuous load, a reload to a program that cannot start, reloads on file change (debounced,
//! ignore globs), SIGTTIN/SIGTTOU scaling, readiness through NOTIFY_SOCKET, and the graceful
//! drain of the bundled hello example.
//!
//! Orderings are checked only between lines multinode prints on stderr (its events, and what
//! workers print on stderr): its stdout and stderr are read by two threads, so the order
//! between the two streams is not kept.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use common::*;

/// SIGHUP reloads per load test.
const RELOADS: u64 = 10;
/// Workers, and client threads, of a load test.
const LOAD_WORKERS: usize = 3;
const CLIENTS: usize = 3;
/// Bounds on the load: requests per client and how long a client runs at most.
const MAX_REQUESTS_PER_CLIENT: u64 = 50_000;
const MAX_LOAD_TIME: Duration = Duration::from_secs(240);
/// A client's pause between two requests (paces the load on a shared 2-core machine).
const PACE: Duration = Duration::from_millis(2);

/// `multinode serve -w N -l 127.0.0.1:0 --ready notify <extra> -- <command>`, once all N
/// workers are ready; returns it and the address it listens on.
fn serve_ready(workers: usize, extra: &[&str], command: &[&str]) -> (Multinode, SocketAddr) {
    let n = workers.to_string();
    let mut args = vec!["-w", &n, "-l", "127.0.0.1:0", "--ready", "notify"];
    args.extend_from_slice(extra);
    args.push("--");
    args.extend_from_slice(command);
    let mn = Multinode::serve(&args);
    let addr = mn.tcp_addr("listen0");
    mn.wait_ready(workers);
    (mn, addr)
}

/// The pid serving each slot: the last one the supervisor reported starting for it.
fn slot_pids(mn: &Multinode) -> BTreeMap<u32, i32> {
    mn.slot_pids()
}

/// The pids started for generation `generation` (2 and up: reloads).
fn generation_pids(mn: &Multinode, generation: u64) -> HashSet<i32> {
    mn.generation_pids(generation).into_iter().collect()
}

/// Waits for the end of the reload to `generation`: its `reloaded` or `reload-failed` event.
#[track_caller]
fn wait_reload_end(mn: &Multinode, generation: u64) -> Event {
    let end = |e: &Event| {
        (e.is("reloaded") || e.is("reload-failed")) && e.generation() == Some(generation)
    };
    mn.wait_any(
        &format!("the end of the reload to generation {generation}"),
        end,
    )
}

/// Waits for the end of the reload to `generation` and asserts it succeeded.
#[track_caller]
fn wait_reload_done(mn: &Multinode, generation: u64) -> Event {
    let e = wait_reload_end(mn, generation);
    assert!(
        e.is("reloaded"),
        "reload to generation {generation} failed: {e}\noutput:\n{}",
        mn.output()
    );
    e
}

/// Waits for the end of the reload to `generation` and asserts it failed.
#[track_caller]
fn wait_reload_failed(mn: &Multinode, generation: u64) -> Event {
    let e = wait_reload_end(mn, generation);
    assert!(
        e.is("reload-failed"),
        "reload to generation {generation} succeeded: {e}\noutput:\n{}",
        mn.output()
    );
    e
}

// ---------------------------------------------------------------------------------------------
// Load

#[derive(Default)]
struct ClientStats {
    ok: u64,
    /// Kept-alive connections the server ended in a response (`Connection: close`).
    closed_in_response: u64,
    /// Every pid that answered this client.
    pids: HashSet<i32>,
    failures: Vec<String>,
}

/// Client threads making requests continuously until told to stop (or the bounds run out).
struct Load {
    stop: Arc<AtomicBool>,
    stats: Vec<Arc<Mutex<ClientStats>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Load {
    fn start(addr: SocketAddr, keep_alive: bool) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let mut stats = Vec::new();
        let mut threads = Vec::new();
        for _ in 0..CLIENTS {
            let s = Arc::new(Mutex::new(ClientStats::default()));
            let (stop, s2) = (stop.clone(), s.clone());
            threads.push(std::thread::spawn(move || {
                if keep_alive {
                    keep_alive_client(addr, &stop, &s2)
                } else {
                    fresh_connection_client(addr, &stop, &s2)
                }
            }));
            stats.push(s);
        }
        Load {
            stop,
            stats,
            threads,
        }
    }

    /// Waits until every client has been answered by one of `pids`.
    fn wait_served_by(&self, pids: &HashSet<i32>, what: &str) {
        let all = eventually(DEADLINE, || {
            self.stats
                .iter()
                .all(|s| !s.lock().unwrap().pids.is_disjoint(pids))
        });
        assert!(
            all,
            "not every client was answered by {what} ({pids:?}); pids seen per client: {:?}",
            self.stats
                .iter()
                .map(|s| s.lock().unwrap().pids.len())
                .collect::<Vec<_>>()
        );
    }

    /// Stops the clients and returns what each saw.
    fn finish(mut self) -> Vec<ClientStats> {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            t.join().expect("client thread");
        }
        self.stats
            .iter()
            .map(|s| std::mem::take(&mut *s.lock().unwrap()))
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // On a failed test: the clients end after their current request.
        self.stop.store(true, Ordering::SeqCst);
    }
}

fn keep_going(stop: &AtomicBool, n: u64, start: Instant) -> bool {
    !stop.load(Ordering::SeqCst) && n < MAX_REQUESTS_PER_CLIENT && start.elapsed() < MAX_LOAD_TIME
}

/// `GET /` on a new connection, written in one piece (with Nagle's algorithm on, a request
/// written in pieces waits for the server's delayed ACK between them: 40 ms a request); reads
/// the response to the end of the connection.
fn get_on_new_connection(addr: SocketAddr) -> std::io::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    s.write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let status = resp
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad response {resp:?}")))?;
    let body = resp
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_string();
    Ok((status, body))
}

/// One request per new connection.
fn fresh_connection_client(addr: SocketAddr, stop: &AtomicBool, stats: &Mutex<ClientStats>) {
    let start = Instant::now();
    let mut n = 0;
    while keep_going(stop, n, start) {
        n += 1;
        let res = get_on_new_connection(addr);
        let mut s = stats.lock().unwrap();
        match res {
            Ok((200, body)) => match body_pid(&body) {
                Some(pid) => {
                    s.ok += 1;
                    s.pids.insert(pid);
                }
                None => s.failures.push(format!("request {n}: no pid in {body:?}")),
            },
            Ok((status, body)) => s.failures.push(format!("request {n}: {status} {body:?}")),
            Err(e) => s
                .failures
                .push(format!("request {n} at {:?}: {e}", start.elapsed())),
        }
        drop(s);
        std::thread::sleep(PACE);
    }
}

/// Requests on a kept-alive connection; a new one after a response with `Connection: close`.
///
/// Two kinds of failure: a request that gets no response (the connection is closed or reset
/// after it was sent), and a kept-alive connection the server closes while it is idle, with no
/// `Connection: close`: the client checks before each reuse (as a pooled HTTP client does),
/// so that case is told apart, and no request is sent on it.
fn keep_alive_client(addr: SocketAddr, stop: &AtomicBool, stats: &Mutex<ClientStats>) {
    let start = Instant::now();
    let mut n = 0;
    // The connection, the pid serving it, and how many responses it carried.
    let mut conn: Option<(KeepAlive, Option<i32>, u64)> = None;
    while keep_going(stop, n, start) {
        if let Some((c, served_by, answered)) = &conn {
            if c.closed_by_server() {
                stats.lock().unwrap().failures.push(format!(
                    "at {:?}, pid {served_by:?} closed an idle kept-alive connection after \
                     {answered} response(s), none with `Connection: close`",
                    start.elapsed()
                ));
                conn = None;
            }
        }
        if conn.is_none() {
            match KeepAlive::connect(addr).and_then(|c| c.set_nodelay().map(|()| c)) {
                Ok(c) => conn = Some((c, None, 0)),
                Err(e) => {
                    let at = start.elapsed();
                    stats
                        .lock()
                        .unwrap()
                        .failures
                        .push(format!("connect at {at:?}: {e}"));
                    std::thread::sleep(PACE);
                    continue;
                }
            }
        }
        n += 1;
        let (c, served_by, answered) = conn.as_mut().unwrap();
        let res = c.get("/");
        let mut s = stats.lock().unwrap();
        match res {
            Ok((200, body, close)) => match body_pid(&body) {
                Some(pid) => {
                    s.ok += 1;
                    s.pids.insert(pid);
                    *served_by = Some(pid);
                    *answered += 1;
                    if close {
                        s.closed_in_response += 1;
                        conn = None;
                    }
                }
                None => {
                    s.failures.push(format!("request {n}: no pid in {body:?}"));
                    conn = None;
                }
            },
            Ok((status, body, _)) => {
                s.failures.push(format!("request {n}: {status} {body:?}"));
                conn = None;
            }
            Err(e) => {
                s.failures.push(format!(
                    "at {:?}, request {n} got no response on a kept-alive connection to pid \
                     {served_by:?} that had carried {answered} response(s): {e}",
                    start.elapsed()
                ));
                conn = None;
            }
        }
        drop(s);
        std::thread::sleep(PACE);
    }
}

/// 10 SIGHUP reloads of 3 hello workers while 3 clients make requests continuously; each
/// reload starts once every client has been answered by the previous one's new workers.
fn reloads_under_load(keep_alive: bool) {
    let (mn, addr) = serve_ready(LOAD_WORKERS, &[], &[&hello()]);
    let initial = slot_pids(&mn);
    assert_eq!(initial.len(), LOAD_WORKERS, "{}", mn.output());
    let load = Load::start(addr, keep_alive);
    load.wait_served_by(&initial.values().copied().collect(), "generation 1");
    for generation in 2..2 + RELOADS {
        mn.signal(libc::SIGHUP);
        wait_reload_done(&mn, generation);
        let new = generation_pids(&mn, generation);
        assert_eq!(new.len(), LOAD_WORKERS, "{}", mn.output());
        load.wait_served_by(&new, &format!("generation {generation}"));
    }
    let stats = load.finish();

    let failures: Vec<&String> = stats.iter().flat_map(|s| &s.failures).collect();
    let ok: u64 = stats.iter().map(|s| s.ok).sum();
    let in_response: u64 = stats.iter().map(|s| s.closed_in_response).sum();
    assert!(
        failures.is_empty(),
        "{} failure(s) (and {ok} requests answered) across {RELOADS} reloads; the first ones:\n{}\n\
         output:\n{}",
        failures.len(),
        failures
            .iter()
            .take(10)
            .map(|f| f.as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        mn.output()
    );
    eprintln!(
        "{RELOADS} reloads: {ok} requests answered, none failed; kept-alive connections closed \
         in a response: {in_response}"
    );

    // Every slot has a new pid, and the old workers are gone.
    let last = slot_pids(&mn);
    assert_eq!(
        last.keys().collect::<Vec<_>>(),
        initial.keys().collect::<Vec<_>>()
    );
    for (slot, pid) in &last {
        assert_ne!(initial[slot], *pid, "slot {slot} kept its pid");
    }
    let last_set: HashSet<i32> = last.values().copied().collect();
    assert_eq!(last_set, generation_pids(&mn, RELOADS + 1));
    let settled = eventually(DEADLINE, || {
        children_of(mn.pid).into_iter().collect::<HashSet<_>>() == last_set
    });
    assert!(
        settled,
        "the supervisor's children are {:?}, not the last generation {last_set:?}",
        children_of(mn.pid)
    );
    // Every replaced worker drained and exited by itself (no SIGKILL after --grace).
    let killed = mn
        .events("exited")
        .iter()
        .any(|e| e.signal() == Some("SIGKILL"));
    assert!(
        mn.events("kill").is_empty() && !killed,
        "a worker had to be killed:\n{}",
        mn.output()
    );
}

#[test]
fn sighup_reloads_under_keep_alive_load_fail_no_request() {
    reloads_under_load(true);
}

#[test]
fn sighup_reloads_under_new_connection_load_fail_no_request() {
    reloads_under_load(false);
}

// ---------------------------------------------------------------------------------------------
// A broken deploy

/// Writes an executable script atomically (write a temporary file, rename it over), so a
/// worker starting meanwhile sees either the old or the new content, never half of it.
fn write_script(path: &Path, content: &str) {
    let tmp = path.with_extension("new");
    write_mode(&tmp, content, 0o755);
    std::fs::rename(&tmp, path).unwrap();
}

#[test]
fn reload_to_a_program_that_exits_at_start_keeps_the_old_workers_serving() {
    let scratch = Scratch::new("broken-deploy");
    let app = scratch.path("app.sh");
    write_script(&app, &format!("#!/bin/sh\nexec {} \"$@\"\n", hello()));
    let (mn, addr) = serve_ready(2, &[], &[&app.display().to_string()]);
    let old: HashSet<i32> = slot_pids(&mn).values().copied().collect();

    // The new version cannot even start.
    write_script(
        &app,
        "#!/bin/sh\necho 'app.sh: broken deploy' >&2\nexit 1\n",
    );
    mn.signal(libc::SIGHUP);
    let failed = wait_reload_failed(&mn, 2);
    let out = mn.output();
    assert_eq!(
        failed.u64("kept"),
        Some(2),
        "2 workers keep serving: {failed}"
    );
    // It failed because the new worker exited with code 1.
    let new = generation_pids(&mn, 2);
    assert!(
        mn.events("exited")
            .iter()
            .any(|e| e.pid.is_some_and(|p| new.contains(&p)) && e.code() == Some(1)),
        "the new worker exited with code 1:\n{out}"
    );
    assert!(
        mn.events(OUTPUT)
            .iter()
            .any(|e| e.msg == "app.sh: broken deploy"),
        "{out}"
    );
    assert!(mn.events("reloaded").is_empty(), "{out}");
    assert!(mn.events("draining").is_empty(), "{out}");

    // The old workers keep answering, both of them, and only them.
    let mut seen = HashSet::new();
    let mut n = 0;
    while seen != old && n < 2000 {
        n += 1;
        let (status, body) = http_get(addr, "/").expect("a request after the failed reload");
        assert_eq!(status, 200, "{body}");
        let pid = body_pid(&body).expect("a pid in the body");
        assert!(
            old.contains(&pid),
            "answered by {pid}, not an old worker {old:?}"
        );
        seen.insert(pid);
    }
    assert_eq!(seen, old, "not every old worker answered in {n} requests");
    // Nothing restarts the broken program behind the scenes.
    assert_eq!(
        children_of(mn.pid).into_iter().collect::<HashSet<_>>(),
        old,
        "{}",
        mn.output()
    );

    // A fixed deploy rolls out as usual.
    write_script(&app, &format!("#!/bin/sh\nexec {} \"$@\"\n", hello()));
    mn.signal(libc::SIGHUP);
    wait_reload_done(&mn, 3);
    let new = generation_pids(&mn, 3);
    assert_eq!(new.len(), 2);
    assert!(new.is_disjoint(&old));
}

// ---------------------------------------------------------------------------------------------
// Graceful drain of the examples

#[test]
fn a_request_in_flight_across_a_reload_completes() {
    let (mn, addr) = serve_ready(1, &[], &[&hello()]);
    let old = slot_pids(&mn)[&0];
    let slow = std::thread::spawn(move || http_get(addr, "/sleep/5000"));
    // The slow request is in flight once the worker has counted it: hello numbers the requests
    // it reads, and ours are the only other ones.
    let mut counted = false;
    for mine in 1..=200u64 {
        let (status, body) = http_get(addr, "/").unwrap();
        assert_eq!(status, 200);
        let reqno: u64 = body
            .split("reqno=")
            .nth(1)
            .and_then(|r| r.trim().parse().ok())
            .unwrap();
        if reqno > mine {
            counted = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    assert!(counted, "hello never read the slow request");

    mn.signal(libc::SIGHUP);
    mn.wait_event("draining", |e| e.slot == Some(0) && e.pid == Some(old));
    let ended_before = slow.is_finished();
    let (status, body) = slow
        .join()
        .unwrap()
        .expect("the response to the request in flight");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body_pid(&body), Some(old), "{body}");
    assert!(
        !ended_before,
        "inconclusive: the slow request was answered before its worker was asked to drain"
    );
    let exited = mn.wait_exited(old);
    assert_eq!(exited.code(), Some(0), "{exited}");
}
// ---------------------------------------------------------------------------------------------
// --watch

/// What caused each reload so far (the `why` of the `reload` events), in order.
fn reload_causes(mn: &Multinode) -> Vec<String> {
    mn.events("reload")
        .iter()
        .map(|e| e.why().unwrap_or_default().to_string())
        .collect()
}

/// `touch`: sets the modification time (an attribute change, no content change).
fn touch(path: &Path) {
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(SystemTime::now()))
        .unwrap_or_else(|e| panic!("touch {}: {e}", path.display()));
}

/// Asserts that the reloads so far were caused by changes to `paths`, in this order.
fn assert_reload_causes(mn: &Multinode, paths: &[&Path]) {
    let got = reload_causes(mn);
    let want: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    // A file change names the changed path last in `why` (`change in PATH`).
    let ok = got.len() == want.len() && got.iter().zip(&want).all(|(g, w)| g.ends_with(w));
    assert!(
        ok,
        "expected reloads caused by {want:#?}, got {got:#?}\noutput:\n{}",
        mn.output()
    );
}

#[test]
fn watched_file_touched_20_times_or_saved_by_rename_reloads_once_each() {
    let scratch = Scratch::new("watch-file");
    let conf = scratch.path("app.conf");
    let marker = scratch.path("marker");
    std::fs::write(&conf, "version 1\n").unwrap();
    std::fs::write(&marker, "").unwrap();
    let (conf_s, marker_s) = (conf.display().to_string(), marker.display().to_string());
    let (mn, _) = serve_ready(1, &["--watch", &conf_s, "--watch", &marker_s], &[&hello()]);

    // A burst: 20 touches within about 60 ms, well inside the default 300 ms debounce.
    for _ in 0..20 {
        touch(&conf);
        std::thread::sleep(Duration::from_millis(3));
    }
    wait_reload_done(&mn, 2);
    // The positive control: a change to the other watched file, seen through the same inotify
    // queue after every event of the burst. Had the burst left a second reload behind, it
    // would show up before this one, or as its cause.
    touch(&marker);
    wait_reload_done(&mn, 3);
    assert_reload_causes(&mn, &[&conf, &marker]);

    // An editor's save: write a temporary file beside it, rename it over.
    let tmp = scratch.path("app.conf.tmp");
    std::fs::write(&tmp, "version 2\n").unwrap();
    std::fs::rename(&tmp, &conf).unwrap();
    wait_reload_done(&mn, 4);
    touch(&marker);
    wait_reload_done(&mn, 5);
    assert_reload_causes(&mn, &[&conf, &marker, &conf, &marker]);
}

#[test]
fn watched_directory_reloads_on_a_change_inside_and_not_on_ignored_paths() {
    let scratch = Scratch::new("watch-dir");
    let dir = scratch.path("app");
    for d in ["sub", "target"] {
        std::fs::create_dir_all(dir.join(d)).unwrap();
    }
    let (a, b) = (dir.join("sub/a.txt"), dir.join("b.txt"));
    std::fs::write(&a, "1").unwrap();
    let dir_s = dir.display().to_string();
    let (mn, _) = serve_ready(
        1,
        &["--watch", &dir_s, "--watch-ignore", "*.swp"],
        &[&hello()],
    );

    // A file in a subdirectory changes.
    std::fs::write(&a, "2").unwrap();
    wait_reload_done(&mn, 2);
    assert_reload_causes(&mn, &[&a]);

    // Changes under target/ (ignored by default) and to a swap file (--watch-ignore)...
    std::fs::write(dir.join("target/x"), "build output").unwrap();
    std::fs::write(dir.join("sub/.a.txt.swp"), "swap").unwrap();
    // ...then the positive control, behind them in the same inotify queue: had they counted,
    // they would have caused a reload of their own, or be named as this one's cause.
    std::fs::write(&b, "1").unwrap();
    wait_reload_done(&mn, 3);
    assert_reload_causes(&mn, &[&a, &b]);
}

/// `target/` is ignored by default, so creating the directory itself (the first `cargo build`
/// of a watched project) is no reason to reload either. (Removing it, `cargo clean`, is the
/// same case: the event names `.../target`, which `**/target/**` does not match.)
#[test]
fn creating_an_ignored_directory_does_not_reload() {
    let scratch = Scratch::new("watch-target");
    let dir = scratch.path("app");
    std::fs::create_dir_all(&dir).unwrap();
    let b = dir.join("b.txt");
    let dir_s = dir.display().to_string();
    let (mn, _) = serve_ready(1, &["--watch", &dir_s], &[&hello()]);

    std::fs::create_dir(dir.join("target")).unwrap();
    std::fs::write(dir.join("target/x"), "build output").unwrap();
    // The positive control, behind them in the same inotify queue.
    std::fs::write(&b, "1").unwrap();
    wait_reload_done(&mn, 2);
    assert_reload_causes(&mn, &[&b]);
}

// ---------------------------------------------------------------------------------------------
// Scaling

/// Makes requests on new connections until the pids answering are exactly `want` (each seen
/// at least once, no other); panics on another pid, or when not all answered in time.
fn wait_answering(addr: SocketAddr, want: &HashSet<i32>) {
    let mut seen = HashSet::new();
    let end = Instant::now() + DEADLINE;
    let mut n = 0;
    while &seen != want {
        assert!(
            Instant::now() < end && n < 5000,
            "after {n} requests, answered by {seen:?}, want {want:?}"
        );
        n += 1;
        let (status, body) = http_get(addr, "/").expect("a request");
        assert_eq!(status, 200, "{body}");
        let pid = body_pid(&body).expect("a pid in the body");
        assert!(want.contains(&pid), "answered by {pid}, want only {want:?}");
        seen.insert(pid);
    }
}

#[test]
fn sigttin_and_sigttou_change_the_number_of_pids_answering() {
    let (mn, addr) = serve_ready(2, &[], &[&hello()]);
    let two: HashSet<i32> = slot_pids(&mn).values().copied().collect();
    wait_answering(addr, &two);

    mn.signal(libc::SIGTTIN);
    mn.wait_event("scale", |e| e.workers() == Some(3));
    mn.wait_ready(3);
    let three: HashSet<i32> = slot_pids(&mn).values().copied().collect();
    assert_eq!(three.len(), 3);
    assert!(three.is_superset(&two));
    wait_answering(addr, &three);

    // Two signals sent at once may merge into one: wait for each.
    mn.signal(libc::SIGTTOU);
    mn.wait_event("scale", |e| {
        e.workers() == Some(2) && e.why() == Some("SIGTTOU")
    });
    mn.signal(libc::SIGTTOU);
    mn.wait_event("scale", |e| e.workers() == Some(1));
    let slots = slot_pids(&mn);
    for slot in [1, 2] {
        let pid = slots[&slot];
        let gone = eventually(DEADLINE, || !alive(pid));
        assert!(gone, "worker.{slot}[{pid}] still runs\n{}", mn.output());
    }
    // Every connection now goes to the one worker left.
    for _ in 0..50 {
        let (status, body) = http_get(addr, "/").expect("a request");
        assert_eq!(status, 200, "{body}");
        assert_eq!(body_pid(&body), Some(slots[&0]), "{body}");
    }
}

// ---------------------------------------------------------------------------------------------
// Readiness

/// Position of the first event satisfying `pred`; panics with the output if there is none.
fn index_of(mn: &Multinode, what: &str, pred: impl Fn(&Event) -> bool) -> usize {
    mn.all_events()
        .iter()
        .find(|e| pred(e))
        .unwrap_or_else(|| panic!("no line for {what}; output:\n{}", mn.output()))
        .seq
}

/// mn-notify's `mn-notify pid=PID sending READY=1`, from worker `pid`.
fn sending_ready(pid: i32) -> impl Fn(&Event) -> bool {
    move |e: &Event| {
        e.is(OUTPUT)
            && e.pid == Some(pid)
            && e.msg == format!("mn-notify pid={pid} sending READY=1")
    }
}

fn ready_of(pid: i32) -> impl Fn(&Event) -> bool {
    move |e: &Event| e.is("ready") && e.pid == Some(pid)
}

#[test]
fn a_worker_that_sends_ready_after_1s_is_not_ready_before() {
    let notify = worker_bin("mn-notify").display().to_string();
    let (mn, _) = serve_ready(1, &[], &[&notify, "1000"]);
    let first = slot_pids(&mn)[&0];
    mn.wait_output(sending_ready(first));
    let sent = index_of(
        &mn,
        "the first worker sending READY=1",
        sending_ready(first),
    );
    let ready = index_of(&mn, "the first worker's ready event", ready_of(first));
    assert!(sent < ready, "ready before READY=1:\n{}", mn.output());

    // A reload: the old worker drains only once the new one is ready.
    mn.signal(libc::SIGHUP);
    wait_reload_done(&mn, 2);
    let second = slot_pids(&mn)[&0];
    mn.wait_output(sending_ready(second));
    let sent = index_of(&mn, "the new worker sending READY=1", sending_ready(second));
    let ready = index_of(&mn, "the new worker's ready event", ready_of(second));
    let draining = index_of(&mn, "the old worker draining", |e| {
        e.is("draining")
            && e.slot == Some(0)
            && e.pid == Some(first)
            && e.i64("replaced_by") == Some(i64::from(second))
    });
    assert!(
        sent < ready && ready < draining,
        "want: new worker sends READY=1, is ready, then the old one drains:\n{}",
        mn.output()
    );
}

#[test]
fn ready_from_a_foreign_process_is_ignored_and_the_reload_times_out() {
    let notify = worker_bin("mn-notify").display().to_string();
    // Generation 1 is ready at once; from generation 2 on, it never sends READY=1.
    let (mn, _) = serve_ready(1, &["--ready-timeout", "2s"], &[&notify, "0", "2"]);
    let old = slot_pids(&mn)[&0];

    mn.signal(libc::SIGHUP);
    let never = mn.wait_output(|e| {
        e.msg.starts_with("mn-notify pid=") && e.msg.ends_with("will never send READY=1")
    });
    let new = never.pid.unwrap();
    let start_prefix = format!("mn-notify pid={new} generation=2 notify=");
    let start_line = mn.wait_output(|e| e.msg.starts_with(&start_prefix));
    let path = start_line.msg[start_prefix.len()..].to_string();
    // This test runs as root and is no worker: its READY=1 must not count for anyone.
    let sock = std::os::unix::net::UnixDatagram::unbound().unwrap();
    sock.send_to(b"READY=1", &path)
        .unwrap_or_else(|e| panic!("send READY=1 to {path}: {e}"));
    assert!(
        mn.events("reload-failed").is_empty(),
        "inconclusive: the foreign READY=1 was sent after the ready timeout\n{}",
        mn.output()
    );

    let failed = wait_reload_failed(&mn, 2);
    let out = mn.output();
    // It failed because the new worker was not ready in time: it had not exited then.
    assert!(
        !mn.events("exited")
            .iter()
            .any(|e| e.pid == Some(new) && e.seq < failed.seq),
        "worker {new} exited before the reload failed, so it did not time out:\n{out}"
    );
    assert!(
        mn.events("ready").iter().all(|e| !ready_of(new)(e)),
        "the foreign READY=1 made worker {new} ready:\n{out}"
    );
    assert!(mn.events("draining").is_empty(), "{out}");
    assert!(alive(old), "the old worker {old} is gone:\n{out}");
}
