//! A client of upstream OCI Distribution registries (Docker Hub, GHCR,
//! Quay, Distribution, another Berth), for pulling through and mirroring:
//!
//! - authentication the way the upstream asks for it: the first 401's
//!   `WWW-Authenticate` says Basic (credentials sent from then on) or Bearer
//!   (a token fetched from the realm for the service and the repository's
//!   pull scope, with the credentials when configured, cached until shortly
//!   before it expires);
//! - manifests fetched whole (at most 4 MiB) and checked against their
//!   digest: the one asked for, or the `Docker-Content-Digest` the upstream
//!   announced;
//! - blobs streamed with a deadline between chunks, hashed as they arrive;
//!   the last chunk is held back until the digest matched, so a consumer
//!   never sees the whole of a blob that does not verify;
//! - `Retry-After` on 429 and 503 honoured with backoff up to a bound, then
//!   reported, so the caller can serve what it has and tell its client when
//!   to come back.
//!
//! No repository mapping here beyond Docker Hub's `library/` for
//! single-component names: which local names map to which upstream names is
//! the mirror's configuration.

mod auth;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use sha2::Digest as _;

pub use auth::{parse_challenge, Challenge};

/// Manifests larger than this are refused (Berth's own limit).
pub const MAX_MANIFEST_BYTES: usize = 4 * 1024 * 1024;

/// The manifest media types asked for, most specific first.
pub const MANIFEST_TYPES: &[&str] = &[
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
];

/// How to reach one upstream registry.
#[derive(Debug, Clone)]
pub struct UpstreamOptions {
    /// Base URL: `https://host[:port]` (a path prefix is kept). `docker.io`
    /// and its aliases mean `https://registry-1.docker.io`.
    pub url: String,
    pub credentials: Option<Credentials>,
    /// A PEM bundle trusted in addition to the system's roots.
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
    /// Until the response headers.
    pub response_timeout: Duration,
    /// Longest pause between two chunks of a body.
    pub idle_timeout: Duration,
    /// Attempts per request (5xx, 429, timeouts and refused connections are
    /// retried with doubling delays, or after `Retry-After`).
    pub max_attempts: u32,
    /// A `Retry-After` longer than this is not waited for: the call fails
    /// with it, for the caller to pass on.
    pub max_retry_wait: Duration,
    pub user_agent: String,
}

impl Default for UpstreamOptions {
    fn default() -> Self {
        UpstreamOptions {
            url: String::new(),
            credentials: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            response_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(30),
            max_attempts: 3,
            max_retry_wait: Duration::from_secs(10),
            user_agent: format!("berth/{}", env!("CARGO_PKG_VERSION")),
        }
    }
}

/// A user name and password (Basic, or to obtain tokens).
#[derive(Clone)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// Why a call failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    #[error("not found upstream")]
    NotFound,
    #[error("upstream refused the credentials: {0}")]
    Unauthorized(String),
    #[error("upstream denied access")]
    Denied,
    #[error("upstream is rate limiting; retry after {}s", retry_after.as_secs())]
    RateLimited { retry_after: Duration },
    #[error("upstream unavailable: {cause}")]
    Unavailable { retry_after: Option<Duration>, cause: String },
    #[error("upstream content does not match its digest: {0}")]
    DigestMismatch(String),
    #[error("upstream answered something invalid: {0}")]
    Protocol(String),
    #[error("upstream configuration: {0}")]
    Setup(String),
}

pub type Result<T, E = UpstreamError> = std::result::Result<T, E>;

/// A manifest as fetched: bytes verified against `digest`.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub digest: String,
    pub media_type: String,
    pub bytes: Bytes,
}

/// What a HEAD says of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInfo {
    pub digest: String,
    pub media_type: String,
    pub size: u64,
}

/// A blob being fetched: its size when the upstream said it, and its bytes
/// (verified: see [`Upstream::get_blob`]).
pub struct BlobBody {
    pub size: Option<u64>,
    pub body: BoxStream<'static, Result<Bytes>>,
}

impl std::fmt::Debug for BlobBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobBody").field("size", &self.size).finish_non_exhaustive()
    }
}

/// One upstream registry.
#[derive(Debug, Clone)]
pub struct Upstream {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: String,
    docker_hub: bool,
    options: UpstreamOptions,
    tokens: Mutex<auth::TokenCache>,
    /// The upstream challenged with Basic once: send credentials up front.
    basic: AtomicBool,
    /// The upstream is on this machine or link-local ([`local_host`]): it
    /// may send us there.
    local: bool,
}

/// `docker.io` and its aliases, as people write them.
fn docker_hub_host(host: &str) -> bool {
    matches!(host, "docker.io" | "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com")
}

/// The base URL for `url`: scheme defaulting to https, no trailing slash,
/// Docker Hub's aliases pointing at its registry host.
fn normalize(url: &str) -> Result<(String, bool)> {
    let url = url.trim().trim_end_matches('/');
    let (scheme, rest) = match url.split_once("://") {
        Some((s, r)) => (s.to_ascii_lowercase(), r),
        None => ("https".to_owned(), url),
    };
    if scheme != "https" && scheme != "http" {
        return Err(UpstreamError::Setup(format!("{url}: only https and http URLs")));
    }
    let host = rest.split('/').next().unwrap_or_default();
    if host.is_empty() || host.contains(['@', '?', '#', ' ']) {
        return Err(UpstreamError::Setup(format!("{url}: no host")));
    }
    // host, [v6], host:port or [v6]:port, with a numeric port.
    let (hostname, port) = match host.strip_prefix('[') {
        Some(v6) => match v6.split_once(']') {
            Some((h, "")) => (h, None),
            Some((h, p)) => (h, Some(p.strip_prefix(':').unwrap_or("x"))),
            None => ("", None),
        },
        None => match host.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (host, None),
        },
    };
    if hostname.is_empty() || port.is_some_and(|p| p.parse::<u16>().is_err()) {
        return Err(UpstreamError::Setup(format!("{url}: no valid host[:port]")));
    }
    if docker_hub_host(&hostname.to_ascii_lowercase()) {
        return Ok(("https://registry-1.docker.io".to_owned(), true));
    }
    Ok((format!("{scheme}://{rest}"), false))
}

/// A rustls configuration with the system's roots (honouring
/// `SSL_CERT_FILE`) and the bundle in `ca_file`.
fn tls_config(ca_file: Option<&std::path::Path>) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        use rustls_pki_types::pem::PemObject as _;
        let certs = rustls_pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| UpstreamError::Setup(format!("ca_file {}: {e}", path.display())))?;
        let mut added = 0;
        for cert in certs {
            let cert = cert.map_err(|e| UpstreamError::Setup(format!("ca_file {}: {e}", path.display())))?;
            roots.add(cert).map_err(|e| UpstreamError::Setup(format!("ca_file {}: {e}", path.display())))?;
            added += 1;
        }
        if added == 0 {
            return Err(UpstreamError::Setup(format!("ca_file {}: no certificate", path.display())));
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| UpstreamError::Setup(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(config)
}

/// The digest of `bytes` with the algorithm `expected` names (sha256 or
/// sha512), as `alg:hex`.
fn digest_like(expected: &str, bytes: &[u8]) -> Result<String> {
    match expected.split_once(':').map(|(a, _)| a) {
        Some("sha256") => Ok(format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))),
        Some("sha512") => Ok(format!("sha512:{}", hex::encode(sha2::Sha512::digest(bytes)))),
        _ => Err(UpstreamError::Protocol(format!("unsupported digest {expected:?}"))),
    }
}

fn valid_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("sha256", h)) => h.len() == 64 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        Some(("sha512", h)) => h.len() == 128 && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)),
        _ => false,
    }
}

/// Seconds of a `Retry-After` (delay seconds; an HTTP date counts as a
/// minute, which is what registries mean by it in practice).
fn retry_after(headers: &http::HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?.trim();
    match v.parse::<u64>() {
        Ok(s) => Some(Duration::from_secs(s.min(3600))),
        Err(_) if !v.is_empty() => Some(Duration::from_secs(60)),
        Err(_) => None,
    }
}

fn unavailable(cause: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Unavailable { retry_after: None, cause: cause.to_string() }
}

/// Percent-encode a query value.
fn q(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
}

impl Upstream {
    pub fn new(options: UpstreamOptions) -> Result<Upstream> {
        let (base, docker_hub) = normalize(&options.url)?;
        if options.max_attempts == 0 {
            return Err(UpstreamError::Setup("max_attempts must be at least 1".into()));
        }
        let local = upstream_is_local(&base);
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls_config(options.ca_file.as_deref())?)
            .connect_timeout(options.connect_timeout)
            .user_agent(options.user_agent.clone())
            // Blob GETs of large registries redirect to a CDN or a bucket;
            // reqwest drops Authorization when the host changes. Never to
            // plain http from https, nor to this machine or a link-local
            // address unless the upstream is there.
            .redirect(redirect_policy(local))
            .build()
            .map_err(|e| UpstreamError::Setup(format!("HTTP client: {e}")))?;
        Ok(Upstream {
            inner: Arc::new(Inner {
                http,
                base,
                docker_hub,
                options,
                tokens: Mutex::new(auth::TokenCache::default()),
                basic: AtomicBool::new(false),
                local,
            }),
        })
    }

    /// The base URL requests go to.
    pub fn base_url(&self) -> &str {
        &self.inner.base
    }

    /// The repository name to ask the upstream for: Docker Hub keeps its
    /// official images under `library/`.
    pub fn repository(&self, name: &str) -> String {
        if self.inner.docker_hub && !name.contains('/') {
            format!("library/{name}")
        } else {
            name.to_owned()
        }
    }

    /// HEAD of a manifest by tag or digest.
    pub async fn head_manifest(&self, repo: &str, reference: &str) -> Result<ManifestInfo> {
        let repo = self.repository(repo);
        let resp = self
            .send(http::Method::HEAD, &pull_scope(&repo), &format!("/v2/{repo}/manifests/{reference}"), true)
            .await?;
        let h = resp.headers();
        let digest = h
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .filter(|d| valid_digest(d))
            .or_else(|| valid_digest(reference).then(|| reference.to_owned()))
            .ok_or_else(|| UpstreamError::Protocol("HEAD of a manifest without Docker-Content-Digest".into()))?;
        if valid_digest(reference) && digest != reference {
            return Err(UpstreamError::DigestMismatch(format!("asked for {reference}, told {digest}")));
        }
        let media_type = h
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
            .unwrap_or_default();
        let size =
            h.get(http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok()).unwrap_or(0);
        Ok(ManifestInfo { digest, media_type, size })
    }

    /// GET of a manifest by tag or digest, verified: by digest, the bytes
    /// must hash to it; by tag, to the `Docker-Content-Digest` the upstream
    /// sent (when it sent one).
    pub async fn get_manifest(&self, repo: &str, reference: &str) -> Result<FetchedManifest> {
        let repo = self.repository(repo);
        let resp = self
            .send(http::Method::GET, &pull_scope(&repo), &format!("/v2/{repo}/manifests/{reference}"), true)
            .await?;
        let announced = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .filter(|d| valid_digest(d));
        let media_type = resp
            .headers()
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or_default().trim().to_owned())
            .unwrap_or_default();
        let bytes = self.read_capped(resp, MAX_MANIFEST_BYTES, "manifest").await?;
        let expected = if valid_digest(reference) { Some(reference.to_owned()) } else { announced.clone() };
        let digest = match &expected {
            Some(e) => {
                let got = digest_like(e, &bytes)?;
                if &got != e {
                    return Err(UpstreamError::DigestMismatch(format!(
                        "manifest {repo}:{reference}: expected {e}, got {got}"
                    )));
                }
                got
            }
            None => digest_like("sha256:", &bytes)?,
        };
        if let (Some(a), true) = (&announced, valid_digest(reference)) {
            if a != reference {
                return Err(UpstreamError::DigestMismatch(format!("asked for {reference}, told {a}")));
            }
        }
        let media_type = if media_type.is_empty() || media_type == "application/json" {
            // Docker Hub and others may omit it: the manifest says.
            serde_json::from_slice::<serde_json::Value>(&bytes)
                .ok()
                .and_then(|v| v.get("mediaType")?.as_str().map(str::to_owned))
                .unwrap_or(media_type)
        } else {
            media_type
        };
        Ok(FetchedManifest { digest, media_type, bytes: Bytes::from(bytes) })
    }

    /// HEAD of a blob: its size, when the upstream has it.
    pub async fn head_blob(&self, repo: &str, digest: &str) -> Result<u64> {
        if !valid_digest(digest) {
            return Err(UpstreamError::Protocol(format!("unsupported digest {digest:?}")));
        }
        let repo = self.repository(repo);
        let resp =
            self.send(http::Method::HEAD, &pull_scope(&repo), &format!("/v2/{repo}/blobs/{digest}"), false).await?;
        resp.headers()
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| UpstreamError::Protocol("HEAD of a blob without Content-Length".into()))
    }

    /// GET of a blob. The stream yields the bytes as they arrive, hashing
    /// them, and holds the last chunk back until the whole blob matched
    /// `digest` (and the announced length): a mismatch ends it with
    /// [`UpstreamError::DigestMismatch`] instead.
    pub async fn get_blob(&self, repo: &str, digest: &str) -> Result<BlobBody> {
        if !valid_digest(digest) {
            return Err(UpstreamError::Protocol(format!("unsupported digest {digest:?}")));
        }
        let repo = self.repository(repo);
        let resp =
            self.send(http::Method::GET, &pull_scope(&repo), &format!("/v2/{repo}/blobs/{digest}"), false).await?;
        let size = resp.content_length();
        let body = self.idle_bounded(resp);
        Ok(BlobBody { size, body: verified(body, digest.to_owned(), size) })
    }

    /// The whole body of `resp`: at most `cap` bytes, none of its pieces
    /// later than `idle_timeout`.
    async fn read_capped(&self, resp: reqwest::Response, cap: usize, what: &str) -> Result<Vec<u8>> {
        if resp.content_length().is_some_and(|n| n > cap as u64) {
            return Err(UpstreamError::Protocol(format!("{what} over {cap} bytes")));
        }
        let mut bytes = Vec::new();
        let mut body = self.idle_bounded(resp);
        while let Some(piece) = body.next().await {
            let piece = piece?;
            if bytes.len() + piece.len() > cap {
                return Err(UpstreamError::Protocol(format!("{what} over {cap} bytes")));
            }
            bytes.extend_from_slice(&piece);
        }
        Ok(bytes)
    }

    /// The body of `resp`, failing when no byte arrives for `idle_timeout`.
    fn idle_bounded(&self, resp: reqwest::Response) -> BoxStream<'static, Result<Bytes>> {
        let idle = self.inner.options.idle_timeout;
        let stream = resp.bytes_stream();
        futures::stream::unfold(Some(stream), move |state| async move {
            let mut stream = state?;
            match tokio::time::timeout(idle, stream.next()).await {
                Ok(Some(Ok(b))) => Some((Ok(b), Some(stream))),
                Ok(Some(Err(e))) => Some((Err(unavailable(format!("reading the body: {e}"))), None)),
                Ok(None) => None,
                Err(_) => Some((Err(unavailable(format!("no byte for {}s", idle.as_secs()))), None)),
            }
        })
        .boxed()
    }

    /// The `Authorization` value to send for `scope`, if any is known.
    fn authorization(&self, scope: &str) -> Option<String> {
        if let Some(token) = self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner()).get(scope) {
            return Some(format!("Bearer {token}"));
        }
        if self.inner.basic.load(Ordering::Relaxed) {
            return self.inner.options.credentials.as_ref().map(basic);
        }
        None
    }

    /// Answer a challenge: remember Basic, or fetch a token for `scope`.
    async fn authenticate(&self, challenge: Challenge, scope: &str) -> Result<()> {
        match challenge {
            Challenge::Basic => {
                if self.inner.options.credentials.is_none() {
                    return Err(UpstreamError::Unauthorized(
                        "the upstream wants Basic credentials and none are configured".into(),
                    ));
                }
                self.inner.basic.store(true, Ordering::Relaxed);
                Ok(())
            }
            Challenge::Bearer { realm, service, scope: asked } => {
                let Some(realm_url) =
                    reqwest::Url::parse(&realm).ok().filter(|u| matches!(u.scheme(), "https" | "http"))
                else {
                    return Err(UpstreamError::Protocol(format!("token realm {realm:?} is not an http(s) URL")));
                };
                // The realm is a place the upstream sends us, like a redirect.
                if let Err(why) = redirect_allowed("", &realm_url, self.inner.local) {
                    return Err(UpstreamError::Protocol(format!("token realm {realm:?}: {why}")));
                }
                if self.inner.options.credentials.is_some() && !credentials_may_go_to(&self.inner.base, &realm_url) {
                    return Err(UpstreamError::Protocol(format!(
                        "token realm {realm:?}: the credentials go only over https, or to the upstream's own \
                         host when it is plain http"
                    )));
                }
                let mut url = realm.clone();
                let mut sep = if url.contains('?') { '&' } else { '?' };
                if let Some(s) = &service {
                    url.push_str(&format!("{sep}service={}", q(s)));
                    sep = '&';
                }
                let wanted = asked.unwrap_or_else(|| scope.to_owned());
                url.push_str(&format!("{sep}scope={}", q(&wanted)));
                let mut req = self.inner.http.get(&url);
                if let Some(c) = &self.inner.options.credentials {
                    req = req.header(http::header::AUTHORIZATION, basic(c));
                }
                let resp = tokio::time::timeout(self.inner.options.response_timeout, req.send())
                    .await
                    .map_err(|_| unavailable("the token endpoint did not answer"))?
                    .map_err(|e| unavailable(format!("token endpoint: {e}")))?;
                match resp.status().as_u16() {
                    200 => {}
                    401 | 403 => {
                        return Err(UpstreamError::Unauthorized(format!(
                            "the token endpoint refused the credentials ({})",
                            resp.status()
                        )))
                    }
                    429 => {
                        return Err(UpstreamError::RateLimited {
                            retry_after: retry_after(resp.headers()).unwrap_or(Duration::from_secs(60)),
                        })
                    }
                    s => return Err(unavailable(format!("the token endpoint answered {s}"))),
                }
                let body = self.read_capped(resp, MAX_TOKEN_ANSWER_BYTES, "token endpoint answer").await?;
                let answer: auth::TokenAnswer = serde_json::from_slice(&body)
                    .map_err(|e| UpstreamError::Protocol(format!("token endpoint answer: {e}")))?;
                let token = answer
                    .token
                    .or(answer.access_token)
                    .filter(|t| !t.is_empty())
                    .ok_or_else(|| UpstreamError::Protocol("token endpoint answered no token".into()))?;
                let life = answer.expires_in.map(Duration::from_secs).unwrap_or(auth::DEFAULT_TOKEN_LIFE);
                self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner()).put(scope, token, life);
                Ok(())
            }
        }
    }

    /// The tags of `repo`, every page (`Link: <...>; rel="next"` followed,
    /// at most [`MAX_LIST_ENTRIES`] in all).
    pub async fn tags(&self, repo: &str) -> Result<Vec<String>> {
        let repo = self.repository(repo);
        self.list(&pull_scope(&repo), &format!("/v2/{repo}/tags/list?n=1000"), "tags").await
    }

    /// Repository names from the upstream's catalog, every page. Not every
    /// registry serves it (Docker Hub does not): [`UpstreamError::Denied`]
    /// or [`UpstreamError::NotFound`] then.
    pub async fn catalog(&self) -> Result<Vec<String>> {
        self.list("registry:catalog:*", "/v2/_catalog?n=1000", "repositories").await
    }

    /// A paginated list: the strings under `field` of every page.
    async fn list(&self, scope: &str, first: &str, field: &str) -> Result<Vec<String>> {
        #[derive(serde::Deserialize)]
        struct Page {
            #[serde(default)]
            tags: Option<Vec<String>>,
            #[serde(default)]
            repositories: Option<Vec<String>>,
        }
        let mut out = Vec::new();
        let mut next = Some(first.to_owned());
        let mut asked = std::collections::HashSet::new();
        while let Some(path) = next.take() {
            // A `next` link seen before, or pages without end, would loop
            // for ever.
            if asked.len() >= MAX_LIST_PAGES || !asked.insert(path.clone()) {
                return Err(UpstreamError::Protocol(format!(
                    "the upstream's {field} pages do not end (a next link repeats, or over {MAX_LIST_PAGES} pages)"
                )));
            }
            let resp = self.send(http::Method::GET, scope, &path, false).await?;
            next = next_link(resp.headers());
            let body = self.read_capped(resp, MAX_LIST_PAGE_BYTES, &format!("a page of {field}")).await?;
            let page: Page =
                serde_json::from_slice(&body).map_err(|e| UpstreamError::Protocol(format!("{path}: {e}")))?;
            let items = if field == "tags" { page.tags } else { page.repositories };
            out.extend(items.unwrap_or_default());
            if out.len() > MAX_LIST_ENTRIES {
                return Err(UpstreamError::Protocol(format!("more than {MAX_LIST_ENTRIES} {field}")));
            }
        }
        Ok(out)
    }

    /// Send a request for `path` needing `scope`, authenticating when
    /// challenged (once per call) and retrying what may succeed later.
    async fn send(&self, method: http::Method, scope: &str, path: &str, manifest: bool) -> Result<reqwest::Response> {
        let o = &self.inner.options;
        let url = format!("{}{path}", self.inner.base);
        let mut challenged = false;
        let mut attempt = 0u32;
        let mut delay = Duration::from_millis(200);
        loop {
            attempt += 1;
            let mut req = self.inner.http.request(method.clone(), &url);
            if manifest {
                req = req.header(http::header::ACCEPT, MANIFEST_TYPES.join(", "));
            }
            if let Some(a) = self.authorization(scope) {
                req = req.header(http::header::AUTHORIZATION, a);
            }
            let outcome = tokio::time::timeout(o.response_timeout, req.send()).await;
            let (wait, error) = match outcome {
                Err(_) => (None, unavailable(format!("no answer within {}s", o.response_timeout.as_secs()))),
                Ok(Err(e)) => (None, unavailable(e)),
                Ok(Ok(resp)) => {
                    let status = resp.status().as_u16();
                    match status {
                        200..=299 => return Ok(resp),
                        401 if !challenged => {
                            challenged = true;
                            attempt -= 1;
                            self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner()).forget(scope);
                            let challenge = resp
                                .headers()
                                .get(http::header::WWW_AUTHENTICATE)
                                .and_then(|v| v.to_str().ok())
                                .and_then(parse_challenge)
                                .ok_or_else(|| {
                                    UpstreamError::Unauthorized("401 without a challenge Berth can answer".into())
                                })?;
                            self.authenticate(challenge, scope).await?;
                            continue;
                        }
                        401 => {
                            return Err(UpstreamError::Unauthorized(format!(
                                "{method} {path}: 401 after authenticating"
                            )))
                        }
                        403 => return Err(UpstreamError::Denied),
                        404 => return Err(UpstreamError::NotFound),
                        429 => {
                            let after = retry_after(resp.headers()).unwrap_or(delay);
                            (Some(after), UpstreamError::RateLimited { retry_after: after })
                        }
                        500..=599 => {
                            let after = retry_after(resp.headers());
                            (
                                after,
                                UpstreamError::Unavailable {
                                    retry_after: after,
                                    cause: format!("{method} {path}: {status}"),
                                },
                            )
                        }
                        _ => return Err(UpstreamError::Protocol(format!("{method} {path}: unexpected {status}"))),
                    }
                }
            };
            let wait = wait.unwrap_or(delay);
            if attempt >= o.max_attempts || wait > o.max_retry_wait {
                tracing::debug!(%error, attempt, "upstream request failed");
                return Err(error);
            }
            tracing::debug!(%error, attempt, wait_ms = wait.as_millis() as u64, "upstream request failed; retrying");
            tokio::time::sleep(wait).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }
}

/// Most names a tag or catalog listing may return.
pub const MAX_LIST_ENTRIES: usize = 100_000;

/// At most this many pages of a list are asked for.
pub const MAX_LIST_PAGES: usize = 2_000;

/// At most this many bytes in one page of a list.
pub const MAX_LIST_PAGE_BYTES: usize = 8 * 1024 * 1024;

/// At most this many bytes in a token endpoint's answer.
pub const MAX_TOKEN_ANSWER_BYTES: usize = 64 * 1024;

/// Whether credentials may be sent to the token realm `realm` of the
/// upstream at `base`: over https, or to the upstream's own host and port
/// when the upstream is plain http anyway (never over plain http to
/// another host).
fn credentials_may_go_to(base: &str, realm: &reqwest::Url) -> bool {
    match realm.scheme() {
        "https" => true,
        "http" => reqwest::Url::parse(base).is_ok_and(|b| {
            b.scheme() == "http"
                && b.host_str() == realm.host_str()
                && b.port_or_known_default() == realm.port_or_known_default()
        }),
        _ => false,
    }
}

/// Whether `host` (as a URL writes it) names this machine or a link-local
/// address (where cloud metadata services answer). Private networks are
/// not included: registries on a LAN hand out redirects to a bucket there.
fn local_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
    if host == "localhost" || host.ends_with(".localhost") {
        return true;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback() || ip.is_link_local() || ip.is_unspecified() || ip.is_broadcast()
        }
        Ok(std::net::IpAddr::V6(ip)) => {
            ip.is_loopback()
                || ip.is_unspecified()
                // fe80::/10 link-local.
                || (ip.segments()[0] & 0xffc0) == 0xfe80
                || ip.to_ipv4_mapped().is_some_and(|v4| local_host(&v4.to_string()))
        }
        Err(_) => false,
    }
}

/// Whether the upstream at `base` is itself on this machine or link-local
/// (then requests there are its own business).
fn upstream_is_local(base: &str) -> bool {
    reqwest::Url::parse(base).ok().and_then(|u| u.host_str().map(local_host)).unwrap_or(false)
}

/// Whether a redirect from a URL of scheme `from` to `to` may be followed
/// for an upstream that is `local` or not: never from https to http, and
/// to this machine or a link-local address only when the upstream is one.
fn redirect_allowed(from: &str, to: &reqwest::Url, local: bool) -> Result<(), &'static str> {
    if from == "https" && to.scheme() != "https" {
        return Err("a redirect from https to plain http");
    }
    if !matches!(to.scheme(), "https" | "http") {
        return Err("a redirect to something other than http(s)");
    }
    if !local && to.host_str().is_none_or(local_host) {
        return Err("a redirect to this machine or a link-local address");
    }
    Ok(())
}

/// Follow at most 5 redirects, each [`redirect_allowed`] for an upstream
/// that is `local` or not.
fn redirect_policy(local: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() > 5 {
            return attempt.error("more than 5 redirects");
        }
        let from = attempt.previous().last().map(|u| u.scheme().to_owned()).unwrap_or_default();
        match redirect_allowed(&from, attempt.url(), local) {
            Ok(()) => attempt.follow(),
            Err(why) => attempt.error(why),
        }
    })
}

fn pull_scope(repo: &str) -> String {
    format!("repository:{repo}:pull")
}

/// The path of a `Link: <path>; rel="next"` header, when it stays on the
/// upstream (a path, not another host).
fn next_link(headers: &http::HeaderMap) -> Option<String> {
    let v = headers.get(http::header::LINK)?.to_str().ok()?;
    let (target, params) = v.split_once(';')?;
    if !params.contains("rel=\"next\"") && !params.contains("rel=next") {
        return None;
    }
    let target = target.trim().strip_prefix('<')?.strip_suffix('>')?;
    target.starts_with("/v2/").then(|| target.to_owned())
}

fn basic(c: &Credentials) -> String {
    use base64::Engine as _;
    let pair = format!("{}:{}", c.username, c.password);
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
}

/// Hash `body` as it passes and hold its last chunk back until the total
/// matched `digest` (and `size` when known).
fn verified(
    body: BoxStream<'static, Result<Bytes>>,
    digest: String,
    size: Option<u64>,
) -> BoxStream<'static, Result<Bytes>> {
    enum Hasher {
        S256(sha2::Sha256),
        S512(sha2::Sha512),
    }
    struct State {
        body: BoxStream<'static, Result<Bytes>>,
        hasher: Hasher,
        held: Option<Bytes>,
        seen: u64,
        digest: String,
        size: Option<u64>,
        done: bool,
    }
    let hasher = if digest.starts_with("sha512:") {
        Hasher::S512(sha2::Sha512::new())
    } else {
        Hasher::S256(sha2::Sha256::new())
    };
    let state = State { body, hasher, held: None, seen: 0, digest, size, done: false };
    futures::stream::unfold(state, |mut s| async move {
        if s.done {
            return None;
        }
        loop {
            match s.body.next().await {
                Some(Ok(piece)) => {
                    if piece.is_empty() {
                        continue;
                    }
                    s.seen += piece.len() as u64;
                    match &mut s.hasher {
                        Hasher::S256(h) => h.update(&piece),
                        Hasher::S512(h) => h.update(&piece),
                    }
                    if let Some(size) = s.size {
                        if s.seen > size {
                            s.done = true;
                            return Some((
                                Err(UpstreamError::DigestMismatch(format!("{}: more bytes than announced", s.digest))),
                                s,
                            ));
                        }
                    }
                    match s.held.replace(piece) {
                        Some(previous) => return Some((Ok(previous), s)),
                        None => continue,
                    }
                }
                Some(Err(e)) => {
                    s.done = true;
                    return Some((Err(e), s));
                }
                None => {
                    s.done = true;
                    let got = match std::mem::replace(&mut s.hasher, Hasher::S256(sha2::Sha256::new())) {
                        Hasher::S256(h) => format!("sha256:{}", hex::encode(h.finalize())),
                        Hasher::S512(h) => format!("sha512:{}", hex::encode(h.finalize())),
                    };
                    if got != s.digest {
                        return Some((Err(UpstreamError::DigestMismatch(format!("blob {}: got {got}", s.digest))), s));
                    }
                    if s.size.is_some_and(|size| size != s.seen) {
                        return Some((
                            Err(UpstreamError::DigestMismatch(format!("{}: fewer bytes than announced", s.digest))),
                            s,
                        ));
                    }
                    return s.held.take().map(|last| (Ok(last), s));
                }
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_stay_on_the_upstream() {
        let link = |v: &str| {
            let mut h = http::HeaderMap::new();
            h.insert(http::header::LINK, http::HeaderValue::from_str(v).unwrap());
            next_link(&h)
        };
        assert_eq!(link(r#"</v2/a/tags/list?n=2&last=b>; rel="next""#).as_deref(), Some("/v2/a/tags/list?n=2&last=b"));
        assert_eq!(link("</v2/_catalog?last=x>; rel=next").as_deref(), Some("/v2/_catalog?last=x"));
        assert_eq!(link(r#"<https://elsewhere.example/v2/_catalog>; rel="next""#), None);
        assert_eq!(link(r#"</v2/a/tags/list>; rel="prev""#), None);
        assert_eq!(link("garbage"), None);
        assert_eq!(next_link(&http::HeaderMap::new()), None);
    }

    #[test]
    fn urls_and_docker_hub_names() {
        assert_eq!(normalize("docker.io").unwrap(), ("https://registry-1.docker.io".into(), true));
        assert_eq!(normalize("https://index.docker.io/").unwrap(), ("https://registry-1.docker.io".into(), true));
        assert_eq!(normalize("ghcr.io").unwrap(), ("https://ghcr.io".into(), false));
        assert_eq!(normalize("http://127.0.0.1:5000").unwrap(), ("http://127.0.0.1:5000".into(), false));
        assert_eq!(normalize("https://r.example/prefix/").unwrap(), ("https://r.example/prefix".into(), false));
        assert_eq!(normalize("http://[::1]:5000").unwrap(), ("http://[::1]:5000".into(), false));
        for bad in ["", "ftp://x", "https://", "https://u@h", "h:port", "[::1", "[::1]x", "host:"] {
            assert!(normalize(bad).is_err(), "{bad:?}");
        }
        let hub = Upstream::new(UpstreamOptions { url: "docker.io".into(), ..Default::default() }).unwrap();
        assert_eq!(hub.repository("alpine"), "library/alpine");
        assert_eq!(hub.repository("bitnami/redis"), "bitnami/redis");
        let other = Upstream::new(UpstreamOptions { url: "quay.io".into(), ..Default::default() }).unwrap();
        assert_eq!(other.repository("alpine"), "alpine");
    }

    #[test]
    fn basic_header_encoding() {
        let creds = |u: &str, p: &str| Credentials { username: u.into(), password: p.into() };
        assert_eq!(basic(&creds("user", "p@ss:w0rd")), "Basic dXNlcjpwQHNzOncwcmQ=");
        assert_eq!(basic(&creds("f", "")), "Basic Zjo=");
    }

    #[test]
    fn retry_after_values() {
        let mut h = http::HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("Wed, 21 Oct 2026 07:28:00 GMT"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(60)));
        h.insert(http::header::RETRY_AFTER, http::HeaderValue::from_static("999999"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3600)));
    }

    async fn collect(s: BoxStream<'static, Result<Bytes>>) -> (Vec<u8>, Option<UpstreamError>, usize) {
        let mut s = s;
        let (mut out, mut pieces) = (Vec::new(), 0);
        while let Some(p) = s.next().await {
            match p {
                Ok(b) => {
                    out.extend_from_slice(&b);
                    pieces += 1;
                }
                Err(e) => return (out, Some(e), pieces),
            }
        }
        (out, None, pieces)
    }

    fn pieces(parts: &[&'static [u8]]) -> BoxStream<'static, Result<Bytes>> {
        futures::stream::iter(parts.iter().map(|p| Ok(Bytes::from_static(p))).collect::<Vec<_>>()).boxed()
    }

    #[tokio::test]
    async fn a_blob_that_does_not_verify_never_arrives_whole() {
        let data: &[&'static [u8]] = &[b"hello ", b"upstream ", b"world"];
        let good = format!("sha256:{}", hex::encode(sha2::Sha256::digest(b"hello upstream world")));
        let (out, err, n) = collect(verified(pieces(data), good.clone(), Some(20))).await;
        assert_eq!((out.as_slice(), err.is_none(), n), (&b"hello upstream world"[..], true, 3));
        // A wrong digest: everything but the last chunk, then the error.
        let bad = format!("sha256:{}", "0".repeat(64));
        let (out, err, _) = collect(verified(pieces(data), bad, None)).await;
        assert_eq!(out, b"hello upstream ");
        assert!(matches!(err, Some(UpstreamError::DigestMismatch(_))));
        // The right digest but a length other than announced.
        let (_, err, _) = collect(verified(pieces(data), good.clone(), Some(21))).await;
        assert!(matches!(err, Some(UpstreamError::DigestMismatch(_))));
        let (_, err, _) = collect(verified(pieces(data), good, Some(10))).await;
        assert!(matches!(err, Some(UpstreamError::DigestMismatch(_))));
        // sha512.
        let d512 = format!("sha512:{}", hex::encode(sha2::Sha512::digest(b"hello upstream world")));
        let (out, err, _) = collect(verified(pieces(data), d512, None)).await;
        assert_eq!((out.len(), err.is_none()), (20, true));
    }

    #[test]
    fn credentials_go_only_where_they_are_safe() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        // Over https, anywhere (Docker Hub's realm is another host).
        assert!(credentials_may_go_to("https://registry-1.docker.io", &url("https://auth.docker.io/token")));
        // Plain http: only the upstream's own host and port.
        assert!(credentials_may_go_to("http://10.0.0.5:5000", &url("http://10.0.0.5:5000/token")));
        assert!(!credentials_may_go_to("http://10.0.0.5:5000", &url("http://10.0.0.6:5000/token")));
        assert!(!credentials_may_go_to("http://10.0.0.5:5000", &url("http://10.0.0.5:5001/token")));
        assert!(!credentials_may_go_to("https://r.example", &url("http://r.example/token")), "a downgrade");
        assert!(!credentials_may_go_to("https://r.example", &url("ftp://r.example/token")));
    }

    #[test]
    fn redirects_neither_downgrade_nor_reach_inside() {
        let url = |s: &str| reqwest::Url::parse(s).unwrap();
        assert!(redirect_allowed("https", &url("https://cdn.example/blob"), false).is_ok());
        assert!(redirect_allowed("https", &url("http://cdn.example/blob"), false).is_err());
        assert!(redirect_allowed("http", &url("http://cdn.example/blob"), false).is_ok());
        for inside in [
            "http://127.0.0.1/x",
            "http://localhost:8080/x",
            "http://169.254.169.254/latest/meta-data",
            "http://[::1]/x",
            "http://[fe80::1]/x",
            "http://[::ffff:127.0.0.1]/x",
            "http://0.0.0.0/x",
        ] {
            assert!(redirect_allowed("http", &url(inside), false).is_err(), "{inside}");
            assert!(redirect_allowed("http", &url(inside), true).is_ok(), "{inside}: the upstream is there too");
        }
        // A bucket on the registry's own private network is where LAN
        // registries send blob GETs.
        for lan in ["http://10.0.0.7:9000/b", "http://192.168.1.5/b", "http://[fd00::7]/b", "http://172.16.0.1/b"] {
            assert!(redirect_allowed("http", &url(lan), false).is_ok(), "{lan}");
        }
        assert!(redirect_allowed("https", &url("file:///etc/passwd"), true).is_err());
        assert!(local_host("[::1]") && !local_host("registry.example"));
        assert!(upstream_is_local("http://127.0.0.1:5000") && !upstream_is_local("https://registry-1.docker.io"));
    }

    #[test]
    fn token_lives_are_bounded() {
        let mut cache = auth::TokenCache::default();
        // An absurd expires_in neither panics nor keeps the token past a day.
        cache.put("s", "secret-token-value".into(), Duration::from_secs(u64::MAX));
        assert_eq!(cache.get("s").as_deref(), Some("secret-token-value"));
        assert!(!format!("{cache:?}").contains("secret-token-value"), "a token in Debug output");
    }
}
