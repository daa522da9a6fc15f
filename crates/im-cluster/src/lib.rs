#![doc = include_str!("../README.md")]
//!
//! Invariants:
//! - Every committed change reaches memory through the [`Follower`], strictly in position
//!   order, exactly once per node, on the node that wrote it too.
//! - A wake-up is only a hint. Whatever the bus loses, duplicates or reorders, the follower
//!   reads the gap from the store ([`LogReader`]), and it also polls the head, so a lost
//!   wake-up costs latency, never a change.

mod bus;
mod follower;
mod wire;

pub use bus::{Bus, Ephemeral, Inbound, Link, LocalBus, MemoryBus, MemoryHub};
pub use follower::{Appliers, Follower, FollowerConfig, Lagging};
pub use wire::{NodeId, PresenceNews, Signal, WireError};

use async_trait::async_trait;
use bytes::Bytes;
use im_protocol::Message;
pub use im_protocol::record::Topic;

/// A position in the deployment's one ordered log. A message's id is its position.
pub type Position = u64;

/// What a committed position holds.
#[derive(Debug, Clone, PartialEq)]
pub enum Entry {
    /// A durable message, to hand to local delivery.
    Message(Message),
    /// Any other shared change, encoded by the domain crate that owns `topic`.
    Change {
        /// Whose record it is.
        topic: Topic,
        /// The record's bytes.
        record: Bytes,
    },
}

/// One committed entry and its position.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEntry {
    /// Its position.
    pub pos: Position,
    /// What it holds.
    pub entry: Entry,
}

/// A write's result and the log position its change record took, so the writer can wait
/// until its own node has applied it (read-your-writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Logged<T> {
    /// The result (an id, say).
    pub value: T,
    /// The position of the change record; 0 if the write recorded none.
    pub pos: Position,
}

/// The store failed to read the log.
#[derive(Debug, Clone, thiserror::Error)]
#[error("log: {0}")]
pub struct LogReadError(pub String);

/// The port the follower reads the log through; every store adapter implements it.
#[async_trait]
pub trait LogReader: Send + Sync + 'static {
    /// The highest committed position: every position at or below it is visible or will
    /// never exist.
    async fn head(&self) -> Result<Position, LogReadError>;
    /// Entries with `after < pos <= up_to`, ascending, at most `limit` of them.
    async fn read(
        &self,
        after: Position,
        up_to: Position,
        limit: usize,
    ) -> Result<Vec<LogEntry>, LogReadError>;
}

/// Applies committed entries to one node's memory. Called on the follower's thread, in
/// position order; it may block briefly (delivery backpressure), never on I/O.
pub trait Applier: Send + Sync + 'static {
    /// Applies one entry; it must be idempotent, since start-up may apply an entry its
    /// snapshot already holds.
    fn apply(&self, pos: Position, entry: &Entry);
}

impl<F: Fn(Position, &Entry) + Send + Sync + 'static> Applier for F {
    fn apply(&self, pos: Position, entry: &Entry) {
        self(pos, entry)
    }
}

/// Lets a domain wait until this node has applied its own write.
#[async_trait]
pub trait Progress: Send + Sync + 'static {
    /// The highest position applied to memory on this node.
    fn applied(&self) -> Position;
    /// Waits until `pos` is applied here; [`Lagging`] if that takes unreasonably long.
    async fn wait_applied(&self, pos: Position) -> Result<(), Lagging>;
    /// Waits until everything committed anywhere before this call is applied here, so a
    /// request does not act on memory older than what its client already saw succeed.
    async fn catch_up(&self) -> Result<(), Lagging>;
}
