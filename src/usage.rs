//! What a worker uses: CPU time and memory, counting everything it started.
//!
//! With a cgroup per worker, from the cgroup: `cpu.stat` (`usage_usec`, present with or
//! without the cpu controller) and `memory.current` where the memory controller is enabled,
//! else the resident memory of every process in `cgroup.procs`. Without cgroups, from /proc
//! for the processes of the worker's process group. Read only when asked (a sample for
//! `--max-memory`, `status`, a `/metrics` scrape): never on a timer of its own.

use std::path::Path;

use nix::unistd::Pid;

use crate::cgroup::Service;

/// One reading of one worker.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Usage {
    /// CPU time since it started, user and system, in seconds.
    pub cpu_seconds: f64,
    /// Memory in use now, in bytes.
    pub memory_bytes: u64,
}

/// Clock ticks per second, for /proc's times (the kernel's USER_HZ, 100 on Linux).
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

/// The usage of every worker in `pids`, in one pass over /proc when there are no cgroups.
pub fn of_workers(pids: &[Pid], cgroups: Option<&Service>) -> Vec<(Pid, Usage)> {
    let mut by_proc: Option<Vec<(i32, Proc)>> = None;
    pids.iter()
        .filter_map(|&pid| {
            if let Some(leaf) = cgroups.and_then(|cg| cg.leaf_path(pid)) {
                return of_cgroup(leaf).map(|u| (pid, u));
            }
            let all = by_proc.get_or_insert_with(processes);
            let mut u = Usage::default();
            let mut any = false;
            for (_, p) in all.iter().filter(|(_, p)| p.pgid == pid.as_raw()) {
                any = true;
                u.cpu_seconds += p.cpu_seconds;
                u.memory_bytes += p.rss_bytes;
            }
            any.then_some((pid, u))
        })
        .collect()
}

/// One process alone (the supervisor's own figures for `/metrics`): its CPU time and
/// resident memory.
pub fn of_process(pid: i32) -> Option<Usage> {
    read_proc(pid).map(|p| Usage {
        cpu_seconds: p.cpu_seconds,
        memory_bytes: p.rss_bytes,
    })
}

fn of_cgroup(dir: &Path) -> Option<Usage> {
    let stat = std::fs::read_to_string(dir.join("cpu.stat")).ok()?;
    let usec: u64 = stat
        .lines()
        .find_map(|l| l.strip_prefix("usage_usec "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let memory = match std::fs::read_to_string(dir.join("memory.current")) {
        Ok(m) => m.trim().parse().unwrap_or(0),
        Err(_) => std::fs::read_to_string(dir.join("cgroup.procs"))
            .ok()?
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .filter_map(|pid| read_proc(pid).map(|p| p.rss_bytes))
            .sum(),
    };
    Some(Usage {
        cpu_seconds: usec as f64 / 1e6,
        memory_bytes: memory,
    })
}

/// What /proc/PID/stat says of a process.
#[derive(Clone, Copy)]
struct Proc {
    pgid: i32,
    cpu_seconds: f64,
    rss_bytes: u64,
}

fn read_proc(pid: i32) -> Option<Proc> {
    let stat = crate::procfs::stat(pid)?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096) as u64;
    Some(Proc {
        pgid: stat.pgrp,
        cpu_seconds: (stat.utime + stat.stime) as f64 / ticks_per_second(),
        rss_bytes: stat.rss_pages * page,
    })
}

fn processes() -> Vec<(i32, Proc)> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| read_proc(pid).map(|p| (pid, p)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_group_is_summed_from_proc() {
        // This test process leads no group of its own, but reading its own group works.
        // SAFETY: getpgrp has no preconditions.
        let pgid = Pid::from_raw(unsafe { libc::getpgrp() });
        let u = of_workers(&[pgid], None);
        assert_eq!(u.len(), 1, "its group has a process: this one");
        assert!(u[0].1.memory_bytes > 0);
    }
}
