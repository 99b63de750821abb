//! Containment and the root guard (issue 10, items 5, 6 and 8), each as an attack or an
//! accident would happen with real processes: helpers that detach with `setsid` or a double
//! fork, a worker's user trying to kill the guard, the supervisor killed with SIGKILL, a dead
//! or stopped guard, a root-only config file read again for a reload, and per-worker cgroups.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// The `cgroup` event: whether each worker gets a cgroup of its own here.
fn cgroup_mode(m: &Multinode) -> String {
    let e = m.wait_event("cgroup", |_| true);
    e.str("mode").expect("cgroup: mode").to_string()
}

/// The service's cgroup directory, in cgroup mode.
fn cgroup_path(m: &Multinode) -> PathBuf {
    let e = m.wait_event("cgroup", |_| true);
    PathBuf::from(e.str("path").expect("cgroup: path"))
}

/// The cgroup v2 group of `pid` (`0::PATH` of /proc/PID/cgroup).
fn cgroup_of(pid: i32) -> Option<String> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .map(str::to_string)
}

fn guard_pid(m: &Multinode) -> i32 {
    m.wait_event("guard", |_| true).pid.expect("guard: pid")
}

/// A clean stop takes the detached helpers with it, whatever the containment in force, and
/// the port can be bound again at once. `swept`: the setsid helper is left for the sweep at
/// exit (no cgroups), which says so.
fn clean_stop_leaves_nothing(extra: &[&str], swept: bool) {
    let s = Scratch::new("stop");
    let script = helpers_script(&s);
    let mut args = vec!["-w", "1", "-l", "127.0.0.1:0"];
    args.extend(extra);
    args.extend(["--", script.to_str().unwrap()]);
    let mut m = Multinode::serve(&args);
    let addr = m.tcp_addr("listen0");
    let pid = m.wait_started(1)[0];
    let (detached, forked) = helper_pids(&m, pid);
    let _helpers = KillOnDrop {
        pids: vec![detached, forked],
        comm: "sleep",
    };
    m.wait_ready(1);
    m.signal(libc::SIGTERM);
    let st = m.wait_exit();
    assert_eq!(st.code(), Some(0), "{}", m.output());
    for p in [pid, detached, forked] {
        assert!(
            eventually(DEADLINE, || !alive(p)),
            "process {p} outlived a clean stop: {:?}\n{}",
            stat_of(p),
            m.output()
        );
    }
    std::net::TcpListener::bind(addr)
        .unwrap_or_else(|e| panic!("{addr} cannot be bound again after the stop: {e}"));
    if swept {
        let kill = m.wait_event("kill", |e| e.why() == Some("orphans"));
        assert!(kill.u64("processes") >= Some(1), "{kill}");
    }
}

#[test]
fn detached_helpers_are_gone_after_a_clean_stop() {
    clean_stop_leaves_nothing(&[], false);
}

#[test]
fn detached_helpers_are_gone_after_a_clean_stop_without_cgroups() {
    // Process groups only: the double-forked helper goes with the worker's group, the setsid
    // one (reparented to multinode, a subreaper) when the service stops.
    clean_stop_leaves_nothing(&["--cgroup", "off"], true);
}

/// What `/proc/PID/comm` reads for the processes of [`oddly_named_helpers`] (their names hold
/// the byte 0xff, which is not UTF-8).
const ODD_SLEEP: &str = "sl\u{fffd}ep";
const ODD_HELLO: &str = "hel\u{fffd}lo";

/// [`helpers_script`] whose worker and helpers name themselves in bytes that are not UTF-8: a
/// process chooses its own name, here that of the file it runs (a symlink to sleep or hello
/// named `sl\xffep` or `hel\xfflo`).
fn oddly_named_helpers(s: &Scratch) -> PathBuf {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;
    let sleep = std::env::split_paths(&std::env::var_os("PATH").unwrap())
        .map(|d| d.join("sleep"))
        .find(|p| p.exists())
        .expect("sleep in PATH");
    let link = |to: &Path, name: &[u8]| {
        std::os::unix::fs::symlink(to, s.0.join(OsStr::from_bytes(name))).unwrap()
    };
    link(&sleep, b"sl\xffep");
    link(Path::new(&hello()), b"hel\xfflo");
    let path = s.path("odd.sh");
    let script = format!(
        "#!/bin/sh\n\
         sleep=\"{dir}/$(printf 'sl\\377ep')\"\n\
         setsid sh -c 'echo \"setsid $$\"; exec \"$0\" 1000' \"$sleep\" &\n\
         (sh -c 'echo \"forked $$\"; exec \"$0\" 1000' \"$sleep\" &) &\n\
         exec \"{dir}/$(printf 'hel\\377lo')\"\n",
        dir = s.0.display()
    );
    write_mode(&path, &script, 0o755);
    path
}

/// The worker and helpers of [`oddly_named_helpers`], once each has its odd name.
fn odd_processes(m: &Multinode) -> (i32, i32, i32) {
    let pid = m.wait_started(1)[0];
    let (detached, forked) = helper_pids(m, pid);
    assert!(
        eventually(DEADLINE, || comm(pid) == ODD_HELLO
            && comm(detached) == ODD_SLEEP
            && comm(forked) == ODD_SLEEP),
        "the processes took their names: {:?}",
        [pid, detached, forked].map(comm)
    );
    (pid, detached, forked)
}

#[test]
fn helpers_named_in_bytes_that_are_not_utf8_are_swept_at_exit() {
    // The sweep at exit (no cgroups) finds what was reparented to multinode in /proc, where
    // it once skipped a process whose name is not UTF-8: that one outlived the service.
    let s = Scratch::new("odd-stop");
    let script = oddly_named_helpers(&s);
    let mut m = Multinode::serve(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--cgroup",
        "off",
        "--",
        script.to_str().unwrap(),
    ]);
    let (pid, detached, forked) = odd_processes(&m);
    let _helpers = KillOnDrop {
        pids: vec![detached, forked],
        comm: ODD_SLEEP,
    };
    m.wait_ready(1);
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
    for p in [pid, detached, forked] {
        assert!(
            eventually(DEADLINE, || !alive(p)),
            "process {p} ({}) outlived a clean stop: {:?}\n{}",
            comm(p),
            stat_of(p),
            m.output()
        );
    }
    let kill = m.wait_event("kill", |e| e.why() == Some("orphans"));
    assert!(kill.u64("processes") >= Some(1), "{kill}");
}

#[test]
fn the_guard_kills_a_workers_group_named_in_bytes_that_are_not_utf8() {
    // The supervisor killed, the guard (root) kills each worker's process group, looking in
    // /proc for whose processes they are: there it once skipped a process whose name is not
    // UTF-8, and a group of only such processes lived on.
    if !require(
        is_root(),
        "needs root: the guard checks whose processes it kills when multinode drops root",
    ) {
        return;
    }
    let s = Scratch::new("odd-guard");
    let script = oddly_named_helpers(&s);
    let mut m = Multinode::serve(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--cgroup",
        "off",
        "--",
        script.to_str().unwrap(),
    ]);
    let (pid, detached, forked) = odd_processes(&m);
    // The setsid helper left the worker's group, and without cgroups nothing holds it: only
    // a clean stop's sweep takes it (the test above). The double-forked one is the guard's.
    let _helpers = KillOnDrop {
        pids: vec![detached, forked],
        comm: ODD_SLEEP,
    };
    m.wait_ready(1);
    m.signal(libc::SIGKILL);
    m.wait_exit();
    for p in [pid, forked] {
        assert!(
            eventually(DEADLINE, || !alive(p)),
            "process {p} ({}) outlived the killed supervisor: {:?}",
            comm(p),
            stat_of(p)
        );
    }
}

#[test]
fn a_slot_restart_takes_its_detached_helpers_with_it() {
    let s = Scratch::new("restart");
    let script = helpers_script(&s);
    let m = Multinode::serve(&[
        "-w",
        "1",
        "-l",
        "127.0.0.1:0",
        "--",
        script.to_str().unwrap(),
    ]);
    if !require(
        cgroup_mode(&m) == "cgroup",
        "no writable cgroup v2 hierarchy here (run as root)",
    ) {
        return;
    }
    let old = m.wait_started(1)[0];
    let (detached, forked) = helper_pids(&m, old);
    let _helpers = KillOnDrop {
        pids: vec![detached, forked],
        comm: "sleep",
    };
    let old_group = cgroup_of(old).unwrap();
    kill(old, libc::SIGKILL);
    let new = m.wait_started_in_slot(0, &[old]);
    for p in [detached, forked] {
        assert!(
            eventually(DEADLINE, || !alive(p)),
            "helper {p} of the killed worker outlived its slot's restart: {:?}\n{}",
            stat_of(p),
            m.output()
        );
    }
    assert!(
        m.events("started").iter().any(|e| e.pid == Some(new)),
        "the slot restarted"
    );
    // The old worker's group went with it; the new one has its own.
    let new_group = cgroup_of(new).unwrap();
    assert_ne!(old_group, new_group);
    let root = cgroup_path(&m);
    let old_dir = root.join(Path::new(&old_group).file_name().unwrap());
    assert!(
        eventually(DEADLINE, || !old_dir.exists()),
        "{} left behind",
        old_dir.display()
    );
}

#[test]
fn each_worker_runs_in_a_cgroup_of_its_own_and_the_service_group_goes_at_exit() {
    let m = Multinode::serve_hello("2", &[]);
    workers_in_cgroups_of_their_own(m);
}

/// The same where clone3 cannot be used (a seccomp filter, an old kernel; here the debug
/// builds' failpoint): each worker is forked, then joins its cgroup itself, and multinode says
/// so once.
#[test]
fn without_clone3_workers_still_run_in_cgroups_of_their_own() {
    if !cfg!(debug_assertions) {
        skip("failpoints are compiled into debug builds only");
        return;
    }
    let mut cmd = hello_command("2", &[]);
    cmd.env("MULTINODE_FAILPOINT", "no-clone3");
    let m = Multinode::spawn(cmd);
    if cgroup_mode(&m) == "cgroup" {
        let said = m.wait_event("spawn", |_| true);
        assert!(said.msg.contains("forked"), "{said}");
    }
    workers_in_cgroups_of_their_own(m);
}

/// Checks `m`'s two workers run each in a cgroup of its own, multinode in its `supervisor`
/// group and the guard outside, and that the service group goes at exit.
fn workers_in_cgroups_of_their_own(mut m: Multinode) {
    if !require(
        cgroup_mode(&m) == "cgroup",
        "no writable cgroup v2 hierarchy here (run as root)",
    ) {
        return;
    }
    let service = cgroup_path(&m);
    let pids = m.wait_started(2);
    m.wait_ready(2);
    let name = service.file_name().unwrap().to_str().unwrap().to_string();
    let groups: Vec<String> = pids.iter().map(|&p| cgroup_of(p).unwrap()).collect();
    for g in &groups {
        let mut parts = g.rsplit('/');
        let leaf = parts.next().unwrap();
        assert!(leaf.starts_with("worker."), "{g}");
        assert_eq!(parts.next(), Some(name.as_str()), "{g} is not under {name}");
    }
    assert_ne!(groups[0], groups[1], "one group per worker");
    let own = cgroup_of(m.pid).unwrap();
    assert!(
        own.ends_with(&format!("{name}/supervisor")),
        "multinode in {own}"
    );
    // The guard stays outside: a kill of the service's group never reaches it.
    let guard = cgroup_of(guard_pid(&m)).unwrap();
    assert!(!guard.contains(&name), "guard in {guard}");
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
    assert!(
        !service.exists(),
        "{} outlived multinode",
        service.display()
    );
}

#[test]
fn cgroup_off_leaves_the_workers_in_multinodes_own_group() {
    let m = Multinode::serve_hello("1", &["--cgroup", "off"]);
    let e = m.wait_event("cgroup", |_| true);
    assert_eq!(e.str("mode"), Some("process-group"), "{e}");
    assert_eq!(e.str("reason"), Some("--cgroup off"), "{e}");
    let pid = m.wait_started(1)[0];
    assert_eq!(cgroup_of(pid), cgroup_of(std::process::id() as i32));
    assert_eq!(cgroup_of(m.pid), cgroup_of(std::process::id() as i32));
}

#[test]
fn cgroup_required_where_none_can_be_made_is_a_clear_error() {
    if !require(
        is_root(),
        "needs root to run multinode as nobody through setpriv",
    ) || !require(have_setpriv(), "setpriv(1) is not installed (util-linux)")
    {
        return;
    }
    // As nobody, the group this test runs in (root's) cannot take a new cgroup.
    let s = Scratch::new("required");
    let multinode = worker_bin("multinode");
    let hello = worker_bin("hello");
    let control = s.path("c.sock");
    let out = run(as_nobody(
        &multinode,
        &[
            "serve",
            "--cgroup",
            "required",
            "-l",
            "127.0.0.1:0",
            "--control",
            control.to_str().unwrap(),
            "--",
            hello.to_str().unwrap(),
        ],
    ));
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(4), "stderr: {err}");
    assert!(
        err.starts_with("multinode: error: --cgroup required: ") && err.lines().count() == 1,
        "{err}"
    );
    assert!(!control.exists(), "no control socket left behind");
}

#[test]
fn the_guard_is_root_and_the_workers_user_cannot_kill_or_stop_it() {
    if !require(
        is_root(),
        "needs root: the guard is root's when multinode starts as root",
    ) || !require(have_setpriv(), "setpriv(1) is not installed (util-linux)")
    {
        return;
    }
    let s = Scratch::new("guard");
    let script = helpers_script(&s);
    let sock = s.path("app.sock");
    let listen = format!("unix:{}", sock.display());
    let mut m = Multinode::serve(&[
        "-w",
        "2",
        "-l",
        "127.0.0.1:0",
        "-l",
        &listen,
        "--",
        script.to_str().unwrap(),
    ]);
    let pids = m.wait_started(2);
    let mut helpers = Vec::new();
    for &p in &pids {
        let (a, b) = helper_pids(&m, p);
        helpers.extend([a, b]);
    }
    let _helpers = KillOnDrop {
        pids: helpers.clone(),
        comm: "sleep",
    };
    let guard = guard_pid(&m);
    assert_eq!(
        status_field(guard, "Uid")
            .unwrap()
            .split_whitespace()
            .next(),
        Some("0"),
        "the guard runs as root"
    );
    for sig in ["-KILL", "-STOP", "-TERM"] {
        let out = run(as_nobody("kill", &[sig, &guard.to_string()]));
        assert!(
            !out.status.success(),
            "nobody's kill {sig} of the guard succeeded"
        );
        let err = stderr(&out);
        assert!(err.contains("not permitted"), "kill {sig}: {err}");
    }
    assert_eq!(stat_of(guard).map(|s| s.0), Some('S'), "the guard runs on");
    let control = m.control_path();
    let service = (cgroup_mode(&m) == "cgroup").then(|| cgroup_path(&m));
    // Now the supervisor dies without a word: the guard takes everything with it.
    m.signal(libc::SIGKILL);
    m.wait_exit();
    for p in pids.iter().chain(&helpers) {
        assert!(
            eventually(DEADLINE, || !alive(*p)),
            "{p} outlived the killed supervisor: {:?}",
            stat_of(*p)
        );
    }
    for path in [&sock, &control] {
        assert!(
            eventually(DEADLINE, || !path.exists()),
            "{} left behind",
            path.display()
        );
    }
    if let Some(dir) = service {
        assert!(
            eventually(DEADLINE, || !dir.exists()),
            "{} left behind",
            dir.display()
        );
    }
    assert!(eventually(DEADLINE, || !alive(guard)), "the guard exits");
}

#[test]
fn a_dead_guard_is_noticed_and_the_service_stops() {
    let mut m = Multinode::serve_hello("2", &[]);
    let pids = m.wait_started(2);
    m.wait_ready(2);
    let service = (cgroup_mode(&m) == "cgroup").then(|| cgroup_path(&m));
    kill(guard_pid(&m), libc::SIGKILL);
    let gone = m.wait_event("guard-gone", |_| true);
    assert_eq!(gone.level, "error", "{gone}");
    let stopping = m.wait_event("stopping", |_| true);
    assert_eq!(stopping.why(), Some("guard-gone"), "{stopping}");
    assert_eq!(
        stopping.signal(),
        Some("SIGTERM"),
        "a graceful stop: {stopping}"
    );
    let st = m.wait_exit();
    assert_eq!(st.code(), Some(70), "{}", m.output());
    for p in pids {
        assert!(!alive(p), "worker {p} survived");
    }
    if let Some(dir) = service {
        // Only the guard could remove it; multinode says so, and root cleans up.
        let left = m.wait_event("cgroup-left", |_| true);
        assert_eq!(left.str("path"), dir.to_str(), "{left}");
        let _ = std::fs::remove_dir(dir.join("supervisor"));
        let _ = std::fs::remove_dir(&dir);
    }
}

#[test]
fn a_stopped_guard_does_not_hold_up_the_exit() {
    let mut m = Multinode::serve_hello("1", &[]);
    m.wait_ready(1);
    let guard = guard_pid(&m);
    let service = (cgroup_mode(&m) == "cgroup").then(|| cgroup_path(&m));
    kill(guard, libc::SIGSTOP);
    // Resumed on failure too, so that it cleans up.
    struct Resume(i32);
    impl Drop for Resume {
        fn drop(&mut self) {
            kill(self.0, libc::SIGCONT);
        }
    }
    let resume = Resume(guard);
    m.signal(libc::SIGTERM);
    let st = m.wait_exit();
    assert_eq!(st.code(), Some(0), "{}", m.output());
    m.wait_event("guard-busy", |_| true);
    drop(resume);
    assert!(
        eventually(DEADLINE, || !alive(guard)),
        "the guard finishes once resumed"
    );
    if let Some(dir) = service {
        assert!(
            eventually(DEADLINE, || !dir.exists()),
            "{} left behind",
            dir.display()
        );
    }
}

#[test]
fn a_root_only_config_is_read_again_for_a_reload() {
    if !require(
        is_root(),
        "needs root: the config must be unreadable by the workers' user",
    ) {
        return;
    }
    let s = Scratch::new("rootconf");
    let name = unique_name();
    let file = s.path("multinode.toml");
    let config = |workers: u32, mark: &str| {
        format!(
            "name = \"{name}\"\nworkers = {workers}\nlisten = [\"127.0.0.1:0\"]\n\
             log-format = \"json\"\n\
             command = [\"/bin/sh\", \"-c\", \"echo SECRET=$SECRET; exec {}\"]\n\
             [env]\nSECRET = \"{mark}\"\n",
            worker_bin("hello").display()
        )
    };
    write_mode(&file, &config(1, "first"), 0o600);
    let m = Multinode::serve(&["--config", file.to_str().unwrap()]);
    m.wait_ready(1);
    assert!(!m.events("privileges").is_empty(), "multinode dropped root");
    std::fs::write(&file, config(2, "second")).unwrap();
    let out = mn(&["reload", "--name", &name]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "reload: {}{}\n{}",
        stdout(&out),
        stderr(&out),
        m.output()
    );
    assert!(m.events("reload-failed").is_empty(), "{}", m.output());
    // The change took: two workers, both of generation 2, with the new environment.
    let scale = m.wait_event("scale", |e| e.workers() == Some(2));
    assert_eq!(scale.why(), Some("config reload"), "{scale}");
    m.wait_output(|e| e.msg.contains("SECRET=second"));
}
