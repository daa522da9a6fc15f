//! What nodes tell each other over the bus, as versioned postcard frames.
//!
//! Every frame names the node that sent it, so a node that hears its own (Redis delivers a
//! publisher's messages to its own subscription) skips it. The layout is an enum whose
//! variant is the version: nodes of two releases can share a bus during a rolling upgrade.

use crate::bus::Ephemeral;
use crate::{Entry, LogEntry, Position, Topic};
use bytes::Bytes;
use im_protocol::UserId;
use im_protocol::record::MessageRecord;
use serde::{Deserialize, Serialize};
use serde_bytes::{ByteBuf, Bytes as RawBytes};
use std::time::Duration;

/// One node of a deployment, named at random at each start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub u64);

impl NodeId {
    /// A fresh random id: two nodes (or one node before and after a restart) never share one
    /// in practice, so a restarted node's old presence simply expires.
    pub fn random() -> Self {
        let mut raw = [0u8; 8];
        // Without an OS random source, the time still makes restarts differ.
        if getrandom::fill(&mut raw).is_err() {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos() as u64);
            raw = (nanos ^ u64::from(std::process::id())).to_le_bytes();
        }
        Self(u64::from_le_bytes(raw))
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Presence as one node sees its own streams.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PresenceNews {
    /// Users with a stream on the sending node; a heartbeat repeats them all, in parts.
    pub online: Vec<UserId>,
    /// Users who no longer have one there.
    pub offline: Vec<UserId>,
    /// How long the sender's word holds unless repeated: a node that dies stops counting
    /// after this.
    pub ttl: Duration,
    /// The sender just joined or reconnected; the others repeat what they hold at once.
    pub hello: bool,
}

/// What one node tells the others.
#[derive(Debug, Clone, PartialEq)]
pub enum Signal {
    /// The log is committed up to `head`; `entries` are the sender's new ones when they fit
    /// (so followers rarely read the store), else empty.
    Committed {
        /// The highest committed position.
        head: Position,
        /// The entries just committed, in position order, or none.
        entries: Vec<LogEntry>,
    },
    /// An ephemeral event for some users' streams.
    Event(Ephemeral),
    /// The sender's presence news.
    Presence(PresenceNews),
    /// End these users' event streams on every node (the server API's disconnect). Appended
    /// last, so older frames keep their variant index; a node of an older release drops it.
    Disconnect(Vec<UserId>),
}

/// A frame could not be encoded or decoded.
#[derive(Debug, thiserror::Error)]
#[error("bus frame: {0}")]
pub struct WireError(String);

#[derive(Serialize)]
enum FrameOut<'a> {
    V1 { node: u64, body: BodyOut<'a> },
}

#[derive(Serialize)]
enum BodyOut<'a> {
    Committed {
        head: u64,
        entries: Vec<EntryOut<'a>>,
    },
    Event {
        users: &'a [UserId],
        frame: &'a RawBytes,
    },
    Presence {
        ttl_ms: u64,
        online: &'a [UserId],
        offline: &'a [UserId],
        hello: bool,
    },
    Disconnect {
        users: &'a [UserId],
    },
}

#[derive(Serialize)]
enum EntryOut<'a> {
    Message {
        pos: u64,
        record: ByteBuf,
    },
    Change {
        pos: u64,
        topic: i16,
        record: &'a RawBytes,
    },
}

#[derive(Deserialize)]
enum FrameIn {
    V1 { node: u64, body: BodyIn },
}

#[derive(Deserialize)]
enum BodyIn {
    Committed {
        head: u64,
        entries: Vec<EntryIn>,
    },
    Event {
        users: Vec<UserId>,
        frame: ByteBuf,
    },
    Presence {
        ttl_ms: u64,
        online: Vec<UserId>,
        offline: Vec<UserId>,
        hello: bool,
    },
    Disconnect {
        users: Vec<UserId>,
    },
}

#[derive(Deserialize)]
enum EntryIn {
    Message {
        pos: u64,
        record: ByteBuf,
    },
    Change {
        pos: u64,
        topic: i16,
        record: ByteBuf,
    },
}

/// Encodes a commit's wake-up without copying its entries first.
pub(crate) fn encode_committed(
    node: NodeId,
    head: Position,
    entries: &[LogEntry],
) -> Result<Bytes, WireError> {
    let entries = entries
        .iter()
        .map(|e| {
            Ok(match &e.entry {
                Entry::Message(m) => EntryOut::Message {
                    pos: e.pos,
                    record: ByteBuf::from(
                        MessageRecord::encode(m).map_err(|e| WireError(e.to_string()))?,
                    ),
                },
                Entry::Change { topic, record } => EntryOut::Change {
                    pos: e.pos,
                    topic: topic.code(),
                    record: RawBytes::new(record),
                },
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    encode(node, BodyOut::Committed { head, entries })
}

fn encode(node: NodeId, body: BodyOut<'_>) -> Result<Bytes, WireError> {
    postcard::to_allocvec(&FrameOut::V1 { node: node.0, body })
        .map(Bytes::from)
        .map_err(|e| WireError(e.to_string()))
}

impl Signal {
    /// The frame for this signal from `node`.
    pub fn encode(&self, node: NodeId) -> Result<Bytes, WireError> {
        match self {
            Signal::Committed { head, entries } => encode_committed(node, *head, entries),
            Signal::Event(e) => encode(
                node,
                BodyOut::Event {
                    users: &e.users,
                    frame: RawBytes::new(&e.frame),
                },
            ),
            Signal::Presence(p) => encode(
                node,
                BodyOut::Presence {
                    ttl_ms: u64::try_from(p.ttl.as_millis()).unwrap_or(u64::MAX),
                    online: &p.online,
                    offline: &p.offline,
                    hello: p.hello,
                },
            ),
            Signal::Disconnect(users) => encode(node, BodyOut::Disconnect { users }),
        }
    }

    /// The sender and the signal of a frame. A commit whose entries this build cannot read
    /// (a topic from a newer release) comes back as its head alone, so the follower reads
    /// the store.
    pub fn decode(frame: &[u8]) -> Result<(NodeId, Signal), WireError> {
        let FrameIn::V1 { node, body } =
            postcard::from_bytes(frame).map_err(|e| WireError(e.to_string()))?;
        let signal = match body {
            BodyIn::Committed { head, entries } => Signal::Committed {
                head,
                entries: entries
                    .into_iter()
                    .map(|e| match e {
                        EntryIn::Message { pos, record } => Some(LogEntry {
                            pos,
                            entry: Entry::Message(MessageRecord::decode(&record).ok()?),
                        }),
                        EntryIn::Change { pos, topic, record } => Some(LogEntry {
                            pos,
                            entry: Entry::Change {
                                topic: Topic::from_code(topic)?,
                                record: Bytes::from(record.into_vec()),
                            },
                        }),
                    })
                    .collect::<Option<Vec<_>>>()
                    .unwrap_or_default(),
            },
            BodyIn::Event { users, frame } => Signal::Event(Ephemeral {
                users,
                frame: Bytes::from(frame.into_vec()),
            }),
            BodyIn::Presence {
                ttl_ms,
                online,
                offline,
                hello,
            } => Signal::Presence(PresenceNews {
                online,
                offline,
                ttl: Duration::from_millis(ttl_ms),
                hello,
            }),
            BodyIn::Disconnect { users } => Signal::Disconnect(users),
        };
        Ok((NodeId(node), signal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use im_protocol::{Message, MessageId, Target, conversation_of};
    use proptest::prelude::*;

    fn message(pos: u64, from: u64, text: String) -> LogEntry {
        let to = Target::User(UserId(from + 1));
        LogEntry {
            pos,
            entry: Entry::Message(Message::new(
                MessageId(pos),
                conversation_of(UserId(from), to),
                UserId(from),
                to,
                "text".into(),
                serde_json::json!({ "text": text }),
                7,
            )),
        }
    }

    fn users() -> impl Strategy<Value = Vec<UserId>> {
        proptest::collection::vec(any::<u64>().prop_map(UserId), 0..8)
    }

    fn signal() -> impl Strategy<Value = Signal> {
        prop_oneof![
            (
                any::<u64>(),
                proptest::collection::vec(
                    (any::<u64>(), any::<u64>(), any::<String>(), any::<bool>()),
                    0..4
                )
            )
                .prop_map(|(head, es)| Signal::Committed {
                    head,
                    entries: es
                        .into_iter()
                        .map(|(pos, from, text, change)| if change {
                            LogEntry {
                                pos,
                                entry: Entry::Change {
                                    topic: Topic::Users,
                                    record: Bytes::from(text.into_bytes()),
                                },
                            }
                        } else {
                            message(pos, from, text)
                        })
                        .collect(),
                }),
            (users(), any::<Vec<u8>>()).prop_map(|(users, frame)| Signal::Event(Ephemeral {
                users,
                frame: Bytes::from(frame)
            })),
            (users(), users(), any::<u32>(), any::<bool>()).prop_map(
                |(online, offline, ms, hello)| Signal::Presence(PresenceNews {
                    online,
                    offline,
                    ttl: Duration::from_millis(u64::from(ms)),
                    hello,
                })
            ),
            users().prop_map(Signal::Disconnect),
        ]
    }

    proptest! {
        #[test]
        fn frames_roundtrip(node in any::<u64>(), s in signal()) {
            let frame = s.encode(NodeId(node)).unwrap();
            prop_assert_eq!(Signal::decode(&frame).unwrap(), (NodeId(node), s));
        }

        #[test]
        fn garbage_is_refused_not_a_panic(bytes in any::<Vec<u8>>()) {
            let _ = Signal::decode(&bytes);
        }
    }

    #[test]
    fn an_unknown_topic_leaves_the_head_alone() {
        let frame = postcard::to_allocvec(&FrameOut::V1 {
            node: 1,
            body: BodyOut::Committed {
                head: 9,
                entries: vec![EntryOut::Change {
                    pos: 9,
                    topic: 999,
                    record: RawBytes::new(b"x"),
                }],
            },
        })
        .unwrap();
        assert_eq!(
            Signal::decode(&frame).unwrap(),
            (
                NodeId(1),
                Signal::Committed {
                    head: 9,
                    entries: vec![]
                }
            )
        );
    }
}
