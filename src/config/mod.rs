//! Configuration in layers: built-in defaults, then a TOML file, then
//! `BERTH__SECTION__KEY` environment variables, then command-line flags.
//! Unknown keys are errors that name the key. Secrets ([`Secret`]) may be
//! given inline or as `{ file = "/run/secrets/x" }` and never print.
//!
//! This is plain data: [`Config::validate`] checks what can be checked
//! without reading a file. The files the configuration names (htpasswd,
//! keys, certificates, JWKS) are read once, by the builders of the
//! components that use them (`server::Components::load`), which `config
//! check` and `serve` both call.

pub mod access;
mod duration;
mod secret;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use access::{AccessConfig, RateLimitConfig};
pub use duration::HumanDuration;
pub use secret::Secret;

/// The whole configuration.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub server: ServerConfig,
    pub storage: StorageConfig,
    pub state: StateConfig,
    pub uploads: UploadsConfig,
    pub cache: CacheConfig,
    pub log: LogConfig,
    pub auth: AuthConfig,
    /// Access-control policies; without this section an authenticated
    /// caller may do everything.
    pub access: Option<AccessConfig>,
    /// Request budgets shared by the fleet.
    pub rate_limit: RateLimitConfig,
    /// Trace export (the `otel` extension).
    pub telemetry: TelemetryConfig,
    /// Who may read `/metrics` on the main listener (the `metrics`
    /// extension).
    pub metrics: Option<MetricsConfig>,
    /// Online garbage collection.
    pub gc: GcConfig,
    /// Per repository glob rules of what collection keeps.
    pub retention: RetentionConfig,
    /// Storage quotas per repository glob, checked at manifest PUT.
    pub quotas: Vec<QuotaConfig>,
    /// Vulnerability scanning (the `scan` extension).
    pub scan: ScanConfig,
    /// The replica mesh: an internal mutual-TLS listener over which
    /// replicas fetch blobs from the replica that owns each digest.
    pub mesh: Option<MeshConfig>,
    /// Pull-through mirrors of upstream registries (the `mirror` extension).
    pub mirror: MirrorConfig,
    /// Repository search (the `search` extension).
    pub search: SearchConfig,
    /// The web UI (the `ui` extension).
    pub ui: UiConfig,
}

/// `[search]`: an index of repositories and tags, derived from the records
/// in the object store, answering `/v2/_berth/search/...`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SearchConfig {
    pub enabled: bool,
    /// How often each replica lists every record again, catching up with
    /// changes whose notices it missed (notices apply within a second).
    pub rescan_interval: HumanDuration,
}

impl Default for SearchConfig {
    fn default() -> Self {
        SearchConfig { enabled: true, rescan_interval: HumanDuration(Duration::from_secs(600)) }
    }
}

/// `[ui]`: the web pages at `/ui/` (needs `[search]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UiConfig {
    pub enabled: bool,
    /// How long a sign-in lasts without being used.
    pub session_idle: HumanDuration,
    /// How long a sign-in lasts at most.
    pub session_max: HumanDuration,
    /// The host name pull commands show (default: the Host the page was
    /// asked with).
    pub pull_host: Option<String>,
}

impl Default for UiConfig {
    fn default() -> Self {
        UiConfig {
            enabled: true,
            session_idle: HumanDuration(Duration::from_secs(3600)),
            session_max: HumanDuration(Duration::from_secs(12 * 3600)),
            pull_host: None,
        }
    }
}

/// `[mirror]`: local repository prefixes served from upstream registries,
/// fetched on demand and kept.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MirrorConfig {
    pub upstreams: Vec<MirrorUpstreamConfig>,
}

/// `[[mirror.upstreams]]`: one upstream registry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorUpstreamConfig {
    /// A short name for logs, metrics and `berth mirror sync --upstream`.
    pub name: String,
    /// Local repositories under this prefix (`docker.io` serves
    /// `docker.io/library/alpine`) come from the upstream. `""` (one
    /// upstream at most): every name no other prefix matches, as Docker's
    /// `registry-mirrors` asks for `library/alpine`; a registry whose
    /// whole namespace mirrors that upstream.
    pub prefix: String,
    /// The upstream registry: `https://host[:port]`, or `docker.io`.
    pub url: String,
    /// Prepended to the name below the prefix when asking the upstream
    /// (`mirrors/team` turns `<prefix>/app` into `mirrors/team/app`).
    #[serde(default)]
    pub remote_prefix: String,
    /// Credentials for Basic or for the upstream's token service.
    #[serde(default)]
    pub username: Option<String>,
    #[serde(default)]
    pub password: Option<Secret>,
    /// A PEM bundle trusted for this upstream besides the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// A tag is checked with the upstream (HEAD) when its last check is
    /// older than this; until then the local copy is served.
    #[serde(default = "MirrorUpstreamConfig::default_tag_ttl")]
    pub tag_ttl: HumanDuration,
    #[serde(default = "MirrorUpstreamConfig::default_connect_timeout")]
    pub connect_timeout: HumanDuration,
    /// Until the upstream's response headers.
    #[serde(default = "MirrorUpstreamConfig::default_response_timeout")]
    pub response_timeout: HumanDuration,
    /// Longest pause between two chunks of an upstream body.
    #[serde(default = "MirrorUpstreamConfig::default_idle_timeout")]
    pub idle_timeout: HumanDuration,
    /// Whether writers may push into the prefix as well (off: the mirror
    /// alone writes there).
    #[serde(default)]
    pub allow_push: bool,
    /// How long a pull waits while another pull (on any replica) fetches
    /// the same manifest or blob from the upstream, before it is answered
    /// 503 with `Retry-After`.
    #[serde(default = "MirrorUpstreamConfig::default_fill_wait")]
    pub fill_wait: HumanDuration,
    /// What `berth mirror sync` copies ahead of any pull, and how often
    /// `serve` does it by itself.
    #[serde(default)]
    pub sync: Option<MirrorSyncConfig>,
}

/// `[mirror.upstreams.sync]`: repositories and tags copied ahead of pulls.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorSyncConfig {
    /// Names below the prefix (`library/alpine`, `team/*`, `team/**`);
    /// globs are matched against the upstream's catalog.
    pub repositories: Vec<String>,
    /// Tag globs (`*`, `1.*`, `v2.*-alpine`).
    #[serde(default = "MirrorSyncConfig::all_tags")]
    pub tags: Vec<String>,
    /// Of the matching tags, only the newest N in version order (numeric
    /// runs compared as numbers: 1.10 after 1.9).
    #[serde(default)]
    pub newest: Option<usize>,
    /// Of an index, the platforms (`os/arch` or `os/arch/variant`) whose
    /// images are copied; empty: all. The index itself is kept whole.
    #[serde(default)]
    pub platforms: Vec<String>,
    /// How often `serve` syncs (one replica of the fleet at a time); unset:
    /// only `berth mirror sync` does.
    #[serde(default)]
    pub interval: Option<HumanDuration>,
}

impl MirrorSyncConfig {
    fn all_tags() -> Vec<String> {
        vec!["*".to_owned()]
    }
}

impl MirrorUpstreamConfig {
    fn default_fill_wait() -> HumanDuration {
        HumanDuration(Duration::from_secs(600))
    }
    fn default_tag_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(300))
    }
    fn default_connect_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
    fn default_response_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
    fn default_idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(30))
    }
}

/// `[mesh]`: replicas find each other through shared state (a heartbeat
/// with the internal address) and fetch each blob from its owner, chosen
/// by rendezvous hashing over the live members, over mutual TLS with the
/// fleet CA. Needs `[cache.blobs]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// Address of the internal listener (mutual TLS, peers only).
    pub listen: SocketAddr,
    /// `host:port` other replicas dial to reach this one; default: `listen`
    /// when it names one address (not 0.0.0.0 or ::).
    #[serde(default)]
    pub advertise: Option<String>,
    /// The fleet CA: peers' client and server certificates must chain to it.
    pub ca_file: PathBuf,
    /// This replica's certificate (used as server and client certificate)
    /// and key, PEM; re-read when they change.
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// The DNS name every replica's certificate carries, checked when
    /// dialing a peer (peers are dialed by address).
    #[serde(default = "MeshConfig::default_server_name")]
    pub server_name: String,
    /// How often membership is renewed, and how long it lasts unrenewed.
    #[serde(default = "MeshConfig::default_heartbeat")]
    pub heartbeat: HumanDuration,
    #[serde(default = "MeshConfig::default_member_ttl")]
    pub member_ttl: HumanDuration,
    /// A peer that has not started sending within this time, or pauses
    /// this long mid-stream, is abandoned for the object store.
    #[serde(default = "MeshConfig::default_first_byte_timeout")]
    pub first_byte_timeout: HumanDuration,
    #[serde(default = "MeshConfig::default_idle_timeout")]
    pub idle_timeout: HumanDuration,
}

impl MeshConfig {
    fn default_server_name() -> String {
        "berth-mesh".into()
    }
    fn default_heartbeat() -> HumanDuration {
        HumanDuration(Duration::from_secs(2))
    }
    fn default_member_ttl() -> HumanDuration {
        HumanDuration(Duration::from_secs(6))
    }
    fn default_first_byte_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(2))
    }
    fn default_idle_timeout() -> HumanDuration {
        HumanDuration(Duration::from_secs(5))
    }
}

/// `host:port` (a DNS name, an IPv4 address, or `[v6]`) split in two.
pub fn split_host_port(s: &str) -> Option<(&str, u16)> {
    let (host, port) = s.rsplit_once(':')?;
    let port: u16 = port.parse().ok().filter(|p| *p != 0)?;
    let host = match host.strip_prefix('[') {
        Some(v6) => {
            let inner = v6.strip_suffix(']')?;
            inner.parse::<std::net::Ipv6Addr>().ok()?;
            inner
        }
        None if host.contains(':') => return None,
        None => host,
    };
    if host.is_empty() || !host.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:".contains(&b)) {
        return None;
    }
    Some((host, port))
}

/// `[cache.blobs]`: blob bytes kept on this replica's disk.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlobCacheConfig {
    /// A directory of its own (its contents are managed: files that are not
    /// verified blobs are removed).
    pub dir: PathBuf,
    /// Budget on disk; the least recently used blobs are evicted past it.
    pub max_bytes: ByteSize,
    /// A cached blob whose last check is older than this is hashed again
    /// by the next full read that serves it (a file damaged on disk then
    /// fails that one download and is fetched again).
    #[serde(default = "BlobCacheConfig::default_reverify_after")]
    pub reverify_after: HumanDuration,
}

impl BlobCacheConfig {
    fn default_reverify_after() -> HumanDuration {
        HumanDuration(Duration::from_secs(3600))
    }
}

/// `[scan]`: package inventories of pushed images and their matching
/// against the imported vulnerability database (builds with the `scan`
/// extension; the minimal flavor refuses the section).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanConfig {
    pub enabled: bool,
    /// Scan jobs this replica runs at once.
    pub workers: usize,
    /// Queue every pushed manifest.
    pub on_push: bool,
    /// Queue every tagged manifest already stored, once (the first time a
    /// replica with the extension enabled starts).
    pub backfill: bool,
    /// The largest package database or manifest file read into memory.
    pub max_file: ByteSize,
    /// The largest executable read to find Go or Rust build information.
    pub max_binary: ByteSize,
    /// Refuse pulls of vulnerable images, per repository glob (the longest
    /// matching glob decides).
    pub policies: Vec<ScanPolicy>,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            enabled: true,
            workers: 2,
            on_push: true,
            backfill: true,
            max_file: ByteSize(64 << 20),
            max_binary: ByteSize(256 << 20),
            policies: Vec::new(),
        }
    }
}

/// `[[scan.policies]]`: pulls of manifests with findings at or above
/// `severity` (low, medium, high, critical) are refused with `DENIED`,
/// except findings whose id or alias is in `allow`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScanPolicy {
    pub repositories: String,
    pub severity: String,
    pub allow: Vec<String>,
    /// Do not count findings no fixed version exists for yet.
    pub ignore_unfixable: bool,
}

/// `[[quotas]]`: each repository `repositories` matches (the longest glob
/// deciding) may hold at most `max_bytes` of image content (distinct blobs
/// its manifests reference). A push over it is refused with `DENIED`,
/// naming the quota.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    pub repositories: String,
    /// Bytes, as a number or with a unit: "500MiB", "10GiB", "1TB".
    pub max_bytes: ByteSize,
}

/// A size in bytes, written as a number or as "10GiB", "500MB", "1TiB".
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl ByteSize {
    pub fn parse(s: &str) -> Result<u64, String> {
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| format!("invalid size {s:?}: expected e.g. 500MiB, 10GiB"))?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KB" => 1_000,
            "MB" => 1_000_000,
            "GB" => 1_000_000_000,
            "TB" => 1_000_000_000_000,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            other => {
                return Err(format!("invalid size unit {other:?} in {s:?}: use B, KB, MB, GB, TB, KiB, MiB, GiB, TiB"))
            }
        };
        n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(self.0)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            N(u64),
            S(String),
        }
        match Raw::deserialize(d)? {
            Raw::N(n) => Ok(ByteSize(n)),
            Raw::S(s) => ByteSize::parse(&s).map(ByteSize).map_err(serde::de::Error::custom),
        }
    }
}

/// `[gc]`: online garbage collection. Every replica runs the loop; a
/// fleet-wide lease lets one pass run at a time.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcConfig {
    pub enabled: bool,
    /// Time between passes.
    pub interval: HumanDuration,
    /// Nothing younger than this is collected.
    pub grace: HumanDuration,
    /// Untagged manifests older than this are deleted; absent (the
    /// default): they are kept. Children of a kept index and referrers of a
    /// kept manifest are never untagged garbage.
    pub untagged_after: Option<HumanDuration>,
}

impl Default for GcConfig {
    fn default() -> Self {
        GcConfig {
            enabled: true,
            interval: HumanDuration(Duration::from_secs(3600)),
            grace: HumanDuration(Duration::from_secs(3600)),
            untagged_after: None,
        }
    }
}

/// `[retention]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    pub policies: Vec<RetentionPolicy>,
}

/// `[[retention.policies]]`: the longest `repositories` glob matching a
/// repository decides for it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionPolicy {
    /// Repository glob (`*` within a segment, `**` across `/`).
    pub repositories: String,
    /// Untagged manifests of these repositories older than this are
    /// deleted; `"never"` keeps them (overriding `gc.untagged_after`);
    /// absent: `gc.untagged_after` applies.
    pub untagged_after: Option<String>,
    /// With any `keep_*` rule set, a tag that no rule keeps is deleted (and
    /// its manifest, unless something else reaches it). Tag globs: `*` is
    /// any run of characters.
    pub keep_tags: Vec<String>,
    /// Keep the tags of the N most recently pushed images.
    pub keep_last: Option<usize>,
    /// Keep tags pushed within this long.
    pub keep_pushed_within: Option<HumanDuration>,
    /// Keep tags whose manifest was pulled within this long (pulls are
    /// recorded at most once per manifest per hour).
    pub keep_pulled_within: Option<HumanDuration>,
}

impl RetentionPolicy {
    /// True if the policy deletes tags (some `keep_*` rule is set).
    pub fn retains_tags(&self) -> bool {
        !self.keep_tags.is_empty()
            || self.keep_last.is_some()
            || self.keep_pushed_within.is_some()
            || self.keep_pulled_within.is_some()
    }

    /// The rule for untagged manifests: `None` when the policy does not
    /// say, `Some(None)` to keep them, `Some(Some(age))` to delete them.
    pub fn untagged(&self) -> Result<Option<Option<Duration>>, String> {
        match self.untagged_after.as_deref() {
            None => Ok(None),
            Some("never") => Ok(Some(None)),
            Some(s) => duration::parse(s).map(|d| Some(Some(d))).map_err(|e| format!("{e}, or \"never\"")),
        }
    }
}

/// `[metrics]`: protection of `/metrics` where the main listener serves it
/// (without `server.health_listen`). A scraper passes with the bearer
/// token, or as an identity named in `allow` (e.g. `cert:prometheus` for a
/// client certificate). Without this section `/metrics` is open.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsConfig {
    /// `Authorization: Bearer <token>` scrapers send (Prometheus
    /// `authorization.credentials_file`).
    pub bearer_token: Option<Secret>,
    /// Identities allowed to scrape, as access policies name them.
    pub allow: Vec<String>,
}

/// Authentication. With nothing configured every caller is anonymous, which
/// the server allows only on loopback unless `server.allow_anonymous`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Realm named in Basic challenges.
    pub realm: String,
    /// htpasswd file (bcrypt, argon2id or SHA-crypt entries), re-read when it changes.
    pub htpasswd: Option<PathBuf>,
    /// How often the htpasswd file is checked for changes.
    pub reload_interval: HumanDuration,
    /// The built-in token service (Docker registry token flow).
    pub token: Option<TokenConfig>,
    /// External token issuers whose JWTs are accepted.
    pub issuers: Vec<IssuerConfig>,
    /// Authentication by TLS client certificate (needs server.tls with a client CA).
    pub mtls: Option<MtlsConfig>,
    /// Subjects allowed to use the admin API (POST /admin/revocations).
    pub admins: Vec<String>,
    /// How often each replica re-reads the revocation records, in case an
    /// announcement over Redis was missed.
    pub revocation_reload: HumanDuration,
    /// Failed-login throttling, shared by the fleet.
    pub throttle: ThrottleConfig,
    /// An LDAP directory, asked for passwords after the htpasswd file.
    pub ldap: Option<LdapConfig>,
    /// Where password hashes are computed.
    pub password_checks: PasswordChecksConfig,
}

/// Password hashes run on a fixed pool of threads with a bounded queue;
/// past it, logins are answered 503 (or 429 for one client with too many
/// checks in flight) with `Retry-After` at once.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordChecksConfig {
    /// Threads hashing at once (default: one per core, at most 4).
    pub workers: Option<usize>,
    /// Checks waiting for a thread (default: 8 per thread).
    pub queue: Option<usize>,
    /// Checks in flight from one client address (default: 2 per thread).
    pub per_client: Option<usize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LdapConfig {
    /// ldaps://host:636, or ldap://host:389 with starttls = true.
    pub url: String,
    pub starttls: bool,
    /// Accept ldap:// without StartTLS (passwords in clear text).
    pub insecure: bool,
    /// Extra PEM CA bundle for the directory's certificate.
    pub ca_file: Option<PathBuf>,
    /// The service account that searches for users.
    pub bind_dn: String,
    pub bind_password: Secret,
    pub user_base: String,
    /// {username} is replaced by the RFC 4515-escaped user name.
    pub user_filter: String,
    /// Attribute listing the user's group DNs (e.g. "memberOf"); unset to search groups instead.
    pub group_attribute: Option<String>,
    pub group_base: Option<String>,
    /// {dn} is replaced by the escaped user DN.
    pub group_filter: String,
    pub group_name_attribute: String,
    pub connect_timeout: HumanDuration,
    pub operation_timeout: HumanDuration,
    /// Service connections kept open per replica.
    pub pool_size: usize,
}

impl Default for LdapConfig {
    fn default() -> Self {
        LdapConfig {
            url: String::new(),
            starttls: false,
            insecure: false,
            ca_file: None,
            bind_dn: String::new(),
            bind_password: Secret::new(""),
            user_base: String::new(),
            user_filter: "(uid={username})".into(),
            group_attribute: None,
            group_base: None,
            group_filter: "(member={dn})".into(),
            group_name_attribute: "cn".into(),
            connect_timeout: HumanDuration(Duration::from_secs(3)),
            operation_timeout: HumanDuration(Duration::from_secs(5)),
            pool_size: 4,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ThrottleConfig {
    /// Failures are counted over this window.
    pub window: HumanDuration,
    /// Failures for one user name before its logins are refused (429).
    pub user_lockout: i64,
    /// Failures from one client address before its logins are refused.
    pub ip_lockout: i64,
    /// Failures before answers slow down (doubling from 100 ms).
    pub delay_after: i64,
    pub max_delay: HumanDuration,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            window: HumanDuration(Duration::from_secs(900)),
            user_lockout: 10,
            ip_lockout: 100,
            delay_after: 3,
            max_delay: HumanDuration(Duration::from_secs(2)),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            realm: "berth".into(),
            htpasswd: None,
            reload_interval: HumanDuration(Duration::from_secs(2)),
            token: None,
            issuers: Vec::new(),
            mtls: None,
            admins: Vec::new(),
            revocation_reload: HumanDuration(Duration::from_secs(30)),
            throttle: ThrottleConfig::default(),
            ldap: None,
            password_checks: PasswordChecksConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenConfig {
    /// PKCS#8 PEM private key, P-256 (ES256) or Ed25519 (EdDSA).
    pub key_file: PathBuf,
    /// `iss` of issued tokens.
    pub issuer: String,
    /// `aud` of issued tokens, and the `service` clients are told to ask for.
    pub service: String,
    pub ttl: HumanDuration,
    /// Lifetime of refresh tokens (`offline_token=true` / `access_type=offline`).
    pub refresh_ttl: HumanDuration,
    /// Path of the token endpoint.
    pub path: String,
    /// Absolute URL clients are sent to; by default the request's own
    /// scheme and host plus `path`.
    pub realm: Option<String>,
}

impl Default for TokenConfig {
    fn default() -> Self {
        TokenConfig {
            key_file: PathBuf::new(),
            issuer: "berth".into(),
            service: "berth".into(),
            ttl: HumanDuration(Duration::from_secs(300)),
            refresh_ttl: HumanDuration(Duration::from_secs(24 * 3600)),
            path: "/v2/token".into(),
            realm: None,
        }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IssuerConfig {
    /// A short name for this issuer: policies name its subjects
    /// `issuer:<id>:<sub>` and its groups `issuer:<id>:<group>`.
    pub id: String,
    /// Expected `iss`.
    pub name: String,
    /// Accepted `aud` values.
    pub audiences: Vec<String>,
    /// JWKS document with the issuer's public keys.
    pub jwks_file: PathBuf,
    /// Accepted algorithms: ES256, ES384, EdDSA, RS256, RS384, RS512.
    pub algorithms: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Memory for manifests on the read path, in bytes (0 disables it).
    pub manifest_bytes: usize,
    /// Longest a cached tag is served without news of a change. Changes made
    /// through this process, or announced by other replicas, apply at once;
    /// this bounds a missed announcement.
    pub tag_ttl: HumanDuration,
    /// Blob bytes on local disk (`storage.delivery = "cache"`).
    pub blobs: Option<BlobCacheConfig>,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig { manifest_bytes: 32 * 1024 * 1024, tag_ttl: HumanDuration(Duration::from_secs(5)), blobs: None }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address of the public listener.
    pub listen: SocketAddr,
    /// Serve without authentication on a non-loopback address. Without it,
    /// Berth refuses to expose an unauthenticated registry to the network.
    pub allow_anonymous: bool,
    /// Time a client has to send a request's headers (slow-loris guard).
    pub header_read_timeout: HumanDuration,
    /// Longest pause while receiving a request body. There is no total
    /// request timeout: a multi-GB layer on a slow link may take hours.
    pub body_idle_timeout: HumanDuration,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: HumanDuration,
    /// After SIGTERM, keep accepting (with /readyz answering 503) this long
    /// so load balancers stop sending traffic before the listener closes.
    pub shutdown_delay: HumanDuration,
    /// A connection on which no byte moves either way for this long is
    /// closed: it catches clients that stop reading a download.
    pub connection_idle_timeout: HumanDuration,
    /// Connections served at once; further clients wait in the listen queue.
    pub max_connections: usize,
    /// TLS on the listener; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// A second, plain-HTTP listener serving only `/livez`, `/readyz` and
    /// (with the `metrics` extension) `/metrics`: for kubelet probes and
    /// Prometheus when the main listener demands client certificates. Keep
    /// it off the public network (a pod-local or cluster-internal port).
    /// With it set, the main listener no longer serves `/metrics`.
    pub health_listen: Option<SocketAddr>,
    /// Proxies (addresses or CIDR ranges) whose X-Forwarded-For and
    /// Forwarded headers name the client; anyone else's are ignored.
    pub trusted_proxies: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first. Re-read when it changes.
    pub cert_file: PathBuf,
    /// PEM private key.
    pub key_file: PathBuf,
    /// PEM CA bundle that signs client certificates.
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    /// "none", "optional" or "required".
    #[serde(default = "client_auth_none")]
    pub client_auth: ClientAuth,
}

fn client_auth_none() -> ClientAuth {
    ClientAuth::None
}

/// Whether clients present certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClientAuth {
    /// Never asked for.
    None,
    /// Asked for; a client without one is served (and authenticates otherwise).
    Optional,
    /// Required: the handshake fails without a trusted certificate.
    Required,
}

/// Which certificate field names the subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SubjectField {
    /// The subject's common name.
    Cn,
    /// The first DNS subject alternative name.
    Dns,
    /// The first URI SAN (SPIFFE IDs), optionally required to start with a prefix.
    Uri,
    /// The first email (rfc822Name) SAN.
    Email,
}

/// Authentication by verified client certificate.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MtlsConfig {
    /// "cn", "dns", "uri" (e.g. SPIFFE IDs) or "email".
    pub subject: SubjectField,
    /// With subject = "uri": only URIs starting with this name a caller.
    #[serde(default)]
    pub uri_prefix: Option<String>,
    /// Groups from the certificate subject's OU values.
    #[serde(default)]
    pub groups_from_ou: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 5000)),
            allow_anonymous: false,
            header_read_timeout: HumanDuration(Duration::from_secs(30)),
            body_idle_timeout: HumanDuration(Duration::from_secs(60)),
            shutdown_grace: HumanDuration(Duration::from_secs(30)),
            shutdown_delay: HumanDuration(Duration::ZERO),
            connection_idle_timeout: HumanDuration(Duration::from_secs(300)),
            max_connections: 16_384,
            tls: None,
            health_listen: None,
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum StorageBackend {
    /// A local directory: the embedded shape.
    Fs,
    /// An S3 bucket (AWS S3, MinIO or another S3-compatible server): the fleet.
    S3,
}

/// How blob bytes reach clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum BlobDelivery {
    /// Streamed through the replica, with `Range` support.
    Proxy,
    /// A 307 redirect to a presigned URL of the object store, issued after
    /// authorization (S3 only).
    Redirect,
    /// From this replica's blob cache (`[cache.blobs]`), filled once per
    /// blob from the owning peer (`[mesh]`) or the object store.
    Cache,
}

/// `[[storage.delivery_rules]]`: how blobs of the repositories one glob
/// matches are delivered (the longest matching glob decides; others use
/// `storage.delivery`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryRule {
    pub repositories: String,
    pub delivery: BlobDelivery,
    /// Blobs larger than this are redirected instead (S3 only).
    #[serde(default)]
    pub redirect_above: Option<ByteSize>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// How blob GETs are answered.
    pub delivery: BlobDelivery,
    /// Lifetime of a presigned URL handed out by `delivery = "redirect"`.
    pub redirect_ttl: HumanDuration,
    /// With `proxy` or `cache`, blobs larger than this are redirected (S3
    /// only): huge blobs bypass the fleet, hot layers stay cached.
    pub redirect_above: Option<ByteSize>,
    /// Per repository glob exceptions to `delivery`.
    pub delivery_rules: Vec<DeliveryRule>,
    pub fs: FsConfig,
    pub s3: S3Config,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            backend: StorageBackend::Fs,
            delivery: BlobDelivery::Proxy,
            redirect_ttl: HumanDuration(Duration::from_secs(60)),
            redirect_above: None,
            delivery_rules: Vec::new(),
            fs: FsConfig::default(),
            s3: S3Config::default(),
        }
    }
}

/// Server-side encryption of stored objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub enum S3Encryption {
    /// Whatever the bucket's default is.
    BucketDefault,
    /// SSE-S3 (AES256).
    Sse,
    /// SSE-KMS with `kms_key_id` (or the account's default key).
    Kms,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub bucket: String,
    /// Region; unset means the standard chain (AWS_REGION, profile), then us-east-1.
    pub region: Option<String>,
    /// Endpoint of an S3-compatible server such as MinIO, e.g. "http://minio:9000".
    pub endpoint: Option<String>,
    /// Path-style addressing (endpoint/bucket/key), which MinIO wants.
    pub force_path_style: bool,
    /// Prepended to every key, so several registries can share a bucket.
    pub prefix: String,
    /// Static keys. Unset means the standard chain: environment, shared
    /// profile, web identity (IRSA), ECS or EC2 instance metadata.
    pub access_key_id: Option<Secret>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// Profile of the shared AWS config to use with the standard chain.
    pub profile: Option<String>,
    pub encryption: S3Encryption,
    pub kms_key_id: Option<String>,
    /// Storage class of written objects, e.g. "STANDARD" or "INTELLIGENT_TIERING".
    pub storage_class: Option<String>,
    /// Attempts per request, the first included.
    pub max_attempts: u32,
    pub connect_timeout: HumanDuration,
    /// Per attempt, for metadata requests and reads until their first byte.
    pub request_timeout: HumanDuration,
    /// Per attempt, for part uploads and server-side copies.
    pub transfer_timeout: HumanDuration,
    /// Size of the multipart parts uploads are cut into (at least 5 MiB).
    pub part_size: u64,
    /// Extra PEM CA bundle to trust (AWS_CA_BUNDLE is honoured as well).
    pub ca_file: Option<PathBuf>,
}

impl Default for S3Config {
    fn default() -> Self {
        S3Config {
            bucket: String::new(),
            region: None,
            endpoint: None,
            force_path_style: false,
            prefix: String::new(),
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            profile: None,
            encryption: S3Encryption::BucketDefault,
            kms_key_id: None,
            storage_class: None,
            max_attempts: 3,
            connect_timeout: HumanDuration(Duration::from_secs(3)),
            request_timeout: HumanDuration(Duration::from_secs(10)),
            transfer_timeout: HumanDuration(Duration::from_secs(300)),
            part_size: 16 * 1024 * 1024,
            ca_file: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FsConfig {
    /// Directory holding every blob, manifest and tag.
    pub root: PathBuf,
    /// fsync data and directories before acknowledging a write.
    pub fsync: bool,
    /// Write uploads with O_DIRECT where the file system supports it (falls
    /// back to ordinary writes otherwise).
    pub direct_io: bool,
}

impl Default for FsConfig {
    fn default() -> Self {
        FsConfig { root: PathBuf::from("./data"), fsync: true, direct_io: true }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum StateBackend {
    /// In this process: the embedded shape.
    Memory,
    /// Shared by every replica of a fleet.
    Redis,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    pub backend: StateBackend,
    pub redis: RedisConfig,
}

impl Default for StateConfig {
    fn default() -> Self {
        StateConfig { backend: StateBackend::Memory, redis: RedisConfig::default() }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port/db`. A secret, since it may carry
    /// the password: give it inline or as `{ file = "/run/secrets/redis-url" }`.
    pub url: Secret,
    /// Prepended to every key and channel.
    pub key_prefix: String,
    pub connect_timeout: HumanDuration,
    pub response_timeout: HumanDuration,
    /// PEM CA bundle that signs the server's certificate for `rediss://`
    /// URLs (default: the system trust store).
    pub tls_ca_file: Option<PathBuf>,
    /// ACL user and password (e.g. `{ file = "/run/secrets/redis-password" }`);
    /// they take precedence over any in the URL.
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            url: Secret::new("redis://127.0.0.1:6379/0"),
            key_prefix: "berth:".into(),
            connect_timeout: HumanDuration(Duration::from_secs(2)),
            response_timeout: HumanDuration(Duration::from_secs(2)),
            tls_ca_file: None,
            username: None,
            password: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UploadsConfig {
    /// An upload untouched for this long is abandoned and its data removed.
    pub session_ttl: HumanDuration,
    /// How often expired uploads are looked for.
    pub janitor_interval: HumanDuration,
}

impl Default for UploadsConfig {
    fn default() -> Self {
        UploadsConfig {
            session_ttl: HumanDuration(Duration::from_secs(3600)),
            janitor_interval: HumanDuration(Duration::from_secs(60)),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    pub format: LogFormat,
    /// Also write the audit trail (target `berth::audit`) as JSON lines here.
    pub audit_file: Option<PathBuf>,
    /// A tracing filter directive, e.g. `info` or `berth=debug,info`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { format: LogFormat::Text, audit_file: None, level: "info".into() }
    }
}

/// Telemetry beyond logs. Only builds with the `otel` extension accept an
/// `[telemetry.otlp]` section; others refuse it rather than ignore it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// Export a span per request to an OpenTelemetry collector.
    pub otlp: Option<OtlpConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OtlpConfig {
    /// The collector's OTLP/HTTP traces URL, e.g. `http://127.0.0.1:4318/v1/traces`.
    /// Plain HTTP: run the collector beside the replica (same pod or host).
    pub endpoint: String,
    /// `service.name` on every span.
    pub service_name: String,
    /// Fraction of new traces recorded (0.0 to 1.0); a request carrying a
    /// sampled `traceparent` follows its caller's decision.
    pub sample_ratio: f64,
    /// How long finished spans wait to be sent in one batch.
    pub export_interval: HumanDuration,
    /// Give up on one export after this long.
    pub timeout: HumanDuration,
    /// Continue the W3C trace context (`traceparent`) of any caller. Off,
    /// only requests arriving through `server.trusted_proxies` continue
    /// their caller's trace, so clients cannot force sampling or inject
    /// trace ids.
    pub trust_trace_context: bool,
}

impl Default for OtlpConfig {
    fn default() -> Self {
        OtlpConfig {
            endpoint: "http://127.0.0.1:4318/v1/traces".into(),
            service_name: "berth".into(),
            sample_ratio: 1.0,
            export_interval: HumanDuration(Duration::from_secs(5)),
            timeout: HumanDuration(Duration::from_secs(10)),
            trust_trace_context: false,
        }
    }
}

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config file {path} is not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config key `{key}`: {message}")]
    Key { key: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
}

pub const ENV_PREFIX: &str = "BERTH__";

/// Load configuration: defaults, then `file` if given, then environment
/// overrides from `env` (pass `std::env::vars()`).
pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>) -> Result<Config, ConfigError> {
    let mut table = match file {
        Some(path) => {
            let text =
                std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.into(), source })?;
            text.parse::<toml::Table>()
                .map_err(|e| ConfigError::Syntax { path: path.into(), message: e.message().to_owned() })?
        }
        None => toml::Table::new(),
    };
    let overrides: BTreeMap<String, String> = env.into_iter().filter(|(k, _)| k.starts_with(ENV_PREFIX)).collect();
    for (var, value) in overrides {
        apply_env(&mut table, &var, &value)?;
    }
    let config: Config = {
        let de = toml::Value::Table(table);
        serde_path_to_error::deserialize(de)
            .map_err(|e| ConfigError::Key { key: e.path().to_string(), message: e.inner().message().to_owned() })?
    };
    Ok(config)
}

/// `BERTH__SERVER__LISTEN=0.0.0.0:5000` sets `server.listen`. The value is
/// read as a TOML value when it parses as one (numbers, booleans, arrays),
/// otherwise as a string.
fn apply_env(table: &mut toml::Table, var: &str, value: &str) -> Result<(), ConfigError> {
    let path: Vec<String> = var[ENV_PREFIX.len()..].split("__").map(|s| s.to_ascii_lowercase()).collect();
    if path.iter().any(|s| s.is_empty()) {
        return Err(ConfigError::Env { var: var.into(), message: "expected BERTH__SECTION__KEY".into() });
    }
    let parsed = format!("v = {value}")
        .parse::<toml::Table>()
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_owned()));
    let (last, parents) = path.split_last().expect("split of a non-empty path");
    let mut cursor = table;
    for p in parents {
        let entry = cursor.entry(p.clone()).or_insert_with(|| toml::Value::Table(toml::Table::new()));
        cursor = entry
            .as_table_mut()
            .ok_or_else(|| ConfigError::Env { var: var.into(), message: format!("`{p}` is not a section") })?;
    }
    cursor.insert(last.clone(), parsed);
    Ok(())
}

impl Config {
    /// Blob delivery, the blob cache and the mesh.
    fn validate_delivery(&self) -> Result<(), ConfigError> {
        let st = &self.storage;
        let mut deliveries = vec![("storage.delivery".to_owned(), st.delivery, st.redirect_above)];
        for (i, r) in st.delivery_rules.iter().enumerate() {
            if let Err(e) = access::check_pattern(&r.repositories) {
                return Err(ConfigError::Key { key: format!("storage.delivery_rules[{i}].repositories"), message: e });
            }
            deliveries.push((format!("storage.delivery_rules[{i}].delivery"), r.delivery, r.redirect_above));
        }
        let mut redirects = false;
        for (key, delivery, above) in &deliveries {
            if *delivery == BlobDelivery::Redirect || above.is_some() {
                redirects = true;
                if !matches!(st.backend, StorageBackend::S3) {
                    return Err(ConfigError::Key {
                        key: key.clone(),
                        message: "redirects need an object store that presigns URLs: use backend = \"s3\"".into(),
                    });
                }
            }
            if *delivery == BlobDelivery::Cache && self.cache.blobs.is_none() {
                return Err(ConfigError::Key {
                    key: key.clone(),
                    message: "\"cache\" needs a blob cache: set [cache.blobs] dir and max_bytes".into(),
                });
            }
        }
        if redirects {
            let ttl = st.redirect_ttl.0;
            if ttl < Duration::from_secs(1) || ttl > Duration::from_secs(7 * 24 * 3600) {
                return Err(ConfigError::Key {
                    key: "storage.redirect_ttl".into(),
                    message: "must be between 1s and 7d (S3's limit for presigned URLs)".into(),
                });
            }
        }
        if let Some(b) = &self.cache.blobs {
            if b.max_bytes.0 < 1 << 20 {
                return Err(ConfigError::Key {
                    key: "cache.blobs.max_bytes".into(),
                    message: "must be at least 1MiB".into(),
                });
            }
            if b.dir.as_os_str().is_empty() {
                return Err(ConfigError::Key { key: "cache.blobs.dir".into(), message: "required".into() });
            }
        }
        if let Some(m) = &self.mesh {
            if self.cache.blobs.is_none() {
                return Err(ConfigError::Key {
                    key: "mesh".into(),
                    message: "the mesh serves peers from the blob cache: set [cache.blobs] too".into(),
                });
            }
            // Without `advertise`, the bound address of `listen` is used
            // (port 0 included), unless it is a wildcard.
            match &m.advertise {
                Some(a) if split_host_port(a).is_none() => {
                    return Err(ConfigError::Key {
                        key: "mesh.advertise".into(),
                        message: format!("{a:?} is not host:port"),
                    })
                }
                None if m.listen.ip().is_unspecified() => {
                    return Err(ConfigError::Key {
                        key: "mesh.advertise".into(),
                        message: "required when mesh.listen is a wildcard address: the host:port peers dial".into(),
                    })
                }
                _ => {}
            }
            if rustls_pki_types::ServerName::try_from(m.server_name.as_str()).is_err() {
                return Err(ConfigError::Key {
                    key: "mesh.server_name".into(),
                    message: format!("{:?} is not a DNS name", m.server_name),
                });
            }
            if m.heartbeat.0 < Duration::from_millis(100) || m.member_ttl.0 < m.heartbeat.0 * 2 {
                return Err(ConfigError::Key {
                    key: "mesh.member_ttl".into(),
                    message: "heartbeat must be at least 100ms and member_ttl at least twice the heartbeat".into(),
                });
            }
            for (key, d) in [("mesh.first_byte_timeout", m.first_byte_timeout), ("mesh.idle_timeout", m.idle_timeout)] {
                if d.0.is_zero() {
                    return Err(ConfigError::Key { key: key.into(), message: "must be more than 0s".into() });
                }
            }
        }
        Ok(())
    }

    fn validate_mirror(&self) -> Result<(), ConfigError> {
        let ups = &self.mirror.upstreams;
        if ups.is_empty() {
            return Ok(());
        }
        if !cfg!(feature = "mirror") {
            return Err(ConfigError::Key {
                key: "mirror".into(),
                message: "this build has no mirror extension (the minimal flavor); remove the section".into(),
            });
        }
        let mut names = std::collections::HashSet::new();
        for (i, u) in ups.iter().enumerate() {
            let key = |field: &str| format!("mirror.upstreams[{i}].{field}");
            let bad = |field: &str, message: String| Err(ConfigError::Key { key: key(field), message });
            if u.name.is_empty()
                || u.name.len() > 64
                || !u.name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            {
                return bad("name", "1 to 64 letters, digits, '-' or '_'".into());
            }
            if !names.insert(u.name.as_str()) {
                return bad("name", format!("{:?} names two upstreams", u.name));
            }
            if !u.prefix.is_empty() && u.prefix.parse::<crate::oci::RepoName>().is_err() {
                return bad("prefix", format!("{:?} is not a repository name prefix (e.g. \"docker.io\")", u.prefix));
            }
            if !u.remote_prefix.is_empty() && u.remote_prefix.parse::<crate::oci::RepoName>().is_err() {
                return bad("remote_prefix", format!("{:?} is not a repository name prefix", u.remote_prefix));
            }
            let url = u.url.trim();
            let rest = url.strip_prefix("https://").or_else(|| url.strip_prefix("http://")).unwrap_or(url);
            let host = rest.split('/').next().unwrap_or_default();
            if url.contains("://") && !(url.starts_with("https://") || url.starts_with("http://"))
                || host.is_empty()
                || host.contains(['@', '?', '#', ' '])
            {
                return bad("url", format!("{:?} is not https://host[:port] (or docker.io)", u.url));
            }
            if u.username.is_some() != u.password.is_some() {
                return bad("password", "username and password go together".into());
            }
            if u.tag_ttl.0 < Duration::from_secs(1) {
                return bad("tag_ttl", "must be at least 1s".into());
            }
            if u.fill_wait.0 < Duration::from_secs(1) || u.fill_wait.0 > Duration::from_secs(3600) {
                return bad("fill_wait", "must be between 1s and 1h".into());
            }
            if let Some(sync) = &u.sync {
                if sync.repositories.is_empty() {
                    return bad("sync.repositories", "name at least one repository or pattern".into());
                }
                for r in &sync.repositories {
                    access::check_pattern(r)
                        .map_err(|m| ConfigError::Key { key: key("sync.repositories"), message: m })?;
                    if !r.contains('*') && r.parse::<crate::oci::RepoName>().is_err() {
                        return bad("sync.repositories", format!("{r:?} is not a repository name"));
                    }
                }
                if sync.tags.is_empty()
                    || sync.tags.iter().any(|t| {
                        t.is_empty()
                            || t.len() > 128
                            || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b"_.-*".contains(&b))
                    })
                {
                    return bad("sync.tags", "tag globs: letters, digits, '_', '.', '-' and '*'".into());
                }
                if sync.newest == Some(0) {
                    return bad("sync.newest", "must be at least 1".into());
                }
                for p in &sync.platforms {
                    let parts: Vec<&str> = p.split('/').collect();
                    if !(2..=3).contains(&parts.len()) || parts.iter().any(|s| s.is_empty()) {
                        return bad("sync.platforms", format!("{p:?} is not os/arch or os/arch/variant"));
                    }
                }
                if sync.interval.is_some_and(|i| i.0 < Duration::from_secs(1)) {
                    return bad("sync.interval", "must be at least 1s".into());
                }
            }
            for (field, d) in [
                ("connect_timeout", u.connect_timeout),
                ("response_timeout", u.response_timeout),
                ("idle_timeout", u.idle_timeout),
            ] {
                if d.0.is_zero() || d.0 > Duration::from_secs(600) {
                    return bad(field, "must be between 1ms and 10m".into());
                }
            }
        }
        // One prefix may not contain another: every name has one upstream.
        for (i, a) in ups.iter().enumerate() {
            for b in ups.iter().skip(i + 1) {
                let (x, y) = (a.prefix.as_str(), b.prefix.as_str());
                if x == y || y.starts_with(&format!("{x}/")) || x.starts_with(&format!("{y}/")) {
                    return Err(ConfigError::Key {
                        key: "mirror.upstreams".into(),
                        message: format!("the prefixes {x:?} ({}) and {y:?} ({}) overlap", a.name, b.name),
                    });
                }
            }
        }
        Ok(())
    }

    fn validate_search_ui(&self) -> Result<(), ConfigError> {
        if !cfg!(feature = "search") && self.search != SearchConfig::default() {
            return Err(ConfigError::Key {
                key: "search".into(),
                message: "this build has no search extension (the minimal flavor); remove the section".into(),
            });
        }
        if !cfg!(feature = "ui") && self.ui != UiConfig::default() {
            return Err(ConfigError::Key {
                key: "ui".into(),
                message: "this build has no ui extension; remove the section".into(),
            });
        }
        if self.search.rescan_interval.0 < Duration::from_secs(10) {
            return Err(ConfigError::Key {
                key: "search.rescan_interval".into(),
                message: "must be at least 10s, e.g. rescan_interval = \"10m\"".into(),
            });
        }
        if self.ui.enabled && cfg!(feature = "ui") && !self.search.enabled {
            return Err(ConfigError::Key {
                key: "ui.enabled".into(),
                message: "the UI needs search: set [search] enabled = true, or [ui] enabled = false".into(),
            });
        }
        let (idle, max) = (self.ui.session_idle.0, self.ui.session_max.0);
        if idle < Duration::from_secs(60) || max < idle || max > Duration::from_secs(30 * 24 * 3600) {
            return Err(ConfigError::Key {
                key: "ui.session_idle".into(),
                message: "session_idle must be at least 1m and at most session_max, which is at most 30d".into(),
            });
        }
        if let Some(host) = &self.ui.pull_host {
            let ok = !host.is_empty()
                && host.len() <= 253
                && host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'));
            if !ok {
                return Err(ConfigError::Key {
                    key: "ui.pull_host".into(),
                    message: format!("{host:?} is not a host[:port], e.g. pull_host = \"registry.example.com\""),
                });
            }
        }
        Ok(())
    }

    fn validate_scan(&self) -> Result<(), ConfigError> {
        if !cfg!(feature = "scan") && self.scan != ScanConfig::default() {
            return Err(ConfigError::Key {
                key: "scan".into(),
                message: "this build has no scan extension (the minimal flavor); remove the section".into(),
            });
        }
        let s = &self.scan;
        if s.workers == 0 || s.workers > 64 {
            return Err(ConfigError::Key { key: "scan.workers".into(), message: "must be 1 to 64".into() });
        }
        if s.max_file.0 < 1 << 20 {
            return Err(ConfigError::Key { key: "scan.max_file".into(), message: "must be at least 1MiB".into() });
        }
        if s.max_binary.0 < 1 << 20 {
            return Err(ConfigError::Key { key: "scan.max_binary".into(), message: "must be at least 1MiB".into() });
        }
        for (i, p) in s.policies.iter().enumerate() {
            let key = |field: &str| format!("scan.policies[{i}].{field}");
            if let Err(e) = access::check_pattern(&p.repositories) {
                return Err(ConfigError::Key { key: key("repositories"), message: e });
            }
            if !matches!(p.severity.to_ascii_lowercase().as_str(), "low" | "medium" | "high" | "critical") {
                return Err(ConfigError::Key {
                    key: key("severity"),
                    message: format!("{:?} is not one of low, medium, high, critical", p.severity),
                });
            }
        }
        Ok(())
    }

    /// Whether any authentication is configured. The embedded core has none,
    /// so only loopback listeners (or `allow_anonymous`) are allowed.
    pub fn has_authentication(&self) -> bool {
        self.auth.htpasswd.is_some()
            || self.auth.ldap.is_some()
            || !self.auth.issuers.is_empty()
            || self.auth.mtls.is_some()
    }

    /// Refuse settings that are valid one by one but unsafe or useless together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if let Some(otlp) = &self.telemetry.otlp {
            if !cfg!(feature = "otel") {
                return Err(ConfigError::Key {
                    key: "telemetry.otlp".into(),
                    message: format!(
                        "this build has no `otel` extension (berth {}); remove the section or run a build with it",
                        crate::flavor::version_line()
                    ),
                });
            }
            let uri: Option<http::Uri> = otlp.endpoint.parse().ok();
            if !uri.is_some_and(|u| u.scheme_str() == Some("http") && u.host().is_some_and(|h| !h.is_empty())) {
                return Err(ConfigError::Key {
                    key: "telemetry.otlp.endpoint".into(),
                    message: "must be an http:// URL of a collector beside the replica, \
                              e.g. \"http://127.0.0.1:4318/v1/traces\""
                        .into(),
                });
            }
            if !(0.0..=1.0).contains(&otlp.sample_ratio) {
                return Err(ConfigError::Key {
                    key: "telemetry.otlp.sample_ratio".into(),
                    message: "must be between 0.0 and 1.0".into(),
                });
            }
            if otlp.export_interval.0.is_zero() || otlp.timeout.0.is_zero() {
                return Err(ConfigError::Key {
                    key: "telemetry.otlp".into(),
                    message: "export_interval and timeout must be positive, e.g. \"5s\"".into(),
                });
            }
        }
        if !self.server.listen.ip().is_loopback() && !self.has_authentication() && !self.server.allow_anonymous {
            return Err(ConfigError::Key {
                key: "server.listen".into(),
                message: format!(
                    "{} is reachable from the network but no authentication is configured; \
                     configure authentication, listen on a loopback address such as 127.0.0.1:5000, \
                     or set server.allow_anonymous = true to serve anyone who can connect",
                    self.server.listen
                ),
            });
        }
        if self.gc.interval.0 < Duration::from_secs(1) {
            return Err(ConfigError::Key {
                key: "gc.interval".into(),
                message: "must be at least 1s, e.g. \"1h\"".into(),
            });
        }
        for (i, p) in self.retention.policies.iter().enumerate() {
            let key = |field: &str| format!("retention.policies[{i}].{field}");
            if let Err(e) = access::check_pattern(&p.repositories) {
                return Err(ConfigError::Key { key: key("repositories"), message: e });
            }
            if let Err(e) = p.untagged() {
                return Err(ConfigError::Key { key: key("untagged_after"), message: e });
            }
            for t in &p.keep_tags {
                let ok = !t.is_empty()
                    && t.len() <= 128
                    && t.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-*".contains(&b));
                if !ok {
                    return Err(ConfigError::Key {
                        key: key("keep_tags"),
                        message: format!("{t:?} is not a tag glob (tag characters and `*`)"),
                    });
                }
            }
            if p.keep_last == Some(0) {
                return Err(ConfigError::Key { key: key("keep_last"), message: "must be at least 1".into() });
            }
        }
        for (i, q) in self.quotas.iter().enumerate() {
            if let Err(e) = access::check_pattern(&q.repositories) {
                return Err(ConfigError::Key { key: format!("quotas[{i}].repositories"), message: e });
            }
            if q.max_bytes.0 == 0 {
                return Err(ConfigError::Key {
                    key: format!("quotas[{i}].max_bytes"),
                    message: "must be more than 0, e.g. \"10GiB\"".into(),
                });
            }
        }
        self.validate_scan()?;
        self.validate_mirror()?;
        self.validate_search_ui()?;
        if self.uploads.session_ttl.0 < Duration::from_secs(60) {
            return Err(ConfigError::Key {
                key: "uploads.session_ttl".into(),
                message: "must be at least 1m, e.g. session_ttl = \"1h\"".into(),
            });
        }
        if self.uploads.janitor_interval.0.is_zero() {
            return Err(ConfigError::Key {
                key: "uploads.janitor_interval".into(),
                message: "must be positive, e.g. janitor_interval = \"1m\"".into(),
            });
        }
        for (key, value) in [
            ("server.header_read_timeout", self.server.header_read_timeout.0),
            ("server.body_idle_timeout", self.server.body_idle_timeout.0),
            ("server.connection_idle_timeout", self.server.connection_idle_timeout.0),
        ] {
            if value.is_zero() {
                return Err(ConfigError::Key { key: key.into(), message: "must be positive, e.g. \"30s\"".into() });
            }
        }
        if self.server.max_connections == 0 {
            return Err(ConfigError::Key {
                key: "server.max_connections".into(),
                message: "must be at least 1, e.g. max_connections = 16384".into(),
            });
        }
        if matches!(self.storage.backend, StorageBackend::S3) {
            let s3 = &self.storage.s3;
            let key = |k: &str| format!("storage.s3.{k}");
            if s3.bucket.is_empty() {
                return Err(ConfigError::Key { key: key("bucket"), message: "required with backend = \"s3\"".into() });
            }
            if s3.access_key_id.is_some() != s3.secret_access_key.is_some() {
                return Err(ConfigError::Key {
                    key: key("secret_access_key"),
                    message: "access_key_id and secret_access_key go together (or leave both unset for the \
                              standard credential chain)"
                        .into(),
                });
            }
            if !(5 * 1024 * 1024..=5 * 1024 * 1024 * 1024).contains(&s3.part_size) {
                return Err(ConfigError::Key {
                    key: key("part_size"),
                    message: "must be between 5 MiB (5242880) and 5 GiB, S3's part limits".into(),
                });
            }
            if s3.max_attempts == 0 {
                return Err(ConfigError::Key { key: key("max_attempts"), message: "must be at least 1".into() });
            }
            if s3.kms_key_id.is_some() && s3.encryption != S3Encryption::Kms {
                return Err(ConfigError::Key {
                    key: key("kms_key_id"),
                    message: "only used with encryption = \"kms\"".into(),
                });
            }
            if !s3.prefix.is_empty() && !s3.prefix.ends_with('/') {
                return Err(ConfigError::Key {
                    key: key("prefix"),
                    message: format!("must end in '/', e.g. \"{}/\"", s3.prefix),
                });
            }
        }
        self.validate_delivery()?;
        if let Some(l) = &self.auth.ldap {
            if l.user_base.is_empty() || l.bind_dn.is_empty() {
                return Err(ConfigError::Key {
                    key: "auth.ldap.user_base".into(),
                    message: "user_base and bind_dn are required".into(),
                });
            }
            if l.group_attribute.is_none() && l.group_base.is_some() && !l.group_filter.contains("{dn}") {
                return Err(ConfigError::Key {
                    key: "auth.ldap.group_filter".into(),
                    message: "must contain {dn}".into(),
                });
            }
            if l.pool_size == 0 {
                return Err(ConfigError::Key {
                    key: "auth.ldap.pool_size".into(),
                    message: "must be at least 1".into(),
                });
            }
        }
        self.rate_limit.validate().map_err(|message| ConfigError::Key { key: "rate_limit".into(), message })?;
        crate::conn::TrustedProxies::parse(&self.server.trusted_proxies)
            .map_err(|message| ConfigError::Key { key: "server.trusted_proxies".into(), message })?;
        let p = &self.auth.password_checks;
        if p.workers == Some(0) || p.per_client == Some(0) {
            return Err(ConfigError::Key {
                key: "auth.password_checks".into(),
                message: "workers and per_client must be at least 1 (or left unset for the defaults)".into(),
            });
        }
        if let Some(m) = &self.metrics {
            if !cfg!(feature = "metrics") {
                return Err(ConfigError::Key {
                    key: "metrics".into(),
                    message: format!(
                        "this build has no `metrics` extension (berth {}); remove the section or run a build with it",
                        crate::flavor::version_line()
                    ),
                });
            }
            if m.bearer_token.as_ref().is_some_and(|t| t.expose().len() < 16) {
                return Err(ConfigError::Key {
                    key: "metrics.bearer_token".into(),
                    message: "use a random token of at least 16 characters".into(),
                });
            }
            if m.bearer_token.is_none() && m.allow.is_empty() {
                return Err(ConfigError::Key {
                    key: "metrics".into(),
                    message: "set bearer_token, allow, or both (or remove the section to leave /metrics open)".into(),
                });
            }
        }
        let t = &self.auth.throttle;
        if t.window.0.is_zero() || t.user_lockout < 1 || t.ip_lockout < 1 || t.delay_after < 0 {
            return Err(ConfigError::Key {
                key: "auth.throttle".into(),
                message: "window must be positive, lockouts at least 1, delay_after at least 0".into(),
            });
        }
        if self.auth.revocation_reload.0 < Duration::from_secs(1) {
            return Err(ConfigError::Key {
                key: "auth.revocation_reload".into(),
                message: "must be at least 1s".into(),
            });
        }
        if self.auth.reload_interval.0.is_zero() {
            return Err(ConfigError::Key { key: "auth.reload_interval".into(), message: "must be positive".into() });
        }
        if let Some(tls) = &self.server.tls {
            if tls.client_auth != ClientAuth::None && tls.client_ca_file.is_none() {
                return Err(ConfigError::Key {
                    key: "server.tls.client_ca_file".into(),
                    message: "client certificates need the CA that signs them".into(),
                });
            }
        }
        if let Some(m) = &self.auth.mtls {
            let asks_certs = self.server.tls.as_ref().is_some_and(|t| t.client_auth != ClientAuth::None);
            if !asks_certs {
                return Err(ConfigError::Key {
                    key: "auth.mtls".into(),
                    message: "needs server.tls with client_ca_file and client_auth = \"optional\" or \"required\""
                        .into(),
                });
            }
            if m.uri_prefix.is_some() && m.subject != SubjectField::Uri {
                return Err(ConfigError::Key {
                    key: "auth.mtls.uri_prefix".into(),
                    message: "only used with subject = \"uri\"".into(),
                });
            }
        }
        if let Some(t) = &self.auth.token {
            let key = |k: &str| format!("auth.token.{k}");
            if self.auth.htpasswd.is_none() && self.auth.ldap.is_none() {
                return Err(ConfigError::Key {
                    key: key("key_file"),
                    message: "the token service authenticates users by password: configure auth.htpasswd or auth.ldap"
                        .into(),
                });
            }
            if !t.path.starts_with('/') || t.path.contains(['?', '#', '*', '{', '}']) || t.path == "/" {
                return Err(ConfigError::Key {
                    key: key("path"),
                    message: "must be a plain absolute path such as /v2/token".into(),
                });
            }
            if t.ttl.0 < Duration::from_secs(10) || t.ttl.0 > Duration::from_secs(24 * 3600) {
                return Err(ConfigError::Key { key: key("ttl"), message: "must be between 10s and 24h".into() });
            }
            if t.issuer.is_empty() || t.service.is_empty() {
                return Err(ConfigError::Key {
                    key: key("issuer"),
                    message: "issuer and service must not be empty".into(),
                });
            }
            if let Some(realm) = &t.realm {
                if !(realm.starts_with("https://") || realm.starts_with("http://")) {
                    return Err(ConfigError::Key {
                        key: key("realm"),
                        message: "must be an absolute http(s) URL".into(),
                    });
                }
            }
        }
        let mut ids = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for (i, issuer) in self.auth.issuers.iter().enumerate() {
            let key = |k: &str| format!("auth.issuers[{i}].{k}");
            if issuer.id.is_empty() {
                return Err(ConfigError::Key {
                    key: key("id"),
                    message: "required: a short name policies use for this issuer's subjects \
                              (issuer:<id>:<sub>), e.g. id = \"sso\""
                        .into(),
                });
            }
            if !ids.insert(issuer.id.as_str()) {
                return Err(ConfigError::Key { key: key("id"), message: format!("{:?} is used twice", issuer.id) });
            }
            let own = self.auth.token.as_ref().is_some_and(|t| t.issuer == issuer.name);
            if !names.insert(issuer.name.as_str()) || own {
                return Err(ConfigError::Key {
                    key: key("name"),
                    message: format!(
                        "{:?} is already trusted (by another issuer entry or auth.token.issuer): one `iss`, one issuer",
                        issuer.name
                    ),
                });
            }
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::Key { key: "log.level".into(), message: e.to_string() })?;
        Ok(())
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn to_redacted_toml(&self) -> String {
        toml::to_string_pretty(self).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;

    fn load_str(text: &str, env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        load(Some(f.path()), env.iter().map(|(k, v)| (k.to_string(), v.to_string())))
    }

    #[test]
    fn defaults_are_the_embedded_shape() {
        let c = load(None, Vec::new()).unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.1:5000");
        assert_eq!(c.storage.fs.root, PathBuf::from("./data"));
        assert!(c.storage.fs.fsync);
        c.validate().unwrap();
    }

    #[test]
    fn file_then_env() {
        let c = load_str(
            "[server]\nlisten = \"127.0.0.1:6000\"\n[storage.fs]\nfsync = false\n",
            &[("BERTH__SERVER__LISTEN", "127.0.0.2:7000"), ("BERTH__UPLOADS__SESSION_TTL", "2h"), ("OTHER", "x")],
        )
        .unwrap();
        assert_eq!(c.server.listen.to_string(), "127.0.0.2:7000");
        assert!(!c.storage.fs.fsync);
        assert_eq!(c.uploads.session_ttl.0, Duration::from_secs(7200));
        let c = load_str("", &[("BERTH__STORAGE__FS__FSYNC", "false")]).unwrap();
        assert!(!c.storage.fs.fsync);
    }

    #[test]
    fn unknown_keys_are_named() {
        let err = load_str("[server]\nlisen = \"127.0.0.1:1\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("server.lisen") || err.to_string().contains("lisen"), "{err}");
        let err = load_str("[sever]\n", &[]).unwrap_err();
        assert!(err.to_string().contains("sever"), "{err}");
        let err = load_str("", &[("BERTH__SERVER__NOPE", "1")]).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
        let err = load_str("[server]\nlisten = \"not an address\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("server.listen"), "{err}");
        let err = load_str("[uploads]\nsession_ttl = \"forever\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("uploads.session_ttl"), "{err}");
        let err = load_str("[storage]\nbackend = \"floppy\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("storage.backend"), "{err}");
        let err = load_str("not toml at all [", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn network_listen_needs_auth_or_explicit_anonymous() {
        let c = load_str("[server]\nlisten = \"0.0.0.0:5000\"\n", &[]).unwrap();
        let err = c.validate().unwrap_err().to_string();
        assert!(err.contains("server.listen") && err.contains("allow_anonymous"), "{err}");
        let c = load_str("[server]\nlisten = \"0.0.0.0:5000\"\nallow_anonymous = true\n", &[]).unwrap();
        c.validate().unwrap();
        let c = load_str("[server]\nlisten = \"[::1]:5000\"\n", &[]).unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn bad_combinations_are_refused() {
        let c = load_str("[uploads]\nsession_ttl = \"1s\"\n", &[]).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("uploads.session_ttl"));
        let c = load_str("[log]\nlevel = \"=[\"\n", &[]).unwrap();
        assert!(c.validate().unwrap_err().to_string().contains("log.level"));
    }

    #[test]
    fn s3_settings_are_checked() {
        let refused = [
            ("[storage]\nbackend = \"s3\"\n", "storage.s3.bucket"),
            ("[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\naccess_key_id = \"k\"\n", "secret_access_key"),
            ("[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\npart_size = 1024\n", "storage.s3.part_size"),
            ("[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\nprefix = \"x\"\n", "storage.s3.prefix"),
            ("[storage]\nbackend = \"s3\"\n[storage.s3]\nbucket = \"b\"\nkms_key_id = \"k\"\n", "kms_key_id"),
            ("[storage]\ndelivery = \"redirect\"\n", "storage.delivery"),
            (
                "[storage]\nbackend = \"s3\"\ndelivery = \"redirect\"\nredirect_ttl = \"30d\"\n[storage.s3]\nbucket = \"b\"\n",
                "storage.redirect_ttl",
            ),
        ];
        for (text, key) in refused {
            let c = load_str(text, &[]).unwrap();
            let err = c.validate().unwrap_err().to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let err = load_str("[storage.s3]\nencryption = \"rot13\"\n", &[]).unwrap_err().to_string();
        assert!(err.contains("storage.s3.encryption"), "{err}");
        let c = load_str(
            "[storage]\nbackend = \"s3\"\ndelivery = \"redirect\"\n[storage.s3]\nbucket = \"b\"\n\
             encryption = \"kms\"\nkms_key_id = \"alias/berth\"\nprefix = \"reg/\"\n",
            &[("BERTH__STORAGE__S3__SECRET_ACCESS_KEY", "s"), ("BERTH__STORAGE__S3__ACCESS_KEY_ID", "k")],
        )
        .unwrap();
        c.validate().unwrap();
        assert!(!c.to_redacted_toml().contains("= \"s\""), "a secret was printed");
    }

    #[test]
    fn delivery_cache_and_mesh_settings_are_checked() {
        let cache = "[cache.blobs]\ndir = \"/var/cache/berth\"\nmax_bytes = \"1GiB\"\n";
        let mesh =
            "[mesh]\nlisten = \"127.0.0.1:0\"\nca_file = \"ca.pem\"\ncert_file = \"c.pem\"\nkey_file = \"k.pem\"\n";
        let refused = [
            ("[storage]\ndelivery = \"cache\"\n".to_owned(), "storage.delivery"),
            (
                "[[storage.delivery_rules]]\nrepositories = \"base/**\"\ndelivery = \"cache\"\n".to_owned(),
                "storage.delivery_rules[0].delivery",
            ),
            (
                format!("{cache}[[storage.delivery_rules]]\nrepositories = \"ml/**\"\ndelivery = \"redirect\"\n"),
                "storage.delivery_rules[0].delivery",
            ),
            ("[storage]\nredirect_above = \"1GiB\"\n".to_owned(), "storage.delivery"),
            (
                format!("{cache}[[storage.delivery_rules]]\nrepositories = \"team//app\"\ndelivery = \"cache\"\n"),
                "storage.delivery_rules[0].repositories",
            ),
            ("[cache.blobs]\ndir = \"/c\"\nmax_bytes = 1000\n".to_owned(), "cache.blobs.max_bytes"),
            (mesh.to_owned(), "mesh"),
            (format!("{cache}{}", mesh.replace("127.0.0.1:0", "0.0.0.0:5443")), "mesh.advertise"),
            (format!("{cache}{mesh}advertise = \"no-port\"\n"), "mesh.advertise"),
            (format!("{cache}{mesh}advertise = \"[::1\"\n"), "mesh.advertise"),
            (format!("{cache}{mesh}server_name = \"not a name\"\n"), "mesh.server_name"),
            (format!("{cache}{mesh}heartbeat = \"5s\"\nmember_ttl = \"6s\"\n"), "mesh.member_ttl"),
            (format!("{cache}{mesh}idle_timeout = \"0s\"\n"), "mesh.idle_timeout"),
        ];
        for (text, key) in refused {
            let c = match load_str(&text, &[]) {
                Ok(c) => c,
                Err(e) => panic!("{text}: {e}"),
            };
            let err = c.validate().err().unwrap_or_else(|| panic!("accepted: {text}")).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let ok = format!(
            "[storage]\nbackend = \"s3\"\ndelivery = \"cache\"\nredirect_above = \"4GiB\"\n[storage.s3]\nbucket = \"b\"\n\
             [[storage.delivery_rules]]\nrepositories = \"ml/**\"\ndelivery = \"redirect\"\n{cache}{}advertise = \"[fd00::7]:5443\"\n",
            mesh.replace("127.0.0.1:0", "[::]:5443")
        );
        let c = load_str(&ok, &[]).unwrap();
        c.validate().unwrap();
        assert_eq!(c.mesh.as_ref().and_then(|m| m.advertise.as_deref()), Some("[fd00::7]:5443"));
        assert_eq!(split_host_port("berth-1.mesh:5443"), Some(("berth-1.mesh", 5443)));
        assert_eq!(split_host_port("[fd00::7]:5443"), Some(("fd00::7", 5443)));
        assert_eq!(split_host_port("fd00::7:5443"), None);
        assert_eq!(split_host_port("host:0"), None);
    }

    #[cfg(feature = "mirror")]
    #[test]
    fn mirror_upstreams_are_checked() {
        let up = |extra: &str| {
            format!("[[mirror.upstreams]]\nname = \"hub\"\nprefix = \"docker.io\"\nurl = \"docker.io\"\n{extra}")
        };
        let refused = [
            (up("username = \"u\"\n"), "mirror.upstreams[0].password"),
            (up("tag_ttl = \"0s\"\n"), "mirror.upstreams[0].tag_ttl"),
            (up("fill_wait = \"0s\"\n"), "mirror.upstreams[0].fill_wait"),
            (up("").replace("\"docker.io\"\nurl", "\"/x\"\nurl"), "mirror.upstreams[0].prefix"),
            (up("fill_wait = \"2h\"\n"), "mirror.upstreams[0].fill_wait"),
            (up("sync = { repositories = [] }\n"), "mirror.upstreams[0].sync.repositories"),
            (up("sync = { repositories = [\"Team/A\"] }\n"), "mirror.upstreams[0].sync.repositories"),
            (up("sync = { repositories = [\"a\"], tags = [\"a b\"] }\n"), "mirror.upstreams[0].sync.tags"),
            (up("sync = { repositories = [\"a\"], newest = 0 }\n"), "mirror.upstreams[0].sync.newest"),
            (up("sync = { repositories = [\"a\"], platforms = [\"linux\"] }\n"), "mirror.upstreams[0].sync.platforms"),
            (up("sync = { repositories = [\"a\"], interval = \"0s\" }\n"), "mirror.upstreams[0].sync.interval"),
            (up("idle_timeout = \"0s\"\n"), "mirror.upstreams[0].idle_timeout"),
            (up("remote_prefix = \"Bad//x\"\n"), "mirror.upstreams[0].remote_prefix"),
            (up("").replace("prefix = \"docker.io\"", "prefix = \"/x\""), "mirror.upstreams[0].prefix"),
            (up("").replace("url = \"docker.io\"", "url = \"ftp://x\""), "mirror.upstreams[0].url"),
            (up("").replace("url = \"docker.io\"", "url = \"https://u@h\""), "mirror.upstreams[0].url"),
            (up("").replace("name = \"hub\"", "name = \"a b\""), "mirror.upstreams[0].name"),
            (
                format!(
                    "{}{}",
                    up(""),
                    up("").replace("docker.io\"\nurl", "docker.io/library\"\nurl").replace("\"hub\"", "\"lib\"")
                ),
                "overlap",
            ),
            (
                format!("{}{}", up(""), up("").replace("prefix = \"docker.io\"", "prefix = \"ghcr.io\"")),
                "names two upstreams",
            ),
            (
                format!(
                    "{}{}",
                    up("").replace("prefix = \"docker.io\"", "prefix = \"\""),
                    up("").replace("prefix = \"docker.io\"", "prefix = \"\"").replace("\"hub\"", "\"hub2\"")
                ),
                "overlap",
            ),
        ];
        for (text, key) in refused {
            let c = match load_str(&text, &[]) {
                Ok(c) => c,
                Err(e) => panic!("{text}: {e}"),
            };
            let err = c.validate().err().unwrap_or_else(|| panic!("accepted: {text}")).to_string();
            assert!(err.contains(key), "{text}: {err}");
        }
        let ok = format!(
            "{}{}",
            up("username = \"mirror\"\npassword = \"s\"\ntag_ttl = \"10m\"\n"),
            "[[mirror.upstreams]]\nname = \"ghcr\"\nprefix = \"mirror/ghcr\"\nurl = \"https://ghcr.io\"\nremote_prefix = \"org\"\n"
        );
        let c = load_str(&ok, &[]).unwrap();
        c.validate().unwrap();
        // A root upstream (every name no prefix matches) beside a prefixed one.
        let rooted = load_str(&ok.replacen("prefix = \"docker.io\"", "prefix = \"\"", 1), &[]).unwrap();
        rooted.validate().unwrap();
        assert_eq!(c.mirror.upstreams.len(), 2);
        assert_eq!(c.mirror.upstreams[0].tag_ttl.0, Duration::from_secs(600));
        assert_eq!(c.mirror.upstreams[1].tag_ttl.0, Duration::from_secs(300));
        assert_eq!(c.mirror.upstreams[1].fill_wait.0, Duration::from_secs(600));
    }

    #[test]
    fn redacted_output_roundtrips() {
        let c = load(None, Vec::new()).unwrap();
        let text = c.to_redacted_toml();
        let again = load_str(&text, &[]).unwrap();
        assert_eq!(again.to_redacted_toml(), text);
    }
}
