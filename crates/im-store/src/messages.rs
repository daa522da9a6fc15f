//! Message tables: append, history, conversation list and replay.

use crate::writer::Op;
use crate::{SqliteStore, StoreError};
use async_trait::async_trait;
use im_channel::{
    Applied, Change, ConversationSummary, LogError, MessageHistory, MessageLog, Pending,
    ReactionState, Reply,
};
use im_cluster::{LogEntry, LogReadError, LogReader, Position};
use im_protocol::record::MessageRecord;
use im_protocol::{Message, MessageId, Reaction, Target, UserId};
use im_sse::{PageLimit, ReplayError, ReplayPage, ReplaySource};
use rusqlite::{Connection, OptionalExtension, params};

/// The highest position taken, by a message or a change record.
pub(crate) fn head(conn: &Connection) -> Result<u64, StoreError> {
    let id: i64 = conn.query_row(
        "SELECT MAX((SELECT COALESCE(MAX(id), 0) FROM messages),
                    (SELECT COALESCE(MAX(pos), 0) FROM changes))",
        [],
        |r| r.get(0),
    )?;
    Ok(id as u64)
}

/// An id as SQL's signed 64-bit integer; none beyond `i64::MAX` is ever stored.
pub(crate) fn clamp(id: MessageId) -> i64 {
    id.0.min(i64::MAX as u64) as i64
}

fn decode(bytes: Vec<u8>) -> Result<Message, StoreError> {
    Ok(MessageRecord::decode(&bytes)?)
}

/// The stored message (or amendment) with id `id`, if any.
fn load(conn: &Connection, id: MessageId) -> Result<Option<Message>, StoreError> {
    conn.prepare_cached("SELECT record FROM messages WHERE id = ?1")?
        .query_row(params![clamp(id)], |r| r.get::<_, Vec<u8>>(0))
        .optional()?
        .map(decode)
        .transpose()
}

/// Writes `msg` over its stored row.
fn rewrite(conn: &Connection, msg: &Message) -> Result<(), StoreError> {
    conn.prepare_cached("UPDATE messages SET record = ?2 WHERE id = ?1")?
        .execute(params![clamp(msg.id), MessageRecord::encode(msg)?])?;
    Ok(())
}

/// Brings the rows that depend on `target` up to date after it changed: its earlier
/// amendments (a deletion takes their bodies too) and the replies quoting it.
fn follow_up(conn: &Connection, target: &Message) -> Result<(), StoreError> {
    let rows: Vec<Vec<u8>> = conn
        .prepare_cached(
            "SELECT record FROM messages WHERE amends = ?1
             UNION ALL SELECT record FROM messages WHERE reply_to = ?1",
        )?
        .query_map(params![clamp(target.id)], |r| r.get(0))?
        .collect::<Result<_, _>>()?;
    for bytes in rows {
        let mut row = decode(bytes)?;
        if im_channel::follow(target, &mut row) {
            rewrite(conn, &row)?;
        }
    }
    Ok(())
}

/// The reactions of message `id` as stored, for deciding `user`'s reaction with `emoji`.
fn reaction_state(
    conn: &Connection,
    id: MessageId,
    emoji: &str,
    user: UserId,
) -> Result<ReactionState, StoreError> {
    let (mine, count, kinds): (bool, i64, i64) = conn
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM reactions
                             WHERE message_id = ?1 AND emoji = ?2 AND user_id = ?3),
                    (SELECT COUNT(*) FROM reactions WHERE message_id = ?1 AND emoji = ?2),
                    (SELECT COUNT(DISTINCT emoji) FROM reactions WHERE message_id = ?1)",
        )?
        .query_row(params![clamp(id), emoji, user.0 as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })?;
    Ok(ReactionState {
        mine,
        count: count as u64,
        kinds: kinds as usize,
    })
}

/// Inserts one row of the log's messages table: a message or an amendment.
fn insert_row(conn: &Connection, msg: &Message) -> Result<(), StoreError> {
    let (recipient, group) = match msg.to {
        Target::User(u) => (Some(u.0 as i64), None),
        Target::Group(g) => (None, Some(g.0 as i64)),
    };
    conn.prepare_cached(
        "INSERT INTO messages (id, conversation, sender, recipient, group_id, client_id, sent_at,
                               record, amends, reply_to)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
    )?
    .execute(params![
        clamp(msg.id),
        msg.conversation,
        msg.from.0 as i64,
        recipient,
        group,
        msg.client_id,
        msg.sent_at as i64,
        MessageRecord::encode(msg)?,
        msg.amends.map(clamp),
        msg.reply_to.as_ref().map(|q| clamp(q.id)),
    ])?;
    Ok(())
}

/// Inserts `p` with id `id`; `false` means nothing new was written: the sender's
/// `client_id` was already used (the first message is returned), or an amendment found
/// nothing to change (the message as it is is returned). A refusal is
/// [`StoreError::Refused`].
pub(crate) fn insert(
    conn: &Connection,
    id: u64,
    p: Pending,
) -> Result<(Message, bool), StoreError> {
    if let Some(cid) = &p.client_id {
        let first: Option<Vec<u8>> = conn
            .prepare_cached("SELECT record FROM messages WHERE sender = ?1 AND client_id = ?2")?
            .query_row(params![p.from.0 as i64, cid], |r| r.get(0))
            .optional()?;
        if let Some(bytes) = first {
            return Ok((decode(bytes)?, false));
        }
    }
    if let Some(a) = p.amend.as_ref() {
        let target = a.target;
        let state = match &a.change {
            Change::React { emoji, .. } => reaction_state(conn, target, emoji, p.from)?,
            _ => ReactionState::default(),
        };
        let current = load(conn, target)?;
        return match p
            .amend(MessageId(id), current, state)
            .map_err(StoreError::Refused)?
        {
            Applied::Unchanged(target) => Ok((target, false)),
            Applied::Changed { target, entry } => {
                rewrite(conn, &target)?;
                insert_row(conn, &entry)?;
                follow_up(conn, &target)?;
                if target.deleted {
                    conn.prepare_cached("DELETE FROM reactions WHERE message_id = ?1")?
                        .execute(params![clamp(target.id)])?;
                }
                Ok((entry, true))
            }
            Applied::Reacted { entry, emoji, add } => {
                let sql = if add {
                    "INSERT INTO reactions (message_id, emoji, user_id) VALUES (?1, ?2, ?3)"
                } else {
                    "DELETE FROM reactions WHERE message_id = ?1 AND emoji = ?2 AND user_id = ?3"
                };
                conn.prepare_cached(sql)?.execute(params![
                    clamp(target),
                    emoji,
                    entry.from.0 as i64
                ])?;
                insert_row(conn, &entry)?;
                Ok((entry, true))
            }
        };
    }
    let reply_to = p.reply_to;
    let mut msg = p.into_message(MessageId(id));
    if let Some(quoted) = reply_to {
        let quoted = load(conn, quoted)?;
        let quote = im_channel::quote(&msg.conversation, quoted.as_ref());
        msg.reply_to = Some(Box::new(quote.map_err(StoreError::Refused)?));
    }
    insert_row(conn, &msg)?;
    // Direct chats keep a per-user row for the conversation list, written by the chat's first
    // message only (later ones find it and write nothing); group lists come from membership,
    // so a group message costs no per-member write.
    if let Target::User(to) = msg.to {
        let mut touch = conn.prepare_cached(
            "INSERT OR IGNORE INTO conversation_members (user_id, conversation, peer_user)
             VALUES (?1, ?2, ?3)",
        )?;
        touch.execute(params![msg.from.0 as i64, msg.conversation, to.0 as i64])?;
        if to != msg.from {
            touch.execute(params![to.0 as i64, msg.conversation, msg.from.0 as i64])?;
        }
    }
    Ok((msg, true))
}

impl MessageLog for SqliteStore {
    fn append(&self, msg: Pending, reply: Reply) {
        // A blocking send is the backpressure: the shard waits, its queue fills, and new
        // posts get 503 instead of piling up in memory.
        if let Err(flume::SendError(Op::Append(_, reply))) =
            self.inner.writer.send(Op::Append(msg, reply))
        {
            reply.send(im_channel::Outcome::Failed("the store is closed".into()));
        }
    }
}

fn log_err(e: StoreError) -> LogError {
    LogError(im_protocol::Cause::new(e))
}

#[async_trait]
impl MessageHistory for SqliteStore {
    async fn history(
        &self,
        conversation: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, LogError> {
        let conversation = conversation.to_owned();
        let before = before.map_or(i64::MAX, |b| b.0.min(i64::MAX as u64) as i64);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT record FROM messages
                  WHERE conversation = ?1 AND id < ?2 AND amends IS NULL
                  ORDER BY id DESC LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![conversation, before, limit as i64], |r| r.get(0))?;
            let mut out = rows
                .map(|r| decode(r?))
                .collect::<Result<Vec<_>, StoreError>>()?;
            out.reverse();
            Ok(out)
        })
        .await
        .map_err(log_err)
    }

    async fn message(&self, id: MessageId) -> Result<Option<Message>, LogError> {
        self.read(move |conn| Ok(load(conn, id)?.filter(|m| m.amends.is_none())))
            .await
            .map_err(log_err)
    }

    async fn reactions(
        &self,
        messages: &[MessageId],
        reader: UserId,
    ) -> Result<Vec<(MessageId, Reaction)>, LogError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        let ids: Vec<i64> = messages.iter().map(|m| clamp(*m)).collect();
        self.read(move |conn| {
            // One statement per page size; a page has at most 200 messages.
            let sql = format!(
                "SELECT message_id, emoji, COUNT(*), MAX(user_id = ?1) FROM reactions
                  WHERE message_id IN ({}) GROUP BY message_id, emoji
                  ORDER BY message_id, COUNT(*) DESC, emoji",
                vec!["?"; ids.len()].join(", ")
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let me = reader.0 as i64;
            let mut args: Vec<&dyn rusqlite::ToSql> = vec![&me];
            args.extend(ids.iter().map(|i| i as &dyn rusqlite::ToSql));
            let rows = stmt.query_map(args.as_slice(), |r| {
                Ok((
                    MessageId(r.get::<_, i64>(0)? as u64),
                    Reaction {
                        emoji: r.get(1)?,
                        count: r.get::<_, i64>(2)? as u64,
                        me: r.get(3)?,
                    },
                ))
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
        .map_err(log_err)
    }

    async fn conversations(&self, user: UserId) -> Result<Vec<ConversationSummary>, LogError> {
        self.read(move |conn| {
            let me = user.0 as i64;
            let mut stmt = conn.prepare_cached(
                "SELECT cm.conversation, cm.peer_user, NULL,
                   (SELECT m.id FROM messages m WHERE m.conversation = cm.conversation
                      AND m.amends IS NULL ORDER BY m.id DESC LIMIT 1)
                   FROM conversation_members cm WHERE cm.user_id = ?1 AND cm.peer_user IS NOT NULL
                 UNION ALL
                 SELECT 'g' || gm.group_id, NULL, gm.group_id,
                   (SELECT m.id FROM messages m WHERE m.conversation = 'g' || gm.group_id
                      AND m.amends IS NULL ORDER BY m.id DESC LIMIT 1)
                   FROM group_members gm WHERE gm.user_id = ?1",
            )?;
            let rows = stmt.query_map(params![me], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, Option<i64>>(1)?,
                    r.get::<_, Option<i64>>(2)?,
                    r.get::<_, Option<i64>>(3)?,
                ))
            })?;
            let mut found = Vec::new();
            for row in rows {
                let (conversation, peer, group, last) = row?;
                let with = crate::other_party(peer, group);
                if let Some(last) = last {
                    found.push((conversation, with, last));
                }
            }
            found.sort_by_key(|f| std::cmp::Reverse(f.2));
            found.truncate(1000);
            let mut record = conn.prepare_cached("SELECT record FROM messages WHERE id = ?1")?;
            let mut unread = conn.prepare_cached(
                "SELECT COUNT(*) FROM messages
                  WHERE conversation = ?1 AND sender != ?2 AND amends IS NULL AND id > COALESCE(
                    (SELECT up_to FROM read_positions WHERE user_id = ?2 AND conversation = ?1), 0)",
            )?;
            let mut out = Vec::with_capacity(found.len());
            for (conversation, with, last) in found {
                let bytes: Vec<u8> = record.query_row(params![last], |r| r.get(0))?;
                let n: i64 = unread.query_row(params![conversation, me], |r| r.get(0))?;
                out.push(ConversationSummary {
                    conversation,
                    with,
                    last_message: decode(bytes)?,
                    unread: n as u64,
                });
            }
            Ok(out)
        })
        .await
        .map_err(log_err)
    }

    async fn by_client_id(
        &self,
        from: UserId,
        client_id: &str,
    ) -> Result<Option<Message>, LogError> {
        let cid = client_id.to_owned();
        self.read(move |conn| {
            let bytes: Option<Vec<u8>> = conn
                .prepare_cached("SELECT record FROM messages WHERE sender = ?1 AND client_id = ?2")?
                .query_row(params![from.0 as i64, cid], |r| r.get(0))
                .optional()?;
            bytes.map(decode).transpose()
        })
        .await
        .map_err(log_err)
    }

    async fn mark_read(
        &self,
        user: UserId,
        conversation: &str,
        up_to: MessageId,
    ) -> Result<MessageId, LogError> {
        let conversation = conversation.to_owned();
        let up_to = up_to.0.min(i64::MAX as u64) as i64;
        self.write(move |conn| {
            let newest: i64 = conn
                .prepare_cached("SELECT COALESCE(MAX(id), 0) FROM messages WHERE conversation = ?1")?
                .query_row(params![conversation], |r| r.get(0))?;
            let stored: i64 = conn
                .prepare_cached(
                    "INSERT INTO read_positions (user_id, conversation, up_to) VALUES (?1, ?2, ?3)
                     ON CONFLICT (user_id, conversation) DO UPDATE SET up_to = MAX(up_to, excluded.up_to)
                     RETURNING up_to",
                )?
                .query_row(params![user.0 as i64, conversation, up_to.min(newest)], |r| r.get(0))?;
            Ok(MessageId(stored as u64))
        })
        .await
        .map_err(log_err)
    }
}

/// The messages of `?3` with `?1 < id <= ?2`: sent, received directly, or in a group the
/// user is a member of now. Both are found by conversation: a direct chat's first message
/// gives both users their `conversation_members` row in its transaction, so those rows are
/// exactly the user's direct chats; one index (`messages_conversation`) serves every
/// conversation, which spares each message the writes of a sender, a recipient and a group
/// index.
macro_rules! replay_range {
    () => {
        "FROM messages WHERE id > ?1 AND id <= ?2 AND conversation IN (
           SELECT conversation FROM conversation_members WHERE user_id = ?3
           UNION ALL SELECT 'g' || group_id FROM group_members WHERE user_id = ?3)"
    };
}

fn replay_err(e: StoreError) -> ReplayError {
    ReplayError::Store(im_protocol::Cause::new(e))
}

#[async_trait]
impl ReplaySource for SqliteStore {
    async fn count(
        &self,
        user: UserId,
        after: MessageId,
        up_to: MessageId,
        at_most: usize,
    ) -> Result<usize, ReplayError> {
        let (after, up_to) = (clamp(after), clamp(up_to));
        let at_most = at_most.min(i64::MAX as usize) as i64;
        self.read(move |conn| {
            let n: i64 = conn
                .prepare_cached(concat!(
                    "SELECT COUNT(*) FROM (SELECT 1 ",
                    replay_range!(),
                    " LIMIT ?4)"
                ))?
                .query_row(params![after, up_to, user.0 as i64, at_most], |r| r.get(0))?;
            Ok(n as usize)
        })
        .await
        .map_err(replay_err)
    }

    async fn page(
        &self,
        user: UserId,
        after: MessageId,
        up_to: MessageId,
        limit: PageLimit,
    ) -> Result<ReplayPage, ReplayError> {
        let (after, up_to) = (clamp(after), clamp(up_to));
        let most = limit.messages.clamp(1, i64::MAX as usize - 1);
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(concat!(
                "SELECT record ",
                replay_range!(),
                " ORDER BY id LIMIT ?4"
            ))?;
            // One row past the page tells whether more follow; its record is not read.
            let mut rows = stmt.query(params![after, up_to, user.0 as i64, most as i64 + 1])?;
            let (mut page, mut bytes) = (ReplayPage::default(), 0);
            while page.messages.len() < most && (page.messages.is_empty() || bytes < limit.bytes) {
                let Some(row) = rows.next()? else {
                    return Ok(page);
                };
                let record = row.get_ref(0)?.as_blob().map_err(rusqlite::Error::from)?;
                bytes += record.len();
                page.messages.push(MessageRecord::decode(record)?);
            }
            page.more = rows.next()?.is_some();
            Ok(page)
        })
        .await
        .map_err(replay_err)
    }

    async fn latest_id(&self) -> Result<MessageId, ReplayError> {
        Ok(MessageId(self.committed_id()))
    }
}

#[async_trait]
impl LogReader for SqliteStore {
    async fn head(&self) -> Result<Position, LogReadError> {
        Ok(self.committed_id())
    }

    async fn read(
        &self,
        after: Position,
        up_to: Position,
        limit: usize,
    ) -> Result<Vec<LogEntry>, LogReadError> {
        let (after, up_to) = (
            after.min(i64::MAX as u64) as i64,
            up_to.min(i64::MAX as u64) as i64,
        );
        self.read(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT pos, topic, record FROM (
                   SELECT id AS pos, 0 AS topic, record FROM messages WHERE id > ?1 AND id <= ?2
                   UNION ALL
                   SELECT pos, topic, record FROM changes WHERE pos > ?1 AND pos <= ?2)
                 ORDER BY pos LIMIT ?3",
            )?;
            let rows = stmt.query_map(params![after, up_to, limit as i64], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })?;
            let mut out = Vec::new();
            for row in rows {
                let (pos, topic, record) = row?;
                if let Some(e) = crate::log_entry(pos, topic, record)? {
                    out.push(e);
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| LogReadError(e.to_string()))
    }
}
