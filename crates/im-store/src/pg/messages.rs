//! Messages on PostgreSQL: append through the writer, history, conversation list, replay.

use super::PgStore;
use super::writer::{Op, Write};
use crate::StoreError;
use async_trait::async_trait;
use im_channel::{ConversationSummary, LogError, MessageHistory, MessageLog, Pending, Reply};
use im_cluster::{LogEntry, LogReadError, LogReader, Position};
use im_protocol::record::MessageRecord;
use im_protocol::{Message, MessageId, UserId};
use im_sse::{ReplayError, ReplaySource};
use tokio_postgres::Row;

fn log_err(e: StoreError) -> LogError {
    LogError(e.to_string())
}

fn records(rows: Vec<Row>) -> Result<Vec<Message>, StoreError> {
    rows.iter()
        .map(|r| Ok(MessageRecord::decode(r.get(0))?))
        .collect()
}

fn clamp(id: MessageId) -> i64 {
    id.0.min(i64::MAX as u64) as i64
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
                    "SELECT record FROM messages WHERE conversation = $1 AND id < $2
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

    async fn conversations(&self, user: UserId) -> Result<Vec<ConversationSummary>, LogError> {
        async {
            let c = self.client().await?;
            let me = user.0 as i64;
            // The newest message per conversation and the unread count in one statement.
            let stmt = c
                .prepare_cached(
                    "WITH convs AS (
                       SELECT conversation, peer_user, NULL::INT8 AS group_id, last_message_id AS last
                         FROM conversation_members WHERE user_id = $1
                       UNION ALL
                       SELECT 'g' || gm.group_id, NULL, gm.group_id,
                              (SELECT MAX(m.id) FROM messages m WHERE m.group_id = gm.group_id)
                         FROM group_members gm WHERE gm.user_id = $1)
                     SELECT c.conversation, c.peer_user, c.group_id, m.record,
                       (SELECT COUNT(*) FROM messages u
                         WHERE u.conversation = c.conversation AND u.sender <> $1
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

#[async_trait]
impl ReplaySource for PgStore {
    async fn since(
        &self,
        user: UserId,
        after: MessageId,
        limit: usize,
    ) -> Result<Vec<Message>, ReplayError> {
        async {
            let c = self.client().await?;
            let stmt = c
                .prepare_cached(
                    "SELECT record FROM messages WHERE id > $1 AND (sender = $2 OR recipient = $2
                       OR group_id IN (SELECT group_id FROM group_members WHERE user_id = $2))
                     ORDER BY id LIMIT $3",
                )
                .await?;
            let rows = c
                .query(&stmt, &[&clamp(after), &(user.0 as i64), &(limit as i64)])
                .await?;
            records(rows)
        }
        .await
        .map_err(|e| ReplayError::Store(e.to_string()))
    }

    async fn latest_id(&self) -> Result<MessageId, ReplayError> {
        self.head()
            .await
            .map(MessageId)
            .map_err(|e| ReplayError::Store(e.to_string()))
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
