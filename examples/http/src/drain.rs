//! The open connections of a worker, for a graceful drain: after a stop, busy connections
//! finish their response (answered with `Connection: close`), and idle ones — kept alive, or
//! accepted and still silent — get a grace from when they went idle to send one more request
//! (their client may have sent it already: closing at once would lose it), then their read
//! side is shut, so a blocked read returns what is queued, then end of file.
//!
//! Generic over the handle used to shut a connection (`H`: a second handle to the socket), so
//! that it works with any connection type; the caller says how to shut one.

use std::collections::HashMap;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

pub struct Tracker<H> {
    open: Mutex<Open<H>>,
    /// Signalled when a connection closes, and (during a drain) when one goes idle.
    changed: Condvar,
    grace: Duration,
}

struct Open<H> {
    next_id: u64,
    conns: HashMap<u64, Tracked<H>>,
}

struct Tracked<H> {
    /// A second handle for the shutdown; `None` if it could not be made (out of fds): then
    /// the connection's read timeout ends it.
    handle: Option<H>,
    /// Waiting for the next request, with no byte of it read.
    idle: bool,
    /// When it last became idle (its accept, or the end of its last response).
    idle_since: Instant,
    /// The drain has shut its read side.
    shut: bool,
}

impl<H> Tracker<H> {
    /// `grace`: how long an idle connection may still send a request after a stop.
    pub fn new(grace: Duration) -> Self {
        Tracker {
            open: Mutex::new(Open {
                next_id: 0,
                conns: HashMap::new(),
            }),
            changed: Condvar::new(),
            grace,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Open<H>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers a new connection, idle (no request read yet); its id.
    pub fn track(&self, handle: Option<H>) -> u64 {
        let mut open = self.lock();
        let id = open.next_id;
        open.next_id += 1;
        open.conns.insert(
            id,
            Tracked {
                handle,
                idle: true,
                idle_since: Instant::now(),
                shut: false,
            },
        );
        id
    }

    /// The connection closed.
    pub fn untrack(&self, id: u64) {
        self.lock().conns.remove(&id);
        self.changed.notify_all();
    }

    /// Marks the connection idle (waiting for a request, none of it read) or busy.
    /// `stopping`: a stop was requested, so a drain may be counting this one's grace.
    pub fn set_idle(&self, id: u64, idle: bool, stopping: bool) {
        let mut open = self.lock();
        if let Some(t) = open.conns.get_mut(&id) {
            if idle && !t.idle {
                t.idle_since = Instant::now();
            }
            t.idle = idle;
        }
        if idle && stopping {
            self.changed.notify_all();
        }
    }

    /// How many connections are open.
    pub fn len(&self) -> usize {
        self.lock().conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether connection `id` is idle; `None` once it closed.
    pub fn is_idle(&self, id: u64) -> Option<bool> {
        self.lock().conns.get(&id).map(|t| t.idle)
    }

    /// After a stop, and after the accept loops have returned (so every accepted connection
    /// is tracked): returns once every connection has closed, shutting (with `shut`) each
    /// idle one whose grace is over.
    pub fn drain(&self, shut: impl Fn(&H)) {
        let mut open = self.lock();
        while !open.conns.is_empty() {
            let now = Instant::now();
            let mut next_deadline: Option<Instant> = None;
            for t in open.conns.values_mut().filter(|t| t.idle && !t.shut) {
                let deadline = t.idle_since + self.grace;
                if deadline > now {
                    next_deadline = Some(next_deadline.map_or(deadline, |d| d.min(deadline)));
                    continue;
                }
                if let Some(h) = &t.handle {
                    shut(h);
                }
                t.shut = true;
            }
            open = match next_deadline {
                Some(d) => {
                    let wait = d.saturating_duration_since(now);
                    self.changed
                        .wait_timeout(open, wait)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.changed.wait(open).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn a_drain_shuts_idle_connections_after_their_grace_and_waits_for_busy_ones() {
        let t = Arc::new(Tracker::new(Duration::from_millis(50)));
        let idle = t.track(Some(1u32));
        let busy = t.track(Some(2u32));
        t.set_idle(busy, false, true);
        let shut = Arc::new(AtomicU32::new(0));
        let drain = {
            let (t, shut) = (Arc::clone(&t), Arc::clone(&shut));
            std::thread::spawn(move || t.drain(|h| _ = shut.fetch_or(1 << h, Ordering::SeqCst)))
        };
        // The idle one is shut once its grace is over (its thread then sees the end of file
        // and closes it); the busy one never is.
        while shut.load(Ordering::SeqCst) == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(shut.load(Ordering::SeqCst), 1 << 1);
        t.untrack(idle);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!drain.is_finished(), "the busy connection is still open");
        t.untrack(busy);
        drain.join().unwrap();
        assert_eq!(shut.load(Ordering::SeqCst), 1 << 1);
    }
}
