//! Derived facts the collector keeps between passes, so each immutable
//! thing is read once: the references of a manifest (fixed by its digest)
//! and the value of a tag object at a given object version. Kept in memory
//! by a long-running process and in 16 shards per kind under `_gc/index/`
//! for the next collector, whichever replica it runs on. Everything here
//! can be rebuilt from the records; a lost or unreadable shard costs reads,
//! never correctness.

use std::collections::{HashMap, HashSet};

use berth_storage::{ObjectStoreExt, PutMode};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::super::keys;
use crate::oci::manifest;
use crate::oci::Digest;

/// What a manifest points at.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Refs {
    /// Config and layers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub blobs: Vec<Digest>,
    /// Index entries.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub children: Vec<Digest>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Digest>,
}

impl Refs {
    /// The references of a stored manifest; `None` when it does not parse
    /// (the collector then keeps everything its repository links).
    pub fn of(media_type: &str, bytes: &[u8]) -> Option<Refs> {
        let parsed = manifest::parse(Some(media_type), bytes).ok()?;
        Some(Refs {
            blobs: parsed.config.iter().chain(parsed.layers.iter()).map(|d| d.digest.clone()).collect(),
            children: parsed.manifests.iter().map(|d| d.digest.clone()).collect(),
            subject: parsed.subject.map(|s| s.digest),
        })
    }
}

const SHARDS: u8 = 16;
/// Largest shard object read back.
const MAX_SHARD: u64 = 512 * 1024 * 1024;

fn shard_of(text: &str) -> u8 {
    // Digests are spread already; tag keys are hashed to spread them too.
    let hex = Digest::sha256(text.as_bytes());
    u8::from_str_radix(&hex.hex()[..1], 16).unwrap_or(0) % SHARDS
}

/// The collector's derived index.
#[derive(Debug, Default, Clone)]
pub struct GcIndex {
    pub manifests: HashMap<Digest, Refs>,
    /// Tag object key -> (object version, digest it held).
    pub tags: HashMap<String, (String, Digest)>,
    dirty: HashSet<(bool, u8)>,
    loaded: bool,
}

#[derive(Serialize, Deserialize, Default)]
struct ManifestShard {
    manifests: Vec<(Digest, Refs)>,
}

#[derive(Serialize, Deserialize, Default)]
struct TagShard {
    tags: Vec<(String, String, Digest)>,
}

impl GcIndex {
    pub fn is_loaded(&self) -> bool {
        self.loaded
    }

    pub fn insert_manifest(&mut self, digest: Digest, refs: Refs) {
        self.dirty.insert((true, shard_of(&digest.to_string())));
        self.manifests.insert(digest, refs);
    }

    pub fn insert_tag(&mut self, key: String, version: String, digest: Digest) {
        self.dirty.insert((false, shard_of(&key)));
        self.tags.insert(key, (version, digest));
    }

    /// The digest a tag object held at `version`, if known.
    pub fn tag(&self, key: &str, version: &str) -> Option<&Digest> {
        self.tags.get(key).filter(|(v, _)| v == version).map(|(_, d)| d)
    }

    /// Drop entries of manifests and tags that no longer exist anywhere.
    pub fn retain(&mut self, manifests: &HashSet<Digest>, tags: &HashSet<String>) {
        let before: Vec<Digest> = self.manifests.keys().filter(|d| !manifests.contains(*d)).cloned().collect();
        for d in before {
            self.dirty.insert((true, shard_of(&d.to_string())));
            self.manifests.remove(&d);
        }
        let gone: Vec<String> = self.tags.keys().filter(|k| !tags.contains(*k)).cloned().collect();
        for k in gone {
            self.dirty.insert((false, shard_of(&k)));
            self.tags.remove(&k);
        }
    }

    /// Read every shard; unreadable shards are skipped (they are rebuilt).
    pub async fn load(store: &dyn berth_storage::ObjectStore) -> GcIndex {
        let mut index = GcIndex { loaded: true, ..GcIndex::default() };
        for shard in 0..SHARDS {
            match store.get_bytes(&keys::gc_index_shard("manifests", shard), MAX_SHARD).await {
                Ok(raw) => match serde_json::from_slice::<ManifestShard>(&raw) {
                    Ok(s) => index.manifests.extend(s.manifests),
                    Err(e) => tracing::warn!(shard, error = %e, "ignoring an unreadable manifest index shard"),
                },
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::warn!(shard, error = %e, "cannot read a manifest index shard"),
            }
            match store.get_bytes(&keys::gc_index_shard("tags", shard), MAX_SHARD).await {
                Ok(raw) => match serde_json::from_slice::<TagShard>(&raw) {
                    Ok(s) => index.tags.extend(s.tags.into_iter().map(|(k, v, d)| (k, (v, d)))),
                    Err(e) => tracing::warn!(shard, error = %e, "ignoring an unreadable tag index shard"),
                },
                Err(e) if e.is_not_found() => {}
                Err(e) => tracing::warn!(shard, error = %e, "cannot read a tag index shard"),
            }
        }
        index
    }

    /// Write the shards that changed since they were loaded or saved.
    pub async fn save(&mut self, store: &dyn berth_storage::ObjectStore) -> berth_storage::Result<usize> {
        let dirty: Vec<(bool, u8)> = self.dirty.iter().copied().collect();
        for (is_manifest, shard) in &dirty {
            let body = if *is_manifest {
                let mut s = ManifestShard {
                    manifests: self
                        .manifests
                        .iter()
                        .filter(|(d, _)| shard_of(&d.to_string()) == *shard)
                        .map(|(d, r)| (d.clone(), r.clone()))
                        .collect(),
                };
                s.manifests.sort_by(|a, b| a.0.cmp(&b.0));
                serde_json::to_vec(&s)
            } else {
                let mut s = TagShard {
                    tags: self
                        .tags
                        .iter()
                        .filter(|(k, _)| shard_of(k) == *shard)
                        .map(|(k, (v, d))| (k.clone(), v.clone(), d.clone()))
                        .collect(),
                };
                s.tags.sort();
                serde_json::to_vec(&s)
            };
            let body =
                body.map_err(|e| berth_storage::StorageError::Backend { backend: "gc-index", source: e.into() })?;
            let key = keys::gc_index_shard(if *is_manifest { "manifests" } else { "tags" }, *shard);
            store.put(&key, Bytes::from(body), PutMode::Overwrite).await?;
            self.dirty.remove(&(*is_manifest, *shard));
        }
        Ok(dirty.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_of_an_image_and_an_index() {
        let c = Digest::sha256(b"config");
        let l = Digest::sha256(b"layer");
        let s = Digest::sha256(b"subject");
        let image = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json",
            "config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{c}","size":1}},
            "layers":[{{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"{l}","size":2}}],
            "subject":{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{s}","size":3}}}}"#
        );
        let refs = Refs::of("application/vnd.oci.image.manifest.v1+json", image.as_bytes()).unwrap();
        assert_eq!(refs, Refs { blobs: vec![c.clone(), l], children: vec![], subject: Some(s) });
        let index = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json",
            "manifests":[{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{c}","size":1}}]}}"#
        );
        let refs = Refs::of("application/vnd.oci.image.index.v1+json", index.as_bytes()).unwrap();
        assert_eq!(refs.children, vec![c]);
        assert_eq!(Refs::of("application/vnd.oci.image.manifest.v1+json", b"{not json"), None);
    }
}
