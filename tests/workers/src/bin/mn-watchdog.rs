//! Test worker for `--watchdog`: pings through the SDK's `Watchdog` from its accept loop, and
//! stops pinging or triggers the watchdog when the test tells it to, through files.
//!
//! Usage: `mn-watchdog DIR`. It prints (stdout), at start:
//!
//! `mn-watchdog pid=P slot=S gen=G usec=U wpid=W interval_us=I left=L`
//!
//! where U and W are `WATCHDOG_USEC` and `WATCHDOG_PID` as inherited (`-` when unset), I the
//! interval `Watchdog::from_env` read from them (`-`: none), and L whether either variable is
//! still set after that (`no`: the SDK removed them). Then:
//!
//! - while `DIR/hold.<slot>.<gen>` exists it waits (a stop ends it), then sends `READY=1`;
//! - it accepts on the first inherited TCP socket and answers each connection's first request
//!   with `200` and `process=P` (`Connection: close`), pinging when due (`ping N` lines);
//! - once `DIR/hang.<P>` exists: prints `hanging`, stops pinging and accepting, and sleeps
//!   for ever (the watchdog signal ends it);
//! - once `DIR/trigger.<P>` exists: sends `WATCHDOG=trigger` (once) and prints `triggered`.
//!
//! A stop (SIGTERM) ends the accept loop; it exits 0.

use std::io::{ErrorKind, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use multinode_worker::{Listener, Watchdog};

/// How often the files are looked at, at most.
const LOOK: Duration = Duration::from_millis(50);

fn main() {
    let dir = PathBuf::from(std::env::args_os().nth(1).expect("usage: mn-watchdog DIR"));
    let pid = std::process::id();
    let var = |k| std::env::var(k).unwrap_or_else(|_| "-".into());
    let (usec, wpid) = (var("WATCHDOG_USEC"), var("WATCHDOG_PID"));
    let (slot, generation) = (var("MULTINODE_WORKER_ID"), var("MULTINODE_GENERATION"));
    // Before any thread: both edit the environment.
    let mut inherited = multinode_worker::listeners().expect("listeners()");
    let watchdog = Watchdog::from_env().expect("WATCHDOG_* readable");
    let left =
        std::env::var_os("WATCHDOG_USEC").is_some() || std::env::var_os("WATCHDOG_PID").is_some();
    println!(
        "mn-watchdog pid={pid} slot={slot} gen={generation} usec={usec} wpid={wpid} interval_us={} left={}",
        watchdog
            .as_ref()
            .map_or("-".into(), |w| w.interval().as_micros().to_string()),
        if left { "yes" } else { "no" }
    );
    let stop = multinode_worker::catch_stop_signals().expect("signal handlers");
    let listener = Listener::from(
        inherited
            .tcp_or_bind("http", "127.0.0.1:0")
            .expect("a TCP socket"),
    );

    let hold = dir.join(format!("hold.{slot}.{generation}"));
    if hold.exists() {
        println!("mn-watchdog pid={pid} holding");
        while hold.exists() {
            if stop.is_requested() {
                return;
            }
            std::thread::sleep(LOOK);
        }
    }
    multinode_worker::ready().expect("READY=1");

    let hang = dir.join(format!("hang.{pid}"));
    let trigger = dir.join(format!("trigger.{pid}"));
    let mut triggered = false;
    let mut pings = 0u64;
    loop {
        if hang.exists() {
            println!("mn-watchdog pid={pid} hanging");
            loop {
                std::thread::park();
            }
        }
        if !triggered && trigger.exists() {
            triggered = true;
            let w = watchdog.as_ref().expect("a watchdog to trigger");
            w.trigger().expect("WATCHDOG=trigger");
            println!("mn-watchdog pid={pid} triggered");
        }
        let mut wait = LOOK;
        if let Some(w) = &watchdog {
            if w.ping_if_due().expect("WATCHDOG=1") {
                pings += 1;
                println!("mn-watchdog pid={pid} ping {pings}");
            }
            wait = wait.min(w.due_in());
        }
        match listener.accept_timeout(&stop, wait) {
            Ok(Some(a)) => answer(a.conn, pid),
            Ok(None) => return,
            Err(e) if e.kind() == ErrorKind::TimedOut => {}
            Err(e) => panic!("accept: {e}"),
        }
    }
}

/// Reads one request head (bounded) and answers it.
fn answer(mut conn: multinode_worker::Connection, pid: u32) {
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut head = Vec::new();
    let mut buf = [0; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
        match conn.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let body = format!("process={pid}\n");
    let _ = write!(
        conn,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}
