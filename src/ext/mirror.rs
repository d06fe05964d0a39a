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

use std::sync::Arc;
use std::time::Duration;

use berth_upstream::{Credentials, Upstream, UpstreamError, UpstreamOptions};
use bytes::Bytes;
use futures::StreamExt;

use crate::config::{MirrorConfig, MirrorUpstreamConfig};
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
}

/// What [`Mirror::prepare_manifest`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Prepared {
    /// Not a mirrored repository, or the local copy is current.
    Current,
    /// The upstream could not be asked; the local tag is served as it is.
    Stale,
}

/// The mirror: routes from local prefixes to upstreams.
#[derive(Debug)]
pub struct Mirror {
    routes: Vec<Route>,
    registry: Registry,
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

impl Mirror {
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
            });
        }
        Ok(Some(Mirror { routes, registry }))
    }

    /// The upstream serving `repo` and the name to ask it for.
    fn route(&self, repo: &RepoName) -> Option<(&Route, String)> {
        let name = repo.as_str();
        self.routes.iter().find_map(|r| {
            let rest = name.strip_prefix(r.prefix.as_str())?.strip_prefix('/')?;
            let remote =
                if r.remote_prefix.is_empty() { rest.to_owned() } else { format!("{}/{rest}", r.remote_prefix) };
            Some((r, remote))
        })
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
                match self.registry.manifest_get(access, reference).await {
                    Ok(_) => return Ok(Prepared::Current),
                    Err(OciError::ManifestUnknown(_)) => {}
                    Err(e) => return Err(e),
                }
                let fetched = route.client.get_manifest(&remote, &digest.to_string()).await;
                count(&fetched);
                let fetched = fetched.map_err(|e| map_error(&route.name, e, &format!("{repo}@{digest}")))?;
                self.registry
                    .manifest_put_mirrored(&writer, digest, None, Some(&fetched.media_type), fetched.bytes)
                    .await?;
                tracing::info!(upstream = %route.name, %repo, %digest, "mirrored a manifest");
                Ok(Prepared::Current)
            }
            Reference::Tag(tag) => {
                let state = self.registry.state();
                let key = checked_key(repo, tag.as_str());
                if matches!(state.get(&key).await, Ok(Some(_))) {
                    crate::metrics::inc(&crate::metrics::get().mirror_fresh_hits);
                    return Ok(Prepared::Current);
                }
                let local = match self.registry.manifest_get(access, reference).await {
                    Ok(m) => Some(m.digest),
                    Err(OciError::ManifestUnknown(_)) => None,
                    Err(e) => return Err(e),
                };
                let head = route.client.head_manifest(&remote, tag.as_str()).await;
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
                    let fetched = route.client.get_manifest(&remote, &upstream_digest.to_string()).await;
                    count(&fetched);
                    let fetched = fetched.map_err(|e| map_error(&route.name, e, &format!("{repo}:{tag}")))?;
                    self.registry
                        .manifest_put_mirrored(
                            &writer,
                            &upstream_digest,
                            Some(tag),
                            Some(&fetched.media_type),
                            fetched.bytes,
                        )
                        .await?;
                    tracing::info!(upstream = %route.name, %repo, %tag, digest = %upstream_digest,
                        moved = local.is_some(), "mirrored a tag");
                }
                if let Err(e) = state.set(&key, Bytes::from_static(b"1"), route.tag_ttl).await {
                    tracing::debug!(error = %e, "cannot record the tag check; the next pull checks again");
                }
                Ok(Prepared::Current)
            }
        }
    }

    /// A blob of a mirrored repository that is not here: stream it from the
    /// upstream while the registry stores it. `Ok(None)`: not mirrored.
    pub async fn fetch_blob(&self, access: &Access<Pull>, digest: &Digest) -> Result<Option<BlobRead>, OciError> {
        let repo = access.repo();
        let Some((route, remote)) = self.route(repo) else { return Ok(None) };
        let blob = route.client.get_blob(&remote, &digest.to_string()).await;
        count(&blob);
        let blob = blob.map_err(|e| match e {
            UpstreamError::NotFound => OciError::BlobUnknown(digest.to_string()),
            e => map_error(&route.name, e, &format!("{repo}@{digest}")),
        })?;
        let size = blob
            .size
            .ok_or_else(|| map_error(&route.name, UpstreamError::Protocol("blob without a length".into()), "blob"))?;
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
        });
        let body = tokio_stream_from(client_rx)
            .map(|r| r.map_err(|e| berth_storage::StorageError::Backend { backend: "mirror", source: Box::new(e) }));
        Ok(Some(BlobRead { size, range: 0..size, body: body.boxed() }))
    }
}

/// A stream over an mpsc receiver.
fn tokio_stream_from<T: Send + 'static>(rx: tokio::sync::mpsc::Receiver<T>) -> futures::stream::BoxStream<'static, T> {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) }).boxed()
}

/// Shared handle kept by the API.
pub type SharedMirror = Arc<Mirror>;
