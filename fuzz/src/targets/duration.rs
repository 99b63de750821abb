//! `duration`: durations (`src/config.rs`, `parse_duration`; `parse_ready`'s `delay:D`),
//! the value parser of every duration option (`--grace 10s`, `--ready delay:1s`, ...), from
//! the command line or the config file.
//!
//! A duration that parses is at most `MAX_DURATION`, and its whole milliseconds and whole
//! seconds, written as `{n}ms` and `{n}s`, read back exactly. A refusal quotes the input.

use std::time::Duration;

use crate::config::{MAX_DURATION, ReadyMode, parse_duration, parse_ready};

pub fn check(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match parse_duration(text) {
        Ok(d) => {
            assert!(d <= MAX_DURATION, "{text:?}: {d:?}");
            exact(d);
        }
        Err(msg) => assert!(msg.contains(text), "{msg}"),
    }
    match parse_ready(text) {
        Ok(ReadyMode::Delay(d)) => assert_eq!(
            parse_duration(text.strip_prefix("delay:").expect("delay:")),
            Ok(d)
        ),
        Ok(ReadyMode::Notify) => assert_eq!(text, "notify"),
        Err(msg) => assert!(msg.contains(text), "{msg}"),
    }
}

/// `d` in whole milliseconds and whole seconds reads back exactly.
fn exact(d: Duration) {
    let ms = d.as_millis() as u64;
    assert_eq!(
        parse_duration(&format!("{ms}ms")),
        Ok(Duration::from_millis(ms)),
        "{ms}ms"
    );
    let s = d.as_secs();
    assert_eq!(parse_duration(&format!("{s}s")), Ok(Duration::from_secs(s)));
    assert_eq!(parse_duration(&s.to_string()), Ok(Duration::from_secs(s)));
}
