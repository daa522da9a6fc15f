//! The ordering proof: while several nodes commit at once, a reader that has seen head `H`
//! must never later see a row at or below `H` appear. The same checker is run against a plain
//! `SEQUENCE`, where it must find a violation, so the test is known to be able to fail.

use im_channel::{MessageLog, Outcome, Pending, Reply};
use im_protocol::{Target, UserId, conversation_of};
use im_store::{PgConfig, PgStore};
use im_testkit::TempDatabase;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_postgres::{Client, NoTls};

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls).await.unwrap();
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A head that was seen, and how many rows at or below it were visible just after.
struct Sample {
    head: i64,
    count: i64,
}

/// Reads the head and re-counts rows at or below earlier heads until `done` is set. Returns
/// the first violation found, or the number of distinct heads checked.
async fn watch(
    url: &str,
    head_sql: &str,
    count_sql: &str,
    done: &AtomicBool,
) -> Result<usize, String> {
    let c = connect(url).await;
    let head_stmt = c.prepare(head_sql).await.unwrap();
    let count_stmt = c.prepare(count_sql).await.unwrap();
    let mut samples: Vec<Sample> = Vec::new();
    loop {
        let finished = done.load(Ordering::Acquire);
        let head: i64 = c.query_one(&head_stmt, &[]).await.unwrap().get(0);
        if samples.last().is_none_or(|s| s.head < head) {
            let count: i64 = c.query_one(&count_stmt, &[&head]).await.unwrap().get(0);
            samples.push(Sample { head, count });
        }
        // Re-count the recent heads: their counts must never grow.
        let from = samples.len().saturating_sub(16);
        for s in &samples[from..] {
            let now: i64 = c.query_one(&count_stmt, &[&s.head]).await.unwrap().get(0);
            if now != s.count {
                return Err(format!(
                    "after seeing head {}, {} rows at or below it were visible; later {}",
                    s.head, s.count, now
                ));
            }
        }
        if finished {
            return Ok(samples.len());
        }
    }
}

fn pending(from: u64, n: usize) -> Pending {
    let to = Target::User(UserId(from + 100));
    Pending {
        from: UserId(from),
        to,
        kind: "text".into(),
        body: serde_json::json!({"text": n.to_string()}),
        client_id: None,
        conversation: conversation_of(UserId(from), to),
        sent_at: 1,
        reply_to: None,
        amend: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ids_become_visible_in_order_across_nodes() {
    const NODES: usize = 3;
    const TASKS: usize = 4;
    const EACH: usize = 120;
    let db = TempDatabase::create().await;
    let mut nodes = Vec::new();
    for _ in 0..NODES {
        let mut cfg = PgConfig::new(db.url());
        // Small batches, so the nodes' transactions interleave often.
        cfg.batch = 8;
        nodes.push(PgStore::open(cfg).await.unwrap());
    }
    let done = Arc::new(AtomicBool::new(false));
    let reader = {
        let (url, done) = (db.url().to_owned(), done.clone());
        tokio::spawn(async move {
            watch(
                &url,
                "SELECT last FROM log_head",
                "SELECT COUNT(*) FROM messages WHERE id <= $1",
                &done,
            )
            .await
        })
    };
    let mut writers = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for t in 0..TASKS {
            let node = node.clone();
            writers.push(tokio::spawn(async move {
                for i in 0..EACH {
                    let (reply, rx) = Reply::channel();
                    node.append(pending((n * TASKS + t) as u64 + 1, i), reply);
                    assert!(matches!(rx.await.unwrap(), Outcome::Stored(_)));
                }
            }));
        }
    }
    for w in writers {
        w.await.unwrap();
    }
    done.store(true, Ordering::Release);
    let heads = reader
        .await
        .unwrap()
        .expect("no id appeared below a seen head");
    eprintln!("the reader checked {heads} heads");
    assert!(heads > 1, "the reader saw the head move");
    let c = connect(db.url()).await;
    let row = c
        .query_one("SELECT COUNT(*), COUNT(DISTINCT id) FROM messages", &[])
        .await
        .unwrap();
    let total = (NODES * TASKS * EACH) as i64;
    assert_eq!((row.get::<_, i64>(0), row.get::<_, i64>(1)), (total, total));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_checker_catches_a_plain_sequence() {
    let db = TempDatabase::create().await;
    let c = connect(db.url()).await;
    c.batch_execute(
        "CREATE SEQUENCE naive_seq;
         CREATE TABLE naive (id BIGINT PRIMARY KEY DEFAULT nextval('naive_seq'))",
    )
    .await
    .unwrap();
    let done = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for w in 0..6u64 {
        let (url, done) = (db.url().to_owned(), done.clone());
        writers.push(tokio::spawn(async move {
            let mut c = connect(&url).await;
            let mut i = 0u64;
            while !done.load(Ordering::Acquire) {
                let tx = c.transaction().await.unwrap();
                tx.execute("INSERT INTO naive DEFAULT VALUES", &[])
                    .await
                    .unwrap();
                // Commit after a varying pause, as a busy node would: ids taken in one order
                // commit in another.
                let pause = ((w * 7 + i * 13) % 10) as f64 / 1000.0;
                tx.execute("SELECT pg_sleep($1)", &[&pause]).await.unwrap();
                tx.commit().await.unwrap();
                i += 1;
            }
        }));
    }
    // The checker runs until it finds a violation, or gives up after a minute (and the test
    // fails); the writers run until then.
    let stop = Arc::new(AtomicBool::new(false));
    let give_up = {
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_secs(60)).await;
            stop.store(true, Ordering::Release);
        })
    };
    let found = watch(
        db.url(),
        "SELECT COALESCE(MAX(id), 0) FROM naive",
        "SELECT COUNT(*) FROM naive WHERE id <= $1",
        &stop,
    )
    .await;
    give_up.abort();
    done.store(true, Ordering::Release);
    for w in writers {
        w.await.unwrap();
    }
    assert!(found.is_err(), "a plain SEQUENCE must be caught");
}
