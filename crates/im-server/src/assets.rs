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

pub(crate) const ASSETS: &[Asset] = &[
    Asset {
        path: "/",
        content_type: "text/html; charset=utf-8",
        body: include_bytes!("../web/index.html"),
    },
    Asset {
        path: "/app.js",
        content_type: JS,
        body: include_bytes!("../web/app.js"),
    },
    Asset {
        path: "/app/format.js",
        content_type: JS,
        body: include_bytes!("../web/app/format.js"),
    },
    Asset {
        path: "/app/dom.js",
        content_type: JS,
        body: include_bytes!("../web/app/dom.js"),
    },
    Asset {
        path: "/app/state.js",
        content_type: JS,
        body: include_bytes!("../web/app/state.js"),
    },
    Asset {
        path: "/app/sidebar.js",
        content_type: JS,
        body: include_bytes!("../web/app/sidebar.js"),
    },
    Asset {
        path: "/app/chat.js",
        content_type: JS,
        body: include_bytes!("../web/app/chat.js"),
    },
    Asset {
        path: "/app/account.js",
        content_type: JS,
        body: include_bytes!("../web/app/account.js"),
    },
    Asset {
        path: "/app/events.js",
        content_type: JS,
        body: include_bytes!("../web/app/events.js"),
    },
    Asset {
        path: "/im-client.js",
        content_type: JS,
        body: include_bytes!("../web/im-client.js"),
    },
    Asset {
        path: "/app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../web/app.css"),
    },
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
