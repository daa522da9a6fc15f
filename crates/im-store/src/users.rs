//! Accounts and sessions.

use crate::social;
use crate::writer::ChangeLog;
use crate::{SqliteStore, StoreError};
use async_trait::async_trait;
use im_cluster::{Logged, Position, Topic};
use im_protocol::record::Versioned;
use im_protocol::{UserId, now_millis};
use im_users::{
    FriendRequest, Principal, SessionRecord, SessionTimes, SocialSnapshot, SocialWrite, User,
    UserChange, UserStore, UserStoreError,
};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;

fn other(e: StoreError) -> UserStoreError {
    UserStoreError::Other(im_protocol::Cause::new(e))
}

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Sqlite(rusqlite::Error::SqliteFailure(f, _))
        if f.code == rusqlite::ErrorCode::ConstraintViolation)
}

/// Deletes the sessions whose ids `select` gives (with `args`) and records one
/// `SessionsRevoked` per user; returns how many, at the last record's position.
fn revoke_where(
    conn: &Connection,
    log: &mut ChangeLog<'_>,
    select: &str,
    args: impl rusqlite::Params,
) -> Result<Logged<usize>, StoreError> {
    let sql = format!("DELETE FROM sessions WHERE id IN ({select}) RETURNING id, user_id");
    let mut by_user: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut stmt = conn.prepare_cached(&sql)?;
    let mut rows = stmt.query(args)?;
    while let Some(r) = rows.next()? {
        let (id, user) = (r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64);
        by_user.entry(user).or_default().push(id);
    }
    let (mut count, mut pos) = (0, 0);
    for (user, mut sessions) in by_user {
        sessions.sort_unstable();
        count += sessions.len();
        let change = UserChange::SessionsRevoked {
            user: UserId(user),
            sessions,
        };
        pos = log.record(conn, Topic::Users, change.encode()?)?;
    }
    Ok(Logged { value: count, pos })
}

/// The sessions of one user but one (0 keeps none: ids start at 1).
const OF_USER_BUT: &str = "SELECT id FROM sessions WHERE user_id = ?1 AND id <> ?2";

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
        user_agent: &str,
    ) -> Result<u64, UserStoreError> {
        let agent = user_agent.to_owned();
        self.write(move |conn| {
            let now = now_millis() as i64;
            conn.prepare_cached(
                "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at, user_agent)
                 VALUES (?1, ?2, ?3, ?3, ?4)",
            )?
            .execute(params![&token_hash[..], user.0 as i64, now, agent])?;
            Ok(conn.last_insert_rowid() as u64)
        })
        .await
        .map_err(other)
    }

    async fn session(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<(Principal, SessionTimes, Position)>, UserStoreError> {
        // Read before the query: a revocation committed at or below it is already visible.
        let as_of = self.committed_id();
        self.read(move |conn| {
            Ok(conn
                .prepare_cached(
                    "SELECT id, user_id, created_at, last_seen_at FROM sessions
                     WHERE token_hash = ?1",
                )?
                .query_row(params![&token_hash[..]], |r| {
                    Ok((
                        Principal {
                            session: r.get::<_, i64>(0)? as u64,
                            user: UserId(r.get::<_, i64>(1)? as u64),
                        },
                        SessionTimes {
                            created_at: r.get::<_, i64>(2)? as u64,
                            last_seen_at: r.get::<_, i64>(3)? as u64,
                        },
                        as_of,
                    ))
                })
                .optional()?)
        })
        .await
        .map_err(other)
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<SessionRecord>, UserStoreError> {
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, created_at, last_seen_at, user_agent FROM sessions
                 WHERE user_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map(params![user.0 as i64], |r| {
                Ok(SessionRecord {
                    id: r.get::<_, i64>(0)? as u64,
                    times: SessionTimes {
                        created_at: r.get::<_, i64>(1)? as u64,
                        last_seen_at: r.get::<_, i64>(2)? as u64,
                    },
                    user_agent: r.get(3)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .map_err(other)
    }

    async fn touch_sessions(&self, seen: &[(u64, u64)]) -> Result<(), UserStoreError> {
        let seen = seen.to_vec();
        self.write(move |conn| {
            let mut stmt = conn.prepare_cached(
                "UPDATE sessions SET last_seen_at = MAX(last_seen_at, ?2) WHERE id = ?1",
            )?;
            for (id, at) in seen {
                stmt.execute(params![id as i64, at as i64])?;
            }
            Ok(())
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

    async fn revoke_sessions(
        &self,
        user: UserId,
        keep: Option<u64>,
    ) -> Result<Logged<usize>, UserStoreError> {
        let keep = keep.unwrap_or(0) as i64;
        self.write_logged(move |conn, log| {
            revoke_where(conn, log, OF_USER_BUT, params![user.0 as i64, keep])
        })
        .await
        .map_err(other)
    }

    async fn set_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: u64,
    ) -> Result<Logged<usize>, UserStoreError> {
        let hash = password_hash.to_owned();
        self.write_logged(move |conn, log| {
            conn.prepare_cached("UPDATE users SET password_hash = ?2 WHERE id = ?1")?
                .execute(params![user.0 as i64, hash])?;
            revoke_where(conn, log, OF_USER_BUT, params![user.0 as i64, keep as i64])
        })
        .await
        .map_err(other)
    }

    async fn expire_sessions(
        &self,
        idle_before: u64,
        created_before: u64,
        limit: usize,
    ) -> Result<Logged<usize>, UserStoreError> {
        self.write_logged(move |conn, log| {
            revoke_where(
                conn,
                log,
                "SELECT id FROM sessions WHERE last_seen_at < ?1 OR created_at < ?2 LIMIT ?3",
                params![idle_before as i64, created_before as i64, limit as i64],
            )
        })
        .await
        .map_err(other)
    }
}
