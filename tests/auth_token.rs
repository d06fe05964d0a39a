//! The built-in token service and bearer tokens, end to end: Bearer
//! challenges with realm/service/scope, tokens for Basic credentials (GET)
//! and the OAuth2 form (password and refresh grants), scope enforcement,
//! the JWKS document, a table of bad tokens each refused with
//! `error="invalid_token"`, skopeo and oras running the whole flow from the
//! challenge, tokens from an external issuer, and no secret in any log.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use base64::Engine as _;
use berth::auth::token::{now, Claims, ResourceActions, SigningKey};
use common::{client, sha256, Berth};

const PW: &str = "t0ken-flow-pw-9";

struct Setup {
    _dir: tempfile::TempDir,
    key_file: PathBuf,
    berth: Berth,
}

fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let key_file = common::token_key(&dir.path().join("token.pem"), common::KeyKind::P256);
    let htpasswd = dir.path().join("users");
    std::fs::write(&htpasswd, format!("{}\n", common::user_hash("alice", PW))).unwrap();
    let toml = format!(
        "[auth]\nhtpasswd = {:?}\n[auth.token]\nkey_file = {:?}\nissuer = \"berth-test\"\nservice = \"berth-registry\"\n",
        htpasswd.display().to_string(),
        key_file.display().to_string()
    );
    let berth = Berth::start(&toml);
    Setup { _dir: dir, key_file, berth }
}

async fn get_token(b: &Berth, scopes: &[&str], auth: Option<String>) -> (u16, serde_json::Value) {
    let mut url = format!("{}/v2/token?service=berth-registry", b.base);
    for s in scopes {
        url.push_str(&format!("&scope={}", percent(s)));
    }
    let mut req = client().get(url);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

fn percent(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

async fn push_with(b: &Berth, repo: &str, token: &str, data: &[u8]) -> reqwest::Response {
    client()
        .post(b.url(&format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data))))
        .header("authorization", format!("Bearer {token}"))
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_flow_challenges_scopes_and_refresh() {
    let s = start();
    let b = &s.berth;
    let realm = format!("{}/v2/token", b.base);

    let resp = client().get(b.url("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        resp.headers()["www-authenticate"].to_str().unwrap(),
        format!("Bearer realm=\"{realm}\",service=\"berth-registry\"")
    );
    let resp = client().get(b.url("/v2/team/app/manifests/latest")).send().await.unwrap();
    assert_eq!(
        resp.headers()["www-authenticate"].to_str().unwrap(),
        format!("Bearer realm=\"{realm}\",service=\"berth-registry\",scope=\"repository:team/app:pull\"")
    );

    // The token endpoint wants a password: none, or a wrong one, is a Basic challenge.
    let (status, _) = get_token(b, &["repository:team/app:pull"], None).await;
    assert_eq!(status, 401);
    let (status, _) = get_token(b, &["repository:team/app:pull"], Some(common::basic("alice", "wrong"))).await;
    assert_eq!(status, 401);

    let (status, body) =
        get_token(b, &["repository:team/app:pull,push", "repository:bad name:pull"], Some(common::basic("alice", PW)))
            .await;
    assert_eq!(status, 200, "{body}");
    let token = body["token"].as_str().unwrap().to_owned();
    assert_eq!(body["access_token"], body["token"]);
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    assert!(body["issued_at"].as_str().unwrap().ends_with('Z'));
    let claims = decode_claims(&token);
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["aud"], "berth-registry");
    assert_eq!(claims["iss"], "berth-test");
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "team/app", "actions": ["pull", "push"]}])
    );

    // The token grants what it says, and nothing else.
    assert_eq!(push_with(b, "team/app", &token, b"scoped").await.status(), 201);
    let denied = push_with(b, "other/repo", &token, b"scoped").await;
    // RFC 6750: a valid token without the scope is 403, with a challenge for it.
    assert_eq!(denied.status(), 403);
    let challenge = denied.headers()["www-authenticate"].to_str().unwrap().to_owned();
    assert!(
        challenge.contains("scope=\"repository:other/repo:push\"")
            && challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    let (_, pull_only) = get_token(b, &["repository:team/app:pull"], Some(common::basic("alice", PW))).await;
    let pull_token = pull_only["token"].as_str().unwrap();
    assert_eq!(push_with(b, "team/app", pull_token, b"more").await.status(), 403);
    let pulled = client()
        .get(b.url(&format!("/v2/team/app/blobs/{}", sha256(b"scoped"))))
        .header("authorization", format!("Bearer {pull_token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(pulled.status(), 200);

    // A token cannot buy another token.
    let (status, _) = get_token(b, &["repository:x/y:push"], Some(format!("Bearer {token}"))).await;
    assert_eq!(status, 401);

    // JWKS publishes the signing key.
    let jwks: serde_json::Value =
        client().get(b.url("/.well-known/jwks.json")).send().await.unwrap().json().await.unwrap();
    let kid = decode_header(&token)["kid"].as_str().unwrap().to_owned();
    assert_eq!(jwks["keys"][0]["kid"], kid.as_str());
    assert_eq!(jwks["keys"][0]["kty"], "EC");
    assert!(jwks["keys"][0].get("d").is_none(), "the private key was published");

    // OAuth2 form: password grant with a refresh token, then the refresh grant.
    let form = format!(
        "grant_type=password&username=alice&password={PW}&service=berth-registry&scope={}&access_type=offline&client_id=test",
        percent("repository:team/app:pull")
    );
    let resp = client()
        .post(b.url("/v2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    let refresh = body["refresh_token"].as_str().unwrap().to_owned();
    assert_eq!(push_with(b, "team/app", &refresh, b"x").await.status(), 401, "a refresh token is not an access token");
    let form = format!(
        "grant_type=refresh_token&refresh_token={refresh}&service=berth-registry&scope={}",
        percent("repository:team/app:push")
    );
    let resp = client().post(b.url("/v2/token")).body(form).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(push_with(b, "team/app", body["access_token"].as_str().unwrap(), b"via refresh").await.status(), 201);
    for bad in [
        "grant_type=refresh_token&refresh_token=garbage".to_owned(),
        format!("grant_type=refresh_token&refresh_token={token}"),
        "grant_type=password&username=alice&password=wrong".to_owned(),
    ] {
        let resp = client().post(b.url("/v2/token")).body(bad.clone()).send().await.unwrap();
        assert_eq!(resp.status(), 401, "{bad}");
    }
    let resp = client().post(b.url("/v2/token")).body("grant_type=client_credentials").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    let resp = client()
        .get(b.url("/v2/token?service=someone-else"))
        .header("authorization", common::basic("alice", PW))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);

    let log = b.stderr();
    for secret in [PW, &token, &refresh] {
        assert!(!log.contains(secret), "a secret reached the log");
    }
}

fn decode_part(token: &str, n: usize) -> serde_json::Value {
    let part = token.split('.').nth(n).unwrap();
    serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(part).unwrap()).unwrap()
}

fn decode_claims(token: &str) -> serde_json::Value {
    decode_part(token, 1)
}

fn decode_header(token: &str) -> serde_json::Value {
    decode_part(token, 0)
}

fn claims(iss: &str, aud: &str, exp_in: i64, nbf_in: i64) -> Claims {
    let t = now() as i64;
    Claims {
        iss: iss.into(),
        sub: "alice".into(),
        aud: aud.into(),
        exp: (t + exp_in) as u64,
        nbf: (t + nbf_in) as u64,
        iat: t as u64,
        jti: uuid::Uuid::new_v4().to_string(),
        access: vec![ResourceActions {
            kind: "repository".into(),
            name: "team/app".into(),
            actions: vec!["pull".into()],
        }],
        groups: Vec::new(),
        // As this registry's tokens name their login's source.
        src: Some("htpasswd".into()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tokens_are_refused_with_invalid_token() {
    let s = start();
    let b = &s.berth;
    let key = SigningKey::from_pem_file(&s.key_file).unwrap();
    let stranger = SigningKey::generate_es256().unwrap();
    let b64 = |v: &serde_json::Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
    let good_claims = serde_json::to_value(claims("berth-test", "berth-registry", 300, -1)).unwrap();
    let none_token = format!("{}.{}.", b64(&serde_json::json!({"alg": "none", "kid": key.kid()})), b64(&good_claims));
    let hmac_token = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(key.kid().to_owned());
        let secret = serde_json::to_string(key.public_jwk()).unwrap();
        jsonwebtoken::encode(&h, &good_claims, &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes())).unwrap()
    };
    let cases: Vec<(&str, String)> = vec![
        ("expired", key.sign(&claims("berth-test", "berth-registry", -120, -600)).unwrap()),
        ("not yet valid", key.sign(&claims("berth-test", "berth-registry", 3600, 600)).unwrap()),
        ("wrong audience", key.sign(&claims("berth-test", "elsewhere", 300, -1)).unwrap()),
        ("wrong issuer", key.sign(&claims("evil", "berth-registry", 300, -1)).unwrap()),
        ("unknown key", stranger.sign(&claims("berth-test", "berth-registry", 300, -1)).unwrap()),
        ("alg none", none_token),
        ("hmac with the public key", hmac_token),
        ("garbage", "not.a.jwt".into()),
        ("empty", String::new()),
    ];
    // The same key and claims, properly signed, work: the refusals are for the stated reason.
    let ok = key.sign(&claims("berth-test", "berth-registry", 300, -1)).unwrap();
    let resp = client()
        .get(b.url("/v2/team/app/tags/list"))
        .header("authorization", format!("Bearer {ok}"))
        .send()
        .await
        .unwrap();
    assert_ne!(resp.status(), 401);
    for (why, token) in cases {
        let resp = client()
            .get(b.url("/v2/team/app/tags/list"))
            .header("authorization", format!("Bearer {token}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{why}");
        let challenge = resp.headers()["www-authenticate"].to_str().unwrap().to_owned();
        assert!(
            challenge.starts_with("Bearer ") && challenge.contains("error=\"invalid_token\""),
            "{why}: {challenge}"
        );
    }
}

#[test]
fn skopeo_and_oras_run_the_token_flow() {
    let s = start();
    let b = &s.berth;
    let work = tempfile::tempdir().unwrap();
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/build-images.sh");
    assert!(Command::new("bash").arg(build).arg(work.path()).status().unwrap().success());
    let src = format!("oci:{}/oci:multi", work.path().display());
    let dest = format!("docker://{}/team/image:v1", b.addr);
    let creds = format!("alice:{PW}");
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", &creds, &src, &dest])
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo push: {}", String::from_utf8_lossy(&out.stderr));
    let back = format!("oci:{}/back:v1", work.path().display());
    let out = Command::new("skopeo")
        .args(["copy", "--quiet", "--src-tls-verify=false", "--src-creds", &creds, &dest, &back])
        .output()
        .unwrap();
    assert!(out.status.success(), "skopeo pull: {}", String::from_utf8_lossy(&out.stderr));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/oras_referrers.py");
    let out = Command::new(common::venv_python())
        .arg(&script)
        .arg(&b.addr)
        .env("ORAS_USERNAME", "alice")
        .env("ORAS_PASSWORD", PW)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oras: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = b.stderr();
    assert!(!log.contains(PW), "the password reached the log");
    // The clients really went through the token endpoint.
    assert!(log.contains("/v2/token"), "no token request was logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_of_an_external_issuer_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let sso = SigningKey::generate_ed25519().unwrap();
    let jwks = dir.path().join("sso-jwks.json");
    std::fs::write(&jwks, serde_json::json!({"keys": [sso.public_jwk()]}).to_string()).unwrap();
    let toml = format!(
        "[auth]\n[[auth.issuers]]\nid = \"sso\"\nname = \"https://sso.example\"\naudiences = [\"berth\"]\njwks_file = {:?}\nalgorithms = [\"EdDSA\"]\n",
        jwks.display().to_string()
    );
    let b = Berth::start(&toml);
    let mut c = claims("https://sso.example", "berth", 300, -1);
    c.access[0].actions = vec!["pull".into(), "push".into()];
    let token = sso.sign(&c).unwrap();
    assert_eq!(push_with(&b, "team/app", &token, b"from sso").await.status(), 201);
    assert_eq!(push_with(&b, "team/other", &token, b"from sso").await.status(), 403);
    let mut wrong_aud = c.clone();
    wrong_aud.aud = "other-service".into();
    assert_eq!(push_with(&b, "team/app", &sso.sign(&wrong_aud).unwrap(), b"x").await.status(), 401);
    assert_eq!(client().get(b.url("/v2/")).send().await.unwrap().status(), 401);
}

/// Each example in config/examples/ passes `berth config check` with the
/// files it names made up in a scratch directory.
#[test]
fn auth_examples_pass_config_check() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/examples");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users.htpasswd"), format!("{}\n", common::user_hash("alice", PW))).unwrap();
    common::token_key(&dir.path().join("token-key.pem"), common::KeyKind::Ed25519);
    // TLS material for the mTLS example.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let server_key = rcgen::KeyPair::generate().unwrap();
    let server = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
        .unwrap()
        .signed_by(&server_key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.path().join("server.pem"), server.pem()).unwrap();
    std::fs::write(dir.path().join("server.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("client-ca.pem"), ca.pem()).unwrap();
    // The mesh example's fleet CA and replica certificate.
    std::fs::write(dir.path().join("fleet-ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("mesh.pem"), server.pem()).unwrap();
    std::fs::write(dir.path().join("mesh.key"), server_key.serialize_pem()).unwrap();
    std::fs::write(dir.path().join("ldap-ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("ldap-bind-password"), "example\n").unwrap();
    // The mirror example's upstream secret and CA.
    std::fs::write(dir.path().join("dockerhub-token"), "example\n").unwrap();
    std::fs::write(dir.path().join("vendor-ca.pem"), ca.pem()).unwrap();
    let sso = SigningKey::generate_es256().unwrap();
    std::fs::write(dir.path().join("sso-jwks.json"), serde_json::json!({"keys": [sso.public_jwk()]}).to_string())
        .unwrap();
    let mut checked = 0;
    for entry in std::fs::read_dir(&examples).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            let out = Command::new(env!("CARGO_BIN_EXE_berth"))
                .args(["config", "check"])
                .arg(&path)
                .current_dir(dir.path())
                .output()
                .unwrap();
            assert!(out.status.success(), "{path:?}: {}", String::from_utf8_lossy(&out.stderr));
            checked += 1;
        }
    }
    assert!(checked >= 7);
    // Without the files they name, the check fails and says which key.
    let out = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["config", "check"])
        .arg(examples.join("token-service.toml"))
        .current_dir(tempfile::tempdir().unwrap().path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("auth."));
}
