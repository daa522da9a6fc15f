//! Amendments: edits and deletions of stored messages, decided against the message as the
//! log holds it. The store runs [`Pending::amend`] inside the transaction that writes the
//! result, so two amendments of one message can never both pass on the same old state.

use crate::Pending;
use im_protocol::{Amend, ApiError, ErrorCode, Message, MessageId, Quote};
use serde_json::Value;

/// An amendment on its way to the log: which message, what it does, and what the route
/// found the caller may do.
#[derive(Clone, Debug, PartialEq)]
pub struct Amendment {
    /// The message amended.
    pub target: MessageId,
    /// What happens to it. An edit's new body is the pending message's body, after the
    /// handler chain ran on it like on any message.
    pub change: Amend,
    /// The caller may delete other people's messages here (a group's owner or an admin).
    pub moderator: bool,
    /// An edit of a message older than this many milliseconds is refused; `None` allows any.
    pub edit_window_ms: Option<u64>,
}

/// What an amendment makes of the stored message.
#[derive(Clone, Debug, PartialEq)]
pub enum Applied {
    /// Write `target` over the stored message and append `entry`, the amendment's own log
    /// entry (its id is the position it was given).
    Changed {
        /// The message as it is now.
        target: Message,
        /// The log entry clients get as `message_edited` or `message_deleted`.
        entry: Message,
    },
    /// Nothing to write: deleting a message that is already deleted. `target` is the
    /// tombstone, answered as the first deletion was.
    Unchanged(Message),
}

impl Pending {
    /// Applies this pending amendment at log position `id` to `current`, the stored
    /// message it names (`None` if there is none). A refusal is the error clients get; a
    /// pending message that is no amendment is refused with 500, as a bug.
    pub fn amend(self, id: MessageId, current: Option<Message>) -> Result<Applied, ApiError> {
        let Some(amendment) = self.amend else {
            return Err(ApiError::new(ErrorCode::Internal, "not an amendment"));
        };
        let missing = || ApiError::new(ErrorCode::NoSuchMessage, "no such message");
        let mut target = current.ok_or_else(missing)?;
        if target.amends.is_some() || target.conversation != self.conversation {
            return Err(missing());
        }
        match amendment.change {
            Amend::Edit => {
                if target.deleted {
                    return Err(deleted());
                }
                if target.from != self.from {
                    return Err(ApiError::new(
                        ErrorCode::NotAuthor,
                        "only the sender may edit a message",
                    ));
                }
                if target.kind != "text" || self.kind != target.kind {
                    return Err(ApiError::new(
                        ErrorCode::NotEditable,
                        "only text messages can be edited",
                    ));
                }
                let age = self.sent_at.saturating_sub(target.sent_at);
                if amendment.edit_window_ms.is_some_and(|w| age > w) {
                    return Err(ApiError::new(
                        ErrorCode::EditWindowPassed,
                        "the message is too old to edit",
                    ));
                }
                target.body = self.body;
                target.edited_at = Some(self.sent_at);
            }
            Amend::Delete => {
                if target.deleted {
                    return Ok(Applied::Unchanged(target));
                }
                if target.from != self.from && !amendment.moderator {
                    return Err(ApiError::new(
                        ErrorCode::NotAuthor,
                        "only the sender, or a group's owner or admin, may delete a message",
                    ));
                }
                target.body = Value::Null;
                target.deleted = true;
            }
        }
        let entry = Message {
            amends: Some(target.id),
            ..Message::new(
                id,
                target.conversation.clone(),
                self.from,
                target.to,
                amendment.change.kind().to_owned(),
                serde_json::to_value(&target).unwrap_or(Value::Null),
                self.sent_at,
            )
        };
        Ok(Applied::Changed { target, entry })
    }
}

fn deleted() -> ApiError {
    ApiError::new(ErrorCode::MessageDeleted, "the message was deleted")
}

/// Brings a stored row that depends on `target` up to date after `target` changed: a reply
/// gets a fresh quote, and an earlier edit of a deleted message loses its body (deleted
/// bodies are gone from the store, edits included). Returns whether `row` changed.
pub fn follow(target: &Message, row: &mut Message) -> bool {
    if row.amends == Some(target.id) {
        if !target.deleted || row.body.get("deleted").is_some() {
            return false;
        }
        row.body = serde_json::to_value(target).unwrap_or(Value::Null);
        return true;
    }
    match &row.reply_to {
        Some(q) if q.id == target.id => {
            let quote = Quote::of(target);
            let changed = row.reply_to.as_deref() != Some(&quote);
            row.reply_to = Some(Box::new(quote));
            changed
        }
        _ => false,
    }
}

/// The quote a reply in `conversation` gets of `quoted`, the message it names
/// as stored now; a refusal if that message is not one it may quote.
pub fn quote(conversation: &str, quoted: Option<&Message>) -> Result<Quote, ApiError> {
    match quoted {
        Some(m) if m.amends.is_none() && m.conversation == conversation => {
            if m.deleted {
                Err(deleted())
            } else {
                Ok(Quote::of(m))
            }
        }
        _ => Err(ApiError::new(
            ErrorCode::NoSuchMessage,
            "`reply_to` names no message of this conversation",
        )),
    }
}
