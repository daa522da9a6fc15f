//! SIGTERM ends open event streams and the process exits promptly.

mod common;

use common::{ServerProcess, patient};
use im_protocol::{Target, UserId};
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_streams_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ServerProcess::start(dir.path());
    let anon = server.client();
    let (alice, bob) = common::alice_and_bob(&anon).await;
    let mut streams = vec![
        bob.events(None).await.unwrap(),
        alice.events(None).await.unwrap(),
    ];
    // Make sure both streams are live before the signal.
    alice
        .send_text(Target::User(UserId(2)), "before", None)
        .await
        .unwrap();
    for s in &mut streams {
        patient("message", s.next_message()).await.unwrap().unwrap();
    }

    server.signal("TERM");
    let signalled = Instant::now();
    for s in &mut streams {
        // The stream ends (cleanly) instead of hanging.
        while let Some(item) = patient("stream end", s.next_item()).await {
            if item.is_err() {
                break;
            }
        }
    }
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(5),
            "server still running 5 s after SIGTERM"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "clean exit, got {status}");
}
