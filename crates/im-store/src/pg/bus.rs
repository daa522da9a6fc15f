//! `PgBus`: the `Bus` on PostgreSQL's `LISTEN/NOTIFY`, for a cluster with no other bus.
//!
//! The writer sends `NOTIFY im_log, '<head>'` inside each commit, so a wake-up is never
//! heard before its entries are visible, and a node needs to send no wake-up of its own.
//! Other frames go out base64-encoded as `NOTIFY im_events` from a publisher task.
//! Notifications are at most once (a node that is reconnecting misses them), which is why
//! the follower also polls the head and reads the log itself.

use crate::StoreError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use futures_util::StreamExt;
use im_cluster::{Bus, Inbound};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;
use tokio_postgres::{AsyncMessage, NoTls};

/// The largest `NOTIFY` payload PostgreSQL takes is 8000 bytes of text; base64 makes four
/// characters of every three bytes.
const MAX_FRAME: usize = 7900 / 4 * 3;

/// The bus of a cluster on PostgreSQL alone.
pub struct PgBus {
    url: String,
    out: flume::Sender<String>,
    connected: Arc<AtomicBool>,
}

impl std::fmt::Debug for PgBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgBus")
            .field("connected", &self.connected())
            .finish()
    }
}

impl PgBus {
    /// Starts the publisher task on the current runtime. `url` is the cluster's database.
    pub fn new(url: &str) -> Self {
        let (out, rx) = flume::bounded::<String>(4096);
        let url = url.to_owned();
        tokio::spawn(publish(url.clone(), rx));
        Self {
            url,
            out,
            connected: Arc::new(AtomicBool::new(false)),
        }
    }
}

impl Bus for PgBus {
    fn send(&self, frame: Bytes) {
        // A full queue drops the frame rather than slow the request that made it.
        let _ = self.out.try_send(BASE64.encode(&frame));
    }

    fn start(&self, inbound: Arc<dyn Inbound>) {
        tokio::spawn(listen(self.url.clone(), inbound, self.connected.clone()));
    }

    fn wakes_with_commits(&self) -> bool {
        true
    }

    fn max_frame(&self) -> usize {
        MAX_FRAME
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "postgres"
    }
}

/// Sends queued frames, reconnecting as needed.
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
                    tracing::warn!(error = %e, "the event bus cannot connect; dropping a frame");
                    continue;
                }
            }
        }
        let Some(c) = &client else { continue };
        if let Err(e) = c
            .execute("SELECT pg_notify('im_events', $1)", &[&text])
            .await
        {
            tracing::warn!(error = %e, "publishing a frame failed");
            client = None;
        }
    }
}

/// Listens for wake-ups and frames until the runtime ends, reconnecting after failures.
async fn listen(url: String, inbound: Arc<dyn Inbound>, connected: Arc<AtomicBool>) {
    loop {
        if let Err(e) = listen_once(&url, &inbound, &connected).await {
            tracing::warn!(error = %e, "the bus connection was lost; reconnecting");
        }
        connected.store(false, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn listen_once(
    url: &str,
    inbound: &Arc<dyn Inbound>,
    connected: &AtomicBool,
) -> Result<(), StoreError> {
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
    connected.store(true, Ordering::Relaxed);
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
            "im_events" => match BASE64.decode(n.payload()) {
                Ok(frame) => inbound.frame(Bytes::from(frame)),
                Err(_) => tracing::warn!("ignoring an undecodable bus frame"),
            },
            _ => {}
        }
    }
    driver.abort();
    Err(StoreError::Closed)
}
