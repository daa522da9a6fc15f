//! The store suite: one set of tests, run against both adapters (SQLite in a temp dir, and
//! PostgreSQL in a database made for the test and dropped after it).

use im_channel::{MessageHistory, MessageLog, Outcome, Pending, Reply};
use im_cluster::{Entry, LogEntry, LogReader, Topic};
use im_files::{FileIndex, FileMeta};
use im_protocol::record::Versioned;
use im_protocol::{Message, MessageId, Target, UserId, conversation_of};
use im_sse::{PageLimit, ReplaySource};
use im_store::{CommitListener, PgConfig, PgStore, SqliteStore, StoreConfig};
use im_testkit::TempDatabase;
use im_users::{Role, SocialWrite, UserStore, UserStoreError};
use std::sync::Arc;

/// What the suite needs of an adapter.
trait Store:
    MessageLog + MessageHistory + ReplaySource + UserStore + FileIndex + LogReader + Clone
{
    fn listen(&self, l: Arc<dyn CommitListener>);
}

impl Store for SqliteStore {
    fn listen(&self, l: Arc<dyn CommitListener>) {
        self.set_commit_listener(l);
    }
}

impl Store for PgStore {
    fn listen(&self, l: Arc<dyn CommitListener>) {
        self.set_commit_listener(l);
    }
}

/// Where an adapter keeps its data; `open` may be called again to reopen the same data.
trait Place {
    type S: Store;
    async fn make() -> Self;
    async fn open(&self) -> Self::S;
}

struct Sqlite(tempfile::TempDir);

impl Place for Sqlite {
    type S = SqliteStore;
    async fn make() -> Self {
        Sqlite(tempfile::tempdir().unwrap())
    }
    async fn open(&self) -> SqliteStore {
        SqliteStore::open(self.0.path(), StoreConfig::default()).unwrap()
    }
}

struct Postgres(TempDatabase);

impl Place for Postgres {
    type S = PgStore;
    async fn make() -> Self {
        Postgres(TempDatabase::create().await)
    }
    async fn open(&self) -> PgStore {
        PgStore::open(PgConfig::new(self.0.url())).await.unwrap()
    }
}

/// Instantiates each listed test once per adapter.
macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            use super::Place;
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Sqlite::make().await).await;
            })*
        }
        mod postgres {
            use super::Place;
            $(#[tokio::test]
            async fn $name() {
                super::$name(super::Postgres::make().await).await;
            })*
        }
    };
}

suite!(
    one_log_of_messages_and_changes,
    append_history_replay_and_reopen,
    users_and_sessions,
    session_times_and_revocations,
    social_graph_roundtrip,
    read_positions_only_move_forward,
    file_metadata,
);

fn pending(from: u64, to: u64, text: &str, cid: Option<&str>) -> Pending {
    let to = Target::User(UserId(to));
    Pending {
        from: UserId(from),
        to,
        kind: "text".into(),
        body: serde_json::json!({"text": text}),
        client_id: cid.map(str::to_owned),
        conversation: conversation_of(UserId(from), to),
        sent_at: 1,
        reply_to: None,
        amend: None,
    }
}

async fn append(store: &impl MessageLog, p: Pending) -> Outcome {
    let (reply, rx) = Reply::channel();
    store.append(p, reply);
    rx.await.unwrap()
}

fn stored(o: Outcome) -> Message {
    match o {
        Outcome::Stored(m) => m,
        other => panic!("not stored: {other:?}"),
    }
}

struct Recorder(parking_lot::Mutex<Vec<u64>>);
impl CommitListener for Recorder {
    fn committed(&self, entries: Vec<LogEntry>) {
        for e in entries {
            if let Entry::Message(m) = e.entry {
                assert_eq!(m.id.0, e.pos, "a message's id is its position");
                self.0.lock().push(m.id.0);
            }
        }
    }
}

async fn append_history_replay_and_reopen(place: impl Place) {
    let store = place.open().await;
    let rec = Arc::new(Recorder(parking_lot::Mutex::new(Vec::new())));
    store.listen(rec.clone());

    // Concurrent appends are batched; ids still come out increasing in append order.
    let mut receipts = Vec::new();
    for i in 0..50 {
        let (reply, rx) = Reply::channel();
        store.append(pending(1, 2, &i.to_string(), None), reply);
        receipts.push(rx);
    }
    let mut ids = Vec::new();
    for r in receipts {
        ids.push(stored(r.await.unwrap()).id.0);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        *rec.0.lock(),
        ids,
        "listener hears every commit in id order"
    );

    let first = stored(append(&store, pending(1, 2, "once", Some("c1"))).await);
    let again = append(&store, pending(1, 2, "twice", Some("c1"))).await;
    assert_eq!(again, Outcome::Duplicate(first.clone()));
    assert_eq!(
        store.by_client_id(UserId(1), "c1").await.unwrap(),
        Some(first.clone())
    );
    // Another sender may use the same client_id.
    stored(append(&store, pending(2, 1, "x", Some("c1"))).await);
    // Two appends with one client_id in one batch store one message.
    let (r1, rx1) = Reply::channel();
    let (r2, rx2) = Reply::channel();
    store.append(pending(1, 2, "a", Some("c2")), r1);
    store.append(pending(1, 2, "b", Some("c2")), r2);
    let (o1, o2) = (rx1.await.unwrap(), rx2.await.unwrap());
    let kept = stored(o1);
    assert_eq!(o2, Outcome::Duplicate(kept));

    let conv = conversation_of(UserId(1), Target::User(UserId(2)));
    let page = store.history(&conv, Some(first.id), 10).await.unwrap();
    assert_eq!(page.len(), 10);
    assert_eq!(page.last().unwrap().id.0, ids[49]);
    assert!(page.windows(2).all(|w| w[0].id < w[1].id));

    let convs = store.conversations(UserId(2)).await.unwrap();
    assert_eq!(convs.len(), 1);
    assert_eq!(convs[0].with, Target::User(UserId(1)));
    assert_eq!(convs[0].unread, 52);
    assert_eq!(convs[0].last_message.body["text"], "a");

    let latest = store.latest_id().await.unwrap();
    replay_pages(&store, MessageId(ids[9]), MessageId(ids[19]), latest).await;
    drop(store);

    let store = place.open().await;
    assert_eq!(store.latest_id().await.unwrap(), latest);
    let next = stored(append(&store, pending(1, 2, "after reopen", None)).await);
    assert!(next.id > latest);
}

/// The replay port: counting stops at its bound, and pages follow their message and byte
/// bounds and `up_to`; after `after`, user 2 has 43 messages, 10 of them up to `mid`.
async fn replay_pages(store: &impl Store, after: MessageId, mid: MessageId, latest: MessageId) {
    let (bob, nobody) = (UserId(2), UserId(3));
    assert_eq!(store.count(bob, after, latest, 1000).await.unwrap(), 43);
    assert_eq!(store.count(bob, after, latest, 7).await.unwrap(), 7);
    assert_eq!(store.count(bob, after, mid, 1000).await.unwrap(), 10);
    assert_eq!(
        store.count(nobody, MessageId(0), latest, 10).await.unwrap(),
        0
    );
    let limit = |messages, bytes| PageLimit { messages, bytes };
    let page = |after, up_to, l| async move { store.page(bob, after, up_to, l).await.unwrap() };
    let (mut seen, mut pos) = (Vec::new(), after);
    loop {
        let p = page(pos, latest, limit(10, 1 << 20)).await;
        assert!(p.messages.len() <= 10);
        seen.extend(p.messages.iter().map(|m| m.id));
        pos = *seen.last().unwrap();
        if !p.more {
            break;
        }
    }
    assert_eq!(seen.len(), 43);
    assert!(seen.windows(2).all(|w| w[0] < w[1]));
    assert!(latest >= pos);
    let sizes = |p: &im_sse::ReplayPage| (p.messages.len(), p.more);
    // A byte bound below one record still gives one message.
    assert_eq!(sizes(&page(after, latest, limit(10, 1)).await), (1, true));
    assert_eq!(
        sizes(&page(after, latest, limit(43, 1 << 20)).await),
        (43, false)
    );
    assert_eq!(
        sizes(&page(after, latest, limit(42, 1 << 20)).await),
        (42, true)
    );
    assert_eq!(
        sizes(&page(after, mid, limit(1000, 1 << 20)).await),
        (10, false)
    );
    assert_eq!(
        store
            .page(nobody, MessageId(0), latest, limit(10, 1 << 20))
            .await
            .unwrap(),
        im_sse::ReplayPage::default()
    );
}

async fn users_and_sessions(place: impl Place) {
    let store = place.open().await;
    let alice = store.create_user("alice", "h").await.unwrap().value;
    assert_eq!(
        store.create_user("alice", "h2").await.map(|l| l.value),
        Err(UserStoreError::UsernameTaken)
    );
    // The refused insert left nothing behind and the next account still works.
    let bob = store.create_user("bob", "hb").await.unwrap().value;
    let (u, hash) = store.login_record("alice").await.unwrap().unwrap();
    assert_eq!((u.id, hash.as_str()), (alice.id, "h"));
    assert!(store.login_record("carol").await.unwrap().is_none());
    assert_eq!(store.user(bob.id).await.unwrap(), Some(bob.clone()));
    let sid = store.create_session(alice.id, [7; 32], "").await.unwrap();
    assert_eq!(
        store.session([7; 32]).await.unwrap().unwrap().0.session,
        sid
    );
    store.delete_session(sid).await.unwrap();
    assert!(store.session([7; 32]).await.unwrap().is_none());
    // Revoking twice is harmless.
    store.delete_session(sid).await.unwrap();
    let mut all = store.all_users().await.unwrap();
    all.sort_by_key(|u| u.id);
    assert_eq!(all, vec![alice, bob]);
}

/// The user changes recorded in the log after position `after`, up to `upto`.
async fn revocations(store: &impl LogReader, after: u64, upto: u64) -> Vec<im_users::UserChange> {
    store
        .read(after, upto, 100)
        .await
        .unwrap()
        .into_iter()
        .filter_map(|e| match e.entry {
            Entry::Change { record, .. } => im_users::UserChange::decode(&record).ok(),
            Entry::Message(_) => None,
        })
        .collect()
}

/// Session times, lazy last-seen, and the bulk revocations (all but one, a password change,
/// expiry), each recorded in the log in the same transaction.
async fn session_times_and_revocations(place: impl Place) {
    use im_users::UserChange::SessionsRevoked;
    let store = place.open().await;
    let ann = store.create_user("ann", "h").await.unwrap().value;
    let ben = store.create_user("ben", "h").await.unwrap().value;
    let before = im_protocol::now_millis();
    let s1 = store
        .create_session(ann.id, [1; 32], "Firefox")
        .await
        .unwrap();
    let s2 = store.create_session(ann.id, [2; 32], "curl").await.unwrap();
    let s3 = store.create_session(ann.id, [3; 32], "").await.unwrap();
    let b1 = store.create_session(ben.id, [4; 32], "").await.unwrap();
    let (p, times, _) = store.session([1; 32]).await.unwrap().unwrap();
    assert_eq!(p.session, s1);
    assert!(times.created_at >= before && times.last_seen_at == times.created_at);

    // A recorded use moves last_seen_at, never back.
    let later = times.created_at + 5_000;
    store
        .touch_sessions(&[(s1, later), (s2, later)])
        .await
        .unwrap();
    store.touch_sessions(&[(s1, later - 1)]).await.unwrap();
    let list = store.sessions_of(ann.id).await.unwrap();
    let ids: Vec<u64> = list.iter().map(|s| s.id).collect();
    assert_eq!(ids, vec![s1, s2, s3], "oldest first, nobody else's");
    assert_eq!(
        (list[0].times.last_seen_at, list[0].user_agent.as_str()),
        (later, "Firefox")
    );
    assert_eq!(list[2].times.last_seen_at, list[2].times.created_at);

    // All but one: one record naming the revoked sessions.
    let head = store.head().await.unwrap();
    let out = store.revoke_sessions(ann.id, Some(s3)).await.unwrap();
    assert_eq!(out.value, 2);
    assert_eq!(
        revocations(&store, head, out.pos).await,
        vec![SessionsRevoked {
            user: ann.id,
            sessions: vec![s1, s2]
        }]
    );
    assert!(store.session([1; 32]).await.unwrap().is_none());
    assert_eq!(store.session([3; 32]).await.unwrap().unwrap().0.session, s3);
    // Nothing left to revoke: nothing recorded.
    assert_eq!(
        store.revoke_sessions(ann.id, Some(s3)).await.unwrap().pos,
        0
    );

    // A password change keeps the caller's session and ends the others.
    let s4 = store.create_session(ann.id, [5; 32], "").await.unwrap();
    let out = store.set_password(ann.id, "new-hash", s4).await.unwrap();
    assert_eq!(out.value, 1);
    assert_eq!(
        store.login_record("ann").await.unwrap().unwrap().1,
        "new-hash"
    );
    let left: Vec<u64> = store
        .sessions_of(ann.id)
        .await
        .unwrap()
        .iter()
        .map(|s| s.id)
        .collect();
    assert_eq!(left, vec![s4]);

    // Expiry: idle (last seen before the first bound) or old (created before the second).
    // Ben's session is older than Ann's newest, and neither was used since.
    let newest = store.session([5; 32]).await.unwrap().unwrap().1;
    let head = store.head().await.unwrap();
    let out = store
        .expire_sessions(newest.last_seen_at + 1, 0, 10)
        .await
        .unwrap();
    assert_eq!(out.value, 2, "ben's and ann's, both unused since");
    let mut revoked = revocations(&store, head, out.pos).await;
    revoked.sort_by_key(|c| match c {
        SessionsRevoked { user, .. } => *user,
        _ => UserId(0),
    });
    assert_eq!(
        revoked,
        vec![
            SessionsRevoked {
                user: ann.id,
                sessions: vec![s4]
            },
            SessionsRevoked {
                user: ben.id,
                sessions: vec![b1]
            },
        ]
    );
    let s5 = store.create_session(ann.id, [6; 32], "").await.unwrap();
    assert_eq!(
        store.expire_sessions(0, 0, 10).await.unwrap().value,
        0,
        "rules off"
    );
    let created = store.session([6; 32]).await.unwrap().unwrap().1.created_at;
    let out = store.expire_sessions(0, created + 1, 10).await.unwrap();
    assert_eq!(out.value, 1);
    assert!(
        store
            .sessions_of(ann.id)
            .await
            .unwrap()
            .iter()
            .all(|s| s.id != s5)
    );
}

async fn social_graph_roundtrip(place: impl Place) {
    let store = place.open().await;
    let a = store.create_user("ann", "h").await.unwrap().value.id;
    let b = store.create_user("ben", "h").await.unwrap().value.id;
    let c = store.create_user("cat", "h").await.unwrap().value.id;
    let req = store
        .apply_social(&SocialWrite::Request { from: a, to: b })
        .await
        .unwrap()
        .value;
    assert!(req > 0);
    let snap = store.load_social().await.unwrap();
    assert_eq!(snap.pending.len(), 1);
    store
        .apply_social(&SocialWrite::Answer {
            requests: vec![req],
            state: im_users::RequestState::Accepted,
            friends: Some((a, b)),
            new_request: None,
        })
        .await
        .unwrap();
    let r = store.friend_request(req).await.unwrap().unwrap();
    assert_eq!(r.state, im_users::RequestState::Accepted);
    let g = store
        .apply_social(&SocialWrite::CreateGroup {
            name: "g".into(),
            members: vec![(a, Role::Owner), (b, Role::Member)],
        })
        .await
        .unwrap()
        .value;
    let gid = im_protocol::GroupId(g);
    store
        .apply_social(&SocialWrite::SetMember {
            group: gid,
            user: c,
            role: Role::Admin,
        })
        .await
        .unwrap();
    store
        .apply_social(&SocialWrite::RemoveMember {
            group: gid,
            user: a,
            new_owner: Some(c),
            delete_group: false,
        })
        .await
        .unwrap();
    store
        .apply_social(&SocialWrite::Block {
            blocker: c,
            blocked: a,
            requests: vec![],
        })
        .await
        .unwrap();
    let snap = store.load_social().await.unwrap();
    assert_eq!(snap.friendships, vec![(a, b)]);
    assert_eq!(snap.blocks, vec![(c, a)]);
    assert!(snap.pending.is_empty());
    assert_eq!(snap.groups.len(), 1);
    assert_eq!(
        snap.groups[0].members,
        vec![(b, Role::Member), (c, Role::Owner)]
    );
    // The last one out deletes the group and its members.
    for (user, last) in [(b, false), (c, true)] {
        store
            .apply_social(&SocialWrite::RemoveMember {
                group: gid,
                user,
                new_owner: None,
                delete_group: last,
            })
            .await
            .unwrap();
    }
    assert!(store.load_social().await.unwrap().groups.is_empty());
}

async fn read_positions_only_move_forward(place: impl Place) {
    let store = place.open().await;
    let conv = conversation_of(UserId(1), Target::User(UserId(2)));
    let m1 = stored(append(&store, pending(1, 2, "one", None)).await);
    let m2 = stored(append(&store, pending(2, 1, "two", None)).await);
    // Never past the newest message of the conversation.
    let at = store
        .mark_read(UserId(1), &conv, MessageId(u64::MAX))
        .await
        .unwrap();
    assert_eq!(at, m2.id);
    // Never back.
    let at = store.mark_read(UserId(1), &conv, m1.id).await.unwrap();
    assert_eq!(at, m2.id);
    let convs = store.conversations(UserId(1)).await.unwrap();
    assert_eq!(convs[0].unread, 0);
    let convs = store.conversations(UserId(2)).await.unwrap();
    assert_eq!(convs[0].unread, 1);
}

async fn file_metadata(place: impl Place) {
    let store = place.open().await;
    let meta = FileMeta {
        id: 0,
        token: "ab".repeat(32),
        owner: UserId(4),
        name: "cat.png".into(),
        size: 10,
        content_type: "image/png".into(),
        key: "00ff".into(),
        created_at: 1,
        expires_at: 2,
    };
    let id = store.insert_file(&meta).await.unwrap().value;
    let mut dup = meta.clone();
    dup.key = "11".into();
    assert!(store.insert_file(&dup).await.is_err(), "tokens are unique");
    assert!(store.mark_swept(id).await.unwrap().value);
    assert!(
        !store.mark_swept(id).await.unwrap().value,
        "a second sweep finds nothing to do"
    );
    let all = store.all_files().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0],
        FileMeta {
            id,
            key: String::new(),
            ..meta
        }
    );
}

/// Messages and change records share dense positions, and the log reads back in order.
async fn one_log_of_messages_and_changes(place: impl Place) {
    let store = place.open().await;
    let heard = Arc::new(parking_lot::Mutex::new(Vec::<LogEntry>::new()));
    let rec = heard.clone();
    store.listen(Arc::new(move |entries: Vec<LogEntry>| {
        rec.lock().extend(entries)
    }));
    let ann = store.create_user("ann", "h").await.unwrap();
    let m = stored(append(&store, pending(1, 2, "hi", None)).await);
    let ben = store.create_user("ben", "h").await.unwrap();
    let sid = store
        .create_session(ann.value.id, [1; 32], "")
        .await
        .unwrap();
    let revoked = store.delete_session(sid).await.unwrap();
    assert!(store.session([2; 32]).await.unwrap().is_none());
    assert!(ann.pos < m.id.0 && m.id.0 < ben.pos && ben.pos < revoked.pos);
    let head = store.head().await.unwrap();
    assert_eq!(head, revoked.pos);
    let log = store.read(0, head, 100).await.unwrap();
    let positions: Vec<u64> = log.iter().map(|e| e.pos).collect();
    assert_eq!(
        positions,
        (1..=head).collect::<Vec<_>>(),
        "dense and ordered"
    );
    assert_eq!(log[(m.id.0 - 1) as usize].entry, Entry::Message(m.clone()));
    let Entry::Change { topic, record } = &log[(revoked.pos - 1) as usize].entry else {
        panic!("a change record");
    };
    assert_eq!(*topic, Topic::Users);
    assert_eq!(
        im_users::UserChange::decode(record).unwrap(),
        im_users::UserChange::SessionRevoked {
            user: ann.value.id,
            session: sid
        }
    );
    // What the listener heard is exactly the log, in the same order.
    assert_eq!(*heard.lock(), log);
    // Reading in small pages gives the same.
    let page = store.read(1, head, 2).await.unwrap();
    assert_eq!(page, log[1..3].to_vec());
}
