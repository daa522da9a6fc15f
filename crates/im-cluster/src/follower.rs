//! The log follower: one per node, the only path from committed state to memory.

use crate::{Applier, Entry, LogEntry, LogReader, Position, Progress, Topic};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::watch;

/// Tuning of the [`Follower`].
#[derive(Debug, Clone, Copy)]
pub struct FollowerConfig {
    /// How often the head is read even with no wake-up, so a lost one costs at most this.
    pub poll: Duration,
    /// Entries read from the store at a time when filling a gap.
    pub read_batch: usize,
    /// Offers and wake-ups queued; when full, offers are dropped and the poll fills in.
    pub queue: usize,
    /// How long a writer waits for its own change to be applied before giving up.
    pub wait_limit: Duration,
}

impl Default for FollowerConfig {
    fn default() -> Self {
        Self {
            poll: Duration::from_millis(250),
            read_batch: 1000,
            queue: 4096,
            wait_limit: Duration::from_secs(10),
        }
    }
}

/// Applying has fallen behind (the store is unreachable, say); the request should fail
/// rather than act on old memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("this node is behind the log (applied {applied}, waiting for {wanted})")]
pub struct Lagging {
    /// Applied so far.
    pub applied: Position,
    /// The position waited for.
    pub wanted: Position,
}

/// Who applies what: one applier for messages, one per change topic.
#[derive(Default, Clone)]
pub struct Appliers {
    messages: Option<Arc<dyn Applier>>,
    topics: HashMap<Topic, Arc<dyn Applier>>,
}

impl Appliers {
    /// None yet; entries nobody applies are skipped.
    pub fn new() -> Self {
        Self::default()
    }

    /// Who gets committed messages (local delivery).
    pub fn messages(mut self, a: impl Applier) -> Self {
        self.messages = Some(Arc::new(a));
        self
    }

    /// Who applies the change records of `topic`.
    pub fn topic(mut self, topic: Topic, a: Arc<dyn Applier>) -> Self {
        self.topics.insert(topic, a);
        self
    }

    fn apply(&self, e: &LogEntry) {
        let who = match &e.entry {
            Entry::Message(_) => self.messages.as_ref(),
            Entry::Change { topic, .. } => self.topics.get(topic),
        };
        if let Some(a) = who {
            a.apply(e.pos, &e.entry);
        }
    }
}

enum Signal {
    /// Entries this node just committed, in position order.
    Offer(Vec<LogEntry>),
    /// The log is known to reach this far.
    Wake(Position),
    /// Read the head now.
    Poll,
}

/// Applies the ordered log to this node's memory, in position order, exactly once.
///
/// It runs on its own thread (`im-follower`), so appliers may block on delivery queues.
/// Entries come three ways: offered (by this node's writer after its commits, or from the
/// bus when another node's commit frame carries them), read from the store after a bare
/// wake-up, and read from the store when the periodic poll finds the head ahead. An offer that does not start right after what was applied first fills the
/// gap from the store.
pub struct Follower {
    signals: flume::Sender<Signal>,
    applied: Arc<watch::Sender<Position>>,
    started: Arc<AtomicU64>,
    reader: Arc<dyn LogReader>,
    config: FollowerConfig,
}

impl std::fmt::Debug for Follower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Follower")
            .field("applied", &self.applied())
            .finish()
    }
}

impl Follower {
    /// Starts following after position `from`: the head read *before* the caches loaded
    /// their snapshots, so nothing committed meanwhile is missed (re-applying is harmless).
    pub fn start(
        reader: Arc<dyn LogReader>,
        appliers: Appliers,
        from: Position,
        config: FollowerConfig,
    ) -> std::io::Result<Arc<Self>> {
        let (tx, rx) = flume::bounded(config.queue.max(1));
        let applied = Arc::new(watch::Sender::new(from));
        let started = Arc::new(AtomicU64::new(from));
        let worker = Worker {
            reader: reader.clone(),
            appliers,
            applied: applied.clone(),
            started: started.clone(),
            at: from,
            batch: config.read_batch.max(1),
        };
        let poll = config.poll;
        std::thread::Builder::new()
            .name("im-follower".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "the log follower cannot start a runtime");
                        return;
                    }
                };
                rt.block_on(worker.run(rx, poll));
            })?;
        Ok(Arc::new(Self {
            signals: tx,
            applied,
            started,
            reader,
            config,
        }))
    }

    /// Hands over committed entries, in position order: this node's own after each commit,
    /// or another node's from the bus. Never blocks: if the queue is full they are dropped
    /// and read back from the store.
    pub fn offer(&self, entries: Vec<LogEntry>) {
        if let Err(flume::TrySendError::Full(Signal::Offer(e))) =
            self.signals.try_send(Signal::Offer(entries))
        {
            let head = e.last().map_or(0, |e| e.pos);
            let _ = self.signals.try_send(Signal::Wake(head));
        }
    }

    /// The log reaches at least `head` (a wake-up from another node).
    pub fn wake(&self, head: Position) {
        if head > self.applied() {
            let _ = self.signals.try_send(Signal::Wake(head));
        }
    }

    /// Reads the head at once (after a bus reconnect: anything may have been missed).
    pub fn poll_now(&self) {
        let _ = self.signals.try_send(Signal::Poll);
    }

    /// The highest position whose applying has begun. Every later entry is applied, its
    /// message handed to delivery, after this is read, so a stream registered before reading
    /// it gets every later message live. [`Progress::applied`] is no such bound: it moves
    /// after a whole batch, so entries of the batch under way are already delivered.
    pub fn started(&self) -> Position {
        self.started.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl Progress for Follower {
    fn applied(&self) -> Position {
        *self.applied.borrow()
    }

    async fn wait_applied(&self, pos: Position) -> Result<(), Lagging> {
        let mut rx = self.applied.subscribe();
        let lagging = || Lagging {
            applied: *self.applied.borrow(),
            wanted: pos,
        };
        match tokio::time::timeout(self.config.wait_limit, rx.wait_for(|a| *a >= pos)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(lagging()),
        }
    }

    async fn catch_up(&self) -> Result<(), Lagging> {
        let head = self.reader.head().await.map_err(|e| {
            tracing::warn!(error = %e, "cannot read the log head");
            Lagging {
                applied: self.applied(),
                wanted: 0,
            }
        })?;
        self.wake(head);
        self.wait_applied(head).await
    }
}

struct Worker {
    reader: Arc<dyn LogReader>,
    appliers: Appliers,
    applied: Arc<watch::Sender<Position>>,
    started: Arc<AtomicU64>,
    at: Position,
    batch: usize,
}

impl Worker {
    async fn run(mut self, rx: flume::Receiver<Signal>, poll: Duration) {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + poll, poll);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let signal = tokio::select! {
                s = rx.recv_async() => match s {
                    Ok(s) => s,
                    Err(_) => return, // the Follower is gone
                },
                _ = tick.tick() => Signal::Poll,
            };
            match signal {
                Signal::Offer(entries) => self.offered(entries).await,
                Signal::Wake(head) => self.fill(head).await,
                Signal::Poll => match self.reader.head().await {
                    Ok(head) => self.fill(head).await,
                    Err(e) => tracing::warn!(error = %e, "cannot read the log head"),
                },
            }
        }
    }

    async fn offered(&mut self, entries: Vec<LogEntry>) {
        for e in entries {
            if e.pos <= self.at {
                continue;
            }
            if e.pos > self.at + 1 {
                self.fill(e.pos - 1).await;
                if self.at + 1 != e.pos {
                    // The store could not be read; the poll will bring the rest.
                    return;
                }
            }
            self.apply(&e);
        }
        self.publish();
    }

    /// Applies everything up to `head` from the store.
    async fn fill(&mut self, head: Position) {
        while self.at < head {
            match self.reader.read(self.at, head, self.batch).await {
                Ok(entries) => {
                    let complete = entries.len() < self.batch;
                    for e in &entries {
                        if e.pos > self.at {
                            self.apply(e);
                        }
                    }
                    if complete {
                        // Positions the store does not hold at or below a committed head will
                        // never exist.
                        self.at = head;
                    }
                    self.publish();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the log; retrying at the next poll");
                    return;
                }
            }
        }
    }

    /// Applies one entry, announcing it as started first (see [`Follower::started`]).
    fn apply(&mut self, e: &LogEntry) {
        self.started.store(e.pos, Ordering::SeqCst);
        self.appliers.apply(e);
        self.at = e.pos;
    }

    fn publish(&self) {
        self.applied.send_if_modified(|a| {
            let moved = *a != self.at;
            *a = self.at;
            moved
        });
    }
}

#[cfg(test)]
mod tests;
