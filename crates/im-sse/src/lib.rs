#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
//!
//! Invariants:
//! - A session is registered for live delivery *before* its replay is read from the store,
//!   and live frames at or below the replayed position are dropped, so a resumed stream has
//!   no gap and no duplicate, in id order.
//! - Mailboxes are bounded. A full mailbox closes its session; the client resumes from the
//!   store. Nothing on the delivery path ever waits for a client.
//! - [`SseBroker::shutdown`] ends every stream, so hyper's graceful shutdown can finish.

mod broker;
mod mailbox;
mod stream;

pub use broker::{
    BrokerConfig, ReplayError, ReplaySource, Resume, SessionInfo, SessionListener, SseBroker,
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
    use im_pool::Mailboxes;
    use im_protocol::sse::{Frame, Item, Parser};
    use im_protocol::{Message, MessageId, Target, UserId};
    use std::sync::Arc;

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
        }
    }

    /// A store holding messages 1..=n.
    struct Log(u64);

    #[async_trait]
    impl ReplaySource for Log {
        async fn since(
            &self,
            _: UserId,
            after: MessageId,
            limit: usize,
        ) -> Result<Vec<Message>, ReplayError> {
            Ok((after.0 + 1..=self.0).take(limit).map(msg).collect())
        }
        async fn latest_id(&self) -> Result<MessageId, ReplayError> {
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

    #[tokio::test]
    async fn resume_replays_then_drops_live_duplicates() {
        let broker = SseBroker::new(BrokerConfig::default(), Arc::new(Log(10)));
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

    #[tokio::test]
    async fn future_or_garbage_position_gets_resync() {
        let broker = SseBroker::new(BrokerConfig::default(), Arc::new(Log(3)));
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
        let broker = SseBroker::new(cfg, Arc::new(Log(3)));
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
            mailbox: 2,
            ..Default::default()
        };
        let broker = SseBroker::new(cfg, Arc::new(Log(0)));
        let mut slow = broker.open(who(), Resume::Live).await.unwrap();
        for id in 1..=5 {
            broker.deliver(UserId(2), &Frame::message(&msg(id)));
        }
        let (ids, _) = read_ids(&mut slow, 2).await;
        assert_eq!(ids, vec![1, 2]);
        assert!(
            slow.frame().await.is_none(),
            "a slow session is closed, not waited for"
        );

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
    async fn streams_announce_their_position() {
        let broker = SseBroker::new(BrokerConfig::default(), Arc::new(Log(10)));
        for (resume, position) in [
            (Resume::Live, "10"),
            (Resume::After(MessageId(4)), "10"),
            (Resume::After(MessageId(10)), "10"),
        ] {
            let mut body = broker.open(who(), resume).await.unwrap();
            let head = body.frame().await.unwrap().unwrap().into_data().unwrap();
            let ready: Vec<_> = Parser::new()
                .feed(&head)
                .into_iter()
                .filter_map(|i| match i {
                    Item::Event(e) if e.event == "ready" => Some(e),
                    _ => None,
                })
                .collect();
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
