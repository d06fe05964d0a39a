//! RPM version ordering (`rpmvercmp`), and `[epoch:]version[-release]`
//! compared field by field. Versions split into alphanumeric segments;
//! digit segments beat letter segments and compare as numbers; `~` sorts
//! before everything, even the end; `^` sorts after the end but before any
//! other segment.

use std::cmp::Ordering;

/// Compare `[epoch:]version[-release]` as RPM does: the epoch is the
/// leading digits before a `:` (missing: `0`), the release what follows the
/// last `-` (missing: empty, which sorts before any release). Every string
/// compares; `Option` for the common comparator signature.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    let (ea, va, ra) = split(a.trim());
    let (eb, vb, rb) = split(b.trim());
    Some(vercmp(ea, eb).then_with(|| vercmp(va, vb)).then_with(|| vercmp(ra, rb)))
}

fn split(v: &str) -> (&str, &str, &str) {
    let digits = v.bytes().take_while(u8::is_ascii_digit).count();
    let (epoch, rest) = if v.as_bytes().get(digits) == Some(&b':') {
        (if digits == 0 { "0" } else { &v[..digits] }, &v[digits + 1..])
    } else {
        ("0", v)
    };
    match rest.rfind('-') {
        Some(i) => (epoch, &rest[..i], &rest[i + 1..]),
        None => (epoch, rest, ""),
    }
}

/// `rpmvercmp`: the comparison of one version or release string.
pub fn vercmp(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let (mut i, mut j) = (0, 0);
    let sep = |c: u8| !c.is_ascii_alphanumeric() && c != b'~' && c != b'^';
    while i < a.len() || j < b.len() {
        while i < a.len() && sep(a[i]) {
            i += 1;
        }
        while j < b.len() && sep(b[j]) {
            j += 1;
        }
        let (ca, cb) = (a.get(i).copied(), b.get(j).copied());
        if ca == Some(b'~') || cb == Some(b'~') {
            if ca != Some(b'~') {
                return Ordering::Greater;
            }
            if cb != Some(b'~') {
                return Ordering::Less;
            }
            i += 1;
            j += 1;
            continue;
        }
        if ca == Some(b'^') || cb == Some(b'^') {
            if ca.is_none() {
                return Ordering::Less;
            }
            if cb.is_none() {
                return Ordering::Greater;
            }
            if ca != Some(b'^') {
                return Ordering::Greater;
            }
            if cb != Some(b'^') {
                return Ordering::Less;
            }
            i += 1;
            j += 1;
            continue;
        }
        let (Some(ca), Some(_)) = (ca, cb) else { break };
        let numeric = ca.is_ascii_digit();
        let class = |c: &u8| if numeric { c.is_ascii_digit() } else { c.is_ascii_alphabetic() };
        let (si, sj) = (i, j);
        while a.get(i).is_some_and(class) {
            i += 1;
        }
        while b.get(j).is_some_and(class) {
            j += 1;
        }
        let (sa, sb) = (&a[si..i], &b[sj..j]);
        if sb.is_empty() {
            // Segments of different kinds: a number beats letters.
            return if numeric { Ordering::Greater } else { Ordering::Less };
        }
        let order = if numeric {
            let strip = |s: &[u8]| -> usize { s.iter().take_while(|c| **c == b'0').count() };
            let (na, nb) = (&sa[strip(sa)..], &sb[strip(sb)..]);
            na.len().cmp(&nb.len()).then_with(|| na.cmp(nb))
        } else {
            sa.cmp(sb)
        };
        if order != Ordering::Equal {
            return order;
        }
    }
    match (i >= a.len(), j >= b.len()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Less,
        _ => Ordering::Greater,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn rpm_examples() {
        for (a, b, want) in [
            ("1.0", "1.0", Equal),
            ("1.0", "2.0", Less),
            ("2.0.1", "2.0", Greater),
            ("2.0.1a", "2.0.1", Greater),
            ("5.5p1", "5.5p2", Less),
            ("10xyz", "10.1xyz", Less),
            ("xyz10", "xyz10.1", Less),
            ("1.0", "1.0a", Less),
            ("1.0aa", "1.0a", Greater),
            ("1.0~rc1", "1.0", Less),
            ("1.0~rc1", "1.0~rc2", Less),
            ("1.0^", "1.0", Greater),
            ("1.0^git1", "1.0.1", Less),
            ("1.0^git1", "1.0~rc1", Greater),
            ("1_0", "1.0", Equal),
            ("b", "a", Greater),
            ("a", "1", Less),
            ("001", "1", Equal),
            ("1:1.0-1", "2.0-1", Greater),
            ("1.0-1.el9", "1.0-2.el9", Less),
            ("1.0", "1.0-5", Less),
            ("1~:1", "1:1", Less),
        ] {
            assert_eq!(compare(a, b), Some(want), "{a} vs {b}");
            assert_eq!(compare(b, a), Some(want.reverse()), "{b} vs {a}");
        }
    }
}
