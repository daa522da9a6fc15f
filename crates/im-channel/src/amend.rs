//! Amendments: edits, deletions and reactions of stored messages, decided against the message as the
//! log holds it. The store runs [`Pending::amend`] inside the transaction that writes the
//! result, so two amendments of one message can never both pass on the same old state.

use crate::Pending;
use im_protocol::{
    Amend, ApiError, ErrorCode, Message, MessageId, Quote, Reaction, Target, UserId,
};
use serde_json::Value;

/// What an amendment does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// Replace the body: the pending message's body, after the handler chain ran on it like
    /// on any message.
    Edit,
    /// Delete the message.
    Delete,
    /// Add (`add`) or take back the sender's reaction with `emoji`.
    React {
        /// The emoji.
        emoji: String,
        /// Add it, else take it back.
        add: bool,
    },
}

/// The reactions a message holds, as the store found them, for deciding a [`Change::React`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReactionState {
    /// The sender has reacted with this emoji.
    pub mine: bool,
    /// How many users have reacted with this emoji.
    pub count: u64,
    /// How many different emoji the message holds.
    pub kinds: usize,
}

/// An amendment on its way to the log: which message, what it does, and what the route
/// found the caller may do.
#[derive(Clone, Debug, PartialEq)]
pub struct Amendment {
    /// The message amended.
    pub target: MessageId,
    /// What happens to it.
    pub change: Change,
    /// The caller may delete other people's messages here (a group's owner or an admin).
    pub moderator: bool,
    /// An edit of a message older than this many milliseconds is refused; `None` allows any.
    pub edit_window_ms: Option<u64>,
}

impl Amendment {
    /// An amendment of `target` by a caller who moderates nothing, with no edit window.
    pub fn new(target: MessageId, change: Change) -> Self {
        Self {
            target,
            change,
            moderator: false,
            edit_window_ms: None,
        }
    }
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
    /// A reaction added or taken back: write the reaction row (`add`, else remove it) and
    /// append `entry`, whose body is the `reaction` event's data.
    Reacted {
        /// The log entry clients get as `reaction`.
        entry: Message,
        /// The emoji.
        emoji: String,
        /// Added, else taken back.
        add: bool,
    },
    /// Nothing to write: deleting a deleted message (the tombstone, answered as the first
    /// deletion was), or adding a reaction one has already made, or taking back one not made
    /// (an entry-shaped message that is not stored, with the reaction as it stands).
    Unchanged(Message),
}

impl Pending {
    /// Applies this pending amendment at log position `id` to `current`, the stored
    /// message it names (`None` if there is none). A refusal is the error clients get; a
    /// pending message that is no amendment is refused with 500, as a bug.
    pub fn amend(
        self,
        id: MessageId,
        current: Option<Message>,
        reactions: ReactionState,
    ) -> Result<Applied, ApiError> {
        let Some(amendment) = self.amend.map(|a| *a) else {
            return Err(ApiError::new(ErrorCode::Internal, "not an amendment"));
        };
        let missing = || ApiError::new(ErrorCode::NoSuchMessage, "no such message");
        let mut target = current.ok_or_else(missing)?;
        if target.amends.is_some() || target.conversation != self.conversation {
            return Err(missing());
        }
        let kind = match amendment.change {
            Change::React { emoji, add } => {
                return react(self.from, self.sent_at, id, &target, emoji, add, reactions);
            }
            Change::Edit => {
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
                Amend::Edit
            }
            Change::Delete => {
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
                Amend::Delete
            }
        };
        let entry = Message {
            amends: Some(target.id),
            ..Message::new(
                id,
                target.conversation.clone(),
                self.from,
                addressee(self.from, &target),
                kind.kind().to_owned(),
                serde_json::to_value(&target).unwrap_or(Value::Null),
                self.sent_at,
            )
        };
        Ok(Applied::Changed { target, entry })
    }
}

/// Decides a reaction: `target` is the stored message (not an amendment, of the right
/// conversation), `state` its reactions as stored.
fn react(
    from: UserId,
    at: u64,
    id: MessageId,
    target: &Message,
    emoji: String,
    add: bool,
    state: ReactionState,
) -> Result<Applied, ApiError> {
    if target.deleted {
        return Err(deleted());
    }
    if add && !state.mine && state.count == 0 && state.kinds >= Reaction::MAX_KINDS {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "a message holds at most {} different reactions",
                Reaction::MAX_KINDS
            ),
        ));
    }
    let changes = add != state.mine;
    let count = match (changes, add) {
        (false, _) => state.count,
        (true, true) => state.count + 1,
        (true, false) => state.count.saturating_sub(1),
    };
    let body = serde_json::json!({
        "message": target.id,
        "conversation": target.conversation,
        "emoji": emoji,
        "user": from,
        "added": add,
        "count": count,
    });
    let entry = Message {
        amends: Some(target.id),
        ..Message::new(
            id,
            target.conversation.clone(),
            from,
            addressee(from, target),
            Amend::Reaction.kind().to_owned(),
            body,
            at,
        )
    };
    Ok(if changes {
        Applied::Reacted { entry, emoji, add }
    } else {
        Applied::Unchanged(entry)
    })
}

/// Who an amendment by `from` of `target` is addressed to, so that it reaches everyone the
/// message did: the group, or in a direct chat the other party (a recipient who reacts
/// addresses the sender).
fn addressee(from: UserId, target: &Message) -> Target {
    match (target.to, im_protocol::direct_parties(&target.conversation)) {
        (Target::User(_), Some((a, b))) => Target::User(if from == a { b } else { a }),
        (to, _) => to,
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
