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
//! _catalog/<name>                                        the repository exists
//! _keys/listing-cursor                                   key sealing listing cursors (cursor.rs)
//! ```
//!
//! Repository name components start with `[a-z0-9]`, so the `_`-prefixed
//! segments can never collide with a name.

use crate::oci::{Digest, RepoName, Tag};

pub const CATALOG_PREFIX: &str = "_catalog/";

/// The key every replica seals listing cursors with.
pub const LISTING_CURSOR_KEY: &str = "_keys/listing-cursor";

pub fn blob(d: &Digest) -> String {
    format!("blobs/{}/{}/{}", d.algorithm().as_str(), &d.hex()[..2], d.hex())
}

fn repo(name: &RepoName) -> String {
    format!("repositories/{name}")
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
}
