//! `sd_notify`: notify datagrams and `NOTIFY_SOCKET` values (`worker-sdk/src/sd_notify.rs`).
//! The supervisor's notify socket (`src/notify.rs`) reads every datagram with `parse`, at
//! most 4096 bytes of it, from any process of the workers' user, then acts on the keys it
//! knows (`READY`, `STATUS`, `STOPPING`, `WATCHDOG`, `WATCHDOG_USEC`: `src/supervisor/core`).
//!
//! `parse` keeps at most `MAX_ASSIGNMENTS`, each a non-empty key without `=` or a newline and
//! a value without a newline, in the order sent; what `state` builds of them parses back to
//! the same (a carriage return in a value becomes a space). The datagram cut where the
//! supervisor's buffer cuts it parses as well. `address` takes an absolute path or an
//! `@abstract` name and refuses anything else.

use std::ffi::OsStr;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;

use multinode_worker::sd_notify::{MAX_ASSIGNMENTS, address, parse, state};

/// The supervisor's receive buffer (`src/notify.rs`).
const RECV_BUF: usize = 4096;

pub fn check(data: &[u8]) {
    datagram(data);
    datagram(&data[..data.len().min(RECV_BUF)]);
    notify_socket(data);
}

fn datagram(data: &[u8]) {
    let fields = parse(data);
    assert!(fields.len() <= MAX_ASSIGNMENTS);
    for (k, v) in &fields {
        assert!(!k.is_empty() && !k.contains(['=', '\n']), "key {k:?}");
        assert!(!v.contains('\n'), "value {v:?}");
    }
    // What `state` would send of them (its keys never hold a carriage return: they are the
    // protocol's names; a received key may).
    let sendable: Vec<(&str, &str)> = fields
        .iter()
        .filter(|(k, _)| !k.contains('\r'))
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let text = state(sendable.iter().copied());
    let back = parse(text.as_bytes());
    let expected: Vec<(String, String)> = sendable
        .iter()
        .map(|(k, v)| (k.to_string(), v.replace('\r', " ")))
        .collect();
    assert_eq!(back, expected, "{text:?}");
}

fn notify_socket(data: &[u8]) {
    let value = OsStr::from_bytes(data);
    match address(value) {
        Ok(addr) => match data[0] {
            b'@' => assert_eq!(addr.as_abstract_name(), Some(&data[1..])),
            b'/' => assert_eq!(addr.as_pathname().map(|p| p.as_os_str()), Some(value)),
            _ => panic!("{value:?} accepted"),
        },
        Err(e) => assert!(!e.to_string().is_empty()),
    }
}
