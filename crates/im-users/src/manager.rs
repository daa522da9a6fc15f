use crate::UserChange;
use crate::presence::Presence;
use crate::social::{FriendRequest, Group, RequestState, Role, Social, SocialWrite, successor};
use crate::{DirectMessages, Principal, User, UserError, UserStore, valid_username};
use im_cluster::{Applier, Entry, Link, Logged, Position, Progress};
use im_protocol::delivery::Mailboxes;
use im_protocol::record::Versioned;
use im_protocol::{GroupId, Message, MessageId, Target, UserId, conversation_of};
use parking_lot::RwLock;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

mod backend;
mod cluster;
mod sessions;

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
                if let Some(p) = self.progress.get()
                    && p.catch_up().await.is_err()
                {
                    return Err(UserError::Lagging);
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

    // ----- accounts and sessions -----

    /// Creates an account.
    pub async fn register(&self, username: &str, password: &str) -> Result<User, UserError> {
        if !valid_username(username) {
            return Err(UserError::InvalidUsername);
        }
        check_password(password)?;
        let hash = self.hashing.hash(password.to_owned()).await?;
        let Logged { value: user, pos } = self.store.create_user(username, &hash).await?;
        self.applied(pos).await?;
        Ok(user)
    }

    /// Checks a password and opens a session, labelled with the client's `User-Agent`.
    /// Unknown users cost the same as wrong passwords.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        user_agent: &str,
    ) -> Result<LoginOutcome, UserError> {
        if password.len() > 1024 {
            return Err(UserError::BadCredentials);
        }
        let record = self.store.login_record(username).await?;
        let hash = record
            .as_ref()
            .map_or(self.decoy_hash.clone(), |(_, h)| h.clone());
        let ok = self.password_matches(hash, password).await?;
        let user = match record {
            Some((user, _)) if ok => user,
            _ => return Err(UserError::BadCredentials),
        };
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| UserError::Store(format!("randomness: {e}")))?;
        let token = hex(&raw);
        let principal = self.open_session(user.id, &token, user_agent).await?;
        Ok(LoginOutcome {
            token,
            user,
            principal,
        })
    }

    /// Whether `password` matches a stored argon2 `hash`, computed on the hashing pool.
    async fn password_matches(&self, hash: String, password: &str) -> Result<bool, UserError> {
        self.hashing.verify(password.to_owned(), hash).await
    }

    /// One account.
    pub fn user(&self, id: UserId) -> Result<User, UserError> {
        let dir = self.directory.read();
        let username = dir.names.get(&id).ok_or(UserError::NoSuchUser)?.clone();
        Ok(User { id, username })
    }

    /// Whether an account exists, without I/O (for handlers on the hot path).
    pub fn exists(&self, id: UserId) -> bool {
        self.directory.read().names.contains_key(&id)
    }

    fn id_by_name(&self, username: &str) -> Result<UserId, UserError> {
        self.directory
            .read()
            .ids
            .get(username)
            .copied()
            .ok_or(UserError::NoSuchUser)
    }

    fn name_of(&self, id: UserId) -> String {
        self.directory
            .read()
            .names
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }

    // ----- authorization -----

    /// Whether `from` may send to (or type at) `to` under the policy, blocks and membership.
    /// The system sender may send to any user or group that exists.
    pub fn may_send(&self, from: UserId, to: Target) -> Result<(), UserError> {
        let social = self.social.read();
        if self.is_system(from) {
            return match to {
                Target::User(to) if self.exists(to) => Ok(()),
                Target::User(_) => Err(UserError::NoSuchUser),
                Target::Group(g) => social.group(g).map(|_| ()),
            };
        }
        match to {
            Target::User(to) => {
                if !self.exists(to) {
                    return Err(UserError::NoSuchUser);
                }
                if to == from {
                    return Ok(());
                }
                if social.blocked_between(from, to) {
                    return Err(UserError::Blocked);
                }
                if self.config.direct_messages == DirectMessages::Friends
                    && !social.are_friends(from, to)
                {
                    return Err(UserError::NotFriends);
                }
                Ok(())
            }
            Target::Group(g) => match social.group(g)?.role_of(from) {
                Some(_) => Ok(()),
                None => Err(UserError::NotMember),
            },
        }
    }

    /// Whether `user` may read `conversation`'s history.
    pub fn check_party(&self, user: UserId, conversation: &str) -> Result<(), UserError> {
        self.check_conversation(conversation)?;
        if let Some((a, b)) = im_protocol::direct_parties(conversation) {
            return if user == a || user == b {
                Ok(())
            } else {
                Err(UserError::NotParticipant)
            };
        }
        let social = self.social.read();
        match im_protocol::group_of(conversation).map(|g| social.group(g)) {
            Some(Ok(g)) if g.role_of(user).is_some() => Ok(()),
            Some(Err(e)) => Err(e),
            _ => Err(UserError::NotMember),
        }
    }

    /// Everyone who takes part in `conversation` (both users, or the group's members).
    fn parties(&self, conversation: &str) -> Vec<UserId> {
        if let Some((a, b)) = im_protocol::direct_parties(conversation) {
            return if a == b { vec![a] } else { vec![a, b] };
        }
        let social = self.social.read();
        im_protocol::group_of(conversation)
            .and_then(|g| social.group(g).ok())
            .map(|g| g.member_ids().collect())
            .unwrap_or_default()
    }

    // ----- ephemeral events -----

    /// Tells the other parties (not the typist's own sessions) that `from` is typing.
    pub fn typing(&self, from: UserId, to: Target) -> Result<(), UserError> {
        self.may_send(from, to)?;
        let conversation = conversation_of(from, to);
        let others: Vec<UserId> = self
            .parties(&conversation)
            .into_iter()
            .filter(|u| *u != from)
            .collect();
        self.emit(
            others,
            "typing",
            &json!({"from": from, "to": to, "conversation": conversation}),
        );
        Ok(())
    }

    /// Announces a read position to every party, the reader's other sessions included.
    ///
    /// In a direct chat the other side hears it only if the chat has a message and `user`
    /// may write to them (a block either way, or the policy, stops it), as for typing: a read
    /// receipt must not reach strangers or cross a block.
    pub fn announce_read(&self, user: UserId, conversation: &str, up_to: MessageId) {
        let data = json!({"user": user, "conversation": conversation, "up_to": up_to});
        let mut parties = self.parties(conversation);
        if im_protocol::direct_parties(conversation).is_some() {
            parties.retain(|p| {
                *p == user || (up_to.0 > 0 && self.may_send(user, Target::User(*p)).is_ok())
            });
        }
        self.emit(parties, "read", &data);
    }

    /// Whether the user has an open event stream (or had one within the grace period).
    pub fn is_online(&self, user: UserId) -> bool {
        self.presence.is_online(user)
    }

    // ----- friends and blocks -----

    /// The JSON of a friend request, with both usernames for display.
    pub fn request_json(&self, r: &FriendRequest) -> Value {
        json!({
            "id": r.id, "from": r.from, "to": r.to, "state": r.state,
            "from_username": self.name_of(r.from), "to_username": self.name_of(r.to),
        })
    }

    /// Makes a graph change durable and waits until this node's follower has applied it.
    async fn write(&self, w: &SocialWrite) -> Result<u64, UserError> {
        let Logged { value: id, pos } = self.store.apply_social(w).await?;
        self.applied(pos).await?;
        Ok(id)
    }

    /// Asks `username` to be friends. A crossing request is accepted at once; asking again
    /// returns the pending request.
    pub async fn request_friend(
        &self,
        from: UserId,
        username: &str,
    ) -> Result<FriendRequest, UserError> {
        let to = self.settled(|| self.id_by_name(username)).await?;
        if username == SYSTEM_USERNAME {
            // The system sender is nobody's friend.
            return Err(UserError::NoSuchUser);
        }
        if to == from {
            return Err(UserError::SelfRelation);
        }
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        let (existing, crossing) = {
            let social = self.social.read();
            if social.blocked_between(from, to) {
                return Err(UserError::Blocked);
            }
            if social.are_friends(from, to) {
                return Err(UserError::AlreadyFriends);
            }
            let mine = social
                .pending
                .values()
                .find(|r| r.from == from && r.to == to)
                .copied();
            let theirs: Vec<u64> = social
                .pending
                .values()
                .filter(|r| r.from == to && r.to == from)
                .map(|r| r.id)
                .collect();
            (mine, theirs)
        };
        if let Some(r) = existing {
            return Ok(r);
        }
        if crossing.is_empty() {
            let id = self.write(&SocialWrite::Request { from, to }).await?;
            let r = FriendRequest {
                id,
                from,
                to,
                state: RequestState::Pending,
            };
            self.emit(
                [to],
                "friend_request",
                &json!({"request": self.request_json(&r)}),
            );
            return Ok(r);
        }
        let w = SocialWrite::Answer {
            requests: crossing,
            state: RequestState::Accepted,
            friends: Some((from, to)),
            new_request: Some((from, to)),
        };
        let id = self.write(&w).await?;
        let r = FriendRequest {
            id,
            from,
            to,
            state: RequestState::Accepted,
        };
        self.befriended(&r);
        Ok(r)
    }

    /// Both sides learn of a new friendship, and each other's presence.
    fn befriended(&self, r: &FriendRequest) {
        self.emit(
            [r.from, r.to],
            "friend_request",
            &json!({"request": self.request_json(r)}),
        );
        for (a, b) in [(r.from, r.to), (r.to, r.from)] {
            self.emit(
                [b],
                "presence",
                &json!({"user": a, "online": self.is_online(a)}),
            );
        }
    }

    /// Accepts or declines a request; only its addressee may.
    pub async fn answer_request(
        &self,
        user: UserId,
        id: u64,
        accept: bool,
    ) -> Result<FriendRequest, UserError> {
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        let pending = self.social.read().pending.get(&id).copied();
        let Some(mut r) = pending else {
            return match self.store.friend_request(id).await? {
                Some(r) if r.to == user => Err(UserError::RequestAnswered),
                Some(r) if r.from == user => Err(UserError::NotAddressee),
                _ => Err(UserError::NoSuchRequest),
            };
        };
        if r.to != user {
            return Err(if r.from == user {
                UserError::NotAddressee
            } else {
                UserError::NoSuchRequest
            });
        }
        r.state = if accept {
            RequestState::Accepted
        } else {
            RequestState::Declined
        };
        let w = SocialWrite::Answer {
            requests: vec![id],
            state: r.state,
            friends: accept.then_some((r.from, r.to)),
            new_request: None,
        };
        self.write(&w).await?;
        if accept {
            self.befriended(&r);
        } else {
            self.emit(
                [r.from],
                "friend_request",
                &json!({"request": self.request_json(&r)}),
            );
        }
        Ok(r)
    }

    /// Pending requests to and from `user`.
    pub fn requests(&self, user: UserId) -> (Vec<FriendRequest>, Vec<FriendRequest>) {
        let social = self.social.read();
        let incoming = social
            .pending
            .values()
            .filter(|r| r.to == user)
            .copied()
            .collect();
        let outgoing = social
            .pending
            .values()
            .filter(|r| r.from == user)
            .copied()
            .collect();
        (incoming, outgoing)
    }

    /// Friends with their usernames, by id.
    pub fn friends(&self, user: UserId) -> Vec<User> {
        let ids = self.social.read().friends_of(user);
        ids.into_iter()
            .map(|id| User {
                id,
                username: self.name_of(id),
            })
            .collect()
    }

    /// Ends a friendship (a no-op if there is none).
    pub async fn unfriend(&self, user: UserId, other: UserId) -> Result<(), UserError> {
        self.settled(|| self.user(other)).await?;
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        if self.social.read().are_friends(user, other) {
            self.write(&SocialWrite::Unfriend(user, other)).await?;
        }
        Ok(())
    }

    /// Blocks `other`: no messages or requests either way; ends a friendship.
    pub async fn block(&self, user: UserId, other: UserId) -> Result<(), UserError> {
        self.settled(|| self.user(other)).await?;
        if user == other {
            return Err(UserError::SelfRelation);
        }
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        let requests = {
            let social = self.social.read();
            if social.has_blocked(user, other) {
                return Ok(());
            }
            social.pending_between(user, other)
        };
        self.write(&SocialWrite::Block {
            blocker: user,
            blocked: other,
            requests,
        })
        .await?;
        Ok(())
    }

    /// Lifts a block (a no-op if there is none).
    pub async fn unblock(&self, user: UserId, other: UserId) -> Result<(), UserError> {
        self.settled(|| self.user(other)).await?;
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        if self.social.read().has_blocked(user, other) {
            self.write(&SocialWrite::Unblock {
                blocker: user,
                blocked: other,
            })
            .await?;
        }
        Ok(())
    }

    /// The users `user` has blocked.
    pub fn blocked(&self, user: UserId) -> Vec<User> {
        let ids = self.social.read().blocked_by(user);
        ids.into_iter()
            .map(|id| User {
                id,
                username: self.name_of(id),
            })
            .collect()
    }

    // ----- groups -----

    /// The JSON of a group: id, name, owner and members with usernames and roles.
    pub fn group_json(&self, g: &Group) -> Value {
        let members: Vec<Value> = g
            .members
            .iter()
            .map(|(u, r)| json!({"id": u, "username": self.name_of(*u), "role": r}))
            .collect();
        json!({"id": g.id, "name": g.name, "owner": g.owner(), "members": members})
    }

    fn announce_group(&self, group: &Group, change: &str, user: UserId, extra: Option<UserId>) {
        let data = json!({"change": change, "user": user, "group": self.group_json(group)});
        self.emit(group.member_ids().chain(extra), "group", &data);
    }

    /// Creates a group owned by `owner`; every initial member must be a friend of the owner.
    pub async fn create_group(
        &self,
        owner: UserId,
        name: &str,
        members: &[UserId],
    ) -> Result<Group, UserError> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 64 {
            return Err(UserError::InvalidGroupName);
        }
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        let mut list = vec![(owner, Role::Owner)];
        {
            let social = self.social.read();
            for &m in members {
                if m == owner || list.iter().any(|(u, _)| *u == m) {
                    continue;
                }
                if !self.exists(m) {
                    return Err(UserError::NoSuchUser);
                }
                if !social.are_friends(owner, m) {
                    return Err(UserError::NotFriends);
                }
                list.push((m, Role::Member));
            }
        }
        let id = self
            .write(&SocialWrite::CreateGroup {
                name: name.to_owned(),
                members: list,
            })
            .await?;
        let group = self.social.read().group(GroupId(id))?.clone();
        self.announce_group(&group, "created", owner, None);
        Ok(group)
    }

    /// The groups `user` belongs to.
    pub fn groups(&self, user: UserId) -> Vec<Group> {
        self.social
            .read()
            .groups_of(user)
            .into_iter()
            .cloned()
            .collect()
    }

    /// One group, for its members only.
    pub fn group(&self, user: UserId, id: GroupId) -> Result<Group, UserError> {
        let social = self.social.read();
        let g = social.group(id)?;
        g.role_of(user).ok_or(UserError::NotMember)?;
        Ok(g.clone())
    }

    /// Adds `user` as a member; the actor must be an owner or admin and a friend of `user`.
    pub async fn add_member(
        &self,
        actor: UserId,
        id: GroupId,
        user: UserId,
    ) -> Result<Group, UserError> {
        self.settled(|| self.user(user)).await?;
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        {
            let social = self.social.read();
            let g = social.group(id)?;
            let role = g.role_of(actor).ok_or(UserError::NotMember)?;
            if !role.manages() {
                return Err(UserError::NotAdmin);
            }
            if g.role_of(user).is_some() {
                return Ok(g.clone());
            }
            if social.blocked_between(actor, user) {
                return Err(UserError::Blocked);
            }
            if !social.are_friends(actor, user) {
                return Err(UserError::NotFriends);
            }
        }
        self.write(&SocialWrite::SetMember {
            group: id,
            user,
            role: Role::Member,
        })
        .await?;
        let group = self.social.read().group(id)?.clone();
        self.announce_group(&group, "member_added", user, None);
        Ok(group)
    }

    /// Makes a member an admin or a plain member again; only the owner may.
    pub async fn set_role(
        &self,
        actor: UserId,
        id: GroupId,
        user: UserId,
        role: Role,
    ) -> Result<Group, UserError> {
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        {
            let social = self.social.read();
            let g = social.group(id)?;
            let actor_role = g.role_of(actor).ok_or(UserError::NotMember)?;
            if actor_role != Role::Owner || role == Role::Owner {
                return Err(UserError::NotAdmin);
            }
            let current = g.role_of(user).ok_or(UserError::NoSuchUser)?;
            if current == Role::Owner || current == role {
                return Ok(g.clone());
            }
        }
        self.write(&SocialWrite::SetMember {
            group: id,
            user,
            role,
        })
        .await?;
        let group = self.social.read().group(id)?.clone();
        self.announce_group(&group, "role_changed", user, None);
        Ok(group)
    }

    /// Removes `user` from the group: themselves (leave), or by an owner or admin. An admin
    /// cannot remove the owner or another admin. A leaving owner hands the group on; the last
    /// one out deletes it.
    pub async fn remove_member(
        &self,
        actor: UserId,
        id: GroupId,
        user: UserId,
    ) -> Result<(), UserError> {
        self.settled(|| self.user(user)).await?;
        let _serial = self.social_writes.lock().await;
        self.fresh().await?;
        let (w, before) = {
            let social = self.social.read();
            let g = social.group(id)?;
            let actor_role = g.role_of(actor).ok_or(UserError::NotMember)?;
            let Some(target_role) = g.role_of(user) else {
                return Ok(());
            };
            if actor != user {
                let allowed = match actor_role {
                    Role::Owner => true,
                    Role::Admin => target_role == Role::Member,
                    Role::Member => false,
                };
                if !allowed {
                    return Err(UserError::NotAdmin);
                }
            }
            let new_owner = if target_role == Role::Owner {
                successor(&g.members, user)
            } else {
                None
            };
            let delete_group = g.members.len() == 1;
            (
                SocialWrite::RemoveMember {
                    group: id,
                    user,
                    new_owner,
                    delete_group,
                },
                g.clone(),
            )
        };
        self.write(&w).await?;
        let after = self.social.read().group(id).ok().cloned();
        match after {
            Some(g) => self.announce_group(&g, "member_removed", user, Some(user)),
            None => self.announce_group(&before, "deleted", user, None),
        }
        Ok(())
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
