//! sd_notify(3), both ends: the datagrams a worker sends to
//! `$NOTIFY_SOCKET` (one per state change), and how a receiver reads them.
//! multinode's notify socket reads its workers' datagrams with [`parse`],
//! and multinode sends its own to systemd with [`send_to`].
//!
//! A datagram is one or more `KEY=value` assignments, one per line
//! (`READY=1`, `STATUS=…`, `STOPPING=1`, `WATCHDOG=1`, …); [`state`]
//! builds one. The functions at the crate root ([`notify`], [`ready`],
//! [`status`], [`stopping`], [`watchdog`]) send to the address in
//! `$NOTIFY_SOCKET`.

use std::env;
use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

/// The most assignments [`parse`] keeps from one datagram; the rest are
/// ignored. sd_notify(3) defines fewer than 30 keys, and a receiver reading
/// untrusted senders should not keep an unbounded list per datagram.
pub const MAX_ASSIGNMENTS: usize = 32;

/// Sends `state` (newline-separated `KEY=value` assignments, see
/// sd_notify(3) and [`state`]) as one datagram to `$NOTIFY_SOCKET`: a
/// socket path, or an abstract socket written `@name`.
///
/// `Ok(false)` when `NOTIFY_SOCKET` is unset or empty (not supervised, or the
/// supervisor does not listen): nothing to do, not an error. `Ok(true)` once
/// the datagram is sent. Errors when the variable is malformed or the send
/// fails (e.g. the supervisor is gone).
///
/// The variable stays set, so the worker can notify again (status, stopping)
/// and programs it starts could too; remove it before spawning children that
/// should not.
pub fn notify(state: &str) -> io::Result<bool> {
    match env::var_os("NOTIFY_SOCKET") {
        Some(addr) if !addr.is_empty() => {
            send_to(&addr, state)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// `READY=1`: the worker is serving. multinode counts the worker Ready from
/// here (or after its `--ready` delay, for workers that never notify).
pub fn ready() -> io::Result<bool> {
    notify("READY=1")
}

/// `STATUS=<msg>`: a one-line status shown by the supervisor.
/// Newlines in `msg` are replaced by spaces, since each line of a
/// notification is a separate assignment.
pub fn status(msg: &str) -> io::Result<bool> {
    notify(&state([("STATUS", msg)]))
}

/// `STOPPING=1`: the worker has begun to shut down (draining).
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `WATCHDOG=1`: a keep-alive ping for supervisors with a watchdog. See
/// [`Watchdog`](crate::Watchdog), which reads the interval and pings when due.
pub fn watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

/// The `state` of one datagram (sd_notify(3) calls it so): `KEY=value`
/// lines. A newline in a value would start
/// another assignment, so it becomes a space.
///
/// # Panics
///
/// If a key is empty or contains `=` or a newline: keys are the protocol's
/// names (`READY`, `STATUS`, …), fixed by the caller.
pub fn state<'a>(assignments: impl IntoIterator<Item = (&'a str, &'a str)>) -> String {
    let mut out = String::new();
    for (key, value) in assignments {
        assert!(
            !key.is_empty() && !key.contains(['=', '\n', '\r']),
            "sd_notify key {key:?}"
        );
        if !out.is_empty() {
            out.push('\n');
        }
        out.push_str(key);
        out.push('=');
        out.extend(value.chars().map(|c| match c {
            '\n' | '\r' => ' ',
            c => c,
        }));
    }
    out
}

/// The assignments of one received datagram, in order, as `(key, value)`:
/// one per line (`\n`, or `\r\n`), split at the first `=`. Invalid UTF-8 is
/// replaced (U+FFFD); lines without `=` or with an empty key are skipped; a
/// value may be empty. At most [`MAX_ASSIGNMENTS`] are kept, the first
/// ones. A key may repeat: the last one means what it says.
pub fn parse(datagram: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(datagram)
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| !k.is_empty())
        .take(MAX_ASSIGNMENTS)
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

/// The socket address a `NOTIFY_SOCKET` value names: an absolute path, or
/// `@name` for an abstract socket. Anything else (empty, a relative path)
/// is an error of kind `InvalidInput`.
pub fn address(value: &OsStr) -> io::Result<SocketAddr> {
    let bytes = value.as_bytes();
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(value),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "NOTIFY_SOCKET={:?} is neither an absolute path nor an @abstract name",
                value.to_string_lossy()
            ),
        )),
    }
}

/// Sends `state` as one datagram, from a new unbound socket, to the socket
/// `address` names (a `NOTIFY_SOCKET` value, see [`address`]). An error
/// when the address is malformed, or the send fails or is cut short.
pub fn send_to(address: &OsStr, state: &str) -> io::Result<()> {
    send(address, state, false)
}

/// As [`send_to`], but never waits: when the receiver's queue is full (it is
/// not reading: stopped, or stalled), an error of kind
/// [`WouldBlock`](io::ErrorKind::WouldBlock) instead of blocking until it
/// reads. For messages that are repeated anyway, such as watchdog pings.
pub(crate) fn send_to_now(address: &OsStr, state: &str) -> io::Result<()> {
    send(address, state, true)
}

fn send(address: &OsStr, state: &str, now: bool) -> io::Result<()> {
    let to = self::address(address)?;
    let socket = UnixDatagram::unbound()?;
    socket.set_nonblocking(now)?;
    let sent = socket.send_to_addr(state.as_bytes(), &to)?;
    if sent != state.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("NOTIFY_SOCKET: sent {sent} of {} bytes", state.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
        v.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn sends_to_a_path() {
        let path = env::temp_dir().join(format!("multinode-worker-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        send_to(path.as_os_str(), "READY=1").unwrap();
        let mut buf = [0; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let _ = std::fs::remove_file(&path);
    }

    #[test]
    fn sends_to_an_abstract_name() {
        let name = format!("multinode-worker-notify-{}", std::process::id());
        let server =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        send_to(OsStr::new(&format!("@{name}")), "STATUS=hi").unwrap();
        let mut buf = [0; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=hi");
    }

    #[test]
    fn rejects_relative_addresses_and_reports_missing_servers() {
        for bad in ["relative/path", "", "notify"] {
            let e = send_to(OsStr::new(bad), "READY=1").unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{bad:?}");
            assert!(e.to_string().contains("NOTIFY_SOCKET"), "{e}");
        }
        assert!(send_to(OsStr::new("/nonexistent/multinode/notify"), "READY=1").is_err());
        assert!(address(OsStr::new("@")).is_ok(), "the empty abstract name");
        assert_eq!(
            address(OsStr::new("/run/n")).unwrap().as_pathname(),
            Some(std::path::Path::new("/run/n"))
        );
    }

    #[test]
    fn what_state_builds_parse_reads_back() {
        let cases: [&[(&str, &str)]; 4] = [
            &[("READY", "1")],
            &[
                ("READY", "1"),
                ("STATUS", "2/2 workers ready, generation 1"),
            ],
            &[("STATUS", ""), ("X_CUSTOM", "a=b=c"), ("STATUS", "again")],
            &[("STATUS", "ünïcödé ✓"), ("MAINPID", "4242")],
        ];
        for case in cases {
            let text = state(case.iter().copied());
            assert_eq!(parse(text.as_bytes()), pairs(case), "{text:?}");
        }
        assert_eq!(
            state([("READY", "1"), ("STATUS", "x")]),
            "READY=1\nSTATUS=x"
        );
        assert_eq!(state(std::iter::empty()), "");
    }

    #[test]
    fn newlines_in_values_cannot_inject_assignments() {
        let text = state([("STATUS", "line one\nREADY=1\r\nSTOPPING=1")]);
        assert_eq!(text, "STATUS=line one READY=1  STOPPING=1");
        assert_eq!(
            parse(text.as_bytes()),
            pairs(&[("STATUS", "line one READY=1  STOPPING=1")])
        );
    }

    #[test]
    #[should_panic(expected = "sd_notify key")]
    fn a_key_with_an_equals_sign_panics() {
        state([("A=B", "1")]);
    }

    #[test]
    fn lines_without_an_equals_sign_are_skipped() {
        assert_eq!(
            parse(b"READY=1\ngarbage\n\n=orphan value\nSTATUS=ok\n"),
            pairs(&[("READY", "1"), ("STATUS", "ok")])
        );
        assert!(parse(b"").is_empty());
        assert!(parse(b"no assignment here").is_empty());
    }

    #[test]
    fn empty_values_crlf_and_bad_utf8() {
        assert_eq!(
            parse(b"STATUS=\r\nREADY=1\r\n"),
            pairs(&[("STATUS", ""), ("READY", "1")])
        );
        assert_eq!(
            parse(b"STATUS=caf\xe9"),
            pairs(&[("STATUS", "caf\u{fffd}")])
        );
    }

    #[test]
    fn at_most_max_assignments_are_kept() {
        let many: String = (0..1000).map(|i| format!("K{i}=v{i}\n")).collect();
        let got = parse(many.as_bytes());
        assert_eq!(got.len(), MAX_ASSIGNMENTS);
        assert_eq!(got[0], ("K0".to_owned(), "v0".to_owned()));
        let last = MAX_ASSIGNMENTS - 1;
        assert_eq!(got[last], (format!("K{last}"), format!("v{last}")));
        // Skipped lines do not count against the cap.
        let noisy: String = (0..MAX_ASSIGNMENTS)
            .map(|i| format!("junk\nK{i}=v\n"))
            .collect();
        assert_eq!(parse(noisy.as_bytes()).len(), MAX_ASSIGNMENTS);
    }
}
