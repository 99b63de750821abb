//! The validated configuration of one `multinode serve`, built from the command line and, under
//! it, the `--config` file (see config_file.rs).
//!
//! Value parsers for durations and signals live here too, so that clap reports a bad value
//! with the flag's name, and the checks that need more than one flag (or the file system) run
//! in [`Config::from_args`] before anything is bound or started.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::ValueEnum;
use nix::sys::signal::Signal;

use crate::cli::{Balance, CgroupMode, LogFormat, RestartPolicy, RoutePolicy, ServeArgs};
use crate::error::{Error, Result};
use crate::listen::ListenSpec;

#[derive(Debug)]
pub struct Config {
    /// The service's name (control socket, status).
    pub name: String,
    /// `--control`, when given.
    pub control: Option<PathBuf>,
    pub workdir: Option<PathBuf>,
    /// Extra environment for the workers.
    pub env: Vec<(String, String)>,
    pub listen: Vec<ListenSpec>,
    pub backlog: u32,
    pub user: Option<String>,
    pub group: Option<String>,
    pub socket_mode: u32,
    pub program: Program,
    pub mode: Mode,
    pub proxy_protocol: bool,
    /// `--proxy-from`: where PROXY headers are believed from (empty: anywhere).
    pub proxy_from: Vec<crate::proxy::Cidr>,
    /// `--proxy-timeout`: how long a PROXY header may take.
    pub proxy_timeout: Duration,
    pub watch: Vec<PathBuf>,
    pub watch_ignore: Vec<String>,
    pub color: bool,
    pub log_format: LogFormat,
    /// `--allow-new-privileges`: workers may gain privileges through exec.
    pub allow_new_privileges: bool,
    /// `--cgroup`: contain each worker in a cgroup of its own.
    pub cgroup: CgroupMode,
    /// `--metrics`: where /metrics and /healthz are served.
    pub metrics: Option<ListenSpec>,
    /// What the supervisor's decisions follow, all of which a reload may change.
    pub runtime: Runtime,
    /// What the config was built from, to build it again on a reload.
    pub source: Source,
}

/// The settings the supervisor core decides with. A reload applies every one of them at once.
#[derive(Debug, Clone, PartialEq)]
pub struct Runtime {
    pub workers: u32,
    pub restart: RestartPolicy,
    pub backoff_max: Duration,
    pub min_uptime: Duration,
    /// `--max-restarts N` within `--restart-window`.
    pub max_restarts: Option<(u32, Duration)>,
    pub stop_signal: Signal,
    pub grace: Duration,
    pub ready: ReadyMode,
    pub ready_timeout: Duration,
    pub reload_parallel: u32,
    pub watch_debounce: Duration,
    /// `--watchdog`: how often a ready worker must send WATCHDOG=1.
    pub watchdog: Option<Duration>,
    pub watchdog_signal: Signal,
    /// `--max-memory`, bytes.
    pub max_memory: Option<u64>,
    /// `--max-requests N` and its jitter.
    pub max_requests: Option<(u64, u64)>,
    /// `--stop-delay`: how long a stop reports unhealthy before the drain starts.
    pub stop_delay: Duration,
}

/// What a reload does with a configuration read again: each option of [`Config`] is in
/// exactly one of these (see [`Config::reload_plan`], which the compiler keeps exhaustive).
#[derive(Debug)]
pub struct ReloadPlan {
    /// Takes effect at once (worker count, timings, restart policy).
    pub runtime: Runtime,
    /// What the new generation of workers runs.
    pub next: NextGeneration,
    /// Output settings, applied at once.
    pub log_format: LogFormat,
    pub color: bool,
    /// Options that changed but only a restart of multinode applies, by their key names.
    pub needs_restart: Vec<&'static str>,
}

/// The program a generation of workers runs, with its environment and working directory.
#[derive(Debug, Clone, PartialEq)]
pub struct NextGeneration {
    pub program: Program,
    pub env: Vec<(String, String)>,
    pub workdir: Option<PathBuf>,
}

/// The command line as given and which options it set, plus the config file named.
#[derive(Debug, Clone)]
pub struct Source {
    pub args: ServeArgs,
    pub explicit: Vec<String>,
}

/// How connections reach the workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Shared,
    /// One SO_REUSEPORT socket per slot; `ip_hash`: the kernel picks the slot by the client's
    /// address (`--balance reuseport --route ip-hash`, socket/affinity.rs).
    ReusePort {
        ip_hash: bool,
    },
    Route(RoutePolicy),
}

impl Mode {
    /// Whether each slot has sockets of its own (`--balance reuseport`).
    pub fn reuseport(self) -> bool {
        matches!(self, Mode::ReusePort { .. })
    }
}

/// When a new worker counts as ready (`--ready`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyMode {
    /// Only on READY=1.
    Notify,
    /// On READY=1, or once it has been up this long.
    Delay(Duration),
}

/// The worker program: the path execve gets (resolved through PATH once, at start) and argv.
#[derive(Debug, Clone, PartialEq)]
pub struct Program {
    pub path: PathBuf,
    pub argv: Vec<OsString>,
}

impl Config {
    /// Builds the config: the file's values (if `--config`) under the command line's, then
    /// every check that needs more than one option or the file system.
    pub fn from_args(cli: ServeArgs, explicit: Vec<String>) -> Result<Config> {
        Config::build(cli, explicit, None, true)
    }

    /// [`Config::from_args`] with the `--config` file's bytes already read (by the guard,
    /// with the rights multinode started with).
    pub fn from_args_and_file(
        cli: ServeArgs,
        explicit: Vec<String>,
        file: &[u8],
    ) -> Result<Config> {
        Config::build(cli, explicit, Some(file), true)
    }

    /// The configuration an upgraded image runs with: its command line (the same argv) over
    /// the config file's bytes as they were at start (`file`), without looking at the file
    /// system (the program and working directory the state names win anyway: an image must
    /// come back whatever became of them).
    pub fn restored(cli: ServeArgs, explicit: Vec<String>, file: Option<&[u8]>) -> Result<Config> {
        Config::build(cli, explicit, file, false)
    }

    /// `fs`: check the program and working directory on the file system.
    fn build(
        cli: ServeArgs,
        explicit: Vec<String>,
        file: Option<&[u8]>,
        fs: bool,
    ) -> Result<Config> {
        let source = Source {
            args: cli.clone(),
            explicit,
        };
        let mut args = cli;
        if let Some(path) = args.config.clone() {
            match file {
                Some(bytes) => {
                    crate::config_file::apply_bytes(&path, bytes, &mut args, &source.explicit)?
                }
                None => crate::config_file::apply(&path, &mut args, &source.explicit)?,
            }
        }
        let workers = match args.workers {
            Some(0) => {
                return Err(Error::usage(
                    "--workers 0: at least one worker is needed (give --workers 1 or more)",
                ));
            }
            Some(n) if n > 4096 => {
                return Err(Error::usage(format!(
                    "--workers {n}: more than 4096 workers is surely a mistake"
                )));
            }
            Some(n) => n,
            None => std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
        };
        if args.backlog == 0 {
            return Err(Error::usage(
                "--backlog 0: the accept queue needs room for at least one connection",
            ));
        }
        if args.reload_parallel == 0 {
            return Err(Error::usage(
                "--reload-parallel 0: a reload must replace at least one worker at a time",
            ));
        }
        let mut listen = args.listen;
        for (i, spec) in listen.iter_mut().enumerate() {
            if spec.name.is_empty() {
                spec.name = format!("listen{i}");
            }
        }
        check_listen_names(&listen)?;
        if args.proxy_protocol && args.route.is_none() {
            return Err(Error::usage(
                "proxy-protocol needs route: the PROXY header is read by multinode's own accept",
            ));
        }
        if !args.proxy_from.is_empty() && !args.proxy_protocol {
            return Err(Error::usage(
                "proxy-from needs proxy-protocol: it says whose PROXY headers to believe",
            ));
        }
        let mode = mode_of(
            args.balance,
            args.route,
            args.proxy_protocol,
            args.max_requests.is_some(),
        )?;
        if args.proxy_timeout.is_zero() {
            return Err(Error::usage(
                "--proxy-timeout 0: a PROXY header needs some time to arrive (e.g. 5s)",
            ));
        }
        // Only the config file can give these a NUL byte (an argv cannot hold one).
        if let Some(path) = args.control.as_ref().filter(|p| has_nul(p)) {
            return Err(Error::usage(format!(
                "--control {}: a path cannot hold a NUL byte",
                path.display()
            )));
        }
        if let Some(dir) = args.workdir.as_ref().filter(|_| fs) {
            if !dir.is_dir() {
                return Err(Error::usage(format!(
                    "--workdir {}: not a directory",
                    dir.display()
                )));
            }
        }
        let program = match args.command.first() {
            Some(path) if !fs => Program {
                path: path.into(),
                argv: args.command.clone(),
            },
            _ => resolve_program(&args.command)?,
        };
        let name = match args.name {
            Some(n) if valid_name(&n) => n,
            Some(n) => {
                return Err(Error::usage(format!(
                    "--name {n:?}: use letters, digits, '_', '-' or '.' (it becomes a file name)"
                )));
            }
            None => program
                .path
                .file_name()
                .map(|f| f.to_string_lossy().into_owned())
                .filter(|n| valid_name(n))
                .unwrap_or_else(|| "multinode".into()),
        };
        Ok(Config {
            name,
            control: args.control,
            workdir: args.workdir,
            env: args.env,
            listen,
            backlog: args.backlog,
            user: args.user,
            group: args.group,
            socket_mode: args.socket_mode.0,
            program,
            mode,
            proxy_protocol: args.proxy_protocol,
            proxy_from: args.proxy_from,
            proxy_timeout: args.proxy_timeout,
            watch: args.watch,
            watch_ignore: args.watch_ignore,
            color: crate::log::use_color(args.color),
            log_format: args.log_format,
            allow_new_privileges: args.allow_new_privileges,
            cgroup: args.cgroup,
            metrics: args.metrics,
            runtime: Runtime {
                workers,
                restart: args.restart,
                backoff_max: args.backoff_max,
                min_uptime: args.min_uptime,
                max_restarts: args.max_restarts.map(|n| (n, args.restart_window)),
                stop_signal: args.stop_signal,
                grace: args.grace,
                ready: args.ready,
                ready_timeout: args.ready_timeout,
                reload_parallel: args.reload_parallel,
                watch_debounce: args.watch_debounce,
                watchdog: args.watchdog,
                watchdog_signal: args.watchdog_signal,
                max_memory: args.max_memory.map(|s| s.0),
                max_requests: args.max_requests.map(|n| (n, args.max_requests_jitter)),
                stop_delay: args.stop_delay,
            },
            source,
        })
    }

    /// Sorts a configuration read again for a reload into what takes effect now, what the
    /// new generation runs, and what only a restart applies. Every field of `new` is named
    /// here, so an option added to [`Config`] does not compile until it is classified.
    pub fn reload_plan(&self, new: Config) -> ReloadPlan {
        let Config {
            name,
            control,
            workdir,
            env,
            listen,
            backlog,
            user,
            group,
            socket_mode,
            program,
            mode,
            proxy_protocol,
            proxy_from,
            proxy_timeout,
            watch,
            watch_ignore,
            color,
            log_format,
            allow_new_privileges,
            cgroup,
            metrics,
            runtime,
            source: _,
        } = new;
        let restart_only = [
            ("name", name != self.name),
            ("control", control != self.control),
            ("listen", listen != self.listen),
            ("backlog", backlog != self.backlog),
            ("user", user != self.user),
            ("group", group != self.group),
            ("socket-mode", socket_mode != self.socket_mode),
            ("balance/route", mode != self.mode),
            ("proxy-protocol", proxy_protocol != self.proxy_protocol),
            ("proxy-from", proxy_from != self.proxy_from),
            ("proxy-timeout", proxy_timeout != self.proxy_timeout),
            ("watch", watch != self.watch),
            ("watch-ignore", watch_ignore != self.watch_ignore),
            (
                "allow-new-privileges",
                allow_new_privileges != self.allow_new_privileges,
            ),
            ("cgroup", cgroup != self.cgroup),
            ("metrics", metrics != self.metrics),
        ];
        ReloadPlan {
            runtime,
            next: NextGeneration {
                program,
                env,
                workdir,
            },
            log_format,
            color,
            needs_restart: restart_only
                .into_iter()
                .filter(|(_, changed)| *changed)
                .map(|(key, _)| key)
                .collect(),
        }
    }
}

/// How connections reach the workers, from `--balance` and `--route`. The kernel applies
/// only ip-hash, and only to the address it sees: what needs multinode's own accept (the
/// other policies, PROXY headers, counting connections) needs route mode, and says so.
fn mode_of(
    balance: Balance,
    route: Option<RoutePolicy>,
    proxy_protocol: bool,
    max_requests: bool,
) -> Result<Mode> {
    let kernel = "--balance reuseport --route ip-hash";
    match (route, balance) {
        (None, Balance::Shared) => Ok(Mode::Shared),
        (None, Balance::Reuseport) => Ok(Mode::ReusePort { ip_hash: false }),
        // `shared` is how workers share sockets when nothing routes; with --route, multinode
        // accepts on them itself.
        (Some(policy), Balance::Shared) => Ok(Mode::Route(policy)),
        (Some(RoutePolicy::IpHash), Balance::Reuseport) if proxy_protocol => {
            Err(Error::usage(format!(
                "{kernel} --proxy-protocol: the kernel picks the worker from the connection's source address before a PROXY header could be read; the PROXY protocol needs route mode (leave out --balance reuseport)"
            )))
        }
        (Some(RoutePolicy::IpHash), Balance::Reuseport) if max_requests => {
            Err(Error::usage(format!(
                "{kernel} --max-requests: multinode counts only the connections it hands over itself, and here the kernel hands them over; --max-requests needs route mode (leave out --balance reuseport), or recycle by --max-memory"
            )))
        }
        (Some(RoutePolicy::IpHash), Balance::Reuseport) => Ok(Mode::ReusePort { ip_hash: true }),
        (Some(policy), Balance::Reuseport) => {
            let name = policy
                .to_possible_value()
                .map_or_else(String::new, |v| v.get_name().to_string());
            Err(Error::usage(format!(
                "--balance reuseport --route {name}: the kernel applies only ip-hash; {name} needs route mode, where multinode accepts every connection and hands it over (leave out --balance reuseport)"
            )))
        }
    }
}

/// Whether `p` holds a NUL byte, which the kernel cannot take in a path.
fn has_nul(p: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    p.as_os_str().as_bytes().contains(&0)
}

/// A name usable as a file name: letters, digits, `_`, `-`, `.`, not starting with `.`.
pub fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && !n.starts_with('.')
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b))
}

fn check_listen_names(specs: &[ListenSpec]) -> Result<()> {
    for (i, a) in specs.iter().enumerate() {
        if let Some(b) = specs[..i].iter().find(|b| b.name == a.name) {
            return Err(Error::usage(format!(
                "--listen {}: the name '{}' is already used by --listen {}; give each socket its own NAME=",
                a.text, a.name, b.text
            )));
        }
    }
    Ok(())
}

/// Finds the program the way a shell would (a name without `/` is looked up in PATH) and
/// checks it is an executable file, so a typo is reported before anything is bound.
pub fn resolve_program(command: &[OsString]) -> Result<Program> {
    let Some(first) = command.first().filter(|p| !p.is_empty()) else {
        return Err(Error::usage(
            "no program to run: put the worker command after --, e.g. multinode serve -- ./app",
        ));
    };
    let given = Path::new(first);
    let path = if given.as_os_str().as_encoded_bytes().contains(&b'/') {
        absolute(given)?
    } else {
        let path_var =
            std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
        std::env::split_paths(&path_var)
            .map(|dir| absolute(&dir.join(given)))
            .filter_map(|p| p.ok())
            .find(|p| is_executable_file(p))
            .ok_or_else(|| {
                Error::program(format!(
                    "program '{}' not found in PATH; give its path (e.g. ./{})",
                    given.display(),
                    given.display()
                ))
            })?
    };
    match std::fs::metadata(&path) {
        Err(e) => {
            return Err(Error::program(format!(
                "program {}: {}",
                path.display(),
                io_reason(&e)
            )));
        }
        Ok(m) if !m.is_file() => {
            return Err(Error::program(format!(
                "program {} is not a file; give the path of an executable",
                path.display()
            )));
        }
        Ok(_) if !is_executable_file(&path) => {
            return Err(Error::program(format!(
                "program {} is not executable; chmod +x it, or run it through its interpreter (e.g. -- python3 {})",
                path.display(),
                given.display()
            )));
        }
        Ok(_) => {}
    }
    Ok(Program {
        path,
        argv: command.to_vec(),
    })
}

fn absolute(p: &Path) -> Result<PathBuf> {
    std::path::absolute(p)
        .map_err(|e| Error::program(format!("program {}: {}", p.display(), io_reason(&e))))
}

fn is_executable_file(p: &Path) -> bool {
    use nix::unistd::{AccessFlags, access};
    p.is_file() && access(p, AccessFlags::X_OK).is_ok()
}

/// An io::Error's reason without the "(os error N)" tail.
pub fn io_reason(e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => nix::errno::Errno::from_raw(n).desc().to_lowercase(),
        None => e.to_string(),
    }
}

/// The longest duration any option takes: a year. Longer values are surely mistakes, and a
/// deadline built from one must stay within what the clock can count.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parses `250ms`, `2s`, `1.5s`, `5m`, `1h`; a bare number is seconds. At most a year
/// ([`MAX_DURATION`]); clap (and the config file, through the same parser) names the option.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("'{s}' is not a duration such as 500ms, 10s, 2m or 1h");
    let too_long = || format!("'{s}' is longer than a year, the most a duration may be");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    // Nanoseconds per unit.
    let unit_ns: u128 = match unit.trim() {
        "ms" => 1_000_000,
        "" | "s" => 1_000_000_000,
        "m" | "min" => 60_000_000_000,
        "h" => 3_600_000_000_000,
        _ => return Err(bad()),
    };
    // Decimal, read exactly (not through a float, which made 6666665600ms a nanosecond more
    // than 6666665.6s): whole units, then each digit of the fraction down to the nanosecond.
    let (whole, frac) = num.split_once('.').unwrap_or((num, ""));
    if (whole.is_empty() && frac.is_empty()) || frac.contains('.') {
        return Err(bad());
    }
    let whole: u128 = match whole {
        "" => 0,
        w => w.parse().map_err(|_| too_long())?,
    };
    let mut ns = whole.checked_mul(unit_ns).ok_or_else(too_long)?;
    let mut place = unit_ns;
    for digit in frac.bytes() {
        place /= 10;
        if place == 0 {
            break;
        }
        ns += u128::from(digit - b'0') * place;
    }
    if ns > MAX_DURATION.as_nanos() {
        return Err(too_long());
    }
    Ok(Duration::from_nanos(ns as u64))
}

/// The largest size accepted (1 EiB): far above any memory, far below overflow.
const MAX_SIZE: f64 = (1u64 << 60) as f64;

/// A size in bytes as the command line gives it (its own type so that the config file takes
/// `"512M"` as a string as well as a plain byte count, and the man page quotes it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Size(pub u64);

/// `parse_size` for clap.
pub fn parse_size_arg(s: &str) -> std::result::Result<Size, String> {
    parse_size(s).map(Size)
}

/// Parses a size: `512M`, `1.5G`, `200MiB`, `64k`, `1048576` (bytes). K, M, G and T (with or
/// without `B` or `iB`) are powers of 1024, as memory is counted.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let bad = || format!("'{s}' is not a size such as 512M, 2G or 1048576 (bytes)");
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let scale = match unit {
        "" => 1u64,
        "k" => 1 << 10,
        "m" => 1 << 20,
        "g" => 1 << 30,
        "t" => 1 << 40,
        _ => return Err(bad()),
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let bytes = value * scale as f64;
    if !bytes.is_finite() || bytes > MAX_SIZE {
        return Err(format!(
            "'{s}' is larger than 1 EiB, the most a size may be"
        ));
    }
    if bytes < 1.0 {
        return Err(format!("'{s}' is less than a byte"));
    }
    Ok(bytes as u64)
}

/// Parses `notify` or `delay:DURATION` (`--ready`).
pub fn parse_ready(s: &str) -> std::result::Result<ReadyMode, String> {
    match s.split_once(':') {
        None if s == "notify" => Ok(ReadyMode::Notify),
        // The whole value is quoted: `delay:` alone or a bad duration after it.
        Some(("delay", d)) => parse_duration(d)
            .map(ReadyMode::Delay)
            .map_err(|e| format!("'{s}': {e}")),
        _ => Err(format!(
            "'{s}' is not a readiness mode: use notify or delay:DURATION (e.g. delay:2s)"
        )),
    }
}

/// Parses `TERM`, `SIGTERM`, `sigterm` or `15`.
pub fn parse_signal(s: &str) -> std::result::Result<Signal, String> {
    let bad = || format!("'{s}' is not a signal name such as TERM, INT, QUIT or USR1");
    if let Ok(n) = s.parse::<i32>() {
        return Signal::try_from(n).map_err(|_| bad());
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    name.parse::<Signal>().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("soon").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        for huge in ["8761h", "10000000000000000000", "99999999999s", "1e30"] {
            assert!(parse_duration(huge).is_err(), "{huge}");
        }
        let msg = parse_duration("99999999999s").unwrap_err();
        assert!(msg.contains("longer than a year"), "{msg}");
    }

    #[test]
    fn signals() {
        assert_eq!(parse_signal("TERM"), Ok(Signal::SIGTERM));
        assert_eq!(parse_signal("sigusr1"), Ok(Signal::SIGUSR1));
        assert_eq!(parse_signal("9"), Ok(Signal::SIGKILL));
        assert!(parse_signal("NOPE").is_err());
        assert!(parse_signal("99").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("1.5G"), Ok(3 << 29));
        assert_eq!(parse_size("64kB"), Ok(64 << 10));
        for bad in [
            "",
            "M",
            "12Q",
            "-1M",
            "0",
            "0.1",
            "1e3",
            "2EiB",
            "99999999999T",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ready_modes() {
        assert_eq!(parse_ready("notify"), Ok(ReadyMode::Notify));
        assert_eq!(
            parse_ready("delay:2s"),
            Ok(ReadyMode::Delay(Duration::from_secs(2)))
        );
        assert!(parse_ready("delay").is_err());
        assert!(parse_ready("soon").is_err());
        // Read exactly, as decimal (found by the `duration` fuzz target: through a float,
        // 6666665600ms was a nanosecond more than 6666665.6s).
        assert_eq!(
            parse_duration("6666665600ms"),
            Ok(Duration::from_millis(6_666_665_600))
        );
        assert_eq!(
            parse_duration("6666665.6s"),
            Ok(Duration::from_millis(6_666_665_600))
        );
        assert_eq!(parse_duration(".5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5."), Ok(Duration::from_secs(5)));
        assert_eq!(
            parse_duration("1.0000000019"),
            Ok(Duration::from_nanos(1_000_000_001))
        );
        assert_eq!(parse_duration("0.5m"), Ok(Duration::from_secs(30)));
        for bad in [".", "1.2.3", "ms", "", "1e3", "-1s"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        assert!(parse_duration("99999999999999999999999999999999999999999h").is_err());
        // A bad duration after `delay:` is refused quoting the whole value (found by the
        // `duration` fuzz target: the message quoted only what followed `delay:`).
        for bad in ["delay:`", "delay:", "delay:soon"] {
            let err = parse_ready(bad).unwrap_err();
            assert!(err.contains(&format!("'{bad}'")), "{err}");
        }
    }
}
