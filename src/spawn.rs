//! Starting one worker: its fd layout, its environment, LISTEN_PID, its session, its
//! parent-death signal, and the exec. The only place in multinode that forks.
//!
//! std's `Command` forks and sets up stdio and the process group; command-fds places the
//! sockets at fds 3..; the last `pre_exec` closure then finishes the job itself and calls
//! `execve`, because std builds the child's environment before the fork and so cannot carry
//! LISTEN_PID, which must be the worker's own pid. Everything that closure touches was built
//! before the fork: it allocates nothing and takes no lock.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};

use command_fds::{CommandFdExt, FdMapping};
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::unistd::Pid;

use crate::config::Program;

/// Environment variables of the supervisor's own that a worker must not inherit: they describe
/// the supervisor's sockets and notification channel, and the worker gets its own values.
const STRIPPED: &[&str] = &[
    "LISTEN_PID",
    "LISTEN_FDS",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
    "WATCHDOG_PID",
    "WATCHDOG_USEC",
];

/// The open-files limit multinode started with, when it raised its own (see
/// [`raise_nofile_limit`]); workers get this one back.
static WORKER_NOFILE: std::sync::OnceLock<libc::rlimit> = std::sync::OnceLock::new();

/// Raises the soft RLIMIT_NOFILE to the hard limit for the supervisor itself — in route mode
/// it holds every connection between accept and hand-over — while workers keep the limit
/// they would have had. Returns the new soft limit.
pub fn raise_nofile_limit() -> io::Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(io::Error::last_os_error());
    }
    if lim.rlim_cur < lim.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let _ = WORKER_NOFILE.set(lim);
    }
    Ok(lim.rlim_max)
}

/// The open-files limit workers get back, `[cur, max]`, if the supervisor raised its own (an
/// upgrade hands it over: the new image inherits the raised limit only).
pub fn worker_nofile() -> Option<[u64; 2]> {
    WORKER_NOFILE.get().map(|l| [l.rlim_cur, l.rlim_max])
}

/// The limit an upgrade handed over.
pub fn set_worker_nofile([cur, max]: [u64; 2]) {
    let _ = WORKER_NOFILE.set(libc::rlimit {
        rlim_cur: cur,
        rlim_max: max,
    });
}

/// `LISTEN_PID=` or `WATCHDOG_PID=` plus room for any pid and the terminating NUL.
const PID_SLOT_LEN: usize = 32;

/// What stays the same for every worker: the program, and the environment less per-worker values.
pub struct Spawner {
    workdir: Option<std::path::PathBuf>,
    path: CString,
    argv: Vec<CString>,
    base_env: Vec<CString>,
    supervisor: Pid,
}

/// A started worker: its pid (also its process group id) and the read ends of its output.
pub struct Spawned {
    pub pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

impl Spawner {
    /// `overrides` replace inherited variables (USER, HOME, ... after a privilege drop; then
    /// the configured `env`); workers start in `workdir`.
    pub fn new(
        program: &Program,
        overrides: &[(String, OsString)],
        workdir: Option<&std::path::Path>,
    ) -> io::Result<Spawner> {
        let cstr = |b: &[u8]| {
            CString::new(b).map_err(|_| {
                io::Error::other("NUL byte in a command-line argument or environment variable")
            })
        };
        let path = cstr(program.path.as_os_str().as_bytes())?;
        let argv = program
            .argv
            .iter()
            .map(|a| cstr(a.as_bytes()))
            .collect::<io::Result<Vec<_>>>()?;
        let mut base_env = Vec::new();
        for (k, v) in std::env::vars_os() {
            let key = k.to_string_lossy();
            if STRIPPED.contains(&key.as_ref())
                || key.starts_with("MULTINODE_")
                || overrides.iter().any(|(o, _)| *o == key)
            {
                continue;
            }
            base_env.push(env_entry(k.as_bytes(), v.as_bytes()));
        }
        // A later override of the same variable wins.
        for (i, (k, v)) in overrides.iter().enumerate() {
            if !overrides[i + 1..].iter().any(|(later, _)| later == k) {
                base_env.push(env_entry(k.as_bytes(), v.as_bytes()));
            }
        }
        Ok(Spawner {
            workdir: workdir.map(|w| w.to_path_buf()),
            path,
            argv,
            base_env,
            supervisor: Pid::this(),
        })
    }

    /// The program's path, for messages.
    pub fn program(&self) -> String {
        String::from_utf8_lossy(self.path.as_bytes()).into_owned()
    }

    /// Forks and execs one worker for `slot` with `fds` (name, socket) at fds 3.. . An exec
    /// failure in the child comes back here as the error, through std's CLOEXEC status pipe.
    /// `cgroup`: the `cgroup.procs` of the worker's own cgroup, which the child joins first.
    /// `watchdog`: the worker gets `WATCHDOG_USEC` and `WATCHDOG_PID` (its own pid), as
    /// sd_watchdog_enabled(3) reads them.
    pub fn spawn(
        &self,
        fds: &[(&str, BorrowedFd<'_>)],
        slot: u32,
        workers: u32,
        generation: u64,
        cgroup: Option<BorrowedFd<'_>>,
        watchdog: Option<std::time::Duration>,
    ) -> io::Result<Spawned> {
        let n = fds.len();
        // Above the fds the sockets are placed at (3..3+n), so placing them cannot close it.
        let cgroup = cgroup
            .map(|fd| fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(3 + n as c_int)))
            .transpose()?
            // SAFETY: F_DUPFD_CLOEXEC just returned this new fd, owned by nobody else.
            .map(|raw| unsafe { OwnedFd::from_raw_fd(raw) });
        let mut env = self.base_env.clone();
        env.push(env_entry(b"LISTEN_FDS", n.to_string().as_bytes()));
        let names: Vec<&str> = fds.iter().map(|(name, _)| *name).collect();
        env.push(env_entry(b"LISTEN_FDNAMES", names.join(":").as_bytes()));
        env.push(env_entry(
            b"MULTINODE_WORKER_ID",
            slot.to_string().as_bytes(),
        ));
        env.push(env_entry(
            b"MULTINODE_WORKERS",
            workers.to_string().as_bytes(),
        ));
        env.push(env_entry(
            b"MULTINODE_GENERATION",
            generation.to_string().as_bytes(),
        ));
        let mut pids: Vec<&[u8]> = vec![b"LISTEN_PID="];
        if let Some(d) = watchdog {
            env.push(env_entry(
                b"WATCHDOG_USEC",
                d.as_micros().to_string().as_bytes(),
            ));
            pids.push(b"WATCHDOG_PID=");
        }
        let image = ExecImage::new(
            self.path.clone(),
            self.argv.clone(),
            env,
            &pids,
            3 + n as c_int,
            self.supervisor,
            cgroup.as_ref().map_or(-1, |fd| fd.as_raw_fd()),
        );

        let mappings = fds
            .iter()
            .enumerate()
            .map(|(i, (_, fd))| {
                Ok(FdMapping {
                    parent_fd: fd.try_clone_to_owned()?,
                    child_fd: 3 + i as c_int,
                })
            })
            .collect::<io::Result<Vec<_>>>()?;

        let mut cmd = Command::new(std::ffi::OsStr::from_bytes(self.path.as_bytes()));
        if let Some(dir) = &self.workdir {
            cmd.current_dir(dir);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .fd_mappings(mappings)
            .map_err(|_| io::Error::other("two sockets mapped to one fd"))?;
        let mut image = image;
        // SAFETY: the closure runs in the forked child before exec. `ExecImage::exec` only
        // makes async-signal-safe system calls on memory prepared before the fork; it neither
        // allocates nor locks. It runs after command-fds' closure, which placed the sockets.
        unsafe {
            cmd.pre_exec(move || image.exec());
        }
        let mut child = cmd.spawn()?;
        let pid = Pid::from_raw(child.id() as i32);
        let stdout: OwnedFd = child.stdout.take().expect("stdout was piped").into();
        let stderr: OwnedFd = child.stderr.take().expect("stderr was piped").into();
        for fd in [&stdout, &stderr] {
            let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
            fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        }
        // Dropping `child` neither waits nor kills; the supervisor reaps with waitpid(-1).
        drop(child);
        drop(cgroup);
        Ok(Spawned {
            pid,
            stdout,
            stderr,
        })
    }
}

fn env_entry(k: &[u8], v: &[u8]) -> CString {
    let mut e = Vec::with_capacity(k.len() + v.len() + 1);
    e.extend_from_slice(k);
    e.push(b'=');
    e.extend_from_slice(v);
    // An OS-provided variable cannot contain NUL; our own values are numbers and names.
    CString::new(e).unwrap_or_default()
}

/// Everything the child needs after the fork, laid out in memory before it.
struct ExecImage {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const c_char>,
    /// `LISTEN_PID=` (and `WATCHDOG_PID=`), each followed by room for the pid, with the length
    /// of its prefix; owned, freed in Drop.
    pid_slots: Vec<(*mut u8, usize)>,
    first_unused_fd: c_int,
    supervisor: Pid,
    /// The open-files limit to give back to the worker, if the supervisor raised its own.
    nofile: Option<libc::rlimit>,
    /// The worker's cgroup's `cgroup.procs`, or -1.
    cgroup_procs: c_int,
}

// SAFETY: the raw pointers point into buffers the image owns (CString heaps and the boxed pid
// slot); they are only dereferenced in the forked child, which has a single thread.
unsafe impl Send for ExecImage {}
// SAFETY: as above; no method shares the pointers with another thread.
unsafe impl Sync for ExecImage {}

impl ExecImage {
    fn new(
        path: CString,
        argv: Vec<CString>,
        env: Vec<CString>,
        pid_vars: &[&[u8]],
        first_unused_fd: c_int,
        supervisor: Pid,
        cgroup_procs: c_int,
    ) -> Self {
        let pid_slots: Vec<(*mut u8, usize)> = pid_vars
            .iter()
            .map(|prefix| {
                let mut slot = Box::new([0u8; PID_SLOT_LEN]);
                slot[..prefix.len()].copy_from_slice(prefix);
                (Box::into_raw(slot) as *mut u8, prefix.len())
            })
            .collect();
        let mut argv_ptrs: Vec<*const c_char> = argv.iter().map(|a| a.as_ptr()).collect();
        argv_ptrs.push(std::ptr::null());
        let mut env_ptrs: Vec<*const c_char> = env.iter().map(|e| e.as_ptr()).collect();
        env_ptrs.extend(pid_slots.iter().map(|(p, _)| *p as *const c_char));
        env_ptrs.push(std::ptr::null());
        ExecImage {
            path,
            _argv: argv,
            argv_ptrs,
            _env: env,
            env_ptrs,
            pid_slots,
            first_unused_fd,
            supervisor,
            nofile: WORKER_NOFILE.get().copied(),
            cgroup_procs,
        }
    }

    /// Runs in the child between fork and exec. Returns only on failure.
    fn exec(&mut self) -> io::Result<()> {
        // SAFETY: every call below is async-signal-safe and takes only stack values or
        // pointers to buffers built before the fork (see `ExecImage`).
        unsafe {
            // Into the worker's own cgroup first (`0`: the writing process), so that all it
            // ever starts is in it (see cgroup.rs).
            if self.cgroup_procs >= 0
                && libc::write(self.cgroup_procs, c"0".as_ptr().cast(), 1) != 1
            {
                return Err(io::Error::last_os_error());
            }
            // A session of its own: no controlling terminal (so it can never reach the
            // operator's terminal, e.g. with TIOCSTI), and it leads its own process group, which
            // the supervisor signals as a whole. Another worker's group is out of its reach:
            // setpgid only joins groups of the same session.
            if libc::setsid() < 0 {
                return Err(io::Error::last_os_error());
            }
            // No fd of the supervisor beyond the sockets may reach the worker. Marking them
            // CLOEXEC rather than closing keeps std's status pipe working until the exec.
            let r = libc::syscall(
                libc::SYS_close_range,
                self.first_unused_fd as libc::c_uint,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
            );
            if r != 0 {
                let mut lim: libc::rlimit = std::mem::zeroed();
                let max = if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
                    lim.rlim_cur.min(1 << 20) as c_int
                } else {
                    1024
                };
                for fd in self.first_unused_fd..max {
                    libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC);
                }
            }
            // The supervisor blocks the signals it reads from a signalfd; a worker must start
            // with an empty mask and default dispositions, or it would ignore SIGTERM.
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
            for sig in 1..libc::SIGRTMAX() {
                if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                    libc::signal(sig, libc::SIG_DFL);
                }
            }
            if let Some(lim) = &self.nofile {
                libc::setrlimit(libc::RLIMIT_NOFILE, lim);
            }
            // Die with the supervisor. Then close the race where it died before the prctl.
            libc::prctl(
                libc::PR_SET_PDEATHSIG,
                libc::SIGKILL as libc::c_ulong,
                0,
                0,
                0,
            );
            if libc::getppid() != self.supervisor.as_raw() {
                libc::_exit(127);
            }
            let pid = libc::getpid();
            for &(slot, prefix) in &self.pid_slots {
                write_pid(slot.add(prefix), pid);
            }
            libc::execve(
                self.path.as_ptr(),
                self.argv_ptrs.as_ptr(),
                self.env_ptrs.as_ptr(),
            );
        }
        Err(io::Error::last_os_error())
    }
}

impl Drop for ExecImage {
    fn drop(&mut self) {
        for &(slot, _) in &self.pid_slots {
            // SAFETY: each slot came from `Box::into_raw` of a `[u8; PID_SLOT_LEN]` in `new`.
            drop(unsafe { Box::from_raw(slot as *mut [u8; PID_SLOT_LEN]) });
        }
    }
}

/// Writes `pid` in decimal and a NUL at `dst`, which has room for 20 bytes. No allocation.
///
/// # Safety
/// `dst` must be valid for writes of 21 bytes.
unsafe fn write_pid(dst: *mut u8, pid: libc::pid_t) {
    let mut digits = [0u8; 20];
    let mut n = pid.unsigned_abs();
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    // SAFETY: the caller guarantees room for 20 digits and the NUL.
    unsafe {
        std::ptr::copy_nonoverlapping(digits[i..].as_ptr(), dst, len);
        *dst.add(len) = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_formatting() {
        for pid in [1, 9, 10, 4_194_304, i32::MAX] {
            let mut buf = [0xffu8; 21];
            // SAFETY: buf has 21 bytes.
            unsafe { write_pid(buf.as_mut_ptr(), pid) };
            let end = buf.iter().position(|&b| b == 0).unwrap();
            assert_eq!(std::str::from_utf8(&buf[..end]).unwrap(), pid.to_string());
        }
    }

    #[test]
    fn worker_env_lacks_supervisor_values() {
        let e = env_entry(b"A", b"b=c");
        assert_eq!(e.as_bytes(), b"A=b=c");
    }
}
