//! multinode: run N copies of any server program on sockets it binds once.
//!
//! `main` parses the command line, dispatches, and turns the outcome into the exit code: the
//! one place that does (see `error::Exit` for the table).

mod cgroup;
mod cli;
mod config;
mod config_file;
mod control;
mod docs;
mod error;
mod guard;
mod listen;
mod log;
mod metrics;
mod notify;
mod privilege;
mod procfs;
mod proxy;
mod route;
mod serve;
mod socket;
mod spawn;
mod supervisor;
mod systemd;
mod throttle;
mod upgrade;
mod usage;
mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command};
use crate::error::{Error, Exit};

fn main() -> ExitCode {
    // First of all: a process an upgrade just executed arms its way back (see upgrade/).
    upgrade::rollback::arm();
    let exit = match run() {
        Ok(exit) => exit,
        Err(e) => {
            report(&e);
            e.exit
        }
    };
    ExitCode::from(exit.code())
}

/// The error on one line (whatever the input it quotes holds), then its hints; `error:` in red
/// on a terminal.
fn report(e: &Error) {
    use colored::Colorize;
    colored::control::set_override(log::use_color(cli::ColorChoice::Auto));
    let msg = log::escape_controls(&e.msg);
    eprintln!("multinode: {} {msg}", "error:".red().bold());
    for h in &e.hints {
        eprintln!("  {}", log::escape_controls(h));
    }
}

fn run() -> Result<Exit, Error> {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return Ok(Exit::Ok);
        }
        Err(e) if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            // `multinode` alone: what it can do, on stderr, and the usage exit code.
            eprint!("{}", Cli::command().render_help());
            return Ok(Exit::Usage);
        }
        Err(e) if upgrade::rollback::armed() => {
            upgrade::rollback::fail(format!("its command line: {}", cli::clap_reason(&e)))
        }
        Err(e) => return Err(usage_error(&e)),
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| usage_error(&e))?;
    if upgrade::rollback::incoming().is_some() && !matches!(cli.command, Command::Serve(_)) {
        upgrade::rollback::fail("an upgrade's state reached a command other than serve");
    }
    // Which options the command line set, so that a config file fills in only the rest.
    let explicit = |name: &str| -> Vec<String> {
        let Some(sub) = matches.subcommand_matches(name) else {
            return Vec::new();
        };
        sub.ids()
            .filter(|id| {
                sub.value_source(id.as_str()) == Some(clap::parser::ValueSource::CommandLine)
            })
            .map(|id| id.as_str().to_string())
            .collect()
    };
    match cli.command {
        Command::Serve(args) => serve::serve(*args, explicit("serve")),
        Command::Check(args) => serve::check(*args, explicit("check")),
        Command::Status {
            target,
            json,
            check,
            watch,
        } => control::client::status(&target, json, check, watch),
        Command::Reload { target } => control::client::reload(&target),
        Command::Scale { target, workers } => control::client::scale(&target, workers),
        Command::Stop { target } => control::client::stop(&target),
        Command::Upgrade { target, binary } => control::client::upgrade(&target, binary),
        Command::UpgradeCheck { state_format } => upgrade::check_command(state_format),
        Command::Completions { shell } => {
            docs::completions(shell, &mut std::io::stdout());
            Ok(Exit::Ok)
        }
        Command::Generate { dir } => docs::generate(&dir).map(|()| Exit::Ok),
    }
}

/// clap's error as ours: its first sentence as the one-line message, with where to look (the
/// help of the subcommand that was given); its tips as hints on lines of their own (never
/// squashed into the message), and one of ours where clap has none to give.
fn usage_error(e: &clap::Error) -> Error {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    let rendered = e.render().to_string();
    let mut lines = rendered
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty());
    let first = lines.next().unwrap_or("invalid command line");
    let msg = first.strip_prefix("error: ").unwrap_or(first).to_string();
    let mut err = Error::usage(msg);
    let sub = std::env::args()
        .skip(1)
        .find(|a| Cli::command().find_subcommand(a).is_some());
    let invalid = match e.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.as_str(),
        _ => "",
    };
    let bad_value = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(s)) => s.as_str(),
        _ => "",
    };
    if sub.as_deref() == Some("completions") && e.kind() == ErrorKind::InvalidValue {
        // clap would suggest the closest name (tcsh → zsh), which is no help here.
        let shells = docs::SHELLS.map(|s| s.to_string()).join(", ");
        err.msg = format!("multinode has no completions for '{bad_value}'");
        return err.hint(format!("tip: the shells it completes are {shells}"));
    }
    // clap's suggestions of what was meant; not its advice on passing values with `--`,
    // which is about clap's syntax, not the user's intent.
    for tip in lines.filter(|l| !l.contains("as a value, use")) {
        err = err.hint(tip);
    }
    let command_sub = matches!(sub.as_deref(), Some("serve" | "check"));
    if command_sub && e.kind() == ErrorKind::UnknownArgument && !invalid.starts_with('-') {
        err = err.hint(format!(
            "tip: put the worker command after --: multinode {} [OPTIONS] -- {invalid} ...",
            sub.as_deref().unwrap_or("serve")
        ));
    }
    let help = match &sub {
        Some(s) => format!("multinode {s} --help"),
        None => "multinode --help".to_string(),
    };
    err.msg = format!("{} (see {help})", err.msg);
    err
}
