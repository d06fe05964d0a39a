//! Who is asking, and what they may do.
//!
//! Authentication turns a request's headers and its [`ClientInfo`] into an
//! [`Identity`]: a verified client certificate (mTLS), then
//! `Authorization: Bearer` (a JWT of this registry's token service or of a
//! trusted external issuer), then `Authorization: Basic` (the htpasswd
//! file, then LDAP); with nothing configured everyone is anonymous. Every
//! identity carries its [`Source`], so subjects of different sources never
//! pass for each other. Authorization turns identity + repository + action
//! into an [`Access`] value; this is the only place that mints them.
//!
//! Password checks are bounded before they cost anything: remembered
//! credentials skip them, the failed-login throttle is asked first,
//! identical credentials arriving together share one check, and the hash
//! itself runs on a fixed pool with a bounded queue ([`hashing`]).
//!
//! The `WWW-Authenticate` challenge of every 401 is built here, in
//! [`Gate::challenge`]; the api layer only copies it into the header.

pub mod hashing;
pub mod htpasswd;
pub mod identity;
pub mod ldap;
pub mod mtls;
pub mod policy;
pub mod throttle;
pub mod token;

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use base64::Engine as _;
use futures::future::{BoxFuture, FutureExt as _, Shared};
use hmac::Mac as _;

use crate::config::{AuthConfig, ConfigError};
use crate::conn::ClientInfo;
use crate::oci::{OciError, RepoName};
use crate::registry::access::{Access, Action};

pub use htpasswd::Htpasswd;
pub use identity::{AuthMethod, Identity, NameKind, NameRef, Source, Subject};

/// Who a verified password belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Verified {
    subject: Subject,
    groups: Vec<String>,
    method: AuthMethod,
}

impl Verified {
    fn identity(self) -> Identity {
        Identity::authenticated(self.subject, self.groups, self.method)
    }
}

/// How long a verified password is remembered, so that a client sending
/// Basic credentials on every request does not pay for a slow hash each time.
const CREDENTIAL_CACHE_TTL: Duration = Duration::from_secs(60);
const CREDENTIAL_CACHE_MAX: usize = 10_000;

/// Verified credentials, keyed by an HMAC of user and password under a key
/// that lives only in this process: the cache never holds a password or an
/// offline-checkable hash of one.
struct CredentialCache {
    key: [u8; 32],
    entries: Mutex<HashMap<[u8; 32], (Verified, Instant)>>,
    /// Bumped by every `clear`: a check that began before a clear (against
    /// the old htpasswd file) must not put its result in afterwards.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for CredentialCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.entries.lock().map(|e| e.len()).unwrap_or(0);
        f.debug_struct("CredentialCache").field("entries", &n).finish_non_exhaustive()
    }
}

impl CredentialCache {
    fn new() -> CredentialCache {
        let mut key = [0u8; 32];
        // uuid v4 draws from the OS random source.
        key[..16].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        key[16..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        CredentialCache { key, entries: Mutex::new(HashMap::new()), generation: std::sync::atomic::AtomicU64::new(0) }
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

    /// The generation a check starting now belongs to.
    fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Remember `user` for `tag`, unless the cache was cleared since the
    /// check began (`generation`).
    fn put(&self, tag: [u8; 32], user: Verified, generation: u64) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if self.generation() != generation {
            return;
        }
        if entries.len() >= CREDENTIAL_CACHE_MAX {
            entries.retain(|_, (_, at)| at.elapsed() < CREDENTIAL_CACHE_TTL);
            if entries.len() >= CREDENTIAL_CACHE_MAX {
                entries.clear();
            }
        }
        entries.insert(tag, (user, Instant::now()));
    }

    fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        entries.clear();
    }
}

/// What a sign-in session keeps of the credential it began with
/// ([`Gate::session_credential`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SessionCredential {
    /// The token's `jti` and `iat`, for a session begun with a token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<(String, u64)>,
    /// The fingerprint of the user's htpasswd entry, for a session begun
    /// with an htpasswd password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entry: Option<String>,
}

/// The verdict of [`Gate::session_check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionCheck {
    Valid,
    /// Over, and why.
    Ended(&'static str),
    /// Cannot tell yet (the revocations are not loaded).
    Unknown,
}

/// HMAC-SHA256 takes keys of any length; this cannot happen.
fn unreachable_key() -> hmac::Hmac<sha2::Sha256> {
    #[allow(clippy::expect_used)]
    hmac::Hmac::<sha2::Sha256>::new_from_slice(b"k").expect("HMAC accepts any key length")
}

/// The outcome of one password check, shared by every request that sent
/// the same credentials while it ran.
#[derive(Debug, Clone)]
enum Checked {
    Verified(Verified),
    Refused,
    Busy(hashing::Busy),
    DirectoryDown(String),
}

type PendingCheck = Shared<BoxFuture<'static, Checked>>;

/// Password checks under way, by credential tag and the credential cache's
/// generation when they began: a check that began before a reload is not
/// joined by one that begins after it (its answer may come from the old
/// file, and the later caller would cache it).
#[derive(Default)]
struct PendingChecks(Mutex<HashMap<([u8; 32], u64), PendingCheck>>);

impl std::fmt::Debug for PendingChecks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.0.lock().map(|m| m.len()).unwrap_or(0);
        write!(f, "PendingChecks({n})")
    }
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
    /// External issuers: `iss` -> configured id (the [`Source`] of their
    /// subjects).
    external: HashMap<String, Arc<str>>,
    /// How client certificates map to identities, when mTLS authenticates.
    mtls: Option<mtls::MtlsRules>,
    /// Revoked tokens, kept current by the registry's revocation sync.
    revocations: Arc<crate::registry::revocations::RevocationList>,
    /// Who may use the admin API.
    admins: Vec<NameRef>,
    /// Fleet-wide failed-login counters, once shared state is open.
    throttle: OnceLock<throttle::Throttle>,
    /// The LDAP directory, asked after the htpasswd file.
    ldap: Option<Arc<ldap::LdapAuth>>,
    /// The hashing threads.
    pool: hashing::HashPool,
    /// Password checks under way, by credential tag.
    pending: PendingChecks,
    /// Tokens whose signature and claims were verified, by SHA-256 of the
    /// token: a client presenting the same token again costs a hash, not a
    /// signature check. Expiry and revocation are checked on every use.
    tokens: Mutex<VerifiedTokens>,
    /// Access-control policies; replaced whole when the configuration is
    /// reloaded. `None`: authenticated callers may do everything.
    policy: std::sync::RwLock<Option<Arc<policy::AccessPolicy>>>,
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

/// A configuration error at `key`.
fn key_error(key: impl Into<String>, message: impl std::fmt::Display) -> ConfigError {
    ConfigError::Key { key: key.into(), message: message.to_string() }
}

impl Gate {
    /// A gate that lets anonymous callers do everything: the embedded default.
    pub fn anonymous() -> Gate {
        Gate::assemble(Parts::default())
    }

    fn assemble(p: Parts) -> Gate {
        let mut issuers = Vec::new();
        if let Some(t) = &p.token {
            let mut own = token::Issuer::new(t.issuer.clone(), vec![t.service.clone()], vec![t.key.algorithm()]);
            own.add_signing_key(&t.key);
            issuers.push(own);
        }
        let mut external = HashMap::new();
        for (id, issuer) in p.external {
            external.insert(issuer.name.clone(), id);
            issuers.push(issuer);
        }
        Gate {
            inner: Arc::new(Inner {
                htpasswd: p.htpasswd,
                realm: p.realm,
                cache: CredentialCache::new(),
                token: p.token,
                issuers,
                external,
                mtls: p.mtls,
                revocations: Arc::default(),
                admins: p.admins,
                throttle: OnceLock::new(),
                ldap: p.ldap.map(Arc::new),
                pool: hashing::HashPool::new(p.pool),
                pending: PendingChecks::default(),
                tokens: Mutex::default(),
                policy: std::sync::RwLock::new(p.policy.map(Arc::new)),
            }),
        }
    }

    /// Build the gate the configuration describes, reading every file it
    /// names (htpasswd, signing key, JWKS, LDAP CA) once. `config check`
    /// and `serve` both call this, so they cannot disagree. Errors name the
    /// key at fault.
    pub fn from_config(c: &AuthConfig, access: Option<&crate::config::AccessConfig>) -> Result<Gate, ConfigError> {
        let htpasswd = match &c.htpasswd {
            Some(path) => Some(Htpasswd::load(path).map_err(|e| key_error("auth.htpasswd", e))?),
            None => None,
        };
        let token = match &c.token {
            Some(t) => Some(TokenService {
                key: token::SigningKey::from_pem_file(&t.key_file).map_err(|e| key_error("auth.token.key_file", e))?,
                issuer: t.issuer.clone(),
                service: t.service.clone(),
                ttl: t.ttl.0,
                refresh_ttl: t.refresh_ttl.0,
                path: t.path.clone(),
                realm: t.realm.clone(),
            }),
            None => None,
        };
        let mut external = Vec::new();
        for (i, issuer) in c.issuers.iter().enumerate() {
            let built = external_issuer(issuer).map_err(|(k, m)| key_error(format!("auth.issuers[{i}].{k}"), m))?;
            external.push((Arc::from(issuer.id.as_str()), built));
        }
        let ids: Vec<&str> = c.issuers.iter().map(|i| i.id.as_str()).collect();
        let admins = c
            .admins
            .iter()
            .map(|a| NameRef::parse(a, NameKind::User, &ids))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| key_error("auth.admins", e))?;
        let ldap = match &c.ldap {
            Some(l) => {
                Some(ldap::LdapAuth::new(ldap::LdapOptions::from_config(l)).map_err(|e| key_error("auth.ldap", e))?)
            }
            None => None,
        };
        let mtls = c.mtls.as_ref().map(|m| mtls::MtlsRules {
            subject: m.subject,
            uri_prefix: m.uri_prefix.clone(),
            groups_from_ou: m.groups_from_ou,
        });
        let policy = match access {
            Some(a) => Some(policy::AccessPolicy::new(a, &ids).map_err(|m| key_error("access", m))?),
            None => None,
        };
        let defaults = hashing::PoolOptions::for_this_machine();
        let pool = hashing::PoolOptions {
            workers: c.password_checks.workers.unwrap_or(defaults.workers),
            queue: c.password_checks.queue.unwrap_or(defaults.queue),
            per_client: c.password_checks.per_client.unwrap_or(defaults.per_client),
        };
        Ok(Gate::assemble(Parts {
            htpasswd,
            realm: c.realm.clone(),
            token,
            external,
            mtls,
            admins,
            ldap,
            policy,
            pool,
        }))
    }

    /// The ids of the external issuers, for checking names in policies.
    pub fn issuer_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.inner.external.values().map(|id| id.to_string()).collect();
        ids.sort();
        ids
    }

    /// Install (or replace) the access policy; requests in flight finish
    /// under the policy they started with.
    pub fn set_policy(&self, policy: Option<policy::AccessPolicy>) {
        *self.inner.policy.write().unwrap_or_else(|p| p.into_inner()) = policy.map(Arc::new);
    }

    fn policy(&self) -> Option<Arc<policy::AccessPolicy>> {
        self.inner.policy.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// What a sign-in session begun now by `identity` keeps of its
    /// credential, so that it ends when the credential does: the token's
    /// `jti` and issue time when it was signed in with `token`, the
    /// fingerprint of the user's htpasswd entry when with an htpasswd
    /// password. (An LDAP password leaves nothing to check later: such a
    /// session ends by its time limits, and policy applies on every use.)
    pub fn session_credential(&self, identity: &Identity, token: Option<&str>) -> SessionCredential {
        let mut credential = SessionCredential::default();
        if let Some(claims) = token.and_then(|t| self.verify_token(t).ok()) {
            credential.token = Some((claims.jti, claims.iat));
        }
        if identity.method() == AuthMethod::Htpasswd {
            if let (Some(h), Some(subject)) = (&self.inner.htpasswd, identity.subject()) {
                credential.entry = h.fingerprint(subject.name());
            }
        }
        credential
    }

    /// Whether a session begun at `began` (Unix seconds) by `identity` with
    /// `credential` may go on: not if its token or its subject was revoked
    /// since, or its htpasswd user was removed or given a new password.
    pub fn session_check(&self, identity: &Identity, credential: &SessionCredential, began: u64) -> SessionCheck {
        let Some(subject) = identity.subject() else { return SessionCheck::Ended("no subject") };
        let revocations = &self.inner.revocations;
        match &credential.token {
            Some((jti, issued)) => {
                if !revocations.is_loaded() {
                    // As for the token itself: fail closed until known.
                    return SessionCheck::Unknown;
                }
                if revocations.is_revoked(jti, subject.name(), *issued) {
                    return SessionCheck::Ended("its token was revoked");
                }
            }
            None => {
                if revocations.is_revoked("", subject.name(), began) {
                    return SessionCheck::Ended("every token of its subject was revoked");
                }
            }
        }
        if identity.method() == AuthMethod::Htpasswd {
            let now = self.inner.htpasswd.as_ref().and_then(|h| h.fingerprint(subject.name()));
            if now.is_none() || now != credential.entry {
                return SessionCheck::Ended("its user was removed or has a new password");
            }
        }
        SessionCheck::Valid
    }

    /// Count failed logins in shared state and slow down, then refuse,
    /// repeated failures. Set once, when the shared state is open.
    pub fn set_throttle(&self, throttle: throttle::Throttle) {
        if self.inner.throttle.set(throttle).is_err() {
            tracing::warn!("the failed-login throttle was already set");
        }
    }

    fn throttle(&self) -> Option<&throttle::Throttle> {
        self.inner.throttle.get()
    }

    /// The revocation list tokens are checked against.
    pub fn revocations(&self) -> &Arc<crate::registry::revocations::RevocationList> {
        &self.inner.revocations
    }

    /// Whether `identity` may use the admin API.
    pub fn is_admin(&self, identity: &Identity) -> bool {
        self.inner.admins.iter().any(|a| a.is_subject_of(identity))
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
                let g = gate.clone();
                // Removed users and changed passwords apply at once: the
                // cache is emptied while the new table is installed.
                match tokio::task::spawn_blocking(move || h.reload_if_changed(|| g.inner.cache.clear())).await {
                    Ok(Ok(true)) => {
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
        OciError::Unauthorized { challenge: self.challenge(identity.origin(), scope, None), message }
    }

    /// Establish the caller's identity from the request's headers and the
    /// connection facts. Credentials that do not check out are a 401
    /// whatever the reason, so the answer does not tell whether the user
    /// exists.
    pub async fn authenticate(&self, headers: &http::HeaderMap, client: &ClientInfo) -> Result<Identity, OciError> {
        use crate::metrics::{observe_auth, AuthOutcome, AuthScheme};
        let origin = request_origin(headers, client);
        let scheme = match (&self.inner.mtls, &client.client_certificate, headers.get(http::header::AUTHORIZATION)) {
            (Some(_), Some(_), _) => AuthScheme::Mtls,
            (_, _, None) => AuthScheme::Anonymous,
            (_, _, Some(_)) if !self.required() => AuthScheme::Anonymous,
            (_, _, Some(v)) if v.as_bytes().get(..6).is_some_and(|b| b.eq_ignore_ascii_case(b"bearer")) => {
                AuthScheme::Bearer
            }
            _ => AuthScheme::Basic,
        };
        let checked = self.authenticate_credentials(headers, client, origin.as_deref()).await;
        observe_auth(
            scheme,
            match &checked {
                Ok(_) => AuthOutcome::Accepted,
                Err(OciError::TooManyRequests { .. }) => AuthOutcome::Throttled,
                Err(OciError::Unavailable { .. }) => AuthOutcome::Unavailable,
                Err(_) => AuthOutcome::Refused,
            },
        );
        Ok(checked?.with_origin(origin))
    }

    async fn authenticate_credentials(
        &self,
        headers: &http::HeaderMap,
        client: &ClientInfo,
        origin: Option<&str>,
    ) -> Result<Identity, OciError> {
        // A verified client certificate comes first.
        if let (Some(rules), Some(cert)) = (&self.inner.mtls, &client.client_certificate) {
            return match mtls::identity_of(cert, rules) {
                Ok((name, groups)) => {
                    Ok(Identity::authenticated(Subject::new(Source::Certificate, name), groups, AuthMethod::Mtls))
                }
                Err(reason) => {
                    tracing::info!(target: "berth::auth", method = "mtls", reason, "client certificate refused");
                    Err(self.unauthorized_at(origin, "the client certificate names no identity"))
                }
            };
        }
        let Some(value) = headers.get(http::header::AUTHORIZATION) else { return Ok(Identity::anonymous()) };
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
            let identity = verified.and_then(|claims| {
                let source = self.token_source(&claims)?;
                Ok(Identity::authenticated(Subject::new(source, claims.sub), claims.groups, AuthMethod::Bearer)
                    .with_token_access(claims.access))
            });
            return match identity {
                Ok(identity) => Ok(identity),
                Err(e) => {
                    tracing::info!(target: "berth::auth", method = "bearer", reason = %e, "token refused");
                    let challenge = self.challenge(origin, None, Some(("invalid_token", &e.to_string())));
                    Err(OciError::Unauthorized { challenge, message: "invalid token" })
                }
            };
        }
        let (user, password) =
            parse_basic(bytes).ok_or_else(|| self.unauthorized_at(origin, "malformed credentials"))?;
        self.check_password(&user, password, origin, client.address).await
    }

    /// Where a verified token's subject comes from: this registry's tokens
    /// say (`src`), an external issuer's are that issuer's.
    fn token_source(&self, claims: &token::Claims) -> Result<Source, token::TokenError> {
        if let Some(id) = self.inner.external.get(&claims.iss) {
            return Ok(Source::Issuer(id.clone()));
        }
        claims.src.as_deref().and_then(Source::from_claim).ok_or(token::TokenError::NoSource)
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

    /// Check a user name and password (htpasswd, then LDAP). A failure is a
    /// 401 whatever the reason, so it does not tell whether the user exists.
    /// `client` is the resolved client address (after trusted proxies).
    pub async fn check_password(
        &self,
        user: &str,
        password: String,
        origin: Option<&str>,
        client: IpAddr,
    ) -> Result<Identity, OciError> {
        if self.inner.htpasswd.is_none() && self.inner.ldap.is_none() {
            return Err(self.unauthorized_at(origin, "password authentication is not configured"));
        }
        // Credentials verified a moment ago cost nothing: not even the
        // shared counters, so clients that send them on every request do
        // not load Redis.
        let tag = self.inner.cache.tag(user, &password);
        if let Some(v) = self.inner.cache.get(&tag) {
            return Ok(v.identity());
        }
        let generation = self.inner.cache.generation();
        // The throttle is asked before anything is hashed.
        if let Some(t) = self.throttle() {
            if let Err(retry_after) = t.check(user, Some(client)).await {
                tracing::info!(target: "berth::auth", method = "password", "login refused: too many failures");
                return Err(OciError::TooManyRequests { retry_after });
            }
        }
        let outcome = self.shared_check((tag, generation), user, password, client).await;
        match outcome {
            Checked::Verified(verified) => {
                if let Some(t) = self.throttle() {
                    t.succeeded(user).await;
                }
                self.inner.cache.put(tag, verified.clone(), generation);
                Ok(verified.identity())
            }
            Checked::Refused => {
                tracing::info!(target: "berth::auth", method = "password", "authentication failed");
                if let Some(t) = self.throttle() {
                    let delay = t.failed(user, Some(client)).await;
                    tokio::time::sleep(delay).await;
                }
                Err(self.unauthorized_at(origin, "authentication failed"))
            }
            Checked::Busy(hashing::Busy::Client) => {
                tracing::info!(target: "berth::auth", "login refused: too many password checks from this client");
                Err(OciError::TooManyRequests { retry_after: Duration::from_secs(1) })
            }
            Checked::Busy(hashing::Busy::Queue) => {
                tracing::warn!(target: "berth::auth", "login refused: the password-check queue is full");
                Err(OciError::Unavailable {
                    retry_after: Duration::from_secs(1),
                    cause: "every password-check worker is busy and the queue is full".into(),
                })
            }
            // Never fall back to anonymous access.
            Checked::DirectoryDown(cause) => Err(OciError::Unavailable { retry_after: Duration::from_secs(5), cause }),
        }
    }

    /// The check of these credentials: the one already under way, or a new
    /// one that later arrivals with the same credentials will share.
    async fn shared_check(&self, tag: ([u8; 32], u64), user: &str, password: String, client: IpAddr) -> Checked {
        let pending = {
            let mut map = self.inner.pending.0.lock().unwrap_or_else(|p| p.into_inner());
            match map.get(&tag) {
                Some(pending) => pending.clone(),
                None => {
                    let gate = self.clone();
                    let user = user.to_owned();
                    let check: BoxFuture<'static, Checked> =
                        async move { gate.check_once(user, password, client).await }.boxed();
                    let pending = check.shared();
                    map.insert(tag, pending.clone());
                    pending
                }
            }
        };
        let outcome = pending.clone().await;
        let mut map = self.inner.pending.0.lock().unwrap_or_else(|p| p.into_inner());
        if map.get(&tag).is_some_and(|p| p.ptr_eq(&pending)) {
            map.remove(&tag);
        }
        outcome
    }

    /// One password check: the htpasswd file on the hashing pool (a known
    /// and an unknown user take the same path), then the directory.
    async fn check_once(&self, user: String, password: String, client: IpAddr) -> Checked {
        if let Some(htpasswd) = self.inner.htpasswd.clone() {
            let (u, p) = (user.clone(), password.clone());
            match self.inner.pool.run(client, move || htpasswd.check(&u, &p)).await {
                Ok(true) => {
                    return Checked::Verified(Verified {
                        subject: Subject::new(Source::Htpasswd, user),
                        groups: Vec::new(),
                        method: AuthMethod::Htpasswd,
                    })
                }
                Ok(false) => {}
                Err(busy) => return Checked::Busy(busy),
            }
        }
        if let Some(ldap) = &self.inner.ldap {
            return match ldap.authenticate(&user, &password).await {
                Ok(Some((name, groups))) => Checked::Verified(Verified {
                    subject: Subject::new(Source::Ldap, name),
                    groups,
                    method: AuthMethod::Ldap,
                }),
                Ok(None) => Checked::Refused,
                Err(e) => Checked::DirectoryDown(e.to_string()),
            };
        }
        Checked::Refused
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
        if let Some(granted) = identity.token_access() {
            let allowed = granted.iter().any(|g| {
                g.kind == "repository"
                    && g.name == repo.as_str()
                    && g.actions.iter().any(|a| a == token_action || a == "*")
            });
            if !allowed {
                // RFC 6750: a valid token with too little scope is 403, with
                // a challenge naming the scope a new token needs.
                let challenge = self.challenge(
                    identity.origin(),
                    Some(&scope()),
                    Some(("insufficient_scope", "the token does not grant this access")),
                );
                return Err(OciError::InsufficientScope { challenge });
            }
        }
        Ok(Access::grant(repo.clone(), identity.qualified_subject()))
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
        match identity.token_access() {
            None => true,
            Some(granted) => granted.iter().any(|g| {
                (g.kind == "registry" && g.name == "catalog")
                    || (g.kind == "repository" && g.name == repo && g.actions.iter().any(|a| a == "pull" || a == "*"))
            }),
        }
    }

    /// Issue an access token (and, if asked, a refresh token) for
    /// `identity`: the requested scopes intersected with what it may do.
    /// The token names the identity's source and carries its groups, so
    /// group rules apply to its holder as they did to the login.
    pub fn issue_token(&self, identity: &Identity, scopes: &[String], offline: bool) -> Result<IssuedToken, OciError> {
        let t =
            self.inner.token.as_ref().ok_or_else(|| OciError::Unsupported("this registry issues no tokens".into()))?;
        let (sub, src) = match identity.subject() {
            Some(s) => match s.source().claim() {
                Some(src) => (s.name().to_owned(), Some(src.to_owned())),
                // An external issuer's subject stays that issuer's.
                None => return Err(OciError::Denied),
            },
            None => (String::new(), None),
        };
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
            sub,
            aud: t.service.clone(),
            exp: now + t.ttl.as_secs(),
            nbf: now.saturating_sub(1),
            iat: now,
            jti: uuid::Uuid::new_v4().to_string(),
            access,
            groups: identity.groups().to_vec(),
            src,
        };
        let signed = t.key.sign(&claims).map_err(OciError::internal)?;
        let refresh = if offline && identity.method() != AuthMethod::Bearer && claims.src.is_some() {
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

    /// The identity a refresh token stands for: its source and groups as at
    /// the login it was issued for.
    pub fn redeem_refresh_token(&self, raw: &str) -> Result<Identity, OciError> {
        let t =
            self.inner.token.as_ref().ok_or_else(|| OciError::Unsupported("this registry issues no tokens".into()))?;
        let mut issuer =
            token::Issuer::new(t.issuer.clone(), vec![refresh_audience(&t.service)], vec![t.key.algorithm()]);
        issuer.add_signing_key(&t.key);
        let verified = token::verify(raw, &[issuer], TOKEN_LEEWAY).and_then(|claims| {
            if self.inner.revocations.is_revoked(&claims.jti, &claims.sub, claims.iat) {
                return Err(token::TokenError::Revoked);
            }
            let source = claims.src.as_deref().and_then(Source::from_claim).ok_or(token::TokenError::NoSource)?;
            Ok((source, claims))
        });
        match verified {
            Ok((source, claims)) => {
                let method = match source {
                    Source::Ldap => AuthMethod::Ldap,
                    Source::Certificate => AuthMethod::Mtls,
                    _ => AuthMethod::Htpasswd,
                };
                Ok(Identity::authenticated(Subject::new(source, claims.sub), claims.groups, method))
            }
            Err(e) => {
                tracing::info!(target: "berth::auth", method = "refresh_token", reason = %e, "refresh token refused");
                Err(self.unauthorized("invalid refresh token"))
            }
        }
    }

    /// What policy lets `identity` do of `wanted`. Without access policies:
    /// everything on valid repositories for an authenticated caller, the
    /// catalog included.
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

/// What [`Gate::assemble`] is made of.
#[derive(Default)]
struct Parts {
    htpasswd: Option<Htpasswd>,
    realm: String,
    token: Option<TokenService>,
    external: Vec<(Arc<str>, token::Issuer)>,
    mtls: Option<mtls::MtlsRules>,
    admins: Vec<NameRef>,
    ldap: Option<ldap::LdapAuth>,
    policy: Option<policy::AccessPolicy>,
    pool: hashing::PoolOptions,
}

/// Build a trusted external issuer from its configuration; errors name the
/// offending key.
/// Access for the registry's own background work on stored content (the
/// scanner reading the layers it inventories), never for a request. The
/// subject names the job (`berth:scanner`), so audit lines tell it apart.
pub fn internal_access<A: Action>(repo: &RepoName, job: &str) -> Access<A> {
    Access::grant(repo.clone(), Some(format!("berth:{job}")))
}

pub fn external_issuer(c: &crate::config::IssuerConfig) -> Result<token::Issuer, (&'static str, String)> {
    if !identity::valid_issuer_id(&c.id) {
        return Err((
            "id",
            format!(
                "{:?} is not usable: give each issuer a short id of lowercase letters, digits, '-', '_' or '.' \
                 (policies name its subjects issuer:<id>:<sub>), e.g. id = \"sso\"",
                c.id
            ),
        ));
    }
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

/// `http://host[:port]` from the Host header (`https` when the request
/// arrived over TLS).
fn request_origin(headers: &http::HeaderMap, client: &ClientInfo) -> Option<String> {
    let host = headers.get(http::header::HOST)?.to_str().ok()?;
    if host.is_empty() || host.chars().any(|c| c.is_whitespace() || c == '"' || c == '/' || c == '\\') {
        return None;
    }
    let scheme = if client.tls { "https" } else { "http" };
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
        let v = Verified {
            subject: Subject::new(Source::Htpasswd, "alice"),
            groups: vec!["g".into()],
            method: AuthMethod::Htpasswd,
        };
        c.put(t, v.clone(), c.generation());
        assert_eq!(c.get(&t), Some(v.clone()));
        c.clear();
        assert_eq!(c.get(&t), None);
        // A check that began before a clear (against the file the clear
        // replaced) does not put its result in after it.
        let began = c.generation();
        c.clear();
        c.put(t, v.clone(), began);
        assert_eq!(c.get(&t), None, "a check from before the reload was remembered");
        c.put(t, v.clone(), c.generation());
        assert_eq!(c.get(&t), Some(v));
    }

    fn gate_with_users(users: &[(&str, &str)], config: &str) -> (Gate, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users");
        let lines: String = users.iter().map(|(u, p)| format!("{u}:{}\n", bcrypt::hash(p, 4).unwrap())).collect();
        std::fs::write(&path, lines).unwrap();
        let text = format!("[auth]\nhtpasswd = {:?}\n{config}", path.display().to_string());
        let cfg: crate::config::Config = toml::from_str(&text).unwrap();
        (Gate::from_config(&cfg.auth, cfg.access.as_ref()).unwrap(), dir)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn identical_credentials_arriving_together_share_one_check() {
        let (gate, _dir) = gate_with_users(&[("alice", "pw")], "");
        let client: IpAddr = "192.0.2.1".parse().unwrap();
        let checks: Vec<_> = (0..20).map(|_| gate.check_password("alice", "pw".into(), None, client)).collect();
        for outcome in futures::future::join_all(checks).await {
            let id = outcome.unwrap();
            assert_eq!(id.qualified_subject().as_deref(), Some("htpasswd:alice"));
        }
        assert!(gate.inner.pending.0.lock().unwrap().is_empty(), "finished checks are forgotten");
        assert!(gate.check_password("alice", "wrong".into(), None, client).await.is_err());
        assert!(gate.check_password("nobody", "pw".into(), None, client).await.is_err());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn group_rules_hold_for_tokens_and_refreshed_tokens() {
        let key = tempfile::NamedTempFile::new().unwrap();
        let rng = ring::rand::SystemRandom::new();
        let doc =
            ring::signature::EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode(doc.as_ref());
        let lines: Vec<&str> = b64.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).unwrap()).collect();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
        std::fs::write(key.path(), pem).unwrap();
        let (gate, _dir) = gate_with_users(
            &[],
            &format!(
                "[auth.token]\nkey_file = {:?}\n[access]\ndefault_policy = []\n\
                 [[access.repositories]]\npattern = \"team/**\"\n\
                 policies = [{{ groups = [\"builders\"], actions = [\"read\", \"create\"] }}]\n",
                key.path().display().to_string()
            ),
        );
        gate.revocations().replace(Vec::new());
        // An LDAP login in group `builders` (as the directory would assert).
        let login =
            Identity::authenticated(Subject::new(Source::Ldap, "dana"), vec!["builders".into()], AuthMethod::Ldap);
        let scope = vec!["repository:team/app:pull,push".to_owned()];
        let issued = gate.issue_token(&login, &scope, true).unwrap();
        let mut headers = http::HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, format!("Bearer {}", issued.token).parse().unwrap());
        let holder = gate.authenticate(&headers, &ClientInfo::unknown()).await.unwrap();
        assert_eq!(holder.qualified_subject().as_deref(), Some("ldap:dana"));
        let repo: RepoName = "team/app".parse().unwrap();
        gate.authorize::<crate::registry::Push>(&holder, &repo).expect("the group rule holds for the token");
        // The refreshed token keeps the source and the groups.
        let refreshed = gate.redeem_refresh_token(issued.refresh_token.as_deref().unwrap()).unwrap();
        assert_eq!(refreshed.qualified_subject().as_deref(), Some("ldap:dana"));
        let again = gate.issue_token(&refreshed, &scope, false).unwrap();
        headers.insert(http::header::AUTHORIZATION, format!("Bearer {}", again.token).parse().unwrap());
        let holder = gate.authenticate(&headers, &ClientInfo::unknown()).await.unwrap();
        gate.authorize::<crate::registry::Push>(&holder, &repo).expect("and for the refreshed one");
        // A token of this registry that names no source is refused.
        let t = gate.token_service().unwrap();
        let now = token::now();
        let bare = token::Claims {
            iss: t.issuer.clone(),
            sub: "dana".into(),
            aud: t.service.clone(),
            exp: now + 60,
            nbf: now - 1,
            iat: now,
            jti: "x".into(),
            access: Vec::new(),
            groups: Vec::new(),
            src: None,
        };
        headers.insert(http::header::AUTHORIZATION, format!("Bearer {}", t.key.sign(&bare).unwrap()).parse().unwrap());
        assert!(gate.authenticate(&headers, &ClientInfo::unknown()).await.is_err());
    }
}
