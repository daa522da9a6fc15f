//! Configuration: a TOML file (`--config`), then `IM_*` environment variables, then flags,
//! each overriding the one before.
//!
//! Environment variables name keys in upper case; a double underscore enters a table:
//! `IM_LISTEN=0.0.0.0:8080`, `IM_SSE__KEEPALIVE_SECS=10`.

use im_users::DirectMessages;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use toml::{Table, Value};

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The config file, a variable or a flag has a bad value.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A flag is unknown or lacks its value.
    #[error("{0}")]
    Usage(String),
}

/// The command line. Every other setting is in the file or an `IM_*` variable; the layers
/// are: defaults, then the file, then the variables, then these flags.
#[derive(Debug, clap::Parser)]
#[command(
    name = "im-server",
    version,
    about = "Web-IM: instant messaging for the web (SSE out, HTTP POST in).",
    after_help = "Every setting of docs/API.md (\"Configuration\") can also be given as an \
                  environment variable IM_<KEY>, or IM_<TABLE>__<KEY> inside a table \
                  (IM_SSE__KEEPALIVE_SECS=10). The file is overridden by the variables, and \
                  both by these flags."
)]
struct Cli {
    /// TOML configuration file (see docs/API.md, "Configuration").
    #[arg(long, value_name = "FILE")]
    config: Option<PathBuf>,
    /// Address to listen on [env: IM_LISTEN] [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR")]
    listen: Option<String>,
    /// Where the SQLite store and uploaded files live [env: IM_DATA_DIR] [default: ./im-data].
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// Serve HTTPS and HTTP/2 with a self-signed certificate for localhost, made in
    /// DIR/tls on first use [env: IM_TLS__SELF_SIGNED=true] [default: off].
    #[arg(long)]
    self_signed: bool,
}

/// Everything the server can be told; every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory of the embedded store (and of uploaded files by default).
    pub data_dir: PathBuf,
    /// Where the truth lives: `sqlite` (embedded, one node) or `postgres` (any number of
    /// nodes on one database).
    pub store: StoreKind,
    /// `[sqlite]`: the embedded store.
    pub sqlite: SqliteSection,
    /// `[postgres]`: the database of a cluster.
    pub postgres: PostgresSection,
    /// What wakes the other nodes and carries ephemeral events between them: `local` (one
    /// process), `postgres` (`LISTEN/NOTIFY`), `redis` or `nats`. Unset: `local` with
    /// SQLite, `postgres` with PostgreSQL.
    pub bus: Option<BusKind>,
    /// `[redis]`: the Redis of `bus = "redis"`.
    pub redis: RedisSection,
    /// `[nats]`: the NATS of `bus = "nats"`.
    pub nats: NatsSection,
    /// `[cluster]`: presence across nodes and readiness.
    pub cluster: ClusterSection,
    /// Who may message whom directly.
    pub direct_messages: DirectMessages,
    /// Log filter in `tracing` syntax; `RUST_LOG` wins when set.
    pub log: String,
    /// Cap on a `POST /messages` body.
    pub max_message_bytes: usize,
    /// Cap on other JSON bodies.
    pub max_json_bytes: usize,
    /// How long after sending a message its sender may still edit it, in seconds; 0 (the
    /// default) sets no limit.
    pub edit_window_secs: u64,
    /// How long shutdown waits for connections after ending event streams.
    pub shutdown_grace_secs: u64,
    /// Marks the session cookie `Secure`; unset, it is marked when `[tls]` is on. Set it
    /// behind a proxy that terminates HTTPS.
    pub cookie_secure: Option<bool>,
    /// Milliseconds a user with no open stream still counts as online, so reloads do not flap.
    pub presence_grace_ms: u64,
    /// Extra origins allowed to make cookie-authenticated writes, e.g. `https://chat.example`.
    pub allowed_origins: Vec<String>,
    /// HTTPS on the main listener (`[tls]`).
    pub tls: TlsConfig,
    /// `/metrics` for Prometheus (`[metrics]`).
    pub metrics: MetricsConfig,
    /// The API for an application's backends, `/api/v1/server/…` (`[server_api]`).
    pub server_api: ServerApiSection,
    /// Event stream tuning.
    pub sse: SseConfig,
    /// Connection caps and timeouts (`[limits]`).
    pub limits: LimitsSection,
    /// Dispatcher sizing.
    pub workers: WorkerConfig,
    /// Password hashing cost.
    pub argon2: Argon2Config,
    /// `[sessions]`: when login sessions expire.
    pub sessions: SessionsSection,
    /// `[rate_limits]`: login, registration, message and upload rates.
    pub rate_limits: RateLimitsSection,
    /// The file proxy.
    pub files: FilesSection,
    /// `IM_*` variables that name no setting; ignored, and logged at start-up so a typo is
    /// visible without unrelated variables stopping the server.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

/// Which store adapter holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// SQLite under `data_dir`: one process, no service needed.
    #[default]
    Sqlite,
    /// PostgreSQL at `postgres.url`: every node of a deployment shares it.
    Postgres,
}

/// The bus between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BusKind {
    /// No other node: the embedded default.
    Local,
    /// PostgreSQL `LISTEN/NOTIFY`: no service beyond the database.
    Postgres,
    /// Redis (6 or later) pub/sub.
    Redis,
    /// NATS core subjects.
    Nats,
}

/// `[redis]`: the Redis of `bus = "redis"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisSection {
    /// `redis://host:port/`.
    pub url: String,
    /// Put before the channel name, so deployments can share one Redis.
    pub prefix: String,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: "redis://127.0.0.1:6379/".into(),
            prefix: "im:".into(),
        }
    }
}

/// `[nats]`: the NATS of `bus = "nats"`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsSection {
    /// `nats://host:port`.
    pub url: String,
    /// Put before the subject, so deployments can share one NATS; ends with a dot.
    pub prefix: String,
}

impl Default for NatsSection {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "im.".into(),
        }
    }
}

/// `[cluster]`: presence across nodes and readiness.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterSection {
    /// Seconds another node's word that a user is online holds unless repeated: the users
    /// of a node that dies show offline within this.
    pub presence_ttl_secs: u64,
    /// `GET /readyz` fails while this node's follower is more than this many log positions
    /// behind the head.
    pub ready_max_lag: u64,
}

impl Default for ClusterSection {
    fn default() -> Self {
        Self {
            presence_ttl_secs: 30,
            ready_max_lag: 10_000,
        }
    }
}

/// `[sqlite]`: the embedded store.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SqliteSection {
    /// Reader connections (reads running at once; more wait), each with an 8 MiB page cache.
    pub readers: usize,
}

impl Default for SqliteSection {
    fn default() -> Self {
        Self { readers: 4 }
    }
}

/// `[postgres]`: the database of a cluster.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSection {
    /// `postgres://user@host:port/database`; required with `store = "postgres"`.
    pub url: String,
    /// Pooled connections for reads; 0 means the default (16).
    pub pool_size: usize,
}

/// `[metrics]`: Prometheus metrics. Off unless one of the two is set.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetricsConfig {
    /// Serves `GET /metrics` on the main listener to `Authorization: Bearer <token>`.
    pub token: Option<String>,
    /// Serves `GET /metrics` on this address too, without a token (a private interface).
    pub listen: Option<SocketAddr>,
}

/// `[server_api]`: the API for an application's backends (`/api/v1/server/…`). Off unless a
/// key is set.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerApiSection {
    /// The keys a backend presents (`X-Api-Key: <key>` or `Authorization: ApiKey <key>`),
    /// each at least 16 characters. One string or a list, so that one key fits in
    /// `IM_SERVER_API__KEYS`; several let a key be replaced without a moment of refusals.
    #[serde(deserialize_with = "one_or_many")]
    pub keys: Vec<String>,
}

impl std::fmt::Debug for ServerApiSection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys are secrets: a logged configuration shows how many, never what.
        f.debug_struct("ServerApiSection")
            .field("keys", &format_args!("[{} hidden]", self.keys.len()))
            .finish()
    }
}

/// The shortest server API key accepted: shorter ones are guessable.
pub const MIN_API_KEY_CHARS: usize = 16;

/// A list, or one string standing for a list of one.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// `[tls]`: HTTPS, with HTTP/2 offered by ALPN. Off unless a certificate is given.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// The certificate chain, PEM (leaf first).
    pub cert: Option<PathBuf>,
    /// Its private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// Serve a self-signed certificate for `localhost`, made in `data_dir/tls` on first use
    /// (the `--self-signed` flag): a local HTTPS demo in one command.
    pub self_signed: bool,
    /// How often the files are checked for a change (they are also loaded again on
    /// SIGHUP); new connections get the new certificate, open ones keep theirs.
    pub reload_secs: u64,
}

impl Default for TlsConfig {
    fn default() -> Self {
        Self {
            cert: None,
            key: None,
            self_signed: false,
            reload_secs: 10,
        }
    }
}

impl TlsConfig {
    /// Whether the listener speaks TLS.
    pub fn enabled(&self) -> bool {
        self.self_signed || self.cert.is_some()
    }
}

/// `[sse]`: event stream tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// Seconds between keep-alive comments (at most 20 for proxies).
    pub keepalive_secs: u64,
    /// Bytes queued per stream (frames plus 48 each) before a slow stream is cut off and
    /// resumes from the store, as Centrifugo's `client_queue_max_size`. 0 means no limit.
    pub mailbox_bytes: usize,
    /// Frames queued per stream, an extra cap beside `mailbox_bytes` (this was the only
    /// limit before `mailbox_bytes`; old configs that set it keep working). 0 means none.
    pub mailbox: usize,
    /// Bytes buffered for all streams of this node together (queued frames and replay pages
    /// not yet written); a delivery that would pass it cuts off that stream. 0 means no cap.
    pub buffer_bytes: usize,
    /// Most messages replayed on resume before `resync` is sent instead.
    pub resume_limit: usize,
    /// Messages read from the store and written per page of a replay.
    pub replay_page: usize,
    /// A replay page ends with the message that brings its stored records to this size.
    pub replay_page_bytes: usize,
    /// The `retry:` hint in milliseconds.
    pub retry_ms: u64,
    /// Open streams one user may hold on a node; opening one more closes that user's oldest
    /// (so a user with many tabs keeps working). 0 means no limit.
    pub max_streams_per_user: usize,
}

/// `[limits]`: what one connection may cost, and how many there may be.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LimitsSection {
    /// Open connections at most; 0 sizes it from the open-file limit (three quarters of it).
    /// Over the cap a connection gets one 503 (`/healthz` and `/readyz` still answer).
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (and, on a fresh connection, its
    /// first bytes); an idle keep-alive connection is closed after it too.
    pub header_timeout_secs: u64,
    /// Seconds a request body may go without a byte arriving; then 408 and the connection
    /// closes.
    pub body_timeout_secs: u64,
    /// Bytes per second a body must average once past `body_timeout_secs` (each byte buys
    /// `1/body_min_rate` s more), so a trickled body cannot hold a connection; 0 switches it off.
    pub body_min_rate: u64,
    /// Seconds a write may make no progress (a reader that stopped reading, an event stream
    /// included) before the connection is closed.
    pub write_timeout_secs: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_connections: 0,
            header_timeout_secs: 30,
            body_timeout_secs: 30,
            body_min_rate: 500,
            write_timeout_secs: 60,
        }
    }
}

/// `[workers]`: dispatcher sizing; 0 means one per core.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Shards per channel group.
    pub channel_shards: usize,
    /// Bounded queue per channel shard; full answers 503.
    pub channel_queue: usize,
    /// Consumer pool workers.
    pub pool_workers: usize,
    /// Bounded queue per pool worker.
    pub pool_queue: usize,
    /// Recipients up to which the log follower delivers a message itself when their pool
    /// workers are idle, saving a thread wake-up per direct message; 0 = always the pool.
    pub pool_inline: usize,
    /// Tokio worker threads, which run every connection; 0 = one per core. Read by the
    /// binary, which builds the runtime; an application embedding the server builds its own.
    pub runtime_threads: usize,
    /// Most threads of tokio's blocking pool (SQLite reads, file I/O). Tokio's own default
    /// (512) let a burst of stream opens grow the process to hundreds of threads, each with
    /// its own stack and malloc arena that stayed after the burst.
    pub blocking_threads: usize,
}

/// `[argon2]`: password hashing cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Config {
    /// Memory per hash in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Hashing threads, each keeping one `memory_kib` buffer for the life of the process.
    pub concurrency: usize,
    /// Hashes that may wait for a thread; past it, 503 `overloaded` with `Retry-After`.
    pub queue: usize,
}

/// `[rate_limits]`: per address, account and user budgets (a token bucket each: a burst,
/// refilled at a steady rate). Over budget, 429 `rate_limited` with `Retry-After`.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitsSection {
    /// Switches every rate limit off at once.
    pub enabled: bool,
    /// Proxies whose `X-Forwarded-For` names the client (nginx's `set_real_ip_from`); a
    /// request from anywhere else is keyed on its peer address.
    pub trusted_proxies: Vec<std::net::IpAddr>,
    /// `POST /auth/login` per client address.
    pub login_per_address: RateSetting,
    /// `POST /auth/login` per username tried, counted before any hashing.
    pub login_per_account: RateSetting,
    /// `POST /auth/register` per client address.
    pub register_per_address: RateSetting,
    /// `POST /messages` per user.
    pub messages_per_user: RateSetting,
    /// `POST /files` per user.
    pub uploads_per_user: RateSetting,
}

/// One budget, named as Synapse names its `rc_*` settings; `per_second = 0` switches it off
/// (a field left out is 0, so `IM_RATE_LIMITS__MESSAGES_PER_USER__PER_SECOND=0` alone works).
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateSetting {
    /// Steady rate the budget refills at.
    pub per_second: f64,
    /// Requests allowed at once after a quiet spell.
    pub burst_count: u32,
}

impl RateSetting {
    const fn new(per_second: f64, burst_count: u32) -> Self {
        Self {
            per_second,
            burst_count,
        }
    }
}

impl RateLimitsSection {
    /// Each limit with its setting.
    fn budgets(&self) -> [(im_limits::Limit, RateSetting); 5] {
        use im_limits::Limit;
        [
            (Limit::LoginPerAddress, self.login_per_address),
            (Limit::LoginPerAccount, self.login_per_account),
            (Limit::RegisterPerAddress, self.register_per_address),
            (Limit::MessagesPerUser, self.messages_per_user),
            (Limit::UploadsPerUser, self.uploads_per_user),
        ]
    }

    /// Refuses a half-set budget (a field left out is 0), which would otherwise be off
    /// without a word.
    fn check(&self) -> Result<(), ConfigError> {
        for (limit, r) in self.budgets() {
            let valid = r.per_second.is_finite() && r.per_second >= 0.0;
            if !valid || (r.per_second > 0.0) != (r.burst_count > 0) {
                return Err(ConfigError::Invalid(format!(
                    "rate_limits.{} needs both per_second > 0 and burst_count >= 1, or \
                     per_second = 0 alone to switch it off",
                    limit.name()
                )));
            }
        }
        Ok(())
    }

    /// The in-memory limiter these settings describe (none at all when `enabled` is off).
    pub fn memory_limiter(&self) -> im_limits::MemoryLimiter {
        let on = self.enabled.then(|| self.budgets()).into_iter().flatten();
        im_limits::MemoryLimiter::new(on.filter_map(|(limit, r)| {
            Some((limit, im_limits::Rate::new(r.per_second, r.burst_count)?))
        }))
    }
}

impl Default for RateLimitsSection {
    fn default() -> Self {
        Self {
            enabled: true,
            trusted_proxies: Vec::new(),
            // Generous: NATs and offices share addresses.
            login_per_address: RateSetting::new(1.0, 20),
            login_per_account: RateSetting::new(0.2, 10),
            register_per_address: RateSetting::new(0.1, 5),
            messages_per_user: RateSetting::new(10.0, 50),
            uploads_per_user: RateSetting::new(1.0, 10),
        }
    }
}

impl BusKind {
    /// The name used in the configuration.
    pub fn name(self) -> &'static str {
        match self {
            BusKind::Local => "local",
            BusKind::Postgres => "postgres",
            BusKind::Redis => "redis",
            BusKind::Nats => "nats",
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./im-data"),
            store: StoreKind::Sqlite,
            sqlite: SqliteSection::default(),
            postgres: PostgresSection::default(),
            bus: None,
            redis: RedisSection::default(),
            nats: NatsSection::default(),
            cluster: ClusterSection::default(),
            direct_messages: DirectMessages::Friends,
            log: "info".into(),
            max_message_bytes: 64 * 1024,
            max_json_bytes: 16 * 1024,
            edit_window_secs: 0,
            shutdown_grace_secs: 4,
            cookie_secure: None,
            presence_grace_ms: 5000,
            allowed_origins: Vec::new(),
            tls: TlsConfig::default(),
            metrics: MetricsConfig::default(),
            server_api: ServerApiSection::default(),
            sse: SseConfig::default(),
            limits: LimitsSection::default(),
            workers: WorkerConfig::default(),
            argon2: Argon2Config::default(),
            sessions: SessionsSection::default(),
            rate_limits: RateLimitsSection::default(),
            files: FilesSection::default(),
            ignored_env: Vec::new(),
        }
    }
}

/// Where uploaded bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilesBackend {
    /// A directory (`files.dir`); for a cluster, one that every node mounts.
    #[default]
    Dir,
    /// An S3-compatible bucket (`[files.s3]`, credentials from `AWS_*` variables), which
    /// every node reaches without a shared mount.
    S3,
}

/// `[files.s3]`: where the `s3` backend keeps the bytes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesS3Section {
    /// URL of an S3-compatible server (MinIO, Ceph), addressed path-style; unset for AWS.
    pub endpoint: Option<String>,
    /// The bucket; required with `backend = "s3"`, and it must exist.
    pub bucket: String,
    /// The region requests are signed for; unset means `AWS_REGION`, else `us-east-1`.
    pub region: String,
    /// Allows a plain `http://` endpoint, for a server on a trusted network.
    pub allow_http: bool,
}

/// `[files]`: the file proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesSection {
    /// Where the bytes live.
    pub backend: FilesBackend,
    /// The directory of the `dir` backend; `<data_dir>/files` if unset. Every node of a
    /// cluster must name the same shared directory.
    pub dir: Option<PathBuf>,
    /// The most bytes one upload may have.
    pub max_bytes: u64,
    /// Seconds a file link lives.
    pub ttl_secs: u64,
    /// Seconds between sweeps of expired files.
    pub sweep_secs: u64,
    /// Bytes of live files one user may hold; 0 means no limit. 1 GiB by default, so one
    /// account cannot fill the disk.
    pub quota_bytes: u64,
    /// The bucket of the `s3` backend.
    pub s3: FilesS3Section,
}

impl Default for FilesSection {
    fn default() -> Self {
        Self {
            backend: FilesBackend::Dir,
            dir: None,
            max_bytes: 25 * 1024 * 1024,
            ttl_secs: 24 * 3600,
            sweep_secs: 60,
            quota_bytes: im_files::DEFAULT_QUOTA,
            s3: FilesS3Section::default(),
        }
    }
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            keepalive_secs: 15,
            mailbox_bytes: 1024 * 1024,
            mailbox: 0,
            buffer_bytes: 256 * 1024 * 1024,
            resume_limit: 10_000,
            replay_page: 100,
            replay_page_bytes: 256 * 1024,
            retry_ms: 2000,
            max_streams_per_user: 16,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            channel_shards: 0,
            channel_queue: 4096,
            pool_workers: 0,
            pool_queue: 8192,
            pool_inline: 4,
            runtime_threads: 0,
            blocking_threads: 8,
        }
    }
}

/// `[sessions]`: when login sessions expire, so a leaked token does not work forever.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SessionsSection {
    /// Seconds a session may go unused (no request made with it) before it ends; 0 means
    /// never.
    pub idle_secs: u64,
    /// Seconds a session lives after login however much it is used (and the cookie's
    /// `Max-Age`); 0 means until logout.
    pub lifetime_secs: u64,
    /// Seconds between sweeps that end expired sessions (and their streams) on every node;
    /// 0 counts as 1.
    pub sweep_secs: u64,
}

impl Default for SessionsSection {
    fn default() -> Self {
        Self {
            idle_secs: 30 * 24 * 3600,
            lifetime_secs: 90 * 24 * 3600,
            sweep_secs: 60,
        }
    }
}

impl Default for Argon2Config {
    fn default() -> Self {
        let d = im_users::HashParams::default();
        Self {
            memory_kib: d.memory_kib,
            iterations: d.iterations,
            concurrency: d.concurrency,
            queue: d.queue,
        }
    }
}

/// What the command line asked for besides configuration.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the server.
    Run,
    /// Print this help text.
    Help(String),
    /// Print the version.
    Version,
}

impl Config {
    /// Loads the layers: file from `--config`, then `vars` (`IM_*`), then the other flags.
    pub fn load(
        args: impl IntoIterator<Item = String>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Command, Config), ConfigError> {
        let cli = match <Cli as clap::Parser>::try_parse_from(
            std::iter::once("im-server".to_owned()).chain(args),
        ) {
            Ok(cli) => cli,
            Err(e) => {
                return match e.kind() {
                    clap::error::ErrorKind::DisplayHelp => {
                        Ok((Command::Help(e.render().to_string()), Config::default()))
                    }
                    clap::error::ErrorKind::DisplayVersion => {
                        Ok((Command::Version, Config::default()))
                    }
                    _ => Err(ConfigError::Usage(e.render().to_string())),
                };
            }
        };
        let file = cli.config;
        let mut flags = Table::new();
        if let Some(listen) = cli.listen {
            flags.insert("listen".into(), Value::String(listen));
        }
        if let Some(dir) = cli.data_dir {
            flags.insert("data_dir".into(), Value::String(dir.display().to_string()));
        }
        let self_signed = cli.self_signed;
        let mut table = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                text.parse::<Table>().map_err(|e| {
                    ConfigError::Invalid(format!(
                        "{}: {}",
                        path.display(),
                        one_line(&e.to_string())
                    ))
                })?
            }
            None => Table::new(),
        };
        let mut ignored_env = Vec::new();
        for (var, raw) in vars {
            let Some(key) = var.strip_prefix("IM_") else {
                continue;
            };
            let path: Vec<String> = key.split("__").map(str::to_lowercase).collect();
            if !KEYS.contains(&path[0].as_str()) {
                ignored_env.push(var);
                continue;
            }
            set_path(&mut table, &path, parse_scalar(&raw))?;
        }
        for (k, v) in flags {
            table.insert(k, v);
        }
        if self_signed {
            set_path(
                &mut table,
                &["tls".into(), "self_signed".into()],
                Value::Boolean(true),
            )?;
        }
        let mut config: Config = Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(one_line(&e.to_string())))?;
        config.ignored_env = ignored_env;
        config.check()?;
        Ok((Command::Run, config))
    }

    /// The bus in force: the configured one, else the store's natural one.
    pub fn bus_kind(&self) -> BusKind {
        self.bus.unwrap_or(match self.store {
            StoreKind::Sqlite => BusKind::Local,
            StoreKind::Postgres => BusKind::Postgres,
        })
    }

    /// Refuses combinations that would start a half-working server.
    fn check(&self) -> Result<(), ConfigError> {
        match (self.store, self.bus_kind()) {
            (StoreKind::Sqlite, BusKind::Local) => {}
            (StoreKind::Sqlite, bus) => {
                return Err(ConfigError::Invalid(format!(
                    "bus = \"{}\" joins nodes of a cluster, but store = \"sqlite\" is one \
                     process's; use store = \"postgres\" or leave bus unset",
                    bus.name()
                )));
            }
            (StoreKind::Postgres, BusKind::Local) => {
                return Err(ConfigError::Invalid(
                    "bus = \"local\" would leave the nodes of a cluster deaf to each other; \
                     use bus = \"postgres\", \"redis\" or \"nats\""
                        .into(),
                ));
            }
            (StoreKind::Postgres, _) => {}
        }
        if self.cluster.presence_ttl_secs == 0 {
            return Err(ConfigError::Invalid(
                "cluster.presence_ttl_secs must be at least 1".into(),
            ));
        }
        if self.store == StoreKind::Postgres && self.postgres.url.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "store = \"postgres\" needs postgres.url (IM_POSTGRES__URL)".into(),
            ));
        }
        // Nodes of a cluster serve each other's uploads: a per-node default directory would
        // give links that work on one node only. A bucket is shared by nature.
        if self.store == StoreKind::Postgres
            && self.files.backend == FilesBackend::Dir
            && self.files.dir.is_none()
        {
            return Err(ConfigError::Invalid(
                "store = \"postgres\" needs files.dir, a directory every node shares \
                 (IM_FILES__DIR), or files.backend = \"s3\""
                    .into(),
            ));
        }
        if self.files.backend == FilesBackend::S3 && self.files.s3.bucket.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "files.backend = \"s3\" needs files.s3.bucket (IM_FILES__S3__BUCKET)".into(),
            ));
        }
        self.rate_limits.check()?;
        if self
            .server_api
            .keys
            .iter()
            .any(|k| k.chars().count() < MIN_API_KEY_CHARS)
        {
            return Err(ConfigError::Invalid(format!(
                "server_api.keys: each key needs at least {MIN_API_KEY_CHARS} characters \
                 (make one with `openssl rand -hex 32`)"
            )));
        }
        match (&self.tls.cert, &self.tls.key, self.tls.self_signed) {
            (Some(_), Some(_), false) | (None, None, _) => {}
            (Some(_), Some(_), true) => {
                return Err(ConfigError::Invalid(
                    "tls.self_signed makes its own certificate; leave tls.cert and tls.key \
                     unset, or drop --self-signed"
                        .into(),
                ));
            }
            _ => {
                return Err(ConfigError::Invalid(
                    "tls.cert and tls.key go together (IM_TLS__CERT, IM_TLS__KEY)".into(),
                ));
            }
        }
        Ok(())
    }

    /// Whether the session cookie is marked `Secure`: as configured, else when TLS is on.
    pub fn cookie_is_secure(&self) -> bool {
        self.cookie_secure.unwrap_or(self.tls.enabled())
    }

    /// The directory uploaded bytes go to.
    pub fn files_dir(&self) -> PathBuf {
        self.files
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("files"))
    }
}

/// A multi-line parser message on one line, so start-up failures are one line in the log.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Top-level settings an `IM_*` variable may name.
const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "store",
    "sqlite",
    "postgres",
    "bus",
    "redis",
    "nats",
    "cluster",
    "direct_messages",
    "log",
    "max_message_bytes",
    "max_json_bytes",
    "edit_window_secs",
    "shutdown_grace_secs",
    "cookie_secure",
    "presence_grace_ms",
    "allowed_origins",
    "tls",
    "metrics",
    "server_api",
    "sse",
    "limits",
    "workers",
    "argon2",
    "sessions",
    "rate_limits",
    "files",
];

/// Reads an environment value as TOML when it parses (numbers, booleans, arrays), else as a
/// plain string, so `IM_LISTEN=127.0.0.1:1` needs no quoting.
fn parse_scalar(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), ConfigError> {
    match path {
        [] => Ok(()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [head, rest @ ..] => {
            let entry = table
                .entry(head.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            match entry {
                Value::Table(t) => set_path(t, rest, value),
                _ => Err(ConfigError::Invalid(format!("`{head}` is not a table"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sample_file_in_the_api_docs_loads() {
        let doc =
            std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/API.md"))
                .unwrap();
        let start = doc
            .find("A sample file with every key at its default")
            .unwrap();
        let block = &doc[start..];
        let block = &block[block.find("```toml\n").unwrap() + 8..];
        let block = &block[..block.find("```").unwrap()];
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("im.toml");
        std::fs::write(&path, block).unwrap();
        let (_, c) = Config::load(s(&["--config", path.to_str().unwrap()]), vec![]).unwrap();
        let d = Config::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.tls.reload_secs, d.tls.reload_secs);
        assert_eq!(c.cookie_secure, d.cookie_secure);
        assert_eq!(c.workers.pool_inline, d.workers.pool_inline);
    }

    #[test]
    fn tls_settings_are_checked_and_self_signed_is_a_flag() {
        let (_, c) = Config::load(s(&["--self-signed"]), vec![]).unwrap();
        assert!(c.tls.self_signed && c.tls.enabled() && c.cookie_is_secure());
        let (_, c) = Config::load(s(&[]), vec![]).unwrap();
        assert!(!c.tls.enabled() && !c.cookie_is_secure());
        let e = Config::load(s(&[]), env(&[("IM_TLS__CERT", "/x.pem")])).unwrap_err();
        assert!(
            e.to_string().contains("tls.cert and tls.key go together"),
            "{e}"
        );
        let both = env(&[("IM_TLS__CERT", "/x.pem"), ("IM_TLS__KEY", "/y.pem")]);
        let (_, c) = Config::load(s(&[]), both.clone()).unwrap();
        assert!(c.cookie_is_secure());
        assert!(Config::load(s(&["--self-signed"]), both).is_err());
        let off = env(&[
            ("IM_TLS__SELF_SIGNED", "true"),
            ("IM_COOKIE_SECURE", "false"),
        ]);
        let (_, c) = Config::load(s(&[]), off).unwrap();
        assert!(c.tls.enabled() && !c.cookie_is_secure());
    }

    #[test]
    fn server_api_keys_are_one_or_many_long_enough_and_never_printed() {
        let one = env(&[("IM_SERVER_API__KEYS", "0123456789abcdef")]);
        let (_, c) = Config::load(s(&[]), one).unwrap();
        assert_eq!(c.server_api.keys, ["0123456789abcdef"]);
        let many = env(&[(
            "IM_SERVER_API__KEYS",
            r#"["0123456789abcdef", "fedcba9876543210"]"#,
        )]);
        let (_, c) = Config::load(s(&[]), many).unwrap();
        assert_eq!(c.server_api.keys.len(), 2);
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
        let short = env(&[("IM_SERVER_API__KEYS", "short")]);
        let e = Config::load(s(&[]), short).unwrap_err();
        assert!(e.to_string().contains("at least 16 characters"), "{e}");
        let (_, c) = Config::load(s(&[]), vec![]).unwrap();
        assert!(c.server_api.keys.is_empty());
    }

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn the_bus_follows_the_store_and_nonsense_is_refused() {
        let (_, c) = Config::load(vec![], vec![]).unwrap();
        assert_eq!(c.bus_kind(), BusKind::Local);
        let pg = [
            ("IM_STORE", "postgres"),
            ("IM_POSTGRES__URL", "postgres://x@127.0.0.1/im"),
            ("IM_FILES__DIR", "/shared"),
        ];
        let (_, c) = Config::load(vec![], env(&pg)).unwrap();
        assert_eq!(c.bus_kind(), BusKind::Postgres);
        let mut redis = pg.to_vec();
        redis.extend([("IM_BUS", "redis"), ("IM_REDIS__PREFIX", "eu:")]);
        let (_, c) = Config::load(vec![], env(&redis)).unwrap();
        assert_eq!(
            (c.bus_kind(), c.redis.prefix.as_str(), c.redis.url.as_str()),
            (BusKind::Redis, "eu:", "redis://127.0.0.1:6379/")
        );
        let mut nats = pg.to_vec();
        nats.extend([("IM_BUS", "nats"), ("IM_CLUSTER__PRESENCE_TTL_SECS", "3")]);
        let (_, c) = Config::load(vec![], env(&nats)).unwrap();
        assert_eq!(
            (c.bus_kind(), c.cluster.presence_ttl_secs),
            (BusKind::Nats, 3)
        );

        for (bad, why) in [
            (vec![("IM_BUS", "redis")], "store = \"sqlite\""),
            (vec![("IM_BUS", "carrier-pigeon")], "bus"),
            ([pg.as_slice(), &[("IM_BUS", "local")]].concat(), "deaf"),
            (
                [pg.as_slice(), &[("IM_CLUSTER__PRESENCE_TTL_SECS", "0")]].concat(),
                "presence_ttl_secs",
            ),
        ] {
            match Config::load(vec![], env(&bad)) {
                Err(ConfigError::Invalid(e)) => assert!(e.contains(why), "{e}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("im.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/from-file\"\ndirect_messages = \"anyone\"\n[sse]\nkeepalive_secs = 3\n",
        )
        .unwrap();
        let vars = vec![
            ("IM_LISTEN".to_owned(), "127.0.0.1:2".to_owned()),
            ("IM_SSE__MAILBOX".to_owned(), "7".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let args = s(&["--config", file.to_str().unwrap(), "--data-dir=/from-flag"]);
        let (cmd, c) = Config::load(args, vars).unwrap();
        assert_eq!(cmd, Command::Run);
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.data_dir, PathBuf::from("/from-flag"));
        assert_eq!(c.direct_messages, DirectMessages::Anyone);
        assert_eq!((c.sse.keepalive_secs, c.sse.mailbox), (3, 7));
        let (_, c) = Config::load(s(&["--listen", "127.0.0.1:3"]), vec![]).unwrap();
        assert_eq!(c.listen.port(), 3);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(matches!(
            Config::load(s(&["--nope"]), vec![]),
            Err(ConfigError::Usage(_))
        ));
        assert!(matches!(
            Config::load(s(&["--listen"]), vec![]),
            Err(ConfigError::Usage(_))
        ));
        let vars = vec![("IM_DIRECT_MESSAGES".to_owned(), "nobody".to_owned())];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(_))
        ));
        let vars = vec![("IM_SSE__TYPO".to_owned(), "1".to_owned())];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(_))
        ));
        // An unrelated IM_ variable is reported, not fatal.
        let vars = vec![("IM_TYPO".to_owned(), "1".to_owned())];
        assert_eq!(
            Config::load(vec![], vars).unwrap().1.ignored_env,
            vec!["IM_TYPO"]
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "typo = 1").unwrap();
        let args = vec!["--config".to_owned(), file.path().display().to_string()];
        assert!(matches!(
            Config::load(args, vec![]),
            Err(ConfigError::Invalid(_))
        ));
        let Command::Help(help) = Config::load(s(&["--help"]), vec![]).unwrap().0 else {
            panic!("--help asks for help")
        };
        for flag in [
            "--config",
            "--listen",
            "--data-dir",
            "--self-signed",
            "IM_LISTEN",
        ] {
            assert!(help.contains(flag), "{flag} in {help}");
        }
        let vars = vec![("IM_STORE".to_owned(), "postgres".to_owned())];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(e)) if e.contains("postgres.url")
        ));
        let vars = vec![("IM_STORE".to_owned(), "oracle".to_owned())];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn rate_limits_switch_off_one_by_one_and_refuse_half_settings() {
        let (_, c) = Config::load(vec![], vec![]).unwrap();
        assert!(c.rate_limits.enabled);
        assert_eq!(c.rate_limits.messages_per_user.burst_count, 50);
        let vars = env(&[
            ("IM_RATE_LIMITS__MESSAGES_PER_USER__PER_SECOND", "0"),
            ("IM_RATE_LIMITS__TRUSTED_PROXIES", "[\"10.0.0.1\"]"),
        ]);
        let (_, c) = Config::load(vec![], vars).unwrap();
        assert_eq!(c.rate_limits.messages_per_user.per_second, 0.0);
        assert_eq!(c.rate_limits.uploads_per_user.burst_count, 10);
        assert_eq!(c.rate_limits.trusted_proxies.len(), 1);
        for bad in [
            vec![("IM_RATE_LIMITS__UPLOADS_PER_USER__BURST_COUNT", "3")],
            vec![("IM_RATE_LIMITS__UPLOADS_PER_USER__PER_SECOND", "-1")],
        ] {
            assert!(matches!(
                Config::load(vec![], env(&bad)),
                Err(ConfigError::Invalid(e)) if e.contains("uploads_per_user")
            ));
        }
    }

    #[test]
    fn postgres_from_the_environment() {
        let vars = vec![
            ("IM_FILES__DIR".to_owned(), "/shared/files".to_owned()),
            ("IM_STORE".to_owned(), "postgres".to_owned()),
            (
                "IM_POSTGRES__URL".to_owned(),
                "postgres://im@127.0.0.1:5432/im".to_owned(),
            ),
        ];
        let (_, c) = Config::load(vec![], vars).unwrap();
        assert_eq!(c.store, StoreKind::Postgres);
        assert_eq!(c.postgres.url, "postgres://im@127.0.0.1:5432/im");
        assert_eq!(c.files_dir(), PathBuf::from("/shared/files"));
        let vars = vec![
            ("IM_STORE".to_owned(), "postgres".to_owned()),
            ("IM_POSTGRES__URL".to_owned(), "postgres://h/im".to_owned()),
        ];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(e)) if e.contains("files.dir")
        ));
    }

    #[test]
    fn s3_files_instead_of_a_shared_directory() {
        let vars = vec![
            ("IM_STORE".to_owned(), "postgres".to_owned()),
            ("IM_POSTGRES__URL".to_owned(), "postgres://h/im".to_owned()),
            ("IM_FILES__BACKEND".to_owned(), "s3".to_owned()),
            ("IM_FILES__S3__BUCKET".to_owned(), "im-files".to_owned()),
            (
                "IM_FILES__S3__ENDPOINT".to_owned(),
                "http://127.0.0.1:9000".to_owned(),
            ),
            ("IM_FILES__S3__ALLOW_HTTP".to_owned(), "true".to_owned()),
        ];
        let (_, c) = Config::load(vec![], vars).unwrap();
        assert_eq!(c.files.backend, FilesBackend::S3);
        assert_eq!(c.files.s3.bucket, "im-files");
        assert_eq!(
            c.files.s3.endpoint.as_deref(),
            Some("http://127.0.0.1:9000")
        );
        assert!(c.files.s3.allow_http);
        assert_eq!(c.files.s3.region, "", "AWS_REGION or us-east-1 then");

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("im.toml");
        std::fs::write(
            &file,
            "[files]\nbackend = \"s3\"\n[files.s3]\nbucket = \"b\"\nregion = \"eu-west-1\"\n",
        )
        .unwrap();
        let args = s(&["--config", file.to_str().unwrap()]);
        let (_, c) = Config::load(args, vec![]).unwrap();
        assert_eq!(
            (c.files.s3.bucket.as_str(), c.files.s3.region.as_str()),
            ("b", "eu-west-1")
        );
        assert_eq!(c.files.s3.endpoint, None);
        assert!(!c.files.s3.allow_http, "HTTPS only unless asked");

        let vars = vec![("IM_FILES__BACKEND".to_owned(), "s3".to_owned())];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(e)) if e.contains("files.s3.bucket")
        ));
        let vars = vec![
            ("IM_FILES__BACKEND".to_owned(), "s3".to_owned()),
            ("IM_FILES__S3__BUCKET".to_owned(), "b".to_owned()),
            ("IM_FILES__S3__BUKET".to_owned(), "typo".to_owned()),
        ];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(e)) if e.contains("bucket")
        ));
        let vars = vec![("IM_FILES__BACKEND".to_owned(), "ftp".to_owned())];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(_))
        ));
    }
}
