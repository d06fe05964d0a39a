//! Request rate limits shared by the fleet: one GCRA budget per caller and
//! class of request (reads, writes, logins), kept in the shared state (Redis
//! in a fleet, memory in the embedded shape), one round trip per request.
//! Callers are keyed by qualified subject, anonymous ones by the client
//! address the connection facts resolved (`conn`). Overrides set other budgets for repository
//! patterns, users or groups. When the shared state cannot be asked, the
//! limiter lets requests through or refuses them, as configured, and says
//! so once in the log.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_state::SharedState;

use crate::auth::policy::Glob;
use crate::auth::{Identity, NameKind, NameRef};
pub use crate::config::access::{Budget, RateLimitConfig};

/// What a request is, for budgeting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Read,
    Write,
    /// The token endpoint and other logins.
    Auth,
}

impl Class {
    fn name(self) -> &'static str {
        match self {
            Class::Read => "read",
            Class::Write => "write",
            Class::Auth => "auth",
        }
    }
}

/// The outcome of asking the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over budget: try again after this long.
    Limited(Duration),
    /// The shared state is down and the limiter fails closed.
    Unavailable,
}

/// One override, with its names and pattern resolved.
#[derive(Debug, Clone)]
struct Override {
    pattern: Option<Glob>,
    users: Vec<NameRef>,
    groups: Vec<NameRef>,
    reads: Option<Budget>,
    writes: Option<Budget>,
    auth: Option<Budget>,
}

/// `[rate_limit]`, checked: budgets in range, patterns usable, every user
/// and group name unambiguous. Group names in overrides are the groups an
/// identity's source asserts.
#[derive(Debug, Clone)]
pub struct RateLimits {
    config: RateLimitConfig,
    overrides: Vec<Override>,
}

impl RateLimits {
    /// `issuers` are the ids of the configured external token issuers.
    pub fn new(config: &RateLimitConfig, issuers: &[&str]) -> Result<RateLimits, String> {
        config.validate()?;
        let mut overrides = Vec::new();
        for (i, o) in config.overrides.iter().enumerate() {
            let names = |list: &[String], kind, key: &str| {
                list.iter()
                    .map(|n| NameRef::parse(n, kind, issuers).map_err(|e| format!("overrides[{i}].{key}: {e}")))
                    .collect::<Result<Vec<_>, _>>()
            };
            if let Some(p) = &o.pattern {
                crate::auth::policy::check_pattern(p).map_err(|e| format!("overrides[{i}].{e}"))?;
            }
            overrides.push(Override {
                pattern: o.pattern.as_deref().map(Glob::new),
                users: names(&o.users, NameKind::User, "users")?,
                groups: names(&o.groups, NameKind::Group, "groups")?,
                reads: o.reads,
                writes: o.writes,
                auth: o.auth,
            });
        }
        Ok(RateLimits { config: config.clone(), overrides })
    }
}

/// The limiter of one replica.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    state: Arc<dyn SharedState>,
    limits: Arc<RateLimits>,
    warned: Arc<AtomicBool>,
}

impl RateLimiter {
    pub fn new(state: Arc<dyn SharedState>, limits: RateLimits) -> RateLimiter {
        RateLimiter { state, limits: Arc::new(limits), warned: Arc::default() }
    }

    fn budget(&self, class: Class, identity: &Identity, repo: Option<&str>) -> (Budget, String) {
        for (i, o) in self.limits.overrides.iter().enumerate() {
            let repo_ok = match (&o.pattern, repo) {
                (None, _) => true,
                (Some(p), Some(r)) => p.matches(r),
                (Some(_), None) => false,
            };
            let who_ok = (o.users.is_empty() && o.groups.is_empty())
                || o.users.iter().any(|u| u.is_subject_of(identity))
                || o.groups.iter().any(|g| g.is_group_of(identity));
            let budget = match class {
                Class::Read => o.reads,
                Class::Write => o.writes,
                Class::Auth => o.auth,
            };
            if let (true, true, Some(b)) = (repo_ok, who_ok, budget) {
                return (b, format!("o{i}"));
            }
        }
        let config = &self.limits.config;
        let b = match class {
            Class::Read => config.reads,
            Class::Write => config.writes,
            Class::Auth => config.auth,
        };
        (b, "d".into())
    }

    /// Count one request: by the identity's qualified subject, or for
    /// anonymous callers by the resolved client address.
    pub async fn check(&self, class: Class, identity: &Identity, client: IpAddr, repo: Option<&str>) -> Verdict {
        if !self.limits.config.enabled {
            return Verdict::Allow;
        }
        let (budget, rule) = self.budget(class, identity, repo);
        let who = match identity.subject() {
            Some(s) => format!("u:{s}"),
            None => format!("ip:{client}"),
        };
        let key = format!("rl:{}:{rule}:{who}", class.name());
        let interval = Duration::from_secs_f64(1.0 / budget.per_second);
        match self.state.rate_limit(&key, interval, budget.burst).await {
            Ok(None) => {
                self.recovered();
                Verdict::Allow
            }
            Ok(Some(wait)) => {
                self.recovered();
                let m = crate::metrics::get();
                crate::metrics::inc(match class {
                    Class::Read => &m.rate_limited_read,
                    Class::Write => &m.rate_limited_write,
                    Class::Auth => &m.rate_limited_auth,
                });
                Verdict::Limited(wait)
            }
            Err(e) => {
                let m = crate::metrics::get();
                m.rate_limit_backend_down.store(1, Ordering::Relaxed);
                crate::metrics::inc(if self.limits.config.fail_open {
                    &m.rate_limit_failed_open
                } else {
                    &m.rate_limit_failed_closed
                });
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        error = %e,
                        fail_open = self.limits.config.fail_open,
                        "rate limiter cannot reach shared state; requests are {} until it can",
                        if self.limits.config.fail_open { "let through" } else { "refused" }
                    );
                }
                if self.limits.config.fail_open {
                    Verdict::Allow
                } else {
                    Verdict::Unavailable
                }
            }
        }
    }

    /// After a successful round trip: the next outage is logged again.
    fn recovered(&self) {
        if self.warned.swap(false, Ordering::Relaxed) {
            crate::metrics::get().rate_limit_backend_down.store(0, Ordering::Relaxed);
            tracing::info!("rate limiter reaches shared state again");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthMethod, Source};
    use crate::config::access::Override as O;

    fn limits(overrides: Vec<O>) -> RateLimits {
        let config = RateLimitConfig { enabled: true, overrides, ..RateLimitConfig::default() };
        RateLimits::new(&config, &["sso"]).unwrap()
    }

    #[tokio::test]
    async fn overrides_name_identities_by_source() {
        let fast = Budget { per_second: 1000.0, burst: 1000 };
        let l = limits(vec![O { users: vec!["ci".into()], reads: Some(fast), ..O::default() }]);
        let limiter = RateLimiter::new(Arc::new(berth_state::MemoryState::new()), l);
        let local = Identity::for_tests(Source::Htpasswd, "ci", &[], AuthMethod::Htpasswd);
        let cert = Identity::for_tests(Source::Certificate, "ci", &[], AuthMethod::Mtls);
        assert_eq!(limiter.budget(Class::Read, &local, None).0, fast);
        assert_ne!(limiter.budget(Class::Read, &cert, None).0, fast, "a certificate named ci is not the user ci");
        let sso = Identity::for_tests(Source::Issuer("sso".into()), "ci", &["bots"], AuthMethod::Bearer);
        let l = limits(vec![O { groups: vec!["issuer:sso:bots".into()], reads: Some(fast), ..O::default() }]);
        let limiter = RateLimiter::new(Arc::new(berth_state::MemoryState::new()), l);
        assert_eq!(limiter.budget(Class::Read, &sso, None).0, fast);
        assert_ne!(limiter.budget(Class::Read, &local, None).0, fast);
        // Budgets are kept apart per source: the certificate's requests do
        // not spend the local user's budget.
        let tight = RateLimitConfig {
            enabled: true,
            reads: Budget { per_second: 0.001, burst: 1 },
            ..RateLimitConfig::default()
        };
        let limiter =
            RateLimiter::new(Arc::new(berth_state::MemoryState::new()), RateLimits::new(&tight, &[]).unwrap());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        assert_eq!(limiter.check(Class::Read, &local, ip, None).await, Verdict::Allow);
        assert!(matches!(limiter.check(Class::Read, &local, ip, None).await, Verdict::Limited(_)));
        assert_eq!(limiter.check(Class::Read, &cert, ip, None).await, Verdict::Allow);
    }

    #[test]
    fn ambiguous_names_and_bad_budgets_are_refused() {
        let bad = RateLimitConfig {
            overrides: vec![O { users: vec!["x:y".into()], ..O::default() }],
            ..RateLimitConfig::default()
        };
        assert!(RateLimits::new(&bad, &[]).unwrap_err().contains("overrides[0].users"));
        let bad = RateLimitConfig { reads: Budget { per_second: 0.0, burst: 1 }, ..RateLimitConfig::default() };
        assert!(RateLimits::new(&bad, &[]).is_err());
        let bad = RateLimitConfig {
            overrides: vec![O { pattern: Some("a//b".into()), ..O::default() }],
            ..RateLimitConfig::default()
        };
        assert!(RateLimits::new(&bad, &[]).is_err());
    }
}
