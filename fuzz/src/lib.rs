//! The checks of multinode's fuzz targets: one module per target under [`targets`], each a
//! plain `pub fn check(data: &[u8])` that feeds the bytes to a parser's real entry point and
//! asserts what must hold of its answer (it panics otherwise). The cargo-fuzz harness
//! (`fuzz/harness/`, nightly) calls these functions; `tests/corpus.rs` calls the same ones
//! on every committed corpus file, on stable, in `cargo test --workspace`.
//!
//! # How the binary's parsers get here
//!
//! Most parsers live in the `multinode` binary crate, which has no library to link against.
//! Rather than give it one (a `lib.rs` exposing its internals only for fuzzing), this crate
//! compiles the binary's own source files with `#[path]`: the smallest set of modules closed
//! under their `crate::` references, declared at this crate's root under the names `main.rs`
//! gives them, so each file compiles unchanged and `crate::cli` means the same module here as
//! there. Config parsing needs `cli`, `config`, `config_file`, `error`, `listen`, `log` and
//! `proxy` (cli.rs names the value parsers of config.rs, listen.rs and proxy.rs; config.rs
//! applies config_file.rs and asks log.rs about colour); the guard's wire format, the control
//! protocol, the metrics server's HTTP and /proc parsing are files that reference nothing
//! else of the crate. A parser that was buried in a module with sockets in it was moved to a
//! file of its own first (`src/metrics/http.rs`, `src/procfs.rs`), which is also where it
//! belongs. Nothing in the binary is made public for this, and nothing is compiled twice into
//! it. The libraries (the worker SDK, the examples' mini-http) are used as dependencies.
//!
//! The included files are the binary's; most of what they define is unused here, hence the
//! `dead_code` allowances.

#[path = "../../src/cli.rs"]
#[allow(dead_code)]
mod cli;
#[path = "../../src/config.rs"]
#[allow(dead_code)]
mod config;
#[path = "../../src/config_file.rs"]
#[allow(dead_code)]
mod config_file;
#[path = "../../src/error.rs"]
#[allow(dead_code)]
mod error;
#[path = "../../src/listen.rs"]
#[allow(dead_code)]
mod listen;
#[path = "../../src/log.rs"]
#[allow(dead_code)]
mod log;
#[path = "../../src/proxy.rs"]
#[allow(dead_code)]
mod proxy;

/// `src/control/protocol.rs`: the control socket's requests and replies.
#[path = "../../src/control/protocol.rs"]
#[allow(dead_code)]
mod control_protocol;
/// `src/guard/wire.rs`: the guard's frames.
#[path = "../../src/guard/wire.rs"]
#[allow(dead_code)]
mod guard_wire;
/// `src/metrics/http.rs`: the metrics server's request heads.
#[path = "../../src/metrics/http.rs"]
#[allow(dead_code)]
mod metrics_http;
#[path = "../../src/procfs.rs"]
#[allow(dead_code)]
mod procfs;

/// `src/upgrade/`: the in-place upgrade's state format (`format/`) and its envelope and
/// decoder (`state.rs`, which `cli.rs` also asks for `--version`'s line).
#[path = "../../src/upgrade"]
#[allow(dead_code)]
mod upgrade {
    pub mod format;
    pub mod state;
}

/// `src/supervisor/worker.rs`, for `supervisor::later` (what `upgrade/state.rs` uses), under
/// the path `main.rs` gives it.
#[path = "../../src/supervisor"]
#[allow(dead_code)]
mod supervisor {
    mod worker;
    pub use worker::later;
}

pub mod targets;
