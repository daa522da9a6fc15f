//! The `Bus` port: frames between nodes, and the node's end of it ([`Link`]).

use crate::Position;
use crate::wire::{NodeId, Signal, encode_committed};
use bytes::Bytes;
use im_protocol::UserId;
use parking_lot::Mutex;
use std::sync::Arc;

/// An ephemeral event (typing, presence, read receipt, friend or group notice) for some
/// users, as the SSE frame to give their streams. It is not in the log: a node that holds no
/// stream of these users drops it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ephemeral {
    /// Who should see it.
    pub users: Vec<UserId>,
    /// The encoded SSE frame (UTF-8 text).
    pub frame: Bytes,
}

/// Where a bus delivers what other nodes sent.
pub trait Inbound: Send + Sync + 'static {
    /// A frame another node sent (possibly this node's own; [`Link::open`] sorts that out).
    fn frame(&self, frame: Bytes);
    /// Another node committed up to `head`, told by the store itself (PostgreSQL `NOTIFY`
    /// inside the commit) rather than in a frame.
    fn head(&self, head: Position);
    /// The bus lost its connection and has it back: anything may have been missed.
    fn reconnected(&self);
}

/// The port between nodes: best-effort, at-most-once frames from one node to all others.
///
/// A bus may lose, but must not corrupt or split frames, and frames one node sends arrive in
/// the order it sent them. Whatever it loses the follower reads from the store, so a bus
/// adapter needs no retries of its own. The default, [`LocalBus`], is a single process's.
pub trait Bus: Send + Sync + 'static {
    /// Sends a frame to every other node; never blocks (a full queue drops it).
    fn send(&self, frame: Bytes);
    /// Starts delivering what other nodes send to `inbound`.
    fn start(&self, inbound: Arc<dyn Inbound>);
    /// Whether the store's commits wake the other nodes by themselves (PostgreSQL `NOTIFY`
    /// inside the commit), so the node need not send [`Signal::Committed`] frames.
    fn wakes_with_commits(&self) -> bool {
        false
    }
    /// The largest frame it carries; a larger one is trimmed or dropped by [`Link`].
    fn max_frame(&self) -> usize {
        usize::MAX
    }
    /// Whether it is connected now, for readiness checks.
    fn connected(&self) -> bool {
        true
    }
    /// The adapter's name, for logs and readiness answers.
    fn name(&self) -> &'static str;
    /// Whether anyone else can hear it; a one-process bus cannot, so nothing is encoded
    /// for it.
    fn reaches_others(&self) -> bool {
        true
    }
}

/// The bus of a deployment of one process: nothing to wake, nobody to tell.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalBus;

impl Bus for LocalBus {
    fn send(&self, _: Bytes) {}
    fn start(&self, _: Arc<dyn Inbound>) {}
    fn name(&self) -> &'static str {
        "local"
    }
    fn reaches_others(&self) -> bool {
        false
    }
}

/// A bus between several nodes in one process: for tests, and for embedding more than one
/// node in a binary. Every [`MemoryBus`] made from one hub hears the others.
#[derive(Clone, Default)]
pub struct MemoryHub {
    ears: Arc<Mutex<Vec<Arc<dyn Inbound>>>>,
}

impl std::fmt::Debug for MemoryHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryHub")
            .field("nodes", &self.ears.lock().len())
            .finish()
    }
}

impl MemoryHub {
    /// A hub with no node yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// One node's bus on this hub.
    pub fn bus(&self) -> MemoryBus {
        MemoryBus { hub: self.clone() }
    }
}

/// One node's end of a [`MemoryHub`]; frames are delivered on the sender's thread, to the
/// sender too.
#[derive(Debug, Clone)]
pub struct MemoryBus {
    hub: MemoryHub,
}

impl Bus for MemoryBus {
    fn send(&self, frame: Bytes) {
        let ears = self.hub.ears.lock().clone();
        for ear in ears {
            ear.frame(frame.clone());
        }
    }

    fn start(&self, inbound: Arc<dyn Inbound>) {
        self.hub.ears.lock().push(inbound.clone());
        inbound.reconnected();
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

/// This node's end of the bus: stamps what it sends with the node's id, keeps frames within
/// the bus's size, and drops what the node itself sent when it comes back.
#[derive(Clone)]
pub struct Link {
    bus: Arc<dyn Bus>,
    node: NodeId,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link")
            .field("bus", &self.bus.name())
            .field("node", &self.node)
            .finish()
    }
}

impl Default for Link {
    fn default() -> Self {
        Self::new(Arc::new(LocalBus), NodeId::random())
    }
}

impl Link {
    /// This node (`node`) on `bus`.
    pub fn new(bus: Arc<dyn Bus>, node: NodeId) -> Self {
        Self { bus, node }
    }

    /// Whether other nodes can hear this one (false for a one-process bus).
    pub fn reaches_others(&self) -> bool {
        self.bus.reaches_others()
    }

    /// This node's id.
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The bus underneath.
    pub fn bus(&self) -> &Arc<dyn Bus> {
        &self.bus
    }

    /// Sends `signal` to the other nodes. A commit too large for the bus goes out as its head
    /// alone (the others read the entries from the store); anything else too large is
    /// dropped with a warning, since ephemeral news is best effort.
    pub fn send(&self, signal: &Signal) {
        if !self.bus.reaches_others() {
            return;
        }
        if let Signal::Committed { head, entries } = signal {
            return self.wake(*head, entries);
        }
        match signal.encode(self.node) {
            Ok(f) if f.len() <= self.bus.max_frame() => self.bus.send(f),
            Ok(f) => tracing::warn!(
                bytes = f.len(),
                bus = self.bus.name(),
                "a bus frame is too large for the bus; dropped"
            ),
            Err(e) => tracing::warn!(error = %e, "cannot encode a bus frame"),
        }
    }

    /// Tells the other nodes what this node just committed, unless the store's commits
    /// already wake them.
    pub fn committed(&self, entries: &[crate::LogEntry]) {
        let Some(last) = entries.last() else { return };
        if self.bus.reaches_others() && !self.bus.wakes_with_commits() {
            self.wake(last.pos, entries);
        }
    }

    fn wake(&self, head: Position, entries: &[crate::LogEntry]) {
        let frame = match encode_committed(self.node, head, entries) {
            Ok(f) if f.len() <= self.bus.max_frame() => f,
            // Too large: the head alone, and the others read the entries from the store.
            _ => match encode_committed(self.node, head, &[]) {
                Ok(f) => f,
                Err(e) => return tracing::warn!(error = %e, "cannot encode a wake-up"),
            },
        };
        self.bus.send(frame);
    }

    /// Decodes a frame from the bus; `None` for this node's own frames and for bytes that
    /// are not a frame (logged).
    pub fn open(&self, frame: &[u8]) -> Option<(NodeId, Signal)> {
        match Signal::decode(frame) {
            Ok((from, _)) if from == self.node => None,
            Ok(got) => Some(got),
            Err(e) => {
                tracing::warn!(error = %e, "ignoring an undecodable bus frame");
                None
            }
        }
    }
}
