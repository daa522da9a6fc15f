//! The writer task: group commit, and positions from the one `log_head` row.

use super::PgConfig;
use crate::{CommitListener, StoreError};
use bytes::Bytes;
use deadpool_postgres::{Object, Pool, Transaction};
use im_channel::{Outcome, Pending, Reply};
use im_cluster::{Entry, LogEntry, Logged};
use im_files::{FileChange, FileMeta};
use im_protocol::record::{MessageRecord, Topic};
use im_protocol::{Message, MessageId, Target, UserId, now_millis};
use im_users::social::{RequestState, Role, SocialWrite};
use im_users::{User, UserChange};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use tokio::sync::oneshot;

/// A write other than a message; each answers with one number (an id, a stored position, or
/// 1/0 for whether it changed anything) and the log position of its change record (0 if
/// none).
pub(crate) enum Write {
    /// A new account; answers its id.
    CreateUser { username: String, hash: String },
    /// A new session; answers its id.
    CreateSession { user: UserId, token_hash: [u8; 32] },
    /// Revokes a session.
    DeleteSession(u64),
    /// A social graph change; answers the new row's id, else 0.
    Social(SocialWrite),
    /// Moves a read position forward; answers the stored position.
    MarkRead {
        user: UserId,
        conversation: String,
        up_to: i64,
    },
    /// New file metadata; answers its id.
    InsertFile(FileMeta),
    /// The file's bytes are gone.
    MarkSwept(u64),
}

pub(crate) enum Op {
    Append(Pending, Reply),
    Write(Write, oneshot::Sender<Result<Logged<u64>, StoreError>>),
}

/// What each op gets once its batch has committed or failed.
enum Done {
    Append(Reply, Result<(Message, bool), StoreError>),
    Write(
        oneshot::Sender<Result<Logged<u64>, StoreError>>,
        Result<Logged<u64>, StoreError>,
    ),
}

pub(crate) fn start(
    pool: Pool,
    config: &PgConfig,
    listener: Arc<OnceLock<Arc<dyn CommitListener>>>,
) -> flume::Sender<Op> {
    let (tx, rx) = flume::bounded(config.queue.max(1));
    tokio::spawn(run(pool, rx, config.batch.max(1), listener));
    tx
}

async fn run(
    pool: Pool,
    rx: flume::Receiver<Op>,
    batch_max: usize,
    listener: Arc<OnceLock<Arc<dyn CommitListener>>>,
) {
    let mut client: Option<Object> = None;
    let mut batch = Vec::with_capacity(batch_max);
    while let Ok(first) = rx.recv_async().await {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let mut c = match client.take() {
            Some(c) if !c.is_closed() => c,
            _ => match pool.get().await {
                Ok(c) => c,
                Err(e) => {
                    let e = StoreError::from(e);
                    tracing::error!(error = %e, "no database connection for the writer");
                    fail_all(batch.drain(..), &e);
                    continue;
                }
            },
        };
        let mut done = Vec::with_capacity(batch.len());
        let mut entries = Vec::new();
        let result = commit(&mut c, batch.drain(..), &mut done, &mut entries).await;
        if let Err(e) = &result {
            tracing::error!(error = %e, "batch commit failed; nothing in it was acknowledged");
        }
        // A connection that failed mid-transaction is not reused.
        if result.is_ok() || !c.is_closed() {
            client = Some(c);
        }
        if let (Ok(()), Some(l), false) = (&result, listener.get(), entries.is_empty()) {
            l.committed(entries);
        }
        for d in done {
            finish(d, result.as_ref().map(|_| ()));
        }
    }
}

fn fail_all(ops: impl Iterator<Item = Op>, e: &StoreError) {
    for op in ops {
        match op {
            Op::Append(_, reply) => reply.send(Outcome::Failed(e.to_string())),
            Op::Write(_, tx) => {
                let _ = tx.send(Err(StoreError::Commit(e.to_string())));
            }
        }
    }
}

fn finish(d: Done, commit: Result<(), &StoreError>) {
    match (d, commit) {
        (Done::Append(reply, Ok((m, true))), Ok(())) => reply.send(Outcome::Stored(m)),
        (Done::Append(reply, Ok((m, false))), Ok(())) => reply.send(Outcome::Duplicate(m)),
        (Done::Append(reply, Err(e)), _) => reply.send(Outcome::Failed(e.to_string())),
        (Done::Append(reply, Ok(_)), Err(e)) => reply.send(Outcome::Failed(e.to_string())),
        (Done::Write(tx, result), Ok(())) => {
            let _ = tx.send(result);
        }
        (Done::Write(tx, _), Err(e)) => {
            let _ = tx.send(Err(StoreError::Commit(e.to_string())));
        }
    }
}

/// The columns of the messages a batch inserts, for one `UNNEST` insert.
#[derive(Default)]
struct Rows {
    id: Vec<i64>,
    conversation: Vec<String>,
    sender: Vec<i64>,
    recipient: Vec<Option<i64>>,
    group: Vec<Option<i64>>,
    client_id: Vec<Option<String>>,
    sent_at: Vec<i64>,
    record: Vec<Vec<u8>>,
    /// (user, conversation) -> (peer, newest id), for the conversation list of direct chats.
    members: HashMap<(i64, String), (i64, i64)>,
}

impl Rows {
    fn push(&mut self, msg: &Message) -> Result<(), StoreError> {
        let record = MessageRecord::encode(msg)?;
        let (recipient, group) = match msg.to {
            Target::User(u) => (Some(u.0 as i64), None),
            Target::Group(g) => (None, Some(g.0 as i64)),
        };
        let id = msg.id.0 as i64;
        self.id.push(id);
        self.conversation.push(msg.conversation.clone());
        self.sender.push(msg.from.0 as i64);
        self.recipient.push(recipient);
        self.group.push(group);
        self.client_id.push(msg.client_id.clone());
        self.sent_at.push(msg.sent_at as i64);
        self.record.push(record);
        if let Target::User(to) = msg.to {
            let (a, b) = (msg.from.0 as i64, to.0 as i64);
            self.members.insert((a, msg.conversation.clone()), (b, id));
            self.members.insert((b, msg.conversation.clone()), (a, id));
        }
        Ok(())
    }
}

/// The change records a batch writes, with their positions.
#[derive(Default)]
struct Changes {
    pos: Vec<i64>,
    topic: Vec<i16>,
    record: Vec<Vec<u8>>,
    topics: Vec<Topic>,
}

impl Changes {
    fn push(&mut self, next: &mut u64, topic: Topic, record: Vec<u8>) -> u64 {
        let pos = *next;
        self.pos.push(pos as i64);
        self.topic.push(topic.code());
        self.topics.push(topic);
        self.record.push(record);
        *next += 1;
        pos
    }

    fn user(&mut self, next: &mut u64, c: &UserChange) -> Result<u64, StoreError> {
        Ok(self.push(next, Topic::Users, c.encode()?))
    }

    fn file(&mut self, next: &mut u64, c: &FileChange) -> Result<u64, StoreError> {
        Ok(self.push(next, Topic::Files, c.encode()?))
    }

    fn truncate(&mut self, len: usize) {
        self.pos.truncate(len);
        self.topic.truncate(len);
        self.topics.truncate(len);
        self.record.truncate(len);
    }
}

/// Runs one batch in one transaction; each op's result goes to `done`, in op order, and the
/// committed log entries to `entries`, in position order.
async fn commit(
    client: &mut Object,
    ops: impl Iterator<Item = Op>,
    done: &mut Vec<Done>,
    entries: &mut Vec<LogEntry>,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    let head_stmt = tx
        .prepare_cached("SELECT last FROM log_head FOR UPDATE")
        .await?;
    let head: i64 = tx.query_one(&head_stmt, &[]).await?.get(0);
    let ops: Vec<Op> = ops.collect();
    let mut first = first_by_client_id(&tx, &ops).await?;
    let mut next = head as u64 + 1;
    let mut rows = Rows::default();
    let mut changes = Changes::default();
    for op in ops {
        match op {
            Op::Append(p, reply) => {
                let key = p.client_id.clone().map(|c| (p.from, c));
                if let Some(m) = key.as_ref().and_then(|k| first.get(k)) {
                    done.push(Done::Append(reply, Ok((m.clone(), false))));
                    continue;
                }
                let msg = p.into_message(MessageId(next));
                match rows.push(&msg) {
                    Ok(()) => {
                        if let Some(k) = key {
                            first.insert(k, msg.clone());
                        }
                        entries.push(LogEntry {
                            pos: next,
                            entry: Entry::Message(msg.clone()),
                        });
                        next += 1;
                        done.push(Done::Append(reply, Ok((msg, true))));
                    }
                    Err(e) => done.push(Done::Append(reply, Err(e))),
                }
            }
            Op::Write(w, reply) => {
                let (mark, before) = (next, changes.pos.len());
                tx.batch_execute("SAVEPOINT op").await?;
                let result = exec(&tx, w, &mut next, &mut changes).await;
                if result.is_ok() {
                    tx.batch_execute("RELEASE op").await?;
                    for i in before..changes.pos.len() {
                        entries.push(LogEntry {
                            pos: changes.pos[i] as u64,
                            entry: Entry::Change {
                                topic: changes.topics[i],
                                record: Bytes::from(changes.record[i].clone()),
                            },
                        });
                    }
                } else {
                    tx.batch_execute("ROLLBACK TO op; RELEASE op").await?;
                    next = mark;
                    changes.truncate(before);
                }
                done.push(Done::Write(reply, result));
            }
        }
    }
    if !rows.id.is_empty() {
        insert_messages(&tx, &rows).await?;
    }
    if !changes.pos.is_empty() {
        let stmt = tx
            .prepare_cached(
                "INSERT INTO changes (pos, topic, record)
                 SELECT * FROM UNNEST($1::INT8[], $2::INT2[], $3::BYTEA[])",
            )
            .await?;
        tx.execute(&stmt, &[&changes.pos, &changes.topic, &changes.record])
            .await?;
    }
    let last = next as i64 - 1;
    if last > head {
        let stmt = tx.prepare_cached("UPDATE log_head SET last = $1").await?;
        tx.execute(&stmt, &[&last]).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// The first message of every `(sender, client_id)` the batch's appends carry that is already
/// stored; read under the head lock, so no other node can store one meanwhile.
async fn first_by_client_id(
    tx: &Transaction<'_>,
    ops: &[Op],
) -> Result<HashMap<(UserId, String), Message>, StoreError> {
    let (mut senders, mut cids) = (Vec::new(), Vec::new());
    for op in ops {
        if let Op::Append(p, _) = op
            && let Some(c) = &p.client_id
        {
            senders.push(p.from.0 as i64);
            cids.push(c.clone());
        }
    }
    let mut found = HashMap::new();
    if senders.is_empty() {
        return Ok(found);
    }
    let stmt = tx
        .prepare_cached(
            "SELECT m.record FROM messages m
               JOIN UNNEST($1::INT8[], $2::TEXT[]) AS k(sender, client_id)
                 ON m.sender = k.sender AND m.client_id = k.client_id",
        )
        .await?;
    for row in tx.query(&stmt, &[&senders, &cids]).await? {
        let m = MessageRecord::decode(row.get(0))?;
        if let Some(c) = m.client_id.clone() {
            found.insert((m.from, c), m);
        }
    }
    Ok(found)
}

async fn insert_messages(tx: &Transaction<'_>, r: &Rows) -> Result<(), StoreError> {
    let stmt = tx
        .prepare_cached(
            "INSERT INTO messages (id, conversation, sender, recipient, group_id, client_id, sent_at, record)
             SELECT * FROM UNNEST($1::INT8[], $2::TEXT[], $3::INT8[], $4::INT8[], $5::INT8[],
                                  $6::TEXT[], $7::INT8[], $8::BYTEA[])",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &r.id,
            &r.conversation,
            &r.sender,
            &r.recipient,
            &r.group,
            &r.client_id,
            &r.sent_at,
            &r.record,
        ],
    )
    .await?;
    if r.members.is_empty() {
        return Ok(());
    }
    // Direct chats keep a per-user row for the conversation list; one row per key, since an
    // upsert may not touch a row twice.
    let (mut user, mut conv, mut peer, mut last) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for ((u, c), (p, id)) in &r.members {
        user.push(*u);
        conv.push(c.as_str());
        peer.push(*p);
        last.push(*id);
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO conversation_members (user_id, conversation, peer_user, last_message_id)
             SELECT * FROM UNNEST($1::INT8[], $2::TEXT[], $3::INT8[], $4::INT8[])
             ON CONFLICT (user_id, conversation) DO UPDATE
               SET last_message_id = GREATEST(conversation_members.last_message_id,
                                              excluded.last_message_id)",
        )
        .await?;
    tx.execute(&stmt, &[&user, &conv, &peer, &last]).await?;
    Ok(())
}

/// Runs one write inside its savepoint, adding the change records it makes.
async fn exec(
    tx: &Transaction<'_>,
    w: Write,
    next: &mut u64,
    changes: &mut Changes,
) -> Result<Logged<u64>, StoreError> {
    let now = now_millis() as i64;
    match w {
        Write::CreateUser { username, hash } => {
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
            let pos = changes.user(next, &UserChange::Created(user))?;
            Ok(Logged {
                value: id as u64,
                pos,
            })
        }
        Write::CreateSession { user, token_hash } => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO sessions (token_hash, user_id, created_at) VALUES ($1, $2, $3)
                     RETURNING id",
                )
                .await?;
            let id: i64 = tx
                .query_one(&stmt, &[&&token_hash[..], &(user.0 as i64), &now])
                .await?
                .get(0);
            Ok(Logged {
                value: id as u64,
                pos: 0,
            })
        }
        Write::DeleteSession(session) => {
            let stmt = tx
                .prepare_cached("DELETE FROM sessions WHERE id = $1 RETURNING user_id")
                .await?;
            let mut pos = 0;
            if let Some(row) = tx.query_opt(&stmt, &[&(session as i64)]).await? {
                let user = UserId(row.get::<_, i64>(0) as u64);
                pos = changes.user(next, &UserChange::SessionRevoked { user, session })?;
            }
            Ok(Logged { value: 0, pos })
        }
        Write::Social(write) => {
            let id = apply_social(tx, &write, now).await?;
            let pos = changes.user(next, &UserChange::Social { write, id })?;
            Ok(Logged { value: id, pos })
        }
        Write::MarkRead {
            user,
            conversation,
            up_to,
        } => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO read_positions (user_id, conversation, up_to)
                     VALUES ($1, $2, LEAST($3, (SELECT COALESCE(MAX(id), 0) FROM messages
                                                WHERE conversation = $2)))
                     ON CONFLICT (user_id, conversation)
                       DO UPDATE SET up_to = GREATEST(read_positions.up_to, excluded.up_to)
                     RETURNING up_to",
                )
                .await?;
            let stored: i64 = tx
                .query_one(&stmt, &[&(user.0 as i64), &conversation, &up_to])
                .await?
                .get(0);
            Ok(Logged {
                value: stored as u64,
                pos: 0,
            })
        }
        Write::InsertFile(mut m) => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO files (token, owner, name, size, content_type, storage_key,
                                        created_at, expires_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
                )
                .await?;
            let id: i64 = tx
                .query_one(
                    &stmt,
                    &[
                        &m.token,
                        &(m.owner.0 as i64),
                        &m.name,
                        &(m.size as i64),
                        &m.content_type,
                        &m.key,
                        &(m.created_at as i64),
                        &(m.expires_at as i64),
                    ],
                )
                .await?
                .get(0);
            m.id = id as u64;
            let pos = changes.file(next, &FileChange::Added(m))?;
            Ok(Logged {
                value: id as u64,
                pos,
            })
        }
        Write::MarkSwept(id) => {
            let stmt = tx
                .prepare_cached(
                    "UPDATE files SET storage_key = '' WHERE id = $1 AND storage_key <> ''",
                )
                .await?;
            if tx.execute(&stmt, &[&(id as i64)]).await? == 0 {
                return Ok(Logged { value: 0, pos: 0 });
            }
            let pos = changes.file(next, &FileChange::Swept(id))?;
            Ok(Logged { value: 1, pos })
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
