//! `cargo xtask`: the workspace's automation, written in Rust instead of shell scripts.
//!
//! - `cargo xtask ci` is the gate every change passes: formatting, clippy with warnings as
//!   errors, every test target, then the doc tests. `.ci/run` and the GitHub workflow call it.
//! - `cargo xtask bench [SCENARIO...] [--quick]` runs the criterion micro-benchmarks and the
//!   load scenarios (against Web-IM and nchan) and writes the figures into `docs/BENCHMARKS.md`.
//!
//! - `cargo xtask fuzz [TARGET...] [--seconds N]` runs the libFuzzer targets of `fuzz/`.
//!
//! - `cargo xtask soak [--minutes N]` drives mixed traffic at a release server and reports
//!   whether its memory and open files stay flat.
//!
//! - `cargo xtask openapi` checks the debug server against its OpenAPI document with
//!   schemathesis (installed from PyPI into a venv under the target dir).
//!
//! Nothing here is needed at runtime.

mod balance;
mod bench;
mod ci;
#[cfg(test)]
mod drift;
mod fuzz;
mod loadbench;
mod moto;
mod msrv;
mod openapi;
mod services;
mod soak;
mod util;

use std::process::ExitCode;

/// The help text, printed by `help` and on a usage error.
const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci                 cargo fmt --check, clippy -D warnings, all tests, doc tests (fails fast)
  bench [SCENARIO...] [--quick]
                     run benchmarks and update docs/BENCHMARKS.md; SCENARIO is micro (criterion),
                     idle, fanout, direct, resume, login (load; idle and fanout side by side
                     with nchan) or cluster
                     (direct chat on SQLite and on PostgreSQL + Redis with 1-3 nodes, fan-out to
                     5,000 over 2 nodes, clients of a killed node caught up); default: all.
                     --quick: small sizes, our server only, docs/ untouched (CI smoke run)
                     --render: rewrite the load table from docs/BENCHMARKS.json, run nothing
  fuzz [TARGET...] [--seconds N]
                     build the fuzz targets of fuzz/ (libFuzzer, stable toolchain) and run each
                     for N seconds (default 300): sse_parser, range, file_name, multipart,
                     draft_json; a crash input is left in fuzz/artifacts/TARGET/
  soak [--minutes N | --seconds N] [--users N] [--rate R] [--record]
                     run the release server on SQLite under steady mixed traffic (direct chat,
                     groups, uploads, stream reconnects, slow readers) for N minutes (default
                     60; 50 users, 50 messages/s), sampling its RSS, open files, threads and
                     latency; writes target/soak/soak-TIME.json and judges whether memory and
                     open files stayed flat. --record: write the result into docs/BENCHMARKS.md
  msrv               check the workspace with the oldest compiler it declares (Debian's
                     rustc-web, unpacked under target/msrv)
  openapi            check the debug server's answers against crates/im-server/openapi.json
                     with schemathesis (pip-installed into a venv under the target dir)
  balance LISTEN NODE...
                     a round-robin TCP load balancer, to try a cluster on one machine
                     (README, section Cluster); each connection goes to the next live node
  help               show this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => return usage_error("no command given"),
    };
    let result = match command {
        "ci" | "openapi" | "msrv" if !rest.is_empty() => {
            return usage_error(&format!(
                "`{command}` takes no arguments, got `{}`",
                rest.join(" ")
            ));
        }
        "ci" => ci::run(),
        "openapi" => openapi::run(),
        "msrv" => msrv::run(),
        "bench" => match bench::Options::parse(rest) {
            Ok(options) => bench::run(&options),
            Err(e) => return usage_error(&e),
        },
        "fuzz" => match fuzz::Options::parse(rest) {
            Ok(options) => fuzz::run(&options),
            Err(e) => return usage_error(&e),
        },
        "soak" => match soak::Options::parse(rest) {
            Ok(options) => soak::run(&options),
            Err(e) => return usage_error(&e),
        },
        "balance" => balance::main(rest),
        "help" | "-h" | "--help" => {
            print!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        other => return usage_error(&format!("unknown command `{other}`")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Prints `problem` and the usage text to stderr; exit status 2, as for any usage error.
fn usage_error(problem: &str) -> ExitCode {
    eprintln!("xtask: {problem}\n\n{USAGE}");
    ExitCode::from(2)
}
