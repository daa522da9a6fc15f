#![doc = include_str!("../README.md")]
//!
//! Invariants:
//! - A check never blocks: it answers at once, with how long to wait when over budget.
//! - Memory stays bounded under a flood of distinct keys: a key whose budget is full again is
//!   indistinguishable from a new one, and [`MemoryLimiter::purge`] drops it.

use async_trait::async_trait;
use governor::clock::Clock;
use governor::{DefaultKeyedRateLimiter, Quota};
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::{Arc, Weak};
use std::time::Duration;

/// What a budget is kept for; each limit has its own rate and its own keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// Login attempts from one client address.
    LoginPerAddress,
    /// Login attempts on one account, from anywhere (password guessing spread over many
    /// addresses).
    LoginPerAccount,
    /// Registrations from one client address.
    RegisterPerAddress,
    /// Messages sent by one user.
    MessagesPerUser,
    /// Uploads by one user.
    UploadsPerUser,
}

impl Limit {
    /// Every limit, so adapters can size their tables.
    pub const ALL: [Limit; 5] = [
        Limit::LoginPerAddress,
        Limit::LoginPerAccount,
        Limit::RegisterPerAddress,
        Limit::MessagesPerUser,
        Limit::UploadsPerUser,
    ];

    /// The limit's name, for logs and for keys in a shared store.
    pub fn name(self) -> &'static str {
        match self {
            Limit::LoginPerAddress => "login_per_address",
            Limit::LoginPerAccount => "login_per_account",
            Limit::RegisterPerAddress => "register_per_address",
            Limit::MessagesPerUser => "messages_per_user",
            Limit::UploadsPerUser => "uploads_per_user",
        }
    }
}

/// Whose budget a request spends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Key<'a> {
    /// A client address.
    Addr(IpAddr),
    /// An account name as the client typed it (it may not exist).
    Name(&'a str),
    /// A user id.
    User(u64),
}

/// Longest name kept as a key; longer ones are cut, so an attacker's megabyte-long
/// "usernames" cannot fill memory (real usernames are at most 32 bytes).
const MAX_NAME_KEY: usize = 64;

/// A token bucket: `burst` requests at once, refilled at `per_second`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate {
    per_second: f64,
    burst: u32,
}

impl Rate {
    /// A rate, or `None` (no limit) when `per_second` is not a positive number or `burst`
    /// is 0; that is how a configured limit is switched off.
    pub fn new(per_second: f64, burst: u32) -> Option<Self> {
        (per_second.is_finite() && per_second > 0.0 && burst > 0)
            .then_some(Self { per_second, burst })
    }

    /// Requests refilled per second.
    pub fn per_second(&self) -> f64 {
        self.per_second
    }

    /// Requests allowed at once.
    pub fn burst(&self) -> u32 {
        self.burst
    }

    fn quota(&self) -> Option<Quota> {
        let period = Duration::try_from_secs_f64(1.0 / self.per_second).ok()?;
        Some(Quota::with_period(period)?.allow_burst(NonZeroU32::new(self.burst)?))
    }
}

/// The refusal: over budget, try again after this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("rate limited: retry in {0:?}")]
pub struct RetryAfter(pub Duration);

impl RetryAfter {
    /// The wait in whole seconds, rounded up and at least 1, as `Retry-After` wants it (a
    /// client that waits this long is let through).
    pub fn secs(&self) -> u64 {
        let d = self.0;
        (d.as_secs() + u64::from(d.subsec_nanos() > 0)).max(1)
    }
}

/// The port: decides whether a request fits its budget, and spends from it if so.
///
/// Limits that must hold across nodes (login attempts, messages per user) need one budget
/// per key for the whole deployment. [`MemoryLimiter`] keeps it in this process, which is
/// exact for one node and per node in a cluster; an adapter on a shared store (Redis, with
/// the same GCRA in a script) can implement this trait later without changing callers, which
/// is why the check is async.
#[async_trait]
pub trait RateLimiter: Send + Sync + 'static {
    /// `Ok` and one request spent, or how long until one fits.
    async fn check(&self, limit: Limit, key: Key<'_>) -> Result<(), RetryAfter>;
}

/// [`Key`] owned, as the key maps store it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum OwnedKey {
    Addr(IpAddr),
    Name(Box<str>),
    User(u64),
}

impl From<Key<'_>> for OwnedKey {
    fn from(key: Key<'_>) -> Self {
        match key {
            Key::Addr(a) => OwnedKey::Addr(a),
            Key::Name(n) => {
                let mut end = n.len().min(MAX_NAME_KEY);
                while !n.is_char_boundary(end) {
                    end -= 1;
                }
                OwnedKey::Name(n[..end].into())
            }
            Key::User(u) => OwnedKey::User(u),
        }
    }
}

/// The in-memory adapter: one keyed GCRA limiter (`governor`, on a sharded map, so checks
/// share no global lock) per configured [`Limit`].
#[derive(Debug)]
pub struct MemoryLimiter {
    limiters: [Option<DefaultKeyedRateLimiter<OwnedKey>>; Limit::ALL.len()],
}

impl MemoryLimiter {
    /// A limiter enforcing `limits`; a limit not listed never refuses.
    pub fn new(limits: impl IntoIterator<Item = (Limit, Rate)>) -> Self {
        let mut limiters: [Option<DefaultKeyedRateLimiter<OwnedKey>>; Limit::ALL.len()] =
            Default::default();
        for (limit, rate) in limits {
            match rate.quota() {
                Some(q) => limiters[limit as usize] = Some(DefaultKeyedRateLimiter::dashmap(q)),
                None => tracing::warn!(
                    limit = limit.name(),
                    ?rate,
                    "rate out of range; this limit is off"
                ),
            }
        }
        Self { limiters }
    }

    /// The check, synchronously (the trait's async method calls this).
    pub fn check_now(&self, limit: Limit, key: Key<'_>) -> Result<(), RetryAfter> {
        let Some(limiter) = &self.limiters[limit as usize] else {
            return Ok(());
        };
        limiter
            .check_key(&OwnedKey::from(key))
            .map_err(|not_until| RetryAfter(not_until.wait_time_from(limiter.clock().now())))
    }

    /// Forgets every key whose budget is full again (it would behave exactly like a new
    /// key), and gives the freed map capacity back.
    pub fn purge(&self) {
        for limiter in self.limiters.iter().flatten() {
            limiter.retain_recent();
            limiter.shrink_to_fit();
        }
    }

    /// Keys held across all limits (an estimate while checks run).
    pub fn keys(&self) -> usize {
        self.limiters.iter().flatten().map(|l| l.len()).sum()
    }

    /// Purges every `every` on the current tokio runtime, until the limiter is dropped.
    pub fn spawn_purger(self: &Arc<Self>, every: Duration) {
        let me: Weak<Self> = Arc::downgrade(self);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!("no tokio runtime: rate-limit keys will not be purged");
            return;
        };
        runtime.spawn(async move {
            let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                match me.upgrade() {
                    Some(limiter) => limiter.purge(),
                    None => return,
                }
            }
        });
    }
}

#[async_trait]
impl RateLimiter for MemoryLimiter {
    async fn check(&self, limit: Limit, key: Key<'_>) -> Result<(), RetryAfter> {
        self.check_now(limit, key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(last: u8) -> Key<'static> {
        Key::Addr(IpAddr::from([198, 51, 100, last]))
    }

    #[test]
    fn a_burst_then_a_refusal_with_the_wait() {
        let l = MemoryLimiter::new([(Limit::LoginPerAddress, Rate::new(0.5, 3).unwrap())]);
        for _ in 0..3 {
            assert_eq!(l.check_now(Limit::LoginPerAddress, addr(1)), Ok(()));
        }
        let wait = l.check_now(Limit::LoginPerAddress, addr(1)).unwrap_err();
        assert!(wait.0 <= Duration::from_secs(2), "{wait:?}");
        assert_eq!(wait.secs(), 2);
        // Another key and another limit have budgets of their own.
        assert_eq!(l.check_now(Limit::LoginPerAddress, addr(2)), Ok(()));
        assert_eq!(l.check_now(Limit::MessagesPerUser, Key::User(1)), Ok(()));
    }

    #[test]
    fn switched_off_limits_never_refuse() {
        assert_eq!(Rate::new(0.0, 5), None);
        assert_eq!(Rate::new(1.0, 0), None);
        assert_eq!(Rate::new(f64::NAN, 5), None);
        assert_eq!(Rate::new(-1.0, 5), None);
        // A rate so slow that its period does not fit a Duration is off, not a panic.
        let l = MemoryLimiter::new([(Limit::UploadsPerUser, Rate::new(1e-300, 1).unwrap())]);
        for _ in 0..100 {
            assert_eq!(l.check_now(Limit::UploadsPerUser, Key::User(7)), Ok(()));
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(RetryAfter(Duration::from_millis(1)).secs(), 1);
        assert_eq!(RetryAfter(Duration::ZERO).secs(), 1);
        assert_eq!(RetryAfter(Duration::from_millis(1001)).secs(), 2);
        assert_eq!(RetryAfter(Duration::from_secs(5)).secs(), 5);
    }

    #[test]
    fn long_names_are_one_bounded_key() {
        let l = MemoryLimiter::new([(Limit::LoginPerAccount, Rate::new(1.0, 1).unwrap())]);
        let long = "é".repeat(1000);
        assert_eq!(
            l.check_now(Limit::LoginPerAccount, Key::Name(&long)),
            Ok(())
        );
        let longer = format!("{long}x");
        // Same first 64 bytes: the same budget, already spent.
        assert!(
            l.check_now(Limit::LoginPerAccount, Key::Name(&longer))
                .is_err()
        );
    }

    #[test]
    fn purging_forgets_keys_whose_budget_is_full_again() {
        let l = MemoryLimiter::new([(Limit::RegisterPerAddress, Rate::new(1000.0, 1).unwrap())]);
        for i in 0..=255 {
            let _ = l.check_now(Limit::RegisterPerAddress, addr(i));
        }
        assert_eq!(l.keys(), 256);
        std::thread::sleep(Duration::from_millis(20));
        l.purge();
        assert_eq!(l.keys(), 0);
    }

    #[tokio::test]
    async fn the_port_answers_like_the_adapter() {
        let l: Arc<MemoryLimiter> = Arc::new(MemoryLimiter::new([(
            Limit::MessagesPerUser,
            Rate::new(1.0, 1).unwrap(),
        )]));
        l.spawn_purger(Duration::from_millis(5));
        let port: Arc<dyn RateLimiter> = l.clone();
        assert_eq!(
            port.check(Limit::MessagesPerUser, Key::User(1)).await,
            Ok(())
        );
        assert!(
            port.check(Limit::MessagesPerUser, Key::User(1))
                .await
                .is_err()
        );
    }
}
