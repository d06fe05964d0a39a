//! Online garbage collection, safe with any number of replicas writing.
//!
//! A pass, under the fleet-wide `gc` lease:
//! 1. writes its active record `_gc/active/<pass>` (renewed while it runs);
//! 2. scans every record and blob and plans what is unreachable and older
//!    than the grace period ([`plan`]);
//! 3. marks each candidate (`_gc/marks/<pass>/<key>`);
//! 4. scans again and plans again, keeping only candidates the first plan
//!    marked and nothing has changed since; writers that raced the marks
//!    either show up in this scan or are refused by their guard
//!    ([`guard`]);
//! 5. deletes, records before data, in batches;
//! 6. removes its active record, then its marks, and saves the derived
//!    index ([`index`]) and its report.
//!
//! Durable truth stays in the object store: shared state holds only the
//! lease. A pass that dies leaves an active record that later passes remove
//! once it has not changed for `stale_after`; until then writers refuse
//! only the keys it marked, which nothing referenced.

mod guard;
pub mod index;
pub mod plan;
mod pulls;
pub mod scrub;
pub mod usage;

pub use pulls::PullNotes;

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use berth_storage::{ObjectMeta, ObjectStoreExt, PutMode, DELETE_BATCH};
use bytes::Bytes;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::hooks::Point;
use super::{keys, Registry, Result};
use crate::oci::{Digest, OciError, RepoName};
use index::{GcIndex, Refs};
pub use plan::TagRetention;
pub use plan::{Deletion, Kind};
use plan::{Obj, Plan, RepoRecords, Snapshot};

/// Name of the fleet-wide lease in shared state.
const LEASE: &str = "gc";
/// Reads and writes one pass keeps in flight.
const PARALLEL: usize = 16;
/// Deletions a stored report lists (the CLI prints them all).
const REPORT_ITEMS: usize = 1000;

/// How the collector decides.
#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Nothing younger than this is collected.
    pub grace: Duration,
    /// Untagged manifests older than this are deleted (`None`: kept).
    pub untagged_after: Option<Duration>,
    /// Per repository glob (the longest match decides): the untagged rule
    /// (overriding `untagged_after`) and which tags to keep.
    pub policies: Vec<RetentionRule>,
    /// The shared-state lease's time to live (renewed every third).
    pub lease_ttl: Duration,
    /// An active record of another pass unchanged this long is a dead
    /// pass's; a pass stops deleting once it has not renewed its own for
    /// half of this.
    pub stale_after: Duration,
}

impl Default for GcOptions {
    fn default() -> Self {
        GcOptions {
            grace: Duration::from_secs(3600),
            untagged_after: None,
            policies: Vec::new(),
            lease_ttl: Duration::from_secs(60),
            stale_after: Duration::from_secs(600),
        }
    }
}

/// A retention policy: the rules of the repositories one glob matches.
#[derive(Debug, Clone)]
pub struct RetentionRule {
    pub pattern: String,
    pub glob: crate::glob::Glob,
    /// `None`: the global `untagged_after`; `Some(None)`: keep untagged
    /// manifests; `Some(Some(age))`: delete them past `age`.
    pub untagged: Option<Option<Duration>>,
    /// `None`: tags are never deleted.
    pub tags: Option<plan::TagRetention>,
}

impl RetentionRule {
    pub fn new(pattern: &str) -> RetentionRule {
        RetentionRule { pattern: pattern.to_owned(), glob: crate::glob::Glob::new(pattern), untagged: None, tags: None }
    }

    /// Delete untagged manifests past `after` (`None`: keep them).
    pub fn untagged(mut self, after: Option<Duration>) -> RetentionRule {
        self.untagged = Some(after);
        self
    }

    pub fn tags(mut self, tags: plan::TagRetention) -> RetentionRule {
        self.tags = Some(tags);
        self
    }
}

impl plan::Rules for GcOptions {
    fn rule(&self, repo: &RepoName) -> plan::RepoRule<'_> {
        // The longest matching pattern decides, as for access rules.
        let best = self.policies.iter().filter(|r| r.glob.matches(repo.as_str())).max_by_key(|r| r.pattern.len());
        match best {
            Some(p) => plan::RepoRule {
                policy: Some(&p.pattern),
                untagged_after: p.untagged.unwrap_or(self.untagged_after),
                tags: p.tags.as_ref(),
            },
            None => plan::RepoRule { policy: None, untagged_after: self.untagged_after, tags: None },
        }
    }
}

/// What the collector keeps between passes in one process.
#[derive(Debug, Default)]
pub struct GcState {
    index: tokio::sync::Mutex<GcIndex>,
    /// Other passes' active records: the version last seen and since when.
    observed: Mutex<HashMap<String, (Option<String>, Instant)>>,
    last: Mutex<Option<GcReport>>,
}

/// Counts by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    pub tags: u64,
    pub manifests: u64,
    pub referrers: u64,
    #[serde(default)]
    pub pull_records: u64,
    pub links: u64,
    pub repositories: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
}

impl Counts {
    fn add(&mut self, d: &Deletion) {
        match d.kind {
            Kind::Tag => self.tags += 1,
            Kind::Manifest => self.manifests += 1,
            Kind::Referrer => self.referrers += 1,
            Kind::PullRecord => self.pull_records += 1,
            Kind::Link => self.links += 1,
            Kind::Repository => self.repositories += 1,
            Kind::Blob => {
                self.blobs += 1;
                self.blob_bytes += d.bytes;
            }
        }
    }

    pub fn objects(&self) -> u64 {
        self.tags + self.manifests + self.referrers + self.pull_records + self.links + self.repositories + self.blobs
    }
}

/// What a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Scanned {
    pub repositories: u64,
    pub manifests: u64,
    pub tags: u64,
    pub links: u64,
    pub referrers: u64,
    pub blobs: u64,
    pub blob_bytes: u64,
    /// Manifests read because the index did not know their references.
    pub manifests_read: u64,
    /// Tags read because their object changed since the index saw them.
    pub tags_read: u64,
}

/// The outcome of one pass.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GcReport {
    pub pass: String,
    pub dry_run: bool,
    /// Unix seconds.
    pub started: u64,
    pub duration_ms: u64,
    pub grace_seconds: u64,
    pub scanned: Scanned,
    /// Candidates of the first scan (marked, unless dry).
    pub marked: u64,
    /// Candidates the second scan kept (a writer used them meanwhile).
    pub kept_on_rescan: u64,
    pub deleted: Counts,
    pub items: Vec<Deletion>,
    /// True when `items` was cut (stored reports keep the first 1,000).
    pub items_truncated: bool,
}

/// Progress of a pass, for a CLI's progress display.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub phase: &'static str,
    pub done: u64,
    pub total: Option<u64>,
}

/// Progress callback.
pub type OnProgress<'a> = &'a (dyn Fn(Progress) + Send + Sync);

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn new_pass_id() -> String {
    use ring::rand::SecureRandom as _;
    let mut r = [0u8; 6];
    let _ = ring::rand::SystemRandom::new().fill(&mut r);
    let millis = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
    let hex: String = r.iter().map(|b| format!("{b:02x}")).collect();
    format!("{millis:013}-{hex}")
}

fn obj(meta: &ObjectMeta) -> Obj {
    Obj { version: meta.version.clone(), modified: meta.last_modified, size: meta.size }
}

/// A task that stops with its handle: a pass dropped mid-way (a shutdown,
/// an interrupted CLI) stops renewing its active record, so other passes
/// see it die.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The pass's own liveness, shared with its heartbeat task.
#[derive(Debug)]
struct Health {
    last_renewed: Instant,
    lease_lost: bool,
}

impl Registry {
    /// The collector's derived index, read from the store the first time
    /// (held for the whole of a pass, a scrub or a usage scan).
    async fn gc_index(&self) -> tokio::sync::MutexGuard<'_, GcIndex> {
        let mut index = self.gc.index.lock().await;
        if !index.is_loaded() {
            *index = GcIndex::load(self.store.as_ref()).await;
        }
        index
    }

    /// List every object under `prefix`, page by page.
    pub(super) async fn list_all(&self, prefix: &str, mut each: impl FnMut(&ObjectMeta)) -> Result<u64> {
        let mut after: Option<String> = None;
        let mut n = 0;
        loop {
            let page = self.store.list(prefix, after.as_deref(), 1000).await?;
            for o in &page.objects {
                each(o);
                n += 1;
            }
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => return Ok(n),
            }
        }
    }

    /// Read every record and blob into a snapshot, reading only the tags
    /// and manifests `index` does not know.
    async fn gc_scan(&self, index: &mut GcIndex, scanned: &mut Scanned, progress: OnProgress<'_>) -> Result<Snapshot> {
        let taken = SystemTime::now();
        let mut repos: std::collections::BTreeMap<RepoName, RepoRecords> = Default::default();
        self.list_all(keys::CATALOG_PREFIX, |o| {
            if let Ok(name) = o.key[keys::CATALOG_PREFIX.len()..].parse::<RepoName>() {
                repos.entry(name).or_default().catalog = Some(obj(o));
            }
        })
        .await?;
        let mut tag_keys: Vec<(RepoName, crate::oci::Tag, ObjectMeta)> = Vec::new();
        let mut listed = 0u64;
        self.list_all(keys::REPOSITORIES_PREFIX, |o| {
            listed += 1;
            if listed.is_multiple_of(10_000) {
                progress(Progress { phase: "listing records", done: listed, total: None });
            }
            match keys::parse_repo_key(&o.key) {
                Some(keys::RepoKey::Revision { repo, digest }) => {
                    repos.entry(repo).or_default().revisions.insert(digest, obj(o));
                }
                Some(keys::RepoKey::Link { repo, digest }) => {
                    repos.entry(repo).or_default().links.insert(digest, obj(o));
                }
                Some(keys::RepoKey::Referrer { repo, subject, referrer }) => {
                    repos.entry(repo).or_default().referrers.insert((subject, referrer), obj(o));
                }
                Some(keys::RepoKey::Pull { repo, digest }) => {
                    repos.entry(repo).or_default().pulls.insert(digest, obj(o));
                }
                Some(keys::RepoKey::Tag { repo, tag }) => tag_keys.push((repo, tag, o.clone())),
                None => tracing::debug!(key = %o.key, "collector ignores an unknown key"),
            }
        })
        .await?;
        let mut blobs = std::collections::BTreeMap::new();
        self.list_all(keys::BLOBS_PREFIX, |o| {
            if let Some(d) = keys::parse_blob_key(&o.key) {
                blobs.insert(d, obj(o));
            }
        })
        .await?;

        // Tags: the index knows the value of an unchanged tag object.
        let mut to_read = Vec::new();
        for (repo, tag, meta) in tag_keys {
            let known = meta.version.as_deref().and_then(|v| index.tag(&meta.key, v)).cloned();
            match known {
                Some(d) => {
                    repos.entry(repo).or_default().tags.insert(tag, (obj(&meta), Some(d)));
                }
                None => to_read.push((repo, tag, meta)),
            }
        }
        let total = to_read.len() as u64;
        type TagRead = Option<(RepoName, crate::oci::Tag, ObjectMeta, Option<Digest>)>;
        let reads: Vec<BoxFuture<'_, Result<TagRead>>> = to_read
            .into_iter()
            .map(|(repo, tag, meta)| {
                async move {
                    match self.store.get_bytes(&meta.key, 1024).await {
                        Ok(raw) => {
                            let d = std::str::from_utf8(&raw).ok().and_then(|s| s.trim().parse::<Digest>().ok());
                            Ok(Some((repo, tag, meta, d)))
                        }
                        Err(e) if e.is_not_found() => Ok(None),
                        Err(e) => Err(OciError::from(e)),
                    }
                }
                .boxed()
            })
            .collect();
        let read: Vec<TagRead> = futures::stream::iter(reads).buffer_unordered(PARALLEL).try_collect().await?;
        for (repo, tag, meta, d) in read.into_iter().flatten() {
            scanned.tags_read += 1;
            if let (Some(d), Some(v)) = (&d, &meta.version) {
                index.insert_tag(meta.key.clone(), v.clone(), d.clone());
            }
            if d.is_none() {
                tracing::warn!(repository = %repo, tag = %tag, "tag object does not hold a digest; its repository is kept whole");
            }
            repos.entry(repo).or_default().tags.insert(tag, (obj(&meta), d));
        }
        progress(Progress { phase: "reading tags", done: total, total: Some(total) });

        // Manifests: references are read once per digest, ever.
        let mut unknown: HashMap<Digest, Vec<RepoName>> = HashMap::new();
        let mut refs: HashMap<Digest, Option<Refs>> = HashMap::new();
        for (repo, recs) in &repos {
            for d in recs.revisions.keys() {
                match index.manifests.get(d) {
                    Some(r) => {
                        refs.insert(d.clone(), Some(r.clone()));
                    }
                    None => unknown.entry(d.clone()).or_default().push(repo.clone()),
                }
            }
        }
        let total = unknown.len() as u64;
        let done = std::sync::atomic::AtomicU64::new(0);
        type RefsRead<'a> = BoxFuture<'a, Result<(Digest, Option<Option<Refs>>)>>;
        let reads: Vec<RefsRead<'_>> = unknown
            .into_iter()
            .map(|(digest, holders)| {
                let done = &done;
                async move {
                    let mut found = None;
                    for repo in &holders {
                        match self.read_revision(repo, &digest).await {
                            Ok(m) => {
                                found = Some(Refs::of(&m.media_type, &m.bytes));
                                break;
                            }
                            Err(OciError::ManifestUnknown(_)) => continue,
                            Err(e) => return Err(e),
                        }
                    }
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if n.is_multiple_of(500) {
                        progress(Progress { phase: "reading manifests", done: n, total: Some(total) });
                    }
                    Ok((digest, found))
                }
                .boxed()
            })
            .collect();
        let read: Vec<(Digest, Option<Option<Refs>>)> =
            futures::stream::iter(reads).buffer_unordered(PARALLEL).try_collect().await?;
        for (digest, found) in read {
            scanned.manifests_read += 1;
            match found {
                Some(Some(r)) => {
                    index.insert_manifest(digest.clone(), r.clone());
                    refs.insert(digest, Some(r));
                }
                Some(None) => {
                    tracing::warn!(digest = %digest, "stored manifest does not parse; its repositories are kept whole");
                    refs.insert(digest, None);
                }
                // Deleted since it was listed.
                None => {
                    for recs in repos.values_mut() {
                        recs.revisions.remove(&digest);
                    }
                }
            }
        }
        progress(Progress { phase: "reading manifests", done: total, total: Some(total) });

        scanned.repositories = repos.len() as u64;
        scanned.manifests = repos.values().map(|r| r.revisions.len() as u64).sum();
        scanned.tags = repos.values().map(|r| r.tags.len() as u64).sum();
        scanned.links = repos.values().map(|r| r.links.len() as u64).sum();
        scanned.referrers = repos.values().map(|r| r.referrers.len() as u64).sum();
        scanned.blobs = blobs.len() as u64;
        scanned.blob_bytes = blobs.values().map(|b: &Obj| b.size).sum();
        Ok(Snapshot { taken, repos, blobs, refs })
    }

    /// True while a pass (or dry run) runs in this process.
    pub fn gc_running(&self) -> bool {
        self.gc.index.try_lock().is_err()
    }

    /// The report of the last pass of the fleet (from the object store;
    /// this process's own if the store cannot be read), and the passes
    /// running now anywhere in the fleet.
    pub async fn gc_status(&self) -> Result<(Vec<String>, Option<GcReport>)> {
        let running = self.active_passes().await?;
        let stored = match self.store.get_bytes(keys::GC_REPORT, 64 * 1024 * 1024).await {
            Ok(raw) => serde_json::from_slice(&raw).ok(),
            Err(e) if e.is_not_found() => None,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the last collection report");
                self.gc.last.lock().unwrap_or_else(|p| p.into_inner()).clone()
            }
        };
        Ok((running, stored))
    }

    /// Run one collection pass. `Ok(None)`: another replica holds the
    /// lease. A dry run reads only: no lease, no marks, no deletions.
    pub async fn gc_pass(&self, dry_run: bool, progress: OnProgress<'_>) -> Result<Option<GcReport>> {
        self.lifecycle_pass(dry_run, Purpose::Collect, progress).await
    }

    /// A pass that deletes what `purpose` plans, with the collector's
    /// lease, marks and second scan.
    pub(super) async fn lifecycle_pass(
        &self,
        dry_run: bool,
        purpose: Purpose,
        progress: OnProgress<'_>,
    ) -> Result<Option<GcReport>> {
        let opts = self.options.gc.clone();
        let started = SystemTime::now();
        let clock = Instant::now();
        let pass = new_pass_id();
        let mut report = GcReport {
            pass: pass.clone(),
            dry_run,
            started: unix(started),
            grace_seconds: opts.grace.as_secs(),
            ..GcReport::default()
        };
        let mut index = self.gc_index().await;
        if dry_run {
            let snap = self.gc_scan(&mut index, &mut report.scanned, progress).await?;
            let plan = purpose.plan(&snap, &opts, None);
            report.marked = plan.deletions.len() as u64;
            for d in &plan.deletions {
                report.deleted.add(d);
            }
            report.items = plan.deletions;
            report.duration_ms = clock.elapsed().as_millis() as u64;
            return Ok(Some(report));
        }

        let lease = match self.state.try_lock(LEASE, opts.lease_ttl).await? {
            Some(l) => l,
            None => return Ok(None),
        };
        let health = Arc::new(Mutex::new(Health { last_renewed: Instant::now(), lease_lost: false }));
        let active_key = keys::gc_active(&pass);
        let record = |n: u64| {
            Bytes::from(
                serde_json::json!({ "pass": pass, "started": unix(started), "heartbeat": n, "at": unix(SystemTime::now()) })
                    .to_string(),
            )
        };
        if let Err(e) = self.store.put(&active_key, record(0), PutMode::Overwrite).await {
            let _ = self.state.unlock(&lease).await;
            return Err(e.into());
        }
        let heartbeat = {
            let registry = self.clone();
            let health = health.clone();
            let lease = lease.clone();
            let key = active_key.clone();
            let every = (opts.lease_ttl / 3).min(opts.stale_after / 4).max(Duration::from_millis(100));
            let pass = pass.clone();
            AbortOnDrop(tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    tokio::time::sleep(every).await;
                    n += 1;
                    let body = Bytes::from(
                        serde_json::json!({ "pass": pass, "heartbeat": n, "at": unix(SystemTime::now()) }).to_string(),
                    );
                    let stored = registry.store.put(&key, body, PutMode::Overwrite).await;
                    let held = registry.state.extend(&lease, registry.options.gc.lease_ttl).await;
                    let mut h = health.lock().unwrap_or_else(|p| p.into_inner());
                    match (stored, held) {
                        (Ok(_), Ok(true)) => h.last_renewed = Instant::now(),
                        (_, Ok(false)) => h.lease_lost = true,
                        (Err(e), _) => tracing::warn!(error = %e, "cannot renew the collector's active record"),
                        (_, Err(e)) => tracing::warn!(error = %e, "cannot renew the collector's lease"),
                    }
                }
            }))
        };
        let result = self.gc_run(&pass, purpose, &mut index, &mut report, &health, progress).await;
        drop(heartbeat);
        // The active record goes before the marks: once it is gone, writers
        // ignore the marks, and whatever was deleted is already gone.
        let cleanup = async {
            self.store.delete(&active_key).await?;
            let mut marks = Vec::new();
            self.list_all(&keys::gc_marks_prefix(&pass), |o| marks.push(o.key.clone())).await?;
            self.store.delete_many(&marks).await?;
            Ok::<_, OciError>(())
        };
        if let Err(e) = cleanup.await {
            tracing::warn!(pass = %pass, error = %e, "cannot clear the pass's marks; a later pass will");
        }
        let _ = self.state.unlock(&lease).await;
        report.duration_ms = clock.elapsed().as_millis() as u64;
        let m = crate::metrics::get();
        match &result {
            Ok(()) => {
                crate::metrics::inc(&m.gc_passes_ok);
                m.gc_last_success.store(unix(SystemTime::now()), std::sync::atomic::Ordering::Relaxed);
                m.gc_last_duration_ms.store(report.duration_ms, std::sync::atomic::Ordering::Relaxed);
                if let Err(e) = index.save(self.store.as_ref()).await {
                    tracing::warn!(error = %e, "cannot save the collector's index; the next pass reads more");
                }
                let mut stored = report.clone();
                stored.items_truncated = stored.items.len() > REPORT_ITEMS;
                stored.items.truncate(REPORT_ITEMS);
                match serde_json::to_vec(&stored) {
                    Ok(body) => {
                        if let Err(e) = self.store.put(keys::GC_REPORT, body.into(), PutMode::Overwrite).await {
                            tracing::warn!(error = %e, "cannot store the collector's report");
                        }
                    }
                    Err(e) => tracing::warn!(error = %e, "cannot encode the collector's report"),
                }
                *self.gc.last.lock().unwrap_or_else(|p| p.into_inner()) = Some(stored);
                tracing::info!(
                    pass = %pass,
                    deleted = report.deleted.objects(),
                    blobs = report.deleted.blobs,
                    bytes = report.deleted.blob_bytes,
                    kept_on_rescan = report.kept_on_rescan,
                    duration_ms = report.duration_ms,
                    "garbage collection pass done"
                );
                Ok(Some(report))
            }
            Err(e) => {
                crate::metrics::inc(&m.gc_passes_failed);
                tracing::warn!(pass = %pass, error = %e, "garbage collection pass failed");
                result.map(|()| None)
            }
        }
    }

    /// Fail unless this pass may still delete: its lease held and its
    /// active record renewed recently enough that no other pass can have
    /// taken it for a dead one.
    fn gc_may_delete(&self, health: &Mutex<Health>) -> Result<()> {
        let h = health.lock().unwrap_or_else(|p| p.into_inner());
        if h.lease_lost {
            return Err(OciError::Unavailable {
                retry_after: Duration::from_secs(60),
                cause: "the collector lost its lease".into(),
            });
        }
        if h.last_renewed.elapsed() >= self.options.gc.stale_after / 2 {
            return Err(OciError::Unavailable {
                retry_after: Duration::from_secs(60),
                cause: "the collector could not renew its active record".into(),
            });
        }
        Ok(())
    }

    async fn gc_run(
        &self,
        pass: &str,
        purpose: Purpose,
        index: &mut GcIndex,
        report: &mut GcReport,
        health: &Mutex<Health>,
        progress: OnProgress<'_>,
    ) -> Result<()> {
        let opts = &self.options.gc;
        self.gc_clear_dead_passes(pass).await?;
        let first = self.gc_scan(index, &mut report.scanned, progress).await?;
        self.pause(Point::GcScanned).await;
        let plan1 = purpose.plan(&first, opts, None);
        if plan1.deletions.is_empty() {
            self.gc_heal_catalog(&first, &plan1).await?;
            self.gc_prune_index(index, Some(&first)).await;
            if purpose == Purpose::Collect {
                self.save_usage(&usage::usage_of(&first, &HashSet::new(), format!("pass {pass}"))).await;
            }
            return Ok(());
        }
        drop(first);
        report.marked = plan1.deletions.len() as u64;
        // Mark every candidate before looking again.
        let total = report.marked;
        let done = std::sync::atomic::AtomicU64::new(0);
        let writes: Vec<BoxFuture<'_, Result<()>>> = plan1
            .deletions
            .iter()
            .map(|d| {
                let done = &done;
                async move {
                    self.store.put(&keys::gc_mark(pass, &d.key), Bytes::new(), PutMode::Overwrite).await?;
                    let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                    if n.is_multiple_of(1000) {
                        progress(Progress { phase: "marking", done: n, total: Some(total) });
                    }
                    Ok::<_, OciError>(())
                }
                .boxed()
            })
            .collect();
        futures::stream::iter(writes).buffer_unordered(PARALLEL * 2).try_collect::<()>().await?;
        self.pause(Point::GcMarked).await;
        let mut rescanned = Scanned::default();
        let second = self.gc_scan(index, &mut rescanned, progress).await?;
        self.pause(Point::GcRescanned).await;
        let allowed = plan1.allowed();
        let plan2 = purpose.plan(&second, opts, Some(&allowed));
        report.kept_on_rescan = report.marked.saturating_sub(plan2.deletions.len() as u64);
        report.scanned.manifests_read += rescanned.manifests_read;
        report.scanned.tags_read += rescanned.tags_read;
        self.gc_delete(pass, &plan2, report, health, progress).await?;
        self.pause(Point::GcDeleted).await;
        self.gc_heal_catalog(&second, &plan2).await?;
        self.gc_prune_index(index, Some(&second)).await;
        if purpose == Purpose::Collect {
            let deleted: HashSet<String> = plan2.deletions.iter().map(|d| d.key.clone()).collect();
            self.save_usage(&usage::usage_of(&second, &deleted, format!("pass {pass}"))).await;
        }
        Ok(())
    }

    /// Write the catalog entry of every repository that has records but
    /// no entry: a push into a repository whose entry a pass removed as
    /// empty, racing it. Writers do not wait for catalog entries; this
    /// puts them back within one pass.
    async fn gc_heal_catalog(&self, snap: &Snapshot, plan: &Plan) -> Result<()> {
        let deleted: HashSet<&str> = plan.deletions.iter().map(|d| d.key.as_str()).collect();
        for (repo, recs) in &snap.repos {
            let entry = keys::catalog_entry(repo);
            let has_entry = recs.catalog.is_some() && !deleted.contains(entry.as_str());
            if has_entry {
                continue;
            }
            let has_records = recs.revisions.keys().any(|d| !deleted.contains(keys::revision(repo, d).as_str()))
                || recs.tags.keys().any(|t| !deleted.contains(keys::tag(repo, t).as_str()))
                || recs.links.keys().any(|d| !deleted.contains(keys::layer_link(repo, d).as_str()));
            if has_records {
                tracing::info!(repository = %repo, "restoring the catalog entry of a repository with records");
                match self.store.put(&entry, Bytes::new(), PutMode::Create).await {
                    Ok(_) | Err(berth_storage::StorageError::AlreadyExists { .. }) => {}
                    Err(e) => return Err(e.into()),
                }
            }
        }
        Ok(())
    }

    async fn gc_prune_index(&self, index: &mut GcIndex, snap: Option<&Snapshot>) {
        let Some(snap) = snap else { return };
        // (Only from a scan that saw everything: a failed pass prunes nothing.)
        let manifests: HashSet<Digest> = snap.repos.values().flat_map(|r| r.revisions.keys().cloned()).collect();
        let tags: HashSet<String> =
            snap.repos.iter().flat_map(|(repo, r)| r.tags.keys().map(move |t| keys::tag(repo, t))).collect();
        index.retain(&manifests, &tags);
    }

    /// Delete a plan, phase by phase (records, links, catalog entries,
    /// blobs), in batches, checking before each batch that the pass may.
    async fn gc_delete(
        &self,
        pass: &str,
        plan: &Plan,
        report: &mut GcReport,
        health: &Mutex<Health>,
        progress: OnProgress<'_>,
    ) -> Result<()> {
        let total = plan.deletions.len() as u64;
        let mut done = 0u64;
        for phase in 0..=3u8 {
            let items: Vec<&Deletion> = plan.deletions.iter().filter(|d| d.kind.phase() == phase).collect();
            for batch in items.chunks(DELETE_BATCH) {
                self.gc_may_delete(health)?;
                let keys: Vec<String> = batch.iter().map(|d| d.key.clone()).collect();
                self.store.delete_many(&keys).await?;
                let m = crate::metrics::get();
                for d in batch {
                    tracing::info!(
                        target: "berth::audit",
                        subject = "gc",
                        auth = "internal",
                        repository = d.repository.as_deref().unwrap_or(""),
                        operation = "gc_delete",
                        kind = d.kind.as_str(),
                        target = %d.target,
                        bytes = d.bytes,
                        reason = %d.reason,
                        pass,
                        outcome = "ok",
                        "audit"
                    );
                    report.deleted.add(d);
                    crate::metrics::inc(match d.kind {
                        Kind::Blob => &m.gc_deleted_blobs,
                        Kind::Manifest => &m.gc_deleted_manifests,
                        Kind::Link => &m.gc_deleted_links,
                        Kind::Tag => &m.gc_deleted_tags,
                        _ => &m.gc_deleted_records,
                    });
                    if d.kind == Kind::Blob {
                        m.gc_reclaimed_bytes.fetch_add(d.bytes, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                let mut changed = std::collections::BTreeSet::new();
                for d in batch {
                    let Some(repo) = &d.repository else { continue };
                    match d.kind {
                        Kind::Manifest => {
                            if let Ok(digest) = d.target.parse::<Digest>() {
                                self.caches.invalidate_manifest(self.state.as_ref(), repo, &digest).await;
                            }
                        }
                        Kind::Tag => self.caches.invalidate_tag(self.state.as_ref(), repo, &d.target).await,
                        Kind::Repository | Kind::Referrer => {
                            changed.insert(repo.clone());
                        }
                        _ => {}
                    }
                }
                // Derived indexes (search) re-read these repositories.
                for repo in changed {
                    if let Ok(name) = repo.parse::<RepoName>() {
                        self.announce_change(&name).await;
                    }
                }
                report.items.extend(batch.iter().map(|d| (*d).clone()));
                done += batch.len() as u64;
                progress(Progress { phase: "deleting", done, total: Some(total) });
            }
        }
        Ok(())
    }

    /// Remove the active records of passes that died (unchanged for
    /// `stale_after`, as this process saw them) and the marks of passes
    /// that have no active record.
    async fn gc_clear_dead_passes(&self, own: &str) -> Result<()> {
        let mut active: HashMap<String, Option<String>> = HashMap::new();
        self.list_all(keys::GC_ACTIVE_PREFIX, |o| {
            active.insert(o.key[keys::GC_ACTIVE_PREFIX.len()..].to_owned(), o.version.clone());
        })
        .await?;
        let stale_after = self.options.gc.stale_after;
        let mut dead = Vec::new();
        {
            let mut observed = self.gc.observed.lock().unwrap_or_else(|p| p.into_inner());
            observed.retain(|p, _| active.contains_key(p));
            for (p, version) in &active {
                if p == own {
                    continue;
                }
                match observed.get(p) {
                    Some((v, since)) if v == version && version.is_some() => {
                        if since.elapsed() >= stale_after {
                            dead.push(p.clone());
                        }
                    }
                    _ => {
                        observed.insert(p.clone(), (version.clone(), Instant::now()));
                    }
                }
            }
        }
        for p in &dead {
            tracing::warn!(pass = %p, "removing the active record of a collection pass that stopped renewing it");
            self.store.delete(&keys::gc_active(p)).await?;
            active.remove(p);
        }
        // Marks first, then the active records again: a pass writes its
        // record before its marks, so a mark whose pass has no record in
        // the later listing belongs to a pass that ended.
        let mut marks: Vec<(String, String)> = Vec::new();
        self.list_all(keys::GC_MARKS_PREFIX, |o| {
            let rest = &o.key[keys::GC_MARKS_PREFIX.len()..];
            if let Some((p, _)) = rest.split_once('/') {
                if p != own {
                    marks.push((p.to_owned(), o.key.clone()));
                }
            }
        })
        .await?;
        let live = if marks.is_empty() { HashSet::new() } else { self.active_passes().await?.into_iter().collect() };
        let orphaned: Vec<String> = marks.into_iter().filter(|(p, _)| !live.contains(p)).map(|(_, k)| k).collect();
        if !orphaned.is_empty() {
            tracing::info!(marks = orphaned.len(), "removing marks of passes that ended");
            self.store.delete_many(&orphaned).await?;
        }
        Ok(())
    }
}

/// What a pass deletes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
    /// Unreachable content past the grace period, and what retention drops.
    Collect,
    /// Dangling records only (scrub `--repair`).
    Repair,
}

impl Purpose {
    fn plan(self, snap: &Snapshot, opts: &GcOptions, allowed: Option<&plan::Allowed>) -> Plan {
        match self {
            Purpose::Collect => plan::plan(snap, opts.grace, opts, allowed),
            Purpose::Repair => plan::dangling(snap, allowed),
        }
    }
}

/// A progress callback that does nothing.
pub fn no_progress(_: Progress) {}
