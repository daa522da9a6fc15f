//! What a stream may cost the server: the replay after `Last-Event-ID` goes out in bounded
//! pages as the body is read, a slow reader is cut off by the bytes queued for it, and all
//! streams together buffer at most `sse.buffer_bytes`. Whoever is cut off resumes from the
//! store without a gap.

mod common;

use common::{TestServer, alice_and_bob, dechunk, patient, rss_kib};
use im_client::Client;
use im_protocol::sse::{Item, Parser};
use im_protocol::{Target, UserId};
use std::net::SocketAddr;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// A text of 10,000 characters (the `text` kind's limit) of 4 bytes each: 40 KB per message.
fn big_text(i: usize) -> String {
    let mut t = format!("{i:05}");
    t.extend(std::iter::repeat_n('\u{1F600}', 10_000 - t.len()));
    t
}

/// Sends `n` large messages from `from` to `to`, a few at a time; returns their ids in order.
async fn flood(from: &Client, to: UserId, n: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(n);
    for chunk in (0..n).collect::<Vec<_>>().chunks(8) {
        let sends = chunk.iter().map(|&i| {
            let from = from.clone();
            tokio::spawn(async move {
                from.send_text(Target::User(to), &big_text(i), None)
                    .await
                    .unwrap()
                    .id
                    .0
            })
        });
        for s in sends.collect::<Vec<_>>() {
            ids.push(s.await.unwrap());
        }
    }
    ids.sort_unstable();
    ids
}

/// An event stream on a raw connection with a small receive buffer, so that the server,
/// not the kernel, holds whatever the test does not read. It asks for `connection: close`,
/// so the end of the stream is the end of the connection.
struct RawStream {
    tcp: TcpStream,
    /// Body bytes read with the response head, still chunk-encoded.
    body: Vec<u8>,
}

impl RawStream {
    /// Sends `GET /api/v1/events` as `client`, resuming after `last_event_id` if given, and
    /// reads the response head, nothing more.
    async fn open(addr: SocketAddr, client: &Client, last_event_id: Option<u64>) -> Self {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(8 * 1024).unwrap();
        let mut tcp = socket.connect(addr).await.unwrap();
        let mut req = format!(
            "GET /api/v1/events HTTP/1.1\r\nhost: {addr}\r\naccept: text/event-stream\r\n\
             connection: close\r\nauthorization: Bearer {}\r\n",
            client.token().unwrap()
        );
        if let Some(id) = last_event_id {
            req.push_str(&format!("last-event-id: {id}\r\n"));
        }
        req.push_str("\r\n");
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut buf = Vec::new();
        let end = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0u8; 512];
            let n = patient("the response head", tcp.read(&mut chunk))
                .await
                .unwrap();
            assert!(n > 0, "the server closed before answering");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("transfer-encoding: chunked")
        );
        Self {
            tcp,
            body: buf.split_off(end),
        }
    }

    /// Reads until the server ends the stream and returns the ids of its `message` events.
    async fn read_to_end(mut self) -> Vec<u64> {
        patient("the server to end the stream", async {
            let mut chunk = vec![0u8; 64 * 1024];
            loop {
                let n = self.tcp.read(&mut chunk).await.unwrap();
                if n == 0 {
                    break;
                }
                self.body.extend_from_slice(&chunk[..n]);
            }
        })
        .await;
        let mut parser = Parser::new();
        let mut ids = Vec::new();
        for item in parser.feed(&dechunk(&self.body).0) {
            match item {
                Item::Event(e) if e.event == "message" => ids.push(e.id.unwrap().parse().unwrap()),
                _ => {}
            }
        }
        ids
    }
}

/// Every message of `stream` from here until `want` arrived, as ids.
async fn receive(stream: &mut im_client::EventStream, want: usize) -> Vec<u64> {
    let mut ids = Vec::with_capacity(want);
    patient("the replay", async {
        while ids.len() < want {
            let m = stream.next_message().await.unwrap().unwrap();
            ids.push(m.id.0);
        }
    })
    .await;
    ids
}

/// Resumes after `got` as a browser would, reconnecting whenever the server ends the stream,
/// until `want` arrived; fails on a gap or a duplicate.
async fn resume_until(client: &Client, got: &[u64], want: &[u64]) {
    let mut all = got.to_vec();
    patient("the resumes", async {
        while all.len() < want.len() {
            let mut stream = client
                .events(Some(all.last().copied().unwrap_or(0)))
                .await
                .unwrap();
            while all.len() < want.len() {
                match stream.next_message().await {
                    Some(m) => all.push(m.unwrap().id.0),
                    None => break,
                }
            }
        }
    })
    .await;
    assert_eq!(all, want, "no gap, no duplicate, in order");
}

/// The tests here measure the process's memory, so they run one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Streams resumed from 0 over many large messages and never read keep the server's memory
/// bounded; a reader that does read still gets every message once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unread_resumed_streams_hold_little() {
    const MESSAGES: usize = 1000;
    const STREAMS: usize = 8;
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start_config(|_| {}, |b| b).await;
    let (alice, bob) = alice_and_bob(&server.client()).await;
    let ids = flood(&alice, UserId(2), MESSAGES).await;
    let stored_kib = (MESSAGES * big_text(0).len() / 1024) as u64;

    let before = rss_kib(std::process::id(), "VmRSS:");
    let mut unread = Vec::new();
    for _ in 0..STREAMS {
        unread.push(RawStream::open(server.addr, &bob, Some(0)).await);
    }
    // Give the server every chance to fill its buffers; the bound below holds whenever it is
    // measured.
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let after = rss_kib(std::process::id(), "VmRSS:");
    let growth = after.saturating_sub(before);
    println!(
        "RSS before {before} KiB, with {STREAMS} unread streams {after} KiB, growth {growth} KiB \
         ({stored_kib} KiB stored)"
    );
    assert!(
        growth < STREAMS as u64 * stored_kib / 4,
        "{STREAMS} unread streams over {stored_kib} KiB grew RSS by {growth} KiB"
    );

    let mut reader = bob.events(Some(0)).await.unwrap();
    assert_eq!(
        receive(&mut reader, MESSAGES).await,
        ids,
        "every message once, in order"
    );
    drop(unread);
    server.shutdown().await;
}

/// Messages sent to one stream's user while it is not read: enough to fill the kernel's send
/// buffer (at most 4 MiB) and hyper's write buffer before the mailbox.
const SLOW_MESSAGES: usize = 200;

/// A reader that stopped reading is cut off by the bytes queued for it, and then resumes
/// from the store without a gap or a duplicate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_is_cut_off_by_bytes_and_resumes() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start_config(|c| c.sse.mailbox_bytes = 256 * 1024, |b| b).await;
    let (alice, bob) = alice_and_bob(&server.client()).await;
    let slow = RawStream::open(server.addr, &bob, None).await;
    let ids = flood(&alice, UserId(2), SLOW_MESSAGES).await;
    let got = slow.read_to_end().await;
    assert!(got.len() < ids.len(), "the slow stream was cut off");
    resume_until(&bob, &got, &ids).await;
    server.shutdown().await;
}

/// All streams together buffer at most `sse.buffer_bytes`: past it, the stream pushed to is
/// cut off instead of memory growing, and each resumes without a gap.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_buffer_cap_cuts_off_streams_and_they_resume() {
    let _alone = ONE_AT_A_TIME.lock().await;
    let server = TestServer::start_config(
        |c| {
            c.sse.mailbox_bytes = 0;
            c.sse.buffer_bytes = 512 * 1024;
            c.sse.replay_page_bytes = 64 * 1024;
        },
        |b| b,
    )
    .await;
    let (alice, bob) = alice_and_bob(&server.client()).await;
    let mut slow = Vec::new();
    for _ in 0..3 {
        slow.push(RawStream::open(server.addr, &bob, None).await);
    }
    let ids = flood(&alice, UserId(2), SLOW_MESSAGES).await;
    for stream in slow {
        let got = stream.read_to_end().await;
        assert!(got.len() < ids.len(), "the slow stream was cut off");
        resume_until(&bob, &got, &ids).await;
    }
    server.shutdown().await;
}
