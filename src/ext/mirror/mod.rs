//! The `mirror` extension: repositories under a configured prefix are
//! served from an upstream registry, fetched when first pulled and kept.
//!
//! - A manifest by digest is fetched once (checked against the digest) and
//!   stored with the registry's mirrored-manifest writer, before its blobs.
//! - A tag is checked with the upstream (HEAD) when its last check is older
//!   than the upstream's `tag_ttl`; a moved tag fetches the new manifest and
//!   moves the local tag. When the upstream cannot be asked (down, rate
//!   limiting) a tag already here is served stale, with a `Warning` header
//!   and a log line.
//! - A blob not here is streamed from the upstream to the client while it is
//!   written through the registry's upload service, which commits it only
//!   after its digest matched; the upstream client holds the last chunk back
//!   until then, so no client receives the whole of a blob that did not
//!   verify.
//!
//! Writes happen with the mirror's own authority (`berth:mirror`), never the
//! caller's: a reader may cause a fill. Upstream bytes pass through the
//! registry's services only; the extension touches no backend itself.

pub mod sync;

use std::sync::Arc;
use std::time::Duration;

use berth_state::{Lease, SharedState};
use berth_upstream::{Credentials, Upstream, UpstreamError, UpstreamOptions};
use bytes::Bytes;
use futures::StreamExt;

use crate::config::{MirrorConfig, MirrorSyncConfig, MirrorUpstreamConfig};
use crate::oci::{Digest, OciError, Reference, RepoName};
use crate::registry::{Access, BlobRead, BodyError, Pull, Push, Registry};

/// One configured upstream.
#[derive(Debug)]
struct Route {
    name: String,
    prefix: String,
    remote_prefix: String,
    client: Upstream,
    tag_ttl: Duration,
    allow_push: bool,
    fill_wait: Duration,
    sync: Option<MirrorSyncConfig>,
}

/// What [`Mirror::prepare_manifest`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// Not a mirrored repository, or the local copy is current.
    Current,
    /// The upstream could not be asked; the local tag is served as it is.
    Stale,
}

/// Called with each manifest the mirror stored (a pull-through fill or a
/// synced tag): the scanner queues it as it queues a push.
pub type OnStored = Arc<dyn Fn(&RepoName, &Digest) + Send + Sync>;

/// The mirror: routes from local prefixes to upstreams.
pub struct Mirror {
    routes: Vec<Route>,
    registry: Registry,
    on_stored: Option<OnStored>,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror").field("routes", &self.routes).finish_non_exhaustive()
    }
}

fn route_options(u: &MirrorUpstreamConfig) -> UpstreamOptions {
    UpstreamOptions {
        url: u.url.clone(),
        credentials: match (&u.username, &u.password) {
            (Some(user), Some(pw)) => Some(Credentials { username: user.clone(), password: pw.expose().to_owned() }),
            _ => None,
        },
        ca_file: u.ca_file.clone(),
        connect_timeout: u.connect_timeout.0,
        response_timeout: u.response_timeout.0,
        idle_timeout: u.idle_timeout.0,
        ..UpstreamOptions::default()
    }
}

/// Count one upstream request by its outcome.
fn count<T>(r: &Result<T, UpstreamError>) {
    use crate::metrics::{MIRROR_NOT_FOUND, MIRROR_OK, MIRROR_RATE_LIMITED, MIRROR_REFUSED, MIRROR_UNAVAILABLE};
    let i = match r {
        Ok(_) => MIRROR_OK,
        Err(UpstreamError::NotFound) => MIRROR_NOT_FOUND,
        Err(UpstreamError::RateLimited { .. }) => MIRROR_RATE_LIMITED,
        Err(UpstreamError::DigestMismatch(_)) => MIRROR_REFUSED,
        Err(_) => MIRROR_UNAVAILABLE,
    };
    crate::metrics::inc(&crate::metrics::get().mirror_upstream[i]);
}

/// The shared-state key recording that a tag was checked with the upstream.
fn checked_key(repo: &RepoName, tag: &str) -> String {
    format!("mirror:checked:{repo}:{tag}")
}

/// The registry's answer to an upstream failure.
fn map_error(upstream: &str, e: UpstreamError, what: &str) -> OciError {
    match e {
        UpstreamError::NotFound => OciError::ManifestUnknown(what.to_owned()),
        UpstreamError::RateLimited { retry_after } => OciError::TooManyRequests { retry_after },
        UpstreamError::DigestMismatch(m) => {
            tracing::error!(upstream, what, error = %m, "upstream content refused: it does not match its digest");
            OciError::Unavailable {
                retry_after: Duration::from_secs(30),
                cause: format!("upstream {upstream} sent content that does not match its digest"),
            }
        }
        other => {
            tracing::warn!(upstream, what, error = %other, "upstream request failed");
            OciError::Unavailable {
                retry_after: Duration::from_secs(5),
                cause: format!("upstream {upstream} is not answering"),
            }
        }
    }
}

type SharedStateRef = Arc<dyn SharedState>;

/// How long a fill's lock lives without being renewed: a replica that
/// dies mid-fill holds the others up this long at most.
const FILL_LOCK_TTL: Duration = Duration::from_secs(15);

/// What [`Mirror::turn`] decided.
enum Turn {
    /// Someone else's fill finished: the object is here.
    Done,
    /// This caller fetches; the lease (none when shared state cannot lock)
    /// keeps the rest of the fleet waiting for it.
    Lead(Option<Lease>),
}

/// A fill's lock, renewed in the background until released, or (tag checks
/// and manifests, given `renew_for`) until the fill has run for its route's
/// `fill_wait`: a manifest fill slower than that (an upstream trickling
/// bytes) lets its lock lapse, so the pulls waiting for it are not kept
/// from fetching for ever.
struct Held {
    state: SharedStateRef,
    lease: Option<Lease>,
    keeper: Option<tokio::task::JoinHandle<()>>,
}

impl Held {
    fn new(state: SharedStateRef, lease: Option<Lease>, renew_for: Option<Duration>) -> Held {
        let keeper = lease.clone().map(|lease| {
            let state = state.clone();
            tokio::spawn(async move {
                let until = renew_for.and_then(|d| tokio::time::Instant::now().checked_add(d));
                loop {
                    tokio::time::sleep(FILL_LOCK_TTL / 3).await;
                    if until.is_some_and(|u| tokio::time::Instant::now() >= u) {
                        tracing::warn!(lock = %lease.name, ?renew_for,
                            "a mirror fill outlasted fill_wait; its lock lapses and another pull may fetch");
                        return;
                    }
                    match state.extend(&lease, FILL_LOCK_TTL).await {
                        Ok(true) => {}
                        Ok(false) => {
                            tracing::warn!(lock = %lease.name, "a mirror fill lost its lock; another replica may fetch too");
                            return;
                        }
                        Err(e) => tracing::debug!(error = %e, "cannot renew a mirror fill lock"),
                    }
                }
            })
        });
        Held { state, lease, keeper }
    }

    async fn release(mut self) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
        if let Some(lease) = self.lease.take() {
            if let Err(e) = self.state.unlock(&lease).await {
                tracing::debug!(error = %e, "cannot release a mirror fill lock; it expires by itself");
            }
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Some(k) = self.keeper.take() {
            k.abort();
        }
    }
}

/// Lock names for fills, one per object and repository.
fn lock_name(kind: &str, repo: &RepoName, reference: &str) -> String {
    format!("mirror:fill:{kind}:{repo}:{reference}")
}

impl Mirror {
    /// Take the fleet's one turn at fetching the object behind `lock`, or
    /// wait for whoever has it until `done` says the object is here. When
    /// the holder gives up without it, the next waiter takes over; after
    /// the route's `fill_wait` the caller is told to come back.
    async fn turn<F, Fut>(&self, route: &Route, lock: &str, done: F) -> Result<Turn, OciError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<bool, OciError>>,
    {
        let state = self.registry.state();
        let deadline = tokio::time::Instant::now() + route.fill_wait;
        let mut delay = Duration::from_millis(10);
        let mut waited = false;
        loop {
            match state.try_lock(lock, FILL_LOCK_TTL).await {
                Ok(Some(lease)) => {
                    // Between the caller's miss and the lock, the previous
                    // holder may have finished.
                    let finished = done().await;
                    if !matches!(finished, Ok(false)) {
                        let _ = state.unlock(&lease).await;
                        return finished.map(|_| Turn::Done);
                    }
                    return Ok(Turn::Lead(Some(lease)));
                }
                Ok(None) => {}
                Err(e) => {
                    // Without shared state the fleet cannot agree; this
                    // replica fetches alone rather than failing the pull.
                    tracing::warn!(error = %e, "cannot lock a mirror fill; fetching without the fleet's lock");
                    return Ok(Turn::Lead(None));
                }
            }
            if !waited {
                crate::metrics::inc(&crate::metrics::get().mirror_fill_waits);
                waited = true;
            }
            if tokio::time::Instant::now() + delay > deadline {
                return Err(OciError::Unavailable {
                    retry_after: Duration::from_secs(5),
                    cause: format!("still being fetched from upstream {} by another pull", route.name),
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_millis(250));
            if done().await? {
                return Ok(Turn::Done);
            }
        }
    }

    /// The mirror of `config`, or `None` without upstreams.
    pub fn new(config: &MirrorConfig, registry: Registry) -> Result<Option<Mirror>, String> {
        if config.upstreams.is_empty() {
            return Ok(None);
        }
        let mut routes = Vec::new();
        for u in &config.upstreams {
            let client = Upstream::new(route_options(u)).map_err(|e| format!("mirror upstream {}: {e}", u.name))?;
            routes.push(Route {
                name: u.name.clone(),
                prefix: u.prefix.clone(),
                remote_prefix: u.remote_prefix.clone(),
                client,
                tag_ttl: u.tag_ttl.0,
                allow_push: u.allow_push,
                fill_wait: u.fill_wait.0,
                sync: u.sync.clone(),
            });
        }
        Ok(Some(Mirror { routes, registry, on_stored: None }))
    }

    /// Set what runs after each stored manifest.
    pub fn set_on_stored(&mut self, hook: OnStored) {
        self.on_stored = Some(hook);
    }

    fn stored(&self, repo: &RepoName, digest: &Digest) {
        if let Some(hook) = &self.on_stored {
            hook(repo, digest);
        }
    }

    /// The upstream serving `repo` and the name to ask it for.
    fn route(&self, repo: &RepoName) -> Option<(&Route, String)> {
        let name = repo.as_str();
        let remote = |r: &Route, rest: &str| {
            if r.remote_prefix.is_empty() {
                rest.to_owned()
            } else {
                format!("{}/{rest}", r.remote_prefix)
            }
        };
        self.routes
            .iter()
            .filter(|r| !r.prefix.is_empty())
            .find_map(|r| {
                let rest = name.strip_prefix(r.prefix.as_str())?.strip_prefix('/')?;
                Some((r, remote(r, rest)))
            })
            // The root upstream (prefix ""): every other name.
            .or_else(|| self.routes.iter().find(|r| r.prefix.is_empty()).map(|r| (r, remote(r, name))))
    }

    /// Drop the record that a mirrored tag was checked with the upstream;
    /// whether there was one (the local tag is missing although checked:
    /// collected since).
    pub async fn forget_tag_check(&self, access: &Access<Pull>, reference: &Reference) -> bool {
        let Reference::Tag(tag) = reference else { return false };
        if self.route(access.repo()).is_none() {
            return false;
        }
        let state = self.registry.state();
        let key = checked_key(access.repo(), tag.as_str());
        matches!(state.get(&key).await, Ok(Some(_))) && state.delete(&key).await.is_ok()
    }

    /// Whether clients may push into `repo`: anywhere outside the mirrored
    /// prefixes, and inside one only when its upstream allows it.
    pub fn allows_push(&self, repo: &RepoName) -> bool {
        self.route(repo).is_none_or(|(r, _)| r.allow_push)
    }

    /// Make the local copy of `reference` current before the registry
    /// serves it (the caller then reads it with `manifest_get` as usual).
    pub async fn prepare_manifest(&self, access: &Access<Pull>, reference: &Reference) -> Result<Prepared, OciError> {
        let repo = access.repo();
        let Some((route, remote)) = self.route(repo) else { return Ok(Prepared::Current) };
        let writer: Access<Push> = crate::auth::internal_access(repo, "mirror");
        match reference {
            Reference::Digest(digest) => {
                let here = || async {
                    match self.registry.manifest_get(access, reference).await {
                        Ok(_) => Ok(true),
                        Err(OciError::ManifestUnknown(_)) => Ok(false),
                        Err(e) => Err(e),
                    }
                };
                if here().await? {
                    return Ok(Prepared::Current);
                }
                let lease = match self.turn(route, &lock_name("manifest", repo, &digest.to_string()), here).await? {
                    Turn::Done => return Ok(Prepared::Current),
                    Turn::Lead(lease) => Held::new(self.registry.state(), lease, Some(route.fill_wait)),
                };
                let stored = async {
                    let fetched = route.client.get_manifest(&remote, &digest.to_string()).await;
                    count(&fetched);
                    let fetched = fetched.map_err(|e| map_error(&route.name, e, &format!("{repo}@{digest}")))?;
                    self.registry
                        .manifest_put_mirrored(&writer, digest, None, Some(&fetched.media_type), fetched.bytes)
                        .await
                }
                .await;
                lease.release().await;
                stored?;
                self.stored(repo, digest);
                tracing::info!(upstream = %route.name, %repo, %digest, "mirrored a manifest");
                Ok(Prepared::Current)
            }
            Reference::Tag(tag) => {
                let state = self.registry.state();
                let key = checked_key(repo, tag.as_str());
                let fresh = || async { Ok(matches!(state.get(&key).await, Ok(Some(_)))) };
                if fresh().await? {
                    crate::metrics::inc(&crate::metrics::get().mirror_fresh_hits);
                    return Ok(Prepared::Current);
                }
                let lock = lock_name("tag", repo, tag.as_str());
                // Where the tag points here, read once: the check below
                // compares it with the upstream's answer.
                let local = match self.registry.manifest_get(access, reference).await {
                    Ok(m) => Some(m.digest),
                    Err(OciError::ManifestUnknown(_)) => None,
                    Err(e) => return Err(e),
                };
                let lease = if local.is_some() {
                    // A copy is here: while another pull asks the upstream
                    // (however long a hung upstream makes it), serve it as
                    // last seen rather than queue behind that pull.
                    match state.try_lock(&lock, FILL_LOCK_TTL).await {
                        Ok(Some(lease)) => Held::new(state.clone(), Some(lease), Some(route.fill_wait)),
                        Ok(None) => return Ok(Prepared::Current),
                        Err(_) => Held::new(state.clone(), None, Some(route.fill_wait)),
                    }
                } else {
                    match self.turn(route, &lock, fresh).await? {
                        Turn::Done => {
                            crate::metrics::inc(&crate::metrics::get().mirror_fresh_hits);
                            return Ok(Prepared::Current);
                        }
                        Turn::Lead(lease) => Held::new(state.clone(), lease, Some(route.fill_wait)),
                    }
                };
                // (A pull that waited its turn and leads now may find the tag
                // stored by the one before it: fetching it again is harmless.)
                let checked = self.check_tag(route, &remote, repo, local, &writer, tag).await;
                lease.release().await;
                checked
            }
        }
    }

    /// Ask the upstream where `tag` points now (here it points to `local`)
    /// and follow it when it moved.
    async fn check_tag(
        &self,
        route: &Route,
        remote: &str,
        repo: &RepoName,
        local: Option<Digest>,
        writer: &Access<Push>,
        tag: &crate::oci::Tag,
    ) -> Result<Prepared, OciError> {
        let head = route.client.head_manifest(remote, tag.as_str()).await;
        count(&head);
        let head = match head {
            Ok(head) => head,
            Err(UpstreamError::NotFound) if local.is_none() => {
                return Err(OciError::ManifestUnknown(format!("{repo}:{tag}")))
            }
            Err(e) => {
                if local.is_some() {
                    tracing::warn!(upstream = %route.name, %repo, %tag, error = %e,
                        "upstream cannot be asked; serving the tag as last seen");
                    crate::metrics::inc(&crate::metrics::get().mirror_stale);
                    return Ok(Prepared::Stale);
                }
                return Err(map_error(&route.name, e, &format!("{repo}:{tag}")));
            }
        };
        let upstream_digest: Digest = head
            .digest
            .parse()
            .map_err(|_| map_error(&route.name, UpstreamError::Protocol("bad digest".into()), tag.as_str()))?;
        if local.as_ref() != Some(&upstream_digest) {
            let fetched = route.client.get_manifest(remote, &upstream_digest.to_string()).await;
            count(&fetched);
            let fetched = fetched.map_err(|e| map_error(&route.name, e, &format!("{repo}:{tag}")))?;
            self.registry
                .manifest_put_mirrored(writer, &upstream_digest, Some(tag), Some(&fetched.media_type), fetched.bytes)
                .await?;
            self.stored(repo, &upstream_digest);
            tracing::info!(upstream = %route.name, %repo, %tag, digest = %upstream_digest,
                moved = local.is_some(), "mirrored a tag");
        }
        let key = checked_key(repo, tag.as_str());
        if let Err(e) = self.registry.state().set(&key, Bytes::from_static(b"1"), route.tag_ttl).await {
            tracing::debug!(error = %e, "cannot record the tag check; the next pull checks again");
        }
        Ok(Prepared::Current)
    }

    /// HEAD of a blob of a mirrored repository that is not here: its size
    /// as the upstream tells it (nothing is fetched). `Ok(None)`: not a
    /// mirrored repository.
    pub async fn head_blob(&self, access: &Access<Pull>, digest: &Digest) -> Result<Option<u64>, OciError> {
        let repo = access.repo();
        let Some((route, remote)) = self.route(repo) else { return Ok(None) };
        let head = route.client.head_blob(&remote, &digest.to_string()).await;
        count(&head);
        head.map(Some).map_err(|e| match e {
            UpstreamError::NotFound => OciError::BlobUnknown(digest.to_string()),
            e => map_error(&route.name, e, &format!("{repo}@{digest}")),
        })
    }

    /// A blob of a mirrored repository that is not here: stream it from the
    /// upstream while the registry stores it, or, when another pull in the
    /// fleet is fetching it already, wait for that to land. `Ok(None)`: not
    /// a mirrored repository.
    pub async fn fetch_blob(&self, access: &Access<Pull>, digest: &Digest) -> Result<Option<MirrorBlob>, OciError> {
        let repo = access.repo();
        let Some((route, remote)) = self.route(repo) else { return Ok(None) };
        let here = || async {
            match self.registry.blob_meta(access, digest).await {
                Ok(_) => Ok(true),
                Err(OciError::BlobUnknown(_)) => Ok(false),
                Err(e) => Err(e),
            }
        };
        let lease = match self.turn(route, &lock_name("blob", repo, &digest.to_string()), here).await? {
            Turn::Done => return Ok(Some(MirrorBlob::Stored)),
            // A layer may take longer than fill_wait over a slow link: its
            // lock is renewed for as long as bytes keep coming (a stall is
            // bounded by the idle timeout).
            Turn::Lead(lease) => Held::new(self.registry.state(), lease, None),
        };
        let blob = route.client.get_blob(&remote, &digest.to_string()).await;
        count(&blob);
        let blob = match blob {
            Ok(blob) => blob,
            Err(e) => {
                lease.release().await;
                return Err(match e {
                    UpstreamError::NotFound => OciError::BlobUnknown(digest.to_string()),
                    e => map_error(&route.name, e, &format!("{repo}@{digest}")),
                });
            }
        };
        let Some(size) = blob.size else {
            lease.release().await;
            return Err(map_error(&route.name, UpstreamError::Protocol("blob without a length".into()), "blob"));
        };
        // Each piece goes to the client and to the upload; the upload goes
        // on when the client leaves, so the blob lands either way.
        let (to_client, client_rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
        let (to_store, store_rx) = tokio::sync::mpsc::channel::<Result<Bytes, BodyError>>(8);
        let writer: Access<Push> = crate::auth::internal_access(repo, "mirror");
        let registry = self.registry.clone();
        let d = digest.clone();
        let upstream = route.name.clone();
        let repo_name = repo.clone();
        tokio::spawn(async move {
            let body = tokio_stream_from(store_rx);
            let stored = tokio::spawn(async move { registry.upload_monolithic(&writer, &d, Some(size), body).await });
            let mut source = blob.body;
            let mut client = Some(to_client);
            while let Some(piece) = source.next().await {
                match piece {
                    Ok(bytes) => {
                        crate::metrics::get()
                            .mirror_fetched_bytes
                            .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        if let Some(c) = &client {
                            if c.send(Ok(bytes.clone())).await.is_err() {
                                client = None;
                            }
                        }
                        if to_store.send(Ok(bytes)).await.is_err() {
                            break;
                        }
                    }
                    Err(e) => {
                        if matches!(e, UpstreamError::DigestMismatch(_)) {
                            crate::metrics::inc(&crate::metrics::get().mirror_upstream[crate::metrics::MIRROR_REFUSED]);
                        }
                        tracing::warn!(upstream, error = %e, "mirroring a blob failed; nothing stored");
                        if let Some(c) = &client {
                            let _ = c.send(Err(std::io::Error::other(e.to_string()))).await;
                        }
                        let _ = to_store.send(Err(BodyError::Read(e.to_string()))).await;
                        break;
                    }
                }
            }
            drop(to_store);
            match stored.await {
                Ok(Ok(_)) => tracing::info!(upstream, repo = %repo_name, "mirrored a blob"),
                Ok(Err(e)) => tracing::warn!(upstream, repo = %repo_name, error = %e, "storing a mirrored blob failed"),
                Err(e) => tracing::warn!(upstream, error = %e, "the mirrored blob's upload task failed"),
            }
            // Only now may the next pull look: the blob is stored or not.
            lease.release().await;
        });
        let body = tokio_stream_from(client_rx)
            .map(|r| r.map_err(|e| berth_storage::StorageError::Backend { backend: "mirror", source: Box::new(e) }));
        Ok(Some(MirrorBlob::Streaming(BlobRead { size, range: 0..size, body: body.boxed() })))
    }
}

/// What [`Mirror::fetch_blob`] has for the caller.
pub enum MirrorBlob {
    /// The upstream's bytes, checked as they pass and stored meanwhile.
    Streaming(BlobRead),
    /// Another pull's fetch stored it: serve it as any stored blob.
    Stored,
}

impl std::fmt::Debug for MirrorBlob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MirrorBlob::Streaming(read) => write!(f, "Streaming({} bytes)", read.size),
            MirrorBlob::Stored => f.write_str("Stored"),
        }
    }
}

/// A stream over an mpsc receiver.
fn tokio_stream_from<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> futures::stream::BoxStream<'static, T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) }).boxed()
}

/// Shared handle kept by the API.
pub type SharedMirror = Arc<Mirror>;
