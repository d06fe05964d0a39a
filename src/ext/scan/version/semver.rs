//! Semantic Versioning 2.0 ordering (crates.io, npm, Go modules):
//! `major.minor.patch[-prerelease][+build]`, an optional `v` prefix (Go
//! writes one), build metadata ignored. Numbers of any length compare
//! without overflow.

use std::cmp::Ordering;

/// A parsed version; numbers are kept as digit strings without leading zeros.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SemVer<'a> {
    core: [&'a str; 3],
    pre: Vec<&'a str>,
}

/// Parse a version; `None` when it is not `X.Y.Z` with optional
/// pre-release and build parts (npm's and Go's strict forms).
pub fn parse(v: &str) -> Option<SemVer<'_>> {
    let v = v.trim();
    let v = v.strip_prefix('v').unwrap_or(v);
    let (v, build) = match v.split_once('+') {
        Some((v, b)) => (v, Some(b)),
        None => (v, None),
    };
    if let Some(b) = build {
        if b.is_empty() || !b.split('.').all(|p| !p.is_empty() && p.bytes().all(ident_byte)) {
            return None;
        }
    }
    let (core, pre) = match v.split_once('-') {
        Some((c, p)) => (c, Some(p)),
        None => (v, None),
    };
    let mut parts = core.split('.');
    let mut out = [""; 3];
    for slot in &mut out {
        let p = parts.next()?;
        if !numeric(p) {
            return None;
        }
        *slot = p.trim_start_matches('0');
    }
    if parts.next().is_some() {
        return None;
    }
    let pre = match pre {
        Some(p) => {
            let ids: Vec<&str> = p.split('.').collect();
            if ids.iter().any(|i| i.is_empty() || !i.bytes().all(ident_byte)) {
                return None;
            }
            ids
        }
        None => Vec::new(),
    };
    Some(SemVer { core: out, pre })
}

fn ident_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-'
}

fn numeric(p: &str) -> bool {
    !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
}

/// Compare digit strings without leading zeros as numbers.
fn num_cmp(a: &str, b: &str) -> Ordering {
    a.len().cmp(&b.len()).then_with(|| a.cmp(b))
}

impl Ord for SemVer<'_> {
    fn cmp(&self, other: &Self) -> Ordering {
        for k in 0..3 {
            match num_cmp(self.core[k], other.core[k]) {
                Ordering::Equal => {}
                o => return o,
            }
        }
        match (self.pre.is_empty(), other.pre.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Greater,
            (false, true) => return Ordering::Less,
            _ => {}
        }
        for (a, b) in self.pre.iter().zip(&other.pre) {
            let o = match (numeric(a), numeric(b)) {
                (true, true) => num_cmp(a.trim_start_matches('0'), b.trim_start_matches('0')),
                (true, false) => Ordering::Less,
                (false, true) => Ordering::Greater,
                (false, false) => a.cmp(b),
            };
            if o != Ordering::Equal {
                return o;
            }
        }
        self.pre.len().cmp(&other.pre.len())
    }
}

impl PartialOrd for SemVer<'_> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Compare two versions; `None` when either does not parse.
pub fn compare(a: &str, b: &str) -> Option<Ordering> {
    Some(parse(a)?.cmp(&parse(b)?))
}

#[cfg(test)]
mod tests {
    use super::*;
    use Ordering::*;

    #[test]
    fn precedence_of_the_spec() {
        let chain = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
            "1.0.1",
            "1.1.0",
            "2.0.0",
            "10.0.0",
        ];
        for w in chain.windows(2) {
            assert_eq!(compare(w[0], w[1]), Some(Less), "{} < {}", w[0], w[1]);
        }
        assert_eq!(compare("1.0.0+build.1", "1.0.0+build.2"), Some(Equal));
        assert_eq!(compare("v1.2.3", "1.2.3"), Some(Equal));
        assert_eq!(compare("v0.0.0-20240101120000-abcdef123456", "v0.0.1"), Some(Less));
        assert_eq!(compare("v2.0.0+incompatible", "v2.0.1"), Some(Less));
        assert_eq!(compare("18446744073709551616.0.0", "18446744073709551615.0.0"), Some(Greater));
        for bad in ["1.0", "1.0.0.0", "1..0", "a.b.c", "1.0.0-", "1.0.0+", "1.0.0-a..b", ""] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
