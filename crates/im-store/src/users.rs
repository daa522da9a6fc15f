//! Accounts and sessions.

use crate::social;
use crate::{SqliteStore, StoreError};
use async_trait::async_trait;
use im_cluster::{Logged, Position, Topic};
use im_protocol::record::Versioned;
use im_protocol::{UserId, now_millis};
use im_users::{
    FriendRequest, Principal, SocialSnapshot, SocialWrite, User, UserChange, UserStore,
    UserStoreError,
};
use rusqlite::{OptionalExtension, params};

fn other(e: StoreError) -> UserStoreError {
    UserStoreError::Other(e.to_string())
}

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<Logged<User>, UserStoreError> {
        let (name, hash) = (username.to_owned(), password_hash.to_owned());
        self.write_logged(move |conn, log| {
            conn.prepare_cached(
                "INSERT INTO users (username, password_hash, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![name, hash, now_millis() as i64])?;
            let user = User {
                id: UserId(conn.last_insert_rowid() as u64),
                username: name,
            };
            let pos = log.record(
                conn,
                Topic::Users,
                UserChange::Created(user.clone()).encode()?,
            )?;
            Ok(Logged { value: user, pos })
        })
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                UserStoreError::UsernameTaken
            } else {
                other(e)
            }
        })
    }

    async fn login_record(&self, username: &str) -> Result<Option<(User, String)>, UserStoreError> {
        let name = username.to_owned();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT id, password_hash FROM users WHERE username = ?1")?
                .query_row(params![name], |r| {
                    Ok((
                        User {
                            id: UserId(r.get::<_, i64>(0)? as u64),
                            username: name.clone(),
                        },
                        r.get(1)?,
                    ))
                })
                .optional()?)
        })
        .await
        .map_err(other)
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, UserStoreError> {
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT username FROM users WHERE id = ?1")?
                .query_row(params![id.0 as i64], |r| {
                    Ok(User {
                        id,
                        username: r.get(0)?,
                    })
                })
                .optional()?)
        })
        .await
        .map_err(other)
    }

    async fn all_users(&self) -> Result<Vec<User>, UserStoreError> {
        self.read(|conn| {
            let mut stmt = conn.prepare("SELECT id, username FROM users")?;
            let rows = stmt.query_map([], |r| {
                Ok(User {
                    id: UserId(r.get::<_, i64>(0)? as u64),
                    username: r.get(1)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .map_err(other)
    }

    async fn load_social(&self) -> Result<SocialSnapshot, UserStoreError> {
        self.read(social::load).await.map_err(other)
    }

    async fn apply_social(&self, change: &SocialWrite) -> Result<Logged<u64>, UserStoreError> {
        let write = change.clone();
        self.write_logged(move |conn, log| {
            let id = social::apply(conn, &write)?;
            let pos = log.record(
                conn,
                Topic::Users,
                UserChange::Social { write, id }.encode()?,
            )?;
            Ok(Logged { value: id, pos })
        })
        .await
        .map_err(other)
    }

    async fn friend_request(&self, id: u64) -> Result<Option<FriendRequest>, UserStoreError> {
        self.read(move |conn| social::request(conn, id))
            .await
            .map_err(other)
    }

    async fn create_session(
        &self,
        user: UserId,
        token_hash: [u8; 32],
    ) -> Result<u64, UserStoreError> {
        self.write(move |conn| {
            conn.prepare_cached(
                "INSERT INTO sessions (token_hash, user_id, created_at) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![&token_hash[..], user.0 as i64, now_millis() as i64])?;
            Ok(conn.last_insert_rowid() as u64)
        })
        .await
        .map_err(other)
    }

    async fn session(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<(Principal, Position)>, UserStoreError> {
        // Read before the query: a revocation committed at or below it is already visible.
        let as_of = self.committed_id();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached("SELECT id, user_id FROM sessions WHERE token_hash = ?1")?
                .query_row(params![&token_hash[..]], |r| {
                    Ok((
                        Principal {
                            session: r.get::<_, i64>(0)? as u64,
                            user: UserId(r.get::<_, i64>(1)? as u64),
                        },
                        as_of,
                    ))
                })
                .optional()?)
        })
        .await
        .map_err(other)
    }

    async fn delete_session(&self, session: u64) -> Result<Logged<()>, UserStoreError> {
        self.write_logged(move |conn, log| {
            let user: Option<i64> = conn
                .prepare_cached("DELETE FROM sessions WHERE id = ?1 RETURNING user_id")?
                .query_row(params![session as i64], |r| r.get(0))
                .optional()?;
            let pos = match user {
                Some(u) => {
                    let change = UserChange::SessionRevoked {
                        user: UserId(u as u64),
                        session,
                    };
                    log.record(conn, Topic::Users, change.encode()?)?
                }
                None => 0,
            };
            Ok(Logged { value: (), pos })
        })
        .await
        .map_err(other)
    }
}
