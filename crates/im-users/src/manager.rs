use crate::UserChange;
use crate::presence::Presence;
use crate::social::Social;
use crate::{DirectMessages, Principal, User, UserError, UserStore};
use im_cluster::{Applier, Entry, Link, Position, Progress};
use im_protocol::delivery::Mailboxes;
use im_protocol::record::Versioned;
use im_protocol::{Message, Target, UserId};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

mod accounts;
mod authorization;
mod backend;
mod cluster;
mod events;
mod friends;
mod groups;
mod sessions;
#[cfg(test)]
mod tests;

pub use backend::SYSTEM_USERNAME;

pub use sessions::SessionPolicy;

pub use crate::hashing::HashParams;
use crate::hashing::HashPool;

/// Settings of the [`UserManager`].
#[derive(Debug, Clone, Copy)]
pub struct UsersConfig {
    /// Password hashing cost.
    pub hash: HashParams,
    /// Who may message whom directly.
    pub direct_messages: DirectMessages,
    /// How long a user with no open stream still counts as online (no flap on reload).
    pub presence_grace: Duration,
    /// How long another node's word that a user is online holds unless repeated: a node
    /// that dies stops counting its users after this.
    pub presence_ttl: Duration,
    /// When login sessions expire.
    pub sessions: SessionPolicy,
}

impl Default for UsersConfig {
    fn default() -> Self {
        Self {
            hash: HashParams::default(),
            direct_messages: DirectMessages::Friends,
            presence_grace: Duration::from_secs(5),
            presence_ttl: Duration::from_secs(30),
            sessions: SessionPolicy::default(),
        }
    }
}

/// A successful login.
#[derive(Debug, Clone)]
pub struct LoginOutcome {
    /// The bearer token; shown once, stored only as a hash.
    pub token: String,
    /// Who logged in.
    pub user: User,
    /// The new session.
    pub principal: Principal,
}

#[derive(Debug, Default)]
struct Directory {
    names: HashMap<UserId, String>,
    ids: HashMap<String, UserId>,
}

/// Ends event streams on this node: those of one login session of the user (revoked), or
/// with `None` all of the user's (a backend's disconnect).
pub type RevokeHook = Arc<dyn Fn(UserId, Option<u64>) + Send + Sync>;

/// Accounts, sessions, the social graph and presence.
///
/// The user directory, the session cache and the social graph are kept in memory (loaded at
/// start), so channel handlers can authorize without blocking. Every change is made durable
/// in the store first, with a [`UserChange`] record in the ordered log; memory changes only
/// when this node's log follower applies that record (see the [`Applier`] impl), on the node
/// that wrote it and on every other, in the same order.
pub struct UserManager {
    store: Arc<dyn UserStore>,
    config: UsersConfig,
    /// The threads argon2 runs on.
    hashing: HashPool,
    directory: RwLock<Directory>,
    sessions: RwLock<sessions::Sessions>,
    /// Session uses waiting to be recorded in batches (see `sessions::touch_queue`).
    touches: tokio::sync::mpsc::Sender<(u64, u64)>,
    social: RwLock<Social>,
    /// Serializes this node's graph changes, so each is planned on the state its
    /// predecessor left.
    social_writes: tokio::sync::Mutex<()>,
    presence: Presence,
    mailboxes: OnceLock<Arc<dyn Mailboxes>>,
    progress: OnceLock<Arc<dyn Progress>>,
    link: OnceLock<Link>,
    on_revoke: OnceLock<RevokeHook>,
    /// The system sender of the server API, once this node has used or created it.
    system: OnceLock<UserId>,
    runtime: Option<tokio::runtime::Handle>,
    me: Weak<UserManager>,
    /// Verified against when the username does not exist, so both cases cost the same.
    decoy_hash: String,
}

impl std::fmt::Debug for UserManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserManager")
            .field("users", &self.directory.read().names.len())
            .finish()
    }
}

impl UserManager {
    /// Loads the directory and the social graph from `store`.
    pub async fn new(
        store: Arc<dyn UserStore>,
        config: UsersConfig,
    ) -> Result<Arc<Self>, UserError> {
        let p = config.hash;
        let hashing = HashPool::start(p)?;
        let mut directory = Directory::default();
        for u in store.all_users().await? {
            directory.ids.insert(u.username.clone(), u.id);
            directory.names.insert(u.id, u.username);
        }
        let social = Social::from_snapshot(store.load_social().await?);
        let decoy_hash = hashing
            .hash("decoy password that matches nothing".into())
            .await?;
        let runtime = tokio::runtime::Handle::try_current().ok();
        let touches = sessions::touch_queue(store.clone(), runtime.as_ref());
        Ok(Arc::new_cyclic(|me| Self {
            store,
            touches,
            config,
            hashing,
            directory: RwLock::new(directory),
            sessions: RwLock::new(sessions::Sessions::default()),
            social: RwLock::new(social),
            social_writes: tokio::sync::Mutex::new(()),
            presence: Presence::default(),
            mailboxes: OnceLock::new(),
            progress: OnceLock::new(),
            link: OnceLock::new(),
            on_revoke: OnceLock::new(),
            system: OnceLock::new(),
            runtime,
            me: me.clone(),
            decoy_hash,
        }))
    }

    /// Connects the live sessions that ephemeral events (presence, typing, requests) go to.
    pub fn attach_mailboxes(&self, mailboxes: Arc<dyn Mailboxes>) {
        let _ = self.mailboxes.set(mailboxes);
    }

    /// Connects this node's log follower, which applies every change to memory; a write
    /// waits until its own change is applied. Until it is connected, writes fail.
    pub fn attach_log(&self, progress: Arc<dyn Progress>) {
        let _ = self.progress.set(progress);
    }

    /// Sets what ends a revoked session's event streams on this node.
    pub fn on_revoke(&self, hook: RevokeHook) {
        let _ = self.on_revoke.set(hook);
    }

    /// Waits until this node has applied the change at `pos` (read-your-writes).
    async fn applied(&self, pos: Position) -> Result<(), UserError> {
        if pos == 0 {
            return Ok(());
        }
        let progress = self.progress.get().ok_or(UserError::Lagging)?;
        progress.wait_applied(pos).await.map_err(|e| {
            tracing::warn!(error = %e, "a change of this node's was not applied in time");
            UserError::Lagging
        })
    }

    /// Catches up with everything committed anywhere, so a graph change is planned on the
    /// newest state (another node may have changed it a moment ago).
    async fn fresh(&self) -> Result<(), UserError> {
        match self.progress.get() {
            Some(p) => p.catch_up().await.map_err(|_| UserError::Lagging),
            None => Err(UserError::Lagging),
        }
    }

    /// Runs a check on memory; if its refusal could come from memory being behind the log
    /// (a change the client saw succeed on another node), catches up and checks again.
    pub async fn settled<T>(
        &self,
        check: impl Fn() -> Result<T, UserError>,
    ) -> Result<T, UserError> {
        match check() {
            Err(e) if e.may_be_stale() => {
                if let Some(p) = self.progress.get() {
                    if p.catch_up().await.is_err() {
                        return Err(UserError::Lagging);
                    }
                }
                check()
            }
            other => other,
        }
    }

    /// The direct-message policy in force.
    pub fn direct_messages(&self) -> DirectMessages {
        self.config.direct_messages
    }
}

impl Applier for UserManager {
    fn apply(&self, pos: Position, entry: &Entry) {
        let Entry::Change { record, .. } = entry else {
            return;
        };
        let change = match UserChange::decode(record) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(pos, error = %e, "skipping an undecodable user change");
                return;
            }
        };
        match change {
            UserChange::Created(user) => {
                let mut dir = self.directory.write();
                dir.ids.insert(user.username.clone(), user.id);
                dir.names.insert(user.id, user.username);
            }
            UserChange::SessionRevoked { user, session } => {
                self.sessions.write().forget(session, pos);
                if let Some(hook) = self.on_revoke.get() {
                    hook(user, Some(session));
                }
            }
            UserChange::SessionsRevoked { user, sessions } => {
                {
                    let mut cache = self.sessions.write();
                    for &session in &sessions {
                        cache.forget(session, pos);
                    }
                }
                if let Some(hook) = self.on_revoke.get() {
                    sessions
                        .iter()
                        .for_each(|&session| hook(user, Some(session)));
                }
            }
            UserChange::Social { write, id } => self.social.write().apply(&write, id),
        }
    }
}

impl im_protocol::delivery::Recipients for UserManager {
    fn recipients(&self, msg: &Message, out: &mut Vec<UserId>) {
        out.push(msg.from);
        match msg.to {
            Target::User(to) => out.push(to),
            Target::Group(g) => {
                if let Some(group) = self.social.read().groups.get(&g) {
                    out.extend(group.member_ids());
                }
            }
        }
    }
}

fn check_password(password: &str) -> Result<(), UserError> {
    if password.chars().count() < 8 {
        return Err(UserError::WeakPassword);
    }
    if password.len() > 1024 {
        return Err(UserError::PasswordTooLong);
    }
    Ok(())
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
