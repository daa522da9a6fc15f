//! The client ids of the messages stored last, so that a post can tell without reading the
//! store that its `client_id` is new, which it nearly always is.

use im_protocol::UserId;
use parking_lot::Mutex;
use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, RandomState};

/// Shards, so that recording (the log follower) and asking (every post) rarely meet on a lock.
const SHARDS: usize = 16;

/// The `(sender, client_id)` pairs of the last `capacity` messages stored with one, as far as
/// this node has applied the log.
///
/// It answers "maybe used" or "not used lately". A pair it does not hold may have been used
/// long ago, so it only spares a post the store read when the answer is the common "not used
/// lately": the log still refuses a repeat (`Outcome::Duplicate`), and a refused post looks
/// its `client_id` up before answering. Pairs are kept as keyed 64-bit hashes: a collision
/// costs one store read, never a wrong answer.
pub struct RecentClientIds {
    shards: Box<[Mutex<Ring>]>,
    keys: RandomState,
    per_shard: usize,
}

/// One shard: the set, and its keys in the order they came, the oldest to be forgotten first.
#[derive(Default)]
struct Ring {
    set: HashSet<u64>,
    order: VecDeque<u64>,
}

impl RecentClientIds {
    /// Remembers about `capacity` pairs (at least one per shard).
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            keys: RandomState::new(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn key(&self, from: UserId, client_id: &str) -> u64 {
        self.keys.hash_one((from.0, client_id))
    }

    fn shard(&self, key: u64) -> &Mutex<Ring> {
        &self.shards[(key % SHARDS as u64) as usize]
    }

    /// Notes a stored message's pair, forgetting the shard's oldest when it is full.
    pub fn record(&self, from: UserId, client_id: &str) {
        let key = self.key(from, client_id);
        let mut ring = self.shard(key).lock();
        if !ring.set.insert(key) {
            return;
        }
        ring.order.push_back(key);
        if ring.order.len() > self.per_shard {
            if let Some(old) = ring.order.pop_front() {
                ring.set.remove(&old);
            }
        }
    }

    /// False when no message stored lately has this pair; true when one may have.
    pub fn may_contain(&self, from: UserId, client_id: &str) -> bool {
        let key = self.key(from, client_id);
        self.shard(key).lock().set.contains(&key)
    }
}

impl std::fmt::Debug for RecentClientIds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecentClientIds")
            .field("capacity", &(self.per_shard * SHARDS))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembers_pairs_per_sender_and_forgets_the_oldest() {
        let recent = RecentClientIds::new(SHARDS * 4);
        recent.record(UserId(1), "a");
        assert!(recent.may_contain(UserId(1), "a"));
        assert!(
            !recent.may_contain(UserId(2), "a"),
            "client ids are per sender"
        );
        assert!(!recent.may_contain(UserId(1), "b"));

        // Far more pairs than it holds: "a" is forgotten, the last ones are kept.
        for i in 0..SHARDS * 100 {
            recent.record(UserId(1), &i.to_string());
        }
        assert!(!recent.may_contain(UserId(1), "a"));
        let last = (SHARDS * 100 - 1).to_string();
        assert!(recent.may_contain(UserId(1), &last));
        let held: usize = recent.shards.iter().map(|s| s.lock().set.len()).sum();
        assert!(held <= SHARDS * 4);
    }

    #[test]
    fn recording_a_pair_twice_keeps_one_entry() {
        let recent = RecentClientIds::new(SHARDS);
        recent.record(UserId(1), "a");
        recent.record(UserId(1), "a");
        let held: usize = recent.shards.iter().map(|s| s.lock().order.len()).sum();
        assert_eq!(held, 1);
    }
}
