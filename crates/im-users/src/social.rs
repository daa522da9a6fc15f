//! The social graph: friend requests, friendships, blocks and groups with roles.
//!
//! `Social` is the in-memory copy that channel handlers consult without I/O. Every change is
//! planned here as a [`SocialWrite`], made durable by the [`crate::UserStore`] in one
//! transaction, and only then applied to memory.

use crate::UserError;
pub use im_protocol::wire::{RequestState, Role};
use im_protocol::{GroupId, UserId};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet};

/// A friend request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct FriendRequest {
    /// Request id.
    pub id: u64,
    /// Who asked.
    pub from: UserId,
    /// Who is asked.
    pub to: UserId,
    /// Where it stands.
    pub state: RequestState,
}

/// A group and its members in joining order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// Group id.
    pub id: GroupId,
    /// Display name.
    pub name: String,
    /// Members, longest-standing first.
    pub members: Vec<(UserId, Role)>,
}

impl Group {
    /// The owner.
    pub fn owner(&self) -> Option<UserId> {
        self.members
            .iter()
            .find(|(_, r)| *r == Role::Owner)
            .map(|(u, _)| *u)
    }

    /// The role of `user`, if a member.
    pub fn role_of(&self, user: UserId) -> Option<Role> {
        self.members
            .iter()
            .find(|(u, _)| *u == user)
            .map(|(_, r)| *r)
    }

    /// Every member id.
    pub fn member_ids(&self) -> impl Iterator<Item = UserId> + '_ {
        self.members.iter().map(|(u, _)| *u)
    }
}

/// Who inherits a group when its owner leaves: the longest-standing admin, else the
/// longest-standing member.
pub fn successor(members: &[(UserId, Role)], leaving: UserId) -> Option<UserId> {
    let rest = || members.iter().filter(|(u, _)| *u != leaving);
    rest()
        .find(|(_, r)| *r == Role::Admin)
        .or_else(|| rest().next())
        .map(|(u, _)| *u)
}

/// One durable change to the graph, applied by the store in a single transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SocialWrite {
    /// A new pending request; the store returns its id.
    Request {
        /// Who asks.
        from: UserId,
        /// Who is asked.
        to: UserId,
    },
    /// Answers requests and, on acceptance, makes `a` and `b` friends. `new_request` records a
    /// crossing request as accepted at once; the store returns its id.
    Answer {
        /// Requests to mark.
        requests: Vec<u64>,
        /// The new state of those requests.
        state: RequestState,
        /// The friendship that results, if accepted.
        friends: Option<(UserId, UserId)>,
        /// A crossing request to record as already accepted.
        new_request: Option<(UserId, UserId)>,
    },
    /// Ends a friendship.
    Unfriend(UserId, UserId),
    /// `blocker` blocks `blocked`: ends their friendship and declines pending requests.
    Block {
        /// Who blocks.
        blocker: UserId,
        /// Who is blocked.
        blocked: UserId,
        /// Pending requests between them, now declined.
        requests: Vec<u64>,
    },
    /// Lifts a block.
    Unblock {
        /// Who had blocked.
        blocker: UserId,
        /// Who was blocked.
        blocked: UserId,
    },
    /// A new group; the store returns its id.
    CreateGroup {
        /// Display name.
        name: String,
        /// Members in order, the owner first.
        members: Vec<(UserId, Role)>,
    },
    /// Adds a member or changes a role.
    SetMember {
        /// The group.
        group: GroupId,
        /// The member.
        user: UserId,
        /// The role.
        role: Role,
    },
    /// Removes a member; promotes a successor; deletes the group if nobody is left.
    RemoveMember {
        /// The group.
        group: GroupId,
        /// Who goes.
        user: UserId,
        /// The new owner, when the owner left.
        new_owner: Option<UserId>,
        /// Nobody is left: delete the group.
        delete_group: bool,
    },
}

/// Everything the store holds about the graph, loaded at start-up.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SocialSnapshot {
    /// Friend pairs, each once.
    pub friendships: Vec<(UserId, UserId)>,
    /// (blocker, blocked) pairs.
    pub blocks: Vec<(UserId, UserId)>,
    /// Pending requests.
    pub pending: Vec<FriendRequest>,
    /// Groups with members in joining order.
    pub groups: Vec<Group>,
}

/// The in-memory graph.
#[derive(Debug, Default)]
pub(crate) struct Social {
    friends: HashMap<UserId, HashSet<UserId>>,
    blocks: HashSet<(UserId, UserId)>,
    pub(crate) pending: BTreeMap<u64, FriendRequest>,
    pub(crate) groups: HashMap<GroupId, Group>,
    user_groups: HashMap<UserId, HashSet<GroupId>>,
}

impl Social {
    pub(crate) fn from_snapshot(s: SocialSnapshot) -> Self {
        let mut social = Social::default();
        for (a, b) in s.friendships {
            social.link(a, b);
        }
        social.blocks.extend(s.blocks);
        social
            .pending
            .extend(s.pending.into_iter().map(|r| (r.id, r)));
        for g in s.groups {
            for u in g.member_ids() {
                social.user_groups.entry(u).or_default().insert(g.id);
            }
            social.groups.insert(g.id, g);
        }
        social
    }

    fn link(&mut self, a: UserId, b: UserId) {
        self.friends.entry(a).or_default().insert(b);
        self.friends.entry(b).or_default().insert(a);
    }

    fn unlink(&mut self, a: UserId, b: UserId) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(set) = self.friends.get_mut(&x) {
                set.remove(&y);
                if set.is_empty() {
                    self.friends.remove(&x);
                }
            }
        }
    }

    pub(crate) fn are_friends(&self, a: UserId, b: UserId) -> bool {
        self.friends.get(&a).is_some_and(|s| s.contains(&b))
    }

    pub(crate) fn friends_of(&self, a: UserId) -> Vec<UserId> {
        let mut v: Vec<UserId> = self
            .friends
            .get(&a)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    }

    /// Either side blocked the other.
    pub(crate) fn blocked_between(&self, a: UserId, b: UserId) -> bool {
        self.blocks.contains(&(a, b)) || self.blocks.contains(&(b, a))
    }

    pub(crate) fn has_blocked(&self, blocker: UserId, blocked: UserId) -> bool {
        self.blocks.contains(&(blocker, blocked))
    }

    pub(crate) fn blocked_by(&self, blocker: UserId) -> Vec<UserId> {
        let mut v: Vec<UserId> = self
            .blocks
            .iter()
            .filter(|(a, _)| *a == blocker)
            .map(|(_, b)| *b)
            .collect();
        v.sort_unstable();
        v
    }

    pub(crate) fn groups_of(&self, user: UserId) -> Vec<&Group> {
        let mut v: Vec<&Group> = self
            .user_groups
            .get(&user)
            .into_iter()
            .flatten()
            .filter_map(|g| self.groups.get(g))
            .collect();
        v.sort_by_key(|g| g.id);
        v
    }

    pub(crate) fn group(&self, id: GroupId) -> Result<&Group, UserError> {
        self.groups.get(&id).ok_or(UserError::NoSuchGroup)
    }

    /// The pending requests between two users, either direction.
    pub(crate) fn pending_between(&self, a: UserId, b: UserId) -> Vec<u64> {
        self.pending
            .values()
            .filter(|r| (r.from == a && r.to == b) || (r.from == b && r.to == a))
            .map(|r| r.id)
            .collect()
    }

    /// Applies a change the store has made durable; `new_id` is what the store returned.
    pub(crate) fn apply(&mut self, w: &SocialWrite, new_id: u64) {
        match w {
            SocialWrite::Request { from, to } => {
                let r = FriendRequest {
                    id: new_id,
                    from: *from,
                    to: *to,
                    state: RequestState::Pending,
                };
                self.pending.insert(new_id, r);
            }
            SocialWrite::Answer {
                requests, friends, ..
            } => {
                for id in requests {
                    self.pending.remove(id);
                }
                if let Some((a, b)) = friends {
                    self.link(*a, *b);
                }
            }
            SocialWrite::Unfriend(a, b) => self.unlink(*a, *b),
            SocialWrite::Block {
                blocker,
                blocked,
                requests,
            } => {
                self.unlink(*blocker, *blocked);
                for id in requests {
                    self.pending.remove(id);
                }
                self.blocks.insert((*blocker, *blocked));
            }
            SocialWrite::Unblock { blocker, blocked } => {
                self.blocks.remove(&(*blocker, *blocked));
            }
            SocialWrite::CreateGroup { name, members } => {
                let id = GroupId(new_id);
                for (u, _) in members {
                    self.user_groups.entry(*u).or_default().insert(id);
                }
                self.groups.insert(
                    id,
                    Group {
                        id,
                        name: name.clone(),
                        members: members.clone(),
                    },
                );
            }
            SocialWrite::SetMember { group, user, role } => {
                if let Some(g) = self.groups.get_mut(group) {
                    match g.members.iter_mut().find(|(u, _)| u == user) {
                        Some(m) => m.1 = *role,
                        None => {
                            g.members.push((*user, *role));
                            self.user_groups.entry(*user).or_default().insert(*group);
                        }
                    }
                }
            }
            SocialWrite::RemoveMember {
                group,
                user,
                new_owner,
                delete_group,
            } => {
                if let Some(set) = self.user_groups.get_mut(user) {
                    set.remove(group);
                    if set.is_empty() {
                        self.user_groups.remove(user);
                    }
                }
                if *delete_group {
                    self.groups.remove(group);
                } else if let Some(g) = self.groups.get_mut(group) {
                    g.members.retain(|(u, _)| u != user);
                    if let Some(owner) = new_owner {
                        g.members
                            .iter_mut()
                            .filter(|(u, _)| u == owner)
                            .for_each(|m| m.1 = Role::Owner);
                    }
                }
            }
        }
    }
}
