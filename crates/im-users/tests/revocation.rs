//! The session cache cannot bring a revoked session back: a lookup that read the session
//! before its revocation committed, and returns after the revocation was applied, must not
//! be cached. The store here pauses that lookup exactly in the window where it would.

use async_trait::async_trait;
use bytes::Bytes;
use im_cluster::{Entry, Lagging, Logged, Position, Progress, Topic};
use im_protocol::UserId;
use im_protocol::record::Versioned;
use im_users::{
    Authenticator, Credentials, FriendRequest, HashParams, Principal, SessionRecord, SessionTimes,
    SocialSnapshot, SocialWrite, User, UserChange, UserManager, UserStore, UserStoreError,
    UsersConfig,
};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio::sync::Notify;

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
const BOB: Principal = Principal {
    user: UserId(2),
    session: 7,
};

/// Holds one session until `revoked`; its first lookup waits at `gate`.
#[derive(Default)]
struct Store {
    revoked: AtomicBool,
    paused_once: AtomicBool,
    reached: Notify,
    gate: Notify,
}

#[async_trait]
impl UserStore for Store {
    async fn session(
        &self,
        _: [u8; 32],
    ) -> Result<Option<(Principal, SessionTimes, Position)>, UserStoreError> {
        // Read "now": valid as of position 10, and just used.
        let now = im_protocol::now_millis();
        let times = SessionTimes {
            created_at: now,
            last_seen_at: now,
        };
        let answer = (!self.revoked.load(Ordering::SeqCst)).then_some((BOB, times, 10));
        if !self.paused_once.swap(true, Ordering::SeqCst) {
            self.reached.notify_one();
            self.gate.notified().await;
        }
        Ok(answer)
    }
    async fn create_user(&self, _: &str, _: &str) -> Result<Logged<User>, UserStoreError> {
        unimplemented!("not used here")
    }
    async fn login_record(&self, _: &str) -> Result<Option<(User, String)>, UserStoreError> {
        Ok(None)
    }
    async fn user(&self, _: UserId) -> Result<Option<User>, UserStoreError> {
        Ok(None)
    }
    async fn all_users(&self) -> Result<Vec<User>, UserStoreError> {
        Ok(Vec::new())
    }
    async fn load_social(&self) -> Result<SocialSnapshot, UserStoreError> {
        Ok(SocialSnapshot::default())
    }
    async fn apply_social(&self, _: &SocialWrite) -> Result<Logged<u64>, UserStoreError> {
        unimplemented!("not used here")
    }
    async fn friend_request(&self, _: u64) -> Result<Option<FriendRequest>, UserStoreError> {
        Ok(None)
    }
    async fn create_session(&self, _: UserId, _: [u8; 32], _: &str) -> Result<u64, UserStoreError> {
        unimplemented!("not used here")
    }
    async fn sessions_of(&self, _: UserId) -> Result<Vec<SessionRecord>, UserStoreError> {
        unimplemented!("not used here")
    }
    async fn touch_sessions(&self, _: &[(u64, u64)]) -> Result<(), UserStoreError> {
        Ok(())
    }
    async fn delete_session(&self, _: u64) -> Result<Logged<()>, UserStoreError> {
        unimplemented!("not used here")
    }
    async fn revoke_sessions(
        &self,
        _: UserId,
        _: Option<u64>,
    ) -> Result<Logged<usize>, UserStoreError> {
        unimplemented!("not used here")
    }
    async fn set_password(
        &self,
        _: UserId,
        _: &str,
        _: u64,
    ) -> Result<Logged<usize>, UserStoreError> {
        unimplemented!("not used here")
    }
    async fn expire_sessions(
        &self,
        _: u64,
        _: u64,
        _: usize,
    ) -> Result<Logged<usize>, UserStoreError> {
        unimplemented!("not used here")
    }
}

/// Everything is applied at once.
struct Applied;

#[async_trait]
impl Progress for Applied {
    fn applied(&self) -> Position {
        u64::MAX
    }
    async fn wait_applied(&self, _: Position) -> Result<(), Lagging> {
        Ok(())
    }
    async fn catch_up(&self) -> Result<(), Lagging> {
        Ok(())
    }
}

async fn who(users: &UserManager) -> Option<Principal> {
    users
        .authenticate(Credentials {
            bearer: Some(TOKEN),
            cookie: None,
        })
        .await
        .unwrap()
}

#[tokio::test]
async fn a_lookup_that_straddles_a_revocation_is_not_cached() {
    let store = Arc::new(Store::default());
    let config = UsersConfig {
        hash: HashParams {
            memory_kib: 8,
            iterations: 1,
            concurrency: 1,
            ..HashParams::default()
        },
        ..UsersConfig::default()
    };
    let users = UserManager::new(store.clone(), config).await.unwrap();
    users.attach_log(Arc::new(Applied));

    // A request looks the token up and reads the session, still valid...
    let racing = {
        let users = users.clone();
        tokio::spawn(async move { who(&users).await })
    };
    store.reached.notified().await;
    // ...then the logout commits (position 11) and this node's follower applies it...
    store.revoked.store(true, Ordering::SeqCst);
    let revoked = UserChange::SessionRevoked {
        user: BOB.user,
        session: BOB.session,
    };
    im_cluster::Applier::apply(
        &*users,
        11,
        &Entry::Change {
            topic: Topic::Users,
            record: Bytes::from(revoked.encode().unwrap()),
        },
    );
    // ...and only then does the racing lookup return.
    store.gate.notify_one();
    let _ = racing.await.unwrap();
    assert_eq!(
        who(&users).await,
        None,
        "the revoked session came back through the cache"
    );
}
