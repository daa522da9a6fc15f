//! Edits, deletions and replies over real TCP: each amendment is an entry of the log with a
//! position of its own, so live streams and resumed ones see it in order after the original,
//! history shows the message as it now is, and every refusal leaves nothing written. Run on
//! SQLite and, by `cargo xtask ci`, again on PostgreSQL.

mod common;

use common::{JsonValue, TestServer, patient};
use http::{Method, StatusCode};
use im_client::{Client, EventStream, Logged};
use im_protocol::{Message, MessageId, Target, UserId};
use serde_json::{Value, json};

const BOB: Target = Target::User(UserId(2));

async fn next(stream: &mut EventStream) -> Logged {
    patient("a log entry", stream.next_logged())
        .await
        .expect("the stream ended")
        .unwrap()
}

/// Status and error code of a call with a JSON body.
async fn refused(c: &Client, method: Method, path: &str, body: Option<Value>) -> (u16, String) {
    let res = c.call(method, path, body.as_ref()).await.unwrap();
    (res.status.as_u16(), res.error_code().unwrap_or_default())
}

/// The message a logged event carries.
fn msg(l: &Logged) -> Message {
    l.message().expect("a message event")
}

fn path(id: MessageId) -> String {
    format!("/api/v1/messages/{}", id.0)
}

fn text_of(m: &Message) -> Option<&str> {
    m.body.get("text").and_then(Value::as_str)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn edits_and_deletions_reach_streams_history_and_resumes_in_order() {
    let server = TestServer::start().await;
    let (alice, bob) = common::alice_and_bob(&server.client()).await;
    let mut live = bob.events(None).await.unwrap();
    let first = alice.send_text(BOB, "hello", None).await.unwrap();
    let typo = alice.send_text(BOB, "see you at noom", None).await.unwrap();

    let edited = alice.edit_text(typo.id, "see you at noon").await.unwrap();
    assert_eq!(
        (edited.id, text_of(&edited)),
        (typo.id, Some("see you at noon"))
    );
    assert!(edited.edited_at.is_some_and(|t| t >= typo.sent_at));
    assert!(!edited.deleted);
    let tombstone = alice.delete_message(first.id).await.unwrap();
    assert_eq!((tombstone.id, tombstone.deleted), (first.id, true));
    assert_eq!(tombstone.body, Value::Null, "a tombstone has no body");
    // Deleting again changes nothing and answers the same tombstone.
    assert_eq!(alice.delete_message(first.id).await.unwrap(), tombstone);
    let after = alice.send_text(BOB, "after", None).await.unwrap();

    // Live: the two messages, the edit and the deletion, each at a position of its own,
    // then the next message; the repeated deletion wrote nothing.
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next(&mut live).await);
    }
    let events: Vec<&str> = seen.iter().map(|l| l.event.as_str()).collect();
    assert_eq!(
        events,
        [
            "message",
            "message",
            "message_edited",
            "message_deleted",
            "message"
        ]
    );
    assert!(
        seen.windows(2).all(|w| w[0].id < w[1].id),
        "positions increase"
    );
    assert_eq!((msg(&seen[0]).id, msg(&seen[1]).id), (first.id, typo.id));
    assert_eq!(
        msg(&seen[2]),
        edited,
        "an edit carries the message as edited"
    );
    assert!(seen[2].id > typo.id.0, "after the original");
    assert_eq!(msg(&seen[3]), tombstone);
    assert_eq!(msg(&seen[4]), after);

    // History shows each message as it now is, and no amendment as a message.
    let history = bob.history(&typo.conversation, None, None).await.unwrap();
    assert_eq!(
        history,
        vec![tombstone.clone(), edited.clone(), after.clone()]
    );
    // The conversation list's newest message is a message, not an amendment.
    let list = bob
        .call(Method::GET, "/api/v1/conversations", im_client::NO_BODY)
        .await
        .unwrap()
        .value();
    assert_eq!(list["conversations"][0]["last_message"]["id"], after.id.0);

    // A stream resumed after the first message replays the rest in log order, the edited
    // message as it now is, and the amendments after it.
    let mut resumed = bob.events(Some(first.id.0)).await.unwrap();
    let mut replay = Vec::new();
    for _ in 0..4 {
        replay.push(next(&mut resumed).await);
    }
    let ids: Vec<u64> = replay.iter().map(|l| l.id).collect();
    assert_eq!(ids, seen[1..].iter().map(|l| l.id).collect::<Vec<_>>());
    assert_eq!(msg(&replay[0]), edited, "the message as it now is");
    assert_eq!(msg(&replay[2]), tombstone);
    // Resumed after the edit: only what came after it.
    let mut later = bob.events(Some(seen[2].id)).await.unwrap();
    assert_eq!(next(&mut later).await.event, "message_deleted");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_refusal_is_a_clear_4xx_and_writes_nothing() {
    let server = TestServer::start().await;
    let anon = server.client();
    let (alice, bob) = common::alice_and_bob(&anon).await;
    let carol = anon.signup("carol", "carol-password").await.unwrap();
    let mine = alice.send_text(BOB, "mine", None).await.unwrap();
    let patch = |text: &str| Some(json!({ "body": { "text": text } }));
    let p = path(mine.id);

    // Someone else's message: bob is a party but not the sender; carol is not even a party,
    // and learns nothing more than for a message that does not exist.
    assert_eq!(
        refused(&bob, Method::PATCH, &p, patch("x")).await,
        (403, "not_author".into())
    );
    assert_eq!(
        refused(&bob, Method::DELETE, &p, None).await,
        (403, "not_author".into())
    );
    let nowhere = path(MessageId(999_999));
    for (who, method, target, body) in [
        (&carol, Method::PATCH, &p, patch("x")),
        (&carol, Method::DELETE, &p, None),
        (&alice, Method::PATCH, &nowhere, patch("x")),
        (&alice, Method::DELETE, &nowhere, None),
    ] {
        assert_eq!(
            refused(who, method, target, body).await,
            (404, "no_such_message".into())
        );
    }
    // Bad bodies: the kind's validator, the shape, and the JSON itself.
    assert_eq!(
        refused(
            &alice,
            Method::PATCH,
            &p,
            Some(json!({ "body": { "text": "" } }))
        )
        .await,
        (400, "invalid_body".into())
    );
    assert_eq!(
        refused(&alice, Method::PATCH, &p, Some(json!({ "text": "x" }))).await,
        (400, "invalid_request".into())
    );
    let raw = alice
        .raw(
            Method::PATCH,
            &p,
            &[("content-type", "application/json")],
            "{",
        )
        .await
        .unwrap();
    assert_eq!(raw.error_code().as_deref(), Some("malformed_json"));
    // Ids that are no message: not a number, and an amendment's own position.
    assert_eq!(
        refused(&alice, Method::PATCH, "/api/v1/messages/x", patch("x")).await,
        (404, "not_found".into())
    );
    let mut stream = alice.events(None).await.unwrap();
    alice.edit_text(mine.id, "mine, edited").await.unwrap();
    let edit = loop {
        let l = next(&mut stream).await;
        if l.event == "message_edited" {
            break l;
        }
    };
    assert_eq!(
        refused(&alice, Method::PATCH, &path(MessageId(edit.id)), patch("x")).await,
        (404, "no_such_message".into())
    );
    // A file message is not editable.
    let file = common::upload(&alice, "notes.txt", "text/plain", b"notes").await;
    let res = alice
        .call(
            Method::POST,
            "/api/v1/messages",
            Some(&json!({ "to": BOB, "kind": "file", "body": { "file_id": file["id"] } })),
        )
        .await
        .unwrap()
        .expect(StatusCode::CREATED)
        .unwrap();
    let file_msg: Message = serde_json::from_value(res.value()["message"].clone()).unwrap();
    assert_eq!(
        refused(&alice, Method::PATCH, &path(file_msg.id), patch("x")).await,
        (400, "not_editable".into())
    );
    // Deleted: no more edits.
    alice.delete_message(mine.id).await.unwrap();
    assert_eq!(
        refused(&alice, Method::PATCH, &p, patch("again")).await,
        (409, "message_deleted".into())
    );
    // Replies: to a message of another conversation, to none, to a deleted one.
    bob.send_text(Target::User(UserId(1)), "bob's", None)
        .await
        .unwrap();
    alice.befriend(&carol, "carol").await.unwrap();
    let other = alice
        .send_text(Target::User(UserId(3)), "to carol", None)
        .await
        .unwrap();
    for quoted in [other.id, MessageId(999_999), mine.id] {
        let body =
            json!({ "to": BOB, "kind": "text", "body": { "text": "re" }, "reply_to": quoted });
        let (status, code) = refused(&alice, Method::POST, "/api/v1/messages", Some(body)).await;
        let want = if quoted == mine.id {
            "message_deleted"
        } else {
            "no_such_message"
        };
        assert_eq!(
            (status, code.as_str()),
            (if quoted == mine.id { 409 } else { 404 }, want)
        );
    }
    // Nothing half-written: the conversation holds exactly what succeeded.
    let history = alice.history(&mine.conversation, None, None).await.unwrap();
    let texts: Vec<Option<&str>> = history.iter().map(text_of).collect();
    assert_eq!(texts, [None, None, Some("bob's")]);
    assert!(history[0].deleted && history[1].kind == "file");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_edit_window_when_configured() {
    let server = TestServer::start_config(|c| c.edit_window_secs = 1, |b| b).await;
    let (alice, _bob) = common::alice_and_bob(&server.client()).await;
    let m = alice.send_text(BOB, "quick", None).await.unwrap();
    alice.edit_text(m.id, "quick fix").await.unwrap();
    // Waiting only makes the message older; the refusal does not depend on how long.
    tokio::time::sleep(std::time::Duration::from_millis(1_100)).await;
    let (status, code) = refused(
        &alice,
        Method::PATCH,
        &path(m.id),
        Some(json!({ "body": { "text": "too late" } })),
    )
    .await;
    assert_eq!((status, code.as_str()), (403, "edit_window_passed"));
    // Deleting has no window.
    alice.delete_message(m.id).await.unwrap();
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_owner_and_admins_may_delete_any_message_members_only_their_own() {
    let server = TestServer::start().await;
    let anon = server.client();
    let (alice, bob) = common::alice_and_bob(&anon).await;
    let carol = anon.signup("carol", "carol-password").await.unwrap();
    alice.befriend(&carol, "carol").await.unwrap();
    let group = alice
        .call(
            Method::POST,
            "/api/v1/groups",
            Some(&json!({ "name": "team", "members": [2, 3] })),
        )
        .await
        .unwrap()
        .value()["group"]["id"]
        .as_u64()
        .unwrap();
    let to = Target::Group(im_protocol::GroupId(group));
    let bobs = bob.send_text(to, "spam", None).await.unwrap();
    let carols = carol.send_text(to, "carol's", None).await.unwrap();
    // A plain member may not delete another's message, nor may anyone edit it.
    assert_eq!(
        refused(&carol, Method::DELETE, &path(bobs.id), None).await,
        (403, "not_author".into())
    );
    let body = Some(json!({ "body": { "text": "x" } }));
    assert_eq!(
        refused(&alice, Method::PATCH, &path(bobs.id), body).await,
        (403, "not_author".into())
    );
    // The owner may, and so may an admin she makes.
    let mut stream = carol.events(None).await.unwrap();
    assert!(alice.delete_message(bobs.id).await.unwrap().deleted);
    let role = alice
        .call(
            Method::PUT,
            &format!("/api/v1/groups/{group}/members/2"),
            Some(&json!({ "role": "admin" })),
        )
        .await
        .unwrap();
    assert_eq!(role.status, StatusCode::OK);
    assert!(bob.delete_message(carols.id).await.unwrap().deleted);
    // Members get both deletions.
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        let l = next(&mut stream).await;
        if l.event == "message_deleted" {
            deleted.push(msg(&l).id);
        }
    }
    assert_eq!(deleted, [bobs.id, carols.id]);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_quotes_its_original_which_follows_edits_and_deletion() {
    let server = TestServer::start().await;
    let (alice, bob) = common::alice_and_bob(&server.client()).await;
    let long = "x".repeat(500);
    let original = alice.send_text(BOB, &long, None).await.unwrap();
    let mut stream = alice.events(None).await.unwrap();
    let reply = bob
        .reply_text(Target::User(UserId(1)), "agreed", original.id)
        .await
        .unwrap();
    let quote = reply.reply_to.clone().expect("a reply carries its quote");
    assert_eq!(
        (quote.id, quote.from, quote.kind.as_str()),
        (original.id, UserId(1), "text")
    );
    assert_eq!(
        quote.preview.chars().count(),
        im_protocol::Quote::PREVIEW_CHARS
    );
    assert!(!quote.deleted);
    // The recipient's stream carries the quote too: no second request to show it. (On
    // PostgreSQL the original itself may still arrive live first: a fresh stream starts at
    // what this node's follower has applied.)
    let got = loop {
        let l = next(&mut stream).await;
        if msg(&l).id == reply.id {
            break l;
        }
    };
    assert_eq!(msg(&got).reply_to, Some(quote));

    alice.edit_text(original.id, "short now").await.unwrap();
    let history = bob.history(&reply.conversation, None, None).await.unwrap();
    let quoted = history[1].reply_to.as_ref().unwrap();
    assert_eq!(quoted.preview, "short now", "the quote follows an edit");

    alice.delete_message(original.id).await.unwrap();
    let history = bob.history(&reply.conversation, None, None).await.unwrap();
    let quoted = history[1].reply_to.as_ref().unwrap();
    assert!(quoted.deleted && quoted.preview.is_empty(), "{quoted:?}");
    // The deleted text is gone from everything a client can read: history, the replay of
    // the whole conversation (the edit's own entry included), and the reply's quote.
    let mut replay = bob.events(Some(0)).await.unwrap();
    let mut everything = String::new();
    loop {
        let l = next(&mut replay).await;
        everything.push_str(&serde_json::to_string(&msg(&l)).unwrap());
        if l.event == "message_deleted" {
            break;
        }
    }
    assert!(!everything.contains("short now"), "{everything}");
    assert!(!everything.contains(&long));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reactions_one_per_emoji_per_user_counted_live_in_history_and_on_resume() {
    let server = TestServer::start().await;
    let anon = server.client();
    let (alice, bob) = common::alice_and_bob(&anon).await;
    let carol = anon.signup("carol", "carol-password").await.unwrap();
    let mut live = alice.events(None).await.unwrap();
    let m = alice.send_text(BOB, "lunch?", None).await.unwrap();

    let thumbs = bob.react(m.id, "👍", true).await.unwrap();
    assert_eq!(
        (
            &thumbs["emoji"],
            &thumbs["count"],
            &thumbs["added"],
            &thumbs["user"]
        ),
        (&json!("👍"), &json!(1), &json!(true), &json!(2))
    );
    assert_eq!(thumbs["message"], m.id.0);
    // The same reaction again changes nothing and sends nothing.
    assert_eq!(bob.react(m.id, "👍", true).await.unwrap()["count"], 1);
    assert_eq!(alice.react(m.id, "👍", true).await.unwrap()["count"], 2);
    assert_eq!(bob.react(m.id, "🎉", true).await.unwrap()["count"], 1);
    assert_eq!(bob.react(m.id, "🎉", false).await.unwrap()["count"], 0);
    // Taking back one never made changes nothing either.
    assert_eq!(bob.react(m.id, "🎉", false).await.unwrap()["count"], 0);
    let after = alice.send_text(BOB, "after", None).await.unwrap();

    // Live: the message, exactly the four changes, each at a position of its own, then the
    // next message.
    assert_eq!(msg(&next(&mut live).await), m);
    let mut seen = Vec::new();
    for _ in 0..5 {
        seen.push(next(&mut live).await);
    }
    let got: Vec<(&str, Value, Value)> = seen[..4]
        .iter()
        .map(|l| {
            (
                l.event.as_str(),
                l.data["emoji"].clone(),
                l.data["count"].clone(),
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("reaction", json!("👍"), json!(1)),
            ("reaction", json!("👍"), json!(2)),
            ("reaction", json!("🎉"), json!(1)),
            ("reaction", json!("🎉"), json!(0)),
        ]
    );
    assert_eq!(msg(&seen[4]), after);
    assert!(seen.windows(2).all(|w| w[0].id < w[1].id));

    // History counts them for its reader, and lists only emoji that have any.
    let mine = |c: &Client| {
        let c = c.clone();
        let conversation = m.conversation.clone();
        async move {
            let history = c.history(&conversation, None, None).await.unwrap();
            serde_json::to_value(&history[0].reactions).unwrap()
        }
    };
    assert_eq!(
        mine(&alice).await,
        json!([{"emoji": "👍", "count": 2, "me": true}])
    );
    bob.react(m.id, "👍", false).await.unwrap();
    assert_eq!(
        mine(&bob).await,
        json!([{"emoji": "👍", "count": 1, "me": false}])
    );
    assert!(history_has_no_reactions(&bob, &after).await);

    // A resumed stream replays the changes in log order.
    let mut resumed = bob.events(Some(m.id.0)).await.unwrap();
    let replay: Vec<String> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            v.push(next(&mut resumed).await.event);
        }
        v
    };
    assert_eq!(
        replay,
        [
            "reaction", "reaction", "reaction", "reaction", "message", "reaction"
        ]
    );

    // Refusals: not an emoji, a message carol cannot read, a deleted one.
    for bad in ["a", "1", "%20", "%F0%9F", &"%E2%AD%90".repeat(11)] {
        let path = format!("/api/v1/messages/{}/reactions/{bad}", m.id.0);
        assert_eq!(
            refused(&bob, Method::PUT, &path, None).await,
            (400, "invalid_request".into()),
            "{bad}"
        );
    }
    let path = format!("/api/v1/messages/{}/reactions/%F0%9F%91%8D", m.id.0);
    assert_eq!(
        refused(&carol, Method::PUT, &path, None).await,
        (404, "no_such_message".into())
    );
    alice.delete_message(m.id).await.unwrap();
    assert_eq!(
        refused(&bob, Method::PUT, &path, None).await,
        (409, "message_deleted".into())
    );
    // A tombstone keeps no reactions.
    let history = bob.history(&m.conversation, None, None).await.unwrap();
    assert!(history[0].deleted && history[0].reactions.is_empty());
    server.shutdown().await;
}

async fn history_has_no_reactions(c: &Client, m: &Message) -> bool {
    let history = c.history(&m.conversation, None, None).await.unwrap();
    history
        .iter()
        .find(|h| h.id == m.id)
        .is_some_and(|h| h.reactions.is_empty())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_holds_at_most_twenty_different_reactions() {
    let server = TestServer::start().await;
    let (alice, bob) = common::alice_and_bob(&server.client()).await;
    let m = alice.send_text(BOB, "react!", None).await.unwrap();
    let emoji: Vec<String> = (0..=im_protocol::Reaction::MAX_KINDS as u32)
        .map(|i| char::from_u32(0x1F600 + i).unwrap().to_string())
        .collect();
    for e in &emoji[..im_protocol::Reaction::MAX_KINDS] {
        bob.react(m.id, e, true).await.unwrap();
    }
    let last = &emoji[im_protocol::Reaction::MAX_KINDS];
    let encoded: String = last.bytes().map(|b| format!("%{b:02X}")).collect();
    let path = format!("/api/v1/messages/{}/reactions/{encoded}", m.id.0);
    assert_eq!(
        refused(&alice, Method::PUT, &path, None).await,
        (400, "invalid_request".into())
    );
    // An emoji already there still takes more users.
    assert_eq!(
        alice.react(m.id, &emoji[0], true).await.unwrap()["count"],
        2
    );
    server.shutdown().await;
}
