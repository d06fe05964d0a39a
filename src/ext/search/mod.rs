//! The `search` extension: repositories by name, their tags, and image
//! details, for the JSON API under `/v2/_berth/search/` and the UI.
//!
//! The index (index.rs) is derived: built from a listing of the durable
//! records and kept current on every replica by the change notices of the
//! invalidation channel (registry/records.rs): a notice names a repository,
//! whose tags and revisions this replica lists again within a moment. A
//! notice can be lost (pub/sub is best effort), so every `rescan_interval`
//! one replica of the fleet (a lease in shared state) lists every record
//! again, writes the result as a snapshot to the extension's derived area
//! and tells the others, which load it. A replica starts from the snapshot
//! (answers at once) and lists everything itself once. `berth search
//! reindex` writes the snapshot from a fresh listing and tells the fleet.
//!
//! What a caller may see is decided per query with the same rules as the
//! catalog (`Gate::may_list`), by the API layer; this module only filters
//! with the predicate it is given.

pub mod details;
pub mod index;

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;

use crate::config::SearchConfig;
use crate::oci::{Digest, OciError, Reference, RepoName, Tag};
use crate::registry::access::{Access, Pull};
use crate::registry::cache::INVALIDATION_CHANNEL;
use crate::registry::derived::DerivedStore;
use crate::registry::records::changed_repository;
use crate::registry::Registry;
pub use index::{Index, RepoEntry, RepoPage, TagOrder};

/// Where the snapshot lives in the extension's derived area.
const SNAPSHOT: &str = "snapshot-v1";
/// Largest snapshot read.
const MAX_SNAPSHOT: u64 = 1 << 30;
/// The first line of a snapshot.
const SNAPSHOT_MAGIC: &str = "berth-search-snapshot v1";
/// The fleet-wide lease of the periodic rescan.
const RESCAN_LEASE: &str = "search:rescan";
/// Channel message: a new snapshot was written (`search-snapshot\n<ms>`).
const SNAPSHOT_NOTICE: &str = "search-snapshot";
/// Repositories listed again at once.
const PARALLEL_REFRESH: usize = 8;
/// Notices remembered, to re-apply after an index built before them is
/// swapped in.
const MAX_NOTICES: usize = 100_000;
/// How much earlier than a snapshot's own time notices are re-applied
/// (clocks of replicas differ).
const CLOCK_SLACK: Duration = Duration::from_secs(5);

/// Most results a page holds.
pub const MAX_PAGE: usize = 1000;
/// Results a page holds unless the caller says.
pub const DEFAULT_PAGE: usize = 50;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Figures of one full build.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct BuildStats {
    pub repositories: usize,
    pub tags: usize,
    pub records_listed: u64,
    pub seconds: f64,
}

/// A tag with the digest it points to now.
#[derive(Debug, Clone, Serialize)]
pub struct TagInfo {
    pub name: String,
    pub digest: Option<String>,
    pub pushed: Option<String>,
}

/// A page of tags of one repository.
#[derive(Debug, Clone, Serialize)]
pub struct TagsResult {
    pub repository: String,
    pub total: usize,
    pub tags: Vec<TagInfo>,
    #[serde(skip)]
    pub next: Option<String>,
}

/// The search service of one process.
pub struct Search {
    registry: Registry,
    config: SearchConfig,
    derived: DerivedStore,
    index: RwLock<Index>,
    /// An index was built or loaded: queries can be answered.
    ready: AtomicBool,
    /// Repositories to list again.
    dirty: Mutex<BTreeSet<RepoName>>,
    wake: tokio::sync::Notify,
    /// When each recent notice arrived.
    notices: Mutex<HashMap<RepoName, SystemTime>>,
    /// Ask the rescan loop for a full listing now (a subscription broke).
    rescan_now: tokio::sync::Notify,
}

impl std::fmt::Debug for Search {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Search").field("ready", &self.ready.load(Ordering::Relaxed)).finish_non_exhaustive()
    }
}

impl Search {
    pub fn new(registry: Registry, config: SearchConfig) -> Search {
        Search {
            derived: registry.derived("search"),
            registry,
            config,
            index: RwLock::new(Index::default()),
            ready: AtomicBool::new(false),
            dirty: Mutex::new(BTreeSet::new()),
            wake: tokio::sync::Notify::new(),
            notices: Mutex::new(HashMap::new()),
            rescan_now: tokio::sync::Notify::new(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().unwrap_or_else(|p| p.into_inner())
    }

    fn require_ready(&self) -> Result<(), OciError> {
        if self.ready.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(OciError::Unavailable {
                retry_after: Duration::from_secs(2),
                cause: "the search index is being built; retry".into(),
            })
        }
    }

    /// Start the listener, the refresher and the periodic rescan.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        vec![
            tokio::spawn(self.clone().listen()),
            tokio::spawn(self.clone().refresher()),
            tokio::spawn(self.clone().rescans()),
        ]
    }

    // ---- queries ----

    /// Repositories matching `q` that `visible` admits. The pass over the
    /// names (a visibility check each: tens of milliseconds at 100,000
    /// repositories) runs on the blocking pool, not on a request worker.
    pub async fn repositories(
        self: &Arc<Self>,
        q: &str,
        visible: impl Fn(&str) -> bool + Send + 'static,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<RepoPage, OciError> {
        self.require_ready()?;
        if q.len() > index::MAX_QUERY {
            return Err(OciError::Unsupported(format!("q is over {} bytes", index::MAX_QUERY)));
        }
        let n = n.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
        let (this, q, last) = (self.clone(), q.to_owned(), last.map(str::to_owned));
        tokio::task::spawn_blocking(move || this.read().search(&q, &visible, last.as_deref(), n))
            .await
            .map_err(|e| OciError::Internal(Box::new(e)))
    }

    /// Tags of the repository `access` grants, with their digests.
    pub async fn tags(
        &self,
        access: &Access<Pull>,
        filter: &str,
        order: TagOrder,
        last: Option<&str>,
        n: Option<usize>,
    ) -> Result<TagsResult, OciError> {
        self.require_ready()?;
        let repo = access.repo();
        let n = n.unwrap_or(DEFAULT_PAGE).min(MAX_PAGE);
        if filter.len() > index::MAX_QUERY {
            return Err(OciError::Unsupported(format!("q is over {} bytes", index::MAX_QUERY)));
        }
        let page = self
            .read()
            .tags(repo.as_str(), filter, order, last, n)
            .ok_or_else(|| OciError::NameUnknown(repo.to_string()))?;
        // The digests now (a tag moved since the index saw it shows where
        // it points); a tag deleted meanwhile shows none.
        let tags: Vec<TagInfo> = futures::stream::iter(page.items)
            .map(|t| async move {
                let digest = match t.name.parse::<Tag>() {
                    Ok(tag) => self.registry.tag_digest(access, &tag).await.ok().map(|d: Digest| d.to_string()),
                    Err(_) => None,
                };
                TagInfo { name: t.name.to_string(), digest, pushed: index::rfc3339(t.pushed) }
            })
            .buffered(16)
            .collect()
            .await;
        Ok(TagsResult { repository: repo.to_string(), total: page.total, tags, next: page.next })
    }

    /// Details of an image (or index, or artifact) by reference.
    pub async fn image(&self, access: &Access<Pull>, reference: &Reference) -> Result<details::ImageDetails, OciError> {
        details::details(&self.registry, access, reference).await
    }

    /// The index entry of one repository (for pages that show counts).
    pub fn repository(&self, repo: &RepoName) -> Option<RepoEntry> {
        self.read().get(repo.as_str()).cloned()
    }

    /// Repositories and tags indexed.
    pub fn size(&self) -> (usize, usize) {
        let idx = self.read();
        (idx.len(), idx.tag_count())
    }

    // ---- keeping the index current ----

    /// List everything and build an index from it.
    pub async fn build(registry: &Registry) -> Result<(Index, BuildStats), OciError> {
        let started = Instant::now();
        let mut catalog = Vec::new();
        registry.catalog_names(|n| catalog.push(n)).await?;
        // Each record goes into the index as the listing produces it: a
        // million tags are never held as a list of records too.
        let mut builder = index::IndexBuilder::new(catalog);
        let listed = registry
            .all_records(|r| {
                if matches!(
                    r.key,
                    crate::registry::keys::RepoKey::Tag { .. } | crate::registry::keys::RepoKey::Revision { .. }
                ) {
                    builder.add(&r);
                }
            })
            .await?;
        let index = builder.finish();
        let stats = BuildStats {
            repositories: index.len(),
            tags: index.tag_count(),
            records_listed: listed,
            seconds: started.elapsed().as_secs_f64(),
        };
        Ok((index, stats))
    }

    /// Swap in an index that reflects the records as of `as_of`, then list
    /// again every repository a notice named since.
    fn install(&self, index: Index, as_of: SystemTime) {
        *self.write() = index;
        self.ready.store(true, Ordering::Release);
        let since = as_of.checked_sub(CLOCK_SLACK).unwrap_or(as_of);
        let again: Vec<RepoName> = {
            let mut notices = lock(&self.notices);
            notices.retain(|_, at| *at >= since);
            notices.keys().cloned().collect()
        };
        if !again.is_empty() {
            lock(&self.dirty).extend(again);
            self.wake.notify_one();
        }
    }

    /// A full listing, installed here; with `publish`, also written as the
    /// fleet's snapshot and announced.
    pub async fn rebuild(&self, publish: bool) -> Result<BuildStats, OciError> {
        let as_of = SystemTime::now();
        let (index, stats) = Search::build(&self.registry).await?;
        if publish {
            write_snapshot(&self.registry, &self.derived, &index, as_of).await?;
        }
        self.install(index, as_of);
        tracing::info!(
            repositories = stats.repositories,
            tags = stats.tags,
            records = stats.records_listed,
            seconds = stats.seconds,
            "search index built"
        );
        Ok(stats)
    }

    /// Load the fleet's snapshot, if there is one. Returns whether it was.
    pub async fn load_snapshot(&self) -> Result<bool, OciError> {
        let Some(bytes) = self.derived.get(SNAPSHOT, MAX_SNAPSHOT).await? else { return Ok(false) };
        match decode_snapshot(&bytes) {
            Some((index, as_of)) => {
                self.install(index, as_of);
                Ok(true)
            }
            None => {
                tracing::warn!("the search snapshot is unreadable; listing the records instead");
                Ok(false)
            }
        }
    }

    /// List one repository again and put the result in the index.
    async fn refresh(&self, repo: &RepoName) -> Result<(), OciError> {
        let mut entry = RepoEntry::default();
        let exists = self.registry.repository_records(repo, |r| entry.add(&r)).await?;
        entry.finish();
        self.write().set(repo.as_str(), exists.then_some(entry));
        Ok(())
    }

    fn note(&self, repo: RepoName) {
        {
            let mut notices = lock(&self.notices);
            if notices.len() >= MAX_NOTICES {
                notices.clear();
            }
            notices.insert(repo.clone(), SystemTime::now());
        }
        lock(&self.dirty).insert(repo);
        self.wake.notify_one();
    }

    /// Apply notices from every replica (this one included).
    async fn listen(self: Arc<Self>) {
        let state = self.registry.state();
        loop {
            match state.subscribe(INVALIDATION_CHANNEL).await {
                Ok(mut messages) => {
                    while let Some(m) = messages.next().await {
                        if let Some(repo) = changed_repository(&m) {
                            self.note(repo);
                        } else if m.starts_with(SNAPSHOT_NOTICE.as_bytes()) {
                            let me = self.clone();
                            tokio::spawn(async move {
                                if let Err(e) = me.load_snapshot().await {
                                    tracing::warn!(error = %e, "cannot load the search snapshot");
                                }
                            });
                        }
                    }
                }
                Err(e) => tracing::warn!(error = %e, "cannot subscribe to change notices; search relies on rescans"),
            }
            // Notices may have been lost meanwhile: list everything again.
            self.rescan_now.notify_one();
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    /// List again the repositories notices named, a few at a time.
    async fn refresher(self: Arc<Self>) {
        loop {
            self.wake.notified().await;
            loop {
                let batch: Vec<RepoName> = {
                    let mut dirty = lock(&self.dirty);
                    let batch: Vec<RepoName> = dirty.iter().take(256).cloned().collect();
                    for r in &batch {
                        dirty.remove(r);
                    }
                    batch
                };
                if batch.is_empty() {
                    break;
                }
                let me = &self;
                let failed: Vec<RepoName> = futures::stream::iter(batch)
                    .map(|repo| async move { me.refresh(&repo).await.err().map(|e| (repo, e)) })
                    .buffer_unordered(PARALLEL_REFRESH)
                    .filter_map(|r| async move { r })
                    .map(|(repo, e)| {
                        tracing::warn!(error = %e, repository = %repo, "cannot list a repository for search");
                        repo
                    })
                    .collect()
                    .await;
                if !failed.is_empty() {
                    lock(&self.dirty).extend(failed);
                    // The store is in trouble: try again shortly.
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Start from the snapshot, list everything once, then rescan for the
    /// fleet every `rescan_interval` when this replica holds the lease.
    async fn rescans(self: Arc<Self>) {
        match self.load_snapshot().await {
            Ok(true) => tracing::info!("search index loaded from the snapshot"),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "cannot read the search snapshot"),
        }
        let mut wait = Duration::ZERO;
        let mut first = true;
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = self.rescan_now.notified() => {}
            }
            let interval = self.config.rescan_interval.0;
            // One replica of the fleet publishes per interval; the first
            // listing of each replica is its own (it may have started from
            // an old snapshot).
            let publish = match self.registry.state().try_lock(RESCAN_LEASE, interval).await {
                Ok(lease) => lease.is_some(),
                Err(_) => true,
            };
            if publish || first {
                match self.rebuild(publish).await {
                    Ok(_) => {
                        first = false;
                        wait = interval;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot build the search index; retrying");
                        wait = Duration::from_secs(5);
                    }
                }
            } else {
                wait = interval;
            }
        }
    }
}

/// Write `index` as the fleet's snapshot and tell every replica.
pub async fn write_snapshot(
    registry: &Registry,
    derived: &DerivedStore,
    index: &Index,
    as_of: SystemTime,
) -> Result<(), OciError> {
    let ms = as_of.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
    derived.put(SNAPSHOT, encode_snapshot(index, ms)).await?;
    let notice = Bytes::from(format!("{SNAPSHOT_NOTICE}\n{ms}\n"));
    if let Err(e) = registry.state().publish(INVALIDATION_CHANNEL, notice).await {
        tracing::debug!(error = %e, "cannot announce the search snapshot");
    }
    Ok(())
}

/// `berth search reindex`: list every record, write the snapshot, and tell
/// the fleet to load it.
pub async fn reindex(registry: &Registry) -> Result<BuildStats, OciError> {
    let as_of = SystemTime::now();
    let (index, stats) = Search::build(registry).await?;
    write_snapshot(registry, &registry.derived("search"), &index, as_of).await?;
    Ok(stats)
}

/// Lines: the magic and the time (ms) the listing began; then per
/// repository `R\t<name>\t<last push ms>\t<manifests>` followed by its
/// tags, `T\t<tag>\t<pushed ms>`; last `E\t<repositories>\t<tags>`, so a cut
/// snapshot is refused. Names and tags never hold tabs or newlines.
pub fn encode_snapshot(index: &Index, as_of_ms: u128) -> Bytes {
    use std::fmt::Write;
    let mut out = String::with_capacity(64 + index.tag_count() * 32);
    let _ = writeln!(out, "{SNAPSHOT_MAGIC}\t{as_of_ms}");
    for (name, e) in index.repos() {
        let _ = writeln!(out, "R\t{name}\t{}\t{}", e.last_push, e.manifests);
        for t in &e.tags {
            let _ = writeln!(out, "T\t{}\t{}", t.name, t.pushed);
        }
    }
    let _ = writeln!(out, "E\t{}\t{}", index.len(), index.tag_count());
    Bytes::from(out)
}

/// The index a snapshot holds and when its listing began; `None` for a
/// damaged or cut snapshot.
pub fn decode_snapshot(bytes: &[u8]) -> Option<(Index, SystemTime)> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut lines = text.lines();
    let (magic, ms) = lines.next()?.split_once('\t')?;
    if magic != SNAPSHOT_MAGIC {
        return None;
    }
    let as_of = std::time::UNIX_EPOCH + Duration::from_millis(ms.parse().ok()?);
    let mut index = Index::default();
    let mut current: Option<(RepoName, RepoEntry)> = None;
    let mut end = None;
    for line in lines {
        if end.is_some() {
            return None;
        }
        let mut f = line.split('\t');
        match (f.next()?, f.next()?, f.next()?) {
            ("E", repos, tags) => end = Some((repos.parse::<usize>().ok()?, tags.parse::<usize>().ok()?)),
            ("R", name, last_push) => {
                if let Some((n, mut e)) = current.take() {
                    e.finish();
                    index.set(n.as_str(), Some(e));
                }
                let entry = RepoEntry {
                    tags: Vec::new(),
                    last_push: last_push.parse().ok()?,
                    manifests: f.next()?.parse().ok()?,
                };
                current = Some((name.parse().ok()?, entry));
            }
            ("T", tag, pushed) => {
                let (_, e) = current.as_mut()?;
                tag.parse::<Tag>().ok()?;
                e.tags.push(index::TagEntry { name: tag.into(), pushed: pushed.parse().ok()? });
            }
            _ => return None,
        }
    }
    if let Some((n, mut e)) = current {
        e.finish();
        index.set(n.as_str(), Some(e));
    }
    (end? == (index.len(), index.tag_count())).then_some((index, as_of))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::keys::RepoKey;
    use crate::registry::records::Record;

    #[test]
    fn a_snapshot_reads_back_as_the_index_it_was() {
        let rec = |repo: &str, tag: &str, s: u64| Record {
            key: RepoKey::Tag { repo: repo.parse().unwrap(), tag: tag.parse().unwrap() },
            modified: Some(std::time::UNIX_EPOCH + Duration::from_secs(s)),
        };
        let index = Index::build(
            ["a/b".parse().unwrap(), "empty".parse().unwrap(), "c".parse().unwrap()],
            vec![rec("a/b", "v1", 10), rec("a/b", "v2", 20), rec("c", "latest", 5)],
        );
        let at = std::time::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let bytes = encode_snapshot(&index, 1_700_000_000_123);
        let (back, as_of) = decode_snapshot(&bytes).unwrap();
        assert_eq!(back, index);
        assert_eq!(as_of, at);
        // Damaged snapshots are refused, never half-read.
        assert!(decode_snapshot(b"something else\t1\n").is_none());
        for cut in [3, 12, 30] {
            assert!(decode_snapshot(&bytes[..bytes.len() - cut]).is_none(), "cut {cut} bytes short");
        }
        let mut bad = bytes.to_vec();
        bad.extend_from_slice(b"T\tno tag here\t1\n");
        assert!(decode_snapshot(&bad).is_none());
        assert!(decode_snapshot(b"berth-search-snapshot v1\t1\nT\tv1\t2\n").is_none(), "a tag before any repository");
        assert!(decode_snapshot(b"berth-search-snapshot v1\t1\nR\tBAD NAME\t1\t1\n").is_none());
    }
}
