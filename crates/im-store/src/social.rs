//! The social graph tables: friend requests, friendships, blocks, groups and members.

use crate::StoreError;
use im_protocol::{GroupId, UserId, now_millis};
use im_users::social::{FriendRequest, Group, RequestState, Role, SocialSnapshot, SocialWrite};
use rusqlite::{Connection, OptionalExtension, params};
use std::collections::BTreeMap;

fn state_of(s: &str) -> RequestState {
    match s {
        "accepted" => RequestState::Accepted,
        "declined" => RequestState::Declined,
        _ => RequestState::Pending,
    }
}

fn uid(v: i64) -> UserId {
    UserId(v as u64)
}

pub(crate) fn load(conn: &Connection) -> Result<SocialSnapshot, StoreError> {
    let mut snap = SocialSnapshot::default();
    let mut stmt =
        conn.prepare("SELECT user_id, friend_id FROM friendships WHERE user_id < friend_id")?;
    for row in stmt.query_map([], |r| Ok((uid(r.get(0)?), uid(r.get(1)?))))? {
        snap.friendships.push(row?);
    }
    let mut stmt = conn.prepare("SELECT blocker, blocked FROM blocks")?;
    for row in stmt.query_map([], |r| Ok((uid(r.get(0)?), uid(r.get(1)?))))? {
        snap.blocks.push(row?);
    }
    let mut stmt = conn.prepare(
        "SELECT id, from_user, to_user FROM friend_requests WHERE state = 'pending' ORDER BY id",
    )?;
    for row in stmt.query_map([], |r| {
        Ok(FriendRequest {
            id: r.get::<_, i64>(0)? as u64,
            from: uid(r.get(1)?),
            to: uid(r.get(2)?),
            state: RequestState::Pending,
        })
    })? {
        snap.pending.push(row?);
    }
    let mut groups: BTreeMap<i64, Group> = BTreeMap::new();
    let mut stmt = conn.prepare("SELECT id, name FROM groups")?;
    for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
        let (id, name) = row?;
        groups.insert(
            id,
            Group {
                id: GroupId(id as u64),
                name,
                members: Vec::new(),
            },
        );
    }
    let mut stmt =
        conn.prepare("SELECT group_id, user_id, role FROM group_members ORDER BY group_id, seq")?;
    for row in stmt.query_map([], |r| {
        Ok((r.get::<_, i64>(0)?, uid(r.get(1)?), r.get::<_, String>(2)?))
    })? {
        let (g, u, role) = row?;
        if let (Some(group), Some(role)) = (groups.get_mut(&g), Role::parse(&role)) {
            group.members.push((u, role));
        }
    }
    snap.groups = groups.into_values().collect();
    Ok(snap)
}

fn set_member(conn: &Connection, group: i64, user: UserId, role: Role) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO group_members (group_id, user_id, role, seq)
         VALUES (?1, ?2, ?3, (SELECT COALESCE(MAX(seq), 0) + 1 FROM group_members WHERE group_id = ?1))
         ON CONFLICT (group_id, user_id) DO UPDATE SET role = excluded.role",
    )?
    .execute(params![group, user.0 as i64, role.as_str()])?;
    Ok(())
}

fn unfriend(conn: &Connection, a: UserId, b: UserId) -> Result<(), StoreError> {
    conn.prepare_cached(
        "DELETE FROM friendships WHERE (user_id = ?1 AND friend_id = ?2) OR (user_id = ?2 AND friend_id = ?1)",
    )?
    .execute(params![a.0 as i64, b.0 as i64])?;
    Ok(())
}

fn set_requests(conn: &Connection, ids: &[u64], state: RequestState) -> Result<(), StoreError> {
    let mut stmt = conn.prepare_cached("UPDATE friend_requests SET state = ?2 WHERE id = ?1")?;
    for id in ids {
        stmt.execute(params![*id as i64, state.as_str()])?;
    }
    Ok(())
}

fn new_request(
    conn: &Connection,
    from: UserId,
    to: UserId,
    state: RequestState,
) -> Result<u64, StoreError> {
    conn.prepare_cached(
        "INSERT INTO friend_requests (from_user, to_user, state, created_at) VALUES (?1, ?2, ?3, ?4)",
    )?
    .execute(params![from.0 as i64, to.0 as i64, state.as_str(), now_millis() as i64])?;
    Ok(conn.last_insert_rowid() as u64)
}

pub(crate) fn apply(conn: &Connection, w: &SocialWrite) -> Result<u64, StoreError> {
    let now = now_millis() as i64;
    match w {
        SocialWrite::Request { from, to } => new_request(conn, *from, *to, RequestState::Pending),
        SocialWrite::Answer {
            requests,
            state,
            friends,
            new_request: crossing,
        } => {
            set_requests(conn, requests, *state)?;
            if let Some((a, b)) = friends {
                let mut stmt = conn.prepare_cached(
                    "INSERT OR IGNORE INTO friendships (user_id, friend_id, since) VALUES (?1, ?2, ?3)",
                )?;
                stmt.execute(params![a.0 as i64, b.0 as i64, now])?;
                stmt.execute(params![b.0 as i64, a.0 as i64, now])?;
            }
            match crossing {
                Some((from, to)) => new_request(conn, *from, *to, RequestState::Accepted),
                None => Ok(0),
            }
        }
        SocialWrite::Unfriend(a, b) => unfriend(conn, *a, *b).map(|_| 0),
        SocialWrite::Block {
            blocker,
            blocked,
            requests,
        } => {
            unfriend(conn, *blocker, *blocked)?;
            set_requests(conn, requests, RequestState::Declined)?;
            conn.prepare_cached(
                "INSERT OR IGNORE INTO blocks (blocker, blocked, since) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![blocker.0 as i64, blocked.0 as i64, now])?;
            Ok(0)
        }
        SocialWrite::Unblock { blocker, blocked } => {
            conn.prepare_cached("DELETE FROM blocks WHERE blocker = ?1 AND blocked = ?2")?
                .execute(params![blocker.0 as i64, blocked.0 as i64])?;
            Ok(0)
        }
        SocialWrite::CreateGroup { name, members } => {
            conn.prepare_cached("INSERT INTO groups (name, created_at) VALUES (?1, ?2)")?
                .execute(params![name, now])?;
            let id = conn.last_insert_rowid();
            for (u, role) in members {
                set_member(conn, id, *u, *role)?;
            }
            Ok(id as u64)
        }
        SocialWrite::SetMember { group, user, role } => {
            set_member(conn, group.0 as i64, *user, *role).map(|_| 0)
        }
        SocialWrite::RemoveMember {
            group,
            user,
            new_owner,
            delete_group,
        } => {
            let g = group.0 as i64;
            if *delete_group {
                conn.prepare_cached("DELETE FROM groups WHERE id = ?1")?
                    .execute(params![g])?;
            } else {
                conn.prepare_cached(
                    "DELETE FROM group_members WHERE group_id = ?1 AND user_id = ?2",
                )?
                .execute(params![g, user.0 as i64])?;
                if let Some(owner) = new_owner {
                    set_member(conn, g, *owner, Role::Owner)?;
                }
            }
            Ok(0)
        }
    }
}

pub(crate) fn request(conn: &Connection, id: u64) -> Result<Option<FriendRequest>, StoreError> {
    Ok(conn
        .prepare_cached("SELECT from_user, to_user, state FROM friend_requests WHERE id = ?1")?
        .query_row(params![id as i64], |r| {
            Ok(FriendRequest {
                id,
                from: uid(r.get(0)?),
                to: uid(r.get(1)?),
                state: state_of(&r.get::<_, String>(2)?),
            })
        })
        .optional()?)
}
