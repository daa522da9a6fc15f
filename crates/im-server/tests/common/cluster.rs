//! A deployment of several `im-server` processes on one PostgreSQL database and one bus;
//! the test client plays the load balancer.

use super::JsonValue;
use super::{PATIENCE, ServerProcess, patient};
use http::{Method, StatusCode};
use im_client::{Client, EventStream};
use im_protocol::{Message, Target};
use im_testkit::TempDatabase;
use im_testkit::bus::{nats_url, redis_url, unique_prefix};
use serde_json::json;
use std::net::SocketAddr;
use std::time::Duration;

/// The bus a test cluster runs on; Redis and NATS get a prefix of their own per cluster.
#[derive(Debug, Clone)]
pub(crate) enum TestBus {
    /// PostgreSQL `LISTEN/NOTIFY`.
    Postgres,
    /// Redis pub/sub, with this prefix.
    Redis(String),
    /// NATS core subjects, with this prefix.
    Nats(String),
}

impl TestBus {
    /// Redis on its own prefix.
    pub(crate) fn redis() -> Self {
        TestBus::Redis(unique_prefix(':'))
    }

    /// NATS on its own prefix.
    pub(crate) fn nats() -> Self {
        TestBus::Nats(unique_prefix('.'))
    }

    fn env(&self) -> Vec<(String, String)> {
        let vars = match self {
            TestBus::Postgres => vec![("IM_BUS", "postgres".to_owned())],
            TestBus::Redis(prefix) => vec![
                ("IM_BUS", "redis".to_owned()),
                ("IM_REDIS__URL", redis_url()),
                ("IM_REDIS__PREFIX", prefix.clone()),
            ],
            TestBus::Nats(prefix) => vec![
                ("IM_BUS", "nats".to_owned()),
                ("IM_NATS__URL", nats_url()),
                ("IM_NATS__PREFIX", prefix.clone()),
            ],
        };
        vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
    }
}

/// A deployment of `n` nodes sharing one database and one file directory.
pub(crate) struct Cluster {
    // Fields drop in order: the nodes stop before their database goes.
    pub nodes: Vec<Option<ServerProcess>>,
    pub addrs: Vec<SocketAddr>,
    /// Each node's environment, to restart it as it was.
    envs: Vec<Vec<(String, String)>>,
    _files: tempfile::TempDir,
    pub dirs: Vec<tempfile::TempDir>,
    pub db: TempDatabase,
    pub bus: TestBus,
}

impl Cluster {
    /// `n` nodes on the PostgreSQL bus.
    pub(crate) async fn start(n: usize) -> Self {
        Self::launch(n, TestBus::Postgres, &[]).await
    }

    /// `n` nodes on `bus`, each with the extra `IM_*` variables `env`.
    pub(crate) async fn launch(n: usize, bus: TestBus, env: &[(&str, &str)]) -> Self {
        let db = TempDatabase::create().await;
        let files = tempfile::tempdir().unwrap();
        let mut vars: Vec<(String, String)> = [
            ("IM_STORE", "postgres"),
            ("IM_POSTGRES__URL", db.url()),
            ("IM_FILES__DIR", &files.path().display().to_string()),
            ("IM_DIRECT_MESSAGES", "friends"),
            // The cluster tests run side by side on one PostgreSQL: stay well under its
            // connection limit.
            ("IM_POSTGRES__POOL_SIZE", "4"),
        ]
        .iter()
        .chain(env)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        vars.extend(bus.env());
        let mut nodes = Vec::new();
        let mut dirs = Vec::new();
        for _ in 0..n {
            let dir = tempfile::tempdir().unwrap();
            nodes.push(Some(ServerProcess::start_vars(dir.path(), &vars, None)));
            dirs.push(dir);
        }
        let addrs = nodes.iter().flatten().map(|n| n.addr).collect();
        Self {
            nodes,
            addrs,
            envs: vec![vars; n],
            _files: files,
            dirs,
            db,
            bus,
        }
    }

    /// Starts node `i` again on its old address (after [`Cluster::kill`] or a clean stop).
    pub(crate) fn restart(&mut self, i: usize) {
        let node =
            ServerProcess::start_vars(self.dirs[i].path(), &self.envs[i], Some(self.addrs[i]));
        self.nodes[i] = Some(node);
    }

    pub(crate) fn node(&self, i: usize) -> SocketAddr {
        self.addrs[i % self.addrs.len()]
    }

    pub(crate) fn kill(&mut self, i: usize) {
        if let Some(node) = self.nodes[i].take() {
            node.signal("KILL");
            drop(node);
        }
    }

    /// Signs up `name` on node `i`.
    pub(crate) async fn user(&self, name: &str, i: usize) -> Client {
        Client::new(self.node(i))
            .signup(name, &format!("{name}-password"))
            .await
            .unwrap()
    }

    /// The ids PostgreSQL holds for a conversation, ascending.
    pub(crate) async fn stored_ids(&self, conversation: &str) -> Vec<u64> {
        let (client, conn) = tokio_postgres::connect(self.db.url(), tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client
            .query(
                "SELECT id FROM messages WHERE conversation = $1 ORDER BY id",
                &[&conversation],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| r.get::<_, i64>(0) as u64)
            .collect()
    }
}

/// `a` asks through one node and `b` accepts through another.
pub(crate) async fn befriend(
    a: &Client,
    b: &Client,
    b_name: &str,
    ask_at: SocketAddr,
    answer_at: SocketAddr,
) {
    let request = a.at(ask_at).request_friend(b_name).await.unwrap();
    let id = request.id;
    b.at(answer_at).accept_request(id).await.unwrap();
}

/// Creates a group through `owner`'s node; returns its id.
pub(crate) async fn create_group(owner: &Client, name: &str, members: &[u64]) -> u64 {
    owner
        .call(
            Method::POST,
            "/api/v1/groups",
            Some(&json!({"name": name, "members": members})),
        )
        .await
        .unwrap()
        .expect(StatusCode::CREATED)
        .unwrap()
        .value()["group"]["id"]
        .as_u64()
        .unwrap()
}

/// The stream's `ready` position.
pub(crate) async fn ready(stream: &mut EventStream) -> u64 {
    loop {
        let e = patient("ready", stream.next_event())
            .await
            .unwrap()
            .unwrap();
        if e.event == "ready" {
            return e.id.unwrap().parse().unwrap();
        }
    }
}

pub(crate) async fn next_message(stream: &mut EventStream) -> Option<Message> {
    match tokio::time::timeout(PATIENCE, stream.next_message()).await {
        Ok(Some(Ok(m))) => Some(m),
        Ok(_) => None, // the stream ended (its node died, say)
        Err(_) => panic!("gave up waiting for a message"),
    }
}

/// Reads `want` messages, reconnecting to the next node with `Last-Event-ID` after every
/// `every` messages (and whenever a stream ends), as a browser behind a balancer would.
pub(crate) async fn read_all(
    client: Client,
    nodes: Vec<SocketAddr>,
    mut after: u64,
    want: usize,
    every: usize,
) -> Vec<Message> {
    let mut got: Vec<Message> = Vec::new();
    let mut node = 0;
    while got.len() < want {
        node += 1;
        let addr = nodes[node % nodes.len()];
        let Ok(mut stream) = client.at(addr).events(Some(after)).await else {
            continue; // a dead node: try the next
        };
        let mut here = 0;
        while here < every && got.len() < want {
            match next_message(&mut stream).await {
                Some(m) => {
                    after = m.id.0;
                    got.push(m);
                    here += 1;
                }
                None => break,
            }
        }
    }
    got
}

/// POSTs a text, retrying with the same `client_id` on the next node when a node gives no
/// answer; returns the stored message.
pub(crate) async fn send_anywhere(
    client: &Client,
    nodes: &[SocketAddr],
    first: usize,
    to: Target,
    text: &str,
) -> Message {
    let cid = format!("cid-{text}");
    for attempt in 0..nodes.len() * 20 {
        let addr = nodes[(first + attempt) % nodes.len()];
        match client.at(addr).send_text(to, text, Some(&cid)).await {
            Ok(m) => return m,
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
    panic!("no node stored {text}");
}

pub(crate) fn assert_in_order_once(got: &[Message], who: &str) {
    assert!(
        got.windows(2).all(|w| w[0].id < w[1].id),
        "{who} got every message once, in id order"
    );
}

/// The user id behind a client's session.
pub(crate) async fn user_id(client: &Client) -> u64 {
    client
        .call(Method::GET, "/api/v1/me", im_client::NO_BODY)
        .await
        .unwrap()
        .expect(StatusCode::OK)
        .unwrap()
        .value()["user"]["id"]
        .as_u64()
        .unwrap()
}
