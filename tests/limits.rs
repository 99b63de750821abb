//! Limits on what input can do to the supervisor (issue 10, item 10), with real processes:
//! huge durations, a notify flood, a control socket out of file descriptors, terminal escape
//! sequences from a worker, and `check` agreeing with `serve`.

mod common;

use std::process::{Command, Output};

use common::*;

fn multinode(args: &[&str]) -> Output {
    let mut cmd = Command::new(multinode_bin());
    cmd.args(args);
    run(cmd)
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

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
            let out = multinode(&all);
            let err = stderr(&out);
            assert_eq!(out.status.code(), Some(2), "{cmd} {args:?}: {err}");
            assert_eq!(err.lines().count(), 1, "{cmd} {args:?}: one line: {err}");
            assert!(err.contains(option), "{cmd} {args:?} names {option}: {err}");
            assert!(err.contains("longer than a year"), "{cmd} {args:?}: {err}");
            assert!(!err.contains("panicked"), "{err}");
        }
    }
    // A year is still taken.
    let out = multinode(&[
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
