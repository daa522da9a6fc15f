//! Versioned postcard records for storage and the bus.
//!
//! postcard has no schema evolution: adding a field breaks old bytes. Every stored or
//! bus record is therefore wrapped in an enum whose variant is the version; a new layout is a
//! new variant and old bytes keep decoding.

use crate::{Message, MessageId, Target, UserId};
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
    V1 {
        /// Stream position.
        id: u64,
        /// Conversation key.
        conversation: String,
        /// Sender.
        from: u64,
        /// Recipient.
        to: Target,
        /// Kind name.
        kind: String,
        /// Body as JSON text.
        body: String,
        /// Sender's idempotency key.
        client_id: Option<String>,
        /// Unix milliseconds.
        sent_at: u64,
    },
}

impl MessageRecord {
    /// Encodes a message as the current record version.
    pub fn encode(msg: &Message) -> Result<Vec<u8>, RecordError> {
        let rec = MessageRecord::V1 {
            id: msg.id.0,
            conversation: msg.conversation.clone(),
            from: msg.from.0,
            to: msg.to,
            kind: msg.kind.clone(),
            body: msg.body.to_string(),
            client_id: msg.client_id.clone(),
            sent_at: msg.sent_at,
        };
        Ok(postcard::to_allocvec(&rec)?)
    }

    /// Decodes a record of any known version.
    pub fn decode(bytes: &[u8]) -> Result<Message, RecordError> {
        match postcard::from_bytes::<MessageRecord>(bytes)? {
            MessageRecord::V1 {
                id,
                conversation,
                from,
                to,
                kind,
                body,
                client_id,
                sent_at,
            } => Ok(Message {
                id: MessageId(id),
                conversation,
                from: UserId(from),
                to,
                kind,
                body: serde_json::from_str(&body)?,
                client_id,
                sent_at,
            }),
        }
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
                id: MessageId(id), conversation: crate::conversation_of(UserId(from), to),
                from: UserId(from), to, kind: "text".into(),
                body: serde_json::json!({"text": text}), client_id: cid, sent_at: at,
            };
            let bytes = MessageRecord::encode(&msg).unwrap();
            prop_assert_eq!(MessageRecord::decode(&bytes).unwrap(), msg);
        }
    }
}
