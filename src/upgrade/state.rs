//! The state's envelope: its format number and what each image reads, the memfd it travels
//! in, the fd table, and times relative to the hand-over.
//!
//! # Versions
//! [`FORMAT`] is the format this multinode writes; it reads [`OLDEST`]`..=`[`FORMAT`]. The
//! header — `{"format": N, "multinode": "<version>", ...}` — is read first, alone, so that a
//! state of a format this image does not know is refused with its number, before anything
//! else of it is looked at. A new format number comes with every change to the types of
//! `format.rs`; an image that reads an older format converts it when it reads it.

use std::collections::HashMap;
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use nix::sys::signal::Signal;
use serde::Deserialize;

use super::format::{FdEntry, Rel, RuntimeState, State};
use crate::cli::RestartPolicy;
use crate::config::{ReadyMode, Runtime};

/// The state format this multinode writes. Format 2 added the kernel ip-hash's slots
/// (`retired_slot_sockets`, `ip_hash_slots`); a format 1 state, whose writer could not run
/// it, reads as none retired and no program.
pub const FORMAT: u32 = 2;
/// The oldest state format it reads.
pub const OLDEST: u32 = 1;
/// `multinode --version`: which images can hand over to which.
pub const VERSION_LINE: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (state format 2; reads formats 1 to 2)"
);
/// The largest state read.
pub const MAX_STATE: usize = 256 << 20;

/// Whether this multinode reads state format `n`.
pub fn reads(n: u32) -> bool {
    (OLDEST..=FORMAT).contains(&n)
}

/// Why format `n` cannot be read, in one sentence.
pub fn unknown_format(n: u32) -> String {
    let which = if n > FORMAT { "newer" } else { "older" };
    format!(
        "state format {n} is {which} than the formats multinode {} reads ({OLDEST} to {FORMAT})",
        env!("CARGO_PKG_VERSION")
    )
}

/// `t` relative to `now`, in nanoseconds.
pub fn rel(t: Instant, now: Instant) -> Rel {
    let ns = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    if t >= now { ns(t - now) } else { -ns(now - t) }
}

/// The instant `r` nanoseconds from `now` (saturating where the clock cannot count).
pub fn at(r: Rel, now: Instant) -> Instant {
    let d = Duration::from_nanos(r.unsigned_abs());
    if r >= 0 {
        crate::supervisor::later(now, d)
    } else {
        now.checked_sub(d).unwrap_or(now)
    }
}

pub fn ns(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub fn dur(n: u64) -> Duration {
    Duration::from_nanos(n)
}

pub fn signal_from(name: &str) -> Result<Signal, String> {
    name.parse::<Signal>()
        .map_err(|_| format!("{name:?} is not a signal"))
}

/// An enum of the command line (`on-failure`) by its name.
pub fn value_name<T: ValueEnum>(v: &T) -> String {
    v.to_possible_value()
        .map(|p| p.get_name().to_string())
        .unwrap_or_default()
}

pub fn value_from<T: ValueEnum>(name: &str) -> Result<T, String> {
    T::from_str(name, false).map_err(|_| format!("{name:?} is not a known value"))
}

pub fn runtime_state(rt: &Runtime) -> RuntimeState {
    RuntimeState {
        workers: rt.workers,
        restart: value_name(&rt.restart),
        backoff_max_ns: ns(rt.backoff_max),
        min_uptime_ns: ns(rt.min_uptime),
        max_restarts: rt.max_restarts.map(|(n, w)| (n, ns(w))),
        stop_signal: rt.stop_signal.as_str().into(),
        grace_ns: ns(rt.grace),
        ready_delay_ns: match rt.ready {
            ReadyMode::Notify => None,
            ReadyMode::Delay(d) => Some(ns(d)),
        },
        ready_timeout_ns: ns(rt.ready_timeout),
        reload_parallel: rt.reload_parallel,
        watch_debounce_ns: ns(rt.watch_debounce),
        watchdog_ns: rt.watchdog.map(ns),
        watchdog_signal: rt.watchdog_signal.as_str().into(),
        max_memory: rt.max_memory,
        max_requests: rt.max_requests,
        stop_delay_ns: ns(rt.stop_delay),
    }
}

pub fn runtime_from(s: &RuntimeState) -> Result<Runtime, String> {
    Ok(Runtime {
        workers: s.workers,
        restart: value_from::<RestartPolicy>(&s.restart)?,
        backoff_max: dur(s.backoff_max_ns),
        min_uptime: dur(s.min_uptime_ns),
        max_restarts: s.max_restarts.map(|(n, w)| (n, dur(w))),
        stop_signal: signal_from(&s.stop_signal)?,
        grace: dur(s.grace_ns),
        ready: s
            .ready_delay_ns
            .map_or(ReadyMode::Notify, |d| ReadyMode::Delay(dur(d))),
        ready_timeout: dur(s.ready_timeout_ns),
        reload_parallel: s.reload_parallel,
        watch_debounce: dur(s.watch_debounce_ns),
        watchdog: s.watchdog_ns.map(dur),
        watchdog_signal: signal_from(&s.watchdog_signal)?,
        max_memory: s.max_memory,
        max_requests: s.max_requests,
        stop_delay: dur(s.stop_delay_ns),
    })
}

/// The kind of file `st` is, as the table records it.
fn kind(st: &nix::sys::stat::FileStat) -> &'static str {
    match st.st_mode & libc::S_IFMT {
        libc::S_IFSOCK => "socket",
        libc::S_IFIFO => "fifo",
        libc::S_IFREG => "file",
        libc::S_IFDIR => "dir",
        libc::S_IFCHR => "char",
        _ => "other",
    }
}

/// The writer's fd table: every fd handed over, with what it is.
#[derive(Default)]
pub struct FdTable {
    pub entries: Vec<FdEntry>,
    /// The first fd that could not be described (the hand-over is then called off).
    pub error: Option<String>,
}

impl FdTable {
    /// Lists `fd` (once) and returns its number for the state.
    pub fn add(&mut self, fd: BorrowedFd<'_>, what: impl Into<String>) -> i32 {
        let raw = fd.as_raw_fd();
        if self.entries.iter().any(|e| e.fd == raw) {
            return raw;
        }
        let what = what.into();
        match nix::sys::stat::fstat(fd) {
            Ok(st) => self.entries.push(FdEntry {
                fd: raw,
                what,
                kind: kind(&st).into(),
                dev: st.st_dev,
                ino: st.st_ino,
            }),
            Err(e) => {
                self.error
                    .get_or_insert_with(|| format!("fd {raw} ({what}): {}", e.desc()));
            }
        }
        raw
    }

    pub fn fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.entries.iter().map(|e| e.fd)
    }
}

/// The reader's side of the table: every fd checked to be what the state says, then handed
/// out once each.
#[derive(Debug)]
pub struct Fds {
    open: HashMap<RawFd, FdEntry>,
    taken: Vec<RawFd>,
}

impl Fds {
    /// Checks every entry: open, of its kind, the same device and inode.
    pub fn check(entries: &[FdEntry]) -> Result<Fds, String> {
        let mut open = HashMap::new();
        for e in entries {
            if e.fd < 0 || open.contains_key(&e.fd) {
                return Err(format!("fd {} is listed twice or is not an fd", e.fd));
            }
            // SAFETY: a borrow for the fstat only; whether it is open is what fstat tells.
            let fd = unsafe { BorrowedFd::borrow_raw(e.fd) };
            let st = nix::sys::stat::fstat(fd)
                .map_err(|err| format!("fd {} ({}): {}", e.fd, e.what, err.desc()))?;
            if kind(&st) != e.kind || st.st_dev != e.dev || st.st_ino != e.ino {
                return Err(format!(
                    "fd {} is not what the state says it is ({}: a {} with inode {}; found a {} with inode {})",
                    e.fd,
                    e.what,
                    e.kind,
                    e.ino,
                    kind(&st),
                    st.st_ino
                ));
            }
            open.insert(e.fd, e.clone());
        }
        Ok(Fds {
            open,
            taken: Vec::new(),
        })
    }

    /// The fd `n` of the table, owned from now on; each once.
    pub fn take(&mut self, n: i32) -> Result<OwnedFd, String> {
        if !self.open.contains_key(&n) || self.taken.contains(&n) {
            return Err(format!(
                "fd {n} is used but not in the table, or used twice"
            ));
        }
        self.taken.push(n);
        // SAFETY: the fd is open (checked in `check`), inherited for us to own, and handed
        // out once.
        Ok(unsafe { OwnedFd::from_raw_fd(n) })
    }

    /// Every fd of the table.
    pub fn all(&self) -> Vec<RawFd> {
        self.open.keys().copied().collect()
    }

    /// Fds of the table nothing took.
    pub fn untaken(&self) -> Vec<RawFd> {
        let mut v: Vec<RawFd> = self
            .open
            .keys()
            .filter(|n| !self.taken.contains(n))
            .copied()
            .collect();
        v.sort_unstable();
        v
    }
}

/// The header alone.
#[derive(Deserialize)]
struct Header {
    format: u32,
    multinode: String,
}

/// Reads the state in memfd `fd` (from its start, without closing it): its header first,
/// then, if the format is one this multinode reads, the whole of it. `format`: a number to
/// take instead of the header's (a debug failpoint).
pub fn read(fd: RawFd, format: Option<u32>) -> Result<State, String> {
    use std::os::unix::fs::FileExt;
    // SAFETY: the fd stays open and ours (a failed restore hands it on): not closed here.
    let file = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    let len = file
        .metadata()
        .map_err(|e| format!("the state (fd {fd}): {e}"))?
        .len();
    if len > MAX_STATE as u64 {
        return Err(format!("the state is {len} bytes, more than {MAX_STATE}"));
    }
    let mut bytes = vec![0u8; len as usize];
    file.read_exact_at(&mut bytes, 0)
        .map_err(|e| format!("reading the state (fd {fd}): {e}"))?;
    parse(&bytes, format)
}

/// Parses a state: the header, its format, then the whole. A refusal is one line: what a
/// damaged state quotes of itself (a key or value with a newline) is escaped.
pub fn parse(bytes: &[u8], format: Option<u32>) -> Result<State, String> {
    let header: Header = serde_json::from_slice(bytes)
        .map_err(|e| one_line(&format!("the state has no valid header: {e}")))?;
    let n = format.unwrap_or(header.format);
    if !reads(n) {
        return Err(one_line(&format!(
            "{}; multinode {} wrote it",
            unknown_format(n),
            header.multinode
        )));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        one_line(&format!(
            "the state of format {n} written by multinode {} does not parse: {e}",
            header.multinode
        ))
    })
}

/// `s` with its control characters escaped (`\n`), for a message on one line.
fn one_line(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

/// A new memfd for the state (close-on-exec, sealable).
pub fn memfd() -> std::io::Result<OwnedFd> {
    // SAFETY: a NUL-terminated name and flags; the kernel returns a new fd or -1.
    let fd = unsafe {
        libc::memfd_create(
            c"multinode-state".as_ptr(),
            libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: memfd_create just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Writes the state into the memfd and seals it: from now on nobody can change it, so the
/// image that comes back after a failed restore reads exactly what was written.
pub fn fill(fd: &OwnedFd, bytes: &[u8]) -> std::io::Result<()> {
    let mut file = std::fs::File::from(fd.try_clone()?);
    file.write_all(bytes)?;
    let seals = libc::F_SEAL_SEAL | libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_WRITE;
    // SAFETY: fcntl on an fd we own, with an integer argument.
    if unsafe { libc::fcntl(fd.as_fd().as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Sets or clears close-on-exec on `fd`.
pub fn set_cloexec(fd: RawFd, on: bool) -> bool {
    let flag = if on { libc::FD_CLOEXEC } else { 0 };
    // SAFETY: fcntl with an integer argument; an fd that is not open fails with EBADF.
    unsafe { libc::fcntl(fd, libc::F_SETFD, flag) == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_times_round_trip() {
        let now = Instant::now();
        for r in [0i64, 1, -1, 1_500_000, -7_000_000_000, 86_400_000_000_000] {
            let t = at(r, now);
            assert_eq!(rel(t, now), r, "{r}");
            // Read back against a later `now`, the same distance from it.
            let later = now + Duration::from_secs(3);
            assert_eq!(rel(at(r, later), later), r);
        }
    }

    #[test]
    fn unknown_formats_are_refused_by_their_number() {
        let text = format!(
            r#"{{"format": {}, "multinode": "9.9.9", "more": 1}}"#,
            FORMAT + 1
        );
        let err = parse(text.as_bytes(), None).unwrap_err();
        assert!(
            err.contains(&format!("state format {}", FORMAT + 1)),
            "{err}"
        );
        assert!(err.contains("newer") && err.contains("9.9.9"), "{err}");
        let err = parse(br#"{"format": 0, "multinode": "0.0.1"}"#, None).unwrap_err();
        assert!(err.contains("older"), "{err}");
        assert!(parse(b"not json", None).unwrap_err().contains("header"));
        // A known number whose body does not parse is refused too, saying so.
        let text = format!(r#"{{"format": {FORMAT}, "multinode": "x"}}"#);
        assert!(
            parse(text.as_bytes(), None)
                .unwrap_err()
                .contains("does not parse")
        );
        // The failpoint's number wins over the header's.
        assert!(parse(text.as_bytes(), Some(99)).unwrap_err().contains("99"));
        // What a damaged state quotes of itself stays on one line (found by the upgrade_state
        // fuzz target: a key with a newline in it).
        for damaged in [
            format!(r#"{{"format": {FORMAT}, "multinode": "x", "fds": [{{"\no": 1}}]}}"#),
            format!(r#"{{"format": {FORMAT}, "multinode": "x", "pid": "a\nb"}}"#),
            r#"{"format": 99, "multinode": "a\nb"}"#.to_string(),
            r#"{"format": "\n", "multinode": "x"}"#.to_string(),
        ] {
            let err = parse(damaged.as_bytes(), None).unwrap_err();
            assert!(!err.contains('\n') && err.contains(r"\n"), "{err}");
        }
    }

    #[test]
    fn the_version_line_names_the_formats() {
        assert!(VERSION_LINE.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(VERSION_LINE.contains(&format!("state format {FORMAT};")));
        assert!(VERSION_LINE.contains(&format!("reads formats {OLDEST} to {FORMAT}")));
    }

    #[test]
    fn runtimes_round_trip() {
        let rt = Runtime {
            workers: 3,
            restart: RestartPolicy::OnFailure,
            backoff_max: Duration::from_millis(1500),
            min_uptime: Duration::from_nanos(7),
            max_restarts: Some((4, Duration::from_secs(60))),
            stop_signal: Signal::SIGUSR1,
            grace: Duration::from_secs(10),
            ready: ReadyMode::Delay(Duration::from_millis(300)),
            ready_timeout: Duration::from_secs(60),
            reload_parallel: 2,
            watch_debounce: Duration::from_millis(300),
            watchdog: Some(Duration::from_secs(9)),
            watchdog_signal: Signal::SIGABRT,
            max_memory: Some(1 << 30),
            max_requests: Some((100, 10)),
            stop_delay: Duration::ZERO,
        };
        let s = runtime_state(&rt);
        assert_eq!(s.restart, "on-failure");
        let text = serde_json::to_string(&s).unwrap();
        let back: RuntimeState = serde_json::from_str(&text).unwrap();
        assert_eq!(runtime_from(&back).unwrap(), rt);
    }

    #[test]
    fn a_sealed_memfd_keeps_what_was_written() {
        let fd = memfd().unwrap();
        fill(&fd, br#"{"format": 1}"#).unwrap();
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        assert!(f.write_all(b"x").is_err(), "sealed against writes");
        let mut table = FdTable::default();
        let n = table.add(fd.as_fd(), "state");
        let fds = Fds::check(&table.entries).unwrap();
        assert_eq!(fds.all(), vec![n]);
        assert_eq!(table.entries[0].kind, "file");
        // Another fd at that number is refused.
        let mut wrong = table.entries.clone();
        wrong[0].ino += 1;
        assert!(
            Fds::check(&wrong)
                .unwrap_err()
                .contains("not what the state says")
        );
    }
}
