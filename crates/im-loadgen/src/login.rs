//! `loadgen login`: a flood of wrong passwords, and the memory it leaves behind.
//!
//! `parallel` connections post wrong passwords for one account for `secs` seconds, each as fast
//! as its answers come, while one more connection logs in with the right password twice a
//! second. The server's memory is read before the flood, every 100 ms during it (the peak),
//! and [`SETTLE`] after it. `cargo xtask bench login` runs the server with its default argon2
//! cost and its rate limits off: a flood from many addresses, spread over many usernames,
//! meets the hashing threads just so.

use super::{Args, Conn, Result, accounts, err, histogram, latency_json, repeat, rss_kib};
use http::StatusCode;
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How long after the flood the memory left behind is read.
const SETTLE: Duration = Duration::from_secs(5);

/// KiB as MiB, to one decimal.
fn mib(kib: u64) -> f64 {
    (kib as f64 / 1024.0 * 10.0).round() / 10.0
}

/// Answers to the flood, by kind.
#[derive(Default)]
struct Answers {
    refused: AtomicU64,
    busy: AtomicU64,
    other: AtomicU64,
}

/// The scenario: see the module docs.
pub(super) async fn login(args: &Args) -> Result<Value> {
    let addr = args.addr()?;
    let pids = args.pids();
    let secs = args.num("secs", 10)?;
    let parallel = args.num("parallel", 64)? as usize;
    let users = accounts(addr, "flood", 1).await?;
    if users.is_empty() {
        return Err("no account to flood".into());
    }
    repeat(args.num("runs", 3)?, |_| {
        let pids = pids.clone();
        async move {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let before = rss_kib(&pids);
            let stop = Arc::new(AtomicBool::new(false));
            let answers = Arc::new(Answers::default());
            let peak = Arc::new(AtomicU64::new(before));
            let sampler = {
                let (stop, peak, pids) = (stop.clone(), peak.clone(), pids.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        peak.fetch_max(rss_kib(&pids), Ordering::Relaxed);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                })
            };
            let wrong = json!({"username": "flood0", "password": "not-the-password"});
            let mut flood = Vec::with_capacity(parallel);
            for i in 0..parallel {
                let (stop, answers, wrong) = (stop.clone(), answers.clone(), wrong.clone());
                flood.push(tokio::spawn(async move {
                    let mut conn = Conn::open(addr, Some(super::source(i))).await?;
                    while !stop.load(Ordering::Relaxed) {
                        let (status, _) = conn.json("/api/v1/auth/login", None, &wrong).await?;
                        let counter = match status {
                            StatusCode::UNAUTHORIZED => &answers.refused,
                            StatusCode::SERVICE_UNAVAILABLE => &answers.busy,
                            _ => &answers.other,
                        };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok::<(), super::Error>(())
                }));
            }
            // The real user, twice a second, on a connection of its own.
            let right = json!({"username": "flood0", "password": "bench-password"});
            let mut conn = Conn::open(addr, None).await?;
            let (mut hist, mut ok, mut busy) = (histogram(), 0u64, 0u64);
            let started = Instant::now();
            while started.elapsed() < Duration::from_secs(secs) {
                let t = Instant::now();
                let (status, _) = conn.json("/api/v1/auth/login", None, &right).await?;
                match status {
                    StatusCode::OK => {
                        ok += 1;
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    StatusCode::SERVICE_UNAVAILABLE => busy += 1,
                    s => return Err(format!("the right password got {s}")),
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            let span = started.elapsed();
            stop.store(true, Ordering::Relaxed);
            for task in flood {
                task.await.map_err(err)??;
            }
            let _ = sampler.await;
            tokio::time::sleep(SETTLE).await;
            let after = rss_kib(&pids);
            let [refused, busy_wrong, other] = [&answers.refused, &answers.busy, &answers.other]
                .map(|n| n.load(Ordering::Relaxed));
            let attempts = refused + busy_wrong + other;
            let peak = peak.load(Ordering::Relaxed);
            let latency = latency_json(&hist);
            let pct = |v: u64| ((v as f64 / before.max(1) as f64 - 1.0) * 1000.0).round() / 10.0;
            let mut v = json!({
                "ok": other == 0 && ok > 0,
                "metrics": {
                    "rss_before_kib": before,
                    "rss_peak_kib": peak,
                    "rss_after_kib": after,
                    "rss_before_mib": mib(before),
                    "rss_peak_mib": mib(peak),
                    "peak_vs_before_pct": pct(peak),
                    "after_vs_before_pct": pct(after),
                    "wrong_per_sec": (attempts as f64 / span.as_secs_f64() * 10.0).round() / 10.0,
                    "wrong_refused": refused,
                    "wrong_busy": busy_wrong,
                    "real_ok": ok,
                    "real_busy": busy,
                    "real_login_p50_ms": latency["p50_ms"],
                    "real_login_max_ms": latency["max_ms"],
                }
            });
            if other > 0 {
                v["problem"] = json!(format!("{other} wrong passwords got neither 401 nor 503"));
            } else if ok == 0 {
                v["problem"] = json!("no real login succeeded during the flood");
            }
            Ok(v)
        }
    })
    .await
}
