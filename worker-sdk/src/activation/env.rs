//! The `LISTEN_*` environment: reading `LISTEN_PID`, `LISTEN_FDS` and
//! `LISTEN_FDNAMES` into a [`Plan`] ([`parse`], [`from_env`]).

use std::env;
use std::os::fd::RawFd;

use crate::error::Error;

/// The first inherited descriptor (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// The name systemd gives a socket when `LISTEN_FDNAMES` does not name it.
pub const UNKNOWN_NAME: &str = "unknown";
/// What the environment promises: [`len`](Self::len) fds from
/// [`LISTEN_FDS_START`] on, with their names. From [`parse`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    count: u32,
    /// Exactly `count` names, or `None`: every socket is `"unknown"`.
    names: Option<Vec<String>>,
}

impl Plan {
    /// How many fds were passed (`LISTEN_FDS`), 0 when the variables are
    /// missing or meant for another process.
    pub fn len(&self) -> usize {
        self.count as usize
    }

    /// No fds were passed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The name of the `i`-th fd (fd `3 + i`): its entry in
    /// `LISTEN_FDNAMES`, or [`UNKNOWN_NAME`] when that entry is empty, when
    /// `LISTEN_FDNAMES` is missing or does not have exactly
    /// [`len`](Self::len) entries, or when `i` is out of range.
    pub fn name(&self, i: usize) -> &str {
        self.names
            .as_ref()
            .and_then(|names| names.get(i))
            .map_or(UNKNOWN_NAME, String::as_str)
    }

    /// Each fd with its name, in order.
    pub fn fds(&self) -> impl Iterator<Item = (RawFd, &str)> + '_ {
        (0..self.len()).map(|i| (LISTEN_FDS_START + i as RawFd, self.name(i)))
    }
}
/// The three variables, lossily converted to UTF-8.
pub(super) fn read_env() -> [Option<String>; 3] {
    ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"]
        .map(|var| env::var_os(var).map(|v| v.to_string_lossy().into_owned()))
}

/// [`parse`] of this process's environment (values lossily converted to
/// UTF-8), with this process's pid. Unlike
/// [`listeners()`](crate::listeners) it leaves the variables in place.
pub fn from_env() -> Result<Plan, Error> {
    let [pid, fds, names] = read_env();
    parse(
        pid.as_deref(),
        fds.as_deref(),
        names.as_deref(),
        std::process::id(),
    )
}

/// The largest `LISTEN_FDS` whose fds 3..3+n-1 are all valid `int`s.
const MAX_LISTEN_FDS: u32 = (i32::MAX - LISTEN_FDS_START) as u32 + 1;

/// Reads the three variables' values (`None`: unset) the way
/// sd_listen_fds(3) does, for the process `my_pid`:
///
/// - `LISTEN_PID` unset, or another pid: the fds are not this process's;
///   an empty [`Plan`]. Not a positive decimal number: [`Error::BadEnv`].
/// - `LISTEN_FDS` unset or `0`: an empty plan. Not a decimal number (no
///   sign, no spaces), or so large that the fds would run past the largest
///   fd number: [`Error::BadEnv`].
/// - `LISTEN_FDNAMES`: names separated by `:`; see [`Plan::name`].
pub fn parse(
    pid: Option<&str>,
    fds: Option<&str>,
    names: Option<&str>,
    my_pid: u32,
) -> Result<Plan, Error> {
    let none = Plan {
        count: 0,
        names: None,
    };
    let Some(pid_text) = pid else {
        return Ok(none);
    };
    let pid = match decimal(pid_text) {
        Ok(p) if p > 0 && p <= i32::MAX as u64 => p,
        _ => {
            return Err(Error::BadEnv {
                var: "LISTEN_PID",
                value: pid_text.to_owned(),
                reason: "not a process id (a positive decimal number)".into(),
            });
        }
    };
    if pid != u64::from(my_pid) {
        return Ok(none);
    }
    let Some(fds_text) = fds else {
        return Ok(none);
    };
    let count = match decimal(fds_text) {
        Ok(n) if n <= u64::from(MAX_LISTEN_FDS) => n as u32,
        Ok(_) | Err(Decimal::TooLarge) => {
            return Err(Error::BadEnv {
                var: "LISTEN_FDS",
                value: fds_text.to_owned(),
                reason: format!(
                    "too large: fds 3 onwards would run past the largest fd number (at most {MAX_LISTEN_FDS})"
                ),
            });
        }
        Err(Decimal::NotANumber) => {
            return Err(Error::BadEnv {
                var: "LISTEN_FDS",
                value: fds_text.to_owned(),
                reason: "not a non-negative decimal number".into(),
            });
        }
    };
    let names = names
        .map(|all| {
            all.split(':')
                .map(|n| if n.is_empty() { UNKNOWN_NAME } else { n })
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|names| names.len() == count as usize);
    Ok(Plan { count, names })
}

enum Decimal {
    NotANumber,
    TooLarge,
}

/// Strict decimal: ASCII digits only (no sign, no spaces), at least one.
fn decimal(s: &str) -> Result<u64, Decimal> {
    if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(Decimal::NotANumber);
    }
    s.parse().map_err(|_| Decimal::TooLarge)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::activation::check_all;
    use std::io;

    const ME: u32 = 4242;

    fn plan(count: u32, names: &[&str]) -> Plan {
        Plan {
            count,
            names: Some(names.iter().map(|n| n.to_string()).collect()),
        }
    }

    fn env_err(r: Result<Plan, Error>) -> (&'static str, String, String) {
        match r {
            Err(Error::BadEnv { var, value, reason }) => (var, value, reason),
            other => panic!("expected BadEnv, got {other:?}"),
        }
    }

    #[test]
    fn missing_vars_mean_no_sockets() {
        let none = Plan {
            count: 0,
            names: None,
        };
        assert_eq!(parse(None, None, None, ME).unwrap(), none);
        assert_eq!(parse(None, Some("2"), Some("a:b"), ME).unwrap(), none);
        assert_eq!(parse(Some("4242"), None, Some("a"), ME).unwrap(), none);
        assert_eq!(parse(Some("4242"), Some("0"), None, ME).unwrap().count, 0);
    }

    #[test]
    fn pid_mismatch_means_no_sockets() {
        let p = parse(Some("4243"), Some("2"), Some("a:b"), ME).unwrap();
        assert_eq!(p.count, 0);
        // Even nonsense in LISTEN_FDS is not ours to judge.
        assert_eq!(parse(Some("1"), Some("abc"), None, ME).unwrap().count, 0);
    }

    #[test]
    fn bad_pid_is_an_error() {
        for bad in [
            "",
            "abc",
            "-1",
            "0",
            "+4242",
            " 4242",
            "4242 ",
            "99999999999999999999",
        ] {
            let (var, value, _) = env_err(parse(Some(bad), Some("1"), None, ME));
            assert_eq!((var, value.as_str()), ("LISTEN_PID", bad));
        }
        let (_, _, reason) = env_err(parse(Some("2147483648"), Some("1"), None, ME));
        assert!(reason.contains("process id"), "{reason}");
    }

    #[test]
    fn bad_fds_is_an_error() {
        for bad in ["abc", "-1", "", "1.5", "+1", " 1", "0x3"] {
            let (var, value, reason) = env_err(parse(Some("4242"), Some(bad), None, ME));
            assert_eq!((var, value.as_str()), ("LISTEN_FDS", bad));
            assert!(reason.contains("not a non-negative decimal"), "{reason}");
        }
        for huge in ["2147483646", "4294967296", "99999999999999999999999999"] {
            let (var, _, reason) = env_err(parse(Some("4242"), Some(huge), None, ME));
            assert_eq!(var, "LISTEN_FDS");
            assert!(reason.contains("too large"), "{reason}");
        }
        // The largest count whose fds all fit in an int is accepted (the fd
        // checks then fail at the first fd that is not open).
        let p = parse(Some("4242"), Some("2147483645"), None, ME).unwrap();
        assert_eq!(p.count, 2_147_483_645);
        assert_eq!(p.name(2_147_483_644), UNKNOWN_NAME);
    }

    #[test]
    fn error_messages_name_the_variable_and_value() {
        let e = parse(Some("4242"), Some("abc"), None, ME).unwrap_err();
        assert_eq!(
            e.to_string(),
            "socket activation: LISTEN_FDS=\"abc\" is invalid: not a non-negative decimal number"
        );
        let io: io::Error = e.into();
        assert_eq!(io.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn names() {
        assert_eq!(
            parse(Some("4242"), Some("2"), Some("http:admin"), ME).unwrap(),
            plan(2, &["http", "admin"])
        );
        // Empty entries are "unknown".
        assert_eq!(
            parse(Some("4242"), Some("3"), Some("http::"), ME).unwrap(),
            plan(3, &["http", "unknown", "unknown"])
        );
        let p = parse(Some("4242"), Some("1"), Some(""), ME).unwrap();
        assert_eq!(p.name(0), "unknown");
    }

    #[test]
    fn names_missing_or_miscounted_are_unknown() {
        for names in [None, Some("http"), Some("a:b:c"), Some("a:b:c:d")] {
            let p = parse(Some("4242"), Some("2"), names, ME).unwrap();
            assert_eq!(p.count, 2);
            assert_eq!((p.name(0), p.name(1)), ("unknown", "unknown"), "{names:?}");
        }
    }
    #[test]
    fn the_plan_lists_fds_from_3_with_names() {
        let p = parse(Some("4242"), Some("3"), Some("http::admin"), ME).unwrap();
        assert_eq!((p.len(), p.is_empty()), (3, false));
        assert_eq!(
            p.fds().collect::<Vec<_>>(),
            [(3, "http"), (4, "unknown"), (5, "admin")]
        );
        assert_eq!(p.name(3), UNKNOWN_NAME, "out of range");
        let none = parse(None, None, None, ME).unwrap();
        assert!(none.is_empty() && none.fds().next().is_none());
        assert!(check_all(&none).unwrap().is_empty());
        // The test harness is not socket-activated.
        assert!(from_env().unwrap().is_empty());
    }
}
