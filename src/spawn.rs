//! Starting one worker: its fd layout, its environment, LISTEN_PID, its cgroup, its session,
//! its parent-death signal, and the exec. The only place that starts workers (the guard forks
//! itself at start, guard/mod.rs; an upgrade runs its check with std's Command, preflight.rs).
//!
//! The child is made with `clone3(2)`: with cgroups, `CLONE_INTO_CGROUP` has it born in its
//! own leaf. Moving a process into a cgroup afterwards (writing `cgroup.procs`) takes the
//! kernel's global threadgroup lock for writing, which waits for an RCU grace period: 5–20 ms
//! on a busy 2-core machine, added to every start and restart. Where clone3 is missing (Linux
//! before 5.7 for the flag, or a seccomp filter that hides it) the child is forked and joins
//! its leaf by writing `0` to its `cgroup.procs`, as before. std's `Command` cannot do either
//! (it forks itself, and builds the environment before the fork, so it could not carry
//! LISTEN_PID, which must be the worker's own pid), and so command-fds, which places fds for a
//! `Command`, is not used either: placing the sockets is a `dup2` per socket here.
//!
//! Everything the child touches was built before the clone ([`ExecImage`]): it allocates
//! nothing and takes no lock, and makes only async-signal-safe system calls. An exec failure
//! comes back to the parent as an errno over a close-on-exec pipe (end of file: the exec
//! succeeded).

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;

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
    workdir: Option<CString>,
    path: CString,
    argv: Vec<CString>,
    base_env: Vec<CString>,
    supervisor: Pid,
    /// Whether to try clone3 (debug builds' failpoint `no-clone3` says no, for tests).
    clone3: bool,
}

/// A started worker: its pid (also its process group id) and the read ends of its output.
pub struct Spawned {
    pub pid: Pid,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
    /// The first time a worker had to be forked because clone3 is not there: why (to log).
    pub forked: Option<String>,
}

/// Whether a spawn has fallen back to fork already (said once per process).
static FORKED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

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
        let workdir = workdir
            .map(|w| {
                CString::new(w.as_os_str().as_bytes())
                    .map_err(|_| io::Error::other("NUL byte in the working directory"))
            })
            .transpose()?;
        Ok(Spawner {
            workdir,
            path,
            argv,
            base_env,
            supervisor: Pid::this(),
            clone3: crate::upgrade::rollback::failpoint("no-clone3").is_none(),
        })
    }

    /// The program's path, for messages.
    pub fn program(&self) -> String {
        String::from_utf8_lossy(self.path.as_bytes()).into_owned()
    }

    /// Starts one worker for `slot` with `fds` (name, socket) at fds 3.. and returns once it
    /// has executed its program (or with the reason it could not). `cgroup`: the worker's own
    /// leaf, to be born in (see the module doc).
    /// `watchdog`: the worker gets `WATCHDOG_USEC` and `WATCHDOG_PID` (its own pid), as
    /// sd_watchdog_enabled(3) reads them.
    pub fn spawn(
        &self,
        fds: &[(&str, BorrowedFd<'_>)],
        slot: u32,
        workers: u32,
        generation: u64,
        cgroup: Option<&crate::cgroup::Join>,
        watchdog: Option<std::time::Duration>,
    ) -> io::Result<Spawned> {
        let n = fds.len();
        let first_unused = 3 + n as c_int;
        // Every fd the child reads from is copied above the fds it places (0..3+n), so that
        // placing one can never overwrite another it has yet to place. Close-on-exec: the
        // copies never reach the program.
        let high = |fd: BorrowedFd<'_>| -> io::Result<OwnedFd> {
            let raw = fcntl(fd, FcntlArg::F_DUPFD_CLOEXEC(first_unused))?;
            // SAFETY: F_DUPFD_CLOEXEC just returned this new fd, owned by nobody else.
            Ok(unsafe { OwnedFd::from_raw_fd(raw) })
        };
        let null = std::fs::File::open("/dev/null")?;
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let (status_r, status_low) = nix::unistd::pipe2(OFlag::O_CLOEXEC)?;
        let status_w = high(status_low.as_fd())?;
        drop(status_low);
        let mut sources = vec![
            (high(null.as_fd())?, 0),
            (high(out_w.as_fd())?, 1),
            (high(err_w.as_fd())?, 2),
        ];
        for (i, (_, fd)) in fds.iter().enumerate() {
            sources.push((high(*fd)?, 3 + i as c_int));
        }
        drop((null, out_w, err_w));
        let (cgroup_dir, cgroup_procs) = match cgroup {
            Some(j) => (Some(high(j.dir.as_fd())?), Some(high(j.procs.as_fd())?)),
            None => (None, None),
        };

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
        let mut image = ExecImage::new(
            self.path.clone(),
            self.argv.clone(),
            env,
            &pids,
            first_unused,
            self.supervisor,
        );
        image.placements = sources
            .iter()
            .map(|(fd, to)| (fd.as_raw_fd(), *to))
            .collect();
        image.workdir = self.workdir.as_ref().map(|w| w.as_ptr());
        image.status = status_w.as_raw_fd();

        let (pid, forked) = clone_child(
            cgroup_dir.as_ref(),
            cgroup_procs.as_ref(),
            self.clone3,
            &mut image,
        )?;
        let forked = forked
            .filter(|_| !FORKED.swap(true, std::sync::atomic::Ordering::Relaxed))
            .map(|why| format!("workers are forked, then moved into their cgroup: {why}"));
        // The parent's copies: the child has its own.
        drop((sources, status_w, cgroup_dir, cgroup_procs));
        // End of file: the exec closed the child's end. Four bytes: the errno it failed with
        // (the child has exited 127; the loop reaps it like any other child).
        let mut errno = [0u8; 4];
        let mut got = 0;
        while got < errno.len() {
            match nix::unistd::read(&status_r, &mut errno[got..]) {
                Ok(0) => break,
                Ok(k) => got += k,
                Err(nix::errno::Errno::EINTR) => continue,
                Err(e) => return Err(e.into()),
            }
        }
        if got == errno.len() {
            return Err(io::Error::from_raw_os_error(i32::from_ne_bytes(errno)));
        }
        for fd in [&out_r, &err_r] {
            let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
            fcntl(fd, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK))?;
        }
        Ok(Spawned {
            pid,
            stdout: out_r,
            stderr: err_r,
            forked,
        })
    }
}

/// linux/sched.h (libc's constant is a c_int, too narrow for it).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// `clone3`'s argument, as the kernel lays it out (`struct clone_args`, up to `cgroup`:
/// CLONE_ARGS_SIZE_VER2); the libc crate has no such struct for glibc targets.
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

/// Makes the child, which runs `image.exec()` and never returns; returns its pid, and why it
/// was forked if it was. Born in the cgroup `dir` when given (clone3 with CLONE_INTO_CGROUP);
/// where clone3 is not there (ENOSYS: an old kernel or a seccomp filter; E2BIG or EINVAL: one
/// that does not know the flag; EPERM: a filter that refuses it) or not to be used (`clone3`
/// false: a test's failpoint), forked, the child then joining through `procs`.
fn clone_child(
    dir: Option<&OwnedFd>,
    procs: Option<&OwnedFd>,
    clone3: bool,
    image: &mut ExecImage,
) -> io::Result<(Pid, Option<String>)> {
    let mut args = CloneArgs {
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(d) = dir {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = d.as_raw_fd() as u64;
    }
    let why = if clone3 {
        // SAFETY: clone3 without CLONE_VM is a fork: the child gets a copy of this address
        // space and continues here with a return value of 0, running only `image.exec()`,
        // which makes async-signal-safe system calls on memory prepared before the clone and
        // never returns.
        let r = unsafe {
            libc::syscall(
                libc::SYS_clone3,
                &args as *const CloneArgs,
                std::mem::size_of::<CloneArgs>(),
            )
        };
        if r == 0 {
            image.exec();
        }
        if r > 0 {
            return Ok((Pid::from_raw(r as libc::pid_t), None));
        }
        let e = io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM)
        ) {
            return Err(e);
        }
        format!("clone3 failed: {e}")
    } else {
        "clone3 is not to be used (failpoint no-clone3)".to_string()
    };
    image.procs = procs.map_or(-1, |p| p.as_raw_fd());
    // SAFETY: as above; fork(2) is what std's Command used. The child runs `image.exec()`
    // only.
    match unsafe { libc::fork() } {
        0 => image.exec(),
        -1 => Err(io::Error::last_os_error()),
        pid => Ok((Pid::from_raw(pid), dir.map(|_| why))),
    }
}

/// `K=V` as the environment of an exec holds it.
pub fn env_entry(k: &[u8], v: &[u8]) -> CString {
    let mut e = Vec::with_capacity(k.len() + v.len() + 1);
    e.extend_from_slice(k);
    e.push(b'=');
    e.extend_from_slice(v);
    // An OS-provided variable cannot contain NUL; our own values are numbers and names.
    CString::new(e).unwrap_or_default()
}

/// Everything the child needs after the clone, laid out in memory before it.
struct ExecImage {
    path: CString,
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const c_char>,
    _env: Vec<CString>,
    env_ptrs: Vec<*const c_char>,
    /// `LISTEN_PID=` (and `WATCHDOG_PID=`), each followed by room for the pid, with the length
    /// of its prefix; owned, freed in Drop.
    pid_slots: Vec<(*mut u8, usize)>,
    /// (from, to): stdin, stdout, stderr and the sockets, each from an fd at or above
    /// `first_unused_fd` to its place below it.
    placements: Vec<(c_int, c_int)>,
    first_unused_fd: c_int,
    /// The working directory (the Spawner's), if one is set.
    workdir: Option<*const c_char>,
    /// Where an exec failure's errno goes (close-on-exec).
    status: c_int,
    supervisor: Pid,
    /// The open-files limit to give back to the worker, if the supervisor raised its own.
    nofile: Option<libc::rlimit>,
    /// Forked rather than born in its cgroup: the leaf's `cgroup.procs` to join; else -1.
    procs: c_int,
}

// SAFETY: the raw pointers point into buffers the image (or the Spawner, which outlives the
// spawn) owns: CString heaps and the boxed pid slots; they are only dereferenced in the child,
// which has a single thread.
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
            placements: Vec::new(),
            first_unused_fd,
            workdir: None,
            status: -1,
            supervisor,
            nofile: WORKER_NOFILE.get().copied(),
            procs: -1,
        }
    }

    /// Runs in the child between clone and exec; never returns. A failure is reported as its
    /// errno on the status pipe, then the child exits 127.
    fn exec(&mut self) -> ! {
        // SAFETY: every call below is async-signal-safe and takes only stack values or
        // pointers to buffers built before the clone (see `ExecImage`).
        unsafe {
            let fail = |status: c_int| -> ! {
                let e = *libc::__errno_location();
                libc::write(status, (&e as *const c_int).cast(), 4);
                libc::_exit(127)
            };
            // Forked (no clone3): into the worker's own cgroup first (`0`: the writing
            // process), so that all it ever starts is in it (see cgroup.rs).
            if self.procs >= 0 && libc::write(self.procs, c"0".as_ptr().cast(), 1) != 1 {
                fail(self.status);
            }
            // stdin, stdout, stderr and the sockets in their places. Every source is above
            // every place (see `spawn`); dup2 leaves the new fd without close-on-exec.
            for &(from, to) in &self.placements {
                if libc::dup2(from, to) < 0 {
                    fail(self.status);
                }
            }
            if let Some(dir) = self.workdir {
                if libc::chdir(dir) != 0 {
                    fail(self.status);
                }
            }
            // A session of its own: no controlling terminal (so it can never reach the
            // operator's terminal, e.g. with TIOCSTI), and it leads its own process group, which
            // the supervisor signals as a whole. Another worker's group is out of its reach:
            // setpgid only joins groups of the same session.
            if libc::setsid() < 0 {
                fail(self.status);
            }
            // No fd of the supervisor beyond the sockets may reach the worker. Marking them
            // CLOEXEC rather than closing keeps the status pipe working until the exec.
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
            fail(self.status)
        }
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
