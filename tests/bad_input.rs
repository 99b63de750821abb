//! Bad input: every mistake gets one line naming the input and what to do, a documented exit
//! code, no panic, no supervisor left running and no socket file left behind.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::Output;

use common::*;

/// Runs `multinode serve <args>` to completion (it must fail fast).
fn serve_fails(args: &[&str]) -> Output {
    mn(&[&["serve"], args].concat())
}

/// The same as a user other than root (see [`multinode_not_root`]).
fn serve_fails_not_root(args: &[&str]) -> Output {
    run(multinode_not_root(&[&["serve"], args].concat()))
}

/// An error line with everything in `needles` somewhere, then only `tip:` lines.
#[track_caller]
fn assert_error_with_tip(out: &Output, code: i32, needles: &[&str]) {
    let err = stderr(out);
    assert_eq!(out.status.code(), Some(code), "{err}");
    let mut lines = err.lines();
    assert!(
        lines
            .next()
            .is_some_and(|l| l.starts_with("multinode: error: ")),
        "{err}"
    );
    assert!(lines.all(|l| l.starts_with("  tip: ")), "{err}");
    for n in needles {
        assert!(err.contains(n), "missing {n:?} in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
}

/// [`assert_error`], and no panic.
#[track_caller]
fn assert_error_no_panic(out: &Output, code: i32, needles: &[&str]) {
    assert_error(out, code, needles);
    let stderr = stderr(out);
    assert!(!stderr.contains("panicked"), "{stderr}");
}

#[test]
fn unparseable_address() {
    let out = serve_fails(&["--listen", "nonsense", "--", "/bin/sleep", "100"]);
    assert_error_no_panic(
        &out,
        2,
        &["--listen", "'nonsense' is not an address", "HOST:PORT"],
    );
    let out = serve_fails(&["--listen", "127.0.0.1:99999", "--", "/bin/sleep", "100"]);
    assert_error_no_panic(&out, 2, &["99999", "0 to 65535"]);
}

#[test]
fn port_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = serve_fails(&["--listen", &addr, "--", "/bin/sleep", "100"]);
    assert_error_no_panic(&out, 3, &[&addr, "already in use"]);
}

#[test]
fn socket_file_removed_when_a_later_socket_fails() {
    let scratch = Scratch::new("leftover");
    let sock = scratch.path("app.sock");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let unix = format!("unix:{}", sock.display());
    let out = serve_fails(&["-l", &unix, "-l", &addr, "--", "/bin/sleep", "100"]);
    assert_error_no_panic(&out, 3, &["already in use"]);
    assert!(!sock.exists(), "socket file {} left behind", sock.display());
}

#[test]
fn privileged_port_without_root() {
    if !is_root() {
        // We are not root: the binary runs as us, which is the case under test.
        let out = serve_fails(&["--listen", "127.0.0.1:81", "--", "/bin/sleep", "100"]);
        assert_error_no_panic(&out, 3, &["permission denied", "below 1024", "sudo"]);
        return;
    }
    let out = serve_fails_not_root(&["--listen", "127.0.0.1:81", "--", "/bin/sleep", "100"]);
    assert_error_no_panic(
        &out,
        3,
        &["127.0.0.1:81", "permission denied", "below 1024", "sudo"],
    );
}

#[test]
fn unknown_user_and_group() {
    let out = serve_fails(&[
        "-l",
        "127.0.0.1:0",
        "--user",
        "no-such-user-xyz",
        "--",
        "/bin/sleep",
        "100",
    ]);
    assert_error_no_panic(&out, 4, &["--user no-such-user-xyz", "no such user"]);
    let out = serve_fails(&[
        "-l",
        "127.0.0.1:0",
        "--group",
        "no-such-group-xyz",
        "--",
        "/bin/sleep",
        "100",
    ]);
    assert_error_no_panic(&out, 4, &["--group no-such-group-xyz", "no such group"]);
}

#[test]
fn other_user_without_root() {
    // As root the binary runs as nobody (setpriv); otherwise it runs as us. Either way it is
    // not root, and root is another user.
    let out = serve_fails_not_root(&["-l", "127.0.0.1:0", "--user", "root", "--", "/bin/sleep"]);
    assert_error_no_panic(&out, 4, &["--user root", "cannot switch users"]);
}

#[test]
fn missing_program() {
    let out = serve_fails(&["-l", "127.0.0.1:0", "--", "/nonexistent/dir/app"]);
    assert_error_no_panic(&out, 5, &["/nonexistent/dir/app", "no such file"]);
    let out = serve_fails(&["-l", "127.0.0.1:0", "--", "no-such-program-xyz"]);
    assert_error_no_panic(&out, 5, &["no-such-program-xyz", "not found in PATH"]);
}

#[test]
fn program_not_executable() {
    let scratch = Scratch::new("noexec");
    let p = scratch.path("app.sh");
    write(&p, "#!/bin/sh\nexit 0\n");
    let out = serve_fails(&["-l", "127.0.0.1:0", "--", p.to_str().unwrap()]);
    assert_error_no_panic(&out, 5, &["app.sh", "not executable", "chmod +x"]);
}

#[test]
fn program_unreachable_for_the_dropped_user() {
    if !require(is_root(), "needs root to drop privileges") {
        return;
    }
    let scratch = Scratch::new("private");
    let dir = scratch.path("private");
    std::fs::create_dir(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    let p = dir.join("app");
    std::fs::copy("/bin/sleep", &p).unwrap();
    let sock = scratch.path("s.sock");
    let unix = format!("unix:{}", sock.display());
    let out = serve_fails(&["-l", &unix, "--", p.to_str().unwrap(), "100"]);
    assert_error_no_panic(
        &out,
        5,
        &["cannot be executed by user nobody", "permission denied"],
    );
    assert!(!sock.exists(), "no socket file may be left behind");
}

#[test]
fn zero_workers() {
    let out = serve_fails(&["--workers", "0", "--", "/bin/sleep", "100"]);
    assert_error_no_panic(&out, 2, &["--workers 0", "at least one"]);
}

#[test]
fn unix_path_too_long() {
    let long = format!("unix:/tmp/{}", "x".repeat(120));
    let out = serve_fails(&["--listen", &long, "--", "/bin/sleep", "100"]);
    assert_error_no_panic(&out, 2, &["limit is 107", "shorter path"]);
}

/// A NUL byte in a path of the config file (a TOML string can hold one; an argv cannot) is
/// refused by name. Found by the `listen` fuzz target: `listen` and `control` took one.
#[test]
fn nul_bytes_in_config_file_paths() {
    let dir = Scratch::new("nul-paths");
    for (line, needles) in [
        (
            r#"listen = ["unix:/tmp/a\u0000b.sock"]"#,
            &[r"unix:/tmp/a\0b.sock", "NUL"],
        ),
        (r#"control = "/tmp/c\u0000d.sock""#, &["--control", "NUL"]),
    ] {
        let file = dir.path("multinode.toml");
        std::fs::write(&file, format!("{line}\ncommand = [\"/bin/true\"]\n")).unwrap();
        for cmd in ["check", "serve"] {
            let out = mn(&[cmd, "--config", file.to_str().unwrap()]);
            assert_error_no_panic(&out, 2, needles);
        }
    }
}

#[test]
fn no_program() {
    let out = serve_fails(&["--listen", "127.0.0.1:0"]);
    assert_error_no_panic(&out, 2, &["no program to run", "after --"]);
    let out = serve_fails(&["--listen", "127.0.0.1:0", "--"]);
    assert_error_no_panic(&out, 2, &["no program to run"]);
}

#[test]
fn bad_option_values() {
    let out = serve_fails(&["--grace", "soon", "--", "/bin/sleep"]);
    assert_error_no_panic(&out, 2, &["--grace", "not a duration"]);
    let out = serve_fails(&["--stop-signal", "NOPE", "--", "/bin/sleep"]);
    assert_error_no_panic(&out, 2, &["--stop-signal", "not a signal"]);
    let out = serve_fails(&["--no-such-flag", "--", "/bin/sleep"]);
    assert_error_no_panic(&out, 2, &["--no-such-flag"]);
}

#[test]
fn duplicate_socket_names() {
    let out = serve_fails(&[
        "-l",
        "web=127.0.0.1:0",
        "-l",
        "web=127.0.0.1:0",
        "--",
        "/bin/sleep",
    ]);
    assert_error_no_panic(&out, 2, &["'web' is already used"]);
}

#[test]
fn missing_watch_path() {
    let out = serve_fails(&[
        "-l",
        "127.0.0.1:0",
        "--watch",
        "/nonexistent/watched",
        "--",
        "/bin/sleep",
        "100",
    ]);
    assert_error_no_panic(&out, 2, &["--watch /nonexistent/watched", "no such file"]);
}

#[test]
fn multinode_alone_shows_what_it_can_do() {
    let out = mn(&[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("Usage: multinode <COMMAND>"), "{err}");
    assert!(err.contains("serve"), "{err}");
    assert!(
        !err.starts_with("multinode: error"),
        "not an error message: {err}"
    );
}

#[test]
fn a_command_without_dashes_gets_a_hint() {
    let out = mn(&["serve", "-w", "2", "./app"]);
    assert_error_with_tip(
        &out,
        2,
        &["'./app'", "put the worker command after --", "-- ./app"],
    );
}

#[test]
fn errors_point_to_the_subcommands_help_and_suggest_the_nearest_option() {
    let out = mn(&["status", "--bogus"]);
    assert_error_no_panic(&out, 2, &["--bogus", "see multinode status --help"]);
    let out = mn(&["serve", "--wokers", "3", "--", "/bin/true"]);
    assert_error_with_tip(
        &out,
        2,
        &["--wokers", "'--workers'", "multinode serve --help"],
    );
}

#[test]
fn completions_for_an_unknown_shell_name_the_known_ones() {
    let out = mn(&["completions", "tcsh"]);
    assert_error_with_tip(&out, 2, &["tcsh", "bash, zsh, fish, elvish, powershell"]);
    assert!(!stderr(&out).contains("similar"), "{}", stderr(&out));
}

#[test]
fn scale_zero_is_a_usage_error() {
    let out = mn(&["scale", "0", "--name", "nobody-runs-this"]);
    assert_error_no_panic(&out, 2, &["0", "1..=4096"]);
}

/// On a terminal, `error:` is red (and `NO_COLOR` turns it off).
#[test]
fn errors_are_coloured_on_a_terminal() {
    for (no_color, want) in [(false, true), (true, false)] {
        let (master, slave) = openpty();
        let mut cmd = std::process::Command::new(multinode_bin());
        cmd.args(["serve", "--listen", "nonsense", "--", "/bin/true"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::from(slave));
        if no_color {
            cmd.env("NO_COLOR", "1");
        } else {
            cmd.env_remove("NO_COLOR");
        }
        let status = cmd.status().unwrap();
        assert_eq!(status.code(), Some(2));
        let text = read_available(&master);
        assert!(text.contains("error:"), "{text:?}");
        assert_eq!(
            text.contains("\u{1b}["),
            want,
            "NO_COLOR={no_color}: {text:?}"
        );
    }
}

/// `python3` found in PATH as a pyenv shim under a home only root can enter: the error says
/// what it is and what to give instead.
#[test]
fn a_version_manager_shim_is_named_with_the_fix() {
    if !require(is_root(), "needs root to check the program as nobody") {
        return;
    }
    let s = Scratch::new("shim");
    let home = s.path("root-home");
    let shims = home.join(".pyenv/shims");
    std::fs::create_dir_all(&shims).unwrap();
    std::fs::set_permissions(&home, std::fs::Permissions::from_mode(0o700)).unwrap();
    write_mode(&shims.join("python3"), "#!/bin/sh\nexit 0\n", 0o755);
    let out = run({
        let mut c = std::process::Command::new(multinode_bin());
        c.args(["check", "--", "python3", "app.py"])
            .env("PATH", &shims);
        c
    });
    assert_error_no_panic(&out, 5, &["pyenv shim", "/usr/bin/python3", "nobody"]);
}
