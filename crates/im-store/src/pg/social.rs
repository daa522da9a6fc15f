//! Accounts, sessions and the social graph on PostgreSQL: the writer's part (feature
//! `users`).

use super::writer::Changes;
use crate::StoreError;
use deadpool_postgres::Transaction;
use im_cluster::{Logged, Topic};
use im_protocol::record::Versioned;
use im_protocol::{UserId, now_millis};
use im_users::social::{RequestState, Role, SocialWrite};
use im_users::{User, UserChange};
use std::collections::BTreeMap;

/// A write of this domain.
pub(crate) enum UserWrite {
    /// A new account; answers its id.
    CreateUser { username: String, hash: String },
    /// A new session; answers its id.
    CreateSession {
        user: UserId,
        token_hash: [u8; 32],
        user_agent: String,
    },
    /// Revokes a session.
    DeleteSession(u64),
    /// Records uses of sessions, `(session, Unix ms)`, never moving a time back.
    TouchSessions(Vec<(u64, u64)>),
    /// Revokes every session of `user` but `keep` (0 keeps none); answers how many.
    RevokeSessions { user: UserId, keep: u64 },
    /// A new password hash, and every other session than `keep` revoked; answers how many.
    SetPassword {
        user: UserId,
        hash: String,
        keep: u64,
    },
    /// Revokes up to `limit` sessions idle since before `idle_before` or created before
    /// `created_before`; answers how many.
    ExpireSessions {
        idle_before: u64,
        created_before: u64,
        limit: usize,
    },
    /// A social graph change; answers the new row's id, else 0.
    Social(SocialWrite),
}

fn record(changes: &mut Changes, next: &mut u64, c: &UserChange) -> Result<u64, StoreError> {
    Ok(changes.record(next, Topic::Users, c.encode()?))
}

/// Deletes the sessions whose ids `select` gives (with `args`) and records one
/// `SessionsRevoked` per user; answers how many, at the last record's position.
async fn revoke_where(
    tx: &Transaction<'_>,
    select: &str,
    args: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    next: &mut u64,
    changes: &mut Changes,
) -> Result<Logged<u64>, StoreError> {
    let stmt = tx
        .prepare_cached(&format!(
            "DELETE FROM sessions WHERE id IN ({select}) RETURNING id, user_id"
        ))
        .await?;
    let mut by_user: BTreeMap<i64, Vec<u64>> = BTreeMap::new();
    for row in tx.query(&stmt, args).await? {
        by_user
            .entry(row.get(1))
            .or_default()
            .push(row.get::<_, i64>(0) as u64);
    }
    let (mut count, mut pos) = (0, 0);
    for (user, mut sessions) in by_user {
        sessions.sort_unstable();
        count += sessions.len() as u64;
        let user = UserId(user as u64);
        pos = record(
            changes,
            next,
            &UserChange::SessionsRevoked { user, sessions },
        )?;
    }
    Ok(Logged { value: count, pos })
}

/// The sessions of one user but one (0 keeps none: ids start at 1).
const OF_USER_BUT: &str = "SELECT id FROM sessions WHERE user_id = $1 AND id <> $2";

/// Runs one write inside the writer's savepoint.
pub(super) async fn exec(
    tx: &Transaction<'_>,
    w: UserWrite,
    next: &mut u64,
    changes: &mut Changes,
) -> Result<Logged<u64>, StoreError> {
    let now = now_millis() as i64;
    match w {
        UserWrite::CreateUser { username, hash } => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO users (username, password_hash, created_at) VALUES ($1, $2, $3)
                     RETURNING id",
                )
                .await?;
            let id: i64 = tx.query_one(&stmt, &[&username, &hash, &now]).await?.get(0);
            let user = User {
                id: UserId(id as u64),
                username,
            };
            let pos = record(changes, next, &UserChange::Created(user))?;
            Ok(Logged {
                value: id as u64,
                pos,
            })
        }
        UserWrite::CreateSession {
            user,
            token_hash,
            user_agent,
        } => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO sessions (token_hash, user_id, created_at, last_seen_at,
                                           user_agent)
                     VALUES ($1, $2, $3, $3, $4) RETURNING id",
                )
                .await?;
            let id: i64 = tx
                .query_one(
                    &stmt,
                    &[&&token_hash[..], &(user.0 as i64), &now, &user_agent],
                )
                .await?
                .get(0);
            Ok(Logged {
                value: id as u64,
                pos: 0,
            })
        }
        UserWrite::DeleteSession(session) => {
            let stmt = tx
                .prepare_cached("DELETE FROM sessions WHERE id = $1 RETURNING user_id")
                .await?;
            let mut pos = 0;
            if let Some(row) = tx.query_opt(&stmt, &[&(session as i64)]).await? {
                let user = UserId(row.get::<_, i64>(0) as u64);
                pos = record(changes, next, &UserChange::SessionRevoked { user, session })?;
            }
            Ok(Logged { value: 0, pos })
        }
        UserWrite::TouchSessions(seen) => {
            let (ids, at): (Vec<i64>, Vec<i64>) =
                seen.iter().map(|&(id, at)| (id as i64, at as i64)).unzip();
            let stmt = tx
                .prepare_cached(
                    "UPDATE sessions s SET last_seen_at = GREATEST(s.last_seen_at, t.at)
                     FROM UNNEST($1::BIGINT[], $2::BIGINT[]) AS t(id, at) WHERE s.id = t.id",
                )
                .await?;
            tx.execute(&stmt, &[&ids, &at]).await?;
            Ok(Logged { value: 0, pos: 0 })
        }
        UserWrite::RevokeSessions { user, keep } => {
            let args: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                [&(user.0 as i64), &(keep as i64)];
            revoke_where(tx, OF_USER_BUT, &args, next, changes).await
        }
        UserWrite::SetPassword { user, hash, keep } => {
            let stmt = tx
                .prepare_cached("UPDATE users SET password_hash = $2 WHERE id = $1")
                .await?;
            tx.execute(&stmt, &[&(user.0 as i64), &hash]).await?;
            let args: [&(dyn tokio_postgres::types::ToSql + Sync); 2] =
                [&(user.0 as i64), &(keep as i64)];
            revoke_where(tx, OF_USER_BUT, &args, next, changes).await
        }
        UserWrite::ExpireSessions {
            idle_before,
            created_before,
            limit,
        } => {
            let args: [&(dyn tokio_postgres::types::ToSql + Sync); 3] = [
                &(idle_before as i64),
                &(created_before as i64),
                &(limit as i64),
            ];
            revoke_where(
                tx,
                "SELECT id FROM sessions WHERE last_seen_at < $1 OR created_at < $2 LIMIT $3",
                &args,
                next,
                changes,
            )
            .await
        }
        UserWrite::Social(write) => {
            let id = apply_social(tx, &write, now).await?;
            let pos = record(changes, next, &UserChange::Social { write, id })?;
            Ok(Logged { value: id, pos })
        }
    }
}

async fn set_member(
    tx: &Transaction<'_>,
    group: i64,
    user: UserId,
    role: Role,
) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO group_members (group_id, user_id, role, seq)
             VALUES ($1, $2, $3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM group_members
                                  WHERE group_id = $1))
             ON CONFLICT (group_id, user_id) DO UPDATE SET role = excluded.role",
        )
        .await?;
    tx.execute(&stmt, &[&group, &(user.0 as i64), &role.as_str()])
        .await?;
    Ok(())
}

async fn unfriend(tx: &Transaction<'_>, a: UserId, b: UserId) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "DELETE FROM friendships WHERE (user_id = $1 AND friend_id = $2)
                                        OR (user_id = $2 AND friend_id = $1)",
        )
        .await?;
    tx.execute(&stmt, &[&(a.0 as i64), &(b.0 as i64)]).await?;
    Ok(())
}

async fn set_requests(
    tx: &Transaction<'_>,
    ids: &[u64],
    state: RequestState,
) -> Result<(), StoreError> {
    let ids: Vec<i64> = ids.iter().map(|&i| i as i64).collect();
    let stmt = tx
        .prepare_cached("UPDATE friend_requests SET state = $2 WHERE id = ANY($1)")
        .await?;
    tx.execute(&stmt, &[&ids, &state.as_str()]).await?;
    Ok(())
}

async fn new_request(
    tx: &Transaction<'_>,
    from: UserId,
    to: UserId,
    state: RequestState,
    now: i64,
) -> Result<u64, StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO friend_requests (from_user, to_user, state, created_at)
             VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .await?;
    let id: i64 = tx
        .query_one(
            &stmt,
            &[&(from.0 as i64), &(to.0 as i64), &state.as_str(), &now],
        )
        .await?
        .get(0);
    Ok(id as u64)
}

async fn apply_social(tx: &Transaction<'_>, w: &SocialWrite, now: i64) -> Result<u64, StoreError> {
    match w {
        SocialWrite::Request { from, to } => {
            new_request(tx, *from, *to, RequestState::Pending, now).await
        }
        SocialWrite::Answer {
            requests,
            state,
            friends,
            new_request: crossing,
        } => {
            set_requests(tx, requests, *state).await?;
            if let Some((a, b)) = friends {
                let stmt = tx
                    .prepare_cached(
                        "INSERT INTO friendships (user_id, friend_id, since)
                         VALUES ($1, $2, $3), ($2, $1, $3) ON CONFLICT DO NOTHING",
                    )
                    .await?;
                tx.execute(&stmt, &[&(a.0 as i64), &(b.0 as i64), &now])
                    .await?;
            }
            match crossing {
                Some((from, to)) => new_request(tx, *from, *to, RequestState::Accepted, now).await,
                None => Ok(0),
            }
        }
        SocialWrite::Unfriend(a, b) => unfriend(tx, *a, *b).await.map(|_| 0),
        SocialWrite::Block {
            blocker,
            blocked,
            requests,
        } => {
            unfriend(tx, *blocker, *blocked).await?;
            set_requests(tx, requests, RequestState::Declined).await?;
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO blocks (blocker, blocked, since) VALUES ($1, $2, $3)
                     ON CONFLICT DO NOTHING",
                )
                .await?;
            tx.execute(&stmt, &[&(blocker.0 as i64), &(blocked.0 as i64), &now])
                .await?;
            Ok(0)
        }
        SocialWrite::Unblock { blocker, blocked } => {
            let stmt = tx
                .prepare_cached("DELETE FROM blocks WHERE blocker = $1 AND blocked = $2")
                .await?;
            tx.execute(&stmt, &[&(blocker.0 as i64), &(blocked.0 as i64)])
                .await?;
            Ok(0)
        }
        SocialWrite::CreateGroup { name, members } => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO groups (name, created_at) VALUES ($1, $2) RETURNING id",
                )
                .await?;
            let id: i64 = tx.query_one(&stmt, &[name, &now]).await?.get(0);
            for (u, role) in members {
                set_member(tx, id, *u, *role).await?;
            }
            Ok(id as u64)
        }
        SocialWrite::SetMember { group, user, role } => {
            set_member(tx, group.0 as i64, *user, *role)
                .await
                .map(|_| 0)
        }
        SocialWrite::RemoveMember {
            group,
            user,
            new_owner,
            delete_group,
        } => {
            let g = group.0 as i64;
            if *delete_group {
                let stmt = tx
                    .prepare_cached("DELETE FROM groups WHERE id = $1")
                    .await?;
                tx.execute(&stmt, &[&g]).await?;
            } else {
                let stmt = tx
                    .prepare_cached(
                        "DELETE FROM group_members WHERE group_id = $1 AND user_id = $2",
                    )
                    .await?;
                tx.execute(&stmt, &[&g, &(user.0 as i64)]).await?;
                if let Some(owner) = new_owner {
                    set_member(tx, g, *owner, Role::Owner).await?;
                }
            }
            Ok(0)
        }
    }
}
