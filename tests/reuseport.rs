//! `--balance reuseport`: one SO_REUSEPORT socket per worker slot, owned by the supervisor and
//! handed to every generation of that slot, so a reload never drops a slot's accept queue.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use common::*;

/// The socket inode behind fd 3 of `pid` (`socket:[12345]`).
fn fd3_socket(pid: i32) -> String {
    std::fs::read_link(format!("/proc/{pid}/fd/3"))
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

#[test]
fn each_slot_keeps_its_own_socket_across_reloads_under_load() {
    let mut m = Multinode::serve_hello("3", &["--balance", "reuseport", "--ready", "notify"]);
    let addr = m.tcp_addr("listen0");
    m.wait_started(3);
    m.wait_events("ready", 3, |e| e.via() == Some("notify"));
    let first = m.slot_pids();
    let sockets: BTreeMap<u32, String> = first.iter().map(|(s, p)| (*s, fd3_socket(*p))).collect();
    assert!(
        sockets.values().all(|s| s.starts_with("socket:[")),
        "{sockets:?}"
    );
    let distinct: HashSet<&String> = sockets.values().collect();
    assert_eq!(
        distinct.len(),
        3,
        "each slot has its own socket: {sockets:?}"
    );

    // Fresh connections keep coming while every slot is replaced three times.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..2)
        .map(|_| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) && n < 20_000 {
                    n += 1;
                    match http_get(addr, "/") {
                        Ok((200, _)) => ok.fetch_add(1, Ordering::Relaxed),
                        other => {
                            eprintln!("failed request: {other:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for generation in 2..=4 {
        m.signal(libc::SIGHUP);
        m.wait_event("reloaded", |e| e.generation() == Some(generation));
    }
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "requests failed across reloads"
    );
    assert!(ok.load(Ordering::Relaxed) > 0, "no request was made");

    // New pids, same sockets: each slot's socket outlived three generations of its workers.
    let last = m.slot_pids();
    for (slot, pid) in &last {
        assert_ne!(first[slot], *pid, "slot {slot} was not replaced");
        assert_eq!(
            fd3_socket(*pid),
            sockets[slot],
            "slot {slot} got another socket"
        );
    }
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
}

#[test]
fn scaling_up_binds_a_socket_for_the_new_slot() {
    let mut m = Multinode::serve_hello("1", &["--balance", "reuseport"]);
    let addr = m.tcp_addr("listen0");
    m.wait_started(1);
    m.signal(libc::SIGTTIN);
    let pids = m.wait_started(2);
    let (a, b) = (fd3_socket(pids[0]), fd3_socket(pids[1]));
    assert!(
        a.starts_with("socket:[") && b.starts_with("socket:["),
        "{a} {b}"
    );
    assert_ne!(a, b, "the new slot has its own socket");
    // Both slots' sockets take connections (the kernel spreads them by a hash of the client).
    let mut seen = HashSet::new();
    assert!(
        eventually(DEADLINE, || {
            if let Ok((200, body)) = http_get(addr, "/") {
                seen.extend(body_pid(&body));
            }
            seen.len() == 2
        }),
        "only {seen:?} answered"
    );
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
}
