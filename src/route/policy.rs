//! Which worker a connection goes to: rendezvous hashing for `ip-hash`, turns for
//! `round-robin`, the fewest open connections for `least-conn`.

use std::net::IpAddr;

use crate::cli::RoutePolicy;

/// Rendezvous (highest random weight) score of `slot` for a client address: each client ranks
/// all slots, takes the best live one, and changing the set of slots moves only the clients
/// whose best slot came or went.
pub fn score(ip: &IpAddr, slot: u32) -> u64 {
    // FNV-1a over the address and the slot, then a 64-bit finalizer (splitmix64) to spread it.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |b: u8| {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    };
    match ip {
        IpAddr::V4(a) => a.octets().iter().for_each(|b| eat(*b)),
        IpAddr::V6(a) => a.octets().iter().for_each(|b| eat(*b)),
    }
    slot.to_le_bytes().iter().for_each(|b| eat(*b));
    let mut z = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A worker that can take a connection now.
#[derive(Clone, Copy, Debug)]
pub struct Candidate {
    pub slot: u32,
    /// Routed connections it holds open (least-conn).
    pub load: u64,
}

/// The index in `cands` (ordered by slot) of the worker a connection from `client` goes to.
/// `turn` advances with every pick of the turn-taking policies.
pub fn choose(
    policy: RoutePolicy,
    client: Option<IpAddr>,
    cands: &[Candidate],
    turn: &mut usize,
) -> Option<usize> {
    if cands.is_empty() {
        return None;
    }
    match (policy, client) {
        (RoutePolicy::IpHash, Some(ip)) => {
            (0..cands.len()).max_by_key(|&i| score(&ip, cands[i].slot))
        }
        // Without a client address (a Unix socket), ip-hash takes turns.
        (RoutePolicy::IpHash, None) | (RoutePolicy::RoundRobin, _) => {
            *turn = turn.wrapping_add(1);
            Some(*turn % cands.len())
        }
        (RoutePolicy::LeastConn, _) => {
            *turn = turn.wrapping_add(1);
            let n = cands.len();
            (0..n)
                .map(|k| (*turn + k) % n)
                .min_by_key(|&i| cands[i].load)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_few_clients() {
        let ips: Vec<IpAddr> = (0..2000u32)
            .map(|i| IpAddr::from((0x0a00_0000u32 + i).to_be_bytes()))
            .collect();
        let best = |ip: &IpAddr, n: u32| (0..n).max_by_key(|s| score(ip, *s)).unwrap();
        let moved = ips.iter().filter(|ip| best(ip, 5) != best(ip, 6)).count();
        // Adding a sixth slot should move about 1/6 of the clients, never most of them.
        assert!(moved > 200 && moved < 500, "moved {moved} of 2000");
        let mut per = [0usize; 5];
        ips.iter().for_each(|ip| per[best(ip, 5) as usize] += 1);
        assert!(per.iter().all(|&n| n > 300), "uneven: {per:?}");
    }

    fn cands(slots: &[u32]) -> Vec<Candidate> {
        slots
            .iter()
            .map(|&slot| Candidate { slot, load: 0 })
            .collect()
    }

    #[test]
    fn ip_hash_sticks_to_a_slot_and_falls_back_to_the_next_best() {
        let ip: IpAddr = "192.0.2.9".parse().unwrap();
        let all = cands(&[0, 1, 2, 3]);
        let mut turn = 0;
        let first = choose(RoutePolicy::IpHash, Some(ip), &all, &mut turn).unwrap();
        for _ in 0..10 {
            assert_eq!(
                choose(RoutePolicy::IpHash, Some(ip), &all, &mut turn),
                Some(first)
            );
        }
        // Its slot is down: another one, the same every time; back up: the first again.
        let without: Vec<Candidate> = all
            .iter()
            .copied()
            .filter(|c| c.slot != all[first].slot)
            .collect();
        let second = choose(RoutePolicy::IpHash, Some(ip), &without, &mut turn).unwrap();
        assert_eq!(
            choose(RoutePolicy::IpHash, Some(ip), &without, &mut turn),
            Some(second)
        );
        assert_eq!(
            choose(RoutePolicy::IpHash, Some(ip), &all, &mut turn),
            Some(first)
        );
    }

    #[test]
    fn round_robin_takes_turns_and_least_conn_takes_the_idlest() {
        let all = cands(&[0, 1, 2]);
        let mut turn = 0;
        let picks: Vec<usize> = (0..6)
            .map(|_| choose(RoutePolicy::RoundRobin, None, &all, &mut turn).unwrap())
            .collect();
        for i in 0..3 {
            assert_eq!(picks.iter().filter(|&&p| p == i).count(), 2, "{picks:?}");
        }
        let mut loaded = all.clone();
        loaded[0].load = 5;
        loaded[1].load = 1;
        loaded[2].load = 3;
        assert_eq!(
            choose(RoutePolicy::LeastConn, None, &loaded, &mut turn),
            Some(1)
        );
        assert_eq!(choose(RoutePolicy::LeastConn, None, &[], &mut turn), None);
    }
}
