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
//!   slots is attached once the new slot's worker is ready (so that the clients it takes over
//!   never wait for a worker that is still starting).
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
use crate::upgrade::restore::Restorer;
use crate::upgrade::state::FdTable;

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
    /// ip-hash: how many slots the program divides by (the live ones whose worker was ready).
    counted: usize,
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
            // Every slot counts from the start: its worker is on its way, and its clients
            // wait in its queue meanwhile, as they do at every restart.
            slots.count(workers as usize, sockets).map_err(|e| {
                Error::socket(format!(
                    "--balance reuseport --route ip-hash: {e}; the socket must be a listening SO_REUSEPORT socket"
                ))
            })?;
        }
        Ok(slots)
    }

    /// The sets as an upgrade hands them over: the live ones, the retired ones, and how many
    /// slots the ip-hash program divides by. The program is not handed over: it stays attached
    /// to the groups, and the groups stay as they are, since every socket stays open across
    /// the exec — so each slot's socket keeps its index.
    pub fn save(&self, t: &mut FdTable) -> (Vec<Vec<i32>>, Vec<Vec<i32>>, u32) {
        let mut sets = |sets: &[Vec<OwnedFd>], first: usize, what: &str| -> Vec<Vec<i32>> {
            sets.iter()
                .enumerate()
                .map(|(i, set)| {
                    set.iter()
                        .enumerate()
                        .map(|(n, fd)| {
                            let slot = first + i;
                            t.add(fd.as_fd(), format!("{what} socket {n} of slot {slot}"))
                        })
                        .collect()
                })
                .collect()
        };
        let live = sets(&self.live, 0, "reuseport");
        let retired = sets(&self.retired, self.live.len(), "retired reuseport");
        (live, retired, self.counted as u32)
    }

    /// The sets an upgrade handed over (see [`Slots::save`]); a state that does not fit the
    /// configuration (a set of another size, retired sets or a program without ip-hash, a
    /// program counting slots that are not there) goes back to the old image.
    pub fn load(
        live: Vec<Vec<i32>>,
        retired: Vec<Vec<i32>>,
        counted: u32,
        sockets: &[Bound],
        ip_hash: bool,
        r: &mut Restorer,
    ) -> Slots {
        let fits = live
            .iter()
            .chain(&retired)
            .all(|s| s.len() == sockets.len());
        if !fits {
            r.fail("the state's reuseport slots do not have a socket per listen address");
        }
        if !ip_hash && (!retired.is_empty() || counted > 0) {
            r.fail(
                "the state has kernel ip-hash slots but the configuration has no --route ip-hash",
            );
        }
        if counted as usize > live.len() {
            r.fail(format!(
                "the state's ip-hash program counts {counted} slot(s) of {}",
                live.len()
            ));
        }
        let mut take = |sets: Vec<Vec<i32>>| -> Vec<Vec<OwnedFd>> {
            sets.into_iter()
                .map(|set| set.into_iter().map(|fd| r.take(fd)).collect())
                .collect()
        };
        Slots {
            live: take(live),
            retired: take(retired),
            ip_hash,
            counted: counted as usize,
            tcp: sockets.iter().map(|b| b.tcp.is_some()).collect(),
        }
    }

    /// The sockets of `slot`, if it is live.
    pub fn get(&self, slot: u32) -> Option<&[OwnedFd]> {
        self.live.get(slot as usize).map(Vec::as_slice)
    }

    /// Every socket held, live or retired (to tell them from a worker's own).
    pub fn fds(&self) -> impl Iterator<Item = BorrowedFd<'_>> {
        self.live
            .iter()
            .chain(&self.retired)
            .flatten()
            .map(|f| f.as_fd())
    }

    /// How many slots the ip-hash program divides by now.
    pub fn counted(&self) -> usize {
        self.counted
    }

    /// Gives `slot` its sockets: a retired set back, or new ones bound beside `sockets`.
    /// Slots above it are removed first (as [`Slots::close`] does), so the live sets are
    /// always 0..=slot. The ip-hash program counts the slot once its worker is ready
    /// ([`Slots::ready`]): until then its clients stay where they are, rather than wait for
    /// a worker that is still starting, or never starts.
    pub fn open(&mut self, slot: u32, sockets: &[Bound]) -> std::result::Result<(), String> {
        let slot = slot as usize;
        self.close(slot as u32, sockets)?;
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
        Ok(())
    }

    /// A worker of `slot` is ready: with ip-hash, the program now counts every slot up to it,
    /// if it did not. `Some` when the program changed (the slots it counts, or why it could
    /// not be changed).
    pub fn ready(
        &mut self,
        slot: u32,
        sockets: &[Bound],
    ) -> Option<std::result::Result<usize, String>> {
        let n = slot as usize + 1;
        if !self.ip_hash || n <= self.counted || n > self.live.len() {
            return None;
        }
        Some(self.count(n, sockets))
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
        let counted = if self.ip_hash && self.counted > slot {
            self.count(slot.max(1), sockets).map(drop)
        } else {
            Ok(())
        };
        let gone = self.live.split_off(slot);
        if self.ip_hash {
            for set in gone.into_iter().rev() {
                self.retired.insert(0, set);
            }
        }
        counted
    }

    /// Attaches the ip-hash program for `n` slots on every TCP group; returns `n`.
    fn count(&mut self, n: usize, sockets: &[Bound]) -> std::result::Result<usize, String> {
        for b in sockets.iter().filter(|b| b.tcp.is_some()) {
            affinity::attach(b.fd.as_fd(), n as u32).map_err(|e| {
                format!(
                    "cannot attach the ip-hash program for {n} slot(s) to {}: {}",
                    b.local,
                    crate::config::io_reason(&e)
                )
            })?;
        }
        self.counted = n;
        Ok(n)
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
