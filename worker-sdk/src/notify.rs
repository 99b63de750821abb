//! sd_notify(3): one datagram to `$NOTIFY_SOCKET` per state change.

use std::env;
use std::ffi::OsStr;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::Path;

/// Sends `state` (newline-separated `KEY=value` assignments, see
/// sd_notify(3)) as one datagram to `$NOTIFY_SOCKET`: a socket path, or an
/// abstract socket written `@name`.
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
            send(&addr, state.as_bytes())?;
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
    notify(&format!("STATUS={}", msg.replace('\n', " ")))
}

/// `STOPPING=1`: the worker has begun to shut down (draining).
pub fn stopping() -> io::Result<bool> {
    notify("STOPPING=1")
}

/// `WATCHDOG=1`: a keep-alive ping for supervisors with a watchdog.
pub fn watchdog() -> io::Result<bool> {
    notify("WATCHDOG=1")
}

fn send(addr: &OsStr, msg: &[u8]) -> io::Result<()> {
    let bytes = addr.as_bytes();
    let socket = UnixDatagram::unbound()?;
    let sent = match bytes[0] {
        b'@' => socket.send_to_addr(msg, &SocketAddr::from_abstract_name(&bytes[1..])?)?,
        b'/' => socket.send_to(msg, Path::new(addr))?,
        _ => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "NOTIFY_SOCKET={:?} is neither an absolute path nor an @abstract name",
                    addr.to_string_lossy()
                ),
            ));
        }
    };
    if sent != msg.len() {
        return Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("NOTIFY_SOCKET: sent {sent} of {} bytes", msg.len()),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sends_to_a_path() {
        let path = env::temp_dir().join(format!("multinode-worker-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let server = UnixDatagram::bind(&path).unwrap();
        send(path.as_os_str(), b"READY=1").unwrap();
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
        send(OsStr::new(&format!("@{name}")), b"STATUS=hi").unwrap();
        let mut buf = [0; 64];
        let n = server.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=hi");
    }

    #[test]
    fn rejects_relative_addresses_and_reports_missing_servers() {
        let e = send(OsStr::new("relative/path"), b"READY=1").unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert!(e.to_string().contains("NOTIFY_SOCKET"), "{e}");
        assert!(send(OsStr::new("/nonexistent/multinode/notify"), b"READY=1").is_err());
    }
}
