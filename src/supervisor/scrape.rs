//! `--metrics`: the answers to `GET /metrics` and `GET /healthz`, built from what the loop
//! holds at the moment of the request — the core's status and health, what each worker uses
//! (read now), route mode's counters, the output's dropped lines. Nothing is sampled in
//! between: a scrape costs what it reads, and no scrape costs nothing.

use std::time::Instant;

use super::shell::Shell;
use crate::metrics::text::{CONTENT_TYPE, Snapshot, encode};
use crate::metrics::{ClientId, Page, Request, Response};
use crate::route::router::Router;

impl Shell {
    /// Answers a metrics client's request.
    pub(super) fn scrape(&mut self, id: ClientId, req: Request) {
        let now = Instant::now();
        let resp = match req.page {
            Page::Healthz => match self.core.health() {
                Ok(()) => Response::text(200, "ok\n"),
                // One line, whatever the reason holds.
                Err(why) => Response::text(503, format!("{}\n", why.replace(['\r', '\n'], " "))),
            },
            Page::Metrics => {
                let mut status = self.core.status(now);
                self.add_usage(&mut status);
                let route = self.router.as_mut().map(Router::stats);
                let text = encode(&Snapshot {
                    status: &status,
                    route: route.as_ref(),
                    log_dropped: self.p.out.dropped_total(),
                    supervisor: crate::usage::of_process(std::process::id() as i32),
                });
                Response {
                    status: 200,
                    content_type: CONTENT_TYPE,
                    body: text,
                }
            }
        };
        if let Some(m) = &mut self.p.metrics {
            m.respond(id, resp, req.head_only, now);
        }
    }
}
