//! Sync: copying selected repositories and tags from an upstream ahead of
//! any pull (`berth mirror sync`, and `serve` every `sync.interval`).
//!
//! - One run per upstream at a time in the whole fleet: a lease in shared
//!   state (`mirror:sync:<name>`), renewed while the run lasts.
//! - Everything under a tag is stored before the tag: blobs, then each
//!   platform's manifest, then the manifest or index the tag names. A run
//!   cut short (`kill -9`) leaves committed blobs and manifests and no tag
//!   pointing at anything incomplete; the next run finds them here and
//!   fetches only the rest.
//! - Progress is reported per tag (copied, current, failed) to a callback:
//!   the command prints it, `serve` logs it.

use std::cmp::Ordering;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use serde::Serialize;

use super::*;
use crate::glob::Glob;

/// How long a sync's lease lives without being renewed.
const SYNC_LOCK_TTL: Duration = Duration::from_secs(30);

/// Indexes nested deeper than this fail their tag.
const MAX_DEPTH: usize = 2;

/// At most this many manifests under one tag (an index of indexes of a
/// hostile upstream could name millions); the tag fails beyond it.
const MAX_MANIFESTS_PER_TAG: usize = 1_000;

/// What one run did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct SyncReport {
    pub upstream: String,
    /// Another run (another replica or command) held the lease: nothing done.
    pub busy: bool,
    pub repositories: usize,
    pub tags_selected: usize,
    /// Tags for which something was fetched or moved.
    pub tags_copied: usize,
    /// Tags already here with everything under them.
    pub tags_current: usize,
    pub tags_failed: usize,
    pub manifests_fetched: usize,
    pub blobs_fetched: usize,
    pub bytes_fetched: u64,
    pub errors: Vec<String>,
}

/// One tag done.
#[derive(Debug, Clone, Copy)]
pub struct SyncProgress<'a> {
    pub upstream: &'a str,
    pub repository: &'a RepoName,
    pub tag: &'a str,
    /// `copied`, `current` or `failed`.
    pub outcome: &'static str,
    pub done: usize,
    pub total: usize,
}

/// A tag to copy: the local repository, the upstream's name for it, the tag.
struct Item {
    repo: RepoName,
    remote: String,
    tag: crate::oci::Tag,
    /// Manifests visited under this tag so far (see [`MAX_MANIFESTS_PER_TAG`]).
    visited: std::sync::atomic::AtomicUsize,
}

/// Tag order for `newest`: numeric runs compare as numbers, the rest as
/// bytes, so `1.10` sorts after `1.9` and `v2` after `v1`.
pub fn version_order(a: &str, b: &str) -> Ordering {
    fn runs(s: &str) -> Vec<(bool, &str)> {
        let mut out = Vec::new();
        let bytes = s.as_bytes();
        let mut start = 0;
        for i in 1..=bytes.len() {
            if i == bytes.len() || bytes[i].is_ascii_digit() != bytes[start].is_ascii_digit() {
                out.push((bytes[start].is_ascii_digit(), &s[start..i]));
                start = i;
            }
        }
        out
    }
    let (ra, rb) = (runs(a), runs(b));
    for (x, y) in ra.iter().zip(&rb) {
        let o = match (x, y) {
            ((true, x), (true, y)) => {
                let (x, y) = (x.trim_start_matches('0'), y.trim_start_matches('0'));
                x.len().cmp(&y.len()).then_with(|| x.cmp(y))
            }
            ((_, x), (_, y)) => x.cmp(y),
        };
        if o != Ordering::Equal {
            return o;
        }
    }
    ra.len().cmp(&rb.len()).then_with(|| a.cmp(b))
}

/// The tags of `all` that `sync` selects, newest first.
pub fn select_tags(sync: &MirrorSyncConfig, all: &[String]) -> Vec<String> {
    let globs: Vec<Glob> = sync.tags.iter().map(|t| Glob::new(t)).collect();
    let mut tags: Vec<String> = all.iter().filter(|t| globs.iter().any(|g| g.matches(t))).cloned().collect();
    tags.sort_by(|a, b| version_order(b, a));
    tags.dedup();
    if let Some(n) = sync.newest {
        tags.truncate(n);
    }
    tags
}

/// Whether a descriptor's platform is one of `wanted` (`os/arch` matching
/// any variant, `os/arch/variant` exactly); everything when none is named.
fn platform_wanted(wanted: &[String], descriptor: &serde_json::Value) -> bool {
    if wanted.is_empty() {
        return true;
    }
    let p = &descriptor["platform"];
    let (os, arch, variant) =
        (p["os"].as_str().unwrap_or(""), p["architecture"].as_str().unwrap_or(""), p["variant"].as_str());
    wanted.iter().any(|w| {
        let parts: Vec<&str> = w.split('/').collect();
        parts.first() == Some(&os) && parts.get(1) == Some(&arch) && parts.get(2).is_none_or(|v| Some(*v) == variant)
    })
}

impl Mirror {
    /// Names of the upstreams that have a `sync` section.
    pub fn sync_upstreams(&self) -> Vec<String> {
        self.routes.iter().filter(|r| r.sync.is_some()).map(|r| r.name.clone()).collect()
    }

    /// One sync run of upstream `name`. `Err`: the run could not start
    /// (unknown upstream, no sync section, shared state unavailable).
    pub async fn sync(
        &self,
        name: &str,
        progress: &(dyn Fn(SyncProgress<'_>) + Send + Sync),
    ) -> Result<SyncReport, String> {
        let route = self.routes.iter().find(|r| r.name == name).ok_or_else(|| format!("no upstream named {name:?}"))?;
        let sync = route.sync.as_ref().ok_or_else(|| format!("upstream {name:?} has no sync section"))?;
        let mut report = SyncReport { upstream: name.to_owned(), ..SyncReport::default() };
        let state = self.registry.state();
        let lease = match state.try_lock(&format!("mirror:sync:{name}"), SYNC_LOCK_TTL).await {
            Ok(Some(lease)) => Held::new(state, Some(lease), None),
            Ok(None) => {
                report.busy = true;
                return Ok(report);
            }
            Err(e) => return Err(format!("cannot take the sync lease: {e}")),
        };
        let work = self.select(route, sync, &mut report).await;
        report.tags_selected = work.len();
        for (i, item) in work.iter().enumerate() {
            let outcome = match self.sync_tag(route, sync, item, &mut report).await {
                Ok(true) => {
                    report.tags_copied += 1;
                    "copied"
                }
                Ok(_) => {
                    report.tags_current += 1;
                    "current"
                }
                Err(e) => {
                    report.tags_failed += 1;
                    report.errors.push(format!("{}:{}: {e}", item.repo, item.tag));
                    "failed"
                }
            };
            progress(SyncProgress {
                upstream: name,
                repository: &item.repo,
                tag: item.tag.as_str(),
                outcome,
                done: i + 1,
                total: work.len(),
            });
        }
        lease.release().await;
        Ok(report)
    }

    /// The tags to copy: each repository (literal, or globs matched against
    /// the upstream's catalog) and its selected tags.
    async fn select(&self, route: &Route, sync: &MirrorSyncConfig, report: &mut SyncReport) -> Vec<Item> {
        let mut names: Vec<String> = sync.repositories.iter().filter(|r| !r.contains('*')).cloned().collect();
        let globs: Vec<Glob> = sync.repositories.iter().filter(|r| r.contains('*')).map(|r| Glob::new(r)).collect();
        if !globs.is_empty() {
            let catalog = route.client.catalog().await;
            count(&catalog);
            match catalog {
                Ok(all) => {
                    let below = |n: &str| -> Option<String> {
                        if route.remote_prefix.is_empty() {
                            Some(n.to_owned())
                        } else {
                            n.strip_prefix(route.remote_prefix.as_str())?.strip_prefix('/').map(str::to_owned)
                        }
                    };
                    names.extend(all.iter().filter_map(|n| below(n)).filter(|n| globs.iter().any(|g| g.matches(n))));
                }
                Err(e) => report.errors.push(format!("the upstream's catalog (for the repository patterns): {e}")),
            }
        }
        names.sort();
        names.dedup();
        let mut work = Vec::new();
        for name in names {
            let local = if route.prefix.is_empty() { name.clone() } else { format!("{}/{name}", route.prefix) };
            let Ok(repo) = local.parse::<RepoName>() else {
                report.errors.push(format!("{name:?} is not a repository name here"));
                continue;
            };
            // A root upstream's catalog may name repositories under
            // another upstream's prefix: those are that upstream's alone.
            let Some((owner, remote)) = self.route(&repo) else { continue };
            if !std::ptr::eq(owner, route) {
                report.errors.push(format!("{repo} belongs to upstream {}; skipped", owner.name));
                continue;
            }
            report.repositories += 1;
            let tags = route.client.tags(&remote).await;
            count(&tags);
            let tags = match tags {
                Ok(t) => t,
                Err(e) => {
                    report.errors.push(format!("{repo}: listing tags: {e}"));
                    continue;
                }
            };
            for tag in select_tags(sync, &tags) {
                if let Ok(tag) = tag.parse::<crate::oci::Tag>() {
                    work.push(Item { repo: repo.clone(), remote: remote.clone(), tag, visited: Default::default() });
                }
            }
        }
        work
    }

    /// Copy what one tag names; whether anything was copied (the tag moved,
    /// or something under it was fetched).
    async fn sync_tag(
        &self,
        route: &Route,
        sync: &MirrorSyncConfig,
        item: &Item,
        report: &mut SyncReport,
    ) -> Result<bool, String> {
        let head = route.client.head_manifest(&item.remote, item.tag.as_str()).await;
        count(&head);
        let head = head.map_err(|e| e.to_string())?;
        let digest: Digest = head.digest.parse().map_err(|_| format!("upstream digest {:?}", head.digest))?;
        let before = (report.manifests_fetched, report.blobs_fetched);
        let moved = self.sync_manifest(route, sync, item, &digest, true, 0, report).await?;
        let copied = moved || before != (report.manifests_fetched, report.blobs_fetched);
        if copied {
            self.stored(&item.repo, &digest);
        }
        let key = checked_key(&item.repo, item.tag.as_str());
        if let Err(e) = self.registry.state().set(&key, Bytes::from_static(b"1"), route.tag_ttl).await {
            tracing::debug!(error = %e, "cannot record the tag check");
        }
        Ok(copied)
    }

    /// Make `digest` and everything under it present, storing the manifest
    /// last (and tagging it when `tagged`); whether the tag moved.
    #[allow(clippy::too_many_arguments)]
    fn sync_manifest<'a>(
        &'a self,
        route: &'a Route,
        sync: &'a MirrorSyncConfig,
        item: &'a Item,
        digest: &'a Digest,
        tagged: bool,
        depth: usize,
        report: &'a mut SyncReport,
    ) -> futures::future::BoxFuture<'a, Result<bool, String>> {
        Box::pin(async move {
            if item.visited.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= MAX_MANIFESTS_PER_TAG {
                return Err(format!("more than {MAX_MANIFESTS_PER_TAG} manifests under one tag"));
            }
            let reader: Access<Pull> = crate::auth::internal_access(&item.repo, "mirror");
            let writer: Access<Push> = crate::auth::internal_access(&item.repo, "mirror");
            let (bytes, media_type, here) =
                match self.registry.manifest_get(&reader, &Reference::Digest(digest.clone())).await {
                    Ok(m) => (m.bytes, m.media_type, true),
                    Err(OciError::ManifestUnknown(_)) => {
                        let fetched = route.client.get_manifest(&item.remote, &digest.to_string()).await;
                        count(&fetched);
                        let fetched = fetched.map_err(|e| e.to_string())?;
                        report.manifests_fetched += 1;
                        (fetched.bytes, fetched.media_type, false)
                    }
                    Err(e) => return Err(e.to_string()),
                };
            let parsed: serde_json::Value =
                serde_json::from_slice(&bytes).map_err(|e| format!("manifest {digest}: {e}"))?;
            if let Some(children) = parsed["manifests"].as_array() {
                // Nothing is stored whose children were not all copied.
                if depth >= MAX_DEPTH {
                    return Err(format!("manifest {digest}: indexes nested deeper than {MAX_DEPTH}"));
                }
                for child in children.iter().filter(|c| platform_wanted(&sync.platforms, c)) {
                    let Some(Ok(d)) = child["digest"].as_str().map(str::parse::<Digest>) else { continue };
                    self.sync_manifest(route, sync, item, &d, false, depth + 1, report).await?;
                }
            } else {
                let blobs = std::iter::once(&parsed["config"])
                    .chain(parsed["layers"].as_array().into_iter().flatten())
                    .chain(parsed["blobs"].as_array().into_iter().flatten());
                for desc in blobs {
                    // Layers served from elsewhere (`urls`) are not the upstream's to give.
                    if desc.get("urls").is_some() {
                        continue;
                    }
                    let Some(Ok(d)) = desc["digest"].as_str().map(str::parse::<Digest>) else { continue };
                    match self.registry.blob_meta(&reader, &d).await {
                        Ok(_) => {}
                        Err(OciError::BlobUnknown(_)) => self.sync_blob(route, item, &writer, &d, report).await?,
                        Err(e) => return Err(e.to_string()),
                    }
                }
            }
            let tag = tagged.then_some(&item.tag);
            let moved = match tag {
                Some(t) => match self.registry.manifest_get(&reader, &Reference::Tag(t.clone())).await {
                    Ok(m) => m.digest != *digest,
                    Err(OciError::ManifestUnknown(_)) => true,
                    Err(e) => return Err(e.to_string()),
                },
                None => false,
            };
            if !here || moved {
                self.registry
                    .manifest_put_mirrored(&writer, digest, if moved { tag } else { None }, Some(&media_type), bytes)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(moved)
        })
    }

    /// Fetch one blob into storage (verified by the upload service).
    async fn sync_blob(
        &self,
        route: &Route,
        item: &Item,
        writer: &Access<Push>,
        digest: &Digest,
        report: &mut SyncReport,
    ) -> Result<(), String> {
        let blob = route.client.get_blob(&item.remote, &digest.to_string()).await;
        count(&blob);
        let blob = blob.map_err(|e| format!("blob {digest}: {e}"))?;
        let seen = Arc::new(AtomicU64::new(0));
        let counter = seen.clone();
        let body = blob
            .body
            .map(move |piece| match piece {
                Ok(b) => {
                    counter.fetch_add(b.len() as u64, AtomicOrdering::Relaxed);
                    crate::metrics::get().mirror_fetched_bytes.fetch_add(b.len() as u64, AtomicOrdering::Relaxed);
                    Ok(b)
                }
                Err(e) => {
                    if matches!(e, UpstreamError::DigestMismatch(_)) {
                        crate::metrics::inc(&crate::metrics::get().mirror_upstream[crate::metrics::MIRROR_REFUSED]);
                    }
                    Err(BodyError::Read(e.to_string()))
                }
            })
            .boxed();
        self.registry
            .upload_monolithic(writer, digest, blob.size, body)
            .await
            .map_err(|e| format!("blob {digest}: {e}"))?;
        report.blobs_fetched += 1;
        report.bytes_fetched += seen.load(AtomicOrdering::Relaxed);
        Ok(())
    }

    /// `serve`'s schedule: for each upstream with `sync.interval`, a run
    /// when no replica ran one within the interval (a shared-state marker
    /// that lives that long).
    pub fn spawn_schedule(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        self.routes
            .iter()
            .filter_map(|r| Some((r.name.clone(), r.sync.as_ref()?.interval?.0)))
            .map(|(name, every)| {
                let mirror = self.clone();
                tokio::spawn(async move {
                    let tick = every.min(Duration::from_secs(30));
                    let marker = format!("mirror:sync:last:{name}");
                    loop {
                        if matches!(mirror.registry.state().get(&marker).await, Ok(None)) {
                            let log = |p: SyncProgress<'_>| {
                                tracing::info!(upstream = p.upstream, repository = %p.repository, tag = p.tag,
                                    outcome = p.outcome, done = p.done, total = p.total, "mirror sync")
                            };
                            match mirror.sync(&name, &log).await {
                                Ok(r) if r.busy => {}
                                Ok(r) => {
                                    tracing::info!(upstream = %name, copied = r.tags_copied, current = r.tags_current,
                                        failed = r.tags_failed, blobs = r.blobs_fetched, bytes = r.bytes_fetched,
                                        errors = ?r.errors, "mirror sync finished");
                                    let _ = mirror.registry.state().set(&marker, Bytes::from_static(b"1"), every).await;
                                }
                                Err(e) => tracing::warn!(upstream = %name, error = %e, "mirror sync could not run"),
                            }
                        }
                        tokio::time::sleep(tick).await;
                    }
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_sort_by_their_numbers() {
        let mut tags = vec!["1.9", "1.10", "1.2", "v2", "v10", "1.10-rc1", "latest", "01.3", "1.10.0"];
        tags.sort_by(|a, b| version_order(a, b));
        assert_eq!(tags, ["1.2", "01.3", "1.9", "1.10", "1.10-rc1", "1.10.0", "latest", "v2", "v10"]);
    }

    #[test]
    fn tags_are_selected_by_glob_and_newest() {
        let sync = MirrorSyncConfig {
            repositories: vec!["a".into()],
            tags: vec!["1.*".into(), "stable".into()],
            newest: Some(3),
            platforms: vec![],
            interval: None,
        };
        let all: Vec<String> =
            ["1.0", "1.1", "1.2", "1.10", "2.0", "dev", "stable", "1.1"].iter().map(|s| s.to_string()).collect();
        assert_eq!(select_tags(&sync, &all), ["stable", "1.10", "1.2"]);
        let every = MirrorSyncConfig { newest: None, tags: vec!["*".into()], ..sync };
        assert_eq!(select_tags(&every, &all).len(), 7);
    }

    #[test]
    fn platforms_match_with_or_without_variant() {
        let d = |os: &str, arch: &str, variant: Option<&str>| {
            let mut p = serde_json::json!({"os": os, "architecture": arch});
            if let Some(v) = variant {
                p["variant"] = v.into();
            }
            serde_json::json!({ "platform": p })
        };
        let wanted = vec!["linux/amd64".to_owned(), "linux/arm/v7".to_owned()];
        assert!(platform_wanted(&wanted, &d("linux", "amd64", None)));
        assert!(platform_wanted(&wanted, &d("linux", "amd64", Some("v3"))));
        assert!(platform_wanted(&wanted, &d("linux", "arm", Some("v7"))));
        assert!(!platform_wanted(&wanted, &d("linux", "arm", Some("v6"))));
        assert!(!platform_wanted(&wanted, &d("linux", "arm64", None)));
        assert!(!platform_wanted(&wanted, &serde_json::json!({})));
        assert!(platform_wanted(&[], &serde_json::json!({})));
    }
}
