//! The chaos and soak scenarios of bench/chaos.sh, short: `QUICK=1 bench/chaos.sh all` with the
//! binaries this test was built with. Each scenario checks what must hold after its fault (every
//! slot ready again, the supervisor's fds back and RSS flat, no zombie, no failed request but
//! those in flight on a killed worker, a stalled log reader costing only counted lines, EMFILE
//! survived, 1,000 idle route-mode connections held); the script exits 1 naming each failed
//! check. The long runs and their figures are in bench/RESULTS.md.
//!
//! As root only (the workers run as nobody, the supervisor's limits are changed); it needs
//! /usr/bin/python3, rustc (the load generator is built from bench/chaos/load.rs), setpriv and
//! prlimit (.ci/run installs them).

mod common;

use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// The script in a process group of its own: on Drop (a timeout, a failed assertion) the group
/// gets SIGTERM, so the script's EXIT trap stops every multinode it started; SIGKILL follows.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        let pgid = self.0.id() as i32;
        // SAFETY: kill has no memory preconditions.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
        let end = Instant::now() + Duration::from_secs(30);
        while Instant::now() < end {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // SAFETY: as above.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
        let _ = self.0.wait();
    }
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn quick_chaos_and_soak_scenarios_hold() {
    if !require(is_root(), "bench/chaos.sh runs as root") {
        return;
    }
    // The system's python3: the script's python workers run as nobody.
    if !require(
        std::path::Path::new("/usr/bin/python3").exists(),
        "bench/chaos.sh needs /usr/bin/python3",
    ) {
        return;
    }
    for tool in ["rustc", "setpriv", "prlimit"] {
        if !require(have(tool), &format!("bench/chaos.sh needs {tool}")) {
            return;
        }
    }
    let out = Scratch::new("chaos");
    let log = out.path("chaos.log");
    let mut cmd = Command::new("bash");
    cmd.arg(repo_file_path("bench/chaos.sh"))
        .arg("all")
        .env("QUICK", "1")
        .env("MULTINODE_BIN", multinode_bin())
        .env("HELLO_BIN", hello())
        // Not a measurement: no need to wait for the benchmarks' lock.
        .env("LOCK", "")
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::options().append(true).open(&log).unwrap())
        .process_group(0);
    let mut script = Script(cmd.spawn().expect("start bench/chaos.sh"));
    let end = Instant::now() + Duration::from_secs(900);
    let status = loop {
        if let Some(st) = script.0.try_wait().unwrap() {
            break Some(st);
        }
        if Instant::now() > end {
            break None;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    let status = status.unwrap_or_else(|| panic!("bench/chaos.sh ran 15 minutes; output:\n{text}"));
    assert!(
        status.success(),
        "QUICK=1 bench/chaos.sh all failed ({status}); output:\n{text}"
    );
    assert!(
        text.contains("every check passed (kill stop logstall emfile churn idle)"),
        "{text}"
    );
}

/// `rel` inside the repository (the script itself must run from there: it reads its helpers
/// from bench/chaos/).
fn repo_file_path(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)
}
