//! How blob bytes reach a client, per repository: streamed through the
//! replica (`Proxy`), a redirect to a presigned object-store URL
//! (`Redirect`), or from the replica's blob cache (`Cache`), optionally
//! redirecting blobs above a size. The longest matching repository glob
//! decides, as for access rules; the default applies elsewhere.

use crate::glob::Glob;

/// The way of delivering a blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeliveryMode {
    Proxy,
    Redirect,
    Cache,
}

/// What applies to one repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    pub mode: DeliveryMode,
    /// Blobs larger than this are redirected whatever the mode.
    pub redirect_above: Option<u64>,
}

impl Delivery {
    pub const PROXY: Delivery = Delivery { mode: DeliveryMode::Proxy, redirect_above: None };
}

/// The default and the per-glob rules.
#[derive(Debug, Clone)]
pub struct DeliveryRules {
    default: Delivery,
    /// (pattern length, glob, delivery), longest pattern first.
    rules: Vec<(usize, Glob, Delivery)>,
}

impl Default for DeliveryRules {
    fn default() -> Self {
        DeliveryRules::new(Delivery::PROXY)
    }
}

impl DeliveryRules {
    pub fn new(default: Delivery) -> DeliveryRules {
        DeliveryRules { default, rules: Vec::new() }
    }

    /// Add a rule for the repositories `pattern` matches.
    pub fn with_rule(mut self, pattern: &str, delivery: Delivery) -> DeliveryRules {
        self.rules.push((pattern.len(), Glob::new(pattern), delivery));
        // Stable: of two patterns of one length, the first written wins.
        self.rules.sort_by_key(|r| std::cmp::Reverse(r.0));
        self
    }

    /// The delivery for `repo`.
    pub fn for_repo(&self, repo: &str) -> Delivery {
        self.rules.iter().find(|(_, g, _)| g.matches(repo)).map(|(_, _, d)| *d).unwrap_or(self.default)
    }

    /// Whether any repository may be served from the blob cache.
    pub fn uses_cache(&self) -> bool {
        self.default.mode == DeliveryMode::Cache || self.rules.iter().any(|(_, _, d)| d.mode == DeliveryMode::Cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_longest_matching_glob_decides() {
        let cache = Delivery { mode: DeliveryMode::Cache, redirect_above: None };
        let redirect = Delivery { mode: DeliveryMode::Redirect, redirect_above: None };
        let big = Delivery { mode: DeliveryMode::Cache, redirect_above: Some(1 << 30) };
        let rules = DeliveryRules::new(Delivery::PROXY)
            .with_rule("base/**", cache)
            .with_rule("ml/**", redirect)
            .with_rule("base/huge/*", big);
        assert_eq!(rules.for_repo("base/alpine"), cache);
        assert_eq!(rules.for_repo("base/huge/model"), big);
        assert_eq!(rules.for_repo("ml/weights"), redirect);
        assert_eq!(rules.for_repo("team/app"), Delivery::PROXY);
        assert!(rules.uses_cache());
        assert!(!DeliveryRules::default().uses_cache());
    }
}
