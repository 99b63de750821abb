//! `multinode status | reload | scale | stop`: the client side of the control socket.

use std::io::Read;

use serde_json::{Value, json};

use crate::cli::Target;
use crate::control::{self, failure, locate, request};
use crate::error::{Error, Exit, Result};

pub fn status(t: &Target, as_json: bool, check: bool) -> Result<Exit> {
    if t.name.is_none() && t.control.is_none() && !check {
        let live = control::running();
        if live.len() > 1 {
            // Several services: one line each.
            for (name, path) in live {
                match request(&path, &json!({"cmd": "status"})) {
                    Ok((v, _)) if as_json => println!("{v}"),
                    Ok((v, _)) => println!("{}", summary(&v)),
                    Err(e) => println!("{name}: {e}"),
                }
            }
            return Ok(Exit::Ok);
        }
    }
    let path = locate(t.name.as_deref(), t.control.as_deref())?;
    let (v, _) = request(&path, &json!({"cmd": "status"}))?;
    if check {
        return Ok(
            if v["ready"] == json!(true) && v["stopping"] != json!(true) {
                Exit::Ok
            } else {
                Exit::Unclean
            },
        );
    }
    if as_json {
        println!("{v}");
    } else {
        print_table(&v);
    }
    Ok(Exit::Ok)
}

fn summary(v: &Value) -> String {
    format!(
        "{}: pid {}, {} worker(s), generation {}, {}",
        v["name"].as_str().unwrap_or("?"),
        v["pid"],
        v["workers"],
        v["generation"],
        if v["ready"] == json!(true) {
            "ready"
        } else {
            "not ready"
        }
    )
}

fn print_table(v: &Value) {
    println!("{}", summary(v));
    if let Some(c) = v["control"].as_str() {
        println!("control socket {c}");
    }
    let rows: Vec<[String; 8]> = v["slots"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    let s = |k: &str| match &r[k] {
                        Value::Null => "-".to_string(),
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    let uptime = r["uptime_ms"].as_u64().map_or("-".into(), |ms| {
                        crate::supervisor::human(std::time::Duration::from_millis(ms))
                    });
                    [
                        s("slot"),
                        s("pid"),
                        s("state"),
                        s("generation"),
                        uptime,
                        s("restarts"),
                        s("last_exit"),
                        s("status"),
                    ]
                })
                .collect()
        })
        .unwrap_or_default();
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
    let (v, _) = request(&path, &json!({"cmd": "reload"}))?;
    match failure(&v) {
        None => {
            println!("reloaded: every worker runs generation {}", v["generation"]);
            Ok(Exit::Ok)
        }
        Some(e) => Err(Error::new(Exit::Unclean, format!("reload failed: {e}"))),
    }
}

pub fn scale(t: &Target, workers: u32) -> Result<Exit> {
    let path = locate(t.name.as_deref(), t.control.as_deref())?;
    let (v, _) = request(&path, &json!({"cmd": "scale", "workers": workers}))?;
    match failure(&v) {
        None => {
            println!("scaled: {workers} worker(s) ready");
            Ok(Exit::Ok)
        }
        Some(e) => Err(Error::new(
            Exit::Unclean,
            format!("scale to {workers} failed: {e}"),
        )),
    }
}

pub fn stop(t: &Target) -> Result<Exit> {
    let path = locate(t.name.as_deref(), t.control.as_deref())?;
    let (v, mut s) = request(&path, &json!({"cmd": "stop"}))?;
    if let Some(e) = failure(&v) {
        return Err(Error::new(Exit::Unclean, format!("stop failed: {e}")));
    }
    // The supervisor closes the connection when it exits.
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    println!("stopped");
    Ok(Exit::Ok)
}
