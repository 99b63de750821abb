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

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender, channel};

use nix::fcntl::OFlag;
use notify::{EventKind, RecommendedWatcher, RecursiveMode, Watcher as _};

use crate::error::{Error, Result};

/// Always ignored; `--watch-ignore` adds more.
pub const DEFAULT_IGNORES: &[&str] = &["**/.git/**", "**/target/**"];

pub struct Watch {
    _watcher: RecommendedWatcher,
    wake_r: OwnedFd,
    changes: Receiver<PathBuf>,
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
        let mut patterns: Vec<String> = DEFAULT_IGNORES.iter().map(|s| s.to_string()).collect();
        patterns.extend(ignores.iter().cloned());

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

fn relevant(
    path: &Path,
    roots: &[(PathBuf, Option<std::ffi::OsString>)],
    ignores: &[String],
) -> bool {
    let under_root = roots.iter().any(|(dir, file)| match file {
        Some(name) => {
            path.parent() == Some(dir.as_path()) && path.file_name() == Some(name.as_os_str())
        }
        None => path.starts_with(dir),
    });
    if !under_root {
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
    use super::glob_match;

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
