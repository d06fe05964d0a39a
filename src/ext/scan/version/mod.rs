//! One version comparator per ecosystem. Each is a pure function of two
//! strings, tested against its ecosystem's own tool (tests/scan_versions.rs).

use std::cmp::Ordering;

pub mod apk;
pub mod dpkg;
pub mod pep440;
pub mod rpm;
pub mod semver;

/// The version orderings Berth knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scheme {
    Dpkg,
    Apk,
    Rpm,
    Semver,
    Pep440,
}

impl Scheme {
    /// Compare two versions; `None` when either does not parse under this
    /// scheme (the caller reports it rather than guessing).
    pub fn compare(self, a: &str, b: &str) -> Option<Ordering> {
        match self {
            Scheme::Dpkg => dpkg::compare(a, b),
            Scheme::Apk => apk::compare(a, b),
            Scheme::Rpm => rpm::compare(a, b),
            Scheme::Semver => semver::compare(a, b),
            Scheme::Pep440 => pep440::compare(a, b),
        }
    }
}
