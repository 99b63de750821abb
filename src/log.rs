//! All output of multinode: supervisor events and worker output lines, text or JSON.
//!
//! The event loop never writes to the terminal itself. It formats a line and hands it to a
//! writer thread through a bounded queue; when the terminal (or pipe) is too slow and the
//! queue is full, lines are dropped and counted, and a `dropped N lines` event is printed as
//! soon as there is room again. A stalled terminal therefore slows no worker and no restart.
//!
//! Text output passes worker lines (and event messages) through [`escape_controls`]: a worker
//! may colour its lines, but it cannot move the cursor, clear the screen, retitle the window
//! or send any other terminal sequence. JSON output escapes every control character anyway.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::Write;
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::thread::JoinHandle;
use std::time::{SystemTime, UNIX_EPOCH};

use colored::{Color, Colorize};

use crate::cli::{ColorChoice, LogFormat};

/// Lines the writer thread may hold before new ones are dropped.
const QUEUE_LINES: usize = 4096;
/// Longest line printed whole; longer worker output is split at this many bytes.
pub const MAX_LINE: usize = 16 * 1024;

const SLOT_COLORS: [Color; 6] = [
    Color::Cyan,
    Color::Yellow,
    Color::Green,
    Color::Magenta,
    Color::Blue,
    Color::BrightRed,
];

/// Decides colour once, from `--color`, NO_COLOR and whether stderr is a terminal.
pub fn use_color(choice: ColorChoice) -> bool {
    use std::io::IsTerminal;
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => {
            std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
                && std::io::stderr().is_terminal()
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

/// A supervisor event: one line, with its kind, the worker it concerns and the facts it
/// reports as data. Text output shows `msg`; JSON output shows every field, so that scripts
/// (and the integration tests) read `event`, `slot`, `pid` and the fields, never the wording.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub kind: &'static str,
    pub level: Level,
    pub slot: Option<u32>,
    pub pid: Option<i32>,
    pub msg: String,
    /// Structured facts (`generation`, `code`, `signal`, `workers`, ...), JSON only.
    pub fields: Vec<(&'static str, serde_json::Value)>,
}

impl Event {
    pub fn info(kind: &'static str, msg: impl Into<String>) -> Self {
        Event {
            kind,
            level: Level::Info,
            slot: None,
            pid: None,
            msg: msg.into(),
            fields: Vec::new(),
        }
    }
    pub fn warn(kind: &'static str, msg: impl Into<String>) -> Self {
        Event {
            level: Level::Warn,
            ..Self::info(kind, msg)
        }
    }
    pub fn error(kind: &'static str, msg: impl Into<String>) -> Self {
        Event {
            level: Level::Error,
            ..Self::info(kind, msg)
        }
    }
    pub fn worker(mut self, slot: u32, pid: i32) -> Self {
        self.slot = Some(slot);
        self.pid = Some(pid);
        self
    }
    /// Adds a structured field (shown in JSON output).
    pub fn with(mut self, key: &'static str, value: impl Into<serde_json::Value>) -> Self {
        self.fields.push((key, value.into()));
        self
    }
}

struct Line {
    stream: Stream,
    text: String,
}

/// The handle the event loop writes through.
pub struct Output {
    tx: Option<SyncSender<Line>>,
    writer: Option<JoinHandle<()>>,
    format: LogFormat,
    color: bool,
    /// Lines dropped since the last `dropped` note.
    dropped: u64,
    /// Lines dropped since the start, for `/metrics`.
    dropped_total: u64,
}

impl Output {
    pub fn start(format: LogFormat, color: bool) -> Output {
        let mut out = Output::paused(format, color);
        out.start_writer();
        out
    }

    /// An output whose writer is not started yet (an upgraded image starts it once it has
    /// one thread no more: see `upgrade/restore.rs`); lines before then are dropped.
    pub fn paused(format: LogFormat, color: bool) -> Output {
        colored::control::set_override(color);
        Output {
            tx: None,
            writer: None,
            format,
            color,
            dropped: 0,
            dropped_total: 0,
        }
    }

    /// Starts the writer thread (again, after [`Output::finish`]: an upgrade whose exec
    /// failed goes on writing).
    pub fn start_writer(&mut self) {
        if self.tx.is_some() {
            return;
        }
        let (tx, rx) = sync_channel(QUEUE_LINES);
        self.writer = std::thread::Builder::new()
            .name("output".into())
            .spawn(move || write_lines(rx))
            .ok();
        self.tx = Some(tx);
    }

    /// The format and colouring in force.
    pub fn format(&self) -> (LogFormat, bool) {
        (self.format, self.color)
    }

    /// Lines dropped: since the start, and since the last note (an upgrade hands them over).
    pub fn dropped_counts(&self) -> [u64; 2] {
        [self.dropped_total, self.dropped]
    }

    pub fn set_dropped_counts(&mut self, [total, since]: [u64; 2]) {
        self.dropped_total = total;
        self.dropped = since;
    }

    /// Switches the format and colouring of what is written from now on (a reload can change
    /// both).
    pub fn set_format(&mut self, format: LogFormat, color: bool) {
        colored::control::set_override(color);
        self.format = format;
        self.color = color;
    }

    pub fn event(&mut self, ev: Event) {
        let text = self.format_event(&ev);
        self.send(Stream::Stderr, text);
    }

    fn format_event(&self, ev: &Event) -> String {
        match self.format {
            LogFormat::Text => {
                let who = match (ev.slot, ev.pid) {
                    (Some(s), Some(p)) => format!("{} ", worker_tag(s, p, self.color)),
                    _ => String::new(),
                };
                let text = escape_controls(&ev.msg);
                let msg = match ev.level {
                    Level::Info => text.normal(),
                    Level::Warn => text.yellow(),
                    Level::Error => text.red().bold(),
                };
                format!("{} {who}{msg}", "multinode |".bold())
            }
            LogFormat::Json => {
                let mut o = json_head("multinode");
                let level = match ev.level {
                    Level::Info => "info",
                    Level::Warn => "warn",
                    Level::Error => "error",
                };
                let _ = write!(o, ",\"level\":\"{level}\",\"event\":\"{}\"", ev.kind);
                if let (Some(s), Some(p)) = (ev.slot, ev.pid) {
                    let _ = write!(o, ",\"slot\":{s},\"pid\":{p}");
                }
                for (k, v) in &ev.fields {
                    let _ = write!(o, ",{}:{v}", json_str(k));
                }
                let _ = write!(o, ",\"msg\":{}}}", json_str(&ev.msg));
                o
            }
        }
    }

    /// One line of a worker's output, without its newline.
    pub fn worker_line(&mut self, slot: u32, pid: i32, stream: Stream, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let text = match self.format {
            LogFormat::Text => format!(
                "{} | {}",
                worker_tag(slot, pid, self.color),
                escape_controls(&line)
            ),
            LogFormat::Json => {
                let mut o = json_head("worker");
                let s = if stream == Stream::Stdout {
                    "stdout"
                } else {
                    "stderr"
                };
                let _ = write!(
                    o,
                    ",\"slot\":{slot},\"pid\":{pid},\"stream\":\"{s}\",\"msg\":{}}}",
                    json_str(&line)
                );
                o
            }
        };
        self.send(stream, text);
    }

    fn send(&mut self, stream: Stream, text: String) {
        let Some(tx) = &self.tx else { return };
        if self.dropped > 0 {
            let note = self.format_event(
                &Event::warn(
                    "dropped",
                    format!(
                        "dropped {} lines of output: the terminal or pipe was too slow",
                        self.dropped
                    ),
                )
                .with("lines", self.dropped),
            );
            match tx.try_send(Line {
                stream: Stream::Stderr,
                text: note,
            }) {
                Ok(()) => self.dropped = 0,
                Err(_) => {
                    self.dropped += 1;
                    self.dropped_total += 1;
                    return;
                }
            }
        }
        match tx.try_send(Line { stream, text }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.dropped += 1;
                self.dropped_total += 1;
            }
            Err(TrySendError::Disconnected(_)) => self.tx = None,
        }
    }

    /// Lines dropped since the start (the terminal or pipe was too slow).
    pub fn dropped_total(&self) -> u64 {
        self.dropped_total
    }

    /// Waits until everything queued is written, at most `d`; false if the writer is still
    /// stuck in a write then (a stalled terminal or pipe), which it then finishes on its own.
    /// The writer is stopped either way; [`Output::start_writer`] starts another.
    pub fn flush_within(&mut self, d: std::time::Duration) -> bool {
        self.tx = None;
        let Some(w) = self.writer.take() else {
            return true;
        };
        let until = std::time::Instant::now() + d;
        while !w.is_finished() {
            if std::time::Instant::now() >= until {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let _ = w.join();
        true
    }

    /// Waits until everything queued is written. Called once, at exit.
    pub fn finish(&mut self) {
        self.tx = None;
        if let Some(w) = self.writer.take() {
            let _ = w.join();
        }
    }
}

impl Drop for Output {
    fn drop(&mut self) {
        self.finish();
    }
}

fn worker_tag(slot: u32, pid: i32, color: bool) -> String {
    let tag = format!("worker.{slot}[{pid}]");
    if color {
        tag.color(SLOT_COLORS[slot as usize % SLOT_COLORS.len()])
            .to_string()
    } else {
        tag
    }
}

fn write_lines(rx: Receiver<Line>) {
    let stdout = std::io::stdout();
    let stderr = std::io::stderr();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let mut err = std::io::BufWriter::new(stderr.lock());
    let mut last = Stream::Stderr;
    while let Ok(first) = rx.recv() {
        let mut next = Some(first);
        // Write everything queued, then flush once; flush on every switch of stream too, so
        // that a terminal showing both sees the lines in the order they happened.
        while let Some(line) = next {
            if line.stream != last {
                let _ = out.flush();
                let _ = err.flush();
                last = line.stream;
            }
            let w: &mut dyn Write = match line.stream {
                Stream::Stdout => &mut out,
                Stream::Stderr => &mut err,
            };
            let _ = w.write_all(line.text.as_bytes());
            let _ = w.write_all(b"\n");
            next = rx.try_recv().ok();
        }
        let _ = out.flush();
        let _ = err.flush();
    }
}

/// `s` made safe for a terminal: every control character but tab (C0, DEL, C1) is written as
/// `\xNN`, except colour sequences (SGR: `ESC [` digits and `;` or `:` `m`), which pass; a
/// line that coloured itself ends with a reset, so the colour stops with it.
pub fn escape_controls(s: &str) -> Cow<'_, str> {
    if !s.chars().any(is_escaped) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut coloured = false;
    let mut rest = s;
    while let Some(c) = rest.chars().next() {
        if let Some(n) = sgr_len(rest) {
            out.push_str(&rest[..n]);
            rest = &rest[n..];
            coloured = true;
            continue;
        }
        if is_escaped(c) {
            let _ = write!(out, "\\x{:02x}", u32::from(c));
        } else {
            out.push(c);
        }
        rest = &rest[c.len_utf8()..];
    }
    if coloured {
        out.push_str("\x1b[0m");
    }
    Cow::Owned(out)
}

fn is_escaped(c: char) -> bool {
    c.is_control() && c != '\t'
}

/// The length of the colour sequence `s` starts with, if it does.
fn sgr_len(s: &str) -> Option<usize> {
    let b = s.strip_prefix("\x1b[")?.as_bytes();
    let params = b
        .iter()
        .take_while(|c| c.is_ascii_digit() || **c == b';' || **c == b':')
        .count();
    (b.get(params) == Some(&b'm')).then_some(2 + params + 1)
}

fn json_head(source: &str) -> String {
    format!("{{\"time\":\"{}\",\"source\":\"{source}\"", rfc3339_now())
}

fn json_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The current UTC time as `2026-11-26T11:43:23.123Z`.
pub fn rfc3339_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let secs = d.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

/// Splits a worker's byte stream into lines, keeping the unfinished tail for the next read.
#[derive(Default)]
pub struct LineSplitter {
    buf: Vec<u8>,
}

impl LineSplitter {
    /// Appends `data` and calls `emit` for every complete line (and for every MAX_LINE bytes of
    /// a line too long to hold).
    pub fn push(&mut self, data: &[u8], mut emit: impl FnMut(&[u8])) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        while let Some(nl) = self.buf[start..].iter().position(|&b| b == b'\n') {
            let end = start + nl;
            // However the bytes arrived, a line longer than MAX_LINE comes out in pieces.
            let line = trim_cr(&self.buf[start..end]);
            for piece in line.chunks(MAX_LINE) {
                emit(piece);
            }
            if line.is_empty() {
                emit(line);
            }
            start = end + 1;
        }
        while self.buf.len() - start >= MAX_LINE {
            emit(&self.buf[start..start + MAX_LINE]);
            start += MAX_LINE;
        }
        self.buf.drain(..start);
    }

    /// The unfinished tail (an upgrade hands it over).
    pub fn partial(&self) -> &[u8] {
        &self.buf
    }

    /// A splitter holding `partial` already.
    pub fn with_partial(partial: Vec<u8>) -> LineSplitter {
        LineSplitter { buf: partial }
    }

    /// Emits what is left (a last line without a newline).
    pub fn finish(&mut self, mut emit: impl FnMut(&[u8])) {
        if !self.buf.is_empty() {
            emit(trim_cr(&self.buf));
            self.buf.clear();
        }
    }
}

fn trim_cr(l: &[u8]) -> &[u8] {
    l.strip_suffix(b"\r").unwrap_or(l)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splitter_keeps_partial_lines() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.push(b"one\ntw", |l| got.push(l.to_vec()));
        s.push(b"o\r\nthr", |l| got.push(l.to_vec()));
        s.finish(|l| got.push(l.to_vec()));
        assert_eq!(got, [b"one".to_vec(), b"two".to_vec(), b"thr".to_vec()]);
    }

    #[test]
    fn splitter_bounds_long_lines() {
        let mut s = LineSplitter::default();
        let mut got = Vec::new();
        s.push(&vec![b'x'; MAX_LINE * 2 + 5], |l| got.push(l.len()));
        assert_eq!(got, [MAX_LINE, MAX_LINE]);
        s.finish(|l| got.push(l.len()));
        assert_eq!(got, [MAX_LINE, MAX_LINE, 5]);
        // A long line arriving whole is split the same way.
        let mut got = Vec::new();
        let mut line = vec![b'y'; MAX_LINE + 7];
        line.push(b'\n');
        s.push(&line, |l| got.push(l.len()));
        assert_eq!(got, [MAX_LINE, 7]);
    }

    #[test]
    fn control_characters_are_escaped_but_colours_pass() {
        assert_eq!(escape_controls("plain\ttext"), "plain\ttext");
        assert!(matches!(escape_controls("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape_controls("\x1b]0;title\x07 and \x1b[2J"),
            "\\x1b]0;title\\x07 and \\x1b[2J"
        );
        assert_eq!(
            escape_controls("\x1b[31mred\x1b[0m \x1b[1;38;5;200mpink\x1b[m"),
            "\x1b[31mred\x1b[0m \x1b[1;38;5;200mpink\x1b[m\x1b[0m"
        );
        assert_eq!(
            escape_controls("a\rb\x08c\x7f\u{9b}2J"),
            "a\\x0db\\x08c\\x7f\\x9b2J"
        );
        assert_eq!(escape_controls("\x1b[31"), "\\x1b[31");
        assert_eq!(escape_controls("\x1b[?25l"), "\\x1b[?25l");
    }

    #[test]
    fn time_format() {
        let t = rfc3339_now();
        assert_eq!(t.len(), 24, "{t}");
        assert!(t.starts_with("20") && t.ends_with('Z'));
    }
}
