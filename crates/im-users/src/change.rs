//! The changes of this domain that every node must apply, as records of the ordered log.

use crate::User;
use crate::social::SocialWrite;
use im_protocol::UserId;
use im_protocol::record::Versioned;
use serde::{Deserialize, Serialize};

/// One committed change to accounts, sessions or the social graph. The store writes it in the
/// same transaction as the change itself; each node's log follower applies it to memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum UserChange {
    /// A new account.
    Created(User),
    /// A login session ended: its token must fail and its streams end on every node.
    SessionRevoked {
        /// Whose session.
        user: UserId,
        /// The session id.
        session: u64,
    },
    /// A social graph change, with the id the store returned for it (0 if none).
    Social {
        /// The change as planned.
        write: SocialWrite,
        /// The new row's id (request or group), else 0.
        id: u64,
    },
    /// Several sessions of one user ended at once (log out everywhere, a password change,
    /// expiry): their tokens must fail and their streams end on every node. Appended last,
    /// so the variant indexes of older records keep their meaning.
    SessionsRevoked {
        /// Whose sessions.
        user: UserId,
        /// The session ids.
        sessions: Vec<u64>,
    },
}

impl Versioned for UserChange {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::social::{RequestState, Role};
    use im_protocol::GroupId;

    #[test]
    fn every_variant_roundtrips() {
        let changes = [
            UserChange::Created(User {
                id: UserId(7),
                username: "ann".into(),
            }),
            UserChange::SessionRevoked {
                user: UserId(7),
                session: 9,
            },
            UserChange::Social {
                write: SocialWrite::Answer {
                    requests: vec![1, 2],
                    state: RequestState::Accepted,
                    friends: Some((UserId(1), UserId(2))),
                    new_request: None,
                },
                id: 3,
            },
            UserChange::Social {
                write: SocialWrite::CreateGroup {
                    name: "g".into(),
                    members: vec![(UserId(1), Role::Owner), (UserId(2), Role::Admin)],
                },
                id: 4,
            },
            UserChange::Social {
                write: SocialWrite::RemoveMember {
                    group: GroupId(4),
                    user: UserId(1),
                    new_owner: Some(UserId(2)),
                    delete_group: false,
                },
                id: 0,
            },
            UserChange::SessionsRevoked {
                user: UserId(7),
                sessions: vec![9, 10],
            },
        ];
        for c in changes {
            let bytes = c.encode().unwrap();
            assert_eq!(UserChange::decode(&bytes).unwrap(), c);
        }
        assert!(UserChange::decode(&[200, 1, 2]).is_err());
    }

    #[test]
    fn records_written_before_a_new_variant_still_decode() {
        // `SessionRevoked { user: 7, session: 9 }` as every earlier build wrote it: layout 1,
        // variant 1, then the fields.
        let old = [0, 1, 7, 9];
        assert_eq!(
            UserChange::decode(&old).unwrap(),
            UserChange::SessionRevoked {
                user: UserId(7),
                session: 9
            }
        );
    }
}
