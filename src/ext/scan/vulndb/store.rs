//! Database versions in the object store (the scan extension's derived
//! area):
//!
//! ```text
//! db/current                    {"version": V}: the version in use (one PUT switches it)
//! db/versions/V/manifest        sources, counts, creation time
//! db/versions/V/shards/XX       the entries of shard XX (JSON array)
//! ```
//!
//! Versions are immutable; a replica loads a version's shards lazily and
//! keeps them until the pointer moves. The two newest versions are kept
//! (readers of the previous one finish), older ones are deleted at import.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::import::SourceInfo;
use super::{normalize_name, shard_of, split_ecosystem, Entry, SHARDS};
use crate::oci::OciError;
use crate::registry::derived::DerivedStore;

const CURRENT: &str = "db/current";
const MAX_SHARD: u64 = 1 << 30;
/// How long a replica trusts the pointer it read.
const POINTER_TTL: Duration = Duration::from_secs(5);

/// What `berth vulndb status` shows.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DbManifest {
    pub version: String,
    /// Seconds since the epoch.
    pub created: u64,
    pub sources: Vec<SourceInfo>,
    pub entries: u64,
    /// Distinct advisory ids.
    pub advisories: u64,
    /// Entries by ecosystem base.
    pub ecosystems: BTreeMap<String, u64>,
    pub shards: u32,
}

#[derive(Serialize, Deserialize)]
struct Pointer {
    version: String,
}

fn shard_path(version: &str, shard: u32) -> String {
    format!("db/versions/{version}/shards/{shard:02x}")
}

fn manifest_path(version: &str) -> String {
    format!("db/versions/{version}/manifest")
}

/// Write a new version from imported entries and make it current.
pub async fn publish(
    store: &DerivedStore,
    sources: Vec<SourceInfo>,
    entries: Vec<Entry>,
) -> Result<DbManifest, OciError> {
    let mut shards: Vec<Vec<Entry>> = vec![Vec::new(); SHARDS as usize];
    let mut ecosystems = BTreeMap::new();
    let mut ids = std::collections::HashSet::new();
    for e in entries {
        let (base, _) = split_ecosystem(&e.ecosystem);
        *ecosystems.entry(base.clone()).or_insert(0u64) += 1;
        ids.insert(e.id.clone());
        let shard = shard_of(&base, &normalize_name(&base, &e.name));
        shards[shard as usize].push(e);
    }
    let mut bodies = Vec::with_capacity(shards.len());
    let mut hash = Sha256::new();
    for s in &mut shards {
        s.sort_by(|a, b| (&a.ecosystem, &a.name, &a.id).cmp(&(&b.ecosystem, &b.name, &b.id)));
        let body = serde_json::to_vec(s).map_err(OciError::internal)?;
        hash.update(&body);
        bodies.push(Bytes::from(body));
    }
    let created = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let version = format!("{created}-{}", &hex::encode(hash.finalize())[..12]);
    let total: u64 = ecosystems.values().sum();
    futures::stream::iter(bodies.into_iter().enumerate())
        .map(|(i, body)| {
            let path = shard_path(&version, i as u32);
            async move { store.put(&path, body).await }
        })
        .buffer_unordered(16)
        .try_collect::<Vec<()>>()
        .await?;
    let manifest = DbManifest {
        version: version.clone(),
        created,
        sources,
        entries: total,
        advisories: ids.len() as u64,
        ecosystems,
        shards: SHARDS,
    };
    store
        .put(&manifest_path(&version), Bytes::from(serde_json::to_vec_pretty(&manifest).map_err(OciError::internal)?))
        .await?;
    // The switch: one object, replaced atomically.
    store
        .put(
            CURRENT,
            Bytes::from(serde_json::to_vec(&Pointer { version: version.clone() }).map_err(OciError::internal)?),
        )
        .await?;
    prune(store, &version).await?;
    Ok(manifest)
}

/// Delete versions older than the two newest.
async fn prune(store: &DerivedStore, current: &str) -> Result<(), OciError> {
    let paths = store.list("db/versions").await?;
    let mut versions: Vec<&str> =
        paths.iter().filter_map(|p| p.strip_prefix("db/versions/")?.split('/').next()).collect();
    versions.dedup();
    // Names start with the creation time: sorted, newest last.
    versions.sort_by_key(|v| (v.split('-').next().and_then(|t| t.parse::<u64>().ok()).unwrap_or(0), v.to_string()));
    let keep: Vec<&str> = versions.iter().rev().take(2).copied().chain([current]).collect();
    let doomed: Vec<String> = paths
        .iter()
        .filter(|p| {
            p.strip_prefix("db/versions/").and_then(|r| r.split('/').next()).is_some_and(|v| !keep.contains(&v))
        })
        .cloned()
        .collect();
    store.delete_many(&doomed).await?;
    // Reports cached against versions no longer kept (and those made
    // before any database).
    let reports = store.list("reports").await?;
    let stale: Vec<String> = reports
        .into_iter()
        .filter(|p| p.strip_prefix("reports/").and_then(|r| r.split('/').next()).is_some_and(|v| !keep.contains(&v)))
        .collect();
    store.delete_many(&stale).await
}

/// One loaded version: its manifest and the shards read so far.
#[derive(Debug)]
pub struct Loaded {
    pub manifest: DbManifest,
    shards: Mutex<HashMap<u32, Arc<Vec<Entry>>>>,
}

impl Loaded {
    /// The entries of the shards holding these (ecosystem base, name)
    /// keys, reading the missing shards in parallel.
    pub async fn shards(
        &self,
        store: &DerivedStore,
        wanted: &[u32],
    ) -> Result<HashMap<u32, Arc<Vec<Entry>>>, OciError> {
        let mut have = HashMap::new();
        let mut missing = Vec::new();
        {
            let cache = self.shards.lock().unwrap_or_else(|p| p.into_inner());
            for s in wanted {
                match cache.get(s) {
                    Some(e) => {
                        have.insert(*s, e.clone());
                    }
                    None => missing.push(*s),
                }
            }
        }
        missing.sort_unstable();
        missing.dedup();
        let version = self.manifest.version.clone();
        let loaded: Vec<(u32, Arc<Vec<Entry>>)> = futures::stream::iter(missing)
            .map(|s| {
                let path = shard_path(&version, s);
                let version = version.clone();
                async move {
                    let body = store.get(&path, MAX_SHARD).await?.ok_or_else(|| {
                        OciError::internal(format!("vulnerability database {version}: shard {s:02x} is missing"))
                    })?;
                    let entries: Vec<Entry> = serde_json::from_slice(&body).map_err(OciError::internal)?;
                    Ok::<_, OciError>((s, Arc::new(entries)))
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        let mut cache = self.shards.lock().unwrap_or_else(|p| p.into_inner());
        for (s, e) in loaded {
            cache.insert(s, e.clone());
            have.insert(s, e);
        }
        Ok(have)
    }
}

/// The current database as this replica knows it.
#[derive(Debug, Default)]
pub struct DbHandle {
    state: Mutex<Option<(Instant, Option<Arc<Loaded>>)>>,
}

impl DbHandle {
    /// The current version (`None` before any import), re-reading the
    /// pointer at most every few seconds.
    pub async fn current(&self, store: &DerivedStore) -> Result<Option<Arc<Loaded>>, OciError> {
        let cached = {
            let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
            s.clone()
        };
        if let Some((at, loaded)) = &cached {
            if at.elapsed() < POINTER_TTL {
                return Ok(loaded.clone());
            }
        }
        let pointer = match store.get(CURRENT, 4096).await? {
            Some(b) => serde_json::from_slice::<Pointer>(&b).map_err(OciError::internal)?,
            None => {
                *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), None));
                return Ok(None);
            }
        };
        if let Some((_, Some(loaded))) = &cached {
            if loaded.manifest.version == pointer.version {
                *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), Some(loaded.clone())));
                return Ok(Some(loaded.clone()));
            }
        }
        let body = store
            .get(&manifest_path(&pointer.version), 16 << 20)
            .await?
            .ok_or_else(|| OciError::internal(format!("vulnerability database {} has no manifest", pointer.version)))?;
        let manifest: DbManifest = serde_json::from_slice(&body).map_err(OciError::internal)?;
        let loaded = Arc::new(Loaded { manifest, shards: Mutex::new(HashMap::new()) });
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), Some(loaded.clone())));
        Ok(Some(loaded))
    }

    /// Forget the cached pointer (after an import in this process).
    pub fn invalidate(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }
}
