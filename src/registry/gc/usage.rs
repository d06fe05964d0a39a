//! Storage used per repository, and quotas.
//!
//! A repository's size is the bytes of the distinct blobs its manifests
//! reference (what its images need), split into bytes no other
//! repository's manifests reference (`unique`) and bytes they share
//! (`shared`); blobs it links that no manifest references yet (uploads in
//! progress, garbage) are reported apart. Every collection pass computes
//! this for every repository from its own scan, after its deletions, and
//! stores it at `_gc/usage`: reading usage is one GET, reconciled with the
//! records by each pass. Between passes, bytes newly linked into a
//! repository (upload completions and mounts that create a link) are added
//! up in shared state under the pass whose record they follow
//! (`pushed_since_pass`): an upper bound of the growth since the record,
//! which the next pass reconciles; losing shared state loses only that
//! running sum. `fresh` recomputes everything with a scan.
//!
//! Quotas (`[[quotas]]`, per repository, the longest glob deciding) are
//! checked at manifest PUT against the repository's size with the new
//! manifest, computed then from its revisions (references cached by digest,
//! blob sizes cached by digest: both immutable), so the check is exact
//! whenever it runs. A push that does not grow the repository (a re-tag, a
//! manifest whose blobs the repository's images already have) always passes.
//! Two pushes racing may together overshoot a quota by one image.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use berth_storage::{ObjectStoreExt, PutMode};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::super::{keys, Registry, Result};
use super::index::Refs;
use super::plan::Snapshot;
use crate::oci::{Digest, Manifest, OciError, RepoName};

/// A storage quota on the repositories one glob matches (each on its own).
#[derive(Debug, Clone)]
pub struct Quota {
    pub pattern: String,
    pub glob: crate::glob::Glob,
    pub max_bytes: u64,
}

impl Quota {
    pub fn new(pattern: &str, max_bytes: u64) -> Quota {
        Quota { pattern: pattern.to_owned(), glob: crate::glob::Glob::new(pattern), max_bytes }
    }
}

/// Usage of one repository.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RepoUsage {
    pub repository: String,
    /// Distinct blobs its manifests reference.
    pub bytes: u64,
    /// Of those, bytes no other repository's manifests reference.
    pub unique_bytes: u64,
    pub shared_bytes: u64,
    /// Linked blobs no manifest references (uploads in progress, garbage).
    pub unreferenced_bytes: u64,
    pub blobs: u64,
    pub manifests: u64,
    pub tags: u64,
    /// Bytes newly linked into the repository since the pass that
    /// computed the numbers above (uploads and mounts; the next pass
    /// reconciles them).
    #[serde(default)]
    pub pushed_since_pass: u64,
}

/// Usage of every repository.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UsageReport {
    /// Unix seconds when the numbers were computed.
    pub computed: u64,
    /// `pass <id>` or `scan`.
    pub source: String,
    /// The pass that computed it, if one did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<String>,
    /// Bytes of every stored blob, counted once.
    pub stored_bytes: u64,
    pub repositories: Vec<RepoUsage>,
}

/// Shared-state key naming the pass whose usage record is current.
const CURRENT_PASS: &str = "usage:pass";
/// How long running sums live without a new pass.
const SUM_TTL: std::time::Duration = std::time::Duration::from_secs(7 * 24 * 3600);

fn pushed_key(pass: &str, repo: &str) -> String {
    format!("usage:pushed:{pass}:{repo}")
}

/// Usage computed from a snapshot, leaving out `deleted` keys.
pub(super) fn usage_of(snap: &Snapshot, deleted: &HashSet<String>, source: String) -> UsageReport {
    let blob_size = |d: &Digest| -> Option<u64> {
        if deleted.contains(&keys::blob(d)) {
            return None;
        }
        snap.blobs.get(d).map(|o| o.size)
    };
    let mut referenced: Vec<(String, HashSet<&Digest>, &super::plan::RepoRecords, &RepoName)> = Vec::new();
    let mut holders: HashMap<&Digest, usize> = HashMap::new();
    for (repo, recs) in &snap.repos {
        let mut set = HashSet::new();
        for m in recs.revisions.keys() {
            if deleted.contains(&keys::revision(repo, m)) {
                continue;
            }
            if let Some(Some(refs)) = snap.refs.get(m) {
                set.extend(refs.blobs.iter());
            }
        }
        for d in &set {
            *holders.entry(*d).or_default() += 1;
        }
        referenced.push((repo.to_string(), set, recs, repo));
    }
    let mut repositories = Vec::new();
    for (name, set, recs, repo) in referenced {
        let mut u = RepoUsage { repository: name, ..RepoUsage::default() };
        for d in &set {
            let Some(size) = blob_size(d) else { continue };
            u.bytes += size;
            u.blobs += 1;
            if holders.get(d).copied().unwrap_or(0) > 1 {
                u.shared_bytes += size;
            } else {
                u.unique_bytes += size;
            }
        }
        for d in recs.links.keys() {
            if !set.contains(d) && !deleted.contains(&keys::layer_link(repo, d)) {
                u.unreferenced_bytes += blob_size(d).unwrap_or(0);
            }
        }
        u.manifests = recs.revisions.keys().filter(|m| !deleted.contains(&keys::revision(repo, m))).count() as u64;
        u.tags = recs.tags.keys().filter(|t| !deleted.contains(&keys::tag(repo, t))).count() as u64;
        if u.manifests > 0 || u.tags > 0 || u.bytes > 0 || u.unreferenced_bytes > 0 {
            repositories.push(u);
        }
    }
    let stored_bytes = snap.blobs.iter().filter(|(d, _)| !deleted.contains(&keys::blob(d))).map(|(_, o)| o.size).sum();
    let pass = source.strip_prefix("pass ").map(str::to_owned);
    UsageReport { computed: super::unix(std::time::SystemTime::now()), source, pass, stored_bytes, repositories }
}

/// Immutable facts the quota check caches (bounded; cleared when full).
#[derive(Debug, Default)]
pub struct QuotaCaches {
    refs: Mutex<HashMap<Digest, Refs>>,
    sizes: Mutex<HashMap<Digest, u64>>,
}

const MAX_CACHED: usize = 200_000;

fn remember<V>(map: &Mutex<HashMap<Digest, V>>, d: Digest, v: V) {
    let mut m = map.lock().unwrap_or_else(|p| p.into_inner());
    if m.len() >= MAX_CACHED {
        m.clear();
    }
    m.insert(d, v);
}

impl Registry {
    /// Store a pass's usage numbers; later links add up under its id.
    pub(super) async fn save_usage(&self, usage: &UsageReport) {
        match serde_json::to_vec(usage) {
            Ok(body) => {
                if let Err(e) = self.store.put(keys::GC_USAGE, Bytes::from(body), PutMode::Overwrite).await {
                    tracing::warn!(error = %e, "cannot store repository usage");
                    return;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot encode repository usage");
                return;
            }
        }
        if let Some(pass) = &usage.pass {
            if let Err(e) = self.state.set(CURRENT_PASS, Bytes::from(pass.clone()), SUM_TTL).await {
                tracing::debug!(error = %e, "cannot publish the current usage pass");
            }
        }
    }

    /// Count `bytes` newly linked into `repo` (best effort, never fails the
    /// write that linked them).
    pub(crate) async fn note_linked(&self, repo: &RepoName, bytes: u64) {
        let Ok(Some(pass)) = self.state.get(CURRENT_PASS).await else { return };
        let pass = String::from_utf8_lossy(&pass).into_owned();
        let by = i64::try_from(bytes).unwrap_or(i64::MAX);
        if let Err(e) = self.state.incr(&pushed_key(&pass, repo.as_str()), by, SUM_TTL).await {
            tracing::debug!(error = %e, "cannot count linked bytes");
        }
    }

    /// Usage of the repositories `glob` matches (all without one): from the
    /// last collection pass, or, with `fresh` (or before any pass), from a
    /// scan now.
    pub async fn usage(&self, glob: Option<&str>, fresh: bool) -> Result<UsageReport> {
        let stored = if fresh {
            None
        } else {
            match self.store.get_bytes(keys::GC_USAGE, 256 * 1024 * 1024).await {
                Ok(raw) => serde_json::from_slice::<UsageReport>(&raw).ok(),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            }
        };
        let mut report = match stored {
            Some(r) => r,
            None => {
                let mut index = self.gc_index().await;
                let mut scanned = super::Scanned::default();
                let snap = self.gc_scan(&mut index, &mut scanned, &super::no_progress).await?;
                usage_of(&snap, &HashSet::new(), "scan".into())
            }
        };
        if let Some(g) = glob {
            let g = crate::glob::Glob::new(g);
            report.repositories.retain(|u| g.matches(&u.repository));
        }
        // Growth since the pass, where shared state still has it.
        if let Some(pass) = report.pass.clone() {
            for u in &mut report.repositories {
                if let Ok(n) = self.state.incr(&pushed_key(&pass, &u.repository), 0, SUM_TTL).await {
                    u.pushed_since_pass = u64::try_from(n).unwrap_or(0);
                }
            }
        }
        Ok(report)
    }

    /// The quota of `repo`, if any (the longest matching glob).
    fn quota_of(&self, repo: &RepoName) -> Option<&Quota> {
        self.options.quotas.iter().filter(|q| q.glob.matches(repo.as_str())).max_by_key(|q| q.pattern.len())
    }

    /// Refuse a manifest that would take `repo` over its quota.
    pub(crate) async fn check_quota(&self, repo: &RepoName, digest: &Digest, parsed: &Manifest) -> Result<()> {
        let Some(quota) = self.quota_of(repo) else { return Ok(()) };
        let mut revisions = Vec::new();
        let prefix = format!("{}_manifests/revisions/", keys::repo_prefix(repo));
        self.list_all(&prefix, |o| {
            if let Some(keys::RepoKey::Revision { digest, .. }) = keys::parse_repo_key(&o.key) {
                revisions.push(digest);
            }
        })
        .await?;
        let mut before: HashSet<Digest> = HashSet::new();
        for m in revisions.iter().filter(|m| *m != digest) {
            let cached = self.quota_caches.refs.lock().unwrap_or_else(|p| p.into_inner()).get(m).cloned();
            let refs = match cached {
                Some(r) => r,
                None => match self.read_revision(repo, m).await {
                    Ok(stored) => match Refs::of(&stored.media_type, &stored.bytes) {
                        Some(r) => {
                            remember(&self.quota_caches.refs, m.clone(), r.clone());
                            r
                        }
                        None => continue,
                    },
                    Err(OciError::ManifestUnknown(_)) => continue,
                    Err(e) => return Err(e),
                },
            };
            before.extend(refs.blobs);
        }
        let mut after_push = before.clone();
        let mut known: HashMap<Digest, u64> = HashMap::new();
        for d in parsed.config.iter().chain(parsed.layers.iter()) {
            after_push.insert(d.digest.clone());
            known.insert(d.digest.clone(), d.size);
        }
        let size_of = |d: &Digest| -> Option<u64> {
            known
                .get(d)
                .copied()
                .or_else(|| self.quota_caches.sizes.lock().unwrap_or_else(|p| p.into_inner()).get(d).copied())
        };
        let mut unknown: Vec<Digest> = after_push.iter().filter(|d| size_of(d).is_none()).cloned().collect();
        unknown.sort();
        for d in unknown {
            match self.store.head(&keys::blob(&d)).await {
                Ok(meta) => {
                    remember(&self.quota_caches.sizes, d.clone(), meta.size);
                    known.insert(d, meta.size);
                }
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }
        let total = |set: &HashSet<Digest>| -> u64 {
            set.iter()
                .map(|d| {
                    known
                        .get(d)
                        .copied()
                        .or_else(|| self.quota_caches.sizes.lock().unwrap_or_else(|p| p.into_inner()).get(d).copied())
                        .unwrap_or(0)
                })
                .sum()
        };
        let (old, new) = (total(&before), total(&after_push));
        if new > quota.max_bytes && new > old {
            return Err(OciError::QuotaExceeded(format!(
                "repository {repo} would hold {new} bytes with this manifest, over its quota of {} bytes \
                 (quota \"{}\"); it holds {old} bytes now",
                quota.max_bytes, quota.pattern
            )));
        }
        Ok(())
    }
}
