//! The `ui` extension: server-rendered pages at `/ui/` over the search
//! index (repositories, tags, image details, vulnerabilities with `scan`),
//! sign-in through the registry's own authentication, and copyable pull
//! commands.
//!
//! Every page is rendered by `maud`, which escapes every interpolated value,
//! so a repository name, label or annotation holding markup shows as text.
//! Every response carries a Content-Security-Policy with no inline script
//! or style (`script-src 'self'`), `frame-ancestors 'none'` and
//! `X-Frame-Options: DENY`, `nosniff`, `Referrer-Policy: same-origin` and,
//! for pages, `Cache-Control: no-store`. The stylesheet and the one script
//! (the copy buttons) are compiled into the binary; nothing is fetched from
//! elsewhere. What a visitor sees is decided exactly as for the API: the
//! signed-in identity (or the anonymous caller) against `Gate::may_list`
//! and `Gate::authorize::<Pull>`.

mod pages;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine as _;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt as _;

use crate::api::App;
use crate::auth::Identity;
use crate::oci::{OciError, Reference, RepoName};
use session::{Limits, Session};

/// The policy every UI response carries: only this origin's own script and
/// stylesheet, no inline code, no framing, forms posting only here.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                       connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

/// Largest sign-in form read.
const MAX_FORM: usize = 16 * 1024;

const CSS: &str = include_str!("assets/app.css");
const JS: &str = include_str!("assets/app.js");

/// The UI's settings (from `[ui]`).
#[derive(Debug, Clone)]
pub struct UiSettings {
    pub limits: Limits,
    pub pull_host: Option<String>,
}

impl UiSettings {
    pub fn from_config(c: &crate::config::UiConfig) -> UiSettings {
        UiSettings { limits: Limits { idle: c.session_idle.0, max: c.session_max.0 }, pull_host: c.pull_host.clone() }
    }
}

/// The routes under `/ui`.
pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/ui", get(|| async { redirect("/ui/") }))
        .route("/ui/", get(home))
        .route("/ui/repositories/{*name}", get(repository))
        .route("/ui/images/{*path}", get(image))
        .route("/ui/login", get(login_form).post(login))
        .route("/ui/logout", post(logout))
        .route("/ui/assets/{file}", get(asset))
        // Anything else under /ui/ is a page that does not exist (the
        // main router's fallback answers API paths only).
        .route("/ui/{*rest}", get(not_found).post(not_found))
        .layer(middleware::from_fn(security_headers))
}

/// The operation name of a UI path, for metrics and logs.
pub fn operation(path: &str) -> Option<&'static str> {
    let rest = path.strip_prefix("/ui")?;
    Some(match rest {
        "" | "/" => "ui_home",
        "/login" => "ui_login",
        "/logout" => "ui_logout",
        r if r.starts_with("/repositories/") => "ui_repository",
        r if r.starts_with("/images/") => "ui_image",
        r if r.starts_with("/assets/") => "ui_asset",
        r if r.starts_with('/') => "ui_other",
        _ => return None,
    })
}

async fn security_headers(req: Request, next: Next) -> Response {
    let is_asset = req.uri().path().starts_with("/ui/assets/");
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(CSP));
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    h.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-opener-policy", HeaderValue::from_static("same-origin"));
    h.insert("cross-origin-resource-policy", HeaderValue::from_static("same-origin"));
    if !is_asset || !resp.status().is_success() {
        resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    resp
}

fn redirect(to: &str) -> Response {
    let mut resp = StatusCode::SEE_OTHER.into_response();
    if let Ok(v) = HeaderValue::from_str(to) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

fn html(status: StatusCode, page: maud::Markup) -> Response {
    (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], page.into_string()).into_response()
}

fn settings(app: &App) -> UiSettings {
    app.ui.clone().unwrap_or_else(|| UiSettings::from_config(&crate::config::UiConfig::default()))
}

/// Who is looking: the signed-in identity, or the anonymous caller.
pub(crate) struct Visitor {
    pub identity: Identity,
    pub session: Option<Session>,
    /// Whether this registry has any sign-in at all.
    pub can_sign_in: bool,
    /// The host pull commands name.
    pub host: String,
}

impl Visitor {
    pub fn name(&self) -> Option<String> {
        self.identity.subject().map(|s| s.name().to_owned())
    }
}

/// The host pull commands show: `[ui] pull_host`, else the request's own
/// Host when it is a plain host[:port].
fn pull_host(app: &App, headers: &HeaderMap) -> String {
    if let Some(h) = settings(app).pull_host {
        return h;
    }
    headers
        .get(header::HOST)
        .and_then(|v| v.to_str().ok())
        .filter(|h| {
            !h.is_empty()
                && h.len() <= 253
                && h.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        })
        .unwrap_or("registry.example")
        .to_owned()
}

/// Resolve the visitor and count the request against its budget; an error
/// page when the request cannot go on.
async fn visitor(app: &App, headers: &HeaderMap, ext: &http::Extensions) -> Result<Visitor, Response> {
    let client = crate::api::client_of(ext);
    let found = session::lookup(app.registry.state().as_ref(), &app.gate, headers, settings(app).limits).await;
    let session = match found {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read a UI session");
            return Err(pages::error_page(
                None,
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in sessions are unavailable right now. Try again shortly.",
            ));
        }
    };
    let identity = session.as_ref().map_or_else(Identity::anonymous, |s| s.identity.clone());
    if let Err(e) = app.admit(crate::ratelimit::Class::Read, &identity, client.address, None).await {
        let mut resp = pages::error_page(None, crate::api::errors::status_of(&e), &e.to_string());
        if let OciError::TooManyRequests { retry_after } | OciError::Unavailable { retry_after, .. } = &e {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
        }
        return Err(resp);
    }
    Ok(Visitor { identity, session, can_sign_in: app.gate.required(), host: pull_host(app, headers) })
}

/// The page for an error the registry answered with: a sign-in prompt
/// for the anonymous caller that must authenticate, else the error.
fn refused(v: &Visitor, e: &OciError, here: &str) -> Response {
    match e {
        OciError::Unauthorized { .. } if v.session.is_none() && v.can_sign_in => {
            redirect(&format!("/ui/login?next={}", encode(here)))
        }
        OciError::Unauthorized { .. } | OciError::Denied | OciError::InsufficientScope { .. } => pages::error_page(
            Some(v),
            StatusCode::FORBIDDEN,
            "You may not read this. Sign in as someone who may, or ask for access.",
        ),
        OciError::Internal(_) => {
            tracing::error!(error = %e, "UI page failed");
            pages::error_page(Some(v), StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong on our side.")
        }
        other => pages::error_page(Some(v), crate::api::errors::status_of(other), &other.to_string()),
    }
}

pub(crate) fn encode(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

fn query(req: &Request) -> Vec<(String, String)> {
    form_urlencoded::parse(req.uri().query().unwrap_or("").as_bytes()).into_owned().collect()
}

fn param<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

fn search(app: &App) -> Result<&Arc<crate::ext::search::Search>, OciError> {
    app.search.as_ref().ok_or_else(|| OciError::Unsupported("search is disabled on this registry".into()))
}

async fn home(State(app): State<Arc<App>>, req: Request) -> Response {
    let v = match visitor(&app, req.headers(), req.extensions()).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let q = query(&req);
    let text = param(&q, "q").unwrap_or("").to_owned();
    let here = format!("/ui/?q={}", encode(&text));
    if let Err(e) = app.gate.require_identity(&v.identity) {
        return refused(&v, &e, &here);
    }
    let (gate, who) = (app.gate.clone(), v.identity.clone());
    let found = match search(&app) {
        Ok(s) => s.repositories(&text, move |repo| gate.may_list(&who, repo), param(&q, "last"), Some(50)).await,
        Err(e) => Err(e),
    };
    match found {
        Ok(page) => html(StatusCode::OK, pages::home(&v, &text, &page)),
        Err(e) => refused(&v, &e, &here),
    }
}

async fn repository(State(app): State<Arc<App>>, Path(name): Path<String>, req: Request) -> Response {
    let v = match visitor(&app, req.headers(), req.extensions()).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let Ok(repo) = name.parse::<RepoName>() else {
        return pages::error_page(Some(&v), StatusCode::NOT_FOUND, "There is no repository by that name.");
    };
    let q = query(&req);
    let here = format!("/ui/repositories/{repo}");
    let access = match app.gate.authorize(&v.identity, &repo) {
        Ok(a) => a,
        Err(e) => return refused(&v, &e, &here),
    };
    let (order, sort) = match param(&q, "sort") {
        Some("pushed") => (crate::ext::search::TagOrder::Pushed, "pushed"),
        _ => (crate::ext::search::TagOrder::Name, "name"),
    };
    let filter = param(&q, "q").unwrap_or("");
    let result = match search(&app) {
        Ok(s) => s.tags(&access, filter, order, param(&q, "last"), Some(100)).await,
        Err(e) => Err(e),
    };
    match result {
        Ok(tags) => html(StatusCode::OK, pages::repository(&v, &repo, &tags, filter, sort)),
        Err(e) => refused(&v, &e, &here),
    }
}

async fn image(State(app): State<Arc<App>>, Path(path): Path<String>, req: Request) -> Response {
    let v = match visitor(&app, req.headers(), req.extensions()).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let parsed =
        path.rsplit_once('/').and_then(|(n, r)| Some((n.parse::<RepoName>().ok()?, r.parse::<Reference>().ok()?)));
    let Some((repo, reference)) = parsed else {
        return pages::error_page(Some(&v), StatusCode::NOT_FOUND, "There is no image by that name.");
    };
    let here = format!("/ui/images/{repo}/{reference}");
    let access = match app.gate.authorize(&v.identity, &repo) {
        Ok(a) => a,
        Err(e) => return refused(&v, &e, &here),
    };
    let details = match search(&app) {
        Ok(s) => s.image(&access, &reference).await,
        Err(e) => Err(e),
    };
    let details = match details {
        Ok(d) => d,
        Err(e) => return refused(&v, &e, &here),
    };
    #[cfg(feature = "scan")]
    let vulnerabilities = vulnerabilities(&app, &access, &reference).await;
    #[cfg(not(feature = "scan"))]
    let vulnerabilities = pages::Vulnerabilities::NotBuilt;
    html(StatusCode::OK, pages::image(&v, &repo, &reference, &details, &vulnerabilities))
}

#[cfg(feature = "scan")]
async fn vulnerabilities(
    app: &App,
    access: &crate::registry::Access<crate::registry::Pull>,
    reference: &Reference,
) -> pages::Vulnerabilities {
    let Some(scanner) = &app.scanner else { return pages::Vulnerabilities::Disabled };
    match scanner.report(access, reference).await {
        Ok(crate::ext::scan::Outcome::Ready(report)) => pages::Vulnerabilities::Ready(report),
        Ok(crate::ext::scan::Outcome::Pending { .. }) => pages::Vulnerabilities::Pending,
        Err(e) => pages::Vulnerabilities::Failed(e.to_string()),
    }
}

/// A safe place to go after signing in: a UI path of this site.
fn next_target(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with("/ui/") && !n.contains("//") && !n.contains('\\') && n.len() <= 2048 => n.to_owned(),
        _ => "/ui/".to_owned(),
    }
}

async fn login_form(State(app): State<Arc<App>>, req: Request) -> Response {
    let v = match visitor(&app, req.headers(), req.extensions()).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let q = query(&req);
    let next = next_target(param(&q, "next"));
    if !v.can_sign_in {
        return redirect(&next);
    }
    login_page(&v, req.headers(), &next, StatusCode::OK, None)
}

/// The sign-in form, with the CSRF cookie it is checked against (a fresh
/// one when the request has none).
fn login_page(v: &Visitor, headers: &HeaderMap, next: &str, status: StatusCode, message: Option<&str>) -> Response {
    let existing = session::cookie(headers, session::CSRF_COOKIE).filter(|c| c.len() == 43).map(str::to_owned);
    let (token, fresh) = match existing {
        Some(t) => (t, false),
        None => match session::random_token() {
            Some(t) => (t, true),
            None => return pages::error_page(Some(v), StatusCode::INTERNAL_SERVER_ERROR, "No random bytes."),
        },
    };
    let mut resp = html(status, pages::login(v, next, &token, message));
    if fresh {
        if let Ok(c) = HeaderValue::from_str(&session::set_cookie(session::CSRF_COOKIE, &token, None)) {
            resp.headers_mut().append(header::SET_COOKIE, c);
        }
    }
    resp
}

async fn read_form(body: Body) -> Option<Vec<(String, String)>> {
    let collected = http_body_util::Limited::new(body, MAX_FORM).collect().await.ok()?;
    Some(form_urlencoded::parse(&collected.to_bytes()).into_owned().collect())
}

fn csrf_refused(v: Option<&Visitor>) -> Response {
    pages::error_page(
        v,
        StatusCode::FORBIDDEN,
        "This form expired or was sent from another site (CSRF check failed). Reload the page and try again.",
    )
}

/// When the bearer token `jwt` expires (its `exp`), read after the gate
/// verified it.
fn token_expiry(jwt: &str) -> Option<u64> {
    let claims = jwt.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).ok()?;
    serde_json::from_slice::<serde_json::Value>(&bytes).ok()?["exp"].as_u64()
}

async fn login(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let v = match visitor(&app, &parts.headers, &parts.extensions).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let Some(form) = read_form(body).await else {
        return pages::error_page(Some(&v), StatusCode::PAYLOAD_TOO_LARGE, "The form is too large.");
    };
    let field = |k: &str| param(&form, k).unwrap_or("");
    let cookie = session::cookie(&parts.headers, session::CSRF_COOKIE).unwrap_or("");
    let client = crate::api::client_of(&parts.extensions);
    if !session::same_origin(&parts.headers) || !session::same_token(cookie, field("csrf")) {
        crate::api::audit_login(None, client.address, StatusCode::FORBIDDEN);
        return csrf_refused(Some(&v));
    }
    let next = next_target(Some(field("next")));
    if !v.can_sign_in {
        return redirect(&next);
    }
    let token = field("token").trim();
    let authorization = if !token.is_empty() {
        format!("Bearer {token}")
    } else {
        let (user, password) = (field("username").trim(), field("password"));
        if user.is_empty() || password.is_empty() {
            return login_page(
                &v,
                &parts.headers,
                &next,
                StatusCode::BAD_REQUEST,
                Some("Enter a user name and password, or an access token."),
            );
        }
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
    };
    let mut headers = HeaderMap::new();
    if let Some(host) = parts.headers.get(header::HOST) {
        headers.insert(header::HOST, host.clone());
    }
    let Ok(value) = HeaderValue::from_str(&authorization) else {
        return login_page(
            &v,
            &parts.headers,
            &next,
            StatusCode::BAD_REQUEST,
            Some("That token or password holds characters no credential has."),
        );
    };
    headers.insert(header::AUTHORIZATION, value);
    let identity = match app.gate.authenticate(&headers, &client).await {
        Ok(id) if !id.is_anonymous() => id,
        Ok(_) | Err(OciError::Unauthorized { .. }) => {
            crate::api::audit_login(None, client.address, StatusCode::UNAUTHORIZED);
            return login_page(
                &v,
                &parts.headers,
                &next,
                StatusCode::UNAUTHORIZED,
                Some("Wrong user name, password or token."),
            );
        }
        Err(e @ OciError::TooManyRequests { .. }) => {
            crate::api::audit_login(None, client.address, StatusCode::TOO_MANY_REQUESTS);
            let mut resp = login_page(
                &v,
                &parts.headers,
                &next,
                StatusCode::TOO_MANY_REQUESTS,
                Some("Too many attempts. Wait a moment and try again."),
            );
            if let OciError::TooManyRequests { retry_after } = e {
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(retry_after.as_secs().max(1)));
            }
            return resp;
        }
        Err(e) => return refused(&v, &e, "/ui/login"),
    };
    let expires = if token.is_empty() { None } else { token_expiry(token) };
    let limits = settings(&app).limits;
    // A new sign-in replaces the session this browser had: the old id ends.
    if let Some(old) = &v.session {
        if let Err(e) = session::end(app.registry.state().as_ref(), &old.id, limits).await {
            tracing::debug!(error = %e, "cannot end the session a new sign-in replaces; it expires by itself");
        }
    }
    let credential = app.gate.session_credential(&identity, (!token.is_empty()).then_some(token));
    let created = session::create(app.registry.state().as_ref(), &identity, credential, limits, expires).await;
    let s = match created {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot start a UI session");
            return pages::error_page(
                Some(&v),
                StatusCode::SERVICE_UNAVAILABLE,
                "Sign-in sessions are unavailable right now. Try again shortly.",
            );
        }
    };
    crate::api::audit_login(Some(&identity), client.address, StatusCode::OK);
    let mut resp = redirect(&next);
    let max_age = Some(limits.max.min(Duration::from_secs(expires.map_or(u64::MAX, |e| e.saturating_sub(now())))));
    if let Ok(c) = HeaderValue::from_str(&session::set_cookie(session::SESSION_COOKIE, &s.id, max_age)) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

async fn logout(State(app): State<Arc<App>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let v = match visitor(&app, &parts.headers, &parts.extensions).await {
        Ok(v) => v,
        Err(resp) => return resp,
    };
    let form = read_form(body).await.unwrap_or_default();
    let Some(s) = &v.session else { return redirect("/ui/") };
    if !session::same_origin(&parts.headers) || !session::same_token(&s.csrf, param(&form, "csrf").unwrap_or("")) {
        return csrf_refused(Some(&v));
    }
    if let Err(e) = session::end(app.registry.state().as_ref(), &s.id, settings(&app).limits).await {
        tracing::warn!(error = %e, "cannot end a UI session");
        return pages::error_page(
            Some(&v),
            StatusCode::SERVICE_UNAVAILABLE,
            "Cannot sign out right now. Try again shortly.",
        );
    }
    let mut resp = redirect("/ui/");
    if let Ok(c) = HeaderValue::from_str(&session::clear_cookie(session::SESSION_COOKIE)) {
        resp.headers_mut().append(header::SET_COOKIE, c);
    }
    resp
}

async fn asset(Path(file): Path<String>) -> Response {
    let (body, content_type) = match file.as_str() {
        "app.css" => (CSS, "text/css; charset=utf-8"),
        "app.js" => (JS, "text/javascript; charset=utf-8"),
        _ => return not_found().await,
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

async fn not_found() -> Response {
    pages::error_page(None, StatusCode::NOT_FOUND, "There is no such page.")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_targets_stay_on_this_site() {
        assert_eq!(next_target(Some("/ui/repositories/a")), "/ui/repositories/a");
        for bad in ["https://evil.example/", "//evil.example/ui/", "/ui//evil", "/admin/gc", "/ui/\\evil", ""] {
            assert_eq!(next_target(Some(bad)), "/ui/", "{bad}");
        }
        assert_eq!(next_target(None), "/ui/");
    }

    #[test]
    fn operations_name_ui_paths_only() {
        assert_eq!(operation("/ui/"), Some("ui_home"));
        assert_eq!(operation("/ui"), Some("ui_home"));
        assert_eq!(operation("/ui/images/a/b"), Some("ui_image"));
        assert_eq!(operation("/ui/x"), Some("ui_other"));
        assert_eq!(operation("/uix"), None);
        assert_eq!(operation("/v2/"), None);
    }

    #[test]
    fn token_expiry_reads_exp() {
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"exp":1800000000}"#);
        assert_eq!(token_expiry(&format!("h.{claims}.s")), Some(1_800_000_000));
        assert_eq!(token_expiry("not a token"), None);
    }
}
