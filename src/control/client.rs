//! `multinode status | reload | scale | stop`: the client side of the control socket.

use std::io::Read;
use std::path::Path;

use super::protocol::{Reply, Request, Status};
use super::{locate, request};
use crate::cli::Target;
use crate::error::{Error, Exit, Result};
use crate::log::escape_controls;

fn status_of(path: &Path) -> Result<Status> {
    match request(path, &Request::Status)?.0 {
        Reply::Status(s) => Ok(s),
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

pub fn status(t: &Target, as_json: bool, check: bool) -> Result<Exit> {
    if t.name.is_none() && t.control.is_none() && !check {
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
    let s = status_of(&path)?;
    if check {
        return Ok(if s.ready && !s.stopping {
            Exit::Ok
        } else {
            Exit::Unclean
        });
    }
    if as_json {
        println!("{}", to_json(&s));
    } else {
        print_table(&s);
    }
    Ok(Exit::Ok)
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

fn print_table(s: &Status) {
    println!("{}", summary(s));
    if let Some(c) = &s.control {
        println!("control socket {}", escape_controls(c));
    }
    let opt =
        |v: Option<String>| v.map_or_else(|| "-".into(), |t| escape_controls(&t).into_owned());
    let rows: Vec<[String; 8]> = s
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
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", out.trim_end());
    };
    line(head.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
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
