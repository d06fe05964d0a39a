//! Blob uploads.
//!
//! A session lives in shared state (never in a replica's memory), so each
//! PATCH may land on a different replica. A request takes the session's
//! lock, checks the client's offset, streams the bytes through the resumable
//! hasher into multipart parts, and stores the new state under the lease
//! (fencing out a writer whose lease expired). Bytes below the backend's
//! minimum part size wait in the session as a staged tail. Completion
//! compares the digest computed on the way in and makes the blob visible by
//! completing the multipart write at its content address: the bytes are never
//! read again (DESIGN invariant 6).
//!
//! While a request streams, it renews its lease and saves a snapshot of the
//! session every third of the lock TTL, so a long transfer neither loses its
//! lock nor lets its session expire.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use berth_state::{Lease, StateError};
use berth_storage::{MultipartUpload, ObjectStoreExt, PartReceipt};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use serde::{Deserialize, Serialize};

use super::hooks::Point;
use super::keys;
use super::{Access, BodyError, BodyStream, Pull, Push, Registry, Result};
use crate::oci::{Algorithm, Digest, OciError, RepoName, ResumableHasher};

const SESSION_QUEUE: &str = "upload-expiry";
/// Sessions outlive their expiry in shared state by this much so the janitor
/// can still read them to abort their multipart writes.
const SESSION_GRACE: Duration = Duration::from_secs(3600);

fn session_key(id: &str) -> String {
    format!("upload:{id}")
}

fn lock_name(id: &str) -> String {
    format!("upload-lock:{id}")
}

/// The upload state shared by every replica.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UploadSession {
    pub id: String,
    pub repo: String,
    /// Identity that opened the session; only it may continue the upload.
    pub owner: Option<String>,
    pub staging_key: String,
    pub upload_id: String,
    /// Bytes received so far.
    pub offset: u64,
    /// Serialized [`ResumableHasher`], base64.
    hasher: String,
    parts: Vec<Part>,
    /// Received bytes not yet written as a part, base64.
    staged: String,
    /// Unix milliseconds after which the session is abandoned.
    pub expires_at_ms: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Part {
    number: u32,
    offset: u64,
    size: u64,
    etag: String,
}

/// What a client learns about an upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadStatus {
    pub id: String,
    pub offset: u64,
}

fn b64() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

fn unix_now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

/// Upload ids are UUIDs; anything else cannot name a session.
fn valid_upload_id(id: &str) -> bool {
    id.len() == 36 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-')
}

impl UploadSession {
    fn upload(&self) -> MultipartUpload {
        MultipartUpload { staging_key: self.staging_key.clone(), upload_id: self.upload_id.clone() }
    }

    fn receipts(&self) -> Vec<PartReceipt> {
        self.parts
            .iter()
            .map(|p| PartReceipt { number: p.number, offset: p.offset, size: p.size, etag: p.etag.clone() })
            .collect()
    }

    fn status(&self) -> UploadStatus {
        UploadStatus { id: self.id.clone(), offset: self.offset }
    }

    fn parts_total(&self) -> u64 {
        self.parts.iter().map(|p| p.size).sum()
    }
}

/// A session loaded under its lock, with its decoded working state.
///
/// Invariant: bytes in `session.parts`, plus those of `in_flight`, plus
/// `staged`, are exactly the bytes `hasher` has seen.
struct Locked {
    lease: Lease,
    session: UploadSession,
    hasher: ResumableHasher,
    staged: BytesMut,
    /// The part being written while the next one is hashed (at most one).
    in_flight: Option<InFlight>,
    renewed_at: Instant,
}

/// A part write running in the background.
struct InFlight {
    number: u32,
    offset: u64,
    data: Bytes,
    /// The hasher as it was when this part was cut: where the upload stands
    /// if this write fails (later bytes are dropped and sent again).
    hasher_after: ResumableHasher,
    handle: tokio::task::JoinHandle<berth_storage::Result<PartReceipt>>,
}

impl Registry {
    async fn save_session(&self, session: &UploadSession, lease: Option<&Lease>) -> Result<()> {
        let raw = Bytes::from(serde_json::to_vec(session).map_err(OciError::internal)?);
        let ttl = self.options.upload_ttl + SESSION_GRACE;
        match lease {
            Some(lease) => match self.state.set_fenced(&session_key(&session.id), raw, ttl, lease).await {
                Ok(()) => {}
                // Another request took over after our lease lapsed; our view is stale.
                Err(StateError::Fenced { .. }) => return Err(taken_over()),
                Err(e) => return Err(e.into()),
            },
            None => self.state.set(&session_key(&session.id), raw, ttl).await?,
        }
        let due = UNIX_EPOCH + Duration::from_millis(session.expires_at_ms);
        self.state.schedule(SESSION_QUEUE, &session.id, due).await?;
        Ok(())
    }

    /// The session `id` as `access` may see it: only in the repository it was
    /// opened in, only by the identity that opened it, and not after expiry.
    async fn load_session(&self, access: &Access<Push>, id: &str) -> Result<UploadSession> {
        if !valid_upload_id(id) {
            return Err(OciError::BlobUploadUnknown);
        }
        let raw = self.state.get(&session_key(id)).await?.ok_or(OciError::BlobUploadUnknown)?;
        let session: UploadSession = serde_json::from_slice(&raw).map_err(OciError::internal)?;
        if session.repo != access.repo().as_str()
            || session.owner.as_deref() != access.subject()
            || session.expires_at_ms <= unix_now_ms()
        {
            return Err(OciError::BlobUploadUnknown);
        }
        Ok(session)
    }

    async fn lock_session(&self, access: &Access<Push>, id: &str) -> Result<Locked> {
        if !valid_upload_id(id) {
            return Err(OciError::BlobUploadUnknown);
        }
        let deadline = tokio::time::Instant::now() + self.options.upload_lock_wait;
        let mut backoff = Duration::from_millis(5);
        let lease = loop {
            if let Some(lease) = self.state.try_lock(&lock_name(id), self.options.upload_lock_ttl).await? {
                break lease;
            }
            if tokio::time::Instant::now() >= deadline {
                // Someone is still writing this upload: the client's offset
                // cannot be right, and the status endpoint tells it where to go on.
                let offset = self.load_session(access, id).await?.offset;
                return Err(OciError::UploadOffsetMismatch { offset });
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_millis(200));
        };
        let loaded = async {
            let session = self.load_session(access, id).await?;
            let hasher_raw = b64().decode(&session.hasher).map_err(OciError::internal)?;
            let hasher = ResumableHasher::from_bytes(&hasher_raw).map_err(OciError::internal)?;
            let staged = BytesMut::from(&b64().decode(&session.staged).map_err(OciError::internal)?[..]);
            Ok::<_, OciError>((session, hasher, staged))
        }
        .await;
        match loaded {
            Ok((session, hasher, staged)) => {
                Ok(Locked { lease, session, hasher, staged, in_flight: None, renewed_at: Instant::now() })
            }
            Err(e) => {
                let _ = self.state.unlock(&lease).await;
                Err(e)
            }
        }
    }

    /// Fold the working state into the session record and push its expiry out.
    fn snapshot(&self, locked: &mut Locked) {
        locked.session.hasher = b64().encode(locked.hasher.to_bytes());
        locked.session.staged = b64().encode(&locked.staged);
        locked.session.offset = locked.hasher.bytes_hashed();
        locked.session.expires_at_ms = unix_now_ms() + self.options.upload_ttl.as_millis() as u64;
    }

    /// Renew the lease and save progress if a third of the lock TTL passed.
    async fn renew_if_due(&self, locked: &mut Locked) -> Result<()> {
        if locked.renewed_at.elapsed() < self.options.upload_lock_ttl / 3 {
            return Ok(());
        }
        // The saved snapshot must account for every hashed byte.
        self.settle(locked).await?;
        if !self.state.extend(&locked.lease, self.options.upload_lock_ttl).await? {
            return Err(taken_over());
        }
        self.snapshot(locked);
        self.save_session(&locked.session, Some(&locked.lease)).await?;
        locked.renewed_at = Instant::now();
        Ok(())
    }

    /// Store the working state back under the lease and release it.
    async fn unlock_session(&self, mut locked: Locked) -> Result<UploadStatus> {
        // A failed write rolls the state back to its start; that is what we save.
        let _ = self.settle(&mut locked).await;
        self.snapshot(&mut locked);
        let saved = self.save_session(&locked.session, Some(&locked.lease)).await;
        let _ = self.state.unlock(&locked.lease).await;
        saved.map(|()| locked.session.status())
    }

    /// End a session: forget it and release its lock. Failures are logged,
    /// not returned: the outcome the caller reports has already happened.
    async fn end_session(&self, mut locked: Locked) {
        let _ = self.settle(&mut locked).await;
        if let Err(e) = self.store.abort_multipart(&locked.session.upload()).await {
            tracing::warn!(upload = %locked.session.id, error = %e, "cannot discard staged upload data");
        }
        if let Err(e) = self.forget_session(&locked.session.id).await {
            tracing::warn!(upload = %locked.session.id, error = %e, "cannot remove upload session");
        }
        let _ = self.state.unlock(&locked.lease).await;
    }

    async fn forget_session(&self, id: &str) -> Result<()> {
        self.state.delete(&session_key(id)).await?;
        self.state.unschedule(SESSION_QUEUE, id).await?;
        Ok(())
    }

    /// Open an upload session owned by `access`'s subject.
    pub async fn upload_start(&self, access: &Access<Push>, algorithm: Algorithm) -> Result<UploadStatus> {
        let upload = self.store.create_multipart().await?;
        let session = UploadSession {
            id: uuid::Uuid::new_v4().to_string(),
            repo: access.repo().to_string(),
            owner: access.subject().map(str::to_owned),
            staging_key: upload.staging_key,
            upload_id: upload.upload_id,
            offset: 0,
            hasher: b64().encode(ResumableHasher::new(algorithm).to_bytes()),
            parts: Vec::new(),
            staged: String::new(),
            expires_at_ms: unix_now_ms() + self.options.upload_ttl.as_millis() as u64,
        };
        self.save_session(&session, None).await?;
        Ok(session.status())
    }

    /// Where an upload stands.
    pub async fn upload_status(&self, access: &Access<Push>, id: &str) -> Result<UploadStatus> {
        Ok(self.load_session(access, id).await?.status())
    }

    /// Append a chunk. `start` is the chunk's first byte as the client says
    /// (`Content-Range`), `declared_len` its `Content-Length`.
    pub async fn upload_append(
        &self,
        access: &Access<Push>,
        id: &str,
        start: Option<u64>,
        declared_len: Option<u64>,
        body: BodyStream,
    ) -> Result<UploadStatus> {
        let mut locked = self.lock_session(access, id).await?;
        let appended = self.append_locked(&mut locked, start, declared_len, body).await;
        // Progress made before a failure is kept: the client can resume from
        // the offset the status endpoint reports.
        let status = self.unlock_session(locked).await;
        appended?;
        status
    }

    async fn append_locked(
        &self,
        locked: &mut Locked,
        start: Option<u64>,
        declared_len: Option<u64>,
        mut body: BodyStream,
    ) -> Result<()> {
        let offset = locked.hasher.bytes_hashed();
        if let Some(start) = start {
            if start != offset {
                return Err(OciError::UploadOffsetMismatch { offset });
            }
        }
        let limits = self.store.part_limits();
        let part_size = limits.preferred_part_size.max(limits.min_part_size) as usize;
        let mut received = 0u64;
        let m = crate::metrics::get();
        let _in_flight = crate::metrics::GaugeGuard::enter(&m.uploads_in_flight);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(body_error)?;
            received += chunk.len() as u64;
            m.upload_bytes.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::Relaxed);
            if declared_len.is_some_and(|len| received > len) {
                return Err(OciError::SizeInvalid("the body is longer than Content-Length".into()));
            }
            let mut rest = &chunk[..];
            while !rest.is_empty() {
                let take = (part_size - locked.staged.len()).min(rest.len());
                locked.hasher.update(&rest[..take]);
                locked.staged.extend_from_slice(&rest[..take]);
                rest = &rest[take..];
                if locked.staged.len() >= part_size {
                    self.flush_part(locked).await?;
                }
            }
            self.renew_if_due(locked).await?;
        }
        if let Some(len) = declared_len {
            if received != len {
                return Err(OciError::SizeInvalid(format!("received {received} bytes, Content-Length said {len}")));
            }
        }
        // Write out the tail if the backend takes it as a part (any size on
        // fs; at least the minimum on S3), so shared state only ever holds a
        // tail below the minimum part size.
        let staged = locked.staged.len() as u64;
        if staged > 0 && (limits.min_part_size <= 1 || staged >= limits.min_part_size) {
            self.flush_part(locked).await?;
        }
        self.settle(locked).await
    }

    /// Start writing the staged bytes as the next part, after the previous
    /// part's write finished: hashing the next part overlaps this write.
    async fn flush_part(&self, locked: &mut Locked) -> Result<()> {
        self.settle(locked).await?;
        self.renew_if_due(locked).await?;
        let data = locked.staged.split().freeze();
        let number = locked.session.parts.len() as u32 + 1;
        let offset = locked.session.parts_total();
        let (store, upload, bytes) = (self.store.clone(), locked.session.upload(), data.clone());
        let handle = tokio::spawn(async move { store.put_part(&upload, number, offset, bytes).await });
        locked.in_flight = Some(InFlight { number, offset, data, hasher_after: locked.hasher.clone(), handle });
        Ok(())
    }

    /// Wait for the part being written. If it failed, the upload goes back to
    /// where that part began being staged: its bytes are staged again, and
    /// bytes hashed after it are forgotten (the client resends them from the
    /// offset it is told). Nothing the hasher counted is ever lost.
    async fn settle(&self, locked: &mut Locked) -> Result<()> {
        let Some(part) = locked.in_flight.take() else { return Ok(()) };
        let outcome = match part.handle.await {
            Ok(result) => result.map_err(OciError::from),
            Err(join) => Err(OciError::internal(join)),
        };
        match outcome {
            Ok(receipt) => {
                locked.session.parts.push(Part {
                    number: part.number,
                    offset: part.offset,
                    size: receipt.size,
                    etag: receipt.etag,
                });
                Ok(())
            }
            Err(e) => {
                locked.hasher = part.hasher_after;
                locked.staged = BytesMut::from(&part.data[..]);
                Err(e)
            }
        }
    }

    /// Close an upload, with an optional last chunk, and verify `digest`.
    pub async fn upload_complete(
        &self,
        access: &Access<Push>,
        id: &str,
        digest: &Digest,
        start: Option<u64>,
        declared_len: Option<u64>,
        body: Option<BodyStream>,
    ) -> Result<Digest> {
        let r = self.complete_upload(access, id, digest, start, declared_len, body).await;
        let m = crate::metrics::get();
        crate::metrics::inc(if r.is_ok() { &m.upload_completed } else { &m.upload_failed });
        r
    }

    async fn complete_upload(
        &self,
        access: &Access<Push>,
        id: &str,
        digest: &Digest,
        start: Option<u64>,
        declared_len: Option<u64>,
        body: Option<BodyStream>,
    ) -> Result<Digest> {
        let mut locked = self.lock_session(access, id).await?;
        // Nothing hashed yet: hash with the algorithm the client's digest uses.
        if locked.hasher.bytes_hashed() == 0 && locked.hasher.algorithm() != digest.algorithm() {
            locked.hasher = ResumableHasher::new(digest.algorithm());
        }
        if let Some(body) = body {
            if let Err(e) = self.append_locked(&mut locked, start, declared_len, body).await {
                let _ = self.unlock_session(locked).await;
                return Err(e);
            }
        }
        match self.finish_locked(&mut locked, access.repo(), digest).await {
            // Completed, or refused for a digest it can never match: the session is over.
            Ok(()) => {
                self.end_session(locked).await;
                Ok(digest.clone())
            }
            // A digest being collected: the staged parts may be gone too.
            Err(e @ (OciError::DigestInvalid(_) | OciError::BlobUploadUnknown)) => {
                self.end_session(locked).await;
                Err(e)
            }
            // Anything else (a backend hiccup) leaves the upload resumable.
            Err(e) => {
                let _ = self.unlock_session(locked).await;
                Err(e)
            }
        }
    }

    async fn finish_locked(&self, locked: &mut Locked, repo: &RepoName, digest: &Digest) -> Result<()> {
        if locked.hasher.algorithm() != digest.algorithm() {
            return Err(OciError::DigestInvalid(format!(
                "the upload was hashed with {} as it arrived; to use {}, start it with \
                 ?digest-algorithm={} (content is never read twice)",
                locked.hasher.algorithm().as_str(),
                digest.algorithm().as_str(),
                digest.algorithm().as_str()
            )));
        }
        if !locked.staged.is_empty() {
            self.flush_part(locked).await?;
        }
        self.settle(locked).await?;
        // Every byte the hasher saw must be in a stored part.
        if locked.session.parts_total() != locked.hasher.bytes_hashed() {
            return Err(OciError::internal(format!(
                "upload {} has {} bytes in parts but hashed {}",
                locked.session.id,
                locked.session.parts_total(),
                locked.hasher.bytes_hashed()
            )));
        }
        let computed = locked.hasher.finish();
        if &computed != digest {
            return Err(OciError::DigestInvalid(format!("uploaded content has digest {computed}, not {digest}")));
        }
        let blob_key = keys::blob(digest);
        let was_linked = self.is_linked(repo, digest).await?;
        // Stored already by another upload: the staged copy is dropped by end_session.
        if !self.store.exists(&blob_key).await? {
            self.store.complete_multipart(&locked.session.upload(), &locked.session.receipts(), &blob_key).await?;
        }
        self.link_blob(repo, digest).await?;
        self.pause(Point::UploadLinked).await;
        // A collection pass may be removing this digest: then the bytes may
        // go, and the client must upload again (gc/guard.rs).
        let deps = [blob_key, keys::layer_link(repo, digest)];
        if self.gc_guard(&deps).await?.is_some() {
            return Err(OciError::BlobUploadUnknown);
        }
        if !was_linked {
            self.note_linked(repo, locked.hasher.bytes_hashed()).await;
        }
        Ok(())
    }

    /// Cancel an upload and discard what it staged.
    pub async fn upload_cancel(&self, access: &Access<Push>, id: &str) -> Result<()> {
        let locked = self.lock_session(access, id).await?;
        self.end_session(locked).await;
        crate::metrics::inc(&crate::metrics::get().upload_cancelled);
        Ok(())
    }

    /// Upload a whole blob in one request (`POST ?digest=`).
    pub async fn upload_monolithic(
        &self,
        access: &Access<Push>,
        digest: &Digest,
        declared_len: Option<u64>,
        body: BodyStream,
    ) -> Result<Digest> {
        let status = self.upload_start(access, digest.algorithm()).await?;
        let result = self.upload_complete(access, &status.id, digest, Some(0), declared_len, Some(body)).await;
        if result.is_err() {
            // A failed single-request upload cannot be resumed by the client.
            if let Ok(locked) = self.lock_session(access, &status.id).await {
                self.end_session(locked).await;
            }
        }
        result
    }

    /// Cross-repository mount: link `digest` from `from` into the target if
    /// the caller can read it there. `Ok(false)` means "not mountable".
    pub async fn mount(&self, target: &Access<Push>, source: &Access<Pull>, digest: &Digest) -> Result<bool> {
        if !self.is_linked(source.repo(), digest).await? {
            return Ok(false);
        }
        let size = match self.store.head(&keys::blob(digest)).await {
            Ok(meta) => meta.size,
            Err(e) if e.is_not_found() => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let was_linked = self.is_linked(target.repo(), digest).await?;
        self.link_blob(target.repo(), digest).await?;
        self.pause(Point::MountLinked).await;
        // Being collected: not mountable now; the client uploads instead.
        let deps = [keys::blob(digest), keys::layer_link(target.repo(), digest)];
        if self.gc_guard(&deps).await?.is_some() {
            return Ok(false);
        }
        if !was_linked {
            self.note_linked(target.repo(), size).await;
        }
        Ok(true)
    }

    /// Abort sessions whose expiry has passed. Returns how many were removed.
    /// Safe to run on every replica at once: each session is handled under
    /// its lock, and a session touched meanwhile is rescheduled, not removed.
    /// One bad session is logged and skipped; it never stops the sweep.
    pub async fn expire_uploads(&self, limit: usize) -> Result<usize> {
        let due = self.state.due(SESSION_QUEUE, SystemTime::now(), limit).await?;
        let mut removed = 0;
        for id in due {
            match self.expire_one(&id).await {
                Ok(true) => {
                    removed += 1;
                    crate::metrics::inc(&crate::metrics::get().upload_expired);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(upload = %id, error = %e, "cannot expire upload"),
            }
        }
        Ok(removed)
    }

    async fn expire_one(&self, id: &str) -> Result<bool> {
        let Some(lease) = self.state.try_lock(&lock_name(id), self.options.upload_lock_ttl).await? else {
            return Ok(false); // being written right now
        };
        let outcome = async {
            let Some(raw) = self.state.get(&session_key(id)).await? else {
                self.state.unschedule(SESSION_QUEUE, id).await?;
                return Ok(false);
            };
            let session: UploadSession = match serde_json::from_slice(&raw) {
                Ok(s) => s,
                Err(e) => {
                    // Unreadable: nothing can ever continue it, so drop the record.
                    tracing::warn!(upload = %id, error = %e, "dropping unreadable upload session");
                    self.forget_session(id).await?;
                    return Ok(true);
                }
            };
            if session.expires_at_ms > unix_now_ms() {
                let due = UNIX_EPOCH + Duration::from_millis(session.expires_at_ms);
                self.state.schedule(SESSION_QUEUE, id, due).await?;
                return Ok(false);
            }
            self.store.abort_multipart(&session.upload()).await?;
            self.forget_session(id).await?;
            Ok(true)
        }
        .await;
        let _ = self.state.unlock(&lease).await;
        outcome
    }
}

/// What one janitor pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JanitorReport {
    /// Expired sessions whose staged data was removed.
    pub expired: usize,
    /// Staged writes without a session that were removed.
    pub orphans: usize,
}

const JANITOR_LOCK: &str = "janitor";
const ORPHAN_SWEEP_MARK: &str = "janitor:orphan-sweep";

impl Registry {
    /// One janitor pass, run by one replica of the fleet at a time: expire
    /// abandoned sessions, and (at most once per `orphan_sweep_every`
    /// fleet-wide) remove staged writes whose session is gone. `Ok(None)`
    /// means another replica is running a pass right now.
    pub async fn janitor_pass(&self, orphan_sweep_every: Duration) -> Result<Option<JanitorReport>> {
        let Some(lease) = self.state.try_lock(JANITOR_LOCK, Duration::from_secs(600)).await? else {
            return Ok(None);
        };
        let outcome = async {
            let mut report = JanitorReport { expired: self.expire_uploads(1000).await?, orphans: 0 };
            if self.state.get(ORPHAN_SWEEP_MARK).await?.is_none() {
                self.state.set(ORPHAN_SWEEP_MARK, Bytes::from_static(b"1"), orphan_sweep_every).await?;
                report.orphans = self.sweep_orphaned_uploads(self.options.orphan_upload_age).await?;
            }
            Ok(report)
        }
        .await;
        let _ = self.state.unlock(&lease).await;
        outcome.map(Some)
    }

    /// Abort multipart writes nobody has written to for `older_than`: their
    /// session was lost (a restart of the embedded shape, whose sessions live
    /// in memory) or expired without the janitor seeing it.
    pub async fn sweep_orphaned_uploads(&self, older_than: Duration) -> Result<usize> {
        let cutoff = SystemTime::now().checked_sub(older_than).unwrap_or(UNIX_EPOCH);
        let mut removed = 0;
        for (upload, touched) in self.store.list_multipart().await? {
            if touched <= cutoff {
                match self.store.abort_multipart(&upload).await {
                    Ok(()) => removed += 1,
                    Err(e) => tracing::warn!(upload = %upload.upload_id, error = %e, "cannot remove orphaned upload"),
                }
            }
        }
        Ok(removed)
    }
}

fn taken_over() -> OciError {
    OciError::BlobUploadInvalid("the upload was taken over by another request".into())
}

fn body_error(e: BodyError) -> OciError {
    OciError::BlobUploadInvalid(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upload_ids() {
        assert!(valid_upload_id(&uuid::Uuid::new_v4().to_string()));
        for bad in [
            "",
            "x",
            "../../etc/passwd",
            "0000000g-0000-0000-0000-000000000000",
            "00000000-0000-0000-0000-0000000000000",
        ] {
            assert!(!valid_upload_id(bad), "{bad}");
        }
    }
}
