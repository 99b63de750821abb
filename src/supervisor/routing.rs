//! The event loop's side of route mode: accepting, PROXY headers, choosing a worker by policy
//! and keeping connections flowing through the worker channels (see route.rs for the wire
//! format and the back-pressure rules).

use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

use nix::errno::Errno;
use nix::sys::socket::{self, SockFlag};
use nix::unistd::Pid;

use super::Supervisor;
use crate::cli::RoutePolicy;
use crate::log::Event;
use crate::route::{
    ACCEPT_PAUSE, Conn, MAX_BACKLOG, MAX_PENDING, Pending, Progress, RateLimit, peer_of, score,
};

/// Connections accepted from one listening socket per wake-up, so one busy socket cannot
/// starve the rest of the loop.
const ACCEPT_BURST: usize = 256;

impl Supervisor {
    /// A listening socket is readable: accept what is queued (up to a burst).
    pub(super) fn on_listener(&mut self, listener: usize) {
        let now = Instant::now();
        for _ in 0..ACCEPT_BURST {
            let raw = match socket::accept4(
                self.p.sockets[listener].fd.as_raw_fd(),
                SockFlag::SOCK_CLOEXEC,
            ) {
                Ok(fd) => fd,
                Err(Errno::EINTR) | Err(Errno::ECONNABORTED) => continue,
                Err(Errno::EMFILE) | Err(Errno::ENFILE) => {
                    if let Some(r) = self.router.as_mut() {
                        r.accept_paused_until = Some(now + ACCEPT_PAUSE);
                    }
                    self.route_warn(
                        "accept",
                        "out of file descriptors; connections wait in the accept queue".into(),
                    );
                    break;
                }
                Err(_) => break,
            };
            // SAFETY: accept4 just returned this fd and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let peer = peer_of(&fd);
            let Some(router) = self.router.as_mut() else {
                return;
            };
            if router.proxy {
                if router.pending.len() >= MAX_PENDING {
                    drop(fd);
                    self.route_warn("proxy", format!("{MAX_PENDING} connections already wait for a PROXY header; closing a new one"));
                    continue;
                }
                let id = router.next_id();
                router
                    .pending
                    .push(Pending::new(id, fd, listener, peer, now));
            } else {
                let seq = router.next_seq();
                self.dispatch(Conn {
                    fd,
                    peer,
                    seq,
                    listener,
                });
            }
        }
    }

    /// A connection waiting for its PROXY header is readable.
    pub(super) fn on_pending(&mut self, id: u64) {
        let Some(router) = self.router.as_mut() else {
            return;
        };
        let Some(idx) = router.pending.iter().position(|p| p.id == id) else {
            return;
        };
        match router.pending[idx].advance() {
            Progress::Waiting => {}
            Progress::Done(client) => {
                let p = router.pending.swap_remove(idx);
                let seq = router.next_seq();
                self.dispatch(Conn {
                    fd: p.fd,
                    peer: client,
                    seq,
                    listener: p.listener,
                });
            }
            Progress::Failed(why) => {
                let p = router.pending.swap_remove(idx);
                drop(p.fd);
                self.proxy_warn(why, p.peer);
            }
        }
    }

    /// Closes connections whose PROXY header did not arrive in time.
    pub(super) fn expire_pending(&mut self, now: Instant) {
        let Some(router) = self.router.as_mut() else {
            return;
        };
        let (late, keep): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut router.pending)
            .into_iter()
            .partition(|p| p.deadline <= now);
        router.pending = keep;
        for p in late {
            drop(p.fd);
            self.proxy_warn("no PROXY header within 5s", p.peer);
        }
    }

    /// The next PROXY header deadline or channel retry.
    pub(super) fn next_route_deadline(&self) -> Option<Instant> {
        let router = self.router.as_ref()?;
        let pending = router.pending.iter().map(|p| p.deadline);
        let pending = pending.chain(router.accept_paused_until);
        let retries = self
            .workers
            .iter()
            .flat_map(|w| w.channels.iter().filter_map(|c| c.retry_at));
        pending.chain(retries).min()
    }

    fn proxy_warn(&mut self, why: &str, peer: Option<SocketAddr>) {
        let from = peer.map_or_else(String::new, |p| format!(" from {p}"));
        self.route_warn("proxy", format!("closed a connection{from}: {why}"));
    }

    /// A rate-limited warning (one line a second at most, counting the rest).
    fn route_warn(&mut self, kind: &'static str, msg: String) {
        let Some(router) = self.router.as_mut() else {
            return;
        };
        let limiter = match router.logs.iter().position(|(k, _)| *k == kind) {
            Some(i) => &mut router.logs[i].1,
            None => {
                router.logs.push((kind, RateLimit::new()));
                &mut router.logs.last_mut().expect("just pushed").1
            }
        };
        if let Some(held) = limiter.allow(Instant::now()) {
            let more = if held > 0 {
                format!(" ({held} more like it not shown)")
            } else {
                String::new()
            };
            self.p
                .out
                .event(Event::warn(kind, format!("{msg}{more}")).with("held", held));
        }
    }

    /// Hands a connection to the worker the policy picks, or to the backlog while none can
    /// take it.
    pub(super) fn dispatch(&mut self, conn: Conn) {
        match self.pick(&conn) {
            Some(i) => self.workers[i].channels[conn.listener].push(conn),
            None => {
                let Some(router) = self.router.as_mut() else {
                    return;
                };
                let no_worker = !self
                    .workers
                    .iter()
                    .any(|w| w.serving() && !w.channels.is_empty());
                if no_worker && router.backlog.len() < MAX_BACKLOG {
                    router.backlog.push_back(conn);
                } else {
                    drop(conn);
                    self.route_warn(
                        "route",
                        "every worker's channel is full; closed a connection".into(),
                    );
                }
            }
        }
    }

    /// The index (in `workers`) of the worker for `conn`, by policy, skipping full channels.
    fn pick(&mut self, conn: &Conn) -> Option<usize> {
        let router = self.router.as_mut()?;
        let live: Vec<usize> = (0..self.workers.len())
            .filter(|&i| self.workers[i].serving() && !self.workers[i].channels.is_empty())
            .collect();
        // Ready workers take connections; a worker still starting only when none is ready.
        let ready: Vec<usize> = live
            .iter()
            .copied()
            .filter(|&i| self.workers[i].ready)
            .collect();
        let mut cands = if ready.is_empty() { live } else { ready };
        cands.sort_by_key(|&i| self.workers[i].slot);
        cands.retain(|&i| !self.workers[i].channels[conn.listener].is_full());
        if cands.is_empty() {
            return None;
        }
        let policy = match (router.policy, conn.peer) {
            (RoutePolicy::IpHash, None) => RoutePolicy::RoundRobin,
            (p, _) => p,
        };
        let chosen = match policy {
            RoutePolicy::IpHash => {
                let ip = conn.peer.expect("ip-hash has a peer").ip();
                *cands
                    .iter()
                    .max_by_key(|&&i| score(&ip, self.workers[i].slot))?
            }
            RoutePolicy::RoundRobin => {
                router.rr = router.rr.wrapping_add(1);
                cands[router.rr % cands.len()]
            }
            RoutePolicy::LeastConn => {
                router.rr = router.rr.wrapping_add(1);
                let n = cands.len();
                let load = |i: usize| {
                    self.workers[i]
                        .channels
                        .iter()
                        .map(|c| c.outstanding)
                        .sum::<u64>()
                };
                (0..n)
                    .map(|k| cands[(router.rr + k) % n])
                    .min_by_key(|&i| load(i))?
            }
        };
        Some(chosen)
    }

    /// Sends what the channels hold; a channel whose worker is gone gives its connections back.
    pub(super) fn flush_channels(&mut self) {
        let Some(router) = self.router.as_mut() else {
            return;
        };
        // Connections that waited for any worker at all go first, in order.
        let waiting: Vec<Conn> = router.backlog.drain(..).collect();
        for c in waiting {
            self.dispatch(c);
        }
        let now = Instant::now();
        let mut homeless = Vec::new();
        for w in &mut self.workers {
            let serving = w.serving();
            for ch in &mut w.channels {
                if !ch.has_queue() {
                    continue;
                }
                // A worker asked to stop drains only what it already has: what is still
                // queued here goes to the others.
                if !serving || ch.flush(now).is_err() {
                    homeless.extend(ch.take_queue());
                }
            }
        }
        for c in homeless {
            self.dispatch(c);
        }
    }

    /// A worker channel is readable: its close notices (least-conn bookkeeping).
    pub(super) fn on_channel(&mut self, pid: Pid, listener: usize) {
        let Some(w) = self.workers.iter_mut().find(|w| w.pid == pid) else {
            return;
        };
        if let Some(ch) = w.channels.get_mut(listener) {
            // At end of file the worker is exiting; its reap takes care of the rest.
            let _ = ch.read_notices();
        }
    }

    /// A worker is over: connections it was never sent go to the others.
    pub(super) fn rehome(&mut self, conns: Vec<Conn>) {
        for c in conns {
            self.dispatch(c);
        }
    }
}
