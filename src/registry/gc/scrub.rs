//! Scrub: re-hash stored blobs (streaming, rate-limited) and report what is
//! corrupt, missing, orphaned or dangling. `repair` removes dangling records
//! (links to missing blobs, tags and referrer or pull records of missing
//! manifests) through a collector pass, with its marks and second scan, so
//! a writer re-creating one of them meanwhile is never undone. Data is never
//! removed: a corrupt blob is reported for an operator to deal with.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};

use super::super::{keys, Registry, Result};
use super::{plan, unix, GcReport, OnProgress, Progress, Purpose, Scanned};
use crate::oci::{Digest, OciError, ResumableHasher};

/// How a scrub runs.
#[derive(Debug, Clone)]
pub struct ScrubOptions {
    /// Remove dangling records (never data).
    pub repair: bool,
    /// Re-hash every blob (else only the records are checked).
    pub verify: bool,
    /// Hashing budget, bytes per second for the whole scrub (`None`: as
    /// fast as the store sends).
    pub max_bytes_per_sec: Option<u64>,
    /// Blobs hashed at once.
    pub parallel: usize,
}

impl Default for ScrubOptions {
    fn default() -> Self {
        ScrubOptions { repair: false, verify: true, max_bytes_per_sec: Some(64 * 1024 * 1024), parallel: 2 }
    }
}

/// One thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Finding {
    /// `blob`, `manifest`, `link`, `tag`, `referrer`, `pull-record`.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repository: Option<String>,
    pub target: String,
    pub detail: String,
}

/// What a scrub found (and repaired).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ScrubReport {
    pub started: u64,
    pub duration_ms: u64,
    pub scanned: Scanned,
    pub blobs_hashed: u64,
    pub bytes_hashed: u64,
    /// Blobs whose bytes do not hash to their digest (or have another size
    /// than listed).
    pub corrupt: Vec<Finding>,
    /// Blobs and manifests a stored manifest references that are not stored.
    pub missing: Vec<Finding>,
    /// Blobs no repository links (garbage collection takes them once past
    /// the grace period).
    pub orphaned: Vec<Finding>,
    /// Records that point at nothing.
    pub dangling: Vec<Finding>,
    /// Blobs and manifests that manifests of mirrored repositories
    /// reference and that no pull has fetched yet (not a fault).
    #[serde(default)]
    pub not_fetched: u64,
    /// The repair pass, with `repair`.
    pub repaired: Option<GcReport>,
}

impl ScrubReport {
    pub fn findings(&self) -> usize {
        self.corrupt.len() + self.missing.len() + self.orphaned.len() + self.dangling.len()
    }
}

/// A byte budget shared by the hashing tasks.
struct Budget {
    per_sec: Option<u64>,
    start: Instant,
    spent: Mutex<u64>,
}

impl Budget {
    async fn spend(&self, n: u64) {
        let Some(rate) = self.per_sec.filter(|r| *r > 0) else { return };
        let total = {
            let mut spent = self.spent.lock().unwrap_or_else(|p| p.into_inner());
            *spent += n;
            *spent
        };
        let due = Duration::from_secs_f64(total as f64 / rate as f64);
        let elapsed = self.start.elapsed();
        if due > elapsed {
            tokio::time::sleep(due - elapsed).await;
        }
    }
}

impl Registry {
    /// The last scrub's report (lists cut at 1,000 findings each).
    pub async fn scrub_last_report(&self) -> Result<Option<ScrubReport>> {
        match berth_storage::ObjectStoreExt::get_bytes(self.store.as_ref(), keys::SCRUB_REPORT, 64 * 1024 * 1024).await
        {
            Ok(raw) => Ok(serde_json::from_slice(&raw).ok()),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Check everything the store holds; see the module docs.
    pub async fn scrub(&self, options: &ScrubOptions, progress: OnProgress<'_>) -> Result<ScrubReport> {
        let clock = Instant::now();
        let mut report = ScrubReport { started: unix(SystemTime::now()), ..ScrubReport::default() };
        let snap = {
            let mut index = self.gc_index().await;
            self.gc_scan(&mut index, &mut report.scanned, progress).await?
        };

        // What manifests reference but the store lacks.
        let mut linked: HashSet<&Digest> = HashSet::new();
        let mut needed: HashSet<&Digest> = HashSet::new();
        for (repo, recs) in &snap.repos {
            linked.extend(recs.links.keys());
            let on_demand = self.fetched_on_demand(repo);
            for m in recs.revisions.keys() {
                let Some(Some(refs)) = snap.refs.get(m) else { continue };
                needed.extend(refs.blobs.iter());
                for b in &refs.blobs {
                    if !snap.blobs.contains_key(b) && on_demand {
                        report.not_fetched += 1;
                    } else if !snap.blobs.contains_key(b) {
                        report.missing.push(Finding {
                            kind: "blob".into(),
                            repository: Some(repo.to_string()),
                            target: b.to_string(),
                            detail: format!("manifest {m} references it; it is not stored"),
                        });
                    }
                }
                for c in &refs.children {
                    if !recs.revisions.contains_key(c) && on_demand {
                        report.not_fetched += 1;
                    } else if !recs.revisions.contains_key(c) {
                        report.missing.push(Finding {
                            kind: "manifest".into(),
                            repository: Some(repo.to_string()),
                            target: c.to_string(),
                            detail: format!("index {m} references it; it is not stored in the repository"),
                        });
                    }
                }
            }
        }
        for (d, obj) in &snap.blobs {
            if !linked.contains(d) && !needed.contains(d) {
                report.orphaned.push(Finding {
                    kind: "blob".into(),
                    repository: None,
                    target: d.to_string(),
                    detail: format!("{} bytes; no repository links it", obj.size),
                });
            }
        }
        for d in plan::dangling(&snap, None).deletions {
            report.dangling.push(Finding {
                kind: d.kind.as_str().into(),
                repository: d.repository,
                target: d.target,
                detail: d.reason,
            });
        }

        if options.verify {
            let budget = Budget { per_sec: options.max_bytes_per_sec, start: Instant::now(), spent: Mutex::new(0) };
            let total = snap.blobs.len() as u64;
            let done = std::sync::atomic::AtomicU64::new(0);
            type Check<'a> = BoxFuture<'a, Result<(u64, Option<Finding>)>>;
            let checks: Vec<Check<'_>> = snap
                .blobs
                .iter()
                .map(|(d, obj)| {
                    let (budget, done) = (&budget, &done);
                    async move {
                        let r = self.verify_blob(d, obj.size, budget).await;
                        let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                        progress(Progress { phase: "hashing blobs", done: n, total: Some(total) });
                        r
                    }
                    .boxed()
                })
                .collect();
            let results: Vec<(u64, Option<Finding>)> =
                futures::stream::iter(checks).buffer_unordered(options.parallel.max(1)).try_collect().await?;
            for (bytes, finding) in results {
                report.blobs_hashed += 1;
                report.bytes_hashed += bytes;
                report.corrupt.extend(finding);
            }
        }
        drop(snap);

        if options.repair && !report.dangling.is_empty() {
            match self.lifecycle_pass(false, Purpose::Repair, progress).await? {
                Some(pass) => report.repaired = Some(pass),
                None => {
                    return Err(OciError::Unavailable {
                        retry_after: Duration::from_secs(60),
                        cause: "another replica's collection pass holds the lease; repair later".into(),
                    })
                }
            }
        }
        let m = crate::metrics::get();
        let set = |c: &std::sync::atomic::AtomicU64, v: usize| c.store(v as u64, std::sync::atomic::Ordering::Relaxed);
        set(&m.scrub_corrupt, report.corrupt.len());
        set(&m.scrub_missing, report.missing.len());
        set(&m.scrub_orphaned, report.orphaned.len());
        set(&m.scrub_dangling, report.dangling.len());
        m.scrub_last_run.store(unix(SystemTime::now()), std::sync::atomic::Ordering::Relaxed);
        report.duration_ms = clock.elapsed().as_millis() as u64;
        let mut stored = report.clone();
        for list in [&mut stored.corrupt, &mut stored.missing, &mut stored.orphaned, &mut stored.dangling] {
            list.truncate(1000);
        }
        match serde_json::to_vec(&stored) {
            Ok(body) => {
                if let Err(e) = self.store.put(keys::SCRUB_REPORT, body.into(), berth_storage::PutMode::Overwrite).await
                {
                    tracing::warn!(error = %e, "cannot store the scrub report");
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot encode the scrub report"),
        }
        for f in report.corrupt.iter().chain(&report.missing) {
            tracing::error!(kind = %f.kind, repository = f.repository.as_deref().unwrap_or(""), target = %f.target, detail = %f.detail, "scrub finding");
        }
        Ok(report)
    }

    /// Stream one blob through its hash. Returns the bytes read and a
    /// finding if it does not match; a blob deleted meanwhile is fine.
    async fn verify_blob(&self, digest: &Digest, listed: u64, budget: &Budget) -> Result<(u64, Option<Finding>)> {
        let got = match self.store.get(&keys::blob(digest), None).await {
            Ok(g) => g,
            Err(e) if e.is_not_found() => return Ok((0, None)),
            Err(e) => return Err(e.into()),
        };
        let mut hasher = ResumableHasher::new(digest.algorithm());
        let mut body = got.body;
        let mut read = 0u64;
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            read += chunk.len() as u64;
            hasher.update(&chunk);
            budget.spend(chunk.len() as u64).await;
        }
        let actual = hasher.finish();
        let finding = if &actual != digest {
            Some(format!("its {read} bytes hash to {actual}"))
        } else if read != listed {
            Some(format!("listed as {listed} bytes, {read} read"))
        } else {
            None
        };
        Ok((
            read,
            finding.map(|detail| Finding { kind: "blob".into(), repository: None, target: digest.to_string(), detail }),
        ))
    }
}
