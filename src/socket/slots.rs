//! The sockets of `--balance reuseport`: one set per worker slot — for each TCP listen address
//! a socket of its own in that port's SO_REUSEPORT group, for a Unix one a duplicate of the
//! shared socket — held by the supervisor for the slot's whole life, so a restart or a reload
//! of the slot's worker never drops its accept queue.
//!
//! # Order in the group, for the kernel's ip-hash
//! With `--route ip-hash` the program of affinity.rs returns an index into each group's array
//! of sockets, so slot k's socket must sit at index k. The kernel keeps the array in the order
//! the sockets called listen(2), and when a socket leaves (its last fd closed) it moves the
//! *last* socket into the hole (`reuseport_detach_sock`). So multinode keeps index == slot by
//! never letting a socket leave a group while it runs:
//! - at start, slot 0 is the socket bound first, then slots 1.. are bound in order;
//! - a restart or a reload hands the slot's same socket to its next worker: nothing leaves;
//! - scaling down *retires* the highest slot's sockets rather than closing them: they stay in
//!   their groups, past the live slots, and the program — attached again for N-1 slots before
//!   the slot's worker is told to stop — never picks them;
//! - scaling up takes the lowest retired set back, or binds a new socket, which joins at the
//!   end, i.e. at index N, since every socket ever bound is still there; the program for N+1
//!   slots is attached after it joined.
//!
//! Closing a removed slot's sockets instead (what plain `reuseport` does) would let the last
//! socket move into the hole; a slot added while a removed one still drained would then sit at
//! another index, and the program would send its clients to the draining socket.
//!
//! A retired socket may still hold connections in its queue: those that were queued, or
//! half-open, when the program changed, and that the stopping worker did not accept. Once no
//! worker of the slot is left, the supervisor polls the socket ([`Slots::idle_retired`]) and
//! closes what it holds ([`Slots::shed`]), as the kernel would have reset them had the socket
//! been closed. Only TCP sockets are shed: a Unix one is shared with the live workers.

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::sys::socket::{SockFlag, accept4};
use nix::unistd::Uid;

use super::{Bound, affinity, bind_sibling};
use crate::error::{Error, Result};

/// The most connections [`Slots::shed`] closes per call, so one wake-up stays short.
const SHED_BATCH: usize = 64;

/// Each slot's sockets, in `--listen` order (see the module's documentation).
#[derive(Debug, Default)]
pub struct Slots {
    /// The sets of slots 0..N-1.
    live: Vec<Vec<OwnedFd>>,
    /// `--route ip-hash`: the sets of removed slots N, N+1, … still in their groups.
    retired: Vec<Vec<OwnedFd>>,
    /// Whether the kernel applies ip-hash (the affinity program is attached).
    ip_hash: bool,
    /// Per listen socket: whether it is TCP (a reuseport group of its own).
    tcp: Vec<bool>,
}

impl Slots {
    /// The sets of slots `0..workers`: slot 0 takes the sockets bound at start (so every
    /// socket of a group has a worker accepting on it), the others are bound now, in slot
    /// order. With `ip_hash`, the affinity program goes onto every TCP group.
    ///
    /// `creator`: the user multinode is about to become, while still root (see
    /// [`bind_sibling`]).
    pub fn bind(
        sockets: &[Bound],
        workers: u32,
        creator: Option<Uid>,
        ip_hash: bool,
    ) -> Result<Slots> {
        let mut slots = Slots {
            ip_hash,
            tcp: sockets.iter().map(|b| b.tcp.is_some()).collect(),
            ..Slots::default()
        };
        for slot in 0..workers {
            let set = sockets
                .iter()
                .map(|b| match slot {
                    0 => {
                        b.fd.try_clone()
                            .map_err(|e| Error::sys("duplicating a socket", e))
                    }
                    _ => bind_sibling(b, &b.local, creator),
                })
                .collect::<Result<Vec<_>>>()?;
            slots.live.push(set);
        }
        if ip_hash {
            for b in sockets.iter().filter(|b| b.tcp.is_some()) {
                affinity::attach(b.fd.as_fd(), workers).map_err(|e| {
                    Error::socket(format!(
                        "--listen {}: cannot attach the ip-hash program to its SO_REUSEPORT group: {}",
                        b.local,
                        crate::config::io_reason(&e)
                    ))
                })?;
            }
        }
        Ok(slots)
    }

    /// The sockets of `slot`, if it is live.
    pub fn get(&self, slot: u32) -> Option<&[OwnedFd]> {
        self.live.get(slot as usize).map(Vec::as_slice)
    }

    /// How many slots are live.
    pub fn live(&self) -> usize {
        self.live.len()
    }

    /// Every socket held, live or retired (to tell them from a worker's own).
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.live
            .iter()
            .chain(&self.retired)
            .flatten()
            .map(|f| f.as_fd())
    }

    /// Gives `slot` its sockets: a retired set back, or new ones bound beside `sockets`; with
    /// ip-hash, the program then counts it. Slots above it are removed first (as
    /// [`Slots::close`] does), so the live sets are always 0..=slot.
    pub fn open(&mut self, slot: u32, sockets: &[Bound]) -> std::result::Result<(), String> {
        let slot = slot as usize;
        self.retire_from(slot);
        while self.live.len() <= slot {
            let set = match self.ip_hash && !self.retired.is_empty() {
                true => {
                    // Still retired until it is ready: a set dropped here would leave its
                    // groups and move another socket into its place.
                    self.blocking(&self.retired[0])
                        .map_err(|e| format!("cannot make its socket blocking again: {e}"))?;
                    self.retired.remove(0)
                }
                false => sockets
                    .iter()
                    .map(|b| bind_sibling(b, &b.local, None))
                    .collect::<Result<Vec<OwnedFd>>>()
                    .map_err(|e| e.to_string())?,
            };
            self.live.push(set);
        }
        if let Err(e) = self.attach(sockets) {
            // Its socket is in the group, but the program does not count it: give it back.
            self.retire_from(slot);
            let _ = self.attach(sockets);
            return Err(e);
        }
        Ok(())
    }

    /// Removes `slot` and every slot above it. With ip-hash, the program stops counting them
    /// first, then their sets are retired (kept in their groups); without, they are closed
    /// (the workers still hold their own copies until they exit). An error says the program
    /// could not be changed: the removed slots' sockets keep getting their clients, whose
    /// connections are closed once the slots' workers are gone.
    pub fn close(&mut self, slot: u32, sockets: &[Bound]) -> std::result::Result<(), String> {
        let slot = slot as usize;
        if slot >= self.live.len() {
            return Ok(());
        }
        let live = std::mem::take(&mut self.live);
        let (keep, gone) = split_at(live, slot);
        self.live = keep;
        let attached = self.attach(sockets);
        if self.ip_hash {
            for set in gone.into_iter().rev() {
                self.retired.insert(0, set);
            }
        }
        attached
    }

    /// Retires every live set from `slot` up, without changing the program.
    fn retire_from(&mut self, slot: usize) {
        while self.live.len() > slot {
            let Some(set) = self.live.pop() else { break };
            if self.ip_hash {
                self.retired.insert(0, set);
            }
        }
    }

    /// With ip-hash: the program for the live slots, on every TCP group.
    fn attach(&self, sockets: &[Bound]) -> std::result::Result<(), String> {
        if !self.ip_hash {
            return Ok(());
        }
        let n = self.live.len().max(1) as u32;
        for b in sockets.iter().filter(|b| b.tcp.is_some()) {
            affinity::attach(b.fd.as_fd(), n).map_err(|e| {
                format!(
                    "cannot attach the ip-hash program for {n} slot(s) to {}: {}",
                    b.local,
                    crate::config::io_reason(&e)
                )
            })?;
        }
        Ok(())
    }

    /// A retired set going back into service: blocking again, as a worker expects (it was
    /// made non-blocking if it was shed).
    fn blocking(&self, set: &[OwnedFd]) -> nix::Result<()> {
        for (fd, _) in set.iter().zip(&self.tcp).filter(|(_, tcp)| **tcp) {
            let flags = OFlag::from_bits_truncate(fcntl(fd, FcntlArg::F_GETFL)?);
            fcntl(fd, FcntlArg::F_SETFL(flags - OFlag::O_NONBLOCK))?;
        }
        Ok(())
    }

    /// The TCP sockets of retired slots for which `busy` says no worker is left: what the
    /// supervisor polls, to [`Slots::shed`] what arrives there.
    pub fn idle_retired(&self, busy: impl Fn(u32) -> bool) -> Vec<(u32, BorrowedFd<'_>)> {
        let first = self.live.len();
        self.retired
            .iter()
            .enumerate()
            .map(|(i, set)| ((first + i) as u32, set))
            .filter(|(slot, _)| !busy(*slot))
            .flat_map(|(slot, set)| {
                set.iter()
                    .zip(&self.tcp)
                    .filter(|(_, tcp)| **tcp)
                    .map(move |(fd, _)| (slot, fd.as_fd()))
            })
            .collect()
    }

    /// Closes the connections waiting on the retired TCP sockets of `slot`, which no worker
    /// serves (at most [`SHED_BATCH`] a call); returns how many. Only call it once no worker
    /// of the slot is left: the sockets are made non-blocking, which their holders share.
    pub fn shed(&mut self, slot: u32) -> usize {
        let Some(set) = (slot as usize)
            .checked_sub(self.live.len())
            .and_then(|i| self.retired.get(i))
        else {
            return 0;
        };
        let mut closed = 0;
        for (fd, _) in set.iter().zip(&self.tcp).filter(|(_, tcp)| **tcp) {
            let nonblocking = fcntl(fd, FcntlArg::F_GETFL).and_then(|f| {
                let flags = OFlag::from_bits_truncate(f) | OFlag::O_NONBLOCK;
                fcntl(fd, FcntlArg::F_SETFL(flags))
            });
            if nonblocking.is_err() {
                continue;
            }
            while closed < SHED_BATCH {
                match accept4(fd.as_raw_fd(), SockFlag::SOCK_CLOEXEC) {
                    Ok(conn) => {
                        let _ = nix::unistd::close(conn);
                        closed += 1;
                    }
                    Err(Errno::EINTR | Errno::ECONNABORTED) => continue,
                    Err(_) => break,
                }
            }
        }
        closed
    }
}

fn split_at<T>(mut v: Vec<T>, at: usize) -> (Vec<T>, Vec<T>) {
    let tail = v.split_off(at.min(v.len()));
    (v, tail)
}
