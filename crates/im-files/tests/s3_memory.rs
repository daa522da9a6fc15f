//! Memory stays bounded while a large upload streams to S3: a 200 MiB upload raises the
//! process's resident set by at most 32 MiB. This file holds one test, so it runs in a
//! process of its own and the RSS it reads is this upload's alone.
#![cfg(target_os = "linux")] // reads /proc/self/status

use im_files::{FileStore, ObjectFileStore, S3Credentials, S3Settings};
use im_testkit::{MOTO_KEY_ID, MOTO_REGION, MOTO_SECRET, MotoServer};

const MIB: u64 = 1024 * 1024;
const UPLOAD: u64 = 200 * MIB;
const BOUND: u64 = 32 * MIB;
/// What one request body chunk typically is.
const CHUNK: usize = 64 * 1024;

/// The resident set of this process, from `/proc/self/status`.
fn rss() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/self/status");
    kib * 1024
}

/// The chunk written at `offset`: one fixed pattern stamped with its offset, made in place
/// at memcpy speed, so the test holds one chunk (never the file) and produces bytes faster
/// than they upload: without backpressure, parts would pile up in memory.
fn fill(buf: &mut [u8], offset: u64) {
    for (i, b) in buf.iter_mut().enumerate() {
        *b = (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15).to_be_bytes()[0];
    }
    buf[..8].copy_from_slice(&offset.to_be_bytes());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_200_mib_upload_to_s3_raises_rss_by_at_most_32_mib() {
    let moto = MotoServer::start();
    let bucket = moto.bucket();
    let store = ObjectFileStore::s3_with(
        &S3Settings {
            endpoint: Some(moto.endpoint()),
            bucket: bucket.clone(),
            region: MOTO_REGION.into(),
            allow_http: true,
        },
        &S3Credentials {
            key_id: MOTO_KEY_ID.into(),
            secret_key: MOTO_SECRET.into(),
            token: None,
        },
    )
    .unwrap();
    let mut buf = vec![0u8; CHUNK];
    fill(&mut buf, 0);
    // A small upload first, so the HTTP client and its connection exist before measuring,
    // as they do in a server that has served one request.
    let mut sink = store.create("00").await.unwrap();
    sink.write(&buf).await.unwrap();
    sink.commit().await.unwrap();
    store.remove("00").await.unwrap();

    let before = rss();
    let mut peak = before;
    let mut sink = store.create("ff").await.unwrap();
    let mut offset = 0;
    while offset < UPLOAD {
        buf[..8].copy_from_slice(&offset.to_be_bytes());
        sink.write(&buf).await.unwrap();
        offset += CHUNK as u64;
        peak = peak.max(rss());
    }
    sink.commit().await.unwrap();
    peak = peak.max(rss());
    let grown = peak.saturating_sub(before);
    eprintln!(
        "RSS before {} KiB, peak {} KiB: +{} KiB for a {} MiB upload",
        before / 1024,
        peak / 1024,
        grown / 1024,
        UPLOAD / MIB
    );
    assert!(
        grown <= BOUND,
        "a {} MiB upload raised RSS by {} KiB, over the {} MiB bound",
        UPLOAD / MIB,
        grown / 1024,
        BOUND / MIB
    );

    // The upload is really there, whole.
    assert_eq!(moto.objects(&bucket), ["ff"]);
    let mut tail = store.open("ff", UPLOAD - 10, UPLOAD - 1).await.unwrap();
    let mut got = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut tail).await {
        got.extend_from_slice(&chunk.unwrap());
    }
    let last = UPLOAD - CHUNK as u64;
    fill(&mut buf, last);
    assert_eq!(got, buf[CHUNK - 10..]);
    let mut head = store.open("ff", last, last + 7).await.unwrap();
    let mut stamp = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut head).await {
        stamp.extend_from_slice(&chunk.unwrap());
    }
    assert_eq!(
        stamp,
        last.to_be_bytes(),
        "the last chunk is where it was written"
    );
    store.remove("ff").await.unwrap();
}
