//! One handler per endpoint. Each authenticates through the gate, obtains
//! the typed access its service call needs, and turns the result into the
//! spec's response and headers.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::StreamExt;
use http::header::{self, HeaderName};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt as _;
use serde_json::json;
use std::time::Duration;

use super::endpoint::{self, Endpoint, ParseError};
use super::errors::{envelope, error_response};
use super::ranges::{parse_content_range, parse_range, RangeRequest};
use super::App;
use crate::auth::Identity;
use crate::oci::manifest::{MAX_MANIFEST_SIZE, OCI_INDEX};
use crate::oci::{Algorithm, Digest, OciError, Reference, RepoName};
use crate::registry::{Access, BodyError, BodyStream, Page, Pull, UploadStatus};

pub const API_VERSION: HeaderName = HeaderName::from_static("docker-distribution-api-version");
const CONTENT_DIGEST: HeaderName = HeaderName::from_static("docker-content-digest");
const UPLOAD_UUID: HeaderName = HeaderName::from_static("docker-upload-uuid");
const OCI_SUBJECT: HeaderName = HeaderName::from_static("oci-subject");
const OCI_FILTERS_APPLIED: HeaderName = HeaderName::from_static("oci-filters-applied");
const OCI_CHUNK_MIN_LENGTH: HeaderName = HeaderName::from_static("oci-chunk-min-length");

type HandlerResult = Result<Response, OciError>;

/// Entry point for every `/v2` request.
pub async fn dispatch(State(app): State<Arc<App>>, req: Request) -> Response {
    let (mut parts, body) = req.into_parts();
    // Wrapped first, so a request refused at any step below still has its
    // body read off the connection.
    let expects_continue = parts
        .headers
        .get(header::EXPECT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
    let body = DrainOnDrop { body: Some(body), idle: app.body_idle_timeout, expects_continue };
    // Parsed by the request middleware; parsed here when it did not run or
    // the path is not an API endpoint (the error responses are built here).
    let parsed = match parts.extensions.remove::<super::Parsed>() {
        Some(super::Parsed(e)) => Ok(e),
        None => endpoint::parse(&parts.method, parts.uri.path()),
    };
    let endpoint = match parsed {
        Ok(e) => e,
        Err(ParseError::NotFound) => return envelope(StatusCode::NOT_FOUND, "NAME_UNKNOWN", "no such API endpoint"),
        Err(ParseError::MethodNotAllowed(allow)) => {
            let mut resp = envelope(StatusCode::METHOD_NOT_ALLOWED, "UNSUPPORTED", "method not allowed here");
            resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static(allow));
            return resp;
        }
        Err(ParseError::Invalid(e)) => return error_response(&e),
    };
    let client = super::client_of(&parts.extensions);
    let (operation, repo) = (endpoint.operation(), endpoint.repo().map(|r| r.to_string()));
    let write = matches!(parts.method, Method::POST | Method::PUT | Method::PATCH | Method::DELETE);
    let identity = match app.gate.authenticate(&parts.headers, &client).await {
        Ok(id) => id,
        Err(e) => {
            let resp = error_response(&e);
            audit(None, client.address, repo.as_deref(), operation, resp.status());
            return resp;
        }
    };
    let upload_id = match &endpoint {
        Endpoint::UploadPatch { name, id } | Endpoint::UploadPut { name, id } => Some((name.clone(), id.clone())),
        _ => None,
    };
    let class = if write { crate::ratelimit::Class::Write } else { crate::ratelimit::Class::Read };
    let result = match app.admit(class, &identity, client.address, repo.as_deref()).await {
        Ok(()) => handle(&app, &identity, endpoint, parts, body).await,
        Err(e) => Err(e),
    };
    let resp = match (result, upload_id) {
        (Ok(resp), _) => resp,
        (Err(OciError::UploadOffsetMismatch { offset }), Some((name, id))) => {
            // Tell the client where the upload stands so it can resume.
            let mut resp = error_response(&OciError::UploadOffsetMismatch { offset });
            upload_headers(resp.headers_mut(), &name, &UploadStatus { id, offset });
            resp
        }
        (Err(e), _) => error_response(&e),
    };
    let status = resp.status();
    if write || matches!(status.as_u16(), 401 | 403 | 429) {
        audit(Some(&identity), client.address, repo.as_deref(), operation, status);
    }
    resp
}

/// One audit record (target `berth::audit`): every write and delete, every
/// denial and failed authentication. Identity, address, repository,
/// operation and outcome; never a credential.
pub(super) fn audit(
    identity: Option<&Identity>,
    client: std::net::IpAddr,
    repo: Option<&str>,
    operation: &str,
    status: StatusCode,
) {
    let subject = identity.and_then(Identity::qualified_subject).unwrap_or_else(|| "anonymous".into());
    let method = identity.map(|i| i.method().name()).unwrap_or("failed");
    let outcome = match status.as_u16() {
        200..=299 => "ok",
        401 => "unauthenticated",
        403 => "denied",
        429 => "throttled",
        400..=499 => "refused",
        _ => "error",
    };
    tracing::info!(
        target: "berth::audit",
        subject = %subject,
        auth = method,
        client = %client,
        repository = repo.unwrap_or(""),
        operation,
        status = status.as_u16(),
        outcome,
        "audit"
    );
}

async fn handle(app: &App, id: &Identity, endpoint: Endpoint, parts: Parts, body: DrainOnDrop) -> HandlerResult {
    let query = Query::parse(parts.uri.query());
    match endpoint {
        Endpoint::Base => {
            app.gate.require_identity(id)?;
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], "{}").into_response())
        }
        Endpoint::Catalog => catalog(app, id, &query).await,
        Endpoint::Discover => {
            app.gate.require_identity(id)?;
            let body = json!({ "extensions": crate::flavor::discover() });
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response())
        }
        Endpoint::ScanReport { name, reference } => scan_report(app, id, &name, &reference, &query).await,
        Endpoint::SearchRepositories => search::repositories(app, id, &query).await,
        Endpoint::SearchTags { name } => search::tags(app, id, &name, &query).await,
        Endpoint::SearchImage { name, reference } => search::image(app, id, &name, &reference).await,
        Endpoint::BlobGet { name, digest } => blob_get(app, id, &name, &digest, &parts.headers).await,
        Endpoint::BlobHead { name, digest } => blob_head(app, id, &name, &digest).await,
        Endpoint::BlobDelete { name, digest } => {
            app.registry.blob_delete(&app.gate.authorize(id, &name)?, &digest).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Endpoint::UploadStart { name } => upload_start(app, id, &name, &query, &parts.headers, body).await,
        Endpoint::UploadStatus { name, id: upload } => {
            let access = app.gate.authorize(id, &name)?;
            let status = app.registry.upload_status(&access, &upload).await?;
            Ok(upload_response(StatusCode::NO_CONTENT, &name, &status))
        }
        Endpoint::UploadPatch { name, id: upload } => {
            let access = app.gate.authorize(id, &name)?;
            let start = content_range_start(&parts.headers)?;
            let len = content_length(&parts.headers)?;
            let status = app.registry.upload_append(&access, &upload, start, len, body_stream(body)).await?;
            Ok(upload_response(StatusCode::ACCEPTED, &name, &status))
        }
        Endpoint::UploadPut { name, id: upload } => {
            let access = app.gate.authorize(id, &name)?;
            let digest = query
                .digest("digest")?
                .ok_or_else(|| OciError::DigestInvalid("the digest parameter is required".into()))?;
            let start = content_range_start(&parts.headers)?;
            let len = content_length(&parts.headers)?;
            let done =
                app.registry.upload_complete(&access, &upload, &digest, start, len, Some(body_stream(body))).await?;
            Ok(blob_created(&name, &done))
        }
        Endpoint::UploadCancel { name, id: upload } => {
            app.registry.upload_cancel(&app.gate.authorize(id, &name)?, &upload).await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Endpoint::ManifestGet { name, reference } => {
            manifest_get(app, id, &name, &reference, &parts.headers, true).await
        }
        Endpoint::ManifestHead { name, reference } => {
            manifest_get(app, id, &name, &reference, &parts.headers, false).await
        }
        Endpoint::ManifestPut { name, reference } => {
            manifest_put(app, id, &name, &reference, &parts.headers, body).await
        }
        Endpoint::ManifestDelete { name, reference } => {
            app.registry.manifest_delete(&app.gate.authorize(id, &name)?, &reference).await?;
            Ok(StatusCode::ACCEPTED.into_response())
        }
        Endpoint::TagsList { name } => {
            let access = app.gate.authorize(id, &name)?;
            let (n, last) = (query.page_size()?, query.get("last"));
            let page = app.registry.tags(&access, n, last).await?;
            let body = json!({ "name": name.as_str(), "tags": page.items });
            Ok(listing(format!("/v2/{name}/tags/list"), n, &page, body))
        }
        Endpoint::Referrers { name, digest } => {
            let access = app.gate.authorize(id, &name)?;
            let filter = query.get("artifactType").filter(|t| !t.is_empty());
            let (after, n) = (query.digest("last")?, query.page_size()?);
            let page = app.registry.referrers(&access, &digest, filter, after.as_ref(), n).await?;
            let body = json!({ "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": page.manifests });
            let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, OCI_INDEX)], body.to_string()).into_response();
            if filter.is_some() {
                resp.headers_mut().insert(OCI_FILTERS_APPLIED, HeaderValue::from_static("artifactType"));
            }
            if let Some(next) = page.next {
                // The spec: a Link to the rest when one index cannot hold them all.
                let mut q = form_urlencoded::Serializer::new(String::new());
                if let Some(n) = n {
                    q.append_pair("n", &n.to_string());
                }
                if let Some(t) = filter {
                    q.append_pair("artifactType", t);
                }
                q.append_pair("last", &next.to_string());
                let link = format!("</v2/{name}/referrers/{digest}?{}>; rel=\"next\"", q.finish());
                resp.headers_mut().insert(header::LINK, hv(&link));
            }
            Ok(resp)
        }
    }
}

/// Decoded query parameters.
struct Query(Vec<(String, String)>);

impl Query {
    fn parse(q: Option<&str>) -> Query {
        Query(form_urlencoded::parse(q.unwrap_or("").as_bytes()).into_owned().collect())
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    fn digest(&self, key: &str) -> Result<Option<Digest>, OciError> {
        self.get(key)
            .map(|d| d.parse().map_err(|e: crate::oci::digest::DigestError| OciError::DigestInvalid(e.to_string())))
            .transpose()
    }

    /// `n`: a non-negative integer.
    fn page_size(&self) -> Result<Option<usize>, OciError> {
        self.get("n")
            .map(|n| {
                n.parse::<usize>()
                    .map_err(|_| OciError::Unsupported(format!("n must be a non-negative integer, not {n:?}")))
            })
            .transpose()
    }
}

fn header_str<'a>(headers: &'a HeaderMap, name: &HeaderName) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn content_length(headers: &HeaderMap) -> Result<Option<u64>, OciError> {
    match headers.get(header::CONTENT_LENGTH) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| OciError::SizeInvalid("Content-Length is not a number".into())),
    }
}

fn content_range_start(headers: &HeaderMap) -> Result<Option<u64>, OciError> {
    match headers.get(header::CONTENT_RANGE) {
        None => Ok(None),
        Some(v) => {
            let (first, last) = v
                .to_str()
                .ok()
                .and_then(parse_content_range)
                .ok_or_else(|| OciError::BlobUploadInvalid("Content-Range must be <first>-<last>".into()))?;
            let span = (last - first).checked_add(1);
            if let Some(len) = content_length(headers)? {
                if span != Some(len) {
                    return Err(OciError::SizeInvalid(format!(
                        "Content-Range {first}-{last} does not match Content-Length {len}"
                    )));
                }
            }
            Ok(Some(first))
        }
    }
}

/// Most bytes read and thrown away from a request body a handler did not
/// consume, so the client can read the response; past this the connection
/// is closed instead.
const DRAIN_LIMIT: u64 = 64 * 1024 * 1024;

/// A request body that, if dropped before its end (the request was refused
/// early), reads and discards the rest in the background: a client still
/// sending would otherwise see a reset instead of the error response.
struct DrainOnDrop {
    body: Option<Body>,
    idle: Duration,
    expects_continue: bool,
}

impl Drop for DrainOnDrop {
    fn drop(&mut self) {
        let Some(mut body) = self.body.take() else {
            return;
        };
        // Nothing left, more than is worth reading, or a client still waiting
        // for `100 Continue` (reading would invite the upload): close instead.
        if self.expects_continue
            || http_body::Body::is_end_stream(&body)
            || http_body::Body::size_hint(&body).lower() > DRAIN_LIMIT
        {
            return;
        }
        let idle = self.idle;
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let mut drained = 0u64;
                while drained <= DRAIN_LIMIT {
                    match tokio::time::timeout(idle, body.frame()).await {
                        Ok(Some(Ok(frame))) => drained += frame.data_ref().map(|d| d.len() as u64).unwrap_or(0),
                        _ => break,
                    }
                }
            });
        }
    }
}

/// The request body as a stream that fails if the client pauses too long.
fn body_stream(holder: DrainOnDrop) -> BodyStream {
    let idle = holder.idle;
    futures::stream::unfold((holder, false), move |(mut h, done)| async move {
        if done {
            return None;
        }
        let body = h.body.as_mut()?;
        loop {
            return match tokio::time::timeout(idle, body.frame()).await {
                Ok(Some(Ok(frame))) => match frame.into_data() {
                    Ok(data) => Some((Ok(data), (h, false))),
                    // Trailers carry nothing an upload needs.
                    Err(_) => continue,
                },
                Ok(Some(Err(e))) => Some((Err(BodyError::Read(e.to_string())), (h, true))),
                Ok(None) => None,
                Err(_) => Some((Err(BodyError::IdleTimeout(idle)), (h, true))),
            };
        }
    })
    .boxed()
}

fn hv(s: &str) -> HeaderValue {
    // Every value built here comes from validated names, digests and numbers.
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid"))
}

fn upload_headers(headers: &mut HeaderMap, name: &RepoName, status: &UploadStatus) {
    headers.insert(header::LOCATION, hv(&format!("/v2/{name}/blobs/uploads/{}", status.id)));
    // The range received so far, inclusive; "0-0" before any byte, as clients expect.
    headers.insert(header::RANGE, hv(&format!("0-{}", status.offset.saturating_sub(1))));
    headers.insert(UPLOAD_UUID, hv(&status.id));
}

fn upload_response(status: StatusCode, name: &RepoName, upload: &UploadStatus) -> Response {
    let mut resp = status.into_response();
    upload_headers(resp.headers_mut(), name, upload);
    resp
}

fn blob_created(name: &RepoName, digest: &Digest) -> Response {
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, hv(&format!("/v2/{name}/blobs/{digest}")));
    h.insert(CONTENT_DIGEST, hv(&digest.to_string()));
    resp
}

async fn blob_head(app: &App, id: &Identity, name: &RepoName, digest: &Digest) -> HandlerResult {
    let access = app.gate.authorize(id, name)?;
    let size = match app.registry.blob_meta(&access, digest).await {
        Ok(meta) => meta.size,
        // Not fetched yet: the upstream says whether a GET would find it.
        #[cfg(feature = "mirror")]
        Err(OciError::BlobUnknown(e)) => match &app.mirror {
            Some(mirror) => mirror.head_blob(&access, digest).await?.ok_or(OciError::BlobUnknown(e))?,
            None => return Err(OciError::BlobUnknown(e)),
        },
        Err(e) => return Err(e),
    };
    let mut resp = StatusCode::OK.into_response();
    blob_headers(resp.headers_mut(), digest, size);
    Ok(resp)
}

fn blob_headers(h: &mut HeaderMap, digest: &Digest, len: u64) {
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(CONTENT_DIGEST, hv(&digest.to_string()));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::ETAG, hv(&format!("\"{digest}\"")));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("max-age=31536000"));
}

async fn blob_get(app: &App, id: &Identity, name: &RepoName, digest: &Digest, headers: &HeaderMap) -> HandlerResult {
    let access = app.gate.authorize(id, name)?;
    let served = serve_blob(app, &access, digest, headers).await;
    #[cfg(feature = "mirror")]
    if let (Err(OciError::BlobUnknown(_)), Some(mirror)) = (&served, &app.mirror) {
        // Not here yet: streamed from the upstream while it is stored (a
        // Range is ignored then, as HTTP allows: the whole blob is sent).
        match mirror.fetch_blob(&access, digest).await? {
            Some(crate::ext::mirror::MirrorBlob::Streaming(read)) => {
                let mut resp = Response::new(Body::from_stream(read.body));
                blob_headers(resp.headers_mut(), digest, read.size);
                return Ok(resp);
            }
            Some(crate::ext::mirror::MirrorBlob::Stored) => return serve_blob(app, &access, digest, headers).await,
            None => {}
        }
    }
    served
}

/// A blob GET of what this registry holds: a redirect, a range or the whole.
async fn serve_blob(app: &App, access: &Access<Pull>, digest: &Digest, headers: &HeaderMap) -> HandlerResult {
    if let Some(url) = app.registry.blob_redirect(access, digest).await? {
        // The client fetches (and ranges) the bytes from the object store itself.
        let mut resp = StatusCode::TEMPORARY_REDIRECT.into_response();
        resp.headers_mut().insert(header::LOCATION, hv(&url));
        resp.headers_mut().insert(CONTENT_DIGEST, hv(&digest.to_string()));
        // The URL expires: caches must not keep the redirect.
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        return Ok(resp);
    }
    let range_header = header_str(headers, &header::RANGE);
    let range = match range_header {
        None => None,
        Some(_) => {
            // Resolving a range needs the size first.
            let size = app.registry.blob_meta(access, digest).await?.size;
            match parse_range(range_header, size) {
                RangeRequest::Full => None,
                RangeRequest::Bytes(r) => Some(r),
                RangeRequest::Unsatisfiable => return Err(OciError::RangeNotSatisfiable { size }),
            }
        }
    };
    let partial = range.is_some();
    let read = app.registry.blob_get(access, digest, range).await?;
    let len = read.range.end - read.range.start;
    let mut resp = Response::new(Body::from_stream(read.body));
    blob_headers(resp.headers_mut(), digest, len);
    if partial {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let cr = format!("bytes {}-{}/{}", read.range.start, read.range.end.saturating_sub(1), read.size);
        resp.headers_mut().insert(header::CONTENT_RANGE, hv(&cr));
    }
    Ok(resp)
}

async fn upload_start(
    app: &App,
    id: &Identity,
    name: &RepoName,
    query: &Query,
    headers: &HeaderMap,
    body: DrainOnDrop,
) -> HandlerResult {
    let access = app.gate.authorize(id, name)?;
    #[cfg(feature = "mirror")]
    if app.mirror.as_ref().is_some_and(|m| !m.allows_push(name)) {
        return Err(OciError::Denied);
    }
    if let Some(mount) = query.digest("mount")? {
        if let Some(from) = query.get("from") {
            let from: RepoName =
                from.parse().map_err(|e: crate::oci::name::NameError| OciError::NameInvalid(e.to_string()))?;
            // Mounting needs read access to the source; without it, fall back
            // to a fresh upload exactly as for an unknown blob.
            if let Ok(source) = app.gate.authorize(id, &from) {
                if app.registry.mount(&access, &source, &mount).await? {
                    return Ok(blob_created(name, &mount));
                }
            }
        }
    } else if let Some(digest) = query.digest("digest")? {
        let len = content_length(headers)?;
        let done = app.registry.upload_monolithic(&access, &digest, len, body_stream(body)).await?;
        return Ok(blob_created(name, &done));
    }
    let algorithm = match query.get("digest-algorithm") {
        Some("sha512") => Algorithm::Sha512,
        _ => Algorithm::Sha256,
    };
    let status = app.registry.upload_start(&access, algorithm).await?;
    let mut resp = upload_response(StatusCode::ACCEPTED, name, &status);
    let min = app.registry.min_chunk_length();
    if min > 1 {
        resp.headers_mut().insert(OCI_CHUNK_MIN_LENGTH, HeaderValue::from(min));
    }
    Ok(resp)
}

/// Whether an `Accept` header admits `media_type`. No header, or a wildcard,
/// admits everything.
fn accepts(headers: &HeaderMap, media_type: &str) -> bool {
    let mut any = false;
    for value in headers.get_all(header::ACCEPT) {
        let Ok(value) = value.to_str() else { continue };
        for item in value.split(',') {
            let mut params = item.split(';');
            let mt = params.next().unwrap_or("").trim();
            if mt.is_empty() {
                continue;
            }
            // `q=0` means "not acceptable".
            let refused = params.any(|p| {
                p.trim().strip_prefix("q=").and_then(|q| q.trim().parse::<f32>().ok()).is_some_and(|q| q <= 0.0)
            });
            if refused {
                any = true;
                continue;
            }
            any = true;
            if mt == "*/*" || mt == "application/*" || mt.eq_ignore_ascii_case(media_type) {
                return true;
            }
        }
    }
    !any
}

#[cfg(feature = "scan")]
async fn scan_report(app: &App, id: &Identity, name: &RepoName, reference: &Reference, query: &Query) -> HandlerResult {
    let access = app.gate.authorize(id, name)?;
    let Some(scanner) = &app.scanner else {
        return Err(OciError::Unsupported("scanning is disabled on this registry ([scan] enabled = false)".into()));
    };
    let format = query.get("format").unwrap_or("json");
    if !matches!(format, "json" | "cyclonedx" | "sarif") {
        return Err(OciError::Unsupported(format!("format {format:?}: json, cyclonedx or sarif")));
    }
    match scanner.report(&access, reference).await? {
        crate::ext::scan::Outcome::Pending { retry_after } => {
            let body = json!({ "status": "pending", "repository": name.as_str(), "reference": reference.to_string() });
            let mut resp =
                (StatusCode::ACCEPTED, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            Ok(resp)
        }
        crate::ext::scan::Outcome::Ready(report) => {
            let (content_type, body) = match format {
                "cyclonedx" => ("application/vnd.cyclonedx+json", report.cyclonedx().to_string()),
                "sarif" => ("application/sarif+json", report.sarif().to_string()),
                _ => ("application/json", serde_json::to_string(&*report).map_err(OciError::internal)?),
            };
            Ok((StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response())
        }
    }
}

/// The search extension's JSON API (`/v2/_berth/search/...`): what the
/// caller may read, filtered at every page with the catalog's rules.
#[cfg(feature = "search")]
mod search {
    use super::*;
    use crate::ext::search::{Search, TagOrder};

    fn service(app: &App) -> Result<&Arc<Search>, OciError> {
        app.search.as_ref().ok_or_else(|| {
            OciError::Unsupported("search is disabled on this registry ([search] enabled = false)".into())
        })
    }

    /// A JSON answer private to the caller, with a `Link` to the next page.
    fn page(body: serde_json::Value, next: Option<(&str, Vec<(&str, String)>)>) -> Response {
        let mut resp = (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "private, no-store")],
            body.to_string(),
        )
            .into_response();
        if let Some((path, params)) = next {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for (k, v) in &params {
                q.append_pair(k, v);
            }
            resp.headers_mut().insert(header::LINK, hv(&format!("<{path}?{}>; rel=\"next\"", q.finish())));
        }
        resp
    }

    pub(super) async fn repositories(app: &App, id: &Identity, query: &Query) -> HandlerResult {
        app.gate.require_identity(id)?;
        let search = service(app)?;
        let q = query.get("q").unwrap_or("");
        let n = query.page_size()?;
        let (gate, who) = (app.gate.clone(), id.clone());
        let found = search.repositories(q, move |repo| gate.may_list(&who, repo), query.get("last"), n).await?;
        let items: Vec<serde_json::Value> = found
            .items
            .iter()
            .map(|h| {
                json!({
                    "name": h.name,
                    "tags": h.tags,
                    "manifests": h.manifests,
                    "last_push": crate::ext::search::index::rfc3339(h.last_push),
                })
            })
            .collect();
        let body = json!({ "query": q, "total": found.total, "repositories": items });
        let next = found.next.map(|last| {
            let mut params = vec![("q", q.to_owned()), ("last", last)];
            if let Some(n) = n {
                params.push(("n", n.to_string()));
            }
            ("/v2/_berth/search/repositories", params)
        });
        Ok(page(body, next))
    }

    pub(super) async fn tags(app: &App, id: &Identity, name: &RepoName, query: &Query) -> HandlerResult {
        let access = app.gate.authorize(id, name)?;
        let search = service(app)?;
        let sort = query.get("sort").unwrap_or("name");
        let order = match sort {
            "name" => TagOrder::Name,
            "pushed" => TagOrder::Pushed,
            other => return Err(OciError::Unsupported(format!("sort {other:?}: name or pushed"))),
        };
        let q = query.get("q").unwrap_or("");
        let n = query.page_size()?;
        let found = search.tags(&access, q, order, query.get("last"), n).await?;
        let path = format!("/v2/_berth/search/tags/{name}");
        let next = found.next.clone().map(|last| {
            let mut params = vec![("sort", sort.to_owned()), ("q", q.to_owned()), ("last", last)];
            if let Some(n) = n {
                params.push(("n", n.to_string()));
            }
            (path.as_str(), params)
        });
        let body = serde_json::to_value(&found).map_err(OciError::internal)?;
        Ok(page(body, next))
    }

    pub(super) async fn image(app: &App, id: &Identity, name: &RepoName, reference: &Reference) -> HandlerResult {
        let access = app.gate.authorize(id, name)?;
        let details = service(app)?.image(&access, reference).await?;
        Ok(page(serde_json::to_value(&details).map_err(OciError::internal)?, None))
    }
}

#[cfg(not(feature = "search"))]
mod search {
    use super::*;

    fn absent() -> HandlerResult {
        Err(OciError::NameUnknown("no such API endpoint (this build has no search extension)".into()))
    }

    pub(super) async fn repositories(_: &App, _: &Identity, _: &Query) -> HandlerResult {
        absent()
    }

    pub(super) async fn tags(_: &App, _: &Identity, _: &RepoName, _: &Query) -> HandlerResult {
        absent()
    }

    pub(super) async fn image(_: &App, _: &Identity, _: &RepoName, _: &Reference) -> HandlerResult {
        absent()
    }
}

#[cfg(not(feature = "scan"))]
async fn scan_report(_: &App, _: &Identity, _: &RepoName, _: &Reference, _: &Query) -> HandlerResult {
    Err(OciError::Unsupported("this build has no scan extension".into()))
}

async fn manifest_get(
    app: &App,
    id: &Identity,
    name: &RepoName,
    reference: &Reference,
    headers: &HeaderMap,
    with_body: bool,
) -> HandlerResult {
    let access = app.gate.authorize(id, name)?;
    #[cfg(feature = "mirror")]
    let stale = match &app.mirror {
        Some(mirror) => mirror.prepare_manifest(&access, reference).await? == crate::ext::mirror::Prepared::Stale,
        None => false,
    };
    #[cfg(not(feature = "mirror"))]
    let stale = false;
    let m = match app.registry.manifest_get(&access, reference).await {
        #[cfg(feature = "mirror")]
        Err(OciError::ManifestUnknown(e)) => match &app.mirror {
            // A mirrored tag checked within its TTL and collected since
            // (retention): checked again, fetched again.
            Some(mirror) if mirror.forget_tag_check(&access, reference).await => {
                if mirror.prepare_manifest(&access, reference).await? == crate::ext::mirror::Prepared::Stale {
                    return Err(OciError::ManifestUnknown(e));
                }
                app.registry.manifest_get(&access, reference).await?
            }
            _ => return Err(OciError::ManifestUnknown(e)),
        },
        other => other?,
    };
    // A tag resolves to whatever was pushed; a client that cannot read that
    // type is told it is not available. A digest names exact bytes: serve them.
    if matches!(reference, Reference::Tag(_)) && !accepts(headers, &m.media_type) {
        return Err(OciError::ManifestUnknown(format!(
            "{name}:{reference} is a {} and the request's Accept header does not include it",
            m.media_type
        )));
    }
    let len = m.bytes.len() as u64;
    let mut resp = if with_body { Response::new(Body::from(m.bytes)) } else { StatusCode::OK.into_response() };
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, hv(&m.media_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    h.insert(CONTENT_DIGEST, hv(&m.digest.to_string()));
    h.insert(header::ETAG, hv(&format!("\"{}\"", m.digest)));
    if stale {
        // RFC 9111's code for a response served stale.
        h.insert(header::WARNING, HeaderValue::from_static("110 - \"Response is Stale\""));
    }
    if with_body {
        #[cfg(feature = "scan")]
        if let Some(scanner) = &app.scanner {
            scanner.check_pull(&access, &m.digest).await?;
        }
        // For retention's keep_pulled_within (coalesced; never waited on).
        app.registry.note_pull(&access, &m.digest);
    }
    Ok(resp)
}

async fn manifest_put(
    app: &App,
    id: &Identity,
    name: &RepoName,
    reference: &Reference,
    headers: &HeaderMap,
    body: DrainOnDrop,
) -> HandlerResult {
    let access = app.gate.authorize(id, name)?;
    #[cfg(feature = "mirror")]
    if app.mirror.as_ref().is_some_and(|m| !m.allows_push(name)) {
        return Err(OciError::Denied);
    }
    let too_large = || OciError::ManifestTooLarge { limit: MAX_MANIFEST_SIZE };
    if content_length(headers)?.is_some_and(|l| l > MAX_MANIFEST_SIZE as u64) {
        return Err(too_large());
    }
    let mut stream = body_stream(body);
    let mut buf = BytesMut::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| OciError::ManifestInvalid(e.to_string()))?;
        if buf.len() + chunk.len() > MAX_MANIFEST_SIZE {
            return Err(too_large());
        }
        buf.extend_from_slice(&chunk);
    }
    let body: Bytes = buf.freeze();
    let content_type = header_str(headers, &header::CONTENT_TYPE);
    // Moving an existing tag needs `update` as well; without it the push
    // may still create tags and push by digest.
    let may_move = app.gate.optional::<crate::registry::Update>(id, name);
    let pushed = app.registry.manifest_put(&access, may_move.as_ref(), reference, content_type, body).await?;
    #[cfg(feature = "scan")]
    if let Some(scanner) = &app.scanner {
        scanner.on_push(name, &pushed.digest);
    }
    let mut resp = StatusCode::CREATED.into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, hv(&format!("/v2/{name}/manifests/{}", pushed.digest)));
    h.insert(CONTENT_DIGEST, hv(&pushed.digest.to_string()));
    if let Some(subject) = &pushed.subject {
        h.insert(OCI_SUBJECT, hv(&subject.to_string()));
    }
    Ok(resp)
}

async fn catalog(app: &App, id: &Identity, query: &Query) -> HandlerResult {
    app.gate.require_identity(id)?;
    let n = query.page_size()?;
    let page = app.registry.catalog(n, query.get("last"), &|repo| app.gate.may_list(id, repo)).await?;
    let body = json!({ "repositories": page.items });
    Ok(listing("/v2/_catalog".to_owned(), n, &page, body))
}

/// A JSON listing with a `Link` to the next page when there is one.
fn listing(path: String, n: Option<usize>, page: &Page, body: serde_json::Value) -> Response {
    let mut resp = (StatusCode::OK, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response();
    if let Some(last) = &page.next {
        let mut q = form_urlencoded::Serializer::new(String::new());
        if let Some(n) = n {
            q.append_pair("n", &n.to_string());
        } else if !page.items.is_empty() {
            q.append_pair("n", &page.items.len().to_string());
        }
        q.append_pair("last", last);
        resp.headers_mut().insert(header::LINK, hv(&format!("<{path}?{}>; rel=\"next\"", q.finish())));
    }
    resp
}
