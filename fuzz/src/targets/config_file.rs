//! `config_file`: a whole `--config` file, the way `multinode serve|check --config FILE` and a
//! reload read it: `config_file::apply_bytes` fills the options the command line did not
//! give (`multinode serve --config FILE` alone here), then `Config::from_args_and_file` runs
//! every check that needs more than one option. The file is the operator's, but it is often
//! written by tools and templates, and it decides what runs as whom.
//!
//! A file that is refused gets a usage error that names the file (and, for a value, its line
//! and column). A file that is accepted gives a config whose paths the kernel can take (no
//! NUL byte), and reading it twice gives the same config: a reload of an unchanged file
//! changes nothing and needs no restart.

use std::path::Path;
use std::sync::OnceLock;

use clap::Parser;

use crate::cli::{Cli, Command, ServeArgs};
use crate::config::Config;
use crate::error::Exit;
use crate::listen::{ListenAddr, ListenSpec};

/// Where the file is said to be: relative paths in it are taken from its directory.
const PATH: &str = "/multinode-fuzz/multinode.toml";

/// `multinode serve --config PATH`.
fn command_line() -> &'static ServeArgs {
    static ARGS: OnceLock<ServeArgs> = OnceLock::new();
    ARGS.get_or_init(|| {
        match Cli::try_parse_from(["multinode", "serve", "--config", PATH])
            .expect("a valid command line")
            .command
        {
            Command::Serve(args) => *args,
            _ => unreachable!("serve"),
        }
    })
}

pub fn check(data: &[u8]) {
    let mut args = command_line().clone();
    if let Err(e) = crate::config_file::apply_bytes(Path::new(PATH), data, &mut args, &[]) {
        assert_eq!(e.exit, Exit::Usage, "{}", e.msg);
        assert!(
            e.msg.starts_with(PATH) || e.msg.starts_with(&format!("--config {PATH}:")),
            "the error names the file: {}",
            e.msg
        );
        return;
    }
    let config = |what: &str| {
        Config::from_args_and_file(command_line().clone(), Vec::new(), data)
            .map_err(|e| {
                // The file itself was fine: what is refused now is how its options go together,
                // or the program it names.
                assert!(
                    matches!(e.exit, Exit::Usage | Exit::Program),
                    "{what}: {:?} {}",
                    e.exit,
                    e.msg
                );
                assert!(!e.msg.is_empty());
            })
            .ok()
    };
    let Some(first) = config("first reading") else {
        return;
    };
    no_nul(&first);
    let second = config("second reading").expect("the same file is accepted again");
    let runtime = first.runtime.clone();
    let plan = first.reload_plan(second);
    assert!(
        plan.needs_restart.is_empty(),
        "reading the same file again changes {:?}",
        plan.needs_restart
    );
    assert_eq!(plan.runtime, runtime);
    assert_eq!(plan.next.program, first.program);
    assert_eq!(plan.next.env, first.env);
    assert_eq!(plan.next.workdir, first.workdir);
}

/// The paths of an accepted config reach the kernel as C strings.
fn no_nul(c: &Config) {
    use std::os::unix::ffi::OsStrExt;
    let unix = |l: &ListenSpec| match &l.addr {
        ListenAddr::Unix(p) => Some(p.clone()),
        _ => None,
    };
    let paths = c
        .listen
        .iter()
        .filter_map(unix)
        .chain(c.metrics.iter().filter_map(unix))
        .chain(c.control.clone())
        .chain(c.workdir.clone())
        .chain(c.watch.iter().cloned())
        .chain([c.program.path.clone()]);
    for p in paths {
        assert!(
            !p.as_os_str().as_bytes().contains(&0),
            "{} holds a NUL byte",
            p.display()
        );
    }
}
