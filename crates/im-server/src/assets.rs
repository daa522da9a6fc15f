//! The web client's static files, embedded in the binary so `cargo run` serves them with no
//! other setup.

use std::hash::{Hash, Hasher};
use std::sync::OnceLock;

/// One embedded file.
pub(crate) struct Asset {
    pub path: &'static str,
    pub content_type: &'static str,
    pub body: &'static [u8],
}

impl Asset {
    const fn new(path: &'static str, content_type: &'static str, body: &'static [u8]) -> Self {
        Asset {
            path,
            content_type,
            body,
        }
    }

    /// A strong validator for `If-None-Match`, from the bytes.
    pub(crate) fn etag(&self) -> &'static str {
        static TAGS: OnceLock<Vec<String>> = OnceLock::new();
        let tags = TAGS.get_or_init(|| {
            ASSETS
                .iter()
                .map(|a| {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    a.body.hash(&mut h);
                    format!("\"{:016x}\"", h.finish())
                })
                .collect()
        });
        let i = ASSETS.iter().position(|a| a.path == self.path).unwrap_or(0);
        &tags[i]
    }
}

const JS: &str = "text/javascript; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";

/// Every file of the web client, by the path it is served at (`tests/openapi.rs` reads the
/// paths from this list's source).
pub(crate) const ASSETS: &[Asset] = &[
    Asset::new("/", HTML, include_bytes!("../web/index.html")),
    Asset::new("/app.js", JS, include_bytes!("../web/app.js")),
    Asset::new("/app/format.js", JS, include_bytes!("../web/app/format.js")),
    Asset::new("/app/dom.js", JS, include_bytes!("../web/app/dom.js")),
    Asset::new("/app/state.js", JS, include_bytes!("../web/app/state.js")),
    Asset::new(
        "/app/sidebar.js",
        JS,
        include_bytes!("../web/app/sidebar.js"),
    ),
    Asset::new("/app/chat.js", JS, include_bytes!("../web/app/chat.js")),
    Asset::new(
        "/app/account.js",
        JS,
        include_bytes!("../web/app/account.js"),
    ),
    Asset::new("/app/events.js", JS, include_bytes!("../web/app/events.js")),
    Asset::new("/im-client.js", JS, include_bytes!("../web/im-client.js")),
    Asset::new("/app.css", CSS, include_bytes!("../web/app.css")),
];

/// The page's Content-Security-Policy: only our own scripts, styles and connections; images
/// also from `blob:` and `data:` (previews). No inline script anywhere.
pub(crate) const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
    img-src 'self' blob: data:; connect-src 'self'; object-src 'none'; base-uri 'none'; \
    frame-ancestors 'none'; form-action 'self'";

/// The embedded file at `path`.
pub(crate) fn find(path: &str) -> Option<&'static Asset> {
    ASSETS.iter().find(|a| a.path == path)
}
