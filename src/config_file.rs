//! `--config FILE`: the TOML layer under the command line.
//!
//! Every `serve` option has a key of the same name (`backoff-max = "30s"`), plus `command`
//! (the program and its arguments), `workdir` and an `[env]` table. Options given on the
//! command line win over the file; `[env]` and `--env` merge, the command line winning per
//! variable. Relative paths in the file (`command`'s program when it has a `/`, `watch`,
//! `workdir`, `control`) are taken relative to the file's directory, so a file works from
//! wherever multinode is started. Unknown keys and values of the wrong type are errors that
//! name the file, line and column.
//!
//! multinode does not pick up a `multinode.toml` from the current directory by itself: it
//! usually starts as root, and a file that decides which program runs as whom should be named
//! on purpose.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use crate::cli::{
    Balance, ColorChoice, LogFormat, RestartPolicy, RoutePolicy, ServeArgs, parse_mode,
};
use crate::config::{parse_duration, parse_ready, parse_signal};
use crate::error::{Error, Result};
use crate::socket::parse_listen;

/// A duration in the file: `"250ms"`, `"2m"`, or a number of seconds (`10`, `1.5`).
#[derive(Debug, Deserialize)]
#[serde(
    untagged,
    expecting = "a duration such as \"500ms\", \"10s\", \"2m\" or a number of seconds"
)]
enum Dur {
    Secs(u64),
    Frac(f64),
    Text(String),
}

impl Dur {
    fn text(&self) -> String {
        match self {
            Dur::Secs(n) => n.to_string(),
            Dur::Frac(f) => f.to_string(),
            Dur::Text(s) => s.clone(),
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct FileConfig {
    command: Option<Spanned<Vec<String>>>,
    name: Option<Spanned<String>>,
    control: Option<Spanned<String>>,
    workdir: Option<Spanned<String>>,
    env: Option<BTreeMap<String, Spanned<String>>>,
    workers: Option<Spanned<u32>>,
    listen: Option<Spanned<Vec<String>>>,
    backlog: Option<Spanned<u32>>,
    user: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    socket_mode: Option<Spanned<String>>,
    balance: Option<Spanned<Balance>>,
    route: Option<Spanned<RoutePolicy>>,
    proxy_protocol: Option<Spanned<bool>>,
    restart: Option<Spanned<RestartPolicy>>,
    backoff_max: Option<Spanned<Dur>>,
    min_uptime: Option<Spanned<Dur>>,
    max_restarts: Option<Spanned<u32>>,
    restart_window: Option<Spanned<Dur>>,
    stop_signal: Option<Spanned<String>>,
    grace: Option<Spanned<Dur>>,
    ready: Option<Spanned<String>>,
    ready_timeout: Option<Spanned<Dur>>,
    reload_parallel: Option<Spanned<u32>>,
    watch: Option<Spanned<Vec<String>>>,
    watch_ignore: Option<Spanned<Vec<String>>>,
    watch_debounce: Option<Spanned<Dur>>,
    color: Option<Spanned<ColorChoice>>,
    log_format: Option<Spanned<LogFormat>>,
}

/// Reads `path` and fills every option of `args` that was not given on the command line
/// (`explicit` holds the ids of those that were).
pub fn apply(path: &Path, args: &mut ServeArgs, explicit: &[String]) -> Result<()> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::usage(format!(
            "--config {}: {}",
            path.display(),
            crate::config::io_reason(&e)
        ))
    })?;
    let file: FileConfig = toml::from_str(&text).map_err(|e| {
        let at = e
            .span()
            .map_or_else(String::new, |s| position(&text, s.start));
        Error::usage(format!("{}{at}: {}", path.display(), e.message().trim()))
    })?;
    let base = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let l = Layer {
        path,
        text: &text,
        explicit,
    };

    if let Some(cmd) = &file.command {
        if !l.given("command") {
            let v = cmd.get_ref();
            if v.is_empty() {
                return Err(l.err(
                    cmd.span(),
                    "command is empty: give the program and its arguments",
                ));
            }
            let mut argv: Vec<OsString> = v.iter().map(OsString::from).collect();
            if v[0].contains('/') && Path::new(&v[0]).is_relative() {
                argv[0] = base.join(&v[0]).into_os_string();
            }
            args.command = argv;
        }
    }
    set(&l, "name", &file.name, &mut args.name, |s| {
        Ok(Some(s.to_string()))
    })?;
    set(&l, "control", &file.control, &mut args.control, |s| {
        Ok(Some(base.join(s)))
    })?;
    set(&l, "workdir", &file.workdir, &mut args.workdir, |s| {
        Ok(Some(base.join(s)))
    })?;
    if let Some(env) = &file.env {
        let cli: Vec<(String, String)> = std::mem::take(&mut args.env);
        for (k, v) in env {
            if k.is_empty() || k.contains('=') {
                return Err(l.err(
                    v.span(),
                    &format!("'{k}' is not an environment variable name"),
                ));
            }
            args.env.push((k.clone(), v.get_ref().clone()));
        }
        // The command line's values come last, so they win.
        args.env.extend(cli);
    }
    set_copy(&l, "workers", &file.workers, &mut args.workers, Some)?;
    set(
        &l,
        "listen",
        &file.listen,
        &mut args.listen,
        |v: &Vec<String>| v.iter().map(|s| parse_listen(s)).collect(),
    )?;
    set_copy(&l, "backlog", &file.backlog, &mut args.backlog, |v| v)?;
    set(&l, "user", &file.user, &mut args.user, |s| {
        Ok(Some(s.to_string()))
    })?;
    set(&l, "group", &file.group, &mut args.group, |s| {
        Ok(Some(s.to_string()))
    })?;
    set(
        &l,
        "socket_mode",
        &file.socket_mode,
        &mut args.socket_mode,
        |s| parse_mode(s),
    )?;
    set_copy(&l, "balance", &file.balance, &mut args.balance, |v| v)?;
    set_copy(&l, "route", &file.route, &mut args.route, Some)?;
    set_copy(
        &l,
        "proxy_protocol",
        &file.proxy_protocol,
        &mut args.proxy_protocol,
        |v| v,
    )?;
    set_copy(&l, "restart", &file.restart, &mut args.restart, |v| v)?;
    set(
        &l,
        "backoff_max",
        &file.backoff_max,
        &mut args.backoff_max,
        |d| parse_duration(&d.text()),
    )?;
    set(
        &l,
        "min_uptime",
        &file.min_uptime,
        &mut args.min_uptime,
        |d| parse_duration(&d.text()),
    )?;
    set_copy(
        &l,
        "max_restarts",
        &file.max_restarts,
        &mut args.max_restarts,
        Some,
    )?;
    set(
        &l,
        "restart_window",
        &file.restart_window,
        &mut args.restart_window,
        |d| parse_duration(&d.text()),
    )?;
    set(
        &l,
        "stop_signal",
        &file.stop_signal,
        &mut args.stop_signal,
        |s| parse_signal(s),
    )?;
    set(&l, "grace", &file.grace, &mut args.grace, |d| {
        parse_duration(&d.text())
    })?;
    set(&l, "ready", &file.ready, &mut args.ready, |s| {
        parse_ready(s)
    })?;
    set(
        &l,
        "ready_timeout",
        &file.ready_timeout,
        &mut args.ready_timeout,
        |d| parse_duration(&d.text()),
    )?;
    set_copy(
        &l,
        "reload_parallel",
        &file.reload_parallel,
        &mut args.reload_parallel,
        |v| v,
    )?;
    set(
        &l,
        "watch",
        &file.watch,
        &mut args.watch,
        |v: &Vec<String>| Ok(v.iter().map(|p| base.join(p)).collect()),
    )?;
    set(
        &l,
        "watch_ignore",
        &file.watch_ignore,
        &mut args.watch_ignore,
        |v: &Vec<String>| Ok(v.clone()),
    )?;
    set(
        &l,
        "watch_debounce",
        &file.watch_debounce,
        &mut args.watch_debounce,
        |d| parse_duration(&d.text()),
    )?;
    set_copy(&l, "color", &file.color, &mut args.color, |v| v)?;
    set_copy(
        &l,
        "log_format",
        &file.log_format,
        &mut args.log_format,
        |v| v,
    )?;
    Ok(())
}

struct Layer<'a> {
    path: &'a Path,
    text: &'a str,
    explicit: &'a [String],
}

impl Layer<'_> {
    fn given(&self, id: &str) -> bool {
        self.explicit.iter().any(|e| e == id)
    }

    fn err(&self, span: std::ops::Range<usize>, msg: &str) -> Error {
        Error::usage(format!(
            "{}{}: {msg}",
            self.path.display(),
            position(self.text, span.start)
        ))
    }
}

/// Takes the file's value for `id` unless the command line gave one, parsing it with `parse`.
fn set<S, T>(
    l: &Layer,
    id: &str,
    value: &Option<Spanned<S>>,
    slot: &mut T,
    parse: impl FnOnce(&S) -> std::result::Result<T, String>,
) -> Result<()> {
    let Some(v) = value else { return Ok(()) };
    if l.given(id) {
        return Ok(());
    }
    *slot = parse(v.get_ref())
        .map_err(|msg| l.err(v.span(), &format!("{}: {msg}", id.replace('_', "-"))))?;
    Ok(())
}

/// [`set`] for values the TOML types already checked.
fn set_copy<S: Clone, T>(
    l: &Layer,
    id: &str,
    value: &Option<Spanned<S>>,
    slot: &mut T,
    f: impl FnOnce(S) -> T,
) -> Result<()> {
    set(l, id, value, slot, |v| Ok(f(v.clone())))
}

/// `:line:column` (1-based) of a byte offset.
fn position(text: &str, offset: usize) -> String {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!(":{line}:{col}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::path::PathBuf;

    fn args(cli: &[&str]) -> ServeArgs {
        let mut argv = vec!["multinode", "serve"];
        argv.extend_from_slice(cli);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Serve(a) => *a,
            _ => unreachable!(),
        }
    }

    fn write(text: &str) -> (PathBuf, PathBuf) {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("mn-cfg-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("multinode.toml");
        std::fs::write(&p, text).unwrap();
        (dir, p)
    }

    #[test]
    fn file_fills_what_the_command_line_did_not_give() {
        let (dir, p) = write(
            "workers = 3\ngrace = \"2s\"\ncommand = [\"./app\", \"-v\"]\n[env]\nA = \"file\"\nB = \"file\"\n",
        );
        let mut a = args(&["--grace", "5s", "--env", "B=cli"]);
        apply(&p, &mut a, &["grace".into(), "env".into()]).unwrap();
        assert_eq!(a.workers, Some(3));
        assert_eq!(a.grace, std::time::Duration::from_secs(5));
        assert_eq!(
            a.command,
            vec![OsString::from(dir.join("./app")), OsString::from("-v")]
        );
        let env: BTreeMap<_, _> = a.env.into_iter().collect();
        assert_eq!(env["A"], "file");
        assert_eq!(env["B"], "cli");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let (dir, p) = write("workers = 2\nwokers = 3\n");
        let e = apply(&p, &mut args(&[]), &[]).unwrap_err().to_string();
        assert!(e.contains("multinode.toml:2:1"), "{e}");
        assert!(e.contains("wokers"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();

        let (dir, p) = write("workers = 2\n\ngrace = \"soon\"\n");
        let e = apply(&p, &mut args(&[]), &[]).unwrap_err().to_string();
        assert!(e.contains("multinode.toml:3:9"), "{e}");
        assert!(e.contains("grace"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();

        let (dir, p) = write("workers = \"four\"\n");
        let e = apply(&p, &mut args(&[]), &[]).unwrap_err().to_string();
        assert!(e.contains("multinode.toml:1:11"), "{e}");
        std::fs::remove_dir_all(dir).unwrap();

        let (dir, p) = write("grace = 5\nbackoff-max = 1.5\n");
        let mut a = args(&[]);
        apply(&p, &mut a, &[]).unwrap();
        assert_eq!(a.grace, std::time::Duration::from_secs(5));
        assert_eq!(a.backoff_max, std::time::Duration::from_millis(1500));
        std::fs::remove_dir_all(dir).unwrap();

        let (dir, p) = write("route = \"sticky\"\n");
        let e = apply(&p, &mut args(&[]), &[]).unwrap_err().to_string();
        assert!(
            e.contains("multinode.toml:1:9") && e.contains("sticky"),
            "{e}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
