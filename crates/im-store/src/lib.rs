#![doc = include_str!("../README.md")]
//!
//! Invariants:
//! - One writer thread owns the only write connection. It takes whatever is queued, runs it
//!   in one transaction (each operation in its own savepoint, so one failure does not sink
//!   the batch), commits with `synchronous=FULL`, and only then answers. That is group
//!   commit: one fsync for many messages.
//! - Message ids come from the writer's counter, so they increase in commit order, and
//!   committed messages reach the [`CommitListener`] in id order.
//! - Readers use their own connections on the blocking pool; WAL lets them run beside the
//!   writer.

mod commits;
#[cfg(feature = "files")]
mod files;
mod messages;
mod migrations;
#[cfg(feature = "postgres")]
mod pg;
#[cfg(feature = "users")]
mod social;
#[cfg(feature = "users")]
mod users;
mod writer;

#[cfg(feature = "postgres")]
pub use pg::{PgBus, PgConfig, PgStore};
pub use writer::{CommitListener, StoreConfig};

use im_protocol::record::RecordError;
use parking_lot::Mutex;
use rusqlite::Connection;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite reported an error.
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// A stored record could not be decoded.
    #[error("corrupt record: {0}")]
    Record(#[from] RecordError),
    /// The data directory could not be used.
    #[error("data dir {path}: {source}")]
    Io {
        /// The directory.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The database was written by a newer version of this software.
    #[error("database schema version {found} is newer than this build understands ({known})")]
    TooNew {
        /// Version on disk.
        found: i64,
        /// Latest version this build knows.
        known: i64,
    },
    /// The writer thread is gone (shutdown or a fatal error).
    #[error("the store is closed")]
    Closed,
    /// A batch failed to commit; nothing in it was acknowledged.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The write breaks a rule of the data it changes (an edit of someone else's message, a
    /// reply to a message of another conversation); nothing was written. Clients get it.
    #[error("refused: {0}")]
    Refused(im_protocol::ApiError),
    /// A setting is unusable (for example a malformed database URL).
    #[error("{0}")]
    Config(String),
    /// PostgreSQL reported an error.
    #[cfg(feature = "postgres")]
    #[error("postgres: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    /// No PostgreSQL connection could be had.
    #[cfg(feature = "postgres")]
    #[error("postgres connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// The embedded SQLite store: implements the message, replay and user ports.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: flume::Sender<writer::Op>,
    readers: Mutex<Vec<Connection>>,
    /// One permit per reader connection: reads beyond them wait instead of opening more.
    reading: Arc<tokio::sync::Semaphore>,
    committed: Arc<AtomicU64>,
    listener: Arc<OnceLock<Arc<dyn CommitListener>>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.inner.path)
            .finish()
    }
}

/// The writer's page cache, in KiB (a negative `cache_size` is KiB in SQLite).
const CACHE_KIB: i64 = 64 * 1024;

/// A reader's page cache, in KiB: reads mostly touch recent pages, and every reader keeps
/// its cache for the life of the process.
const READER_CACHE_KIB: i64 = 8 * 1024;

/// The database file inside a data dir.
pub const DB_FILE: &str = "im.sqlite3";

impl SqliteStore {
    /// Writes waiting for the writer thread, for metrics.
    pub fn writer_queue(&self) -> usize {
        self.inner.writer.len()
    }

    /// Opens (creating if needed) the database in `dir`, runs migrations and starts the
    /// writer thread.
    pub fn open(dir: &Path, config: StoreConfig) -> Result<Self, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join(DB_FILE);
        let mut conn = open_conn(&path)?;
        migrations::run(&mut conn)?;
        let committed = Arc::new(AtomicU64::new(messages::head(&conn)?));
        let listener = Arc::new(OnceLock::new());
        let reading = Arc::new(tokio::sync::Semaphore::new(config.readers.max(1)));
        let writer = writer::start(conn, config, committed.clone(), listener.clone())?;
        Ok(Self {
            inner: Arc::new(Inner {
                path,
                writer,
                readers: Mutex::new(Vec::new()),
                reading,
                committed,
                listener,
            }),
        })
    }

    /// Sets who hears about committed messages (the consumer pool). Set it once, before
    /// the first message is appended; later calls are ignored.
    pub fn set_commit_listener(&self, listener: Arc<dyn CommitListener>) {
        let _ = self.inner.listener.set(listener);
    }

    /// The highest committed log position (messages and change records share them).
    pub fn committed_id(&self) -> u64 {
        self.inner.committed.load(Ordering::Acquire)
    }

    /// Runs `f` on a reader connection on the blocking pool, at most
    /// [`StoreConfig::readers`] at once.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let inner = self.inner.clone();
        let permit = inner
            .reading
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| StoreError::Commit(format!("reader pool: {e}")))?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let conn = match inner.readers.lock().pop() {
                Some(c) => c,
                None => {
                    let conn = open_conn(&inner.path)?;
                    conn.pragma_update(None, "cache_size", -READER_CACHE_KIB)?;
                    conn
                }
            };
            let out = f(&conn);
            inner.readers.lock().push(conn);
            out
        })
        .await
        .map_err(|e| StoreError::Commit(format!("reader task: {e}")))?
    }

    /// Runs `f` inside the writer's next transaction and answers after it commits.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        self.write_logged(move |conn, _| f(conn)).await
    }

    /// Like [`SqliteStore::write`], for writes that record changes in the ordered log.
    async fn write_logged<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection, &mut writer::ChangeLog<'_>) -> Result<T, StoreError>
        + Send
        + 'static,
    ) -> Result<T, StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let op = writer::Op::exec(f, tx);
        self.inner
            .writer
            .send_async(op)
            .await
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }
}

/// The other party of a conversation-list row: its group if it has one, else the peer user.
pub(crate) fn other_party(peer: Option<i64>, group: Option<i64>) -> im_protocol::Target {
    use im_protocol::{GroupId, Target, UserId};
    match (peer, group) {
        (_, Some(g)) => Target::Group(GroupId(g as u64)),
        (p, None) => Target::User(UserId(p.unwrap_or_default() as u64)),
    }
}

/// One row of the log as an entry: topic 0 is a message record, others are change records.
/// A topic this build does not know is skipped (a newer node wrote it), with a warning.
pub(crate) fn log_entry(
    pos: i64,
    topic: i64,
    record: Vec<u8>,
) -> Result<Option<im_cluster::LogEntry>, StoreError> {
    use im_cluster::{Entry, LogEntry, Topic};
    let entry = if topic == 0 {
        Entry::Message(im_protocol::record::MessageRecord::decode(&record)?)
    } else {
        match i16::try_from(topic).ok().and_then(Topic::from_code) {
            Some(topic) => Entry::Change {
                topic,
                record: bytes::Bytes::from(record),
            },
            None => {
                tracing::warn!(pos, topic, "skipping a log entry of an unknown topic");
                return Ok(None);
            }
        }
    };
    Ok(Some(LogEntry {
        pos: pos as u64,
        entry,
    }))
}

fn open_conn(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(std::time::Duration::from_secs(10))?;
    // WAL lets readers run beside the writer; FULL makes every commit durable (fsynced).
    conn.pragma_update(None, "journal_mode", "WAL")?;
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    // SQLite's default page cache (2 MiB) is soon smaller than the hot index pages; then every
    // insert reads pages back through read() and throughput sinks as the log grows.
    conn.pragma_update(None, "cache_size", -CACHE_KIB)?;
    // Checkpoint less often: dirty index pages then coalesce, instead of being copied back to
    // the database file (with an fsync) every 4 MiB of log.
    conn.pragma_update(None, "wal_autocheckpoint", 16_384)?;
    Ok(conn)
}
