//! Accounts: registration, login (password checks on the hashing pool), and the in-memory
//! directory of ids and names.

use super::{LoginOutcome, UserManager, check_password, hex};
use crate::{User, UserError, valid_username};
use im_cluster::Logged;
use im_protocol::UserId;

impl UserManager {
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
        getrandom::fill(&mut raw).map_err(|e| UserError::Randomness(im_protocol::Cause::new(e)))?;
        let token = hex(&raw);
        let principal = self.open_session(user.id, &token, user_agent).await?;
        Ok(LoginOutcome {
            token,
            user,
            principal,
        })
    }

    /// Whether `password` matches a stored argon2 `hash`, computed on the hashing pool.
    pub(super) async fn password_matches(
        &self,
        hash: String,
        password: &str,
    ) -> Result<bool, UserError> {
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

    pub(super) fn id_by_name(&self, username: &str) -> Result<UserId, UserError> {
        self.directory
            .read()
            .ids
            .get(username)
            .copied()
            .ok_or(UserError::NoSuchUser)
    }

    pub(super) fn name_of(&self, id: UserId) -> String {
        self.directory
            .read()
            .names
            .get(&id)
            .cloned()
            .unwrap_or_default()
    }
}
