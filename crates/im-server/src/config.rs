//! Configuration: a TOML file (`--config`), then `IM_*` environment variables, then flags,
//! each overriding the one before.
//!
//! Environment variables name keys in upper case; a double underscore enters a table:
//! `IM_LISTEN=0.0.0.0:8080`, `IM_SSE__KEEPALIVE_SECS=10`.

use im_users::DirectMessages;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::PathBuf;
use toml::{Table, Value};

/// Why configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The failure.
        source: std::io::Error,
    },
    /// The config file, a variable or a flag has a bad value.
    #[error("invalid configuration: {0}")]
    Invalid(String),
    /// A flag is unknown or lacks its value.
    #[error("{0}\n\n{USAGE}")]
    Usage(String),
}

/// Command-line help.
pub const USAGE: &str = "usage: im-server [--config FILE] [--listen ADDR] [--data-dir DIR]

  --config FILE    TOML configuration file (see docs/API.md, \"Configuration\")
  --listen ADDR    address to listen on (default 127.0.0.1:8080)
  --data-dir DIR   where the SQLite store and files live (default ./im-data)

Environment variables IM_<KEY> (and IM_<TABLE>__<KEY>) override the file; flags override both.";

/// Everything the server can be told; every field has a default.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listen address.
    pub listen: SocketAddr,
    /// Data directory of the embedded store (and of uploaded files by default).
    pub data_dir: PathBuf,
    /// Where the truth lives: `sqlite` (embedded, one node) or `postgres` (any number of
    /// nodes on one database).
    pub store: StoreKind,
    /// `[postgres]`: the database of a cluster.
    pub postgres: PostgresSection,
    /// Who may message whom directly.
    pub direct_messages: DirectMessages,
    /// Log filter in `tracing` syntax; `RUST_LOG` wins when set.
    pub log: String,
    /// Cap on a `POST /messages` body.
    pub max_message_bytes: usize,
    /// Cap on other JSON bodies.
    pub max_json_bytes: usize,
    /// How long shutdown waits for connections after ending event streams.
    pub shutdown_grace_secs: u64,
    /// Marks the session cookie `Secure` (set it behind HTTPS).
    pub cookie_secure: bool,
    /// Milliseconds a user with no open stream still counts as online, so reloads do not flap.
    pub presence_grace_ms: u64,
    /// Extra origins allowed to make cookie-authenticated writes, e.g. `https://chat.example`.
    pub allowed_origins: Vec<String>,
    /// Event stream tuning.
    pub sse: SseConfig,
    /// Dispatcher sizing.
    pub workers: WorkerConfig,
    /// Password hashing cost.
    pub argon2: Argon2Config,
    /// The file proxy.
    pub files: FilesSection,
    /// `IM_*` variables that name no setting; ignored, and logged at start-up so a typo is
    /// visible without unrelated variables stopping the server.
    #[serde(skip)]
    pub ignored_env: Vec<String>,
}

/// Which store adapter holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// SQLite under `data_dir`: one process, no service needed.
    #[default]
    Sqlite,
    /// PostgreSQL at `postgres.url`: every node of a deployment shares it.
    Postgres,
}

/// `[postgres]`: the database of a cluster.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct PostgresSection {
    /// `postgres://user@host:port/database`; required with `store = "postgres"`.
    pub url: String,
    /// Pooled connections for reads; 0 means the default (16).
    pub pool_size: usize,
}

/// `[sse]`: event stream tuning.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SseConfig {
    /// Seconds between keep-alive comments (at most 20 for proxies).
    pub keepalive_secs: u64,
    /// Frames queued per session before a slow session is closed.
    pub mailbox: usize,
    /// Most messages replayed on resume before `resync` is sent instead.
    pub resume_limit: usize,
    /// The `retry:` hint in milliseconds.
    pub retry_ms: u64,
    /// Open streams one user may hold on a node; opening one more closes that user's oldest
    /// (so a user with many tabs keeps working). 0 means no limit.
    pub max_streams_per_user: usize,
}

/// `[workers]`: dispatcher sizing; 0 means one per core.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// Shards per channel group.
    pub channel_shards: usize,
    /// Bounded queue per channel shard; full answers 503.
    pub channel_queue: usize,
    /// Consumer pool workers.
    pub pool_workers: usize,
    /// Bounded queue per pool worker.
    pub pool_queue: usize,
}

/// `[argon2]`: password hashing cost.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Argon2Config {
    /// Memory per hash in KiB.
    pub memory_kib: u32,
    /// Passes.
    pub iterations: u32,
    /// Hashes computed at once.
    pub concurrency: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data_dir: PathBuf::from("./im-data"),
            store: StoreKind::Sqlite,
            postgres: PostgresSection::default(),
            direct_messages: DirectMessages::Friends,
            log: "info".into(),
            max_message_bytes: 64 * 1024,
            max_json_bytes: 16 * 1024,
            shutdown_grace_secs: 4,
            cookie_secure: false,
            presence_grace_ms: 5000,
            allowed_origins: Vec::new(),
            sse: SseConfig::default(),
            workers: WorkerConfig::default(),
            argon2: Argon2Config::default(),
            files: FilesSection::default(),
            ignored_env: Vec::new(),
        }
    }
}

/// Where uploaded bytes live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FilesBackend {
    /// A directory (`files.dir`); for a cluster, one that every node mounts.
    #[default]
    Dir,
}

/// `[files]`: the file proxy.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesSection {
    /// Where the bytes live.
    pub backend: FilesBackend,
    /// The directory of the `dir` backend; `<data_dir>/files` if unset. Every node of a
    /// cluster must name the same shared directory.
    pub dir: Option<PathBuf>,
    /// The most bytes one upload may have.
    pub max_bytes: u64,
    /// Seconds a file link lives.
    pub ttl_secs: u64,
    /// Seconds between sweeps of expired files.
    pub sweep_secs: u64,
    /// Bytes of live files one user may hold; 0 means no limit.
    pub quota_bytes: u64,
}

impl Default for FilesSection {
    fn default() -> Self {
        Self {
            backend: FilesBackend::Dir,
            dir: None,
            max_bytes: 25 * 1024 * 1024,
            ttl_secs: 24 * 3600,
            sweep_secs: 60,
            quota_bytes: 0,
        }
    }
}

impl Default for SseConfig {
    fn default() -> Self {
        Self {
            keepalive_secs: 15,
            mailbox: 1024,
            resume_limit: 10_000,
            retry_ms: 2000,
            max_streams_per_user: 16,
        }
    }
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            channel_shards: 0,
            channel_queue: 4096,
            pool_workers: 0,
            pool_queue: 8192,
        }
    }
}

impl Default for Argon2Config {
    fn default() -> Self {
        let d = im_users::HashParams::default();
        Self {
            memory_kib: d.memory_kib,
            iterations: d.iterations,
            concurrency: d.concurrency,
        }
    }
}

/// What the command line asked for besides configuration.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// Run the server.
    Run,
    /// Print usage.
    Help,
    /// Print the version.
    Version,
}

impl Config {
    /// Loads the layers: file from `--config`, then `vars` (`IM_*`), then the other flags.
    pub fn load(
        args: impl IntoIterator<Item = String>,
        vars: impl IntoIterator<Item = (String, String)>,
    ) -> Result<(Command, Config), ConfigError> {
        let mut file = None;
        let mut flags = Table::new();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            let (name, inline) = match arg.split_once('=') {
                Some((n, v)) => (n.to_owned(), Some(v.to_owned())),
                None => (arg.clone(), None),
            };
            let mut value = || {
                inline
                    .clone()
                    .or_else(|| args.next())
                    .ok_or_else(|| ConfigError::Usage(format!("{name} needs a value")))
            };
            match name.as_str() {
                "-h" | "--help" => return Ok((Command::Help, Config::default())),
                "-V" | "--version" => return Ok((Command::Version, Config::default())),
                "--config" => file = Some(PathBuf::from(value()?)),
                "--listen" => {
                    flags.insert("listen".into(), Value::String(value()?));
                }
                "--data-dir" => {
                    flags.insert("data_dir".into(), Value::String(value()?));
                }
                other => return Err(ConfigError::Usage(format!("unknown argument `{other}`"))),
            }
        }
        let mut table = match &file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                text.parse::<Table>().map_err(|e| {
                    ConfigError::Invalid(format!(
                        "{}: {}",
                        path.display(),
                        one_line(&e.to_string())
                    ))
                })?
            }
            None => Table::new(),
        };
        let mut ignored_env = Vec::new();
        for (var, raw) in vars {
            let Some(key) = var.strip_prefix("IM_") else {
                continue;
            };
            let path: Vec<String> = key.split("__").map(str::to_lowercase).collect();
            if !KEYS.contains(&path[0].as_str()) {
                ignored_env.push(var);
                continue;
            }
            set_path(&mut table, &path, parse_scalar(&raw))?;
        }
        for (k, v) in flags {
            table.insert(k, v);
        }
        let mut config: Config = Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(one_line(&e.to_string())))?;
        config.ignored_env = ignored_env;
        config.check()?;
        Ok((Command::Run, config))
    }

    /// Refuses combinations that would start a half-working server.
    fn check(&self) -> Result<(), ConfigError> {
        if self.store == StoreKind::Postgres && self.postgres.url.trim().is_empty() {
            return Err(ConfigError::Invalid(
                "store = \"postgres\" needs postgres.url (IM_POSTGRES__URL)".into(),
            ));
        }
        // Nodes of a cluster serve each other's uploads: a per-node default directory would
        // give links that work on one node only.
        if self.store == StoreKind::Postgres && self.files.dir.is_none() {
            return Err(ConfigError::Invalid(
                "store = \"postgres\" needs files.dir, a directory every node shares \
                 (IM_FILES__DIR)"
                    .into(),
            ));
        }
        Ok(())
    }

    /// The directory uploaded bytes go to.
    pub fn files_dir(&self) -> PathBuf {
        self.files
            .dir
            .clone()
            .unwrap_or_else(|| self.data_dir.join("files"))
    }
}

/// A multi-line parser message on one line, so start-up failures are one line in the log.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Top-level settings an `IM_*` variable may name.
const KEYS: &[&str] = &[
    "listen",
    "data_dir",
    "store",
    "postgres",
    "direct_messages",
    "log",
    "max_message_bytes",
    "max_json_bytes",
    "shutdown_grace_secs",
    "cookie_secure",
    "presence_grace_ms",
    "allowed_origins",
    "sse",
    "workers",
    "argon2",
    "files",
];

/// Reads an environment value as TOML when it parses (numbers, booleans, arrays), else as a
/// plain string, so `IM_LISTEN=127.0.0.1:1` needs no quoting.
fn parse_scalar(raw: &str) -> Value {
    format!("v = {raw}")
        .parse::<Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| Value::String(raw.to_owned()))
}

fn set_path(table: &mut Table, path: &[String], value: Value) -> Result<(), ConfigError> {
    match path {
        [] => Ok(()),
        [last] => {
            table.insert(last.clone(), value);
            Ok(())
        }
        [head, rest @ ..] => {
            let entry = table
                .entry(head.clone())
                .or_insert_with(|| Value::Table(Table::new()));
            match entry {
                Value::Table(t) => set_path(t, rest, value),
                _ => Err(ConfigError::Invalid(format!("`{head}` is not a table"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn layers_override_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("im.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:1\"\ndata_dir = \"/from-file\"\ndirect_messages = \"anyone\"\n[sse]\nkeepalive_secs = 3\n",
        )
        .unwrap();
        let vars = vec![
            ("IM_LISTEN".to_owned(), "127.0.0.1:2".to_owned()),
            ("IM_SSE__MAILBOX".to_owned(), "7".to_owned()),
            ("PATH".to_owned(), "/bin".to_owned()),
        ];
        let args = s(&["--config", file.to_str().unwrap(), "--data-dir=/from-flag"]);
        let (cmd, c) = Config::load(args, vars).unwrap();
        assert_eq!(cmd, Command::Run);
        assert_eq!(c.listen.port(), 2);
        assert_eq!(c.data_dir, PathBuf::from("/from-flag"));
        assert_eq!(c.direct_messages, DirectMessages::Anyone);
        assert_eq!((c.sse.keepalive_secs, c.sse.mailbox), (3, 7));
        let (_, c) = Config::load(s(&["--listen", "127.0.0.1:3"]), vec![]).unwrap();
        assert_eq!(c.listen.port(), 3);
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(matches!(
            Config::load(s(&["--nope"]), vec![]),
            Err(ConfigError::Usage(_))
        ));
        assert!(matches!(
            Config::load(s(&["--listen"]), vec![]),
            Err(ConfigError::Usage(_))
        ));
        let vars = vec![("IM_DIRECT_MESSAGES".to_owned(), "nobody".to_owned())];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(_))
        ));
        let vars = vec![("IM_SSE__TYPO".to_owned(), "1".to_owned())];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(_))
        ));
        // An unrelated IM_ variable is reported, not fatal.
        let vars = vec![("IM_TYPO".to_owned(), "1".to_owned())];
        assert_eq!(
            Config::load(vec![], vars).unwrap().1.ignored_env,
            vec!["IM_TYPO"]
        );
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), "typo = 1").unwrap();
        let args = vec!["--config".to_owned(), file.path().display().to_string()];
        assert!(matches!(
            Config::load(args, vec![]),
            Err(ConfigError::Invalid(_))
        ));
        assert_eq!(
            Config::load(s(&["--help"]), vec![]).unwrap().0,
            Command::Help
        );
        let vars = vec![("IM_STORE".to_owned(), "postgres".to_owned())];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(e)) if e.contains("postgres.url")
        ));
        let vars = vec![("IM_STORE".to_owned(), "oracle".to_owned())];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(_))
        ));
    }

    #[test]
    fn postgres_from_the_environment() {
        let vars = vec![
            ("IM_FILES__DIR".to_owned(), "/shared/files".to_owned()),
            ("IM_STORE".to_owned(), "postgres".to_owned()),
            (
                "IM_POSTGRES__URL".to_owned(),
                "postgres://im@127.0.0.1:5432/im".to_owned(),
            ),
        ];
        let (_, c) = Config::load(vec![], vars).unwrap();
        assert_eq!(c.store, StoreKind::Postgres);
        assert_eq!(c.postgres.url, "postgres://im@127.0.0.1:5432/im");
        assert_eq!(c.files_dir(), PathBuf::from("/shared/files"));
        let vars = vec![
            ("IM_STORE".to_owned(), "postgres".to_owned()),
            ("IM_POSTGRES__URL".to_owned(), "postgres://h/im".to_owned()),
        ];
        assert!(matches!(
            Config::load(vec![], vars),
            Err(ConfigError::Invalid(e)) if e.contains("files.dir")
        ));
    }
}
