use crate::{Outcome, Pending};
use async_trait::async_trait;
use im_protocol::{Message, MessageId, Target, UserId};
use tokio::sync::oneshot;

/// The store failed to read or write messages; the store's own error is its source.
#[derive(Debug, Clone, thiserror::Error)]
#[error("message log: {0}")]
pub struct LogError(#[source] pub im_protocol::Cause);

impl From<LogError> for im_protocol::ApiError {
    fn from(e: LogError) -> Self {
        im_protocol::ApiError::new(im_protocol::ErrorCode::Internal, "storage failure").caused_by(e)
    }
}

/// Where a message's one [`Outcome`] goes; sending is a no-op if the sender has gone away.
///
/// A reply dropped without an answer (a queue torn down, a batch abandoned) answers
/// `Outcome::Failed` by itself, so no sender ever waits without an outcome.
#[derive(Debug)]
pub struct Reply(Option<oneshot::Sender<Outcome>>);

impl Drop for Reply {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(Outcome::Failed(
                "the message was abandoned before it was stored".into(),
            ));
        }
    }
}

impl Reply {
    /// A reply channel and the receiver the sender awaits.
    pub fn channel() -> (Self, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        (Self(Some(tx)), rx)
    }

    /// A reply nobody waits for (messages injected by the server itself).
    pub fn none() -> Self {
        Self(None)
    }

    /// Delivers the outcome.
    pub fn send(mut self, outcome: Outcome) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(outcome);
        }
    }
}

/// The port at the end of every handler chain: makes messages durable and assigns ids.
///
/// Implementations must assign increasing ids in the order `append` is called, call `reply`
/// exactly once and only after the message is durable, and announce committed messages to
/// delivery in id order.
pub trait MessageLog: Send + Sync + 'static {
    /// Queues `msg` for a durable append. May block briefly when the writer is saturated,
    /// which is the backpressure that ends in a 503 at the channel queue.
    fn append(&self, msg: Pending, reply: Reply);
}

/// One row of `GET /conversations`.
#[derive(Debug, Clone, PartialEq)]
pub struct ConversationSummary {
    /// The conversation key.
    pub conversation: String,
    /// The other party: a user for direct chats, the group otherwise.
    pub with: Target,
    /// The newest message.
    pub last_message: Message,
    /// Messages from others after the user's read position.
    pub unread: u64,
}

/// Read side of the message log: history and conversation lists.
#[async_trait]
pub trait MessageHistory: Send + Sync + 'static {
    /// The newest `limit` messages of `conversation` with id < `before`, ascending by id.
    async fn history(
        &self,
        conversation: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, LogError>;

    /// The message with this id as it is now (edited, deleted), or `None`: no such id, or it
    /// is an amendment's log entry, not a message.
    async fn message(&self, id: MessageId) -> Result<Option<Message>, LogError>;

    /// The reactions of `messages` as `reader` sees them: one entry per message and emoji
    /// that has any, most used first within a message.
    async fn reactions(
        &self,
        messages: &[MessageId],
        reader: UserId,
    ) -> Result<Vec<(MessageId, im_protocol::Reaction)>, LogError>;

    /// The user's conversations with messages, newest activity first.
    async fn conversations(&self, user: UserId) -> Result<Vec<ConversationSummary>, LogError>;

    /// The message `from` already sent with `client_id`, if any: a retry is answered with it
    /// before any handler runs, so a retry stays a 200 even if the handlers would now refuse.
    async fn by_client_id(
        &self,
        from: UserId,
        client_id: &str,
    ) -> Result<Option<Message>, LogError>;

    /// Moves the user's read position in a conversation forward (never back, never past its
    /// newest message) and returns the position now stored.
    async fn mark_read(
        &self,
        user: UserId,
        conversation: &str,
        up_to: MessageId,
    ) -> Result<MessageId, LogError>;
}
