#![doc = include_str!("../README.md")]
//!
//! This crate composes the others and holds no domain logic: configuration, routing,
//! authentication plumbing, the static web client and graceful shutdown.

mod assets;
pub mod config;
mod conn;
mod events_h1;
mod http;
mod keys;
mod metrics;
mod ready;
mod routes;
mod tls;

pub use config::{BusKind, Command, Config, ConfigError, FilesBackend, StoreKind};
pub use http::ClientAddr;
use http::{BodyLimits, ConnBody};
pub use im_channel::{Channel, Handler, Pending};
pub use im_classifier::KindSpec;
pub use im_protocol::{ApiError, ErrorCode};
pub use im_users::{Authenticator, Credentials, Principal};
pub use tls::{TlsError, self_signed};

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use im_channel::{ChannelGroup, ChannelGroupConfig, MessageHistory, MessageLog, RecentClientIds};
use im_classifier::{DEFAULT_GROUP, MessageClassifier};
use im_cluster::{
    Appliers, Bus, Entry, Follower, FollowerConfig, Inbound, Link, LocalBus, LogReader, NodeId,
    Progress, Signal, Topic,
};
use im_files::{AttachFiles, FileIndex, FileProxy, FileStore, FilesConfig};
use im_pool::{ConsumerPool, PoolConfig};
use im_sse::{BrokerConfig, ReplaySource, SessionInfo, SseBroker};
use im_store::{CommitListener, SqliteStore, StoreConfig, StoreError};
use im_users::{
    Authorize, HashParams, SessionPolicy, UserError, UserManager, UserStore, UsersConfig,
};
use routes::App;
use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Bad configuration.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The store could not be opened.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The file proxy could not start.
    #[error(transparent)]
    Files(#[from] im_files::FileError),
    /// The user manager could not start.
    #[error(transparent)]
    Users(#[from] UserError),
    /// An application kind collides with another.
    #[error(transparent)]
    Kind(#[from] im_classifier::ClassifyError),
    /// The ordered log could not be read at start-up.
    #[error("reading the log: {0}")]
    Log(#[source] im_protocol::Cause),
    /// The TLS certificate could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The configuration names something this build leaves out.
    #[error("{0}")]
    Unsupported(String),
    /// Binding or a thread failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The failure.
        source: std::io::Error,
    },
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> ServerError {
    let context = context.into();
    move |source| ServerError::Io { context, source }
}

/// Builds an [`ImServer`]: the original Go Web-IM's `IM` wrapper, where applications plug in their kinds,
/// handlers and authenticator.
#[derive(Default)]
pub struct ImServerBuilder {
    config: Config,
    kinds: Vec<KindSpec>,
    handlers: Vec<(String, Arc<dyn Handler>)>,
    authenticator: Option<Arc<dyn Authenticator>>,
}

impl ImServerBuilder {
    /// Uses `config` instead of the defaults.
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Registers an application message kind.
    pub fn kind(mut self, kind: KindSpec) -> Self {
        self.kinds.push(kind);
        self
    }

    /// Appends a handler to the default (`chat`) channel, after the built-in authorization.
    pub fn handler(self, handler: impl Handler) -> Self {
        self.handler_in(DEFAULT_GROUP, handler)
    }

    /// Appends a handler to the named channel group, creating the group if needed; kinds
    /// route to it with [`KindSpec::group`].
    pub fn handler_in(mut self, group: &str, handler: impl Handler) -> Self {
        self.handlers.push((group.to_owned(), Arc::new(handler)));
        self
    }

    /// Replaces session-token authentication (used by every API call and event stream).
    pub fn authenticator(mut self, auth: impl Authenticator) -> Self {
        self.authenticator = Some(Arc::new(auth));
        self
    }

    /// Opens the store, starts the workers and the log follower, and binds the listener.
    pub async fn bind(self) -> Result<ImServer, ServerError> {
        let cfg = &self.config;
        // First: the handles the components take below must find the recorder installed.
        let mut metrics = metrics::Metrics::start(&cfg.metrics);
        let node = NodeId::random();
        tracing::info!(%node, store = ?cfg.store, bus = cfg.bus_kind().name(), "this node starts");
        let store = Stores::open(cfg).await?;
        let link = Link::new(open_bus(cfg, node)?, node);
        // Read before any cache loads its snapshot: the follower starts here, so nothing
        // committed meanwhile (by another node) is missed; re-applying is harmless.
        let start = store
            .reader
            .head()
            .await
            .map_err(|e| ServerError::Log(im_protocol::Cause::new(e)))?;
        let users_cfg = UsersConfig {
            hash: HashParams {
                memory_kib: cfg.argon2.memory_kib,
                iterations: cfg.argon2.iterations,
                concurrency: cfg.argon2.concurrency,
                queue: cfg.argon2.queue,
            },
            direct_messages: cfg.direct_messages,
            presence_grace: Duration::from_millis(cfg.presence_grace_ms),
            presence_ttl: Duration::from_secs(cfg.cluster.presence_ttl_secs.max(1)),
            sessions: SessionPolicy {
                idle: Duration::from_secs(cfg.sessions.idle_secs),
                lifetime: Duration::from_secs(cfg.sessions.lifetime_secs),
                sweep_every: Duration::from_secs(cfg.sessions.sweep_secs.max(1)),
            },
        };
        let users = UserManager::new(store.users.clone(), users_cfg).await?;
        let broker = SseBroker::new(
            BrokerConfig {
                mailbox_bytes: cfg.sse.mailbox_bytes,
                mailbox_frames: cfg.sse.mailbox,
                buffer_bytes: cfg.sse.buffer_bytes,
                replay_page: im_sse::PageLimit {
                    messages: cfg.sse.replay_page.max(1),
                    bytes: cfg.sse.replay_page_bytes,
                },
                keepalive: Duration::from_secs(cfg.sse.keepalive_secs.clamp(1, 20)),
                retry_ms: cfg.sse.retry_ms,
                resume_limit: cfg.sse.resume_limit,
                max_streams_per_user: cfg.sse.max_streams_per_user,
                ..BrokerConfig::default()
            },
            store.replay.clone(),
        );
        let mut pool_cfg = PoolConfig {
            queue: cfg.workers.pool_queue,
            inline: cfg.workers.pool_inline,
            ..PoolConfig::default()
        };
        if cfg.workers.pool_workers > 0 {
            pool_cfg.workers = cfg.workers.pool_workers;
        }
        broker.set_listener(users.clone());
        users.attach_mailboxes(Arc::new(broker.clone()));
        let closer = broker.clone();
        users.on_revoke(Arc::new(move |user, session| match session {
            Some(session) => closer.close_session(SessionInfo { user, session }),
            None => closer.close_user(user),
        }));
        users.attach_link(link.clone());
        let pool = ConsumerPool::start(pool_cfg, Arc::new(broker.clone()), users.clone())
            .map_err(io_err("starting the consumer pool"))?;
        let pool = Arc::new(pool);
        let pools = pool.clone();

        let files = FileProxy::new(
            store.file_bytes(cfg).await?,
            store.files.clone(),
            FilesConfig {
                max_bytes: cfg.files.max_bytes,
                ttl: Duration::from_secs(cfg.files.ttl_secs.max(1)),
                sweep_every: Duration::from_secs(cfg.files.sweep_secs.max(1)),
                quota: (cfg.files.quota_bytes > 0).then_some(cfg.files.quota_bytes),
                orphan_grace: store.orphan_grace,
            },
        )
        .await?;
        files.spawn_sweeper();

        // The one path from committed state to memory: messages to local delivery, changes to
        // the caches, in position order, on this node whoever wrote them.
        let recent = Arc::new(RecentClientIds::new(RECENT_CLIENT_IDS));
        let noted = recent.clone();
        let appliers = Appliers::new()
            .messages(move |_, e: &Entry| {
                if let Entry::Message(m) = e {
                    if let Some(cid) = &m.client_id {
                        noted.record(m.from, cid);
                    }
                    pool.dispatch(m);
                }
            })
            .topic(Topic::Users, users.clone())
            .topic(Topic::Files, files.clone());
        let follower = Follower::start(
            store.reader.clone(),
            appliers,
            start,
            FollowerConfig::default(),
        )
        .map_err(io_err("starting the log follower"))?;
        let (offer, wake) = (follower.clone(), link.clone());
        (store.listen)(Arc::new(move |entries: Vec<_>| {
            wake.committed(&entries);
            offer.offer(entries);
        }));
        // A stream opened with nothing to replay then reads no store: every message after
        // the position the follower has started is dispatched after the stream registered.
        let head = follower.clone();
        broker.set_live_head(move || im_protocol::MessageId(head.started()));
        users.attach_log(follower.clone());
        users.spawn_session_sweeper();
        files.attach_log(follower.clone());
        link.bus().start(Arc::new(NodeInbound {
            link: link.clone(),
            follower: follower.clone(),
            users: users.clone(),
        }));
        follower
            .catch_up()
            .await
            .map_err(|e| ServerError::Log(im_protocol::Cause::new(e)))?;

        let mut classifier = MessageClassifier::with_builtins();
        classifier.register(im_files::image_kind())?;
        classifier.register(im_files::file_kind())?;
        for kind in self.kinds {
            classifier.register(kind)?;
        }
        let mut names: Vec<String> = classifier.groups().map(str::to_owned).collect();
        names.extend(self.handlers.iter().map(|(g, _)| g.clone()));
        names.push(DEFAULT_GROUP.to_owned());
        names.sort();
        names.dedup();
        let mut group_cfg = ChannelGroupConfig {
            queue: cfg.workers.channel_queue,
            ..Default::default()
        };
        if cfg.workers.channel_shards > 0 {
            group_cfg.shards = cfg.workers.channel_shards;
        }
        let mut groups = HashMap::new();
        for name in names {
            let mut channel = Channel::new()
                .with(Authorize::new(users.clone()))
                .with(AttachFiles(files.clone()));
            for (_, h) in self.handlers.iter().filter(|(g, _)| *g == name) {
                channel = channel.with_arc(h.clone());
            }
            let group = ChannelGroup::start(name.clone(), channel, group_cfg, store.log.clone())
                .map_err(io_err(format!("starting channel group {name}")))?;
            groups.insert(name, group);
        }

        let tls = match (&cfg.tls.cert, &cfg.tls.key) {
            (Some(cert), Some(key)) => Some(tls::Tls::new(cert, key)?),
            _ if cfg.tls.self_signed => {
                let (cert, key) = tls::self_signed(&cfg.data_dir.join("tls"))?;
                tracing::info!(cert = %cert.display(), "serving a self-signed certificate");
                Some(tls::Tls::new(&cert, &key)?)
            }
            _ => None,
        };
        let listener = listen(cfg.listen).map_err(io_err(format!("binding {}", cfg.listen)))?;
        let metrics_listener = match cfg.metrics.listen {
            Some(addr) if metrics.is_some() => {
                Some(listen(addr).map_err(io_err(format!("binding metrics.listen {addr}")))?)
            }
            _ => None,
        };
        if let Some(m) = metrics.as_mut() {
            let (b1, b2, depths) = (broker.clone(), broker.clone(), pools.clone());
            m.probe([
                metrics::Probe::new("im_streams_open", vec![], move || b1.streams() as f64),
                metrics::Probe::new("im_stream_buffered_bytes", vec![], move || {
                    b2.buffered_bytes() as f64
                }),
                metrics::Probe::new("im_queue_depth", vec![("queue", "store_writer".into())], {
                    let depth = store.writer_queue.clone();
                    move || depth() as f64
                }),
            ]);
            m.probe((0..pools.queue_depths().len()).map(|i| {
                let depths = depths.clone();
                metrics::Probe::new(
                    "im_queue_depth",
                    vec![("queue", "pool".into()), ("worker", i.to_string())],
                    move || depths.queue_depths().get(i).copied().unwrap_or(0) as f64,
                )
            }));
        }
        let auth = self.authenticator.unwrap_or_else(|| users.clone());
        let readiness = ready::Readiness::new(
            store.reader.clone(),
            follower.clone(),
            link,
            cfg.cluster.ready_max_lag,
        );
        readiness.spawn_lag_log();
        let limiter = Arc::new(cfg.rate_limits.memory_limiter());
        limiter.spawn_purger(RATE_LIMIT_PURGE);
        let server_keys = keys::Keys::new(self.config.server_api.keys.iter().map(String::as_str));
        let app = App {
            config: self.config,
            classifier,
            groups,
            users,
            auth,
            broker,
            history: store.history,
            log: store.log.clone(),
            files,
            progress: follower,
            readiness,
            limiter,
            recent,
            metrics: metrics.map(Arc::new),
            server_keys,
        };
        Ok(ImServer {
            app: Arc::new(app),
            listener,
            tls,
            metrics_listener,
        })
    }
}

/// How often rate-limit keys whose budget is full again are forgotten, so that a flood of
/// distinct addresses holds memory for at most about this long plus the longest refill.
const RATE_LIMIT_PURGE: Duration = Duration::from_secs(10);

/// Client ids of the last messages stored (about 1 MiB at most): a retry within this many
/// messages is answered from the store before any handler runs.
const RECENT_CLIENT_IDS: usize = 65_536;

/// The store adapter the configuration chose, seen as the ports the other crates use.
struct Stores {
    log: Arc<dyn MessageLog>,
    history: Arc<dyn MessageHistory>,
    replay: Arc<dyn ReplaySource>,
    users: Arc<dyn UserStore>,
    files: Arc<dyn FileIndex>,
    reader: Arc<dyn LogReader>,
    /// Connects committed entries to the follower (set once, before the first write).
    listen: Box<dyn FnOnce(Arc<dyn CommitListener>) + Send>,
    /// Writes waiting for the store's writer, for metrics.
    writer_queue: Arc<dyn Fn() -> usize + Send + Sync>,
    /// How old stored bytes without metadata must be before upkeep deletes them: at once
    /// with one process, an hour when another node may be mid-upload.
    orphan_grace: Duration,
}

impl Stores {
    async fn open(cfg: &Config) -> Result<Self, ServerError> {
        match cfg.store {
            StoreKind::Sqlite => {
                let s = SqliteStore::open(
                    &cfg.data_dir,
                    StoreConfig {
                        readers: cfg.sqlite.readers,
                        ..StoreConfig::default()
                    },
                )?;
                let (listen, queue) = (s.clone(), s.clone());
                Ok(Self::of(
                    s,
                    move |l| listen.set_commit_listener(l),
                    Arc::new(move || queue.writer_queue()),
                    Duration::ZERO,
                ))
            }
            #[cfg(feature = "postgres")]
            StoreKind::Postgres => {
                let mut pg = im_store::PgConfig::new(cfg.postgres.url.clone());
                if cfg.postgres.pool_size > 0 {
                    pg.pool_size = cfg.postgres.pool_size;
                }
                // Commits wake the other nodes through NOTIFY only when that is the bus.
                pg.notify = cfg.bus_kind() == BusKind::Postgres;
                let s = im_store::PgStore::open(pg).await?;
                let (listen, queue) = (s.clone(), s.clone());
                Ok(Self::of(
                    s,
                    move |l| listen.set_commit_listener(l),
                    Arc::new(move || queue.writer_queue()),
                    Duration::from_secs(3600),
                ))
            }
            #[cfg(not(feature = "postgres"))]
            StoreKind::Postgres => Err(ServerError::Unsupported(
                "store = \"postgres\" needs im-server built with the `postgres` feature".into(),
            )),
        }
    }

    fn of<S>(
        s: S,
        listen: impl FnOnce(Arc<dyn CommitListener>) + Send + 'static,
        writer_queue: Arc<dyn Fn() -> usize + Send + Sync>,
        orphan_grace: Duration,
    ) -> Self
    where
        S: MessageLog + MessageHistory + ReplaySource + UserStore + FileIndex + LogReader + Clone,
    {
        Self {
            log: Arc::new(s.clone()),
            history: Arc::new(s.clone()),
            replay: Arc::new(s.clone()),
            users: Arc::new(s.clone()),
            files: Arc::new(s.clone()),
            reader: Arc::new(s),
            listen: Box::new(listen),
            writer_queue,
            orphan_grace,
        }
    }

    /// Where uploaded bytes live: `files.dir` (`<data_dir>/files` by default), through
    /// `object_store` when built with it, or an S3-compatible bucket (`[files.s3]`).
    async fn file_bytes(&self, cfg: &Config) -> Result<Arc<dyn FileStore>, ServerError> {
        match cfg.files.backend {
            FilesBackend::Dir => {
                let dir = cfg.files_dir();
                #[cfg(feature = "object-store")]
                let bytes = im_files::ObjectFileStore::local_dir(&dir)?;
                #[cfg(not(feature = "object-store"))]
                let bytes = im_files::DiskFileStore::open_sparing(&dir, self.orphan_grace)?;
                Ok(Arc::new(bytes))
            }
            #[cfg(feature = "s3")]
            FilesBackend::S3 => {
                let s3 = &cfg.files.s3;
                let settings = im_files::S3Settings {
                    endpoint: s3.endpoint.clone(),
                    bucket: s3.bucket.clone(),
                    region: s3.region.clone(),
                    allow_http: s3.allow_http,
                };
                let bytes = im_files::ObjectFileStore::s3(&settings)?;
                bytes.check().await?;
                Ok(Arc::new(bytes))
            }
            #[cfg(not(feature = "s3"))]
            FilesBackend::S3 => Err(ServerError::Unsupported(
                "files.backend = \"s3\" needs im-server built with the `s3` feature".into(),
            )),
        }
    }
}

/// Connections the kernel queues before `accept`. tokio's default (1,024) overflowed when
/// the 5,000 clients of a dead node reconnected at once, each dropped attempt costing its
/// client a second; the kernel caps this at `net.core.somaxconn`.
const ACCEPT_BACKLOG: u32 = 8192;

/// Binds the listener with a backlog large enough for a reconnect storm.
fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    // As tokio's own bind does: a restarted node gets its port back at once.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(ACCEPT_BACKLOG)
}

/// The bus the configuration chose, for node `node`.
#[allow(unused_variables)] // `node` and `missing` go unused in builds with every bus
fn open_bus(cfg: &Config, node: NodeId) -> Result<Arc<dyn Bus>, ServerError> {
    let missing = |feature: &str| {
        ServerError::Unsupported(format!(
            "bus = \"{}\" needs im-server built with the `{feature}` feature",
            cfg.bus_kind().name()
        ))
    };
    Ok(match cfg.bus_kind() {
        BusKind::Local => Arc::new(LocalBus),
        #[cfg(feature = "postgres")]
        BusKind::Postgres => Arc::new(im_store::PgBus::new(&cfg.postgres.url)),
        #[cfg(not(feature = "postgres"))]
        BusKind::Postgres => return Err(missing("postgres")),
        #[cfg(feature = "redis")]
        BusKind::Redis => Arc::new(
            im_bus::RedisBus::new(&cfg.redis.url, &cfg.redis.prefix, node)
                .map_err(|e| ServerError::Unsupported(e.to_string()))?,
        ),
        #[cfg(not(feature = "redis"))]
        BusKind::Redis => return Err(missing("redis")),
        #[cfg(feature = "nats")]
        BusKind::Nats => Arc::new(
            im_bus::NatsBus::new(&cfg.nats.url, &cfg.nats.prefix, node)
                .map_err(|e| ServerError::Unsupported(e.to_string()))?,
        ),
        #[cfg(not(feature = "nats"))]
        BusKind::Nats => return Err(missing("nats")),
    })
}

/// What other nodes send this one: wake-ups and entries for the follower, events and
/// presence news for local streams.
struct NodeInbound {
    link: Link,
    follower: Arc<Follower>,
    users: Arc<UserManager>,
}

impl Inbound for NodeInbound {
    fn frame(&self, frame: bytes::Bytes) {
        let Some((from, signal)) = self.link.open(&frame) else {
            return;
        };
        match signal {
            Signal::Committed { entries, .. } if !entries.is_empty() => {
                self.follower.offer(entries)
            }
            Signal::Committed { head, .. } => self.follower.wake(head),
            Signal::Event(event) => self.users.deliver_remote(&event),
            Signal::Presence(news) => self.users.presence_news(from, news),
            Signal::Disconnect(users) => self.users.disconnect_here(&users),
        }
    }

    fn head(&self, head: u64) {
        self.follower.wake(head);
    }

    fn reconnected(&self) {
        self.follower.poll_now();
        self.users.bus_reconnected();
    }
}

/// A bound server, ready to run.
pub struct ImServer {
    app: Arc<App>,
    listener: TcpListener,
    tls: Option<tls::Tls>,
    /// `metrics.listen`: `/metrics` alone, without a token.
    metrics_listener: Option<TcpListener>,
}

impl ImServer {
    /// Starts configuring a server.
    pub fn builder() -> ImServerBuilder {
        ImServerBuilder::default()
    }

    /// The address actually bound (useful with port 0).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether the listener speaks TLS (`https://`).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Runs until SIGTERM or Ctrl-C, then shuts down gracefully.
    pub async fn run_until_signal(self) -> Result<(), ServerError> {
        self.run(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes. Then it stops accepting, ends every event stream,
    /// and gives open requests `shutdown_grace_secs` to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let ImServer {
            app,
            listener,
            tls,
            metrics_listener,
        } = self;
        if let Some(l) = metrics_listener {
            tokio::spawn(metrics::serve(l, app.clone()));
        }
        let acceptor = tls.as_ref().map(|tls| {
            tls.spawn_reloader(Duration::from_secs(app.config.tls.reload_secs.max(1)));
            tls.acceptor().clone()
        });
        let limits = app.config.limits.clone();
        let header_timeout = Duration::from_secs(limits.header_timeout_secs.max(1));
        let write_timeout = Duration::from_secs(limits.write_timeout_secs.max(1));
        let body_limits = BodyLimits::of(&app.config);
        let mut http = auto::Builder::new(TokioExecutor::new());
        http.http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        http.http2()
            .timer(TokioTimer::new())
            .keep_alive_interval(Some(Duration::from_secs(30)));
        // The protocol is chosen by sniffing (h2c starts with the HTTP/2 preface) and hyper
        // gets a builder for that one protocol, so it reads an HTTP/1 request in one go.
        let h1 = Arc::new(http.clone().http1_only());
        let h2 = Arc::new(http.http2_only());
        // Over the cap: one request, answered quickly, then the connection closes.
        let mut refusal = hyper::server::conn::http1::Builder::new();
        refusal
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout.min(Duration::from_secs(5)))
            .keep_alive(false);
        let refusal = Arc::new(refusal);
        let slots = conn::Slots::new(match limits.max_connections {
            0 => conn::default_max_connections(),
            n => n,
        });
        tracing::info!(max_connections = slots.max(), "accepting connections");
        let graceful = GracefulShutdown::new();
        // Held by every event stream served without hyper, which `graceful` cannot watch:
        // shutdown waits until all are dropped.
        let (streams_done, streams_open) = tokio::sync::watch::channel(());
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(conn) => conn,
                    Err(e) => {
                        // Usually EMFILE: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let (slot, refuse) = match slots.admit() {
                conn::Admission::Serve(slot) => (slot, false),
                conn::Admission::Refuse(slot) => (slot, true),
                conn::Admission::Drop => continue,
            };
            // Small SSE frames must leave at once, not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let app = app.clone();
            let (h1, h2, refusal, watcher) =
                (h1.clone(), h2.clone(), refusal.clone(), graceful.watcher());
            let held = streams_open.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let _slot = slot;
                let mut stream = match acceptor {
                    None => conn::Transport::Plain(stream),
                    // The handshake is part of the head: it has the same deadline.
                    Some(acceptor) => {
                        match tokio::time::timeout(header_timeout, acceptor.accept(stream)).await {
                            Ok(Ok(tls)) => conn::Transport::Tls(Box::new(tls)),
                            Ok(Err(e)) => {
                                tracing::debug!(error = %e, "TLS handshake failed");
                                return;
                            }
                            Err(_) => return,
                        }
                    }
                };
                let Some(sniffed) = conn::sniff(&mut stream, header_timeout, !refuse).await else {
                    return; // closed, or nothing sent in time
                };
                let _counted = metrics::OpenConnection::new(
                    if sniffed.h2 { "h2" } else { "http1" },
                    matches!(stream, conn::Transport::Tls(_)),
                );
                let held = sniffed.events.is_some().then_some(held);
                let mut io = conn::ConnIo::new(stream, sniffed.prefix, write_timeout);
                if let Some(head) = sniffed.events {
                    let mut req = head.map(|()| body_limits.wrap(ConnBody::Empty));
                    req.extensions_mut().insert(ClientAddr(peer));
                    if let Err(e) = events_h1::serve(app.clone(), req, &mut io).await {
                        tracing::debug!(error = %e, "event stream connection ended");
                        return;
                    }
                }
                drop(held);
                let io = TokioIo::new(io);
                let service = service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let app = app.clone();
                    let mut req = req.map(|b| body_limits.wrap(ConnBody::Hyper(b)));
                    req.extensions_mut().insert(ClientAddr(peer));
                    async move {
                        Ok::<_, Infallible>(if refuse {
                            app.handle_over_capacity(req).await
                        } else {
                            app.handle(req).await
                        })
                    }
                });
                // Boxed, so a connection that never reaches hyper does not carry the size
                // of hyper's connection in its task.
                let ended = if refuse {
                    if sniffed.h2 {
                        return;
                    }
                    Box::pin(watcher.watch(refusal.serve_connection(io, service)))
                        .await
                        .map_err(Into::into)
                } else if sniffed.h2 {
                    Box::pin(watcher.watch(h2.serve_connection(io, service).into_owned())).await
                } else {
                    Box::pin(watcher.watch(h1.serve_connection(io, service).into_owned())).await
                };
                if let Err(e) = ended {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        drop(listener);
        app.readiness.stop();
        tracing::info!("shutting down: ending event streams");
        app.broker.shutdown();
        let grace = Duration::from_secs(app.config.shutdown_grace_secs);
        drop(streams_open);
        let all_closed = async {
            tokio::join!(graceful.shutdown(), streams_done.closed());
        };
        tokio::select! {
            _ = all_closed => tracing::info!("all connections closed"),
            _ = tokio::time::sleep(grace) => tracing::warn!("connections still open after the grace period; closing"),
        }
        Ok(())
    }
}

/// Completes on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {},
                    _ = tokio::signal::ctrl_c() => {},
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
