//! Debian version ordering, as `dpkg --compare-versions` defines it:
//! `[epoch:]upstream[-revision]`; the epoch compares as a number; upstream
//! and revision compare by alternating runs of non-digits (`~` before
//! everything, even the end; letters before other characters) and digits
//! (numerically).

use std::cmp::Ordering;

/// A parsed Debian version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebVersion<'a> {
    epoch: u64,
    upstream: &'a str,
    revision: &'a str,
}

/// Parse `[epoch:]upstream[-revision]`. `None` for what dpkg refuses: an
/// empty upstream, a non-numeric epoch, an upstream not starting with a
/// digit is accepted (dpkg only warns), characters outside the allowed set
/// are not.
pub fn parse(v: &str) -> Option<DebVersion<'_>> {
    let v = v.trim();
    let (epoch, rest) = match v.split_once(':') {
        Some((e, rest)) => {
            if e.is_empty() || !e.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            (e.parse::<u64>().ok()?, rest)
        }
        None => (0, v),
    };
    let (upstream, revision) = match rest.rfind('-') {
        Some(i) => (&rest[..i], &rest[i + 1..]),
        None => (rest, ""),
    };
    if upstream.is_empty() || (revision.is_empty() && rest.ends_with('-')) {
        return None;
    }
    let allowed = |b: u8| b.is_ascii_alphanumeric() || b"~+.-:".contains(&b);
    if !upstream.bytes().all(allowed) || !revision.bytes().all(|b| allowed(b) && b != b'-' && b != b':') {
        return None;
    }
    Some(DebVersion { epoch, upstream, revision })
}

/// Compare two Debian versions; `None` when either does not parse.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let (a, b) = (parse(a)?, parse(b)?);
    Some(a.epoch.cmp(&b.epoch).then_with(|| part(a.upstream, b.upstream)).then_with(|| part(a.revision, b.revision)))
}

/// The weight of one character in a non-digit run; `None` is the end.
fn weight(c: Option<u8>) -> i32 {
    match c {
        None => 0,
        Some(b'~') => -1,
        Some(c) if c.is_ascii_digit() => 0,
        Some(c) if c.is_ascii_alphabetic() => i32::from(c),
        Some(c) => i32::from(c) + 256,
    }
}

fn part(a: &str, b: &str) -> Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let digit = |s: &[u8], k: usize| s.get(k).is_some_and(u8::is_ascii_digit);
    while i < a.len() || j < b.len() {
        // A run of non-digits.
        while (i < a.len() && !digit(a, i)) || (j < b.len() && !digit(b, j)) {
            let (wa, wb) = (weight(a.get(i).copied()), weight(b.get(j).copied()));
            if wa != wb {
                return wa.cmp(&wb);
            }
            i += 1;
            j += 1;
        }
        // A run of digits, compared as numbers of any length.
        while i < a.len() && a[i] == b'0' {
            i += 1;
        }
        while j < b.len() && b[j] == b'0' {
            j += 1;
        }
        let mut first = Ordering::Equal;
        while digit(a, i) && digit(b, j) {
            if first == Ordering::Equal {
                first = a[i].cmp(&b[j]);
            }
            i += 1;
            j += 1;
        }
        if digit(a, i) {
            return Ordering::Greater;
        }
        if digit(b, j) {
            return Ordering::Less;
        }
        if first != Ordering::Equal {
            return first;
        }
    }
    Ordering::Equal
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn policy_examples() {
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0~rc1", "1.0", Less),
            ("1.0~~", "1.0~", Less),
            ("1.0~", "1.0", Less),
            ("1.0", "1.0+b1", Less),
            ("1.0a", "1.0+", Less),
            ("1:0.1", "2.0", Greater),
            ("2.30-1", "2.30-1+deb12u1", Less),
            ("1.2.10", "1.2.9", Greater),
            ("1.002", "1.2", Equal),
            ("0:1.0", "1.0", Equal),
            ("1.0-1", "1.0-1ubuntu0.1", Less),
            ("7.88.1-10+deb12u5", "7.88.1-10+deb12u12", Less),
            ("1.0-0", "1.0", Equal),
            ("a", "b", Less),
            ("1.0.", "1.0", Greater),
        ] {
            assert_eq!(compare(a, b), Some(want), "{a} vs {b}");
            assert_eq!(compare(b, a), Some(want.reverse()), "{b} vs {a}");
        }
    }

    #[test]
    fn refuses_what_dpkg_refuses() {
        for bad in ["", "x:1.0", ":1", "1.0 2", "1:", "-1", "1.0-a_b", "1.0-"] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
        let v = parse("2:1.2-3-4").unwrap();
        assert_eq!((v.epoch, v.upstream, v.revision), (2, "1.2-3", "4"));
        // Digits of any length never overflow.
        assert_eq!(compare("99999999999999999999999", "99999999999999999999998"), Some(Greater));
    }
}
