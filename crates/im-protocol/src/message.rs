use crate::{GroupId, MessageId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who a message is for: `{"user": 2}` or `{"group": 7}` on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum Target {
    /// A direct message to one user.
    User(UserId),
    /// A message to every member of a group.
    Group(GroupId),
}

/// What a client posts: the message before any handler or the store has seen it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Draft {
    /// The recipient.
    pub to: Target,
    /// The registered kind, e.g. `text`.
    pub kind: String,
    /// Kind-specific JSON body, e.g. `{"text": "hi"}`.
    pub body: Value,
    /// Optional sender-chosen idempotency key: a repeat returns the first message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The message of the same conversation this one answers; recipients get a quote of it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
}

impl Draft {
    /// The longest `client_id`, in bytes: enough for a UUID or a backend's own event key,
    /// small enough for the store's unique index.
    pub const CLIENT_ID_MAX: usize = 128;

    /// The rules a draft must meet whatever its kind: a `client_id`, if any, has 1 to
    /// [`Draft::CLIENT_ID_MAX`] bytes.
    pub fn check(&self) -> Result<(), crate::ApiError> {
        match &self.client_id {
            Some(c) if c.is_empty() || c.len() > Self::CLIENT_ID_MAX => Err(crate::ApiError::new(
                crate::ErrorCode::InvalidRequest,
                format!("`client_id` must be 1–{} bytes", Self::CLIENT_ID_MAX),
            )),
            _ => Ok(()),
        }
    }
}

/// A durable message as clients see it (the `M` of docs/API.md).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Stream position, increasing across the deployment.
    pub id: MessageId,
    /// Opaque conversation key, equal for both sides of a direct chat.
    pub conversation: String,
    /// The sender.
    pub from: UserId,
    /// The recipient.
    pub to: Target,
    /// The message kind.
    pub kind: String,
    /// The kind-specific body, after handlers ran.
    pub body: Value,
    /// The sender's idempotency key, if one was given.
    pub client_id: Option<String>,
    /// Unix milliseconds when the server accepted the message.
    pub sent_at: u64,
    /// The message this one replies to, quoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Box<Quote>>,
    /// Unix milliseconds of the latest edit, if it was edited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    /// Deleted: the body is gone (`null`) and the message stays as a tombstone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
    /// The reactions, one entry per emoji, as the reader sees them (`me`). Filled in by
    /// history for its reader; empty on the stream, where each change is a `reaction` event.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reactions: Vec<Reaction>,
    /// For an amendment kept in the log beside the messages (an edit, a deletion, a
    /// reaction): the message it changes. Never on the wire: clients get an amendment as its
    /// own event, whose data is the body.
    #[serde(skip)]
    pub amends: Option<MessageId>,
}

impl Message {
    /// A new message as the log stores it: not edited, not deleted, not an amendment.
    pub fn new(
        id: MessageId,
        conversation: String,
        from: UserId,
        to: Target,
        kind: String,
        body: Value,
        sent_at: u64,
    ) -> Self {
        Self {
            id,
            conversation,
            from,
            to,
            kind,
            body,
            client_id: None,
            sent_at,
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            amends: None,
        }
    }

    /// The SSE event name of this log entry: `message`, or an amendment's own.
    pub fn event(&self) -> &'static str {
        match self.amends.and(Amend::of_kind(&self.kind)) {
            Some(a) => a.event(),
            None => "message",
        }
    }
}

/// Enough of the message a reply answers to show a quote without another request. It
/// follows the original: an edit rewrites it, and a deletion empties it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    /// The quoted message.
    pub id: MessageId,
    /// Its sender.
    pub from: UserId,
    /// Its kind.
    pub kind: String,
    /// The start of its text, or a file's name, at most [`Quote::PREVIEW_CHARS`] characters.
    pub preview: String,
    /// The quoted message was deleted; `preview` is empty. Always written: the stored
    /// record (postcard) has no way to tell a left-out field.
    pub deleted: bool,
}

impl Quote {
    /// The longest preview, in characters: a line of a chat, not the whole message.
    pub const PREVIEW_CHARS: usize = 140;

    /// The quote of `msg` as it is now.
    pub fn of(msg: &Message) -> Self {
        let text = match msg.kind.as_str() {
            "text" => msg.body.get("text"),
            _ => msg.body.get("name"),
        };
        let text = text.and_then(Value::as_str).unwrap_or_default();
        Self {
            id: msg.id,
            from: msg.from,
            kind: msg.kind.clone(),
            preview: text.chars().take(Self::PREVIEW_CHARS).collect(),
            deleted: msg.deleted,
        }
    }
}

/// One emoji's reactions to a message, for one reader.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The emoji.
    pub emoji: String,
    /// How many users reacted with it.
    pub count: u64,
    /// Whether the reader is one of them.
    pub me: bool,
}

impl Reaction {
    /// The most different emoji one message holds; the next new one is refused.
    pub const MAX_KINDS: usize = 20;
    /// The longest emoji, in bytes: room for a family or a flag with modifiers.
    pub const MAX_BYTES: usize = 32;

    /// Whether `emoji` may be a reaction: 1 to [`Reaction::MAX_BYTES`] bytes, with no
    /// whitespace or control character and no ASCII letter or digit (a reaction is a symbol,
    /// not a word).
    pub fn valid_emoji(emoji: &str) -> bool {
        !emoji.is_empty()
            && emoji.len() <= Self::MAX_BYTES
            && !emoji
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || c.is_ascii_alphanumeric())
    }
}

/// What an amendment does to the message it names. Each is a log entry of its own (a row
/// beside the messages, with its own position), so resuming streams get it in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Amend {
    /// The sender replaced the body of a text message.
    Edit,
    /// The message was deleted: its body is gone, a tombstone stays.
    Delete,
    /// Someone added or took back an emoji reaction.
    Reaction,
}

impl Amend {
    /// The stored kind of the amendment's log entry; no message kind may use it.
    pub fn kind(self) -> &'static str {
        match self {
            Amend::Edit => "edit",
            Amend::Delete => "delete",
            Amend::Reaction => "reaction",
        }
    }

    /// The amendment of a stored kind, if it is one.
    pub fn of_kind(kind: &str) -> Option<Amend> {
        match kind {
            "edit" => Some(Amend::Edit),
            "delete" => Some(Amend::Delete),
            "reaction" => Some(Amend::Reaction),
            _ => None,
        }
    }

    /// The event clients get it as.
    pub fn event(self) -> &'static str {
        match self {
            Amend::Edit => "message_edited",
            Amend::Delete => "message_deleted",
            Amend::Reaction => "reaction",
        }
    }
}

/// The conversation key of a message from `from` to `to`.
///
/// Direct chats sort the two ids so both sides share one key; groups use the group id.
pub fn conversation_of(from: UserId, to: Target) -> String {
    match to {
        Target::User(u) => {
            let (a, b) = if from <= u { (from, u) } else { (u, from) };
            format!("d{}-{}", a.0, b.0)
        }
        Target::Group(g) => format!("g{}", g.0),
    }
}

/// The two users of a direct conversation key, or `None` if it is not one.
pub fn direct_parties(conversation: &str) -> Option<(UserId, UserId)> {
    let (a, b) = conversation.strip_prefix('d')?.split_once('-')?;
    let (a, b) = (a.parse().ok()?, b.parse().ok()?);
    (a <= b && conversation == format!("d{a}-{b}")).then_some((UserId(a), UserId(b)))
}

/// The group of a group conversation key, or `None` if it is not one.
pub fn group_of(conversation: &str) -> Option<GroupId> {
    let id = conversation.strip_prefix('g')?.parse().ok()?;
    (conversation == format!("g{id}")).then_some(GroupId(id))
}

/// The current time in Unix milliseconds, the unit of every time on the wire.
pub fn now_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_id_has_one_to_128_bytes() {
        let draft = |client_id: Option<String>| Draft {
            to: Target::User(UserId(1)),
            kind: "text".into(),
            body: Value::Null,
            client_id,
            reply_to: None,
        };
        for ok in [None, Some("a".to_owned()), Some("é".repeat(64))] {
            assert!(draft(ok.clone()).check().is_ok(), "{ok:?}");
        }
        for bad in [String::new(), "a".repeat(129), "é".repeat(65)] {
            let e = draft(Some(bad)).check().unwrap_err();
            assert_eq!(e.code, "invalid_request");
        }
    }

    #[test]
    fn target_wire_form() {
        let t: Target = serde_json::from_str(r#"{"user": 2}"#).unwrap();
        assert_eq!(t, Target::User(UserId(2)));
        assert_eq!(
            serde_json::to_string(&Target::Group(GroupId(7))).unwrap(),
            r#"{"group":7}"#
        );
        assert!(serde_json::from_str::<Target>(r#"{"user": "x"}"#).is_err());
    }

    #[test]
    fn direct_conversation_is_symmetric() {
        assert_eq!(
            conversation_of(UserId(1), Target::User(UserId(2))),
            conversation_of(UserId(2), Target::User(UserId(1)))
        );
        assert_ne!(
            conversation_of(UserId(1), Target::User(UserId(2))),
            conversation_of(UserId(1), Target::Group(GroupId(2)))
        );
    }

    #[test]
    fn conversation_keys_parse_back() {
        let d = conversation_of(UserId(9), Target::User(UserId(3)));
        assert_eq!(direct_parties(&d), Some((UserId(3), UserId(9))));
        assert_eq!(
            group_of(&conversation_of(UserId(1), Target::Group(GroupId(4)))),
            Some(GroupId(4))
        );
        for bad in [
            "", "d", "d1", "d1-", "d01-2", "d2-1", "x1-2", "g", "g01", "d1-2-3",
        ] {
            assert_eq!(direct_parties(bad), None, "{bad}");
            assert_eq!(group_of(bad), None, "{bad}");
        }
    }

    #[test]
    fn a_reaction_is_a_short_symbol() {
        for ok in ["👍", "❤️", "👍🏽", "🇫🇷", "👨‍👩‍👧‍👦", "+", "…"]
        {
            assert!(Reaction::valid_emoji(ok), "{ok}");
        }
        let long = "⭐".repeat(11); // 33 bytes
        for bad in [
            "",
            "a",
            "1",
            "👍a",
            " ",
            "👍 ",
            "\n",
            "\u{7f}",
            long.as_str(),
        ] {
            assert!(!Reaction::valid_emoji(bad), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn valid_emoji_never_accepts_words_spaces_or_long_input(s in "\\PC{0,40}") {
            if Reaction::valid_emoji(&s) {
                proptest::prop_assert!(!s.is_empty() && s.len() <= Reaction::MAX_BYTES);
                proptest::prop_assert!(!s.chars().any(|c| c.is_ascii_alphanumeric() || c.is_whitespace()));
            }
        }
    }

    #[test]
    fn a_quote_is_the_start_of_the_text_or_the_file_name() {
        let to = Target::User(UserId(2));
        let text = Message::new(
            MessageId(1),
            "d1-2".into(),
            UserId(1),
            to,
            "text".into(),
            serde_json::json!({"text": "é".repeat(200)}),
            0,
        );
        let q = Quote::of(&text);
        assert_eq!(q.preview.chars().count(), Quote::PREVIEW_CHARS);
        let file = Message::new(
            MessageId(2),
            "d1-2".into(),
            UserId(1),
            to,
            "file".into(),
            serde_json::json!({"name": "notes.txt", "file_id": 3}),
            0,
        );
        assert_eq!(Quote::of(&file).preview, "notes.txt");
        let gone = Message {
            deleted: true,
            body: Value::Null,
            ..text
        };
        assert!(Quote::of(&gone).deleted && Quote::of(&gone).preview.is_empty());
    }

    #[test]
    fn draft_rejects_unknown_fields() {
        let err =
            serde_json::from_str::<Draft>(r#"{"to":{"user":1},"kind":"text","body":{},"extra":1}"#);
        assert!(err.is_err());
    }
}
