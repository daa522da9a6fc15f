//! `NatsBus`: one NATS connection per node, publishing to and subscribed to the
//! deployment's subject on core NATS (no JetStream: the store is the history).

use crate::BusError;
use crate::outbox::{MAX_FRAME, Outbox, backoff};
use async_nats::{ConnectOptions, Event};
use bytes::Bytes;
use futures_util::StreamExt;
use im_cluster::{Bus, Inbound, NodeId};
use std::sync::Arc;

/// The bus on NATS core subjects: every node publishes to and listens on `<prefix>bus`, so
/// deployments with different prefixes share one NATS unaware of each other.
pub struct NatsBus {
    url: String,
    subject: String,
    name: String,
    outbox: Outbox,
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
        Ok(Self {
            url: url.to_owned(),
            subject,
            name: format!("{prefix}node-{node}"),
            outbox: Outbox::new(),
        })
    }
}

impl Bus for NatsBus {
    fn send(&self, frame: Bytes) {
        self.outbox.send(frame);
    }

    fn start(&self, inbound: Arc<dyn Inbound>) {
        let (url, subject, name) = (self.url.clone(), self.subject.clone(), self.name.clone());
        let outbox = self.outbox.clone();
        tokio::spawn(async move {
            let mut failures = 0;
            loop {
                match run(&url, &subject, &name, &outbox, &inbound).await {
                    Ok(()) => return, // the bus was dropped
                    Err(e) => {
                        tracing::warn!(error = %e, %subject, "the NATS bus failed; reconnecting")
                    }
                }
                outbox.set_connected(false);
                tokio::time::sleep(backoff(failures)).await;
                failures += 1;
            }
        });
    }

    fn max_frame(&self) -> usize {
        MAX_FRAME
    }

    fn connected(&self) -> bool {
        self.outbox.connected()
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
    outbox: &Outbox,
    inbound: &Arc<dyn Inbound>,
) -> Result<(), NatsError> {
    let events = {
        let (inbound, outbox) = (inbound.clone(), outbox.clone());
        move |event: Event| {
            let (inbound, outbox) = (inbound.clone(), outbox.clone());
            async move {
                match event {
                    Event::Connected => {
                        outbox.set_connected(true);
                        inbound.reconnected();
                    }
                    Event::Disconnected => outbox.set_connected(false),
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
    outbox.set_connected(true);
    inbound.reconnected();
    loop {
        tokio::select! {
            message = inbox.next() => match message {
                Some(m) => inbound.frame(m.payload),
                None => return Err("the subscription ended".into()),
            },
            first = outbox.queued.recv_async() => {
                let Ok(first) = first else { return Ok(()) };
                client.publish(subject.to_owned(), first).await?;
                for frame in outbox.more() {
                    client.publish(subject.to_owned(), frame).await?;
                }
            }
        }
    }
}
