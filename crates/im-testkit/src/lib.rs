#![doc = include_str!("../README.md")]

pub mod bus;
mod moto;

pub use moto::{MOTO_KEY_ID, MOTO_REGION, MOTO_SECRET, MotoServer};

use tokio_postgres::NoTls;

/// The maintenance database tests connect to in order to create their own.
pub const DEFAULT_ADMIN_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// The admin URL in force: `IM_TEST_POSTGRES`, else [`DEFAULT_ADMIN_URL`].
pub fn admin_url() -> String {
    std::env::var("IM_TEST_POSTGRES").unwrap_or_else(|_| DEFAULT_ADMIN_URL.to_owned())
}

/// A database made for one test (`im_test_<random>`), dropped with this value.
#[derive(Debug)]
pub struct TempDatabase {
    name: String,
    url: String,
    admin: String,
}

async fn admin(url: &str) -> tokio_postgres::Client {
    let (client, conn) = match tokio_postgres::connect(url, NoTls).await {
        Ok(c) => c,
        Err(e) => panic!(
            "PostgreSQL is not reachable at {url} ({e}). These tests need it: start it \
             (`cargo xtask ci` does), or point IM_TEST_POSTGRES at one."
        ),
    };
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

impl TempDatabase {
    /// Creates a fresh, empty database. Panics with a clear message if PostgreSQL is not
    /// reachable: a test that needs it must fail, never skip.
    pub async fn create() -> Self {
        let admin_url = admin_url();
        let mut raw = [0u8; 8];
        getrandom::fill(&mut raw).expect("randomness");
        let name = format!(
            "im_test_{}",
            raw.iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        let client = admin(&admin_url).await;
        client
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .unwrap_or_else(|e| panic!("CREATE DATABASE {name}: {e}"));
        let url = with_database(&admin_url, &name);
        Self {
            name,
            url,
            admin: admin_url,
        }
    }

    /// The URL of the new database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl Drop for TempDatabase {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin.clone(), self.name.clone());
        // Drop may run inside a runtime, which cannot block on another: use a thread.
        let dropped = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .ok()?;
            rt.block_on(async {
                let client = admin(&admin_url).await;
                client
                    .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                    .await
                    .ok()
            })
        })
        .join();
        if !matches!(dropped, Ok(Some(()))) {
            eprintln!("im-testkit: could not drop database {}", self.name);
        }
    }
}

/// `url` with its database name replaced by `name`.
fn with_database(url: &str, name: &str) -> String {
    let (base, _) = url.rsplit_once('/').unwrap_or((url, ""));
    format!("{base}/{name}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn database_is_swapped_in_the_url() {
        assert_eq!(
            super::with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
    }
}
