//! The guard: the supervisor's only privileged helper, and what cleans up when the supervisor
//! is killed.
//!
//! A worker's parent-death signal reaches only the process multinode forked; a helper it
//! started would survive `kill -9` of the supervisor and keep serving on the inherited socket.
//! So at start, while multinode is still one thread and still root, it forks the guard
//! (process.rs), which stays root — a worker, running as the workers' user, can neither kill,
//! stop nor ptrace it — and speaks a small bounded protocol over a socketpair (wire.rs):
//!
//! - the supervisor tells it each worker's process group as it starts and ends;
//! - before dropping privileges it registers what is to be removed at the end (socket files,
//!   the control socket's directory, the service's cgroup) and seals that list;
//! - for a reload it asks for the config file's bytes: the guard reads the one path given at
//!   start, with the rights multinode had then (a root-only file stays readable);
//! - at a clean exit it says so, and the guard cleans up and exits; when the socket reaches
//!   end of file instead (the supervisor was killed), the guard kills what is left of every
//!   worker and cleans up the same way.
//!
//! The supervisor never waits on the guard: its socket is non-blocking, requests queue in
//! memory (bounded), replies are read by the event loop like any other input, and at exit it
//! waits for the guard a bounded time only, then leaves it to init. The loop polls the socket:
//! end of file means the guard died, and the service stops (see `Event::GuardGone`).

mod process;
mod wire;

use std::io::{Read, Write};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{ForkResult, Pid, Uid};

use crate::error::{Error, Result};
use crate::upgrade::format::{Bytes, GuardState};
use wire::{Decoder, MAX_CONFIG, Reply, Request};

/// Requests kept for a guard that is not reading (SIGSTOPped) before new ones are dropped.
const MAX_QUEUED: usize = 1 << 20;

pub struct Guard {
    pid: Pid,
    sock: UnixStream,
    /// Requests not written yet.
    out: Vec<u8>,
    input: Decoder,
    /// Requests dropped because the queue was full.
    dropped: u64,
    /// Its exit was reaped by the supervisor's loop.
    exited: bool,
    /// `finish` was called.
    finished: bool,
}

/// What the guard answered.
#[derive(Debug)]
pub enum Note {
    /// The config file's bytes, or why it could not be read.
    Config(std::result::Result<Vec<u8>, String>),
    /// Its socket reached end of file: the guard is dead.
    Gone,
}

/// How the guard ended at a clean exit.
#[derive(Debug, PartialEq, Eq)]
pub enum Finish {
    /// It cleaned up and exited.
    Done,
    /// It was gone already, or ended otherwise.
    Gone,
    /// Still running after the wait: left to finish on its own.
    Busy,
}

impl Guard {
    /// Forks the guard. Call while the process has a single thread and its start-up rights.
    /// `config`: the config file it may read for reloads; `workers_uid`: the user the
    /// workers will run as, when multinode drops privileges.
    pub fn start(config: Option<&Path>, workers_uid: Option<Uid>) -> Result<Guard> {
        let config = config
            .map(std::path::absolute)
            .transpose()
            .map_err(|e| Error::usage(format!("--config: {e}")))?;
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| Error::sys("creating the guard's socketpair", e))?;
        // SAFETY: multinode has one thread here (serve.rs forks the guard before the file
        // watcher or the output thread exist), so the child may run ordinary Rust code.
        match unsafe { nix::unistd::fork() }.map_err(|e| Error::sys("forking the guard", e))? {
            ForkResult::Child => {
                drop(ours);
                let settings = process::Settings {
                    config,
                    workers_uid,
                };
                process::main(theirs, settings)
            }
            ForkResult::Parent { child } => Ok(Guard {
                pid: child,
                sock: ours,
                out: Vec::new(),
                input: Decoder::new(MAX_CONFIG + 64),
                dropped: 0,
                exited: false,
                finished: false,
            }),
        }
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// The guard as an upgrade hands it over: the same process and socket, and what is
    /// queued either way.
    pub fn save(&self, t: &mut crate::upgrade::state::FdTable) -> GuardState {
        GuardState {
            pid: self.pid.as_raw(),
            fd: t.add(
                self.sock.as_fd(),
                format!("the socket to the guard (pid {})", self.pid),
            ),
            out: Bytes(self.out.clone()),
            input: Bytes(self.input.pending().to_vec()),
            dropped: self.dropped,
            exited: self.exited,
        }
    }

    /// The guard an upgrade handed over.
    pub fn load(s: GuardState, r: &mut crate::upgrade::restore::Restorer) -> Guard {
        let mut input = Decoder::new(MAX_CONFIG + 64);
        input.push(&s.input.0);
        Guard {
            pid: Pid::from_raw(s.pid),
            sock: UnixStream::from(r.take(s.fd)),
            out: s.out.0,
            input,
            dropped: s.dropped,
            exited: s.exited,
            finished: false,
        }
    }

    /// A socket file to remove at the end, if it is still this one. Before [`Guard::seal`].
    pub fn remove_socket_file(&mut self, path: &Path) {
        if let Ok(p) = std::path::absolute(path) {
            self.queue(Request::SocketFile(p));
        }
    }

    /// A directory to remove at the end (if empty and still this one). Before the seal.
    pub fn remove_dir(&mut self, path: &Path) {
        if let Ok(p) = std::path::absolute(path) {
            self.queue(Request::Dir(p));
        }
    }

    /// The service's cgroup: killed if the supervisor dies, removed at the end. Before the
    /// seal.
    pub fn remove_cgroup(&mut self, path: &Path) {
        self.queue(Request::Cgroup(path.to_path_buf()));
    }

    /// Ends the registrations: hands every request over (blocking, once, before the drop) and
    /// makes the socket non-blocking for the rest of the run.
    pub fn seal(&mut self) -> Result<()> {
        self.queue(Request::Seal);
        let fail = |e| Error::sys("handing the guard its list", e);
        self.sock.write_all(&self.out).map_err(fail)?;
        self.out.clear();
        self.sock.set_nonblocking(true).map_err(fail)
    }

    /// A worker's process group exists now.
    pub fn track(&mut self, pgid: Pid) {
        self.queue(Request::Track(pgid.as_raw()));
    }

    /// A worker's process group is gone.
    pub fn untrack(&mut self, pgid: Pid) {
        self.queue(Request::Untrack(pgid.as_raw()));
    }

    /// Asks for the config file's bytes; they come back as a [`Note::Config`].
    pub fn read_config(&mut self) {
        self.queue(Request::ReadConfig);
    }

    fn queue(&mut self, r: Request) {
        if self.out.len() >= MAX_QUEUED {
            self.dropped += 1;
            return;
        }
        r.encode(&mut self.out);
    }

    /// Requests dropped so far because the guard did not read them.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Whether requests wait to be written (poll for POLLOUT).
    pub fn wants_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// Writes what it can of the queued requests, without blocking. False: the guard is gone.
    pub fn flush(&mut self) -> bool {
        while !self.out.is_empty() {
            match self.sock.write(&self.out) {
                Ok(n) => {
                    self.out.drain(..n);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }

    /// Reads what the guard sent, at most 1 MiB per call.
    pub fn read(&mut self) -> Vec<Note> {
        let mut notes = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..16 {
            match self.sock.read(&mut buf) {
                Ok(0) => {
                    notes.push(Note::Gone);
                    return notes;
                }
                Ok(n) => self.input.push(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    notes.push(Note::Gone);
                    return notes;
                }
            }
        }
        loop {
            let reply = match self.input.next_frame() {
                Ok(None) => return notes,
                Ok(Some((tag, payload))) => Reply::decode(tag, &payload),
                Err(e) => Err(e),
            };
            match reply {
                Ok(Reply::Config(bytes)) => notes.push(Note::Config(Ok(bytes))),
                Ok(Reply::ConfigError(why)) => notes.push(Note::Config(Err(why))),
                Err(_) => {
                    notes.push(Note::Gone);
                    return notes;
                }
            }
        }
    }

    /// The supervisor's loop reaped the guard's exit.
    pub fn reaped(&mut self) {
        self.exited = true;
    }

    /// At a clean exit: asks the guard to clean up and exit, and waits for it at most `wait`
    /// (polling, never blocked in waitpid); a guard still running then is left to init.
    pub fn finish(mut self, wait: Duration) -> Finish {
        self.finished = true;
        if self.exited {
            return Finish::Gone;
        }
        self.queue(Request::Exit);
        let until = Instant::now() + wait;
        loop {
            self.flush();
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => {}
                Ok(WaitStatus::Exited(_, 0)) => return Finish::Done,
                Ok(_) | Err(_) => return Finish::Gone,
            }
            if Instant::now() >= until {
                return Finish::Busy;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl AsFd for Guard {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Drop for Guard {
    /// Dropped without [`Guard::finish`] (a start-up error, a dead guard): says exit, once,
    /// so that the guard never takes a supervisor that is still running for a dead one.
    fn drop(&mut self) {
        if !self.finished && !self.exited {
            self.queue(Request::Exit);
            self.flush();
        }
    }
}
