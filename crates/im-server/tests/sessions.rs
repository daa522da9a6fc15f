//! Revocation is race-free: requests made with a token while it logs out can never put the
//! session back, so once logout has returned, the token fails, on one node and on many.

mod common;

use common::TestServer;
use http::{Method, StatusCode};
use im_client::Client;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Hammers `GET /me` with `client` from several tasks until `stop` is set.
fn hammer(client: &Client, stop: &Arc<AtomicBool>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..6)
        .map(|_| {
            let (c, stop) = (client.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let _ = c.call(Method::GET, "/api/v1/me", None).await;
                }
            })
        })
        .collect()
}

async fn status_of_me(c: &Client) -> StatusCode {
    c.call(Method::GET, "/api/v1/me", None)
        .await
        .unwrap()
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_fails_once_logout_returned_despite_concurrent_requests() {
    let server = TestServer::start().await;
    let anon = server.client();
    anon.register("bob", "bob-password").await.unwrap();
    for round in 0..25 {
        let bob = anon.login("bob", "bob-password").await.unwrap();
        assert_eq!(status_of_me(&bob).await, StatusCode::OK);
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = hammer(&bob, &stop);
        bob.call(Method::POST, "/api/v1/auth/logout", None)
            .await
            .unwrap()
            .expect(StatusCode::NO_CONTENT)
            .unwrap();
        // Logout has returned: from now on the token fails, however the racing requests
        // interleaved with it.
        for _ in 0..10 {
            assert_eq!(
                status_of_me(&bob).await,
                StatusCode::UNAUTHORIZED,
                "round {round}: the token works after logout returned"
            );
        }
        stop.store(true, Ordering::Relaxed);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(status_of_me(&bob).await, StatusCode::UNAUTHORIZED);
    }
}
