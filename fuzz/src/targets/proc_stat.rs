//! `proc_stat`: `/proc/PID/stat` and `/proc/PID/status` (`src/procfs.rs`), which the
//! supervisor and its root guard read of every process, workers' included: a process names
//! itself (`prctl(PR_SET_NAME)`, or the name of the file it runs), up to 15 bytes of anything
//! but NUL.
//!
//! Any bytes parse or are refused without a panic. A stat line as the kernel writes it, for
//! a process whose name is the input's first 15 bytes (NULs dropped) and whose numbers come
//! from the rest, gives those numbers back, whatever the name; so does a status file's `Uid:`
//! line after a `Name:` line with the name as the kernel escapes it.

use crate::procfs::{Stat, parse_stat, parse_uids};

pub fn check(data: &[u8]) {
    let _ = parse_stat(data);
    let _ = parse_uids(data);
    let comm: Vec<u8> = data.iter().copied().filter(|&b| b != 0).take(15).collect();
    let mut n = [0u8; 40];
    let rest = &data[data.len().min(15)..];
    n[..rest.len().min(40)].copy_from_slice(&rest[..rest.len().min(40)]);
    let u64_at = |i: usize| u64::from_le_bytes(n[i..i + 8].try_into().expect("8 bytes"));
    let i32_at = |i: usize| i32::from_le_bytes(n[i..i + 4].try_into().expect("4 bytes"));
    let want = Stat {
        state: b"RSDZTtXxIKWP"[usize::from(n[0]) % 12],
        ppid: i32_at(1).max(0),
        pgrp: i32_at(5).max(0),
        utime: u64_at(9),
        stime: u64_at(17),
        rss_pages: u64_at(25) >> 8,
    };
    let mut line = format!("{} (", i32_at(33).max(1)).into_bytes();
    line.extend_from_slice(&comm);
    line.extend_from_slice(
        format!(
            ") {} {} {} 0 0 -1 4194560 120 0 0 0 {} {} 0 0 20 0 1 0 99 5562368 {} \
             18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n",
            want.state as char, want.ppid, want.pgrp, want.utime, want.stime, want.rss_pages
        )
        .as_bytes(),
    );
    assert_eq!(parse_stat(&line), Some(want), "{}", line.escape_ascii());

    let (real, saved) = (u32::from(n[37]) * 1000, u32::from(n[38]) * 7);
    let mut status = b"Name:\t".to_vec();
    for &b in &comm {
        // The kernel's escaping of the name in status (seq_escape_str, ESCAPE_SPACE and "\n\\").
        match b {
            b'\n' => status.extend_from_slice(b"\\n"),
            b'\\' => status.extend_from_slice(b"\\\\"),
            b'\t' => status.extend_from_slice(b"\\t"),
            _ => status.push(b),
        }
    }
    status.extend_from_slice(
        format!("\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t1\nUid:\t{real}\t{real}\t{saved}\t{real}\nGid:\t0\t0\t0\t0\n")
            .as_bytes(),
    );
    assert_eq!(
        parse_uids(&status),
        Some((real, saved)),
        "{}",
        status.escape_ascii()
    );
}
