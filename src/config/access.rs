//! `[access]` and `[rate_limit]`: plain data. `auth::policy` and
//! `ratelimit` turn them into the checked, ready forms.
//!
//! Users and groups are named as `auth::identity::NameRef` parses them: a
//! bare name is a local (htpasswd or LDAP) user or group; `htpasswd:`,
//! `ldap:`, `cert:` and `issuer:<id>:` name the others.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A permission on a repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Perm {
    /// Pull manifests, blobs, tags and referrers.
    Read,
    /// Push new blobs, manifests and tags.
    Create,
    /// Move an existing tag to another manifest.
    Update,
    /// Delete manifests, tags and blob links.
    Delete,
}

/// Who gets which actions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Grant {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub actions: Vec<Perm>,
}

/// The policies of repositories matching `pattern`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RepoRule {
    pub pattern: String,
    pub policies: Vec<Grant>,
    /// For any other authenticated identity (the global default when unset).
    pub default_policy: Option<Vec<Perm>>,
    /// For anonymous callers (the global anonymous policy when unset).
    pub anonymous_policy: Option<Vec<Perm>>,
}

/// The whole access configuration (`[access]`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AccessConfig {
    pub repositories: Vec<RepoRule>,
    pub default_policy: Vec<Perm>,
    pub anonymous_policy: Vec<Perm>,
    pub admin_policy: Grant,
    /// Group name (bare) -> members, in addition to groups the identity's
    /// source asserts.
    pub groups: BTreeMap<String, Vec<String>>,
}

/// A budget: a sustained rate and a burst.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    pub per_second: f64,
    pub burst: u32,
}

/// Other budgets for some repositories, users or groups.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Override {
    /// Repository glob; unset matches every repository.
    pub pattern: Option<String>,
    /// Users and groups it applies to; both empty means everyone.
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub reads: Option<Budget>,
    pub writes: Option<Budget>,
    pub auth: Option<Budget>,
}

/// `[rate_limit]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    pub enabled: bool,
    /// When the shared state cannot be asked: true lets requests through,
    /// false answers 503.
    pub fail_open: bool,
    pub reads: Budget,
    pub writes: Budget,
    pub auth: Budget,
    /// The first matching override sets the budgets it names.
    pub overrides: Vec<Override>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            enabled: false,
            fail_open: true,
            reads: Budget { per_second: 200.0, burst: 400 },
            writes: Budget { per_second: 50.0, burst: 100 },
            auth: Budget { per_second: 5.0, burst: 20 },
            overrides: Vec::new(),
        }
    }
}

impl RateLimitConfig {
    /// The budgets' numbers (names are checked where they are resolved).
    pub fn validate(&self) -> Result<(), String> {
        let budgets = [Some(self.reads), Some(self.writes), Some(self.auth)]
            .into_iter()
            .chain(self.overrides.iter().flat_map(|o| [o.reads, o.writes, o.auth]))
            .flatten();
        for b in budgets {
            // Bounded so the per-request interval (1 / per_second) and
            // interval x burst stay well inside Duration.
            if !(0.001..=1e9).contains(&b.per_second) || b.burst == 0 {
                return Err("every budget needs per_second between 0.001 and 1e9, and burst >= 1".into());
            }
        }
        Ok(())
    }
}

/// Check a repository pattern's shape.
pub fn check_pattern(p: &str) -> Result<(), String> {
    if p.is_empty() || p.starts_with('/') || p.ends_with('/') || p.contains("//") {
        return Err(format!("pattern {p:?} is not a repository pattern"));
    }
    if p.contains("***") {
        return Err(format!("pattern {p:?}: use * or **"));
    }
    Ok(())
}
