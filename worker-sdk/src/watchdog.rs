//! The sd_notify watchdog, worker side: [`Watchdog`].
//!
//! A supervisor with a watchdog (`multinode serve --watchdog 10s`, or
//! systemd's `WatchdogSec=`) gives the process `WATCHDOG_USEC` (the interval
//! in microseconds) and `WATCHDOG_PID` (the pid it is meant for), and counts
//! the process as hung when no `WATCHDOG=1` arrives on `NOTIFY_SOCKET` within
//! the interval. sd_watchdog_enabled(3) recommends pinging every half
//! interval, which is what [`Watchdog::ping_if_due`] does.
//!
//! A ping says "this process still does its work" only if it comes from the
//! code that does the work. A thread of its own that pings on a timer keeps
//! pinging while the server is deadlocked, so the supervisor never finds
//! out. Ping from the serving loop instead, and make that loop come round at
//! least every half interval even when no connection arrives:
//! [`Listener::accept_timeout`](crate::Listener::accept_timeout) with
//! [`Watchdog::due_in`] does exactly that.

use std::env;
use std::ffi::OsString;
use std::io;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::Error;
use crate::sd_notify;

/// The watchdog a supervisor asked this process to keep: its interval, and
/// when the next ping is due. Share it between threads by reference (or in
/// an `Arc`): it is `Sync`, and a ping from any of them counts.
///
/// Get it with [`Watchdog::from_env`] (first thing in `main`, like
/// [`listeners()`](crate::listeners)); it is `None` when no watchdog is
/// asked for, and the serving loop then runs exactly as without one.
///
/// # Example
///
/// A serving loop that pings every half interval, also when idle, and stops
/// pinging the moment it stops coming round:
///
/// ```no_run
/// use std::io::ErrorKind;
/// use multinode_worker::{Listener, Watchdog};
///
/// // First thing in main, before any thread exists: both edit the environment.
/// let mut inherited = multinode_worker::listeners()?;
/// let watchdog = Watchdog::from_env()?; // Some under `multinode serve --watchdog D`
/// let stop = multinode_worker::catch_stop_signals()?;
/// let listener = Listener::from(inherited.tcp_or_bind("http", "127.0.0.1:8080")?);
/// let _ = multinode_worker::ready();
/// loop {
///     let accepted = match &watchdog {
///         Some(w) => {
///             let _ = w.ping_if_due(); // WATCHDOG=1, at most every interval/2
///             listener.accept_timeout(&stop, w.due_in())
///         }
///         None => listener.accept_until(&stop),
///     };
///     match accepted {
///         Ok(Some(a)) => { let _conn = a.conn; /* serve it, or hand it to a thread */ }
///         Ok(None) => break, // a stop: drain, then exit
///         Err(e) if e.kind() == ErrorKind::TimedOut => {} // time to ping
///         Err(e) => return Err(e.into()),
///     }
/// }
/// let _ = multinode_worker::stopping();
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
///
/// With a connection per thread, as here, the watchdog vouches for the
/// accept loop: a worker whose connection threads are all stuck still
/// accepts (and pings). A server that handles requests in the loop itself
/// (an event loop) vouches for all of it.
#[derive(Debug)]
pub struct Watchdog {
    state: Mutex<State>,
    /// Where pings go: `None` is `$NOTIFY_SOCKET` at the time of each ping.
    socket: Option<OsString>,
}

#[derive(Debug, Clone, Copy)]
struct State {
    interval: Duration,
    /// When the last ping was sent (or the watchdog made).
    last: Instant,
}

/// `WATCHDOG_USEC` of 2^64-1 is systemd's "infinity", which
/// sd_watchdog_enabled(3) refuses like 0.
const USEC_INFINITY: u64 = u64::MAX;

impl Watchdog {
    /// The watchdog this process's supervisor asked for, read from
    /// `WATCHDOG_USEC` and `WATCHDOG_PID` as sd_watchdog_enabled(3) reads
    /// them (see [`parse_env`](Self::parse_env)): `Ok(None)` when there is
    /// none, or it is meant for another process.
    ///
    /// Both variables are then removed from the environment (as
    /// sd_watchdog_enabled does with `unset_environment` set, and as
    /// [`listeners()`](crate::listeners) does with `LISTEN_*`), so programs
    /// this process starts do not take the watchdog for theirs; a second
    /// call returns `Ok(None)`. To keep them, read them yourself and call
    /// `parse_env`.
    ///
    /// Removing environment variables is only sound while no other thread
    /// reads or writes the environment: call it at the start of `main`,
    /// before spawning threads (the contract of `listeners()` too).
    pub fn from_env() -> Result<Option<Watchdog>, Error> {
        let read = |var| env::var_os(var).map(|v| v.to_string_lossy().into_owned());
        let (usec, pid) = (read("WATCHDOG_USEC"), read("WATCHDOG_PID"));
        for var in ["WATCHDOG_USEC", "WATCHDOG_PID"] {
            // SAFETY: see above: called before other threads exist, the
            // documented contract (the same as listeners()).
            unsafe { env::remove_var(var) };
        }
        let interval = Self::parse_env(usec.as_deref(), pid.as_deref(), std::process::id())?;
        Ok(interval.map(Watchdog::new))
    }

    /// Reads the two variables' values (`None`: unset) the way
    /// sd_watchdog_enabled(3) does, for the process `my_pid`:
    ///
    /// - `WATCHDOG_USEC` unset: no watchdog, `Ok(None)`.
    /// - `WATCHDOG_USEC` not a decimal number of microseconds (no sign, no
    ///   spaces), 0, or 2^64-1 (systemd's infinity): [`Error::BadEnv`].
    /// - `WATCHDOG_PID` set but not a positive decimal pid:
    ///   [`Error::BadEnv`]; set to another process's pid: `Ok(None)` (the
    ///   watchdog is that process's: say, a shell script that started this
    ///   program without `exec`); unset: the watchdog is ours.
    pub fn parse_env(
        usec: Option<&str>,
        pid: Option<&str>,
        my_pid: u32,
    ) -> Result<Option<Duration>, Error> {
        let Some(usec_text) = usec else {
            return Ok(None);
        };
        let bad = |var, value: &str, reason: &str| Error::BadEnv {
            var,
            value: value.to_owned(),
            reason: reason.to_owned(),
        };
        let usec = match decimal(usec_text) {
            Some(0) | Some(USEC_INFINITY) => {
                return Err(bad(
                    "WATCHDOG_USEC",
                    usec_text,
                    "0 and infinity (2^64-1) are not intervals",
                ));
            }
            Some(n) => n,
            None => {
                return Err(bad(
                    "WATCHDOG_USEC",
                    usec_text,
                    "not a decimal number of microseconds",
                ));
            }
        };
        if let Some(pid_text) = pid {
            match decimal(pid_text) {
                Some(p) if p > 0 && p <= i32::MAX as u64 => {
                    if p != u64::from(my_pid) {
                        return Ok(None);
                    }
                }
                _ => {
                    return Err(bad(
                        "WATCHDOG_PID",
                        pid_text,
                        "not a process id (a positive decimal number)",
                    ));
                }
            }
        }
        Ok(Some(Duration::from_micros(usec)))
    }

    /// A watchdog of `interval` whose pings go to `$NOTIFY_SOCKET`, for a
    /// process that learnt its interval some other way. Its first ping is
    /// due half an interval from now.
    pub fn new(interval: Duration) -> Watchdog {
        Watchdog {
            state: Mutex::new(State {
                interval,
                last: Instant::now(),
            }),
            socket: None,
        }
    }

    /// The interval: the supervisor counts this process hung after this
    /// long without a ping.
    pub fn interval(&self) -> Duration {
        self.lock().interval
    }

    /// How long until the next ping is due (half an interval after the
    /// last one); zero when it is due now. Pass it to
    /// [`Listener::accept_timeout`](crate::Listener::accept_timeout).
    pub fn due_in(&self) -> Duration {
        self.due_in_at(Instant::now())
    }

    /// Sends `WATCHDOG=1` if half an interval has passed since the last
    /// ping: `Ok(true)` when it sent one, `Ok(false)` when none was due
    /// (or `NOTIFY_SOCKET` is unset: nothing to ping). Call it from the
    /// serving loop on every round; it costs a clock read when nothing is due.
    ///
    /// A ping never waits for the supervisor: when its notify queue is full
    /// (it is not reading: stopped, suspended), the ping is dropped and
    /// `Ok(false)` returned, so that the serving loop goes on serving.
    /// (A blocking send would stop every worker's loop a few seconds into a
    /// SIGSTOP of multinode: the queue holds `net.unix.max_dgram_qlen`
    /// datagrams, 10 by default.) multinode starts a worker's watchdog over
    /// when it comes back late, so the dropped pings are not held against it.
    pub fn ping_if_due(&self) -> io::Result<bool> {
        if !self.take_due(Instant::now()) {
            return Ok(false);
        }
        self.send_ping()
    }

    /// Sends `WATCHDOG=1` now (and the next is due half an interval later).
    /// `Ok(false)` when `NOTIFY_SOCKET` is unset, or when the supervisor's
    /// queue is full (see [`ping_if_due`](Self::ping_if_due)).
    pub fn ping(&self) -> io::Result<bool> {
        self.lock().last = Instant::now();
        self.send_ping()
    }

    /// Changes the interval: sends `WATCHDOG_USEC=<µs>`, which the
    /// supervisor (multinode, and systemd) adopts and counts as a ping, so
    /// a worker about to do something long can ask for more time, and go
    /// back after. Pings are then due every half of it. A zero interval is
    /// refused (`InvalidInput`): it would turn the watchdog off, which
    /// multinode allows but systemd reads as "no change".
    pub fn set_interval(&self, interval: Duration) -> io::Result<bool> {
        let usec = u64::try_from(interval.as_micros()).unwrap_or(USEC_INFINITY - 1);
        if usec == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a watchdog interval must be at least 1µs",
            ));
        }
        {
            let mut s = self.lock();
            s.interval = interval;
            s.last = Instant::now();
        }
        self.send(&format!("WATCHDOG_USEC={usec}"))
    }

    /// Sends `WATCHDOG=trigger`: this process knows it is stuck (a
    /// deadlock detected, a consistency check failed) and asks to be
    /// treated as hung now: multinode sends it `--watchdog-signal`, then
    /// SIGKILL, and restarts its slot.
    pub fn trigger(&self) -> io::Result<bool> {
        self.send("WATCHDOG=trigger")
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // Plain data, valid after a panic.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn due_in_at(&self, now: Instant) -> Duration {
        let s = *self.lock();
        (s.last + s.interval / 2).saturating_duration_since(now)
    }

    /// Whether a ping is due at `now`; if so, it counts as sent from then.
    fn take_due(&self, now: Instant) -> bool {
        let mut s = self.lock();
        if now < s.last + s.interval / 2 {
            return false;
        }
        s.last = now;
        true
    }

    /// `WATCHDOG=1` without waiting: a full queue drops it (`Ok(false)`).
    fn send_ping(&self) -> io::Result<bool> {
        const PING: &str = "WATCHDOG=1";
        let sent = match &self.socket {
            Some(addr) => sd_notify::send_to_now(addr, PING),
            None => match std::env::var_os("NOTIFY_SOCKET") {
                Some(addr) if !addr.is_empty() => sd_notify::send_to_now(&addr, PING),
                _ => return Ok(false),
            },
        };
        match sent {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn send(&self, state: &str) -> io::Result<bool> {
        match &self.socket {
            Some(addr) => sd_notify::send_to(addr, state).map(|()| true),
            None => sd_notify::notify(state),
        }
    }
}

/// Strict decimal: ASCII digits only, at least one, fitting in a u64.
fn decimal(s: &str) -> Option<u64> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixDatagram;

    const ME: u32 = 4242;

    fn env_err(r: Result<Option<Duration>, Error>) -> (&'static str, String) {
        match r {
            Err(Error::BadEnv { var, value, .. }) => (var, value),
            other => panic!("expected BadEnv, got {other:?}"),
        }
    }

    #[test]
    fn parse_env_as_sd_watchdog_enabled() {
        let p = Watchdog::parse_env;
        assert_eq!(p(None, None, ME).unwrap(), None, "no watchdog");
        assert_eq!(p(None, Some("4242"), ME).unwrap(), None, "no interval");
        assert_eq!(
            p(Some("1500000"), None, ME).unwrap(),
            Some(Duration::from_millis(1500)),
            "no pid: ours"
        );
        assert_eq!(
            p(Some("1500000"), Some("4242"), ME).unwrap(),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(
            p(Some("1"), Some("4242"), ME).unwrap(),
            Some(Duration::from_micros(1))
        );
        assert_eq!(
            p(Some("1000000"), Some("4243"), ME).unwrap(),
            None,
            "another process's"
        );
        for bad in [
            "",
            "0",
            "abc",
            "-1",
            "+5",
            " 5",
            "5 ",
            "1.5",
            "18446744073709551615",
            "99999999999999999999",
        ] {
            assert_eq!(
                env_err(p(Some(bad), Some("4242"), ME)),
                ("WATCHDOG_USEC", bad.to_owned()),
                "{bad:?}"
            );
        }
        for bad in ["", "0", "-1", "x", "2147483648", " 4242"] {
            assert_eq!(
                env_err(p(Some("1000000"), Some(bad), ME)),
                ("WATCHDOG_PID", bad.to_owned()),
                "{bad:?}"
            );
        }
        let e = p(Some("0"), None, ME).unwrap_err();
        assert_eq!(
            e.to_string(),
            "watchdog: WATCHDOG_USEC=\"0\" is invalid: 0 and infinity (2^64-1) are not intervals"
        );
    }

    #[test]
    fn pings_are_due_every_half_interval() {
        let w = Watchdog::new(Duration::from_secs(10));
        let t0 = w.lock().last;
        assert_eq!(w.interval(), Duration::from_secs(10));
        assert_eq!(w.due_in_at(t0), Duration::from_secs(5));
        assert!(!w.take_due(t0 + Duration::from_millis(4999)));
        assert_eq!(w.due_in_at(t0 + Duration::from_secs(6)), Duration::ZERO);
        assert!(w.take_due(t0 + Duration::from_secs(6)), "due");
        assert!(!w.take_due(t0 + Duration::from_secs(7)), "just pinged");
        assert_eq!(
            w.due_in_at(t0 + Duration::from_secs(7)),
            Duration::from_secs(4)
        );
        assert!(w.take_due(t0 + Duration::from_secs(11)));
    }

    #[test]
    fn sends_pings_interval_and_trigger() {
        let dir = crate::test_util::TempDir::new("watchdog");
        let path = dir.0.join("notify");
        let server = UnixDatagram::bind(&path).unwrap();
        server.set_nonblocking(true).unwrap();
        let mut w = Watchdog::new(Duration::from_secs(3600));
        w.socket = Some(path.into_os_string());
        let recv = || {
            let mut buf = [0; 64];
            match server.recv(&mut buf) {
                Ok(n) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => None,
                Err(e) => panic!("{e}"),
            }
        };
        assert!(!w.ping_if_due().unwrap(), "not due for half an hour");
        assert_eq!(recv(), None);
        assert!(w.ping().unwrap());
        assert_eq!(recv().as_deref(), Some("WATCHDOG=1"));
        assert!(w.set_interval(Duration::from_micros(2)).unwrap());
        assert_eq!(recv().as_deref(), Some("WATCHDOG_USEC=2"));
        assert_eq!(w.interval(), Duration::from_micros(2));
        // Due after 1µs.
        while !w.ping_if_due().unwrap() {}
        assert_eq!(recv().as_deref(), Some("WATCHDOG=1"));
        assert!(w.trigger().unwrap());
        assert_eq!(recv().as_deref(), Some("WATCHDOG=trigger"));
        let e = w.set_interval(Duration::from_nanos(999)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(recv(), None);
    }

    #[test]
    fn a_ping_to_a_supervisor_that_does_not_read_is_dropped_not_waited_for() {
        let dir = crate::test_util::TempDir::new("watchdog-full");
        let path = dir.0.join("notify");
        // Nobody reads: the queue fills (net.unix.max_dgram_qlen, 10 by default).
        let server = UnixDatagram::bind(&path).unwrap();
        let mut w = Watchdog::new(Duration::from_secs(3600));
        w.socket = Some(path.into_os_string());
        let mut sent = 0;
        for _ in 0..10_000 {
            if !w.ping().unwrap() {
                break;
            }
            sent += 1;
        }
        assert!(sent < 10_000, "a full queue drops the ping ({sent} sent)");
        // The next ping after a read goes through again.
        let mut buf = [0; 64];
        server.recv(&mut buf).unwrap();
        assert!(w.ping().unwrap());
    }
}
