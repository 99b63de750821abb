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
mod proxy;
mod route;
mod serve;
mod socket;
mod spawn;
mod supervisor;
mod systemd;
mod usage;
mod watch;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches};

use crate::cli::{Cli, Command};
use crate::error::{Error, Exit};

fn main() -> ExitCode {
    let exit = match run() {
        Ok(exit) => exit,
        Err(e) => {
            // One line, whatever the input it quotes holds.
            let msg = log::escape_controls(&e.to_string()).into_owned();
            eprintln!("multinode: error: {msg}");
            e.exit
        }
    };
    ExitCode::from(exit.code())
}

fn run() -> Result<Exit, Error> {
    let matches = match Cli::command().try_get_matches() {
        Ok(m) => m,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return Ok(Exit::Ok);
        }
        Err(e) => return Err(Error::usage(one_line(&e))),
    };
    let cli = Cli::from_arg_matches(&matches).map_err(|e| Error::usage(one_line(&e)))?;
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
        Command::Completions { shell } => {
            docs::completions(shell, &mut std::io::stdout());
            Ok(Exit::Ok)
        }
        Command::Generate { dir } => docs::generate(&dir).map(|()| Exit::Ok),
    }
}

/// clap's error as one line: its sentences without the usage block, plus where to look.
fn one_line(e: &clap::Error) -> String {
    format!("{} (see multinode --help)", cli::clap_reason(e))
}
