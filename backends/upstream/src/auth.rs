//! Registry authentication as clients meet it: a `WWW-Authenticate`
//! challenge on a 401 says Basic (send the credentials) or Bearer (fetch a
//! token from the named realm for the service and scope, with the
//! credentials when there are any, and send that).

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What a 401 asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer { realm: String, service: Option<String>, scope: Option<String> },
}

/// Parse a `WWW-Authenticate` value. Parameters may be quoted (commas and
/// escaped quotes inside quotes are kept) or bare tokens; unknown schemes
/// and a Bearer challenge without a realm are `None`.
pub fn parse_challenge(value: &str) -> Option<Challenge> {
    let value = value.trim();
    let (scheme, rest) = match value.find(char::is_whitespace) {
        Some(at) => (&value[..at], value[at..].trim_start()),
        None => (value, ""),
    };
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let params = parse_params(rest)?;
    let realm = params.get("realm")?.clone();
    if realm.is_empty() {
        return None;
    }
    Some(Challenge::Bearer { realm, service: params.get("service").cloned(), scope: params.get("scope").cloned() })
}

/// `key=value` pairs separated by commas; keys lowercased.
fn parse_params(mut s: &str) -> Option<HashMap<String, String>> {
    let mut out = HashMap::new();
    loop {
        s = s.trim_start_matches(|c: char| c == ',' || c.is_whitespace());
        if s.is_empty() {
            return Some(out);
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_ascii_lowercase();
        s = s[eq + 1..].trim_start();
        let value;
        if let Some(quoted) = s.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = quoted.char_indices();
            let mut end = None;
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, next)) = chars.next() {
                            v.push(next);
                        }
                    }
                    '"' => {
                        end = Some(i);
                        break;
                    }
                    c => v.push(c),
                }
            }
            let end = end?;
            value = v;
            s = &quoted[end + 1..];
        } else {
            let end = s.find(',').unwrap_or(s.len());
            value = s[..end].trim().to_owned();
            s = &s[end..];
        }
        if key.is_empty() {
            return None;
        }
        out.insert(key, value);
    }
}

/// The token endpoint's answer (both names are in use).
#[derive(Debug, serde::Deserialize)]
pub(crate) struct TokenAnswer {
    pub token: Option<String>,
    pub access_token: Option<String>,
    pub expires_in: Option<u64>,
}

/// Tokens by scope, each until shortly before it expires.
#[derive(Default)]
pub(crate) struct TokenCache {
    tokens: HashMap<String, (String, Instant)>,
}

/// Scopes only: the tokens are credentials.
impl std::fmt::Debug for TokenCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenCache").field("scopes", &self.tokens.keys().collect::<Vec<_>>()).finish()
    }
}

/// A token without `expires_in` lives 60 s (the token specification's
/// default); each is used only until 90% of its life has passed.
pub(crate) const DEFAULT_TOKEN_LIFE: Duration = Duration::from_secs(60);

/// No token is used longer than this, whatever its `expires_in` says.
pub(crate) const MAX_TOKEN_LIFE: Duration = Duration::from_secs(24 * 3600);

impl TokenCache {
    pub fn get(&self, scope: &str) -> Option<String> {
        self.tokens.get(scope).filter(|(_, until)| Instant::now() < *until).map(|(t, _)| t.clone())
    }

    /// Remember `token` for 90% of `life`, and for a day at most, whatever
    /// the token endpoint claims.
    pub fn put(&mut self, scope: &str, token: String, life: Duration) {
        if self.tokens.len() > 1024 {
            self.tokens.retain(|_, (_, until)| Instant::now() < *until);
        }
        let now = Instant::now();
        let until = now.checked_add(life.min(MAX_TOKEN_LIFE).mul_f64(0.9)).unwrap_or(now);
        self.tokens.insert(scope.to_owned(), (token, until));
    }

    pub fn forget(&mut self, scope: &str) {
        self.tokens.remove(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_as_registries_send_them() {
        assert_eq!(parse_challenge("Basic realm=\"Registry Realm\""), Some(Challenge::Basic));
        assert_eq!(parse_challenge("basic"), Some(Challenge::Basic));
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://auth.docker.io/token\",service=\"registry.docker.io\",scope=\"repository:library/alpine:pull\""
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        // Commas inside quotes, spaces after commas, bare tokens, escapes.
        assert_eq!(
            parse_challenge(
                "Bearer realm=\"https://h/t\", scope=\"repository:a/b:pull,push\", service=reg, error=\"x\\\"y\""
            ),
            Some(Challenge::Bearer {
                realm: "https://h/t".into(),
                service: Some("reg".into()),
                scope: Some("repository:a/b:pull,push".into()),
            })
        );
        for bad in ["", "Negotiate abc", "Bearer service=\"x\"", "Bearer realm=\"unterminated", "Bearer realm=\"\""] {
            assert_eq!(parse_challenge(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn tokens_expire_before_their_life_ends() {
        let mut c = TokenCache::default();
        c.put("s", "t".into(), Duration::from_secs(100));
        assert_eq!(c.get("s").as_deref(), Some("t"));
        c.put("short", "u".into(), Duration::ZERO);
        assert_eq!(c.get("short"), None);
        c.forget("s");
        assert_eq!(c.get("s"), None);
    }
}
