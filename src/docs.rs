//! Man pages and shell completions, generated from the clap definitions in cli.rs so that they
//! can never disagree with `--help`. The repository keeps a generated copy under man/ and
//! completions/; a test compares it with what this code writes.
//!
//! clap_mangen renders what clap knows (name, options, subcommands); the sections a man page
//! has beyond that (SIGNALS, EXIT STATUS, ENVIRONMENT, FILES, EXAMPLES, SEE ALSO) are built here
//! from the one definition of each fact: the exit codes from [`Exit::ALL`], the signal and
//! worker-environment tables below (which README's tables must equal, word for word — a test
//! says so), the control socket's place from the control module. `multinode.toml(5)` is
//! generated from the same `serve` definition the config file reads its keys from.

use std::io::Write;
use std::path::Path;

use clap::{Arg, ArgAction, CommandFactory, ValueHint};
use clap_complete::Shell;
use clap_mangen::Man;
use clap_mangen::roff::{Inline, Roff, bold, italic, roman};

use crate::cli::Cli;
use crate::error::{Error, Exit, Result};

pub const SHELLS: [Shell; 5] = [
    Shell::Bash,
    Shell::Zsh,
    Shell::Fish,
    Shell::Elvish,
    Shell::PowerShell,
];

/// What each signal does to `multinode serve`: README's "Signals" table, row by row. Text in
/// backquotes is code (bold in the man pages).
pub const SIGNALS: [(&str, &str); 6] = [
    (
        "`TERM`, `INT`",
        "graceful stop: no more restarts; `--stop-signal` to every worker's process group; \
         SIGKILL after `--grace`; a second one kills at once",
    ),
    ("`QUIT`", "fast stop: SIGKILL to every worker now"),
    (
        "`HUP`",
        "rolling reload (re-reads `--config` first); a HUP during a reload starts the roll over \
         with the newest config",
    ),
    (
        "`TTIN` / `TTOU`",
        "one worker more / fewer (the highest slot drains); only when sent by a process \
         (`kill -TTIN`): the terminal's own job-control TTIN/TTOU are ignored",
    ),
    (
        "`USR2`",
        "upgrade multinode itself in place: the same pid, every socket and worker kept (see \
         *Upgrading multinode*); like `multinode upgrade`, with nobody waiting for the outcome",
    ),
    (
        "`CHLD`",
        "reaping: workers, and any orphan reparented to multinode (it is a child subreaper; as \
         PID 1 in a container it reaps everything)",
    ),
];

/// What every worker process sees: README's "The worker contract" table, row by row.
pub const WORKER_CONTRACT: [(&str, &str); 10] = [
    (
        "fds 3 .. 3+n-1",
        "the listening sockets, in `--listen` order; every other fd but 0, 1, 2 is closed",
    ),
    ("`LISTEN_FDS`", "n"),
    (
        "`LISTEN_PID`",
        "the worker's own pid (sd_listen_fds(3) ignores the fds otherwise)",
    ),
    (
        "`LISTEN_FDNAMES`",
        "the socket names joined with `:` (`--listen NAME=ADDR`; default `listen0`, `listen1`, …)",
    ),
    (
        "`NOTIFY_SOCKET`",
        "where `READY=1`, `STATUS=…`, `STOPPING=1`, `WATCHDOG=1` go (sd_notify(3) datagrams)",
    ),
    (
        "`MULTINODE_WORKER_ID`",
        "the slot, 0..N-1, stable across restarts and reloads",
    ),
    ("`MULTINODE_WORKERS`", "N"),
    ("`MULTINODE_GENERATION`", "1, then bumped by every reload"),
    (
        "`WATCHDOG_USEC`, `WATCHDOG_PID`",
        "with `--watchdog`: its interval in microseconds, and the worker's own pid \
         (sd_watchdog_enabled(3))",
    ),
    (
        "`USER`, `LOGNAME`, `HOME`",
        "those of the user multinode dropped to",
    ),
];

/// The environment multinode itself reads; `true`: the control commands read it too.
const READS: [(&str, &str, bool); 7] = [
    (
        "`LISTEN_FDS`, `LISTEN_PID`, `LISTEN_FDNAMES`",
        "sockets passed by systemd (socket activation): taken instead of binding `--listen`, \
         named by `LISTEN_FDNAMES`, and passed on to the workers at the same fd numbers under \
         the same names",
        false,
    ),
    (
        "`NOTIFY_SOCKET`",
        "systemd's (`Type=notify`): multinode sends `READY=1` once every worker is ready, \
         `RELOADING=1` and `READY=1` around each reload, `STOPPING=1`, `STATUS=` lines and its \
         watchdog pings there; its workers get multinode's own socket instead",
        false,
    ),
    (
        "`WATCHDOG_USEC`, `WATCHDOG_PID`",
        "systemd's watchdog for multinode itself (`WatchdogSec=`): it sends `WATCHDOG=1` at \
         half the interval",
        false,
    ),
    (
        "`NO_COLOR`",
        "set and not empty: no colour with `--color auto`",
        true,
    ),
    (
        "`XDG_RUNTIME_DIR`",
        "when not root: where control sockets are (`$XDG_RUNTIME_DIR/multinode/NAME/`), and \
         the workers' notify socket",
        true,
    ),
    (
        "`TMPDIR`",
        "when not root and without a usable `XDG_RUNTIME_DIR`: control sockets in \
         `$TMPDIR/multinode-UID/NAME/` (`/tmp` when unset)",
        true,
    ),
    (
        "`PATH`",
        "where a program named without a `/` is looked up",
        false,
    ),
];

/// Where the Debian package (`cargo deb`, see Cargo.toml) puts what is not the binary; the
/// man pages say so, and a test checks Cargo.toml installs each.
pub const PACKAGED: [(&str, &str); 7] = [
    (
        "/etc/multinode/NAME.toml",
        "the config file of the systemd service `multinode@NAME.service` (made by the \
         administrator, from the example below; see multinode.toml(5))",
    ),
    (
        "/usr/share/doc/multinode/examples/multinode.toml",
        "an annotated example config file",
    ),
    (
        "/usr/lib/systemd/system/multinode@.service",
        "the template unit: `multinode serve --name NAME --config /etc/multinode/NAME.toml`",
    ),
    (
        "/usr/lib/systemd/system/multinode@.socket",
        "its socket unit (socket activation: systemd binds, multinode takes the sockets)",
    ),
    (
        "/usr/share/bash-completion/completions/multinode",
        "bash completion (loaded by the bash-completion package)",
    ),
    (
        "/usr/share/zsh/vendor-completions/_multinode",
        "zsh completion",
    ),
    (
        "/usr/share/fish/vendor_completions.d/multinode.fish",
        "fish completion",
    ),
];

/// Writes the completion script for `shell` to `w`.
pub fn completions(shell: Shell, w: &mut dyn Write) {
    clap_complete::generate(shell, &mut Cli::command(), "multinode", w);
}

/// Writes `dir/man/*` (`multinode.1`, a page per subcommand, `multinode.toml.5`) and
/// `dir/completions/*`.
pub fn generate(dir: &Path) -> Result<()> {
    let fail = |what: &Path, e: std::io::Error| {
        Error::internal(format!("writing {}: {e}", what.display()))
    };
    let man = dir.join("man");
    let comp = dir.join("completions");
    for d in [&man, &comp] {
        std::fs::create_dir_all(d).map_err(|e| fail(d, e))?;
    }
    for (name, text) in man_pages() {
        let path = man.join(name);
        std::fs::write(&path, text).map_err(|e| fail(&path, e))?;
    }
    for shell in SHELLS {
        let mut cmd = Cli::command();
        clap_complete::generate_to(shell, &mut cmd, "multinode", &comp)
            .map_err(|e| fail(&comp, e))?;
    }
    Ok(())
}

/// Every man page: (file name, roff text).
pub fn man_pages() -> Vec<(String, String)> {
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    let mut pages = vec![("multinode.1".to_string(), command_page(&top, Page::Top))];
    for sub in top.get_subcommands().filter(|s| !s.is_hide_set()) {
        let page = match sub.get_name() {
            "serve" => Page::Serve,
            "check" => Page::Check,
            "completions" => Page::Completions,
            _ => Page::Control,
        };
        let name = format!("multinode-{}.1", sub.get_name());
        pages.push((name, command_page(sub, page)));
    }
    pages.push(("multinode.toml.5".to_string(), config_page()));
    pages
}

/// Which kind of page a command gets: the sections differ.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Page {
    Top,
    Serve,
    Check,
    /// status, reload, scale, stop: they talk to a running multinode.
    Control,
    Completions,
}

/// The footer's source: the program and its version, the same on every page.
fn source() -> String {
    format!("multinode {}", env!("CARGO_PKG_VERSION"))
}

/// What `Roff::render` puts before every text: defining the apostrophe string. A page has it
/// once, at the top.
const PREAMBLE: &str = ".ie \\n(.g .ds Aq \\(aq\n.el .ds Aq '\n";

/// After the title: no hyphenation (option names and paths stay whole) and ragged right.
const LAYOUT: &str = ".nh\n.ad l\n";

/// A rendered section without the preamble (the page has it already).
fn section_text(render: impl FnOnce(&mut Vec<u8>) -> std::io::Result<()>) -> String {
    let mut out = Vec::new();
    render(&mut out).expect("rendering into memory");
    let text = String::from_utf8(out).expect("roff is UTF-8");
    match text.strip_prefix(PREAMBLE) {
        Some(rest) => rest.to_string(),
        None => text,
    }
}

fn roff_text(roff: &Roff) -> String {
    section_text(|w| roff.to_writer(w))
}

fn command_page(cmd: &clap::Command, page: Page) -> String {
    let man = Man::new(cmd.clone()).source(source());
    let mut out = String::new();
    // The title keeps the preamble: the one the whole page needs.
    let mut title = Vec::new();
    man.render_title(&mut title).expect("rendering into memory");
    out.push_str(&String::from_utf8(title).expect("roff is UTF-8"));
    out.push_str(LAYOUT);
    out.push_str(&section_text(|w| man.render_name_section(w)));

    let mut roff = Roff::new();
    roff.control("SH", ["SYNOPSIS"]);
    roff.text(synopsis(cmd));
    description(&mut roff, cmd, page);
    out.push_str(&roff_text(&roff));

    out.push_str(&section_text(|w| man.render_options_section(w)));
    if page == Page::Top {
        out.push_str(&section_text(|w| man.render_subcommands_section(w)));
    }

    let mut roff = Roff::new();
    if matches!(page, Page::Top | Page::Serve) {
        table_section(
            &mut roff,
            "SIGNALS",
            "Signals to multinode serve:",
            &SIGNALS,
        );
    }
    exit_status(&mut roff);
    environment(&mut roff, page);
    files(&mut roff, page);
    examples(&mut roff, cmd, page);
    see_also(&mut roff, cmd.get_display_name().unwrap_or(cmd.get_name()));
    out.push_str(&roff_text(&roff));
    out
}

/// The usage line of `--help` (`multinode serve [OPTIONS] -- <COMMAND> [ARGS]...`) as a
/// synopsis: literal words bold, placeholders italic without their angle brackets.
fn synopsis(cmd: &clap::Command) -> Vec<Inline> {
    let usage = cmd.clone().render_usage().to_string();
    let usage = usage.trim().trim_start_matches("Usage:").trim();
    let mut line = Vec::new();
    for (i, word) in usage.split_whitespace().enumerate() {
        if i > 0 {
            line.push(roman(" "));
        }
        let core = word.trim_start_matches('[');
        let open = &word[..word.len() - core.len()];
        let mut inner = core;
        while let Some(rest) = inner
            .strip_suffix("...")
            .or_else(|| inner.strip_suffix(']'))
        {
            inner = rest;
        }
        let close = &core[inner.len()..];
        if !open.is_empty() {
            line.push(roman(open));
        }
        if let Some(name) = inner.strip_prefix('<').and_then(|s| s.strip_suffix('>')) {
            line.push(italic(name));
        } else if inner.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
            line.push(italic(inner));
        } else {
            line.push(bold(inner));
        }
        if !close.is_empty() {
            line.push(roman(close));
        }
    }
    line
}

/// Text with `code` spans, as roff: the spans bold.
fn inline(text: &str) -> Vec<Inline> {
    text.replace('…', "...")
        .split('`')
        .enumerate()
        .filter(|(_, s)| !s.is_empty())
        .map(|(i, s)| if i % 2 == 1 { bold(s) } else { roman(s) })
        .collect()
}

/// Paragraphs of `text` (separated by blank lines); within a `.TP` item they stay indented.
fn paragraphs(roff: &mut Roff, text: &str) {
    for (i, p) in text.split("\n\n").enumerate() {
        if i > 0 {
            roff.control("sp", []);
        }
        let joined = p.lines().map(str::trim).collect::<Vec<_>>().join(" ");
        roff.text(inline(&joined));
    }
}

fn description(roff: &mut Roff, cmd: &clap::Command, page: Page) {
    roff.control("SH", ["DESCRIPTION"]);
    let about = cmd
        .get_long_about()
        .or_else(|| cmd.get_about())
        .map(|s| s.to_string())
        .unwrap_or_default();
    let about = if about.ends_with('.') {
        about
    } else {
        format!("{about}.")
    };
    let extra = match page {
        Page::Top => {
            "The subcommands are described on pages of their own: `multinode serve` \
             (multinode-serve(1)) runs a service; `status`, `reload`, `scale` and `stop` talk to \
             a running one through its control socket; `check` validates a configuration; the \
             config file is described in multinode.toml(5)."
        }
        Page::Serve => {
            "multinode binds the sockets of `--listen` (or takes those systemd passes, see \
             ENVIRONMENT), drops root privileges when started as root (to `--user`, default \
             nobody), and starts `--workers` copies of COMMAND, each of which inherits the \
             sockets the systemd way: programs written for socket activation work unchanged, \
             and the kernel spreads connections over all of them. Crashed workers are restarted \
             with backoff. SIGHUP, `multinode reload` or a `--watch` change roll every worker \
             over to a new one without refusing a connection: a new worker is started, and the \
             old one is stopped once the new one is ready. SIGTERM drains.\n\n\
             A worker is reload-safe when it says when it is ready (`READY=1` to \
             `NOTIFY_SOCKET`, or `--ready delay:D`), on its `--stop-signal` stops accepting \
             without closing the listening socket, which it shares, finishes the requests in \
             flight, and exits within `--grace`.\n\n\
             Options can also come from a file (`--config`, see multinode.toml(5)); the command \
             line wins over it."
        }
        Page::Check => {
            "It runs every step `multinode serve` takes before binding (the config file and the \
             options, the user and group, the program with its arguments and environment as \
             execve will get them, the `--watch` paths), so it refuses what `serve` would, with \
             the same message and exit code."
        }
        Page::Control => {
            "The service is found by `--name` (what it was started with) through its control \
             socket (see FILES); with one service running, no `--name` is needed. Root and the \
             user who started it may reload, scale and stop it; any local user who can reach \
             the socket may ask for its status."
        }
        Page::Completions => {
            "The script is generated from the same definitions as `--help`. The Debian package \
             installs the bash, zsh and fish scripts where those shells look (see FILES)."
        }
    };
    paragraphs(roff, &format!("{about}\n\n{extra}"));
}

/// A section of `.TP` items: a tag (with code spans) and its text.
fn table_section(roff: &mut Roff, heading: &str, intro: &str, rows: &[(&str, &str)]) {
    roff.control("SH", [heading]);
    if !intro.is_empty() {
        roff.text(inline(intro));
    }
    for (tag, text) in rows {
        roff.control("TP", []);
        roff.text(tag_inline(tag));
        roff.text(inline(text));
    }
}

/// A tag: its code spans bold, and the rest (`fds 3 .. 3+n-1`) too, as a name.
fn tag_inline(tag: &str) -> Vec<Inline> {
    if tag.contains('`') {
        inline(tag)
    } else {
        vec![bold(tag)]
    }
}

fn exit_status(roff: &mut Roff) {
    roff.control("SH", ["EXIT STATUS"]);
    for e in Exit::ALL {
        roff.control("TP", []);
        roff.text([bold(e.code().to_string())]);
        roff.text([roman(e.meaning())]);
    }
}

fn environment(roff: &mut Roff, page: Page) {
    let reads: Vec<(&str, &str)> = READS
        .iter()
        .filter(|(_, _, control)| *control || page != Page::Control)
        .map(|(name, text, _)| (*name, *text))
        .collect();
    match page {
        Page::Top | Page::Serve => {
            table_section(
                roff,
                "ENVIRONMENT",
                "What every worker gets (the rest of multinode's environment is passed on, \
                 `--env` and `[env]` added):",
                &WORKER_CONTRACT,
            );
            roff.control("PP", []);
            roff.text(inline("What multinode reads:"));
            for (tag, text) in reads {
                roff.control("TP", []);
                roff.text(tag_inline(tag));
                roff.text(inline(text));
            }
        }
        Page::Control => table_section(roff, "ENVIRONMENT", "", &reads),
        Page::Check | Page::Completions => {}
    }
}

/// The control socket's places, from the control module's own constant.
fn control_files() -> Vec<(String, &'static str)> {
    vec![
        (
            format!("{}/NAME/control.sock", crate::control::SYSTEM_BASE),
            "the control socket of the service NAME (`--name`) started as root; the directories \
             belong to root",
        ),
        (
            "$XDG_RUNTIME_DIR/multinode/NAME/control.sock".to_string(),
            "the control socket of a service another user started",
        ),
        (
            "$TMPDIR/multinode-UID/NAME/control.sock".to_string(),
            "the same without `XDG_RUNTIME_DIR` (`/tmp/multinode-UID`, mode 0700)",
        ),
    ]
}

fn files(roff: &mut Roff, page: Page) {
    let mut rows: Vec<(String, &str)> = Vec::new();
    if matches!(page, Page::Top | Page::Serve | Page::Control) {
        rows.extend(control_files());
    }
    let packaged = PACKAGED.iter().map(|(p, t)| (p.to_string(), *t));
    match page {
        Page::Top => rows.extend(packaged),
        Page::Serve => rows.extend(packaged.take(4)),
        Page::Check => rows.extend(packaged.take(2)),
        Page::Control => {}
        Page::Completions => rows.extend(packaged.skip(4)),
    }
    roff.control("SH", ["FILES"]);
    for (path, text) in rows {
        roff.control("TP", []);
        roff.text([bold(path)]);
        roff.text(inline(text));
    }
}

/// Command lines and what each does; every one that starts with `multinode` (or `sudo
/// multinode`) is parsed by a test, so none can go stale.
fn examples_of(page: Page, name: &str) -> Vec<(&'static str, &'static str)> {
    let serve = [
        (
            "multinode serve --workers 4 --listen 127.0.0.1:8080 -- ./target/release/hello",
            "Four workers of the bundled example on 127.0.0.1:8080; Ctrl-C stops them gracefully.",
        ),
        (
            "sudo multinode serve -w 8 -l :80 -l admin=unix:/run/app.sock -- ./app --flag",
            "Binds port 80 on all interfaces (IPv6 and IPv4) and a Unix socket named admin as \
             root, then runs eight workers of ./app as nobody.",
        ),
        (
            "multinode serve --config /etc/multinode/hello.toml",
            "Everything from a file (multinode.toml(5)).",
        ),
        (
            "multinode serve --route ip-hash -w 3 -- /usr/bin/python3 examples/python/routed.py",
            "multinode accepts the connections and hands each to the worker its client \
             address maps to.",
        ),
        (
            "systemctl enable --now multinode@hello.socket",
            "With the Debian package: systemd binds the socket and starts \
             `multinode@hello.service` on the first connection, which runs \
             /etc/multinode/hello.toml.",
        ),
    ];
    let control = [
        (
            "multinode status --name hello",
            "Each worker: slot, pid, state, generation, uptime, restarts, last exit, STATUS= \
             text.",
        ),
        (
            "multinode status --check --name hello",
            "Prints nothing; exits 0 only when every slot is ready (a health probe).",
        ),
        (
            "multinode reload --name hello",
            "Rolls every worker over like SIGHUP, and exits 1 if the reload was rolled back.",
        ),
        (
            "multinode scale --name hello 6",
            "Six workers; returns when the new ones are ready.",
        ),
        (
            "multinode upgrade --name hello",
            "Executes the new multinode binary in the running supervisor (same pid, sockets \
             and workers kept); exits 1 if the old one went on.",
        ),
        (
            "multinode stop --name hello",
            "Stops like SIGTERM and returns when multinode has exited, with its outcome.",
        ),
    ];
    match page {
        Page::Top => vec![serve[0], serve[1], serve[4], control[0], control[2]],
        Page::Serve => serve.to_vec(),
        Page::Check => vec![
            (
                "multinode check --config /etc/multinode/hello.toml",
                "Checks the file and everything it names; exits 0 when `serve` would start.",
            ),
            (
                "multinode check -w 4 -- ./app",
                "Checks the options and that ./app can be run.",
            ),
        ],
        Page::Control => control
            .into_iter()
            .filter(|(cmd, _)| cmd.split(' ').nth(1) == name.strip_prefix("multinode-"))
            .collect(),
        Page::Completions => vec![
            (
                "multinode completions bash > ~/.local/share/bash-completion/completions/multinode",
                "bash (the directory must exist; needs the bash-completion package).",
            ),
            (
                "multinode completions zsh > ~/.zfunc/_multinode",
                "zsh, with `fpath+=(~/.zfunc)` in ~/.zshrc before `compinit`.",
            ),
            (
                "multinode completions fish > ~/.config/fish/completions/multinode.fish",
                "fish.",
            ),
        ],
    }
}

fn examples(roff: &mut Roff, cmd: &clap::Command, page: Page) {
    let name = cmd.get_display_name().unwrap_or(cmd.get_name());
    let list = examples_of(page, name);
    if list.is_empty() {
        return;
    }
    roff.control("SH", ["EXAMPLES"]);
    for (line, text) in list {
        roff.control("TP", []);
        roff.text([bold(line)]);
        roff.text(inline(text));
    }
}

fn see_also(roff: &mut Roff, this: &str) {
    let mut top = Cli::command().disable_help_subcommand(true);
    top.build();
    let mut pages: Vec<(String, &str)> = vec![("multinode".into(), "1")];
    pages.extend(
        top.get_subcommands()
            .filter(|s| !s.is_hide_set())
            .map(|s| (format!("multinode-{}", s.get_name()), "1")),
    );
    pages.push(("multinode.toml".into(), "5"));
    for other in [
        "systemd.socket",
        "systemd.service",
        "sd_listen_fds",
        "sd_notify",
    ] {
        let section = if other.starts_with("sd_") { "3" } else { "5" };
        pages.push((other.into(), section));
    }
    roff.control("SH", ["SEE ALSO"]);
    let mut line = Vec::new();
    for (name, section) in pages.iter().filter(|(n, _)| n != this) {
        if !line.is_empty() {
            line.push(roman(", "));
        }
        line.push(bold(name.as_str()));
        line.push(roman(format!("({section})")));
    }
    roff.text(line);
}

// ---- multinode.toml(5) ----

/// Options of `serve` that are not keys of the file (as in config_file.rs), and `env`, which
/// is the `[env]` table.
const NOT_PLAIN_KEYS: [&str; 4] = ["config", "help", "version", "env"];

/// Keys whose new value the next generation of workers gets on a reload.
const RELOAD_NEXT_GENERATION: [&str; 3] = ["command", "env", "workdir"];

/// Keys a reload does not apply: they need a restart of multinode (`Config::reload_plan`).
const RELOAD_NEEDS_RESTART: [&str; 17] = [
    "listen",
    "backlog",
    "user",
    "group",
    "socket-mode",
    "balance",
    "route",
    "proxy-protocol",
    "proxy-from",
    "proxy-timeout",
    "name",
    "control",
    "watch",
    "watch-ignore",
    "allow-new-privileges",
    "cgroup",
    "metrics",
];

/// The `serve` command as the config file sees it.
fn serve_command() -> clap::Command {
    let mut top = Cli::command();
    top.build();
    top.find_subcommand("serve")
        .expect("cli.rs defines serve")
        .clone()
}

/// Every plain key of the file: the long options of `serve` but `--config`, in `--help`'s
/// order.
fn plain_keys(serve: &clap::Command) -> Vec<&Arg> {
    serve
        .get_arguments()
        .filter(|a| a.get_long().is_some_and(|l| !NOT_PLAIN_KEYS.contains(&l)))
        .collect()
}

/// How a key's value is written in TOML, from its clap definition (the same reading as
/// config_file.rs's).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TomlKind {
    Bool,
    Integer,
    Duration,
    String,
}

fn toml_kind(arg: &Arg) -> TomlKind {
    use std::any::TypeId;
    if matches!(arg.get_action(), ArgAction::SetTrue | ArgAction::SetFalse) {
        return TomlKind::Bool;
    }
    let t = arg.get_value_parser().type_id();
    if [
        TypeId::of::<u8>(),
        TypeId::of::<u16>(),
        TypeId::of::<u32>(),
        TypeId::of::<u64>(),
        TypeId::of::<usize>(),
    ]
    .iter()
    .any(|id| t == *id)
    {
        TomlKind::Integer
    } else if t == TypeId::of::<std::time::Duration>() {
        TomlKind::Duration
    } else {
        TomlKind::String
    }
}

fn is_list(arg: &Arg) -> bool {
    matches!(arg.get_action(), ArgAction::Append)
}

/// `value` as TOML of the key's kind: quoted unless a number or a boolean.
fn toml_value(kind: TomlKind, value: &str) -> String {
    match kind {
        TomlKind::Bool | TomlKind::Integer => value.to_string(),
        TomlKind::Duration | TomlKind::String => format!("{value:?}"),
    }
}

/// The default as the file would say it, if the option has one.
fn toml_default(arg: &Arg) -> Option<String> {
    let kind = toml_kind(arg);
    if kind == TomlKind::Bool {
        return Some("false".into());
    }
    let values: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|v| toml_value(kind, &v.to_string_lossy()))
        .collect();
    match (values.is_empty(), is_list(arg)) {
        (true, _) => None,
        (false, true) => Some(format!("[{}]", values.join(", "))),
        (false, false) => Some(values.join(", ")),
    }
}

/// The key's header line: `backoff-max = "DURATION"`, `listen = ["[NAME=]ADDR", ...]`,
/// `restart = "always" | "on-failure" | "never"`.
fn key_header(arg: &Arg) -> Vec<Inline> {
    let key = arg.get_long().expect("keys are long options");
    let kind = toml_kind(arg);
    let mut line = vec![bold(key), roman(" = ")];
    let possible: Vec<String> = arg
        .get_possible_values()
        .iter()
        .filter(|p| !p.is_hide_set())
        .map(|p| p.get_name().to_string())
        .collect();
    let one: Vec<Inline> = if kind == TomlKind::Bool {
        vec![bold("true"), roman(" | "), bold("false")]
    } else if !possible.is_empty() {
        let mut v = Vec::new();
        for (i, p) in possible.iter().enumerate() {
            if i > 0 {
                v.push(roman(" | "));
            }
            v.push(bold(format!("{p:?}")));
        }
        v
    } else {
        let name = arg
            .get_value_names()
            .and_then(|n| n.first())
            .map_or_else(|| key.to_uppercase(), |n| n.to_string());
        match kind {
            TomlKind::Integer => vec![italic(name)],
            _ => vec![roman("\""), italic(name), roman("\"")],
        }
    };
    if is_list(arg) {
        line.push(roman("["));
        line.extend(one);
        line.push(roman(", ...]"));
    } else {
        line.extend(one);
    }
    line
}

fn config_page() -> String {
    let serve = serve_command();
    let keys = plain_keys(&serve);
    let key_names: Vec<&str> = keys.iter().filter_map(|a| a.get_long()).collect();
    let mut roff = Roff::new();
    roff.control("TH", ["multinode.toml", "5", "", &source(), ""]);
    roff.control("nh", []);
    roff.control("ad", ["l"]);
    roff.control("SH", ["NAME"]);
    roff.text([roman(
        "multinode.toml - the configuration file of multinode serve",
    )]);

    roff.control("SH", ["SYNOPSIS"]);
    roff.text([bold("multinode serve --config"), roman(" "), italic("FILE")]);
    roff.control("br", []);
    roff.text([bold("/etc/multinode/"), italic("NAME"), bold(".toml")]);

    roff.control("SH", ["DESCRIPTION"]);
    let paths: Vec<String> = keys
        .iter()
        .filter(|a| {
            matches!(
                a.get_value_hint(),
                ValueHint::FilePath | ValueHint::DirPath | ValueHint::AnyPath
            )
        })
        .filter_map(|a| a.get_long())
        .map(|k| format!("`{k}`"))
        .collect();
    let description = format!(
        "A TOML file with the options of multinode-serve(1) and multinode-check(1), named with \
         `--config FILE`. Every long option of `multinode serve` but `--config` is a key of the \
         same name (`--backoff-max 30s` is `backoff-max = \"30s\"`), plus `command` (the \
         program and its arguments, what follows `--` on the command line) and an `[env]` \
         table. The keys are read from the same definitions as `--help`, and each value goes \
         through its option's own parser, so the file takes exactly what the command line \
         takes.\n\n\
         Values are strings; numbers for numeric options; `true` or `false` for flags; lists \
         for repeatable options (`listen = [\"web=:80\"]`). A duration is a string of a number, \
         decimals allowed, and a unit: `ms`, `s`, `m` or `min`, `h` (`\"500ms\"`, `\"1.5s\"`, \
         `\"2m\"`, `\"1h\"`), or a TOML number of seconds (`10`, `1.5`); at most a year. An empty \
         list is the same as leaving the key out, except for an option with a default: \
         `listen = []` is refused rather than read as the default.\n\n\
         An option given on the command line wins over the file (`-w 8` beats `workers = 4`); \
         `[env]` and `--env` are merged, the command line winning per variable. Relative paths \
         (the program in `command` when it contains a `/`, {}) are relative to the file's \
         directory, not to where multinode is started.\n\n\
         An unknown key or a value of the wrong type is an error naming FILE:LINE:COLUMN (exit \
         2), and a misspelt key gets the nearest one. The file must be a regular file of UTF-8 \
         text, at most {} MiB. multinode does not pick up a multinode.toml from the current \
         directory on its own: it usually starts as root, and the file that decides which \
         program runs as whom is named on purpose.",
        paths.join(", "),
        crate::config_file::MAX_SIZE >> 20,
    );
    paragraphs(&mut roff, &description);

    roff.control("SH", ["KEYS"]);
    roff.text([roman(
        "Default values are given where an option has one; the text of an option without one \
         says what applies.",
    )]);
    roff.control("TP", []);
    roff.text([
        bold("command"),
        roman(" = [\""),
        italic("PROGRAM"),
        roman("\", \""),
        italic("ARG"),
        roman("\", ...]"),
    ]);
    roff.text(inline(
        "The worker program and its arguments (the part after `--` on the command line). A \
         name without `/` is looked up in PATH.",
    ));
    for arg in &keys {
        roff.control("TP", []);
        roff.text(key_header(arg));
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(|h| h.to_string())
            .unwrap_or_default();
        paragraphs(&mut roff, &help);
        let values: Vec<_> = arg
            .get_possible_values()
            .into_iter()
            .filter(|p| !p.is_hide_set())
            .collect();
        if values.iter().any(|p| p.get_help().is_some()) {
            for p in &values {
                roff.control("br", []);
                let mut line = vec![bold(format!("{:?}", p.get_name()))];
                if let Some(h) = p.get_help() {
                    line.push(roman(": "));
                    line.extend(inline(&h.to_string()));
                }
                roff.text(line);
            }
        }
        if let Some(default) = toml_default(arg) {
            roff.control("br", []);
            roff.text([roman("Default: "), bold(default)]);
        }
    }
    roff.control("TP", []);
    roff.text([bold("[env]")]);
    roff.text(inline(
        "A table of environment variables for every worker, one `NAME = \"value\"` line each, \
         on top of the variables multinode sets (multinode-serve(1), ENVIRONMENT); the same as \
         `--env NAME=value`. As a TOML table it comes after the plain keys.",
    ));

    roff.control("SH", ["RELOAD"]);
    let list = |keys: &[&str]| {
        keys.iter()
            .map(|k| format!("`{k}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let at_once: Vec<&str> = key_names
        .iter()
        .copied()
        .filter(|k| !RELOAD_NEEDS_RESTART.contains(k) && !RELOAD_NEXT_GENERATION.contains(k))
        .collect();
    paragraphs(
        &mut roff,
        &format!(
            "On SIGHUP, `multinode reload` or a `--watch` change, multinode reads the file \
             again, at the path given at start and with the rights it had then (after a \
             privilege drop its root guard reads it, so a root-only file holding secrets in \
             `[env]` reloads fine). A file that no longer checks out fails the reload, and the \
             workers keep running as they are.\n\n\
             The new generation of workers gets {}. At once: {}. A restart of multinode is \
             needed for {}; a reload names each of these that changed (event \
             `reload-needs-restart`).",
            list(&RELOAD_NEXT_GENERATION),
            list(&at_once),
            list(&RELOAD_NEEDS_RESTART),
        ),
    );

    roff.control("SH", ["FILES"]);
    for (path, text) in &PACKAGED[..2] {
        roff.control("TP", []);
        roff.text([bold(*path)]);
        roff.text(inline(text));
    }

    roff.control("SH", ["EXAMPLES"]);
    roff.text(inline(
        "A service of four workers on 127.0.0.1:8080 that say when they are ready:",
    ));
    roff.control("PP", []);
    roff.control("nf", []);
    roff.control("RS", ["4"]);
    for line in CONFIG_EXAMPLE.lines() {
        roff.text([roman(line)]);
    }
    roff.control("RE", []);
    roff.control("fi", []);
    roff.control("PP", []);
    roff.text(inline(
        "With the Debian package, as /etc/multinode/hello.toml: `systemctl enable --now \
         multinode@hello.service`, then `multinode status --name hello`.",
    ));

    see_also(&mut roff, "multinode.toml");
    let mut out = Vec::new();
    roff.to_writer(&mut out).expect("rendering into memory");
    String::from_utf8(out).expect("roff is UTF-8")
}

/// The example of multinode.toml(5); a test reads it as a config file.
const CONFIG_EXAMPLE: &str = "\
command = [\"/usr/local/bin/hello\"]
workers = 4
listen = [\"web=127.0.0.1:8080\"]
ready = \"notify\"
grace = \"20s\"

[env]
RUST_LOG = \"info\"";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::Command;
    use crate::config::Config;

    fn readme() -> String {
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap()
    }

    /// The rows of README's first table after `heading`, as (first cell, second cell).
    fn readme_table(heading: &str) -> Vec<(String, String)> {
        let readme = readme();
        let section = readme
            .split(&format!("\n{heading}\n"))
            .nth(1)
            .unwrap_or_else(|| panic!("README has {heading}"));
        section
            .lines()
            .skip_while(|l| !l.starts_with('|'))
            .take_while(|l| l.starts_with('|'))
            .skip(2)
            .map(|l| {
                let cells: Vec<&str> = l.trim_matches('|').split(" | ").map(str::trim).collect();
                (cells[0].to_string(), cells[1..].join(" | "))
            })
            .collect()
    }

    fn owned(rows: &[(&str, &str)]) -> Vec<(String, String)> {
        rows.iter()
            .map(|(a, b)| (a.to_string(), b.to_string()))
            .collect()
    }

    #[test]
    fn readme_tables_are_the_man_pages_tables() {
        assert_eq!(readme_table("## Signals"), owned(&SIGNALS));
        assert_eq!(
            readme_table("## The worker contract"),
            owned(&WORKER_CONTRACT)
        );
    }

    /// Every example command line of the man pages is one the command line takes.
    #[test]
    fn examples_parse() {
        let mut n = 0;
        let top = Cli::command();
        let pages = [Page::Top, Page::Serve, Page::Check, Page::Completions]
            .into_iter()
            .map(|p| (p, "multinode".to_string()))
            .chain(
                ["status", "reload", "scale", "upgrade", "stop"]
                    .map(|s| (Page::Control, format!("multinode-{s}"))),
            );
        for (page, name) in pages {
            let list = examples_of(page, &name);
            assert!(!list.is_empty(), "{name} has examples");
            for (line, _) in list {
                let line = line.strip_prefix("sudo ").unwrap_or(line);
                let line = line.split(" > ").next().unwrap();
                if !line.starts_with("multinode ") {
                    continue;
                }
                top.clone()
                    .try_get_matches_from(line.split_whitespace())
                    .unwrap_or_else(|e| panic!("{line}: {e}"));
                n += 1;
            }
        }
        assert!(n >= 10);
    }

    fn apply(text: &str) -> crate::error::Result<crate::cli::ServeArgs> {
        let mut args = serve_args(&[]);
        crate::config_file::apply_bytes(
            Path::new("/etc/multinode/test.toml"),
            text.as_bytes(),
            &mut args,
            &[],
        )
        .map(|()| args)
    }

    fn serve_args(extra: &[&str]) -> crate::cli::ServeArgs {
        let mut argv = vec!["multinode", "serve"];
        argv.extend(extra);
        argv.extend(["--", "/bin/sh"]);
        let cli = <Cli as clap::Parser>::try_parse_from(&argv)
            .unwrap_or_else(|e| panic!("{argv:?}: {e}"));
        match cli.command {
            Command::Serve(a) => *a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_example_of_the_page_is_a_config_file() {
        let args = apply(CONFIG_EXAMPLE).unwrap();
        assert_eq!(args.workers, Some(4));
        assert_eq!(args.env, vec![("RUST_LOG".into(), "info".into())]);
    }

    /// A value for each key, other than its default, and what else it needs (the options it
    /// requires), as command-line words.
    const SAMPLES: &[(&str, &str, &[&str])] = &[
        ("name", "other", &[]),
        ("control", "/tmp/multinode-docs-test/control.sock", &[]),
        ("workdir", "/", &[]),
        ("workers", "3", &[]),
        ("listen", "127.0.0.1:1", &[]),
        ("backlog", "7", &[]),
        ("user", "root", &[]),
        ("group", "root", &[]),
        ("socket-mode", "600", &[]),
        ("balance", "reuseport", &[]),
        ("route", "round-robin", &[]),
        ("proxy-protocol", "true", &["--route", "ip-hash"]),
        (
            "proxy-from",
            "10.0.0.0/8",
            &["--route", "ip-hash", "--proxy-protocol"],
        ),
        (
            "proxy-timeout",
            "7s",
            &["--route", "ip-hash", "--proxy-protocol"],
        ),
        ("restart", "never", &[]),
        ("backoff-max", "7s", &[]),
        ("min-uptime", "7s", &[]),
        ("max-restarts", "3", &[]),
        ("restart-window", "7s", &["--max-restarts", "3"]),
        ("stop-signal", "INT", &[]),
        ("grace", "7s", &[]),
        ("ready", "notify", &[]),
        ("ready-timeout", "7s", &[]),
        ("reload-parallel", "2", &[]),
        ("watchdog", "7s", &[]),
        ("watchdog-signal", "TERM", &[]),
        ("max-memory", "536870912", &[]),
        ("max-requests", "10", &["--route", "ip-hash"]),
        (
            "max-requests-jitter",
            "3",
            &["--route", "ip-hash", "--max-requests", "10"],
        ),
        ("stop-delay", "7s", &[]),
        ("metrics", "127.0.0.1:1", &[]),
        ("watch", "/tmp", &[]),
        ("watch-ignore", "*.swp", &[]),
        ("watch-debounce", "7s", &[]),
        ("allow-new-privileges", "true", &[]),
        ("cgroup", "off", &[]),
        ("color", "always", &[]),
        ("log-format", "json", &[]),
    ];

    /// Each key written the way the page shows it (quoted or not, a list or not) is read by
    /// the config file's parser, and so is each default the page gives.
    #[test]
    fn the_page_shows_values_the_file_takes() {
        let serve = serve_command();
        let keys = plain_keys(&serve);
        let names: Vec<&str> = keys.iter().filter_map(|a| a.get_long()).collect();
        let sampled: Vec<&str> = SAMPLES.iter().map(|s| s.0).collect();
        assert_eq!(names, sampled, "every key has a sample, in --help's order");
        for (arg, (key, value, _)) in keys.iter().zip(SAMPLES) {
            let one = toml_value(toml_kind(arg), value);
            let written = if is_list(arg) {
                format!("{key} = [{one}]\n")
            } else {
                format!("{key} = {one}\n")
            };
            apply(&written).unwrap_or_else(|e| panic!("{written}: {e}"));
            if let Some(default) = toml_default(arg) {
                let written = format!("{key} = {default}\n");
                apply(&written).unwrap_or_else(|e| panic!("default {written}: {e}"));
            }
        }
    }

    /// What the RELOAD section says of each key is what `Config::reload_plan` does with it.
    #[test]
    fn the_reload_section_is_what_a_reload_does() {
        for (key, value, needs) in SAMPLES {
            let before: Vec<&str> = needs.to_vec();
            let mut after = before.clone();
            let flag = format!("--{key}");
            if *value == "true" {
                after.push(&flag);
            } else {
                after.extend([flag.as_str(), value]);
            }
            let old = Config::from_args(serve_args(&before), vec![]).unwrap();
            let new = Config::from_args(serve_args(&after), vec![]).unwrap();
            let old_runtime = old.runtime.clone();
            let old_next = crate::config::NextGeneration {
                program: old.program.clone(),
                env: old.env.clone(),
                workdir: old.workdir.clone(),
            };
            let plan = old.reload_plan(new);
            let restart = !plan.needs_restart.is_empty();
            let next = plan.next != old_next;
            let now = plan.runtime != old_runtime
                || plan.color != old.color
                || plan.log_format != old.log_format;
            let said = if RELOAD_NEEDS_RESTART.contains(key) {
                "restart"
            } else if RELOAD_NEXT_GENERATION.contains(key) {
                "next"
            } else {
                "now"
            };
            let done = match (restart, next, now) {
                (true, false, false) => "restart",
                (false, true, false) => "next",
                (false, false, true) => "now",
                other => panic!("{key}: {other:?} {:?}", plan.needs_restart),
            };
            assert_eq!(said, done, "{key}");
        }
    }

    #[test]
    fn cargo_toml_packages_what_the_pages_say() {
        let manifest =
            std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml"))
                .unwrap();
        for (path, _) in &PACKAGED[1..] {
            let dest = path.trim_start_matches('/');
            assert!(
                manifest.contains(&format!("\"{dest}\"")),
                "Cargo.toml's [package.metadata.deb] assets install {path}"
            );
        }
    }
}
