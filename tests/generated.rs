//! The committed man pages and completion scripts must be what the code generates now.
//! Regenerate with: `MULTINODE_BLESS=1 cargo test --test generated`
//! (or `multinode __generate .` at the repository root).

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

#[test]
fn man_pages_and_completions_are_fresh() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    if std::env::var_os("MULTINODE_BLESS").is_some() {
        // Stale pages first, so that a page the code no longer writes goes too.
        for name in files(&repo.join("man")) {
            std::fs::remove_file(repo.join("man").join(name)).unwrap();
        }
        let st = Command::new(multinode_bin())
            .arg("__generate")
            .arg(repo)
            .status()
            .unwrap();
        assert!(st.success());
        return;
    }
    let scratch = Scratch::new("generated");
    let st = Command::new(multinode_bin())
        .arg("__generate")
        .arg(&scratch.0)
        .status()
        .unwrap();
    assert!(st.success(), "multinode __generate failed");
    for sub in ["man", "completions"] {
        let fresh = scratch.0.join(sub);
        let committed = repo.join(sub);
        assert_eq!(
            files(&fresh),
            files(&committed),
            "{sub}/ has other files than the code generates; run MULTINODE_BLESS=1 cargo test --test generated"
        );
        for name in files(&fresh) {
            let a = std::fs::read_to_string(fresh.join(&name)).unwrap();
            let b = std::fs::read_to_string(committed.join(&name)).unwrap();
            assert!(
                a == b,
                "{sub}/{name} is stale; run MULTINODE_BLESS=1 cargo test --test generated"
            );
        }
    }
}

#[test]
fn completions_subcommand_prints_each_shell() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = Command::new(multinode_bin())
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("multinode"),
            "{shell} script mentions the command"
        );
        assert!(text.contains("listen"), "{shell} script completes --listen");
    }
}

#[test]
fn man_pages_render_without_warnings() {
    if !require(
        Command::new("man").arg("--version").output().is_ok(),
        "man is not installed (.ci/run installs man-db)",
    ) {
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for name in files(&repo.join("man")) {
        let out = Command::new("man")
            .args(["--warnings", "-l"])
            .arg(repo.join("man").join(&name))
            .env("MANWIDTH", "80")
            .env("MAN_KEEP_FORMATTING", "0")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "man {name}: {err}");
        assert!(err.trim().is_empty(), "man {name} warns: {err}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("multinode"),
            "{name} renders"
        );
    }
}

#[test]
fn bash_completion_parses() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let st = Command::new("bash")
        .arg("-n")
        .arg(repo.join("completions/multinode.bash"))
        .status()
        .unwrap();
    assert!(st.success(), "bash -n completions/multinode.bash");
}

#[test]
fn zsh_and_fish_completions_load() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let comp = repo.join("completions");
    match Command::new("zsh")
        .arg("-c")
        .arg(format!(
            "autoload -U compinit && compinit -u && source {}",
            comp.join("_multinode").display()
        ))
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "zsh: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(_) => skip("zsh is not installed (.ci/run installs it)"),
    }
    match Command::new("fish")
        .arg("-c")
        .arg(format!("source {}", comp.join("multinode.fish").display()))
        .output()
    {
        Ok(out) => {
            assert!(
                out.status.success(),
                "fish: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.stderr.is_empty(),
                "fish: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(_) => skip("fish is not installed (.ci/run installs it)"),
    }
}

/// `--help` prints the exit codes from their one definition in the code; README's table must
/// say the same, code by code.
#[test]
fn readme_lists_the_exit_codes_of_help() {
    let out = run({
        let mut c = Command::new(multinode_bin());
        c.arg("--help");
        c
    });
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let table = help
        .split("Exit codes:")
        .nth(1)
        .expect("--help has an exit code table");
    // Entries: "  N   text", continued on lines indented further.
    let mut entries: Vec<(String, String)> = Vec::new();
    for line in table.lines() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let (first, rest) = t.split_once(' ').unwrap_or((t, ""));
        if first.chars().all(|c| c.is_ascii_digit())
            && line.starts_with("  ")
            && !line.starts_with("      ")
        {
            entries.push((first.to_string(), rest.trim().to_string()));
        } else if let Some(last) = entries.last_mut() {
            last.1.push(' ');
            last.1.push_str(t);
        }
    }
    assert!(entries.len() >= 9, "{help}");
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let section = readme
        .split("## Exit codes")
        .nth(1)
        .expect("README has an Exit codes section");
    let rows: Vec<(String, String)> = section
        .lines()
        .take_while(|l| !l.starts_with("## "))
        .filter_map(|l| {
            let cells: Vec<&str> = l.split('|').map(str::trim).collect();
            (cells.len() == 4
                && cells[1].chars().all(|c| c.is_ascii_digit())
                && !cells[1].is_empty())
            .then(|| (cells[1].to_string(), cells[2].replace('`', "")))
        })
        .collect();
    assert_eq!(rows, entries, "README's exit codes differ from --help");
}

/// The Debian copyright file (pkg/debian/copyright, DEP-5): both licences, word for word from
/// LICENSE-MIT and LICENSE-APACHE.
fn debian_copyright(repo: &Path) -> String {
    let mit = std::fs::read_to_string(repo.join("LICENSE-MIT")).unwrap();
    let apache = std::fs::read_to_string(repo.join("LICENSE-APACHE")).unwrap();
    let holder = mit
        .lines()
        .find_map(|l| l.trim().strip_prefix("Copyright (c) "))
        .expect("LICENSE-MIT names the copyright holder");
    // A DEP-5 text block: each line indented by one space, an empty line as " .".
    let block = |text: &str| -> String {
        text.trim_end()
            .lines()
            .map(|l| {
                if l.trim().is_empty() {
                    " .\n".to_string()
                } else {
                    format!(" {}\n", l.trim_end())
                }
            })
            .collect()
    };
    format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: multinode\n\
         Comment: Generated from LICENSE-MIT and LICENSE-APACHE by tests/generated.rs\n \
         (MULTINODE_BLESS=1 cargo test --test generated); do not edit.\n\
         \n\
         Files: *\n\
         Copyright: {holder}\n\
         License: MIT or Apache-2.0\n\
         \n\
         License: MIT\n{}\
         \n\
         License: Apache-2.0\n{}",
        block(&mit),
        block(&apache)
    )
}

#[test]
fn debian_copyright_holds_both_licences() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = repo.join("pkg/debian/copyright");
    let want = debian_copyright(repo);
    if std::env::var_os("MULTINODE_BLESS").is_some() {
        std::fs::write(&path, want).unwrap();
        return;
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "pkg/debian/copyright is stale; run MULTINODE_BLESS=1 cargo test --test generated"
    );
}

/// The directives of a unit file, as (section, key, value), comments left out.
fn directives(text: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut out = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        let (k, v) = line.split_once('=').expect("KEY=VALUE");
        out.push((section.clone(), k.to_string(), v.to_string()));
    }
    out
}

/// The Debian package's units (pkg/systemd/multinode@.*) are the examples (examples/systemd/)
/// as templates: the instance name for `hello`, /usr/bin for /usr/local/bin, and otherwise the
/// same directives but for the few that make a template, each named here with its reason.
#[test]
fn packaged_units_are_the_examples_as_templates() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    for kind in ["service", "socket"] {
        let example =
            std::fs::read_to_string(repo.join(format!("examples/systemd/multinode.{kind}")))
                .unwrap();
        let template =
            std::fs::read_to_string(repo.join(format!("pkg/systemd/multinode@.{kind}"))).unwrap();
        let derived: Vec<_> = directives(&example)
            .into_iter()
            .map(|(s, k, v)| {
                let v = v
                    .replace("/usr/local/bin/", "/usr/bin/")
                    .replace("hello", "%i");
                (s, k, v)
            })
            .collect();
        let template = directives(&template);
        // What a template does differently, on purpose.
        let differs = |(s, k, _): &(String, String, String)| match (s.as_str(), k.as_str()) {
            // Its own page (multinode.toml(5)) for /etc/multinode/%i.toml.
            ("[Unit]", "Documentation") => true,
            // The socket unit is optional: without it multinode binds `listen` of the file.
            ("[Unit]", "Requires" | "After") => true,
            ("[Install]", "Also") => true,
            // ... so it may bind ports below 1024 itself.
            ("[Service]", "CapabilityBoundingSet") => true,
            _ => false,
        };
        let a: Vec<_> = derived.iter().filter(|d| !differs(d)).collect();
        let b: Vec<_> = template.iter().filter(|d| !differs(d)).collect();
        assert_eq!(
            a, b,
            "multinode@.{kind} differs from examples/systemd/multinode.{kind}"
        );
        if kind == "service" {
            let get = |key: &str| {
                template
                    .iter()
                    .find(|(_, k, _)| k == key)
                    .map(|(_, _, v)| v.clone())
                    .unwrap_or_default()
            };
            assert!(get("ExecStart").contains("--name %i "), "--name %i");
            assert!(
                get("ExecStart").ends_with("--config /etc/multinode/%i.toml"),
                "the instance's config file"
            );
            // multinode's control directory as root is /run/multinode/NAME: the unit's.
            assert_eq!(get("RuntimeDirectory"), "multinode/%i");
            assert!(get("CapabilityBoundingSet").contains("CAP_NET_BIND_SERVICE"));
            assert!(get("Documentation").contains("man:multinode.toml(5)"));
        }
    }
}

/// The man pages have the sections a man page has (not clap's "EXTRA"), the program's name
/// and version in the footer, and `-- COMMAND` in the synopsis of serve and check.
#[test]
fn man_pages_have_their_sections() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let footer = format!("\"multinode {}\"", env!("CARGO_PKG_VERSION"));
    for name in files(&repo.join("man")) {
        let page = std::fs::read_to_string(repo.join("man").join(&name)).unwrap();
        let th = page.lines().find(|l| l.starts_with(".TH ")).unwrap();
        assert!(th.contains(&footer), "{name}: {th}");
        assert!(!page.contains(".SH EXTRA"), "{name} has an EXTRA section");
        for section in ["NAME", "SYNOPSIS", "DESCRIPTION", "FILES", "\"SEE ALSO\""] {
            assert!(
                page.contains(&format!("\n.SH {section}\n")),
                "{name} has {section}"
            );
        }
        let wanted: &[&str] = match name.as_str() {
            "multinode.1" | "multinode-serve.1" => {
                &["SIGNALS", "\"EXIT STATUS\"", "ENVIRONMENT", "EXAMPLES"]
            }
            "multinode.toml.5" => &["KEYS", "RELOAD", "EXAMPLES"],
            _ => &["\"EXIT STATUS\"", "EXAMPLES"],
        };
        for section in wanted {
            assert!(
                page.contains(&format!("\n.SH {section}\n")),
                "{name} has {section}"
            );
        }
        if name == "multinode-serve.1" || name == "multinode-check.1" {
            assert!(
                page.contains("\\fB\\-\\-\\fR \\fICOMMAND\\fR [\\fIARGS\\fR]..."),
                "{name}: the synopsis shows -- COMMAND [ARGS]..."
            );
        }
    }
}

/// multinode.toml(5) documents every key the file takes: each long option of `serve --help`
/// but --config, plus `command` and `[env]`.
#[test]
fn the_config_page_has_every_key() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let page = std::fs::read_to_string(repo.join("man/multinode.toml.5")).unwrap();
    let out = run({
        let mut c = Command::new(multinode_bin());
        c.args(["serve", "--help"]);
        c
    });
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    // Option lines are indented 2 (`  -c, --config <FILE>`) or 6 (`      --name <NAME>`)
    // spaces; their descriptions, which may start with an option's name too, 10.
    let mut keys: Vec<String> = help
        .lines()
        .filter(|l| {
            let indent = l.len() - l.trim_start().len();
            indent <= 6 && l.trim_start().starts_with('-')
        })
        .filter_map(|l| {
            let long = l.split("--").nth(1)?;
            let key = long.split([' ', ',', '=', '<']).next()?;
            (!key.is_empty()).then(|| key.to_string())
        })
        .filter(|k| !["config", "help", "version", "env"].contains(&k.as_str()))
        .collect();
    keys.dedup();
    assert!(keys.len() > 30, "{keys:?}");
    for key in keys.iter().map(String::as_str).chain(["command", "[env]"]) {
        let roff_key = key.replace('-', "\\-");
        assert!(
            page.contains(&format!(".TP\n\\fB{roff_key}\\fR")),
            "multinode.toml(5) documents {key}"
        );
    }
}
