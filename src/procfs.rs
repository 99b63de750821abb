//! `/proc/PID/stat` and `/proc/PID/status`: the fields multinode reads of a process (its
//! state, parent, process group, CPU time and resident pages; its real and saved uid), for
//! the exit sweep, whom a notify datagram is from, `status`'s CPU and memory, and the guard.
//!
//! Both files hold the process's command name, which the process chooses itself
//! (`prctl(PR_SET_NAME)`, or the name of the file it executes): up to 15 bytes of anything
//! but NUL — spaces, parentheses, newlines, bytes that are not UTF-8. So the files are read
//! as bytes and the name is never decoded; in `stat` the fields are those after the name's
//! last `)`, and in `status` (where the kernel escapes a newline in the name) the `Uid:`
//! line is found by its start. A name that is not UTF-8 once made a worker's helper invisible
//! here, so that it outlived the service; the parsers are fuzzed (`fuzz/`, target
//! `proc_stat`).

/// What `/proc/PID/stat` says of a process (field numbers as in proc_pid_stat(5)).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Stat {
    /// (3) `R`, `S`, `D`, `Z`, `T`, ...
    pub state: u8,
    /// (4)
    pub ppid: i32,
    /// (5) its process group.
    pub pgrp: i32,
    /// (14) user CPU time, in clock ticks.
    pub utime: u64,
    /// (15) system CPU time, in clock ticks.
    pub stime: u64,
    /// (24) resident set size, in pages.
    pub rss_pages: u64,
}

/// `/proc/PID/stat` of `pid`; `None` when it is gone or the file is not as expected.
pub fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read(format!("/proc/{pid}/stat")).ok()?)
}

/// The real and saved uid of `pid`, from `/proc/PID/status`.
pub fn uids(pid: i32) -> Option<(u32, u32)> {
    parse_uids(&std::fs::read(format!("/proc/{pid}/status")).ok()?)
}

/// Parses a `stat` file: `PID (COMM) STATE PPID PGRP ...`, COMM any bytes.
pub fn parse_stat(stat: &[u8]) -> Option<Stat> {
    let name_end = stat.iter().rposition(|&b| b == b')')?;
    let rest = stat[name_end + 1..].strip_prefix(b" ")?;
    // Field 3 (the state) is rest's first; field n is fields[n - 3].
    let fields: Vec<&[u8]> = rest.split(|&b| b == b' ').take(22).collect();
    let field = |n: usize| fields.get(n - 3).copied();
    let state = match field(3)? {
        [s] => *s,
        _ => return None,
    };
    Some(Stat {
        state,
        ppid: number(field(4)?)?,
        pgrp: number(field(5)?)?,
        utime: number(field(14)?)?,
        stime: number(field(15)?)?,
        rss_pages: number(field(24)?)?,
    })
}

/// Parses a `status` file's `Uid:` line (real, effective, saved, filesystem): (real, saved).
pub fn parse_uids(status: &[u8]) -> Option<(u32, u32)> {
    let line = status
        .split(|&b| b == b'\n')
        .find_map(|l| l.strip_prefix(b"Uid:"))?;
    let uids: Vec<u32> = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty())
        .map(number)
        .collect::<Option<_>>()?;
    match uids[..] {
        [real, _, saved, ..] => Some((real, saved)),
        _ => None,
    }
}

/// A decimal number (a leading `-` allowed where the type is signed), as the kernel writes it.
fn number<T: std::str::FromStr>(field: &[u8]) -> Option<T> {
    std::str::from_utf8(field).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stat line as the kernel writes it for a process named `comm`.
    fn line(comm: &[u8]) -> Vec<u8> {
        let mut s = b"4242 (".to_vec();
        s.extend_from_slice(comm);
        s.extend_from_slice(
            b") S 17 4242 4242 0 -1 4194560 120 0 0 0 31 7 0 0 20 0 1 0 99 5562368 345 \
              18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n",
        );
        s
    }

    #[test]
    fn any_command_name_gives_the_same_fields() {
        let expected = Stat {
            state: b'S',
            ppid: 17,
            pgrp: 4242,
            utime: 31,
            stime: 7,
            rss_pages: 345,
        };
        for comm in [
            &b"sleep"[..],
            b"a b",
            b"x) R 1 1 1",
            b")",
            b"((",
            b"\xff\xfe",
            b"a) \xff\n(b",
            b"",
        ] {
            assert_eq!(
                parse_stat(&line(comm)),
                Some(expected),
                "{}",
                comm.escape_ascii()
            );
        }
    }

    #[test]
    fn malformed_stat_lines_are_none() {
        for bad in [
            &b""[..],
            b"1 (x)",
            b"1 (x) ",
            b"1 (x)S 1 1",
            b"1 (x) S 1 1 1",
            b"1 (x) SS 17 4242 4242 0 -1 0 0 0 0 0 31 7 0 0 0 0 0 0 0 0 345",
            b"1 (x) S 17 4242 4242 0 -1 0 0 0 0 0 31 7 0 0 0 0 0 0 0 0 -345",
        ] {
            assert_eq!(parse_stat(bad), None, "{}", bad.escape_ascii());
        }
    }

    #[test]
    fn uids_from_status() {
        let status =
            b"Name:\ta) \xff\\nUid:\t0\t0\t0\t0\nUmask:\t0022\nUid:\t1000\t1001\t1002\t1003\n";
        // The name's line starts with "Name:", so the first line that starts "Uid:" is the real one.
        assert_eq!(parse_uids(status), Some((1000, 1002)));
        assert_eq!(parse_uids(b"Uid:\t5 6\n"), None);
        assert_eq!(parse_uids(b"Uid:\tx 1 2 3\n"), None);
        assert_eq!(parse_uids(b"Gid:\t1 1 1 1\n"), None);
    }

    #[test]
    fn this_process_reads() {
        let me = std::process::id() as i32;
        let s = stat(me).expect("our own stat");
        assert!(s.rss_pages > 0 && s.pgrp > 0, "{s:?}");
        let uid = nix::unistd::Uid::current().as_raw();
        assert_eq!(uids(me).map(|u| u.0), Some(uid));
    }
}
