//! Request rate limits shared by the fleet: one GCRA budget per caller and
//! class of request (reads, writes, logins), kept in the shared state (Redis
//! in a fleet, memory in the embedded shape), one round trip per request.
//! Callers are keyed by identity, anonymous ones by client address; the
//! address comes from `X-Forwarded-For` / `Forwarded` only when the direct
//! peer is a trusted proxy. Overrides set other budgets for repository
//! patterns, users or groups. When the shared state cannot be asked, the
//! limiter lets requests through or refuses them, as configured, and says
//! so once in the log.

use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use berth_state::SharedState;
use serde::{Deserialize, Serialize};

use crate::auth::policy::glob_match;
use crate::auth::Identity;

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

/// The outcome of asking the limiter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    /// Over budget: try again after this long.
    Limited(Duration),
    /// The shared state is down and the limiter fails closed.
    Unavailable,
}

/// The limiter of one replica.
#[derive(Debug, Clone)]
pub struct RateLimiter {
    state: Arc<dyn SharedState>,
    config: Arc<RateLimitConfig>,
    warned: Arc<AtomicBool>,
}

impl RateLimiter {
    pub fn new(state: Arc<dyn SharedState>, config: RateLimitConfig) -> RateLimiter {
        RateLimiter { state, config: Arc::new(config), warned: Arc::default() }
    }

    fn budget(&self, class: Class, identity: &Identity, repo: Option<&str>) -> (Budget, String) {
        for (i, o) in self.config.overrides.iter().enumerate() {
            let repo_ok = match (&o.pattern, repo) {
                (None, _) => true,
                (Some(p), Some(r)) => glob_match(p, r),
                (Some(_), None) => false,
            };
            let who_ok = (o.users.is_empty() && o.groups.is_empty())
                || identity.subject.as_ref().is_some_and(|s| o.users.contains(s))
                || identity.groups.iter().any(|g| o.groups.contains(g));
            let budget = match class {
                Class::Read => o.reads,
                Class::Write => o.writes,
                Class::Auth => o.auth,
            };
            if let (true, true, Some(b)) = (repo_ok, who_ok, budget) {
                return (b, format!("o{i}"));
            }
        }
        let b = match class {
            Class::Read => self.config.reads,
            Class::Write => self.config.writes,
            Class::Auth => self.config.auth,
        };
        (b, "d".into())
    }

    /// Count one request.
    pub async fn check(
        &self,
        class: Class,
        identity: &Identity,
        client: Option<IpAddr>,
        repo: Option<&str>,
    ) -> Verdict {
        if !self.config.enabled {
            return Verdict::Allow;
        }
        let (budget, rule) = self.budget(class, identity, repo);
        let who = match (&identity.subject, client) {
            (Some(s), _) => format!("u:{s}"),
            (None, Some(ip)) => format!("ip:{ip}"),
            (None, None) => "ip:unknown".into(),
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
                crate::metrics::inc(if self.config.fail_open {
                    &m.rate_limit_failed_open
                } else {
                    &m.rate_limit_failed_closed
                });
                if !self.warned.swap(true, Ordering::Relaxed) {
                    tracing::error!(
                        error = %e,
                        fail_open = self.config.fail_open,
                        "rate limiter cannot reach shared state; requests are {} until it can",
                        if self.config.fail_open { "let through" } else { "refused" }
                    );
                }
                if self.config.fail_open {
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

/// An address range of trusted proxies, `10.0.0.0/8` or a single address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    net: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Cidr, String> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let net: IpAddr = addr.parse().map_err(|_| format!("{s:?} is not an address or CIDR range"))?;
        if let IpAddr::V6(v6) = net {
            if v6.to_ipv4_mapped().is_some() {
                return Err(format!("{s:?}: write IPv4 ranges in IPv4 form"));
            }
        }
        let max = if net.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            Some(p) => p.parse::<u8>().ok().filter(|p| *p <= max).ok_or_else(|| format!("{s:?}: bad prefix"))?,
            None => max,
        };
        Ok(Cidr { net, prefix })
    }
}

impl Cidr {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let norm = |ip: IpAddr| match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
            v4 => v4,
        };
        match (norm(self.net), norm(ip)) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = if self.prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(self.prefix)) };
                (u32::from(n) & m) == (u32::from(a) & m)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = if self.prefix == 0 { 0 } else { u128::MAX << (128 - u32::from(self.prefix)) };
                (u128::from(n) & m) == (u128::from(a) & m)
            }
            _ => false,
        }
    }
}

/// The client's address: the direct peer, or, when the peer is a trusted
/// proxy, the nearest address in `X-Forwarded-For` (or `Forwarded: for=`)
/// that is not itself a trusted proxy.
pub fn client_address(peer: Option<IpAddr>, headers: &http::HeaderMap, trusted: &[Cidr]) -> Option<IpAddr> {
    let peer = peer?;
    let is_trusted = |ip: IpAddr| trusted.iter().any(|c| c.contains(ip));
    if !is_trusted(peer) {
        return Some(peer);
    }
    let mut chain: Vec<IpAddr> = Vec::new();
    for value in headers.get_all("x-forwarded-for") {
        let Ok(text) = value.to_str() else { continue };
        chain.extend(text.split(',').filter_map(|a| a.trim().parse::<IpAddr>().ok()));
    }
    if chain.is_empty() {
        for value in headers.get_all("forwarded") {
            let Ok(text) = value.to_str() else { continue };
            for part in text.split([',', ';']) {
                if let Some(v) = part.trim().strip_prefix("for=").or_else(|| part.trim().strip_prefix("For=")) {
                    let v = v.trim_matches('"');
                    let v = v.strip_prefix('[').and_then(|x| x.split(']').next()).unwrap_or(v);
                    let v = if v.matches(':').count() == 1 { v.split(':').next().unwrap_or(v) } else { v };
                    if let Ok(ip) = v.parse() {
                        chain.push(ip);
                    }
                }
            }
        }
    }
    chain.into_iter().rev().find(|ip| !is_trusted(*ip)).or(Some(peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        for (k, v) in pairs {
            h.append(http::HeaderName::from_bytes(k.as_bytes()).unwrap(), v.parse().unwrap());
        }
        h
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.0/8".parse().unwrap();
        assert!(c.contains("10.1.2.3".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(c.contains("::ffff:10.9.9.9".parse().unwrap()));
        let one: Cidr = "127.0.0.1".parse().unwrap();
        assert!(one.contains("127.0.0.1".parse().unwrap()) && !one.contains("127.0.0.2".parse().unwrap()));
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()) && !v6.contains("fe80::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("8.8.8.8".parse().unwrap()));
        for bad in ["10.0.0.0/33", "nope", "1.2.3.4/x", "::/129", "::ffff:10.0.0.0/104"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_addresses_only_from_trusted_proxies() {
        let lb: IpAddr = "10.0.0.5".parse().unwrap();
        let trusted: Vec<Cidr> = vec!["10.0.0.0/24".parse().unwrap()];
        let spoofed = headers(&[("x-forwarded-for", "1.2.3.4")]);
        let outsider: IpAddr = "203.0.113.9".parse().unwrap();
        // An untrusted peer's header is ignored.
        assert_eq!(client_address(Some(outsider), &spoofed, &trusted), Some(outsider));
        // Behind the trusted proxy: the nearest untrusted hop.
        let chain = headers(&[("x-forwarded-for", "1.2.3.4, 198.51.100.7, 10.0.0.9")]);
        assert_eq!(client_address(Some(lb), &chain, &trusted), Some("198.51.100.7".parse().unwrap()));
        let fwd = headers(&[("forwarded", "for=\"[2001:db8::1]:4711\";proto=https")]);
        assert_eq!(client_address(Some(lb), &fwd, &trusted), Some("2001:db8::1".parse().unwrap()));
        let fwd4 = headers(&[("forwarded", "for=192.0.2.60:1234")]);
        assert_eq!(client_address(Some(lb), &fwd4, &trusted), Some("192.0.2.60".parse().unwrap()));
        // Garbage falls back to the peer.
        assert_eq!(client_address(Some(lb), &headers(&[("x-forwarded-for", "junk")]), &trusted), Some(lb));
    }
}
