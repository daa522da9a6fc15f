//! User-level presence across the nodes of a deployment.
//!
//! A user is online here while at least one of this node's event streams is theirs, and for a
//! grace period after the last closes, so a page reload does not flap. Other nodes say which
//! of their users are online (news on the bus, repeated by a heartbeat); each word holds for
//! the sender's time to live, so a node that dies stops counting once that runs out. A user
//! counts as online if this node or any other's unexpired word says so. Every node works out
//! the changes of that for itself and tells its own streams, so presence events never cross
//! the bus, only the news they derive from.

use im_cluster::NodeId;
use im_protocol::UserId;
use parking_lot::Mutex;
use std::collections::HashMap;
use std::time::Instant;

#[derive(Debug, Default)]
struct Entry {
    sessions: u32,
    /// Online on this node: a stream is open, or the last one closed within the grace period.
    here: bool,
    /// Bumped on every 0 <-> 1 transition; a pending offline check only acts if unchanged.
    generation: u64,
    /// Other nodes that hold a stream of the user, and until when their word holds.
    elsewhere: Vec<(NodeId, Instant)>,
}

impl Entry {
    fn online(&self) -> bool {
        self.here || !self.elsewhere.is_empty()
    }

    fn unused(&self) -> bool {
        self.sessions == 0 && !self.here && self.elsewhere.is_empty()
    }
}

/// What a change means: whether the user came online or went offline on this node (news
/// for the other nodes), and anywhere (an event for friends' streams here).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Transition {
    /// `Some(online)` if this node's own view of the user changed.
    pub(crate) here: Option<bool>,
    /// `Some(online)` if whether the user is online anywhere changed.
    pub(crate) anywhere: Option<bool>,
}

/// Per-user session counts and other nodes' word; increments and decrements commute, so
/// callers on any thread and in any order keep it right.
#[derive(Debug, Default)]
pub(crate) struct Presence {
    users: Mutex<HashMap<UserId, Entry>>,
}

impl Presence {
    /// A stream of `user` opened on this node.
    pub(crate) fn opened(&self, user: UserId) -> Transition {
        let mut users = self.users.lock();
        let e = users.entry(user).or_default();
        e.sessions += 1;
        let mut t = Transition::default();
        if e.sessions == 1 {
            e.generation += 1;
            if !e.here {
                t.anywhere = (!e.online()).then_some(true);
                e.here = true;
                t.here = Some(true);
            }
        }
        t
    }

    /// A stream of `user` closed on this node; with the last one, the generation to confirm
    /// after the grace period.
    pub(crate) fn closed(&self, user: UserId) -> Option<u64> {
        let mut users = self.users.lock();
        let e = users.get_mut(&user)?;
        e.sessions = e.sessions.saturating_sub(1);
        (e.sessions == 0).then(|| {
            e.generation += 1;
            e.generation
        })
    }

    /// After the grace period: the user is offline here if no stream reopened meanwhile.
    pub(crate) fn confirm_offline(&self, user: UserId, generation: u64) -> Transition {
        let mut users = self.users.lock();
        let Some(e) = users.get_mut(&user) else {
            return Transition::default();
        };
        if e.sessions != 0 || e.generation != generation || !e.here {
            return Transition::default();
        }
        e.here = false;
        let t = Transition {
            here: Some(false),
            anywhere: (!e.online()).then_some(false),
        };
        if e.unused() {
            users.remove(&user);
        }
        t
    }

    /// Another node's word: `online` have a stream there until `until` (unless repeated),
    /// `offline` no longer do. Returns the users whose being online anywhere changed.
    pub(crate) fn news(
        &self,
        node: NodeId,
        online: &[UserId],
        offline: &[UserId],
        until: Instant,
    ) -> Vec<(UserId, bool)> {
        let mut changed = Vec::new();
        let mut users = self.users.lock();
        for &user in online {
            let e = users.entry(user).or_default();
            let was = e.online();
            match e.elsewhere.iter_mut().find(|(n, _)| *n == node) {
                Some(word) => word.1 = until,
                None => e.elsewhere.push((node, until)),
            }
            if !was {
                changed.push((user, true));
            }
        }
        for &user in offline {
            let Some(e) = users.get_mut(&user) else {
                continue;
            };
            let was = e.online();
            e.elsewhere.retain(|(n, _)| *n != node);
            if was && !e.online() {
                changed.push((user, false));
            }
            if e.unused() {
                users.remove(&user);
            }
        }
        changed
    }

    /// Forgets every word that ran out by `now` (a node that died); returns the users who
    /// are therefore offline anywhere.
    pub(crate) fn expire(&self, now: Instant) -> Vec<UserId> {
        let mut gone = Vec::new();
        self.users.lock().retain(|user, e| {
            if e.elsewhere.is_empty() {
                return true;
            }
            let was = e.online();
            e.elsewhere.retain(|(_, until)| *until > now);
            if was && !e.online() {
                gone.push(*user);
            }
            !e.unused()
        });
        gone
    }

    /// Everyone online on this node, for the heartbeat.
    pub(crate) fn here(&self) -> Vec<UserId> {
        let users = self.users.lock();
        users
            .iter()
            .filter(|(_, e)| e.here)
            .map(|(u, _)| *u)
            .collect()
    }

    /// Everyone online on any node, in no order.
    pub(crate) fn online(&self) -> Vec<UserId> {
        let users = self.users.lock();
        users
            .iter()
            .filter(|(_, e)| e.online())
            .map(|(u, _)| *u)
            .collect()
    }

    /// Whether the user is online on any node (or was within the grace period here).
    pub(crate) fn is_online(&self, user: UserId) -> bool {
        self.users.lock().get(&user).is_some_and(Entry::online)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const HERE_ON: Transition = Transition {
        here: Some(true),
        anywhere: Some(true),
    };
    const HERE_OFF: Transition = Transition {
        here: Some(false),
        anywhere: Some(false),
    };

    #[test]
    fn reload_inside_grace_does_not_flap() {
        let p = Presence::default();
        let u = UserId(1);
        assert_eq!(p.opened(u), HERE_ON);
        assert_eq!(p.opened(u), Transition::default());
        assert_eq!(p.closed(u), None);
        let g = p.closed(u).unwrap();
        assert_eq!(
            p.opened(u),
            Transition::default(),
            "back within the grace period: no event"
        );
        assert_eq!(p.confirm_offline(u, g), Transition::default());
        let g = p.closed(u).unwrap();
        assert_eq!(p.confirm_offline(u, g), HERE_OFF);
        assert!(!p.is_online(u));
        assert_eq!(p.opened(u), HERE_ON);
    }

    #[test]
    fn online_anywhere_counts_every_node() {
        let p = Presence::default();
        let (u, a, b) = (UserId(1), NodeId(10), NodeId(11));
        let now = Instant::now();
        let later = now + Duration::from_secs(30);
        assert_eq!(p.news(a, &[u], &[], later), vec![(u, true)]);
        assert_eq!(p.news(b, &[u], &[], later), vec![], "already online");
        // Online here too: news for the others, no event for friends.
        assert_eq!(
            p.opened(u),
            Transition {
                here: Some(true),
                anywhere: None
            }
        );
        let g = p.closed(u).unwrap();
        assert_eq!(
            p.confirm_offline(u, g),
            Transition {
                here: Some(false),
                anywhere: None
            }
        );
        assert_eq!(p.news(a, &[], &[u], later), vec![]);
        assert!(p.is_online(u), "node b still holds a stream");
        assert_eq!(p.news(b, &[], &[u], later), vec![(u, false)]);
        assert!(!p.is_online(u));
        assert!(p.users.lock().is_empty(), "nothing kept for nobody");
    }

    #[test]
    fn a_silent_node_stops_counting_when_its_word_runs_out() {
        let p = Presence::default();
        let (u, v, dead, alive) = (UserId(1), UserId(2), NodeId(10), NodeId(11));
        let now = Instant::now();
        p.news(dead, &[u, v], &[], now + Duration::from_secs(30));
        p.news(alive, &[v], &[], now + Duration::from_secs(90));
        assert_eq!(p.expire(now + Duration::from_secs(10)), vec![]);
        assert_eq!(p.expire(now + Duration::from_secs(31)), vec![u]);
        assert!(!p.is_online(u));
        assert!(p.is_online(v), "another node still vouches for v");
        // A heartbeat renews the word.
        p.news(alive, &[v], &[], now + Duration::from_secs(150));
        assert_eq!(p.expire(now + Duration::from_secs(100)), vec![]);
        assert_eq!(p.expire(now + Duration::from_secs(151)), vec![v]);
        assert!(p.users.lock().is_empty());
    }

    #[test]
    fn heartbeat_lists_only_this_nodes_users() {
        let p = Presence::default();
        p.opened(UserId(1));
        p.news(
            NodeId(3),
            &[UserId(2)],
            &[],
            Instant::now() + Duration::from_secs(5),
        );
        assert_eq!(p.here(), vec![UserId(1)]);
    }
}
