//! The control socket across an in-place upgrade: the listening socket, its file, and every
//! client as it is — the one that asked for the upgrade, waiting for its answer, among them
//! (the core's waiters name it by its id, which is kept).

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};

use nix::unistd::Uid;

use super::server::{Client, ControlServer, Phase};
use crate::socket::file::SocketFile;
use crate::upgrade::format::{Bytes, ClientPhase, ControlClientState, ControlState};
use crate::upgrade::restore::Restorer;
use crate::upgrade::state::{FdTable, rel};

impl ControlServer {
    pub fn save(&self, t: &mut FdTable, now: std::time::Instant) -> ControlState {
        ControlState {
            fd: t.add(
                self.listener.as_fd(),
                format!("the control socket {}", self.path.display()),
            ),
            path: self.path.as_path().into(),
            file: self.file.save(t),
            next_id: self.next_id,
            starter: self.starter.as_raw(),
            paused_until: self.paused_until.map(|p| rel(p, now)),
            clients: self
                .clients
                .iter()
                .map(|c| ControlClientState {
                    id: c.id,
                    fd: t.add(c.stream.as_fd(), format!("control client {}", c.id)),
                    buf: Bytes(c.buf.clone()),
                    sent: c.sent,
                    phase: match c.phase {
                        Phase::Reading(until) => ClientPhase::Reading {
                            until: rel(until, now),
                        },
                        Phase::Waiting => ClientPhase::Waiting,
                        Phase::Writing(until) => ClientPhase::Writing {
                            until: rel(until, now),
                        },
                        Phase::Held => ClientPhase::Held,
                    },
                    hold: c.hold,
                    uid: c.uid,
                    may_act: c.may_act,
                })
                .collect(),
        }
    }

    pub fn load(s: ControlState, r: &mut Restorer) -> ControlServer {
        let listener = UnixListener::from(r.take(s.fd));
        let file = SocketFile::load(s.file, r);
        let clients = s
            .clients
            .into_iter()
            .map(|c| Client {
                id: c.id,
                stream: UnixStream::from(r.take(c.fd)),
                buf: c.buf.0,
                sent: c.sent,
                phase: match c.phase {
                    ClientPhase::Reading { until } => Phase::Reading(r.at(until)),
                    ClientPhase::Waiting => Phase::Waiting,
                    ClientPhase::Writing { until } => Phase::Writing(r.at(until)),
                    ClientPhase::Held => Phase::Held,
                },
                hold: c.hold,
                uid: c.uid,
                may_act: c.may_act,
            })
            .collect();
        ControlServer {
            dir_linked: true,
            listener,
            path: s.path.path(),
            file,
            clients,
            next_id: s.next_id,
            paused_until: s.paused_until.map(|p| r.at(p)),
            warnings: crate::route::RateLimit::new(),
            starter: Uid::from_raw(s.starter),
        }
    }
}
