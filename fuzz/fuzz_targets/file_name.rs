//! File-name sanitizing: the result is safe to show and to put in a URL and a header, and
//! sanitizing it again changes nothing.
#![no_main]

use im_files::{content_disposition, percent_decode, percent_encode, sanitize};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|raw: &str| {
    let name = sanitize(raw);
    assert!(!name.is_empty());
    assert!(name.chars().count() <= 128, "{name:?}");
    assert!(!name.starts_with('.'), "{name:?}");
    assert!(
        !name
            .chars()
            .any(|c| c.is_control() || matches!(c, '/' | '\\' | '"' | '<' | '>' | ':' | '*' | '?' | '|')),
        "{name:?}"
    );
    assert_eq!(sanitize(&name), name, "not idempotent");
    assert_eq!(percent_decode(&percent_encode(&name)).as_deref(), Some(name.as_str()));
    let header = content_disposition(false, &name);
    assert!(!header.contains(['\r', '\n']), "{header:?}");
});
