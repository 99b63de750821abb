//! The chaos scripts' HTTP load generator: std only, built with `rustc -O` by bench/chaos.sh.
//! Unlike wrk it records every failed request (when, how, on which worker's connection), so a
//! script can hold the failures up against the faults it caused.
//!
//! ```text
//! load run ADDR [--conns N] [--secs S] [--close] [--timeout-ms T] [--fails FILE] [--timeline FILE]
//! load idle ADDR --conns N [--hold-secs S] [--status FILE]
//! ```
//!
//! `run`: N threads, each sending `GET /` over and over for S seconds, on one keep-alive
//! connection (reopened after a failure or a `Connection: close`), or on a new connection per
//! request with `--close`. A request fails when connecting, writing or reading fails, when no
//! complete answer came within T ms of its start, or when the status is not 200. At the end it
//! prints one line: `sent= ok= failed=` with the failures by kind (`connect reset eof timeout
//! write status`) and latency percentiles. `--fails FILE` gets one line per failure:
//! `END_MS START_MS KIND PID FIRST` (epoch milliseconds; PID the worker the connection's last
//! answer came from, 0 when unknown; FIRST 1 for a connection's first request). `--timeline
//! FILE` gets `SECOND OK FAILED` per second of the run (by the second a request ended in).
//!
//! `idle`: opens N connections, then sends one request on each and reads every answer (so each
//! connection is known to have reached a worker), writes `held N answered A failed F` to the
//! status file, keeps them open until `FILE.release` exists or S seconds passed (default 60),
//! closes them all and writes `closed` to the status file.

use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

fn epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn die(msg: &str) -> ! {
    eprintln!("load: {msg}");
    std::process::exit(2)
}

struct Args {
    cmd: String,
    addr: SocketAddr,
    conns: usize,
    secs: u64,
    close: bool,
    timeout: Duration,
    fails: Option<String>,
    timeline: Option<String>,
    status: Option<String>,
}

fn parse_args() -> Args {
    let mut it = std::env::args().skip(1);
    let usage = "usage: load run|idle ADDR [--conns N] [--secs S] [--close] [--timeout-ms T] \
                 [--fails FILE] [--timeline FILE] [--hold-secs S] [--status FILE]";
    let cmd = it.next().unwrap_or_else(|| die(usage));
    let addr = it
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| die(usage));
    let mut a = Args {
        cmd,
        addr,
        conns: 32,
        secs: 10,
        close: false,
        timeout: Duration::from_secs(5),
        fails: None,
        timeline: None,
        status: None,
    };
    while let Some(flag) = it.next() {
        if flag == "--close" {
            a.close = true;
            continue;
        }
        let val = it
            .next()
            .unwrap_or_else(|| die(&format!("{flag} needs a value")));
        let num = || {
            val.parse::<u64>()
                .unwrap_or_else(|_| die(&format!("{flag}: not a number: {val}")))
        };
        match flag.as_str() {
            "--conns" => a.conns = num() as usize,
            "--secs" | "--hold-secs" => a.secs = num(),
            "--timeout-ms" => a.timeout = Duration::from_millis(num()),
            "--fails" => a.fails = Some(val),
            "--timeline" => a.timeline = Some(val),
            "--status" => a.status = Some(val),
            _ => die(usage),
        }
    }
    a
}

/// How a request ended.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
enum Kind {
    Connect,
    Reset,
    Eof,
    Timeout,
    Write,
    Status,
}

impl Kind {
    const ALL: [Kind; 6] = [
        Kind::Connect,
        Kind::Reset,
        Kind::Eof,
        Kind::Timeout,
        Kind::Write,
        Kind::Status,
    ];
    fn name(self) -> &'static str {
        match self {
            Kind::Connect => "connect",
            Kind::Reset => "reset",
            Kind::Eof => "eof",
            Kind::Timeout => "timeout",
            Kind::Write => "write",
            Kind::Status => "status",
        }
    }
    fn of_read(e: &std::io::Error) -> Kind {
        match e.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => Kind::Timeout,
            ErrorKind::UnexpectedEof => Kind::Eof,
            _ => Kind::Reset,
        }
    }
}

struct Failure {
    end_ms: u64,
    start_ms: u64,
    kind: Kind,
    pid: u32,
    first: bool,
}

#[derive(Default)]
struct Tally {
    ok: u64,
    fails: Vec<Failure>,
    /// Latencies of answered requests, in microseconds.
    latencies: Vec<u32>,
    /// (second of the run, ok, failed)
    per_sec: HashMap<u64, (u64, u64)>,
}

/// An answer: the worker's pid from the body, and whether the server closes the connection.
struct Answer {
    pid: u32,
    close: bool,
}

/// Reads one HTTP response (head + Content-Length body) from `s` before `deadline`.
fn read_answer(s: &mut TcpStream, deadline: Instant) -> Result<Answer, Kind> {
    let mut buf = Vec::with_capacity(512);
    let mut chunk = [0u8; 4096];
    let mut head_end = None;
    let mut want = usize::MAX;
    loop {
        if let Some(h) = head_end {
            if buf.len() >= h + want {
                break;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(Kind::Timeout);
        }
        s.set_read_timeout(Some(left)).map_err(|_| Kind::Reset)?;
        match s.read(&mut chunk) {
            Ok(0) => return Err(Kind::Eof),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(Kind::of_read(&e)),
        }
        if head_end.is_none() {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                head_end = Some(i + 4);
                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                want = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
            }
        }
    }
    let h = head_end.unwrap_or(0);
    let head = String::from_utf8_lossy(&buf[..h]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") && !head.starts_with("http/1.0 200") {
        return Err(Kind::Status);
    }
    let close = head.lines().any(|l| {
        l.strip_prefix("connection:")
            .is_some_and(|v| v.trim() == "close")
    });
    let body = String::from_utf8_lossy(&buf[h..(h + want).min(buf.len())]).into_owned();
    let pid = body
        .split("process=")
        .nth(1)
        .map(|r| {
            r.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or(0);
    Ok(Answer { pid, close })
}

fn client(addr: SocketAddr, close: bool, timeout: Duration, t0: Instant, end: Instant) -> Tally {
    let req: &[u8] = if close {
        b"GET / HTTP/1.1\r\nHost: chaos\r\nConnection: close\r\n\r\n"
    } else {
        b"GET / HTTP/1.1\r\nHost: chaos\r\n\r\n"
    };
    let mut t = Tally::default();
    let mut conn: Option<(TcpStream, u32)> = None;
    while Instant::now() < end {
        let start = Instant::now();
        let start_ms = epoch_ms();
        let deadline = start + timeout;
        let first = conn.is_none();
        let result = (|| {
            if conn.is_none() {
                let s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| {
                    if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) {
                        Kind::Timeout
                    } else {
                        Kind::Connect
                    }
                })?;
                let _ = s.set_nodelay(true);
                conn = Some((s, 0));
            }
            let (s, _) = conn.as_mut().expect("connected above");
            s.write_all(req).map_err(|_| Kind::Write)?;
            read_answer(s, deadline)
        })();
        let sec = t0.elapsed().as_secs();
        match result {
            Ok(a) => {
                t.ok += 1;
                t.per_sec.entry(sec).or_default().0 += 1;
                let us = start.elapsed().as_micros().min(u32::MAX as u128) as u32;
                t.latencies.push(us);
                if close || a.close {
                    conn = None;
                } else if let Some(c) = conn.as_mut() {
                    c.1 = a.pid;
                }
            }
            Err(kind) => {
                let pid = conn.as_ref().map_or(0, |c| c.1);
                t.fails.push(Failure {
                    end_ms: epoch_ms(),
                    start_ms,
                    kind,
                    pid,
                    first,
                });
                t.per_sec.entry(sec).or_default().1 += 1;
                conn = None;
                if kind == Kind::Connect {
                    // Refused: do not spin on connect while nothing listens.
                    std::thread::sleep(Duration::from_millis(10));
                }
            }
        }
    }
    t
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

fn run(a: &Args) {
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs(a.secs);
    let threads: Vec<_> = (0..a.conns)
        .map(|_| {
            let (addr, close, timeout) = (a.addr, a.close, a.timeout);
            std::thread::spawn(move || client(addr, close, timeout, t0, end))
        })
        .collect();
    let mut all = Tally::default();
    for th in threads {
        let t = th
            .join()
            .unwrap_or_else(|_| die("a client thread panicked"));
        all.ok += t.ok;
        all.fails.extend(t.fails);
        all.latencies.extend(t.latencies);
        for (s, (o, f)) in t.per_sec {
            let e = all.per_sec.entry(s).or_default();
            e.0 += o;
            e.1 += f;
        }
    }
    all.latencies.sort_unstable();
    all.fails.sort_by_key(|f| f.end_ms);
    let mut line = format!(
        "sent={} ok={} failed={}",
        all.ok + all.fails.len() as u64,
        all.ok,
        all.fails.len()
    );
    for k in Kind::ALL {
        let n = all.fails.iter().filter(|f| f.kind == k).count();
        line += &format!(" {}={n}", k.name());
    }
    line += &format!(
        " p50_ms={:.2} p99_ms={:.2} max_ms={:.2} secs={:.2}",
        percentile(&all.latencies, 0.5),
        percentile(&all.latencies, 0.99),
        percentile(&all.latencies, 1.0),
        t0.elapsed().as_secs_f64()
    );
    println!("{line}");
    if let Some(path) = &a.fails {
        let mut out = String::new();
        for f in &all.fails {
            out += &format!(
                "{} {} {} {} {}\n",
                f.end_ms,
                f.start_ms,
                f.kind.name(),
                f.pid,
                u8::from(f.first)
            );
        }
        std::fs::write(path, out).unwrap_or_else(|e| die(&format!("{path}: {e}")));
    }
    if let Some(path) = &a.timeline {
        let mut secs: Vec<_> = all.per_sec.into_iter().collect();
        secs.sort_unstable();
        let out: String = secs
            .iter()
            .map(|(s, (o, f))| format!("{s} {o} {f}\n"))
            .collect();
        std::fs::write(path, out).unwrap_or_else(|e| die(&format!("{path}: {e}")));
    }
}

fn idle(a: &Args) {
    let status = a
        .status
        .clone()
        .unwrap_or_else(|| die("idle needs --status FILE"));
    let release = format!("{status}.release");
    let say = |s: &str| {
        println!("{s}");
        std::fs::write(&status, format!("{s}\n"))
            .unwrap_or_else(|e| die(&format!("{status}: {e}")));
    };
    let mut streams = Vec::with_capacity(a.conns);
    let mut failed = 0u64;
    for _ in 0..a.conns {
        match TcpStream::connect_timeout(&a.addr, a.timeout) {
            Ok(s) => streams.push(s),
            Err(_) => failed += 1,
        }
    }
    let req = b"GET / HTTP/1.1\r\nHost: chaos\r\n\r\n";
    let mut sent = Vec::with_capacity(streams.len());
    for s in streams {
        if (&s).write_all(req).is_ok() {
            sent.push(s);
        } else {
            failed += 1;
        }
    }
    let deadline = Instant::now() + a.timeout.max(Duration::from_secs(30));
    let mut held = Vec::with_capacity(sent.len());
    let mut answered = 0u64;
    for mut s in sent {
        match read_answer(&mut s, deadline) {
            Ok(_) => {
                answered += 1;
                held.push(s);
            }
            Err(_) => failed += 1,
        }
    }
    say(&format!(
        "held {} answered {answered} failed {failed}",
        held.len()
    ));
    let until = Instant::now() + Duration::from_secs(a.secs);
    while Instant::now() < until && !std::path::Path::new(&release).exists() {
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(held);
    say("closed");
}

fn main() {
    let a = parse_args();
    match a.cmd.as_str() {
        "run" => run(&a),
        "idle" => idle(&a),
        other => die(&format!("unknown command {other}: run or idle")),
    }
}
