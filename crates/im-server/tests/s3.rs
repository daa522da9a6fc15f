//! S3 file storage in a cluster: two `im-server` processes on one PostgreSQL database and one
//! bucket on a real S3-compatible server (moto). An upload on node 1 downloads with `Range`
//! from node 2; once it expires, the sweepers of both nodes run, and the object is deleted
//! exactly once, with no error on either node.

mod common;

use common::{patient, upload};
use http::{Method, StatusCode, header};
use im_client::Client;
use im_testkit::{MOTO_KEY_ID, MOTO_REGION, MOTO_SECRET, MotoServer, TempDatabase};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Seconds a link lives: long enough to download it right after the upload, short enough
/// that the test sees it swept.
const TTL_SECS: &str = "4";

/// An `im-server` process whose log goes to a file, so the test can read its warnings.
struct Node {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Node {
    fn start(dir: &Path, env: &[(&str, &str)]) -> Self {
        let log = dir.join("stderr.log");
        let stderr = std::fs::File::create(&log).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_im-server"));
        // Only what the test sets: no stray IM_ or AWS_ variable of the machine.
        for (name, _) in std::env::vars() {
            if name.starts_with("IM_") || name.starts_with("AWS_") {
                cmd.env_remove(name);
            }
        }
        let mut child = cmd
            .envs(env.iter().copied())
            .args(["--listen", "127.0.0.1:0", "--data-dir"])
            .arg(dir)
            .env("IM_ARGON2__MEMORY_KIB", "64")
            .env("IM_ARGON2__ITERATIONS", "1")
            .env("IM_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .expect("spawn im-server");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = match line.trim().strip_prefix("im-server listening on http://") {
            Some(addr) => addr.parse().unwrap(),
            None => panic!(
                "im-server did not start: {line:?}\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            ),
        };
        Self { child, addr, log }
    }

    /// Warnings and errors the node has logged.
    fn complaints(&self) -> Vec<String> {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR"))
            .map(str::to_owned)
            .collect()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.kill();
    }
}

/// The test bytes: position-dependent, so a range served from the wrong place shows.
fn data(len: usize) -> Vec<u8> {
    (0..len as u64)
        .map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8)
        .collect()
}

async fn get(node: SocketAddr, url: &str, range: Option<&str>) -> im_client::Response {
    let headers: Vec<(&str, &str)> = range.map(|r| ("range", r)).into_iter().collect();
    Client::new(node)
        .raw(Method::GET, url, &headers, Vec::new())
        .await
        .unwrap()
}

/// Waits until `check` holds, polling; fails the test if it never does.
async fn until(what: &str, mut check: impl FnMut() -> bool) {
    patient(what, async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn upload_range_download_and_sweep_across_nodes_on_s3() {
    // Declared first, dropped last: the nodes stop before their bucket and database go.
    let moto = MotoServer::start();
    let bucket = moto.bucket();
    let db = TempDatabase::create().await;
    let endpoint = moto.endpoint();
    let env = [
        ("IM_STORE", "postgres"),
        ("IM_POSTGRES__URL", db.url()),
        ("IM_POSTGRES__POOL_SIZE", "4"),
        ("IM_DIRECT_MESSAGES", "anyone"),
        ("IM_FILES__BACKEND", "s3"),
        ("IM_FILES__S3__ENDPOINT", &endpoint),
        ("IM_FILES__S3__BUCKET", &bucket),
        ("IM_FILES__S3__REGION", MOTO_REGION),
        ("IM_FILES__S3__ALLOW_HTTP", "true"),
        ("IM_FILES__TTL_SECS", TTL_SECS),
        // Both nodes try to sweep every second; the lease lets one at a time.
        ("IM_FILES__SWEEP_SECS", "1"),
        ("AWS_ACCESS_KEY_ID", MOTO_KEY_ID),
        ("AWS_SECRET_ACCESS_KEY", MOTO_SECRET),
    ];
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let mut nodes = [
        Node::start(dirs[0].path(), &env),
        Node::start(dirs[1].path(), &env),
    ];
    let n = [nodes[0].addr, nodes[1].addr];

    let alice = Client::new(n[0])
        .signup("alice", "alice-password")
        .await
        .unwrap();
    // Over one 5 MiB part, so the upload is a real multipart upload of two parts.
    let bytes = data(6 * 1024 * 1024 + 123);
    let size = bytes.len();
    let file = upload(&alice, "big.bin", "application/octet-stream", &bytes).await;
    assert_eq!(file["size"].as_u64(), Some(size as u64));
    let url = file["url"].as_str().unwrap().to_owned();
    let keys = moto.objects(&bucket);
    assert_eq!(keys.len(), 1, "one object in the bucket: {keys:?}");
    let key = keys[0].clone();

    // Node 2 serves it, ranges included (the first one across the part boundary).
    let res = get(n[1], &url, Some("bytes=1000-5300000")).await;
    assert_eq!(res.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        res.headers[header::CONTENT_RANGE],
        format!("bytes 1000-5300000/{size}").as_str()
    );
    assert!(res.body[..] == bytes[1000..=5_300_000], "the range's bytes");
    let res = get(n[1], &url, Some("bytes=-10")).await;
    assert_eq!(res.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&res.body[..], &bytes[size - 10..]);
    let res = get(n[1], &url, Some("bytes=5-5")).await;
    assert_eq!(
        (res.status, &res.body[..]),
        (StatusCode::PARTIAL_CONTENT, &bytes[5..6])
    );
    let res = get(n[1], &url, None).await;
    assert_eq!(res.status, StatusCode::OK);
    assert!(res.body[..] == bytes[..], "the whole file");
    let res = get(n[1], &url, Some(&format!("bytes={size}-"))).await;
    assert_eq!(res.status, StatusCode::RANGE_NOT_SATISFIABLE);

    // Expiry: the link dies on every node, then one sweeper deletes the object, once.
    for node in n {
        patient("the link to expire", async {
            while get(node, &url, None).await.status != StatusCode::NOT_FOUND {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }
    until("the object to be swept", || {
        moto.objects(&bucket).is_empty()
    })
    .await;
    // A few more rounds on both nodes: nobody deletes it again.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(moto.deletes(&bucket, &key), 1, "deleted exactly once");
    let (client, conn) = tokio_postgres::connect(db.url(), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let row = client
        .query_one(
            "SELECT storage_key FROM files WHERE id = $1",
            &[&(file["id"].as_u64().unwrap() as i64)],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "", "marked swept in the index");

    // The lease dies with its holder: with node 1 killed, node 2 sweeps on its own.
    let second = upload(
        &alice.at(n[1]),
        "again.bin",
        "application/octet-stream",
        &bytes[..1000],
    )
    .await;
    let second_key = moto
        .objects(&bucket)
        .pop()
        .expect("the second upload's object");
    nodes[0].kill();
    let url = second["url"].as_str().unwrap().to_owned();
    assert_eq!(get(n[1], &url, None).await.body[..], bytes[..1000]);
    until("node 2 to sweep alone", || moto.objects(&bucket).is_empty()).await;
    assert_eq!(moto.deletes(&bucket, &second_key), 1);

    for (i, node) in nodes.iter().enumerate() {
        assert!(
            node.complaints().is_empty(),
            "node {} logged: {:#?}",
            i + 1,
            node.complaints()
        );
    }
    let failed: Vec<String> = moto
        .log_lines()
        .into_iter()
        .filter(|l| l.contains("HTTP/1.1\" 5"))
        .collect();
    assert!(failed.is_empty(), "moto answered with errors: {failed:#?}");
}

#[test]
fn a_bucket_that_does_not_exist_stops_start_up() {
    let moto = MotoServer::start();
    let dir = tempfile::tempdir().unwrap();
    let endpoint = moto.endpoint();
    let out = Command::new(env!("CARGO_BIN_EXE_im-server"))
        .args(["--listen", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path())
        .envs([
            ("IM_FILES__BACKEND", "s3"),
            ("IM_FILES__S3__BUCKET", "no-such-bucket"),
            ("IM_FILES__S3__ENDPOINT", endpoint.as_str()),
            ("IM_FILES__S3__REGION", MOTO_REGION),
            ("IM_FILES__S3__ALLOW_HTTP", "true"),
            ("AWS_ACCESS_KEY_ID", MOTO_KEY_ID),
            ("AWS_SECRET_ACCESS_KEY", MOTO_SECRET),
            ("IM_LOG", "warn"),
        ])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(out.stdout.is_empty(), "it never listened");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("no-such-bucket") || stderr.contains("NoSuchBucket"),
        "{stderr}"
    );
}
