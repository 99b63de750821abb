//! Route mode's data plane: accepting, PROXY headers, choosing a worker by policy and keeping
//! connections flowing through the worker channels. The core decides which workers take
//! connections ([`Router::set_targets`], from `Core::route_targets`); everything per
//! connection happens here, in the shell, without a round trip through the core.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{self, AddressFamily, SockFlag, SockaddrLike, SockaddrStorage};
use nix::unistd::Pid;

use super::channel::{self, Channel};
use super::pending::{MAX_PENDING, Pending, Progress, Source};
use super::policy::{Candidate, choose};
use super::{Conn, MAX_BACKLOG, RateLimit, peer_of};
use crate::cli::RoutePolicy;
use crate::config::Config;
use crate::log::{Event, Output};
use crate::proxy::Cidr;
use crate::supervisor::human;

/// Connections accepted from one listening socket per wake-up, so one busy socket cannot
/// starve the rest of the loop.
const ACCEPT_BURST: usize = 256;
/// How long accepting pauses when the supervisor is out of fds.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A worker with route channels.
pub(super) struct Target {
    pub(super) pid: Pid,
    pub(super) slot: u32,
    /// Its slot's worker (not draining): it takes new connections.
    pub(super) serving: bool,
    pub(super) ready: bool,
    /// One per listening socket, in `--listen` order.
    pub(super) channels: Vec<Channel>,
    /// Connections handed to it so far.
    pub(super) handed: u64,
    /// `--max-requests` for it: once `handed` reaches it, the core hears so (once).
    pub(super) limit: Option<u64>,
}

/// Route mode's figures for `/metrics`, per slot (every slot ever handed a connection, and
/// every slot with a worker now).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RouteStats {
    pub slots: Vec<(u32, SlotRoute)>,
    /// Connections held while no worker runs at all.
    pub backlog: usize,
    /// Connections waiting for their PROXY header.
    pub pending: usize,
    pub refused: Refused,
}

/// One slot's connections.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SlotRoute {
    /// Handed to its workers since the start (queued for them included).
    pub handed: u64,
    /// Sent to its workers and not reported closed by them.
    pub open: u64,
    /// Queued here for its workers, their channel being full.
    pub queued: u64,
}

/// Connections closed without reaching a worker since the start, by why.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Refused {
    /// No worker could take it: every channel full, or the backlog full while none runs.
    pub full: u64,
    /// From outside `--proxy-from`.
    pub untrusted: u64,
    /// A PROXY header that was invalid, too long, or a connection closed before it.
    pub invalid: u64,
    /// No PROXY header within `--proxy-timeout`.
    pub timeout: u64,
    /// Closed to make room for another source's waiting connection.
    pub evicted: u64,
}

/// What polling a router fd is for.
pub enum Wake {
    Pending(u64),
    Channel(Pid, usize),
}

/// `--proxy-protocol`: whom to believe, and how long to wait for a header.
pub(super) struct ProxyRules {
    /// `--proxy-from`; empty: anyone.
    pub(super) from: Vec<Cidr>,
    pub(super) timeout: Duration,
}

pub struct Router {
    pub(super) policy: RoutePolicy,
    pub(super) proxy: Option<ProxyRules>,
    /// Connections closed without reaching a worker, since the start.
    pub(super) refused: Refused,
    /// Connections handed to each slot's workers since the start, by slot.
    pub(super) handed_by_slot: Vec<u64>,
    /// Connections waiting for a PROXY header, per source.
    pub(super) per_source: HashMap<Source, usize>,
    pub(super) seq: u64,
    pub(super) turn: usize,
    pub(super) next_id: u64,
    pub(super) pending: Vec<Pending>,
    /// Connections no worker could take yet.
    pub(super) backlog: VecDeque<Conn>,
    /// One limiter per kind of warning (`proxy`, `accept`, `route`), so one cannot hide another.
    pub(super) logs: Vec<(&'static str, RateLimit)>,
    /// Out of fds: listening sockets are not polled until then (they would stay readable and
    /// spin the loop); connections wait in the kernel's accept queue meanwhile.
    pub(super) paused_until: Option<Instant>,
    pub(super) targets: Vec<Target>,
    /// Workers that reached their `--max-requests`, for the core.
    pub(super) reached: Vec<(Pid, u64)>,
}

impl Router {
    /// The router of `cfg`'s route mode. With `--proxy-protocol` and no `--proxy-from`, says
    /// (once, now) that any client can claim any address.
    pub fn new(policy: RoutePolicy, cfg: &Config, out: &mut Output) -> Router {
        let proxy = cfg.proxy_protocol.then(|| ProxyRules {
            from: cfg.proxy_from.clone(),
            timeout: cfg.proxy_timeout,
        });
        if proxy.as_ref().is_some_and(|p| p.from.is_empty()) {
            out.event(Event::warn(
                "proxy-untrusted",
                "--proxy-protocol without --proxy-from: any client can claim any address in its \
                 PROXY header (and so choose its worker); give --proxy-from with the addresses \
                 of your load balancers",
            ));
        }
        Router {
            policy,
            proxy,
            refused: Refused::default(),
            handed_by_slot: Vec::new(),
            per_source: HashMap::new(),
            seq: 0,
            turn: 0,
            next_id: 0,
            pending: Vec::new(),
            backlog: VecDeque::new(),
            logs: Vec::new(),
            paused_until: None,
            targets: Vec::new(),
            reached: Vec::new(),
        }
    }

    /// Channels for a worker about to start: ours, and the ends it inherits.
    pub fn channels(n: usize) -> nix::Result<(Vec<Channel>, Vec<OwnedFd>)> {
        let mut ours = Vec::with_capacity(n);
        let mut theirs = Vec::with_capacity(n);
        for _ in 0..n {
            let (a, b) = channel::pair()?;
            ours.push(a);
            theirs.push(b);
        }
        Ok((ours, theirs))
    }

    /// A worker started with these channels.
    pub fn add(&mut self, pid: Pid, slot: u32, channels: Vec<Channel>) {
        self.targets.push(Target {
            pid,
            slot,
            serving: true,
            ready: false,
            channels,
            handed: 0,
            limit: None,
        });
    }

    /// Which workers serve their slot and which are ready, as the core sees it.
    pub fn set_targets(&mut self, serving: &[crate::supervisor::Target]) {
        for t in &mut self.targets {
            match serving.iter().find(|s| s.pid == t.pid) {
                Some(s) => {
                    t.serving = true;
                    t.ready = s.ready;
                    t.limit = s.request_limit;
                }
                None => t.serving = false,
            }
        }
    }

    /// Workers that reached their `--max-requests` since the last call, with how many
    /// connections they were handed. Each is reported once.
    pub fn take_limits_reached(&mut self) -> Vec<(Pid, u64)> {
        std::mem::take(&mut self.reached)
    }

    /// A worker is gone: connections it was never sent go to the others.
    pub fn remove(&mut self, pid: Pid, out: &mut Output) {
        let Some(i) = self.targets.iter().position(|t| t.pid == pid) else {
            return;
        };
        let mut t = self.targets.swap_remove(i);
        let unsent: Vec<Conn> = t.channels.iter_mut().flat_map(|c| c.take_queue()).collect();
        for c in unsent {
            self.dispatch(c, out);
        }
    }

    /// Whether the listening sockets should be polled now.
    pub fn accepting(&mut self, now: Instant) -> bool {
        if self.paused_until.is_some_and(|t| t <= now) {
            self.paused_until = None;
        }
        self.paused_until.is_none()
    }

    /// The fds to poll besides the listening sockets: connections awaiting a PROXY header,
    /// and worker channels (readable: close notices; writable: room for queued connections).
    pub fn polled(&self) -> impl Iterator<Item = (Wake, BorrowedFd<'_>, bool)> {
        let pending = self
            .pending
            .iter()
            .map(|p| (Wake::Pending(p.id), p.fd.as_fd(), false));
        let channels = self.targets.iter().flat_map(|t| {
            t.channels
                .iter()
                .enumerate()
                .filter(|(_, c)| !c.closed)
                .map(move |(i, c)| (Wake::Channel(t.pid, i), c.as_fd(), c.wants_write()))
        });
        pending.chain(channels)
    }

    /// The next PROXY header deadline, channel retry or end of an accept pause.
    pub fn deadline(&self) -> Option<Instant> {
        let pending = self.pending.iter().map(|p| p.deadline);
        let retries = self
            .targets
            .iter()
            .flat_map(|t| t.channels.iter().filter_map(|c| c.retry_at));
        pending.chain(retries).chain(self.paused_until).min()
    }

    /// A listening socket is readable: accept what is queued (up to a burst).
    pub fn on_listener(&mut self, fd: BorrowedFd<'_>, listener: usize, out: &mut Output) {
        let now = Instant::now();
        for _ in 0..ACCEPT_BURST {
            let raw = match socket::accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                Ok(fd) => fd,
                Err(Errno::EINTR) | Err(Errno::ECONNABORTED) => continue,
                Err(Errno::EMFILE) | Err(Errno::ENFILE) => {
                    self.paused_until = Some(now + ACCEPT_PAUSE);
                    self.warn(
                        Event::warn(
                            "accept",
                            "out of file descriptors; connections wait in the accept queue",
                        ),
                        out,
                    );
                    break;
                }
                Err(_) => break,
            };
            // SAFETY: accept4 just returned this fd and nothing else owns it.
            let fd = unsafe { OwnedFd::from_raw_fd(raw) };
            let peer = peer_of(&fd);
            if let Some(rules) = &self.proxy {
                if !trusted(&rules.from, &fd, peer) {
                    // Closed before a byte is read: its header would not be believed.
                    drop(fd);
                    self.refused.untrusted += 1;
                    let from = peer.map_or_else(|| "?".to_string(), |p| p.ip().to_string());
                    let ev = Event::warn(
                        "proxy-refused",
                        format!(
                            "closed a connection from {from}: not in --proxy-from ({} so far)",
                            self.refused.untrusted
                        ),
                    )
                    .with("peer", from)
                    .with("refused", self.refused.untrusted);
                    self.warn(ev, out);
                    continue;
                }
                let deadline = crate::supervisor::later(now, rules.timeout);
                if self.pending.len() >= MAX_PENDING {
                    self.evict(out);
                }
                self.next_id += 1;
                let p = Pending::new(self.next_id, fd, listener, peer, deadline);
                *self.per_source.entry(p.source).or_default() += 1;
                self.pending.push(p);
            } else {
                self.seq += 1;
                let seq = self.seq;
                self.dispatch(
                    Conn {
                        fd,
                        peer,
                        seq,
                        listener,
                    },
                    out,
                );
            }
        }
    }

    /// A connection waiting for its PROXY header is readable.
    pub fn on_pending(&mut self, id: u64, out: &mut Output) {
        let Some(idx) = self.pending.iter().position(|p| p.id == id) else {
            return;
        };
        match self.pending[idx].advance() {
            Progress::Waiting => {}
            Progress::Done(client) => self.proxied(idx, client, out),
            Progress::Failed(why) => {
                let p = self.take_pending(idx);
                drop(p.fd);
                self.proxy_warn(why, "invalid", p.peer, out);
            }
        }
    }

    /// The pending connection at `idx` sent its header naming `client`: route it.
    fn proxied(&mut self, idx: usize, client: Option<SocketAddr>, out: &mut Output) {
        let p = self.take_pending(idx);
        self.seq += 1;
        let conn = Conn {
            fd: p.fd,
            peer: client,
            seq: self.seq,
            listener: p.listener,
        };
        self.dispatch(conn, out);
    }

    /// Removes the pending connection at `idx` (and its count against its source).
    fn take_pending(&mut self, idx: usize) -> Pending {
        let p = self.pending.swap_remove(idx);
        self.uncount(p.source);
        p
    }

    fn uncount(&mut self, source: Source) {
        if let Some(n) = self.per_source.get_mut(&source) {
            *n -= 1;
            if *n == 0 {
                self.per_source.remove(&source);
            }
        }
    }

    /// Makes room for one more waiting connection: the source holding the most loses its
    /// oldest (after a last look, in case its header is there, not yet read).
    fn evict(&mut self, out: &mut Output) {
        let Some(source) = self
            .per_source
            .iter()
            .max_by_key(|(_, n)| **n)
            .map(|(s, _)| *s)
        else {
            return;
        };
        let Some(idx) = self
            .pending
            .iter()
            .enumerate()
            .filter(|(_, p)| p.source == source)
            .min_by_key(|(_, p)| p.id)
            .map(|(i, _)| i)
        else {
            return;
        };
        match self.pending[idx].advance() {
            Progress::Done(client) => self.proxied(idx, client, out),
            Progress::Failed(why) => {
                let p = self.take_pending(idx);
                self.proxy_warn(why, "invalid", p.peer, out);
            }
            Progress::Waiting => {
                let p = self.take_pending(idx);
                let why = format!(
                    "{MAX_PENDING} connections wait for a PROXY header and this source holds \
                     the most; closed its oldest"
                );
                self.proxy_warn(&why, "evicted", p.peer, out);
            }
        }
    }

    /// Closes connections whose PROXY header did not arrive in time.
    pub fn expire(&mut self, now: Instant, out: &mut Output) {
        if !self.pending.iter().any(|p| p.deadline <= now) {
            return;
        }
        let (late, keep): (Vec<Pending>, Vec<Pending>) = std::mem::take(&mut self.pending)
            .into_iter()
            .partition(|p| p.deadline <= now);
        self.pending = keep;
        let timeout = self.proxy.as_ref().map_or(Duration::ZERO, |r| r.timeout);
        let why = format!("no PROXY header within {}", human(timeout));
        for p in late {
            self.uncount(p.source);
            drop(p.fd);
            self.proxy_warn(&why, "timeout", p.peer, out);
        }
    }

    /// A worker channel is readable: its close notices (least-conn bookkeeping).
    pub fn on_channel(&mut self, pid: Pid, idx: usize) {
        if let Some(ch) = self
            .targets
            .iter_mut()
            .find(|t| t.pid == pid)
            .and_then(|t| t.channels.get_mut(idx))
        {
            // At end of file the worker is exiting; its end takes care of the rest.
            let _ = ch.read_notices();
        }
    }

    /// Sends what the channels hold; connections that waited for any worker go first, and
    /// what a draining or vanished worker still had queued goes to the others.
    pub fn flush(&mut self, out: &mut Output) {
        let now = Instant::now();
        if !self.backlog.is_empty() {
            let waiting: Vec<Conn> = self.backlog.drain(..).collect();
            for c in waiting {
                self.dispatch(c, out);
            }
        }
        let mut homeless = Vec::new();
        for t in &mut self.targets {
            for ch in &mut t.channels {
                if !ch.has_queue() {
                    continue;
                }
                // A worker asked to stop drains only what it already has: what is still
                // queued here goes to the others.
                if !t.serving || ch.flush(now).is_err() {
                    homeless.extend(ch.take_queue());
                }
            }
        }
        for c in homeless {
            self.dispatch(c, out);
        }
    }

    /// Hands a connection to the worker the policy picks, or to the backlog while no worker
    /// runs at all.
    fn dispatch(&mut self, conn: Conn, out: &mut Output) {
        match self.pick(&conn) {
            Some(i) => {
                let t = &mut self.targets[i];
                t.channels[conn.listener].push(conn);
                t.handed += 1;
                let slot = t.slot as usize;
                if self.handed_by_slot.len() <= slot {
                    self.handed_by_slot.resize(slot + 1, 0);
                }
                self.handed_by_slot[slot] += 1;
                if t.limit == Some(t.handed) {
                    self.reached.push((t.pid, t.handed));
                }
            }
            None => {
                let no_worker = !self.targets.iter().any(|t| t.serving);
                if no_worker && self.backlog.len() < MAX_BACKLOG {
                    self.backlog.push_back(conn);
                } else {
                    drop(conn);
                    self.refused.full += 1;
                    self.warn(
                        Event::warn(
                            "route",
                            "every worker's channel is full; closed a connection",
                        ),
                        out,
                    );
                }
            }
        }
    }

    /// The index (in `targets`) of the worker for `conn`: among serving workers whose channel
    /// has room, the ready ones (a starting one only when none is ready), by policy.
    fn pick(&mut self, conn: &Conn) -> Option<usize> {
        let live = |t: &Target| t.serving && !t.channels.is_empty();
        // Ready workers take connections; a worker still starting only when none is ready.
        let any_ready = self.targets.iter().any(|t| live(t) && t.ready);
        let mut idx: Vec<usize> = (0..self.targets.len())
            .filter(|&i| {
                let t = &self.targets[i];
                live(t)
                    && (t.ready || !any_ready)
                    && t.channels.get(conn.listener).is_some_and(|c| !c.is_full())
            })
            .collect();
        idx.sort_by_key(|&i| self.targets[i].slot);
        let cands: Vec<Candidate> = idx
            .iter()
            .map(|&i| Candidate {
                slot: self.targets[i].slot,
                load: self.targets[i].channels.iter().map(|c| c.outstanding).sum(),
            })
            .collect();
        let client = conn.peer.map(|p| p.ip());
        choose(self.policy, client, &cands, &mut self.turn).map(|k| idx[k])
    }

    /// A connection closed while waiting for its PROXY header; `cause`: `invalid`, `timeout`
    /// or `evicted`. Counts it, and warns (rate-limited).
    fn proxy_warn(&mut self, why: &str, cause: &str, peer: Option<SocketAddr>, out: &mut Output) {
        match cause {
            "timeout" => self.refused.timeout += 1,
            "evicted" => self.refused.evicted += 1,
            _ => self.refused.invalid += 1,
        }
        let from = peer.map_or_else(String::new, |p| format!(" from {p}"));
        let mut ev =
            Event::warn("proxy", format!("closed a connection{from}: {why}")).with("cause", cause);
        if let Some(p) = peer {
            ev = ev.with("peer", p.to_string());
        }
        self.warn(ev, out);
    }

    /// The figures for `/metrics`, now.
    pub fn stats(&self) -> RouteStats {
        let mut slots: Vec<(u32, SlotRoute)> = self
            .handed_by_slot
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(slot, n)| {
                let r = SlotRoute {
                    handed: *n,
                    ..SlotRoute::default()
                };
                (slot as u32, r)
            })
            .collect();
        for t in &self.targets {
            let i = match slots.iter().position(|(s, _)| *s == t.slot) {
                Some(i) => i,
                None => {
                    slots.push((t.slot, SlotRoute::default()));
                    slots.len() - 1
                }
            };
            for c in &t.channels {
                let queued = c.queued() as u64;
                slots[i].1.queued += queued;
                slots[i].1.open += c.outstanding.saturating_sub(queued);
            }
        }
        slots.sort_by_key(|(s, _)| *s);
        RouteStats {
            slots,
            backlog: self.backlog.len(),
            pending: self.pending.len(),
            refused: self.refused,
        }
    }

    /// A rate-limited warning (one line a second at most per kind, counting the rest).
    fn warn(&mut self, ev: Event, out: &mut Output) {
        let kind = ev.kind;
        let i = match self.logs.iter().position(|(k, _)| *k == kind) {
            Some(i) => i,
            None => {
                self.logs.push((kind, RateLimit::new()));
                self.logs.len() - 1
            }
        };
        if let Some(held) = self.logs[i].1.allow(Instant::now()) {
            let more = if held > 0 {
                format!(" ({held} more like it not shown)")
            } else {
                String::new()
            };
            let msg = format!("{}{more}", ev.msg);
            out.event(Event { msg, ..ev }.with("held", held));
        }
    }
}

/// Whether a PROXY header on this connection may be believed: `from` is empty (anyone), or
/// the TCP peer is in one of its networks. A Unix socket's peers are believed: its file's
/// mode decides who may connect.
fn trusted(from: &[Cidr], fd: &OwnedFd, peer: Option<SocketAddr>) -> bool {
    if from.is_empty() {
        return true;
    }
    match peer {
        Some(p) => from.iter().any(|c| c.contains(p.ip())),
        None => socket::getsockname::<SockaddrStorage>(fd.as_raw_fd())
            .is_ok_and(|a| a.family() == Some(AddressFamily::Unix)),
    }
}
