//! Repository names, tags and references, validated by the spec's grammars.
//! A value of these types is always valid, so storage keys built from them
//! cannot escape their directory or collide with the registry's own keys.

use std::fmt;
use std::str::FromStr;

use super::digest::{Digest, DigestError};

/// Longest repository name accepted (the spec's clients cap the full
/// `host/name` at 255 characters).
pub const MAX_NAME_LEN: usize = 255;

/// A repository name: `/`-separated components matching
/// `[a-z0-9]+((\.|_|__|[-]+)[a-z0-9]+)*`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RepoName(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("repository name is empty")]
    Empty,
    #[error("repository name is longer than {MAX_NAME_LEN} characters")]
    TooLong,
    #[error("repository name component {0:?} does not match [a-z0-9]+((\\.|_|__|[-]+)[a-z0-9]+)*")]
    BadComponent(String),
}

fn valid_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    if b.is_empty() || !alnum(b[0]) || !alnum(b[b.len() - 1]) {
        return false;
    }
    let mut i = 0;
    while i < b.len() {
        if alnum(b[i]) {
            i += 1;
            continue;
        }
        // A separator run: ".", "_", "__" or one or more "-".
        let start = i;
        while i < b.len() && !alnum(b[i]) {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|x| x == b'-');
        if !ok {
            return false;
        }
    }
    true
}

impl FromStr for RepoName {
    type Err = NameError;

    fn from_str(s: &str) -> Result<RepoName, NameError> {
        if s.is_empty() {
            return Err(NameError::Empty);
        }
        if s.len() > MAX_NAME_LEN {
            return Err(NameError::TooLong);
        }
        for c in s.split('/') {
            if !valid_component(c) {
                return Err(NameError::BadComponent(c.chars().take(64).collect()));
            }
        }
        Ok(RepoName(s.to_owned()))
    }
}

impl RepoName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RepoName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// A tag: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tag(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("tag must match [a-zA-Z0-9_][a-zA-Z0-9._-]{{0,127}}")]
pub struct TagError;

impl FromStr for Tag {
    type Err = TagError;

    fn from_str(s: &str) -> Result<Tag, TagError> {
        let b = s.as_bytes();
        let first_ok = b.first().is_some_and(|c| c.is_ascii_alphanumeric() || *c == b'_');
        let rest_ok = b.iter().skip(1).all(|c| c.is_ascii_alphanumeric() || b"._-".contains(c));
        if first_ok && rest_ok && b.len() <= 128 {
            Ok(Tag(s.to_owned()))
        } else {
            Err(TagError)
        }
    }
}

impl Tag {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for Tag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

/// What `/manifests/<reference>` names: a tag or a digest.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Reference {
    Tag(Tag),
    Digest(Digest),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Tag(#[from] TagError),
    #[error(transparent)]
    Digest(#[from] DigestError),
}

impl FromStr for Reference {
    type Err = ReferenceError;

    /// A reference with a `:` can only be a digest (tags have no colon).
    fn from_str(s: &str) -> Result<Reference, ReferenceError> {
        if s.contains(':') {
            Ok(Reference::Digest(s.parse()?))
        } else {
            Ok(Reference::Tag(s.parse()?))
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reference::Tag(t) => fmt::Display::fmt(t, f),
            Reference::Digest(d) => fmt::Display::fmt(d, f),
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn names() {
        for ok in ["a", "library/ubuntu", "a0/b1/c2", "my-app", "my--app", "a.b", "a_b", "a__b", "x/y_z.w-v", "0"] {
            assert!(ok.parse::<RepoName>().is_ok(), "{ok} refused");
        }
        let long_ok = "a".repeat(MAX_NAME_LEN);
        assert!(long_ok.parse::<RepoName>().is_ok());
        for bad in [
            "", "A", "a/", "/a", "a//b", "-a", "a-", "a..b", "a___b", "a._b", "a b", "a/../b", "..", ".", "a/.b",
            "a%2fb", "a\\b", "ä", "a\u{0}b",
        ] {
            assert!(bad.parse::<RepoName>().is_err(), "{bad:?} accepted");
        }
        assert_eq!("a".repeat(MAX_NAME_LEN + 1).parse::<RepoName>(), Err(NameError::TooLong));
    }

    #[test]
    fn tags() {
        for ok in ["latest", "v1.0.0", "_x", "A-b_c.d", &"a".repeat(128)] {
            assert!(ok.parse::<Tag>().is_ok(), "{ok} refused");
        }
        for bad in ["", ".a", "-a", "a/b", "a:b", "a b", &"a".repeat(129), "..", "a%2e"] {
            assert!(bad.parse::<Tag>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn references() {
        assert!(matches!("latest".parse::<Reference>(), Ok(Reference::Tag(_))));
        let d = format!("sha256:{}", "0".repeat(64));
        assert!(matches!(d.parse::<Reference>(), Ok(Reference::Digest(_))));
        assert!(matches!("sha256:xyz".parse::<Reference>(), Err(ReferenceError::Digest(_))));
        assert!(matches!("bad/tag".parse::<Reference>(), Err(ReferenceError::Tag(_))));
    }

    proptest! {
        #[test]
        fn parsers_never_panic(s in "\\PC{0,300}") {
            let _ = s.parse::<RepoName>();
            let _ = s.parse::<Tag>();
            let _ = s.parse::<Reference>();
        }

        /// Every accepted name is safe as a path: no dot segments, no
        /// characters outside the grammar.
        #[test]
        fn accepted_names_are_path_safe(s in "[a-z0-9._/-]{1,40}") {
            if let Ok(n) = s.parse::<RepoName>() {
                for c in n.as_str().split('/') {
                    prop_assert!(!c.is_empty() && !c.starts_with('.') && c != "..");
                }
            }
        }

        #[test]
        fn generated_names_are_accepted(parts in proptest::collection::vec("[a-z0-9]{1,5}((\\.|_|__|-+)[a-z0-9]{1,5}){0,3}", 1..5)) {
            let name = parts.join("/");
            prop_assume!(name.len() <= MAX_NAME_LEN);
            prop_assert!(name.parse::<RepoName>().is_ok(), "{} refused", name);
        }
    }
}
