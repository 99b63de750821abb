//! What a worker must not reach (issue 10), tried as an attacker would, with real processes:
//! the operator's terminal (TIOCSTI), another worker's readiness, and root through a setuid
//! program.

mod common;

use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use common::*;

/// Kills the supervisor (and with it its workers) when the test ends, pass or fail.
struct Killed(i32);

impl Drop for Killed {
    fn drop(&mut self) {
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(self.0, libc::SIGKILL) };
    }
}

/// The attack of issue 10: a worker running as `nobody` opens `/dev/tty` — the terminal of
/// whoever started multinode — and pushes a command into its input with TIOCSTI, for the
/// operator's shell to run once multinode exits. multinode is started here as a shell would
/// start it: on a pty that is its controlling terminal. The worker must find no terminal to
/// write to, and nothing it tried may reach the terminal's input.
#[test]
fn a_worker_cannot_push_input_into_the_operators_terminal() {
    let (master, slave) = openpty();
    let payload = "touch /tmp/mn-pwned-by-worker";
    let mut cmd = serve_command(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--",
        worker_bin("mn-attack").to_str().unwrap(),
        "tty",
        &format!("{payload}\n"),
    ]);
    let tty = || Stdio::from(slave.try_clone().unwrap());
    cmd.stdin(tty())
        .stdout(tty())
        .stderr(tty())
        .env("NO_COLOR", "1");
    // SAFETY: setsid and ioctl are async-signal-safe; nothing is allocated.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().expect("start multinode on a pty");
    let _kill = Killed(child.id() as i32);
    // Only multinode (and what it keeps) may hold the terminal now, so that reading the
    // master ends once it has exited.
    drop(cmd);
    drop(slave);
    let seen = Arc::new(Mutex::new(String::new()));
    let reader = {
        let seen = seen.clone();
        let mut m = std::fs::File::from(master.try_clone().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = m.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let report = |what: &str| {
        let text = seen.lock().unwrap().clone();
        text.lines().find_map(|l| {
            let at = l.find(what)?;
            let end = l[at..].find('"').map_or(l.len(), |e| at + e);
            Some(l[at..end].to_string())
        })
    };
    let done = eventually(DEADLINE, || report("mn-attack tty: pid").is_some());
    let all = seen.lock().unwrap().clone();
    assert!(done, "the worker never reported; terminal output:\n{all}");
    let tty = report("mn-attack tty: /dev/tty:").unwrap();
    assert!(
        tty.contains("No such device or address"),
        "a worker could open the controlling terminal: {tty}\n{all}"
    );
    for fd in 0..3 {
        let line = report(&format!("mn-attack tty: fd {fd}:")).unwrap();
        assert!(!line.ends_with(": ok"), "TIOCSTI on fd {fd} worked: {line}");
    }
    let ids = report("mn-attack tty: pid").unwrap();
    let f: Vec<&str> = ids.split_whitespace().collect();
    assert_eq!(f[3], f[5], "the worker leads a session of its own: {ids}");
    // Nothing of the payload reached the terminal (an injected line would be echoed).
    assert!(!all.contains(payload), "injected into the terminal:\n{all}");
    // SAFETY: kill has no memory preconditions.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let mut child = child;
    let _ = child.wait();
    drop(master);
    let _ = reader.join();
}

/// A worker's child tries to pass for another worker: it joins that worker's process group and
/// sends `READY=1` and a STATUS. Under `--ready notify` that would let a reload drain an old
/// worker before its replacement is ready. The other worker must stay not ready.
#[test]
fn a_worker_cannot_report_readiness_for_another() {
    let s = Scratch::new("spoof");
    let target = s.path("target");
    let m = Multinode::serve(&[
        "-w",
        "2",
        "--ready",
        "notify",
        "-l",
        "127.0.0.1:0",
        "--",
        worker_bin("mn-attack").to_str().unwrap(),
        "spoof",
        target.to_str().unwrap(),
    ]);
    m.wait_started(2);
    let pids = m.slot_pids();
    let victim = pids[&1];
    std::fs::write(&target, victim.to_string()).unwrap();
    let setpgid = m.wait_output(|e| e.msg.contains("mn-attack spoof: setpgid:"));
    assert!(
        setpgid.msg.contains("Operation not permitted"),
        "another worker's process group could be joined: {setpgid}"
    );
    // The datagram is credited to the sender's own worker (its parent), slot 0.
    m.wait_event("ready", |e| e.slot == Some(0));
    let control = m.control_path().display().to_string();
    let out = mn(&["status", "--json", "--control", &control]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status --json");
    let row = |slot: u64| {
        v["slots"]
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["slot"] == slot)
            .cloned()
            .unwrap()
    };
    assert_eq!(row(1)["state"], "starting", "the victim became ready: {v}");
    assert_eq!(row(1)["status"], serde_json::Value::Null, "{v}");
    assert_eq!(row(0)["status"], "spoofed", "{v}");
    assert!(
        m.events("ready").iter().all(|e| e.pid != Some(victim)),
        "{}",
        m.output()
    );
}

/// A setuid-root program is one exec away for a worker unless exec cannot gain privileges:
/// by default it runs as the workers' user; with `--allow-new-privileges` as root.
#[test]
fn a_setuid_program_gives_a_worker_no_privileges() {
    if !require(is_root(), "needs root to make a setuid-root program") {
        return;
    }
    let s = Scratch::new("setuid");
    let id = s.path("id");
    std::fs::copy("/usr/bin/id", &id).unwrap();
    std::fs::set_permissions(&id, std::fs::Permissions::from_mode(0o4755)).unwrap();
    let script = format!(
        "{} -u > {}/euid.$MULTINODE_GENERATION; exec sleep 1000",
        id.display(),
        s.0.display()
    );
    for (extra, want_euid, nnp) in [
        (None, "65534", "1"),
        (Some("--allow-new-privileges"), "0", "0"),
    ] {
        let mut args = vec!["-w", "1", "-l", "127.0.0.1:0"];
        args.extend(extra);
        args.extend(["--", "/bin/sh", "-c", &script]);
        let m = Multinode::serve(&args);
        let pid = m.wait_started(1)[0];
        let out = s.0.join("euid.1");
        assert!(
            eventually(DEADLINE, || std::fs::read_to_string(&out)
                .is_ok_and(|t| !t.is_empty())),
            "no output; {}",
            m.output()
        );
        let euid = std::fs::read_to_string(&out).unwrap();
        assert_eq!(euid.trim(), want_euid, "{extra:?}");
        assert_eq!(
            status_field(pid, "NoNewPrivs").as_deref(),
            Some(nnp),
            "{extra:?}"
        );
        if extra.is_none() {
            assert_eq!(
                status_field(pid, "CapBnd").as_deref(),
                Some("0000000000000000"),
                "the bounding set is empty"
            );
        }
        drop(m);
        std::fs::remove_file(&out).unwrap();
    }
}

/// The supervisor runs as the workers' user, but a worker cannot look inside it: no ptrace,
/// no `/proc/PID/mem`, no `/proc/PID/fd` (where its channels and control socket are).
#[test]
fn a_worker_cannot_open_the_supervisors_fds_or_memory() {
    if !require(is_root(), "needs root to drop to nobody") {
        return;
    }
    let m = Multinode::serve_hello("1", &[]);
    m.wait_ready(1);
    let sh_as_nobody = |what: &str| run(as_nobody("sh", &["-c", what]));
    for what in [
        format!("ls /proc/{}/fd", m.pid),
        format!("head -c1 /proc/{}/mem", m.pid),
        format!("cat /proc/{}/environ", m.pid),
    ] {
        let out = sh_as_nobody(&what);
        assert!(
            !out.status.success(),
            "as nobody, `{what}` worked: {}",
            stdout(&out)
        );
        assert!(
            stderr(&out).contains("ermission denied"),
            "`{what}`: {}",
            stderr(&out)
        );
    }
}

/// Not an attack: a helper that left its worker's process tree (double-forked, reparented to
/// multinode) still speaks for its own worker, which its cgroup tells.
#[test]
fn a_detached_helper_reports_for_its_worker_through_its_cgroup() {
    if !require(is_root(), "needs root for a cgroup per worker") {
        return;
    }
    let m = Multinode::serve(&[
        "-w",
        "1",
        "--ready",
        "notify",
        "--cgroup",
        "required",
        "-l",
        "127.0.0.1:0",
        "--",
        worker_bin("mn-attack").to_str().unwrap(),
        "orphan-ready",
    ]);
    let pid = m.wait_started(1)[0];
    let ready = m.wait_event("ready", |_| true);
    assert_eq!(ready.pid, Some(pid), "{}", m.output());
}
