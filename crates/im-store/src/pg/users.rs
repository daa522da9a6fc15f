//! Accounts, sessions and the social graph on PostgreSQL: the ports (feature `users`).

use super::social::UserWrite;
use super::writer::Write;
use super::{PgStore, is_unique_violation};
use crate::StoreError;
use async_trait::async_trait;
use im_cluster::{Logged, Position};
use im_protocol::{GroupId, UserId};
use im_users::social::{FriendRequest, Group, RequestState, Role, SocialSnapshot, SocialWrite};
use im_users::{Principal, SessionRecord, SessionTimes, User, UserStore, UserStoreError};
use std::collections::BTreeMap;

fn other(e: StoreError) -> UserStoreError {
    UserStoreError::Other(im_protocol::Cause::new(e))
}

/// How many sessions a write revoked, at the position of its last record.
fn count(l: Logged<u64>) -> Logged<usize> {
    Logged {
        value: l.value as usize,
        pos: l.pos,
    }
}

fn uid(v: i64) -> UserId {
    UserId(v as u64)
}

fn state_of(s: &str) -> RequestState {
    match s {
        "accepted" => RequestState::Accepted,
        "declined" => RequestState::Declined,
        _ => RequestState::Pending,
    }
}

impl PgStore {
    async fn load_social_graph(&self) -> Result<SocialSnapshot, StoreError> {
        let c = self.client().await?;
        let mut snap = SocialSnapshot::default();
        for r in c
            .query(
                "SELECT user_id, friend_id FROM friendships WHERE user_id < friend_id",
                &[],
            )
            .await?
        {
            snap.friendships.push((uid(r.get(0)), uid(r.get(1))));
        }
        for r in c.query("SELECT blocker, blocked FROM blocks", &[]).await? {
            snap.blocks.push((uid(r.get(0)), uid(r.get(1))));
        }
        for r in c
            .query(
                "SELECT id, from_user, to_user FROM friend_requests WHERE state = 'pending'
                 ORDER BY id",
                &[],
            )
            .await?
        {
            snap.pending.push(FriendRequest {
                id: r.get::<_, i64>(0) as u64,
                from: uid(r.get(1)),
                to: uid(r.get(2)),
                state: RequestState::Pending,
            });
        }
        let mut groups: BTreeMap<i64, Group> = BTreeMap::new();
        for r in c.query("SELECT id, name FROM groups", &[]).await? {
            let id: i64 = r.get(0);
            groups.insert(
                id,
                Group {
                    id: GroupId(id as u64),
                    name: r.get(1),
                    members: Vec::new(),
                },
            );
        }
        for r in c
            .query(
                "SELECT group_id, user_id, role FROM group_members ORDER BY group_id, seq",
                &[],
            )
            .await?
        {
            let g: i64 = r.get(0);
            if let (Some(group), Some(role)) = (groups.get_mut(&g), Role::parse(r.get(2))) {
                group.members.push((uid(r.get(1)), role));
            }
        }
        snap.groups = groups.into_values().collect();
        Ok(snap)
    }
}

#[async_trait]
impl UserStore for PgStore {
    async fn create_user(
        &self,
        username: &str,
        password_hash: &str,
    ) -> Result<Logged<User>, UserStoreError> {
        let logged = self
            .write(Write::Users(UserWrite::CreateUser {
                username: username.to_owned(),
                hash: password_hash.to_owned(),
            }))
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    UserStoreError::UsernameTaken
                } else {
                    other(e)
                }
            })?;
        Ok(Logged {
            value: User {
                id: UserId(logged.value),
                username: username.to_owned(),
            },
            pos: logged.pos,
        })
    }

    async fn login_record(&self, username: &str) -> Result<Option<(User, String)>, UserStoreError> {
        async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached("SELECT id, password_hash FROM users WHERE username = $1")
                .await?;
            Ok(c.query_opt(&stmt, &[&username]).await?.map(|r| {
                (
                    User {
                        id: uid(r.get(0)),
                        username: username.to_owned(),
                    },
                    r.get(1),
                )
            }))
        }
        .await
        .map_err(other)
    }

    async fn user(&self, id: UserId) -> Result<Option<User>, UserStoreError> {
        async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached("SELECT username FROM users WHERE id = $1")
                .await?;
            Ok(c.query_opt(&stmt, &[&(id.0 as i64)]).await?.map(|r| User {
                id,
                username: r.get(0),
            }))
        }
        .await
        .map_err(other)
    }

    async fn all_users(&self) -> Result<Vec<User>, UserStoreError> {
        async {
            let c = self.client().await?;
            let rows = c.query("SELECT id, username FROM users", &[]).await?;
            Ok(rows
                .iter()
                .map(|r| User {
                    id: uid(r.get(0)),
                    username: r.get(1),
                })
                .collect())
        }
        .await
        .map_err(other)
    }

    async fn load_social(&self) -> Result<SocialSnapshot, UserStoreError> {
        self.load_social_graph().await.map_err(other)
    }

    async fn apply_social(&self, change: &SocialWrite) -> Result<Logged<u64>, UserStoreError> {
        self.write(Write::Users(UserWrite::Social(change.clone())))
            .await
            .map_err(other)
    }

    async fn friend_request(&self, id: u64) -> Result<Option<FriendRequest>, UserStoreError> {
        async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(
                    "SELECT from_user, to_user, state FROM friend_requests WHERE id = $1",
                )
                .await?;
            Ok(c.query_opt(&stmt, &[&(id as i64)])
                .await?
                .map(|r| FriendRequest {
                    id,
                    from: uid(r.get(0)),
                    to: uid(r.get(1)),
                    state: state_of(r.get(2)),
                }))
        }
        .await
        .map_err(other)
    }

    async fn create_session(
        &self,
        user: UserId,
        token_hash: [u8; 32],
        user_agent: &str,
    ) -> Result<u64, UserStoreError> {
        self.write(Write::Users(UserWrite::CreateSession {
            user,
            token_hash,
            user_agent: user_agent.to_owned(),
        }))
        .await
        .map(|l| l.value)
        .map_err(other)
    }

    async fn session(
        &self,
        token_hash: [u8; 32],
    ) -> Result<Option<(Principal, SessionTimes, Position)>, UserStoreError> {
        async {
            let c = self.client().await?;
            // One statement, one snapshot: the head it reads is exactly what the answer
            // reflects.
            let stmt = c
                .prepare_cached(
                    "SELECT s.id, s.user_id, s.created_at, s.last_seen_at, h.last FROM log_head h
                       LEFT JOIN sessions s ON s.token_hash = $1",
                )
                .await?;
            let row = c.query_one(&stmt, &[&&token_hash[..]]).await?;
            let id: Option<i64> = row.get(0);
            Ok(id.map(|id| {
                (
                    Principal {
                        session: id as u64,
                        user: uid(row.get(1)),
                    },
                    SessionTimes {
                        created_at: row.get::<_, i64>(2) as u64,
                        last_seen_at: row.get::<_, i64>(3) as u64,
                    },
                    row.get::<_, i64>(4) as u64,
                )
            }))
        }
        .await
        .map_err(other)
    }

    async fn sessions_of(&self, user: UserId) -> Result<Vec<SessionRecord>, UserStoreError> {
        async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(
                    "SELECT id, created_at, last_seen_at, user_agent FROM sessions
                     WHERE user_id = $1 ORDER BY id",
                )
                .await?;
            let rows = c.query(&stmt, &[&(user.0 as i64)]).await?;
            Ok(rows
                .iter()
                .map(|r| SessionRecord {
                    id: r.get::<_, i64>(0) as u64,
                    times: SessionTimes {
                        created_at: r.get::<_, i64>(1) as u64,
                        last_seen_at: r.get::<_, i64>(2) as u64,
                    },
                    user_agent: r.get(3),
                })
                .collect())
        }
        .await
        .map_err(other)
    }

    async fn touch_sessions(&self, seen: &[(u64, u64)]) -> Result<(), UserStoreError> {
        self.write(Write::Users(UserWrite::TouchSessions(seen.to_vec())))
            .await
            .map(|_| ())
            .map_err(other)
    }

    async fn delete_session(&self, session: u64) -> Result<Logged<()>, UserStoreError> {
        self.write(Write::Users(UserWrite::DeleteSession(session)))
            .await
            .map(|l| Logged {
                value: (),
                pos: l.pos,
            })
            .map_err(other)
    }

    async fn revoke_sessions(
        &self,
        user: UserId,
        keep: Option<u64>,
    ) -> Result<Logged<usize>, UserStoreError> {
        let keep = keep.unwrap_or(0);
        self.write(Write::Users(UserWrite::RevokeSessions { user, keep }))
            .await
            .map(count)
            .map_err(other)
    }

    async fn set_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: u64,
    ) -> Result<Logged<usize>, UserStoreError> {
        let hash = password_hash.to_owned();
        self.write(Write::Users(UserWrite::SetPassword { user, hash, keep }))
            .await
            .map(count)
            .map_err(other)
    }

    async fn expire_sessions(
        &self,
        idle_before: u64,
        created_before: u64,
        limit: usize,
    ) -> Result<Logged<usize>, UserStoreError> {
        self.write(Write::Users(UserWrite::ExpireSessions {
            idle_before,
            created_before,
            limit,
        }))
        .await
        .map(count)
        .map_err(other)
    }
}
