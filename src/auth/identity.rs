//! Who the caller is, and where that came from.
//!
//! Every authenticated [`Identity`] carries its [`Source`]: the htpasswd
//! file, the LDAP directory, a client certificate, or one external token
//! issuer. Tokens of this registry's own token service keep the source of
//! the login they were issued for. Subjects of different sources never
//! compare equal: a certificate whose CN is `root` is not the htpasswd user
//! `root`, and a token whose `sub` is `root` from an external issuer is
//! neither. Groups belong to the source that asserted them.
//!
//! Configuration names identities and groups with [`NameRef`]:
//! `alice` (a local user: htpasswd or LDAP), `htpasswd:alice`,
//! `ldap:alice`, `cert:build-42`, `issuer:<id>:<subject>`. Anything else
//! with a `:` is refused rather than guessed at.
//!
//! An `Identity` is built only inside `auth` (and by test helpers behind
//! the `test-helpers` feature): code elsewhere can read one, never forge
//! one. The anonymous identity, which grants nothing, is the exception.

use std::fmt;
use std::sync::Arc;

use super::token::ResourceActions;

/// Where an identity was established.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    /// The htpasswd file.
    Htpasswd,
    /// The LDAP directory.
    Ldap,
    /// A verified TLS client certificate.
    Certificate,
    /// An external token issuer, by its configured `id`.
    Issuer(Arc<str>),
}

impl Source {
    /// Sources written in configuration as a bare name.
    fn is_local(&self) -> bool {
        matches!(self, Source::Htpasswd | Source::Ldap)
    }

    /// The `src` claim of this registry's tokens (external issuers never
    /// get one: their tokens are theirs).
    pub(crate) fn claim(&self) -> Option<&'static str> {
        match self {
            Source::Htpasswd => Some("htpasswd"),
            Source::Ldap => Some("ldap"),
            Source::Certificate => Some("cert"),
            Source::Issuer(_) => None,
        }
    }

    pub(crate) fn from_claim(claim: &str) -> Option<Source> {
        match claim {
            "htpasswd" => Some(Source::Htpasswd),
            "ldap" => Some(Source::Ldap),
            "cert" => Some(Source::Certificate),
            _ => None,
        }
    }
}

/// An authenticated subject: a name within its source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Subject {
    source: Source,
    name: String,
}

impl Subject {
    pub(crate) fn new(source: Source, name: impl Into<String>) -> Subject {
        Subject { source, name: name.into() }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// The name within the source (a user name, a certificate's subject
    /// field, a token's `sub`).
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// The qualified form, as configuration writes it: `htpasswd:alice`,
/// `ldap:alice`, `cert:build-42`, `issuer:ci:deploy-bot`. Logs and audit
/// records use it, so two sources never look alike there either.
impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.source {
            Source::Htpasswd => write!(f, "htpasswd:{}", self.name),
            Source::Ldap => write!(f, "ldap:{}", self.name),
            Source::Certificate => write!(f, "cert:{}", self.name),
            Source::Issuer(id) => write!(f, "issuer:{id}:{}", self.name),
        }
    }
}

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

impl AuthMethod {
    pub fn name(self) -> &'static str {
        match self {
            AuthMethod::Anonymous => "anonymous",
            AuthMethod::Htpasswd => "htpasswd",
            AuthMethod::Ldap => "ldap",
            AuthMethod::Bearer => "bearer",
            AuthMethod::Mtls => "mtls",
        }
    }
}

/// The caller, as established by authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    subject: Option<Subject>,
    /// Groups asserted by the subject's source.
    groups: Vec<String>,
    method: AuthMethod,
    /// For token holders: what the token grants (nothing beyond it).
    token_access: Option<Vec<ResourceActions>>,
    /// `scheme://host` the request was sent to, for token realms derived
    /// from the request when none is configured.
    origin: Option<String>,
}

impl Identity {
    /// The caller without credentials.
    pub fn anonymous() -> Identity {
        Identity { subject: None, groups: Vec::new(), method: AuthMethod::Anonymous, token_access: None, origin: None }
    }

    pub(super) fn authenticated(subject: Subject, groups: Vec<String>, method: AuthMethod) -> Identity {
        Identity { subject: Some(subject), groups, method, ..Identity::anonymous() }
    }

    pub(super) fn with_token_access(mut self, access: Vec<ResourceActions>) -> Identity {
        self.token_access = Some(access);
        self
    }

    pub(super) fn with_origin(mut self, origin: Option<String>) -> Identity {
        self.origin = origin;
        self
    }

    /// An identity for tests of code that consumes identities.
    #[cfg(any(test, feature = "test-helpers"))]
    pub fn for_tests(source: Source, name: &str, groups: &[&str], method: AuthMethod) -> Identity {
        Identity::authenticated(Subject::new(source, name), groups.iter().map(|g| g.to_string()).collect(), method)
    }

    pub fn subject(&self) -> Option<&Subject> {
        self.subject.as_ref()
    }

    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    pub fn method(&self) -> AuthMethod {
        self.method
    }

    pub fn token_access(&self) -> Option<&[ResourceActions]> {
        self.token_access.as_deref()
    }

    pub fn origin(&self) -> Option<&str> {
        self.origin.as_deref()
    }

    pub fn is_anonymous(&self) -> bool {
        self.subject.is_none()
    }

    /// The qualified subject (`htpasswd:alice`), or `None` when anonymous.
    pub fn qualified_subject(&self) -> Option<String> {
        self.subject.as_ref().map(Subject::to_string)
    }
}

/// An identity written down, to be restored on a later request (the UI's
/// sign-in sessions keep one in shared state). Holds no credential.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SavedIdentity {
    /// `htpasswd`, `ldap`, `cert` or `issuer:<id>`.
    source: String,
    name: String,
    groups: Vec<String>,
    method: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token_access: Option<Vec<ResourceActions>>,
}

impl Identity {
    /// The identity written down; `None` for the anonymous caller.
    pub fn save(&self) -> Option<SavedIdentity> {
        let subject = self.subject.as_ref()?;
        let source = match &subject.source {
            Source::Issuer(id) => format!("issuer:{id}"),
            other => other.claim()?.to_owned(),
        };
        Some(SavedIdentity {
            source,
            name: subject.name.clone(),
            groups: self.groups.clone(),
            method: self.method.name().to_owned(),
            token_access: self.token_access.clone(),
        })
    }

    /// The identity `saved` describes (`None` if it is not one this build
    /// writes). Policy is checked on every use, so a restored identity has
    /// exactly the rights its subject has now.
    pub fn restore(saved: &SavedIdentity) -> Option<Identity> {
        let source = match saved.source.strip_prefix("issuer:") {
            Some(id) if !id.is_empty() => Source::Issuer(Arc::from(id)),
            Some(_) => return None,
            None => Source::from_claim(&saved.source)?,
        };
        let method = match saved.method.as_str() {
            "htpasswd" => AuthMethod::Htpasswd,
            "ldap" => AuthMethod::Ldap,
            "bearer" => AuthMethod::Bearer,
            "mtls" => AuthMethod::Mtls,
            _ => return None,
        };
        if saved.name.is_empty() {
            return None;
        }
        let id = Identity::authenticated(Subject::new(source, saved.name.clone()), saved.groups.clone(), method);
        Some(match &saved.token_access {
            Some(access) => id.with_token_access(access.clone()),
            None => id,
        })
    }
}

/// Which sources a name in the configuration may refer to.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Scope {
    /// A bare name: the htpasswd file or the LDAP directory.
    Local,
    Exactly(Source),
}

/// A user or group as the configuration names it (`alice`, `ldap:alice`,
/// `cert:build-42`, `issuer:ci:deploy-bot`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameRef {
    scope: Scope,
    name: String,
}

/// What a name in the configuration refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameKind {
    User,
    Group,
}

impl NameRef {
    /// Parse a configured name. `issuers` are the configured external
    /// issuer ids; naming any other is refused, as is an unknown prefix.
    pub fn parse(text: &str, kind: NameKind, issuers: &[&str]) -> Result<NameRef, String> {
        let what = match kind {
            NameKind::User => "user",
            NameKind::Group => "group",
        };
        let valid = |name: &str| !name.is_empty() && !name.chars().any(|c| c.is_control() || c.is_whitespace());
        let Some((prefix, rest)) = text.split_once(':') else {
            if !valid(text) {
                return Err(format!("{what} {text:?} is empty or contains spaces or control characters"));
            }
            return Ok(NameRef { scope: Scope::Local, name: text.to_owned() });
        };
        let (source, name) = match prefix {
            "htpasswd" if kind == NameKind::Group => {
                return Err(format!("{what} {text:?}: htpasswd users have no groups (use a bare name for [access.groups] or LDAP groups)"));
            }
            "htpasswd" => (Source::Htpasswd, rest),
            "ldap" => (Source::Ldap, rest),
            "cert" => (Source::Certificate, rest),
            "issuer" => {
                let (id, name) = rest.split_once(':').ok_or_else(|| {
                    format!("{what} {text:?}: write issuer:<id>:<{what}>, with the id of an [[auth.issuers]] entry")
                })?;
                if !issuers.contains(&id) {
                    return Err(format!(
                        "{what} {text:?} names issuer {id:?}, but no [[auth.issuers]] entry has that id{}",
                        if issuers.is_empty() { String::new() } else { format!(" (ids: {})", issuers.join(", ")) }
                    ));
                }
                (Source::Issuer(Arc::from(id)), name)
            }
            _ => {
                return Err(format!(
                    "{what} {text:?} is ambiguous: {prefix:?} is not an identity source. Write a bare name for a \
                     local (htpasswd or LDAP) {what}, or prefix it with htpasswd:, ldap:, cert: or issuer:<id>:"
                ))
            }
        };
        if !valid(name) {
            return Err(format!("{what} {text:?}: the name after the source is empty or contains spaces"));
        }
        Ok(NameRef { scope: Scope::Exactly(source), name: name.to_owned() })
    }

    fn covers(&self, source: &Source) -> bool {
        match &self.scope {
            Scope::Local => source.is_local(),
            Scope::Exactly(s) => s == source,
        }
    }

    /// Whether this (user) name is `identity`'s subject.
    pub fn is_subject_of(&self, identity: &Identity) -> bool {
        identity.subject.as_ref().is_some_and(|s| self.covers(&s.source) && s.name == self.name)
    }

    /// Whether this (group) name is one the identity's source put it in.
    pub fn is_group_of(&self, identity: &Identity) -> bool {
        identity.subject.as_ref().is_some_and(|s| self.covers(&s.source) && identity.groups.contains(&self.name))
    }

    /// A bare name: what `[access.groups]` tables are keyed by.
    pub fn bare(&self) -> Option<&str> {
        (self.scope == Scope::Local).then_some(self.name.as_str())
    }
}

/// Every `id` must be usable in `issuer:<id>:<name>`.
pub fn valid_issuer_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_saved_identity_restores_as_it_was() {
        let plain = Identity::authenticated(Subject::new(Source::Ldap, "alice"), vec!["devs".into()], AuthMethod::Ldap);
        let token =
            Identity::authenticated(Subject::new(Source::Issuer(Arc::from("sso")), "bot"), vec![], AuthMethod::Bearer)
                .with_token_access(vec![ResourceActions {
                    kind: "repository".into(),
                    name: "team/app".into(),
                    actions: vec!["pull".into()],
                }]);
        for id in [plain, token] {
            let saved = id.save().unwrap();
            let json = serde_json::to_string(&saved).unwrap();
            let back: SavedIdentity = serde_json::from_str(&json).unwrap();
            assert_eq!(Identity::restore(&back).unwrap(), id);
        }
        assert!(Identity::anonymous().save().is_none());
        let mut odd = Identity::authenticated(Subject::new(Source::Htpasswd, "bob"), vec![], AuthMethod::Htpasswd)
            .save()
            .unwrap();
        odd.method = "anonymous".into();
        assert!(Identity::restore(&odd).is_none(), "a session never restores as anonymous or unknown");
        odd.method = "htpasswd".into();
        odd.source = "issuer:".into();
        assert!(Identity::restore(&odd).is_none());
    }

    fn user(s: &str) -> NameRef {
        NameRef::parse(s, NameKind::User, &["ci"]).unwrap()
    }

    #[test]
    fn names_in_configuration() {
        let htpasswd_root = Identity::for_tests(Source::Htpasswd, "root", &[], AuthMethod::Htpasswd);
        let ldap_root = Identity::for_tests(Source::Ldap, "root", &["ops"], AuthMethod::Ldap);
        let cert_root = Identity::for_tests(Source::Certificate, "root", &["ops"], AuthMethod::Mtls);
        let ci_root = Identity::for_tests(Source::Issuer("ci".into()), "root", &["ops"], AuthMethod::Bearer);
        // A bare name is a local user: htpasswd or LDAP, never a certificate or a token of another issuer.
        for (name, who, yes) in [
            ("root", &htpasswd_root, true),
            ("root", &ldap_root, true),
            ("root", &cert_root, false),
            ("root", &ci_root, false),
            ("htpasswd:root", &htpasswd_root, true),
            ("htpasswd:root", &ldap_root, false),
            ("ldap:root", &ldap_root, true),
            ("cert:root", &cert_root, true),
            ("cert:root", &htpasswd_root, false),
            ("issuer:ci:root", &ci_root, true),
            ("issuer:ci:root", &cert_root, false),
        ] {
            assert_eq!(user(name).is_subject_of(who), yes, "{name} vs {who:?}");
        }
        assert!(!user("root").is_subject_of(&Identity::anonymous()));
        // Groups belong to the source that asserted them.
        let group = |s: &str| NameRef::parse(s, NameKind::Group, &["ci"]).unwrap();
        assert!(group("ops").is_group_of(&ldap_root));
        assert!(!group("ops").is_group_of(&cert_root));
        assert!(group("cert:ops").is_group_of(&cert_root));
        assert!(group("issuer:ci:ops").is_group_of(&ci_root));
        assert!(!group("issuer:ci:ops").is_group_of(&cert_root));
        // Subjects with colons (SPIFFE IDs, Kubernetes service accounts) keep them.
        let spiffe = Identity::for_tests(Source::Certificate, "spiffe://x/y", &[], AuthMethod::Mtls);
        assert!(user("cert:spiffe://x/y").is_subject_of(&spiffe));
        let sa =
            Identity::for_tests(Source::Issuer("ci".into()), "system:serviceaccount:ns:b", &[], AuthMethod::Bearer);
        assert!(user("issuer:ci:system:serviceaccount:ns:b").is_subject_of(&sa));
        assert_eq!(sa.qualified_subject().as_deref(), Some("issuer:ci:system:serviceaccount:ns:b"));
    }

    #[test]
    fn ambiguous_names_are_refused() {
        for (bad, needle) in [
            ("build:42", "ambiguous"),
            ("Cert:x", "ambiguous"),
            ("cert:", "empty"),
            ("issuer:ci", "issuer:<id>"),
            ("issuer:other:x", "no [[auth.issuers]] entry"),
            ("", "empty"),
            ("a b", "spaces"),
        ] {
            let err = NameRef::parse(bad, NameKind::User, &["ci"]).unwrap_err();
            assert!(err.contains(needle), "{bad}: {err}");
        }
        assert!(NameRef::parse("htpasswd:admins", NameKind::Group, &[]).is_err());
        assert!(valid_issuer_id("corp-sso") && !valid_issuer_id("a:b") && !valid_issuer_id(""));
    }
}
