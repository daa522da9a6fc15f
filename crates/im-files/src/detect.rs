//! File types from magic bytes: the client's Content-Type is never trusted.

/// Types the browser may show inline: raster images only. SVG is an image but can carry
/// script, so it is an attachment like everything else.
pub const INLINE_TYPES: [&str; 4] = ["image/png", "image/jpeg", "image/gif", "image/webp"];

/// How many leading bytes [`sniff`] wants.
pub(crate) const SNIFF_LEN: usize = 512;

/// The content type of a file from its first bytes: binary magic numbers first, then markup
/// that browsers would run (SVG, HTML), then plain text.
pub fn sniff(head: &[u8]) -> &'static str {
    // Binary formats first: their magic bytes are unambiguous, whatever text follows.
    if let Some(kind) = infer::get(head).filter(|k| !k.mime_type().starts_with("text/")) {
        return kind.mime_type();
    }
    let text = head.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(head);
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let lower: Vec<u8> = text[start..]
        .iter()
        .take(256)
        .map(u8::to_ascii_lowercase)
        .collect();
    let has = |needle: &[u8]| lower.windows(needle.len()).any(|w| w == needle);
    if lower.starts_with(b"<svg") || (lower.starts_with(b"<?xml") && has(b"<svg")) {
        return "image/svg+xml";
    }
    if lower.starts_with(b"<!doctype html") || lower.starts_with(b"<html") || has(b"<script") {
        return "text/html";
    }
    // A cut in the middle of a multi-byte char at the end is still text.
    let valid = match std::str::from_utf8(head) {
        Ok(_) => true,
        Err(e) => e.error_len().is_none(),
    };
    if valid && !head.contains(&0) {
        "text/plain"
    } else {
        "application/octet-stream"
    }
}

/// Whether a sniffed type is served inline.
pub fn is_inline(content_type: &str) -> bool {
    INLINE_TYPES.contains(&content_type)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes_decide() {
        assert_eq!(sniff(b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR"), "image/png");
        assert_eq!(sniff(b"\xff\xd8\xff\xe0\0\x10JFIF"), "image/jpeg");
        assert_eq!(sniff(b"GIF89a...."), "image/gif");
        assert_eq!(sniff(b"RIFF\0\0\0\0WEBPVP8 "), "image/webp");
        assert_eq!(
            sniff(b"  <svg xmlns='http://www.w3.org/2000/svg'>"),
            "image/svg+xml"
        );
        assert_eq!(sniff(b"<?xml version='1.0'?><svg>"), "image/svg+xml");
        assert_eq!(sniff(b"<!DOCTYPE html><p>hi"), "text/html");
        assert_eq!(sniff(b"hello"), "text/plain");
        assert_eq!(sniff(b"\0\x01\x02\x03"), "application/octet-stream");
        assert_eq!(sniff(b"%PDF-1.7"), "application/pdf");
        assert_eq!(
            sniff(b"\x89PNG\r\n\x1a\n<script>"),
            "image/png",
            "magic bytes win"
        );
        assert!(is_inline("image/png") && !is_inline("image/svg+xml") && !is_inline("text/html"));
    }
}
