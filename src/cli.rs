//! The command line, defined once: `--help`, the man pages, the shell completions and the
//! config file's keys (config_file.rs) all come from these clap definitions. A `value_hint`
//! of a path type also makes the file's relative values relative to the file.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum, ValueHint};
use nix::sys::signal::Signal;

use crate::config::{ReadyMode, Size, parse_duration, parse_ready, parse_signal, parse_size_arg};
use crate::error::exit_codes_help;
use crate::listen::{ListenSpec, parse_listen};
use crate::proxy::{Cidr, parse_cidr};

/// Run N copies of any server program on sockets multinode binds once.
///
/// multinode binds the listening sockets (TCP v4/v6, Unix), drops root privileges, and starts
/// worker processes that inherit the sockets the systemd way (fds 3.., LISTEN_FDS, LISTEN_PID,
/// LISTEN_FDNAMES), so the kernel spreads connections over all of them. Crashed workers are
/// restarted with backoff; SIGTERM stops them gracefully.
#[derive(Debug, Parser)]
#[command(
    name = "multinode",
    version,
    long_version = crate::upgrade::state::VERSION_LINE,
    propagate_version = true,
    arg_required_else_help = true,
    after_help = exit_codes_help()
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Bind the sockets and run the workers until stopped
    #[command(
        after_help = SERVE_AFTER_HELP,
        override_usage = "multinode serve [OPTIONS] -- <COMMAND> [ARGS]..."
    )]
    Serve(Box<ServeArgs>),

    /// Check a configuration (file and options) without starting anything
    #[command(override_usage = "multinode check [OPTIONS] [-- <COMMAND> [ARGS]...]")]
    Check(Box<ServeArgs>),

    /// Show the workers of a running multinode
    ///
    /// One row per worker: slot, pid, state, generation, uptime, CPU, memory, restarts, how
    /// the slot's last worker ended, and its STATUS= text. CPU is the share of one core the
    /// worker (with everything it started) used between two readings half a second apart
    /// (with --watch: over each second); MEM is the memory it uses now (K, M, G: powers of
    /// 1024). --json prints one reading, with cpu_seconds (since the worker started) and
    /// memory_bytes per worker.
    Status {
        #[command(flatten)]
        target: Target,
        /// Print JSON, for scripts
        #[arg(long)]
        json: bool,
        /// Print nothing; exit 0 only if every worker slot is ready (a health probe)
        #[arg(long, conflicts_with = "watch")]
        check: bool,
        /// Redraw the table every second, like top, until Ctrl-C (the screen is cleared only
        /// on a terminal; otherwise one table a second is printed; with --json, one line a
        /// second)
        #[arg(long)]
        watch: bool,
    },

    /// Roll every worker over to a new one (like SIGHUP) and wait for the outcome
    Reload {
        #[command(flatten)]
        target: Target,
    },

    /// Change the number of workers and wait until the new ones are ready
    Scale {
        #[command(flatten)]
        target: Target,
        /// The number of workers wanted (1 to 4096)
        #[arg(value_parser = clap::value_parser!(u32).range(1..=4096))]
        workers: u32,
    },

    /// Stop gracefully (like SIGTERM) and wait until multinode has exited
    Stop {
        #[command(flatten)]
        target: Target,
    },

    /// Upgrade multinode in place (like SIGUSR2) and wait for the outcome
    ///
    /// The running multinode executes the binary it was started from (as a path: a package
    /// upgrade's new file there), or --binary, in the same process: the same pid, every
    /// socket and connection, every worker kept running. It first asks the new binary whether
    /// it can take this version's state; if not, or if the new image cannot restore it, the
    /// old one comes back and this exits 1 with the reason. Prints the version that runs.
    #[command(after_help = UPGRADE_AFTER_HELP)]
    Upgrade {
        #[command(flatten)]
        target: Target,
        /// The multinode binary to execute [default: the path multinode was started from]
        #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
        binary: Option<PathBuf>,
    },

    /// Print a shell completion script to stdout
    #[command(after_help = COMPLETIONS_AFTER_HELP)]
    Completions {
        /// The shell to complete for
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },

    /// Say whether this multinode can take over a running one's state of format N (asked by
    /// `upgrade` before it executes a new binary): one JSON line and exit 0, or exit 1
    #[command(name = "__upgrade-check", hide = true)]
    UpgradeCheck {
        /// The state format the running multinode writes
        #[arg(long, value_name = "N")]
        state_format: u32,
    },

    /// Write the man pages and completion scripts under DIR (for packagers and the repository)
    #[command(name = "__generate", hide = true)]
    Generate {
        /// Directory that receives man/ and completions/
        #[arg(value_hint = ValueHint::DirPath)]
        dir: PathBuf,
    },
}

const COMPLETIONS_AFTER_HELP: &str = "\
Install:
  bash  multinode completions bash > ~/.local/share/bash-completion/completions/multinode
  zsh   multinode completions zsh > ~/.zfunc/_multinode   (with fpath+=(~/.zfunc) in .zshrc)
  fish  multinode completions fish > ~/.config/fish/completions/multinode.fish";

const UPGRADE_AFTER_HELP: &str = "\
Versions: `multinode --version` names the state format a multinode writes and the ones it
reads; an upgrade works when the new binary reads the running one's format (the check is made
before anything is touched). The same happens on SIGUSR2, with no one to answer.";

const SERVE_AFTER_HELP: &str = "\
Each worker gets the sockets as fds 3.. in --listen order and the environment
LISTEN_FDS, LISTEN_PID (its own pid), LISTEN_FDNAMES, MULTINODE_WORKER_ID (0..N-1),
MULTINODE_WORKERS and MULTINODE_GENERATION; every other fd but 0, 1, 2 is closed.

Signals: TERM/INT stop gracefully (a second one kills at once), QUIT stops at once,
HUP rolls every worker over to a new one (zero downtime), TTIN/TTOU add/remove a worker,
USR2 upgrades multinode itself in place (same pid, workers kept; see multinode upgrade).

Examples:
  multinode serve --workers 4 --listen 127.0.0.1:8080 -- ./target/release/hello
  sudo multinode serve -w 8 -l :80 -l admin=unix:/run/app.sock -- ./app --flag";

/// Which running multinode a control command talks to.
#[derive(Debug, Args, Clone)]
pub struct Target {
    /// The --name it was started with [default: the only one running]
    #[arg(short, long, value_name = "NAME")]
    pub name: Option<String>,
    /// Its control socket, when started with --control
    #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath, conflicts_with = "name")]
    pub control: Option<PathBuf>,
}

#[derive(Debug, Args, Clone)]
pub struct ServeArgs {
    /// Read options from this TOML file; options given on the command line win
    #[arg(short, long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub config: Option<PathBuf>,

    /// Name of this service: picks its control socket [default: the program's file name]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// Path of the control socket [default: /run/multinode/NAME/control.sock as root,
    /// else $XDG_RUNTIME_DIR/multinode/NAME/control.sock, or /tmp/multinode-UID/NAME/control.sock
    /// without XDG_RUNTIME_DIR]
    #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
    pub control: Option<PathBuf>,

    /// Working directory of the workers [default: multinode's]
    #[arg(long, value_name = "DIR", value_hint = ValueHint::DirPath)]
    pub workdir: Option<PathBuf>,

    /// Set an environment variable for the workers; repeatable
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,

    /// Number of worker processes [default: the number of CPUs]
    #[arg(short, long, value_name = "N")]
    pub workers: Option<u32>,

    /// Address to listen on; repeat for several sockets, passed in this order.
    ///
    /// HOST:PORT (127.0.0.1:8080, localhost:8080), :PORT for all interfaces (IPv6 and IPv4 on
    /// one dual-stack socket), [V6ADDR]:PORT, or unix:PATH. NAME= names the socket in
    /// LISTEN_FDNAMES (default: listen0, listen1, ...). Port 0 picks a free port; the bound
    /// address is printed at start.
    #[arg(
        short,
        long = "listen",
        value_name = "[NAME=]ADDR",
        value_parser = parse_listen,
        default_value = "127.0.0.1:8080"
    )]
    pub listen: Vec<ListenSpec>,

    /// Length of each socket's accept queue (the kernel caps it at net.core.somaxconn)
    #[arg(long, value_name = "N", default_value_t = 1024)]
    pub backlog: u32,

    /// User to run as after binding, when started as root [default: nobody]
    #[arg(short, long, value_name = "USER")]
    pub user: Option<String>,

    /// Group to run as [default: the user's primary group]
    #[arg(short, long, value_name = "GROUP")]
    pub group: Option<String>,

    /// Permissions of Unix socket files (octal); their owner is the user multinode runs as
    #[arg(long, value_name = "MODE", default_value = "660", value_parser = parse_mode)]
    pub socket_mode: FileMode,

    /// How connections reach workers when not routed: `shared` (every worker accepts on the
    /// same sockets; the kernel balances) or `reuseport` (one SO_REUSEPORT socket per worker
    /// slot, kept by multinode across restarts and reloads of that slot)
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Balance::Shared, conflicts_with = "route")]
    pub balance: Balance,

    /// Accept connections in multinode and hand each to a worker chosen by POLICY, over a Unix
    /// channel (SCM_RIGHTS). Workers read it with the multinode-worker SDK (or the documented
    /// wire format); the channel replaces each listening socket at its fd, under its name
    #[arg(long, value_enum, value_name = "POLICY")]
    pub route: Option<RoutePolicy>,

    /// With --route: read a PROXY protocol header (v1 or v2) first on every connection and
    /// route by the client address it names; connections without a valid one are closed
    #[arg(long, requires = "route")]
    pub proxy_protocol: bool,

    /// With --proxy-protocol: believe PROXY headers only from this network or address (your
    /// load balancers); repeatable. A connection from anywhere else is closed before a byte is
    /// read. IPv4 (10.0.0.0/8, 192.0.2.7) or IPv6 (2001:db8::/32, ::1). Without it, any
    /// client can claim any address
    #[arg(long, value_name = "CIDR", value_parser = parse_cidr, requires = "proxy_protocol")]
    pub proxy_from: Vec<Cidr>,

    /// With --proxy-protocol: how long a connection may take to send its PROXY header before
    /// it is closed
    #[arg(
        long,
        value_name = "DURATION",
        default_value = "5s",
        value_parser = parse_duration,
        requires = "proxy_protocol"
    )]
    pub proxy_timeout: Duration,

    /// What to do when a worker exits
    #[arg(long, value_enum, default_value_t = RestartPolicy::Always)]
    pub restart: RestartPolicy,

    /// Longest wait between restarts of a crashing worker: a first crash restarts at once,
    /// a second one within --min-uptime after 100ms, and the wait doubles from there
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub backoff_max: Duration,

    /// A worker that stayed up this long counts as healthy: its crash counts as a first one and
    /// restarts at once
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub min_uptime: Duration,

    /// Give up (stop everything, exit 6) after more than N restarts within --restart-window
    #[arg(long, value_name = "N")]
    pub max_restarts: Option<u32>,

    /// The window --max-restarts counts restarts in
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub restart_window: Duration,

    /// Signal that asks a worker to finish its work and exit
    #[arg(long, value_name = "SIGNAL", default_value = "TERM", value_parser = parse_signal)]
    pub stop_signal: Signal,

    /// How long a stopping worker may take before it is killed (SIGKILL)
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_duration)]
    pub grace: Duration,

    /// When a new worker counts as ready: `notify` (it sent READY=1 to NOTIFY_SOCKET) or
    /// `delay:DURATION` (it sent READY=1, or stayed up that long)
    ///
    /// A rolling reload stops an old worker only once its replacement is ready. The default
    /// suits programs that know nothing of sd_notify; use `notify` for programs that do.
    #[arg(long, value_name = "MODE", default_value = "delay:1s", value_parser = parse_ready)]
    pub ready: ReadyMode,

    /// A new worker not ready this long is stopped (and a reload rolled back)
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub ready_timeout: Duration,

    /// How many workers a rolling reload replaces at once
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub reload_parallel: u32,

    /// Per-worker watchdog (the sd_notify protocol): a ready worker must send WATCHDOG=1 at
    /// least this often. One silent for longer is hung: it gets --watchdog-signal, SIGKILL 5s
    /// later, and its slot restarts. Workers get WATCHDOG_USEC and WATCHDOG_PID
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub watchdog: Option<Duration>,

    /// The signal a hung worker gets first (ABRT: so that it can dump its state)
    #[arg(long, value_name = "SIGNAL", default_value = "ABRT", value_parser = parse_signal)]
    pub watchdog_signal: Signal,

    /// Recycle a worker whose memory passes SIZE (e.g. 512M, 2G; K, M, G are powers of 1024):
    /// a replacement is started and ready before it drains
    #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
    pub max_memory: Option<Size>,

    /// With --route: recycle a worker once it was handed N connections (a replacement is
    /// started and ready before it drains)
    #[arg(long, value_name = "N", requires = "route")]
    pub max_requests: Option<u64>,

    /// Adds a random 0..=N to --max-requests for each worker, so workers do not recycle
    /// together
    #[arg(long, value_name = "N", default_value_t = 0, requires = "max_requests")]
    pub max_requests_jitter: u64,

    /// On SIGTERM, SIGINT or `multinode stop`: turn /healthz to 503 at once and keep serving
    /// this long before the drain starts, so that load balancers stop sending first
    #[arg(long, value_name = "DURATION", default_value = "0s", value_parser = parse_duration)]
    pub stop_delay: Duration,

    /// Serve `GET /metrics` (Prometheus text format) and `GET /healthz` (200, or 503 with the
    /// reason) on ADDR: HOST:PORT, :PORT, [V6ADDR]:PORT or unix:PATH (a socket file made like
    /// the --listen ones). Served by multinode itself, never by a worker
    #[arg(long, value_name = "ADDR", value_parser = parse_listen)]
    pub metrics: Option<ListenSpec>,

    /// Reload when this file or directory (recursively) changes; repeatable
    #[arg(long, value_name = "PATH", value_hint = ValueHint::AnyPath)]
    pub watch: Vec<PathBuf>,

    /// Ignore changes to paths matching this glob (`*`, `?`, `**`); repeatable.
    /// `**/.git/**` and `**/target/**` are always ignored
    #[arg(long, value_name = "GLOB")]
    pub watch_ignore: Vec<String>,

    /// Reload once the watched files have been quiet this long
    #[arg(long, value_name = "DURATION", default_value = "300ms", value_parser = parse_duration)]
    pub watch_debounce: Duration,

    /// Let workers gain privileges through exec (setuid programs, file capabilities). By
    /// default multinode sets no_new_privs and empties the capability bounding set, for itself
    /// and so for every worker
    #[arg(long)]
    pub allow_new_privileges: bool,
    /// Contain each worker, and everything it starts however it detaches, in a cgroup v2
    /// group of its own, killed whole when the worker's slot ends: `auto` (where a writable
    /// cgroup v2 hierarchy exists; the start says which is in force), `required` (exit 4 where
    /// not), `off` (process groups only)
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = CgroupMode::Auto)]
    pub cgroup: CgroupMode,

    /// Colour the output
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,

    /// Output format of supervisor events and worker output
    #[arg(long, value_enum, value_name = "FORMAT", default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// The worker program and its arguments (after --)
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RestartPolicy {
    /// Restart a worker whatever way it exited
    Always,
    /// Restart a worker unless it exited with status 0
    OnFailure,
    /// Never restart; multinode exits when the last worker has
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Balance {
    /// All workers accept on the same sockets
    Shared,
    /// One SO_REUSEPORT socket per worker slot
    Reuseport,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RoutePolicy {
    /// The same client address always goes to the same slot (rendezvous hashing)
    IpHash,
    /// Each worker in turn
    RoundRobin,
    /// The worker holding the fewest open routed connections
    LeastConn,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum CgroupMode {
    /// Per-worker cgroups where the hierarchy allows, else process groups
    Auto,
    /// Per-worker cgroups, or refuse to start
    Required,
    /// Process groups only
    Off,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum ColorChoice {
    /// Colour when the output is a terminal and NO_COLOR is not set
    Auto,
    Always,
    Never,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Prefixed lines: `worker.2[1234] | text` and `multinode | event`
    Text,
    /// One JSON object per line, for log collectors
    Json,
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    if s.contains('\0') {
        return Err(format!(
            "'{}' holds a NUL byte, which no environment variable can",
            s.escape_debug()
        ));
    }
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("'{s}' is not KEY=VALUE")),
    }
}

/// Permission bits written in octal (`660`). A type of its own, not a `u32`, because it is
/// not a number to the user: the config file takes it as a string, so `660` never becomes
/// decimal 660 and `0o660` in TOML never becomes decimal 432.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileMode(pub u32);

fn parse_mode(s: &str) -> Result<FileMode, String> {
    u32::from_str_radix(s.trim_start_matches("0o"), 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .map(FileMode)
        .ok_or_else(|| format!("'{s}' is not an octal file mode such as 660"))
}

/// A clap error as one line: its sentences, without the usage block and the pointer to
/// `--help`.
pub fn clap_reason(e: &clap::Error) -> String {
    let text = e.render().to_string();
    let body: Vec<&str> = text
        .lines()
        .map(str::trim)
        .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .filter(|l| !l.is_empty())
        .collect();
    let msg = body.join(" ");
    msg.strip_prefix("error: ").unwrap_or(&msg).to_string()
}
