//! `size`: sizes (`src/config.rs`, `parse_size`), the value parser of `--max-memory` and of
//! the config file's `max-memory` (a string such as `"512M"`, or a number of bytes).
//!
//! A size that parses is 1 byte to 1 EiB, and written as a number of bytes it reads back as
//! the same number; in whole KiB, MiB, ... (`{n}K`, `{n}MiB`) as the same bytes. A refusal
//! quotes the input.

use crate::config::parse_size;

/// 1 EiB, the most a size may be.
const MAX: u64 = 1 << 60;

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let bytes = match parse_size(text) {
        Ok(n) => n,
        Err(msg) => {
            assert!(msg.contains(text), "{msg}");
            return;
        }
    };
    assert!((1..=MAX).contains(&bytes), "{text:?}: {bytes}");
    assert_eq!(parse_size(&bytes.to_string()), Ok(bytes), "{bytes}");
    for (shift, units) in [(10, ["K", "KiB"]), (20, ["m", "MB"]), (30, ["G", "gib"])] {
        let n = bytes >> shift;
        if n > 0 {
            for unit in units {
                assert_eq!(
                    parse_size(&format!("{n}{unit}")),
                    Ok(n << shift),
                    "{n}{unit}"
                );
            }
        }
    }
}
