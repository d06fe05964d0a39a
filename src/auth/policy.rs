//! Access-control policies: which identity may do what to which repository.
//!
//! Repository patterns are globs where `*` stays within one path segment and
//! `**` crosses `/`; when several match, the longest pattern wins, and only
//! its rule applies. A rule grants actions to listed users and groups, with
//! its own (or the global) policy for any other authenticated identity and
//! for anonymous callers. The admin policy applies to every repository.
//! Groups come from the identity (LDAP, certificate, token) and from the
//! `groups` table of the configuration.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};

use super::Identity;

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
    /// Group name -> members, in addition to groups the identity brings.
    pub groups: BTreeMap<String, Vec<String>>,
}

/// A checked, ready policy.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    config: AccessConfig,
    /// Indexes into `config.repositories`, longest pattern first.
    order: Vec<usize>,
}

/// Does `pattern` match `name`? `*` within a segment, `**` across them.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(b'*') if p.get(1) == Some(&b'*') => {
                let rest = &p[2..];
                // `**/` may also match nothing at all (`a/**/b` matches `a/b`).
                if rest.first() == Some(&b'/') && go(&rest[1..], n) {
                    return true;
                }
                (0..=n.len()).any(|i| go(rest, &n[i..]))
            }
            Some(b'*') => {
                let rest = &p[1..];
                let mut i = 0;
                loop {
                    if go(rest, &n[i..]) {
                        return true;
                    }
                    if i == n.len() || n[i] == b'/' {
                        return false;
                    }
                    i += 1;
                }
            }
            Some(c) => n.first() == Some(c) && go(&p[1..], &n[1..]),
        }
    }
    go(pattern.as_bytes(), name.as_bytes())
}

impl AccessPolicy {
    /// Check a configuration: patterns must be usable and unique.
    pub fn new(config: AccessConfig) -> Result<AccessPolicy, String> {
        let mut seen = HashSet::new();
        for (i, rule) in config.repositories.iter().enumerate() {
            let p = &rule.pattern;
            if p.is_empty() || p.starts_with('/') || p.ends_with('/') || p.contains("//") {
                return Err(format!("repositories[{i}].pattern {p:?} is not a repository pattern"));
            }
            if p.contains("***") {
                return Err(format!("repositories[{i}].pattern {p:?}: use * or **"));
            }
            if !seen.insert(p.clone()) {
                return Err(format!("repositories[{i}].pattern {p:?} appears twice"));
            }
        }
        let mut order: Vec<usize> = (0..config.repositories.len()).collect();
        // Longest pattern first; ties keep the order of the file.
        order.sort_by(|a, b| config.repositories[*b].pattern.len().cmp(&config.repositories[*a].pattern.len()));
        Ok(AccessPolicy { config, order })
    }

    fn rule_for(&self, repo: &str) -> Option<&RepoRule> {
        self.order.iter().map(|i| &self.config.repositories[*i]).find(|r| glob_match(&r.pattern, repo))
    }

    fn in_group(&self, identity: &Identity, group: &str) -> bool {
        identity.groups.iter().any(|g| g == group)
            || identity
                .subject
                .as_ref()
                .is_some_and(|s| self.config.groups.get(group).is_some_and(|members| members.contains(s)))
    }

    fn grant_applies(&self, grant: &Grant, identity: &Identity) -> bool {
        let Some(subject) = &identity.subject else { return false };
        grant.users.iter().any(|u| u == subject) || grant.groups.iter().any(|g| self.in_group(identity, g))
    }

    /// Whether `identity` may `perm` on `repo`.
    pub fn allows(&self, identity: &Identity, repo: &str, perm: Perm) -> bool {
        let admin = &self.config.admin_policy;
        if admin.actions.contains(&perm) && self.grant_applies(admin, identity) {
            return true;
        }
        let rule = self.rule_for(repo);
        if identity.is_anonymous() {
            let anonymous = rule.and_then(|r| r.anonymous_policy.as_ref()).unwrap_or(&self.config.anonymous_policy);
            return anonymous.contains(&perm);
        }
        if let Some(rule) = rule {
            if rule.policies.iter().any(|g| g.actions.contains(&perm) && self.grant_applies(g, identity)) {
                return true;
            }
        }
        let default = rule.and_then(|r| r.default_policy.as_ref()).unwrap_or(&self.config.default_policy);
        default.contains(&perm)
    }

    /// Whether anonymous callers may do anything anywhere (then `/v2/` does
    /// not demand credentials).
    pub fn anonymous_may_read_something(&self) -> bool {
        self.config.anonymous_policy.contains(&Perm::Read)
            || self
                .config
                .repositories
                .iter()
                .any(|r| r.anonymous_policy.as_ref().is_some_and(|p| p.contains(&Perm::Read)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::AuthMethod;

    fn who(subject: Option<&str>, groups: &[&str]) -> Identity {
        Identity {
            subject: subject.map(str::to_owned),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            method: AuthMethod::Htpasswd,
            ..Identity::anonymous()
        }
    }

    #[test]
    fn globs() {
        for (p, n, want) in [
            ("team/*", "team/app", true),
            ("team/*", "team/app/sub", false),
            ("team/**", "team/app/sub", true),
            ("team/**", "team", false),
            ("**", "anything/at/all", true),
            ("a/**/b", "a/b", true),
            ("a/**/b", "a/x/y/b", true),
            ("a/*/b", "a/x/y/b", false),
            ("*-prod", "web-prod", true),
            ("*-prod", "team/web-prod", false),
            ("exact/name", "exact/name", true),
            ("exact/name", "exact/names", false),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn longest_pattern_wins_and_groups_apply() {
        use Perm::*;
        let config = AccessConfig {
            repositories: vec![
                RepoRule {
                    pattern: "**".into(),
                    policies: vec![Grant { users: vec![], groups: vec!["devs".into()], actions: vec![Read, Create] }],
                    ..RepoRule::default()
                },
                RepoRule {
                    pattern: "team/**".into(),
                    policies: vec![Grant {
                        users: vec!["alice".into()],
                        groups: vec![],
                        actions: vec![Read, Create, Update],
                    }],
                    default_policy: Some(vec![]),
                    anonymous_policy: Some(vec![Read]),
                },
            ],
            default_policy: vec![Read],
            anonymous_policy: vec![],
            admin_policy: Grant {
                users: vec!["root".into()],
                groups: vec!["admins".into()],
                actions: vec![Read, Create, Update, Delete],
            },
            groups: BTreeMap::from([("devs".into(), vec!["bob".into()])]),
        };
        let p = AccessPolicy::new(config).unwrap();
        let (alice, bob, carol, anon) =
            (who(Some("alice"), &[]), who(Some("bob"), &[]), who(Some("carol"), &[]), Identity::anonymous());
        assert!(p.allows(&alice, "team/app", Update));
        assert!(!p.allows(&alice, "team/app", Delete));
        // The longer pattern wins: bob's group grant on ** does not apply under team/.
        assert!(!p.allows(&bob, "team/app", Read));
        assert!(p.allows(&bob, "other/app", Create));
        // A group from the identity (LDAP, certificate) works like a configured one.
        assert!(p.allows(&who(Some("dave"), &["devs"]), "other/app", Create));
        assert!(p.allows(&carol, "other/app", Read) && !p.allows(&carol, "other/app", Create));
        assert!(!p.allows(&carol, "team/app", Read), "team/** overrides the default");
        assert!(p.allows(&anon, "team/app", Read) && !p.allows(&anon, "other/app", Read));
        assert!(p.allows(&who(Some("root"), &[]), "team/app", Delete));
        assert!(p.allows(&who(Some("eve"), &["admins"]), "x", Delete));
        assert!(p.anonymous_may_read_something());
    }

    #[test]
    fn bad_patterns_are_refused() {
        for bad in ["", "/a", "a/", "a//b", "a/***"] {
            let config = AccessConfig {
                repositories: vec![RepoRule { pattern: bad.into(), ..RepoRule::default() }],
                ..AccessConfig::default()
            };
            assert!(AccessPolicy::new(config).is_err(), "{bad:?}");
        }
        let twice = AccessConfig {
            repositories: vec![
                RepoRule { pattern: "a".into(), ..RepoRule::default() },
                RepoRule { pattern: "a".into(), ..RepoRule::default() },
            ],
            ..AccessConfig::default()
        };
        assert!(AccessPolicy::new(twice).is_err());
    }
}
