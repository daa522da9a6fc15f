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
    fn draft_rejects_unknown_fields() {
        let err =
            serde_json::from_str::<Draft>(r#"{"to":{"user":1},"kind":"text","body":{},"extra":1}"#);
        assert!(err.is_err());
    }
}
