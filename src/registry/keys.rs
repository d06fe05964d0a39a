//! The object-store key layout. Every durable record is its own object
//! (DESIGN invariant 3), so any replica writes with one PUT and listings give
//! order and pagination:
//!
//! ```text
//! blobs/<alg>/<hex[..2]>/<hex>                          blob bytes, stored once
//! repositories/<name>/_layers/<alg>/<hex>               blob linked into <name>
//! repositories/<name>/_manifests/revisions/<alg>/<hex>  "<media type>\n" + manifest bytes
//! repositories/<name>/_manifests/tags/<tag>             digest the tag points to
//! repositories/<name>/_referrers/<alg>/<hex>/<alg>-<hex> descriptor JSON of a referrer of a subject
//! repositories/<name>/_pulls/<alg>/<hex>                 empty; its modification time: a recent pull
//! _catalog/<name>                                        the repository exists
//! _keys/listing-cursor                                   key sealing listing cursors (cursor.rs)
//! _gc/active/<pass>                                      a collection pass that may delete (gc.rs)
//! _gc/marks/<pass>/<key>                                 <key> may be deleted by <pass>
//! _gc/index/manifests/<x>                                derived: references of manifests by digest
//! _gc/index/tags/<x>                                     derived: tag values by object version
//! _gc/reports/last                                       the last pass's report
//! _gc/usage                                              usage per repository, from the last pass
//! _gc/reports/scrub                                      the last scrub's report
//! _derived/<extension>/...                               an extension's derived data (derived.rs)
//! ```
//!
//! Repository name components start with `[a-z0-9]`, so the `_`-prefixed
//! segments can never collide with a name.

use crate::oci::{Digest, RepoName, Tag};

pub const CATALOG_PREFIX: &str = "_catalog/";

/// The key every replica seals listing cursors with.
pub const LISTING_CURSOR_KEY: &str = "_keys/listing-cursor";

/// Collection passes that may delete; writers check their marks.
pub const GC_ACTIVE_PREFIX: &str = "_gc/active/";
/// Marks of every pass.
pub const GC_MARKS_PREFIX: &str = "_gc/marks/";
/// Derived index shards (rebuildable; losing them costs reads).
pub const GC_INDEX_PREFIX: &str = "_gc/index/";
/// The report of the last pass that ended.
pub const GC_REPORT: &str = "_gc/reports/last";
/// The report of the last scrub.
pub const SCRUB_REPORT: &str = "_gc/reports/scrub";
/// Usage per repository, as the last pass computed it.
pub const GC_USAGE: &str = "_gc/usage";
/// Extensions' derived data: rebuildable from the records above.
pub const DERIVED_PREFIX: &str = "_derived/";
/// Where every repository's records live.
pub const REPOSITORIES_PREFIX: &str = "repositories/";
/// Where blob bytes live.
pub const BLOBS_PREFIX: &str = "blobs/";

pub fn gc_active(pass: &str) -> String {
    format!("{GC_ACTIVE_PREFIX}{pass}")
}

pub fn gc_marks_prefix(pass: &str) -> String {
    format!("{GC_MARKS_PREFIX}{pass}/")
}

pub fn gc_mark(pass: &str, key: &str) -> String {
    format!("{GC_MARKS_PREFIX}{pass}/{key}")
}

pub fn gc_index_shard(kind: &str, shard: u8) -> String {
    format!("{GC_INDEX_PREFIX}{kind}/{shard:x}")
}

/// A record key of a repository, parsed back (what the collector lists).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoKey {
    Revision { repo: RepoName, digest: Digest },
    Tag { repo: RepoName, tag: Tag },
    Link { repo: RepoName, digest: Digest },
    Referrer { repo: RepoName, subject: Digest, referrer: Digest },
    Pull { repo: RepoName, digest: Digest },
}

impl RepoKey {
    /// The repository the record belongs to.
    pub fn repo(&self) -> &RepoName {
        match self {
            RepoKey::Revision { repo, .. }
            | RepoKey::Tag { repo, .. }
            | RepoKey::Link { repo, .. }
            | RepoKey::Referrer { repo, .. }
            | RepoKey::Pull { repo, .. } => repo,
        }
    }
}

/// Parse a key under [`REPOSITORIES_PREFIX`]; `None` for anything this
/// layout does not write. Name components start with `[a-z0-9]`, so the
/// first `/_` ends the repository name.
pub fn parse_repo_key(key: &str) -> Option<RepoKey> {
    let rest = key.strip_prefix(REPOSITORIES_PREFIX)?;
    let cut = rest.find("/_")?;
    let repo: RepoName = rest[..cut].parse().ok()?;
    let tail = &rest[cut + 1..];
    let digest = |alg_hex: &str| -> Option<Digest> {
        let (alg, hex) = alg_hex.split_once('/')?;
        format!("{alg}:{hex}").parse().ok()
    };
    if let Some(t) = tail.strip_prefix("_manifests/tags/") {
        return Some(RepoKey::Tag { repo, tag: t.parse().ok()? });
    }
    if let Some(d) = tail.strip_prefix("_manifests/revisions/") {
        return Some(RepoKey::Revision { repo, digest: digest(d)? });
    }
    if let Some(d) = tail.strip_prefix("_pulls/") {
        return Some(RepoKey::Pull { repo, digest: digest(d)? });
    }
    if let Some(d) = tail.strip_prefix("_layers/") {
        return Some(RepoKey::Link { repo, digest: digest(d)? });
    }
    if let Some(r) = tail.strip_prefix("_referrers/") {
        let (alg, r) = r.split_once('/')?;
        let (hex, referrer) = r.split_once('/')?;
        let subject = format!("{alg}:{hex}").parse().ok()?;
        let (ralg, rhex) = referrer.split_once('-')?;
        return Some(RepoKey::Referrer { repo, subject, referrer: format!("{ralg}:{rhex}").parse().ok()? });
    }
    None
}

/// The digest a key under [`BLOBS_PREFIX`] holds.
pub fn parse_blob_key(key: &str) -> Option<Digest> {
    let rest = key.strip_prefix(BLOBS_PREFIX)?;
    let (alg, rest) = rest.split_once('/')?;
    let (shard, hex) = rest.split_once('/')?;
    if !hex.starts_with(shard) || shard.len() != 2 {
        return None;
    }
    format!("{alg}:{hex}").parse().ok()
}

pub fn blob(d: &Digest) -> String {
    format!("blobs/{}/{}/{}", d.algorithm().as_str(), &d.hex()[..2], d.hex())
}

fn repo(name: &RepoName) -> String {
    format!("repositories/{name}")
}

/// Every record of one repository is under this prefix.
pub fn repo_prefix(name: &RepoName) -> String {
    format!("repositories/{name}/")
}

pub fn layer_link(name: &RepoName, d: &Digest) -> String {
    format!("{}/_layers/{}/{}", repo(name), d.algorithm().as_str(), d.hex())
}

pub fn revision(name: &RepoName, d: &Digest) -> String {
    format!("{}/_manifests/revisions/{}/{}", repo(name), d.algorithm().as_str(), d.hex())
}

pub fn tags_prefix(name: &RepoName) -> String {
    format!("{}/_manifests/tags/", repo(name))
}

pub fn tag(name: &RepoName, t: &Tag) -> String {
    format!("{}{t}", tags_prefix(name))
}

pub fn referrers_prefix(name: &RepoName, subject: &Digest) -> String {
    format!("{}/_referrers/{}/{}/", repo(name), subject.algorithm().as_str(), subject.hex())
}

pub fn referrer(name: &RepoName, subject: &Digest, referrer: &Digest) -> String {
    format!("{}{}-{}", referrers_prefix(name, subject), referrer.algorithm().as_str(), referrer.hex())
}

pub fn pull_record(name: &RepoName, d: &Digest) -> String {
    format!("{}/_pulls/{}/{}", repo(name), d.algorithm().as_str(), d.hex())
}

pub fn catalog_entry(name: &RepoName) -> String {
    format!("{CATALOG_PREFIX}{name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let d = Digest::sha256(b"x");
        let n: RepoName = "a/b".parse().unwrap();
        let t: Tag = "v1".parse().unwrap();
        let h = d.hex();
        assert_eq!(blob(&d), format!("blobs/sha256/{}/{h}", &h[..2]));
        assert_eq!(layer_link(&n, &d), format!("repositories/a/b/_layers/sha256/{h}"));
        assert_eq!(revision(&n, &d), format!("repositories/a/b/_manifests/revisions/sha256/{h}"));
        assert_eq!(tag(&n, &t), "repositories/a/b/_manifests/tags/v1");
        assert_eq!(referrer(&n, &d, &d), format!("repositories/a/b/_referrers/sha256/{h}/sha256-{h}"));
        assert_eq!(catalog_entry(&n), "_catalog/a/b");
    }

    #[test]
    fn keys_parse_back() {
        let d = Digest::sha256(b"x");
        let s = Digest::sha256(b"subject");
        let n: RepoName = "a/b-c/d".parse().unwrap();
        let t: Tag = "_v1.0".parse().unwrap();
        assert_eq!(parse_repo_key(&revision(&n, &d)), Some(RepoKey::Revision { repo: n.clone(), digest: d.clone() }));
        assert_eq!(parse_repo_key(&tag(&n, &t)), Some(RepoKey::Tag { repo: n.clone(), tag: t }));
        assert_eq!(parse_repo_key(&layer_link(&n, &d)), Some(RepoKey::Link { repo: n.clone(), digest: d.clone() }));
        assert_eq!(
            parse_repo_key(&referrer(&n, &s, &d)),
            Some(RepoKey::Referrer { repo: n, subject: s, referrer: d.clone() })
        );
        assert_eq!(parse_blob_key(&blob(&d)), Some(d.clone()));
        let n2: RepoName = "x".parse().unwrap();
        assert_eq!(parse_repo_key(&pull_record(&n2, &d)), Some(RepoKey::Pull { repo: n2, digest: d.clone() }));
        for bad in [
            "repositories/a",
            "repositories/a/_layers/sha256/zz",
            "repositories/A/_layers/sha256/00",
            "repositories/a/_other/x",
            "repositories/a/_manifests/tags/",
            "blobs/sha256/00/11",
            "blobs/sha256/xx",
            "elsewhere/a/_layers/sha256/00",
        ] {
            assert_eq!(parse_repo_key(bad), None, "{bad}");
            assert_eq!(parse_blob_key(bad), None, "{bad}");
        }
    }
}
