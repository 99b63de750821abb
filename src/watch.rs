//! `--watch`: file changes become reload requests.
//!
//! The notify crate's inotify watcher runs in its own thread; its callback filters events
//! (ignore globs, access-only events, files beside a watched file) and wakes the event loop
//! through a pipe. The loop debounces: every change pushes the reload `--watch-debounce` further
//! out, so a burst (an editor's write-rename-save, cargo's unlink + link of a binary, twenty
//! touches) gives exactly one reload once it has been quiet that long.
//!
//! Why not notify-debouncer-full: its thread wakes every timeout/4 for as long as it lives,
//! which breaks the rule that an idle supervisor makes no periodic wake-ups, and a burst can
//! straddle two of its ticks, so the loop would need its own debounce anyway.
//!
//! A watched file is watched through its parent directory: a watch on the file itself dies at
//! the first atomic rename-save, and cargo replaces a binary by unlink + link.
//!
//! What is ignored: the built-in globs (`**/.git/**`, `**/target/**`) apply only *below* a
//! watched directory, matched against the path relative to it — never to a path the user
//! named (`--watch target/release/app`, `--watch target`). `--watch-ignore` globs are the
//! user's own and match the whole path.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};

use nix::fcntl::OFlag;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::error::{Error, Result};

/// Ignored below every watched directory (not in a path given to `--watch`); `--watch-ignore`
/// adds more.
pub const DEFAULT_IGNORES: &[&str] = &["**/.git/**", "**/target/**"];

pub struct Watch {
    _watcher: RecommendedWatcher,
    wake_r: OwnedFd,
    changes: Receiver<PathBuf>,
    /// What is watched and what ignored, for the line at start.
    pub description: String,
}

/// What one `--watch PATH` covers.
struct Root {
    /// The directory notify watches.
    dir: PathBuf,
    /// For a watched file, its name in `dir`: only events on it count.
    file: Option<std::ffi::OsString>,
}

/// Checks that every `--watch` path can be watched (it exists), as [`Watch::start`] will;
/// `multinode check` runs this.
pub fn check(paths: &[PathBuf]) -> Result<()> {
    roots(paths).map(drop)
}

/// What each `--watch` path covers.
fn roots(paths: &[PathBuf]) -> Result<Vec<Root>> {
    let mut roots = Vec::new();
    for p in paths {
        let abs = std::path::absolute(p)
            .map_err(|e| Error::usage(format!("--watch {}: {e}", p.display())))?;
        let meta = std::fs::metadata(&abs).map_err(|e| {
            Error::usage(format!(
                "--watch {}: {}; give an existing file or directory",
                p.display(),
                crate::config::io_reason(&e)
            ))
        })?;
        if meta.is_dir() {
            roots.push(Root {
                dir: abs,
                file: None,
            });
        } else {
            let dir = abs.parent().unwrap_or(Path::new("/")).to_path_buf();
            roots.push(Root {
                dir,
                file: abs.file_name().map(|n| n.to_os_string()),
            });
        }
    }
    Ok(roots)
}

impl Watch {
    pub fn start(paths: &[PathBuf], ignores: &[String]) -> Result<Watch> {
        let roots = roots(paths)?;
        let patterns: Vec<String> = ignores.to_vec();
        let description = describe(&roots, ignores);

        let (wake_r, wake_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC | OFlag::O_NONBLOCK)
            .map_err(|e| Error::sys("creating the watch pipe", e))?;
        let (tx, changes): (Sender<PathBuf>, _) = channel();
        let filter_roots: Vec<(PathBuf, Option<std::ffi::OsString>)> = roots
            .iter()
            .map(|r| (r.dir.clone(), r.file.clone()))
            .collect();
        let mut watcher = notify::recommended_watcher(move |res: notify::Result<notify::Event>| {
            let Ok(ev) = res else { return };
            if matches!(ev.kind, EventKind::Access(_)) {
                return;
            }
            for path in ev.paths {
                if relevant(&path, &filter_roots, &patterns) {
                    if tx.send(path).is_err() {
                        return;
                    }
                    // A full pipe already holds a wake-up; nothing is lost.
                    let _ = nix::unistd::write(&wake_w, b"w");
                }
            }
        })
        .map_err(|e| Error::internal(format!("starting the file watcher: {e}")))?;
        for r in &roots {
            let mode = if r.file.is_some() {
                RecursiveMode::NonRecursive
            } else {
                RecursiveMode::Recursive
            };
            watcher.watch(&r.dir, mode).map_err(|e| {
                Error::usage(format!("--watch {}: cannot watch it: {e}", r.dir.display()))
            })?;
        }
        Ok(Watch {
            _watcher: watcher,
            wake_r,
            changes,
            description,
        })
    }

    /// The changed paths since the last call (empties the wake-up pipe too).
    pub fn drain(&self) -> Vec<PathBuf> {
        let mut buf = [0u8; 256];
        while matches!(nix::unistd::read(&self.wake_r, &mut buf), Ok(n) if n > 0) {}
        self.changes.try_iter().collect()
    }
}

impl AsFd for Watch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.wake_r.as_fd()
    }
}

/// `watching /src (and below), /app/target/release/hello; ignoring **/.git/**, **/target/**
/// below watched directories, and *.swp`.
fn describe(roots: &[Root], ignores: &[String]) -> String {
    let watched: Vec<String> = roots
        .iter()
        .map(|r| match &r.file {
            Some(f) => r.dir.join(f).display().to_string(),
            None => format!("{} (and below)", r.dir.display()),
        })
        .collect();
    let mut text = format!(
        "watching {}; ignoring {} below watched directories",
        watched.join(", "),
        DEFAULT_IGNORES.join(", ")
    );
    if !ignores.is_empty() {
        text.push_str(&format!(", and {}", ignores.join(", ")));
    }
    text
}

/// Whether a change of `path` counts: it is a watched file, or below a watched directory and
/// not ignored there.
fn relevant(
    path: &Path,
    roots: &[(PathBuf, Option<std::ffi::OsString>)],
    ignores: &[String],
) -> bool {
    let counts = roots.iter().any(|(dir, file)| match file {
        // A file the user named: nothing built-in hides it.
        Some(name) => {
            path.parent() == Some(dir.as_path()) && path.file_name() == Some(name.as_os_str())
        }
        // Below a directory the user named: the built-in ignores apply to what is below it.
        None => path.strip_prefix(dir).is_ok_and(|below| {
            let below = below.to_string_lossy();
            below.is_empty() || !DEFAULT_IGNORES.iter().any(|g| glob_match(g, &below))
        }),
    });
    if !counts {
        return false;
    }
    let text = path.to_string_lossy();
    !ignores.iter().any(|g| glob_match(g, &text))
}

/// Matches `text` against a glob: `*` (no `/`), `?`, `**` (anything, `/` included). A pattern
/// without `/` matches any path component (`*.swp` ignores every swap file).
pub fn glob_match(pattern: &str, text: &str) -> bool {
    if !pattern.contains('/') {
        return text
            .split('/')
            .any(|comp| matches(pattern.as_bytes(), comp.as_bytes()));
    }
    matches(pattern.as_bytes(), text.as_bytes())
}

fn matches(p: &[u8], t: &[u8]) -> bool {
    match (p.first(), t.first()) {
        (None, None) => true,
        (None, Some(_)) => false,
        // A trailing `/**` matches the directory itself too: `**/target/**` ignores the
        // creation of `target` as well as everything in it.
        (Some(b'/'), None) if p == b"/**" => true,
        (Some(b'*'), _) if p.get(1) == Some(&b'*') => {
            let rest = &p[2..];
            (0..=t.len()).any(|i| matches(rest, &t[i..]))
                || (rest.first() == Some(&b'/') && matches(&rest[1..], t))
        }
        (Some(b'*'), _) => (0..=t.len())
            .take_while(|&i| i == 0 || t[i - 1] != b'/')
            .any(|i| matches(&p[1..], &t[i..])),
        (Some(b'?'), Some(c)) if *c != b'/' => matches(&p[1..], &t[1..]),
        (Some(a), Some(b)) if a == b => matches(&p[1..], &t[1..]),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::{glob_match, relevant};
    use std::path::PathBuf;

    #[test]
    fn built_in_ignores_never_hide_what_the_user_named() {
        let file = |d: &str, f: &str| (PathBuf::from(d), Some(f.into()));
        let dir = |d: &str| (PathBuf::from(d), None);
        // --watch target/release/hello
        let roots = [file("/app/target/release", "hello")];
        assert!(relevant("/app/target/release/hello".as_ref(), &roots, &[]));
        assert!(!relevant("/app/target/release/other".as_ref(), &roots, &[]));
        // --watch /app/target
        let roots = [dir("/app/target")];
        assert!(relevant("/app/target/release/hello".as_ref(), &roots, &[]));
        // --watch /app: its target/ and .git/ are ignored, the rest counts
        let roots = [dir("/app")];
        assert!(!relevant("/app/target/release/hello".as_ref(), &roots, &[]));
        assert!(!relevant("/app/.git/index".as_ref(), &roots, &[]));
        assert!(relevant("/app/src/main.rs".as_ref(), &roots, &[]));
        // The user's own ignores apply everywhere.
        let roots = [file("/app/target/release", "hello")];
        assert!(!relevant(
            "/app/target/release/hello".as_ref(),
            &roots,
            &["**/release/**".into()]
        ));
    }

    #[test]
    fn globs() {
        assert!(glob_match("**/.git/**", "/src/app/.git/index"));
        assert!(glob_match("**/target/**", "/src/app/target/debug/app"));
        assert!(glob_match("**/target/**", "/src/app/target"));
        assert!(glob_match("**/.git/**", "/src/app/.git"));
        assert!(!glob_match("**/target/**", "/src/app/targets.rs"));
        assert!(glob_match("*.swp", "/src/app/.main.rs.swp"));
        assert!(!glob_match("*.swp", "/src/app/main.rs"));
        assert!(glob_match("/src/*/x.txt", "/src/a/x.txt"));
        assert!(!glob_match("/src/*/x.txt", "/src/a/b/x.txt"));
        assert!(glob_match("/src/**/x.txt", "/src/a/b/x.txt"));
        assert!(glob_match("file?.txt", "/a/file1.txt"));
    }
}
