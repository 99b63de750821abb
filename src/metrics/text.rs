//! `/metrics`: what the supervisor knows, in the Prometheus text exposition format
//! (`text/plain; version=0.0.4`), written by hand (README, "Crates, and where one did not
//! fit", says why not with `prometheus-client`).
//!
//! The format, as far as it is used here: per metric family one `# HELP name text` line (text
//! with `\` and newline escaped) and one `# TYPE name counter|gauge` line, then its samples,
//! `name{label="value",...} number`, label values with `\`, `"` and newline escaped. Every
//! family appears once, its samples together.

use std::fmt::Write as _;

use crate::control::protocol::{SlotStatus, Status};
use crate::route::router::RouteStats;
use crate::usage::Usage;

/// The `Content-Type` of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What one scrape reports: the core's status (with each worker's CPU and memory filled in),
/// route mode's counters, and the supervisor's own figures.
pub struct Snapshot<'a> {
    pub status: &'a Status,
    pub route: Option<&'a RouteStats>,
    /// Output lines dropped since the start (a slow terminal or pipe).
    pub log_dropped: u64,
    /// The supervisor process itself (not its workers).
    pub supervisor: Option<Usage>,
}

#[derive(Clone, Copy)]
enum Kind {
    Counter,
    Gauge,
}

/// The text being written; a family is opened with [`Text::family`], then its samples.
struct Text {
    out: String,
}

impl Text {
    fn family(&mut self, name: &str, kind: Kind, help: &str) {
        let kind = match kind {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
        };
        let _ = writeln!(self.out, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.out, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.out.push_str(name);
        if !labels.is_empty() {
            self.out.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.out.push(',');
                }
                let _ = write!(self.out, "{k}=\"{}\"", escape_label(v));
            }
            self.out.push('}');
        }
        self.out.push(' ');
        self.out.push_str(&number(value));
        self.out.push('\n');
    }

    /// A family with one sample and no labels.
    fn single(&mut self, name: &str, kind: Kind, help: &str, value: f64) {
        self.family(name, kind, help);
        self.sample(name, &[], value);
    }

    /// A family with one sample per slot, `value` of each (`None`: no sample for that slot).
    fn per_slot<T>(
        &mut self,
        name: &str,
        kind: Kind,
        help: &str,
        slots: &[(u32, T)],
        value: impl Fn(&T) -> Option<f64>,
    ) {
        self.family(name, kind, help);
        for (slot, t) in slots {
            if let Some(v) = value(t) {
                self.sample(name, &[("slot", &slot.to_string())], v);
            }
        }
    }
}

/// `\` and newline escaped, as HELP text must be.
fn escape_help(s: &str) -> String {
    s.replace('\\', r"\\").replace('\n', r"\n")
}

/// `\`, `"` and newline escaped, as a label value must be.
pub fn escape_label(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str(r"\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str(r"\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value: integers without a fraction, `NaN`, `+Inf`, `-Inf` as the format spells
/// them. (Rust prints no exponent, so the digits are all there.)
fn number(v: f64) -> String {
    if v.is_nan() {
        "NaN".into()
    } else if v.is_infinite() {
        if v > 0.0 {
            "+Inf".into()
        } else {
            "-Inf".into()
        }
    } else {
        format!("{v}")
    }
}

/// What the rows of one slot add up to.
#[derive(Default)]
struct SlotFigures {
    up: bool,
    ready: bool,
    /// Of the slot's newest serving worker.
    uptime_ms: Option<u64>,
    cpu_seconds: Option<f64>,
    memory_bytes: Option<u64>,
    restarts: crate::control::protocol::Restarts,
}

/// A status row's worker is a running process (not one whose leader is gone).
fn is_up(r: &SlotStatus) -> bool {
    r.pid.is_some() && r.state != "exiting"
}

/// A status row's worker is ready (a recycled one serves, ready, until its replacement is).
fn is_ready(r: &SlotStatus) -> bool {
    r.pid.is_some() && matches!(r.state.as_str(), "ready" | "recycling")
}

fn is_serving(r: &SlotStatus) -> bool {
    r.pid.is_some() && matches!(r.state.as_str(), "starting" | "ready" | "recycling")
}

/// One entry per slot in the status (a slot can have two workers during a reload or a
/// recycle: CPU and memory are their sum; uptime is the newest serving one's).
fn by_slot(status: &Status) -> Vec<(u32, SlotFigures)> {
    let mut slots: Vec<(u32, SlotFigures)> = Vec::new();
    for r in &status.slots {
        let i = match slots.iter().position(|(s, _)| *s == r.slot) {
            Some(i) => i,
            None => {
                slots.push((r.slot, SlotFigures::default()));
                slots.len() - 1
            }
        };
        let f = &mut slots[i].1;
        f.up |= is_up(r);
        f.ready |= is_ready(r);
        // Every row of a slot carries the slot's counts; a slot scaled away has none.
        if r.restart_causes.total() > f.restarts.total() {
            f.restarts = r.restart_causes;
        }
        if is_serving(r) {
            f.uptime_ms = match (f.uptime_ms, r.uptime_ms) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        if let Some(c) = r.cpu_seconds {
            *f.cpu_seconds.get_or_insert(0.0) += c;
        }
        if let Some(m) = r.memory_bytes {
            *f.memory_bytes.get_or_insert(0) += m;
        }
    }
    slots.sort_by_key(|(s, _)| *s);
    slots
}

fn flag(b: bool) -> f64 {
    if b { 1.0 } else { 0.0 }
}

/// The whole `/metrics` text.
pub fn encode(s: &Snapshot) -> String {
    let mut t = Text {
        out: String::with_capacity(4096),
    };
    let st = s.status;
    t.family(
        "multinode_build_info",
        Kind::Gauge,
        "The multinode that runs: its version in the label; always 1.",
    );
    t.sample("multinode_build_info", &[("version", &st.version)], 1.0);
    t.single(
        "multinode_workers_configured",
        Kind::Gauge,
        "Worker slots configured (--workers, scale, TTIN/TTOU).",
        f64::from(st.workers),
    );
    t.single(
        "multinode_generation",
        Kind::Gauge,
        "The generation every slot runs once no reload is under way (1, then +1 per reload).",
        st.generation as f64,
    );
    t.single(
        "multinode_healthy",
        Kind::Gauge,
        "1 when /healthz says 200: every slot has a ready worker and no stop was asked for.",
        flag(st.unhealthy.is_none()),
    );
    t.family(
        "multinode_reloads_total",
        Kind::Counter,
        "Rolling reloads since the start, by outcome (ok: every slot runs the new generation; failed: rolled back).",
    );
    t.sample(
        "multinode_reloads_total",
        &[("outcome", "ok")],
        st.reloads_ok as f64,
    );
    t.sample(
        "multinode_reloads_total",
        &[("outcome", "failed")],
        st.reloads_failed as f64,
    );
    t.family(
        "multinode_upgrades_total",
        Kind::Counter,
        "In-place upgrades of multinode itself since the start, by outcome (ok: the new binary runs; failed: the old one goes on).",
    );
    t.sample(
        "multinode_upgrades_total",
        &[("outcome", "ok")],
        st.upgrades as f64,
    );
    t.sample(
        "multinode_upgrades_total",
        &[("outcome", "failed")],
        st.upgrades_failed as f64,
    );
    t.single(
        "multinode_log_lines_dropped_total",
        Kind::Counter,
        "Output lines (worker output and events) dropped because the terminal or pipe was too slow.",
        s.log_dropped as f64,
    );
    if let Some(u) = s.supervisor {
        t.single(
            "process_cpu_seconds_total",
            Kind::Counter,
            "CPU time of the supervisor process itself (user and system), in seconds.",
            u.cpu_seconds,
        );
        t.single(
            "process_resident_memory_bytes",
            Kind::Gauge,
            "Resident memory of the supervisor process itself, in bytes.",
            u.memory_bytes as f64,
        );
    }

    let slots = by_slot(st);
    t.per_slot(
        "multinode_slot_up",
        Kind::Gauge,
        "1 when the slot has a running worker.",
        &slots,
        |f| Some(flag(f.up)),
    );
    t.per_slot(
        "multinode_slot_ready",
        Kind::Gauge,
        "1 when the slot has a ready worker.",
        &slots,
        |f| Some(flag(f.ready)),
    );
    let name = "multinode_slot_restarts_total";
    t.family(
        name,
        Kind::Counter,
        "Workers of the slot replaced unasked, by cause: crash (exited, or not ready in time), watchdog (hung), memory (--max-memory), requests (--max-requests).",
    );
    for (slot, f) in &slots {
        let slot = slot.to_string();
        let r = f.restarts;
        for (cause, n) in [
            ("crash", r.crash),
            ("watchdog", r.watchdog),
            ("memory", r.memory),
            ("requests", r.requests),
        ] {
            t.sample(name, &[("slot", &slot), ("cause", cause)], f64::from(n));
        }
    }
    t.per_slot(
        "multinode_slot_uptime_seconds",
        Kind::Gauge,
        "Seconds since the slot's newest serving worker started.",
        &slots,
        |f| f.uptime_ms.map(|ms| ms as f64 / 1000.0),
    );
    t.per_slot(
        "multinode_slot_cpu_seconds_total",
        Kind::Counter,
        "CPU time used by the slot's worker (with everything it started), in seconds; starts over with each new worker.",
        &slots,
        |f| f.cpu_seconds,
    );
    t.per_slot(
        "multinode_slot_memory_bytes",
        Kind::Gauge,
        "Memory used by the slot's worker (with everything it started), in bytes.",
        &slots,
        |f| f.memory_bytes.map(|m| m as f64),
    );

    if let Some(r) = s.route {
        t.per_slot(
            "multinode_route_connections_total",
            Kind::Counter,
            "Connections handed over to the slot's workers (route mode).",
            &r.slots,
            |x| Some(x.handed as f64),
        );
        t.per_slot(
            "multinode_route_connections_open",
            Kind::Gauge,
            "Connections handed to the slot's workers and not yet reported closed by them.",
            &r.slots,
            |x| Some(x.open as f64),
        );
        t.per_slot(
            "multinode_route_connections_queued",
            Kind::Gauge,
            "Connections queued in multinode for the slot's workers (their channel was full).",
            &r.slots,
            |x| Some(x.queued as f64),
        );
        t.single(
            "multinode_route_connections_waiting",
            Kind::Gauge,
            "Connections held in multinode while no worker runs at all.",
            r.backlog as f64,
        );
        t.single(
            "multinode_route_proxy_pending",
            Kind::Gauge,
            "Connections waiting for their PROXY protocol header.",
            r.pending as f64,
        );
        let name = "multinode_route_connections_refused_total";
        t.family(
            name,
            Kind::Counter,
            "Connections closed without reaching a worker, by reason: full (no worker could take it), proxy_untrusted (not from --proxy-from), proxy_invalid, proxy_timeout, proxy_evicted (PROXY header).",
        );
        let f = &r.refused;
        for (reason, n) in [
            ("full", f.full),
            ("proxy_untrusted", f.untrusted),
            ("proxy_invalid", f.invalid),
            ("proxy_timeout", f.timeout),
            ("proxy_evicted", f.evicted),
        ] {
            t.sample(name, &[("reason", reason)], n as f64);
        }
    }
    t.out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::control::protocol::Restarts;
    use crate::route::router::{Refused, SlotRoute};

    fn row(slot: u32, pid: Option<i32>, state: &str) -> SlotStatus {
        SlotStatus {
            slot,
            pid,
            state: state.into(),
            generation: pid.map(|_| 1),
            uptime_ms: pid.map(|_| 1500),
            restarts: 0,
            restart_causes: Restarts::default(),
            last_exit: None,
            status: None,
            cpu_seconds: pid.map(|_| 0.25),
            memory_bytes: pid.map(|_| 1 << 20),
        }
    }

    fn status(slots: Vec<SlotStatus>) -> Status {
        Status {
            name: "web".into(),
            pid: 1,
            generation: 3,
            workers: 2,
            ready: false,
            reloading: None,
            stopping: false,
            unhealthy: Some("slot 1 has no ready worker".into()),
            reloads_ok: 2,
            reloads_failed: 1,
            version: "0.1.0".into(),
            binary: None,
            upgrades: 0,
            upgrades_failed: 0,
            last_upgrade: None,
            upgrading: false,
            control: None,
            slots,
        }
    }

    /// Every sample line of `text`: (name with labels, value).
    fn samples(text: &str) -> Vec<(String, String)> {
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .map(|l| {
                let (k, v) = l.rsplit_once(' ').unwrap();
                (k.to_string(), v.to_string())
            })
            .collect()
    }

    fn value(text: &str, key: &str) -> Option<String> {
        samples(text)
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }

    #[test]
    fn escaping() {
        assert_eq!(escape_label(r#"a\b"c"#), r#"a\\b\"c"#);
        assert_eq!(escape_label("x\ny"), r"x\ny");
        assert_eq!(escape_help("1\\2\n3\""), "1\\\\2\\n3\"");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(0.25), "0.25");
        assert_eq!(number(f64::NAN), "NaN");
        assert_eq!(number(f64::INFINITY), "+Inf");
        assert_eq!(number(1e21), "1000000000000000000000");
    }

    #[test]
    fn a_scrape() {
        let mut restarting = row(1, None, "restarting");
        restarting.restart_causes = Restarts {
            crash: 2,
            watchdog: 1,
            memory: 0,
            requests: 0,
        };
        restarting.restarts = 3;
        // Slot 0 in a reload: the old worker ready, the new one starting.
        let mut new = row(0, Some(20), "starting");
        new.uptime_ms = Some(100);
        let st = status(vec![row(0, Some(10), "ready"), new, restarting]);
        let route = RouteStats {
            slots: vec![(
                0,
                SlotRoute {
                    handed: 7,
                    open: 2,
                    queued: 1,
                },
            )],
            backlog: 0,
            pending: 0,
            refused: Refused {
                full: 1,
                untrusted: 4,
                ..Refused::default()
            },
        };
        let text = encode(&Snapshot {
            status: &st,
            route: Some(&route),
            log_dropped: 5,
            supervisor: None,
        });
        let v = |k: &str| value(&text, k).unwrap_or_else(|| panic!("no {k} in\n{text}"));
        assert_eq!(v(r#"multinode_build_info{version="0.1.0"}"#), "1");
        assert_eq!(v("multinode_generation"), "3");
        assert_eq!(v("multinode_healthy"), "0");
        assert_eq!(v(r#"multinode_reloads_total{outcome="failed"}"#), "1");
        assert_eq!(v("multinode_log_lines_dropped_total"), "5");
        assert_eq!(v(r#"multinode_slot_up{slot="0"}"#), "1");
        assert_eq!(v(r#"multinode_slot_up{slot="1"}"#), "0");
        assert_eq!(v(r#"multinode_slot_ready{slot="0"}"#), "1");
        assert_eq!(v(r#"multinode_slot_ready{slot="1"}"#), "0");
        assert_eq!(
            v(r#"multinode_slot_restarts_total{slot="1",cause="crash"}"#),
            "2"
        );
        assert_eq!(
            v(r#"multinode_slot_restarts_total{slot="1",cause="watchdog"}"#),
            "1"
        );
        assert_eq!(v(r#"multinode_slot_uptime_seconds{slot="0"}"#), "0.1");
        assert_eq!(v(r#"multinode_slot_cpu_seconds_total{slot="0"}"#), "0.5");
        assert_eq!(v(r#"multinode_slot_memory_bytes{slot="0"}"#), "2097152");
        assert_eq!(
            value(&text, r#"multinode_slot_memory_bytes{slot="1"}"#),
            None
        );
        assert_eq!(v(r#"multinode_route_connections_total{slot="0"}"#), "7");
        assert_eq!(
            v(r#"multinode_route_connections_refused_total{reason="proxy_untrusted"}"#),
            "4"
        );
        // Each family once, HELP before TYPE before its samples, samples together.
        let mut seen = Vec::new();
        let mut current = String::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# HELP ") {
                let name = rest.split(' ').next().unwrap().to_string();
                assert!(!seen.contains(&name), "{name} twice");
                seen.push(name.clone());
                current = name;
            } else if let Some(rest) = l.strip_prefix("# TYPE ") {
                assert!(rest.starts_with(&format!("{current} ")), "{l}");
            } else {
                let name = l.split(['{', ' ']).next().unwrap();
                assert_eq!(name, current, "{l}");
            }
        }
    }

    #[test]
    fn no_route_families_outside_route_mode() {
        let st = status(vec![row(0, Some(10), "ready")]);
        let text = encode(&Snapshot {
            status: &st,
            route: None,
            log_dropped: 0,
            supervisor: None,
        });
        assert!(!text.contains("multinode_route_"));
    }
}
