//! Derived data of extensions: facts computed from content (a layer's
//! package inventory), an imported database, cached reports. Each
//! extension gets its own namespace under `_derived/<extension>/`; what is
//! there can always be computed again from the durable records, so losing
//! it costs work, never content. Extensions reach the object store only
//! through this handle (and blobs only through typed access).

use bytes::Bytes;

use berth_storage::{ObjectMeta, ObjectStoreExt, PutMode, StorageError};

use super::{keys, Registry};
use crate::oci::{Digest, OciError};

/// The object-store area of one extension.
#[derive(Debug, Clone)]
pub struct DerivedStore {
    registry: Registry,
    prefix: String,
}

/// A path inside an extension's area: `/`-separated segments of
/// `[A-Za-z0-9._-]`, none of them `.` or `..`.
fn valid(path: &str) -> bool {
    !path.is_empty()
        && path.split('/').all(|s| {
            !s.is_empty()
                && s != "."
                && s != ".."
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        })
}

impl Registry {
    /// Every stored blob's digest, in key order (for sweeping derived facts
    /// of blobs the collector deleted). Names digests only; reading content
    /// still needs typed access.
    pub async fn stored_blobs(&self) -> Result<std::collections::HashSet<Digest>, OciError> {
        let mut out = std::collections::HashSet::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(keys::BLOBS_PREFIX, after.as_deref(), 1000).await?;
            out.extend(page.objects.iter().filter_map(|o| keys::parse_blob_key(&o.key)));
            match page.next_start_after {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// The derived-data area of `extension`.
    pub fn derived(&self, extension: &'static str) -> DerivedStore {
        DerivedStore { registry: self.clone(), prefix: format!("{}{extension}/", keys::DERIVED_PREFIX) }
    }
}

impl DerivedStore {
    fn key(&self, path: &str) -> Result<String, OciError> {
        if !valid(path) {
            return Err(OciError::internal(format!("invalid derived path {path:?}")));
        }
        Ok(format!("{}{path}", self.prefix))
    }

    /// The path of a fact about one blob: `blobs/<alg>/<hex>/<name>`.
    pub fn blob_path(digest: &Digest, name: &str) -> String {
        format!("blobs/{}/{}/{name}", digest.algorithm().as_str(), digest.hex())
    }

    pub async fn get(&self, path: &str, max_size: u64) -> Result<Option<Bytes>, OciError> {
        match self.registry.store.get_bytes(&self.key(path)?, max_size).await {
            Ok(b) => Ok(Some(b)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn head(&self, path: &str) -> Result<Option<ObjectMeta>, OciError> {
        match self.registry.store.head(&self.key(path)?).await {
            Ok(m) => Ok(Some(m)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    pub async fn put(&self, path: &str, data: Bytes) -> Result<(), OciError> {
        self.registry.store.put(&self.key(path)?, data, PutMode::Overwrite).await?;
        Ok(())
    }

    pub async fn delete(&self, path: &str) -> Result<(), OciError> {
        match self.registry.store.delete(&self.key(path)?).await {
            Ok(()) => Ok(()),
            Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// Every path under `dir` (relative to the area), in key order.
    pub async fn list(&self, dir: &str) -> Result<Vec<String>, OciError> {
        let prefix = format!("{}/", self.key(dir)?);
        let mut out = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let page = self.registry.store.list(&prefix, after.as_deref(), 1000).await?;
            out.extend(page.objects.iter().filter_map(|o| o.key.strip_prefix(&self.prefix).map(str::to_owned)));
            match page.next_start_after {
                Some(n) => after = Some(n),
                None => return Ok(out),
            }
        }
    }

    /// Delete many paths (batched where the store can).
    pub async fn delete_many(&self, paths: &[String]) -> Result<(), OciError> {
        let keys: Vec<String> = paths.iter().map(|p| self.key(p)).collect::<Result<_, _>>()?;
        for chunk in keys.chunks(berth_storage::DELETE_BATCH) {
            self.registry.store.delete_many(chunk).await?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside_the_area() {
        assert!(valid("db/current"));
        assert!(valid("blobs/sha256/abc/inventory-v1"));
        for bad in ["", "/x", "x/", "a//b", "../x", "a/../b", "a/./b", "a b", "a%2f"] {
            assert!(!valid(bad), "{bad:?}");
        }
    }
}
