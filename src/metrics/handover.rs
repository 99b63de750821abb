//! `--metrics` across an in-place upgrade: the listening socket and the scrapes in progress.

use std::os::fd::AsFd;

use super::{Client, MetricsServer, Phase};
use crate::socket::Bound;
use crate::upgrade::format::{Bytes, ClientPhase, MetricsClientState, MetricsState};
use crate::upgrade::restore::Restorer;
use crate::upgrade::state::{FdTable, rel};

impl MetricsServer {
    pub fn save(&self, t: &mut FdTable, now: std::time::Instant) -> MetricsState {
        MetricsState {
            listener: self.bound.save(t, "the metrics socket"),
            next_id: self.next_id,
            paused_until: self.paused_until.map(|p| rel(p, now)),
            clients: self
                .clients
                .iter()
                .map(|c| MetricsClientState {
                    id: c.id,
                    fd: t.add(c.fd.as_fd(), format!("metrics client {}", c.id)),
                    buf: Bytes(c.buf.clone()),
                    sent: c.sent,
                    phase: match c.phase {
                        Phase::Reading(until) => ClientPhase::Reading {
                            until: rel(until, now),
                        },
                        Phase::Writing(until) => ClientPhase::Writing {
                            until: rel(until, now),
                        },
                    },
                })
                .collect(),
        }
    }

    pub fn load(s: MetricsState, r: &mut Restorer) -> MetricsServer {
        let bound = Bound::load(s.listener, r);
        let clients = s
            .clients
            .into_iter()
            .map(|c| Client {
                id: c.id,
                fd: r.take(c.fd),
                buf: c.buf.0,
                sent: c.sent,
                phase: match c.phase {
                    ClientPhase::Reading { until } => Phase::Reading(r.at(until)),
                    ClientPhase::Writing { until } => Phase::Writing(r.at(until)),
                    other => r.fail(format!("a metrics client cannot be {other:?}")),
                },
            })
            .collect();
        MetricsServer {
            bound,
            clients,
            next_id: s.next_id,
            paused_until: s.paused_until.map(|p| r.at(p)),
            warnings: crate::route::RateLimit::new(),
        }
    }
}
