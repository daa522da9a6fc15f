//! The `im-server` binary: configuration from file, environment and flags, then serve.

use im_server::{Command, Config, ImServer};
use std::process::ExitCode;

mod trim;

fn main() -> ExitCode {
    let (command, config) = match Config::load(std::env::args().skip(1), std::env::vars()) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("im-server: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Help(text) => {
            println!("{text}");
            return ExitCode::SUCCESS;
        }
        Command::Version => {
            println!("im-server {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        Command::Run => {}
    }
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&config.log))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    for var in &config.ignored_env {
        tracing::warn!(%var, "ignoring an IM_ variable that names no setting");
    }

    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    runtime
        .enable_all()
        .max_blocking_threads(config.workers.blocking_threads.max(1));
    if config.workers.runtime_threads > 0 {
        runtime.worker_threads(config.workers.runtime_threads);
    }
    let runtime = match runtime.build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("im-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    trim::spawn();
    let result = runtime.block_on(async {
        let server = match ImServer::builder().config(config).bind().await {
            Ok(server) => server,
            // Anything that stops start-up is a configuration or environment problem: say it
            // on one line and exit 2, never start half-working.
            Err(e) => return Err((e, ExitCode::from(2))),
        };
        let addr = server.local_addr().map_err(|source| {
            let e = im_server::ServerError::Io {
                context: "reading the bound address".into(),
                source,
            };
            (e, ExitCode::FAILURE)
        })?;
        // Tests and scripts read this line to find the port when listening on :0.
        let scheme = if server.is_tls() { "https" } else { "http" };
        println!("im-server listening on {scheme}://{addr}");
        tracing::info!(%addr, "listening");
        server
            .run_until_signal()
            .await
            .map_err(|e| (e, ExitCode::FAILURE))
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err((e, code)) => {
            eprintln!("im-server: {e}");
            code
        }
    }
}
