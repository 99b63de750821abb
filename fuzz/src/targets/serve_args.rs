//! `serve_args`: one option of `multinode serve` with any value, through clap and the
//! option's own value parser (`src/cli.rs`, and the parsers of `config.rs`, `listen.rs`,
//! `proxy.rs`): signals, file modes, `--env KEY=VALUE`, readiness modes, enums, numbers,
//! durations, sizes, addresses, networks. The first byte picks the option, the rest is its
//! value (any bytes but NUL, as in an argv).
//!
//! Whatever the value, the outcome is a parse or an error clap reports on one line (what
//! `main` prints, `cli::clap_reason`), never a panic; a value that parses also parses when
//! written `--opt=VALUE`, to the same options.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::sync::OnceLock;

use clap::{ArgAction, CommandFactory, Parser};

use crate::cli::{Cli, clap_reason};

/// The long names of `serve`'s options that take a value, in the order of `--help`: the
/// input's first byte picks one (modulo their number).
pub fn options() -> &'static [String] {
    static OPTIONS: OnceLock<Vec<String>> = OnceLock::new();
    OPTIONS.get_or_init(|| {
        let cli = Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve");
        serve
            .get_arguments()
            .filter(|a| matches!(a.get_action(), ArgAction::Set | ArgAction::Append))
            .filter_map(|a| a.get_long().map(str::to_owned))
            .collect()
    })
}

pub fn check(data: &[u8]) {
    let Some((&pick, value)) = data.split_first() else {
        return;
    };
    if value.contains(&0) {
        return;
    }
    let options = options();
    let option = &options[usize::from(pick) % options.len()];
    let value = OsStr::from_bytes(value);
    let argv = |words: &[&OsStr]| -> Vec<OsString> {
        let mut v: Vec<OsString> = ["multinode", "serve"].map(OsString::from).to_vec();
        v.extend(words.iter().map(|w| w.to_os_string()));
        v.extend(["--", "/bin/true"].map(OsString::from));
        v
    };
    let flag = format!("--{option}");
    let separate = Cli::try_parse_from(argv(&[OsStr::new(&flag), value]));
    let mut joined = OsString::from(format!("{flag}="));
    joined.push(value);
    let together = Cli::try_parse_from(argv(&[&joined]));
    match (separate, together) {
        (Ok(a), Ok(b)) => assert_eq!(format!("{a:?}"), format!("{b:?}"), "{flag} {value:?}"),
        (Err(e), _) => one_line(&e, &flag, value),
        // A value that starts with '-' is another option when it stands alone.
        (Ok(_), Err(e)) => panic!("{flag} {value:?} parses, {joined:?} does not: {e}"),
    }
}

fn one_line(e: &clap::Error, flag: &str, value: &OsStr) {
    let reason = clap_reason(e);
    assert!(!reason.is_empty(), "{flag} {value:?}: {e}");
    assert!(!reason.contains('\n'), "{flag} {value:?}: {reason}");
}
