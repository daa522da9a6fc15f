//! Test support: a real server on 127.0.0.1:0 with a real SQLite store in a temp dir,
//! either in this process or as the `im-server` binary (for kill and signal tests).
#![allow(dead_code)]

pub(crate) mod cluster;

use im_client::Client;
use im_server::{Config, ImServer, ImServerBuilder};
use serde_json::Value;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tokio::sync::oneshot;

/// Generous bound so a broken test fails instead of hanging CI; never a timing assertion.
pub(crate) const PATIENCE: Duration = Duration::from_secs(60);

/// Fails the test if `f` does not finish within [`PATIENCE`].
pub(crate) async fn patient<T>(what: &str, f: impl Future<Output = T>) -> T {
    match tokio::time::timeout(PATIENCE, f).await {
        Ok(v) => v,
        Err(_) => panic!("gave up waiting for {what}"),
    }
}

/// A call to the server API (`/api/v1/server{path}`) at `addr`, with `headers` (an API key
/// among them, or not).
pub(crate) async fn server_api(
    addr: SocketAddr,
    method: http::Method,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&serde_json::Value>,
) -> im_client::Response {
    let mut all = vec![("content-type", "application/json")];
    all.extend_from_slice(headers);
    let body = body.map(serde_json::Value::to_string).unwrap_or_default();
    Client::new(addr)
        .raw(method, &format!("/api/v1/server{path}"), &all, body)
        .await
        .unwrap()
}

/// The status of `GET /api/v1/me` with `c`'s session: whether it is still signed in.
pub(crate) async fn status_of_me(c: &Client) -> http::StatusCode {
    c.call(http::Method::GET, "/api/v1/me", im_client::NO_BODY)
        .await
        .unwrap()
        .status
}

/// Reads `stream` until the server ends it (`what` names it if it never does).
pub(crate) async fn ended(what: &str, stream: &mut im_client::EventStream) {
    patient(what, async {
        while let Some(item) = stream.next_item().await {
            if item.is_err() {
                break;
            }
        }
    })
    .await;
}

/// A cheap argon2 cost so tests can register many users quickly.
pub(crate) fn test_config(dir: &Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".parse().unwrap(),
        data_dir: dir.to_owned(),
        ..Config::default()
    };
    c.argon2.memory_kib = 64;
    c.argon2.iterations = 1;
    // Tests register and log in many users from one address; `rate_limits.rs` turns the
    // limits back on where it tests them.
    c.rate_limits.enabled = false;
    c
}

/// A memory figure of process `pid` in KiB from `/proc/<pid>/status`: `field` is e.g.
/// `"VmRSS:"` (now) or `"VmHWM:"` (peak).
#[cfg(target_os = "linux")]
pub(crate) fn rss_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Uploads a file and returns its JSON (`F`); anything but 201 fails the test.
pub(crate) async fn upload(c: &Client, name: &str, ct: &str, data: &[u8]) -> serde_json::Value {
    let res = c.upload(name, ct, data).await.unwrap();
    assert_eq!(
        res.status,
        http::StatusCode::CREATED,
        "{}",
        String::from_utf8_lossy(&res.body)
    );
    res.value()["file"].clone()
}

/// The payload of the whole chunks of a `Transfer-Encoding: chunked` body so far, and
/// whether its last chunk has arrived.
pub(crate) fn dechunk(mut raw: &[u8]) -> (Vec<u8>, bool) {
    let mut out = Vec::new();
    loop {
        let Some(line) = raw.windows(2).position(|w| w == b"\r\n") else {
            return (out, false);
        };
        let size = std::str::from_utf8(&raw[..line]).expect("a chunk size line");
        let size = usize::from_str_radix(size, 16).expect("a hex chunk size");
        raw = &raw[line + 2..];
        if raw.len() < size + 2 {
            return (out, false);
        }
        assert_eq!(&raw[size..size + 2], b"\r\n", "a chunk ends with CRLF");
        if size == 0 {
            return (out, true);
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}

/// Alice (user 1) and Bob (user 2), registered, logged in and friends.
pub(crate) async fn alice_and_bob(anon: &Client) -> (Client, Client) {
    let alice = anon.signup("alice", "alice-password").await.unwrap();
    let bob = anon.signup("bob", "bob-password").await.unwrap();
    alice.befriend(&bob, "bob").await.unwrap();
    (alice, bob)
}

/// An in-process server; dropping it shuts it down.
pub(crate) struct TestServer {
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    /// The server's own PostgreSQL database when `IM_TEST_STORE=postgres`.
    pub db: Option<im_testkit::TempDatabase>,
    stop: Option<oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    pub(crate) async fn start() -> Self {
        Self::start_with(|b| b).await
    }

    /// Starts a server after `customize` added kinds, handlers or config.
    pub(crate) async fn start_with(
        customize: impl FnOnce(ImServerBuilder) -> ImServerBuilder,
    ) -> Self {
        Self::start_config(|_| {}, customize).await
    }

    /// Starts a server with test config changed by `configure`.
    pub(crate) async fn start_config(
        configure: impl FnOnce(&mut Config),
        customize: impl FnOnce(ImServerBuilder) -> ImServerBuilder,
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        // `IM_TEST_STORE=postgres` runs the same tests on PostgreSQL, each server on a
        // database of its own.
        let db = match std::env::var("IM_TEST_STORE").as_deref() {
            Ok("postgres") => Some(im_testkit::TempDatabase::create().await),
            _ => None,
        };
        Self::launch(dir, db, configure, customize).await
    }

    /// Stops the server gracefully and starts a new one on the same data (its directory, and
    /// its database on PostgreSQL), with the test config.
    pub(crate) async fn restart(mut self) -> Self {
        self.stop().await;
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        let db = self.db.take();
        Self::launch(dir, db, |_| {}, |b| b).await
    }

    async fn launch(
        dir: tempfile::TempDir,
        db: Option<im_testkit::TempDatabase>,
        configure: impl FnOnce(&mut Config),
        customize: impl FnOnce(ImServerBuilder) -> ImServerBuilder,
    ) -> Self {
        let mut config = test_config(dir.path());
        if let Some(db) = &db {
            config.store = im_server::StoreKind::Postgres;
            config.postgres.url = db.url().to_owned();
            config.files.dir = Some(dir.path().join("files"));
        }
        configure(&mut config);
        let builder = ImServer::builder().config(config);
        let server = customize(builder).bind().await.expect("server binds");
        let addr = server.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let done = tokio::spawn(async move {
            server
                .run(async {
                    let _ = stopped.await;
                })
                .await
                .unwrap();
        });
        Self {
            addr,
            dir,
            db,
            stop: Some(stop),
            done: Some(done),
        }
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// Triggers graceful shutdown and waits for the server to finish.
    pub(crate) async fn shutdown(mut self) {
        self.stop().await;
    }

    async fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(done) = self.done.take() {
            patient("server shutdown", done).await.unwrap();
        }
    }
}

/// The `im-server` binary running as a child process.
pub(crate) struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
}

impl ServerProcess {
    /// Starts the binary on `data_dir` with a cheap argon2 cost and waits until it listens.
    pub(crate) fn start(data_dir: &Path) -> Self {
        Self::start_env(data_dir, &[])
    }

    /// Like [`ServerProcess::start`], with extra `IM_*` variables.
    pub(crate) fn start_env(data_dir: &Path, env: &[(&str, &str)]) -> Self {
        let vars: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Self::start_vars(data_dir, &vars, None)
    }

    /// Like [`ServerProcess::start_env`], on `listen` if given (a restarted node keeps its
    /// address).
    pub(crate) fn start_vars(
        data_dir: &Path,
        env: &[(String, String)],
        listen: Option<SocketAddr>,
    ) -> Self {
        let listen = listen.map_or_else(|| "127.0.0.1:0".to_owned(), |a| a.to_string());
        let mut child = Command::new(env!("CARGO_BIN_EXE_im-server"))
            .env("IM_ARGON2__MEMORY_KIB", "64")
            .env("IM_ARGON2__ITERATIONS", "1")
            .env("IM_RATE_LIMITS__ENABLED", "false")
            .env("IM_LOG", "warn")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["--listen", &listen, "--data-dir"])
            .arg(data_dir)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn im-server");
        let stdout = child.stdout.take().unwrap();
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        let addr = line
            .trim()
            .strip_prefix("im-server listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line: {line:?}"))
            .parse()
            .unwrap();
        Self { child, addr }
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(self.addr)
    }

    /// Sends a signal by name (`TERM`, `KILL`) through kill(1), to avoid unsafe FFI.
    pub(crate) fn signal(&self, name: &str) {
        let ok = Command::new("kill")
            .args([format!("-{name}"), self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{name} failed");
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An answer's body as loose JSON, for tests that look into it by key (`Null` if it is not
/// JSON); `im_client::Response::json` is the typed way.
pub(crate) trait JsonValue {
    /// The body as a `serde_json::Value`.
    fn value(&self) -> Value;
}

impl JsonValue for im_client::Response {
    fn value(&self) -> Value {
        self.json().unwrap_or(Value::Null)
    }
}
