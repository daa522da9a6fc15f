//! The PostgreSQL adapter: the same ports as [`crate::SqliteStore`], for a deployment of many
//! nodes on one database.
//!
//! Invariants:
//! - Every write goes through this node's one writer task, which commits whatever is queued
//!   in one transaction (group commit).
//! - Each transaction first locks the single `log_head` row and takes its positions from it,
//!   then writes its messages (whose ids are positions) and its change records, then moves
//!   the head and commits. The row lock is held to the commit, so transactions that take
//!   positions commit one at a time, in position order, across every node: whatever head a
//!   reader sees, every position at or below it is visible or will never exist.
//! - Committed messages reach the [`CommitListener`] in id order.

mod bus;
#[cfg(feature = "files")]
mod files;
mod messages;
mod migrations;
#[cfg(feature = "users")]
mod social;
#[cfg(feature = "users")]
mod users;
mod writer;

pub use bus::PgBus;

use crate::{CommitListener, StoreError};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::sync::{Arc, OnceLock};
use tokio_postgres::NoTls;

/// Settings of the PostgreSQL store.
#[derive(Debug, Clone)]
pub struct PgConfig {
    /// `postgres://user@host:port/database`.
    pub url: String,
    /// Pooled connections for reads (the writer holds one more of its own).
    pub pool_size: usize,
    /// Operations queued for the writer before appenders wait.
    pub queue: usize,
    /// The most operations committed in one transaction.
    pub batch: usize,
    /// Whether each commit sends `NOTIFY im_log` (the wake-up of [`crate::PgBus`]); off
    /// when another bus carries the wake-ups.
    pub notify: bool,
}

impl PgConfig {
    /// The defaults, for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            pool_size: 16,
            queue: 8192,
            batch: 1024,
            notify: true,
        }
    }
}

/// The PostgreSQL store: implements the message, replay, user and file-index ports.
#[derive(Clone)]
pub struct PgStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// For connections of their own (the sweep lease).
    #[cfg(feature = "files")]
    url: String,
    pool: Pool,
    writer: flume::Sender<writer::Op>,
    listener: Arc<OnceLock<Arc<dyn CommitListener>>>,
    /// The runtime the store was opened on. Reads for the log follower run here: a pooled
    /// connection is driven by the runtime that opened it, and the follower's own runtime
    /// may block on a full delivery queue, which would stall other tasks' queries.
    runtime: tokio::runtime::Handle,
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStore").finish_non_exhaustive()
    }
}

impl PgStore {
    /// Writes waiting for the writer task, for metrics.
    pub fn writer_queue(&self) -> usize {
        self.inner.writer.len()
    }

    /// Connects, runs migrations and starts the writer task on the current tokio runtime.
    /// Fails (rather than retrying) when the database cannot be reached, so a node with a
    /// wrong URL does not start half-working.
    pub async fn open(config: PgConfig) -> Result<Self, StoreError> {
        let pg: tokio_postgres::Config = config
            .url
            .parse()
            .map_err(|e| StoreError::Config(format!("postgres.url: {e}")))?;
        let target = describe(&pg);
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(config.pool_size.max(2))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(std::time::Duration::from_secs(10)))
            .create_timeout(Some(std::time::Duration::from_secs(5)))
            .build()
            .map_err(|e| StoreError::Config(format!("postgres pool: {e}")))?;
        {
            let mut client = pool.get().await.map_err(|e| {
                StoreError::Config(format!(
                    "cannot reach PostgreSQL at {target}: {}",
                    chain(&e)
                ))
            })?;
            migrations::run(&mut client).await?;
        }
        let listener = Arc::new(OnceLock::new());
        let writer = writer::start(pool.clone(), &config, listener.clone());
        Ok(Self {
            inner: Arc::new(Inner {
                #[cfg(feature = "files")]
                url: config.url.clone(),
                pool,
                writer,
                listener,
                runtime: tokio::runtime::Handle::current(),
            }),
        })
    }

    /// Sets who hears about committed messages (the consumer pool). Set it once, before
    /// the first message is appended; later calls are ignored.
    pub fn set_commit_listener(&self, listener: Arc<dyn CommitListener>) {
        let _ = self.inner.listener.set(listener);
    }

    /// Runs `work` on the store's runtime (see `Inner::runtime`).
    pub(crate) async fn on_own_runtime<T: Send + 'static>(
        &self,
        work: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.inner
            .runtime
            .spawn(work)
            .await
            .map_err(|e| StoreError::Commit(format!("a store task failed: {e}")))?
    }

    /// The highest committed position in the whole deployment: every position at or below it
    /// is visible or will never exist.
    pub async fn head(&self) -> Result<u64, StoreError> {
        let client = self.inner.pool.get().await?;
        let stmt = client.prepare_cached("SELECT last FROM log_head").await?;
        let last: i64 = client.query_one(&stmt, &[]).await?.get(0);
        Ok(last as u64)
    }

    #[cfg(feature = "files")]
    /// A session-level advisory lock held on a connection of its own: `None` if another node
    /// holds it. Dropping the lease closes the connection, which releases the lock (as a
    /// node's death does).
    async fn advisory_lease(&self, key: i64) -> Result<Option<im_files::SweepLease>, StoreError> {
        let (client, conn) = tokio_postgres::connect(&self.inner.url, NoTls).await?;
        let task = tokio::spawn(async move {
            let _ = conn.await;
        });
        let got: bool = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&key])
            .await?
            .get(0);
        if !got {
            task.abort();
            return Ok(None);
        }
        Ok(Some(im_files::SweepLease(Box::new(Lease {
            _client: client,
            task,
        }))))
    }

    /// A pooled connection for reads.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        Ok(self.inner.pool.get().await?)
    }

    /// Queues one write for the writer's next transaction and waits for its commit.
    async fn write(&self, op: writer::Write) -> Result<im_cluster::Logged<u64>, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.inner
            .writer
            .send_async(writer::Op::Write(op, tx))
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// An advisory lock's connection; dropping it closes the connection and so the lock.
#[cfg(feature = "files")]
struct Lease {
    _client: tokio_postgres::Client,
    task: tokio::task::JoinHandle<()>,
}

#[cfg(feature = "files")]
impl Drop for Lease {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Where a configuration points, without its password, for error messages.
fn describe(pg: &tokio_postgres::Config) -> String {
    let host = match pg.get_hosts().first() {
        Some(tokio_postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(tokio_postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = pg.get_ports().first().copied().unwrap_or(5432);
    let db = pg.get_dbname().or(pg.get_user()).unwrap_or("");
    format!("{host}:{port}/{db}")
}

/// An error and its causes on one line (the driver's own message is often only "db error").
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Whether a PostgreSQL error is a unique-constraint violation.
#[cfg(feature = "users")]
fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Postgres(e)
        if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION))
}
