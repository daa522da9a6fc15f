//! The [`UserManager`]'s side of the bus: ephemeral events for other nodes' streams, and
//! presence across nodes (see `crate::presence` for the model).

use super::UserManager;
use im_cluster::{Ephemeral, Link, NodeId, PresenceNews, Signal};
use im_protocol::UserId;
use im_protocol::sse::Frame;
use im_protocol::wire::PresenceEvent;
use serde::Serialize;
use std::sync::Weak;
use std::time::{Duration, Instant};

/// Users named in one presence frame, so that a heartbeat of many users fits every bus
/// (PostgreSQL's `NOTIFY` takes under 8000 bytes).
const NEWS_CHUNK: usize = 512;

impl UserManager {
    /// Connects this node's end of the bus, which carries ephemeral events and presence to
    /// the other nodes (a one-process bus by default), and starts the presence heartbeat.
    pub fn attach_link(&self, link: Link) {
        if self.link.set(link).is_err() {
            return;
        }
        if !self.link.get().is_some_and(Link::reaches_others) {
            return; // one process: presence is all here
        }
        self.say_presence(true);
        if let (Some(rt), me) = (self.runtime.as_ref(), self.me.clone()) {
            rt.spawn(presence_upkeep(me, self.config.presence_ttl));
        }
    }

    /// The bus reconnected: news may have been lost both ways, so say everything again and
    /// ask the others to.
    pub fn bus_reconnected(&self) {
        self.say_presence(true);
    }

    /// Presence news from another node; friends' streams here hear of every change.
    pub fn presence_news(&self, from: NodeId, news: PresenceNews) {
        if news.hello {
            self.say_presence(false);
        }
        let until = Instant::now() + holds_for(news.ttl);
        for (user, online) in self.presence.news(from, &news.online, &news.offline, until) {
            self.announce_presence(user, online);
        }
    }

    /// Delivers an ephemeral event another node sent to this node's streams of its users.
    pub fn deliver_remote(&self, event: &Ephemeral) {
        if let Some(m) = self.mailboxes.get() {
            let frame = Frame {
                id: None,
                bytes: event.frame.clone(),
            };
            for u in &event.users {
                m.deliver(*u, &frame);
            }
        }
    }

    /// Delivers an ephemeral event to this node's streams of `users` and sends it over the
    /// bus to the other nodes' streams.
    pub(super) fn emit(
        &self,
        users: impl IntoIterator<Item = UserId>,
        event: &str,
        data: &impl Serialize,
    ) {
        let users: Vec<UserId> = users.into_iter().collect();
        let Some(frame) = self.emit_here(&users, event, data) else {
            return;
        };
        if let Some(link) = self.link.get() {
            link.send(&Signal::Event(Ephemeral {
                users,
                frame: frame.bytes,
            }));
        }
    }

    /// Delivers an ephemeral event to this node's streams of `users` only.
    fn emit_here(&self, users: &[UserId], event: &str, data: &impl Serialize) -> Option<Frame> {
        let data = match serde_json::to_string(data) {
            Ok(data) => data,
            Err(e) => {
                // The payloads are plain structs; this would be a bug, not bad input.
                tracing::error!(event, error = %e, "an ephemeral event could not be encoded");
                return None;
            }
        };
        let frame = Frame::ephemeral(event, &data);
        if let Some(m) = self.mailboxes.get() {
            for u in users {
                m.deliver(*u, &frame);
            }
        }
        Some(frame)
    }

    /// Tells the user's friends whose streams are on this node; every node does the same for
    /// its own streams, so the event itself never crosses the bus.
    fn announce_presence(&self, user: UserId, online: bool) {
        let friends = self.social.read().friends_of(user);
        self.emit_here(&friends, "presence", &PresenceEvent { online, user });
    }

    /// Acts on a change of this node's presence: news for the other nodes, and an event for
    /// friends here if the user's being online anywhere changed.
    fn presence_moved(&self, user: UserId, t: crate::presence::Transition) {
        if let Some(online) = t.here {
            let (on, off) = if online {
                (vec![user], vec![])
            } else {
                (vec![], vec![user])
            };
            self.tell_nodes(on, off, false);
        }
        if let Some(online) = t.anywhere {
            self.announce_presence(user, online);
        }
    }

    /// Repeats everyone online here (the heartbeat); with `hello`, asks the others to repeat
    /// theirs too.
    fn say_presence(&self, hello: bool) {
        let here = self.presence.here();
        if here.is_empty() {
            if hello {
                self.tell_nodes(Vec::new(), Vec::new(), true);
            }
            return;
        }
        for (i, part) in here.chunks(NEWS_CHUNK).enumerate() {
            self.tell_nodes(part.to_vec(), Vec::new(), hello && i == 0);
        }
    }

    fn tell_nodes(&self, online: Vec<UserId>, offline: Vec<UserId>, hello: bool) {
        if let Some(link) = self.link.get() {
            link.send(&Signal::Presence(PresenceNews {
                online,
                offline,
                ttl: self.config.presence_ttl,
                hello,
            }));
        }
    }
}

/// How long a word holds on the receiving side: a little under its time to live, so that a
/// dead node's users are offline within the time to live even counting the expiry tick.
fn holds_for(ttl: Duration) -> Duration {
    ttl.saturating_sub(expiry_tick(ttl))
}

/// How often expired words are looked for.
fn expiry_tick(ttl: Duration) -> Duration {
    (ttl / 30).clamp(Duration::from_millis(50), Duration::from_secs(1))
}

/// Repeats this node's presence three times per time to live and forgets other nodes'
/// expired word, until the manager is gone.
async fn presence_upkeep(me: Weak<UserManager>, ttl: Duration) {
    let beat = (ttl / 3).max(Duration::from_millis(100));
    let mut expiry = tokio::time::interval(expiry_tick(ttl));
    expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heartbeat = tokio::time::interval_at(tokio::time::Instant::now() + beat, beat);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = expiry.tick() => {
                let Some(users) = me.upgrade() else { return };
                for user in users.presence.expire(Instant::now()) {
                    users.announce_presence(user, false);
                }
            }
            _ = heartbeat.tick() => {
                let Some(users) = me.upgrade() else { return };
                users.say_presence(false);
            }
        }
    }
}

impl im_protocol::delivery::SessionListener for UserManager {
    fn opened(&self, user: UserId) {
        let t = self.presence.opened(user);
        self.presence_moved(user, t);
    }

    fn closed(&self, user: UserId) {
        let Some(generation) = self.presence.closed(user) else {
            return;
        };
        let (Some(rt), Some(me)) = (self.runtime.as_ref(), self.me.upgrade()) else {
            let t = self.presence.confirm_offline(user, generation);
            self.presence_moved(user, t);
            return;
        };
        let grace = self.config.presence_grace;
        rt.spawn(async move {
            tokio::time::sleep(grace).await;
            let t = me.presence.confirm_offline(user, generation);
            me.presence_moved(user, t);
        });
    }
}
