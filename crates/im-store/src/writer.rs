//! The single writer thread and its group commit.

use crate::{StoreError, messages};
use bytes::Bytes;
use im_channel::{Outcome, Pending, Reply};
use im_cluster::{Entry, LogEntry, Position, Topic};
use rusqlite::{Connection, params};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use tokio::sync::oneshot;

/// Hears about every committed log entry, in position order (this node's log follower).
pub trait CommitListener: Send + Sync + 'static {
    /// Called by the writer right after each commit with the batch's entries; must not block.
    fn committed(&self, entries: Vec<LogEntry>);
}

impl<F: Fn(Vec<LogEntry>) + Send + Sync + 'static> CommitListener for F {
    fn committed(&self, entries: Vec<LogEntry>) {
        self(entries)
    }
}

/// The change records one write makes, with positions from the writer's counter, in the
/// same transaction as the write.
#[cfg_attr(not(any(feature = "users", feature = "files")), allow(dead_code))]
pub(crate) struct ChangeLog<'a> {
    next: &'a mut Position,
    entries: &'a mut Vec<LogEntry>,
}

#[cfg_attr(not(any(feature = "users", feature = "files")), allow(dead_code))]
impl ChangeLog<'_> {
    /// Records one change; returns its position.
    pub(crate) fn record(
        &mut self,
        conn: &Connection,
        topic: Topic,
        record: Vec<u8>,
    ) -> Result<Position, StoreError> {
        let pos = *self.next;
        conn.prepare_cached("INSERT INTO changes (pos, topic, record) VALUES (?1, ?2, ?3)")?
            .execute(params![pos as i64, topic.code(), &record])?;
        *self.next += 1;
        self.entries.push(LogEntry {
            pos,
            entry: Entry::Change {
                topic,
                record: Bytes::from(record),
            },
        });
        Ok(pos)
    }
}

/// Tuning of the writer.
#[derive(Debug, Clone, Copy)]
pub struct StoreConfig {
    /// Operations queued for the writer before appenders wait.
    pub queue: usize,
    /// The most operations committed in one transaction.
    pub batch: usize,
    /// Reader connections, and so reads running at once; more wait their turn. Each keeps
    /// its own page cache, so this bounds the memory reads hold.
    pub readers: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            queue: 8192,
            batch: 1024,
            readers: 4,
        }
    }
}

/// Runs after the batch's commit with its result.
type Finish = Box<dyn FnOnce(Result<(), &StoreError>, &Ctx) + Send>;

/// Runs inside the transaction; returns whether it succeeded and what to do after commit.
type Exec = Box<dyn FnOnce(&Connection, &mut ChangeLog<'_>) -> (bool, Finish) + Send>;

pub(crate) enum Op {
    Append(Pending, Reply),
    Exec(Exec),
}

impl Op {
    /// An operation whose result is sent to `tx` once the batch is committed.
    pub(crate) fn exec<T: Send + 'static>(
        f: impl FnOnce(&Connection, &mut ChangeLog<'_>) -> Result<T, StoreError> + Send + 'static,
        tx: oneshot::Sender<Result<T, StoreError>>,
    ) -> Self {
        Op::Exec(Box::new(move |conn, log| {
            let result = f(conn, log);
            let ok = result.is_ok();
            let finish: Finish = Box::new(move |commit, _| {
                let _ = tx.send(match commit {
                    Ok(()) => result,
                    Err(e) => Err(StoreError::Commit(e.to_string())),
                });
            });
            (ok, finish)
        }))
    }
}

pub(crate) struct Ctx {
    listener: Arc<OnceLock<Arc<dyn CommitListener>>>,
}

impl Ctx {
    fn announce(&self, entries: Vec<LogEntry>) {
        if let (Some(l), false) = (self.listener.get(), entries.is_empty()) {
            l.committed(entries);
        }
    }
}

pub(crate) fn start(
    conn: Connection,
    config: StoreConfig,
    committed: Arc<AtomicU64>,
    listener: Arc<OnceLock<Arc<dyn CommitListener>>>,
) -> Result<flume::Sender<Op>, StoreError> {
    let (tx, rx) = flume::bounded(config.queue.max(1));
    let ctx = Ctx { listener };
    std::thread::Builder::new()
        .name("im-store-writer".into())
        .spawn(move || run(conn, rx, config.batch.max(1), committed, ctx))
        .map_err(|source| StoreError::Io {
            path: "writer thread".into(),
            source,
        })?;
    Ok(tx)
}

fn run(
    conn: Connection,
    rx: flume::Receiver<Op>,
    batch_max: usize,
    committed: Arc<AtomicU64>,
    ctx: Ctx,
) {
    let mut next_id = committed.load(Ordering::Acquire) + 1;
    let mut batch = Vec::with_capacity(batch_max);
    let metrics = crate::commits::CommitMetrics::new("sqlite");
    while let Ok(first) = rx.recv() {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let (started, ops) = (std::time::Instant::now(), batch.len());
        let start_id = next_id;
        let mut finishers: Vec<Finish> = Vec::with_capacity(batch.len());
        let mut entries: Vec<LogEntry> = Vec::new();
        let result = (|| -> Result<(), StoreError> {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            for op in batch.drain(..) {
                // Prepared once: parsing these two for every op cost more than running them.
                conn.prepare_cached("SAVEPOINT op")?.execute([])?;
                let (mark, len) = (next_id, entries.len());
                let (ok, finish) = match op {
                    Op::Append(msg, reply) => append(&conn, &mut next_id, &mut entries, msg, reply),
                    Op::Exec(f) => f(
                        &conn,
                        &mut ChangeLog {
                            next: &mut next_id,
                            entries: &mut entries,
                        },
                    ),
                };
                if ok {
                    conn.prepare_cached("RELEASE op")?.execute([])?;
                } else {
                    // A refused write gives its positions back.
                    next_id = mark;
                    entries.truncate(len);
                    conn.execute_batch("ROLLBACK TO op; RELEASE op")?;
                }
                finishers.push(finish);
            }
            conn.execute_batch("COMMIT")?;
            Ok(())
        })();
        metrics.record(started, ops, result.is_ok());
        match &result {
            Ok(()) => {
                committed.store(next_id - 1, Ordering::Release);
                ctx.announce(entries);
            }
            Err(e) => {
                tracing::error!(error = %e, "batch commit failed; nothing in it was acknowledged");
                let _ = conn.execute_batch("ROLLBACK");
                next_id = start_id;
            }
        }
        // Ops drained but not run (an early error) are dropped, and their senders see that.
        batch.clear();
        for finish in finishers {
            finish(result.as_ref().map(|_| ()), &ctx);
        }
    }
}

/// Appends one message, or finds the first one with the same `client_id`.
fn append(
    conn: &Connection,
    next_id: &mut u64,
    entries: &mut Vec<LogEntry>,
    msg: Pending,
    reply: Reply,
) -> (bool, Finish) {
    let result = messages::insert(conn, *next_id, msg);
    let ok = result.is_ok();
    if let Ok((m, true)) = &result {
        entries.push(LogEntry {
            pos: *next_id,
            entry: Entry::Message(m.clone()),
        });
        *next_id += 1;
    }
    let finish: Finish = Box::new(move |commit, _| match (commit, result) {
        (Ok(()), Ok((m, true))) => reply.send(Outcome::Stored(m)),
        (Ok(()), Ok((m, false))) => reply.send(Outcome::Duplicate(m)),
        (Err(e), _) => reply.send(Outcome::Failed(im_protocol::Cause::new(e.to_string()))),
        (_, Err(StoreError::Refused(e))) => reply.send(Outcome::Rejected(e)),
        (_, Err(e)) => {
            tracing::error!(error = %e, "append failed");
            reply.send(Outcome::Failed(im_protocol::Cause::new(e)))
        }
    });
    (ok, finish)
}
