//! `multinode status | reload | scale | stop`: the client side of the control socket.

use std::fmt::Write as _;
use std::io::{Read, Write as _};
use std::path::Path;
use std::time::{Duration, Instant};

use super::protocol::{Reply, Request, SlotStatus, Status};
use super::{locate, request};
use crate::cli::Target;
use crate::error::{Error, Exit, Result};
use crate::log::escape_controls;

fn status_of(path: &Path) -> Result<Status> {
    match request(path, &Request::Status)?.0 {
        Reply::Status(s) => Ok(*s),
        other => Err(unexpected(&other)),
    }
}

/// The supervisor said no: exit 1, or 4 when this user may not ask for that (the supervisor's
/// refusal starts with "permission denied:").
fn failed(msg: String, error: &str) -> Error {
    let exit = if error.starts_with("permission denied:") {
        Exit::Privilege
    } else {
        Exit::Unclean
    };
    Error::new(exit, msg)
}

/// An answer of the wrong kind: the supervisor's failure message, or a protocol mismatch.
fn unexpected(reply: &Reply) -> Error {
    match reply {
        Reply::Failed { error } => failed(error.clone(), error),
        other => Error::new(
            Exit::Unclean,
            format!("unexpected answer from multinode: {other:?}"),
        ),
    }
}

/// How far apart the two readings of a one-shot `status` table are (its CPU column).
const CPU_SAMPLE: Duration = Duration::from_millis(500);
/// How often `status --watch` redraws.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// A status and when it was read.
struct Reading {
    status: Status,
    at: Instant,
}

fn read(path: &Path) -> Result<Reading> {
    let status = status_of(path)?;
    Ok(Reading {
        status,
        at: Instant::now(),
    })
}

pub fn status(t: &Target, as_json: bool, check: bool, watch: bool) -> Result<Exit> {
    if t.name.is_none() && t.control.is_none() && !check && !watch {
        let live = super::running()?;
        if live.len() > 1 {
            // Several services: one line each.
            for (name, path) in live {
                match status_of(&path) {
                    Ok(s) if as_json => println!("{}", to_json(&s)),
                    Ok(s) => println!("{}", summary(&s)),
                    Err(e) => println!("{name}: {e}"),
                }
            }
            return Ok(Exit::Ok);
        }
    }
    let path = locate(t.name.as_deref(), t.control.as_deref())?;
    if watch {
        return watch_status(&path, as_json);
    }
    let first = read(&path)?;
    if check {
        let s = &first.status;
        return Ok(if s.ready && !s.stopping {
            Exit::Ok
        } else {
            Exit::Unclean
        });
    }
    if as_json {
        println!("{}", to_json(&first.status));
        return Ok(Exit::Ok);
    }
    // The CPU column is a rate: a second reading a moment later.
    std::thread::sleep(CPU_SAMPLE);
    let second = read(&path)?;
    let _ = show(&table(&second, Some(&first)));
    Ok(Exit::Ok)
}

/// `status --watch`: a table a second until interrupted (or the supervisor is gone: its
/// exit code then, 7). On a terminal each table replaces the last; otherwise they follow
/// one another, so a log of them reads like `vmstat 1`.
fn watch_status(path: &Path, as_json: bool) -> Result<Exit> {
    use std::io::IsTerminal;
    let tty = std::io::stdout().is_terminal();
    let mut prev = read(path)?;
    if !as_json {
        std::thread::sleep(CPU_SAMPLE);
    }
    loop {
        let cur = read(path)?;
        let text = if as_json {
            format!("{}\n", to_json(&cur.status))
        } else if tty {
            // Home, clear the screen, then the table: it stays where it was drawn.
            format!("\x1b[H\x1b[2J{}", table(&cur, Some(&prev)))
        } else {
            format!("{}\n", table(&cur, Some(&prev)))
        };
        if show(&text).is_err() {
            // The reader went away (`| head`): done.
            return Ok(Exit::Ok);
        }
        prev = cur;
        std::thread::sleep(WATCH_EVERY);
    }
}

/// Writes to stdout at once; an error (a closed pipe) is returned, not a panic.
fn show(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()
}

fn to_json(s: &Status) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

/// The status as text, its strings escaped: STATUS= and last-exit text come from workers, and
/// may not drive the terminal (see `log::escape_controls`).
fn summary(s: &Status) -> String {
    format!(
        "{}: pid {}, {} worker(s), generation {}, {}",
        escape_controls(&s.name),
        s.pid,
        s.workers,
        s.generation,
        if s.ready { "ready" } else { "not ready" }
    )
}

/// `multinode 0.2.0 (/usr/bin/multinode), upgraded in place at 2026-...Z from 0.1.0`: which
/// multinode runs, and when it last upgraded.
fn version_line(s: &Status) -> String {
    let mut line = format!("multinode {}", escape_controls(&s.version));
    if let Some(b) = &s.binary {
        line.push_str(&format!(" ({})", escape_controls(b)));
    }
    match &s.last_upgrade {
        Some(u) => line.push_str(&format!(
            ", upgraded in place at {} from {} ({} upgrade(s))",
            escape_controls(&u.at),
            escape_controls(&u.from),
            s.upgrades
        )),
        None => line.push_str(", not upgraded since it started"),
    }
    if s.upgrading {
        line.push_str("; an upgrade is under way");
    }
    line
}

/// The share of one core (in %) the worker of `row` used since `prev` was read: its CPU time
/// then and now, over the wall time between. `None` for a worker `prev` did not see.
fn cpu_percent(row: &SlotStatus, now: Instant, prev: Option<&Reading>) -> Option<f64> {
    let prev = prev?;
    let pid = row.pid?;
    let before = prev
        .status
        .slots
        .iter()
        .find(|r| r.pid == Some(pid))?
        .cpu_seconds?;
    let wall = now.saturating_duration_since(prev.at).as_secs_f64();
    let used = row.cpu_seconds? - before;
    (wall > 0.0).then(|| (used.max(0.0) / wall) * 100.0)
}

/// `512K`, `12.3M`, `1.5G` (powers of 1024, as `--max-memory` takes them).
fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["K", "M", "G", "T"];
    if b < 1024 {
        return format!("{b}B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if v < 10.0 {
        format!("{v:.1}{}", UNITS[unit])
    } else {
        format!("{v:.0}{}", UNITS[unit])
    }
}

/// The status table, its CPU column measured since `prev`.
fn table(cur: &Reading, prev: Option<&Reading>) -> String {
    let s = &cur.status;
    let mut out = String::new();
    let _ = writeln!(out, "{}", summary(s));
    if let Some(c) = &s.control {
        let _ = writeln!(out, "control socket {}", escape_controls(c));
    }
    let _ = writeln!(out, "{}", version_line(s));
    let opt =
        |v: Option<String>| v.map_or_else(|| "-".into(), |t| escape_controls(&t).into_owned());
    let rows: Vec<[String; 10]> = s
        .slots
        .iter()
        .map(|r| {
            let uptime = r.uptime_ms.map_or("-".into(), |ms| {
                crate::supervisor::human(std::time::Duration::from_millis(ms))
            });
            [
                r.slot.to_string(),
                opt(r.pid.map(|p| p.to_string())),
                escape_controls(&r.state).into_owned(),
                opt(r.generation.map(|g| g.to_string())),
                uptime,
                opt(cpu_percent(r, cur.at, prev).map(|p| format!("{p:.1}%"))),
                opt(r.memory_bytes.map(human_bytes)),
                r.restarts.to_string(),
                opt(r.last_exit.clone()),
                opt(r.status.clone()),
            ]
        })
        .collect();
    let head = [
        "SLOT",
        "PID",
        "STATE",
        "GEN",
        "UPTIME",
        "CPU",
        "MEM",
        "RESTARTS",
        "LAST EXIT",
        "STATUS",
    ];
    let mut widths: Vec<usize> = head.iter().map(|h| h.len()).collect();
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}  "));
            }
        }
        let _ = writeln!(out, "{}", l.trim_end());
    };
    line(head.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

pub fn reload(t: &Target) -> Result<Exit> {
    let path = locate(t.name.as_deref(), t.control.as_deref())?;
    match request(&path, &Request::Reload)?.0 {
        Reply::Reloaded { generation } => {
            println!("reloaded: every worker runs generation {generation}");
            Ok(Exit::Ok)
        }
        Reply::Failed { error } => Err(failed(format!("reload failed: {error}"), &error)),
        other => Err(unexpected(&other)),
    }
}

pub fn scale(t: &Target, workers: u32) -> Result<Exit> {
    let path = locate(t.name.as_deref(), t.control.as_deref())?;
    match request(&path, &Request::Scale { workers })?.0 {
        Reply::Scaled { workers } => {
            println!("scaled: {workers} worker(s) ready");
            Ok(Exit::Ok)
        }
        Reply::Failed { error } => Err(failed(
            format!("scale to {workers} failed: {error}"),
            &error,
        )),
        other => Err(unexpected(&other)),
    }
}

/// `multinode upgrade`: waits for the outcome; prints which multinode runs now.
pub fn upgrade(t: &Target, binary: Option<std::path::PathBuf>) -> Result<Exit> {
    // The supervisor resolves nothing against its own working directory.
    let binary = match binary {
        Some(b) => {
            let abs = std::path::absolute(&b)
                .map_err(|e| Error::usage(format!("--binary {}: {e}", b.display())))?;
            if let Err(e) = std::fs::metadata(&abs) {
                return Err(Error::usage(format!(
                    "--binary {}: {}; give the path of a multinode binary",
                    b.display(),
                    crate::config::io_reason(&e)
                )));
            }
            Some(abs.to_string_lossy().into_owned())
        }
        None => None,
    };
    let path = locate(t.name.as_deref(), t.control.as_deref())?;
    match request(&path, &Request::Upgrade { binary })?.0 {
        Reply::Upgraded {
            version,
            from,
            binary,
            pid,
            took_ms,
        } => {
            println!(
                "upgraded: multinode {version} runs now (from {from}), executed from {}, pid {pid}; took {took_ms} ms",
                escape_controls(&binary)
            );
            Ok(Exit::Ok)
        }
        Reply::Failed { error } => Err(failed(format!("upgrade failed: {error}"), &error)),
        other => Err(unexpected(&other)),
    }
}

pub fn stop(t: &Target) -> Result<Exit> {
    let path = locate(t.name.as_deref(), t.control.as_deref())?;
    let (reply, mut s) = request(&path, &Request::Stop)?;
    match reply {
        Reply::Stopping => {}
        Reply::Failed { error } => {
            return Err(failed(format!("stop failed: {error}"), &error));
        }
        other => return Err(unexpected(&other)),
    }
    // The supervisor says how it ended, then closes the connection as it exits.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    let last = String::from_utf8_lossy(&rest);
    match last
        .lines()
        .find_map(|l| serde_json::from_str::<Reply>(l).ok())
    {
        Some(Reply::Exited { status: 0 }) => {
            println!("stopped");
            Ok(Exit::Ok)
        }
        Some(Reply::Exited { status }) => {
            let meaning = Exit::ALL
                .iter()
                .find(|e| e.code() == status)
                .map_or("", |e| e.meaning());
            Err(Error::new(
                Exit::Unclean,
                format!("stopped, but multinode exited with status {status}: {meaning}"),
            ))
        }
        _ => Err(Error::new(
            Exit::Unclean,
            "multinode ended without saying how (was it killed?)",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_for_people() {
        assert_eq!(human_bytes(512), "512B");
        assert_eq!(human_bytes(2048), "2.0K");
        assert_eq!(human_bytes(12 << 20), "12M");
        assert_eq!(human_bytes(3 << 29), "1.5G");
    }

    #[test]
    fn cpu_share_between_two_readings() {
        let row = |pid, cpu| SlotStatus {
            slot: 0,
            pid: Some(pid),
            state: "ready".into(),
            generation: Some(1),
            uptime_ms: Some(1000),
            restarts: 0,
            restart_causes: Default::default(),
            last_exit: None,
            status: None,
            cpu_seconds: Some(cpu),
            memory_bytes: Some(1),
        };
        let at = Instant::now();
        let prev = Reading {
            status: Status {
                name: "x".into(),
                pid: 1,
                generation: 1,
                workers: 1,
                ready: true,
                reloading: None,
                stopping: false,
                unhealthy: None,
                reloads_ok: 0,
                reloads_failed: 0,
                version: String::new(),
                binary: None,
                upgrades: 0,
                upgrades_failed: 0,
                last_upgrade: None,
                upgrading: false,
                control: None,
                slots: vec![row(7, 1.0)],
            },
            at,
        };
        let later = at + Duration::from_secs(2);
        let p = cpu_percent(&row(7, 2.0), later, Some(&prev)).unwrap();
        assert!((p - 50.0).abs() < 1e-9, "{p}");
        assert_eq!(cpu_percent(&row(8, 2.0), later, Some(&prev)), None);
        assert_eq!(cpu_percent(&row(7, 2.0), later, None), None);
    }
}
