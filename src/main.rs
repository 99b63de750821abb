//! multinode: run N copies of any server program on sockets it binds once.
//!
//! `main` parses the command line, dispatches, and turns the outcome into the exit code: the
//! one place that does (see `error::Exit` for the table).

mod cli;
mod config;
mod docs;
mod error;
mod log;
mod notify;
mod privilege;
mod proxy;
mod route;
mod serve;
mod socket;
mod spawn;
mod supervisor;
mod watch;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};
use crate::error::{Error, Exit};

fn main() -> ExitCode {
    let exit = match run() {
        Ok(exit) => exit,
        Err(e) => {
            eprintln!("multinode: error: {e}");
            e.exit
        }
    };
    ExitCode::from(exit as u8)
}

fn run() -> Result<Exit, Error> {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version.
            let _ = e.print();
            return Ok(Exit::Ok);
        }
        Err(e) => return Err(Error::usage(one_line(&e))),
    };
    match cli.command {
        Command::Serve(args) => serve::serve(*args),
        Command::Completions { shell } => {
            docs::completions(shell, &mut std::io::stdout());
            Ok(Exit::Ok)
        }
        Command::Generate { dir } => docs::generate(&dir).map(|()| Exit::Ok),
    }
}

/// clap's error as one line: its sentences without the usage block, plus where to look.
fn one_line(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let body: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let msg = body.join(" ");
    let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
    format!("{msg} (see multinode --help)")
}
