#![doc = include_str!("../README.md")]
//!
//! A [`Channel`] is an ordered chain of [`Handler`]s. A [`ChannelGroup`] runs one channel on
//! N shards; a message goes to the shard of its conversation, so order holds per
//! conversation while different conversations use different cores. The last step of every
//! chain hands the message to the [`MessageLog`] port, which makes it durable and reports the
//! one [`Outcome`] back to the sender.

mod amend;
mod group;
mod log;
mod recent;

pub use amend::{Amendment, Applied, Change, ReactionState, follow, quote};
pub use group::{ChannelGroup, ChannelGroupConfig, Submitted};
pub use log::{ConversationSummary, LogError, MessageHistory, MessageLog, Reply};
pub use recent::RecentClientIds;

use im_protocol::{ApiError, Message, MessageId, Target, UserId};
use serde_json::Value;
use std::sync::Arc;

/// A message on its way through a handler chain: handlers may read and rewrite it.
#[derive(Clone, Debug, PartialEq)]
pub struct Pending {
    /// The authenticated sender.
    pub from: UserId,
    /// The recipient.
    pub to: Target,
    /// The classified kind.
    pub kind: String,
    /// The body; handlers may rewrite it (e.g. mask words).
    pub body: Value,
    /// The sender's idempotency key.
    pub client_id: Option<String>,
    /// The conversation key, which picks the shard.
    pub conversation: String,
    /// Unix milliseconds when the server accepted the message.
    pub sent_at: u64,
    /// The message this one replies to; the log quotes it as stored when it writes.
    pub reply_to: Option<MessageId>,
    /// Set for an amendment of a stored message (an edit or a deletion) instead of a new one.
    pub amend: Option<Box<Amendment>>,
}

impl Pending {
    /// A new message (no reply, no amendment) from `from` to `to`, accepted now.
    pub fn new(from: UserId, to: Target, kind: impl Into<String>, body: Value) -> Self {
        Self {
            from,
            to,
            kind: kind.into(),
            body,
            client_id: None,
            conversation: im_protocol::conversation_of(from, to),
            sent_at: im_protocol::now_millis(),
            reply_to: None,
            amend: None,
        }
    }

    /// The stored message this becomes once the log assigns `id`; a reply's quote is the
    /// log's to fill in.
    pub fn into_message(self, id: MessageId) -> Message {
        Message {
            client_id: self.client_id,
            ..Message::new(
                id,
                self.conversation,
                self.from,
                self.to,
                self.kind,
                self.body,
                self.sent_at,
            )
        }
    }
}

/// A [`MessageLog`] that keeps nothing: ids from a counter, every message "stored" at once.
/// For tests, benchmarks and demos of handler chains without a store.
#[derive(Debug, Default)]
pub struct MemoryLog(std::sync::atomic::AtomicU64);

impl MessageLog for MemoryLog {
    fn append(&self, msg: Pending, reply: Reply) {
        let id = self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        reply.send(Outcome::Stored(msg.into_message(MessageId(id))));
    }
}

/// The single outcome of every submitted message.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// Durable, with its assigned id (201).
    Stored(Message),
    /// The same sender already sent this `client_id`; this is the first message (200).
    Duplicate(Message),
    /// A handler refused it; nothing was stored (4xx with the handler's code).
    Rejected(ApiError),
    /// The store failed; nothing was acknowledged (500).
    Failed(im_protocol::Cause),
}

/// The IoC point: applications plug filters, bots, transforms and moderation into channels.
///
/// Handlers run on a shard's dispatcher thread, in order, one message at a time per shard.
/// They must be quick and must not block: do slow work elsewhere (a bot can post its reply
/// through the API). Returning an error rejects the message and ends the chain.
pub trait Handler: Send + Sync + 'static {
    /// A short name for logs.
    fn name(&self) -> &str {
        std::any::type_name::<Self>()
    }

    /// Inspects or rewrites `msg`, or rejects it with a 4xx [`ApiError`].
    fn handle(&self, msg: &mut Pending) -> Result<(), ApiError>;
}

impl<F> Handler for F
where
    F: Fn(&mut Pending) -> Result<(), ApiError> + Send + Sync + 'static,
{
    fn handle(&self, msg: &mut Pending) -> Result<(), ApiError> {
        self(msg)
    }
}

/// An ordered handler chain.
#[derive(Clone, Default)]
pub struct Channel {
    handlers: Vec<Arc<dyn Handler>>,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.handlers.iter().map(|h| h.name()))
            .finish()
    }
}

impl Channel {
    /// An empty chain: messages go straight to the log.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a handler to the chain.
    pub fn with(mut self, handler: impl Handler) -> Self {
        self.handlers.push(Arc::new(handler));
        self
    }

    /// Appends an already shared handler.
    pub fn with_arc(mut self, handler: Arc<dyn Handler>) -> Self {
        self.handlers.push(handler);
        self
    }

    /// Runs the chain; the first rejection stops it.
    pub fn run(&self, msg: &mut Pending) -> Result<(), ApiError> {
        self.handlers.iter().try_for_each(|h| h.handle(msg))
    }
}
