//! The scanner of one replica: a queue of manifests in shared state served
//! by a few workers, layer inventories computed once for the fleet (a
//! lease per layer digest) and stored beside the blob's records, reports
//! merged and matched on read and cached per (manifest, database version),
//! and the pull policy.
//!
//! Jobs: `scan:queue` holds `<repo>\n<digest>` members due now. A worker
//! takes a job's lease, pushes its due time past the lease (so a worker
//! that dies leaves the job to be taken over when the lease expires),
//! inventories the missing layers and removes the job. A failure retries
//! with backoff; after [`MAX_ATTEMPTS`] the job's failure is recorded and
//! the API answers it instead of "pending".

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::Ordering as AtomicOrdering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::inventory::{LayerInventory, FORMAT};
use super::layer::{self, Limits};
use super::merge;
use super::report::{self, Artifact, DatabaseRef, LayerSummary, PlatformReport, Report, ScannerRef};
use super::vulndb::store::DbHandle;
use super::vulndb::Severity;
use crate::auth::internal_access;
use crate::config::{ScanConfig, ScanPolicy};
use crate::metrics;
use crate::oci::manifest::{self, Descriptor, ManifestKind};
use crate::oci::{Digest, OciError, Reference, RepoName};
use crate::registry::access::{Access, Pull};
use crate::registry::derived::DerivedStore;
use crate::registry::Registry;

/// The fleet's queue of manifests to inventory (a schedule in shared state).
pub const QUEUE: &str = "scan:queue";
/// How long a worker holds a job or a layer before another may take it.
const JOB_LEASE: Duration = Duration::from_secs(15 * 60);
/// The first retry's delay; each next one doubles, up to five minutes.
const RETRY_BASE: Duration = Duration::from_secs(2);
/// How a layer held by another worker's lease is reported.
const BUSY: &str = "is being inventoried by another worker";
/// Attempts before a job's failure is recorded.
pub const MAX_ATTEMPTS: i64 = 6;
/// Reports kept in memory.
const REPORT_CACHE: usize = 64;
const MAX_INVENTORY: u64 = 256 << 20;
const MAX_REPORT: u64 = 256 << 20;

/// Image layer media types (OCI and Docker, any compression).
fn is_layer(media_type: &str) -> bool {
    media_type.starts_with("application/vnd.oci.image.layer.")
        || media_type.starts_with("application/vnd.docker.image.rootfs.")
}

fn is_image_config(media_type: &str) -> bool {
    matches!(media_type, "application/vnd.oci.image.config.v1+json" | "application/vnd.docker.container.image.v1+json")
}

/// A report, or why there is none yet.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ready(Arc<Report>),
    /// Layers are being inventoried; ask again after this long.
    Pending {
        retry_after: Duration,
    },
}

/// The recorded failure of a job that ran out of attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Failure {
    error: String,
    attempts: i64,
    at: u64,
}

#[derive(Debug)]
pub struct Scanner {
    registry: Registry,
    derived: DerivedStore,
    db: DbHandle,
    config: ScanConfig,
    limits: Limits,
    reports: Mutex<HashMap<(Digest, String), Arc<Report>>>,
    wake: tokio::sync::Notify,
    lease: Duration,
    retry_base: Duration,
    failure_cooldown: Duration,
}

use crate::timefmt::rfc3339;

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// A job in [`QUEUE`]: one manifest of one repository.
pub fn member(repo: &RepoName, digest: &Digest) -> String {
    format!("{repo}\n{digest}")
}

fn attempts_key(member: &str) -> String {
    format!("scan:attempts:{member}")
}

/// The lock a worker holds while it runs a job.
pub fn job_lock(member: &str) -> String {
    format!("scan:job:{member}")
}

fn parse_member(m: &str) -> Option<(RepoName, Digest)> {
    let (r, d) = m.split_once('\n')?;
    Some((r.parse().ok()?, d.parse().ok()?))
}

fn inventory_path(digest: &Digest) -> String {
    DerivedStore::blob_path(digest, &format!("inventory-v{FORMAT}"))
}

/// A job that ran out of attempts, per repository (its error may name it).
fn failure_path(repo: &RepoName, digest: &Digest) -> String {
    format!("failures/{}/{}/{repo}", digest.algorithm().as_str(), digest.hex())
}

/// Reports depend on the manifest, the database and the inventory format
/// (never on the repository: that is filled in per request).
fn report_path(db: &str, digest: &Digest) -> String {
    format!("reports/{db}/v{FORMAT}/{}/{}", digest.algorithm().as_str(), digest.hex())
}

/// How long a recorded failure is answered before the job is tried again.
const FAILURE_COOLDOWN: Duration = Duration::from_secs(3600);

/// Extend a lease every third of its time until `stop`; `false` once the
/// lease was lost.
async fn heartbeat(state: Arc<dyn berth_state::SharedState>, lease: berth_state::Lease, ttl: Duration) {
    let mut tick = tokio::time::interval(ttl / 3);
    tick.tick().await;
    loop {
        tick.tick().await;
        match state.extend(&lease, ttl).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(lease = %lease.name, "scan: lease lost while working");
                return;
            }
            Err(e) => tracing::warn!(lease = %lease.name, error = %e, "scan: cannot extend a lease"),
        }
    }
}

/// Bridge a byte stream to a blocking reader (the tar walker is
/// synchronous): chunks cross a bounded channel, so memory stays bounded.
struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<Bytes>,
    chunk: Bytes,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.chunk.is_empty() {
            match self.rx.blocking_recv() {
                Some(b) => self.chunk = b,
                // The sender ends the stream (all read, or the read failed:
                // the caller then discards the result).
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.chunk.len());
        buf[..n].copy_from_slice(&self.chunk[..n]);
        self.chunk = self.chunk.slice(n..);
        Ok(n)
    }
}

/// The images (platform manifests) an artifact is made of.
struct Image {
    digest: Digest,
    platform: Option<String>,
    layers: Vec<Descriptor>,
}

impl Scanner {
    pub fn new(registry: Registry, config: ScanConfig) -> Scanner {
        let limits = Limits { max_file: config.max_file.0, max_binary: config.max_binary.0, ..Limits::default() };
        Scanner {
            derived: registry.derived("scan"),
            registry,
            db: DbHandle::default(),
            config,
            limits,
            reports: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            lease: JOB_LEASE,
            retry_base: RETRY_BASE,
            failure_cooldown: FAILURE_COOLDOWN,
        }
    }

    /// Shorter leases and retries (tests of takeover and backoff).
    pub fn with_timing(mut self, lease: Duration, retry_base: Duration, failure_cooldown: Duration) -> Scanner {
        self.lease = lease;
        self.retry_base = retry_base;
        self.failure_cooldown = failure_cooldown;
        self
    }

    pub fn derived(&self) -> &DerivedStore {
        &self.derived
    }

    pub fn db(&self) -> &DbHandle {
        &self.db
    }

    /// The digest a reference names now.
    pub async fn registry_manifest_digest(
        &self,
        access: &Access<Pull>,
        reference: &Reference,
    ) -> Result<Digest, OciError> {
        Ok(self.registry.manifest_get(access, reference).await?.digest)
    }

    /// Queue a manifest (after a push, on demand, by the backfill).
    pub async fn enqueue(&self, repo: &RepoName, digest: &Digest) -> Result<(), OciError> {
        self.registry.state().schedule(QUEUE, &member(repo, digest), SystemTime::now()).await?;
        self.wake.notify_one();
        Ok(())
    }

    /// After a push: queue without waiting (a failure to queue is logged;
    /// the report's first read queues it again).
    pub fn on_push(self: &Arc<Self>, repo: &RepoName, digest: &Digest) {
        if !self.config.on_push {
            return;
        }
        let (this, repo, digest) = (self.clone(), repo.clone(), digest.clone());
        tokio::spawn(async move {
            if let Err(e) = this.enqueue(&repo, &digest).await {
                tracing::warn!(repository = %repo, digest = %digest, error = %e, "scan: cannot queue a pushed manifest");
            }
        });
    }

    /// Start the workers and, once per fleet, the backfill.
    pub fn spawn(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut handles = Vec::new();
        for _ in 0..self.config.workers {
            let this = self.clone();
            handles.push(tokio::spawn(async move { this.worker().await }));
        }
        let this = self.clone();
        handles.push(tokio::spawn(async move { this.sweeper().await }));
        if self.config.backfill {
            let this = self.clone();
            handles.push(tokio::spawn(async move {
                if let Err(e) = this.backfill().await {
                    tracing::warn!(error = %e, "scan: backfill stopped; the next start resumes it");
                }
            }));
        }
        handles
    }

    async fn worker(&self) {
        loop {
            match self.run_one().await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "scan: queue unavailable"),
            }
            // Woken by a local push, or polling for other replicas' jobs.
            let _ = tokio::time::timeout(Duration::from_secs(1), self.wake.notified()).await;
        }
    }

    /// Take one due job and run it; `Ok(false)` when none was due.
    pub async fn run_one(&self) -> Result<bool, OciError> {
        let state = self.registry.state();
        let due = state.due(QUEUE, SystemTime::now(), 16).await?;
        metrics::get().scan_queue_depth.store(due.len() as u64, AtomicOrdering::Relaxed);
        for m in due {
            let Some(lease) = state.try_lock(&job_lock(&m), self.lease).await? else { continue };
            // Past the lease: a worker that dies leaves the job to others.
            state.schedule(QUEUE, &m, SystemTime::now() + self.lease).await?;
            let Some((repo, digest)) = parse_member(&m) else {
                state.unschedule(QUEUE, &m).await?;
                state.unlock(&lease).await?;
                continue;
            };
            let beat = tokio::spawn(heartbeat(state.clone(), lease.clone(), self.lease));
            let result = self.scan(&repo, &digest).await;
            beat.abort();
            let attempts_key = attempts_key(&m);
            match result {
                Ok(()) => {
                    state.unschedule(QUEUE, &m).await?;
                    state.delete(&attempts_key).await?;
                    metrics::inc(&metrics::get().scan_jobs_ok);
                }
                Err(OciError::Unavailable { cause, .. }) if cause.contains(BUSY) => {
                    // Another worker is inventorying a layer of this image:
                    // no failure, just later (not counted as an attempt).
                    state.schedule(QUEUE, &m, SystemTime::now() + self.retry_base).await?;
                }
                Err(e) => {
                    let attempts = state.incr(&attempts_key, 1, Duration::from_secs(86_400)).await?;
                    let unfetched = matches!(e, OciError::BlobUnknown(_)) && self.registry.fetched_on_demand(&repo);
                    if attempts >= MAX_ATTEMPTS && unfetched {
                        // A mirrored image whose layers no pull has fetched
                        // (yet): not a failure. The job ends; the next
                        // request for its report (every pull asks, with a
                        // scan policy) queues it again.
                        tracing::info!(repository = %repo, digest = %digest,
                            "scan: a mirrored image's layers are not fetched yet; scanned once they are");
                        state.unschedule(QUEUE, &m).await?;
                        state.delete(&attempts_key).await?;
                    } else if attempts >= MAX_ATTEMPTS
                        || matches!(e, OciError::ManifestUnknown(_) | OciError::NameUnknown(_))
                    {
                        tracing::warn!(repository = %repo, digest = %digest, error = %e, attempts, "scan: job failed");
                        let f = Failure { error: e.to_string(), attempts, at: now_secs() };
                        let body = serde_json::to_vec(&f).map_err(OciError::internal)?;
                        self.derived.put(&failure_path(&repo, &digest), Bytes::from(body)).await?;
                        state.unschedule(QUEUE, &m).await?;
                        state.delete(&attempts_key).await?;
                        metrics::inc(&metrics::get().scan_jobs_failed);
                    } else {
                        let backoff = self
                            .retry_base
                            .saturating_mul(1 << (attempts.clamp(1, 16) - 1))
                            .min(Duration::from_secs(300));
                        tracing::info!(repository = %repo, digest = %digest, error = %e, attempts, "scan: retrying");
                        state.schedule(QUEUE, &m, SystemTime::now() + backoff).await?;
                        metrics::inc(&metrics::get().scan_jobs_retried);
                    }
                }
            }
            state.unlock(&lease).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// The images of an artifact: itself, or the image children of an index.
    async fn images(
        &self,
        access: &Access<Pull>,
        digest: &Digest,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Vec<Image>, OciError> {
        let m = manifest::parse(Some(media_type), bytes).map_err(|e| OciError::ManifestInvalid(e.to_string()))?;
        if m.kind.is_index() {
            let raw: serde_json::Value = serde_json::from_slice(bytes).unwrap_or_default();
            let mut out = Vec::new();
            for (i, child) in m.manifests.iter().enumerate() {
                let platform = raw["manifests"][i]["platform"].as_object().map(|p| {
                    let mut s = format!(
                        "{}/{}",
                        p.get("os").and_then(|v| v.as_str()).unwrap_or("?"),
                        p.get("architecture").and_then(|v| v.as_str()).unwrap_or("?")
                    );
                    if let Some(v) = p.get("variant").and_then(|v| v.as_str()) {
                        s.push('/');
                        s.push_str(v);
                    }
                    s
                });
                let Ok(kind) = ManifestKind::from_media_type(&child.media_type).ok_or(()) else { continue };
                if kind.is_index() {
                    continue; // nested indexes are not images
                }
                let stored = self.registry.manifest_get(access, &Reference::Digest(child.digest.clone())).await?;
                let cm = manifest::parse(Some(&stored.media_type), &stored.bytes)
                    .map_err(|e| OciError::ManifestInvalid(e.to_string()))?;
                if cm.config.as_ref().is_some_and(|c| is_image_config(&c.media_type)) {
                    out.push(Image {
                        digest: child.digest.clone(),
                        platform,
                        layers: cm.layers.into_iter().filter(|l| is_layer(&l.media_type)).collect(),
                    });
                }
            }
            return Ok(out);
        }
        if m.config.as_ref().is_some_and(|c| is_image_config(&c.media_type)) {
            return Ok(vec![Image {
                digest: digest.clone(),
                platform: None,
                layers: m.layers.into_iter().filter(|l| is_layer(&l.media_type)).collect(),
            }]);
        }
        Ok(Vec::new())
    }

    /// Inventory every layer of a manifest that has none yet.
    pub async fn scan(&self, repo: &RepoName, digest: &Digest) -> Result<(), OciError> {
        let access = internal_access::<Pull>(repo, "scanner");
        let stored = self.registry.manifest_get(&access, &Reference::Digest(digest.clone())).await?;
        let images = self.images(&access, digest, &stored.bytes, &stored.media_type).await?;
        for image in images {
            for l in &image.layers {
                if self.derived.head(&inventory_path(&l.digest)).await?.is_none() {
                    self.inventory_layer(&access, &l.digest).await?;
                }
            }
        }
        Ok(())
    }

    /// Compute and store one layer's inventory under the layer's lease;
    /// another replica holding it means "not yet" (the job retries).
    async fn inventory_layer(&self, access: &Access<Pull>, digest: &Digest) -> Result<(), OciError> {
        let state = self.registry.state();
        let Some(lease) = state.try_lock(&format!("scan:layer:{digest}"), self.lease).await? else {
            return Err(OciError::Unavailable {
                retry_after: Duration::from_secs(2),
                cause: format!("layer {digest} {BUSY}"),
            });
        };
        let beat = tokio::spawn(heartbeat(state.clone(), lease.clone(), self.lease));
        let result = match self.compute_inventory(access, digest).await {
            Ok(inv) => match serde_json::to_vec(&inv) {
                // Stored before the lease ends: no second worker computes it.
                Ok(body) => self.derived.put(&inventory_path(digest), Bytes::from(body)).await,
                Err(e) => Err(OciError::internal(e)),
            },
            Err(e) => Err(e),
        };
        beat.abort();
        let _ = state.unlock(&lease).await;
        result
    }

    async fn compute_inventory(&self, access: &Access<Pull>, digest: &Digest) -> Result<LayerInventory, OciError> {
        let started = Instant::now();
        let blob = self.registry.blob_get(access, digest, None).await?;
        let stored = blob.size;
        let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
        let limits = self.limits.clone();
        let name = digest.to_string();
        let worker = tokio::task::spawn_blocking(move || {
            layer::analyze(&name, ChannelReader { rx, chunk: Bytes::new() }, &limits, stored)
        });
        let mut body = blob.body;
        let mut storage_error = None;
        while let Some(chunk) = body.next().await {
            match chunk {
                // The walker may stop early (an error, a bomb): then it
                // hangs up and the rest of the blob is not read.
                Ok(b) => {
                    if tx.send(b).await.is_err() {
                        break;
                    }
                }
                Err(e) => {
                    storage_error = Some(e);
                    break;
                }
            }
        }
        drop(tx);
        let inv = worker.await.map_err(OciError::internal)?;
        if let Some(e) = storage_error {
            // A read that failed says nothing about the layer: retried,
            // never stored as its inventory.
            return Err(match OciError::from(e) {
                OciError::Internal(e) => {
                    OciError::Unavailable { retry_after: Duration::from_secs(5), cause: e.to_string() }
                }
                other => other,
            });
        }
        let m = metrics::get();
        metrics::inc(&m.scan_layers);
        if !inv.errors.is_empty() {
            metrics::inc(&m.scan_layer_errors);
        }
        m.scan_layer_ms.fetch_add(started.elapsed().as_millis() as u64, AtomicOrdering::Relaxed);
        Ok(inv)
    }

    async fn load_inventory(&self, digest: &Digest) -> Result<Option<LayerInventory>, OciError> {
        match self.derived.get(&inventory_path(digest), MAX_INVENTORY).await? {
            Some(b) => {
                let inv: LayerInventory = serde_json::from_slice(&b).map_err(OciError::internal)?;
                Ok((inv.format == FORMAT).then_some(inv))
            }
            None => Ok(None),
        }
    }

    /// The report of a manifest the caller may pull.
    pub async fn report(&self, access: &Access<Pull>, reference: &Reference) -> Result<Outcome, OciError> {
        let stored = self.registry.manifest_get(access, reference).await?;
        let db = self.db.current(&self.derived).await?;
        let db_version = db.as_ref().map(|d| d.manifest.version.clone()).unwrap_or_else(|| "none".into());
        let key = (stored.digest.clone(), db_version.clone());
        // The cached report is the manifest's; the artifact's repository and
        // reference are the caller's, filled in for each request.
        let answer = |r: &Arc<Report>| {
            let mut mine = Report::clone(r);
            mine.artifact.repository = access.repo().to_string();
            mine.artifact.reference = reference.to_string();
            Outcome::Ready(Arc::new(mine))
        };
        let cached = self.reports.lock().unwrap_or_else(|p| p.into_inner()).get(&key).cloned();
        if let Some(r) = cached {
            return Ok(answer(&r));
        }
        let path = report_path(&db_version, &stored.digest);
        if let Some(b) = self.derived.get(&path, MAX_REPORT).await? {
            if let Ok(r) = serde_json::from_slice::<Report>(&b) {
                let r = Arc::new(r);
                self.remember(key, r.clone());
                return Ok(answer(&r));
            }
        }
        let images = self.images(access, &stored.digest, &stored.bytes, &stored.media_type).await?;
        let mut layer_sets = Vec::new();
        let mut missing = false;
        for image in &images {
            let mut invs = Vec::new();
            for l in &image.layers {
                match self.load_inventory(&l.digest).await? {
                    Some(inv) => invs.push(inv),
                    None => missing = true,
                }
            }
            layer_sets.push(invs);
        }
        if missing {
            let failure = failure_path(access.repo(), &stored.digest);
            if let Some(b) = self.derived.get(&failure, 1 << 20).await? {
                let f: Failure = serde_json::from_slice(&b).map_err(OciError::internal)?;
                // Answered for an hour, then the job is tried again.
                let age = Duration::from_secs(now_secs().saturating_sub(f.at));
                if age < self.failure_cooldown {
                    return Err(OciError::Unavailable {
                        retry_after: (self.failure_cooldown - age).max(Duration::from_secs(1)),
                        cause: format!("the scan failed after {} attempts: {}", f.attempts, f.error),
                    });
                }
                self.derived.delete(&failure).await?;
            }
            // A job retrying after a failure keeps its backoff: readers
            // polling the report do not restart it.
            let m = member(access.repo(), &stored.digest);
            if self.registry.state().get(&attempts_key(&m)).await?.is_none() {
                self.enqueue(access.repo(), &stored.digest).await?;
            }
            return Ok(Outcome::Pending { retry_after: Duration::from_secs(2) });
        }
        let mut platforms = Vec::new();
        let mut findings = Vec::new();
        for (image, invs) in images.iter().zip(layer_sets) {
            // Merging is CPU work proportional to the image: off the runtime.
            let (mut merged, invs) =
                tokio::task::spawn_blocking(move || (merge::merge(&invs), invs)).await.map_err(OciError::internal)?;
            let mut notes = Vec::new();
            let mut found = Vec::new();
            if let Some(db) = &db {
                let mut wanted: Vec<u32> = merged
                    .packages
                    .iter()
                    .filter_map(|p| report::query(p, merged.os.as_ref()).ok())
                    .map(|q| q.shard())
                    .collect();
                wanted.sort_unstable();
                wanted.dedup();
                let shards = db.shards(&self.derived, &wanted).await?;
                let (m, f, n) = tokio::task::spawn_blocking(move || {
                    let mut notes = Vec::new();
                    let found = report::match_packages(&merged, &shards, &mut notes);
                    (merged, found, notes)
                })
                .await
                .map_err(OciError::internal)?;
                found = f;
                notes.extend(n);
                merged = m;
            } else {
                notes.push("no vulnerability database imported: inventory only (berth vulndb import)".into());
            }
            for f in &mut found {
                f.platform = image.platform.clone();
            }
            findings.extend(found);
            let mut analyzers = std::collections::BTreeMap::new();
            for p in &merged.packages {
                *analyzers.entry(p.analyzer.clone()).or_insert(0) += 1;
            }
            let nothing_found = layer::ANALYZERS
                .iter()
                .filter(|a| if **a == "os-release" { merged.os.is_none() } else { !analyzers.contains_key(**a) })
                .map(|a| (*a).to_owned())
                .collect();
            platforms.push(PlatformReport {
                nothing_found,
                manifest: image.digest.to_string(),
                platform: image.platform.clone(),
                os: merged.os.clone(),
                package_count: merged.packages.len(),
                analyzers,
                layers: invs
                    .iter()
                    .map(|i| LayerSummary {
                        digest: i.digest.clone(),
                        entries: i.entries,
                        errors: i.errors.clone(),
                        warnings: i.warnings.clone(),
                    })
                    .collect(),
                packages: merged.packages,
                notes,
            });
        }
        let m = metrics::get();
        metrics::inc(&m.scan_reports);
        for f in &findings {
            metrics::inc(match f.severity {
                Severity::Critical => &m.scan_findings_critical,
                Severity::High => &m.scan_findings_high,
                Severity::Medium => &m.scan_findings_medium,
                Severity::Low | Severity::None => &m.scan_findings_low,
                Severity::Unknown => &m.scan_findings_unknown,
            });
        }
        let report = Report {
            artifact: Artifact {
                repository: access.repo().to_string(),
                reference: reference.to_string(),
                digest: stored.digest.to_string(),
                media_type: stored.media_type.clone(),
            },
            scanner: ScannerRef {
                name: "berth".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                inventory_format: FORMAT,
            },
            database: db
                .as_ref()
                .map(|d| DatabaseRef { version: d.manifest.version.clone(), created: d.manifest.created }),
            generated: rfc3339(now_secs()),
            os: platforms.iter().find_map(|p| p.os.clone()),
            package_count: platforms.iter().map(|p| p.package_count).sum(),
            summary: report::summarize(&findings),
            findings,
            not_an_image: images.is_empty().then(|| format!("{} has no image layers to inventory", stored.media_type)),
            platforms,
        };
        let body = serde_json::to_vec(&report).map_err(OciError::internal)?;
        self.derived.put(&path, Bytes::from(body)).await?;
        let report = Arc::new(report);
        self.remember(key, report.clone());
        Ok(answer(&report))
    }

    fn remember(&self, key: (Digest, String), report: Arc<Report>) {
        let mut cache = self.reports.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= REPORT_CACHE {
            cache.clear();
        }
        cache.insert(key, report);
    }

    /// The policy deciding for a repository: the longest matching glob.
    fn policy_for(&self, repo: &RepoName) -> Option<&ScanPolicy> {
        self.config
            .policies
            .iter()
            .filter(|p| crate::glob::Glob::new(&p.repositories).matches(repo.as_str()))
            .max_by_key(|p| p.repositories.len())
    }

    /// Refuse a pull the policy forbids. A manifest not scanned yet is
    /// served (and queued): the policy judges what is known.
    pub async fn check_pull(&self, access: &Access<Pull>, digest: &Digest) -> Result<(), OciError> {
        let Some(policy) = self.policy_for(access.repo()) else { return Ok(()) };
        let threshold: Severity = policy.severity.parse().unwrap_or(Severity::Critical);
        let report = match self.report(access, &Reference::Digest(digest.clone())).await {
            Ok(Outcome::Ready(r)) => r,
            Ok(Outcome::Pending { .. }) => return Ok(()),
            Err(e) => {
                tracing::warn!(repository = %access.repo(), digest = %digest, error = %e, "scan policy: no report; the pull is served");
                return Ok(());
            }
        };
        let blocking: Vec<&report::Finding> = report
            .findings
            .iter()
            .filter(|f| f.severity >= threshold)
            .filter(|f| !(policy.ignore_unfixable && f.fixed_version.is_none()))
            .filter(|f| !policy.allow.iter().any(|a| *a == f.id || f.aliases.contains(a)))
            .collect();
        let Some(worst) = blocking.iter().max_by_key(|f| (f.severity, (f.score.unwrap_or(0.0) * 10.0) as i64)) else {
            return Ok(());
        };
        metrics::inc(&metrics::get().scan_policy_denials);
        let message = format!(
            "pull refused by the scan policy for {}: {} finding(s) at or above {}; the worst is {} ({}{}) in {} {}",
            policy.repositories,
            blocking.len(),
            threshold.as_str(),
            worst.id,
            worst.severity.as_str(),
            worst.score.map(|s| format!(" {s:.1}")).unwrap_or_default(),
            worst.package,
            worst.installed_version
        );
        tracing::info!(
            target: "berth::audit",
            subject = access.subject().unwrap_or("anonymous"),
            repository = %access.repo(),
            operation = "scan_policy_deny",
            digest = %digest,
            findings = blocking.len(),
            worst = %worst.id,
            "audit"
        );
        Err(OciError::PolicyDenied(message))
    }

    /// Delete the facts of blobs that are no longer stored (the collector
    /// deleted them): one listing of the blobs and one of the facts. A fact
    /// younger than `grace` is kept (its blob may be listed in a page
    /// already read). Returns the number of facts deleted.
    pub async fn sweep(&self, grace: Duration) -> Result<usize, OciError> {
        let facts = self.derived.list("blobs").await?;
        if facts.is_empty() {
            return Ok(0);
        }
        let stored = self.registry.stored_blobs().await?;
        let mut doomed = Vec::new();
        for path in facts {
            // blobs/<alg>/<hex>/<name>
            let mut parts = path.splitn(4, '/');
            let (_, Some(alg), Some(hex)) = (parts.next(), parts.next(), parts.next()) else { continue };
            let Ok(digest) = format!("{alg}:{hex}").parse::<Digest>() else { continue };
            if stored.contains(&digest) {
                continue;
            }
            let young = match self.derived.head(&path).await? {
                Some(meta) => meta.last_modified.and_then(|t| t.elapsed().ok()).is_none_or(|age| age < grace),
                None => true,
            };
            if !young {
                doomed.push(path);
            }
        }
        self.derived.delete_many(&doomed).await?;
        Ok(doomed.len())
    }

    async fn sweeper(&self) {
        let state = self.registry.state();
        let mut tick = tokio::time::interval(Duration::from_secs(3600));
        loop {
            tick.tick().await;
            match state.try_lock("scan:sweep", Duration::from_secs(3000)).await {
                Ok(Some(lease)) => {
                    match self.sweep(Duration::from_secs(3600)).await {
                        Ok(n) if n > 0 => tracing::info!(deleted = n, "scan: facts of deleted blobs removed"),
                        Ok(_) => {}
                        Err(e) => tracing::warn!(error = %e, "scan: sweep failed"),
                    }
                    let _ = state.unlock(&lease).await;
                }
                Ok(None) => {}
                Err(e) => tracing::warn!(error = %e, "scan: sweep lease unavailable"),
            }
        }
    }

    /// Queue every tagged manifest once per inventory format: the first
    /// time the extension runs on stored content.
    pub async fn backfill(&self) -> Result<(), OciError> {
        let marker = format!("backfill/done-v{FORMAT}");
        if self.derived.head(&marker).await?.is_some() {
            return Ok(());
        }
        let state = self.registry.state();
        let Some(lease) = state.try_lock("scan:backfill", Duration::from_secs(3600)).await? else { return Ok(()) };
        let mut queued = 0u64;
        let mut last: Option<String> = None;
        loop {
            let page = self.registry.catalog(Some(500), last.as_deref(), &|_| true).await?;
            for name in &page.items {
                let Ok(repo) = name.parse::<RepoName>() else { continue };
                let access = internal_access::<Pull>(&repo, "scanner");
                let mut tag_last: Option<String> = None;
                loop {
                    let tags = match self.registry.tags(&access, Some(1000), tag_last.as_deref()).await {
                        Ok(t) => t,
                        Err(OciError::NameUnknown(_)) => break,
                        Err(e) => return Err(e),
                    };
                    for t in &tags.items {
                        let Ok(tag) = t.parse() else { continue };
                        match self.registry.manifest_get(&access, &Reference::Tag(tag)).await {
                            Ok(m) => {
                                self.enqueue(&repo, &m.digest).await?;
                                queued += 1;
                            }
                            Err(OciError::ManifestUnknown(_)) => {}
                            Err(e) => return Err(e),
                        }
                    }
                    match tags.next {
                        Some(n) => tag_last = Some(n),
                        None => break,
                    }
                }
            }
            match page.next {
                Some(n) => last = Some(n),
                None => break,
            }
        }
        self.derived.put(&marker, Bytes::from(format!("{{\"queued\":{queued},\"at\":{}}}", now_secs()))).await?;
        let _ = state.unlock(&lease).await;
        tracing::info!(queued, "scan: backfill queued the stored images");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_796_601_600), "2026-12-07T00:00:00Z");
        assert_eq!(rfc3339(951_825_600), "2000-02-29T12:00:00Z");
    }

    #[test]
    fn members_round_trip() {
        let repo: RepoName = "a/b".parse().unwrap_or_else(|_| unreachable!());
        let d = Digest::sha256(b"x");
        assert_eq!(parse_member(&member(&repo, &d)), Some((repo, d)));
        assert_eq!(parse_member("bad"), None);
    }
}
