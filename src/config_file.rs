//! `--config FILE`: the TOML layer under the command line.
//!
//! The keys are not listed here: each one is the long name of a `multinode serve` option
//! (`backoff-max = "30s"` is `--backoff-max 30s`), looked up in the clap definition of
//! `serve`, so an option added to `cli.rs` is a key without further code. Two keys are more
//! than an option: `command` (the program and its arguments, what follows `--`) and the
//! `[env]` table (`NAME = "value"` lines, the `--env` option's values).
//!
//! A value is turned into the words the command line would have given (`workers = 4` is
//! `--workers=4`, `proxy-protocol = true` is `--proxy-protocol`, `listen = ["a", "b"]` is
//! `--listen=a --listen=b`) and parsed by that option's own clap value parser, so the file
//! and the command line accept the same values with the same messages. The TOML type a key
//! takes follows from the option: `true`/`false` for a flag, a number for a numeric option, a
//! duration as a string or a number of seconds, a list for a repeatable option (an empty list
//! is the same as leaving the key out, except for an option with a default — `listen = []`
//! is refused rather than read as the default), a string otherwise.
//!
//! Options given on the command line win over the file; `[env]` and `--env` merge, the
//! command line winning per variable. Relative paths in the file (`command`'s program when it
//! has a `/`, and the options whose clap `value_hint` says they take a path: `watch`,
//! `workdir`, `control`) are taken relative to the file's directory, so a file works from
//! wherever multinode is started. Every error names the file, line and column.
//!
//! multinode does not pick up a `multinode.toml` from the current directory by itself: it
//! usually starts as root, and a file that decides which program runs as whom should be named
//! on purpose.

use std::any::TypeId;
use std::ffi::OsString;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

use clap::builder::Resettable;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Arg, ArgAction, CommandFactory, FromArgMatches, ValueHint};
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::cli::{Cli, ServeArgs};
use crate::config::Size;
use crate::error::{Error, Result};

/// Options of `serve` that are not keys of the file.
const NOT_KEYS: [&str; 3] = ["config", "help", "version"];

/// The largest config file multinode reads.
pub const MAX_SIZE: usize = 1 << 20;

/// Reads a config file: a regular file of at most [`MAX_SIZE`] bytes (opened without
/// blocking, so a FIFO put in its place cannot hang the reader). The guard reads it the same
/// way for a reload.
pub fn read(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !file.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    let mut bytes = Vec::new();
    file.take(MAX_SIZE as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > MAX_SIZE {
        return Err(std::io::Error::other("larger than 1 MiB"));
    }
    Ok(bytes)
}

/// Reads `path` and fills every option of `args` that was not given on the command line
/// (`explicit` holds the ids of those that were). The file's values are checked even where
/// the command line overrides them, so `multinode check` finds a bad file either way.
pub fn apply(path: &Path, args: &mut ServeArgs, explicit: &[String]) -> Result<()> {
    let bytes = read_for_start(path)?;
    apply_bytes(path, &bytes, args, explicit)
}

/// [`read`] at start: a failure is a usage error naming the file.
pub fn read_for_start(path: &Path) -> Result<Vec<u8>> {
    read(path).map_err(|e| {
        Error::usage(format!(
            "--config {}: {}",
            path.display(),
            crate::config::io_reason(&e)
        ))
    })
}

/// [`apply`] for a file already read (by the guard, for a reload): `path` is where it was
/// read from, for relative paths in it and for error positions.
pub fn apply_bytes(
    path: &Path,
    bytes: &[u8],
    args: &mut ServeArgs,
    explicit: &[String],
) -> Result<()> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Error::usage(format!(
            "--config {}: not UTF-8 text (byte {})",
            path.display(),
            e.valid_up_to()
        ))
    })?;
    let doc = DeTable::parse(text).map_err(|e| {
        let at = e
            .span()
            .map_or_else(String::new, |s| position(text, s.start));
        Error::usage(format!("{}{at}: {}", path.display(), e.message().trim()))
    })?;
    let file = File {
        path,
        text,
        base: path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new(".")),
    };
    let given = |id: &str| explicit.iter().any(|e| e == id);
    let mut options = Options::new();
    // What the command line would have said for the file's options it did not give.
    let mut words: Vec<OsString> = Vec::new();

    let mut entries: Vec<_> = doc.get_ref().iter().collect();
    entries.sort_by_key(|(k, _)| k.span().start);
    for (key, value) in entries {
        let name: &str = key.get_ref();
        if name == "command" {
            let argv = file.command(value)?;
            if !given("command") {
                args.command = argv;
            }
            continue;
        }
        let Some(arg) = options.find(name) else {
            return Err(file.err(key.span(), &unknown_key(name, &options)));
        };
        if name == "env" {
            let from_file = file.env(value, &arg, &mut options)?;
            // The command line's values come last, so they win.
            let cli = std::mem::replace(&mut args.env, from_file);
            args.env.extend(cli);
            continue;
        }
        let said = file.words(name, &arg, value, &mut options)?;
        if !given(arg.get_id().as_str()) {
            words.extend(said);
        }
    }

    let mut matches = options
        .cmd
        .try_get_matches_from_mut(&words)
        .map_err(|e| file.whole(&crate::cli::clap_reason(&e)))?;
    // Only what the file said may reach `args`: not the defaults the parse filled in.
    let filled: Vec<String> = matches
        .ids()
        .filter(|id| matches.value_source(id.as_str()) != Some(ValueSource::CommandLine))
        .map(|id| id.as_str().to_string())
        .collect();
    for id in filled {
        let _ = matches.try_clear_id(&id);
    }
    args.update_from_arg_matches(&matches)
        .map_err(|e| file.whole(&crate::cli::clap_reason(&e)))
}

/// The `serve` command that parses the file's values: without the relations between options
/// (`--proxy-protocol` requires `--route`), which `Config::from_args` checks once the file and
/// the command line are put together.
struct Options {
    cmd: clap::Command,
}

impl Options {
    fn new() -> Self {
        let serve = Cli::command()
            .find_subcommand("serve")
            .expect("cli.rs defines serve")
            .clone();
        let mut cmd = serve.no_binary_name(true).mut_args(|a| {
            a.requires(Resettable::Reset)
                .conflicts_with(Resettable::Reset)
                .overrides_with(Resettable::Reset)
                .required(false)
        });
        cmd.build();
        Options { cmd }
    }

    /// The option whose long name is `key`, if it is a key of the file.
    fn find(&self, key: &str) -> Option<Arg> {
        self.keys().find(|a| a.get_long() == Some(key)).cloned()
    }

    /// Every option that is a key of the file.
    fn keys(&self) -> impl Iterator<Item = &Arg> {
        self.cmd
            .get_arguments()
            .filter(|a| a.get_long().is_some_and(|l| !NOT_KEYS.contains(&l)))
    }

    /// Parses one value as the command line would, with the option's own value parser.
    fn check(&mut self, arg: &Arg, word: &OsString) -> std::result::Result<(), String> {
        self.cmd
            .try_get_matches_from_mut([word])
            .map(drop)
            .map_err(|e| clap_reason_for(&e, arg))
    }
}

/// What TOML type an option's value has in the file, from its clap definition.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// A flag: `true` or `false`; the field is the flag's action.
    Flag(bool),
    /// `-v -v -v`: a count.
    Count,
    Integer,
    Float,
    /// A string such as `"10s"`, or a number of seconds.
    Duration,
    /// A string such as `"512M"`, or a number of bytes.
    Size,
    Bool,
    Text,
}

impl Kind {
    fn of(arg: &Arg) -> Kind {
        match arg.get_action() {
            ArgAction::SetTrue => return Kind::Flag(true),
            ArgAction::SetFalse => return Kind::Flag(false),
            ArgAction::Count => return Kind::Count,
            _ => {}
        }
        let t = arg.get_value_parser().type_id();
        let any = |ids: &[TypeId]| ids.iter().any(|id| t == *id);
        if any(&[
            TypeId::of::<u8>(),
            TypeId::of::<u16>(),
            TypeId::of::<u32>(),
            TypeId::of::<u64>(),
            TypeId::of::<usize>(),
            TypeId::of::<i8>(),
            TypeId::of::<i16>(),
            TypeId::of::<i32>(),
            TypeId::of::<i64>(),
            TypeId::of::<isize>(),
        ]) {
            Kind::Integer
        } else if any(&[TypeId::of::<f32>(), TypeId::of::<f64>()]) {
            Kind::Float
        } else if any(&[TypeId::of::<Duration>()]) {
            Kind::Duration
        } else if any(&[TypeId::of::<Size>()]) {
            Kind::Size
        } else if any(&[TypeId::of::<bool>()]) {
            Kind::Bool
        } else {
            Kind::Text
        }
    }

    /// What a value of this kind is, for a message: (one, several).
    fn expected(self) -> (&'static str, &'static str) {
        match self {
            Kind::Flag(_) | Kind::Bool => ("true or false", "true or false"),
            Kind::Count | Kind::Integer | Kind::Float => ("a number", "numbers"),
            Kind::Duration => (
                "a duration such as \"10s\" or a number of seconds",
                "durations such as \"10s\" or numbers of seconds",
            ),
            Kind::Size => (
                "a size such as \"512M\" or a number of bytes",
                "sizes such as \"512M\" or numbers of bytes",
            ),
            Kind::Text => ("a string", "strings"),
        }
    }

    /// The command line's text for a TOML value, if the value has the right type.
    fn text(self, v: &DeValue) -> std::result::Result<String, String> {
        let integer = |i: &toml::de::DeInteger| i64::from_str_radix(i.as_str(), i.radix()).ok();
        let float = |f: &toml::de::DeFloat| f.as_str().parse::<f64>().ok();
        let ok = match (self, v) {
            (Kind::Text | Kind::Duration | Kind::Size, DeValue::String(s)) => Some(s.to_string()),
            (Kind::Integer | Kind::Float | Kind::Duration | Kind::Size, DeValue::Integer(i)) => {
                integer(i).map(|n| n.to_string())
            }
            (Kind::Float | Kind::Duration, DeValue::Float(f)) => float(f).map(|f| f.to_string()),
            (Kind::Bool, DeValue::Boolean(b)) => Some(b.to_string()),
            (Kind::Integer, DeValue::Float(_)) => return Err("expected a whole number".into()),
            _ => None,
        };
        ok.ok_or_else(|| format!("expected {}", self.expected().0))
    }
}

/// The file being read, for messages and relative paths.
struct File<'a> {
    path: &'a Path,
    text: &'a str,
    base: &'a Path,
}

impl File<'_> {
    fn err(&self, span: Range<usize>, msg: &str) -> Error {
        Error::usage(format!(
            "{}{}: {msg}",
            self.path.display(),
            position(self.text, span.start)
        ))
    }

    /// An error about the file as a whole (the values were checked one by one already).
    fn whole(&self, msg: &str) -> Error {
        Error::usage(format!("{}: {msg}", self.path.display()))
    }

    /// `command = ["./app", "-v"]`: the worker program and its arguments.
    fn command(&self, value: &Spanned<DeValue>) -> Result<Vec<OsString>> {
        let expected = "command: expected a list of strings (the program and its arguments)";
        let Some(list) = value.get_ref().as_array() else {
            return Err(self.err(value.span(), expected));
        };
        let mut argv = Vec::new();
        for item in list {
            let Some(s) = item.get_ref().as_str() else {
                return Err(self.err(item.span(), expected));
            };
            argv.push(OsString::from(s));
        }
        let Some(program) = list.iter().next().and_then(|p| p.get_ref().as_str()) else {
            return Err(self.err(
                value.span(),
                "command is empty: give the program and its arguments",
            ));
        };
        if program.contains('/') && Path::new(program).is_relative() {
            argv[0] = self.base.join(program).into_os_string();
        }
        Ok(argv)
    }

    /// The `[env]` table, each variable checked as `--env NAME=VALUE` would be.
    fn env(
        &self,
        value: &Spanned<DeValue>,
        arg: &Arg,
        options: &mut Options,
    ) -> Result<Vec<(String, String)>> {
        let Some(table) = value.get_ref().as_table() else {
            return Err(self.err(
                value.span(),
                "env: expected a table: an [env] line, then NAME = \"value\" lines",
            ));
        };
        let mut vars: Vec<_> = table.iter().collect();
        vars.sort_by_key(|(k, _)| k.span().start);
        let mut env = Vec::new();
        for (k, v) in vars {
            let name: &str = k.get_ref();
            if name.is_empty() || name.contains('=') {
                return Err(self.err(
                    k.span(),
                    &format!("'{name}' is not an environment variable name"),
                ));
            }
            let Some(s) = v.get_ref().as_str() else {
                return Err(self.err(v.span(), &format!("env.{name}: expected a string")));
            };
            let mut word = OsString::from("--env=");
            word.push(format!("{name}={s}"));
            options
                .check(arg, &word)
                .map_err(|m| self.err(v.span(), &format!("env.{name}: {m}")))?;
            env.push((name.to_string(), s.to_string()));
        }
        Ok(env)
    }

    /// The command-line words for `key = value`, each value checked by the option's parser.
    fn words(
        &self,
        key: &str,
        arg: &Arg,
        value: &Spanned<DeValue>,
        options: &mut Options,
    ) -> Result<Vec<OsString>> {
        let kind = Kind::of(arg);
        let flag = OsString::from(format!("--{key}"));
        match (kind, value.get_ref()) {
            (Kind::Flag(sets), DeValue::Boolean(b)) => {
                return Ok(if *b == sets { vec![flag] } else { vec![] });
            }
            (Kind::Count, DeValue::Integer(i)) => {
                let n = i64::from_str_radix(i.as_str(), i.radix())
                    .ok()
                    .filter(|n| (0..=255).contains(n))
                    .ok_or_else(|| self.err(value.span(), &format!("{key}: expected 0 to 255")))?;
                return Ok(vec![flag; n as usize]);
            }
            (Kind::Flag(_) | Kind::Count, _) => {
                let msg = format!("{key}: expected {}", kind.expected().0);
                return Err(self.err(value.span(), &msg));
            }
            _ => {}
        }
        let items: Vec<&Spanned<DeValue>> = if matches!(arg.get_action(), ArgAction::Append) {
            let Some(list) = value.get_ref().as_array() else {
                let msg = format!("{key}: expected a list of {}", kind.expected().1);
                return Err(self.err(value.span(), &msg));
            };
            if list.is_empty() {
                if let Some(default) = arg.get_default_values().first() {
                    // Not "the default": an empty list reads as "none", which is no setting.
                    let msg = format!(
                        "{key}: the list is empty; give at least one value, or leave the key out \
                         for the default {}",
                        default.to_string_lossy()
                    );
                    return Err(self.err(value.span(), &msg));
                }
            }
            list.iter().collect()
        } else {
            vec![value]
        };
        let path = matches!(
            arg.get_value_hint(),
            ValueHint::FilePath | ValueHint::DirPath | ValueHint::AnyPath
        );
        let mut words = Vec::new();
        for item in items {
            let text = kind.text(item.get_ref()).map_err(|m| {
                let msg = if item.span() == value.span() {
                    format!("{key}: {m}")
                } else {
                    format!("{key}: expected a list of {}", kind.expected().1)
                };
                self.err(item.span(), &msg)
            })?;
            let mut word = OsString::from(format!("--{key}="));
            if path && Path::new(&text).is_relative() {
                word.push(self.base.join(&text));
            } else {
                word.push(&text);
            }
            options
                .check(arg, &word)
                .map_err(|m| self.err(item.span(), &format!("{key}: {m}")))?;
            words.push(word);
        }
        Ok(words)
    }
}

/// The message for a key that is no option, with the nearest one when it is close.
fn unknown_key(key: &str, options: &Options) -> String {
    if NOT_KEYS.contains(&key) {
        return format!("`{key}`: an option of the command line only, not a key of the file");
    }
    let nearest = options
        .keys()
        .filter_map(Arg::get_long)
        .chain(["command"])
        .map(|k| (edit_distance(key, k), k))
        .min();
    match nearest {
        Some((d, k)) if d <= 2 || d * 3 <= key.chars().count() => {
            format!("`{key}`: unknown key; did you mean `{k}`?")
        }
        _ => format!(
            "`{key}`: unknown key; the keys are the long options of `multinode serve --help`, \
             plus `command` and `[env]`"
        ),
    }
}

/// Levenshtein distance: the fewest characters to insert, delete or replace.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let next = (row[j + 1] + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = row[j + 1];
            row[j + 1] = next;
        }
    }
    row[b.len()]
}

/// clap's reason for rejecting a value, without naming the option the way the command line
/// does (the file's message names the key).
fn clap_reason_for(e: &clap::Error, arg: &Arg) -> String {
    if e.kind() == ErrorKind::ValueValidation {
        if let Some(source) = std::error::Error::source(e) {
            return source.to_string();
        }
    }
    crate::cli::clap_reason(e).replace(&format!(" for '{arg}'"), "")
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
    use std::collections::BTreeMap;
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

    /// The error `text` as a file gives, with the command line empty.
    fn error(text: &str) -> String {
        let (dir, p) = write(text);
        let e = apply(&p, &mut args(&[]), &[]).unwrap_err().to_string();
        std::fs::remove_dir_all(dir).unwrap();
        e
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
        let e = error("workers = 2\nwokers = 3\n");
        assert!(e.contains("multinode.toml:2:1"), "{e}");
        assert!(e.contains("wokers"), "{e}");

        let e = error("workers = 2\n\ngrace = \"soon\"\n");
        assert!(e.contains("multinode.toml:3:9"), "{e}");
        assert!(e.contains("grace"), "{e}");

        let e = error("workers = \"four\"\n");
        assert!(e.contains("multinode.toml:1:11"), "{e}");

        let (dir, p) = write("grace = 5\nbackoff-max = 1.5\n");
        let mut a = args(&[]);
        apply(&p, &mut a, &[]).unwrap();
        assert_eq!(a.grace, std::time::Duration::from_secs(5));
        assert_eq!(a.backoff_max, std::time::Duration::from_millis(1500));
        std::fs::remove_dir_all(dir).unwrap();

        // A size is a string with a unit, as on the command line, or a number of bytes.
        for (text, bytes) in [("\"512M\"", 512 << 20), ("1048576", 1 << 20)] {
            let (dir, p) = write(&format!("max-memory = {text}\n"));
            let mut a = args(&[]);
            apply(&p, &mut a, &[]).unwrap();
            assert_eq!(a.max_memory, Some(crate::config::Size(bytes)), "{text}");
            std::fs::remove_dir_all(dir).unwrap();
        }

        let e = error("route = \"sticky\"\n");
        assert!(
            e.contains("multinode.toml:1:9") && e.contains("sticky"),
            "{e}"
        );
    }

    #[test]
    fn a_wrong_type_is_named_in_the_users_terms() {
        for (text, want) in [
            ("workers = \"four\"", ":1:11: workers: expected a number"),
            ("workers = 1.5", ":1:11: workers: expected a whole number"),
            (
                "proxy-protocol = \"yes\"",
                ":1:18: proxy-protocol: expected true or false",
            ),
            (
                "listen = \"127.0.0.1:80\"",
                ":1:10: listen: expected a list of strings",
            ),
            (
                "listen = [\"127.0.0.1:80\", 8080]",
                ":1:27: listen: expected a list of strings",
            ),
            (
                "grace = true",
                ":1:9: grace: expected a duration such as \"10s\" or a number of seconds",
            ),
            ("name = 5", ":1:8: name: expected a string"),
            (
                "max-memory = true",
                ":1:14: max-memory: expected a size such as \"512M\" or a number of bytes",
            ),
            ("socket-mode = 660", ":1:15: socket-mode: expected a string"),
            (
                "command = \"./app\"",
                ":1:11: command: expected a list of strings",
            ),
            ("env = [\"A=B\"]", ":1:7: env: expected a table"),
            ("[env]\nA = 1", ":2:5: env.A: expected a string"),
        ] {
            let e = error(&format!("{text}\n"));
            assert!(e.contains(want), "{text}: {e}");
            assert!(
                !e.contains("u32") && !e.contains("invalid type"),
                "{text}: {e}"
            );
        }
    }

    #[test]
    fn values_get_the_command_lines_messages() {
        // The option's own value parser speaks, as it does for the command line.
        let e = error("workers = -1\n");
        assert!(
            e.contains(":1:11: workers: -1 is not in 0..=4294967295"),
            "{e}"
        );
        let e = error("listen = [\"127.0.0.1:80\", \"nowhere\"]\n");
        assert!(e.contains(":1:27: listen: "), "{e}");
        let cli = crate::listen::parse_listen("nowhere").unwrap_err();
        assert!(e.ends_with(&cli), "{e} / {cli}");
        let e = error("stop-signal = \"NOPE\"\n");
        assert!(
            e.ends_with(&crate::config::parse_signal("NOPE").unwrap_err()),
            "{e}"
        );
        let e = error("restart = \"sometimes\"\n");
        assert!(e.contains("restart: invalid value 'sometimes'"), "{e}");
        assert!(e.contains("always, on-failure, never"), "{e}");
    }

    #[test]
    fn an_unknown_key_suggests_the_nearest() {
        let e = error("workers = 2\nwokers = 3\n");
        assert!(
            e.ends_with(":2:1: `wokers`: unknown key; did you mean `workers`?"),
            "{e}"
        );
        let e = error("backoff_max = \"1s\"\n");
        assert!(e.ends_with("did you mean `backoff-max`?"), "{e}");
        let e = error("comand = [\"x\"]\n");
        assert!(e.ends_with("did you mean `command`?"), "{e}");
        let e = error("frobnicate = 1\n");
        assert!(e.contains("`frobnicate`: unknown key; the keys are"), "{e}");
        let e = error("config = \"other.toml\"\n");
        assert!(
            e.contains("`config`: an option of the command line only"),
            "{e}"
        );
    }

    #[test]
    fn the_command_line_wins_but_the_file_is_still_checked() {
        let (dir, p) = write("workers = 3\nlisten = [\"a=127.0.0.1:1\"]\nproxy-protocol = true\n");
        let mut a = args(&["-w", "5", "--proxy-protocol", "--route", "ip-hash"]);
        apply(
            &p,
            &mut a,
            &["workers".into(), "proxy_protocol".into(), "route".into()],
        )
        .unwrap();
        assert_eq!(a.workers, Some(5));
        assert!(a.proxy_protocol);
        assert_eq!(a.listen.len(), 1);
        assert_eq!(a.listen[0].name, "a");
        std::fs::write(&p, "workers = \"many\"\n").unwrap();
        let mut a = args(&["-w", "5"]);
        assert!(apply(&p, &mut a, &["workers".into()]).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn paths_are_relative_to_the_file() {
        let (dir, p) = write(
            "workdir = \"wd\"\ncontrol = \"/run/x.sock\"\nwatch = [\"src\", \"/etc/app\"]\nwatch-ignore = [\"*.swp\"]\n",
        );
        let mut a = args(&[]);
        apply(&p, &mut a, &[]).unwrap();
        assert_eq!(a.workdir, Some(dir.join("wd")));
        assert_eq!(a.control, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(a.watch, vec![dir.join("src"), PathBuf::from("/etc/app")]);
        assert_eq!(a.watch_ignore, vec!["*.swp".to_string()]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// Every long option of `serve`, taken from clap so that an option added later is covered
    /// too: a file giving it a valid value is accepted and the value reaches `ServeArgs`.
    #[test]
    fn every_serve_option_is_a_key() {
        let options = Options::new();
        let mut checker = Options::new();
        let mut seen = 0;
        for arg in options.keys() {
            let key = arg.get_long().unwrap();
            let kind = Kind::of(arg);
            let default: Vec<String> = arg
                .get_default_values()
                .iter()
                .map(|v| v.to_string_lossy().into_owned())
                .collect();
            let sample = if key == "env" {
                "[env]\nSAMPLE = \"7\"".to_string()
            } else {
                let value = match kind {
                    Kind::Flag(sets) => sets.to_string(),
                    Kind::Count => "2".into(),
                    Kind::Integer => "7".into(),
                    Kind::Float => "7.5".into(),
                    Kind::Duration => "7.5".into(),
                    Kind::Size => "\"512M\"".into(),
                    Kind::Bool => (default != ["true"]).to_string(),
                    Kind::Text => {
                        // The first of these the option's own parser takes, that is not its
                        // default: a new option whose values none of them fits fails here.
                        let possible: Vec<String> = arg
                            .get_possible_values()
                            .iter()
                            .map(|p| p.get_name().to_string())
                            .collect();
                        let candidates = possible.iter().map(String::as_str).chain([
                            "sample",
                            "USR1",
                            "notify",
                            "640",
                            "sample=127.0.0.1:7",
                            "192.0.2.0/24",
                        ]);
                        let found =
                            candidates
                                .filter(|c| !default.iter().any(|d| d == c))
                                .find(|c| {
                                    checker
                                        .check(arg, &OsString::from(format!("--{key}={c}")))
                                        .is_ok()
                                });
                        let Some(c) = found else {
                            panic!("no sample value for --{key}: add one to this test")
                        };
                        format!("\"{c}\"")
                    }
                };
                if matches!(arg.get_action(), ArgAction::Append) {
                    format!("{key} = [{value}]")
                } else {
                    format!("{key} = {value}")
                }
            };
            let (dir, p) = write(&format!("{sample}\n"));
            let mut a = args(&[]);
            let before = format!("{a:?}");
            let r = apply(&p, &mut a, &[]);
            assert!(r.is_ok(), "{sample}: {}", r.unwrap_err());
            assert_ne!(before, format!("{a:?}"), "{sample} did not reach ServeArgs");
            // The command line still wins.
            let mut a = args(&[]);
            apply(&p, &mut a, &[arg.get_id().to_string()]).unwrap();
            if key != "env" {
                assert_eq!(before, format!("{a:?}"), "{sample} beat the command line");
            }
            std::fs::remove_dir_all(dir).unwrap();
            seen += 1;
        }
        assert!(seen > 20, "only {seen} options");
    }
}
