//! The writer task: group commit, and positions from the one `log_head` row.

use super::PgConfig;
use crate::messages::clamp;
use crate::{CommitListener, StoreError};
use bytes::Bytes;
use deadpool_postgres::{Object, Pool, Transaction};
use im_channel::{Applied, Change, Outcome, Pending, ReactionState, Reply};
use im_cluster::{Entry, LogEntry, Logged};
use im_protocol::record::{MessageRecord, Topic};
use im_protocol::{Message, MessageId, Target, UserId};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use tokio::sync::oneshot;

/// A write other than a message; each answers with one number (an id, a stored position, or
/// 1/0 for whether it changed anything) and the log position of its change record (0 if
/// none).
pub(crate) enum Write {
    /// Accounts, sessions and the social graph.
    #[cfg(feature = "users")]
    Users(super::social::UserWrite),
    /// File metadata.
    #[cfg(feature = "files")]
    Files(super::files::FileWrite),
    /// Moves a read position forward; answers the stored position.
    MarkRead {
        user: UserId,
        conversation: String,
        up_to: i64,
    },
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
    tokio::spawn(run(pool, rx, config.batch.max(1), config.notify, listener));
    tx
}

async fn run(
    pool: Pool,
    rx: flume::Receiver<Op>,
    batch_max: usize,
    notify: bool,
    listener: Arc<OnceLock<Arc<dyn CommitListener>>>,
) {
    let mut client: Option<Object> = None;
    let mut batch = Vec::with_capacity(batch_max);
    let metrics = crate::commits::CommitMetrics::new("postgres");
    while let Ok(first) = rx.recv_async().await {
        batch.push(first);
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(op) => batch.push(op),
                Err(_) => break,
            }
        }
        let (started, ops) = (std::time::Instant::now(), batch.len());
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
        let result = commit(&mut c, batch.drain(..), &mut done, &mut entries, notify).await;
        metrics.record(started, ops, result.is_ok());
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
            Op::Append(_, reply) => {
                reply.send(Outcome::Failed(im_protocol::Cause::new(e.to_string())))
            }
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
        (Done::Append(reply, Err(StoreError::Refused(e))), Ok(())) => {
            reply.send(Outcome::Rejected(e))
        }
        (Done::Append(reply, Err(e)), _) => reply.send(Outcome::Failed(im_protocol::Cause::new(e))),
        (Done::Append(reply, Ok(_)), Err(e)) => {
            reply.send(Outcome::Failed(im_protocol::Cause::new(e.to_string())))
        }
        (Done::Write(tx, result), Ok(())) => {
            let _ = tx.send(result);
        }
        (Done::Write(tx, _), Err(e)) => {
            let _ = tx.send(Err(StoreError::Commit(e.to_string())));
        }
    }
}

/// The messages (and amendments) a batch inserts, for one `UNNEST` insert, and the stored
/// rows it rewrites.
#[derive(Default)]
struct Rows {
    new: Vec<Message>,
    /// Stored messages changed by the batch's amendments, by id: written back in one
    /// `UNNEST` update.
    changed: HashMap<MessageId, Message>,
    /// Stored messages read under the head lock: the ones the batch's replies quote and its
    /// amendments change, as the batch leaves them.
    known: HashMap<MessageId, Message>,
}

impl Rows {
    /// The message `id` as the batch has it so far: changed by an earlier amendment, new in
    /// this batch, or as stored.
    fn current(&self, id: MessageId) -> Option<Message> {
        self.known
            .get(&id)
            .or_else(|| self.new.iter().find(|m| m.id == id))
            .cloned()
    }

    /// Brings every row the batch knows that depends on `target` up to date (replies quoting
    /// it, its earlier amendments): new ones in place, stored ones into `changed`.
    fn follow(&mut self, target: &Message, stored: Vec<Message>) {
        for row in &mut self.new {
            im_channel::follow(target, row);
        }
        for mut row in stored {
            if let Some(newer) = self.changed.get(&row.id) {
                row = newer.clone();
            }
            if im_channel::follow(target, &mut row) {
                self.known.insert(row.id, row.clone());
                self.changed.insert(row.id, row);
            }
        }
    }
}

/// The change records a batch writes, with their positions.
#[derive(Default)]
pub(super) struct Changes {
    pos: Vec<i64>,
    topic: Vec<Topic>,
    record: Vec<Bytes>,
}

#[cfg_attr(not(any(feature = "users", feature = "files")), allow(dead_code))]
impl Changes {
    /// Records a change of `topic` at position `next` (then moved on); returns its position.
    pub(super) fn record(&mut self, next: &mut u64, topic: Topic, record: impl Into<Bytes>) -> u64 {
        let pos = *next;
        self.pos.push(pos as i64);
        self.topic.push(topic);
        self.record.push(record.into());
        *next += 1;
        pos
    }
}

/// A write already run (under its savepoint, before the head lock), waiting for positions.
enum Staged {
    Append(Pending, Reply),
    Write {
        reply: oneshot::Sender<Result<Logged<u64>, StoreError>>,
        /// The result, with the position of its last record counted from 1 in `records`.
        result: Result<(Logged<u64>, Changes), StoreError>,
    },
}

/// Runs one batch in one transaction; each op's result goes to `done`, in op order, and the
/// committed log entries to `entries`, in position order.
///
/// The `log_head` lock serializes every node's commits, so it is held as briefly as the
/// design allows: the writes (each under its savepoint) run first, without it; then one
/// round trip takes the lock and finds repeated `client_id`s, positions are handed out in op
/// order, one pipelined round trip inserts everything and moves the head, and `COMMIT`.
async fn commit(
    client: &mut Object,
    ops: impl Iterator<Item = Op>,
    done: &mut Vec<Done>,
    entries: &mut Vec<LogEntry>,
    notify: bool,
) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    let mut staged = Vec::new();
    for op in ops {
        match op {
            Op::Append(p, reply) => staged.push(Staged::Append(p, reply)),
            Op::Write(w, reply) => {
                tx.batch_execute("SAVEPOINT op").await?;
                // Positions are provisional here (from 1); they are assigned under the lock.
                let (mut scratch, mut one) = (Changes::default(), 1u64);
                let result = exec(&tx, w, &mut one, &mut scratch).await;
                let end = if result.is_ok() {
                    "RELEASE op"
                } else {
                    "ROLLBACK TO op; RELEASE op"
                };
                tx.batch_execute(end).await?;
                staged.push(Staged::Write {
                    reply,
                    result: result.map(|l| (l, scratch)),
                });
            }
        }
    }
    let head_stmt = tx
        .prepare_cached("SELECT last FROM log_head FOR UPDATE")
        .await?;
    // Pipelined: the lookups run as soon as the lock is granted, in the same round trip.
    let (head, mut first, known) = tokio::try_join!(
        async {
            let row = tx.query_one(&head_stmt, &[]).await?;
            Ok::<i64, StoreError>(row.get(0))
        },
        first_by_client_id(&tx, &staged),
        referenced(&tx, &staged),
    )?;
    let mut next = head as u64 + 1;
    let mut rows = Rows {
        known,
        ..Rows::default()
    };
    let mut changes = Changes::default();
    for op in staged {
        match op {
            Staged::Append(p, reply) if p.amend.is_some() => {
                let result = amend(&tx, &mut rows, p, next).await;
                if let Ok((entry, true)) = &result {
                    entries.push(LogEntry {
                        pos: next,
                        entry: Entry::Message(entry.clone()),
                    });
                    next += 1;
                }
                done.push(Done::Append(reply, result));
            }
            Staged::Append(p, reply) => {
                let key = p.client_id.clone().map(|c| (p.from, c));
                if let Some(m) = key.as_ref().and_then(|k| first.get(k)) {
                    done.push(Done::Append(reply, Ok((m.clone(), false))));
                    continue;
                }
                let reply_to = p.reply_to;
                let mut msg = p.into_message(MessageId(next));
                if let Some(quoted) = reply_to {
                    let quoted = rows.current(quoted);
                    match im_channel::quote(&msg.conversation, quoted.as_ref()) {
                        Ok(q) => msg.reply_to = Some(Box::new(q)),
                        Err(e) => {
                            done.push(Done::Append(reply, Err(StoreError::Refused(e))));
                            continue;
                        }
                    }
                }
                if let Some(k) = key {
                    first.insert(k, msg.clone());
                }
                entries.push(LogEntry {
                    pos: next,
                    entry: Entry::Message(msg.clone()),
                });
                next += 1;
                rows.new.push(msg.clone());
                done.push(Done::Append(reply, Ok((msg, true))));
            }
            Staged::Write { reply, result } => {
                let result = result.map(|(logged, scratch)| {
                    let offset = next - 1;
                    for (topic, record) in scratch.topic.into_iter().zip(scratch.record) {
                        entries.push(LogEntry {
                            pos: next,
                            entry: Entry::Change {
                                topic,
                                record: record.clone(), // a refcount, not a copy
                            },
                        });
                        changes.record(&mut next, topic, record);
                    }
                    Logged {
                        value: logged.value,
                        pos: if logged.pos == 0 {
                            0
                        } else {
                            logged.pos + offset
                        },
                    }
                });
                done.push(Done::Write(reply, result));
            }
        }
    }
    let last = next as i64 - 1;
    tokio::try_join!(
        insert_messages(&tx, &rows),
        insert_members(&tx, &rows),
        rewrite_messages(&tx, &rows),
        insert_changes(&tx, &changes),
        move_head(&tx, head, last, notify),
    )?;
    tx.commit().await?;
    Ok(())
}

async fn insert_changes(tx: &Transaction<'_>, changes: &Changes) -> Result<(), StoreError> {
    if changes.pos.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO changes (pos, topic, record)
             SELECT * FROM UNNEST($1::INT8[], $2::INT2[], $3::BYTEA[])",
        )
        .await?;
    let topic: Vec<i16> = changes.topic.iter().map(|t| t.code()).collect();
    let record: Vec<&[u8]> = changes.record.iter().map(|r| &r[..]).collect();
    tx.execute(&stmt, &[&changes.pos, &topic, &record]).await?;
    Ok(())
}

/// Moves the head from `head` to `last`, if the batch took positions.
async fn move_head(
    tx: &Transaction<'_>,
    head: i64,
    last: i64,
    notify: bool,
) -> Result<(), StoreError> {
    if last <= head {
        return Ok(());
    }
    // The notification goes out at commit, so no node hears of a head before it is visible;
    // it is only a wake-up, the followers read the log itself.
    let stmt = tx
        .prepare_cached(if notify {
            "WITH h AS (UPDATE log_head SET last = $1 RETURNING last)
             SELECT pg_notify('im_log', last::TEXT) FROM h"
        } else {
            "UPDATE log_head SET last = $1"
        })
        .await?;
    tx.execute(&stmt, &[&last]).await?;
    Ok(())
}

/// The first message of every `(sender, client_id)` the batch's appends carry that is already
/// stored; read under the head lock, so no other node can store one meanwhile.
async fn first_by_client_id(
    tx: &Transaction<'_>,
    ops: &[Staged],
) -> Result<HashMap<(UserId, String), Message>, StoreError> {
    let (mut senders, mut cids) = (Vec::new(), Vec::new());
    for op in ops {
        let Staged::Append(p, _) = op else { continue };
        if let Some(c) = &p.client_id {
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

/// Applies one amendment at position `next` to the message as the batch has it; the
/// result is the amendment's entry (`true`), the message unchanged (`false`), or a refusal.
async fn amend(
    tx: &Transaction<'_>,
    rows: &mut Rows,
    p: Pending,
    next: u64,
) -> Result<(Message, bool), StoreError> {
    let Some(a) = p.amend.as_ref() else {
        return Err(StoreError::Commit("not an amendment".into()));
    };
    let target = a.target;
    let state = match &a.change {
        Change::React { emoji, .. } => reaction_state(tx, target, emoji, p.from).await?,
        _ => ReactionState::default(),
    };
    let current = rows.current(target);
    match p.amend(MessageId(next), current, state) {
        Err(e) => Err(StoreError::Refused(e)),
        Ok(Applied::Unchanged(m)) => Ok((m, false)),
        Ok(Applied::Reacted { entry, emoji, add }) => {
            // Written now, inside the transaction, so a later reaction of this batch reads it.
            let stmt = tx
                .prepare_cached(if add {
                    "INSERT INTO reactions (message_id, emoji, user_id) VALUES ($1, $2, $3)"
                } else {
                    "DELETE FROM reactions WHERE message_id = $1 AND emoji = $2 AND user_id = $3"
                })
                .await?;
            tx.execute(&stmt, &[&clamp(target), &emoji, &(entry.from.0 as i64)])
                .await?;
            rows.new.push(entry.clone());
            Ok((entry, true))
        }
        Ok(Applied::Changed { target, entry }) => {
            // Rare enough for a round trip of their own under the lock: the rows that
            // quote or amend the changed message.
            let stmt = tx
                .prepare_cached(
                    "SELECT record FROM messages WHERE amends = $1
                     UNION ALL SELECT record FROM messages WHERE reply_to = $1",
                )
                .await?;
            let stored = tx
                .query(&stmt, &[&clamp(target.id)])
                .await?
                .iter()
                .map(|r| MessageRecord::decode(r.get(0)))
                .collect::<Result<Vec<_>, _>>()?;
            rows.follow(&target, stored);
            if target.deleted {
                let stmt = tx
                    .prepare_cached("DELETE FROM reactions WHERE message_id = $1")
                    .await?;
                tx.execute(&stmt, &[&clamp(target.id)]).await?;
            }
            // A message of this very batch is amended before it is inserted.
            if let Some(fresh) = rows.new.iter_mut().find(|m| m.id == target.id) {
                *fresh = target;
            } else {
                rows.known.insert(target.id, target.clone());
                rows.changed.insert(target.id, target);
            }
            rows.new.push(entry.clone());
            Ok((entry, true))
        }
    }
}

/// The reactions of message `id` as this transaction sees them (under the head lock, so as
/// committed plus this batch's), for deciding `user`'s reaction with `emoji`.
async fn reaction_state(
    tx: &Transaction<'_>,
    id: MessageId,
    emoji: &str,
    user: UserId,
) -> Result<ReactionState, StoreError> {
    let stmt = tx
        .prepare_cached(
            "SELECT EXISTS (SELECT 1 FROM reactions
                             WHERE message_id = $1 AND emoji = $2 AND user_id = $3),
                    (SELECT COUNT(*) FROM reactions WHERE message_id = $1 AND emoji = $2),
                    (SELECT COUNT(DISTINCT emoji) FROM reactions WHERE message_id = $1)",
        )
        .await?;
    let row = tx
        .query_one(&stmt, &[&clamp(id), &emoji, &(user.0 as i64)])
        .await?;
    Ok(ReactionState {
        mine: row.get(0),
        count: row.get::<_, i64>(1) as u64,
        kinds: row.get::<_, i64>(2) as usize,
    })
}

/// The stored messages the batch's replies quote and its amendments change, read under the
/// head lock so what they decide on is what is committed.
async fn referenced(
    tx: &Transaction<'_>,
    ops: &[Staged],
) -> Result<HashMap<MessageId, Message>, StoreError> {
    let ids: Vec<i64> = ops
        .iter()
        .filter_map(|op| match op {
            Staged::Append(p, _) => p.amend.as_ref().map(|a| a.target).or(p.reply_to),
            Staged::Write { .. } => None,
        })
        .map(clamp)
        .collect();
    if ids.is_empty() {
        return Ok(HashMap::new());
    }
    let stmt = tx
        .prepare_cached("SELECT record FROM messages WHERE id = ANY($1)")
        .await?;
    let mut found = HashMap::new();
    for row in tx.query(&stmt, &[&ids]).await? {
        let m = MessageRecord::decode(row.get(0))?;
        found.insert(m.id, m);
    }
    Ok(found)
}

async fn insert_messages(tx: &Transaction<'_>, r: &Rows) -> Result<(), StoreError> {
    if r.new.is_empty() {
        return Ok(());
    }
    let n = r.new.len();
    let (mut id, mut conversation, mut sender) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut recipient, mut group, mut client_id) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut sent_at, mut record, mut amends, mut reply_to) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for msg in &r.new {
        let (to_user, to_group) = match msg.to {
            Target::User(u) => (Some(u.0 as i64), None),
            Target::Group(g) => (None, Some(g.0 as i64)),
        };
        id.push(clamp(msg.id));
        conversation.push(msg.conversation.as_str());
        sender.push(msg.from.0 as i64);
        recipient.push(to_user);
        group.push(to_group);
        client_id.push(msg.client_id.as_deref());
        sent_at.push(msg.sent_at as i64);
        record.push(MessageRecord::encode(msg)?);
        amends.push(msg.amends.map(clamp));
        reply_to.push(msg.reply_to.as_ref().map(|q| clamp(q.id)));
    }
    let stmt = tx
        .prepare_cached(
            "INSERT INTO messages (id, conversation, sender, recipient, group_id, client_id, sent_at,
                                   record, amends, reply_to)
             SELECT * FROM UNNEST($1::INT8[], $2::TEXT[], $3::INT8[], $4::INT8[], $5::INT8[],
                                  $6::TEXT[], $7::INT8[], $8::BYTEA[], $9::INT8[], $10::INT8[])",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            &id,
            &conversation,
            &sender,
            &recipient,
            &group,
            &client_id,
            &sent_at,
            &record,
            &amends,
            &reply_to,
        ],
    )
    .await?;
    Ok(())
}

/// Writes back the stored messages the batch's amendments changed.
async fn rewrite_messages(tx: &Transaction<'_>, r: &Rows) -> Result<(), StoreError> {
    if r.changed.is_empty() {
        return Ok(());
    }
    let mut id = Vec::with_capacity(r.changed.len());
    let mut record = Vec::with_capacity(r.changed.len());
    for msg in r.changed.values() {
        id.push(clamp(msg.id));
        record.push(MessageRecord::encode(msg)?);
    }
    let stmt = tx
        .prepare_cached(
            "UPDATE messages m SET record = u.record
               FROM UNNEST($1::INT8[], $2::BYTEA[]) AS u(id, record) WHERE m.id = u.id",
        )
        .await?;
    tx.execute(&stmt, &[&id, &record]).await?;
    Ok(())
}

/// Direct chats keep a per-user row for the conversation list; one row per key, since an
/// upsert may not touch a row twice.
async fn insert_members(tx: &Transaction<'_>, r: &Rows) -> Result<(), StoreError> {
    let mut members: HashMap<(i64, &str), i64> = HashMap::new();
    for msg in r.new.iter().filter(|m| m.amends.is_none()) {
        if let Target::User(to) = msg.to {
            let (a, b) = (msg.from.0 as i64, to.0 as i64);
            members.insert((a, msg.conversation.as_str()), b);
            members.insert((b, msg.conversation.as_str()), a);
        }
    }
    if members.is_empty() {
        return Ok(());
    }
    let (mut user, mut conv, mut peer) = (Vec::new(), Vec::new(), Vec::new());
    for ((u, c), p) in members {
        user.push(u);
        conv.push(c);
        peer.push(p);
    }
    // The chat's first message makes the rows; later ones find them and write nothing.
    let stmt = tx
        .prepare_cached(
            "INSERT INTO conversation_members (user_id, conversation, peer_user)
             SELECT * FROM UNNEST($1::INT8[], $2::TEXT[], $3::INT8[])
             ON CONFLICT (user_id, conversation) DO NOTHING",
        )
        .await?;
    tx.execute(&stmt, &[&user, &conv, &peer]).await?;
    Ok(())
}

/// Runs one write inside its savepoint, adding the change records it makes.
#[cfg_attr(
    not(any(feature = "users", feature = "files")),
    allow(unused_variables)
)]
async fn exec(
    tx: &Transaction<'_>,
    w: Write,
    next: &mut u64,
    changes: &mut Changes,
) -> Result<Logged<u64>, StoreError> {
    match w {
        #[cfg(feature = "users")]
        Write::Users(w) => super::social::exec(tx, w, next, changes).await,
        #[cfg(feature = "files")]
        Write::Files(w) => super::files::exec(tx, w, next, changes).await,
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
    }
}
