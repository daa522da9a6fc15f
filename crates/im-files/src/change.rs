//! The file changes every node must apply, as records of the ordered log.

use crate::FileMeta;
use im_protocol::record::Versioned;
use serde::{Deserialize, Serialize};

/// One committed change to the file index. The store writes it in the same transaction as the
/// metadata row; each node's log follower applies it to the in-memory index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileChange {
    /// An upload's bytes are durable and its metadata row committed.
    Added(FileMeta),
    /// The bytes of file `id` were deleted by the sweeper; old ids answer `file_expired`.
    Swept(u64),
}

impl Versioned for FileChange {}

#[cfg(test)]
mod tests {
    use super::*;
    use im_protocol::UserId;

    #[test]
    fn roundtrip() {
        let meta = FileMeta {
            id: 3,
            token: "ab".repeat(32),
            owner: UserId(2),
            name: "cat.png".into(),
            size: 10,
            content_type: "image/png".into(),
            key: "00ff".into(),
            created_at: 1,
            expires_at: 2,
        };
        for c in [FileChange::Added(meta), FileChange::Swept(3)] {
            assert_eq!(FileChange::decode(&c.encode().unwrap()).unwrap(), c);
        }
    }
}
