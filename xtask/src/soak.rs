//! `cargo xtask soak`: steady mixed traffic against one release `im-server` for minutes or
//! hours, to show that its memory and open files stay flat, not just that it is fast.
//!
//! The server runs on SQLite in a temp dir with its default settings, except the per-address
//! registration and login limits: every account is made from this one machine. The traffic,
//! the sampling and the flatness verdict are the load generator's (`im-loadgen soak`, in
//! `crates/im-loadgen/src/soak.rs`, where the mix is described); it prints a line every
//! interval and the report at the end. This command builds both, starts the server, runs the
//! generator, writes the whole series to `target/soak/soak-<time>.json`, adds the server log's
//! warnings and errors, and with `--record` writes a section of `docs/BENCHMARKS.md`. It
//! fails on any refused request, lost or doubled message, or a judged run that did not stay
//! flat (runs under ten minutes are reported, not judged).

use crate::bench::{civil_from_days, machine, splice_between, utc_now, write_atomically};
use crate::loadbench;
use crate::util::{Result, banner, display_cargo, run_cargo, workspace_root};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// What the soak changes in the server's defaults, and only so that it can run: all accounts
/// register and log in from loopback, which the per-address limits would refuse.
const SERVER_ENV: [(&str, &str); 4] = [
    ("IM_RATE_LIMITS__REGISTER_PER_ADDRESS__PER_SECOND", "100"),
    ("IM_RATE_LIMITS__REGISTER_PER_ADDRESS__BURST_COUNT", "1000"),
    ("IM_RATE_LIMITS__LOGIN_PER_ADDRESS__PER_SECOND", "100"),
    ("IM_RATE_LIMITS__LOGIN_PER_ADDRESS__BURST_COUNT", "1000"),
];

/// Opens the generated section of `docs/BENCHMARKS.md`, as the other sections are marked.
const START: &str = "<!-- soak:start -->";

/// Closes the generated section.
const END: &str = "<!-- soak:end -->";

/// What `cargo xtask soak` was asked for.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// How long the traffic runs (setup and drain not counted).
    pub duration: Duration,
    /// Users chatting; a multiple of the generator's group size (10).
    pub users: usize,
    /// Messages per second offered in all.
    pub rate: f64,
    /// Write the result into `docs/BENCHMARKS.md`.
    pub record: bool,
}

impl Default for Options {
    /// The run: an hour at a rate two cores sustain next to other work.
    fn default() -> Self {
        Self {
            duration: Duration::from_secs(3600),
            users: 50,
            rate: 50.0,
            record: false,
        }
    }
}

impl Options {
    /// Reads `[--minutes N | --seconds N] [--users N] [--rate R] [--record]`.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut options = Self::default();
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            let mut value = |what: &str| {
                args.next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|v| v.is_finite() && *v > 0.0)
                    .ok_or_else(|| format!("{arg} needs a positive {what}"))
            };
            match arg.as_str() {
                "--minutes" | "--seconds" => {
                    let n = value("number")?;
                    let secs = if arg == "--minutes" { n * 60.0 } else { n };
                    options.duration = Duration::try_from_secs_f64(secs)
                        .ok()
                        .filter(|d| d.as_secs() >= 10 && d.as_secs() <= 7 * 86_400)
                        .ok_or("the run must last from 10 seconds to a week")?;
                }
                "--users" => {
                    let n = value("whole number")?;
                    if n.fract() != 0.0 {
                        return Err("--users must be a whole number".into());
                    }
                    options.users = n as usize;
                }
                "--rate" => options.rate = value("number of messages per second")?,
                "--record" => options.record = true,
                other => return Err(format!("unknown option `{other}` for `soak`")),
            }
        }
        // The generator refuses a user count its groups cannot hold, or a rate the server's
        // default limits would refuse.
        Ok(options)
    }

    /// The command line that repeats this run, for the record.
    fn command(&self) -> String {
        let secs = self.duration.as_secs_f64();
        let mut args = vec!["xtask".to_owned(), "soak".to_owned()];
        if secs % 60.0 == 0.0 {
            args.extend(["--minutes".to_owned(), (secs / 60.0).to_string()]);
        } else {
            args.extend(["--seconds".to_owned(), secs.to_string()]);
        }
        let default = Self::default();
        if self.users != default.users {
            args.extend(["--users".to_owned(), self.users.to_string()]);
        }
        if self.rate != default.rate {
            args.extend(["--rate".to_owned(), self.rate.to_string()]);
        }
        if self.record {
            args.push("--record".to_owned());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        display_cargo(&args)
    }

    /// Seconds between samples: 10, or 30 from 20 minutes on, so an hour is 120 lines.
    fn interval(&self) -> f64 {
        if self.duration.as_secs() < 20 * 60 {
            10.0
        } else {
            30.0
        }
    }
}

/// Builds and starts the server, drives the traffic, reports; an error if anything was
/// refused, lost or doubled, or a judged run did not stay flat.
pub fn run(options: &Options) -> Result<()> {
    let root = workspace_root();
    run_cargo(&root, &crate::util::RELEASE_BUILD)?;
    let target = loadbench::target_dir(&root);
    let out_dir = target.join("soak");
    std::fs::create_dir_all(&out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let name = format!("soak-{}", file_stamp(unix_secs()));
    let log_path = out_dir.join(format!("{name}.server.log"));
    let log = std::fs::File::create(&log_path)
        .map_err(|e| format!("cannot create {}: {e}", log_path.display()))?;
    let dir = loadbench::temp_dir("soak")?;
    let data_dir = dir.display().to_string();
    let mut cmd = loadbench::server_command(&target.join("release/im-server"), &dir);
    // The log goes to a file without colours, to be counted at the end.
    cmd.envs(SERVER_ENV).env("NO_COLOR", "1").stderr(log);
    let server = loadbench::spawn_server(cmd, dir)?;
    let pid = server.pids[0];
    banner(&format!(
        "soak: {} for {}, {} users, {} messages/s (server pid {pid} on {}, log {})",
        options.command(),
        clock(options.duration.as_secs_f64()),
        options.users,
        options.rate,
        server.addr,
        log_path.display()
    ));
    let args = [
        ("addr", server.addr.to_string()),
        ("pids", pid.to_string()),
        ("data-dir", data_dir),
        ("seconds", options.duration.as_secs_f64().to_string()),
        ("users", options.users.to_string()),
        ("rate", options.rate.to_string()),
        ("interval", options.interval().to_string()),
    ];
    let outcome = loadbench::run_generator(&target.join("release/im-loadgen"), "soak", &args);
    // The generator's connections are closed, so the server's graceful stop has nothing to
    // wait for; it stops before its log is read, so the log is complete.
    drop(server);
    let mut report = match outcome? {
        (status, Some(report)) if status.success() => report,
        (status, _) => return Err(format!("the soak generator failed ({status})")),
    };
    report["when"] = json!(utc_now());
    report["machine"] = json!(machine());
    report["command"] = json!(options.command());
    report["server_env"] = json!(
        SERVER_ENV
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
    );
    report["server_log"] = log_summary(&log_path);
    let json_path = out_dir.join(format!("{name}.json"));
    report["json"] = json!(json_path.display().to_string());
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(&report).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    let section = render(&report);
    print!("\n{section}");
    banner(&format!(
        "soak: the whole series is in {}",
        json_path.display()
    ));
    if options.record {
        let path = root.join("docs/BENCHMARKS.md");
        let existing = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let updated = splice_between(Some(&existing), START, END, &section)?;
        write_atomically(&path, &updated)?;
        banner("soak: recorded in docs/BENCHMARKS.md");
    }
    match failures(&report) {
        problems if problems.is_empty() => Ok(()),
        problems => Err(format!("soak failed: {}", problems.join("; "))),
    }
}

/// What makes the run fail, each said in a few words; empty for a pass.
fn failures(report: &Value) -> Vec<String> {
    let mut problems = Vec::new();
    let errors = report["totals"]["errors"].as_u64().unwrap_or(0);
    if errors > 0 {
        problems.push(format!(
            "{errors} requests or streams failed (see `errors`)"
        ));
    }
    if report["delivery"]["ok"] != json!(true) {
        let problem = report["delivery"]["problem"].as_str().unwrap_or("unknown");
        problems.push(format!("deliveries: {problem}"));
    }
    let flat = &report["flatness"];
    if flat["judged"] == json!(true) && flat["flat"] != json!(true) {
        problems.push(format!(
            "not flat: {}",
            flat["verdict"].as_str().unwrap_or("")
        ));
    }
    problems
}

// ----- the record -----

/// The `docs/BENCHMARKS.md` section of a report (also the summary printed at the end).
fn render(report: &Value) -> String {
    let t = &report["traffic"];
    let totals = &report["totals"];
    let delivery = &report["delivery"];
    let flat = &report["flatness"];
    let lat = &report["latency"];
    let duration = report["duration_secs"].as_f64().unwrap_or(0.0);
    let n = |v: &Value| thousands(v.as_u64().unwrap_or(0));
    let mut out = String::from("## Soak\n\n");
    let _ = writeln!(
        out,
        "`cargo xtask soak` runs the release server on SQLite with its default settings, except \
         the per-address registration and login limits (`{}`), raised because every account is \
         made from this one machine, and drives steady mixed traffic at it while sampling it. \
         Last run {} on {}. Command: `{}`.\n",
        report["server_env"]
            .as_array()
            .map(|v| v
                .iter()
                .filter_map(Value::as_str)
                .collect::<Vec<_>>()
                .join(" "))
            .unwrap_or_default(),
        report["when"].as_str().unwrap_or("?"),
        report["machine"].as_str().unwrap_or("?"),
        report["command"].as_str().unwrap_or("cargo xtask soak"),
    );
    let _ = writeln!(
        out,
        "- **Duration:** {}, a sample every {} s; a warm-up of {} is left out of the \
         verdict.",
        clock_words(duration),
        num(&report["interval_secs"]),
        clock_words(report["warm_up_secs"].as_f64().unwrap_or(0.0)),
    );
    let _ = writeln!(
        out,
        "- **Traffic:** {} users, in {} friend pairs and {} groups of {} (plus {} listeners, members \
         of every group who never post). {} messages/s offered in \
         all, each to the sender's friend or group at random (text of 10 to 4,000 characters, \
         one in five over 200). An upload of 16 KiB to 1 MiB every {} s on average, one in {} \
         downloaded again through its link. Every user's stream is closed every {}–{} s and \
         resumed with `Last-Event-ID` {}–{} s later. {} slow readers, with a {} KiB receive \
         buffer, resume a listener's stream {} messages back; half read nothing and are checked after {} s, \
         half read {} B/s and are checked after {} s; then each is replaced.",
        num(&t["users"]),
        num(&t["friend_pairs"]),
        num(&t["groups"]),
        num(&t["group_size"]),
        num(&t["listeners"]),
        num(&t["messages_per_sec"]),
        num(&t["upload_every_secs"]),
        num(&t["download_one_in"]),
        num(&t["reconnect_every_secs"][0]),
        num(&t["reconnect_every_secs"][1]),
        num(&t["reconnect_gap_secs"][0]),
        num(&t["reconnect_gap_secs"][1]),
        num(&t["slow_readers"]),
        t["slow_recv_buffer"].as_u64().unwrap_or(0) / 1024,
        n(&t["slow_backlog_ids"]),
        num(&t["stalled_life_secs"]),
        num(&t["trickle_bytes_per_sec"]),
        num(&t["trickle_life_secs"]),
    );
    let _ = writeln!(
        out,
        "- **Totals:** {} messages sent, {} deliveries ({} replayed after a reconnect): {} \
         missing, {} duplicated, {} unexpected. Latency from post to delivery over the run: p50 \
         {} ms, p99 {} ms, max {} ms. {} uploads ({:.1} MiB), {} downloads checked. {} planned \
         reconnects, {} streams ended by the server, {} `resync`. Slow readers: {} opened, {} cut \
         off by the server, {} still open when checked. Server CPU {} s, generator CPU {} s.",
        n(&totals["sent"]),
        n(&totals["delivered"]),
        n(&totals["replayed"]),
        n(&delivery["missing"]),
        n(&delivery["duplicates"]),
        n(&delivery["unexpected"]),
        num(&lat["whole"]["p50_ms"]),
        num(&lat["whole"]["p99_ms"]),
        num(&lat["whole"]["max_ms"]),
        n(&totals["uploads"]),
        totals["upload_bytes"].as_f64().unwrap_or(0.0) / (1024.0 * 1024.0),
        n(&totals["downloads"]),
        n(&totals["reconnects"]),
        n(&totals["stream_ends"]),
        n(&totals["resyncs"]),
        n(&totals["slow_opened"]),
        n(&totals["slow_cut"]),
        n(&totals["slow_outlived"]),
        num(&report["server_cpu_secs"]),
        num(&report["generator_cpu_secs"]),
    );
    let errors = report["errors"].as_object().filter(|e| !e.is_empty());
    let _ = match errors {
        None => writeln!(out, "- **Errors:** none."),
        Some(errors) => writeln!(
            out,
            "- **Errors:** {}.",
            errors
                .iter()
                .map(|(what, k)| format!("{k} × {what}"))
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    let log = &report["server_log"];
    let _ = writeln!(
        out,
        "- **Server log:** {} warnings, {} errors.",
        n(&log["warnings"]),
        n(&log["errors"])
    );
    let _ = writeln!(
        out,
        "- **Verdict: {}.** From the first tenth after the warm-up to the last tenth: {} \
         (medians: RSS {:.1} → {:.1} MiB, open files {} → {}, threads {} → {}, database on disk \
         {:.1} → {:.1} MiB; RSS trend after the warm-up {:+.1} MiB/h). Latency p50 {} → {} ms, p99 {} → {} ms. Flat means growth of \
         at most {}.",
        flat["word"].as_str().unwrap_or("?"),
        flat["growth"].as_str().unwrap_or("?"),
        flat["rss_first_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        flat["rss_last_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        num(&flat["fds_first"]),
        num(&flat["fds_last"]),
        num(&flat["threads_first"]),
        num(&flat["threads_last"]),
        flat["db_first_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        flat["db_last_kib"].as_f64().unwrap_or(0.0) / 1024.0,
        flat["rss_trend_mib_per_hour"].as_f64().unwrap_or(0.0),
        num(&lat["first"]["p50_ms"]),
        num(&lat["last"]["p50_ms"]),
        num(&lat["first"]["p99_ms"]),
        num(&lat["last"]["p99_ms"]),
        flat["slack"].as_str().unwrap_or("?"),
    );
    let samples = report["samples"].as_array().cloned().unwrap_or_default();
    if let (Some(first), Some(last)) = (samples.first(), samples.last()) {
        let middle = samples
            .iter()
            .min_by(|a, b| {
                let off = |s: &Value| (s["t_secs"].as_f64().unwrap_or(0.0) - duration / 2.0).abs();
                off(a).total_cmp(&off(b))
            })
            .unwrap_or(first);
        let points = [first, middle, last];
        out.push_str("\n| | start | middle | end |\n|---|---:|---:|---:|\n");
        let mut row = |label: &str, f: &dyn Fn(&Value) -> String| {
            let cells: Vec<String> = points.iter().map(|s| f(s)).collect();
            let _ = writeln!(out, "| {label} | {} |", cells.join(" | "));
        };
        row("time (min:s)", &|s| {
            clock(s["t_secs"].as_f64().unwrap_or(0.0))
        });
        row("server RSS (MiB)", &|s| mib(&s["rss_kib"]));
        row("… of it anonymous (heap) (MiB)", &|s| {
            mib(&s["rss_anon_kib"])
        });
        row("database on disk (MiB)", &|s| mib(&s["db_kib"]));
        row("open files", &|s| num(&s["fds"]));
        row("threads", &|s| num(&s["threads"]));
        row("latency p50 over the interval (ms)", &|s| {
            num(&s["latency"]["p50_ms"])
        });
        row("latency p99 over the interval (ms)", &|s| {
            num(&s["latency"]["p99_ms"])
        });
    }
    let step = table_step(duration, report["interval_secs"].as_f64().unwrap_or(10.0));
    let _ = writeln!(
        out,
        "\nSamples every {} (the whole series is in `{}`). Rates, server cores and counts are \
         since the row before; latencies are over the row's own sampling interval.\n\n\
         | time | RSS (MiB) | database (MiB) | open files | threads | server cores | sent/s | \
         delivered/s | p50 (ms) | p99 (ms) | reconnects | slow readers cut off | errors |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        clock_words(step),
        report["json"]
            .as_str()
            .and_then(|p| Path::new(p).file_name())
            .map(|f| format!("target/soak/{}", f.to_string_lossy()))
            .unwrap_or_else(|| "target/soak/".into()),
    );
    let t = |s: &Value| s["t_secs"].as_f64().unwrap_or(0.0);
    let mut from = 0;
    for i in pick(&samples, step) {
        let (s, rows) = (&samples[i], &samples[from..=i]);
        let span = (t(s) - from.checked_sub(1).map_or(0.0, |p| t(&samples[p]))).max(1e-9);
        let sum = |key: &str| -> u64 {
            rows.iter()
                .map(|r| r["interval"][key].as_u64().unwrap_or(0))
                .sum()
        };
        let mean = |key: &str| {
            let total: f64 = rows
                .iter()
                .map(|r| r[key].as_f64().unwrap_or(0.0) * r["span_secs"].as_f64().unwrap_or(0.0))
                .sum();
            round2(total / span)
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {:.1} | {:.1} | {} | {} | {} | {} | {} |",
            clock(t(s)),
            mib(&s["rss_kib"]),
            mib(&s["db_kib"]),
            num(&s["fds"]),
            num(&s["threads"]),
            mean("server_cores"),
            sum("sent") as f64 / span,
            sum("delivered") as f64 / span,
            num(&s["latency"]["p50_ms"]),
            num(&s["latency"]["p99_ms"]),
            sum("reconnects"),
            sum("slow_cut"),
            sum("errors"),
        );
        from = i + 1;
    }
    out
}

/// The spacing of the record's sample table: 5 minutes for long runs, about a sixth of
/// shorter ones, in whole sampling intervals.
fn table_step(duration: f64, interval: f64) -> f64 {
    if duration >= 30.0 * 60.0 {
        300.0
    } else {
        ((duration / 6.0 / interval).round() * interval).max(interval)
    }
}

/// The indices of the samples at each multiple of `step` seconds (the first at or after
/// it), and of the last.
fn pick(samples: &[Value], step: f64) -> Vec<usize> {
    let mut out = Vec::new();
    let mut next = step;
    for (i, s) in samples.iter().enumerate() {
        let t = s["t_secs"].as_f64().unwrap_or(0.0);
        if t + 1e-6 >= next {
            out.push(i);
            while next <= t + 1e-6 {
                next += step;
            }
        }
    }
    let last = samples.len().checked_sub(1);
    if let Some(last) = last.filter(|l| out.last() != Some(l)) {
        out.push(last);
    }
    out
}

/// How many warnings and errors the server logged, and the first few of them.
fn log_summary(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let level = |l: &str, word: &str| l.split_whitespace().take(4).any(|w| w.contains(word));
    let warnings: Vec<&str> = text.lines().filter(|l| level(l, "WARN")).collect();
    let errors: Vec<&str> = text.lines().filter(|l| level(l, "ERROR")).collect();
    let first: Vec<&str> = errors.iter().chain(&warnings).take(5).copied().collect();
    json!({
        "path": path.display().to_string(),
        "warnings": warnings.len(),
        "errors": errors.len(),
        "first": first,
    })
}

// ----- formatting -----

/// Rounds to two decimals, as every figure of the report is given.
fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// A JSON number as a person writes it: `30`, not `30.0`; `–` for none.
fn num(v: &Value) -> String {
    match v.as_f64() {
        Some(x) if x.fract() == 0.0 && x.abs() < 1e15 => format!("{}", x as i64),
        Some(x) => x.to_string(),
        None => "–".into(),
    }
}

/// KiB as MiB with one decimal.
fn mib(kib: &Value) -> String {
    format!("{:.1}", kib.as_f64().unwrap_or(0.0) / 1024.0)
}

/// Seconds as `m:ss`, the printed lines' time.
fn clock(secs: f64) -> String {
    let secs = secs.round() as u64;
    format!("{}:{:02}", secs / 60, secs % 60)
}

/// Seconds in words: `60 min`, `2 min 30 s`, `45 s`.
fn clock_words(secs: f64) -> String {
    let secs = secs.round() as u64;
    match (secs / 60, secs % 60) {
        (0, s) => format!("{s} s"),
        (m, 0) => format!("{m} min"),
        (m, s) => format!("{m} min {s} s"),
    }
}

/// A count with thousands separators, as the rest of `docs/BENCHMARKS.md` writes them.
fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Seconds since the epoch.
fn unix_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// `YYYYMMDD-HHMMSS` (UTC) for file names, which sort by time.
fn file_stamp(secs: u64) -> String {
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rest = secs % 86_400;
    format!(
        "{y:04}{m:02}{d:02}-{:02}{:02}{:02}",
        rest / 3600,
        rest % 3600 / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Command-line arguments as `main` hands them over.
    fn args(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn options_parse_and_print_back() {
        let o = Options::parse(&args(&["--minutes", "1.5", "--record"])).unwrap();
        assert_eq!(o.duration, Duration::from_secs(90));
        assert!(o.record);
        assert_eq!(o.command(), "cargo xtask soak --seconds 90 --record");
        let o =
            Options::parse(&args(&["--seconds", "30", "--users", "20", "--rate", "10"])).unwrap();
        assert_eq!((o.duration.as_secs(), o.users, o.rate), (30, 20, 10.0));
        assert_eq!(
            o.command(),
            "cargo xtask soak --seconds 30 --users 20 --rate 10"
        );
        assert_eq!(
            Options::parse(&[]).unwrap().command(),
            "cargo xtask soak --minutes 60"
        );
        assert_eq!(Options::parse(&[]).unwrap().interval(), 30.0);
        assert_eq!(o.interval(), 10.0);
        for bad in [
            &["--minutes"][..],
            &["--minutes", "0"],
            &["--minutes", "-1"],
            &["--seconds", "nan"],
            &["--seconds", "5"],
            &["--users", "10.5"],
            &["--slow"],
        ] {
            assert!(Options::parse(&args(bad)).is_err(), "{bad:?}");
        }
    }

    /// A series of `n` samples every 30 s whose RSS and fds follow `rss(i)` and `fds(i)`.
    #[test]
    fn failures_name_errors_losses_and_growth() {
        let report = json!({
            "totals": {"errors": 2},
            "delivery": {"ok": false, "problem": "1 missing, 0 duplicated, 0 unexpected deliveries"},
            "flatness": {"judged": true, "flat": false, "verdict": "grew: RSS +9 MiB"},
        });
        let problems = failures(&report);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[1].contains("1 missing"));
        let unjudged =
            json!({"flatness": {"judged": false, "flat": false}, "delivery": {"ok": true}});
        assert!(failures(&unjudged).is_empty());
    }

    #[test]
    fn record_has_the_figures_and_a_sample_table() {
        // A report as `im-loadgen soak` prints it: an hour sampled every 30 s, flat.
        let counts = |sent: u64, reconnects: u64| {
            json!({"sent": sent, "delivered": 0, "replayed": 0, "uploads": 0, "upload_bytes": 0,
                   "downloads": 0, "reconnects": reconnects, "stream_ends": 0, "resyncs": 0,
                   "slow_opened": 0, "slow_cut": 0, "slow_outlived": 0, "errors": 0})
        };
        let samples: Vec<Value> = (0..120)
            .map(|i| {
                json!({"t_secs": (i + 1) as f64 * 30.0, "rss_kib": 41_000, "rss_anon_kib": 31_000,
                       "db_kib": i * 100, "fds": 118, "threads": 9, "server_cores": 0.2,
                       "span_secs": 30.0, "sent_per_sec": 50.0, "delivered_per_sec": 0.0,
                       "latency": {"count": 0, "p50_ms": 1.0, "p99_ms": 5.0, "max_ms": 9.0},
                       "interval": counts(1500, 1)})
            })
            .collect();
        let mut report = json!({
            "duration_secs": 3600.0,
            "interval_secs": 30.0,
            "warm_up_secs": 1800.0,
            "traffic": {"users": 50, "friend_pairs": 25, "groups": 5, "group_size": 10,
                        "messages_per_sec": 50.0, "upload_every_secs": 15.0,
                        "upload_bytes": [16384.0, 1048576.0], "download_one_in": 3,
                        "reconnect_every_secs": [30.0, 90.0], "reconnect_gap_secs": [0.5, 3.0],
                        "slow_readers": 4, "listeners": 2, "slow_recv_buffer": 4096,
                        "slow_backlog_ids": 10000, "stalled_life_secs": 90.0,
                        "trickle_life_secs": 180.0, "trickle_bytes_per_sec": 256.0},
            "server_env": ["IM_A=1"],
            "server_cpu_secs": 700.5,
            "generator_cpu_secs": 300.25,
            "latency": {"whole": {"p50_ms": 1.5, "p99_ms": 8.0, "max_ms": 40.0},
                        "first": {"p50_ms": 1.4, "p99_ms": 7.0}, "last": {"p50_ms": 1.6, "p99_ms": 9.0}},
            "flatness": {"db_first_kib": 6300.0, "db_last_kib": 11700.0, "fd_growth": 0.0,
                         "fd_growth_pct": 0.0, "fds_first": 118.0, "fds_last": 118.0, "flat": true,
                         "growth": "RSS +0.0 MiB (+0.0%), open files +0 (+0.0%)", "judged": true,
                         "rss_first_kib": 41000.0, "rss_growth_mib": 0.0, "rss_growth_pct": 0.0,
                         "rss_last_kib": 41000.0, "rss_trend_mib_per_hour": 0.0,
                         "slack": "RSS 5 MiB or 5%, open files 5 or 5%, whichever is more",
                         "threads_first": 9.0, "threads_last": 9.0,
                         "verdict": "flat: RSS +0.0 MiB (+0.0%), open files +0 (+0.0%)",
                         "word": "flat"},
            "samples": samples,
            "totals": {"sent": 180_000, "delivered": 1_100_000, "errors": 0},
            "delivery": {"ok": true, "missing": 0, "duplicates": 0, "unexpected": 0},
            "errors": {},
            "server_log": {"warnings": 3, "errors": 0},
            "when": "2030-01-01 00:00 UTC",
            "machine": "2 cores",
            "command": "cargo xtask soak --minutes 60 --record",
            "json": "/x/target/soak/soak-20300101-000000.json",
        });
        let md = render(&report);
        assert!(md.starts_with("## Soak\n\n"));
        assert!(md.contains("Command: `cargo xtask soak --minutes 60 --record`"));
        assert!(md.contains("**Duration:** 60 min, a sample every 30 s; a warm-up of 30 min is"));
        assert!(md.contains("180,000 messages sent, 1,100,000 deliveries"));
        assert!(md.contains("- **Errors:** none."));
        assert!(md.contains(
            "- **Verdict: flat.** From the first tenth after the warm-up to the \
             last tenth: RSS +0.0 MiB (+0.0%), open files +0 (+0.0%) (medians: RSS 40.0 → 40.0"
        ));
        assert!(md.contains("| server RSS (MiB) | 40.0 | 40.0 | 40.0 |"));
        assert!(md.contains("| time (min:s) | 0:30 | 30:00 | 60:00 |"));
        assert!(md.contains("`target/soak/soak-20300101-000000.json`"));
        // One row every 5 minutes, 12 of them, each counting the 10 samples since the last.
        let rows = md
            .lines()
            .filter(|l| l.ends_with("| 0.2 | 50.0 | 0.0 | 1 | 5 | 10 | 0 | 0 |"));
        assert_eq!(rows.count(), 12, "{md}");
        report["errors"] = json!({"POST /api/v1/messages: 429 rate_limited": 2});
        assert!(render(&report).contains("- **Errors:** 2 × POST /api/v1/messages: 429"));
        // The section goes between its markers, and anything around it stays.
        let doc = format!("# B\n\n{START}\nold\n{END}\n\n## After\n");
        let spliced = splice_between(Some(&doc), START, END, &md).unwrap();
        assert!(spliced.starts_with("# B\n\n<!-- soak:start -->\n## Soak"));
        assert!(spliced.ends_with("<!-- soak:end -->\n\n## After\n") && !spliced.contains("old"));
    }

    #[test]
    fn small_pieces() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(1_234_567), "1,234,567");
        assert_eq!(clock(3599.6), "60:00");
        assert_eq!(clock_words(150.0), "2 min 30 s");
        assert_eq!(file_stamp(951_782_400 + 3_723), "20000229-010203");
        assert_eq!(table_step(3600.0, 30.0), 300.0);
        assert_eq!(table_step(120.0, 10.0), 20.0);
        assert_eq!(table_step(30.0, 10.0), 10.0);
        let values: Vec<Value> = (1..=12)
            .map(|i| json!({"t_secs": i as f64 * 10.0}))
            .collect();
        assert_eq!(pick(&values, 20.0), [1, 3, 5, 7, 9, 11]);
        assert_eq!(pick(&values[..11], 20.0), [1, 3, 5, 7, 9, 10]);
    }
}
