//! Man pages and shell completions, generated from the clap definitions in cli.rs so that they
//! can never disagree with `--help`. The repository keeps a generated copy under man/ and
//! completions/; a test compares it with what this code writes.

use std::io::Write;
use std::path::Path;

use clap::CommandFactory;
use clap_complete::Shell;

use crate::cli::Cli;
use crate::error::{Error, Result};

pub const SHELLS: [Shell; 5] = [
    Shell::Bash,
    Shell::Zsh,
    Shell::Fish,
    Shell::Elvish,
    Shell::PowerShell,
];

/// Writes the completion script for `shell` to `w`.
pub fn completions(shell: Shell, w: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "multinode", w);
}

/// Writes `dir/man/*.1` (a page per subcommand) and `dir/completions/*`.
pub fn generate(dir: &Path) -> Result<()> {
    let fail = |what: &Path, e: std::io::Error| {
        Error::internal(format!("writing {}: {e}", what.display()))
    };
    let man = dir.join("man");
    let comp = dir.join("completions");
    for d in [&man, &comp] {
        std::fs::create_dir_all(d).map_err(|e| fail(d, e))?;
    }
    clap_mangen::generate_to(Cli::command(), &man).map_err(|e| fail(&man, e))?;
    for shell in SHELLS {
        let mut cmd = Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "multinode", &comp)
            .map_err(|e| fail(&comp, e))?;
    }
    Ok(())
}
