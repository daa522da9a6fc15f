//! Readiness (`GET /readyz`) and the follower's lag in the log: what a load balancer and an
//! operator need to know about one node of a cluster.

use im_cluster::{Link, LogReader, Progress};
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How long a readiness check waits for the store before calling it unreachable.
const STORE_PATIENCE: Duration = Duration::from_secs(2);

/// Whether this node should be sent work.
pub(crate) struct Readiness {
    reader: Arc<dyn LogReader>,
    progress: Arc<dyn Progress>,
    link: Link,
    max_lag: u64,
    stopping: AtomicBool,
}

/// The answer of `GET /readyz`.
#[derive(Debug, Serialize)]
pub(crate) struct Report {
    /// All is well: the store answers, the bus is connected, the follower keeps up.
    pub ready: bool,
    /// This node's id, as in its log.
    pub node: String,
    /// The bus adapter.
    pub bus: &'static str,
    /// Whether the bus is connected.
    pub bus_connected: bool,
    /// The log's head, if the store answered.
    pub head: Option<u64>,
    /// The position this node has applied.
    pub applied: u64,
    /// How far behind the head the follower is, if the store answered.
    pub lag: Option<u64>,
    /// The node is shutting down.
    pub stopping: bool,
}

impl Readiness {
    pub(crate) fn new(
        reader: Arc<dyn LogReader>,
        progress: Arc<dyn Progress>,
        link: Link,
        max_lag: u64,
    ) -> Arc<Self> {
        Arc::new(Self {
            reader,
            progress,
            link,
            max_lag,
            stopping: AtomicBool::new(false),
        })
    }

    /// From now on the node is not ready: a balancer stops sending it work.
    pub(crate) fn stop(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    /// Checks the store, the bus and the follower now.
    pub(crate) async fn check(&self) -> Report {
        let head = match tokio::time::timeout(STORE_PATIENCE, self.reader.head()).await {
            Ok(Ok(head)) => Some(head),
            _ => None,
        };
        let applied = self.progress.applied();
        let lag = head.map(|h| h.saturating_sub(applied));
        let bus = self.link.bus();
        let stopping = self.stopping.load(Ordering::Relaxed);
        Report {
            ready: !stopping && bus.connected() && lag.is_some_and(|l| l <= self.max_lag),
            node: self.link.node().to_string(),
            bus: bus.name(),
            bus_connected: bus.connected(),
            head,
            applied,
            lag,
            stopping,
        }
    }

    /// Logs the follower's lag once a minute, and at once when the node stops or starts
    /// being ready, until the runtime ends.
    pub(crate) fn spawn_lag_log(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let every = Duration::from_secs(5);
            // The first look waits a little: a node that just started is still connecting.
            let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            let mut was_ready = true;
            let mut quiet = 0u32;
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else { return };
                let r = me.check().await;
                if r.ready != was_ready || quiet >= 11 {
                    let (node, bus) = (&r.node, r.bus);
                    if r.ready {
                        tracing::info!(%node, bus, applied = r.applied, head = r.head, lag = r.lag, "follower");
                    } else {
                        tracing::warn!(%node, bus, bus_connected = r.bus_connected, applied = r.applied,
                            head = r.head, lag = r.lag, "not ready");
                    }
                    was_ready = r.ready;
                    quiet = 0;
                } else {
                    quiet += 1;
                }
            }
        });
    }
}
