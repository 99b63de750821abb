//! `upgrade_state`: the in-place upgrade's state decoder (`src/upgrade/state.rs`, `parse`, over
//! the types of `src/upgrade/format/`). The new image reads the state from a memfd the old one
//! wrote; a state of another version's format, a truncated one, or one damaged on the way
//! must be refused with a message (the old image is then executed again), never panic: a
//! panic there is a failed upgrade that takes the rollback path for the wrong reason.
//!
//! A refusal is one line that says which part failed: the header, a format number this
//! multinode does not read (named in the message), or the body. A state that is accepted
//! has a format this multinode reads, writes back to JSON that reads as the same state (an
//! image that rolls back reads exactly what was handed over), and its two runtimes are
//! either refused by `runtime_from` with a message or converted to settings that
//! `runtime_state` writes back unchanged.

use crate::upgrade::format::{RuntimeState, State};
use crate::upgrade::state::{parse, reads, runtime_from, runtime_state};

pub fn check(data: &[u8]) {
    let state = match parse(data, None) {
        Ok(s) => s,
        Err(msg) => {
            assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}");
            assert!(
                msg.starts_with("the state has no valid header")
                    || msg.starts_with("state format ")
                    || msg.starts_with("the state of format "),
                "{msg}"
            );
            return;
        }
    };
    assert!(reads(state.format), "format {} accepted", state.format);
    let text = serde_json::to_vec(&state).expect("a state serializes");
    let back: State = parse(&text, None).expect("a state written back reads again");
    assert_eq!(back, state, "{}", String::from_utf8_lossy(&text));
    runtime(&state.config.runtime);
    runtime(&state.core.rt);
}

/// What the restore does with a runtime: a refusal says why; what is accepted is written back
/// as it was read.
fn runtime(s: &RuntimeState) {
    match runtime_from(s) {
        Ok(rt) => assert_eq!(&runtime_state(&rt), s),
        Err(msg) => assert!(!msg.is_empty() && !msg.contains('\n'), "{msg:?}"),
    }
}
