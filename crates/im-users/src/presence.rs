//! User-level presence: online while at least one event stream is open, offline only after a
//! grace period with none, so a page reload does not flap.

use im_protocol::UserId;
use parking_lot::Mutex;
use std::collections::HashMap;

#[derive(Debug, Default)]
struct Entry {
    sessions: u32,
    online: bool,
    /// Bumped on every 0 <-> 1 transition; a pending offline check only acts if unchanged.
    generation: u64,
}

/// What a session change means for presence.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Change {
    /// Nothing to announce.
    None,
    /// The user just came online.
    Online,
    /// The last stream closed; confirm offline after the grace period with this generation.
    MaybeOffline(u64),
}

/// Per-user session counts; increments and decrements commute, so callers on any thread and
/// in any order keep it right.
#[derive(Debug, Default)]
pub(crate) struct Presence {
    users: Mutex<HashMap<UserId, Entry>>,
}

impl Presence {
    pub(crate) fn opened(&self, user: UserId) -> Change {
        let mut users = self.users.lock();
        let e = users.entry(user).or_default();
        e.sessions += 1;
        if e.sessions == 1 {
            e.generation += 1;
            if !e.online {
                e.online = true;
                return Change::Online;
            }
        }
        Change::None
    }

    pub(crate) fn closed(&self, user: UserId) -> Change {
        let mut users = self.users.lock();
        let Some(e) = users.get_mut(&user) else {
            return Change::None;
        };
        e.sessions = e.sessions.saturating_sub(1);
        if e.sessions == 0 {
            e.generation += 1;
            return Change::MaybeOffline(e.generation);
        }
        Change::None
    }

    /// After the grace period: true if the user is now offline (and forgets the entry).
    pub(crate) fn confirm_offline(&self, user: UserId, generation: u64) -> bool {
        let mut users = self.users.lock();
        match users.get(&user) {
            Some(e) if e.sessions == 0 && e.generation == generation && e.online => {
                users.remove(&user);
                true
            }
            _ => false,
        }
    }

    pub(crate) fn is_online(&self, user: UserId) -> bool {
        self.users.lock().get(&user).is_some_and(|e| e.online)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_inside_grace_does_not_flap() {
        let p = Presence::default();
        let u = UserId(1);
        assert_eq!(p.opened(u), Change::Online);
        assert_eq!(p.opened(u), Change::None);
        assert_eq!(p.closed(u), Change::None);
        let Change::MaybeOffline(g) = p.closed(u) else {
            panic!()
        };
        assert_eq!(
            p.opened(u),
            Change::None,
            "back within the grace period: no event"
        );
        assert!(!p.confirm_offline(u, g));
        let Change::MaybeOffline(g) = p.closed(u) else {
            panic!()
        };
        assert!(p.confirm_offline(u, g));
        assert!(!p.is_online(u));
        assert_eq!(p.opened(u), Change::Online);
    }
}
