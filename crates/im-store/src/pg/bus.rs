//! `PgBus`: the `Bus` on PostgreSQL's `LISTEN/NOTIFY`, for a cluster with no other bus.
//!
//! The writer sends `NOTIFY im_log, '<head>'` inside each commit, so a wake-up is never
//! heard before its entries are visible. Ephemeral events go out as `NOTIFY im_events` from a
//! publisher task. Notifications are at most once (a node that is reconnecting misses them),
//! which is why the follower also polls the head and reads the log itself.

use crate::StoreError;
use futures_util::StreamExt;
use im_cluster::{Bus, Ephemeral, Inbound};
use std::sync::Arc;
use std::time::Duration;
use tokio_postgres::{AsyncMessage, NoTls};

/// The largest `NOTIFY` payload PostgreSQL takes is 8000 bytes; an event over it is dropped
/// (ephemeral events are best effort) with a warning.
const MAX_PAYLOAD: usize = 7900;

/// The bus of a cluster on PostgreSQL alone.
pub struct PgBus {
    url: String,
    node: u64,
    out: flume::Sender<String>,
}

impl std::fmt::Debug for PgBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBus").field("node", &self.node).finish()
    }
}

impl PgBus {
    /// Starts the publisher task on the current runtime. `url` is the cluster's database.
    pub fn new(url: &str) -> Result<Self, StoreError> {
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).map_err(|e| StoreError::Config(format!("randomness: {e}")))?;
        let (out, rx) = flume::bounded::<String>(4096);
        let url = url.to_owned();
        tokio::spawn(publish(url.clone(), rx));
        Ok(Self {
            url,
            node: u64::from_le_bytes(raw),
            out,
        })
    }
}

impl Bus for PgBus {
    fn publish(&self, event: Ephemeral) {
        let text = event.to_text(self.node);
        if text.len() > MAX_PAYLOAD {
            tracing::warn!(
                bytes = text.len(),
                "an ephemeral event is too large for NOTIFY; dropped"
            );
            return;
        }
        // A full queue drops the event rather than slow the request that made it.
        let _ = self.out.try_send(text);
    }

    fn start(&self, inbound: Arc<dyn Inbound>) {
        tokio::spawn(listen(self.url.clone(), self.node, inbound));
    }
}

/// Sends queued events, reconnecting as needed.
async fn publish(url: String, rx: flume::Receiver<String>) {
    let mut client = None;
    while let Ok(text) = rx.recv_async().await {
        if client.is_none() {
            match tokio_postgres::connect(&url, NoTls).await {
                Ok((c, conn)) => {
                    tokio::spawn(async move {
                        let _ = conn.await;
                    });
                    client = Some(c);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the event bus cannot connect; dropping an event");
                    continue;
                }
            }
        }
        if let Some(c) = &client
            && let Err(e) = c
                .execute("SELECT pg_notify('im_events', $1)", &[&text])
                .await
        {
            tracing::warn!(error = %e, "publishing an event failed");
            client = None;
        }
    }
}

/// Listens for wake-ups and events until the runtime ends, reconnecting after failures.
async fn listen(url: String, node: u64, inbound: Arc<dyn Inbound>) {
    loop {
        if let Err(e) = listen_once(&url, node, &inbound).await {
            tracing::warn!(error = %e, "the bus connection was lost; reconnecting");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn listen_once(url: &str, node: u64, inbound: &Arc<dyn Inbound>) -> Result<(), StoreError> {
    let (client, mut conn) = tokio_postgres::connect(url, NoTls).await?;
    let (tx, rx) = flume::unbounded::<AsyncMessage>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| conn.poll_message(cx));
        while let Some(Ok(m)) = messages.next().await {
            if tx.send(m).is_err() {
                break;
            }
        }
    });
    client
        .batch_execute("LISTEN im_log; LISTEN im_events")
        .await?;
    // Anything committed while we were not listening is read now, not at the next poll.
    inbound.reconnected();
    while let Ok(message) = rx.recv_async().await {
        let AsyncMessage::Notification(n) = message else {
            continue;
        };
        match n.channel() {
            "im_log" => {
                if let Ok(head) = n.payload().parse() {
                    inbound.head(head);
                }
            }
            "im_events" => match Ephemeral::from_text(n.payload()) {
                Some((from, _)) if from == node => {}
                Some((_, event)) => inbound.event(event),
                None => tracing::warn!("ignoring an undecodable bus event"),
            },
            _ => {}
        }
    }
    driver.abort();
    Err(StoreError::Closed)
}
