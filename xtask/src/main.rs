//! `cargo xtask`: the workspace's automation, written in Rust instead of shell scripts.
//!
//! - `cargo xtask ci` is the gate every change passes: formatting, clippy with warnings as
//!   errors, every test target, then the doc tests. `.ci/run` and the GitHub workflow call it.
//! - `cargo xtask bench [--quick]` runs the criterion micro-benchmarks and writes their
//!   medians into `docs/BENCHMARKS.md`.
//!
//! Nothing here is needed at runtime, and it depends on no crate of the workspace.

mod bench;
mod ci;
mod util;

use std::process::ExitCode;

/// The help text, printed by `help` and on a usage error.
const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci                 cargo fmt --check, clippy -D warnings, all tests, doc tests (fails fast)
  bench [--quick]    run the criterion micro-benchmarks and update docs/BENCHMARKS.md
                     (--quick: criterion's quick mode, rougher numbers in far less time)
  help               show this text
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (command, rest) = match args.split_first() {
        Some((command, rest)) => (command.as_str(), rest),
        None => return usage_error("no command given"),
    };
    let result = match command {
        "ci" if rest.is_empty() => ci::run(),
        "ci" => {
            return usage_error(&format!(
                "`ci` takes no arguments, got `{}`",
                rest.join(" ")
            ));
        }
        "bench" => match bench::Options::parse(rest) {
            Ok(options) => bench::run(&options),
            Err(e) => return usage_error(&e),
        },
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
