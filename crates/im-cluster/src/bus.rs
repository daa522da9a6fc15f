//! The `Bus` port: wake-ups and ephemeral events between nodes.

use crate::Position;
use bytes::Bytes;
use im_protocol::UserId;
use serde_json::{Value, json};
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

impl Ephemeral {
    /// A text form for buses that carry text (PostgreSQL `NOTIFY`), tagged with the sending
    /// node so it can skip its own.
    pub fn to_text(&self, node: u64) -> String {
        json!({
            "n": node.to_string(),
            "u": self.users,
            "f": String::from_utf8_lossy(&self.frame),
        })
        .to_string()
    }

    /// Parses [`Ephemeral::to_text`]; the sending node and the event, or `None` for bytes
    /// that are not one.
    pub fn from_text(text: &str) -> Option<(u64, Ephemeral)> {
        let v: Value = serde_json::from_str(text).ok()?;
        let node = v.get("n")?.as_str()?.parse().ok()?;
        let users = v
            .get("u")?
            .as_array()?
            .iter()
            .map(|u| u.as_u64().map(UserId))
            .collect::<Option<Vec<_>>>()?;
        let frame = Bytes::from(v.get("f")?.as_str()?.to_owned());
        Some((node, Ephemeral { users, frame }))
    }
}

/// Where a bus delivers what other nodes sent.
pub trait Inbound: Send + Sync + 'static {
    /// Another node committed up to `head`.
    fn head(&self, head: Position);
    /// The bus lost its connection and has it back: anything may have been missed.
    fn reconnected(&self);
    /// An ephemeral event from another node, for this node's streams of its users.
    fn event(&self, event: Ephemeral);
}

/// The port between nodes. The default, [`LocalBus`], is a single process's: it has no
/// other node to tell.
pub trait Bus: Send + Sync + 'static {
    /// Sends an ephemeral event to the other nodes (this node delivers its own copy).
    fn publish(&self, event: Ephemeral);
    /// Starts delivering what other nodes send to `inbound`.
    fn start(&self, inbound: Arc<dyn Inbound>);
}

/// The bus of a deployment of one process: nothing to wake, nobody to tell.
#[derive(Debug, Default, Clone, Copy)]
pub struct LocalBus;

impl Bus for LocalBus {
    fn publish(&self, _: Ephemeral) {}
    fn start(&self, _: Arc<dyn Inbound>) {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn text_roundtrip(node in any::<u64>(), users in proptest::collection::vec(any::<u64>(), 0..8),
                          frame in any::<String>()) {
            let e = Ephemeral { users: users.into_iter().map(UserId).collect(), frame: Bytes::from(frame) };
            prop_assert_eq!(Ephemeral::from_text(&e.to_text(node)), Some((node, e)));
        }

        #[test]
        fn garbage_is_refused_not_a_panic(text in any::<String>()) {
            let _ = Ephemeral::from_text(&text);
        }
    }
}
