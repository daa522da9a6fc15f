//! The `Range` header, single ranges only (several ranges get the whole file, which RFC 9110
//! allows).

/// What to send for a request's `Range` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeReply {
    /// 200 with everything.
    Full,
    /// 206 with bytes `start..=end`.
    Partial {
        /// First byte.
        start: u64,
        /// Last byte, inclusive.
        end: u64,
    },
    /// 416: the range is outside the file.
    Unsatisfiable,
}

/// Interprets `header` for a file of `size` bytes.
pub fn parse(header: Option<&str>, size: u64) -> RangeReply {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeReply::Full;
    };
    if spec.contains(',') {
        return RangeReply::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReply::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => b.parse::<u64>().ok().map(|n| {
            if n == 0 || size == 0 {
                None
            } else {
                Some((size.saturating_sub(n), size - 1))
            }
        }),
        (false, _) => a.parse::<u64>().ok().and_then(|start| {
            let end = if b.is_empty() {
                Some(u64::MAX)
            } else {
                b.parse::<u64>().ok()
            }?;
            if end < start {
                return None;
            }
            Some(if start >= size {
                None
            } else {
                Some((start, end.min(size - 1)))
            })
        }),
        (true, true) => None,
    };
    match parsed {
        None => RangeReply::Full,
        Some(None) => RangeReply::Unsatisfiable,
        Some(Some((start, end))) => RangeReply::Partial { start, end },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn forms() {
        assert_eq!(
            parse(Some("bytes=0-99"), 1000),
            RangeReply::Partial { start: 0, end: 99 }
        );
        assert_eq!(
            parse(Some("bytes=900-"), 1000),
            RangeReply::Partial {
                start: 900,
                end: 999
            }
        );
        assert_eq!(
            parse(Some("bytes=-10"), 1000),
            RangeReply::Partial {
                start: 990,
                end: 999
            }
        );
        assert_eq!(
            parse(Some("bytes=0-5000"), 1000),
            RangeReply::Partial { start: 0, end: 999 }
        );
        assert_eq!(parse(Some("bytes=1000-"), 1000), RangeReply::Unsatisfiable);
        assert_eq!(parse(Some("bytes=-0"), 1000), RangeReply::Unsatisfiable);
        assert_eq!(parse(Some("bytes=5-1"), 1000), RangeReply::Full);
        assert_eq!(parse(Some("bytes=0-1,5-6"), 1000), RangeReply::Full);
        assert_eq!(parse(Some("items=0-1"), 1000), RangeReply::Full);
        assert_eq!(parse(None, 1000), RangeReply::Full);
    }

    proptest! {
        #[test]
        fn partial_ranges_lie_inside_the_file(h in "bytes=[0-9]{0,4}-[0-9]{0,4}", size in 0u64..5000) {
            if let RangeReply::Partial { start, end } = parse(Some(&h), size) {
                prop_assert!(start <= end && end < size);
            }
        }

        #[test]
        fn never_panics(h in any::<String>(), size in any::<u64>()) {
            let _ = parse(Some(&h), size);
        }
    }
}
