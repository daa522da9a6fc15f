//! `cargo xtask bench`: runs the criterion micro-benchmarks and records their medians in
//! `docs/BENCHMARKS.md`, between the `micro` markers, with the date, machine and command.

use crate::util::{Result, banner, cargo, display_cargo, run_cargo, workspace_root};
use serde_json::Value;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The crates whose criterion benches make up the micro-benchmark table.
const PACKAGES: [&str; 4] = ["im-protocol", "im-classifier", "im-channel", "im-pool"];

/// The document the table goes into, relative to the workspace root.
const DOC: &str = "docs/BENCHMARKS.md";

/// Opens the generated section; everything outside the markers is left alone.
const START: &str = "<!-- micro:start -->";

/// Closes the generated section.
const END: &str = "<!-- micro:end -->";

/// What `docs/BENCHMARKS.md` starts as when it does not exist yet.
const NEW_DOC: &str = "\
# Benchmarks

Speed is measured here, never asserted in tests. The micro-benchmarks are criterion benches of
the pieces on every message's path: SSE framing (`im-protocol`), classification
(`im-classifier`), the sharded handler chain (`im-channel`) and the consumer pool's fan-out
(`im-pool`). `cargo xtask bench` reruns them and rewrites the table between the markers below;
numbers are only comparable between runs on the same machine.

## Micro-benchmarks

";

/// Options of `cargo xtask bench`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Options {
    /// Small sizes (CI smoke use): criterion's quick mode and small load scenarios.
    pub quick: bool,
    /// What to run: `micro` and load scenarios; empty means everything.
    pub scenarios: Vec<String>,
    /// Only rewrite the load table from `docs/BENCHMARKS.json`, running nothing.
    pub render: bool,
}

impl Options {
    /// Parses the arguments after `bench`.
    pub fn parse(args: &[String]) -> Result<Self> {
        let mut options = Options::default();
        for arg in args {
            match arg.as_str() {
                "--quick" => options.quick = true,
                "--render" => options.render = true,
                s if s == "micro" || crate::loadbench::SCENARIOS.contains(&s) => {
                    options.scenarios.push(s.to_owned())
                }
                other => return Err(format!("unknown scenario or option `{other}` for `bench`")),
            }
        }
        Ok(options)
    }

    fn wants(&self, name: &str) -> bool {
        self.scenarios.is_empty() || self.scenarios.iter().any(|s| s == name)
    }
}

const LOAD_START: &str = "<!-- load:start -->";
const LOAD_END: &str = "<!-- load:end -->";

/// Runs what the options select: the micro-benchmarks and the load scenarios.
pub fn run(options: &Options) -> Result<()> {
    if options.render {
        let root = workspace_root();
        return write_load_docs(&root, &read_load_json(&root));
    }
    if options.wants("micro") {
        run_micro(options)?;
    }
    let load: Vec<&str> = crate::loadbench::SCENARIOS
        .iter()
        .copied()
        .filter(|s| options.wants(s))
        .collect();
    if load.is_empty() {
        return Ok(());
    }
    let mut results = crate::loadbench::run(&load, options.quick)?;
    let root = workspace_root();
    let mut command = String::from("cargo xtask bench");
    for s in &options.scenarios {
        command.push(' ');
        command.push_str(s);
    }
    if options.quick {
        command.push_str(" --quick");
    }
    let when = utc_now();
    if let Some(map) = results.as_object_mut() {
        for entry in map.values_mut() {
            entry["when"] = serde_json::json!(when);
            entry["command"] = serde_json::json!(command);
            entry["machine"] = serde_json::json!(machine());
        }
    }
    if options.quick {
        let header = format!("Quick run {when} on {}. Command: `{command}`.", machine());
        print!("{}", crate::loadbench::render(&results, &header));
        banner(
            "quick run: every scenario delivered every message exactly once (docs/ left untouched)",
        );
        return Ok(());
    }
    // Scenarios not run this time keep their last recorded results.
    let mut all = read_load_json(&root);
    if let (Some(all), Some(new)) = (all.as_object_mut(), results.as_object()) {
        for (k, v) in new {
            all.insert(k.clone(), v.clone());
        }
    }
    write_load_docs(&root, &all)
}

/// The recorded load results (`docs/BENCHMARKS.json`), or an empty object.
fn read_load_json(root: &Path) -> Value {
    std::fs::read_to_string(root.join("docs/BENCHMARKS.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .filter(Value::is_object)
        .unwrap_or_else(|| serde_json::json!({}))
}

/// Writes the load table into `docs/BENCHMARKS.md` and the results into `docs/BENCHMARKS.json`.
fn write_load_docs(root: &Path, all: &Value) -> Result<()> {
    let mut header = String::from(
        "Server and generator are built in release mode; the generator, `im-loadgen` (crates/im-loadgen), runs as \
         separate processes on the same machine. Figures are medians over the runs. Each \
         scenario's latest run, and the machine it ran on (figures are comparable only within \
         one machine, best within one run):\n",
    );
    if let Some(map) = all.as_object() {
        for (name, entry) in map {
            let when = entry["when"].as_str().unwrap_or("unknown date");
            let cmd = entry["command"].as_str().unwrap_or("cargo xtask bench");
            let on = entry["machine"].as_str().unwrap_or("an unrecorded machine");
            header.push_str(&format!("\n- {name}: {when} on {on}, `{cmd}`"));
        }
    }
    let table = crate::loadbench::render(all, &header);
    print!("{table}");
    let path = root.join(DOC);
    let existing = std::fs::read_to_string(&path).ok();
    let updated = splice_between(existing.as_deref(), LOAD_START, LOAD_END, &table)?;
    write_atomically(&path, &updated)?;
    let json_path = root.join("docs/BENCHMARKS.json");
    std::fs::write(
        &json_path,
        serde_json::to_string_pretty(all).unwrap_or_default(),
    )
    .map_err(|e| format!("cannot write {}: {e}", json_path.display()))?;
    banner(&format!(
        "wrote the load results to {DOC} and docs/BENCHMARKS.json"
    ));
    Ok(())
}

/// One benchmark's result as criterion saved it.
#[derive(Debug, Clone, PartialEq)]
struct Estimate {
    /// Criterion's full id, e.g. `sse/encode_message`.
    id: String,
    /// Median time of one iteration, in nanoseconds.
    median_ns: f64,
    /// What one iteration processes, if the bench declared it.
    throughput: Option<Throughput>,
}

/// Criterion's `Throughput`, as serialized in `benchmark.json`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Throughput {
    /// Elements per iteration.
    Elements(u64),
    /// Bytes per iteration, shown in binary units.
    Bytes(u64),
    /// Bytes per iteration, shown in decimal units.
    BytesDecimal(u64),
    /// Bits per iteration.
    Bits(u64),
}

/// Runs the criterion benches, collects what this run wrote and updates the document.
fn run_micro(options: &Options) -> Result<()> {
    let root = workspace_root();
    // `--bench '*'` runs only `[[bench]]` targets: `--benches` would also run each library's
    // libtest harness, which rejects criterion's flags.
    let mut args = vec!["bench", "--bench", "*"];
    for package in PACKAGES {
        args.extend(["-p", package]);
    }
    args.extend(["--", "--noplot"]);
    if options.quick {
        args.push("--quick");
    }
    let cargo_command = display_cargo(&args);
    let xtask_command = if options.quick {
        "cargo xtask bench --quick"
    } else {
        "cargo xtask bench"
    };

    // Criterion keeps old results; only files written from here on belong to this run.
    let started = SystemTime::now();
    banner(&cargo_command);
    run_cargo(&root, &args)?;

    let dir = criterion_dir(&root);
    let since = started
        .checked_sub(Duration::from_secs(1))
        .unwrap_or(UNIX_EPOCH);
    let mut estimates = Vec::new();
    collect(&dir, since, &mut estimates)?;
    if estimates.is_empty() {
        return Err(format!(
            "the benches ran but no criterion results newer than the run were found under {}",
            dir.display()
        ));
    }
    estimates.sort_by(|a, b| a.id.cmp(&b.id));

    let mut header = format!(
        "Last run {} on {}{}. Command: `{xtask_command}`, which runs `{cargo_command}`. \
         Times are criterion's median per iteration.",
        utc_now(),
        machine(),
        rustc_version()
            .map(|v| format!(", {v}"))
            .unwrap_or_default(),
    );
    if options.quick {
        header.push_str(
            " Quick mode: no warm-up and only two samples per benchmark, so the numbers are \
             rough; run `cargo xtask bench` for a full measurement.",
        );
    }
    let section = render(&header, &estimates);
    if options.quick {
        // A smoke run (CI) checks that the benches work; its rough numbers are not recorded.
        print!("{section}");
        return Ok(());
    }
    let path = root.join(DOC);
    let existing = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let updated = splice(existing.as_deref(), &section)?;
    write_atomically(&path, &updated)?;
    banner(&format!("wrote {} benchmark(s) to {DOC}", estimates.len()));
    print!("{section}");
    Ok(())
}

/// Where criterion writes its results: `$CRITERION_HOME`, else `criterion/` in the cargo
/// target dir (as criterion finds it: `$CARGO_TARGET_DIR`, else `cargo metadata`).
fn criterion_dir(root: &Path) -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return root.join(home);
    }
    if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
        return root.join(target).join("criterion");
    }
    let from_metadata = cargo(root, &["metadata", "--format-version", "1", "--no-deps"])
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| serde_json::from_slice::<Value>(&out.stdout).ok())
        .and_then(|meta| meta["target_directory"].as_str().map(PathBuf::from));
    from_metadata
        .unwrap_or_else(|| root.join("target"))
        .join("criterion")
}

/// Walks `dir` for `new/estimates.json` files modified at or after `since`.
fn collect(dir: &Path, since: SystemTime, out: &mut Vec<Estimate>) -> Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(format!("cannot list {}: {e}", dir.display())),
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
        let path = entry.path();
        if !path.is_dir() {
            continue;
        }
        let estimates = path.join("estimates.json");
        if path.file_name().is_some_and(|n| n == "new") && estimates.is_file() {
            let fresh = std::fs::metadata(&estimates)
                .and_then(|m| m.modified())
                .is_ok_and(|modified| modified >= since);
            if fresh {
                out.push(read_estimate(dir, &path)?);
            }
        } else {
            collect(&path, since, out)?;
        }
    }
    Ok(())
}

/// Reads one benchmark's `estimates.json` and `benchmark.json` from its `new` directory
/// inside `bench_dir`.
fn read_estimate(bench_dir: &Path, new_dir: &Path) -> Result<Estimate> {
    let estimates = read_json(&new_dir.join("estimates.json"))?;
    let median_ns = estimates["median"]["point_estimate"]
        .as_f64()
        .ok_or_else(|| {
            format!(
                "{}: no median.point_estimate",
                new_dir.join("estimates.json").display()
            )
        })?;
    // benchmark.json has the id as written in the bench (directory names are sanitized) and
    // the declared throughput; without it, fall back to the directory name.
    let meta = read_json(&new_dir.join("benchmark.json")).unwrap_or(Value::Null);
    let id = match meta["full_id"].as_str() {
        Some(id) => id.to_owned(),
        None => bench_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    };
    Ok(Estimate {
        id,
        median_ns,
        throughput: parse_throughput(&meta["throughput"]),
    })
}

/// Reads and parses a JSON file.
fn read_json(path: &Path) -> Result<Value> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{} is not valid JSON: {e}", path.display()))
}

/// Decodes criterion's externally tagged `{"Elements": n}` (or `Bytes`, ...), or `null`.
fn parse_throughput(value: &Value) -> Option<Throughput> {
    let (kind, n) = value.as_object()?.iter().next()?;
    let n = n.as_u64()?;
    match kind.as_str() {
        "Elements" => Some(Throughput::Elements(n)),
        "Bytes" => Some(Throughput::Bytes(n)),
        "BytesDecimal" => Some(Throughput::BytesDecimal(n)),
        "Bits" => Some(Throughput::Bits(n)),
        _ => None,
    }
}

/// The generated section: the header line, then the table.
fn render(header: &str, estimates: &[Estimate]) -> String {
    let mut out = format!("{header}\n\n| benchmark | median | throughput |\n|---|---:|---:|\n");
    for e in estimates {
        let throughput = e
            .throughput
            .map(|t| rate(t, e.median_ns))
            .unwrap_or_else(|| "–".into());
        let _ = writeln!(
            out,
            "| `{}` | {} | {} |",
            e.id,
            duration(e.median_ns),
            throughput
        );
    }
    out
}

/// A time in nanoseconds with three significant digits and a fitting unit.
fn duration(ns: f64) -> String {
    let (value, unit) = if ns < 1e3 {
        (ns, "ns")
    } else if ns < 1e6 {
        (ns / 1e3, "µs")
    } else if ns < 1e9 {
        (ns / 1e6, "ms")
    } else {
        (ns / 1e9, "s")
    };
    format!("{} {unit}", three_digits(value))
}

/// Per-second throughput of one iteration processing `t` in `ns` nanoseconds.
fn rate(t: Throughput, ns: f64) -> String {
    if ns <= 0.0 {
        return "–".into();
    }
    let per_second = |n: u64| n as f64 * 1e9 / ns;
    match t {
        Throughput::Elements(n) => {
            format!(
                "{}elem/s ({} per element)",
                si(per_second(n)),
                duration(ns / n.max(1) as f64)
            )
        }
        Throughput::Bytes(n) => binary_bytes(per_second(n)),
        Throughput::BytesDecimal(n) => format!("{}B/s", si(per_second(n))),
        Throughput::Bits(n) => format!("{}bit/s", si(per_second(n))),
    }
}

/// A value with a decimal prefix and a trailing space: `1.23 M`.
fn si(v: f64) -> String {
    let (value, prefix) = if v >= 1e9 {
        (v / 1e9, "G")
    } else if v >= 1e6 {
        (v / 1e6, "M")
    } else if v >= 1e3 {
        (v / 1e3, "K")
    } else {
        (v, "")
    };
    format!("{} {prefix}", three_digits(value))
}

/// Bytes per second in binary units.
fn binary_bytes(v: f64) -> String {
    const KI: f64 = 1024.0;
    let (value, unit) = if v >= KI * KI * KI {
        (v / (KI * KI * KI), "GiB/s")
    } else if v >= KI * KI {
        (v / (KI * KI), "MiB/s")
    } else if v >= KI {
        (v / KI, "KiB/s")
    } else {
        (v, "B/s")
    };
    format!("{} {unit}", three_digits(value))
}

/// Three significant digits for values from 1 to 999 (and sensible output outside).
fn three_digits(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Puts `section` between the markers of `existing`, or builds a new document around it.
fn splice(existing: Option<&str>, section: &str) -> Result<String> {
    splice_between(existing, START, END, section)
}

/// Replaces the text between two markers (or appends a marked block).
pub(crate) fn splice_between(
    existing: Option<&str>,
    start_mark: &str,
    end_mark: &str,
    section: &str,
) -> Result<String> {
    let block = format!("{start_mark}\n{section}{end_mark}");
    let Some(text) = existing else {
        return Ok(format!("{NEW_DOC}{block}\n"));
    };
    match (text.find(start_mark), text.find(end_mark)) {
        (Some(start), Some(end)) if start < end => Ok(format!(
            "{}{block}{}",
            &text[..start],
            &text[end + end_mark.len()..]
        )),
        (None, None) => {
            let sep = if text.ends_with("\n\n") || text.is_empty() {
                ""
            } else if text.ends_with('\n') {
                "\n"
            } else {
                "\n\n"
            };
            Ok(format!("{text}{sep}{block}\n"))
        }
        _ => Err(format!(
            "{DOC} has `{start_mark}` and `{end_mark}` out of order or one without the other; \
             fix the markers by hand"
        )),
    }
}

/// Writes `text` to `path` through a temporary file, so a failure never leaves half a file.
pub(crate) fn write_atomically(path: &Path, text: &str) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let tmp = path.with_extension("md.tmp");
    std::fs::write(&tmp, text).map_err(|e| format!("cannot write {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path)
        .map_err(|e| format!("cannot move {} to {}: {e}", tmp.display(), path.display()))
}

/// The current time as `YYYY-MM-DD HH:MM UTC`.
pub(crate) fn utc_now() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    format_utc(secs)
}

/// Formats Unix seconds as `YYYY-MM-DD HH:MM UTC` (proleptic Gregorian calendar).
fn format_utc(secs: u64) -> String {
    let (days, rest) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// Year, month and day of the day `days` after 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Cores, memory and CPU model, e.g. `2 cores, 7.8 GiB RAM, AMD EPYC 7B13`.
pub(crate) fn machine() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| format!("{n} cores"))
        .unwrap_or_else(|_| "unknown cores".into());
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|text| mem_total_kib(&text))
        .map(|kib| format!("{:.1} GiB RAM", kib as f64 / (1024.0 * 1024.0)))
        .unwrap_or_else(|| "unknown RAM".into());
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| cpu_model(&text))
        .unwrap_or_else(|| "unknown CPU".into());
    format!("{cores}, {memory}, {cpu}")
}

/// `MemTotal` from `/proc/meminfo`, in KiB.
fn mem_total_kib(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The CPU model from `/proc/cpuinfo` (`model name` on x86, `Hardware`/`Model` elsewhere).
fn cpu_model(cpuinfo: &str) -> Option<String> {
    ["model name", "Hardware", "Model", "cpu model"]
        .iter()
        .find_map(|key| {
            cpuinfo.lines().find_map(|line| {
                let (k, v) = line.split_once(':')?;
                (k.trim() == *key && !v.trim().is_empty())
                    .then(|| v.split_whitespace().collect::<Vec<_>>().join(" "))
            })
        })
}

/// `rustc --version`, for the record; `None` if it cannot be run.
fn rustc_version() -> Option<String> {
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let out = std::process::Command::new(rustc)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let none = Options {
            quick: false,
            scenarios: vec![],
            render: false,
        };
        assert_eq!(Options::parse(&[]), Ok(none));
        let quick = Options::parse(&["fanout".into(), "--quick".into()]).unwrap();
        assert!(quick.quick && quick.wants("fanout") && !quick.wants("idle"));
        assert!(Options::parse(&["--slow".into()]).is_err());
        assert!(Options::parse(&["nope".into()]).is_err());
    }

    #[test]
    fn dates() {
        assert_eq!(format_utc(0), "1970-01-01 00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00 UTC");
        assert_eq!(format_utc(1_709_251_199), "2024-02-29 23:59 UTC");
        assert_eq!(format_utc(4_102_444_800), "2100-01-01 00:00 UTC");
    }

    #[test]
    fn units() {
        assert_eq!(duration(12.345), "12.3 ns");
        assert_eq!(duration(1_234.0), "1.23 µs");
        assert_eq!(duration(2_500_000.0), "2.50 ms");
        assert_eq!(duration(3.2e9), "3.20 s");
        assert_eq!(
            rate(Throughput::Elements(1000), 1e6),
            "1.00 Melem/s (1.00 µs per element)"
        );
        assert_eq!(rate(Throughput::Bytes(1024), 1e3), "977 MiB/s");
    }

    #[test]
    fn throughput_json() {
        let v: Value = serde_json::from_str(r#"{"Elements": 1000}"#).unwrap();
        assert_eq!(parse_throughput(&v), Some(Throughput::Elements(1000)));
        assert_eq!(parse_throughput(&Value::Null), None);
    }

    #[test]
    fn splicing_keeps_everything_outside_the_markers() {
        let new = splice(None, "table\n").unwrap();
        assert!(new.starts_with("# Benchmarks"));
        assert!(new.ends_with(&format!("{START}\ntable\n{END}\n")));

        let doc = format!("intro\n{START}\nold\n{END}\noutro\n");
        assert_eq!(
            splice(Some(&doc), "new\n").unwrap(),
            format!("intro\n{START}\nnew\n{END}\noutro\n")
        );

        assert_eq!(
            splice(Some("text"), "t\n").unwrap(),
            format!("text\n\n{START}\nt\n{END}\n")
        );
        assert!(splice(Some(&format!("{END}{START}")), "t\n").is_err());
        assert!(splice(Some(START), "t\n").is_err());
    }

    #[test]
    fn proc_files() {
        assert_eq!(
            mem_total_kib("MemTotal:        8048576 kB\nMemFree: 1 kB\n"),
            Some(8_048_576)
        );
        let cpuinfo = "processor\t: 0\nmodel name\t: AMD  EPYC 7B13\n";
        assert_eq!(cpu_model(cpuinfo).as_deref(), Some("AMD EPYC 7B13"));
        assert_eq!(cpu_model("processor : 0\n"), None);
    }
}
