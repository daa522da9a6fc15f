//! What each writer reports per commit: how long it took and how many writes it held, so an
//! operator can see the store's latency and batching (`im_store_commit_seconds`,
//! `im_store_commit_ops`, `im_store_commit_failures_total`).

use std::time::Instant;

/// The writer's metric handles, looked up once.
pub(crate) struct CommitMetrics {
    seconds: metrics::Histogram,
    ops: metrics::Histogram,
    failures: metrics::Counter,
}

impl CommitMetrics {
    /// Handles labelled with the store (`sqlite`, `postgres`).
    pub(crate) fn new(store: &'static str) -> Self {
        Self {
            seconds: metrics::histogram!("im_store_commit_seconds", "store" => store),
            ops: metrics::histogram!("im_store_commit_ops", "store" => store),
            failures: metrics::counter!("im_store_commit_failures_total", "store" => store),
        }
    }

    /// Records one batch begun at `started` with `ops` writes.
    pub(crate) fn record(&self, started: Instant, ops: usize, ok: bool) {
        self.seconds.record(started.elapsed().as_secs_f64());
        self.ops.record(ops as f64);
        if !ok {
            self.failures.increment(1);
        }
    }
}
