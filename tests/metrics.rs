//! `--metrics` and `status` against the real binary: what an operator (and Prometheus, and a
//! load balancer's health check) sees.
//!
//! `/metrics` is read with a real Prometheus text parser: the Python `prometheus_client`
//! package's, from the venv `.ci/interop-setup` makes at target/interop-venv (override with
//! MULTINODE_INTEROP_VENV). Without it the tests that need it say so and skip, except under CI
//! (CI=true), whose job it is to create it.

mod common;

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// Where `--metrics` is served.
#[derive(Clone, Debug)]
enum At {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

/// The address from multinode's `metrics` event.
fn metrics_at(mn: &Multinode) -> At {
    let e = mn.wait_event("metrics", |_| true);
    let addr = e.str("addr").expect("metrics: addr");
    match addr.strip_prefix("unix:") {
        Some(path) => At::Unix(PathBuf::from(path)),
        None => At::Tcp(addr.parse().expect("a TCP address")),
    }
}

struct Answer {
    status: u16,
    /// Header names lowercased.
    headers: BTreeMap<String, String>,
    body: String,
}

/// One request on a fresh connection, read to end of file (the server closes).
fn request(at: &At, method: &str, path: &str) -> io::Result<Answer> {
    let req = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nUser-Agent: tests\r\n\r\n");
    let mut resp = Vec::new();
    match at {
        At::Tcp(a) => {
            let mut s = TcpStream::connect_timeout(a, Duration::from_secs(10))?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(req.as_bytes())?;
            s.read_to_end(&mut resp)?;
        }
        At::Unix(p) => {
            let mut s = UnixStream::connect(p)?;
            s.set_read_timeout(Some(Duration::from_secs(30)))?;
            s.write_all(req.as_bytes())?;
            s.read_to_end(&mut resp)?;
        }
    }
    let text = String::from_utf8(resp).map_err(io::Error::other)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| io::Error::other(format!("no head in {text:?}")))?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("no status in {text:?}")))?;
    let headers = lines
        .filter_map(|l| l.split_once(": "))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
        .collect();
    Ok(Answer {
        status,
        headers,
        body: body.to_string(),
    })
}

#[track_caller]
fn get(at: &At, path: &str) -> Answer {
    request(at, "GET", path).unwrap_or_else(|e| panic!("GET {path} on {at:?}: {e}"))
}

/// The venv's python3, with prometheus_client; `None` (and the test skipped) without it.
fn prometheus_python() -> Option<PathBuf> {
    let dir = std::env::var_os("MULTINODE_INTEROP_VENV").map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/interop-venv"),
        PathBuf::from,
    );
    let python = dir.join("bin/python3");
    let have = python.exists()
        && Command::new(&python)
            .args(["-c", "import prometheus_client.parser"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
    let why = format!(
        "{} with prometheus_client not found: run .ci/interop-setup",
        python.display()
    );
    require(have, &why).then_some(python)
}

/// A sample, as prometheus_client's parser read it.
#[derive(Debug, Clone)]
struct Sample {
    /// The family's name (for a counter, without `_total`), type and help.
    family: String,
    kind: String,
    help: String,
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

const PARSE: &str = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
for f in text_string_to_metric_families(sys.stdin.read()):
    for s in f.samples:
        print(json.dumps({"family": f.name, "kind": f.type, "help": f.documentation,
                          "name": s.name, "labels": s.labels, "value": s.value}))
"#;

/// `/metrics` (checked: 200, the text format's content type), parsed by prometheus_client.
#[track_caller]
fn scrape(python: &Path, at: &At) -> Vec<Sample> {
    let a = get(at, "/metrics");
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        a.headers.get("content-type").map(String::as_str),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let mut child = Command::new(python)
        .args(["-c", PARSE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(a.body.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "prometheus_client could not parse /metrics: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        a.body
    );
    let samples: Vec<Sample> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            Sample {
                family: v["family"].as_str().unwrap().into(),
                kind: v["kind"].as_str().unwrap().into(),
                help: v["help"].as_str().unwrap().into(),
                name: v["name"].as_str().unwrap().into(),
                labels: v["labels"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_string()))
                    .collect(),
                value: v["value"].as_f64().unwrap(),
            }
        })
        .collect();
    assert!(!samples.is_empty(), "no samples in {}", a.body);
    samples
}

/// The value of sample `name` with exactly `labels`.
fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let want: BTreeMap<String, String> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    samples
        .iter()
        .find(|s| s.name == name && s.labels == want)
        .map(|s| s.value)
}

#[track_caller]
fn must(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    value(samples, name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in {samples:#?}"))
}

/// Polls `/metrics` until `cond` holds; returns that scrape.
#[track_caller]
fn scrape_until(
    python: &Path,
    at: &At,
    what: &str,
    cond: impl Fn(&[Sample]) -> bool,
) -> Vec<Sample> {
    let end = Instant::now() + DEADLINE;
    loop {
        let s = scrape(python, at);
        if cond(&s) {
            return s;
        }
        assert!(Instant::now() < end, "timed out waiting for {what}: {s:#?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// The restart counter goes up when a worker is killed: the scrape before and after, each
/// read by prometheus_client's parser, with the families, types and labels a dashboard needs.
#[test]
fn metrics_parse_and_a_killed_worker_counts_as_a_crash() {
    let Some(python) = prometheus_python() else {
        return;
    };
    let mn = Multinode::serve_hello("2", &["--metrics", "127.0.0.1:0"]);
    mn.wait_ready(2);
    let at = metrics_at(&mn);
    let s = scrape_until(&python, &at, "both slots ready", |s| {
        value(s, "multinode_slot_ready", &[("slot", "1")]) == Some(1.0)
            && value(s, "multinode_slot_ready", &[("slot", "0")]) == Some(1.0)
    });
    // Every family documented and typed.
    for x in &s {
        assert!(!x.help.is_empty(), "{} has no HELP", x.family);
        assert!(
            x.kind == "counter" || x.kind == "gauge",
            "{} is {}",
            x.family,
            x.kind
        );
    }
    let kind = |family: &str| {
        s.iter()
            .find(|x| x.family == family)
            .map(|x| x.kind.clone())
            .unwrap_or_else(|| panic!("no family {family}"))
    };
    assert_eq!(kind("multinode_slot_restarts"), "counter");
    assert_eq!(kind("multinode_reloads"), "counter");
    assert_eq!(kind("multinode_slot_cpu_seconds"), "counter");
    assert_eq!(kind("multinode_log_lines_dropped"), "counter");
    assert_eq!(kind("multinode_slot_memory_bytes"), "gauge");
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        must(&s, "multinode_build_info", &[("version", version)]),
        1.0
    );
    assert_eq!(must(&s, "multinode_workers_configured", &[]), 2.0);
    assert_eq!(must(&s, "multinode_generation", &[]), 1.0);
    assert_eq!(must(&s, "multinode_healthy", &[]), 1.0);
    assert_eq!(
        must(&s, "multinode_reloads_total", &[("outcome", "ok")]),
        0.0
    );
    assert_eq!(must(&s, "multinode_log_lines_dropped_total", &[]), 0.0);
    assert!(must(&s, "process_resident_memory_bytes", &[]) > 0.0);
    for slot in ["0", "1"] {
        assert_eq!(must(&s, "multinode_slot_up", &[("slot", slot)]), 1.0);
        assert!(must(&s, "multinode_slot_memory_bytes", &[("slot", slot)]) > 0.0);
        assert!(must(&s, "multinode_slot_cpu_seconds_total", &[("slot", slot)]) >= 0.0);
        assert!(must(&s, "multinode_slot_uptime_seconds", &[("slot", slot)]) > 0.0);
        for cause in ["crash", "watchdog", "memory", "requests"] {
            let labels = [("slot", slot), ("cause", cause)];
            assert_eq!(must(&s, "multinode_slot_restarts_total", &labels), 0.0);
        }
    }
    assert!(
        !s.iter().any(|x| x.name.starts_with("multinode_route_")),
        "route families outside route mode"
    );

    // kill -9 slot 0's worker; its replacement starts and becomes ready.
    let old = mn.slot_pids()[&0];
    kill(old, libc::SIGKILL);
    let new = mn.wait_started_in_slot(0, &[old]);
    mn.wait_event("ready", |e| e.pid == Some(new));
    let s = scrape_until(&python, &at, "slot 0 ready again", |s| {
        value(s, "multinode_slot_ready", &[("slot", "0")]) == Some(1.0)
    });
    let crashes = [("slot", "0"), ("cause", "crash")];
    assert_eq!(must(&s, "multinode_slot_restarts_total", &crashes), 1.0);
    let other = [("slot", "1"), ("cause", "crash")];
    assert_eq!(must(&s, "multinode_slot_restarts_total", &other), 0.0);
    assert_eq!(must(&s, "multinode_slot_up", &[("slot", "0")]), 1.0);
    assert_eq!(must(&s, "multinode_healthy", &[]), 1.0);

    // Only two pages; the rest is refused in the usual HTTP way.
    assert_eq!(get(&at, "/healthz").status, 200);
    assert_eq!(get(&at, "/").status, 404);
    let post = request(&at, "POST", "/metrics").unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(
        post.headers.get("allow").map(String::as_str),
        Some("GET, HEAD")
    );
    let head = request(&at, "HEAD", "/metrics").unwrap();
    assert_eq!((head.status, head.body.as_str()), (200, ""));
}

/// `--stop-delay`: from SIGTERM on, /healthz says 503 while the workers still serve, until the
/// drain begins.
#[test]
fn healthz_is_503_during_the_stop_delay_while_workers_still_serve() {
    let mut mn = Multinode::serve_hello("2", &["--metrics", "127.0.0.1:0", "--stop-delay", "5s"]);
    mn.wait_ready(2);
    let at = metrics_at(&mn);
    let web = mn.tcp_addr("listen0");
    let ok = get(&at, "/healthz");
    assert_eq!((ok.status, ok.body.as_str()), (200, "ok\n"));
    mn.signal(libc::SIGTERM);
    let end = Instant::now() + DEADLINE;
    let down = loop {
        let a = get(&at, "/healthz");
        if a.status != 200 {
            break a;
        }
        assert!(Instant::now() < end, "/healthz still 200 after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(down.status, 503, "{}", down.body);
    assert!(down.body.contains("stopping"), "{:?}", down.body);
    assert_eq!(down.body.lines().count(), 1, "{:?}", down.body);
    // Still serving: the load balancer sees unhealthy, clients still get answers.
    let (code, body) = http_get(web, "/").expect("a worker answers during the stop delay");
    assert_eq!(code, 200, "{body}");
    let m = get(&at, "/metrics");
    assert!(m.body.contains("\nmultinode_healthy 0\n"), "{}", m.body);
    assert!(
        mn.events("worker-stopping").is_empty() && mn.events("exited").is_empty(),
        "the drain began before --stop-delay ran out:\n{}",
        mn.output()
    );
    assert_eq!(mn.wait_exit().code(), Some(0), "{}", mn.output());
}

/// A slot with no ready worker (one that never says READY=1 under `--ready notify`) makes
/// /healthz 503, naming the slot; once it is ready, 200.
#[test]
fn healthz_is_503_while_a_slot_has_no_ready_worker() {
    let gate = Scratch::new("gate");
    let template = gate.path("open-{id}");
    let mut cmd = serve_command(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--metrics",
        "127.0.0.1:0",
        "--",
        worker_bin("mn-readygate").to_str().unwrap(),
    ]);
    cmd.env("MN_GATE", template.to_str().unwrap());
    let mn = Multinode::spawn(cmd);
    mn.wait_started(2);
    let at = metrics_at(&mn);
    std::fs::write(gate.path("open-0"), "").unwrap();
    mn.wait_event("ready", |e| e.slot == Some(0));
    let a = get(&at, "/healthz");
    assert_eq!(a.status, 503, "{}", a.body);
    assert_eq!(a.body, "slot 1 has no ready worker\n");
    let m = get(&at, "/metrics");
    assert!(
        m.body.contains("\nmultinode_slot_ready{slot=\"0\"} 1\n"),
        "{}",
        m.body
    );
    assert!(
        m.body.contains("\nmultinode_slot_ready{slot=\"1\"} 0\n"),
        "{}",
        m.body
    );
    assert!(
        m.body.contains("\nmultinode_slot_up{slot=\"1\"} 1\n"),
        "{}",
        m.body
    );
    std::fs::write(gate.path("open-1"), "").unwrap();
    mn.wait_event("ready", |e| e.slot == Some(1));
    let a = get(&at, "/healthz");
    assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));
}

/// `--metrics unix:PATH`: a socket file made at start (owned like the `--listen` ones) and
/// removed at exit; and connections that send nothing, or half a request, or more of them
/// than are served at once, hold up no scrape from anyone else.
#[test]
fn metrics_on_a_unix_socket_and_idle_clients_block_no_scrape() {
    let dir = Scratch::new("metrics-sock");
    let path = dir.path("metrics.sock");
    let spec = format!("unix:{}", path.display());
    let mut mn = Multinode::serve_hello("1", &["--metrics", &spec]);
    mn.wait_ready(1);
    let at = metrics_at(&mn);
    assert!(
        std::fs::symlink_metadata(&path)
            .unwrap()
            .file_type()
            .is_socket()
    );
    let a = get(&at, "/healthz");
    assert_eq!((a.status, a.body.as_str()), (200, "ok\n"));

    // One that sends nothing, one that sends half a head, and more idle ones than the server
    // keeps (32): the oldest waiting ones make room.
    let mut idle: Vec<UnixStream> = (0..40)
        .map(|_| UnixStream::connect(&path).unwrap())
        .collect();
    let mut half = UnixStream::connect(&path).unwrap();
    half.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    idle.push(half);
    let t = Instant::now();
    let m = get(&at, "/metrics");
    let took = t.elapsed();
    assert_eq!(m.status, 200);
    assert!(
        m.body.contains("multinode_slot_up{slot=\"0\"} 1"),
        "{}",
        m.body
    );
    // The request timeout is 5 s: a scrape that waited for the idle ones would take that.
    assert!(took < Duration::from_secs(3), "the scrape took {took:?}");
    drop(idle);

    mn.signal(libc::SIGTERM);
    assert_eq!(mn.wait_exit().code(), Some(0), "{}", mn.output());
    assert!(!path.exists(), "{} left behind", path.display());
}

/// Route mode: connections handed over, per slot, and none open once the workers closed them;
/// with `--proxy-from`, connections from elsewhere are counted as refused.
#[test]
fn route_mode_counts_connections_handed_over_and_refused() {
    let Some(python) = prometheus_python() else {
        return;
    };
    let mn = Multinode::serve_hello("2", &["--route", "round-robin", "--metrics", "127.0.0.1:0"]);
    mn.wait_ready(2);
    let at = metrics_at(&mn);
    let web = mn.tcp_addr("listen0");
    for _ in 0..20 {
        let (code, body) = http_get(web, "/").unwrap();
        assert_eq!(code, 200, "{body}");
    }
    let s = scrape_until(&python, &at, "20 handed over, none open", |s| {
        let sum = |name: &str| {
            s.iter()
                .filter(|x| x.name == name)
                .map(|x| x.value)
                .sum::<f64>()
        };
        sum("multinode_route_connections_total") == 20.0
            && sum("multinode_route_connections_open") == 0.0
    });
    // Round-robin: both slots had some.
    for slot in ["0", "1"] {
        let n = must(&s, "multinode_route_connections_total", &[("slot", slot)]);
        assert_eq!(n, 10.0, "slot {slot}");
        assert_eq!(
            must(&s, "multinode_route_connections_queued", &[("slot", slot)]),
            0.0
        );
    }
    assert_eq!(must(&s, "multinode_route_connections_waiting", &[]), 0.0);
    for reason in [
        "full",
        "proxy_untrusted",
        "proxy_invalid",
        "proxy_timeout",
        "proxy_evicted",
    ] {
        let labels = [("reason", reason)];
        assert_eq!(
            must(&s, "multinode_route_connections_refused_total", &labels),
            0.0
        );
    }
    drop(mn);

    // Only 192.0.2.1 may send PROXY headers: a connection from 127.0.0.1 is refused, counted.
    let mn = Multinode::serve_hello(
        "1",
        &[
            "--route",
            "round-robin",
            "--proxy-protocol",
            "--proxy-from",
            "192.0.2.1",
            "--metrics",
            "127.0.0.1:0",
        ],
    );
    mn.wait_ready(1);
    let at = metrics_at(&mn);
    let mut s = TcpStream::connect(mn.tcp_addr("listen0")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        matches!(s.read(&mut buf), Ok(0) | Err(_)),
        "a refused connection is closed"
    );
    let labels = [("reason", "proxy_untrusted")];
    let s = scrape_until(&python, &at, "one refusal counted", |s| {
        value(s, "multinode_route_connections_refused_total", &labels) == Some(1.0)
    });
    assert_eq!(
        must(&s, "multinode_route_connections_total", &[("slot", "0")]),
        0.0,
        "the slot appears, with nothing handed to it"
    );
}

/// `status` has CPU and memory columns; `status --watch` prints a table every second.
#[test]
fn status_shows_cpu_and_memory_and_watch_redraws() {
    let name = unique_name();
    let mn = Multinode::serve_hello("2", &["--name", &name]);
    mn.wait_ready(2);
    let out = mn_ok(&["status", "--name", &name]);
    let lines: Vec<&str> = out.lines().collect();
    let head = lines
        .iter()
        .position(|l| l.starts_with("SLOT"))
        .unwrap_or_else(|| panic!("no table in {out}"));
    let cols: Vec<&str> = lines[head].split_whitespace().collect();
    let cpu = cols.iter().position(|c| *c == "CPU").expect("a CPU column");
    let mem = cols.iter().position(|c| *c == "MEM").expect("a MEM column");
    let rows = &lines[head + 1..];
    assert_eq!(rows.len(), 2, "{out}");
    for r in rows {
        let cells: Vec<&str> = r.split_whitespace().collect();
        let pct = cells[cpu]
            .strip_suffix('%')
            .unwrap_or_else(|| panic!("{r}"));
        assert!(pct.parse::<f64>().is_ok_and(|p| p >= 0.0), "CPU {r}");
        let m = cells[mem];
        assert!(
            m.ends_with(['K', 'M', 'G']) && m[..m.len() - 1].parse::<f64>().is_ok(),
            "MEM {r}"
        );
    }

    let mut watch = Command::new(multinode_bin())
        .args(["status", "--watch", "--name", &name])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _guard = KillOnDrop {
        pids: vec![watch.id() as i32],
        comm: "multinode",
    };
    let mut stdout = watch.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    // Not a terminal: tables one after the other, no screen clearing.
    std::thread::sleep(Duration::from_millis(3500));
    let _ = watch.kill();
    let _ = watch.wait();
    let text = reader.join().unwrap();
    let tables = text.lines().filter(|l| l.starts_with("SLOT")).count();
    assert!(tables >= 2, "{tables} table(s) in 3.5 s:\n{text}");
    assert!(
        !text.contains('\x1b'),
        "escape sequences off a terminal: {text:?}"
    );
}

/// `multinode ARGS`, which must exit 0; its stdout.
#[track_caller]
fn mn_ok(args: &[&str]) -> String {
    let out = mn(args);
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    stdout(&out)
}
