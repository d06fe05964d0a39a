//! Who is asking, and what they may do.
//!
//! Authentication turns a request into an [`Identity`]: `Authorization:
//! Bearer` (a JWT from the registry's own token service or a trusted
//! external issuer), then `Authorization: Basic` checked against an htpasswd
//! file; with nothing configured everyone is anonymous. Authorization turns
//! identity + repository + action into an [`Access`] value; this is the only
//! place that mints them. Until access policies exist, a caller
//! authenticated by password may do everything, one holding a token what
//! the token grants, and (once authentication is configured) an anonymous
//! one nothing.
//!
//! The `WWW-Authenticate` challenge of every 401 is built here, in
//! [`Gate::challenge`]; the api layer only copies it into the header.

pub mod htpasswd;
pub mod ldap;
pub mod mtls;
pub mod policy;
pub mod throttle;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::Mac as _;
use http::request::Parts;

use crate::oci::{OciError, RepoName};
use crate::registry::access::{Access, Action};

pub use htpasswd::Htpasswd;

/// How a request was authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMethod {
    Anonymous,
    /// `Authorization: Basic`, checked against the htpasswd file.
    Htpasswd,
    /// `Authorization: Basic`, checked against the LDAP directory.
    Ldap,
    /// `Authorization: Bearer`, a verified JWT.
    Bearer,
    /// A verified TLS client certificate.
    Mtls,
}

/// The caller, as established by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Stable subject name; `None` for anonymous callers.
    pub subject: Option<String>,
    pub groups: Vec<String>,
    pub method: AuthMethod,
    /// For token holders: what the token grants (nothing beyond it).
    pub token_access: Option<Vec<token::ResourceActions>>,
    /// `scheme://host` the request was sent to, for token realms derived
    /// from the request when none is configured.
    pub origin: Option<String>,
}

impl Identity {
    pub fn anonymous() -> Identity {
        Identity { subject: None, groups: Vec::new(), method: AuthMethod::Anonymous, token_access: None, origin: None }
    }

    fn authenticated(subject: String, method: AuthMethod) -> Identity {
        Identity { subject: Some(subject), method, ..Identity::anonymous() }
    }

    pub fn is_anonymous(&self) -> bool {
        self.subject.is_none()
    }
}

/// Who a verified password belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verified {
    subject: String,
    groups: Vec<String>,
    method: AuthMethod,
}

/// How long a verified password is remembered, so that a client sending
/// Basic credentials on every request does not pay for a slow hash each time.
const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(60);
const CREDENTIAL_CACHE_MAX: usize = 10_000;

/// Verified credentials, keyed by an HMAC of user and password under a key
/// that lives only in this process: the cache never holds a password or an
/// offline-checkable hash of one.
#[derive(Debug)]
struct CredentialCache {
    key: [u8; 32],
    entries: Mutex<HashMap<[u8; 32], (Verified, Instant)>>,
}

impl CredentialCache {
    fn new() -> CredentialCache {
        let mut key = [0u8; 32];
        // uuid v4 draws from the OS random source.
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        CredentialCache { key, entries: Mutex::new(HashMap::new()) }
    }

    fn tag(&self, user: &str, password: &str) -> [u8; 32] {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.key).unwrap_or_else(|_| unreachable_key());
        mac.update(user.as_bytes());
        mac.update(&[0]);
        mac.update(password.as_bytes());
        mac.finalize().into_bytes().into()
    }

    fn get(&self, tag: &[u8; 32]) -> Option<Verified> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(tag).filter(|(_, at)| at.elapsed() < CREDENTIAL_CACHE_TTL).map(|(v, _)| v.clone())
    }

    fn put(&self, tag: [u8; 32], user: Verified) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if entries.len() >= CREDENTIAL_CACHE_MAX {
            entries.retain(|_, (_, at)| at.elapsed() < CREDENTIAL_CACHE_TTL);
            if entries.len() >= CREDENTIAL_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(tag, (user, Instant::now()));
    }

    fn clear(&self) {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// HMAC-SHA256 takes keys of any length; this cannot happen.
fn unreachable_key() -> hmac::Hmac<sha2::Sha256> {
    #[allow(clippy::expect_used)]
    hmac::Hmac::<sha2::Sha256>::new_from_slice(b"k").expect("HMAC accepts any key length")
}

/// The registry's own token service.
#[derive(Debug, Clone)]
pub struct TokenService {
    pub key: token::SigningKey,
    /// `iss` of issued tokens.
    pub issuer: String,
    /// `aud` of issued tokens and the `service` of challenges.
    pub service: String,
    /// Lifetime of access tokens.
    pub ttl: Duration,
    /// Lifetime of refresh tokens (OAuth2 `access_type=offline`).
    pub refresh_ttl: Duration,
    /// Path of the token endpoint, e.g. `/v2/token`.
    pub path: String,
    /// Absolute realm URL for challenges; derived from the request when unset.
    pub realm: Option<String>,
}

#[derive(Debug)]
struct Inner {
    htpasswd: Option<Htpasswd>,
    realm: String,
    cache: CredentialCache,
    token: Option<TokenService>,
    /// Issuers whose tokens are accepted (this registry's first, if it issues).
    issuers: Vec<token::Issuer>,
    /// How client certificates map to identities, when mTLS authenticates.
    mtls: Option<mtls::MtlsRules>,
    /// Revoked tokens, kept current by the registry's revocation sync.
    revocations: Arc<crate::registry::revocations::RevocationList>,
    /// Subjects allowed to use the admin API.
    admins: Vec<String>,
    /// Fleet-wide failed-login counters.
    throttle: Option<throttle::Throttle>,
    /// The LDAP directory, asked after the htpasswd file.
    ldap: Option<Arc<ldap::LdapAuth>>,
    /// Tokens whose signature and claims were verified, by SHA-256 of the
    /// token: a client presenting the same token again costs a hash, not a
    /// signature check. Expiry and revocation are checked on every use.
    tokens: Arc<Mutex<VerifiedTokens>>,
    /// Access-control policies; replaced whole when the configuration is
    /// reloaded. `None`: authenticated callers may do everything.
    policy: Arc<std::sync::RwLock<Option<Arc<policy::AccessPolicy>>>>,
}

impl Inner {
    /// A copy for builder methods called on a shared gate (the credential
    /// cache starts empty).
    fn duplicate(&self) -> Inner {
        Inner {
            htpasswd: self.htpasswd.clone(),
            realm: self.realm.clone(),
            cache: CredentialCache::new(),
            token: self.token.clone(),
            issuers: self.issuers.clone(),
            mtls: self.mtls.clone(),
            revocations: self.revocations.clone(),
            admins: self.admins.clone(),
            throttle: self.throttle.clone(),
            ldap: self.ldap.clone(),
            tokens: Arc::default(),
            policy: self.policy.clone(),
        }
    }
}

/// Verified tokens by SHA-256, with when they were verified.
type VerifiedTokens = HashMap<[u8; 32], (Arc<token::Claims>, Instant)>;

/// How long a verified token is remembered (its `exp` is still checked).
const VERIFIED_TOKEN_TTL: Duration = Duration::from_secs(300);
const VERIFIED_TOKEN_MAX: usize = 20_000;

/// Clock skew allowed when checking `exp` and `nbf`.
const TOKEN_LEEWAY: Duration = Duration::from_secs(30);

/// Authentication and authorization for every request.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<Inner>,
}

impl Default for Gate {
    fn default() -> Self {
        Gate::anonymous()
    }
}

impl Gate {
    /// A gate that lets anonymous callers do everything: the embedded default.
    pub fn anonymous() -> Gate {
        Gate::new(None, String::new(), None, Vec::new())
    }

    /// Require Basic credentials found in `htpasswd`.
    pub fn with_htpasswd(htpasswd: Htpasswd, realm: impl Into<String>) -> Gate {
        Gate::new(Some(htpasswd), realm.into(), None, Vec::new())
    }

    /// The general form: any of htpasswd, the token service and external
    /// token issuers.
    pub fn new(
        htpasswd: Option<Htpasswd>,
        realm: String,
        token: Option<TokenService>,
        external: Vec<token::Issuer>,
    ) -> Gate {
        let mut issuers = Vec::new();
        if let Some(t) = &token {
            let mut own = token::Issuer::new(t.issuer.clone(), vec![t.service.clone()], vec![t.key.algorithm()]);
            own.add_signing_key(&t.key);
            issuers.push(own);
        }
        issuers.extend(external);
        Gate {
            inner: Arc::new(Inner {
                htpasswd,
                realm,
                cache: CredentialCache::new(),
                token,
                issuers,
                mtls: None,
                revocations: Arc::default(),
                admins: Vec::new(),
                throttle: None,
                ldap: None,
                tokens: Arc::default(),
                policy: Arc::default(),
            }),
        }
    }

    /// Install (or replace) the access policy; requests in flight finish
    /// under the policy they started with.
    pub fn set_policy(&self, policy: Option<policy::AccessPolicy>) {
        *self.inner.policy.write().unwrap_or_else(|p| p.into_inner()) = policy.map(Arc::new);
    }

    fn policy(&self) -> Option<Arc<policy::AccessPolicy>> {
        self.inner.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Also check passwords against an LDAP directory (after htpasswd).
    pub fn with_ldap(self, ldap: ldap::LdapAuth) -> Gate {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| shared.duplicate());
        Gate { inner: Arc::new(Inner { ldap: Some(Arc::new(ldap)), ..inner }) }
    }

    /// Count failed logins in shared state and slow down, then refuse,
    /// repeated failures.
    pub fn with_throttle(self, throttle: throttle::Throttle) -> Gate {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| shared.duplicate());
        Gate { inner: Arc::new(Inner { throttle: Some(throttle), ..inner }) }
    }

    /// Subjects allowed to use the admin API (token revocation).
    pub fn with_admins(self, admins: Vec<String>) -> Gate {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| shared.duplicate());
        Gate { inner: Arc::new(Inner { admins, ..inner }) }
    }

    /// The revocation list tokens are checked against.
    pub fn revocations(&self) -> &Arc<crate::registry::revocations::RevocationList> {
        &self.inner.revocations
    }

    /// Whether `identity` may use the admin API.
    pub fn is_admin(&self, identity: &Identity) -> bool {
        identity.subject.as_ref().is_some_and(|s| self.inner.admins.contains(s))
    }

    /// Also authenticate callers by their verified client certificate.
    pub fn with_mtls(self, rules: mtls::MtlsRules) -> Gate {
        let inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| shared.duplicate());
        Gate { inner: Arc::new(Inner { mtls: Some(rules), ..inner }) }
    }

    /// Whether callers must authenticate.
    pub fn required(&self) -> bool {
        self.inner.htpasswd.is_some()
            || self.inner.ldap.is_some()
            || !self.inner.issuers.is_empty()
            || self.inner.mtls.is_some()
    }

    /// The token service, if this registry issues tokens.
    pub fn token_service(&self) -> Option<&TokenService> {
        self.inner.token.as_ref()
    }

    /// Re-read the htpasswd file when it changes, every `every`.
    pub fn spawn_reloader(&self, every: Duration) -> Option<tokio::task::JoinHandle<()>> {
        let gate = self.clone();
        self.inner.htpasswd.as_ref()?;
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(h) = gate.inner.htpasswd.clone() else { return };
                match tokio::task::spawn_blocking(move || h.reload_if_changed()).await {
                    Ok(Ok(true)) => {
                        // Removed users and changed passwords apply at once.
                        gate.inner.cache.clear();
                        tracing::info!("htpasswd file reloaded");
                    }
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "htpasswd file not reloaded; the previous contents stay in force")
                    }
                    Err(e) => tracing::error!(error = %e, "htpasswd reload task failed"),
                }
            }
        }))
    }

    /// The `WWW-Authenticate` value of a 401: a Bearer challenge naming the
    /// token realm, service and wanted scope when this registry issues
    /// tokens (with RFC 6750 `error` for a refused token), else Basic.
    pub fn challenge(&self, origin: Option<&str>, scope: Option<&str>, error: Option<(&str, &str)>) -> String {
        let clean = |s: &str| s.replace(['"', '\\'], "");
        let Some(t) = &self.inner.token else {
            return format!("Basic realm=\"{}\", charset=\"UTF-8\"", clean(&self.inner.realm));
        };
        let realm = match (&t.realm, origin) {
            (Some(r), _) => r.clone(),
            (None, Some(o)) => format!("{o}{}", t.path),
            (None, None) => t.path.clone(),
        };
        let mut c = format!("Bearer realm=\"{}\",service=\"{}\"", clean(&realm), clean(&t.service));
        if let Some(scope) = scope {
            c.push_str(&format!(",scope=\"{}\"", clean(scope)));
        }
        if let Some((code, description)) = error {
            c.push_str(&format!(",error=\"{code}\",error_description=\"{}\"", clean(description)));
        }
        c
    }

    /// The Basic challenge the token endpoint answers with.
    pub fn challenge_basic(&self) -> String {
        let realm = self.inner.realm.replace(['"', '\\'], "");
        format!("Basic realm=\"{realm}\", charset=\"UTF-8\"")
    }

    fn unauthorized(&self, message: &'static str) -> OciError {
        OciError::Unauthorized { challenge: self.challenge(None, None, None), message }
    }

    fn unauthorized_for(&self, identity: &Identity, scope: Option<&str>, message: &'static str) -> OciError {
        OciError::Unauthorized { challenge: self.challenge(identity.origin.as_deref(), scope, None), message }
    }

    /// Establish the caller's identity from the request. Credentials that do
    /// not check out are a 401 whatever the reason, so the answer does not
    /// tell whether the user exists.
    pub async fn authenticate(&self, request: &Parts) -> Result<Identity, OciError> {
        let origin = request_origin(request);
        let mut identity = self.authenticate_credentials(request, origin.as_deref()).await?;
        identity.origin = origin;
        Ok(identity)
    }

    async fn authenticate_credentials(&self, request: &Parts, origin: Option<&str>) -> Result<Identity, OciError> {
        // A verified client certificate comes first.
        if let (Some(rules), Some(cert)) = (&self.inner.mtls, request.extensions.get::<crate::api::ClientCertificate>())
        {
            return match mtls::identity_of(&cert.0, rules) {
                Ok((subject, groups)) => Ok(Identity { groups, ..Identity::authenticated(subject, AuthMethod::Mtls) }),
                Err(reason) => {
                    tracing::info!(target: "berth::auth", method = "mtls", reason, "client certificate refused");
                    Err(self.unauthorized_at(origin, "the client certificate names no identity"))
                }
            };
        }
        let Some(value) = request.headers.get(http::header::AUTHORIZATION) else { return Ok(Identity::anonymous()) };
        if !self.required() {
            return Ok(Identity::anonymous());
        }
        let bytes = value.as_bytes();
        if bytes.len() >= 6 && bytes[..6].eq_ignore_ascii_case(b"bearer") && bytes.get(6).is_none_or(|b| *b == b' ') {
            if !self.inner.revocations.is_loaded() {
                // Fail closed: a token cannot be accepted before the
                // revocations are known.
                return Err(OciError::Unavailable {
                    retry_after: Duration::from_secs(2),
                    cause: "token revocations not loaded yet".into(),
                });
            }
            let raw = std::str::from_utf8(&bytes[6..]).map_err(|_| self.unauthorized("malformed token"))?.trim();
            let verified = self.verify_token(raw).and_then(|claims| {
                if self.inner.revocations.is_revoked(&claims.jti, &claims.sub, claims.iat) {
                    Err(token::TokenError::Revoked)
                } else {
                    Ok(claims)
                }
            });
            return match verified {
                Ok(claims) => Ok(Identity {
                    token_access: Some(claims.access),
                    groups: claims.groups,
                    ..Identity::authenticated(claims.sub, AuthMethod::Bearer)
                }),
                Err(e) => {
                    tracing::info!(target: "berth::auth", method = "bearer", reason = %e, "token refused");
                    let challenge = self.challenge(origin, None, Some(("invalid_token", &e.to_string())));
                    Err(OciError::Unauthorized { challenge, message: "invalid token" })
                }
            };
        }
        let (user, password) =
            parse_basic(bytes).ok_or_else(|| self.unauthorized_at(origin, "malformed credentials"))?;
        let ip = request.extensions.get::<crate::api::PeerAddr>().map(|p| p.0.ip());
        self.check_password(&user, password, origin, ip).await
    }

    /// Verify a bearer token, from the cache of verified tokens when it was
    /// seen within `VERIFIED_TOKEN_TTL`.
    fn verify_token(&self, raw: &str) -> Result<token::Claims, token::TokenError> {
        use sha2::Digest as _;
        let key: [u8; 32] = sha2::Sha256::digest(raw.as_bytes()).into();
        let now = token::now();
        {
            let cache = self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner());
            if let Some((claims, at)) = cache.get(&key) {
                if at.elapsed() < VERIFIED_TOKEN_TTL {
                    if claims.exp.saturating_add(TOKEN_LEEWAY.as_secs()) <= now {
                        return Err(token::TokenError::Expired);
                    }
                    return Ok(claims.as_ref().clone());
                }
            }
        }
        let claims = token::verify(raw, &self.inner.issuers, TOKEN_LEEWAY)?;
        let mut cache = self.inner.tokens.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= VERIFIED_TOKEN_MAX {
            cache.retain(|_, (_, at)| at.elapsed() < VERIFIED_TOKEN_TTL);
            if cache.len() >= VERIFIED_TOKEN_MAX {
                cache.clear();
            }
        }
        cache.insert(key, (Arc::new(claims.clone()), Instant::now()));
        Ok(claims)
    }

    /// Check a user name and password (htpasswd). A failure is a 401
    /// whatever the reason, so it does not tell whether the user exists.
    pub async fn check_password(
        &self,
        user: &str,
        password: String,
        origin: Option<&str>,
        ip: Option<std::net::IpAddr>,
    ) -> Result<Identity, OciError> {
        if self.inner.htpasswd.is_none() && self.inner.ldap.is_none() {
            return Err(self.unauthorized_at(origin, "password authentication is not configured"));
        }
        // Credentials verified a moment ago cost nothing: not even the
        // shared counters, so clients that send them on every request do
        // not load Redis.
        let tag = self.inner.cache.tag(user, &password);
        if let Some(v) = self.inner.cache.get(&tag) {
            return Ok(Identity { groups: v.groups, ..Identity::authenticated(v.subject, v.method) });
        }
        if let Some(t) = &self.inner.throttle {
            if let Err(retry_after) = t.check(user, ip).await {
                tracing::info!(target: "berth::auth", method = "htpasswd", "login refused: too many failures");
                return Err(OciError::TooManyRequests { retry_after });
            }
        }
        let mut verified = None;
        if let Some(htpasswd) = &self.inner.htpasswd {
            let (h, u, p) = (htpasswd.clone(), user.to_owned(), password.clone());
            if tokio::task::spawn_blocking(move || h.check(&u, &p)).await.map_err(OciError::internal)? {
                verified =
                    Some(Verified { subject: user.to_owned(), groups: Vec::new(), method: AuthMethod::Htpasswd });
            }
        }
        if let (None, Some(ldap)) = (&verified, &self.inner.ldap) {
            match ldap.authenticate(user, &password).await {
                Ok(Some((subject, groups))) => verified = Some(Verified { subject, groups, method: AuthMethod::Ldap }),
                Ok(None) => {}
                Err(e) => {
                    // Never fall back to anonymous access.
                    return Err(OciError::Unavailable { retry_after: Duration::from_secs(5), cause: e.to_string() });
                }
            }
        }
        let Some(verified) = verified else {
            tracing::info!(target: "berth::auth", method = "password", "authentication failed");
            if let Some(t) = &self.inner.throttle {
                let delay = t.failed(user, ip).await;
                tokio::time::sleep(delay).await;
            }
            return Err(self.unauthorized_at(origin, "authentication failed"));
        };
        if let Some(t) = &self.inner.throttle {
            t.succeeded(user).await;
        }
        self.inner.cache.put(tag, verified.clone());
        Ok(Identity { groups: verified.groups, ..Identity::authenticated(verified.subject, verified.method) })
    }

    fn unauthorized_at(&self, origin: Option<&str>, message: &'static str) -> OciError {
        OciError::Unauthorized { challenge: self.challenge(origin, None, None), message }
    }

    /// Refuse anonymous callers when authentication is configured (the
    /// `/v2/` check and the catalog).
    pub fn require_identity(&self, identity: &Identity) -> Result<(), OciError> {
        let anonymous_welcome = self.policy().is_some_and(|p| p.anonymous_may_read_something());
        if self.required() && identity.is_anonymous() && !anonymous_welcome {
            return Err(self.unauthorized_for(identity, None, "authentication required"));
        }
        Ok(())
    }

    /// Grant `A` on `repo` to `identity`, or refuse with a challenge for
    /// the scope that would have been needed.
    pub fn authorize<A: Action>(&self, identity: &Identity, repo: &RepoName) -> Result<Access<A>, OciError> {
        self.check::<A>(identity, repo, true)
    }

    /// `A` on `repo` if `identity` holds it, without logging a refusal: for
    /// optional extra rights, such as moving a tag during a push.
    pub fn optional<A: Action>(&self, identity: &Identity, repo: &RepoName) -> Option<Access<A>> {
        self.check::<A>(identity, repo, false).ok()
    }

    fn check<A: Action>(&self, identity: &Identity, repo: &RepoName, log: bool) -> Result<Access<A>, OciError> {
        // Tokens speak pull/push/delete; moving a tag is part of push.
        let token_action = if A::NAME == "update" { "push" } else { A::NAME };
        let scope = || format!("repository:{repo}:{token_action}");
        // Policy is checked on every use, tokens included, so a policy
        // change applies at once.
        let allowed = match self.policy() {
            Some(policy) => policy.allows(identity, repo.as_str(), perm_of(A::NAME)),
            None => !(self.required() && identity.is_anonymous()),
        };
        if !allowed {
            if identity.is_anonymous() {
                return Err(self.unauthorized_for(identity, Some(&scope()), "authentication required"));
            }
            if log {
                tracing::info!(target: "berth::auth", repo = %repo, action = A::NAME, "denied by policy");
            }
            return Err(OciError::Denied);
        }
        if let Some(granted) = &identity.token_access {
            let allowed = granted.iter().any(|g| {
                g.kind == "repository"
                    && g.name == repo.as_str()
                    && g.actions.iter().any(|a| a == token_action || a == "*")
            });
            if !allowed {
                // RFC 6750: a valid token with too little scope is 403, with
                // a challenge naming the scope a new token needs.
                let challenge = self.challenge(
                    identity.origin.as_deref(),
                    Some(&scope()),
                    Some(("insufficient_scope", "the token does not grant this access")),
                );
                return Err(OciError::InsufficientScope { challenge });
            }
        }
        Ok(Access::grant(repo.clone(), identity.subject.clone()))
    }

    /// Whether `identity` may see `repo` in the catalog.
    pub fn may_list(&self, identity: &Identity, repo: &str) -> bool {
        if let Some(policy) = self.policy() {
            if !policy.allows(identity, repo, policy::Perm::Read) {
                return false;
            }
        } else if self.required() && identity.is_anonymous() {
            return false;
        }
        match &identity.token_access {
            None => true,
            Some(granted) => granted.iter().any(|g| {
                (g.kind == "registry" && g.name == "catalog")
                    || (g.kind == "repository" && g.name == repo && g.actions.iter().any(|a| a == "pull" || a == "*"))
            }),
        }
    }

    /// Issue an access token (and, if asked, a refresh token) for
    /// `identity`: the requested scopes intersected with what it may do.
    pub fn issue_token(&self, identity: &Identity, scopes: &[String], offline: bool) -> Result<IssuedToken, OciError> {
        let t =
            self.inner.token.as_ref().ok_or_else(|| OciError::Unsupported("this registry issues no tokens".into()))?;
        let subject = identity.subject.clone().unwrap_or_default();
        let mut access: Vec<token::ResourceActions> = Vec::new();
        for scope in scopes.iter().flat_map(|s| s.split(' ')).filter(|s| !s.is_empty()) {
            let Some(wanted) = token::parse_scope(scope) else { continue };
            let granted = self.grantable(identity, &wanted);
            if granted.actions.is_empty() {
                continue;
            }
            match access.iter_mut().find(|a| a.kind == granted.kind && a.name == granted.name) {
                Some(existing) => {
                    for a in granted.actions {
                        if !existing.actions.contains(&a) {
                            existing.actions.push(a);
                        }
                    }
                }
                None => access.push(granted),
            }
        }
        let now = token::now();
        let claims = token::Claims {
            iss: t.issuer.clone(),
            sub: subject.clone(),
            aud: t.service.clone(),
            exp: now + t.ttl.as_secs(),
            nbf: now.saturating_sub(1),
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access,
            groups: Vec::new(),
        };
        let signed = t.key.sign(&claims).map_err(OciError::internal)?;
        let refresh = if offline && identity.method != AuthMethod::Bearer {
            let claims = token::Claims {
                aud: refresh_audience(&t.service),
                exp: now + t.refresh_ttl.as_secs(),
                jti: uuid::Uuid::new_v4().to_string(),
                access: Vec::new(),
                ..claims.clone()
            };
            Some(t.key.sign(&claims).map_err(OciError::internal)?)
        } else {
            None
        };
        Ok(IssuedToken { token: signed, expires_in: t.ttl.as_secs(), issued_at: now, refresh_token: refresh })
    }

    /// The identity a refresh token stands for.
    pub fn redeem_refresh_token(&self, raw: &str) -> Result<Identity, OciError> {
        let t =
            self.inner.token.as_ref().ok_or_else(|| OciError::Unsupported("this registry issues no tokens".into()))?;
        let mut issuer =
            token::Issuer::new(t.issuer.clone(), vec![refresh_audience(&t.service)], vec![t.key.algorithm()]);
        issuer.add_signing_key(&t.key);
        match token::verify(raw, &[issuer], TOKEN_LEEWAY) {
            Ok(claims) if self.inner.revocations.is_revoked(&claims.jti, &claims.sub, claims.iat) => {
                tracing::info!(target: "berth::auth", method = "refresh_token", "revoked refresh token refused");
                Err(self.unauthorized("invalid refresh token"))
            }
            Ok(claims) => Ok(Identity::authenticated(claims.sub, AuthMethod::Htpasswd)),
            Err(e) => {
                tracing::info!(target: "berth::auth", method = "refresh_token", reason = %e, "refresh token refused");
                Err(self.unauthorized("invalid refresh token"))
            }
        }
    }

    /// What policy lets `identity` do of `wanted`. Until access policies
    /// exist: everything on valid repositories for an authenticated caller,
    /// the catalog included.
    fn grantable(&self, identity: &Identity, wanted: &token::ResourceActions) -> token::ResourceActions {
        let mut granted = token::ResourceActions { actions: Vec::new(), ..wanted.clone() };
        if identity.is_anonymous() && self.required() {
            return granted;
        }
        let known = match wanted.kind.as_str() {
            "repository" => wanted.name.parse::<RepoName>().is_ok(),
            "registry" => wanted.name == "catalog",
            _ => false,
        };
        if !known {
            return granted;
        }
        let policy = self.policy();
        let actions: Vec<&str> = if wanted.actions.iter().any(|a| a == "*") {
            vec!["pull", "push", "delete"]
        } else {
            wanted.actions.iter().map(String::as_str).filter(|a| matches!(*a, "pull" | "push" | "delete")).collect()
        };
        granted.actions = actions
            .into_iter()
            .filter(|a| match (&policy, wanted.kind.as_str()) {
                (None, _) => true,
                (Some(p), "repository") => p.allows(identity, &wanted.name, perm_of(a)),
                // The catalog lists only readable repositories anyway.
                (Some(_), _) => true,
            })
            .map(str::to_owned)
            .collect();
        granted
    }
}

/// Build a trusted external issuer from its configuration; errors name the
/// offending key.
pub fn external_issuer(c: &crate::config::IssuerConfig) -> Result<token::Issuer, (&'static str, String)> {
    if c.name.is_empty() {
        return Err(("name", "the issuer (iss) must not be empty".into()));
    }
    if c.audiences.is_empty() {
        return Err(("audiences", "at least one accepted audience is required".into()));
    }
    let mut algorithms = Vec::new();
    for a in &c.algorithms {
        let alg: jsonwebtoken::Algorithm =
            a.parse().map_err(|_| ("algorithms", format!("{a:?} is not a JWT algorithm")))?;
        if !token::ALLOWED_ALGORITHMS.contains(&alg) {
            return Err(("algorithms", format!("{a} is not accepted: only ES256, ES384, EdDSA and RS256/384/512")));
        }
        algorithms.push(alg);
    }
    if algorithms.is_empty() {
        return Err(("algorithms", "list the accepted algorithms, e.g. [\"ES256\"]".into()));
    }
    let mut issuer = token::Issuer::new(c.name.clone(), c.audiences.clone(), algorithms);
    issuer.add_jwks_file(&c.jwks_file).map_err(|e| ("jwks_file", e.to_string()))?;
    Ok(issuer)
}

/// The permission an action name needs.
fn perm_of(action: &str) -> policy::Perm {
    match action {
        "pull" => policy::Perm::Read,
        "push" => policy::Perm::Create,
        "update" => policy::Perm::Update,
        _ => policy::Perm::Delete,
    }
}

/// A token minted by [`Gate::issue_token`].
#[derive(Debug, Clone)]
pub struct IssuedToken {
    pub token: String,
    pub expires_in: u64,
    pub issued_at: u64,
    pub refresh_token: Option<String>,
}

/// Refresh tokens carry their own audience so they never pass as access tokens.
fn refresh_audience(service: &str) -> String {
    format!("{service}#refresh")
}

/// `http://host[:port]` from the request's Host header (`https` when the
/// request arrived over TLS, which the server marks on the request).
fn request_origin(request: &Parts) -> Option<String> {
    let host = request.headers.get(http::header::HOST)?.to_str().ok()?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '"' || c == '/' || c == '\\') {
        return None;
    }
    let scheme = if request.extensions.get::<crate::api::Tls>().is_some() { "https" } else { "http" };
    Some(format!("{scheme}://{host}"))
}

/// `Basic base64(user:password)` -> (user, password).
fn parse_basic(value: &[u8]) -> Option<(String, String)> {
    let value = std::str::from_utf8(value).ok()?.trim();
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    if user.is_empty() {
        return None;
    }
    Some((user.to_owned(), password.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn basic_header_parsing() {
        assert_eq!(parse_basic(format!("Basic {}", b64("u:p:w")).as_bytes()), Some(("u".into(), "p:w".into())));
        assert_eq!(parse_basic(format!("basic {}", b64("u:")).as_bytes()), Some(("u".into(), "".into())));
        for bad in [
            "Basic".to_owned(),
            "Basic !!!".to_owned(),
            format!("Bearer {}", b64("u:p")),
            format!("Basic {}", b64("no-colon")),
            format!("Basic {}", b64(":p")),
        ] {
            assert_eq!(parse_basic(bad.as_bytes()), None, "{bad}");
        }
        assert_eq!(parse_basic(&[0xff, 0xfe]), None);
    }

    #[test]
    fn credential_cache_keys_hide_the_password() {
        let c = CredentialCache::new();
        let t = c.tag("alice", "pw");
        assert_ne!(t, c.tag("alice", "pw2"));
        assert_ne!(t, c.tag("alicep", "w"), "user and password are separated");
        assert_ne!(t, CredentialCache::new().tag("alice", "pw"), "the key is per process");
        let v = Verified { subject: "alice".into(), groups: vec!["g".into()], method: AuthMethod::Htpasswd };
        c.put(t, v.clone());
        assert_eq!(c.get(&t), Some(v));
        c.clear();
        assert_eq!(c.get(&t), None);
    }
}
