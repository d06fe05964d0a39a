//! Manifests, tags and referrers.
//!
//! A manifest is stored per repository as one revision object holding its
//! media type and its exact bytes, so a GET by digest is one read and a GET by
//! tag is two. A manifest with a `subject` also writes one referrer record
//! (its descriptor) under the subject's digest.

use bytes::{BufMut, Bytes, BytesMut};
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt, TryStreamExt};

use berth_storage::{ObjectStoreExt, PutMode};

use super::hooks::Point;
use super::keys;
use super::{Access, Delete, Pull, Push, Registry, Result, Update};
use crate::oci::manifest::{self, ManifestError, MAX_MANIFEST_SIZE};
use crate::oci::{Descriptor, Digest, Manifest, OciError, Reference, RepoName, Tag};

/// A manifest as served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredManifest {
    pub digest: Digest,
    pub media_type: String,
    pub bytes: Bytes,
}

/// The outcome of a manifest push.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedManifest {
    pub digest: Digest,
    /// The subject the manifest refers to, echoed as `OCI-Subject`.
    pub subject: Option<Digest>,
}

/// Backend reads in flight for one request.
const PARALLEL_READS: usize = 16;

/// Largest revision object: the manifest plus its media-type line.
const MAX_REVISION_SIZE: u64 = MAX_MANIFEST_SIZE as u64 + 512;

fn encode_revision(media_type: &str, bytes: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(media_type.len() + 1 + bytes.len());
    out.put_slice(media_type.as_bytes());
    out.put_u8(b'\n');
    out.put_slice(bytes);
    out.freeze()
}

fn decode_revision(digest: Digest, raw: Bytes) -> Result<StoredManifest> {
    let nl = raw
        .iter()
        .position(|b| *b == b'\n')
        .ok_or_else(|| OciError::internal(format!("revision object of {digest} has no media-type line")))?;
    let media_type = std::str::from_utf8(&raw[..nl])
        .map_err(|_| OciError::internal(format!("revision object of {digest} has a bad media type")))?
        .to_owned();
    Ok(StoredManifest { digest, media_type, bytes: raw.slice(nl + 1..) })
}

/// A write refused because a collection pass may be removing what it
/// touched: retried, it succeeds once the pass is past it.
fn collecting() -> OciError {
    OciError::Unavailable {
        retry_after: std::time::Duration::from_secs(1),
        cause: "garbage collection is removing what this write touched; retry".into(),
    }
}

impl From<ManifestError> for OciError {
    fn from(e: ManifestError) -> OciError {
        match e {
            ManifestError::TooLarge => OciError::ManifestTooLarge { limit: MAX_MANIFEST_SIZE },
            other => OciError::ManifestInvalid(other.to_string()),
        }
    }
}

impl Registry {
    pub(super) async fn resolve_tag(&self, repo: &RepoName, tag: &Tag) -> Result<Digest> {
        let raw = match self.store.get_bytes(&keys::tag(repo, tag), 1024).await {
            Ok(raw) => raw,
            Err(e) if e.is_not_found() => return Err(OciError::ManifestUnknown(format!("{repo}:{tag}"))),
            Err(e) => return Err(e.into()),
        };
        std::str::from_utf8(&raw)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| OciError::internal(format!("tag object {repo}:{tag} does not hold a digest")))
    }

    pub(super) async fn read_revision(&self, repo: &RepoName, digest: &Digest) -> Result<StoredManifest> {
        match self.store.get_bytes(&keys::revision(repo, digest), MAX_REVISION_SIZE).await {
            Ok(raw) => decode_revision(digest.clone(), raw),
            Err(e) if e.is_not_found() => Err(OciError::ManifestUnknown(digest.to_string())),
            Err(e) => Err(e.into()),
        }
    }

    /// Fetch a manifest by tag or digest.
    pub async fn manifest_get(&self, access: &Access<Pull>, reference: &Reference) -> Result<StoredManifest> {
        let repo = access.repo();
        let generation = self.caches.generation();
        let digest = match reference {
            Reference::Digest(d) => d.clone(),
            Reference::Tag(t) => match self.caches.tag(repo.as_str(), t.as_str()) {
                Some(d) => d,
                None => {
                    let d = self.resolve_tag(repo, t).await?;
                    self.caches.put_tag(repo.as_str(), t.as_str(), d.clone(), generation);
                    d
                }
            },
        };
        if let Some(m) = self.caches.manifest(repo.as_str(), &digest) {
            return Ok(m);
        }
        let m = self.read_revision(repo, &digest).await?;
        self.caches.put_manifest(repo.as_str(), m.clone(), generation);
        Ok(m)
    }

    /// Validate and store a manifest, tagging it when pushed by tag. Moving
    /// a tag that points at another manifest also needs `may_move`.
    pub async fn manifest_put(
        &self,
        access: &Access<Push>,
        may_move: Option<&Access<Update>>,
        reference: &Reference,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<PushedManifest> {
        let repo = access.repo();
        let parsed = manifest::parse(content_type, &body)?;
        let digest = match reference {
            Reference::Digest(d) => {
                let actual = Digest::of(d.algorithm(), &body);
                if &actual != d {
                    return Err(OciError::DigestInvalid(format!("manifest digest is {actual}, not {d}")));
                }
                actual
            }
            Reference::Tag(_) => Digest::sha256(&body),
        };
        self.check_references(repo, &parsed).await?;
        self.check_quota(repo, &digest, &parsed).await?;
        if let (Reference::Tag(tag), None) = (reference, may_move) {
            match self.store.get_bytes(&keys::tag(repo, tag), 1024).await {
                Ok(current) if current != digest.to_string().as_bytes() => return Err(OciError::Denied),
                Ok(_) => {}
                Err(e) if e.is_not_found() => {}
                Err(e) => return Err(e.into()),
            }
        }

        self.pause(Point::PutChecked).await;
        let media_type = parsed.kind.media_type();
        self.store.put(&keys::revision(repo, &digest), encode_revision(media_type, &body), PutMode::Overwrite).await?;
        if let Some(subject) = &parsed.subject {
            let descriptor = Descriptor {
                media_type: media_type.to_owned(),
                digest: digest.clone(),
                size: body.len() as u64,
                artifact_type: parsed.effective_artifact_type().map(str::to_owned),
                annotations: parsed.annotations.clone().filter(|a| !a.is_empty()),
                urls: None,
            };
            let record = serde_json::to_vec(&descriptor).map_err(OciError::internal)?;
            self.store.put(&keys::referrer(repo, &subject.digest, &digest), record.into(), PutMode::Overwrite).await?;
        }
        self.ensure_catalog_entry(repo).await?;
        self.pause(Point::PutWritten).await;

        // Written; now make sure garbage collection is not taking away
        // anything this manifest needs (gc/guard.rs).
        let mut deps: Vec<(String, Option<&Digest>)> = Vec::new();
        for d in parsed.required_blobs() {
            deps.push((keys::layer_link(repo, &d.digest), Some(&d.digest)));
            deps.push((keys::blob(&d.digest), Some(&d.digest)));
        }
        for d in &parsed.manifests {
            deps.push((keys::revision(repo, &d.digest), Some(&d.digest)));
        }
        deps.push((keys::revision(repo, &digest), None));
        let keys_only: Vec<String> = deps.iter().map(|(k, _)| k.clone()).collect();
        if let Some(i) = self.gc_guard(&keys_only).await? {
            return Err(match deps[i].1 {
                Some(d) => {
                    OciError::ManifestBlobUnknown(format!("{d} (garbage collection is removing it; push it again)"))
                }
                None => collecting(),
            });
        }
        self.pause(Point::PutGuarded).await;
        if let Reference::Tag(tag) = reference {
            let key = keys::tag(repo, tag);
            self.store.put(&key, Bytes::from(digest.to_string()), PutMode::Overwrite).await?;
            self.caches.invalidate_tag(self.state.as_ref(), repo.as_str(), tag.as_str()).await;
            // The tag is written after the first guard: check it, and the
            // manifest it names, again.
            if self.gc_guard(&[key, keys::revision(repo, &digest)]).await?.is_some() {
                return Err(collecting());
            }
        } else {
            // No tag message tells the other replicas' indexes of this one.
            self.announce_change(repo).await;
        }
        Ok(PushedManifest { digest, subject: parsed.subject.map(|s| s.digest) })
    }

    /// Store a manifest fetched from a mirror's upstream (the mirror's own
    /// authority, never the caller's): like [`Registry::manifest_put`], but
    /// its blobs and children need not be here yet (a mirror fetches them
    /// when they are pulled), the bytes must hash to `expected` (the digest
    /// asked for, or the one upstream announced for the tag), and `tag`, when
    /// given, is moved to it whatever it named before: upstream decides.
    /// Only the manifest's own revision (and children already stored) are
    /// guarded against a collection pass: absent blobs are not there to lose.
    pub async fn manifest_put_mirrored(
        &self,
        access: &Access<Push>,
        expected: &Digest,
        tag: Option<&Tag>,
        content_type: Option<&str>,
        body: Bytes,
    ) -> Result<PushedManifest> {
        let repo = access.repo();
        let actual = Digest::of(expected.algorithm(), &body);
        if &actual != expected {
            return Err(OciError::DigestInvalid(format!("mirrored manifest is {actual}, not {expected}")));
        }
        let parsed = manifest::parse(content_type, &body)?;
        self.check_quota(repo, &actual, &parsed).await?;
        let media_type = parsed.kind.media_type();
        self.store.put(&keys::revision(repo, &actual), encode_revision(media_type, &body), PutMode::Overwrite).await?;
        if let Some(subject) = &parsed.subject {
            let descriptor = Descriptor {
                media_type: media_type.to_owned(),
                digest: actual.clone(),
                size: body.len() as u64,
                artifact_type: parsed.effective_artifact_type().map(str::to_owned),
                annotations: parsed.annotations.clone().filter(|a| !a.is_empty()),
                urls: None,
            };
            let record = serde_json::to_vec(&descriptor).map_err(OciError::internal)?;
            self.store.put(&keys::referrer(repo, &subject.digest, &actual), record.into(), PutMode::Overwrite).await?;
        }
        self.ensure_catalog_entry(repo).await?;
        let mut deps = vec![keys::revision(repo, &actual)];
        for d in &parsed.manifests {
            let key = keys::revision(repo, &d.digest);
            if self.store.exists(&key).await? {
                deps.push(key);
            }
        }
        if self.gc_guard(&deps).await?.is_some() {
            return Err(collecting());
        }
        if let Some(tag) = tag {
            let key = keys::tag(repo, tag);
            let current = match self.store.get_bytes(&key, 1024).await {
                Ok(current) => Some(current),
                Err(e) if e.is_not_found() => None,
                Err(e) => return Err(e.into()),
            };
            // An unchanged tag is not rewritten: its time drives retention.
            if current.as_deref() != Some(actual.to_string().as_bytes()) {
                self.store.put(&key, Bytes::from(actual.to_string()), PutMode::Overwrite).await?;
                self.caches.invalidate_tag(self.state.as_ref(), repo.as_str(), tag.as_str()).await;
                if self.gc_guard(&[key, keys::revision(repo, &actual)]).await?.is_some() {
                    return Err(collecting());
                }
            }
        }
        Ok(PushedManifest { digest: actual, subject: parsed.subject.map(|s| s.digest) })
    }

    /// Every blob and child manifest a manifest names must be in the
    /// repository (the subject need not be: referrers may come first).
    async fn check_references(&self, repo: &RepoName, parsed: &Manifest) -> Result<()> {
        let checks: Vec<BoxFuture<'_, Result<()>>> = parsed
            .required_blobs()
            .map(|d| self.check_blob_reference(repo, d).boxed())
            .chain(parsed.manifests.iter().map(|d| self.check_child_reference(repo, d).boxed()))
            .collect();
        // Bounded fan-out: a 4 MiB manifest can name tens of thousands of blobs.
        futures::stream::iter(checks).buffer_unordered(PARALLEL_READS).try_collect::<()>().await
    }

    async fn check_blob_reference(&self, repo: &RepoName, d: &Descriptor) -> Result<()> {
        if !self.is_linked(repo, &d.digest).await? {
            return Err(OciError::ManifestBlobUnknown(d.digest.to_string()));
        }
        let meta = match self.store.head(&keys::blob(&d.digest)).await {
            Ok(meta) => meta,
            Err(e) if e.is_not_found() => return Err(OciError::ManifestBlobUnknown(d.digest.to_string())),
            Err(e) => return Err(e.into()),
        };
        if meta.size != d.size {
            return Err(OciError::ManifestInvalid(format!(
                "descriptor of {} says {} bytes, the blob has {}",
                d.digest, d.size, meta.size
            )));
        }
        Ok(())
    }

    async fn check_child_reference(&self, repo: &RepoName, d: &Descriptor) -> Result<()> {
        if !self.store.exists(&keys::revision(repo, &d.digest)).await? {
            return Err(OciError::ManifestBlobUnknown(d.digest.to_string()));
        }
        Ok(())
    }

    /// A referrer record, or `None` if it was deleted since it was listed.
    async fn read_referrer(&self, key: String) -> Result<Option<Bytes>> {
        match self.store.get_bytes(&key, MAX_REVISION_SIZE).await {
            Ok(raw) => Ok(Some(raw)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete a tag (untag) or a manifest by digest (remove it, every tag
    /// pointing at it, and its referrer record).
    pub async fn manifest_delete(&self, access: &Access<Delete>, reference: &Reference) -> Result<()> {
        let repo = access.repo();
        match reference {
            Reference::Tag(tag) => {
                // Resolving first turns a missing tag into MANIFEST_UNKNOWN.
                self.resolve_tag(repo, tag).await?;
                self.store.delete(&keys::tag(repo, tag)).await?;
                self.caches.invalidate_tag(self.state.as_ref(), repo.as_str(), tag.as_str()).await;
            }
            Reference::Digest(digest) => {
                let stored = self.read_revision(repo, digest).await?;
                self.untag_all(repo, digest).await?;
                if let Ok(parsed) = manifest::parse(Some(&stored.media_type), &stored.bytes) {
                    if let Some(subject) = parsed.subject {
                        self.store.delete(&keys::referrer(repo, &subject.digest, digest)).await?;
                    }
                }
                self.store.delete(&keys::revision(repo, digest)).await?;
                self.caches.invalidate_manifest(self.state.as_ref(), repo.as_str(), digest).await;
            }
        }
        Ok(())
    }

    async fn untag_all(&self, repo: &RepoName, digest: &Digest) -> Result<()> {
        let prefix = keys::tags_prefix(repo);
        let wanted = digest.to_string();
        let mut after: Option<String> = None;
        loop {
            let page = self.store.list(&prefix, after.as_deref(), 1000).await?;
            for obj in &page.objects {
                match self.store.get_bytes(&obj.key, 1024).await {
                    Ok(raw) if raw.as_ref() == wanted.as_bytes() => {
                        self.store.delete(&obj.key).await?;
                        let tag = &obj.key[prefix.len()..];
                        self.caches.invalidate_tag(self.state.as_ref(), repo.as_str(), tag).await;
                    }
                    Ok(_) => {}
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            }
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => return Ok(()),
            }
        }
    }

    /// One page of the manifests in the repository whose subject is
    /// `subject` (optionally only those of one artifact type), in digest
    /// order after `after`. A page ends after `n` referrers (default
    /// [`REFERRERS_PAGE`]), about 1 MiB of descriptors, or
    /// [`REFERRERS_SCAN`] records looked at, so a subject with any number
    /// of referrers costs bounded memory per request. Unknown subjects have
    /// no referrers.
    pub async fn referrers(
        &self,
        access: &Access<Pull>,
        subject: &Digest,
        artifact_type: Option<&str>,
        after: Option<&Digest>,
        n: Option<usize>,
    ) -> Result<ReferrersPage> {
        let repo = access.repo();
        let want = n.unwrap_or(REFERRERS_PAGE).clamp(1, self.options.max_page);
        let prefix = keys::referrers_prefix(repo, subject);
        let mut after_key = after.map(|d| keys::referrer(repo, subject, d));
        let (mut manifests, mut bytes, mut scanned) = (Vec::new(), 0usize, 0usize);
        loop {
            let page = self.store.list(&prefix, after_key.as_deref(), 256).await?;
            let names: Vec<String> = page.objects.iter().map(|o| o.key.clone()).collect();
            let reads: Vec<BoxFuture<'_, Result<Option<Bytes>>>> =
                names.iter().map(|k| self.read_referrer(k.clone()).boxed()).collect();
            let mut reads = futures::stream::iter(reads).buffered(PARALLEL_READS);
            let mut read = 0;
            while let Some(raw) = reads.next().await {
                let raw = raw?;
                read += 1;
                scanned += 1;
                if let Some(raw) = raw {
                    let d: Descriptor = serde_json::from_slice(&raw).map_err(OciError::internal)?;
                    if artifact_type.is_none() || d.artifact_type.as_deref() == artifact_type {
                        bytes += raw.len();
                        manifests.push(d);
                    }
                }
                if manifests.len() >= want || bytes >= REFERRERS_PAGE_BYTES || scanned >= REFERRERS_SCAN {
                    let more = read < names.len() || page.next_start_after.is_some();
                    let next = if more { referrer_of_key(&names[read - 1], &prefix) } else { None };
                    return Ok(ReferrersPage { manifests, next });
                }
            }
            match page.next_start_after {
                Some(next) => after_key = Some(next),
                None => return Ok(ReferrersPage { manifests, next: None }),
            }
        }
    }
}

/// Referrers a page holds unless the caller asks for fewer or more.
pub const REFERRERS_PAGE: usize = 500;
/// Descriptor bytes after which a referrers page ends.
const REFERRERS_PAGE_BYTES: usize = 1024 * 1024;
/// Referrer records one page looks at, at most (an `artifactType` filter
/// may keep few of them).
pub const REFERRERS_SCAN: usize = 2_000;

/// One page of referrers and, when more follow, the digest the next page
/// starts after.
#[derive(Debug)]
pub struct ReferrersPage {
    pub manifests: Vec<Descriptor>,
    pub next: Option<Digest>,
}

/// The referrer a record key names (`<prefix><alg>-<hex>`).
fn referrer_of_key(key: &str, prefix: &str) -> Option<Digest> {
    let (alg, hex) = key.strip_prefix(prefix)?.split_once('-')?;
    format!("{alg}:{hex}").parse().ok()
}
