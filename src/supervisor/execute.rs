//! Carrying out the core's actions: the shell's only side effects on workers, clients,
//! systemd and the log. An action whose outcome the core needs returns the answering event.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::Instant;

use nix::sys::signal::{Signal, killpg};

use super::core::{Action, Event, Reread, SdNote};
use super::pipes::Pipes;
use super::shell::Shell;
use crate::config::{Config, Mode};
use crate::route::router::Router;
use crate::spawn::Spawner;

impl Shell {
    pub(super) fn execute(&mut self, action: Action) -> Option<Event> {
        match action {
            Action::Spawn {
                slot,
                generation,
                workers,
                watchdog,
            } => Some(self.spawn(slot, generation, workers, watchdog)),
            Action::Signal { pid, signal } => {
                let _ = killpg(pid, signal);
                if signal == Signal::SIGKILL {
                    // A kill is of the whole worker: with cgroups, what left its group too.
                    if let Some(cg) = &mut self.p.cgroups {
                        cg.kill(pid);
                    }
                    if let Some(l) = self.lingering.iter_mut().find(|(p, _)| *p == pid) {
                        l.1 = true;
                    }
                }
                None
            }
            Action::Log(ev) => {
                self.p.out.event(ev);
                None
            }
            Action::Reply { client, mut reply } => {
                if let crate::control::protocol::Reply::Status(st) = &mut reply {
                    self.add_usage(st);
                }
                if let Some(c) = &mut self.p.control {
                    c.reply(client, &reply, Instant::now());
                }
                None
            }
            Action::Hold { client } => {
                if let Some(c) = &mut self.p.control {
                    c.hold(client);
                }
                None
            }
            Action::Systemd(note) => {
                if let Some(n) = &self.p.systemd {
                    n.send(&match note {
                        SdNote::Ready(status) => format!("READY=1\nSTATUS={status}"),
                        SdNote::Status(status) => format!("STATUS={status}"),
                        SdNote::Reloading => format!(
                            "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading",
                            crate::systemd::monotonic_usec()
                        ),
                        SdNote::Stopping => "STOPPING=1\nSTATUS=stopping".into(),
                        SdNote::Watchdog => "WATCHDOG=1".into(),
                    });
                }
                None
            }
            Action::ReadConfig => self.reread(),
            Action::RolledOut { generation } => {
                if let Some((next, spawner)) = self.next.take() {
                    self.p.spawner = spawner;
                    self.cfg.program = next.program;
                    self.cfg.env = next.env;
                    self.cfg.workdir = next.workdir;
                }
                self.current_generation = generation;
                None
            }
            Action::OpenSlot { slot } => {
                let result = self
                    .p
                    .sockets
                    .iter()
                    .map(|b| crate::socket::bind_sibling(b, &b.local, None))
                    .collect::<crate::error::Result<Vec<OwnedFd>>>()
                    .map(|fds| {
                        self.p.slot_fds.truncate(slot as usize);
                        self.p.slot_fds.push(fds);
                    })
                    .map_err(|e| e.to_string());
                Some(Event::SlotOpened { slot, result })
            }
            Action::Inspect { pid } => {
                self.inspect(pid);
                None
            }
            Action::Upgrade { binary } => self.start_upgrade(binary),
            Action::HandOver { binary } => {
                self.hand_over = Some(binary);
                None
            }
            Action::CloseSlot { slot } => {
                // The sockets close with the slot's last worker, which holds its own copies;
                // connections still queued on them then are reset by the kernel.
                self.p.slot_fds.truncate(slot as usize);
                None
            }
        }
    }

    /// Checks the binary an upgrade executes (`None`: the one multinode runs from) and asks
    /// it, in a child, whether it reads this state; the answer comes to `check_preflight`.
    fn start_upgrade(&mut self, binary: Option<String>) -> Option<Event> {
        let path = binary.map_or_else(|| self.p.binary.clone(), std::path::PathBuf::from);
        let format = crate::upgrade::rollback::failpoint("state-format")
            .and_then(|v| v.parse().ok())
            .unwrap_or(crate::upgrade::state::FORMAT);
        let started = if self.p.self_exe.is_none() {
            Err("multinode could not open its own executable at start, so a failed upgrade would have no way back".into())
        } else {
            crate::upgrade::preflight::Preflight::start(
                &path,
                format,
                self.p.guard_reads_config,
                Instant::now(),
            )
        };
        match started {
            Ok(p) => {
                self.preflight = Some(p);
                None
            }
            Err(reason) => Some(Event::UpgradeFailed {
                stage: "check",
                reason,
                running: crate::upgrade::running(),
            }),
        }
    }

    /// Fills in what each worker of a status uses (CPU time, memory), read now.
    pub(super) fn add_usage(&self, st: &mut crate::control::protocol::Status) {
        st.binary = Some(self.p.binary.display().to_string());
        let pids: Vec<nix::unistd::Pid> = st
            .slots
            .iter()
            .filter_map(|r| r.pid.map(nix::unistd::Pid::from_raw))
            .collect();
        let usage = crate::usage::of_workers(&pids, self.p.cgroups.as_ref());
        for row in &mut st.slots {
            if let Some((_, u)) = usage.iter().find(|(p, _)| Some(p.as_raw()) == row.pid) {
                row.cpu_seconds = Some(u.cpu_seconds);
                row.memory_bytes = Some(u.memory_bytes);
            }
        }
    }

    /// Starts a worker for `slot`: its sockets (shared, the slot's own, or new route
    /// channels) at fds 3.., and the program of `generation`.
    fn spawn(
        &mut self,
        slot: u32,
        generation: u64,
        workers: u32,
        watchdog: Option<std::time::Duration>,
    ) -> Event {
        let failed = |error: String| Event::SpawnFailed {
            slot,
            generation,
            error,
        };
        let spawner = match &self.next {
            Some((_, s)) if generation > self.current_generation => s,
            _ => &self.p.spawner,
        };
        let mut channels = Vec::new();
        let mut theirs = Vec::new();
        let fds: Vec<BorrowedFd> = match self.cfg.mode {
            Mode::Shared => self.p.sockets.iter().map(|b| b.fd.as_fd()).collect(),
            Mode::ReusePort => match self.p.slot_fds.get(slot as usize) {
                Some(set) => set.iter().map(|f| f.as_fd()).collect(),
                None => return failed(format!("slot {slot} has no sockets")),
            },
            Mode::Route(_) => match Router::channels(self.p.sockets.len()) {
                Ok((ours, t)) => {
                    channels = ours;
                    theirs = t;
                    theirs.iter().map(|f| f.as_fd()).collect()
                }
                Err(e) => return failed(format!("cannot create a route channel: {e}")),
            },
        };
        // With cgroups, a group of its own that the child joins before exec.
        let leaf = match &mut self.p.cgroups {
            Some(cg) => match cg.leaf(slot) {
                Ok(l) => {
                    if let Some(bytes) = self.cfg.runtime.max_memory {
                        crate::cgroup::Service::limit_memory(&l.0, bytes);
                    }
                    Some(l)
                }
                Err(e) => {
                    let path = cg.path.display();
                    let reason = crate::config::io_reason(&e);
                    return failed(format!("cannot create a cgroup under {path}: {reason}"));
                }
            },
            None => None,
        };
        let named: Vec<(&str, BorrowedFd)> = self
            .p
            .sockets
            .iter()
            .map(|b| b.name.as_str())
            .zip(fds)
            .collect();
        let procs = leaf.as_ref().map(|(_, procs)| procs.as_fd());
        let spawned = spawner.spawn(&named, slot, workers, generation, procs, watchdog);
        let program = spawner.program();
        drop(named);
        drop(theirs);
        let leaf = leaf.map(|(leaf, _)| leaf);
        match spawned {
            Ok(s) => {
                if let Some(g) = &mut self.p.guard {
                    g.track(s.pid);
                }
                if let (Some(cg), Some(leaf)) = (&mut self.p.cgroups, leaf) {
                    cg.adopt(s.pid, leaf);
                }
                self.procs.push(Pipes::new(s.pid, slot, s.stdout, s.stderr));
                if let Some(r) = &mut self.router {
                    r.add(s.pid, slot, channels);
                }
                Event::Spawned {
                    slot,
                    generation,
                    pid: s.pid,
                }
            }
            Err(e) => {
                if let Some(leaf) = leaf {
                    leaf.remove();
                }
                failed(format!("{program}: {}", crate::config::io_reason(&e)))
            }
        }
    }

    /// With `--config`, reads the file again. After a privilege drop the guard reads it, with
    /// the rights multinode started with, and [`Event::ConfigRead`] follows when its bytes
    /// arrive (`config_arrived`); otherwise now.
    fn reread(&mut self) -> Option<Event> {
        if self.cfg.source.args.config.is_none() {
            self.next = None;
            return Some(Event::ConfigRead(Ok(None)));
        }
        if self.p.guard_reads_config {
            if let Some(g) = &mut self.p.guard {
                match &mut self.reading_config {
                    Some(again) => *again = true,
                    None => {
                        g.read_config();
                        self.reading_config = Some(false);
                    }
                }
                return None;
            }
        }
        Some(Event::ConfigRead(self.apply_config(None)))
    }

    /// The guard's answer to a config read.
    pub(super) fn config_arrived(&mut self, bytes: Result<Vec<u8>, String>) {
        match self.reading_config.take() {
            None => return,
            Some(true) => {
                // Asked again since: the file may have changed after this read.
                if let Some(g) = &mut self.p.guard {
                    g.read_config();
                    self.reading_config = Some(false);
                }
                return;
            }
            Some(false) => {}
        }
        let result = match bytes {
            Ok(b) => self.apply_config(Some(&b)),
            Err(why) => Err(match &self.cfg.source.args.config {
                Some(path) => format!("--config {}: {why}", path.display()),
                None => why,
            }),
        };
        self.dispatch(Event::ConfigRead(result));
    }

    /// Builds the configuration again from the command line and the file (`file`: its bytes,
    /// when the guard read them): what may change at run time goes to the core, the output
    /// format changes now, and the new generation gets its program (which becomes the
    /// service's only once the roll succeeds).
    fn apply_config(&mut self, file: Option<&[u8]>) -> Result<Option<Box<Reread>>, String> {
        let src = self.cfg.source.clone();
        let new = match file {
            Some(bytes) => Config::from_args_and_file(src.args, src.explicit, bytes),
            None => Config::from_args(src.args, src.explicit),
        }
        .map_err(|e| e.to_string())?;
        let plan = self.cfg.reload_plan(new);
        let mut env = self.p.overrides.clone();
        env.extend(plan.next.env.iter().map(|(k, v)| (k.clone(), v.into())));
        let spawner = Spawner::new(&plan.next.program, &env, plan.next.workdir.as_deref())
            .map_err(|e| format!("worker command: {e}"))?;
        self.next = Some((plan.next, spawner));
        self.p.out.set_format(plan.log_format, plan.color);
        self.cfg.log_format = plan.log_format;
        self.cfg.color = plan.color;
        self.cfg.runtime = plan.runtime.clone();
        Ok(Some(Box::new(Reread {
            runtime: plan.runtime,
            needs_restart: plan.needs_restart,
        })))
    }
}
