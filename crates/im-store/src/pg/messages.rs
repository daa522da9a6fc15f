//! Messages on PostgreSQL: append through the writer, history, conversation list, replay.

use super::PgStore;
use super::writer::{Op, Write};
use crate::StoreError;
use crate::messages::clamp;
use async_trait::async_trait;
use im_channel::{ConversationSummary, LogError, MessageHistory, MessageLog, Pending, Reply};
use im_cluster::{LogEntry, LogReadError, LogReader, Position};
use im_protocol::record::MessageRecord;
use im_protocol::{Message, MessageId, Reaction, UserId};
use im_sse::{PageLimit, ReplayError, ReplayPage, ReplaySource};
use tokio_postgres::Row;

fn log_err(e: StoreError) -> LogError {
    LogError(im_protocol::Cause::new(e))
}

fn records(rows: Vec<Row>) -> Result<Vec<Message>, StoreError> {
    rows.iter()
        .map(|r| Ok(MessageRecord::decode(r.get(0))?))
        .collect()
}

impl MessageLog for PgStore {
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

#[async_trait]
impl MessageHistory for PgStore {
    async fn history(
        &self,
        conversation: &str,
        before: Option<MessageId>,
        limit: usize,
    ) -> Result<Vec<Message>, LogError> {
        let before = before.map_or(i64::MAX, clamp);
        async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(
                    "SELECT record FROM messages
                      WHERE conversation = $1 AND id < $2 AND amends IS NULL
                      ORDER BY id DESC LIMIT $3",
                )
                .await?;
            let rows = c
                .query(&stmt, &[&conversation, &before, &(limit as i64)])
                .await?;
            let mut out = records(rows)?;
            out.reverse();
            Ok(out)
        }
        .await
        .map_err(log_err)
    }

    async fn message(&self, id: MessageId) -> Result<Option<Message>, LogError> {
        async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached("SELECT record FROM messages WHERE id = $1 AND amends IS NULL")
                .await?;
            let row = c.query_opt(&stmt, &[&clamp(id)]).await?;
            Ok(row.map(|r| MessageRecord::decode(r.get(0))).transpose()?)
        }
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
        async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(
                    "SELECT message_id, emoji, COUNT(*), BOOL_OR(user_id = $2) FROM reactions
                      WHERE message_id = ANY($1) GROUP BY message_id, emoji
                      ORDER BY message_id, COUNT(*) DESC, emoji",
                )
                .await?;
            let rows = c.query(&stmt, &[&ids, &(reader.0 as i64)]).await?;
            Ok(rows
                .iter()
                .map(|r| {
                    let reaction = Reaction {
                        emoji: r.get(1),
                        count: r.get::<_, i64>(2) as u64,
                        me: r.get(3),
                    };
                    (MessageId(r.get::<_, i64>(0) as u64), reaction)
                })
                .collect())
        }
        .await
        .map_err(log_err)
    }

    async fn conversations(&self, user: UserId) -> Result<Vec<ConversationSummary>, LogError> {
        async {
            let c = self.client().await?;
            let me = user.0 as i64;
            // The newest message per conversation and the unread count in one statement.
            let stmt = c
                .prepare_cached(
                    "WITH convs AS (
                       SELECT cm.conversation, cm.peer_user, NULL::INT8 AS group_id,
                              (SELECT m.id FROM messages m
                                WHERE m.conversation = cm.conversation AND m.amends IS NULL
                                ORDER BY m.id DESC LIMIT 1) AS last
                         FROM conversation_members cm WHERE cm.user_id = $1
                       UNION ALL
                       SELECT 'g' || gm.group_id, NULL, gm.group_id,
                              (SELECT m.id FROM messages m
                                WHERE m.conversation = 'g' || gm.group_id AND m.amends IS NULL
                                ORDER BY m.id DESC LIMIT 1)
                         FROM group_members gm WHERE gm.user_id = $1)
                     SELECT c.conversation, c.peer_user, c.group_id, m.record,
                       (SELECT COUNT(*) FROM messages u
                         WHERE u.conversation = c.conversation AND u.sender <> $1
                           AND u.amends IS NULL
                           AND u.id > COALESCE((SELECT up_to FROM read_positions r
                                                 WHERE r.user_id = $1
                                                   AND r.conversation = c.conversation), 0))
                     FROM convs c JOIN messages m ON m.id = c.last
                     ORDER BY c.last DESC LIMIT 1000",
                )
                .await?;
            let mut out = Vec::new();
            for row in c.query(&stmt, &[&me]).await? {
                let with = crate::other_party(row.get(1), row.get(2));
                out.push(ConversationSummary {
                    conversation: row.get(0),
                    with,
                    last_message: MessageRecord::decode(row.get(3))?,
                    unread: row.get::<_, i64>(4) as u64,
                });
            }
            Ok(out)
        }
        .await
        .map_err(log_err)
    }

    async fn by_client_id(
        &self,
        from: UserId,
        client_id: &str,
    ) -> Result<Option<Message>, LogError> {
        async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached("SELECT record FROM messages WHERE sender = $1 AND client_id = $2")
                .await?;
            let row = c.query_opt(&stmt, &[&(from.0 as i64), &client_id]).await?;
            Ok(row.map(|r| MessageRecord::decode(r.get(0))).transpose()?)
        }
        .await
        .map_err(log_err)
    }

    async fn mark_read(
        &self,
        user: UserId,
        conversation: &str,
        up_to: MessageId,
    ) -> Result<MessageId, LogError> {
        self.write(Write::MarkRead {
            user,
            conversation: conversation.to_owned(),
            up_to: clamp(up_to),
        })
        .await
        .map(|l| MessageId(l.value))
        .map_err(log_err)
    }
}

/// The messages of `$3` with `$1 < id <= $2`: sent, received directly, or in a group the
/// user is a member of now, found by conversation as on SQLite (`crate::messages`).
macro_rules! replay_range {
    () => {
        "FROM messages WHERE id > $1 AND id <= $2 AND conversation IN (
           SELECT conversation FROM conversation_members WHERE user_id = $3
           UNION ALL SELECT 'g' || group_id FROM group_members WHERE user_id = $3)"
    };
}

fn replay_err(e: StoreError) -> ReplayError {
    ReplayError::Store(im_protocol::Cause::new(e))
}

#[async_trait]
impl ReplaySource for PgStore {
    async fn count(
        &self,
        user: UserId,
        after: MessageId,
        up_to: MessageId,
        at_most: usize,
    ) -> Result<usize, ReplayError> {
        async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(concat!(
                    "SELECT COUNT(*) FROM (SELECT 1 ",
                    replay_range!(),
                    " LIMIT $4) c"
                ))
                .await?;
            let at_most = at_most.min(i64::MAX as usize) as i64;
            let row = c
                .query_one(
                    &stmt,
                    &[&clamp(after), &clamp(up_to), &(user.0 as i64), &at_most],
                )
                .await?;
            Ok(row.get::<_, i64>(0) as usize)
        }
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
        async {
            let c = self.client().await?;
            // The byte bound is applied in the query, so no record past it is sent: a row
            // is in the page while the records before it total less than `$5`. One row
            // past the count tells whether more follow.
            let stmt = c
                .prepare_cached(concat!(
                    "SELECT record FROM (
                       SELECT id, record,
                         SUM(octet_length(record)) OVER (ORDER BY id) - octet_length(record)
                           AS before ",
                    replay_range!(),
                    " ORDER BY id LIMIT $4) p
                     WHERE before < $5 ORDER BY id"
                ))
                .await?;
            let most = limit.messages.clamp(1, i64::MAX as usize - 1);
            // At least one message, whatever the bound.
            let bytes = limit.bytes.clamp(1, i64::MAX as usize) as i64;
            let rows = c
                .query(
                    &stmt,
                    &[
                        &clamp(after),
                        &clamp(up_to),
                        &(user.0 as i64),
                        &(most as i64 + 1),
                        &bytes,
                    ],
                )
                .await?;
            // Fewer rows than asked and under the byte bound: the range is exhausted.
            let total: usize = rows.iter().map(|r| r.get::<_, &[u8]>(0).len()).sum();
            let more = rows.len() > most || total >= bytes as usize;
            let mut messages = records(rows)?;
            messages.truncate(most);
            Ok(ReplayPage { messages, more })
        }
        .await
        .map_err(replay_err)
    }

    async fn latest_id(&self) -> Result<MessageId, ReplayError> {
        self.head()
            .await
            .map(MessageId)
            .map_err(|e| ReplayError::Store(im_protocol::Cause::new(e)))
    }
}

#[async_trait]
impl LogReader for PgStore {
    async fn head(&self) -> Result<Position, LogReadError> {
        let me = self.clone();
        self.on_own_runtime(async move { PgStore::head(&me).await })
            .await
            .map_err(|e| LogReadError(e.to_string()))
    }

    async fn read(
        &self,
        after: Position,
        up_to: Position,
        limit: usize,
    ) -> Result<Vec<LogEntry>, LogReadError> {
        let me = self.clone();
        self.on_own_runtime(async move {
            let c = me.client().await?;
            let stmt = c
                .prepare_cached(
                    "SELECT pos, topic, record FROM (
                       SELECT id AS pos, 0::INT2 AS topic, record FROM messages
                        WHERE id > $1 AND id <= $2
                       UNION ALL
                       SELECT pos, topic, record FROM changes WHERE pos > $1 AND pos <= $2) l
                     ORDER BY pos LIMIT $3",
                )
                .await?;
            let (after, up_to) = (clamp(MessageId(after)), clamp(MessageId(up_to)));
            let rows = c.query(&stmt, &[&after, &up_to, &(limit as i64)]).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in rows {
                let (pos, topic): (i64, i16) = (r.get(0), r.get(1));
                if let Some(e) = crate::log_entry(pos, topic.into(), r.get(2))? {
                    out.push(e);
                }
            }
            Ok::<_, StoreError>(out)
        })
        .await
        .map_err(|e| LogReadError(e.to_string()))
    }
}
