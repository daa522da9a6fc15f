//! File names: sanitized for storage and display, encoded for URLs and headers.

/// A safe display name: the last path component, without control characters or quotes,
/// at most 128 characters; `file` if nothing is left.
pub fn sanitize(raw: &str) -> String {
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .filter(|c| {
            !c.is_control()
                && !is_format(*c)
                && !matches!(c, '"' | '<' | '>' | ':' | '*' | '?' | '|')
        })
        .take(128)
        .collect();
    // Dots and spaces in any mix (". .."), so no name is hidden or looks like a parent.
    let trimmed = cleaned
        .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
        .trim_end();
    if trimmed.is_empty() {
        "file".to_owned()
    } else {
        trimmed.to_owned()
    }
}

/// Unicode format characters (category Cf): invisible, and some reorder what is shown, so
/// `invoice\u{202e}gnp.exe` would display as `invoiceexe.png`.
fn is_format(c: char) -> bool {
    matches!(c as u32,
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F | 0xFEFF
        | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F | 0x1BCA0..=0x1BCA3
        | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F)
}

/// Percent-encodes everything but unreserved characters (RFC 3986), for URL paths and
/// RFC 5987 header values.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decodes `%XX` escapes; `None` if malformed or not UTF-8.
pub fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// `Content-Disposition` for a name: an ASCII fallback plus the exact UTF-8 name.
pub fn content_disposition(inline: bool, name: &str) -> String {
    let kind = if inline { "inline" } else { "attachment" };
    let ascii: String = name
        .chars()
        .map(|c| {
            if c.is_ascii() && !c.is_ascii_control() && c != '\\' {
                c
            } else {
                '_'
            }
        })
        .collect();
    format!(
        "{kind}; filename=\"{ascii}\"; filename*=UTF-8''{}",
        percent_encode(name)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn sanitizing() {
        assert_eq!(sanitize("../../etc/passwd"), "passwd");
        assert_eq!(sanitize("C:\\Users\\x\\photo.png"), "photo.png");
        assert_eq!(sanitize("a\"b\nc.txt"), "abc.txt");
        assert_eq!(sanitize(".."), "file");
        assert_eq!(sanitize(""), "file");
        assert_eq!(sanitize(".hidden"), "hidden");
        // Found by the file_name fuzz target: dots and spaces mixed.
        assert_eq!(sanitize(". \"..\u{0}x"), "x");
        assert_eq!(sanitize(". .."), "file");
        assert_eq!(
            content_disposition(false, "ünï.txt"),
            "attachment; filename=\"_n_.txt\"; filename*=UTF-8''%C3%BCn%C3%AF.txt"
        );
    }

    proptest! {
        #[test]
        fn encode_decode_roundtrip(s in any::<String>()) {
            prop_assert_eq!(percent_decode(&percent_encode(&s)), Some(s));
        }

        #[test]
        fn sanitized_names_are_safe(s in any::<String>()) {
            let n = sanitize(&s);
            prop_assert!(!n.is_empty() && n.chars().count() <= 128);
            prop_assert!(!n.contains(['/', '\\', '"']) && !n.chars().any(char::is_control));
            prop_assert!(!n.starts_with('.'));
            prop_assert_eq!(sanitize(&n), n.clone(), "sanitizing is idempotent");
        }
    }
}
