use crate::{Authenticator, Credentials, Principal, User, UserError, UserStore, valid_username};
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use async_trait::async_trait;
use im_protocol::{Message, Target, UserId};
use parking_lot::RwLock;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use tokio::sync::Semaphore;

/// argon2id cost settings. The defaults are OWASP's recommendation (19 MiB, 2 passes).
#[derive(Debug, Clone, Copy)]
pub struct HashParams {
    /// Memory in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Hashes computed at once; the rest queue, so a login storm cannot exhaust memory.
    pub concurrency: usize,
}

impl Default for HashParams {
    fn default() -> Self {
        Self {
            memory_kib: 19 * 1024,
            iterations: 2,
            concurrency: 4,
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

/// Accounts and sessions, with an in-memory directory so channel handlers can check users
/// without blocking.
pub struct UserManager {
    store: Arc<dyn UserStore>,
    argon: Argon2<'static>,
    hashing: Semaphore,
    known: RwLock<HashSet<UserId>>,
    sessions: RwLock<HashMap<[u8; 32], Principal>>,
    /// Verified against when the username does not exist, so both cases cost the same.
    decoy_hash: String,
}

impl std::fmt::Debug for UserManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserManager")
            .field("users", &self.known.read().len())
            .finish()
    }
}

impl UserManager {
    /// Loads the directory from `store`.
    pub async fn new(store: Arc<dyn UserStore>, params: HashParams) -> Result<Self, UserError> {
        let argon_params = Params::new(params.memory_kib.max(8), params.iterations.max(1), 1, None)
            .map_err(|e| UserError::Store(format!("argon2 parameters: {e}")))?;
        let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, argon_params);
        let known = store.user_ids().await?.into_iter().collect();
        let decoy_hash = hash_password(&argon, "decoy password that matches nothing")?;
        Ok(Self {
            store,
            argon,
            hashing: Semaphore::new(params.concurrency.max(1)),
            known: RwLock::new(known),
            sessions: RwLock::new(HashMap::new()),
            decoy_hash,
        })
    }

    /// Creates an account.
    pub async fn register(&self, username: &str, password: &str) -> Result<User, UserError> {
        if !valid_username(username) {
            return Err(UserError::InvalidUsername);
        }
        check_password(password)?;
        let password = password.to_owned();
        let hash = self
            .on_hash_pool(move |argon| hash_password(argon, &password))
            .await??;
        let user = self.store.create_user(username, &hash).await?;
        self.known.write().insert(user.id);
        Ok(user)
    }

    /// Checks a password and opens a session. Unknown users cost the same as wrong passwords.
    pub async fn login(&self, username: &str, password: &str) -> Result<LoginOutcome, UserError> {
        if password.len() > 1024 {
            return Err(UserError::BadCredentials);
        }
        let record = self.store.login_record(username).await?;
        let hash = record
            .as_ref()
            .map_or(self.decoy_hash.clone(), |(_, h)| h.clone());
        let password = password.to_owned();
        let ok = self
            .on_hash_pool(move |argon| {
                PasswordHash::new(&hash)
                    .is_ok_and(|h| argon.verify_password(password.as_bytes(), &h).is_ok())
            })
            .await?;
        let user = match record {
            Some((user, _)) if ok => user,
            _ => return Err(UserError::BadCredentials),
        };
        let mut raw = [0u8; 32];
        getrandom::fill(&mut raw).map_err(|e| UserError::Store(format!("randomness: {e}")))?;
        let token = hex(&raw);
        let token_hash = token_hash(&token);
        let session = self.store.create_session(user.id, token_hash).await?;
        let principal = Principal {
            user: user.id,
            session,
        };
        self.sessions.write().insert(token_hash, principal);
        Ok(LoginOutcome {
            token,
            user,
            principal,
        })
    }

    /// Revokes the session a token belongs to.
    pub async fn logout(&self, principal: Principal) -> Result<(), UserError> {
        self.sessions
            .write()
            .retain(|_, p| p.session != principal.session);
        self.store.delete_session(principal.session).await?;
        Ok(())
    }

    /// One account.
    pub async fn user(&self, id: UserId) -> Result<User, UserError> {
        self.store.user(id).await?.ok_or(UserError::NoSuchUser)
    }

    /// Whether an account exists, without I/O (for handlers on the hot path).
    pub fn exists(&self, id: UserId) -> bool {
        self.known.read().contains(&id)
    }

    /// Whether `user` may read `conversation`'s history.
    pub fn check_party(&self, user: UserId, conversation: &str) -> Result<(), UserError> {
        if let Some((a, b)) = im_protocol::direct_parties(conversation) {
            return if user == a || user == b {
                Ok(())
            } else {
                Err(UserError::NotParticipant)
            };
        }
        if im_protocol::group_of(conversation).is_some() {
            // Groups arrive with the social features; until then no group exists.
            return Err(UserError::NoSuchGroup);
        }
        Err(UserError::NoSuchConversation)
    }

    /// Runs argon2 work on the blocking pool, a few at a time.
    async fn on_hash_pool<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Argon2<'static>) -> T + Send + 'static,
    ) -> Result<T, UserError> {
        let _permit = self
            .hashing
            .acquire()
            .await
            .map_err(|e| UserError::Store(e.to_string()))?;
        let argon = self.argon.clone();
        tokio::task::spawn_blocking(move || work(&argon))
            .await
            .map_err(|e| UserError::Store(format!("hashing task: {e}")))
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

fn hash_password(argon: &Argon2<'_>, password: &str) -> Result<String, UserError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| UserError::Store(format!("randomness: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| UserError::Store(e.to_string()))?;
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| UserError::Store(format!("argon2: {e}")))
}

fn token_hash(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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
        if let Some(p) = self.sessions.read().get(&hash) {
            return Ok(Some(*p));
        }
        let found = self.store.session(hash).await?;
        if let Some(p) = found {
            self.sessions.write().insert(hash, p);
        }
        Ok(found)
    }
}

impl im_pool::Recipients for UserManager {
    fn recipients(&self, msg: &Message, out: &mut Vec<UserId>) {
        out.push(msg.from);
        if let Target::User(to) = msg.to {
            out.push(to);
        }
    }
}
