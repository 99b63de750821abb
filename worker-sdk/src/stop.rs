//! Stop requests: SIGTERM/SIGINT turned into "stop accepting, drain, exit".
//!
//! How it works, for the curious:
//!
//! - The SIGTERM/SIGINT handler sets a flag and writes one byte to a pipe
//!   (both async-signal-safe). The pipe is never drained: once stopped, its
//!   read end stays readable, so every `poll` on it returns at once.
//! - [`Listener::accept_until`](crate::Listener::accept_until) polls the
//!   listener and the pipe, so an idle accept loop wakes up on a stop.
//! - On a shared socket, poll can say "readable" and another worker then
//!   takes the connection, leaving a blocking `accept` waiting. For that,
//!   a helper thread (started with the handlers, asleep until a stop) sends
//!   SIGURG to every thread inside `accept_until` until all have returned.
//!   SIGURG gets a no-op handler without `SA_RESTART`, so the `accept`
//!   fails with EINTR before taking a connection off the queue. (SIGURG,
//!   ignored by default, is what the Go runtime uses for the same purpose.)
//!   The SIGTERM/SIGINT handlers use `SA_RESTART`, so other threads'
//!   system calls are not disturbed.
//! - [`Listener::accept_timeout`](crate::Listener::accept_timeout) has the
//!   same problem with its deadline: a blocking `accept` past it would
//!   delay the watchdog's next ping. A per-thread timer ([`Alarm`]) sends
//!   that thread SIGURG at the deadline, with the same effect.

use std::io;
use std::os::fd::RawFd;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static PIPE_READ: AtomicI32 = AtomicI32::new(-1);
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);
/// How far [`catch_stop_signals`] got (the pipe is in `PIPE_*`).
static SETUP: Mutex<Setup> = Mutex::new(Setup {
    helper: false,
    handlers: 0,
});
/// Threads currently inside `accept_until`, for the helper to interrupt.
static ACCEPTORS: Mutex<Vec<libc::pthread_t>> = Mutex::new(Vec::new());

/// How often the helper re-sends SIGURG to acceptors that have not returned
/// yet (one that was between its checks and `accept` missed the first one).
const INTERRUPT_EVERY: Duration = Duration::from_millis(5);

struct Setup {
    /// The helper thread is running.
    helper: bool,
    /// How many of the three signal handlers are installed.
    handlers: usize,
}

/// A handle on this process's stop request. Cheap to clone; all handles
/// share one process-wide state.
///
/// Get one with [`catch_stop_signals`]. A stop is requested by SIGTERM (what
/// multinode sends to drain a worker), SIGINT (Ctrl-C when standalone) or
/// [`Stop::request`], and cannot be withdrawn.
#[derive(Debug, Clone)]
pub struct Stop {
    _private: (),
}

/// Catches SIGTERM and SIGINT so the worker can drain instead of dying:
/// both then request a stop (see [`Stop`]), which makes
/// [`Listener::accept_until`](crate::Listener::accept_until) return
/// `Ok(None)` and [`Stop::wait`] return.
///
/// A worker that drains does: accept with `accept_until` until it returns
/// `None`, finish the requests in flight (closing idle keep-alive
/// connections), then exit. multinode waits `--grace` for that, then sends
/// SIGKILL.
///
/// This installs process-wide handlers for SIGTERM, SIGINT and SIGURG
/// (replacing any others) and starts one helper thread that sleeps until a
/// stop. Calling it again returns another handle and changes nothing. Do not
/// combine it with other SIGTERM/SIGINT handling (an async runtime's signal
/// support, `ctrlc`, `signal-hook`); use one or the other.
pub fn catch_stop_signals() -> io::Result<Stop> {
    let mut setup = lock(&SETUP);
    // Each step runs once; after a failure a later call resumes where it
    // stopped (the failures are resource exhaustion, in practice never).
    if PIPE_READ.load(Ordering::SeqCst) < 0 {
        let mut fds = [-1; 2];
        // SAFETY: pipe2 writes two new fds into the array.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == -1 {
            return Err(io::Error::last_os_error());
        }
        PIPE_WRITE.store(fds[1], Ordering::SeqCst);
        PIPE_READ.store(fds[0], Ordering::SeqCst);
    }
    if !setup.helper {
        thread::Builder::new()
            .name("multinode-stop".into())
            .spawn(interrupt_acceptors)?;
        setup.helper = true;
    }
    let on_stop = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    let on_urg = on_interrupt_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
    while setup.handlers < 3 {
        let (sig, handler, flags) = [
            (libc::SIGURG, on_urg, 0),
            (libc::SIGTERM, on_stop, libc::SA_RESTART),
            (libc::SIGINT, on_stop, libc::SA_RESTART),
        ][setup.handlers];
        // SAFETY: an all-zero sigaction is valid; the handlers only touch
        // atomics, write(2) and errno, which are async-signal-safe.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = handler;
            sa.sa_flags = flags;
            libc::sigemptyset(&mut sa.sa_mask);
            if libc::sigaction(sig, &sa, ptr::null_mut()) == -1 {
                return Err(io::Error::last_os_error());
            }
        }
        setup.handlers += 1;
    }
    Ok(Stop { _private: () })
}

impl Stop {
    /// Whether a stop has been requested.
    pub fn is_requested(&self) -> bool {
        REQUESTED.load(Ordering::SeqCst)
    }

    /// Requests a stop, as SIGTERM does (for example when the worker decides
    /// to exit by itself).
    pub fn request(&self) {
        request_stop();
    }

    /// Blocks until a stop is requested.
    pub fn wait(&self) {
        while !self.is_requested() {
            // Returns once the pipe is readable, which it stays after a stop.
            if wait_readable(-1).is_err() {
                // poll on our own pipe cannot fail short of memory
                // exhaustion; fall back to sleeping rather than spinning.
                thread::sleep(Duration::from_millis(50));
            }
        }
    }
}

/// Sets the flag and wakes the pipe. Async-signal-safe.
fn request_stop() {
    REQUESTED.store(true, Ordering::SeqCst);
    let fd = PIPE_WRITE.load(Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: writes one byte from a static buffer. A full pipe (EAGAIN,
        // it is non-blocking) is fine: it is readable already.
        unsafe { libc::write(fd, b"x".as_ptr().cast(), 1) };
    }
}

extern "C" fn on_stop_signal(_sig: libc::c_int) {
    // SAFETY: errno is thread-local; saving and restoring it keeps the
    // interrupted code's value intact.
    let saved = unsafe { *libc::__errno_location() };
    request_stop();
    // SAFETY: as above.
    unsafe { *libc::__errno_location() = saved };
}

/// Does nothing: its only effect is that a blocked `accept` fails with EINTR.
extern "C" fn on_interrupt_signal(_sig: libc::c_int) {}

/// The helper thread: sleeps until a stop, then interrupts every thread
/// inside `accept_until` until none is left. New acceptors see the flag
/// (set before the pipe is written) and return at once.
fn interrupt_acceptors() {
    while !REQUESTED.load(Ordering::SeqCst) {
        if wait_readable(-1).is_err() {
            thread::sleep(Duration::from_millis(50));
        }
    }
    loop {
        {
            let acceptors = lock(&ACCEPTORS);
            if acceptors.is_empty() {
                return;
            }
            for &t in acceptors.iter() {
                // SAFETY: a thread removes itself from ACCEPTORS (under this
                // lock) before leaving `accept_until`, so `t` is alive.
                unsafe { libc::pthread_kill(t, libc::SIGURG) };
            }
        }
        thread::sleep(INTERRUPT_EVERY);
    }
}

/// Registers the calling thread as an acceptor for as long as it lives.
pub(crate) struct Acceptor {
    thread: libc::pthread_t,
}

impl Acceptor {
    pub(crate) fn register() -> Acceptor {
        // SAFETY: pthread_self has no preconditions.
        let thread = unsafe { libc::pthread_self() };
        lock(&ACCEPTORS).push(thread);
        Acceptor { thread }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        let mut acceptors = lock(&ACCEPTORS);
        if let Some(i) = acceptors.iter().position(|&t| t == self.thread) {
            acceptors.swap_remove(i);
        }
    }
}

/// Waits until `fd` is readable (true) or a stop is requested (false).
/// `fd` -1 waits for the stop only. Retries EINTR.
pub(crate) fn wait_readable(fd: RawFd) -> io::Result<bool> {
    wait_any(&[fd], true)
}

/// Waits until one of `fds` (at most three) is readable, or has hung up or
/// failed (true), or, with `until_stop`, until a stop is requested (false).
/// Negative fds are ignored. Retries EINTR.
pub(crate) fn wait_any(fds: &[RawFd], until_stop: bool) -> io::Result<bool> {
    Ok(match wait_any_until(fds, until_stop, None)? {
        Waited::Ready => true,
        Waited::Stop => false,
        Waited::TimedOut => unreachable!("no deadline, no timeout"),
    })
}

/// What [`wait_any_until`] ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Waited {
    /// An fd is readable, has hung up or failed.
    Ready,
    /// A stop was requested.
    Stop,
    /// The deadline passed first.
    TimedOut,
}

/// [`wait_any`] with a `deadline` (`None`: none). The fds are polled at least
/// once, also when the deadline has passed already, so a ready fd wins over
/// a deadline of now.
pub(crate) fn wait_any_until(
    fds: &[RawFd],
    until_stop: bool,
    deadline: Option<Instant>,
) -> io::Result<Waited> {
    let pipe = if until_stop {
        PIPE_READ.load(Ordering::SeqCst)
    } else {
        -1
    };
    let unused = libc::pollfd {
        fd: -1,
        events: 0,
        revents: 0,
    };
    let mut polled = [unused; 4];
    assert!(fds.len() < polled.len(), "wait_any takes at most three fds");
    loop {
        if until_stop && REQUESTED.load(Ordering::SeqCst) {
            return Ok(Waited::Stop);
        }
        polled[0] = libc::pollfd {
            fd: pipe,
            events: libc::POLLIN,
            revents: 0,
        };
        for (p, &fd) in polled[1..].iter_mut().zip(fds) {
            *p = libc::pollfd {
                fd,
                events: libc::POLLIN,
                revents: 0,
            };
        }
        let polled = &mut polled[..=fds.len()];
        let timeout = deadline.map_or(-1, poll_timeout);
        // poll ignores entries with a negative fd.
        // SAFETY: `polled` is valid for its length.
        let r = unsafe { libc::poll(polled.as_mut_ptr(), polled.len() as libc::nfds_t, timeout) };
        if r == -1 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            // Rounded up to whole milliseconds, so the deadline has passed
            // unless poll woke early; then wait for the rest.
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Ok(Waited::TimedOut);
            }
            continue;
        }
        if polled[0].revents != 0 {
            continue; // the stop: the flag is set, checked at the top
        }
        if polled[1..].iter().any(|p| p.revents & libc::POLLNVAL != 0) {
            return Err(io::Error::from_raw_os_error(libc::EBADF));
        }
        if polled[1..].iter().any(|p| p.revents != 0) {
            return Ok(Waited::Ready);
        }
    }
}

/// poll(2)'s timeout for `deadline`: the milliseconds left, rounded up (so
/// poll never returns a moment early and spins), 0 once it has passed.
fn poll_timeout(deadline: Instant) -> libc::c_int {
    let left = deadline.saturating_duration_since(Instant::now());
    let ms = left.as_nanos().div_ceil(1_000_000);
    ms.min(libc::c_int::MAX as u128) as libc::c_int
}

/// A per-thread one-shot timer that sends SIGURG to its thread at a
/// deadline, for the one call that cannot wait with a timeout: `accept4` on
/// a blocking socket that another worker emptied between our `poll` and our
/// `accept` (the socket is shared, and so is its `O_NONBLOCK` flag, which a
/// worker must not change). SIGURG's handler (installed by
/// [`catch_stop_signals`], which a [`Stop`] proves was called) has no
/// `SA_RESTART`, so the `accept4` fails with EINTR and the caller sees its
/// deadline has passed.
///
/// The timer is made once per thread (timer_create with `SIGEV_THREAD_ID`)
/// and deleted when the thread ends; [`Alarm::arm`] sets it, and dropping
/// the guard disarms it. A SIGURG that fires between the `accept4` and the
/// disarm is delivered to the no-op handler at once, at the latest when the
/// disarming system call returns, so it never interrupts later calls.
pub(crate) struct Alarm {
    timer: libc::timer_t,
}

/// This thread's timer, made on first use.
struct ThreadTimer(libc::timer_t);

impl Drop for ThreadTimer {
    fn drop(&mut self) {
        // SAFETY: the timer was made by timer_create and is deleted once.
        unsafe { libc::timer_delete(self.0) };
    }
}

thread_local! {
    static TIMER: std::cell::RefCell<Option<ThreadTimer>> = const { std::cell::RefCell::new(None) };
}

impl Alarm {
    /// Arms this thread's timer to send it SIGURG at `deadline` (at once if
    /// it has passed). The caller holds a [`Stop`], so SIGURG has its no-op
    /// handler.
    pub(crate) fn arm(deadline: Instant, _stop: &Stop) -> io::Result<Alarm> {
        let timer = TIMER.with(|t| -> io::Result<libc::timer_t> {
            let mut t = t.borrow_mut();
            if let Some(made) = t.as_ref() {
                return Ok(made.0);
            }
            // SAFETY: an all-zero sigevent is valid; the fields set below
            // ask for SIGURG to this thread (its kernel thread id).
            let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
            sev.sigev_notify = libc::SIGEV_THREAD_ID;
            sev.sigev_signo = libc::SIGURG;
            // SAFETY: gettid has no preconditions.
            sev.sigev_notify_thread_id = unsafe { libc::syscall(libc::SYS_gettid) } as libc::c_int;
            let mut timer: libc::timer_t = ptr::null_mut();
            // SAFETY: `sev` and `timer` are valid for the call.
            if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut timer) } == -1 {
                return Err(io::Error::last_os_error());
            }
            *t = Some(ThreadTimer(timer));
            Ok(timer)
        })?;
        // At least 1 ns: an all-zero it_value would disarm instead.
        let left = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_nanos(1));
        set_timer(timer, left)?;
        Ok(Alarm { timer })
    }
}

impl Drop for Alarm {
    fn drop(&mut self) {
        let _ = set_timer(self.timer, Duration::ZERO);
    }
}

/// Arms `timer` to fire once after `after`; zero disarms it.
fn set_timer(timer: libc::timer_t, after: Duration) -> io::Result<()> {
    let value = libc::itimerspec {
        it_interval: libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        },
        it_value: libc::timespec {
            tv_sec: after.as_secs().min(libc::time_t::MAX as u64) as libc::time_t,
            tv_nsec: after.subsec_nanos() as libc::c_long,
        },
    };
    // SAFETY: `timer` is a live timer of this thread; `value` is valid.
    if unsafe { libc::timer_settime(timer, 0, &value, ptr::null_mut()) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data (plain flags, a list of thread ids) is valid after a panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Listener, route};
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::sync::mpsc;

    /// The alarm of `Listener::accept_timeout`: a blocking accept on an idle
    /// socket, as after another worker took the connection poll announced,
    /// fails with EINTR at the deadline; a disarmed alarm never fires.
    #[test]
    fn an_alarm_interrupts_a_blocking_accept() {
        let stop = catch_stop_signals().unwrap();
        let l = Listener::Tcp(TcpListener::bind("127.0.0.1:0").unwrap());
        let alarm = Alarm::arm(Instant::now() + Duration::from_millis(20), &stop).unwrap();
        let e = l.accept_once().unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::Interrupted);
        drop(alarm);
        // The thread's timer is reused; disarmed before it fires, it stays
        // silent: a blocking accept waits for the connection that comes later.
        drop(Alarm::arm(Instant::now() + Duration::from_millis(20), &stop).unwrap());
        let l = Listener::Tcp(TcpListener::bind("127.0.0.1:0").unwrap());
        let addr = match l.local_addr().unwrap() {
            crate::PeerAddr::Tcp(a) => a,
            other => panic!("{other}"),
        };
        let client = thread::spawn(move || {
            thread::sleep(Duration::from_millis(100));
            TcpStream::connect(addr).unwrap()
        });
        assert!(l.accept_once().is_ok(), "not interrupted");
        drop(client.join().unwrap());
    }

    /// The stop state is process-wide and cannot be reset, so this is the
    /// only test that requests a stop; it covers the whole sequence.
    #[test]
    fn stop_interrupts_accept_until() {
        let stop = catch_stop_signals().unwrap();
        let _again = catch_stop_signals().unwrap();
        assert!(!stop.is_requested());

        // Blocking listener: a connection is accepted normally.
        let l = Listener::Tcp(TcpListener::bind("127.0.0.1:0").unwrap());
        let addr = match l.local_addr().unwrap() {
            crate::PeerAddr::Tcp(a) => a,
            other => panic!("{other}"),
        };
        let _c = TcpStream::connect(addr).unwrap();
        let a = l.accept_until(&stop).unwrap().expect("a connection");
        assert_eq!(a.seq, None);

        // Idle acceptors, one blocking, one non-blocking, wait in poll.
        let nb = Listener::Tcp(TcpListener::bind("127.0.0.1:0").unwrap());
        nb.set_nonblocking(true).unwrap();
        let (tx, rx) = mpsc::channel();
        let mut threads = Vec::new();
        for l in [l.try_clone().unwrap(), nb] {
            let stop = stop.clone();
            let tx = tx.clone();
            threads.push(thread::spawn(move || {
                tx.send(()).unwrap();
                l.accept_until(&stop).unwrap().is_none()
            }));
        }
        // A thread stuck in a blocking accept4 (as after another worker took
        // the connection poll announced): only SIGURG gets it out.
        let stuck_l = l.try_clone().unwrap();
        let stuck = thread::spawn(move || {
            let _acceptor = Acceptor::register();
            tx.send(()).unwrap();
            loop {
                match stuck_l.accept_once() {
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {
                        if REQUESTED.load(Ordering::SeqCst) {
                            return true;
                        }
                    }
                    other => panic!("expected EINTR, got {other:?}"),
                }
            }
        });
        // An idle acceptor on a route channel waits in poll.
        let (_idle_sup, idle_ch) = route::tests::pair();
        let idle_routed = {
            let stop = stop.clone();
            thread::spawn(move || {
                Listener::Routed(idle_ch)
                    .accept_until(&stop)
                    .unwrap()
                    .is_none()
            })
        };
        // A route channel with connections queued: a stop must not lose them.
        let (sup, ch) = route::tests::pair();
        let routed = Listener::Routed(ch);
        let (pass, mut kept) = route::tests::streams(3);
        let fds = route::tests::raw(&pass);
        let one = route::tests::message(&[route::tests::record(1, None)]);
        route::tests::send(&sup, &one, &fds[..1]);
        assert_eq!(routed.accept_until(&stop).unwrap().unwrap().seq, Some(1));
        let two =
            route::tests::message(&[route::tests::record(2, None), route::tests::record(3, None)]);
        route::tests::send(&sup, &two, &fds[1..]);
        drop(pass);

        for _ in 0..3 {
            rx.recv().unwrap();
        }
        thread::sleep(Duration::from_millis(50));

        let waiter = {
            let stop = stop.clone();
            thread::spawn(move || stop.wait())
        };
        stop.request();
        assert!(stop.is_requested());
        waiter.join().unwrap();
        for t in threads {
            assert!(t.join().unwrap(), "accept_until returned None");
        }
        assert!(stuck.join().unwrap());
        assert!(
            idle_routed.join().unwrap(),
            "route accept_until returned None"
        );
        // The route channel: what was queued (seq 2 and 3, one message)
        // comes out after the stop, then None.
        let mut drained = Vec::new();
        while let Some(a) = routed.accept_until(&stop).unwrap() {
            drained.push(a);
        }
        assert_eq!(
            drained.iter().map(|a| a.seq).collect::<Vec<_>>(),
            [Some(2), Some(3)]
        );
        drop(drained);
        assert!(kept.iter_mut().all(|k| matches!(k.read(&mut [0]), Ok(0))));
        let mut seqs = route::tests::notices(&sup);
        seqs.sort_unstable();
        assert_eq!(seqs, [1, 2, 3], "seq 1 was dropped at once");
        // After a stop, pending connections stay queued for other workers.
        let _c2 = TcpStream::connect(addr).unwrap();
        assert!(l.accept_until(&stop).unwrap().is_none());
        stop.wait();
    }
}
