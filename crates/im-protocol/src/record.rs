//! Versioned postcard records for storage and the bus.
//!
//! postcard has no schema evolution: adding a field breaks old bytes. Every stored or
//! bus record is therefore wrapped in an enum whose variant is the version; a new layout is a
//! new variant and old bytes keep decoding.

use crate::{Message, MessageId, Quote, Target, UserId};
use serde::{Deserialize, Serialize};

/// Error decoding a stored record.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The bytes are not a valid record of any known version.
    #[error("undecodable record: {0}")]
    Decode(#[from] postcard::Error),
    /// The body inside the record is not valid JSON.
    #[error("record body is not JSON: {0}")]
    Body(#[from] serde_json::Error),
}

/// A stored message, versioned. The body is kept as JSON text because postcard cannot carry
/// a self-describing `serde_json::Value`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum MessageRecord {
    /// Layout 1.
    V1(Core),
    /// Layout 2: layout 1, then what replies, edits and deletions add.
    V2(Core, Amended),
}

/// The fields of layout 1, which every later layout starts with. (postcard writes a struct
/// as its fields in order, so this is byte for byte the struct variant layout 1 once was.)
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Core {
    /// Stream position.
    pub id: u64,
    /// Conversation key.
    pub conversation: String,
    /// Sender.
    pub from: u64,
    /// Recipient.
    pub to: Target,
    /// Kind name.
    pub kind: String,
    /// Body as JSON text.
    pub body: String,
    /// Sender's idempotency key.
    pub client_id: Option<String>,
    /// Unix milliseconds.
    pub sent_at: u64,
}

/// What layout 2 adds.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Amended {
    /// The quoted message of a reply.
    pub reply_to: Option<Quote>,
    /// Unix milliseconds of the latest edit.
    pub edited_at: Option<u64>,
    /// Deleted (a tombstone).
    pub deleted: bool,
    /// The message an amendment changes.
    pub amends: Option<u64>,
}

impl MessageRecord {
    /// Encodes a message as the current record version.
    pub fn encode(msg: &Message) -> Result<Vec<u8>, RecordError> {
        let rec = MessageRecord::V2(
            Core {
                id: msg.id.0,
                conversation: msg.conversation.clone(),
                from: msg.from.0,
                to: msg.to,
                kind: msg.kind.clone(),
                body: msg.body.to_string(),
                client_id: msg.client_id.clone(),
                sent_at: msg.sent_at,
            },
            Amended {
                reply_to: msg.reply_to.as_deref().cloned(),
                edited_at: msg.edited_at,
                deleted: msg.deleted,
                amends: msg.amends.map(|a| a.0),
            },
        );
        Ok(postcard::to_allocvec(&rec)?)
    }

    /// Decodes a record of any known version.
    pub fn decode(bytes: &[u8]) -> Result<Message, RecordError> {
        let (core, amended) = match postcard::from_bytes::<MessageRecord>(bytes)? {
            MessageRecord::V1(core) => (core, None),
            MessageRecord::V2(core, amended) => (core, Some(amended)),
        };
        let mut msg = Message {
            client_id: core.client_id,
            ..Message::new(
                MessageId(core.id),
                core.conversation,
                UserId(core.from),
                core.to,
                core.kind,
                serde_json::from_str(&core.body)?,
                core.sent_at,
            )
        };
        if let Some(a) = amended {
            msg.reply_to = a.reply_to.map(Box::new);
            msg.edited_at = a.edited_at;
            msg.deleted = a.deleted;
            msg.amends = a.amends.map(MessageId);
        }
        Ok(msg)
    }
}

/// Layout 1 of a versioned record, borrowed for encoding.
#[derive(Serialize)]
enum V1Ref<'a, T> {
    V1(&'a T),
}

/// Layout 1 of a versioned record.
#[derive(Deserialize)]
enum V1<T> {
    V1(T),
}

/// Encodes `value` as layout 1 of a versioned record (the variant index comes first). A crate
/// whose record gains a second layout declares its own enum whose first variant is this one,
/// so bytes written today keep decoding.
pub fn encode_v1<T: Serialize>(value: &T) -> Result<Vec<u8>, RecordError> {
    Ok(postcard::to_allocvec(&V1Ref::V1(value))?)
}

/// Decodes bytes written by [`encode_v1`].
pub fn decode_v1<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, RecordError> {
    match postcard::from_bytes::<V1<T>>(bytes)? {
        V1::V1(v) => Ok(v),
    }
}

/// A record kept as layout 1 of a versioned record ([`encode_v1`]): implement it (no method
/// to write) and the type can be encoded and decoded.
pub trait Versioned: Serialize + serde::de::DeserializeOwned {
    /// The record's bytes, in the current layout.
    fn encode(&self) -> Result<Vec<u8>, RecordError> {
        encode_v1(self)
    }

    /// Decodes a record of any known layout.
    fn decode(bytes: &[u8]) -> Result<Self, RecordError> {
        decode_v1(bytes)
    }
}

/// The domain a change record in the ordered log belongs to. Messages have a table of their
/// own; every other shared change (accounts, sessions, the social graph, files) is a record
/// under one of these topics, encoded by the crate that owns the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Topic {
    /// `im_users::UserChange`: accounts, session revocations, social graph changes.
    Users,
    /// `im_files::FileChange`: uploads and sweeps.
    Files,
}

impl Topic {
    /// The stored code; never reuse a retired one.
    pub fn code(self) -> i16 {
        match self {
            Topic::Users => 1,
            Topic::Files => 2,
        }
    }

    /// The topic of a stored code, if this build knows it.
    pub fn from_code(code: i16) -> Option<Topic> {
        match code {
            1 => Some(Topic::Users),
            2 => Some(Topic::Files),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::GroupId;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn roundtrip(id in any::<u64>(), from in any::<u64>(), g in any::<bool>(), to in any::<u64>(),
                     text in any::<String>(), cid in proptest::option::of("[ -~]{0,20}"), at in any::<u64>()) {
            let to = if g { Target::Group(GroupId(to)) } else { Target::User(UserId(to)) };
            let msg = Message {
                client_id: cid,
                ..Message::new(MessageId(id), crate::conversation_of(UserId(from), to),
                    UserId(from), to, "text".into(), serde_json::json!({"text": text}), at)
            };
            let bytes = MessageRecord::encode(&msg).unwrap();
            prop_assert_eq!(MessageRecord::decode(&bytes).unwrap(), msg);
        }

        #[test]
        fn roundtrip_with_amendment_fields(id in any::<u64>(), edited in proptest::option::of(any::<u64>()),
                     deleted in any::<bool>(), amends in proptest::option::of(any::<u64>()),
                     quoted in proptest::option::of((any::<u64>(), any::<u64>(), ".{0,20}", any::<bool>()))) {
            let to = Target::User(UserId(2));
            let msg = Message {
                edited_at: edited,
                deleted,
                amends: amends.map(MessageId),
                reply_to: quoted.map(|(q, from, preview, deleted)| Box::new(Quote {
                    id: MessageId(q), from: UserId(from), kind: "text".into(), preview, deleted,
                })),
                ..Message::new(MessageId(id), crate::conversation_of(UserId(1), to), UserId(1), to,
                    "text".into(), serde_json::json!({"text": "hi"}), 5)
            };
            let bytes = MessageRecord::encode(&msg).unwrap();
            prop_assert_eq!(MessageRecord::decode(&bytes).unwrap(), msg);
        }
    }

    #[test]
    fn layout_1_records_still_decode() {
        // Written by the build before layout 2 (a struct variant with these fields).
        let old: &[u8] = &[
            0, 7, 4, 100, 49, 45, 50, 1, 0, 2, 4, 116, 101, 120, 116, 13, 123, 34, 116, 101, 120,
            116, 34, 58, 34, 104, 105, 34, 125, 1, 1, 99, 9,
        ];
        let msg = MessageRecord::decode(old).unwrap();
        assert_eq!(
            (msg.id, msg.from, msg.sent_at),
            (MessageId(7), UserId(1), 9)
        );
        assert_eq!(
            (msg.conversation.as_str(), msg.client_id.as_deref()),
            ("d1-2", Some("c"))
        );
        assert_eq!(
            (msg.to, msg.body["text"].as_str()),
            (Target::User(UserId(2)), Some("hi"))
        );
        assert_eq!(
            (msg.edited_at, msg.deleted, msg.amends, msg.reply_to),
            (None, false, None, None)
        );
    }
}
