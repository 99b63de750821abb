//! How a worker ends, and whom a notify datagram is from.
//!
//! A worker whose leader has been reaped ends when nothing of it is left: its process group
//! is gone and, with cgroups, its cgroup is empty. The cgroup tells by POLLPRI on its
//! `cgroup.events`; once the process group is gone, what is left in the cgroup (a helper
//! that called `setsid` or double-forked) is killed with `cgroup.kill`. At the end, whatever
//! workers left behind is killed: the service's other cgroups, and every process that was
//! reparented to multinode (a subreaper) — so a clean stop leaves nothing, with or without
//! cgroups.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::Pid;

use super::core::Event;
use super::shell::Shell;
use super::worker::ExitStatus;
use crate::log::Event as Log;

/// How long the end-of-run sweep waits for what it killed to be gone.
const SWEEP_WAIT: Duration = Duration::from_secs(5);

impl Shell {
    /// Reaps every exited child: workers and any orphan reparented to us (we are a subreaper).
    pub(super) fn reap(&mut self) {
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, ExitStatus::Code(code)),
                Ok(WaitStatus::Signaled(pid, signal, core_dumped)) => (
                    pid,
                    ExitStatus::Signal {
                        signal,
                        core_dumped,
                    },
                ),
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(_) => break,
            };
            if let Some(g) = self.p.guard.as_mut().filter(|g| g.pid() == pid) {
                g.reaped(); // its socket's end of file says the rest
                continue;
            }
            if let Some(p) = self.preflight.as_mut().filter(|p| p.pid == pid) {
                p.reaped(status);
                continue;
            }
            if !self.procs.iter().any(|w| w.pid == pid) {
                continue; // an orphan: reaped, nothing more
            }
            let group_alive = self.rest_alive(pid);
            if group_alive {
                self.lingering.push((pid, false));
            } else {
                self.release(pid);
            }
            self.dispatch(Event::Exited {
                pid,
                status,
                group_alive,
            });
        }
    }

    /// Whether anything of worker `pid` (whose leader was reaped) is left: in its process
    /// group, or in its cgroup. Its group gone, what its cgroup still holds is killed.
    fn rest_alive(&mut self, pid: Pid) -> bool {
        let group = group_alive(pid);
        let Some(cg) = &mut self.p.cgroups else {
            return group;
        };
        match cg.populated(pid) {
            Some(true) if !group => {
                cg.kill(pid);
                true
            }
            Some(populated) => group || populated,
            None => group,
        }
    }

    /// Workers whose leader exited and of which nothing is left now.
    pub(super) fn check_lingering(&mut self) {
        if self.lingering.is_empty() {
            return;
        }
        let pids: Vec<Pid> = self.lingering.iter().map(|(pid, _)| *pid).collect();
        let gone: Vec<Pid> = pids
            .into_iter()
            .filter(|&pid| !self.rest_alive(pid))
            .collect();
        for pid in gone {
            self.lingering.retain(|(p, _)| *p != pid);
            self.release(pid);
            self.dispatch(Event::GroupGone { pid });
        }
    }

    /// A worker's processes are all gone: print the rest of its output, stop guarding its
    /// group, and give the connections it was never sent to the others.
    fn release(&mut self, pid: Pid) {
        if let Some(i) = self.procs.iter().position(|w| w.pid == pid) {
            let mut w = self.procs.swap_remove(i);
            w.drain(&mut self.p.out);
        }
        if let Some(g) = &mut self.p.guard {
            g.untrack(pid);
        }
        if let Some(cg) = &mut self.p.cgroups {
            cg.release(pid);
        }
        if let Some(r) = &mut self.router {
            r.remove(pid, &mut self.p.out);
        }
    }

    /// After the last worker: kills what workers left behind — the service's other cgroups,
    /// and every process reparented to multinode — so that nothing outlives the service.
    pub(super) fn sweep(&mut self) {
        let until = Instant::now() + SWEEP_WAIT;
        let mut left = self.p.cgroups.as_mut().map_or(0, |cg| cg.sweep(until));
        left += self.kill_orphans(until);
        if left > 0 {
            let msg = format!("killed {left} process(es) or group(s) that workers left behind");
            self.p.out.event(
                Log::warn("kill", msg)
                    .with("why", "orphans")
                    .with("processes", left),
            );
        }
    }

    /// SIGKILLs our children but the guard (what outlived the worker that started it was
    /// reparented to us, a subreaper) until none is left or `until`; reaps them. Returns how
    /// many there were.
    fn kill_orphans(&mut self, until: Instant) -> usize {
        let me = std::process::id() as i32;
        let guard = self.p.guard.as_ref().map(|g| g.pid().as_raw());
        let mut killed = HashSet::new();
        loop {
            loop {
                match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                    Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => break,
                    Ok(st) => {
                        if let Some(g) = self.p.guard.as_mut().filter(|g| Some(g.pid()) == st.pid())
                        {
                            g.reaped();
                        }
                    }
                    Err(Errno::EINTR) => {}
                    Err(_) => break,
                }
            }
            let kids: Vec<i32> = children_of(me)
                .into_iter()
                .filter(|&p| Some(p) != guard)
                .collect();
            if kids.is_empty() || Instant::now() >= until {
                return killed.len();
            }
            for pid in kids {
                let _ = nix::sys::signal::kill(Pid::from_raw(pid), Signal::SIGKILL);
                killed.insert(pid);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// sd_notify datagrams: credited to the worker that sent them or that started their
    /// sender (kernel-checked credentials, then the parent chain, then — for a helper that
    /// left the tree — the worker's cgroup); anything else is ignored.
    pub(super) fn on_notify(&mut self) {
        for msg in self.p.notify.recv_all() {
            let sender = Pid::from_raw(msg.pid);
            let worker = ancestors(sender)
                .find(|p| self.procs.iter().any(|w| w.pid == *p))
                .or_else(|| self.p.cgroups.as_ref()?.worker_of(sender));
            if let Some(pid) = worker {
                self.dispatch(Event::Notify {
                    pid,
                    fields: msg.fields,
                });
            }
        }
    }
}

/// `pid` and its ancestors, nearest first, read from /proc (at most 32; the chain stops at pid 1
/// or at a process that is gone). Never the process group: a process can join another group,
/// but it cannot choose its parent, so a worker's helper is credited to that worker only.
fn ancestors(pid: Pid) -> impl Iterator<Item = Pid> {
    let me = Pid::this();
    std::iter::successors(Some(pid), |p| parent_of(*p))
        .take(32)
        .take_while(move |p| p.as_raw() > 1 && *p != me)
}

fn parent_of(pid: Pid) -> Option<Pid> {
    crate::procfs::stat(pid.as_raw()).map(|s| Pid::from_raw(s.ppid))
}

/// True while any process of the group `pgid` exists.
fn group_alive(pgid: Pid) -> bool {
    !matches!(killpg(pgid, None), Err(Errno::ESRCH))
}

/// The live (not zombie) children of `ppid`, from /proc.
fn children_of(ppid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| crate::procfs::stat(pid).is_some_and(|s| s.ppid == ppid && s.state != b'Z'))
        .collect()
}
