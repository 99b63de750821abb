//! `listen_env`: the socket-activation and watchdog variables a worker reads at start
//! (`LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`: `worker-sdk/src/activation/env.rs`;
//! `WATCHDOG_USEC`, `WATCHDOG_PID`: `worker-sdk/src/watchdog.rs`), and multinode too when
//! systemd starts it. Whoever starts the program sets them.
//!
//! The input: a byte of flags (which variables are set, whether the pid named is ours), then
//! the values, one per line: LISTEN_PID (also WATCHDOG_PID), LISTEN_FDS (also WATCHDOG_USEC),
//! LISTEN_FDNAMES. A plan for another process, or without LISTEN_FDS, is empty; otherwise it
//! has exactly LISTEN_FDS fds from 3 on, each named by its entry of LISTEN_FDNAMES when the
//! count matches, else `unknown`, never an empty name or one with `:`. A watchdog interval is
//! the microseconds WATCHDOG_USEC says, when the watchdog is ours. An error names the variable
//! and quotes its value.

use std::time::Duration;

use multinode_worker::activation::{self, LISTEN_FDS_START, UNKNOWN_NAME};
use multinode_worker::{Error, Watchdog};

/// Whose the variables are when the flags do not make them ours.
const OTHER: u32 = 4242;

pub fn check(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let lines: Vec<&str> = text.splitn(3, '\n').collect();
    let var = |i: usize| (flags & (1 << i) != 0).then(|| lines.get(i).copied().unwrap_or(""));
    let (pid, fds, names) = (var(0), var(1), var(2));
    // Ours when the flag says so and LISTEN_PID is a pid at all: then the fds are looked at.
    let my_pid = match pid.and_then(|p| p.parse::<u32>().ok()) {
        Some(p) if flags & 8 != 0 => p,
        _ => OTHER,
    };
    listen(pid, fds, names, my_pid);
    watchdog(fds, pid, my_pid);
}

fn listen(pid: Option<&str>, fds: Option<&str>, names: Option<&str>, my_pid: u32) {
    let plan = match activation::parse(pid, fds, names, my_pid) {
        Ok(plan) => plan,
        Err(e) => return bad_env(e, &["LISTEN_PID", "LISTEN_FDS"]),
    };
    let ours = pid.and_then(|p| p.parse::<u64>().ok()) == Some(u64::from(my_pid));
    let count = match fds {
        Some(n) if ours => n.parse::<usize>().expect("a count that was accepted"),
        _ => 0,
    };
    assert_eq!(plan.len(), count);
    assert_eq!(plan.is_empty(), count == 0);
    // The last fd is still an fd number.
    assert!(count == 0 || LISTEN_FDS_START as usize + count - 1 <= i32::MAX as usize);
    let entries: Option<Vec<&str>> = names
        .map(|n| n.split(':').collect())
        .filter(|e: &Vec<&str>| e.len() == count);
    // Every name, or the first thousand and the last (LISTEN_FDS may be two billion).
    let some = (0..count.min(1000)).chain(count.checked_sub(1));
    for i in some {
        let name = plan.name(i);
        assert!(!name.is_empty() && !name.contains(':'), "{name:?}");
        let expected = match entries.as_ref().map(|e| e[i]) {
            Some("") | None => UNKNOWN_NAME,
            Some(entry) => entry,
        };
        assert_eq!(name, expected, "fd {i}");
    }
    assert_eq!(plan.name(count), UNKNOWN_NAME, "past the end");
    for (i, (fd, name)) in plan.fds().take(1000).enumerate() {
        assert_eq!((fd, name), (LISTEN_FDS_START + i as i32, plan.name(i)));
    }
}

fn watchdog(usec: Option<&str>, pid: Option<&str>, my_pid: u32) {
    match Watchdog::parse_env(usec, pid, my_pid) {
        Ok(Some(interval)) => {
            let n: u64 = usec.expect("set").parse().expect("accepted");
            assert!(n > 0 && n < u64::MAX);
            assert_eq!(interval, Duration::from_micros(n));
            // A worker's watchdog of this interval can tell when its ping is due.
            assert!(Watchdog::new(interval).due_in() <= interval / 2);
        }
        Ok(None) => assert!(
            usec.is_none() || pid.and_then(|p| p.parse::<u32>().ok()) != Some(my_pid),
            "no watchdog, though WATCHDOG_USEC={usec:?} WATCHDOG_PID={pid:?} are ours"
        ),
        Err(e) => bad_env(e, &["WATCHDOG_USEC", "WATCHDOG_PID"]),
    }
}

/// An error names one of `vars` and quotes its value.
fn bad_env(e: Error, vars: &[&str]) {
    let text = e.to_string();
    match e {
        Error::BadEnv { var, value, reason } => {
            assert!(vars.contains(&var), "{text}");
            assert!(!reason.is_empty());
            assert!(text.contains(&format!("{var}={value:?}")), "{text}");
        }
        other => panic!("not a BadEnv error: {other:?}"),
    }
}
