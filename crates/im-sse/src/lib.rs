#![doc = include_str!("../README.md")]
//!
//! Invariants:
//! - A session is registered for live delivery *before* its replay is read from the store,
//!   and live frames at or below the replayed position are dropped, so a resumed stream has
//!   no gap and no duplicate, in id order.
//! - Mailboxes are bounded by bytes, and all of them together (with replay pages not yet
//!   written) by a node-wide budget. A push past either closes its session and drops its queue;
//!   the client resumes from the store. Nothing on the delivery path ever waits for a client.
//! - A replay is read one page at a time as the body is written, so a stream that is not read
//!   holds about one page.
//! - [`SseBroker::shutdown`] ends every stream, so hyper's graceful shutdown can finish.

mod broker;
mod budget;
mod mailbox;
mod stream;

pub use broker::{
    BrokerConfig, PageLimit, ReplayError, ReplayPage, ReplaySource, Resume, SessionInfo,
    SessionListener, SseBroker,
};
pub use stream::SseStream;

/// The SSE response headers every stream must carry.
pub const SSE_HEADERS: [(&str, &str); 3] = [
    ("content-type", "text/event-stream"),
    ("cache-control", "no-cache"),
    ("x-accel-buffering", "no"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use async_trait::async_trait;
    use http_body_util::BodyExt;
    use im_protocol::delivery::Mailboxes;
    use im_protocol::sse::{Frame, Item, Parser};
    use im_protocol::{Message, MessageId, Target, UserId};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn msg(id: u64) -> Message {
        Message {
            id: MessageId(id),
            conversation: "d1-2".into(),
            from: UserId(1),
            to: Target::User(UserId(2)),
            kind: "text".into(),
            body: serde_json::json!({"text": id.to_string()}),
            client_id: None,
            sent_at: 0,
            reply_to: None,
            edited_at: None,
            deleted: false,
            reactions: Vec::new(),
            amends: None,
        }
    }

    /// A message larger than a budget step, so the budget sees every one queued.
    fn big(id: u64) -> Frame {
        let mut m = msg(id);
        m.body = serde_json::json!({"text": "x".repeat(5000)});
        Frame::message(&m)
    }

    /// A store holding messages 1..=n; it counts the pages read, and the other reads.
    struct Log(u64, AtomicUsize, AtomicUsize);

    fn log(n: u64) -> Arc<Log> {
        Arc::new(Log(n, AtomicUsize::new(0), AtomicUsize::new(0)))
    }

    impl Log {
        fn ids(&self, after: MessageId, up_to: MessageId) -> std::ops::RangeInclusive<u64> {
            after.0 + 1..=self.0.min(up_to.0)
        }
    }

    #[async_trait]
    impl ReplaySource for Log {
        async fn count(
            &self,
            _: UserId,
            after: MessageId,
            up_to: MessageId,
            at_most: usize,
        ) -> Result<usize, ReplayError> {
            self.2.fetch_add(1, Ordering::Relaxed);
            Ok(self.ids(after, up_to).take(at_most).count())
        }
        async fn page(
            &self,
            _: UserId,
            after: MessageId,
            up_to: MessageId,
            limit: PageLimit,
        ) -> Result<ReplayPage, ReplayError> {
            self.1.fetch_add(1, Ordering::Relaxed);
            let (mut page, mut bytes) = (ReplayPage::default(), 0);
            for id in self.ids(after, up_to) {
                if page.messages.len() == limit.messages || bytes >= limit.bytes {
                    page.more = true;
                    break;
                }
                bytes += Frame::message(&msg(id)).bytes.len();
                page.messages.push(msg(id));
            }
            Ok(page)
        }
        async fn latest_id(&self) -> Result<MessageId, ReplayError> {
            self.2.fetch_add(1, Ordering::Relaxed);
            Ok(MessageId(self.0))
        }
    }

    async fn read_ids(body: &mut SseStream, want: usize) -> (Vec<u64>, Vec<String>) {
        let mut parser = Parser::new();
        let (mut ids, mut names) = (Vec::new(), Vec::new());
        while ids.len() + names.len() < want {
            let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
            for item in parser.feed(&frame) {
                if let Item::Event(e) = item {
                    match e.id {
                        Some(_) if e.event == "resync" => names.push(e.event),
                        Some(_) if e.event == "ready" => {}
                        Some(id) => ids.push(id.parse().unwrap()),
                        None => names.push(e.event),
                    }
                }
            }
        }
        (ids, names)
    }

    fn who() -> SessionInfo {
        SessionInfo {
            user: UserId(2),
            session: 9,
        }
    }

    /// Pages of two messages, so every replay here takes several.
    fn small_pages() -> BrokerConfig {
        BrokerConfig {
            replay_page: PageLimit {
                messages: 2,
                bytes: 1 << 20,
            },
            ..Default::default()
        }
    }

    #[tokio::test]
    async fn resume_replays_then_drops_live_duplicates() {
        let broker = SseBroker::new(small_pages(), log(10));
        let mut body = broker
            .open(who(), Resume::After(MessageId(5)))
            .await
            .unwrap();
        // Live copies of replayed messages (the race the broker must absorb), then new ones.
        for id in 8..=12 {
            broker.deliver(UserId(2), &Frame::message(&msg(id)));
        }
        let (ids, _) = read_ids(&mut body, 7).await;
        assert_eq!(ids, vec![6, 7, 8, 9, 10, 11, 12]);
    }

    /// The `ready` position in a stream's head.
    async fn ready_at(body: &mut SseStream) -> Option<String> {
        let frame = body.frame().await?.ok()?.into_data().ok()?;
        Parser::new()
            .feed(&frame)
            .into_iter()
            .find_map(|item| match item {
                Item::Event(e) if e.event == "ready" => e.id,
                _ => None,
            })
    }

    #[tokio::test]
    async fn a_stream_with_nothing_to_replay_reads_no_store() {
        let store = log(10);
        let broker = SseBroker::new(small_pages(), store.clone());
        // The follower has handed messages up to 8 to delivery; 9 and 10 are on their way.
        broker.set_live_head(|| MessageId(8));
        for resume in [Resume::Live, Resume::After(MessageId(8))] {
            let mut body = broker.open(who(), resume).await.unwrap();
            assert_eq!(ready_at(&mut body).await.as_deref(), Some("8"));
        }
        assert_eq!(store.2.load(Ordering::Relaxed), 0, "no count, no head read");
        assert_eq!(store.1.load(Ordering::Relaxed), 0, "no page read");

        // Behind the live head: the replay reaches the store's head (9 and 10 are committed,
        // on their way to delivery), and the delivered 9 is not written twice.
        let mut body = broker
            .open(who(), Resume::After(MessageId(6)))
            .await
            .unwrap();
        broker.deliver(UserId(2), &Frame::message(&msg(9)));
        broker.deliver(UserId(2), &Frame::message(&msg(11)));
        assert_eq!(read_ids(&mut body, 5).await.0, vec![7, 8, 9, 10, 11]);

        // Ahead of this node's live head (the client saw 10 on a node further on): the store's
        // head serves it, so it is no resync.
        let mut body = broker
            .open(who(), Resume::After(MessageId(10)))
            .await
            .unwrap();
        assert_eq!(ready_at(&mut body).await.as_deref(), Some("10"));
    }

    #[tokio::test]
    async fn a_lagging_follower_does_not_fill_a_replaying_mailbox() {
        // The store has committed up to 10; the follower has dispatched only up to 4.
        let store = log(10);
        let broker = SseBroker::new(small_pages(), store.clone());
        broker.set_live_head(|| MessageId(4));
        let mut body = broker
            .open(who(), Resume::After(MessageId(2)))
            .await
            .unwrap();
        // The follower catches up while the replay has not been read: the replay carries
        // 5..=10, so the mailbox holds none of them.
        for id in 5..=10 {
            broker.deliver(UserId(2), &big(id));
        }
        assert_eq!(
            broker.buffered_bytes(),
            0,
            "nothing queued behind the replay"
        );
        broker.deliver(UserId(2), &Frame::message(&msg(11)));
        assert_eq!(
            read_ids(&mut body, 9).await.0,
            (3..=11).collect::<Vec<_>>(),
            "each once, in order"
        );
    }

    #[tokio::test]
    async fn future_or_garbage_position_gets_resync() {
        let broker = SseBroker::new(BrokerConfig::default(), log(3));
        for resume in [
            Resume::After(MessageId(99)),
            Resume::from_parts(Some("abc"), None),
        ] {
            let mut body = broker.open(who(), resume).await.unwrap();
            let (_, names) = read_ids(&mut body, 1).await;
            assert_eq!(names, vec!["resync"]);
        }
        let cfg = BrokerConfig {
            resume_limit: 2,
            ..Default::default()
        };
        let broker = SseBroker::new(cfg, log(3));
        let mut body = broker
            .open(who(), Resume::After(MessageId(0)))
            .await
            .unwrap();
        let (ids, names) = read_ids(&mut body, 1).await;
        assert_eq!((ids, names), (vec![], vec!["resync".to_owned()]));
    }

    #[tokio::test]
    async fn full_mailbox_closes_the_stream_and_logout_ends_it() {
        let cfg = BrokerConfig {
            mailbox_frames: 2,
            ..Default::default()
        };
        let broker = SseBroker::new(cfg, log(0));
        let mut slow = broker.open(who(), Resume::Live).await.unwrap();
        let _head = slow.frame().await;
        for id in 1..=5 {
            broker.deliver(UserId(2), &Frame::message(&msg(id)));
        }
        // Cut off with nothing more: what was queued is dropped, the client resumes.
        assert!(
            slow.frame().await.is_none(),
            "a slow session is closed, not waited for"
        );
        assert_eq!(broker.buffered_bytes(), 0);

        let mut other = broker.open(who(), Resume::Live).await.unwrap();
        assert_eq!(broker.sessions_of(UserId(2)), 2);
        broker.close_session(who());
        let _retry = other.frame().await;
        assert!(other.frame().await.is_none());
        drop((slow, other));
        assert_eq!(broker.sessions_of(UserId(2)), 0);
        assert_eq!(broker.streams(), 0);
    }

    #[tokio::test]
    async fn a_slow_reader_is_cut_off_by_bytes() {
        let one = big(1).bytes.len() + mailbox::SLOT;
        let cfg = BrokerConfig {
            mailbox_bytes: 3 * one,
            ..Default::default()
        };
        let broker = SseBroker::new(cfg, log(0));
        let mut slow = broker.open(who(), Resume::Live).await.unwrap();
        let _head = slow.frame().await;
        for id in 1..=3 {
            broker.deliver(UserId(2), &big(id));
        }
        assert_eq!(broker.buffered_bytes(), budget::charge_for(3 * one));
        let (ids, _) = read_ids(&mut slow, 3).await;
        assert_eq!(ids, vec![1, 2, 3]);
        assert_eq!(broker.buffered_bytes(), 0);
        for id in 4..=7 {
            broker.deliver(UserId(2), &big(id));
        }
        assert!(slow.frame().await.is_none());
        assert_eq!(broker.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn the_buffer_cap_closes_the_session_pushed_to() {
        let one = big(1).bytes.len() + mailbox::SLOT;
        let (first_two, second_one) = (budget::charge_for(2 * one), budget::charge_for(one));
        let cfg = BrokerConfig {
            buffer_bytes: first_two + second_one,
            ..Default::default()
        };
        let broker = SseBroker::new(cfg, log(0));
        let bob = SessionInfo {
            user: UserId(3),
            session: 1,
        };
        let mut first = broker.open(who(), Resume::Live).await.unwrap();
        let mut second = broker.open(bob, Resume::Live).await.unwrap();
        let _ = (first.frame().await, second.frame().await);
        broker.deliver(UserId(2), &big(1));
        broker.deliver(UserId(2), &big(2));
        broker.deliver(UserId(3), &big(3));
        assert_eq!(broker.buffered_bytes(), first_two + second_one);
        // Full: the next push closes the session it was meant for, which lets go of its bytes.
        broker.deliver(UserId(3), &big(4));
        assert!(second.frame().await.is_none());
        assert_eq!(broker.buffered_bytes(), first_two);
        let (ids, _) = read_ids(&mut first, 2).await;
        assert_eq!(ids, vec![1, 2]);
        assert_eq!(broker.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn the_replay_is_read_a_page_at_a_time_as_the_body_is_read() {
        let store = log(100);
        let broker = SseBroker::new(small_pages(), store.clone());
        let mut body = broker
            .open(who(), Resume::After(MessageId(0)))
            .await
            .unwrap();
        assert_eq!(store.1.load(Ordering::Relaxed), 0, "opening reads no page");
        drop(body.frame().await);
        drop(body.frame().await);
        let page = body.frame().await.unwrap().unwrap().into_data().unwrap();
        assert_eq!(store.1.load(Ordering::Relaxed), 2);
        assert!(
            broker.buffered_bytes() >= page.len(),
            "a page is counted until written"
        );
        drop(page);
        assert_eq!(broker.buffered_bytes(), 0);
        let (ids, _) = read_ids(&mut body, 96).await;
        assert_eq!(ids, (5..=100).collect::<Vec<_>>());
    }

    #[tokio::test]
    async fn a_stream_closed_during_its_replay_ends_without_live_frames() {
        let broker = SseBroker::new(small_pages(), log(10));
        let mut body = broker
            .open(who(), Resume::After(MessageId(0)))
            .await
            .unwrap();
        broker.deliver(UserId(2), &Frame::message(&msg(11)));
        let (ids, _) = read_ids(&mut body, 2).await;
        assert_eq!(ids, vec![1, 2]);
        broker.close_session(who());
        // Sending 11 now would skip 3..=10.
        assert!(body.frame().await.is_none());
        drop(body);
        assert_eq!(broker.buffered_bytes(), 0);
    }

    #[tokio::test]
    async fn streams_announce_their_position() {
        let broker = SseBroker::new(small_pages(), log(10));
        for (resume, position) in [
            (Resume::Live, "10"),
            (Resume::After(MessageId(4)), "10"),
            (Resume::After(MessageId(10)), "10"),
        ] {
            let mut body = broker.open(who(), resume).await.unwrap();
            let mut parser = Parser::new();
            let ready: Vec<_> = loop {
                let data = body.frame().await.unwrap().unwrap().into_data().unwrap();
                let ready: Vec<_> = parser
                    .feed(&data)
                    .into_iter()
                    .filter_map(|i| match i {
                        Item::Event(e) if e.event == "ready" => Some(e),
                        _ => None,
                    })
                    .collect();
                if !ready.is_empty() {
                    break ready;
                }
            };
            assert_eq!(ready.len(), 1, "{resume:?}");
            assert_eq!(ready[0].id.as_deref(), Some(position));
        }
    }

    #[test]
    fn resume_position_parsing() {
        assert_eq!(Resume::from_parts(None, None), Resume::Live);
        assert_eq!(
            Resume::from_parts(Some("7"), Some("3")),
            Resume::After(MessageId(7))
        );
        assert_eq!(
            Resume::from_parts(None, Some("3")),
            Resume::After(MessageId(3))
        );
        assert_eq!(Resume::from_parts(Some("-1"), None), Resume::Unservable);
        assert_eq!(Resume::from_parts(Some("+5"), None), Resume::Unservable);
        assert_eq!(
            Resume::from_parts(Some(""), Some("4")),
            Resume::After(MessageId(4))
        );
    }
}
