//! Access-control policies: which identity may do what to which repository.
//!
//! Repository patterns are globs where `*` stays within one path segment and
//! `**` crosses `/`; when several match, the longest pattern wins, and only
//! its rule applies. A rule grants actions to listed users and groups, with
//! its own (or the global) policy for any other authenticated identity and
//! for anonymous callers. The admin policy applies to every repository.
//! Users and groups are [`NameRef`]s: a bare name is local (htpasswd or
//! LDAP, and the `[access.groups]` table); other sources are named with
//! their prefix. Globs are matched in time linear in pattern x name.

use std::collections::{BTreeMap, HashSet};

use super::identity::{NameKind, NameRef};
use super::Identity;
pub use crate::config::access::{AccessConfig, Perm};

pub use crate::glob::Glob;

/// Does `pattern` match `name`? `*` within a segment, `**` across them.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    Glob::new(pattern).matches(name)
}

pub use crate::config::access::check_pattern;

#[derive(Debug, Clone)]
struct Grant {
    users: Vec<NameRef>,
    groups: Vec<NameRef>,
    actions: Vec<Perm>,
}

#[derive(Debug, Clone)]
struct Rule {
    glob: Glob,
    policies: Vec<Grant>,
    default_policy: Option<Vec<Perm>>,
    anonymous_policy: Option<Vec<Perm>>,
}

/// A checked, ready policy.
#[derive(Debug, Clone)]
pub struct AccessPolicy {
    /// Longest pattern first; ties keep the order of the file.
    rules: Vec<Rule>,
    default_policy: Vec<Perm>,
    anonymous_policy: Vec<Perm>,
    admin: Grant,
    /// Bare group name -> members.
    groups: BTreeMap<String, Vec<NameRef>>,
}

/// Parse the users and groups of one grant; errors name the entry.
fn grant(g: &crate::config::access::Grant, at: &str, issuers: &[&str]) -> Result<Grant, String> {
    let names = |list: &[String], kind, key: &str| {
        list.iter()
            .map(|n| NameRef::parse(n, kind, issuers).map_err(|e| format!("{at}.{key}: {e}")))
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Grant {
        users: names(&g.users, NameKind::User, "users")?,
        groups: names(&g.groups, NameKind::Group, "groups")?,
        actions: g.actions.clone(),
    })
}

impl AccessPolicy {
    /// Check a configuration: patterns must be usable and unique, and every
    /// user and group name unambiguous. `issuers` are the ids of the
    /// configured external token issuers.
    pub fn new(config: &AccessConfig, issuers: &[&str]) -> Result<AccessPolicy, String> {
        let mut seen = HashSet::new();
        let mut rules = Vec::new();
        for (i, rule) in config.repositories.iter().enumerate() {
            let at = format!("repositories[{i}]");
            check_pattern(&rule.pattern).map_err(|e| format!("{at}.{e}"))?;
            if !seen.insert(rule.pattern.clone()) {
                return Err(format!("{at}.pattern {:?} appears twice", rule.pattern));
            }
            let policies = rule
                .policies
                .iter()
                .enumerate()
                .map(|(j, g)| grant(g, &format!("{at}.policies[{j}]"), issuers))
                .collect::<Result<_, _>>()?;
            rules.push((
                rule.pattern.len(),
                Rule {
                    glob: Glob::new(&rule.pattern),
                    policies,
                    default_policy: rule.default_policy.clone(),
                    anonymous_policy: rule.anonymous_policy.clone(),
                },
            ));
        }
        // Longest pattern first; a stable sort keeps ties in file order.
        rules.sort_by_key(|r| std::cmp::Reverse(r.0));
        let mut groups = BTreeMap::new();
        for (name, members) in &config.groups {
            if name.is_empty() || name.contains(':') || name.chars().any(char::is_whitespace) {
                return Err(format!("groups.{name:?}: a group of this table has a bare name"));
            }
            let members = members
                .iter()
                .map(|m| NameRef::parse(m, NameKind::User, issuers).map_err(|e| format!("groups.{name}: {e}")))
                .collect::<Result<Vec<_>, _>>()?;
            groups.insert(name.clone(), members);
        }
        Ok(AccessPolicy {
            rules: rules.into_iter().map(|(_, r)| r).collect(),
            default_policy: config.default_policy.clone(),
            anonymous_policy: config.anonymous_policy.clone(),
            admin: grant(&config.admin_policy, "admin_policy", issuers)?,
            groups,
        })
    }

    fn rule_for(&self, repo: &str) -> Option<&Rule> {
        self.rules.iter().find(|r| r.glob.matches(repo))
    }

    /// Whether `identity` is in `group`: a group its source asserts, or a
    /// bare name of the `[access.groups]` table listing it.
    pub fn in_group(&self, identity: &Identity, group: &NameRef) -> bool {
        group.is_group_of(identity)
            || group
                .bare()
                .and_then(|g| self.groups.get(g))
                .is_some_and(|members| members.iter().any(|m| m.is_subject_of(identity)))
    }

    fn grant_applies(&self, grant: &Grant, identity: &Identity) -> bool {
        grant.users.iter().any(|u| u.is_subject_of(identity)) || grant.groups.iter().any(|g| self.in_group(identity, g))
    }

    /// Whether `identity` may `perm` on `repo`.
    pub fn allows(&self, identity: &Identity, repo: &str, perm: Perm) -> bool {
        if self.admin.actions.contains(&perm) && self.grant_applies(&self.admin, identity) {
            return true;
        }
        let rule = self.rule_for(repo);
        if identity.is_anonymous() {
            let anonymous = rule.and_then(|r| r.anonymous_policy.as_ref()).unwrap_or(&self.anonymous_policy);
            return anonymous.contains(&perm);
        }
        if let Some(rule) = rule {
            if rule.policies.iter().any(|g| g.actions.contains(&perm) && self.grant_applies(g, identity)) {
                return true;
            }
        }
        let default = rule.and_then(|r| r.default_policy.as_ref()).unwrap_or(&self.default_policy);
        default.contains(&perm)
    }

    /// Whether anonymous callers may do anything anywhere (then `/v2/` does
    /// not demand credentials).
    pub fn anonymous_may_read_something(&self) -> bool {
        self.anonymous_policy.contains(&Perm::Read)
            || self.rules.iter().any(|r| r.anonymous_policy.as_ref().is_some_and(|p| p.contains(&Perm::Read)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::identity::Source;
    use crate::auth::AuthMethod;
    use crate::config::access::{Grant as G, RepoRule};
    use proptest::prelude::*;

    fn who(subject: &str, groups: &[&str]) -> Identity {
        Identity::for_tests(Source::Htpasswd, subject, groups, AuthMethod::Htpasswd)
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
            ("a/**/b", "a/xb", false),
            ("a/*/b", "a/x/y/b", false),
            ("*-prod", "web-prod", true),
            ("*-prod", "team/web-prod", false),
            ("exact/name", "exact/name", true),
            ("exact/name", "exact/names", false),
            ("a**b", "a/x/b", true),
            ("**/x", "x", true),
            ("**/x", "a/b/x", true),
            ("**/x", "ax", false),
        ] {
            assert_eq!(glob_match(p, n), want, "{p} vs {n}");
        }
    }

    #[test]
    fn matching_work_is_linear_in_pattern_times_name() {
        // Exponential for a backtracking matcher.
        let pattern = "**a**a**a**a**a**a**a**a**a**a**a**a**b";
        let name = "a".repeat(4000);
        let glob = Glob::new(pattern);
        let mut steps = 0;
        assert!(!glob.run(&name, &mut steps));
        let bound = (glob.len() + 1) * (name.len() + 1) * 2;
        assert!(steps <= bound, "{steps} steps for a bound of {bound}");
        let star = Glob::new(&"*a".repeat(200));
        let mut steps = 0;
        assert!(!star.run(&"a".repeat(199), &mut steps));
        assert!(steps <= (star.len() + 1) * 200 * 2);
    }

    /// A pattern of whole segments: literals, `*` inside or alone, `**`.
    fn pattern() -> impl Strategy<Value = String> {
        let segment = prop_oneof!["[ab]{1,3}", "[ab]{0,2}\\*[ab]{0,2}", Just("**".to_owned()), Just("*".to_owned()),];
        proptest::collection::vec(segment, 1..5).prop_map(|s| s.join("/"))
    }

    fn name() -> impl Strategy<Value = String> {
        proptest::collection::vec("[ab]{1,3}", 1..6).prop_map(|s| s.join("/"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        /// The matcher agrees with globset's (`*` never crosses `/`, `**`
        /// as a whole segment does) on patterns of whole segments.
        #[test]
        fn agrees_with_globset(p in pattern(), n in name()) {
            let reference = globset::GlobBuilder::new(&p).literal_separator(true).build().unwrap().compile_matcher();
            prop_assert_eq!(glob_match(&p, &n), reference.is_match(&n), "{} vs {}", p, n);
        }
    }

    #[test]
    fn longest_pattern_wins_and_groups_apply() {
        use Perm::*;
        let config = AccessConfig {
            repositories: vec![
                RepoRule {
                    pattern: "**".into(),
                    policies: vec![G { users: vec![], groups: vec!["devs".into()], actions: vec![Read, Create] }],
                    ..RepoRule::default()
                },
                RepoRule {
                    pattern: "team/**".into(),
                    policies: vec![G {
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
            admin_policy: G {
                users: vec!["root".into()],
                groups: vec!["admins".into()],
                actions: vec![Read, Create, Update, Delete],
            },
            groups: BTreeMap::from([("devs".into(), vec!["bob".into()])]),
        };
        let p = AccessPolicy::new(&config, &[]).unwrap();
        let (alice, bob, carol, anon) = (who("alice", &[]), who("bob", &[]), who("carol", &[]), Identity::anonymous());
        assert!(p.allows(&alice, "team/app", Update));
        assert!(!p.allows(&alice, "team/app", Delete));
        // The longer pattern wins: bob's group grant on ** does not apply under team/.
        assert!(!p.allows(&bob, "team/app", Read));
        assert!(p.allows(&bob, "other/app", Create));
        // A group from the identity's source (LDAP) works like a configured one.
        let dave = Identity::for_tests(Source::Ldap, "dave", &["devs"], AuthMethod::Ldap);
        assert!(p.allows(&dave, "other/app", Create));
        assert!(p.allows(&carol, "other/app", Read) && !p.allows(&carol, "other/app", Create));
        assert!(!p.allows(&carol, "team/app", Read), "team/** overrides the default");
        assert!(p.allows(&anon, "team/app", Read) && !p.allows(&anon, "other/app", Read));
        assert!(p.allows(&who("root", &[]), "team/app", Delete));
        let eve = Identity::for_tests(Source::Ldap, "eve", &["admins"], AuthMethod::Ldap);
        assert!(p.allows(&eve, "x", Delete));
        assert!(p.anonymous_may_read_something());
    }

    #[test]
    fn other_sources_do_not_pass_for_local_names() {
        use Perm::*;
        let config = AccessConfig {
            admin_policy: G {
                users: vec!["root".into(), "cert:ops-robot".into()],
                groups: vec!["admins".into()],
                actions: vec![Read, Create, Update, Delete],
            },
            groups: BTreeMap::from([("admins".into(), vec!["ldap:carol".into()])]),
            ..AccessConfig::default()
        };
        let p = AccessPolicy::new(&config, &["sso"]).unwrap();
        let allowed = |id: &Identity| p.allows(id, "x", Delete);
        assert!(allowed(&who("root", &[])));
        assert!(allowed(&Identity::for_tests(Source::Ldap, "root", &[], AuthMethod::Ldap)));
        // A certificate or another issuer's token named `root`, or in a
        // group named `admins`, is not the local root or a local admin.
        assert!(!allowed(&Identity::for_tests(Source::Certificate, "root", &[], AuthMethod::Mtls)));
        assert!(!allowed(&Identity::for_tests(Source::Issuer("sso".into()), "root", &[], AuthMethod::Bearer)));
        assert!(!allowed(&Identity::for_tests(Source::Certificate, "x", &["admins"], AuthMethod::Mtls)));
        assert!(!allowed(&Identity::for_tests(Source::Issuer("sso".into()), "x", &["admins"], AuthMethod::Bearer)));
        // Named with their source, they are.
        assert!(allowed(&Identity::for_tests(Source::Certificate, "ops-robot", &[], AuthMethod::Mtls)));
        assert!(allowed(&Identity::for_tests(Source::Ldap, "carol", &[], AuthMethod::Ldap)));
        assert!(!allowed(&who("carol", &[])), "the table names ldap:carol, not htpasswd:carol");
    }

    #[test]
    fn bad_patterns_and_ambiguous_names_are_refused() {
        for bad in ["", "/a", "a/", "a//b", "a/***"] {
            let config = AccessConfig {
                repositories: vec![RepoRule { pattern: bad.into(), ..RepoRule::default() }],
                ..AccessConfig::default()
            };
            assert!(AccessPolicy::new(&config, &[]).is_err(), "{bad:?}");
        }
        let twice = AccessConfig {
            repositories: vec![
                RepoRule { pattern: "a".into(), ..RepoRule::default() },
                RepoRule { pattern: "a".into(), ..RepoRule::default() },
            ],
            ..AccessConfig::default()
        };
        assert!(AccessPolicy::new(&twice, &[]).is_err());
        let ambiguous = AccessConfig {
            repositories: vec![RepoRule {
                pattern: "a/**".into(),
                policies: vec![G { users: vec!["build:42".into()], ..G::default() }],
                ..RepoRule::default()
            }],
            ..AccessConfig::default()
        };
        let err = AccessPolicy::new(&ambiguous, &[]).unwrap_err();
        assert!(err.contains("repositories[0].policies[0].users") && err.contains("ambiguous"), "{err}");
        let unknown_issuer = AccessConfig {
            admin_policy: G { users: vec!["issuer:x:y".into()], ..G::default() },
            ..AccessConfig::default()
        };
        assert!(AccessPolicy::new(&unknown_issuer, &["sso"]).unwrap_err().contains("admin_policy.users"));
        let qualified_table =
            AccessConfig { groups: BTreeMap::from([("cert:x".into(), vec![])]), ..AccessConfig::default() };
        assert!(AccessPolicy::new(&qualified_table, &[]).is_err());
    }
}
