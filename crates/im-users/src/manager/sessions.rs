//! Login sessions: the cache that authenticates without I/O, the lazily recorded last use,
//! expiry and its sweep, and the ways a user ends sessions (one, all, all but this one).
//!
//! Every ending goes through the ordered log (`SessionRevoked`, `SessionsRevoked`), so every
//! node drops the session from its cache and ends its streams, whoever ended it and however
//! (logout, the session list, a password change, expiry).

use super::{UserManager, check_password, token_hash};
use crate::{
    Authenticator, Credentials, Principal, SessionRecord, SessionTimes, UserError, UserStore,
};
use async_trait::async_trait;
use im_cluster::{Logged, Position};
use im_protocol::now_millis;
use im_protocol::wire::SessionView;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;
use tokio::sync::mpsc;

/// Uses of sessions waiting to be recorded; when full, a use is not recorded (the next one a
/// minute later is), so a burst never blocks a request.
const TOUCH_QUEUE: usize = 4096;
/// Sessions one sweep write revokes at most, so a transaction stays small.
const SWEEP_BATCH: usize = 1000;
/// The longest a recorded last use may lag behind the real one.
const TOUCH_EVERY_MAX: Duration = Duration::from_secs(60);
/// A user agent is a label for people: this many characters are plenty.
const USER_AGENT_CHARS: usize = 200;

/// When sessions expire. A zero duration switches that rule off.
#[derive(Debug, Clone, Copy)]
pub struct SessionPolicy {
    /// A session unused for this long ends (only requests count as use, not an open stream).
    pub idle: Duration,
    /// A session ends this long after login, however much it is used.
    pub lifetime: Duration,
    /// How often each node looks for expired sessions and revokes them through the log, so
    /// their open streams end everywhere.
    pub sweep_every: Duration,
}

impl Default for SessionPolicy {
    fn default() -> Self {
        Self {
            idle: Duration::from_secs(30 * 24 * 3600),
            lifetime: Duration::from_secs(90 * 24 * 3600),
            sweep_every: Duration::from_secs(60),
        }
    }
}

impl SessionPolicy {
    /// When a session with these times ends (Unix ms), or `None` if it never expires.
    pub fn expires_at(&self, t: SessionTimes) -> Option<u64> {
        let idle = (!self.idle.is_zero()).then(|| t.last_seen_at + self.idle.as_millis() as u64);
        let life =
            (!self.lifetime.is_zero()).then(|| t.created_at + self.lifetime.as_millis() as u64);
        match (idle, life) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn expired(&self, t: SessionTimes, now: u64) -> bool {
        self.expires_at(t).is_some_and(|at| now >= at)
    }

    /// How stale a recorded last use may get: a minute, or a tenth of the idle expiry when
    /// that is shorter, so an active session is never taken for an idle one.
    fn touch_every(&self) -> u64 {
        let tenth = if self.idle.is_zero() {
            TOUCH_EVERY_MAX
        } else {
            self.idle / 10
        };
        tenth.min(TOUCH_EVERY_MAX).as_millis() as u64
    }

    /// The sweep's bounds: last seen before the first, or created before the second, has
    /// expired (0 switches a rule off).
    fn cutoffs(&self, now: u64) -> (u64, u64) {
        let before = |d: Duration| {
            if d.is_zero() {
                0
            } else {
                now.saturating_sub(d.as_millis() as u64)
            }
        };
        (before(self.idle), before(self.lifetime))
    }
}

/// A cached session. `last_seen` moves under the read lock, so the hot path never takes the
/// write lock.
#[derive(Debug)]
struct Live {
    principal: Principal,
    created_at: u64,
    last_seen: AtomicU64,
}

/// What the cache says of a token.
enum Cached {
    Valid(Principal),
    /// Expired as far as this node knows; another node may have seen a later use.
    Expired,
    Unknown,
}

/// The session cache, and the position of the last revocation applied to it.
#[derive(Debug, Default)]
pub(super) struct Sessions {
    by_hash: HashMap<[u8; 32], Live>,
    by_id: HashMap<u64, [u8; 32]>,
    /// A lookup answered as of an older position may predate a revocation already applied,
    /// so it must not be cached (else a logged-out token would work again).
    revoked_at: Position,
}

impl Sessions {
    fn insert(&mut self, hash: [u8; 32], principal: Principal, t: SessionTimes) {
        let seen = self
            .by_hash
            .get(&hash)
            .map_or(0, |l| l.last_seen.load(Ordering::Relaxed));
        self.by_id.insert(principal.session, hash);
        self.by_hash.insert(
            hash,
            Live {
                principal,
                created_at: t.created_at,
                last_seen: AtomicU64::new(seen.max(t.last_seen_at)),
            },
        );
    }

    /// Drops a session; `pos` is its revocation's position.
    pub(super) fn forget(&mut self, session: u64, pos: Position) {
        if let Some(hash) = self.by_id.remove(&session) {
            self.by_hash.remove(&hash);
        }
        self.revoked_at = self.revoked_at.max(pos);
    }

    /// Checks a token against the cache and records its use when the last one recorded is
    /// older than the policy allows.
    fn check(
        &self,
        hash: &[u8; 32],
        now: u64,
        policy: &SessionPolicy,
        touches: &mpsc::Sender<(u64, u64)>,
    ) -> Cached {
        let Some(live) = self.by_hash.get(hash) else {
            return Cached::Unknown;
        };
        let seen = live.last_seen.load(Ordering::Relaxed);
        let times = SessionTimes {
            created_at: live.created_at,
            last_seen_at: seen,
        };
        if policy.expired(times, now) {
            return Cached::Expired;
        }
        // One request per interval wins the exchange and queues the write.
        if now.saturating_sub(seen) >= policy.touch_every()
            && live
                .last_seen
                .compare_exchange(seen, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
            && touches.try_send((live.principal.session, now)).is_err()
        {
            tracing::debug!("the session-use queue is full; this use is not recorded");
        }
        Cached::Valid(live.principal)
    }
}

/// Starts the task that records session uses in batches, one store write per batch; the
/// returned sender feeds it. Without a runtime, uses are not recorded.
pub(super) fn touch_queue(
    store: Arc<dyn UserStore>,
    runtime: Option<&tokio::runtime::Handle>,
) -> mpsc::Sender<(u64, u64)> {
    let (tx, mut rx) = mpsc::channel::<(u64, u64)>(TOUCH_QUEUE);
    if let Some(rt) = runtime {
        rt.spawn(async move {
            let mut batch = Vec::new();
            while rx.recv_many(&mut batch, TOUCH_QUEUE).await > 0 {
                if let Err(e) = store.touch_sessions(&batch).await {
                    tracing::warn!(error = %e, "recording session uses failed");
                }
                batch.clear();
            }
        });
    }
    tx
}

/// A `User-Agent` cut to a label's length (on a character boundary).
fn label(user_agent: &str) -> String {
    user_agent.chars().take(USER_AGENT_CHARS).collect()
}

impl UserManager {
    /// Opens a session for a user whose password was just verified.
    pub(super) async fn open_session(
        &self,
        principal_user: im_protocol::UserId,
        token: &str,
        user_agent: &str,
    ) -> Result<Principal, UserError> {
        let hash = token_hash(token);
        let session = self
            .store
            .create_session(principal_user, hash, &label(user_agent))
            .await?;
        let principal = Principal {
            user: principal_user,
            session,
        };
        let now = now_millis();
        // A new session has no revocation to race with.
        self.sessions.write().insert(
            hash,
            principal,
            SessionTimes {
                created_at: now,
                last_seen_at: now,
            },
        );
        Ok(principal)
    }

    /// How long a new session may live, for the cookie's `Max-Age` (`None`: until logout).
    pub fn session_lifetime(&self) -> Option<Duration> {
        let life = self.config.sessions.lifetime;
        (!life.is_zero()).then_some(life)
    }

    /// Revokes the session a token belongs to, on every node: it returns once this node has
    /// applied the revocation, so the token already fails here.
    pub async fn logout(&self, principal: Principal) -> Result<(), UserError> {
        let Logged { pos, .. } = self.store.delete_session(principal.session).await?;
        if pos == 0 {
            // Already revoked (by a concurrent logout); make sure nothing of it is cached.
            self.sessions.write().forget(principal.session, 0);
        }
        self.applied(pos).await
    }

    /// Revokes every session of the caller, this one included (log out everywhere).
    pub async fn logout_all(&self, principal: Principal) -> Result<(), UserError> {
        let Logged { pos, .. } = self.store.revoke_sessions(principal.user, None).await?;
        self.applied(pos).await
    }

    /// Revokes one of the caller's sessions; someone else's is as unknown as a made-up id.
    pub async fn end_session(&self, principal: Principal, session: u64) -> Result<(), UserError> {
        let mine = self.store.sessions_of(principal.user).await?;
        if !mine.iter().any(|s| s.id == session) {
            return Err(UserError::NoSuchSession);
        }
        let Logged { pos, .. } = self.store.delete_session(session).await?;
        if pos == 0 {
            return Err(UserError::NoSuchSession); // ended meanwhile
        }
        self.applied(pos).await
    }

    /// The caller's live sessions, oldest first, the calling one marked `current`.
    pub async fn session_list(&self, principal: Principal) -> Result<Vec<SessionView>, UserError> {
        let policy = self.config.sessions;
        let now = now_millis();
        let list: Vec<SessionRecord> = self.store.sessions_of(principal.user).await?;
        Ok(list
            .into_iter()
            .filter(|s| !policy.expired(s.times, now))
            .map(|s| SessionView {
                created_at: s.times.created_at,
                current: s.id == principal.session,
                expires_at: policy.expires_at(s.times),
                id: s.id,
                last_seen_at: s.times.last_seen_at,
                user_agent: s.user_agent,
            })
            .collect())
    }

    /// Changes the caller's password: the current one must match and the new one pass the
    /// registration rules. Every other session of the user ends, on every node; this one
    /// stays.
    pub async fn change_password(
        &self,
        principal: Principal,
        current: &str,
        new: &str,
    ) -> Result<(), UserError> {
        check_password(new)?;
        if current.len() > 1024 {
            return Err(UserError::BadCredentials);
        }
        let username = self.user(principal.user)?.username;
        let (_, hash) = self
            .store
            .login_record(&username)
            .await?
            .ok_or(UserError::BadCredentials)?;
        if !self.password_matches(hash, current).await? {
            return Err(UserError::BadCredentials);
        }
        let hash = self.hashing.hash(new.to_owned()).await?;
        let Logged { pos, .. } = self
            .store
            .set_password(principal.user, &hash, principal.session)
            .await?;
        self.applied(pos).await
    }

    /// Starts this node's sweep of expired sessions. Every node runs one: each expired
    /// session is revoked once (the store deletes it and records the revocation in one
    /// transaction), and every node ends its streams when it applies the record.
    pub fn spawn_session_sweeper(&self) {
        let (Some(rt), me) = (self.runtime.as_ref(), self.me.clone()) else {
            return;
        };
        let every = self.config.sessions.sweep_every.max(Duration::from_secs(1));
        rt.spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(me) = me.upgrade() else {
                    return;
                };
                me.sweep_sessions().await;
            }
        });
    }

    /// Revokes every session expired by now; returns how many.
    pub async fn sweep_sessions(&self) -> usize {
        let (idle_before, created_before) = self.config.sessions.cutoffs(now_millis());
        if idle_before == 0 && created_before == 0 {
            return 0;
        }
        let mut total = 0;
        loop {
            match self
                .store
                .expire_sessions(idle_before, created_before, SWEEP_BATCH)
                .await
            {
                Ok(done) => {
                    total += done.value;
                    if done.value < SWEEP_BATCH {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "sweeping expired sessions failed");
                    break;
                }
            }
        }
        if total > 0 {
            tracing::debug!(sessions = total, "expired sessions revoked");
        }
        total
    }

    /// Revokes a session found expired before the sweep got to it, so its streams end too.
    async fn end_expired(&self, session: u64) {
        if let Err(e) = self.store.delete_session(session).await {
            tracing::warn!(session, error = %e, "revoking an expired session failed");
        }
    }
}

#[async_trait]
impl Authenticator for UserManager {
    async fn authenticate(&self, creds: Credentials<'_>) -> Result<Option<Principal>, UserError> {
        let Some(token) = creds.bearer.or(creds.cookie) else {
            return Ok(None);
        };
        // Tokens we issue are 64 hex chars; anything else cannot match, so skip the lookup.
        if token.len() != 64 {
            return Ok(None);
        }
        let hash = token_hash(token);
        let policy = self.config.sessions;
        let now = now_millis();
        if let Cached::Valid(p) = self
            .sessions
            .read()
            .check(&hash, now, &policy, &self.touches)
        {
            return Ok(Some(p));
        }
        // Not cached, or expired as far as this node knows: the store has the last word
        // (another node may have recorded a later use).
        let Some((p, times, as_of)) = self.store.session(hash).await? else {
            return Ok(None);
        };
        if policy.expired(times, now) {
            self.end_expired(p.session).await;
            return Ok(None);
        }
        let cached = {
            let mut cache = self.sessions.write();
            // A revocation applied after the answer was read may be this session's: then the
            // answer is stale and must not be cached, or the token would work again.
            if cache.revoked_at <= as_of {
                cache.insert(hash, p, times);
                true
            } else {
                false
            }
        };
        if cached {
            // Records this use if the stored one is old.
            return Ok(
                match self
                    .sessions
                    .read()
                    .check(&hash, now, &policy, &self.touches)
                {
                    Cached::Valid(p) => Some(p),
                    Cached::Expired | Cached::Unknown => None,
                },
            );
        }
        // Ask again: the fresh answer reflects that revocation if it was this session's.
        Ok(self
            .store
            .session(hash)
            .await?
            .filter(|(_, t, _)| !policy.expired(*t, now))
            .map(|(p, _, _)| p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: u64 = 24 * 3600 * 1000;

    fn policy(idle_days: u64, life_days: u64) -> SessionPolicy {
        SessionPolicy {
            idle: Duration::from_millis(idle_days * DAY),
            lifetime: Duration::from_millis(life_days * DAY),
            sweep_every: Duration::from_secs(60),
        }
    }

    #[test]
    fn a_session_ends_at_the_earlier_of_its_two_expiries() {
        let t = SessionTimes {
            created_at: 1_000,
            last_seen_at: 1_000 + 80 * DAY,
        };
        let p = policy(30, 90);
        assert_eq!(p.expires_at(t), Some(1_000 + 90 * DAY), "absolute first");
        let fresh = SessionTimes {
            created_at: 1_000,
            last_seen_at: 1_000,
        };
        assert_eq!(p.expires_at(fresh), Some(1_000 + 30 * DAY), "idle first");
        assert!(!p.expired(fresh, 1_000 + 30 * DAY - 1));
        assert!(p.expired(fresh, 1_000 + 30 * DAY));
        assert_eq!(policy(0, 90).expires_at(fresh), Some(1_000 + 90 * DAY));
        assert_eq!(policy(30, 0).expires_at(t), Some(1_000 + 110 * DAY));
        assert_eq!(policy(0, 0).expires_at(t), None, "both rules off");
        assert_eq!(policy(0, 0).cutoffs(200 * DAY), (0, 0));
        assert_eq!(p.cutoffs(200 * DAY), (170 * DAY, 110 * DAY));
    }

    #[test]
    fn uses_are_recorded_well_within_the_idle_expiry() {
        assert_eq!(policy(30, 90).touch_every(), 60_000, "a minute at most");
        let short = SessionPolicy {
            idle: Duration::from_secs(2),
            ..policy(0, 0)
        };
        assert_eq!(short.touch_every(), 200);
        assert_eq!(policy(0, 90).touch_every(), 60_000);
    }
}
