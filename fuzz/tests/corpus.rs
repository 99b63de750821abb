//! Every committed corpus file, through its target's check: the fuzzers' findings and the
//! inputs that reached new code, replayed on stable in `cargo test --workspace`. A target
//! whose corpus directory is missing or empty fails (a replay of nothing proves nothing), and
//! so does a target the harness or the corpus does not have.

use std::path::{Path, PathBuf};

use multinode_fuzz::targets::ALL;

fn fuzz_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The files of `dir`, sorted.
fn files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e} (every target has a corpus)", dir.display()))
        .map(|e| e.expect("a directory entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Feeds every file of `fuzz/corpus/<name>/` to the target's check; fails naming each file
/// that failed.
fn replay(name: &str) {
    let (_, check) = ALL
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no target {name} in targets::ALL"));
    let dir = fuzz_dir().join("corpus").join(name);
    let files = files(&dir);
    assert!(!files.is_empty(), "{} is empty", dir.display());
    let failed: Vec<String> = files
        .iter()
        .filter(|f| {
            let data = std::fs::read(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            std::panic::catch_unwind(|| check(&data)).is_err()
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        failed.is_empty(),
        "{} of {} corpus files of {name} fail their check (each one's panic is above):\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
}

macro_rules! replay {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                replay(stringify!($name));
            }
        )*

        /// The targets replayed here.
        const REPLAYED: &[&str] = &[$(stringify!($name)),*];
    };
}

replay!(
    cidr,
    config_file,
    control,
    duration,
    guard_wire,
    http,
    listen,
    listen_env,
    metrics_http,
    proc_stat,
    proxy,
    route_wire,
    sd_notify,
    serve_args,
    size,
    upgrade_state,
);

#[test]
fn every_target_has_a_harness_a_corpus_and_a_replay() {
    let names: Vec<&str> = ALL.iter().map(|(n, _)| *n).collect();
    assert_eq!(names, REPLAYED, "targets::ALL and the replays here");
    let harness = std::fs::read_to_string(fuzz_dir().join("harness/Cargo.toml")).unwrap();
    let mut corpora: Vec<String> = std::fs::read_dir(fuzz_dir().join("corpus"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    corpora.sort();
    assert_eq!(corpora, names, "the directories of fuzz/corpus/");
    for name in names {
        let target = fuzz_dir().join(format!("harness/fuzz_targets/{name}.rs"));
        let text = std::fs::read_to_string(&target)
            .unwrap_or_else(|e| panic!("{}: {e}", target.display()));
        assert!(
            text.contains(&format!("targets::{name}::check")),
            "{} calls its check",
            target.display()
        );
        assert!(
            harness.contains(&format!("name = \"{name}\"")),
            "fuzz/harness/Cargo.toml has a [[bin]] {name}"
        );
    }
}
