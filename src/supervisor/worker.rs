//! One worker process as the supervisor sees it: pid and process group, output pipes, the
//! leader's exit status, and how its exit is described to a user.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{Signal, killpg};
use nix::sys::wait::WaitStatus;
use nix::unistd::Pid;

use crate::log::{LineSplitter, Output, Stream};
use crate::route::{Channel, Conn};

pub struct Pipe {
    fd: OwnedFd,
    stream: Stream,
    lines: LineSplitter,
}

pub struct Worker {
    pub slot: u32,
    /// Also the id of the worker's process group.
    pub pid: Pid,
    pub generation: u64,
    pub started: Instant,
    pipes: Vec<Pipe>,
    /// The leader's exit, once reaped. The worker is over when its whole group is gone too.
    pub status: Option<WaitStatus>,
    /// Ready to serve: READY=1 arrived, or the `--ready delay:` passed.
    pub ready: bool,
    /// When the `--ready delay:` makes it ready.
    pub ready_at: Option<Instant>,
    /// When a worker still not ready is given up on (`--ready-timeout`).
    pub ready_deadline: Option<Instant>,
    /// The last STATUS= text it sent.
    pub status_text: Option<String>,
    /// Replaced, scaled away or stopping with the service: not restarted when it ends.
    pub retired: bool,
    /// The stop signal was sent to its group.
    pub signalled: bool,
    /// When to SIGKILL the group if it is still there.
    pub kill_at: Option<Instant>,
    pub killed: bool,
    /// Route mode: our ends of its channels, one per listening socket.
    pub channels: Vec<Channel>,
}

impl Worker {
    pub fn new(slot: u32, pid: Pid, generation: u64, stdout: OwnedFd, stderr: OwnedFd) -> Self {
        let pipe = |fd, stream| Pipe {
            fd,
            stream,
            lines: LineSplitter::default(),
        };
        Worker {
            slot,
            pid,
            generation,
            started: Instant::now(),
            pipes: vec![pipe(stdout, Stream::Stdout), pipe(stderr, Stream::Stderr)],
            status: None,
            ready: false,
            ready_at: None,
            ready_deadline: None,
            status_text: None,
            retired: false,
            signalled: false,
            kill_at: None,
            killed: false,
            channels: Vec::new(),
        }
    }

    /// The open output pipes, for poll. Index is what [`Worker::read_pipe`] takes.
    pub fn pipe_fds(&self) -> impl Iterator<Item = (usize, BorrowedFd<'_>)> {
        self.pipes
            .iter()
            .enumerate()
            .map(|(i, p)| (i, p.fd.as_fd()))
    }

    /// Reads what the pipe holds now and prints its complete lines; at end of file, prints the
    /// unfinished last line too and closes the pipe.
    pub fn read_pipe(&mut self, idx: usize, out: &mut Output) {
        let (slot, pid) = (self.slot, self.pid.as_raw());
        let Some(p) = self.pipes.get_mut(idx) else {
            return;
        };
        let mut buf = [0u8; 16 * 1024];
        let eof = loop {
            match nix::unistd::read(&p.fd, &mut buf) {
                Ok(0) => break true,
                Ok(n) => {
                    let stream = p.stream;
                    p.lines
                        .push(&buf[..n], |l| out.worker_line(slot, pid, stream, l));
                }
                Err(Errno::EAGAIN) => break false,
                Err(Errno::EINTR) => continue,
                Err(_) => break true,
            }
        };
        if eof {
            let stream = p.stream;
            p.lines.finish(|l| out.worker_line(slot, pid, stream, l));
            self.pipes.remove(idx);
        }
    }

    /// Reads every pipe to its end (or to what is there now) and prints the rest.
    pub fn drain_pipes(&mut self, out: &mut Output) {
        for idx in (0..self.pipes.len()).rev() {
            self.read_pipe(idx, out);
        }
        let (slot, pid) = (self.slot, self.pid.as_raw());
        for p in &mut self.pipes {
            let stream = p.stream;
            p.lines.finish(|l| out.worker_line(slot, pid, stream, l));
        }
        self.pipes.clear();
    }

    /// Sends `sig` to the worker's whole process group.
    pub fn signal(&self, sig: Signal) {
        let _ = killpg(self.pid, sig);
    }

    /// Asks the group to stop with `sig`; SIGKILL follows at `kill_at`.
    pub fn stop(&mut self, sig: Signal, kill_at: Instant) {
        if self.killed {
            return;
        }
        self.signal(sig);
        self.signalled = true;
        self.kill_at = Some(self.kill_at.map_or(kill_at, |k| k.min(kill_at)));
        self.ready_deadline = None;
        self.ready_at = None;
    }

    pub fn kill(&mut self) {
        self.signal(Signal::SIGKILL);
        self.killed = true;
        self.kill_at = None;
    }

    /// Alive and not on its way out: the worker that serves its slot.
    pub fn serving(&self) -> bool {
        self.status.is_none() && !self.retired && !self.signalled
    }

    /// True while any process of the worker's group exists.
    pub fn group_alive(&self) -> bool {
        !matches!(killpg(self.pid, None), Err(Errno::ESRCH))
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Route mode: the connections queued for it and never sent (they go to another worker).
    pub fn unsent(&mut self) -> Vec<Conn> {
        self.channels
            .iter_mut()
            .flat_map(|c| c.take_queue())
            .collect()
    }

    /// Whether the leader exited with status 0.
    pub fn succeeded(&self) -> bool {
        matches!(self.status, Some(WaitStatus::Exited(_, 0)))
    }
}

/// "exited with code 3", "was killed by SIGSEGV (core dumped)": the way a shell reports it.
pub fn describe_exit(status: &WaitStatus) -> String {
    match status {
        WaitStatus::Exited(_, code) => format!("exited with code {code}"),
        WaitStatus::Signaled(_, sig, core) => format!(
            "was killed by {}{}",
            sig.as_str(),
            if *core { " (core dumped)" } else { "" }
        ),
        other => format!("changed state: {other:?}"),
    }
}

/// The exit's facts as event fields: `code`, or `signal` and `core_dumped`.
pub fn exit_fields(ev: crate::log::Event, status: &WaitStatus) -> crate::log::Event {
    match status {
        WaitStatus::Exited(_, code) => ev.with("code", *code),
        WaitStatus::Signaled(_, sig, core) => {
            ev.with("signal", sig.as_str()).with("core_dumped", *core)
        }
        _ => ev,
    }
}

/// `250ms`, `1.5s`, `2m05s`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        let s = format!("{:.1}", d.as_secs_f64());
        format!("{}s", s.trim_end_matches(".0"))
    } else {
        format!("{}m{:02}s", ms / 60_000, (ms % 60_000) / 1000)
    }
}
