//! Restart pacing: per-slot exponential backoff with jitter, and the service-wide restart
//! budget of `--max-restarts` within `--restart-window`.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// The wait after a slot's second crash in a row; doubles per further quick crash up to
/// `--backoff-max`. The first crash restarts at once: one sporadic crash should not leave
/// its slot empty, and a crash loop is still slowed from its second round on.
pub const BACKOFF_BASE: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub struct Backoff {
    /// Consecutive crashes of workers that did not reach `--min-uptime` (the first of them
    /// may have been up for any time).
    failures: u32,
}

impl Backoff {
    /// A worker stayed up long enough: its crash counts as a first one.
    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// Consecutive quick crashes so far (the state an upgrade hands over).
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn with_failures(failures: u32) -> Backoff {
        Backoff { failures }
    }

    /// The wait before the next start: none after a first crash, then base × 2^(failures-1),
    /// capped, times a jitter factor in [0.75, 1.25) so that slots crashing together do not
    /// restart in lockstep.
    pub fn next(&mut self, max: Duration, jitter: f64) -> Duration {
        let failures = self.failures;
        self.failures = self.failures.saturating_add(1);
        if failures == 0 {
            return Duration::ZERO;
        }
        let exp = BACKOFF_BASE.saturating_mul(1u32 << (failures - 1).min(20));
        let capped = exp.min(max);
        capped.mul_f64(0.75 + 0.5 * jitter.clamp(0.0, 1.0)).min(max)
    }
}

/// Counts restarts in a sliding window; `None` limit means unlimited.
#[derive(Debug)]
pub struct Budget {
    limit: Option<(u32, Duration)>,
    times: VecDeque<Instant>,
}

impl Budget {
    pub fn new(limit: Option<(u32, Duration)>) -> Self {
        Budget {
            limit,
            times: VecDeque::new(),
        }
    }

    /// The restarts counted, when each was (the state an upgrade hands over).
    pub fn times(&self) -> impl Iterator<Item = Instant> + '_ {
        self.times.iter().copied()
    }

    /// A budget that counted restarts at `times` already.
    pub fn with_times(
        limit: Option<(u32, Duration)>,
        times: impl Iterator<Item = Instant>,
    ) -> Self {
        Budget {
            limit,
            times: times.collect(),
        }
    }

    /// Records a restart at `now`; false when it exceeds the budget.
    pub fn record(&mut self, now: Instant) -> bool {
        let Some((max, window)) = self.limit else {
            return true;
        };
        while self
            .times
            .front()
            .is_some_and(|t| now.duration_since(*t) > window)
        {
            self.times.pop_front();
        }
        self.times.push_back(now);
        self.times.len() <= max as usize
    }
}

/// A small xorshift generator for jitter; no need for a cryptographic source here.
pub struct Jitter(u64);

impl Jitter {
    pub fn new() -> Self {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        Jitter(t ^ (u64::from(std::process::id()) << 32) | 1)
    }

    /// Its state, to carry the sequence over an upgrade.
    pub fn state(&self) -> u64 {
        self.0
    }

    /// A generator that goes on from `state` (never 0: xorshift would stay there).
    pub fn from_state(state: u64) -> Self {
        Jitter(state | 1)
    }

    /// A generator with a fixed seed, so a test sees the same jitter every run.
    #[cfg(test)]
    pub fn seeded(seed: u64) -> Self {
        Jitter(seed | 1)
    }

    /// A value in [0, 1).
    pub fn next(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut b = Backoff::default();
        let max = Duration::from_secs(1);
        let waits: Vec<_> = (0..7).map(|_| b.next(max, 0.5)).collect();
        assert_eq!(waits[0], Duration::ZERO, "a first crash restarts at once");
        assert_eq!(waits[1], Duration::from_millis(100));
        assert_eq!(waits[2], Duration::from_millis(200));
        assert_eq!(waits[3], Duration::from_millis(400));
        assert_eq!(waits[4], Duration::from_millis(800));
        assert_eq!(waits[5], max);
        assert_eq!(waits[6], max);
        b.reset();
        assert_eq!(b.next(max, 0.5), Duration::ZERO);
        assert_eq!(b.next(max, 0.5), Duration::from_millis(100));
        assert!(b.next(max, 0.0) >= Duration::from_millis(150));
    }

    #[test]
    fn budget_counts_within_the_window() {
        let mut budget = Budget::new(Some((2, Duration::from_secs(10))));
        let t = Instant::now();
        assert!(budget.record(t));
        assert!(budget.record(t + Duration::from_secs(1)));
        assert!(!budget.record(t + Duration::from_secs(2)));
        let mut budget = Budget::new(Some((2, Duration::from_secs(10))));
        assert!(budget.record(t));
        assert!(budget.record(t + Duration::from_secs(1)));
        assert!(budget.record(t + Duration::from_secs(12)));
        assert!(Budget::new(None).record(t));
    }

    #[test]
    fn jitter_in_range() {
        let mut j = Jitter::new();
        for _ in 0..1000 {
            let v = j.next();
            assert!((0.0..1.0).contains(&v));
        }
    }
}
