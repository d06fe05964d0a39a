//! Bearer tokens: the registry's own token service (the Docker registry
//! token authentication flow) and verification of tokens, its own and those
//! of configured external issuers.
//!
//! Issued tokens are JWTs signed with an ES256 (P-256) or EdDSA (Ed25519)
//! key read from a PKCS#8 PEM file. The `kid` is a thumbprint of the public
//! key, so keys can rotate: previous public keys stay trusted through a JWKS
//! file, and the current one is published at the JWKS endpoint for other
//! verifiers.

use std::collections::HashMap;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// One entry of a token's `access` claim.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceActions {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

/// The claims of a token this registry issues or accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    pub iss: String,
    pub sub: String,
    pub aud: String,
    pub exp: u64,
    pub nbf: u64,
    pub iat: u64,
    pub jti: String,
    #[serde(default)]
    pub access: Vec<ResourceActions>,
    /// Groups the issuer vouches for: an external issuer's own, or, in this
    /// registry's tokens, those of the login the token was issued for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    /// This registry's tokens: the source of the login (`htpasswd`, `ldap`
    /// or `cert`). Ignored in external issuers' tokens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub src: Option<String>,
}

/// Why a key file was refused.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot read {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signing key and its public half as a JWK.
#[derive(Clone)]
pub struct SigningKey {
    algorithm: Algorithm,
    encoding: EncodingKey,
    public: Jwk,
    kid: String,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey").field("algorithm", &self.algorithm).field("kid", &self.kid).finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Read a PKCS#8 PEM private key: P-256 (ES256) or Ed25519 (EdDSA).
    pub fn from_pem_file(path: &Path) -> Result<SigningKey, KeyError> {
        let shown = path.display().to_string();
        let pem = std::fs::read(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
        SigningKey::from_pem(&pem).map_err(|message| KeyError::Invalid { path: shown, message })
    }

    pub fn from_pem(pem: &[u8]) -> Result<SigningKey, String> {
        use rustls_pki_types::pem::PemObject as _;
        let der = rustls_pki_types::PrivatePkcs8KeyDer::from_pem_slice(pem)
            .map_err(|_| "not a PKCS#8 PEM private key (BEGIN PRIVATE KEY)".to_owned())?;
        SigningKey::from_pkcs8_der(der.secret_pkcs8_der())
    }

    /// Generate a fresh P-256 key (tests, and `berth token keygen` later).
    pub fn generate_es256() -> Result<SigningKey, String> {
        let rng = ring::rand::SystemRandom::new();
        let doc =
            ring::signature::EcdsaKeyPair::generate_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                .map_err(|e| e.to_string())?;
        SigningKey::from_pkcs8_der(doc.as_ref())
    }

    /// Generate a fresh Ed25519 key.
    pub fn generate_ed25519() -> Result<SigningKey, String> {
        let rng = ring::rand::SystemRandom::new();
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
        SigningKey::from_pkcs8_der(doc.as_ref())
    }

    pub fn from_pkcs8_der(der: &[u8]) -> Result<SigningKey, String> {
        let rng = ring::rand::SystemRandom::new();
        if let Ok(pair) =
            ring::signature::EcdsaKeyPair::from_pkcs8(&ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING, der, &rng)
        {
            use ring::signature::KeyPair as _;
            let point = pair.public_key().as_ref();
            if point.len() != 65 || point[0] != 4 {
                return Err("unexpected P-256 public key encoding".into());
            }
            let (x, y) = (b64url(&point[1..33]), b64url(&point[33..65]));
            let thumb_input = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
            let kid = b64url(&sha2::Sha256::digest(thumb_input.as_bytes()));
            let jwk = serde_json::json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "kid": kid, "alg": "ES256", "use": "sig"});
            let encoding = EncodingKey::from_ec_der(der);
            let public = serde_json::from_value(jwk).map_err(|e| e.to_string())?;
            return Ok(SigningKey { algorithm: Algorithm::ES256, encoding, public, kid });
        }
        if let Ok(pair) = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(der) {
            use ring::signature::KeyPair as _;
            let x = b64url(pair.public_key().as_ref());
            let thumb_input = format!(r#"{{"crv":"Ed25519","kty":"OKP","x":"{x}"}}"#);
            let kid = b64url(&sha2::Sha256::digest(thumb_input.as_bytes()));
            let jwk =
                serde_json::json!({"kty": "OKP", "crv": "Ed25519", "x": x, "kid": kid, "alg": "EdDSA", "use": "sig"});
            let encoding = EncodingKey::from_ed_der(der);
            let public = serde_json::from_value(jwk).map_err(|e| e.to_string())?;
            return Ok(SigningKey { algorithm: Algorithm::EdDSA, encoding, public, kid });
        }
        Err("only P-256 (ES256) and Ed25519 (EdDSA) keys are accepted".into())
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    pub fn public_jwk(&self) -> &Jwk {
        &self.public
    }

    pub fn sign(&self, claims: &Claims) -> Result<String, jsonwebtoken::errors::Error> {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        header.typ = Some("JWT".into());
        jsonwebtoken::encode(&header, claims, &self.encoding)
    }
}

/// The algorithms any verifier here accepts: asymmetric only. `none` and
/// HMAC are never accepted (an HMAC "signed" with a public key is the
/// classic confusion attack).
pub const ALLOWED_ALGORITHMS: [Algorithm; 6] =
    [Algorithm::ES256, Algorithm::ES384, Algorithm::EdDSA, Algorithm::RS256, Algorithm::RS384, Algorithm::RS512];

/// Keys trusted for one issuer.
#[derive(Clone)]
pub struct Issuer {
    pub name: String,
    /// Audiences accepted (`aud` must be one of them).
    pub audiences: Vec<String>,
    /// Algorithms accepted for this issuer (subset of [`ALLOWED_ALGORITHMS`]).
    pub algorithms: Vec<Algorithm>,
    keys: HashMap<String, (DecodingKey, Algorithm)>,
}

impl std::fmt::Debug for Issuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Issuer")
            .field("name", &self.name)
            .field("audiences", &self.audiences)
            .field("kids", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn jwk_algorithm(jwk: &Jwk) -> Option<Algorithm> {
    use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve};
    match &jwk.algorithm {
        AlgorithmParameters::EllipticCurve(p) => match p.curve {
            EllipticCurve::P256 => Some(Algorithm::ES256),
            EllipticCurve::P384 => Some(Algorithm::ES384),
            _ => None,
        },
        AlgorithmParameters::OctetKeyPair(p) => (p.curve == EllipticCurve::Ed25519).then_some(Algorithm::EdDSA),
        AlgorithmParameters::RSA(_) => Some(match jwk.common.key_algorithm {
            Some(jsonwebtoken::jwk::KeyAlgorithm::RS384) => Algorithm::RS384,
            Some(jsonwebtoken::jwk::KeyAlgorithm::RS512) => Algorithm::RS512,
            _ => Algorithm::RS256,
        }),
        // Symmetric keys are never trusted.
        AlgorithmParameters::OctetKey(_) => None,
    }
}

impl Issuer {
    pub fn new(name: impl Into<String>, audiences: Vec<String>, algorithms: Vec<Algorithm>) -> Issuer {
        let algorithms = algorithms.into_iter().filter(|a| ALLOWED_ALGORITHMS.contains(a)).collect();
        Issuer { name: name.into(), audiences, algorithms, keys: HashMap::new() }
    }

    /// Trust the keys of a JWKS document (keys without `kid` or with
    /// symmetric material are skipped).
    pub fn add_jwks(&mut self, jwks: &JwkSet) -> usize {
        let mut added = 0;
        for jwk in &jwks.keys {
            let (Some(kid), Some(alg)) = (jwk.common.key_id.clone(), jwk_algorithm(jwk)) else { continue };
            if let Ok(key) = DecodingKey::from_jwk(jwk) {
                self.keys.insert(kid, (key, alg));
                added += 1;
            }
        }
        added
    }

    pub fn add_jwks_file(&mut self, path: &Path) -> Result<usize, KeyError> {
        let shown = path.display().to_string();
        let text = std::fs::read(path).map_err(|source| KeyError::Read { path: shown.clone(), source })?;
        let set: JwkSet = serde_json::from_slice(&text)
            .map_err(|e| KeyError::Invalid { path: shown.clone(), message: e.to_string() })?;
        let n = self.add_jwks(&set);
        if n == 0 {
            return Err(KeyError::Invalid { path: shown, message: "no usable asymmetric key with a kid".into() });
        }
        Ok(n)
    }

    pub fn add_signing_key(&mut self, key: &SigningKey) {
        if let Ok(decoding) = DecodingKey::from_jwk(&key.public) {
            self.keys.insert(key.kid.clone(), (decoding, key.algorithm));
        }
    }
}

/// Why a bearer token was refused; the text goes into the RFC 6750
/// `error_description`, so it names the rule and never echoes the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("malformed token")]
    Malformed,
    #[error("token algorithm not accepted")]
    Algorithm,
    #[error("unknown issuer or signing key")]
    UnknownKey,
    #[error("bad signature")]
    Signature,
    #[error("token expired")]
    Expired,
    #[error("token not yet valid")]
    NotYetValid,
    #[error("token audience not accepted")]
    Audience,
    #[error("token issuer not accepted")]
    IssuerMismatch,
    #[error("token revoked")]
    Revoked,
    #[error("token names no identity source: obtain a new one")]
    NoSource,
}

/// Verify a token against the trusted issuers.
pub fn verify(token: &str, issuers: &[Issuer], leeway: Duration) -> Result<Claims, TokenError> {
    let header = jsonwebtoken::decode_header(token).map_err(|_| TokenError::Malformed)?;
    if !ALLOWED_ALGORITHMS.contains(&header.alg) {
        return Err(TokenError::Algorithm);
    }
    // The issuer is read before verification only to pick its keys.
    let unverified = peek_claims(token).ok_or(TokenError::Malformed)?;
    let iss = unverified.get("iss").and_then(|v| v.as_str()).ok_or(TokenError::Malformed)?;
    let issuer = issuers.iter().find(|i| i.name == iss).ok_or(TokenError::UnknownKey)?;
    let kid = header.kid.as_deref().ok_or(TokenError::UnknownKey)?;
    let (key, key_alg) = issuer.keys.get(kid).ok_or(TokenError::UnknownKey)?;
    // The key decides the algorithm, never the token.
    if header.alg != *key_alg || !issuer.algorithms.contains(&header.alg) {
        return Err(TokenError::Algorithm);
    }
    let mut validation = Validation::new(*key_alg);
    validation.leeway = leeway.as_secs();
    validation.validate_nbf = true;
    validation.set_issuer(&[issuer.name.as_str()]);
    validation.set_audience(&issuer.audiences);
    validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    match jsonwebtoken::decode::<Claims>(token, key, &validation) {
        Ok(data) => Ok(data.claims),
        Err(e) => {
            use jsonwebtoken::errors::ErrorKind as K;
            Err(match e.kind() {
                K::ExpiredSignature => TokenError::Expired,
                K::ImmatureSignature => TokenError::NotYetValid,
                K::InvalidAudience => TokenError::Audience,
                K::InvalidIssuer => TokenError::IssuerMismatch,
                K::InvalidSignature | K::InvalidEcdsaKey | K::InvalidRsaKey(_) => TokenError::Signature,
                K::InvalidAlgorithm => TokenError::Algorithm,
                _ => TokenError::Malformed,
            })
        }
    }
}

fn peek_claims(token: &str) -> Option<serde_json::Value> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload.trim_end_matches('=')).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A requested scope: `repository:<name>:<action>[,<action>...]`.
pub fn parse_scope(scope: &str) -> Option<ResourceActions> {
    let (kind, rest) = scope.split_once(':')?;
    // The name may contain ':' only before a port in a registry host, never
    // in a repository; the actions follow the last ':'.
    let (name, actions) = rest.rsplit_once(':')?;
    if kind.is_empty() || name.is_empty() {
        return None;
    }
    let actions: Vec<String> = actions.split(',').filter(|a| !a.is_empty()).map(str::to_owned).collect();
    Some(ResourceActions { kind: kind.to_owned(), name: name.to_owned(), actions })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(iss: &str, aud: &str, exp_in: i64, nbf_in: i64) -> Claims {
        let now = now() as i64;
        Claims {
            iss: iss.into(),
            sub: "alice".into(),
            aud: aud.into(),
            exp: (now + exp_in) as u64,
            nbf: (now + nbf_in) as u64,
            iat: now as u64,
            jti: "j1".into(),
            access: vec![ResourceActions {
                kind: "repository".into(),
                name: "a/b".into(),
                actions: vec!["pull".into()],
            }],
            groups: Vec::new(),
            src: None,
        }
    }

    fn issuer_for(key: &SigningKey) -> Issuer {
        let mut issuer = Issuer::new("berth", vec!["registry".into()], ALLOWED_ALGORITHMS.to_vec());
        issuer.add_signing_key(key);
        issuer
    }

    #[test]
    fn es256_and_eddsa_round_trip() {
        for key in [SigningKey::generate_es256().unwrap(), SigningKey::generate_ed25519().unwrap()] {
            let token = key.sign(&claims("berth", "registry", 300, 0)).unwrap();
            let got = verify(&token, &[issuer_for(&key)], Duration::ZERO).unwrap();
            assert_eq!(got.sub, "alice");
            assert_eq!(got.access[0].name, "a/b");
            // The published JWK verifies it too.
            let mut from_jwks = Issuer::new("berth", vec!["registry".into()], ALLOWED_ALGORITHMS.to_vec());
            assert_eq!(from_jwks.add_jwks(&JwkSet { keys: vec![key.public_jwk().clone()] }), 1);
            assert!(verify(&token, &[from_jwks], Duration::ZERO).is_ok());
        }
    }

    #[test]
    fn bad_tokens_are_refused_for_the_right_reason() {
        let key = SigningKey::generate_es256().unwrap();
        let other = SigningKey::generate_ed25519().unwrap();
        let issuers = [issuer_for(&key)];
        let check = |token: &str| verify(token, &issuers, Duration::ZERO);
        assert_eq!(check(&key.sign(&claims("berth", "registry", -120, -300)).unwrap()), Err(TokenError::Expired));
        assert_eq!(check(&key.sign(&claims("berth", "registry", 600, 300)).unwrap()), Err(TokenError::NotYetValid));
        assert_eq!(check(&key.sign(&claims("berth", "elsewhere", 300, 0)).unwrap()), Err(TokenError::Audience));
        assert_eq!(check(&key.sign(&claims("mallory", "registry", 300, 0)).unwrap()), Err(TokenError::UnknownKey));
        // Signed by a key nobody trusts.
        assert_eq!(check(&other.sign(&claims("berth", "registry", 300, 0)).unwrap()), Err(TokenError::UnknownKey));
        // A trusted kid on a token signed by another key.
        let good = key.sign(&claims("berth", "registry", 300, 0)).unwrap();
        let forged = {
            let mut c = claims("berth", "registry", 300, 0);
            c.sub = "root".into();
            let body = b64url(serde_json::to_string(&c).unwrap().as_bytes());
            let parts: Vec<&str> = good.split('.').collect();
            format!("{}.{body}.{}", parts[0], parts[2])
        };
        assert_eq!(check(&forged), Err(TokenError::Signature));
        // alg: none, and HMAC "signed" with the public key.
        let none_header = b64url(format!(r#"{{"alg":"none","kid":"{}"}}"#, key.kid()).as_bytes());
        let body = b64url(serde_json::to_string(&claims("berth", "registry", 300, 0)).unwrap().as_bytes());
        assert!(check(&format!("{none_header}.{body}.")).is_err());
        let hmac_key = EncodingKey::from_secret(serde_json::to_string(key.public_jwk()).unwrap().as_bytes());
        let mut h = Header::new(Algorithm::HS256);
        h.kid = Some(key.kid().to_owned());
        let hs = jsonwebtoken::encode(&h, &claims("berth", "registry", 300, 0), &hmac_key).unwrap();
        assert_eq!(check(&hs), Err(TokenError::Algorithm));
        for junk in ["", "abc", "a.b.c", "....", "eyJhbGciOiJFUzI1NiJ9.e30.x"] {
            assert!(check(junk).is_err(), "{junk}");
        }
    }

    #[test]
    fn scopes() {
        let s = parse_scope("repository:team/app:pull,push").unwrap();
        assert_eq!((s.kind.as_str(), s.name.as_str()), ("repository", "team/app"));
        assert_eq!(s.actions, ["pull", "push"]);
        assert_eq!(parse_scope("registry:catalog:*").unwrap().actions, ["*"]);
        for bad in ["", "repository", "repository:name", ":a:pull", "repository::pull"] {
            assert_eq!(parse_scope(bad), None, "{bad}");
        }
    }

    #[test]
    fn key_files_are_checked() {
        assert!(SigningKey::from_pem(b"not a key").is_err());
        let junk = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(SigningKey::from_pem(junk.as_bytes()).is_err());
    }
}
