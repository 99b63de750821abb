//! The core's rules, tested without processes: a small simulator plays the shell (it answers
//! spawns with made-up pids, re-reads no file, binds nothing) and owns the clock.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use nix::unistd::Pid;

use super::*;
use crate::cli::{RestartPolicy, RoutePolicy};
use crate::config::{Mode, ReadyMode};
use crate::control::protocol::{Reply, Request};
use crate::supervisor::worker::{ExitStatus, Leave};

const MS: Duration = Duration::from_millis(1);
const SEC: Duration = Duration::from_secs(1);

fn runtime(workers: u32) -> Runtime {
    Runtime {
        workers,
        restart: RestartPolicy::Always,
        backoff_max: Duration::from_secs(30),
        min_uptime: Duration::from_secs(5),
        max_restarts: None,
        stop_signal: Signal::SIGTERM,
        grace: Duration::from_secs(10),
        ready: ReadyMode::Notify,
        ready_timeout: Duration::from_secs(60),
        reload_parallel: 1,
        watch_debounce: Duration::from_millis(300),
        watchdog: None,
        watchdog_signal: Signal::SIGABRT,
        max_memory: None,
        max_requests: None,
        stop_delay: Duration::ZERO,
    }
}

/// Plays the shell: answers what the core asks, records the rest.
struct Sim {
    core: Core,
    now: Instant,
    next_pid: i32,
    /// Spawns answered with this error (one each) instead of a pid.
    spawn_errors: Vec<String>,
    /// The answer to the next config re-read.
    reread: Option<Result<Option<Box<Reread>>, String>>,
    /// Config re-reads are answered later, by the test (as when the guard reads the file):
    /// how many were asked for.
    deferred_reads: Option<usize>,
    /// reuseport slots that fail to open.
    open_fails: bool,
    spawns: Vec<(u32, u64, Pid)>,
    signals: Vec<(Pid, Signal)>,
    logs: Vec<Log>,
    replies: Vec<(ClientId, Reply)>,
    held: Vec<ClientId>,
    systemd: Vec<SdNote>,
    rolled_out: Vec<u64>,
    opened: Vec<u32>,
    closed: Vec<u32>,
    /// Upgrades asked of the shell (the binary), and hand-overs.
    upgrades: Vec<Option<String>>,
    handed_over: Vec<String>,
}

impl Sim {
    fn new(rt: Runtime) -> Sim {
        Sim::with(rt, Mode::Shared, false)
    }

    fn with(rt: Runtime, mode: Mode, systemd: bool) -> Sim {
        let fixed = Fixed {
            name: "test".into(),
            mode,
            systemd,
            control: Some("/run/multinode/test/control.sock".into()),
            pid: 1,
            sd_watchdog: None,
        };
        Sim {
            core: Core::new(rt, fixed, Jitter::seeded(7)),
            now: Instant::now(),
            next_pid: 100,
            spawn_errors: Vec::new(),
            reread: None,
            deferred_reads: None,
            open_fails: false,
            spawns: Vec::new(),
            signals: Vec::new(),
            logs: Vec::new(),
            replies: Vec::new(),
            held: Vec::new(),
            systemd: Vec::new(),
            rolled_out: Vec::new(),
            opened: Vec::new(),
            closed: Vec::new(),
            upgrades: Vec::new(),
            handed_over: Vec::new(),
        }
    }

    /// Starts every slot and makes every worker ready.
    fn started(rt: Runtime) -> Sim {
        let mut s = Sim::new(rt);
        s.feed(Event::Start);
        s.ready_all();
        s
    }

    /// Hands an event to the core and answers its actions, as the shell does.
    fn feed(&mut self, ev: Event) {
        let mut queue = std::collections::VecDeque::from([ev]);
        while let Some(ev) = queue.pop_front() {
            for a in self.core.handle(ev, self.now) {
                match a {
                    Action::Spawn {
                        slot, generation, ..
                    } => {
                        if !self.spawn_errors.is_empty() {
                            let error = self.spawn_errors.remove(0);
                            queue.push_back(Event::SpawnFailed {
                                slot,
                                generation,
                                error,
                            });
                        } else {
                            self.next_pid += 1;
                            let pid = Pid::from_raw(self.next_pid);
                            self.spawns.push((slot, generation, pid));
                            queue.push_back(Event::Spawned {
                                slot,
                                generation,
                                pid,
                            });
                        }
                    }
                    Action::Signal { pid, signal } => self.signals.push((pid, signal)),
                    Action::Log(l) => self.logs.push(l),
                    Action::Reply { client, reply } => self.replies.push((client, reply)),
                    Action::Hold { client } => self.held.push(client),
                    Action::Systemd(n) => self.systemd.push(n),
                    Action::ReadConfig => match &mut self.deferred_reads {
                        Some(n) => *n += 1,
                        None => {
                            let r = self.reread.take().unwrap_or(Ok(None));
                            queue.push_back(Event::ConfigRead(r));
                        }
                    },
                    Action::RolledOut { generation } => self.rolled_out.push(generation),
                    Action::OpenSlot { slot } => {
                        self.opened.push(slot);
                        let result = if self.open_fails {
                            Err("permission denied".into())
                        } else {
                            Ok(())
                        };
                        queue.push_back(Event::SlotOpened { slot, result });
                    }
                    Action::CloseSlot { slot } => self.closed.push(slot),
                    Action::Inspect { .. } => {}
                    Action::Upgrade { binary } => self.upgrades.push(binary),
                    Action::HandOver { binary } => self.handed_over.push(binary),
                }
            }
        }
    }

    /// Moves the clock on by `d`, ticking at every deadline on the way, as the shell's poll
    /// timeout does.
    fn advance(&mut self, d: Duration) {
        let end = self.now + d;
        while let Some(at) = self.core.next_deadline().filter(|&t| t <= end) {
            self.now = self.now.max(at);
            self.feed(Event::Tick);
        }
        self.now = end;
    }

    fn pids(&self) -> Vec<Pid> {
        self.core.workers.iter().map(|w| w.pid).collect()
    }

    fn serving(&self, slot: u32) -> Option<&Worker> {
        self.core
            .workers
            .iter()
            .find(|w| w.slot == slot && w.serving())
    }

    fn pid_of(&self, slot: u32) -> Pid {
        self.serving(slot).expect("a serving worker").pid
    }

    fn ready(&mut self, pid: Pid) {
        self.feed(Event::Notify {
            pid,
            fields: vec![("READY".into(), "1".into())],
        });
    }

    fn ready_all(&mut self) {
        for pid in self.pids() {
            self.ready(pid);
        }
    }

    /// The leader exits and its group is gone with it.
    fn exit(&mut self, pid: Pid, code: i32) {
        self.feed(Event::Exited {
            pid,
            status: ExitStatus::Code(code),
            group_alive: false,
        });
    }

    fn killed_by(&mut self, pid: Pid, signal: Signal) {
        self.feed(Event::Exited {
            pid,
            status: ExitStatus::Signal {
                signal,
                core_dumped: false,
            },
            group_alive: false,
        });
    }

    /// Every worker that was sent `sig` ends by it.
    fn obey(&mut self, sig: Signal) {
        let targets: Vec<Pid> = self
            .signals
            .iter()
            .filter(|(_, s)| *s == sig)
            .map(|(p, _)| *p)
            .collect();
        for pid in targets {
            if self.core.workers.iter().any(|w| w.pid == pid) {
                self.killed_by(pid, sig);
            }
        }
    }

    fn signalled(&self, pid: Pid, sig: Signal) -> bool {
        self.signals.contains(&(pid, sig))
    }

    fn events(&self, kind: &str) -> Vec<&Log> {
        self.logs.iter().filter(|l| l.kind == kind).collect()
    }

    fn field(l: &Log, key: &str) -> serde_json::Value {
        l.fields
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.clone())
            .unwrap_or(serde_json::Value::Null)
    }

    fn control(&mut self, client: ClientId, request: Request) {
        self.feed(Event::Control { client, request });
    }

    fn reply_to(&self, client: ClientId) -> Option<&Reply> {
        self.replies
            .iter()
            .rev()
            .find(|(c, _)| *c == client)
            .map(|(_, r)| r)
    }

    fn generations(&self) -> Vec<u64> {
        let mut g: Vec<u64> = self
            .core
            .workers
            .iter()
            .filter(|w| w.serving())
            .map(|w| w.generation)
            .collect();
        g.sort();
        g
    }
}

// ---- starting -------------------------------------------------------------------------------

#[test]
fn start_spawns_every_slot_once_in_order() {
    let mut s = Sim::new(runtime(3));
    s.feed(Event::Start);
    let slots: Vec<u32> = s.spawns.iter().map(|(slot, _, _)| *slot).collect();
    assert_eq!(slots, [0, 1, 2]);
    assert!(s.spawns.iter().all(|(_, g, _)| *g == 1));
    assert_eq!(s.events("started").len(), 3);
    assert!(!s.core.finished());
}

#[test]
fn delay_mode_makes_a_worker_ready_after_the_delay() {
    let mut rt = runtime(1);
    rt.ready = ReadyMode::Delay(SEC);
    let mut s = Sim::new(rt);
    s.feed(Event::Start);
    s.advance(999 * MS);
    assert!(s.events("ready").is_empty());
    s.advance(2 * MS);
    let ready = s.events("ready");
    assert_eq!(ready.len(), 1);
    assert_eq!(Sim::field(ready[0], "via"), "delay");
}

#[test]
fn notify_mode_waits_for_ready_and_keeps_status_text() {
    let mut s = Sim::new(runtime(1));
    s.feed(Event::Start);
    let pid = s.pid_of(0);
    s.advance(30 * SEC);
    assert!(!s.core.workers[0].is_ready());
    s.feed(Event::Notify {
        pid,
        fields: vec![("STATUS".into(), "warming up".into())],
    });
    s.ready(pid);
    assert!(s.core.workers[0].is_ready());
    assert_eq!(s.core.workers[0].status_text.as_deref(), Some("warming up"));
    // Once ready, nothing is pending: an idle supervisor has no deadline at all.
    assert_eq!(s.core.next_deadline(), None);
}

#[test]
fn a_worker_not_ready_in_time_is_stopped_and_replaced() {
    let mut s = Sim::new(runtime(1));
    s.feed(Event::Start);
    let pid = s.pid_of(0);
    s.advance(61 * SEC);
    assert!(s.signalled(pid, Signal::SIGTERM));
    assert_eq!(s.events("not-ready").len(), 1);
    s.obey(Signal::SIGTERM);
    s.advance(SEC);
    assert_eq!(s.spawns.len(), 2, "restarted after it ended");
}

#[test]
fn a_program_that_cannot_start_at_all_stops_with_exit_5() {
    let mut s = Sim::new(runtime(2));
    s.spawn_errors
        .push("/bin/nope: no such file or directory".into());
    s.feed(Event::Start);
    assert_eq!(s.events("start-failed").len(), 1);
    assert!(s.spawns.is_empty(), "no second try");
    assert!(s.core.finished());
    assert_eq!(s.core.outcome(), Exit::Program);
}

// ---- exits, restarts, backoff ---------------------------------------------------------------

#[test]
fn a_first_crash_restarts_at_once_and_a_second_after_a_jittered_backoff() {
    let mut s = Sim::started(runtime(2));
    let pid = s.pid_of(1);
    s.exit(pid, 3);
    let exited = s.events("exited");
    assert_eq!(Sim::field(exited[0], "code"), 3);
    assert_eq!(Sim::field(exited[0], "restart_in_ms"), 0);
    assert!(
        exited[0].msg.ends_with("restarting now"),
        "{}",
        exited[0].msg
    );
    assert_eq!(s.spawns.len(), 3, "restarted in the same turn");
    assert_eq!(s.spawns.last().unwrap().0, 1, "slot 1 again");
    assert_eq!(s.core.slots[1].restarts.total(), 1);
    assert_eq!(
        s.core.slots[1].last_exit.as_deref(),
        Some("exited with code 3")
    );
    // The replacement crashes before --min-uptime: now the slot waits.
    let pid = s.pid_of(1);
    s.exit(pid, 3);
    let delay = Sim::field(s.events("exited")[1], "restart_in_ms")
        .as_u64()
        .unwrap();
    assert!((75..125).contains(&delay), "{delay}ms");
    assert_eq!(s.spawns.len(), 3, "not restarted before the backoff");
    s.advance(Duration::from_millis(delay + 1));
    assert_eq!(s.spawns.len(), 4);
    assert_eq!(s.spawns.last().unwrap().0, 1, "slot 1 again");
}

#[test]
fn quick_crashes_double_the_backoff_up_to_the_cap() {
    let mut rt = runtime(1);
    rt.backoff_max = Duration::from_millis(500);
    let mut s = Sim::started(rt);
    let mut delays = Vec::new();
    for _ in 0..7 {
        let pid = s.pid_of(0);
        s.exit(pid, 1);
        let d = Sim::field(s.events("exited").last().unwrap(), "restart_in_ms");
        delays.push(d.as_u64().unwrap());
        s.advance(Duration::from_millis(600));
    }
    // At once, then 100, 200, 400 (each ±25%), then the 500ms cap.
    assert_eq!(delays[0], 0, "{delays:?}");
    assert!((75..=125).contains(&delays[1]), "{delays:?}");
    assert!((150..=250).contains(&delays[2]), "{delays:?}");
    assert!((300..=500).contains(&delays[3]), "{delays:?}");
    assert!(
        delays[4..].iter().all(|d| (375..=500).contains(d)),
        "{delays:?}"
    );
}

#[test]
fn backoff_starts_over_after_min_uptime() {
    let mut s = Sim::started(runtime(1));
    for _ in 0..4 {
        let pid = s.pid_of(0);
        s.exit(pid, 1);
        s.advance(2 * SEC);
    }
    // At once, 100, 200, 400 (±25%).
    let before = Sim::field(s.events("exited").last().unwrap(), "restart_in_ms");
    assert!(before.as_u64().unwrap() >= 300, "{before}");
    // This one stays up past --min-uptime before it crashes.
    s.advance(6 * SEC);
    let pid = s.pid_of(0);
    s.exit(pid, 1);
    let after = Sim::field(s.events("exited").last().unwrap(), "restart_in_ms");
    assert_eq!(after, 0, "a crash after --min-uptime counts as a first one");
}

#[test]
fn past_max_restarts_it_gives_up_and_stops_everything() {
    let mut rt = runtime(2);
    rt.max_restarts = Some((3, Duration::from_secs(60)));
    let mut s = Sim::started(rt);
    for _ in 0..4 {
        let pid = s.pid_of(0);
        s.exit(pid, 1);
        s.advance(SEC);
    }
    assert_eq!(s.events("gave-up").len(), 1);
    let survivor = s.pid_of_any();
    assert!(s.signalled(survivor, Signal::SIGTERM));
    s.obey(Signal::SIGTERM);
    assert!(s.core.finished());
    assert_eq!(s.core.outcome(), Exit::GaveUp);
}

impl Sim {
    fn pid_of_any(&self) -> Pid {
        self.core.workers[0].pid
    }
}

#[test]
fn restart_never_leaves_the_slot_empty_and_exits_with_the_workers() {
    let mut rt = runtime(2);
    rt.restart = RestartPolicy::Never;
    let mut s = Sim::started(rt);
    let (a, b) = (s.pid_of(0), s.pid_of(1));
    s.exit(a, 0);
    s.exit(b, 2);
    s.advance(60 * SEC);
    assert_eq!(s.spawns.len(), 2, "nothing restarted");
    assert!(s.core.finished());
    assert_eq!(s.core.outcome(), Exit::Unclean, "one of them failed");
}

#[test]
fn restart_on_failure_restarts_only_failures() {
    let mut rt = runtime(2);
    rt.restart = RestartPolicy::OnFailure;
    let mut s = Sim::started(rt);
    let (a, b) = (s.pid_of(0), s.pid_of(1));
    s.exit(a, 0);
    s.exit(b, 1);
    s.advance(SEC);
    let restarted: Vec<u32> = s.spawns[2..].iter().map(|x| x.0).collect();
    assert_eq!(restarted, [1]);
}

#[test]
fn a_start_error_is_retried_with_backoff_and_told_once() {
    let mut s = Sim::started(runtime(1));
    let pid = s.pid_of(0);
    for _ in 0..3 {
        s.spawn_errors.push("/app: permission denied".into());
    }
    s.exit(pid, 1);
    s.advance(10 * SEC);
    assert_eq!(s.events("start-failed").len(), 1, "repeats are not printed");
    assert!(s.serving(0).is_some(), "it runs again");
    let started = s.events("started");
    assert!(
        started.last().unwrap().msg.contains("runs again"),
        "{:?}",
        started.last().unwrap().msg
    );
    assert_eq!(s.core.exit, Exit::Ok, "retrying is no failure of the run");
}

#[test]
fn a_leader_that_leaves_helpers_behind_has_them_stopped_before_the_restart() {
    let mut s = Sim::started(runtime(1));
    let pid = s.pid_of(0);
    s.feed(Event::Exited {
        pid,
        status: ExitStatus::Code(1),
        group_alive: true,
    });
    assert!(
        s.signalled(pid, Signal::SIGTERM),
        "the rest of its group is asked to stop"
    );
    s.advance(5 * SEC);
    assert_eq!(s.spawns.len(), 1, "no restart while its group lives");
    s.advance(6 * SEC);
    assert!(s.signalled(pid, Signal::SIGKILL), "SIGKILL after --grace");
    s.feed(Event::GroupGone { pid });
    s.advance(SEC);
    assert_eq!(s.spawns.len(), 2);
    assert_eq!(s.core.slots[0].restarts.total(), 1);
}

// ---- rolling reload -------------------------------------------------------------------------

#[test]
fn a_reload_drains_each_old_worker_only_once_its_replacement_is_ready() {
    let mut s = Sim::started(runtime(2));
    let (old0, old1) = (s.pid_of(0), s.pid_of(1));
    s.control(9, Request::Reload);
    assert_eq!(s.spawns.len(), 3, "one new worker at a time");
    let new0 = s.spawns[2].2;
    assert_eq!(s.spawns[2].1, 2, "generation 2");
    assert!(
        !s.signalled(old0, Signal::SIGTERM),
        "old serves until new is ready"
    );
    s.ready(new0);
    assert!(s.signalled(old0, Signal::SIGTERM));
    let draining = s.events("draining");
    assert_eq!(Sim::field(draining[0], "replaced_by"), new0.as_raw());
    let new1 = s.spawns[3].2;
    assert!(!s.signalled(old1, Signal::SIGTERM));
    s.ready(new1);
    assert!(s.signalled(old1, Signal::SIGTERM));
    assert_eq!(s.rolled_out, [2]);
    assert_eq!(s.reply_to(9), Some(&Reply::Reloaded { generation: 2 }));
    assert_eq!(s.core.generation, 2);
    // The replaced workers drain and are not restarted.
    s.obey(Signal::SIGTERM);
    s.advance(SEC);
    assert_eq!(s.spawns.len(), 4);
    assert_eq!(
        s.core.slots[0].restarts.total(),
        0,
        "a replacement is not a restart"
    );
}

#[test]
fn reload_parallel_replaces_that_many_slots_at_once() {
    let mut rt = runtime(4);
    rt.reload_parallel = 2;
    let mut s = Sim::started(rt);
    s.feed(Event::Signal(Sig::Hup));
    let new: Vec<u32> = s.spawns[4..].iter().map(|x| x.0).collect();
    assert_eq!(new, [0, 1]);
    let first = s.spawns[4].2;
    s.ready(first);
    assert_eq!(
        s.spawns.last().unwrap().0,
        2,
        "a third starts as one is done"
    );
}

#[test]
fn a_new_worker_that_misses_its_ready_timeout_rolls_the_reload_back() {
    let mut s = Sim::started(runtime(2));
    let old: Vec<Pid> = s.pids();
    s.control(4, Request::Reload);
    let new0 = s.spawns[2].2;
    s.advance(61 * SEC);
    assert!(
        s.signalled(new0, Signal::SIGTERM),
        "the late one is stopped"
    );
    assert!(
        old.iter().all(|&p| !s.signalled(p, Signal::SIGTERM)),
        "old ones keep serving"
    );
    let failed = s.events("reload-failed");
    assert_eq!(Sim::field(failed[0], "kept"), 2);
    assert_eq!(Sim::field(failed[0], "cause"), "not-ready");
    assert!(matches!(s.reply_to(4), Some(Reply::Failed { .. })));
    s.obey(Signal::SIGTERM);
    s.advance(SEC);
    assert_eq!(s.spawns.len(), 3, "the stopped new worker is not restarted");
    assert_eq!(s.generations(), [1, 1]);
    assert_eq!(s.core.generation, 1);
}

#[test]
fn a_new_worker_that_crashes_mid_roll_aborts_and_the_old_generation_keeps_serving() {
    let mut s = Sim::started(runtime(3));
    s.feed(Event::Signal(Sig::Hup));
    let new0 = s.spawns[3].2;
    s.ready(new0);
    let new1 = s.spawns[4].2;
    s.exit(new1, 1);
    let failed = s.events("reload-failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(Sim::field(failed[0], "cause"), "exited");
    assert_eq!(failed[0].pid, Some(new1.as_raw()));
    assert_eq!(Sim::field(failed[0], "replaced"), 1);
    assert_eq!(Sim::field(failed[0], "kept"), 2);
    assert_eq!(s.generations(), [1, 1, 2], "slot 0 keeps its new worker");
    assert_eq!(
        s.core.slots[1].restarts.total(),
        0,
        "a failed new worker is not a restart"
    );
    assert!(s.rolled_out.is_empty());
    s.advance(SEC);
    assert_eq!(s.spawns.len(), 5, "nothing else starts");
}

#[test]
fn a_hup_during_a_roll_starts_it_over_with_a_new_generation() {
    let mut s = Sim::started(runtime(2));
    s.feed(Event::Signal(Sig::Hup));
    let in_flight = s.spawns[2].2;
    s.feed(Event::Signal(Sig::Hup));
    assert_eq!(s.events("reload-superseded").len(), 1);
    assert!(
        s.signalled(in_flight, Signal::SIGTERM),
        "the in-flight worker is stopped"
    );
    let (slot, generation, new0) = s.spawns[3];
    assert_eq!((slot, generation), (0, 3));
    s.ready(new0);
    let new1 = s.spawns[4].2;
    s.ready(new1);
    assert_eq!(s.rolled_out, [3]);
    assert_eq!(s.generations(), [3, 3]);
    s.obey(Signal::SIGTERM);
    s.advance(SEC);
    assert_eq!(s.spawns.len(), 5, "the superseded worker is not restarted");
}

#[test]
fn a_config_that_fails_to_load_keeps_the_workers() {
    let mut s = Sim::started(runtime(2));
    s.reread = Some(Err(
        "multinode.toml:3:9: grace: 'soon' is not a duration".into()
    ));
    s.control(1, Request::Reload);
    assert_eq!(s.events("reload-failed").len(), 1);
    assert_eq!(s.spawns.len(), 2);
    match s.reply_to(1) {
        Some(Reply::Failed { error }) => assert!(error.contains("soon"), "{error}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_reread_config_applies_timings_scales_and_names_restart_only_keys() {
    let mut s = Sim::started(runtime(2));
    let mut rt = runtime(3);
    rt.grace = Duration::from_secs(2);
    s.reread = Some(Ok(Some(Box::new(Reread {
        runtime: rt,
        needs_restart: vec!["listen"],
    }))));
    s.feed(Event::Signal(Sig::Hup));
    assert_eq!(s.core.rt.grace, Duration::from_secs(2));
    assert_eq!(s.core.rt.workers, 3);
    let keys = Sim::field(s.events("reload-needs-restart")[0], "keys");
    assert_eq!(keys, serde_json::json!(["listen"]));
    // The new slot starts with the new generation; the roll covers the others.
    let gens: Vec<(u32, u64)> = s.spawns[2..].iter().map(|x| (x.0, x.1)).collect();
    assert!(gens.contains(&(2, 2)), "{gens:?}");
    assert!(
        !gens.contains(&(2, 1)),
        "never on the old program: {gens:?}"
    );
}

#[test]
fn scaling_up_during_a_reload_starts_the_new_slot_on_the_new_generation() {
    let mut s = Sim::started(runtime(2));
    s.feed(Event::Signal(Sig::Hup));
    s.feed(Event::Signal(Sig::Ttin));
    let new0 = s.spawns[2].2;
    s.ready(new0);
    let all: Vec<(u32, u64)> = s.spawns.iter().map(|x| (x.0, x.1)).collect();
    assert!(all.contains(&(2, 2)), "slot 2 on generation 2: {all:?}");
    for pid in s.pids() {
        s.ready(pid);
    }
    assert_eq!(s.rolled_out, [2]);
    assert_eq!(s.generations(), [2, 2, 2]);
}

#[test]
fn scaling_down_during_a_reload_drains_the_slot_and_the_roll_skips_it() {
    let mut s = Sim::started(runtime(3));
    s.feed(Event::Signal(Sig::Hup));
    let top = s.pid_of(2);
    s.feed(Event::Signal(Sig::Ttou));
    assert!(s.signalled(top, Signal::SIGTERM));
    for _ in 0..2 {
        let new = s.spawns.last().unwrap().2;
        s.ready(new);
    }
    assert_eq!(s.rolled_out, [2]);
    assert_eq!(s.spawns.len(), 5, "nothing started for the removed slot");
}

#[test]
fn an_old_worker_that_crashes_mid_roll_restarts_and_is_replaced_later() {
    let mut s = Sim::started(runtime(2));
    s.feed(Event::Signal(Sig::Hup));
    let old1 = s.pid_of(1);
    s.exit(old1, 1);
    s.advance(SEC);
    let restarted = s.spawns.last().unwrap();
    assert_eq!(
        (restarted.0, restarted.1),
        (1, 1),
        "back on the old generation"
    );
    for _ in 0..3 {
        for pid in s.pids() {
            s.ready(pid);
        }
    }
    assert_eq!(s.rolled_out, [2]);
    assert_eq!(s.generations(), [2, 2]);
}

#[test]
fn file_changes_become_one_reload_after_the_debounce() {
    let mut s = Sim::started(runtime(1));
    for i in 0..5 {
        s.feed(Event::FilesChanged {
            path: format!("/src/f{i}"),
        });
        s.advance(100 * MS);
    }
    assert!(s.events("reload").is_empty(), "still changing");
    s.advance(400 * MS);
    let reload = s.events("reload");
    assert_eq!(reload.len(), 1);
    assert_eq!(Sim::field(reload[0], "why"), "change in /src/f0");
    assert_eq!(Sim::field(reload[0], "path"), "/src/f0");
}

// ---- stopping -------------------------------------------------------------------------------

#[test]
fn a_graceful_stop_signals_everyone_and_restarts_nothing() {
    let mut s = Sim::started(runtime(3));
    s.feed(Event::Signal(Sig::Term));
    for pid in s.pids() {
        assert!(s.signalled(pid, Signal::SIGTERM));
    }
    s.obey(Signal::SIGTERM);
    s.advance(60 * SEC);
    assert_eq!(s.spawns.len(), 3);
    assert!(s.core.finished());
    assert_eq!(
        s.core.outcome(),
        Exit::Ok,
        "ended by our stop signal: clean"
    );
}

#[test]
fn workers_that_outlive_grace_are_killed_and_the_exit_is_unclean() {
    let mut s = Sim::started(runtime(2));
    s.feed(Event::Signal(Sig::Int));
    s.advance(9 * SEC);
    assert!(s.signals.iter().all(|(_, sig)| *sig == Signal::SIGTERM));
    s.advance(2 * SEC);
    let kill = s.events("kill");
    assert_eq!(Sim::field(kill[0], "workers"), 2);
    for pid in s.pids() {
        assert!(s.signalled(pid, Signal::SIGKILL));
    }
    s.obey(Signal::SIGKILL);
    assert!(s.core.finished());
    assert_eq!(s.core.outcome(), Exit::Unclean);
}

#[test]
fn a_second_term_kills_at_once() {
    let mut s = Sim::started(runtime(2));
    s.feed(Event::Signal(Sig::Term));
    s.feed(Event::Signal(Sig::Term));
    for pid in s.pids() {
        assert!(s.signalled(pid, Signal::SIGKILL));
    }
    s.obey(Signal::SIGKILL);
    assert_eq!(s.core.outcome(), Exit::Unclean);
}

#[test]
fn quit_kills_at_once() {
    let mut s = Sim::started(runtime(2));
    s.feed(Event::Signal(Sig::Quit));
    assert_eq!(
        s.signals
            .iter()
            .filter(|(_, sig)| *sig == Signal::SIGKILL)
            .count(),
        2
    );
    assert_eq!(Sim::field(s.events("kill")[0], "signal"), "SIGQUIT");
}

#[test]
fn stopping_during_a_reload_ends_it_and_tells_its_waiter() {
    let mut s = Sim::started(runtime(2));
    s.control(5, Request::Reload);
    s.control(6, Request::Stop);
    assert!(matches!(s.reply_to(5), Some(Reply::Failed { .. })));
    assert_eq!(s.reply_to(6), Some(&Reply::Stopping));
    assert_eq!(s.held, [6], "stop callers are held until exit");
    s.obey(Signal::SIGTERM);
    s.advance(60 * SEC);
    assert!(s.core.finished());
    s.control(7, Request::Reload);
    assert!(matches!(s.reply_to(7), Some(Reply::Failed { .. })));
}

#[test]
fn a_replaced_worker_that_outlives_grace_is_killed() {
    let mut s = Sim::started(runtime(1));
    let old = s.pid_of(0);
    s.feed(Event::Signal(Sig::Hup));
    let new = s.spawns[1].2;
    s.ready(new);
    s.advance(11 * SEC);
    assert!(s.signalled(old, Signal::SIGKILL));
    assert_eq!(s.core.outcome(), Exit::Unclean);
    assert_eq!(s.serving(0).map(|w| w.pid), Some(new));
}

#[test]
fn the_most_severe_outcome_wins() {
    let mut rt = runtime(2);
    rt.max_restarts = Some((0, Duration::from_secs(60)));
    let mut s = Sim::started(rt);
    let pid = s.pid_of(0);
    s.exit(pid, 1);
    assert_eq!(s.events("gave-up").len(), 1);
    // The other worker then has to be killed after grace: still "gave up".
    s.advance(11 * SEC);
    s.obey(Signal::SIGKILL);
    assert!(s.core.finished());
    assert_eq!(s.core.outcome(), Exit::GaveUp);
}

// ---- scaling --------------------------------------------------------------------------------

#[test]
fn ttin_adds_a_slot_and_ttou_drains_the_highest() {
    let mut s = Sim::started(runtime(2));
    s.feed(Event::Signal(Sig::Ttin));
    assert_eq!(s.spawns.last().unwrap().0, 2);
    assert_eq!(s.core.rt.workers, 3);
    let top = s.pid_of(2);
    s.feed(Event::Signal(Sig::Ttou));
    assert!(s.signalled(top, Signal::SIGTERM));
    s.feed(Event::Signal(Sig::Ttou));
    s.feed(Event::Signal(Sig::Ttou));
    assert_eq!(s.core.rt.workers, 1, "one worker is the minimum");
    assert_eq!(s.events("scale-failed").len(), 1);
    s.obey(Signal::SIGTERM);
    s.advance(SEC);
    assert_eq!(s.spawns.len(), 3, "scaled-away slots are not restarted");
}

#[test]
fn reuseport_slots_start_once_their_sockets_are_bound() {
    let mut s = Sim::with(runtime(1), Mode::ReusePort, false);
    s.feed(Event::Start);
    s.feed(Event::Signal(Sig::Ttin));
    assert_eq!(s.opened, [1]);
    assert_eq!(s.spawns.last().unwrap().0, 1);
    s.open_fails = true;
    s.feed(Event::Signal(Sig::Ttin));
    assert_eq!(
        s.core.rt.workers, 2,
        "the slot that could not be bound is gone"
    );
    assert_eq!(s.events("scale-failed").len(), 1);
    s.feed(Event::Signal(Sig::Ttou));
    assert_eq!(s.closed, [1]);
}

#[test]
fn scale_answers_once_every_worker_is_ready() {
    let mut s = Sim::started(runtime(1));
    s.control(3, Request::Scale { workers: 3 });
    assert_eq!(s.reply_to(3), None, "waits for readiness");
    s.ready_all();
    assert_eq!(s.reply_to(3), Some(&Reply::Scaled { workers: 3 }));
    s.control(8, Request::Scale { workers: 0 });
    assert!(matches!(s.reply_to(8), Some(Reply::Failed { .. })));
}

#[test]
fn a_scale_waiter_fails_when_another_scale_changes_the_count_or_time_runs_out() {
    let mut s = Sim::started(runtime(1));
    s.control(1, Request::Scale { workers: 2 });
    s.control(2, Request::Scale { workers: 3 });
    assert!(matches!(s.reply_to(1), Some(Reply::Failed { .. })));
    s.advance(61 * SEC);
    assert!(matches!(s.reply_to(2), Some(Reply::Failed { .. })));
}

// ---- status, route mode, systemd --------------------------------------------------------------

#[test]
fn status_lists_each_slot_with_its_state() {
    let mut s = Sim::started(runtime(2));
    // Two quick crashes: the first restarts at once, the second waits its backoff.
    for _ in 0..2 {
        let pid = s.pid_of(1);
        s.exit(pid, 1);
    }
    s.control(1, Request::Status);
    let Some(Reply::Status(st)) = s.reply_to(1) else {
        panic!("no status");
    };
    assert_eq!(st.workers, 2);
    assert!(!st.ready);
    let states: Vec<&str> = st.slots.iter().map(|r| r.state.as_str()).collect();
    assert_eq!(states, ["ready", "restarting"]);
    assert_eq!(st.slots[1].restarts, 2);
    assert_eq!(st.slots[1].restart_causes.crash, 2);
}

#[test]
fn route_targets_are_the_serving_workers_by_slot() {
    let mut s = Sim::with(runtime(2), Mode::Route(RoutePolicy::IpHash), false);
    s.feed(Event::Start);
    let targets = s.core.route_targets();
    assert_eq!(targets.len(), 2);
    assert!(targets.iter().all(|t| !t.ready), "none ready yet");
    let (a, b) = (s.pid_of(0), s.pid_of(1));
    s.ready(b);
    let view: Vec<(Pid, u32, bool)> = s
        .core
        .route_targets()
        .iter()
        .map(|t| (t.pid, t.slot, t.ready))
        .collect();
    assert_eq!(view, [(a, 0, false), (b, 1, true)]);
    // A worker being replaced stops taking connections once its replacement is ready.
    s.feed(Event::Signal(Sig::Hup));
    let new0 = s.spawns[2].2;
    assert_eq!(
        s.core.route_targets().len(),
        3,
        "old and new serve slot 0 meanwhile"
    );
    s.ready(new0);
    let slots: Vec<(u32, Pid)> = s
        .core
        .route_targets()
        .iter()
        .map(|t| (t.slot, t.pid))
        .collect();
    assert!(
        slots.contains(&(0, new0)) && !slots.contains(&(0, a)),
        "{slots:?}"
    );
    assert!(!s.core.accepting() || s.core.phase == Phase::Running);
    s.feed(Event::Signal(Sig::Term));
    assert!(!s.core.accepting());
}

#[test]
fn systemd_hears_ready_once_reloading_and_stopping() {
    let mut s = Sim::with(runtime(2), Mode::Shared, true);
    s.feed(Event::Start);
    assert!(!s.systemd.iter().any(|n| matches!(n, SdNote::Ready(_))));
    s.ready_all();
    let readies = |s: &Sim| {
        s.systemd
            .iter()
            .filter(|n| matches!(n, SdNote::Ready(_)))
            .count()
    };
    assert_eq!(readies(&s), 1);
    s.feed(Event::Signal(Sig::Hup));
    assert!(s.systemd.contains(&SdNote::Reloading));
    for _ in 0..2 {
        let new = s.spawns.last().unwrap().2;
        s.ready(new);
    }
    assert_eq!(readies(&s), 2, "READY=1 again after the reload");
    s.feed(Event::Signal(Sig::Term));
    assert!(s.systemd.contains(&SdNote::Stopping));
}

#[test]
fn notify_messages_of_exited_workers_and_strangers_are_ignored() {
    let mut s = Sim::new(runtime(1));
    s.feed(Event::Start);
    s.ready(Pid::from_raw(99_999));
    assert!(s.events("ready").is_empty());
    let pid = s.pid_of(0);
    s.feed(Event::Exited {
        pid,
        status: ExitStatus::Code(1),
        group_alive: true,
    });
    s.ready(pid);
    assert!(s.events("ready").is_empty());
}

#[test]
fn huge_durations_never_overflow_a_deadline() {
    let mut rt = runtime(1);
    rt.grace = Duration::from_secs(u64::MAX / 2);
    rt.ready_timeout = Duration::from_secs(u64::MAX / 2);
    let mut s = Sim::new(rt);
    s.feed(Event::Start);
    s.feed(Event::Signal(Sig::Term));
    assert!(s.core.next_deadline().is_some());
    s.killed_by(s.pid_of_any(), Signal::SIGTERM);
    assert!(s.core.finished());
}

#[test]
fn a_worker_leaving_reports_why() {
    let mut s = Sim::started(runtime(2));
    s.feed(Event::Signal(Sig::Ttou));
    let w = &s.core.workers[1];
    assert_eq!(w.leaving(), Some(Leave::ScaledDown));
    s.feed(Event::Signal(Sig::Term));
    assert!(
        s.core
            .workers
            .iter()
            .all(|w| w.leaving() == Some(Leave::ServiceStop))
    );
}

// ---- the guard, and a config read that comes later --------------------------------------------

#[test]
fn a_dead_guard_stops_the_service_gracefully_with_exit_70() {
    let mut s = Sim::started(runtime(2));
    s.feed(Event::GuardGone);
    assert_eq!(s.events("guard-gone").len(), 1);
    let stopping = s.events("stopping");
    assert_eq!(Sim::field(stopping[0], "why"), "guard-gone");
    for pid in s.pids() {
        assert!(s.signalled(pid, Signal::SIGTERM), "a graceful stop");
        assert!(!s.signalled(pid, Signal::SIGKILL));
    }
    s.obey(Signal::SIGTERM);
    s.advance(SEC);
    assert_eq!(s.spawns.len(), 2, "nothing restarts");
    assert!(s.core.finished());
    assert_eq!(s.core.outcome(), Exit::Internal);
}

#[test]
fn a_guard_that_dies_during_a_stop_changes_only_the_exit_status() {
    let mut s = Sim::started(runtime(1));
    s.feed(Event::Signal(Sig::Term));
    s.feed(Event::GuardGone);
    assert_eq!(s.events("stopping").len(), 1, "one stop");
    assert_eq!(s.events("guard-gone").len(), 1);
    s.obey(Signal::SIGTERM);
    assert!(s.core.finished());
    assert_eq!(s.core.outcome(), Exit::Internal);
}

#[test]
fn events_may_come_between_a_config_read_and_its_answer() {
    let mut s = Sim::started(runtime(2));
    s.deferred_reads = Some(0);
    s.control(1, Request::Reload);
    assert_eq!(s.deferred_reads, Some(1));
    assert!(s.events("reload").is_empty(), "the roll waits for the file");
    // Meanwhile a worker crashes and restarts as usual, and another HUP asks again.
    let old1 = s.pid_of(1);
    s.exit(old1, 3);
    s.advance(SEC);
    assert_eq!(s.spawns.len(), 3, "slot 1 restarted");
    let restarted = s.spawns[2].2;
    s.ready(restarted);
    s.feed(Event::Signal(Sig::Hup));
    s.feed(Event::ConfigRead(Ok(None)));
    let reload = s.events("reload");
    assert_eq!(reload.len(), 1, "one roll for both requests");
    assert_eq!(Sim::field(reload[0], "why"), "SIGHUP", "the newest reason");
    for _ in 0..2 {
        let new = s.spawns.last().unwrap().2;
        s.ready(new);
    }
    assert_eq!(s.generations(), [2, 2]);
    assert_eq!(s.reply_to(1), Some(&Reply::Reloaded { generation: 2 }));
}

#[test]
fn a_stop_while_the_config_is_read_fails_the_reload_and_the_late_answer_is_ignored() {
    let mut s = Sim::started(runtime(1));
    s.deferred_reads = Some(0);
    s.control(1, Request::Reload);
    s.feed(Event::Signal(Sig::Term));
    assert!(matches!(s.reply_to(1), Some(Reply::Failed { .. })));
    s.feed(Event::ConfigRead(Ok(None)));
    assert!(s.events("reload").is_empty());
    assert_eq!(s.spawns.len(), 1);
    s.obey(Signal::SIGTERM);
    assert!(s.core.finished());
    assert_eq!(s.core.outcome(), Exit::Ok);
}

// ---- health: watchdog, recycling, stop delay ----------------------------------------------------

fn watchdog_runtime(workers: u32) -> Runtime {
    let mut rt = runtime(workers);
    rt.watchdog = Some(Duration::from_secs(2));
    rt
}

impl Sim {
    fn ping(&mut self, pid: Pid, value: &str) {
        self.feed(Event::Notify {
            pid,
            fields: vec![("WATCHDOG".into(), value.into())],
        });
    }
}

#[test]
fn a_worker_that_stops_pinging_is_hung_signalled_killed_and_replaced() {
    let mut s = Sim::started(watchdog_runtime(2));
    let (quiet, pinging) = (s.pid_of(0), s.pid_of(1));
    for _ in 0..4 {
        s.advance(SEC);
        s.ping(pinging, "1");
    }
    let hung = s.events("hung");
    assert_eq!(hung.len(), 1);
    assert_eq!(hung[0].pid, Some(quiet.as_raw()));
    assert!(
        s.signalled(quiet, Signal::SIGABRT),
        "--watchdog-signal first"
    );
    assert!(
        !s.signalled(pinging, Signal::SIGABRT),
        "its sibling pings: left alone"
    );
    assert_eq!(s.core.workers[0].label(), "hung");
    s.advance(6 * SEC);
    assert!(
        s.signalled(quiet, Signal::SIGKILL),
        "SIGKILL after the grace"
    );
    // The kill names the grace it had: HUNG_GRACE, not --grace (10 s here).
    let kill = s.events("kill");
    assert_eq!(kill.len(), 1);
    assert_eq!(Sim::field(kill[0], "why"), "hung");
    assert_eq!(Sim::field(kill[0], "grace_ms"), 5000u64);
    assert!(
        kill[0].msg.contains("5s of --watchdog-signal"),
        "{}",
        kill[0].msg
    );
    s.killed_by(quiet, Signal::SIGKILL);
    s.advance(SEC);
    assert_eq!(s.spawns.last().unwrap().0, 0, "its slot restarts");
    assert_eq!(s.core.slots[0].restarts.watchdog, 1);
    assert_eq!(s.core.slots[0].restarts.crash, 0);
}

#[test]
fn the_watchdog_counts_only_once_ready_and_follows_watchdog_usec() {
    let mut s = Sim::new(watchdog_runtime(1));
    s.feed(Event::Start);
    let pid = s.pid_of(0);
    s.advance(30 * SEC);
    assert!(s.events("hung").is_empty(), "not ready yet: no watchdog");
    s.ready(pid);
    // The worker asks for a longer interval.
    s.feed(Event::Notify {
        pid,
        fields: vec![("WATCHDOG_USEC".into(), "10000000".into())],
    });
    s.advance(9 * SEC);
    assert!(s.events("hung").is_empty());
    s.advance(2 * SEC);
    assert_eq!(s.events("hung").len(), 1);
}

#[test]
fn watchdog_trigger_is_hung_at_once() {
    let mut s = Sim::started(watchdog_runtime(1));
    let pid = s.pid_of(0);
    s.ping(pid, "trigger");
    assert!(s.signalled(pid, Signal::SIGABRT));
    assert_eq!(
        Sim::field(s.events("hung")[0], "reason"),
        "it sent WATCHDOG=trigger"
    );
}

#[test]
fn a_hung_new_worker_aborts_the_roll_like_a_crash() {
    let mut s = Sim::started(watchdog_runtime(2));
    for pid in s.pids() {
        s.ping(pid, "1");
    }
    s.feed(Event::Signal(Sig::Hup));
    let new0 = s.spawns[2].2;
    s.ready(new0);
    let old1 = s.pid_of(1);
    s.advance(SEC);
    s.ping(old1, "1");
    s.ping(new0, "trigger");
    let failed = s.events("reload-failed");
    assert_eq!(failed.len(), 1);
    assert_eq!(Sim::field(failed[0], "cause"), "hung");
}

#[test]
fn a_recycled_worker_serves_until_its_replacement_is_ready() {
    let mut rt = runtime(2);
    rt.max_memory = Some(100 << 20);
    let mut s = Sim::started(rt);
    let (big, small) = (s.pid_of(0), s.pid_of(1));
    s.feed(Event::Usage {
        memory: vec![(big, 200 << 20), (small, 10 << 20)],
    });
    let recycle = s.events("recycle");
    assert_eq!(recycle.len(), 1);
    assert_eq!(Sim::field(recycle[0], "memory_bytes"), 200u64 << 20);
    let (slot, _, new) = *s.spawns.last().unwrap();
    assert_eq!(slot, 0, "a replacement for slot 0 starts");
    assert!(
        !s.signalled(big, Signal::SIGTERM),
        "it serves until the new one is ready"
    );
    assert_eq!(s.core.health(), Ok(()), "still healthy meanwhile");
    s.ready(new);
    assert!(s.signalled(big, Signal::SIGTERM));
    s.obey(Signal::SIGTERM);
    s.advance(SEC);
    assert_eq!(s.spawns.len(), 3, "nothing more starts");
    assert_eq!(s.core.slots[0].restarts.memory, 1);
    // Reported once per worker.
    s.feed(Event::Usage {
        memory: vec![(new, 200 << 20)],
    });
    s.feed(Event::Usage {
        memory: vec![(new, 200 << 20)],
    });
    assert_eq!(s.events("recycle").len(), 2);
}

#[test]
fn a_replacement_that_fails_is_retried_while_the_old_worker_serves() {
    let mut rt = runtime(1);
    rt.max_requests = Some((50, 0));
    let mut s = Sim::started(rt);
    let old = s.pid_of(0);
    s.feed(Event::Recycle {
        pid: old,
        cause: crate::supervisor::worker::Recycle::Requests(50),
    });
    let first = s.spawns.last().unwrap().2;
    s.exit(first, 1);
    assert!(
        !s.signalled(old, Signal::SIGTERM),
        "the old one keeps serving"
    );
    s.advance(SEC);
    let second = s.spawns.last().unwrap().2;
    assert_ne!(first, second, "another replacement after backoff");
    s.ready(second);
    assert!(s.signalled(old, Signal::SIGTERM));
    assert_eq!(s.core.slots[0].restarts.requests, 1);
    assert_eq!(s.core.slots[0].restarts.crash, 1);
}

#[test]
fn request_limits_carry_their_jitter() {
    let mut rt = runtime(8);
    rt.max_requests = Some((100, 20));
    let s = Sim::started(rt);
    let limits: Vec<u64> = s
        .core
        .route_targets()
        .iter()
        .filter_map(|t| t.request_limit)
        .collect();
    assert_eq!(limits.len(), 8);
    assert!(limits.iter().all(|l| (100..=120).contains(l)), "{limits:?}");
    assert!(
        limits.iter().any(|&l| l != limits[0]),
        "jittered: {limits:?}"
    );
}

#[test]
fn stop_delay_reports_unhealthy_keeps_serving_then_drains() {
    let mut rt = runtime(2);
    rt.stop_delay = Duration::from_secs(5);
    let mut s = Sim::started(rt);
    s.feed(Event::Signal(Sig::Term));
    assert!(s.core.health().is_err(), "unhealthy at once");
    assert!(s.core.accepting(), "still routing");
    assert!(!s.signals.iter().any(|(_, sig)| *sig == Signal::SIGTERM));
    // A crash meanwhile is still replaced.
    let pid = s.pid_of(1);
    s.exit(pid, 1);
    s.advance(SEC);
    assert_eq!(s.spawns.len(), 3);
    s.control(4, Request::Reload);
    assert!(
        matches!(s.reply_to(4), Some(Reply::Failed { .. })),
        "no reload now"
    );
    s.advance(5 * SEC);
    assert_eq!(s.events("stopping").len(), 1, "then the drain");
    for pid in s.pids() {
        assert!(s.signalled(pid, Signal::SIGTERM));
    }
    s.obey(Signal::SIGTERM);
    assert!(s.core.finished());
    assert_eq!(s.core.outcome(), Exit::Ok);
}

#[test]
fn health_names_a_slot_without_a_ready_worker() {
    let mut s = Sim::new(runtime(2));
    s.feed(Event::Start);
    let pid = s.pid_of(0);
    s.ready(pid);
    assert_eq!(s.core.health(), Err("slot 1 has no ready worker".into()));
    let other = s.pid_of(1);
    s.ready(other);
    assert_eq!(s.core.health(), Ok(()));
}

#[test]
fn multinode_pings_systemds_watchdog_at_half_its_interval() {
    let mut s = Sim::with(runtime(1), Mode::Shared, true);
    s.core.fixed.sd_watchdog = Some(Duration::from_secs(10));
    s.feed(Event::Start);
    s.ready_all();
    s.advance(11 * SEC);
    let pings = s.systemd.iter().filter(|n| **n == SdNote::Watchdog).count();
    assert_eq!(pings, 2, "at 5 s and 10 s");
}

// ---- in-place upgrade: the core's state across the exec -------------------------------------

/// A core with a worker in every state, a reload under way, restarts counted, waiters waiting.
fn core_in_every_state() -> Sim {
    let mut rt = runtime(6);
    rt.max_restarts = Some((100, Duration::from_secs(60)));
    rt.watchdog = Some(60 * SEC);
    rt.ready = ReadyMode::Delay(2 * SEC);
    let mut s = Sim::with(rt, Mode::Route(RoutePolicy::LeastConn), true);
    s.feed(Event::Start);
    s.ready_all();
    // A crash: a restart counted, its replacement starting (after backoff).
    s.exit(s.pid_of(0), 3);
    s.advance(SEC);
    // A leader that exited leaving its group: Exited with a kill deadline.
    s.feed(Event::Exited {
        pid: s.pid_of(2),
        status: ExitStatus::Signal {
            signal: Signal::SIGSEGV,
            core_dumped: true,
        },
        group_alive: true,
    });
    // Scaled down: slot 5 drains; after its grace it is killed.
    s.feed(Event::Signal(Sig::Ttou));
    s.advance(11 * SEC);
    // Recycling: still serving while its replacement starts.
    let recycled = s.pid_of(1);
    s.feed(Event::Recycle {
        pid: recycled,
        cause: crate::supervisor::worker::Recycle::Requests(7),
    });
    // Slot 4 drains now, with its deadline ahead (scaled away with a longer grace).
    s.feed(Event::Signal(Sig::Ttou));
    // A reload under way, its first new worker starting, and a waiter for it.
    s.reread = Some(Ok(None));
    s.control(7, Request::Reload);
    s.control(8, Request::Scale { workers: 4 });
    s.feed(Event::Notify {
        pid: s.pid_of(3),
        fields: vec![("STATUS".into(), "busy".into())],
    });
    s
}

#[test]
fn a_snapshot_restores_to_the_same_core_deadlines_and_all() {
    let s = core_in_every_state();
    let labels: std::collections::BTreeSet<&str> =
        s.core.workers.iter().map(|w| w.label()).collect();
    for l in ["starting", "ready", "recycling", "draining", "exiting"] {
        assert!(labels.contains(l), "no worker {l}: {labels:?}");
    }
    assert!(
        s.core
            .workers
            .iter()
            .any(|w| matches!(w.state, State::Killed { .. })),
        "a killed worker"
    );
    assert!(s.core.reload.is_some(), "a reload under way");
    let before = s.core.snapshot(s.now);
    let text = serde_json::to_string(&before).unwrap();
    let back: crate::upgrade::format::CoreState = serde_json::from_str(&text).unwrap();
    assert_eq!(back, before, "the JSON round trip loses nothing");
    // Restored in another image, 7 s later on the clock: everything is where it was,
    // relative to the hand-over.
    let later = s.now + 7 * SEC;
    let restored = Core::restore(back, s.core.fixed.clone(), later).unwrap();
    assert_eq!(restored.snapshot(later), before);
    assert_eq!(
        restored.next_deadline(),
        s.core.next_deadline().map(|t| t + 7 * SEC)
    );
    let mut a = s.core.status(s.now);
    let mut b = restored.status(later);
    a.pid = 0;
    b.pid = 0;
    assert_eq!(a, b, "status reads the same");
    let restarts: u32 = a.slots.iter().map(|r| r.restarts).sum();
    assert!(
        restarts >= 2,
        "the crash and the recycle are counted: {restarts}"
    );
}

#[test]
fn a_restored_core_goes_on_exactly_as_the_original() {
    let mut a = core_in_every_state();
    let mut b = core_in_every_state();
    let later = b.now + 3 * SEC;
    let snap = b.core.snapshot(b.now);
    b.core = Core::restore(snap, b.core.fixed.clone(), later).unwrap();
    b.now = later;
    // The same 40 s of life (ticks, readiness, the reload's progress, kills) on both.
    a.logs.clear();
    b.logs.clear();
    for _ in 0..4 {
        a.advance(10 * SEC);
        b.advance(10 * SEC);
        a.ready_all();
        b.ready_all();
    }
    let kinds = |s: &Sim| {
        s.logs
            .iter()
            .map(|l| (l.kind, l.msg.clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(kinds(&a), kinds(&b));
    assert_eq!(a.core.snapshot(a.now), b.core.snapshot(b.now));
}

#[test]
fn an_upgrade_checks_then_hands_over_and_the_new_core_answers() {
    let mut s = Sim::with(runtime(2), Mode::Shared, true);
    s.feed(Event::Start);
    s.ready_all();
    s.systemd.clear();
    s.control(
        4,
        Request::Upgrade {
            binary: Some("/opt/mn".into()),
        },
    );
    assert_eq!(s.upgrades, [Some("/opt/mn".into())]);
    // The same upgrade asked again joins it; another binary is refused meanwhile.
    s.control(5, Request::Upgrade { binary: None });
    s.control(
        6,
        Request::Upgrade {
            binary: Some("/other".into()),
        },
    );
    assert_eq!(s.upgrades.len(), 1);
    assert!(matches!(s.reply_to(6), Some(Reply::Failed { error }) if error.contains("under way")));
    s.feed(Event::UpgradeChecked {
        binary: "/opt/mn".into(),
        version: "9.9.9".into(),
    });
    let up = s.events("upgrade");
    assert_eq!(up.len(), 1);
    assert_eq!(Sim::field(up[0], "to"), "9.9.9");
    assert_eq!(s.systemd, [SdNote::Reloading]);
    assert_eq!(s.handed_over, ["/opt/mn"]);
    // The new image restores the core and hears it worked.
    let snap = s.core.snapshot(s.now);
    s.core = Core::restore(snap, s.core.fixed.clone(), s.now).unwrap();
    s.feed(Event::Upgraded {
        from: "0.0.1".into(),
        binary: "/opt/mn".into(),
        took_ms: 12,
        at: "2026-01-01T00:00:00.000Z".into(),
    });
    for client in [4, 5] {
        assert!(
            matches!(s.reply_to(client), Some(Reply::Upgraded { from, took_ms: 12, .. }) if from == "0.0.1"),
            "{:?}",
            s.reply_to(client)
        );
    }
    assert!(matches!(s.systemd.last(), Some(SdNote::Ready(_))));
    let st = s.core.status(s.now);
    assert_eq!(st.upgrades, 1);
    assert_eq!(st.last_upgrade.unwrap().from, "0.0.1");
    assert!(!st.upgrading);
    assert_eq!(s.events("upgraded").len(), 1);
}

#[test]
fn a_failed_upgrade_is_told_and_a_stop_calls_one_off() {
    let mut s = Sim::with(runtime(1), Mode::Shared, true);
    s.feed(Event::Start);
    s.ready_all();
    s.systemd.clear();
    s.feed(Event::Signal(Sig::Usr2));
    s.control(3, Request::Upgrade { binary: None });
    assert_eq!(s.upgrades, [None]);
    s.feed(Event::UpgradeFailed {
        stage: "check",
        reason: "it exited with code 1".into(),
        running: "multinode 0.1.0 (/usr/bin/multinode)".into(),
    });
    let failed = s.events("upgrade-failed");
    assert_eq!(Sim::field(failed[0], "stage"), "check");
    assert!(
        matches!(s.reply_to(3), Some(Reply::Failed { error }) if error.contains("code 1") && error.contains("keeps running"))
    );
    assert!(
        s.systemd.is_empty(),
        "nothing was said to systemd for a check"
    );
    // Restore failures come with RELOADING=1 behind them: READY=1 again.
    s.feed(Event::Signal(Sig::Usr2));
    s.feed(Event::UpgradeChecked {
        binary: "/usr/bin/multinode".into(),
        version: "0.1.0".into(),
    });
    s.feed(Event::UpgradeFailed {
        stage: "restore",
        reason: "it panicked".into(),
        running: "multinode 0.1.0".into(),
    });
    assert!(matches!(s.systemd.last(), Some(SdNote::Ready(_))));
    assert_eq!(s.core.status(s.now).upgrades, 0);
    // A stop calls off an upgrade still being checked; its answer is then ignored.
    s.control(9, Request::Upgrade { binary: None });
    s.feed(Event::Signal(Sig::Term));
    assert!(matches!(s.reply_to(9), Some(Reply::Failed { error }) if error.contains("stopping")));
    let handed = s.handed_over.len();
    s.feed(Event::UpgradeChecked {
        binary: "/usr/bin/multinode".into(),
        version: "0.1.0".into(),
    });
    assert_eq!(s.handed_over.len(), handed, "no hand-over once stopping");
    s.control(10, Request::Upgrade { binary: None });
    assert!(matches!(s.reply_to(10), Some(Reply::Failed { error }) if error.contains("stopping")));
}
