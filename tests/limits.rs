//! Limits on what input can do to the supervisor (issue 10, item 10), with real processes:
//! huge durations, a notify flood, a control socket out of file descriptors, terminal escape
//! sequences from a worker, and `check` agreeing with `serve`.

mod common;

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::time::{Duration, Instant};

use common::*;

/// Durations longer than a year are refused when parsed, from the command line and from the
/// config file alike, by `serve` and `check`: exit 2, one line naming the option. (Before,
/// `--grace 10000000000000000000` panicked at stop with an Instant overflow.)
#[test]
fn huge_durations_exit_2_naming_the_option() {
    let scratch = Scratch::new("durations");
    let file = scratch.path("huge.toml");
    std::fs::write(&file, "grace = 1e30\ncommand = [\"/bin/sleep\", \"100\"]\n").unwrap();
    let file = file.display().to_string();
    let name = unique_name();
    let cases: [(&[&str], &str); 4] = [
        (&["--grace", "10000000000000000000"], "--grace"),
        (&["--ready-timeout", "99999999999s"], "--ready-timeout"),
        (&["--ready", "delay:9000h"], "--ready"),
        (&["--config", &file], "grace"),
    ];
    for (args, option) in cases {
        for cmd in ["serve", "check"] {
            let mut all = vec![cmd, "--name", &name, "-l", "127.0.0.1:0"];
            all.extend_from_slice(args);
            if !args.contains(&"--config") {
                all.extend_from_slice(&["--", "/bin/sleep", "100"]);
            }
            let out = mn(&all);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{cmd} {args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{cmd} {args:?}: one line: {err}");
            assert!(err.contains(option), "{cmd} {args:?} names {option}: {err}");
            assert!(err.contains("longer than a year"), "{cmd} {args:?}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // A year is still taken.
    let out = mn(&[
        "check",
        "--grace",
        "8760h",
        "--ready-timeout",
        "8760h",
        "--",
        "/bin/sleep",
        "1",
    ]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A worker sending sd_notify datagrams as fast as it can for a few seconds (four of them at
/// once) cannot make the supervisor hold them in memory: it reads at most 64 per wake-up and
/// the rest wait in the socket's bounded buffer.
///
/// The bound is 8 MiB of peak RSS (VmHWM). A debug build's file-backed pages (its code) are
/// about 6.5 MiB of that before any input (a release build's under 4 MiB, its VmHWM about
/// 4.5 MiB after the flood), so the peak is measured less the file-backed pages before the
/// flood; a release build must also stay under 8 MiB outright. And the peak may not exceed
/// the RSS before the flood by 1 MiB. (Before the bound, a flood took VmHWM from 4 MB to
/// 50 MB.)
#[test]
fn notify_flood_keeps_the_supervisor_small() {
    let flood = worker_bin("mn-flood").display().to_string();
    let m = Multinode::serve(&[
        "--workers",
        "4",
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--",
        &flood,
        "4",
    ]);
    // Each worker floods from a second after its READY=1.
    m.wait_ready(4);
    let kib = |field: &str| -> u64 {
        let v = status_field(m.pid, field).unwrap_or_else(|| panic!("{field} of {}", m.pid));
        v.trim_end_matches("kB").trim().parse().unwrap()
    };
    let (before, code) = (kib("VmRSS"), kib("RssFile"));
    let sent = m.wait_events(OUTPUT, 4, |e| e.msg.starts_with("mn-flood sent"));
    let total: u64 = sent
        .iter()
        .filter_map(|e| e.msg.rsplit(' ').next()?.parse::<u64>().ok())
        .sum();
    let hwm = kib("VmHWM");
    let facts = format!(
        "{total} datagrams: RSS {before} KiB before ({code} KiB of it file-backed), VmHWM {hwm} KiB after"
    );
    eprintln!("{facts}");
    assert!(total > 1000, "the workers flooded: {facts}");
    assert!(hwm - code < 8 * 1024, "{facts}");
    if !cfg!(debug_assertions) {
        assert!(hwm < 8 * 1024, "{facts}");
    }
    assert!(hwm < before + 1024, "{facts}");
    // The supervisor still answers.
    let path = m.control_path().display().to_string();
    let out = mn(&["status", "--control", &path, "--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

/// A control socket whose supervisor is out of file descriptors (RLIMIT_NOFILE 40, and idle
/// clients holding the rest) does not spin: accepting pauses, a warning says so, the
/// supervisor's CPU time stays low, and `status` works again once the clients are gone.
#[test]
fn control_socket_out_of_fds_does_not_spin() {
    let mut cmd = serve_command(&[
        "--workers",
        "1",
        "-l",
        "127.0.0.1:0",
        "--",
        "/bin/sleep",
        "1000",
    ]);
    // SAFETY: setrlimit is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit {
                rlim_cur: 40,
                rlim_max: 40,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let m = Multinode::spawn(cmd);
    m.wait_ready(1);
    let path = m.control_path().display().to_string();

    // More idle clients than the supervisor has fds left: it accepts until EMFILE.
    let mut clients = Vec::new();
    for _ in 0..60 {
        clients.push(UnixStream::connect(&path).expect("connect to the control socket"));
    }
    let warned = m.wait_event("accept", |e| e.str("socket") == Some("control"));
    assert_eq!(warned.level, "warn");
    let t0 = cpu_ticks(m.pid);
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(m.pid) - t0;
    let elapsed = start.elapsed();
    eprintln!("{used} ticks in {elapsed:?} while out of fds");
    // Spinning would take about 100 ticks a second; pausing takes next to none.
    assert!(
        used < 40,
        "the supervisor used {used} ticks of CPU in {elapsed:?} while out of fds"
    );

    drop(clients);
    let ok = eventually(DEADLINE, || {
        mn(&["status", "--control", &path]).status.success()
    });
    assert!(ok, "status works again; output:\n{}", m.output());
}

/// A worker's terminal escape sequences (a window title, a screen clear, a cursor move) are
/// escaped in text output and in `multinode status`; colour sequences pass; JSON escapes
/// everything already.
#[test]
fn worker_escape_sequences_are_escaped_in_text() {
    let script = r#"
import os, socket, sys, time
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.sendto(b"READY=1\nSTATUS=\x1b]0;owned\x07 \x1b[H\x1b[2J \x1b[32mgreen\x1b[0m", os.environ["NOTIFY_SOCKET"])
sys.stdout.write("title:\x1b]0;title\x07 clear:\x1b[2J red:\x1b[31mR\x1b[0m tab:\there\n")
sys.stdout.flush()
time.sleep(1000)
"#;
    let m = Multinode::serve(&[
        "--log-format",
        "text",
        "--workers",
        "1",
        "-l",
        "127.0.0.1:0",
        "--ready",
        "notify",
        "--",
        "/usr/bin/python3",
        "-c",
        script,
    ]);
    let line = m.wait_line("the worker's line", |l| l.contains("title:"));
    assert!(
        line.contains(r"title:\x1b]0;title\x07 clear:\x1b[2J red:"),
        "escaped: {line:?}"
    );
    assert!(
        line.contains("red:\x1b[31mR\x1b[0m tab:\there"),
        "colour and tab pass: {line:?}"
    );
    assert!(!line.contains("\x07") && !line.contains("\x1b]") && !line.contains("\x1b[2J"));

    m.wait_line("ready", |l| l.contains("] ready"));
    let path = m
        .wait_line("the control socket", |l| l.contains("control socket "))
        .rsplit("control socket ")
        .next()
        .unwrap()
        .trim()
        .to_string();
    let out = mn(&["status", "--control", &path]);
    let text = stdout(&out);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        text.contains(r"\x1b]0;owned\x07 \x1b[H\x1b[2J ") && text.contains("\x1b[32mgreen"),
        "status escapes STATUS= but keeps colour: {text:?}"
    );
    assert!(
        !text.contains("\x07") && !text.contains("\x1b[2J"),
        "{text:?}"
    );
    let json = mn(&["status", "--control", &path, "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let status = v["slots"][0]["status"].as_str().unwrap();
    assert!(
        status.starts_with("\x1b]0;owned\x07"),
        "JSON keeps the text: {status:?}"
    );
}

/// `check` builds what `serve` builds before binding, so the two agree: what one refuses the
/// other refuses with the same exit code and message, and what `check` accepts `serve` runs.
#[test]
fn check_refuses_exactly_what_serve_refuses() {
    let scratch = Scratch::new("agree");
    let file = |name: &str, text: &str| {
        let p = scratch.path(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let env_nul = file(
        "env-nul.toml",
        "command = [\"/bin/sleep\", \"100\"]\n[env]\nSECRET = \"a\\u0000b\"\n",
    );
    let arg_nul = file(
        "arg-nul.toml",
        "command = [\"/bin/sleep\", \"1\\u00000\"]\n",
    );
    let no_listen = file(
        "no-listen.toml",
        "listen = []\ncommand = [\"/bin/sleep\", \"100\"]\n",
    );
    let missing = scratch.path("missing").display().to_string();
    let sleep = ["--", "/bin/sleep", "100"];
    let cases: Vec<(Vec<&str>, Option<i32>)> = vec![
        (vec!["--config", &env_nul], Some(2)),
        (vec!["--config", &arg_nul], Some(2)),
        (vec!["--config", &no_listen], Some(2)),
        (vec!["--watch", &missing], Some(2)),
        (
            [["--user", "root", "--group", "nogroup"].as_slice(), &sleep].concat(),
            Some(4),
        ),
        (
            [["--user", "root", "--group", "0"].as_slice(), &sleep].concat(),
            is_root().then_some(0),
        ),
    ];
    for (args, want) in cases {
        let name = unique_name();
        let with = |cmd: &'static str| -> Vec<&str> {
            let mut v = vec![cmd, "--name", &name];
            if !args.contains(&"--config") {
                v.extend_from_slice(&["-l", "127.0.0.1:0"]);
            }
            v.extend_from_slice(&args);
            v
        };
        let check = mn(&with("check"));
        if let Some(code) = want {
            assert_eq!(
                check.status.code(),
                Some(code),
                "check {args:?}: {}",
                stderr(&check)
            );
        }
        if check.status.success() {
            // serve must run it: wait for a worker, then stop.
            let mut v = vec!["--name", &name, "-l", "127.0.0.1:0"];
            v.extend_from_slice(&args);
            let mut m = Multinode::serve(&v);
            m.wait_started(1);
            m.signal(libc::SIGTERM);
            m.wait_exit();
            continue;
        }
        let serve = mn(&with("serve"));
        assert_eq!(
            serve.status.code(),
            check.status.code(),
            "serve {args:?}: {}\ncheck said: {}",
            stderr(&serve),
            stderr(&check)
        );
        assert_eq!(
            stderr(&serve),
            stderr(&check),
            "the same message for {args:?}"
        );
        assert_eq!(stderr(&check).lines().count(), 1, "{}", stderr(&check));
    }
}
