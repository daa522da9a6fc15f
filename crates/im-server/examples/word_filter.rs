//! A custom channel handler: masks some words and rejects messages with others.
//!
//! Run: `cargo run -p im-server --example word_filter` (same flags as `im-server`).

use im_server::{ApiError, Config, Handler, ImServer, Pending};

/// Masks `masked` words with asterisks and rejects messages containing a `forbidden` word.
pub(crate) struct WordFilter {
    /// Rewritten to `****`.
    pub masked: Vec<String>,
    /// Rejected with 422 `forbidden_word`.
    pub forbidden: Vec<String>,
}

impl Handler for WordFilter {
    fn name(&self) -> &str {
        "word-filter"
    }

    fn handle(&self, msg: &mut Pending) -> Result<(), ApiError> {
        let Some(text) = msg.body.get("text").and_then(|t| t.as_str()) else {
            return Ok(()); // not a text message
        };
        let words = || {
            text.split(|c: char| !c.is_alphanumeric())
                .map(str::to_lowercase)
        };
        if let Some(bad) = words().find(|w| self.forbidden.contains(w)) {
            return Err(ApiError::custom(
                422,
                "forbidden_word",
                format!("`{bad}` is not allowed here"),
            ));
        }
        if words().any(|w| self.masked.contains(&w)) {
            let rewritten: String = text
                .split_inclusive(|c: char| !c.is_alphanumeric())
                .map(|piece| {
                    let word = piece.trim_end_matches(|c: char| !c.is_alphanumeric());
                    if self.masked.contains(&word.to_lowercase()) {
                        format!(
                            "{}{}",
                            "*".repeat(word.chars().count()),
                            &piece[word.len()..]
                        )
                    } else {
                        piece.to_owned()
                    }
                })
                .collect();
            msg.body["text"] = rewritten.into();
        }
        Ok(())
    }
}

/// The filter this example runs with.
pub(crate) fn demo_filter() -> WordFilter {
    WordFilter {
        masked: vec!["darn".into(), "heck".into()],
        forbidden: vec!["spam".into()],
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let (_, config) = Config::load(std::env::args().skip(1), std::env::vars())?;
    let server = ImServer::builder()
        .config(config)
        .handler(demo_filter())
        .bind()
        .await?;
    println!("word-filter server on http://{}", server.local_addr()?);
    server.run_until_signal().await?;
    Ok(())
}
