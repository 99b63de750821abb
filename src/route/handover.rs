//! Route mode across an in-place upgrade: every connection multinode holds — queued for a
//! worker whose channel was full, waiting in the backlog while no worker runs, waiting for
//! its PROXY header — goes over as the fd it is, in order, with its sequence number and
//! client; so do the channels of every worker, what they were handed and the counters. None
//! is closed or refused on the way.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::time::Instant;

use nix::unistd::Pid;

use super::Conn;
use super::channel::Channel;
use super::pending::{Pending, source_of};
use super::router::{ProxyRules, Refused, Router, Target};
use crate::cli::RoutePolicy;
use crate::config::Config;
use crate::upgrade::format::{
    Bytes, ChannelState, ConnState, PendingState, RouterState, TargetState,
};
use crate::upgrade::restore::Restorer;
use crate::upgrade::state::{FdTable, rel};

fn conn_state(c: &Conn, t: &mut FdTable, what: &str) -> ConnState {
    ConnState {
        fd: t.add(c.fd.as_fd(), format!("connection {} ({what})", c.seq)),
        peer: c.peer.map(|p| p.to_string()),
        seq: c.seq,
        listener: c.listener,
    }
}

fn peer(p: Option<String>, r: &Restorer) -> Option<SocketAddr> {
    p.map(|p| r.ok(p.parse().map_err(|e| format!("peer {p:?}: {e}"))))
}

fn conn(c: ConnState, r: &mut Restorer) -> Conn {
    Conn {
        fd: r.take(c.fd),
        peer: peer(c.peer, r),
        seq: c.seq,
        listener: c.listener,
    }
}

impl Router {
    pub fn save(&self, t: &mut FdTable, now: Instant) -> RouterState {
        let f = &self.refused;
        RouterState {
            seq: self.seq,
            turn: self.turn,
            next_id: self.next_id,
            refused: [f.full, f.untrusted, f.invalid, f.timeout, f.evicted],
            handed_by_slot: self.handed_by_slot.clone(),
            paused_until: self.paused_until.map(|p| rel(p, now)),
            pending: self
                .pending
                .iter()
                .map(|p| PendingState {
                    id: p.id,
                    fd: t.add(p.fd.as_fd(), format!("connection {} (PROXY header)", p.id)),
                    listener: p.listener,
                    peer: p.peer.map(|a| a.to_string()),
                    deadline: rel(p.deadline, now),
                    got: Bytes(p.got.clone()),
                })
                .collect(),
            backlog: self
                .backlog
                .iter()
                .map(|c| conn_state(c, t, "waiting for a worker"))
                .collect(),
            targets: self
                .targets
                .iter()
                .map(|tg| TargetState {
                    pid: tg.pid.as_raw(),
                    slot: tg.slot,
                    serving: tg.serving,
                    ready: tg.ready,
                    handed: tg.handed,
                    limit: tg.limit,
                    channels: tg
                        .channels
                        .iter()
                        .enumerate()
                        .map(|(i, ch)| {
                            let what =
                                format!("route channel {i} of worker.{}[{}]", tg.slot, tg.pid);
                            ChannelState {
                                fd: t.add(ch.fd.as_fd(), what.clone()),
                                queue: ch
                                    .queue
                                    .iter()
                                    .map(|c| conn_state(c, t, &format!("queued for {what}")))
                                    .collect(),
                                outstanding: ch.outstanding,
                                closed: ch.closed,
                                retry_at: ch.retry_at.map(|p| rel(p, now)),
                            }
                        })
                        .collect(),
                })
                .collect(),
            reached: self.reached.iter().map(|(p, n)| (p.as_raw(), *n)).collect(),
        }
    }

    /// The router an upgrade handed over (no `proxy-untrusted` warning: it was given at start).
    pub fn load(policy: RoutePolicy, cfg: &Config, s: RouterState, r: &mut Restorer) -> Router {
        let proxy = cfg.proxy_protocol.then(|| ProxyRules {
            from: cfg.proxy_from.clone(),
            timeout: cfg.proxy_timeout,
        });
        let pending: Vec<Pending> = s
            .pending
            .into_iter()
            .map(|p| {
                let fd: OwnedFd = r.take(p.fd);
                let addr = peer(p.peer, r);
                let mut pending = Pending::new(p.id, fd, p.listener, addr, r.at(p.deadline));
                pending.got = p.got.0;
                pending
            })
            .collect();
        let mut per_source = HashMap::new();
        for p in &pending {
            *per_source.entry(source_of(p.peer)).or_default() += 1;
        }
        let backlog: VecDeque<Conn> = s.backlog.into_iter().map(|c| conn(c, r)).collect();
        let targets = s
            .targets
            .into_iter()
            .map(|tg| Target {
                pid: Pid::from_raw(tg.pid),
                slot: tg.slot,
                serving: tg.serving,
                ready: tg.ready,
                handed: tg.handed,
                limit: tg.limit,
                channels: tg
                    .channels
                    .into_iter()
                    .map(|ch| {
                        let mut c = Channel::new(r.take(ch.fd));
                        c.queue = ch.queue.into_iter().map(|q| conn(q, r)).collect();
                        c.outstanding = ch.outstanding;
                        c.closed = ch.closed;
                        c.retry_at = ch.retry_at.map(|p| r.at(p));
                        c
                    })
                    .collect(),
            })
            .collect();
        let [full, untrusted, invalid, timeout, evicted] = s.refused;
        Router {
            policy,
            proxy,
            refused: Refused {
                full,
                untrusted,
                invalid,
                timeout,
                evicted,
            },
            handed_by_slot: s.handed_by_slot,
            per_source,
            seq: s.seq,
            turn: s.turn,
            next_id: s.next_id,
            pending,
            backlog,
            logs: Vec::new(),
            paused_until: s.paused_until.map(|p| r.at(p)),
            targets,
            reached: s
                .reached
                .into_iter()
                .map(|(p, n)| (Pid::from_raw(p), n))
                .collect(),
        }
    }
}
