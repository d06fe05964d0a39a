//! Parsers for the byte-range headers: `Range` on blob GETs and
//! `Content-Range` on upload chunks.

use std::ops::Range;

/// A parsed `Range` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable single range: serve the whole blob (absent header, another
    /// unit, or several ranges, which RFC 9110 lets a server ignore).
    Full,
    /// `bytes=a-b`, `bytes=a-` or `bytes=-n`, resolved against the size.
    Bytes(Range<u64>),
    /// A `bytes=` range that is malformed or does not overlap the blob: 416.
    Unsatisfiable,
}

/// Resolve a `Range` header against a blob of `size` bytes.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(h) = header else {
        return RangeRequest::Full;
    };
    let h = h.trim();
    let Some(spec) = h.strip_prefix("bytes=") else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Unsatisfiable;
    };
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    let range = match (first.trim(), last.trim()) {
        ("", suffix) => match num(suffix) {
            Some(0) | None => return RangeRequest::Unsatisfiable,
            Some(n) => size.saturating_sub(n)..size,
        },
        (start, "") => match num(start) {
            Some(s) => s..size,
            None => return RangeRequest::Unsatisfiable,
        },
        (start, end) => match (num(start), num(end)) {
            (Some(s), Some(e)) if s <= e => s..e.saturating_add(1).min(size),
            _ => return RangeRequest::Unsatisfiable,
        },
    };
    if range.start >= size || range.start >= range.end {
        RangeRequest::Unsatisfiable
    } else {
        RangeRequest::Bytes(range)
    }
}

/// Parse an upload chunk's `Content-Range` into `(first, last)` inclusive.
/// The spec's form is `<first>-<last>`; `bytes <first>-<last>/<total>` and
/// `bytes=<first>-<last>`, which clients also send, are accepted.
pub fn parse_content_range(header: &str) -> Option<(u64, u64)> {
    let h = header.trim();
    let h = h.strip_prefix("bytes=").or_else(|| h.strip_prefix("bytes ")).unwrap_or(h);
    let h = h.split_once('/').map(|(r, _)| r).unwrap_or(h);
    let (a, b) = h.split_once('-')?;
    let num = |s: &str| -> Option<u64> {
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|c| c.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    let (a, b) = (num(a)?, num(b)?);
    (a <= b).then_some((a, b))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn check(header: Option<&str>, size: u64, expected: RangeRequest) {
        assert_eq!(parse_range(header, size), expected, "{header:?} of {size}");
    }

    #[test]
    fn range_table() {
        use RangeRequest::*;
        check(None, 100, Full);
        check(Some("bytes=0-9"), 100, Bytes(0..10));
        check(Some("bytes=10-"), 100, Bytes(10..100));
        check(Some("bytes=-10"), 100, Bytes(90..100));
        check(Some("bytes=-1000"), 100, Bytes(0..100));
        check(Some("bytes=90-1000"), 100, Bytes(90..100));
        check(Some("bytes=99-99"), 100, Bytes(99..100));
        check(Some("bytes=100-"), 100, Unsatisfiable);
        check(Some("bytes=100-200"), 100, Unsatisfiable);
        check(Some("bytes=5-2"), 100, Unsatisfiable);
        check(Some("bytes=-0"), 100, Unsatisfiable);
        check(Some("bytes=abc"), 100, Unsatisfiable);
        check(Some("bytes=a-b"), 100, Unsatisfiable);
        check(Some("bytes=-"), 100, Unsatisfiable);
        check(Some("bytes=+1-2"), 100, Unsatisfiable);
        check(Some("bytes=99999999999999999999999-"), 100, Unsatisfiable);
        check(Some("bytes=0-0"), 0, Unsatisfiable);
        check(Some("bytes=0-1,5-6"), 100, Full);
        check(Some("items=0-1"), 100, Full);
    }

    #[test]
    fn content_range_table() {
        assert_eq!(parse_content_range("0-99"), Some((0, 99)));
        assert_eq!(parse_content_range("bytes 100-199/*"), Some((100, 199)));
        assert_eq!(parse_content_range("bytes=100-199"), Some((100, 199)));
        assert_eq!(parse_content_range("5-5"), Some((5, 5)));
        for bad in ["", "-", "1-", "-1", "5-4", "a-b", "0-1-2", "bytes", " -1", "0x1-2", "99999999999999999999999-1"] {
            assert_eq!(parse_content_range(bad), None, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn range_is_always_inside_the_blob(h in "\\PC{0,40}", size in 0u64..10_000) {
            if let RangeRequest::Bytes(r) = parse_range(Some(&h), size) {
                prop_assert!(r.start < r.end && r.end <= size);
            }
        }

        #[test]
        fn valid_ranges_roundtrip(a in 0u64..1000, len in 1u64..1000, size in 1u64..3000) {
            let h = format!("bytes={}-{}", a, a + len - 1);
            match parse_range(Some(&h), size) {
                RangeRequest::Bytes(r) => { prop_assert_eq!(r.start, a); prop_assert_eq!(r.end, (a + len).min(size)); }
                RangeRequest::Unsatisfiable => prop_assert!(a >= size),
                RangeRequest::Full => prop_assert!(false),
            }
        }

        #[test]
        fn content_range_never_panics(h in "\\PC{0,40}") {
            if let Some((a, b)) = parse_content_range(&h) { prop_assert!(a <= b); }
        }
    }
}
