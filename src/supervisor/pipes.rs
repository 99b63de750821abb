//! Workers' output: the read ends of each worker's stdout and stderr, read without blocking
//! and printed line by line through the log writer.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::unistd::Pid;

use crate::log::{LineSplitter, Output, Stream};
use crate::upgrade::format::{Bytes, PipeState, PipesState};

struct Pipe {
    fd: OwnedFd,
    stream: Stream,
    lines: LineSplitter,
}

/// One worker's open output pipes.
pub struct Pipes {
    pub pid: Pid,
    pub slot: u32,
    pipes: Vec<Pipe>,
}

impl Pipes {
    pub fn new(pid: Pid, slot: u32, stdout: OwnedFd, stderr: OwnedFd) -> Pipes {
        let pipe = |fd, stream| Pipe {
            fd,
            stream,
            lines: LineSplitter::default(),
        };
        Pipes {
            pid,
            slot,
            pipes: vec![pipe(stdout, Stream::Stdout), pipe(stderr, Stream::Stderr)],
        }
    }

    /// The pipes as an upgrade hands them over, with the unfinished line of each.
    pub fn save(&self, t: &mut crate::upgrade::state::FdTable) -> PipesState {
        PipesState {
            pid: self.pid.as_raw(),
            slot: self.slot,
            pipes: self
                .pipes
                .iter()
                .map(|p| {
                    let stream = match p.stream {
                        Stream::Stdout => "stdout",
                        Stream::Stderr => "stderr",
                    };
                    PipeState {
                        fd: t.add(
                            p.fd.as_fd(),
                            format!("the {stream} of worker.{}[{}]", self.slot, self.pid),
                        ),
                        stream: stream.into(),
                        partial: Bytes(p.lines.partial().to_vec()),
                    }
                })
                .collect(),
        }
    }

    /// The pipes an upgrade handed over.
    pub fn load(s: PipesState, r: &mut crate::upgrade::restore::Restorer) -> Pipes {
        let pipes = s
            .pipes
            .into_iter()
            .map(|p| {
                let stream = match p.stream.as_str() {
                    "stdout" => Stream::Stdout,
                    "stderr" => Stream::Stderr,
                    other => r.fail(format!("{other:?} is not an output stream")),
                };
                Pipe {
                    fd: r.take(p.fd),
                    stream,
                    lines: LineSplitter::with_partial(p.partial.0),
                }
            })
            .collect();
        Pipes {
            pid: Pid::from_raw(s.pid),
            slot: s.slot,
            pipes,
        }
    }

    /// The open pipes, for poll.
    pub fn fds(&self) -> impl Iterator<Item = (Stream, BorrowedFd<'_>)> {
        self.pipes.iter().map(|p| (p.stream, p.fd.as_fd()))
    }

    /// Reads what the pipe holds now and prints its complete lines; at end of file, prints the
    /// unfinished last line too and closes the pipe. A pipe read once per wake-up, at most
    /// 64 KiB, so a chatty worker cannot hold up the loop.
    pub fn read(&mut self, stream: Stream, out: &mut Output) {
        let (slot, pid) = (self.slot, self.pid.as_raw());
        let Some(idx) = self.pipes.iter().position(|p| p.stream == stream) else {
            return;
        };
        let p = &mut self.pipes[idx];
        let mut buf = [0u8; 16 * 1024];
        let mut eof = false;
        for _ in 0..4 {
            match nix::unistd::read(&p.fd, &mut buf) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => {
                    let stream = p.stream;
                    p.lines
                        .push(&buf[..n], |l| out.worker_line(slot, pid, stream, l));
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => continue,
                Err(_) => {
                    eof = true;
                    break;
                }
            }
        }
        if eof {
            let stream = p.stream;
            p.lines.finish(|l| out.worker_line(slot, pid, stream, l));
            self.pipes.remove(idx);
        }
    }

    /// Reads every pipe to its end (or to what is there now) and prints the rest.
    pub fn drain(&mut self, out: &mut Output) {
        let (slot, pid) = (self.slot, self.pid.as_raw());
        let mut buf = [0u8; 16 * 1024];
        for p in &mut self.pipes {
            loop {
                match nix::unistd::read(&p.fd, &mut buf) {
                    Ok(0) => break,
                    Ok(n) => {
                        let stream = p.stream;
                        p.lines
                            .push(&buf[..n], |l| out.worker_line(slot, pid, stream, l));
                    }
                    Err(Errno::EINTR) => continue,
                    Err(_) => break,
                }
            }
            let stream = p.stream;
            p.lines.finish(|l| out.worker_line(slot, pid, stream, l));
        }
        self.pipes.clear();
    }
}
