//! multinode among the tools around it: the config file and `multinode check`, the control
//! commands (`status`, `reload`, `scale`, `stop`) against a running supervisor, several
//! supervisors side by side, and systemd (socket activation through the real
//! `systemd-socket-activate`, notifications to a NOTIFY_SOCKET).

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Instant;

use serde_json::Value;

use common::*;

/// (slot, pid, generation) of every `ready` row of a status.
fn ready_rows(v: &Value) -> Vec<(u64, i32, u64)> {
    v["slots"]
        .as_array()
        .expect("slots")
        .iter()
        .filter(|r| r["state"] == "ready")
        .map(|r| {
            (
                r["slot"].as_u64().unwrap(),
                r["pid"].as_i64().unwrap() as i32,
                r["generation"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The example config, checked as it is: copied with the layout its relative `command`
/// expects (examples/ next to target/release/hello), the hello binary of this build put there.
#[test]
fn example_config_is_valid_and_names_every_serve_option() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/multinode.toml"),
    )
    .unwrap();
    let s = Scratch::new("example");
    std::fs::create_dir_all(s.path("examples")).unwrap();
    std::fs::create_dir_all(s.path("target/release")).unwrap();
    let file = s.path("examples/multinode.toml");
    write(&file, &text);
    let bin = s.path("target/release/hello");
    std::fs::copy(worker_bin("hello"), &bin).unwrap();
    let out = mn(&["check", "--config", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(0), "check: {}", stderr(&out));
    let said = stdout(&out);
    assert!(said.starts_with("configuration ok"), "{said}");
    assert!(
        said.contains("4 worker(s)") && said.contains("web=127.0.0.1:8080"),
        "{said}"
    );
    assert!(said.contains("target/release/hello"), "{said}");

    // Every long option of `serve` (but --config itself) has its key in the example, set or
    // commented out, so that the example stays complete when options are added.
    let help = mn(&["serve", "--help"]);
    let options: Vec<String> = stdout(&help)
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            let l = l
                .strip_prefix("-")
                .filter(|r| r.chars().nth(1) == Some(','))
                .map_or(l, |r| r[2..].trim_start());
            let name = l.strip_prefix("--")?;
            Some(
                name.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
                    .next()?
                    .to_string(),
            )
        })
        .filter(|o| !["help", "version", "config"].contains(&o.as_str()))
        .collect();
    assert!(
        options.len() > 20,
        "options parsed from serve --help: {options:?}"
    );
    let keys: Vec<&str> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim_start_matches(['#', ' ']);
            // `key = value`, or a table such as `[env]`.
            l.split_once(" = ")
                .map(|(k, _)| k)
                .or_else(|| l.strip_prefix('[')?.strip_suffix(']'))
        })
        .collect();
    let missing: Vec<&String> = options
        .iter()
        .filter(|o| !keys.contains(&o.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "examples/multinode.toml lacks keys {missing:?}"
    );
}

#[test]
fn config_errors_name_file_line_and_column() {
    let s = Scratch::new("cfg-errors");
    let typo = s.path("typo.toml");
    write(
        &typo,
        "# a comment\nworkers = 2\nwokers = 3\ncommand = [\"/bin/sleep\", \"100\"]\n",
    );
    let wrong = s.path("wrong.toml");
    write(
        &wrong,
        "workers = \"two\"\ncommand = [\"/bin/sleep\", \"100\"]\n",
    );
    for sub in ["check", "serve"] {
        let name = unique_name();
        let out = mn(&[sub, "--name", &name, "--config", typo.to_str().unwrap()]);
        let at = format!("{}:3:1:", typo.display());
        assert_error(
            &out,
            2,
            &[&at, "`wokers`: unknown key; did you mean `workers`?"],
        );
        let out = mn(&[sub, "--name", &name, "--config", wrong.to_str().unwrap()]);
        let at = format!("{}:1:11:", wrong.display());
        assert_error(&out, 2, &[&at, "workers: expected a number"]);
    }
}

#[test]
fn check_says_ok_or_exits_with_the_error_class() {
    let s = Scratch::new("check");
    let name = unique_name();
    let good = s.path("good.toml");
    write(
        &good,
        &format!(
            "name = \"{name}\"\nworkers = 3\nlisten = [\"web=127.0.0.1:0\"]\ncommand = [\"{}\"]\n",
            hello()
        ),
    );
    let good = good.to_str().unwrap();
    let out = mn(&["check", "--config", good]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.starts_with("configuration ok: 3 worker(s) of "),
        "{said}"
    );
    assert!(
        said.contains(&hello()) && said.contains("web=127.0.0.1:0"),
        "{said}"
    );
    // It started nothing: no control socket where it says serve would put one.
    let control = said.rsplit("control socket ").next().unwrap().trim();
    assert!(
        control.ends_with(&format!("/{name}/control.sock")),
        "{said}"
    );
    assert!(!Path::new(control).exists(), "check created {control}");

    // The options on the command line are checked together with the file.
    let out = mn(&["check", "--config", good, "--user", "no-such-user-xyz"]);
    assert_error(&out, 4, &["no-such-user-xyz", "no such user"]);
    let out = mn(&["check", "--config", good, "-w", "0"]);
    assert_error(&out, 2, &["--workers 0"]);
    let missing = s.path("missing-program.toml");
    write(&missing, "command = [\"/nonexistent/dir/app\"]\n");
    let out = mn(&["check", "--config", missing.to_str().unwrap()]);
    assert_error(&out, 5, &["/nonexistent/dir/app", "no such file"]);
    let none = s.path("none.toml");
    let out = mn(&["check", "--config", none.to_str().unwrap()]);
    assert_error(
        &out,
        2,
        &[&format!("--config {}", none.display()), "no such file"],
    );
}

#[test]
fn config_file_values_are_used_and_the_command_line_wins() {
    let s = Scratch::new("cfg-values");
    let wd = s.path("wd");
    std::fs::create_dir(&wd).unwrap();
    std::fs::set_permissions(&wd, std::fs::Permissions::from_mode(0o755)).unwrap();
    let wd = wd.canonicalize().unwrap();
    let name = unique_name();
    let cfg = s.path("multinode.toml");
    write(
        &cfg,
        &format!(
            r#"name = "{name}"
workers = 2
listen = ["web=127.0.0.1:0"]
workdir = "wd"
command = ["/bin/sh", "-c", "echo FOO=$FOO BAR=$BAR PWD=$(pwd); exec {}"]

[env]
FOO = "file"
BAR = "file"
"#,
            hello()
        ),
    );
    let cfg = cfg.to_str().unwrap();
    {
        let m = Multinode::serve(&["--config", cfg]);
        let addr = m.tcp_addr("web");
        m.wait_ready(2);
        let want = format!("FOO=file BAR=file PWD={}", wd.display());
        m.wait_events(OUTPUT, 2, |e| e.msg == want);
        assert!(m.control_path().ends_with(format!("{name}/control.sock")));
        assert_eq!(status_json(&name)["workers"], 2);
        let (code, _) = http_get(addr, "/").unwrap();
        assert_eq!(code, 200);
    }
    // The command line beats the file; [env] and -e merge, -e winning per variable.
    let m = Multinode::serve(&[
        "--config",
        cfg,
        "-w",
        "3",
        "-e",
        "FOO=cli",
        "-l",
        "cli=127.0.0.1:0",
    ]);
    m.tcp_addr("cli");
    m.wait_ready(3);
    let want = format!("FOO=cli BAR=file PWD={}", wd.display());
    m.wait_events(OUTPUT, 3, |e| e.msg == want);
    assert_eq!(status_json(&name)["workers"], 3);
    assert!(
        m.events("listening")
            .iter()
            .all(|e| e.str("name") != Some("web")),
        "--listen should replace the file's listen:\n{}",
        m.output()
    );
}

#[test]
fn status_shows_every_slot_with_a_live_pid() {
    let name = unique_name();
    let m = Multinode::serve_hello("3", &["--name", &name]);
    m.wait_ready(3);
    let v = status_json(&name);
    assert_eq!(v["name"], name.as_str());
    assert_eq!(v["pid"], m.pid);
    assert_eq!(v["workers"], 3);
    assert_eq!(v["ready"], true);
    let rows = v["slots"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{v}");
    let started = m.worker_pids();
    for (i, r) in rows.iter().enumerate() {
        let pid = r["pid"].as_i64().unwrap() as i32;
        assert_eq!(r["slot"], i, "{v}");
        assert_eq!(r["state"], "ready", "{v}");
        assert!(alive(pid), "slot {i}: pid {pid} does not exist");
        assert!(
            started.contains(&pid),
            "slot {i}: pid {pid} is not a worker it started"
        );
    }

    let out = mn(&["status", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = stdout(&out);
    let lines: Vec<&str> = table.lines().collect();
    let head = lines
        .iter()
        .position(|l| {
            l.split_whitespace().collect::<Vec<_>>()
                == [
                    "SLOT", "PID", "STATE", "GEN", "UPTIME", "CPU", "MEM", "RESTARTS", "LAST",
                    "EXIT", "STATUS",
                ]
        })
        .unwrap_or_else(|| panic!("no header line:\n{table}"));
    let body = &lines[head + 1..];
    assert_eq!(body.len(), 3, "one row per slot:\n{table}");
    for (i, (line, r)) in body.iter().zip(rows).enumerate() {
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(
            f[..3],
            [i.to_string().as_str(), &r["pid"].to_string(), "ready"],
            "{table}"
        );
    }

    let out = mn(&["status", "--check", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
}

#[test]
fn status_check_fails_while_a_slot_is_not_ready() {
    let s = Scratch::new("gate");
    write(&s.path("gate.0"), "");
    let name = unique_name();
    let m = Multinode::spawn(gated_command(&name, "2", &s.path("gate.{id}")));
    m.wait_event("ready", |e| e.slot == Some(0));
    let out = mn(&["status", "--check", "--name", &name]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "slot 1 is not ready; {}",
        stderr(&out)
    );
    assert!(out.stdout.is_empty());
    let v = status_json(&name);
    assert_eq!(v["ready"], false, "{v}");
    assert_eq!(v["slots"][0]["state"], "ready", "{v}");
    assert_eq!(
        v["slots"][0]["status"], "gate open",
        "the worker's STATUS= text: {v}"
    );
    assert_eq!(v["slots"][1]["state"], "starting", "{v}");

    write(&s.path("gate.1"), "");
    let ok = eventually(DEADLINE, || {
        mn(&["status", "--check", "--name", &name]).status.code() == Some(0)
    });
    assert!(ok, "status --check never exited 0; output:\n{}", m.output());
}

/// `multinode <args>` on a thread: its output and the instant it returned.
fn mn_background(args: &[&str]) -> std::thread::JoinHandle<(Output, Instant)> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    std::thread::spawn(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = mn(&args);
        (out, Instant::now())
    })
}

/// `multinode serve --name NAME -w WORKERS --ready notify` of mn-readygate workers, not
/// started yet: slot ID becomes ready once the file `gate` names exists, with `{id}` in it
/// the slot and `{gen}` the generation.
fn gated_command(name: &str, workers: &str, gate: &Path) -> Command {
    let env = format!("MN_GATE={}", gate.display());
    let bin = worker_bin("mn-readygate");
    serve_command(&[
        "--name",
        name,
        "-w",
        workers,
        "--ready",
        "notify",
        "-e",
        &env,
        "-l",
        "127.0.0.1:0",
        "--",
        bin.to_str().unwrap(),
    ])
}

/// [`gated_command`] started, with `gate.ID.GEN` in `s` as the gates and those of generation
/// 1's slots opened; returns once they are ready.
fn serve_gated(s: &Scratch, name: &str, workers: u32) -> Multinode {
    for id in 0..workers {
        write(&s.path(&format!("gate.{id}.1")), "");
    }
    let w = workers.to_string();
    let m = Multinode::spawn(gated_command(name, &w, &s.path("gate.{id}.{gen}")));
    m.wait_ready(workers as usize);
    m
}

/// The pid in mn-readygate's `gate pid=P` answer.
fn gate_pid(body: &str) -> i32 {
    body.trim()
        .strip_prefix("gate pid=")
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn reload_waits_and_reports_success() {
    let s = Scratch::new("reload");
    let name = unique_name();
    let m = serve_gated(&s, &name, 2);
    let addr = m.tcp_addr("listen0");
    let old: Vec<i32> = ready_rows(&status_json(&name))
        .iter()
        .map(|r| r.1)
        .collect();
    assert_eq!(old.len(), 2);

    let reload = mn_background(&["reload", "--name", &name]);
    m.wait_event("started", |e| e.generation() == Some(2));
    let opened = Instant::now();
    write(&s.path("gate.0.2"), "");
    write(&s.path("gate.1.2"), "");
    let (out, returned) = reload.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("reloaded: every worker runs generation 2"),
        "{}",
        stdout(&out)
    );
    assert!(
        returned > opened,
        "reload returned before the new workers could be ready"
    );
    // When it returns, a new worker is ready in every slot.
    let v = status_json(&name);
    assert_eq!(v["generation"], 2, "{v}");
    let new = ready_rows(&v);
    assert_eq!(new.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1], "{v}");
    for (slot, pid, generation) in &new {
        assert_eq!(*generation, 2, "slot {slot}: {v}");
        assert!(
            !old.contains(pid),
            "slot {slot} still has its old worker {pid}: {v}"
        );
        assert!(alive(*pid));
    }
    assert!(
        eventually(DEADLINE, || old.iter().all(|p| !alive(*p))),
        "old workers {old:?} never exited"
    );
    let (_, body) = http_get(addr, "/").unwrap();
    let pid = gate_pid(&body);
    assert!(
        new.iter().any(|r| r.1 == pid),
        "served by {pid}, not a new worker"
    );
}

/// A config with `name`, two workers on an ephemeral port and `command` (TOML array items).
fn reload_config(name: &str, command: &str, extra: &str) -> String {
    format!(
        "name = \"{name}\"\nworkers = 2\nlisten = [\"127.0.0.1:0\"]\ncommand = [{command}]\n{extra}"
    )
}

#[test]
fn failed_reload_is_reported_and_the_old_workers_keep_serving() {
    let s = Scratch::new("reload-fail");
    let name = unique_name();
    let cfg = s.path("multinode.toml");
    write(&cfg, &reload_config(&name, &format!("\"{}\"", hello()), ""));
    let m = Multinode::serve(&["--config", cfg.to_str().unwrap()]);
    let addr = m.tcp_addr("listen0");
    m.wait_ready(2);
    let before = ready_rows(&status_json(&name));

    // The new program exits at once: the roll-out must stop at its first worker.
    write(&cfg, &reload_config(&name, "\"/bin/false\"", ""));
    let out = mn(&["reload", "--name", &name]);
    assert_error(
        &out,
        1,
        &["reload failed", "before it was ready", "keep serving"],
    );
    assert!(
        !stderr(&out).contains("failed: reload to generation"),
        "said twice: {}",
        stderr(&out)
    );
    let v = status_json(&name);
    assert_eq!(v["generation"], 1, "{v}");
    assert_eq!(v["ready"], true, "{v}");
    assert_eq!(
        ready_rows(&v),
        before,
        "the old workers must keep their slots: {v}"
    );
    for (_, pid, _) in &before {
        assert!(alive(*pid), "old worker {pid} is gone");
    }
    let (code, body) = http_get(addr, "/").unwrap();
    assert_eq!(code, 200);
    let pid = body_pid(&body).unwrap();
    assert!(
        before.iter().any(|r| r.1 == pid),
        "served by {pid}, not an old worker"
    );
}

/// After a reload failed, fixing what made the new program fail and reloading again must
/// start the program the config file names.
#[test]
fn reload_after_a_failed_one_starts_the_configured_program() {
    let s = Scratch::new("reload-again");
    let name = unique_name();
    let cfg = s.path("multinode.toml");
    write(&cfg, &reload_config(&name, &format!("\"{}\"", hello()), ""));
    let m = Multinode::serve(&["--config", cfg.to_str().unwrap()]);
    m.wait_ready(2);

    // Program B runs hello only once a marker file exists; it also gets VARIANT=B.
    let marker = s.path("deployed");
    let b = format!(
        "\"/bin/sh\", \"-c\", \"test -e {} && exec {}; exit 3\"",
        marker.display(),
        hello()
    );
    write(&cfg, &reload_config(&name, &b, "[env]\nVARIANT = \"B\"\n"));
    let out = mn(&["reload", "--name", &name]);
    assert_error(&out, 1, &["reload failed"]);

    write(&marker, "");
    let out = mn(&["reload", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v = status_json(&name);
    let rows = ready_rows(&v);
    assert_eq!(rows.len(), 2, "{v}");
    for (slot, pid, generation) in rows {
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let has_b = env.split(|b| *b == 0).any(|kv| kv == b"VARIANT=B");
        assert!(
            has_b,
            "worker.{slot}[{pid}] of generation {generation} lacks VARIANT=B: the reload reported \
             success but did not start the program and environment of the config file; output:\n{}",
            m.output()
        );
    }
}

#[test]
fn scale_up_and_down() {
    let s = Scratch::new("scale");
    let name = unique_name();
    let m = serve_gated(&s, &name, 2);

    let scale = mn_background(&["scale", "--name", &name, "3"]);
    m.wait_event("started", |e| e.slot == Some(2));
    let opened = Instant::now();
    write(&s.path("gate.2.1"), "");
    let (out, returned) = scale.join().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("scaled: 3 worker(s) ready"),
        "{}",
        stdout(&out)
    );
    assert!(
        returned > opened,
        "scale returned before the new worker could be ready"
    );
    let v = status_json(&name);
    assert_eq!(v["workers"], 3, "{v}");
    assert_eq!(v["ready"], true, "{v}");
    let three = ready_rows(&v);
    assert_eq!(
        three.iter().map(|r| r.0).collect::<Vec<_>>(),
        [0, 1, 2],
        "{v}"
    );
    assert!(three.iter().all(|r| alive(r.1)), "{v}");

    let out = mn(&["scale", "--name", &name, "1"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("scaled: 1 worker(s) ready"),
        "{}",
        stdout(&out)
    );
    let v = status_json(&name);
    assert_eq!(v["workers"], 1, "{v}");
    assert_eq!(ready_rows(&v), three[..1], "slot 0 keeps its worker: {v}");
    let gone = [three[1].1, three[2].1];
    assert!(
        eventually(DEADLINE, || gone.iter().all(|p| !alive(*p))),
        "the workers of slots 1 and 2 never exited"
    );
    let v = status_json(&name);
    assert_eq!(v["slots"].as_array().unwrap().len(), 1, "{v}");
}

#[test]
fn stop_returns_once_the_supervisor_has_stopped() {
    let name = unique_name();
    // Workers that take a while to stop (a second after SIGTERM), so that a `stop` returning
    // before they are gone is caught.
    let slow = "trap 'sleep 1; exit 0' TERM; while :; do sleep 1; done";
    let mut m = Multinode::serve(&[
        "--name",
        &name,
        "-w",
        "2",
        "--ready",
        "delay:100ms",
        "-l",
        "127.0.0.1:0",
        "--",
        "/bin/sh",
        "-c",
        slow,
    ]);
    m.wait_ready(2);
    let control = m.control_path();
    let workers: Vec<i32> = ready_rows(&status_json(&name))
        .iter()
        .map(|r| r.1)
        .collect();

    let out = mn(&["stop", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "stopped");
    // Returned only after multinode had stopped (and reaped) every worker.
    for pid in workers {
        assert!(
            !alive(pid),
            "worker {pid} still runs after `multinode stop` returned"
        );
    }
    let st = m.wait_exit();
    assert_eq!(st.code(), Some(0), "{}", m.output());
    // Root's control socket is in root's directory: the root guard removes both at exit.
    assert!(!control.exists(), "{} left behind", control.display());
    let out = mn(&["status", "--name", &name]);
    assert_eq!(out.status.code(), Some(7), "{}", stderr(&out));
}

#[test]
fn a_second_supervisor_with_the_same_name_refuses_to_start() {
    let name = unique_name();
    let h = hello();
    let mut first = Multinode::serve_hello("1", &["--name", &name]);
    let addr = first.tcp_addr("listen0");
    first.wait_ready(1);
    let control = first.control_path();

    let out = mn(&[
        "serve",
        "--name",
        &name,
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--",
        &h,
    ]);
    assert_error(
        &out,
        3,
        &[&control.display().to_string(), "in use", "--name"],
    );

    assert!(
        first.child.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the first one exited"
    );
    assert!(
        control.exists(),
        "the first one's control socket was removed"
    );
    assert_eq!(status_json(&name)["pid"], first.pid);
    let (code, _) = http_get(addr, "/").unwrap();
    assert_eq!(code, 200);
}

/// `multinode <args>` as nobody (when we are root; else as ourselves), with its own
/// XDG_RUNTIME_DIR: the control sockets of this test only.
fn as_user<S: AsRef<std::ffi::OsStr>>(runtime: &Path, args: &[S]) -> Command {
    let mut cmd = multinode_not_root(args);
    cmd.env("XDG_RUNTIME_DIR", runtime);
    cmd
}

#[test]
fn control_commands_find_the_only_supervisor_or_ask_for_a_name() {
    let s = Scratch::new("xdg");
    let runtime = s.path("run");
    std::fs::create_dir(&runtime).unwrap();
    if is_root() {
        std::os::unix::fs::chown(&runtime, Some(65534), Some(65534)).unwrap();
    }
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o700)).unwrap();
    let h = hello();
    let serve = |name: &str| {
        let m = Multinode::spawn(as_user(
            &runtime,
            &serve_args(&["--name", name, "-w", "1", "-l", "127.0.0.1:0", "--", &h]),
        ));
        m.wait_ready(1);
        m
    };

    let out = run(as_user(&runtime, &["status"]));
    assert_error(
        &out,
        7,
        &["no multinode is running", &runtime.display().to_string()],
    );

    let alpha = serve("alpha");
    assert_eq!(
        alpha.control_path(),
        runtime.join("multinode/alpha/control.sock"),
        "{}",
        alpha.output()
    );
    let out = run(as_user(&runtime, &["status"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stdout(&out);
    assert!(
        said.starts_with(&format!("alpha: pid {},", alpha.pid)),
        "{said}"
    );
    assert!(said.contains("SLOT"), "the table of the only one: {said}");

    let beta = serve("beta");
    let out = run(as_user(&runtime, &["status"]));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = stdout(&out);
    let lines: Vec<&str> = said.lines().collect();
    assert_eq!(lines.len(), 2, "one line per service: {said}");
    assert!(
        lines[0].starts_with(&format!("alpha: pid {},", alpha.pid)),
        "{said}"
    );
    assert!(
        lines[1].starts_with(&format!("beta: pid {},", beta.pid)),
        "{said}"
    );

    let out = run(as_user(&runtime, &["reload"]));
    assert_error(&out, 2, &["alpha", "beta", "--name"]);
}

/// Where systemd-socket-activate is, if installed.
fn socket_activate_bin() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain([PathBuf::from("/usr/bin")])
        .map(|d| d.join("systemd-socket-activate"))
        .find(|p| p.is_file())
}

/// `systemd-socket-activate -l 127.0.0.1:PORT <sa_args> multinode serve <args>` on a free
/// port, once it listens (it starts multinode at the first connection). None: not installed.
fn socket_activated(sa_args: &[&str], args: &[&str]) -> Option<(Multinode, std::net::SocketAddr)> {
    let sa = socket_activate_bin();
    if !require(
        sa.is_some(),
        "systemd-socket-activate is not installed (Debian package systemd)",
    ) {
        return None;
    }
    let sa = sa.unwrap();
    for _ in 0..20 {
        // A port that was free a moment ago; another process may take it first: then retry.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr: std::net::SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = Command::new(&sa);
        cmd.arg("-l").arg(addr.to_string()).args(sa_args);
        cmd.arg(multinode_bin()).args(serve_args(args));
        let mut m = Multinode::spawn(cmd);
        let listening = format!("Listening on {addr} ");
        let ok = eventually(DEADLINE, || {
            m.lines().iter().any(|l| l.starts_with(&listening))
                || m.child.as_mut().unwrap().try_wait().unwrap().is_some()
        });
        assert!(
            ok,
            "systemd-socket-activate neither listened nor exited:\n{}",
            m.output()
        );
        if m.lines().iter().any(|l| l.starts_with(&listening)) {
            return Some((m, addr));
        }
        assert!(
            m.output().contains("in use"),
            "systemd-socket-activate failed:\n{}",
            m.output()
        );
    }
    panic!("no free port for systemd-socket-activate in 20 tries");
}

#[test]
fn socket_activation_serves_requests_from_every_worker() {
    let name = unique_name();
    let h = hello();
    let Some((m, addr)) =
        socket_activated(&["--fdname=web"], &["--name", &name, "-w", "2", "--", &h])
    else {
        return;
    };
    // The first connection makes systemd-socket-activate exec multinode, which serves it.
    let mut pids = std::collections::BTreeSet::new();
    let end = Instant::now() + DEADLINE;
    while pids.len() < 2 && Instant::now() < end {
        let (code, body) = http_get(addr, "/").unwrap();
        assert_eq!(code, 200);
        pids.insert(body_pid(&body).unwrap());
    }
    assert_eq!(
        pids.len(),
        2,
        "requests reached {pids:?}; output:\n{}",
        m.output()
    );
    // (The `started` lines may reach us after the workers' first answers.)
    let workers = m.wait_started(2);
    assert!(
        pids.iter().all(|p| workers.contains(p)),
        "{pids:?} vs workers {workers:?}"
    );
    let e = m.wait_event("listening", |_| true);
    assert_eq!(e.str("name"), Some("web"), "{e}");
    assert_eq!(e.str("addr"), Some(addr.to_string().as_str()), "{e}");
    assert_eq!(e.u64("fd"), Some(3), "{e}");
    assert_eq!(e.bool("systemd"), Some(true), "from systemd: {e}");
    // systemd-socket-activate execs multinode in its own process.
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", m.pid)).unwrap();
    assert_eq!(comm.trim(), "multinode");
}

#[test]
fn listen_together_with_socket_activation_is_refused() {
    let name = unique_name();
    let args = [
        "--name",
        &name,
        "--listen",
        "127.0.0.1:0",
        "--",
        "/bin/sleep",
        "100",
    ];
    let Some((mut m, addr)) = socket_activated(&[], &args) else {
        return;
    };
    // Connecting starts multinode, which must refuse the combination and exit.
    let _conn = std::net::TcpStream::connect(addr).unwrap();
    let st = m.wait_exit();
    assert_eq!(st.code(), Some(2), "{}", m.output());
    assert!(
        m.output()
            .contains("multinode: error: --listen given, but systemd passed sockets"),
        "{}",
        m.output()
    );
}

/// Datagrams on our NOTIFY_SOCKET, each as one string.
#[test]
fn systemd_notifications_follow_readiness_reload_and_stop() {
    let s = Scratch::new("sd-notify");
    let path = s.path("notify");
    let sd = ServiceManager::bind(&path);
    write(&s.path("gate.0"), "");
    let name = unique_name();
    let mut cmd = gated_command(&name, "2", &s.path("gate.{id}"));
    cmd.env("NOTIFY_SOCKET", &path);
    let mut m = Multinode::spawn(cmd);

    // One slot ready: STATUS says so, and READY=1 must not come yet.
    let (early, half, _) = sd.until("STATUS= 1/2", |msg| {
        msg.contains("STATUS=1/2 workers ready")
    });
    for msg in early.iter().chain([&half]) {
        assert!(
            !has_line(msg, "READY=1"),
            "READY=1 with slot 1 not ready: {msg:?}"
        );
    }
    write(&s.path("gate.1"), "");
    let (_, ready, _) = sd.until("READY=1", |msg| has_line(msg, "READY=1"));
    assert!(
        has_line(&ready, "STATUS=2/2 workers ready, generation 1"),
        "{ready:?}"
    );
    m.wait_ready(2);

    // SIGHUP: RELOADING=1 with the time, then READY=1 once generation 2 serves.
    let t0 = monotonic_usec();
    m.signal(libc::SIGHUP);
    let (between, reloading, _) = sd.until("RELOADING=1", |msg| has_line(msg, "RELOADING=1"));
    let t1 = monotonic_usec();
    assert!(
        between.iter().all(|msg| !has_line(msg, "READY=1")),
        "{between:?}"
    );
    let usec: u64 = reloading
        .lines()
        .find_map(|l| l.strip_prefix("MONOTONIC_USEC="))
        .unwrap_or_else(|| panic!("RELOADING=1 without MONOTONIC_USEC: {reloading:?}"))
        .parse()
        .unwrap();
    assert!(
        t0 <= usec && usec <= t1,
        "MONOTONIC_USEC={usec} not within [{t0}, {t1}]"
    );
    let (_, ready, _) = sd.until("READY=1 after the reload", |msg| has_line(msg, "READY=1"));
    assert!(
        has_line(&ready, "STATUS=2/2 workers ready, generation 2"),
        "{ready:?}"
    );
    m.wait_event("reloaded", |e| e.why() == Some("SIGHUP"));

    // SIGTERM: STOPPING=1.
    m.signal(libc::SIGTERM);
    let (_, stopping, _) = sd.until("STOPPING=1", |msg| has_line(msg, "STOPPING=1"));
    assert!(stopping.contains("STATUS="), "{stopping:?}");
    let st = m.wait_exit();
    assert_eq!(st.code(), Some(0), "{}", m.output());
}

/// A reload re-reads the config file: a changed `log-format` takes effect at once, and a
/// changed option that only a restart applies is named, never silently ignored.
#[test]
fn a_reload_applies_log_format_and_names_what_needs_a_restart() {
    let s = Scratch::new("reload-format");
    let name = unique_name();
    let cfg = s.path("multinode.toml");
    let text = reload_config(
        &name,
        &format!("\"{}\"", hello()),
        "log-format = \"text\"\n",
    );
    write(&cfg, &text);
    // Not through `Multinode::serve`: it would choose the format on the command line, which
    // wins over the file.
    let mut cmd = Command::new(multinode_bin());
    cmd.args(["serve", "--config", cfg.to_str().unwrap()]);
    let m = Multinode::spawn(cmd);
    m.wait_line("text output", |l| {
        l.starts_with("multinode | ") && l.contains("started")
    });
    assert!(m.events("started").is_empty(), "JSON before the reload");

    let json = text
        .replace("log-format = \"text\"", "log-format = \"json\"")
        .replace("127.0.0.1:0", "127.0.0.1:1");
    write(&cfg, &json);
    m.signal(libc::SIGHUP);
    let restart = m.wait_event("reload-needs-restart", |_| true);
    assert_eq!(
        restart.get("keys"),
        Some(&serde_json::json!(["listen"])),
        "{restart}"
    );
    m.wait_event("reloaded", |e| e.generation() == Some(2));
}

/// The supervisor never waits for a control client: one that sends half a request and goes
/// quiet holds up neither other clients nor a reload, and is dropped after a while; one that
/// sends garbage gets an error.
#[test]
fn a_silent_control_client_holds_up_nothing() {
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;
    let name = unique_name();
    let m = Multinode::serve(&[
        "--name",
        &name,
        "-w",
        "1",
        "--ready",
        "delay:100ms",
        "-l",
        "127.0.0.1:0",
        "--",
        &hello(),
    ]);
    m.wait_ready(1);
    let control = m.control_path();
    let mut silent = UnixStream::connect(&control).unwrap();
    silent.write_all(br#"{"cmd":"sta"#).unwrap();

    let v = status_json(&name);
    assert_eq!(v["workers"], 1, "{v}");
    let out = mn(&["reload", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let mut garbage = UnixStream::connect(&control).unwrap();
    garbage.write_all(b"hello?\n").unwrap();
    let mut answer = String::new();
    garbage.read_to_string(&mut answer).unwrap();
    assert!(answer.contains("not a valid request"), "{answer}");

    // The silent one is closed by the supervisor once its time is up.
    silent.set_read_timeout(Some(DEADLINE)).unwrap();
    let mut rest = Vec::new();
    let closed = silent.read_to_end(&mut rest);
    assert!(
        matches!(closed, Ok(0)),
        "the supervisor should close it without an answer: {closed:?} {rest:?}"
    );
}

/// `multinode stop` reports how multinode ended: here a worker that ignores SIGTERM has to
/// be killed after `--grace`, so multinode exits 1, and so does `stop`, saying why.
#[test]
fn stop_reports_an_unclean_exit() {
    let name = unique_name();
    let mut m = Multinode::serve(&[
        "--name",
        &name,
        "-w",
        "1",
        "--grace",
        "1s",
        "--ready",
        "delay:100ms",
        "-l",
        "127.0.0.1:0",
        "--",
        "/bin/sh",
        "-c",
        "trap '' TERM; while :; do sleep 1; done",
    ]);
    m.wait_ready(1);
    let out = mn(&["stop", "--name", &name]);
    assert_error(
        &out,
        1,
        &["stopped, but multinode exited with status 1", "killed"],
    );
    assert_eq!(m.wait_exit().code(), Some(1));
}
