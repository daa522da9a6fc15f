//! `RedisBus`: one RESP3 connection per node that publishes and is subscribed to the
//! deployment's channel, named so an operator (or a test) can tell the nodes apart in
//! `CLIENT LIST`.

use crate::BusError;
use crate::outbox::{MAX_FRAME, Outbox, backoff};
use bytes::Bytes;
use im_cluster::{Bus, Inbound, NodeId};
use redis::aio::MultiplexedConnection;
use redis::{
    AsyncConnectionConfig, Client, IntoConnectionInfo, ProtocolVersion, PushInfo, PushKind, Value,
};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Notify;

/// The bus on Redis (6 or later, or Valkey) pub/sub: every node publishes to and listens on
/// `<prefix>bus`, so deployments with different prefixes share one Redis unaware of each
/// other.
pub struct RedisBus {
    client: Client,
    channel: String,
    name: String,
    outbox: Outbox,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("channel", &self.channel)
            .field("name", &self.name)
            .finish()
    }
}

impl RedisBus {
    /// The bus of node `node` at `url` (`redis://host:port/`), on the channel
    /// `<prefix>bus`. Nothing connects until [`Bus::start`].
    pub fn new(url: &str, prefix: &str, node: NodeId) -> Result<Self, BusError> {
        if prefix
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(BusError::Config(format!(
                "redis.prefix {prefix:?} must not contain spaces or control characters"
            )));
        }
        let info = url
            .into_connection_info()
            .map_err(|e| BusError::Config(format!("redis.url: {e}")))?;
        // RESP3 lets one connection both publish and receive, so each node has one
        // connection to Redis, and cutting it cuts that node only.
        let redis = info
            .redis_settings()
            .clone()
            .set_protocol(ProtocolVersion::RESP3);
        let client = Client::open(info.set_redis_settings(redis))
            .map_err(|e| BusError::Config(format!("redis.url: {e}")))?;
        Ok(Self {
            client,
            channel: format!("{prefix}bus"),
            name: format!("{prefix}node-{node}"),
            outbox: Outbox::new(),
        })
    }

    /// The connection's name in `CLIENT LIST`.
    pub fn client_name(&self) -> &str {
        &self.name
    }
}

impl Bus for RedisBus {
    fn send(&self, frame: Bytes) {
        self.outbox.send(frame);
    }

    fn start(&self, inbound: Arc<dyn Inbound>) {
        let link = Connection {
            client: self.client.clone(),
            channel: self.channel.clone(),
            name: self.name.clone(),
            outbox: self.outbox.clone(),
        };
        tokio::spawn(link.run(inbound));
    }

    fn max_frame(&self) -> usize {
        MAX_FRAME
    }

    fn connected(&self) -> bool {
        self.outbox.connected()
    }

    fn name(&self) -> &'static str {
        "redis"
    }
}

struct Connection {
    client: Client,
    channel: String,
    name: String,
    outbox: Outbox,
}

impl Connection {
    async fn run(self, inbound: Arc<dyn Inbound>) {
        let mut failures = 0;
        loop {
            match self.session(&inbound).await {
                Ok(()) => return, // the bus was dropped
                Err(e) => {
                    tracing::warn!(error = %e, channel = %self.channel, "the Redis bus connection was lost; reconnecting")
                }
            }
            self.outbox.set_connected(false);
            tokio::time::sleep(backoff(failures)).await;
            failures += 1;
        }
    }

    /// One connection's life: subscribe, then publish what is queued until it breaks.
    async fn session(&self, inbound: &Arc<dyn Inbound>) -> redis::RedisResult<()> {
        let lost = Arc::new(Notify::new());
        let push = {
            let (inbound, lost) = (inbound.clone(), lost.clone());
            move |info: PushInfo| -> Result<(), std::convert::Infallible> {
                match info.kind {
                    PushKind::Message => {
                        if let Some(Value::BulkString(payload)) = info.data.into_iter().nth(1) {
                            inbound.frame(Bytes::from(payload));
                        }
                    }
                    PushKind::Disconnection => lost.notify_one(),
                    _ => {}
                }
                Ok(())
            }
        };
        let config = AsyncConnectionConfig::new()
            .set_push_sender(push)
            .set_connection_timeout(Some(Duration::from_secs(5)))
            .set_response_timeout(Some(Duration::from_secs(5)));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(&self.name)
            .exec_async(&mut conn)
            .await?;
        conn.subscribe(&self.channel).await?;
        self.outbox.set_connected(true);
        inbound.reconnected();
        loop {
            tokio::select! {
                _ = lost.notified() => {
                    return Err(redis::RedisError::from(std::io::Error::from(
                        std::io::ErrorKind::ConnectionReset,
                    )));
                }
                first = self.outbox.queued.recv_async() => match first {
                    Ok(first) => self.publish(&mut conn, first).await?,
                    Err(_) => return Ok(()),
                },
            }
        }
    }

    /// Publishes `first` and whatever else is queued, in one round trip.
    async fn publish(
        &self,
        conn: &mut MultiplexedConnection,
        first: Bytes,
    ) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        pipe.cmd("PUBLISH")
            .arg(&self.channel)
            .arg(first.as_ref())
            .ignore();
        for frame in self.outbox.more() {
            pipe.cmd("PUBLISH")
                .arg(&self.channel)
                .arg(frame.as_ref())
                .ignore();
        }
        pipe.exec_async(conn).await
    }
}
