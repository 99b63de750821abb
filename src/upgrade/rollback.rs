//! The way back: a new image that cannot restore the state executes the old one again, which
//! restores from the same (sealed) state and carries on as if nothing had happened.
//!
//! [`arm`] runs first thing in `main` when the environment says an upgrade is coming in
//! ([`STATE_ENV`]). Before anything else can fail it makes the process non-dumpable again
//! (exec made it dumpable), prepares the old image's argv and environment, and installs the
//! ways back: a panic hook, handlers for the fatal signals, an `atexit` handler, and an alarm
//! ([`RESTORE_TIMEOUT`]) against a restore that hangs. Each of them, and every error the
//! restore finds ([`fail`]), executes the old executable — the fd [`EXE_ENV`] names, opened at
//! its start — with `execveat(fd, "", argv, envp, AT_EMPTY_PATH)` and [`ROLLBACK_ENV`] set
//! to the reason. Nothing is dropped on the way (the exec happens where the failure is
//! found, without unwinding), and the restore clears close-on-exec on nothing and closes
//! nothing until it commits, so the old image finds every fd as it left it. The restore and
//! all of this run on the main thread, the one that forked the workers: their parent-death
//! signal belongs to that thread, and an exec from another would end it.
//!
//! An image that comes back this way ([`ROLLBACK_ENV`] set) restores with none of this armed:
//! if it cannot either, there is nowhere further back to go, and it exits 70 (the guard then
//! stops the workers, as when multinode is killed).

use crate::spawn::env_entry;
use std::ffi::{CString, OsString};
use std::os::raw::{c_char, c_int};
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// The memfd holding the state (its fd number).
pub const STATE_ENV: &str = "MULTINODE_UPGRADE_STATE";
/// The executable of the image that wrote the state (an `O_PATH` fd number).
pub const EXE_ENV: &str = "MULTINODE_UPGRADE_EXE";
/// Set when an image that could not restore executed the old one again: why.
pub const ROLLBACK_ENV: &str = "MULTINODE_UPGRADE_ROLLBACK";
/// Debug builds only: failpoints (see [`failpoint`]).
pub const FAILPOINT_ENV: &str = "MULTINODE_FAILPOINT";
/// How long a restore may take before the old image comes back.
pub const RESTORE_TIMEOUT: u32 = 30;

/// An upgrade coming in: the fds the environment names, and the reason when this image is
/// the old one coming back.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub state_fd: c_int,
    pub exe_fd: c_int,
    pub rollback: Option<String>,
}

static INCOMING: OnceLock<Option<Incoming>> = OnceLock::new();
static ARMED: AtomicBool = AtomicBool::new(false);
static PLAN: OnceLock<Plan> = OnceLock::new();

/// What the way back executes, built before anything can fail.
struct Plan {
    exe_fd: c_int,
    _argv: Vec<CString>,
    argv: Vec<*const c_char>,
    /// The environment less the failpoints and any earlier rollback reason.
    env: Vec<CString>,
    /// For each fatal signal: the reason entry and the whole envp with it.
    signals: Vec<(c_int, CString, Vec<*const c_char>)>,
    /// The signals the supervisor blocks: the old image starts with them blocked.
    mask: libc::sigset_t,
}

// SAFETY: the pointers point into the CStrings the plan owns; the plan is built once and never
// changed, and only read (by the thread that fails) to exec.
unsafe impl Send for Plan {}
// SAFETY: as above.
unsafe impl Sync for Plan {}

/// The upgrade coming in, if the environment names one.
pub fn incoming() -> Option<&'static Incoming> {
    INCOMING
        .get_or_init(|| {
            let fd = |name: &str| std::env::var(name).ok()?.parse::<c_int>().ok();
            Some(Incoming {
                state_fd: fd(STATE_ENV)?,
                exe_fd: fd(EXE_ENV)?,
                rollback: std::env::var_os(ROLLBACK_ENV).map(|r| r.to_string_lossy().into_owned()),
            })
        })
        .as_ref()
}

/// Called first in `main`: with an upgrade coming in, arms the ways back (see the module
/// documentation). Does nothing otherwise.
pub fn arm() {
    let Some(inc) = incoming() else { return };
    let _ = crate::privilege::not_dumpable();
    if inc.rollback.is_some() {
        return;
    }
    let cstr = |b: &[u8]| CString::new(b).unwrap_or_default();
    let argv_c: Vec<CString> = std::env::args_os().map(|a| cstr(a.as_bytes())).collect();
    let mut argv: Vec<*const c_char> = argv_c.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let env: Vec<CString> = std::env::vars_os()
        .filter(|(k, _)| k != FAILPOINT_ENV && k != ROLLBACK_ENV)
        .map(|(k, v)| env_entry(k.as_bytes(), v.as_bytes()))
        .collect();
    let signals = FATAL
        .iter()
        .map(|&(sig, name)| {
            let reason = cstr(format!("{ROLLBACK_ENV}=it was killed by {name}").as_bytes());
            let envp = envp(&env, &reason);
            (sig, reason, envp)
        })
        .collect();
    let mask = *AsRef::<libc::sigset_t>::as_ref(&crate::supervisor::handled_signals());
    let plan = Plan {
        exe_fd: inc.exe_fd,
        _argv: argv_c,
        argv,
        env,
        signals,
        mask,
    };
    if PLAN.set(plan).is_err() {
        return;
    }
    ARMED.store(true, Ordering::SeqCst);
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if ARMED.load(Ordering::SeqCst) {
            let what = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let at = info
                .location()
                .map_or_else(String::new, |l| format!(" at {}:{}", l.file(), l.line()));
            fail(format!("it panicked{at}: {what}"));
        }
        default(info);
    }));
    // SAFETY: installs async-signal-safe handlers (they only read the prepared plan and call
    // sigprocmask and execveat) and schedules an alarm; no Rust state is touched.
    unsafe {
        for &(sig, _) in FATAL {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_fatal as extern "C" fn(c_int) as libc::sighandler_t;
            sa.sa_flags = libc::SA_ONSTACK;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
        libc::atexit(on_exit);
        libc::alarm(RESTORE_TIMEOUT);
    }
}

/// The signals that take the way back, with their names (and the restore's alarm).
const FATAL: &[(c_int, &str)] = &[
    (libc::SIGSEGV, "SIGSEGV"),
    (libc::SIGBUS, "SIGBUS"),
    (libc::SIGILL, "SIGILL"),
    (libc::SIGFPE, "SIGFPE"),
    (libc::SIGABRT, "SIGABRT"),
    (libc::SIGSYS, "SIGSYS"),
    (libc::SIGTRAP, "SIGTRAP"),
    (libc::SIGALRM, "SIGALRM (the restore took too long)"),
];

fn envp(env: &[CString], reason: &CString) -> Vec<*const c_char> {
    let mut p: Vec<*const c_char> = env.iter().map(|e| e.as_ptr()).collect();
    p.push(reason.as_ptr());
    p.push(std::ptr::null());
    p
}

/// The state could not be restored: back to the old image with `reason`, or — in an image
/// that came back already — exit 70. Never returns, and drops nothing on the way.
pub fn fail(reason: impl Into<String>) -> ! {
    let mut reason: String = reason.into();
    // One line: it becomes an environment variable, then a log field.
    reason = reason.replace(['\0', '\n', '\r'], " ");
    if reason.len() > 2000 {
        let mut cut = 2000;
        while !reason.is_char_boundary(cut) {
            cut -= 1;
        }
        reason.truncate(cut);
    }
    match PLAN.get().filter(|_| ARMED.load(Ordering::SeqCst)) {
        Some(plan) => {
            let entry = CString::new(format!("{ROLLBACK_ENV}={reason}")).unwrap_or_default();
            let envp = envp(&plan.env, &entry);
            // The old image says why, in the log's format, once it is back.
            // SAFETY: argv and envp are NULL-terminated arrays of pointers to live CStrings.
            unsafe { exec(plan, envp.as_ptr()) };
            eprintln!(
                "multinode: error: cannot execute the old image again: {}",
                std::io::Error::last_os_error()
            );
        }
        None => eprintln!(
            "multinode: error: cannot resume after a failed upgrade: {reason}; exiting (the guard stops the workers)"
        ),
    }
    // SAFETY: ends the process without running destructors that would close what the
    // workers' survival no longer depends on anyway.
    unsafe { libc::_exit(crate::error::Exit::Internal.code() as c_int) }
}

/// Executes the old image with `envp`, the supervisor's signals blocked as they were.
///
/// # Safety
/// `envp` must be a NULL-terminated array of pointers to NUL-terminated strings.
unsafe fn exec(plan: &Plan, envp: *const *const c_char) {
    // SAFETY: sigprocmask and execveat are async-signal-safe; every pointer is live.
    unsafe {
        libc::alarm(0);
        libc::sigprocmask(libc::SIG_SETMASK, &plan.mask, std::ptr::null_mut());
        libc::syscall(
            libc::SYS_execveat,
            plan.exe_fd,
            c"".as_ptr(),
            plan.argv.as_ptr(),
            envp,
            libc::AT_EMPTY_PATH,
        );
    }
}

extern "C" fn on_fatal(sig: c_int) {
    let plan = PLAN.get().filter(|_| ARMED.load(Ordering::SeqCst));
    if let Some(plan) = plan {
        if let Some((_, _, envp)) = plan.signals.iter().find(|(s, _, _)| *s == sig) {
            // SAFETY: the prepared envp; exec replaces the process or returns.
            unsafe { exec(plan, envp.as_ptr()) };
        }
    }
    // SAFETY: async-signal-safe; with the default action back, the signal ends the process.
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
}

extern "C" fn on_exit() {
    if ARMED.load(Ordering::SeqCst) {
        fail("it exited before it had restored the state");
    }
}

/// The restore is complete: the ways back are disarmed (the alarm, the signal handlers; the
/// panic hook and `atexit` see it disarmed), and the upgrade's variables leave the
/// environment, so that nothing this image starts later takes them for its own. Call while
/// the process has one thread.
pub fn commit() {
    if ARMED.swap(false, Ordering::SeqCst) {
        // SAFETY: cancels the alarm and gives the fatal signals their default actions back.
        unsafe {
            libc::alarm(0);
            for &(sig, _) in FATAL {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
    for var in [STATE_ENV, EXE_ENV, ROLLBACK_ENV] {
        // SAFETY: the process has one thread here (the restore starts the output writer and
        // the file watcher only after this), so nothing reads the environment meanwhile.
        unsafe { std::env::remove_var(var) };
    }
}

/// Whether this image runs with an upgrade's ways back armed.
pub fn armed() -> bool {
    ARMED.load(Ordering::SeqCst)
}

/// A failpoint's value (`NAME` or `NAME=VALUE` in the comma-separated [`FAILPOINT_ENV`]), in
/// debug builds only, and never in an image that came back after a failed upgrade: tests use
/// them to make a new image fail at a given point of its restore. Release builds ignore the
/// variable.
pub fn failpoint(name: &str) -> Option<String> {
    if !cfg!(debug_assertions) || incoming().is_some_and(|i| i.rollback.is_some()) {
        return None;
    }
    let all: OsString = std::env::var_os(FAILPOINT_ENV)?;
    let all = all.to_string_lossy();
    all.split(',').find_map(|f| match f.split_once('=') {
        Some((n, v)) if n == name => Some(v.to_string()),
        None if f == name => Some(String::new()),
        _ => None,
    })
}
