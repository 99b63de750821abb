//! Issue 10, items 2, 3 and 9, as an attacker would try them with real processes: symbolic
//! links planted where root makes its socket files, the workers' user driving the control
//! socket, and another user's /tmp/multinode-UID. Each needs root (to be root, and to act as
//! nobody through setpriv).

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::*;

/// Owner, group and mode of `p` itself (a link is not followed).
fn meta(p: &Path) -> (u32, u32, u32) {
    let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    (m.uid(), m.gid(), m.mode())
}

/// (path, owner, group, mode) of `dir` and everything in it, sorted.
fn snapshot(dir: &Path) -> Vec<(PathBuf, (u32, u32, u32))> {
    let mut v = vec![(dir.to_path_buf(), meta(dir))];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        v.push((e.path(), meta(&e.path())));
    }
    v.sort();
    v
}

fn mkdir(p: &Path, uid: u32, mode: u32) {
    std::fs::create_dir(p).unwrap();
    std::os::unix::fs::chown(p, Some(uid), Some(uid)).unwrap();
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Removes `p` (a link or a directory tree) when dropped, pass or fail.
struct Cleanup(PathBuf);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A private XDG_RUNTIME_DIR for nobody's client commands, so that they never read a
/// /tmp/multinode-65534 some other run left behind.
fn nobody_runtime(s: &Scratch) -> PathBuf {
    let d = s.path("nobody-run");
    mkdir(&d, NOBODY, 0o700);
    d
}

#[test]
fn a_symlink_planted_as_the_control_directory_is_refused() {
    if !require(is_root(), "needs root") {
        return;
    }
    let s = Scratch::new("ctl-link");
    // What the workers' user would like root to take over: a directory of theirs.
    let victim = s.path("victim");
    mkdir(&victim, NOBODY, 0o700);
    let before = snapshot(&victim);
    let name = unique_name();
    std::fs::create_dir_all("/run/multinode").unwrap();
    let link = Path::new("/run/multinode").join(&name);
    std::os::unix::fs::symlink(&victim, &link).unwrap();
    let _gone = Cleanup(link.clone());
    let out = run(hello_command("1", &["--name", &name]));
    assert_error(
        &out,
        3,
        &[&link.display().to_string(), "symbolic link", "remove it"],
    );
    assert_eq!(snapshot(&victim), before, "the link's target was changed");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn a_control_directory_of_the_workers_user_is_taken_back_and_a_planted_link_refused() {
    if !require(is_root(), "needs root") {
        return;
    }
    let s = Scratch::new("ctl-dir");
    let victim = s.path("victim");
    write_mode(&victim, "root's file\n", 0o600);
    let before = meta(&victim);
    // /run/multinode/NAME as an older multinode left it: nobody's, 0700; the workers' user
    // has planted a link where the control socket goes.
    let name = unique_name();
    std::fs::create_dir_all("/run/multinode").unwrap();
    let dir = Path::new("/run/multinode").join(&name);
    mkdir(&dir, NOBODY, 0o777);
    let _gone = Cleanup(dir.clone());
    std::os::unix::fs::symlink(&victim, dir.join("control.sock")).unwrap();
    let out = run(hello_command("1", &["--name", &name]));
    assert_error(&out, 3, &["control.sock", "not a socket"]);
    assert_eq!(meta(&victim), before, "the link's target was changed");
    // The directory was taken back through its fd before anything was made in it.
    let (uid, gid, mode) = meta(&dir);
    assert_eq!((uid, gid, mode & 0o7777), (0, 0, 0o755));

    // With the link gone, it starts; the directory stays root's.
    std::fs::remove_file(dir.join("control.sock")).unwrap();
    let m = Multinode::serve_hello("1", &["--name", &name]);
    m.wait_ready(1);
    let (uid, _, mode) = meta(&dir);
    assert_eq!((uid, mode & 0o7777), (0, 0o755));
}

#[test]
fn symlinks_planted_at_a_listen_socket_or_on_its_way_are_refused() {
    if !require(is_root(), "needs root") {
        return;
    }
    let s = Scratch::new("listen-link");
    // A directory the workers' user owns (as with `--listen unix:/run/app/app.sock` and
    // /run/app given to the app), and root's things it would like to reach.
    let theirs = s.path("theirs");
    mkdir(&theirs, NOBODY, 0o755);
    let roots = s.path("roots");
    mkdir(&roots, 0, 0o755);
    let victim = roots.join("secret");
    write_mode(&victim, "root's file\n", 0o600);
    let before = snapshot(&roots);
    let h = hello();
    let serve = |listen: &Path| {
        let spec = format!("unix:{}", listen.display());
        run(serve_command(&["-w", "1", "-l", &spec, "--", &h]))
    };

    // A link at the socket's path: refused, not followed.
    let at_path = theirs.join("app.sock");
    std::os::unix::fs::symlink(&victim, &at_path).unwrap();
    let out = serve(&at_path);
    assert_error(&out, 3, &[&at_path.display().to_string(), "not a socket"]);
    assert_eq!(snapshot(&roots), before);

    // A link on the way (theirs/sub -> roots): root makes nothing in the directory it points
    // to; the socket would be created as nobody, who may not write there.
    let sub = theirs.join("sub");
    std::os::unix::fs::symlink(&roots, &sub).unwrap();
    let via = sub.join("app.sock");
    let out = serve(&via);
    assert_error(
        &out,
        3,
        &[
            &via.display().to_string(),
            "users other than root",
            "nobody",
        ],
    );
    assert_eq!(
        snapshot(&roots),
        before,
        "something was made in root's directory"
    );
}

#[test]
fn as_root_the_control_directory_is_roots_and_listen_sockets_the_workers() {
    if !require(is_root(), "needs root") {
        return;
    }
    let s = Scratch::new("owners");
    let theirs = s.path("theirs");
    mkdir(&theirs, NOBODY, 0o755);
    let roots = s.path("roots");
    mkdir(&roots, 0, 0o755);
    let in_theirs = theirs.join("a.sock");
    let in_roots = roots.join("b.sock");
    let a = format!("a=unix:{}", in_theirs.display());
    let b = format!("b=unix:{}", in_roots.display());
    let h = hello();
    let mut m = Multinode::serve(&[
        "-w",
        "1",
        "--socket-mode",
        "640",
        "-l",
        &a,
        "-l",
        &b,
        "--",
        &h,
    ]);
    m.wait_ready(1);
    let control = m.control_path();
    let dir = control.parent().unwrap();
    for d in [dir, dir.parent().unwrap()] {
        let (uid, _, mode) = meta(d);
        assert_eq!(uid, 0, "{} belongs to root", d.display());
        assert_eq!(mode & 0o022, 0, "{} is writable by others", d.display());
    }
    // The attack itself: the workers' user cannot plant anything next to the control socket.
    let evil = dir.join("evil");
    let mut plant = as_nobody("ln", &["-s", "/etc/shadow"]);
    plant.arg(&evil);
    let out = run(plant);
    assert!(!out.status.success(), "nobody planted {}", evil.display());
    assert!(std::fs::symlink_metadata(&evil).is_err());

    for sock in [&in_theirs, &in_roots] {
        let md = std::fs::symlink_metadata(sock).unwrap();
        assert!(md.file_type().is_socket(), "{}", sock.display());
        assert_eq!(
            md.uid(),
            NOBODY,
            "{} belongs to the workers' user",
            sock.display()
        );
        assert_eq!(
            md.mode() & 0o7777,
            0o640,
            "{}: --socket-mode",
            sock.display()
        );
        let (status, _) = http_get_unix(sock, "/").expect("served");
        assert_eq!(status, 200);
    }
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
    // Every socket file this run made is gone at exit, also those in root's directories,
    // which the root guard removes; none is reported left behind.
    for gone in [&in_theirs, &in_roots, &control] {
        assert!(!gone.exists(), "{} left behind", gone.display());
    }
    assert!(m.events("socket-file").is_empty(), "{}", m.output());
    let name = dir.file_name().unwrap().to_str().unwrap().to_string();
    let again = Multinode::serve(&["--name", &name, "-w", "1", "-l", &b, "--", &h]);
    again.wait_ready(1);
    let out = mn(&["status", "--json", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).contains(&format!("\"pid\":{}", again.pid)));
}

#[test]
fn the_workers_user_may_read_status_but_not_stop_or_scale() {
    if !require(is_root(), "needs root") {
        return;
    }
    let s = Scratch::new("peercred");
    let runtime = nobody_runtime(&s);
    let name = unique_name();
    let mut m = Multinode::serve_hello("2", &["--name", &name]);
    let addr = m.tcp_addr("listen0");
    m.wait_ready(2);
    let nobody = |args: &[&str]| {
        let mut c = multinode_as_nobody(args);
        c.env("XDG_RUNTIME_DIR", &runtime);
        run(c)
    };

    let out = nobody(&["stop", "--name", &name]);
    assert_error(&out, 4, &["stop", "permission denied", "uid 65534"]);
    let out = nobody(&["scale", "3", "--name", &name]);
    assert_error(&out, 4, &["scale", "permission denied"]);
    let out = nobody(&["reload", "--name", &name]);
    assert_error(&out, 4, &["reload", "permission denied"]);
    // Still up, still two workers.
    assert!(m.child.as_mut().unwrap().try_wait().unwrap().is_none());
    let (code, _) = http_get(addr, "/").unwrap();
    assert_eq!(code, 200);
    // status stays readable by other users (health probes).
    let out = nobody(&["status", "--json", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_str(stdout(&out).trim()).unwrap();
    assert_eq!(v["pid"], m.pid);
    assert_eq!(v["workers"], 2);
    let out = nobody(&["status", "--check", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(m.events("scale-request").is_empty() && m.events("stopping").is_empty());
    assert!(m.events("reload").is_empty(), "{}", m.output());

    // Root may.
    let out = mn(&["scale", "3", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(stdout(&out).trim(), "scaled: 3 worker(s) ready");
    let out = mn(&["stop", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
}

#[test]
fn the_fallback_directory_in_tmp_must_be_ours_and_private() {
    if !require(is_root(), "needs root to act as nobody") {
        return;
    }
    let s = Scratch::new("fallback");
    // Our own TMPDIR, so that /tmp itself is left alone: the rule is the same.
    let tmp = s.path("tmp");
    mkdir(&tmp, 0, 0o1777);
    let base = tmp.join("multinode-65534");
    let h = hello();
    let serve = || {
        let mut c = multinode_as_nobody(&serve_args(&[
            "--name",
            "fb",
            "-w",
            "1",
            "-l",
            "127.0.0.1:0",
            "--",
            &h,
        ]));
        c.env_remove("XDG_RUNTIME_DIR").env("TMPDIR", &tmp);
        c
    };

    // Made by another user first (here root): refused.
    mkdir(&base, 0, 0o700);
    let out = run(serve());
    assert_error(
        &out,
        3,
        &[
            &base.display().to_string(),
            "belongs to uid 0",
            "XDG_RUNTIME_DIR",
        ],
    );
    std::fs::remove_dir(&base).unwrap();
    // Ours but open to all: refused.
    mkdir(&base, NOBODY, 0o777);
    let out = run(serve());
    assert_error(
        &out,
        3,
        &[&base.display().to_string(), "0777", "not 0700", "rm -r"],
    );
    assert_eq!(meta(&base).2 & 0o7777, 0o777, "left as it was");
    std::fs::remove_dir(&base).unwrap();

    // Missing: made, 0700, nobody's; the supervisor runs there.
    let mut m = Multinode::spawn(serve());
    m.wait_ready(1);
    let (uid, _, mode) = meta(&base);
    assert_eq!((uid, mode & 0o7777), (NOBODY, 0o700));
    let control = m.control_path();
    assert_eq!(control, base.join("fb/control.sock"));
    m.signal(libc::SIGTERM);
    assert_eq!(m.wait_exit().code(), Some(0), "{}", m.output());
    assert!(!control.exists(), "its own socket is removed at exit");
}

#[test]
fn an_xdg_runtime_directory_of_another_user_is_refused() {
    if !require(is_root(), "needs root to act as nobody") {
        return;
    }
    let s = Scratch::new("xdg-other");
    let runtime = nobody_runtime(&s);
    let base = runtime.join("multinode");
    mkdir(&base, 0, 0o755);
    let h = hello();
    let mut c = multinode_as_nobody(&serve_args(&["-w", "1", "-l", "127.0.0.1:0", "--", &h]));
    c.env("XDG_RUNTIME_DIR", &runtime);
    let out = run(c);
    assert_error(&out, 3, &[&base.display().to_string(), "belongs to uid 0"]);
    // The clients refuse it too: it could hold anyone's fake socket.
    let mut c = multinode_as_nobody(&["status"]);
    c.env("XDG_RUNTIME_DIR", &runtime);
    let out = run(c);
    assert_error(&out, 3, &[&base.display().to_string()]);
}

#[test]
fn other_users_cannot_take_every_control_connection() {
    if !require(is_root(), "needs root to act as nobody")
        || !require(
            Path::new("/usr/bin/python3").exists(),
            "needs /usr/bin/python3",
        )
    {
        return;
    }
    let name = unique_name();
    let mut m = Multinode::serve_hello("1", &["--name", &name]);
    m.wait_ready(1);
    let control = m.control_path();
    // As nobody: open 100 connections, send nothing, and once the supervisor has closed what it
    // will not keep (polling, up to 20 s), say how many stayed open; then wait.
    let script = r#"
import socket, sys, time
held = []
for _ in range(100):
    s = socket.socket(socket.AF_UNIX)
    s.connect(sys.argv[1])
    held.append(s)
for s in held:
    s.setblocking(False)
def alive():
    n = 0
    for s in held:
        try:
            n += 0 if s.recv(1) == b"" else 1
        except BlockingIOError:
            n += 1
    return n
deadline = time.monotonic() + 20
while alive() > 32 and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(0.2)
print(alive(), flush=True)
time.sleep(60)
"#;
    let mut hog = KillChildOnDrop(
        as_nobody("/usr/bin/python3", &["-c", script])
            .arg(&control)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(hog.0.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    assert_eq!(line.trim(), "32", "connections nobody kept open");
    // Root still gets through while nobody holds its share.
    let out = mn(&["scale", "2", "--name", &name]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    m.signal(libc::SIGTERM);
    m.wait_exit();
}

/// Kills and reaps a child when dropped, pass or fail.
struct KillChildOnDrop(std::process::Child);

impl Drop for KillChildOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
