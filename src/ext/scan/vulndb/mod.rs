//! The offline vulnerability database: advisories imported from OSV files
//! and RustSec snapshots, split per (ecosystem, package) into shards, stored
//! as one immutable version in the object store and switched atomically by
//! a one-object pointer. Matching happens at read time against whichever
//! version is current.

pub mod cvss;
pub mod import;
pub mod osv;
pub mod rustsec;
pub mod store;

use std::cmp::Ordering;

use serde::{Deserialize, Serialize};

pub use cvss::Severity;

use super::version::Scheme;

/// Shards of a database version; a report reads the shards of its packages.
pub const SHARDS: u32 = 256;

/// One advisory as it applies to one package of one ecosystem.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    pub id: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub summary: String,
    #[serde(default)]
    pub severity: Severity,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub score: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vector: Option<String>,
    /// As the source writes it: `Debian:12`, `Alpine:v3.20`, `crates.io`.
    pub ecosystem: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ranges: Vec<Range>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub versions: Vec<String>,
    /// RustSec's Cargo requirements.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cargo: Option<CargoReqs>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    /// `SEMVER` ranges compare as SemVer whatever the ecosystem;
    /// `ECOSYSTEM` ranges with the ecosystem's own ordering.
    pub semver: bool,
    pub events: Vec<Event>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Introduced(String),
    Fixed(String),
    LastAffected(String),
    Limit(String),
}

impl Event {
    fn version(&self) -> &str {
        match self {
            Event::Introduced(v) | Event::Fixed(v) | Event::LastAffected(v) | Event::Limit(v) => v,
        }
    }
}

/// Versions that are patched or never affected, as Cargo requirements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CargoReqs {
    pub patched: Vec<String>,
    pub unaffected: Vec<String>,
}

/// What an entry says about one installed version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Affected {
        fixed: Option<String>,
    },
    NotAffected,
    /// A version the ordering cannot read: reported, never guessed.
    Undecided(String),
}

/// The lower-case ecosystem base (`debian`, `crates.io`, `pypi`) and the
/// release after the first `:`.
pub fn split_ecosystem(ecosystem: &str) -> (String, &str) {
    match ecosystem.split_once(':') {
        Some((base, release)) => (base.trim().to_ascii_lowercase(), release.trim()),
        None => (ecosystem.trim().to_ascii_lowercase(), ""),
    }
}

/// The ordering of an ecosystem base, `None` for ecosystems Berth does not
/// inventory.
pub fn scheme_of(base: &str) -> Option<Scheme> {
    Some(match base {
        "debian" | "ubuntu" => Scheme::Dpkg,
        "alpine" | "wolfi" | "chainguard" => Scheme::Apk,
        "rocky linux" | "almalinux" | "red hat" | "suse" | "opensuse" | "mageia" | "openeuler" => Scheme::Rpm,
        "crates.io" | "npm" | "go" => Scheme::Semver,
        "pypi" => Scheme::Pep440,
        _ => return None,
    })
}

/// A package name as the ecosystem compares it (PyPI: PEP 503).
pub fn normalize_name(base: &str, name: &str) -> String {
    if base == "pypi" {
        let mut out = String::with_capacity(name.len());
        let mut sep = false;
        for c in name.trim().chars() {
            if matches!(c, '-' | '_' | '.') {
                sep = true;
            } else {
                if sep && !out.is_empty() {
                    out.push('-');
                }
                sep = false;
                out.push(c.to_ascii_lowercase());
            }
        }
        out
    } else {
        name.trim().to_owned()
    }
}

/// The shard an (ecosystem base, normalised name) lives in: FNV-1a, stable
/// across builds and machines.
pub fn shard_of(base: &str, name: &str) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in base.bytes().chain([0]).chain(name.bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(SHARDS)) as u32
}

impl Entry {
    /// Whether `version` (in `scheme`, the ecosystem's ordering) is
    /// affected, per OSV's evaluation: within each range, events sorted
    /// by version; `introduced` opens, `fixed` and past-`last_affected`
    /// close; `limit` bounds the range from above; `versions` lists
    /// affected versions one by one. RustSec entries: affected unless a
    /// patched or unaffected requirement matches.
    pub fn verdict(&self, scheme: Scheme, version: &str) -> Verdict {
        if let Some(reqs) = &self.cargo {
            return cargo_verdict(reqs, version);
        }
        let mut undecided = None;
        let mut affected = false;
        let mut fixed: Option<String> = None;
        for range in &self.ranges {
            let scheme = if range.semver { Scheme::Semver } else { scheme };
            match range_verdict(range, scheme, version) {
                Ok(Some(f)) => {
                    affected = true;
                    if fixed.is_none() {
                        fixed = f;
                    }
                }
                Ok(None) => {}
                Err(e) => undecided = Some(e),
            }
        }
        if !affected
            && self.versions.iter().any(|v| v == version || scheme.compare(v, version) == Some(Ordering::Equal))
        {
            affected = true;
        }
        match (affected, undecided) {
            (true, _) => Verdict::Affected { fixed },
            (false, Some(e)) => Verdict::Undecided(e),
            (false, None) => Verdict::NotAffected,
        }
    }
}

/// `Ok(Some(fixed))` when the range covers the version (with the first
/// fix above it, if any), `Ok(None)` when not.
fn range_verdict(range: &Range, scheme: Scheme, version: &str) -> Result<Option<Option<String>>, String> {
    let cmp = |a: &str, b: &str| -> Result<Ordering, String> {
        scheme.compare(a, b).ok_or_else(|| format!("cannot order {a:?} and {b:?} as {scheme:?} versions"))
    };
    // "0" is the lowest version of every ecosystem.
    let key_cmp = |a: &Event, b: &Event| -> Result<Ordering, String> {
        match (a.version() == "0", b.version() == "0") {
            (true, true) => Ok(Ordering::Equal),
            (true, false) => Ok(Ordering::Less),
            (false, true) => Ok(Ordering::Greater),
            _ => cmp(a.version(), b.version()),
        }
    };
    // Every event's version must be readable first: sorting with a
    // comparator that cannot order some pairs is no total order.
    for e in &range.events {
        let v = e.version();
        if v != "0" && v != "*" {
            cmp(v, v)?;
        }
    }
    let mut events: Vec<&Event> = range.events.iter().filter(|e| e.version() != "*").collect();
    events.sort_by(|a, b| key_cmp(a, b).unwrap_or(Ordering::Equal));
    let limit_any = range.events.iter().any(|e| matches!(e, Event::Limit(v) if v == "*"));
    let mut affected = false;
    let mut limits = Vec::new();
    for e in &events {
        match e {
            Event::Introduced(v) => {
                if v == "0" || cmp(version, v)? != Ordering::Less {
                    affected = true;
                }
            }
            Event::Fixed(v) => {
                if cmp(version, v)? != Ordering::Less {
                    affected = false;
                }
            }
            Event::LastAffected(v) => {
                if cmp(version, v)? == Ordering::Greater {
                    affected = false;
                }
            }
            Event::Limit(v) => limits.push(v),
        }
    }
    if affected && !limits.is_empty() && !limit_any {
        let mut below = false;
        for l in &limits {
            if l.as_str() == "*" || cmp(version, l)? == Ordering::Less {
                below = true;
            }
        }
        affected = below;
    }
    if !affected {
        return Ok(None);
    }
    let mut fix = None;
    for e in &events {
        if let Event::Fixed(v) = e {
            if cmp(version, v)? == Ordering::Less {
                fix = Some(v.clone());
                break;
            }
        }
    }
    Ok(Some(fix))
}

fn cargo_verdict(reqs: &CargoReqs, version: &str) -> Verdict {
    let Ok(v) = semver::Version::parse(version.trim()) else {
        return Verdict::Undecided(format!("{version:?} is not a SemVer version"));
    };
    for req in reqs.patched.iter().chain(&reqs.unaffected) {
        match semver::VersionReq::parse(req) {
            Ok(r) if r.matches(&v) => return Verdict::NotAffected,
            Ok(_) => {}
            Err(e) => return Verdict::Undecided(format!("requirement {req:?}: {e}")),
        }
    }
    let fixed = (!reqs.patched.is_empty()).then(|| reqs.patched.join(" or "));
    Verdict::Affected { fixed }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ranges: Vec<Range>, versions: &[&str]) -> Entry {
        Entry {
            id: "X-1".into(),
            aliases: vec![],
            summary: String::new(),
            severity: Severity::Unknown,
            score: None,
            vector: None,
            ecosystem: "Debian:12".into(),
            name: "openssl".into(),
            ranges,
            versions: versions.iter().map(|v| (*v).to_owned()).collect(),
            cargo: None,
            url: None,
        }
    }

    fn eco(events: Vec<Event>) -> Range {
        Range { semver: false, events }
    }

    use Event::*;

    #[test]
    fn osv_evaluation() {
        let e = entry(vec![eco(vec![Fixed("3.0.11-1~deb12u2".into()), Introduced("0".into())])], &[]);
        assert_eq!(
            e.verdict(Scheme::Dpkg, "3.0.11-1~deb12u1"),
            Verdict::Affected { fixed: Some("3.0.11-1~deb12u2".into()) }
        );
        assert_eq!(e.verdict(Scheme::Dpkg, "3.0.11-1~deb12u2"), Verdict::NotAffected);
        assert_eq!(e.verdict(Scheme::Dpkg, "3.0.11-1~deb12u2+b1"), Verdict::NotAffected);
        // Two windows: [1.0, 1.2) and [2.0, 2.1].
        let e = entry(
            vec![eco(vec![
                Introduced("1.0".into()),
                Fixed("1.2".into()),
                Introduced("2.0".into()),
                LastAffected("2.1".into()),
            ])],
            &[],
        );
        for (v, want) in
            [("0.9", false), ("1.0", true), ("1.1", true), ("1.2", false), ("2.0", true), ("2.1", true), ("2.2", false)]
        {
            assert_eq!(matches!(e.verdict(Scheme::Dpkg, v), Verdict::Affected { .. }), want, "{v}");
        }
        // A limit bounds from above.
        let e = entry(vec![eco(vec![Introduced("0".into()), Limit("2.0".into())])], &[]);
        assert!(matches!(e.verdict(Scheme::Dpkg, "1.5"), Verdict::Affected { fixed: None }));
        assert_eq!(e.verdict(Scheme::Dpkg, "2.0"), Verdict::NotAffected);
        // Explicit versions.
        let e = entry(vec![], &["1.0-1"]);
        assert!(matches!(e.verdict(Scheme::Dpkg, "1.0-1"), Verdict::Affected { .. }));
        assert_eq!(e.verdict(Scheme::Dpkg, "1.0-2"), Verdict::NotAffected);
        // SEMVER ranges ignore the ecosystem's ordering; Go's v prefix.
        let e = entry(vec![Range { semver: true, events: vec![Introduced("0".into()), Fixed("0.3.8".into())] }], &[]);
        assert!(matches!(e.verdict(Scheme::Semver, "v0.3.7"), Verdict::Affected { .. }));
        assert_eq!(e.verdict(Scheme::Semver, "v0.3.8"), Verdict::NotAffected);
        // An unreadable version is undecided, never silently unaffected.
        let e = entry(vec![eco(vec![Introduced("0".into()), Fixed("not a version!".into())])], &[]);
        assert!(matches!(e.verdict(Scheme::Semver, "1.0.0"), Verdict::Undecided(_)));
    }

    #[test]
    fn cargo_requirements() {
        let mut e = entry(vec![], &[]);
        e.cargo =
            Some(CargoReqs { patched: vec![">= 0.2.23".into()], unaffected: vec!["=0.2.0".into(), "< 0.1.0".into()] });
        assert!(matches!(e.verdict(Scheme::Semver, "0.2.22"), Verdict::Affected { fixed: Some(_) }));
        assert_eq!(e.verdict(Scheme::Semver, "0.2.23"), Verdict::NotAffected);
        assert_eq!(e.verdict(Scheme::Semver, "0.2.0"), Verdict::NotAffected);
        assert_eq!(e.verdict(Scheme::Semver, "0.0.9"), Verdict::NotAffected);
        assert!(matches!(e.verdict(Scheme::Semver, "x"), Verdict::Undecided(_)));
    }

    #[test]
    fn names_and_shards() {
        assert_eq!(normalize_name("pypi", "Foo__Bar.baz"), "foo-bar-baz");
        assert_eq!(normalize_name("npm", "@s/x"), "@s/x");
        assert_eq!(split_ecosystem("Ubuntu:22.04:LTS"), ("ubuntu".to_owned(), "22.04:LTS"));
        assert_eq!(shard_of("debian", "openssl"), shard_of("debian", "openssl"));
        assert!(shard_of("debian", "openssl") < SHARDS);
        assert_eq!(scheme_of("crates.io"), Some(Scheme::Semver));
    }
}
