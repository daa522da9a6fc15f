//! `NatsBus`: one NATS connection per node, publishing to and subscribed to the
//! deployment's subject on core NATS (no JetStream: the store is the history).

use crate::{BATCH, BusError, MAX_FRAME, QUEUE, backoff};
use async_nats::{ConnectOptions, Event};
use bytes::Bytes;
use futures_util::StreamExt;
use im_cluster::{Bus, Inbound, NodeId};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The bus on NATS core subjects: every node publishes to and listens on `<prefix>bus`, so
/// deployments with different prefixes share one NATS unaware of each other.
pub struct NatsBus {
    url: String,
    subject: String,
    name: String,
    out: flume::Sender<Bytes>,
    queued: flume::Receiver<Bytes>,
    connected: Arc<AtomicBool>,
}

impl std::fmt::Debug for NatsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsBus")
            .field("subject", &self.subject)
            .finish()
    }
}

impl NatsBus {
    /// The bus of node `node` at `url` (`nats://host:port`), on the subject `<prefix>bus`
    /// (the prefix ends with a dot, as in `im.`). Nothing connects until [`Bus::start`].
    pub fn new(url: &str, prefix: &str, node: NodeId) -> Result<Self, BusError> {
        let subject = format!("{prefix}bus");
        let valid = subject.split('.').all(|token| {
            !token.is_empty()
                && token
                    .bytes()
                    .all(|b| b.is_ascii_graphic() && b != b'*' && b != b'>')
        });
        if !valid {
            return Err(BusError::Config(format!(
                "nats.prefix {prefix:?} does not make a valid subject ({subject:?})"
            )));
        }
        let (out, queued) = flume::bounded(QUEUE);
        Ok(Self {
            url: url.to_owned(),
            subject,
            name: format!("{prefix}node-{node}"),
            out,
            queued,
            connected: Arc::new(AtomicBool::new(false)),
        })
    }
}

impl Bus for NatsBus {
    fn send(&self, frame: Bytes) {
        let _ = self.out.try_send(frame);
    }

    fn start(&self, inbound: Arc<dyn Inbound>) {
        let (url, subject, name) = (self.url.clone(), self.subject.clone(), self.name.clone());
        let (queued, connected) = (self.queued.clone(), self.connected.clone());
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                match run(&url, &subject, &name, &queued, &connected, &inbound).await {
                    Ok(()) => return, // the bus was dropped
                    Err(e) => {
                        tracing::warn!(error = %e, %subject, "the NATS bus failed; reconnecting")
                    }
                }
                connected.store(false, Ordering::Relaxed);
                tokio::time::sleep(backoff(failures)).await;
                failures += 1;
            }
        });
    }

    fn max_frame(&self) -> usize {
        MAX_FRAME
    }

    fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    fn name(&self) -> &'static str {
        "nats"
    }
}

type NatsError = Box<dyn std::error::Error + Send + Sync>;

/// Connects and relays until the connection is closed for good. The client reconnects by
/// itself and resubscribes; each reconnect is reported, since frames sent meanwhile are
/// lost.
async fn run(
    url: &str,
    subject: &str,
    name: &str,
    queued: &flume::Receiver<Bytes>,
    connected: &Arc<AtomicBool>,
    inbound: &Arc<dyn Inbound>,
) -> Result<(), NatsError> {
    let events = {
        let (inbound, connected) = (inbound.clone(), connected.clone());
        move |event: Event| {
            let (inbound, connected) = (inbound.clone(), connected.clone());
            async move {
                match event {
                    Event::Connected => {
                        connected.store(true, Ordering::Relaxed);
                        inbound.reconnected();
                    }
                    Event::Disconnected => connected.store(false, Ordering::Relaxed),
                    _ => {}
                }
            }
        }
    };
    let client = ConnectOptions::new()
        .name(name)
        .event_callback(events)
        .connect(url)
        .await?;
    let mut inbox = client.subscribe(subject.to_owned()).await?;
    client.flush().await?;
    connected.store(true, Ordering::Relaxed);
    inbound.reconnected();
    loop {
        tokio::select! {
            message = inbox.next() => match message {
                Some(m) => inbound.frame(m.payload),
                None => return Err("the subscription ended".into()),
            },
            first = queued.recv_async() => {
                let Ok(first) = first else { return Ok(()) };
                client.publish(subject.to_owned(), first).await?;
                for frame in queued.try_iter().take(BATCH - 1) {
                    client.publish(subject.to_owned(), frame).await?;
                }
            }
        }
    }
}
