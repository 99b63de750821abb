//! One module per fuzz target, each with `pub fn check(data: &[u8])`: the parser's real entry
//! point, and the properties its answer must have. A check panics when one does not hold;
//! it never panics for an input the parser handles as it should, whatever the bytes.
//!
//! [`ALL`] lists them by target name: the harness has one `fuzz_targets/<name>.rs` per
//! entry, and the corpus of each is `fuzz/corpus/<name>/`.

pub mod cidr;
pub mod config_file;
pub mod control;
pub mod duration;
pub mod guard_wire;
pub mod http;
pub mod listen;
pub mod listen_env;
pub mod metrics_http;
pub mod proc_stat;
pub mod proxy;
pub mod route_wire;
pub mod sd_notify;
pub mod serve_args;
pub mod size;
pub mod upgrade_state;

/// A target's check: panics when a property does not hold for the input.
pub type Check = fn(&[u8]);

/// Every target: its name and its check.
pub const ALL: &[(&str, Check)] = &[
    ("cidr", cidr::check),
    ("config_file", config_file::check),
    ("control", control::check),
    ("duration", duration::check),
    ("guard_wire", guard_wire::check),
    ("http", http::check),
    ("listen", listen::check),
    ("listen_env", listen_env::check),
    ("metrics_http", metrics_http::check),
    ("proc_stat", proc_stat::check),
    ("proxy", proxy::check),
    ("route_wire", route_wire::check),
    ("sd_notify", sd_notify::check),
    ("serve_args", serve_args::check),
    ("size", size::check),
    ("upgrade_state", upgrade_state::check),
];
