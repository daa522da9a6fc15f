//! Friends, blocks, groups, presence, typing and read receipts over real TCP.

mod common;

use common::JsonValue;
use common::{ServerProcess, TestServer, patient};
use http::{Method, StatusCode};
use im_client::{Client, EventStream};
use im_protocol::sse::Event;
use im_protocol::{Message, Target, UserId};
use serde_json::{Value, json};

async fn users(server: &TestServer, names: &[&str]) -> Vec<Client> {
    let mut out = Vec::new();
    for n in names {
        out.push(
            server
                .client()
                .signup(n, &format!("{n}-password"))
                .await
                .unwrap(),
        );
    }
    out
}

/// `POST /friends/requests` with `body`.
async fn ask_friend(c: &Client, body: Value) -> im_client::Response {
    call(c, Method::POST, "/friends/requests", Some(body)).await
}

async fn call(c: &Client, method: Method, path: &str, body: Option<Value>) -> im_client::Response {
    c.call(method, &format!("/api/v1{path}"), body.as_ref())
        .await
        .unwrap()
}

/// Status and error code of a call.
async fn outcome(
    c: &Client,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> (StatusCode, Option<String>) {
    code(&call(c, method, path, body).await)
}

fn code(res: &im_client::Response) -> (StatusCode, Option<String>) {
    (res.status, res.error_code())
}

fn err(status: u16, code: &str) -> (StatusCode, Option<String>) {
    (StatusCode::from_u16(status).unwrap(), Some(code.to_owned()))
}

/// The next event that is not a keep-alive, as (name, data).
async fn next_event(stream: &mut EventStream) -> Event {
    patient("an event", stream.next_event())
        .await
        .expect("stream ended")
        .unwrap()
}

async fn next_of(stream: &mut EventStream, name: &str) -> Value {
    loop {
        let e = next_event(stream).await;
        if e.event == name {
            return serde_json::from_str(&e.data).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_friend_request_is_answered_by_its_addressee_only() {
    let server = TestServer::start().await;
    let u = users(&server, &["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&u[0], &u[1], &u[2]);
    let mut bob_events = bob.events(None).await.unwrap();

    // A stranger cannot message.
    let res = alice
        .post_text(Target::User(UserId(2)), "hi", None)
        .await
        .unwrap();
    assert_eq!(code(&res), err(403, "not_friends"));

    // Request: the addressee gets an event; asking again returns the same pending request.
    let res = ask_friend(alice, json!({"username": "bob"})).await;
    assert_eq!(res.status, StatusCode::CREATED);
    let request = res.value()["request"].clone();
    assert_eq!(
        (
            request["from"].clone(),
            request["to"].clone(),
            request["state"].clone()
        ),
        (json!(1), json!(2), json!("pending"))
    );
    let event = next_of(&mut bob_events, "friend_request").await;
    assert_eq!(event["request"]["id"], request["id"]);
    assert_eq!(event["request"]["from_username"], "alice");
    let again = ask_friend(alice, json!({"username": "bob"})).await;
    assert_eq!(again.value()["request"]["id"], request["id"]);

    let lists = call(bob, Method::GET, "/friends/requests", None)
        .await
        .value();
    assert_eq!(lists["incoming"].as_array().unwrap().len(), 1);
    assert_eq!(lists["outgoing"].as_array().unwrap().len(), 0);
    let lists = call(alice, Method::GET, "/friends/requests", None)
        .await
        .value();
    assert_eq!(lists["outgoing"][0]["id"], request["id"]);

    // Only the addressee answers; unknown ids are 404; an answered one is 409.
    let id = request["id"].as_u64().unwrap();
    let accept = format!("/friends/requests/{id}/accept");
    assert_eq!(
        outcome(alice, Method::POST, &accept, None).await,
        err(403, "forbidden")
    );
    assert_eq!(
        outcome(carol, Method::POST, &accept, None).await,
        err(404, "no_such_request")
    );
    assert_eq!(
        outcome(bob, Method::POST, "/friends/requests/999/accept", None).await,
        err(404, "no_such_request")
    );
    let res = call(bob, Method::POST, &accept, None).await;
    assert_eq!(
        (res.status, res.value()["request"]["state"].clone()),
        (StatusCode::OK, json!("accepted"))
    );
    assert_eq!(
        outcome(bob, Method::POST, &accept, None).await,
        err(409, "request_answered")
    );
    assert_eq!(
        code(&ask_friend(alice, json!({"username": "bob"})).await),
        err(409, "already_friends")
    );

    // Friends now: the message gets through and arrives.
    let m = alice
        .send_text(Target::User(UserId(2)), "hi bob", None)
        .await
        .unwrap();
    let got: Message = serde_json::from_value(next_of(&mut bob_events, "message").await).unwrap();
    assert_eq!(got, m);
    let friends = call(bob, Method::GET, "/friends", None).await.value();
    assert_eq!(
        friends["friends"],
        json!([{"id": 1, "username": "alice", "online": false}])
    );

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_friend_requests_get_their_codes() {
    let server = TestServer::start().await;
    let u = users(&server, &["alice", "bob", "carol"]).await;
    let alice = &u[0];
    assert_eq!(
        code(&ask_friend(alice, json!({"username": "nobody"})).await),
        err(404, "no_such_user")
    );
    assert_eq!(
        code(&ask_friend(alice, json!({"username": "alice"})).await),
        err(400, "invalid_request")
    );
    assert_eq!(
        code(&ask_friend(alice, json!({"user": "bob"})).await),
        err(400, "invalid_request")
    );

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_is_declined_or_a_crossing_one_accepted_at_once() {
    let server = TestServer::start().await;
    let u = users(&server, &["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&u[0], &u[1], &u[2]);
    // Decline.
    let r = ask_friend(carol, json!({"username": "alice"}))
        .await
        .value();
    let decline = format!("/friends/requests/{}/decline", r["request"]["id"]);
    let res = call(alice, Method::POST, &decline, None).await;
    assert_eq!(res.value()["request"]["state"], "declined");

    // A crossing request is accepted at once.
    ask_friend(carol, json!({"username": "bob"})).await;
    let res = ask_friend(bob, json!({"username": "carol"})).await;
    assert_eq!(
        (res.status, res.value()["request"]["state"].clone()),
        (StatusCode::CREATED, json!("accepted"))
    );
    let friends = call(carol, Method::GET, "/friends", None).await.value();
    assert_eq!(friends["friends"][0]["username"], "bob");
    assert!(
        call(bob, Method::GET, "/friends/requests", None)
            .await
            .value()["incoming"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_friend_is_removed() {
    let server = TestServer::start().await;
    let u = users(&server, &["alice", "bob", "carol"]).await;
    let (bob, carol) = (&u[1], &u[2]);
    ask_friend(carol, json!({"username": "bob"})).await;
    ask_friend(bob, json!({"username": "carol"})).await;
    // Remove a friend.
    assert_eq!(
        call(carol, Method::DELETE, "/friends/2", None).await.status,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        call(bob, Method::GET, "/friends", None).await.value()["friends"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    assert_eq!(
        outcome(carol, Method::DELETE, "/friends/99", None).await,
        err(404, "no_such_user")
    );

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_block_ends_the_friendship_and_stops_both_ways() {
    let server = TestServer::start().await;
    let u = users(&server, &["alice", "bob", "carol"]).await;
    let (alice, bob) = (&u[0], &u[1]);
    let id = ask_friend(alice, json!({"username": "bob"})).await.value()["request"]["id"].clone();
    call(
        bob,
        Method::POST,
        &format!("/friends/requests/{id}/accept"),
        None,
    )
    .await;
    // Block: ends the friendship, stops messages and requests both ways.
    let res = call(bob, Method::POST, "/blocks", Some(json!({"user_id": 1}))).await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let res = alice
        .post_text(Target::User(UserId(2)), "still there?", None)
        .await
        .unwrap();
    assert_eq!(code(&res), err(403, "blocked"));
    let res = bob
        .post_text(Target::User(UserId(1)), "bye", None)
        .await
        .unwrap();
    assert_eq!(code(&res), err(403, "blocked"));
    assert_eq!(
        code(&ask_friend(alice, json!({"username": "bob"})).await),
        err(403, "blocked")
    );
    assert!(
        call(alice, Method::GET, "/friends", None).await.value()["friends"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        call(bob, Method::GET, "/blocks", None).await.value()["blocked"],
        json!([{"id": 1, "username": "alice"}])
    );
    assert_eq!(
        outcome(bob, Method::POST, "/blocks", Some(json!({"user_id": 2}))).await,
        err(400, "invalid_request")
    );
    assert_eq!(
        outcome(bob, Method::POST, "/blocks", Some(json!({"user_id": 77}))).await,
        err(404, "no_such_user")
    );
    assert_eq!(
        call(bob, Method::DELETE, "/blocks/1", None).await.status,
        StatusCode::NO_CONTENT
    );
    // Unblocked, but no longer friends.
    let res = alice
        .post_text(Target::User(UserId(2)), "hello again", None)
        .await
        .unwrap();
    assert_eq!(code(&res), err(403, "not_friends"));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn group_message_reaches_every_member_session_once() {
    let server = TestServer::start().await;
    let u = users(
        &server,
        &["owner", "member1", "member2", "member3", "outsider"],
    )
    .await;
    for (i, name) in ["member1", "member2", "member3", "outsider"]
        .iter()
        .enumerate()
    {
        u[0].befriend(&u[i + 1], name).await.unwrap();
    }
    let res = call(
        &u[0],
        Method::POST,
        "/groups",
        Some(json!({"name": "team", "members": [2, 3, 4]})),
    )
    .await;
    assert_eq!(res.status, StatusCode::CREATED);
    let group = res.value()["group"].clone();
    assert_eq!(group["owner"], 1);
    assert_eq!(group["members"].as_array().unwrap().len(), 4);
    let gid = group["id"].as_u64().unwrap();

    // m1 on two sessions: 5 streams for 4 members.
    let second = server
        .client()
        .login("member1", "member1-password")
        .await
        .unwrap();
    let mut streams = Vec::new();
    for c in [&u[0], &u[1], &second, &u[2], &u[3]] {
        streams.push(c.events(None).await.unwrap());
    }
    let mut outsider = u[4].events(None).await.unwrap();

    let to = Target::Group(im_protocol::GroupId(gid));
    let res = u[4].post_text(to, "let me in", None).await.unwrap();
    assert_eq!(code(&res), err(403, "not_member"));
    let m = u[1].send_text(to, "hello team", None).await.unwrap();
    let last = u[2].send_text(to, "second", None).await.unwrap();
    for s in &mut streams {
        let first: Message = serde_json::from_value(next_of(s, "message").await).unwrap();
        let second: Message = serde_json::from_value(next_of(s, "message").await).unwrap();
        assert_eq!(
            (first, second),
            (m.clone(), last.clone()),
            "exactly once, in order, nothing else"
        );
    }
    // The outsider saw nothing of the group: the next message is a direct one from the owner.
    let direct = u[0]
        .send_text(Target::User(UserId(5)), "just you", None)
        .await
        .unwrap();
    let got: Message = serde_json::from_value(next_of(&mut outsider, "message").await).unwrap();
    assert_eq!(got, direct);

    // History and conversations for members; not for outsiders.
    let history = u[3].history(&m.conversation, None, None).await.unwrap();
    assert_eq!(history, vec![m.clone(), last.clone()]);
    let path = format!("/conversations/{}/messages", m.conversation);
    assert_eq!(
        outcome(&u[4], Method::GET, &path, None).await,
        err(403, "not_member")
    );
    let convs = call(&u[3], Method::GET, "/conversations", None)
        .await
        .value();
    assert_eq!(convs["conversations"][0]["with"], json!({"group": gid}));
    assert_eq!(convs["conversations"][0]["unread"], 2);

    // Resume covers group messages too.
    let mut resumed = u[3].events(Some(0)).await.unwrap();
    let replayed: Message = serde_json::from_value(next_of(&mut resumed, "message").await).unwrap();
    assert_eq!(replayed, m);
    server.shutdown().await;
}

/// Five users: 1 owner, 2 admin-to-be, 3 member, 4 late, 5 stranger; the owner is friends
/// with 2, 3 and 4, and 2 with 4.
async fn five_users() -> (TestServer, Vec<Client>) {
    let server = TestServer::start().await;
    let u = users(&server, &["owner", "admin", "member", "late", "stranger"]).await;
    for (i, name) in ["admin", "member", "late"].iter().enumerate() {
        u[0].befriend(&u[i + 1], name).await.unwrap();
    }
    u[1].befriend(&u[3], "late").await.unwrap();
    (server, u)
}

/// [`five_users`] and the owner's group of 2 and 3: its id, its path, and the path of its
/// members.
async fn group_of_three() -> (TestServer, Vec<Client>, u64, String, String) {
    let (server, u) = five_users().await;
    let g = call(
        &u[0],
        Method::POST,
        "/groups",
        Some(json!({"name": "g", "members": [2, 3]})),
    )
    .await
    .value()["group"]
        .clone();
    let gid = g["id"].as_u64().unwrap();
    let base = format!("/groups/{gid}");
    let members = format!("{base}/members");
    (server, u, gid, base, members)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_is_made_of_friends_and_read_by_its_members() {
    let (server, u) = five_users().await;
    let create = |members: Value| {
        let owner = u[0].clone();
        async move {
            call(
                &owner,
                Method::POST,
                "/groups",
                Some(json!({"name": "g", "members": members})),
            )
            .await
        }
    };
    assert_eq!(code(&create(json!([5])).await), err(403, "not_friends"));
    assert_eq!(code(&create(json!([99])).await), err(404, "no_such_user"));
    let res = call(
        &u[0],
        Method::POST,
        "/groups",
        Some(json!({"name": "  ", "members": []})),
    )
    .await;
    assert_eq!(code(&res), err(400, "invalid_request"));
    let g = create(json!([2, 3])).await.value()["group"].clone();
    let gid = g["id"].as_u64().unwrap();
    let base = format!("/groups/{gid}");
    assert_eq!(
        outcome(&u[4], Method::GET, &base, None).await,
        err(403, "not_member")
    );
    assert_eq!(
        outcome(&u[0], Method::GET, "/groups/999", None).await,
        err(404, "no_such_group")
    );
    assert_eq!(
        call(&u[2], Method::GET, &base, None).await.value()["group"]["name"],
        "g"
    );
    assert_eq!(
        call(&u[2], Method::GET, "/groups", None).await.value()["groups"][0]["id"],
        gid
    );

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_and_membership_change_by_rank_and_members_hear_of_it() {
    let (server, u, _, _, members) = group_of_three().await;
    // Roles: only the owner promotes; a plain member cannot add.
    let mut member_events = u[2].events(None).await.unwrap();
    assert_eq!(
        outcome(&u[2], Method::POST, &members, Some(json!({"user_id": 4}))).await,
        err(403, "forbidden")
    );
    let res = call(
        &u[0],
        Method::PUT,
        &format!("{members}/2"),
        Some(json!({"role": "admin"})),
    )
    .await;
    assert_eq!(res.status, StatusCode::OK);
    let ev = next_of(&mut member_events, "group").await;
    assert_eq!(
        (ev["change"].clone(), ev["user"].clone()),
        (json!("role_changed"), json!(2))
    );
    assert_eq!(
        outcome(
            &u[1],
            Method::PUT,
            &format!("{members}/3"),
            Some(json!({"role": "admin"}))
        )
        .await,
        err(403, "forbidden")
    );

    // The admin adds a friend of theirs; members hear about it.
    let res = call(&u[1], Method::POST, &members, Some(json!({"user_id": 4}))).await;
    assert_eq!(res.value()["group"]["members"].as_array().unwrap().len(), 4);
    let ev = next_of(&mut member_events, "group").await;
    assert_eq!(
        (ev["change"].clone(), ev["user"].clone()),
        (json!("member_added"), json!(4))
    );
    // An admin cannot remove the owner; a member cannot remove anyone but themselves.
    assert_eq!(
        outcome(&u[1], Method::DELETE, &format!("{members}/1"), None).await,
        err(403, "forbidden")
    );
    assert_eq!(
        outcome(&u[2], Method::DELETE, &format!("{members}/4"), None).await,
        err(403, "forbidden")
    );
    // The admin removes a member.
    assert_eq!(
        call(&u[1], Method::DELETE, &format!("{members}/4"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let ev = next_of(&mut member_events, "group").await;
    assert_eq!(
        (ev["change"].clone(), ev["user"].clone()),
        (json!("member_removed"), json!(4))
    );

    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_who_leaves_hands_the_group_on_and_the_last_one_out_ends_it() {
    let (server, u, gid, base, members) = group_of_three().await;
    let promote = Some(json!({"role": "admin"}));
    let res = call(&u[0], Method::PUT, &format!("{members}/2"), promote).await;
    assert_eq!(res.status, StatusCode::OK);
    // The owner leaves: the admin inherits.
    assert_eq!(
        call(&u[0], Method::DELETE, &format!("{members}/1"), None)
            .await
            .status,
        StatusCode::NO_CONTENT
    );
    let g = call(&u[2], Method::GET, &base, None).await.value()["group"].clone();
    assert_eq!(g["owner"], 2);
    // A former member can no longer post.
    let res = u[0]
        .post_text(Target::Group(im_protocol::GroupId(gid)), "hi", None)
        .await
        .unwrap();
    assert_eq!(code(&res), err(403, "not_member"));
    // Removing someone who has no account is a 404.
    let res = call(&u[1], Method::DELETE, &format!("{members}/999"), None).await;
    assert_eq!(code(&res), err(404, "no_such_user"));
    // Everyone leaves: the group is gone.
    call(&u[2], Method::DELETE, &format!("{members}/3"), None).await;
    call(&u[1], Method::DELETE, &format!("{members}/2"), None).await;
    assert_eq!(
        outcome(&u[1], Method::GET, &base, None).await,
        err(404, "no_such_group")
    );
    assert!(
        call(&u[1], Method::GET, "/groups", None).await.value()["groups"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_follows_streams_with_a_grace_period() {
    let server = TestServer::start_config(|c| c.presence_grace_ms = 1500, |b| b).await;
    let u = users(&server, &["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&u[0], &u[1], &u[2]);
    alice.befriend(bob, "bob").await.unwrap();
    alice.befriend(carol, "carol").await.unwrap();
    // Carol connects first, so alice's stream (opened when carol is already online) carries
    // only bob's presence.
    let mut c = carol.events(None).await.unwrap();
    let mut a = alice.events(None).await.unwrap();

    let b1 = bob.events(None).await.unwrap();
    let online = next_of(&mut a, "presence").await;
    assert_eq!(online, json!({"user": 2, "online": true}));
    let friends = call(alice, Method::GET, "/friends", None).await.value();
    assert_eq!(
        friends["friends"][0],
        json!({"id": 2, "username": "bob", "online": true})
    );

    // A second tab, then a reload: no offline/online flap.
    let b2 = bob.events(None).await.unwrap();
    drop(b1);
    drop(b2);
    let b3 = bob.events(None).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(3000)).await;
    let marker = bob
        .send_text(Target::User(UserId(1)), "marker", None)
        .await
        .unwrap();
    let e = next_event(&mut a).await;
    assert_eq!(
        (e.event.as_str(), e.id),
        ("message", Some(marker.id.0.to_string())),
        "no presence flap before the marker"
    );

    // The last stream closes: offline after the grace period.
    drop(b3);
    let offline = next_of(&mut a, "presence").await;
    assert_eq!(offline, json!({"user": 2, "online": false}));

    // Carol is not bob's friend: she heard nothing about him (only about alice).
    let marker = alice
        .send_text(Target::User(UserId(3)), "marker", None)
        .await
        .unwrap();
    loop {
        let e = next_event(&mut c).await;
        if e.event == "message" {
            assert_eq!(e.id, Some(marker.id.0.to_string()));
            break;
        }
        if e.event == "ready" {
            continue;
        }
        let data: Value = serde_json::from_str(&e.data).unwrap();
        assert_eq!(
            (e.event.as_str(), data["user"].clone()),
            ("presence", json!(1))
        );
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typing_and_read_receipts() {
    let server = TestServer::start().await;
    let u = users(&server, &["alice", "bob", "carol"]).await;
    let (alice, bob, carol) = (&u[0], &u[1], &u[2]);
    alice.befriend(bob, "bob").await.unwrap();
    let mut b = bob.events(None).await.unwrap();
    let mut a = alice.events(None).await.unwrap();

    let res = call(
        alice,
        Method::POST,
        "/typing",
        Some(json!({"to": {"user": 2}})),
    )
    .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let typing = next_of(&mut b, "typing").await;
    assert_eq!(
        (typing["from"].clone(), typing["conversation"].clone()),
        (json!(1), json!("d1-2"))
    );
    assert_eq!(
        outcome(
            carol,
            Method::POST,
            "/typing",
            Some(json!({"to": {"user": 2}}))
        )
        .await,
        err(403, "not_friends")
    );
    assert_eq!(
        outcome(
            carol,
            Method::POST,
            "/typing",
            Some(json!({"to": {"group": 9}}))
        )
        .await,
        err(404, "no_such_group")
    );

    let m = alice
        .send_text(Target::User(UserId(2)), "read me", None)
        .await
        .unwrap();
    let res = call(
        bob,
        Method::POST,
        "/conversations/d1-2/read",
        Some(json!({"up_to": m.id.0})),
    )
    .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let read = next_of(&mut a, "read").await;
    assert_eq!(
        read,
        json!({"user": 2, "conversation": "d1-2", "up_to": m.id.0})
    );
    assert_eq!(
        outcome(
            carol,
            Method::POST,
            "/conversations/d1-2/read",
            Some(json!({"up_to": 1}))
        )
        .await,
        err(403, "not_participant")
    );
    assert_eq!(
        outcome(
            bob,
            Method::POST,
            "/conversations/d1-2/read",
            Some(json!({"up_to": "x"}))
        )
        .await,
        err(400, "invalid_request")
    );
    // A conversation with a user who does not exist is not one.
    let res = call(
        bob,
        Method::POST,
        "/conversations/d2-999/read",
        Some(json!({"up_to": 1})),
    )
    .await;
    assert_eq!(code(&res), err(404, "not_found"));
    // A read position cannot run ahead of the conversation: later messages still count.
    let res = call(
        bob,
        Method::POST,
        "/conversations/d1-2/read",
        Some(json!({"up_to": 1_000_000})),
    )
    .await;
    assert_eq!(res.status, StatusCode::NO_CONTENT);
    let read = next_of(&mut a, "read").await;
    assert_eq!(
        read["up_to"], m.id.0,
        "the stored (clamped) position is announced"
    );
    alice
        .send_text(Target::User(UserId(2)), "new", None)
        .await
        .unwrap();
    let convs = call(bob, Method::GET, "/conversations", None).await.value();
    assert_eq!(convs["conversations"][0]["unread"], 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_counts_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let server = ServerProcess::start(dir.path());
    let anon = server.client();
    let (alice, bob) = common::alice_and_bob(&anon).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        sent.push(
            alice
                .send_text(Target::User(UserId(2)), &format!("{i}"), None)
                .await
                .unwrap(),
        );
    }
    let unread = |c: Client| async move {
        call(&c, Method::GET, "/conversations", None).await.value()["conversations"][0]["unread"]
            .clone()
    };
    assert_eq!(unread(bob.clone()).await, 5);
    assert_eq!(unread(alice.clone()).await, 0);
    call(
        &bob,
        Method::POST,
        "/conversations/d1-2/read",
        Some(json!({"up_to": sent[2].id.0})),
    )
    .await;
    assert_eq!(unread(bob.clone()).await, 2);
    // Read positions never move back.
    call(
        &bob,
        Method::POST,
        "/conversations/d1-2/read",
        Some(json!({"up_to": sent[0].id.0})),
    )
    .await;
    assert_eq!(unread(bob.clone()).await, 2);
    drop(server);

    let server = ServerProcess::start(dir.path());
    let bob = server.client().login("bob", "bob-password").await.unwrap();
    assert_eq!(unread(bob.clone()).await, 2);
    call(
        &bob,
        Method::POST,
        "/conversations/d1-2/read",
        Some(json!({"up_to": sent[4].id.0})),
    )
    .await;
    assert_eq!(unread(bob.clone()).await, 0);
    // Friendships survived the restart as well.
    let friends = call(&bob, Method::GET, "/friends", None).await.value();
    assert_eq!(friends["friends"][0]["username"], "alice");
}
