//! Identity namespaces end to end: a client certificate and an external
//! issuer's token whose subject is `root`, the htpasswd admin's name, get
//! none of root's rights (neither the admin API nor the admin policy);
//! named with their source (`cert:ops-robot`), they do. A configuration
//! naming an identity ambiguously is refused by `config check`.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;

use berth::auth::token::{now, Claims, ResourceActions, SigningKey};
use common::pki::{ca, client, leaf, server_sans};
use common::{basic, sha256, Berth};

const ROOT_PW: &str = "root-pw-Vq8-long";

struct Setup {
    _dir: tempfile::TempDir,
    berth: Berth,
    server_ca_pem: String,
    client_ca: common::pki::Ca,
    sso: SigningKey,
}

fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("server-ca");
    let client_ca = ca("client-ca");
    let (cert, key) = leaf(&server_ca, "berth-server", server_sans(), None, false);
    let p = |f: &str| dir.path().join(f).display().to_string();
    std::fs::write(p("server.pem"), cert).unwrap();
    std::fs::write(p("server.key"), key).unwrap();
    std::fs::write(p("client-ca.pem"), client_ca.cert.pem()).unwrap();
    std::fs::write(p("users"), format!("{}\n", common::user_hash("root", ROOT_PW))).unwrap();
    let sso = SigningKey::generate_ed25519().unwrap();
    std::fs::write(p("sso-jwks.json"), serde_json::json!({"keys": [sso.public_jwk()]}).to_string()).unwrap();
    let toml = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nclient_auth = \"optional\"\n\
         [auth]\nhtpasswd = {:?}\nadmins = [\"root\", \"cert:ops-robot\"]\n\
         [auth.mtls]\nsubject = \"cn\"\ngroups_from_ou = true\n\
         [[auth.issuers]]\nid = \"sso\"\nname = \"https://sso.test\"\naudiences = [\"berth\"]\njwks_file = {:?}\n\
         algorithms = [\"EdDSA\"]\n\
         [access]\ndefault_policy = [\"read\"]\n\
         admin_policy = {{ users = [\"root\", \"cert:ops-robot\"], groups = [\"admins\"], actions = [\"read\", \"create\", \"update\", \"delete\"] }}\n",
        p("server.pem"),
        p("server.key"),
        p("client-ca.pem"),
        p("users"),
        p("sso-jwks.json"),
    );
    let berth = Berth::start(&toml);
    Setup { _dir: dir, berth, server_ca_pem: server_ca.cert.pem(), client_ca, sso }
}

impl Setup {
    fn url(&self, path: &str) -> String {
        format!("https://{}{path}", self.berth.addr)
    }

    /// A token of the external issuer for `sub`, granting push on `repo`.
    fn sso_token(&self, sub: &str, groups: &[&str], repo: &str) -> String {
        let t = now();
        let claims = Claims {
            iss: "https://sso.test".into(),
            sub: sub.into(),
            aud: "berth".into(),
            exp: t + 300,
            nbf: t - 1,
            iat: t,
            jti: format!("jti-{sub}"),
            access: vec![ResourceActions {
                kind: "repository".into(),
                name: repo.into(),
                actions: vec!["pull".into(), "push".into()],
            }],
            groups: groups.iter().map(|g| g.to_string()).collect(),
            src: None,
        };
        self.sso.sign(&claims).unwrap()
    }
}

/// What an identity may do: (admin API status, push status).
async fn rights(http: &reqwest::Client, s: &Setup, authorization: Option<&str>, repo: &str) -> (u16, u16) {
    let with = |req: reqwest::RequestBuilder| match authorization {
        Some(a) => req.header("authorization", a),
        None => req,
    };
    let admin = with(http.post(s.url("/admin/revocations")))
        .header("content-type", "application/json")
        .body(r#"{"jti":"some-token-id"}"#)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    let data = format!("pushed to {repo}");
    let push = with(http.post(s.url(&format!("/v2/{repo}/blobs/uploads/?digest={}", sha256(data.as_bytes())))))
        .body(data)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16();
    (admin, push)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subjects_of_other_sources_do_not_pass_for_local_users() {
    let s = start();
    let anonymous = client(&s.server_ca_pem, None);

    // The htpasswd root is an admin.
    let root = basic("root", ROOT_PW);
    assert_eq!(rights(&anonymous, &s, Some(&root), "admin/only").await, (201, 201));

    // A certificate whose CN is root is not.
    let cert_root = leaf(&s.client_ca, "root", vec![], None, false);
    let as_cert = client(&s.server_ca_pem, Some(&cert_root));
    assert_eq!(rights(&as_cert, &s, None, "admin/only").await, (403, 403));
    // Nor is one in an OU named like the admin group.
    let cert_ou = leaf(&s.client_ca, "someone", vec![], Some("admins"), false);
    assert_eq!(rights(&client(&s.server_ca_pem, Some(&cert_ou)), &s, None, "admin/only").await, (403, 403));

    // An external issuer's token for sub=root, even one granting push, is not.
    let token = format!("Bearer {}", s.sso_token("root", &["admins"], "admin/only"));
    assert_eq!(rights(&anonymous, &s, Some(&token), "admin/only").await, (403, 403));

    // Named with its source, a certificate is an admin.
    let robot = leaf(&s.client_ca, "ops-robot", vec![], None, false);
    assert_eq!(rights(&client(&s.server_ca_pem, Some(&robot)), &s, None, "admin/only").await, (201, 201));

    // Audit records name subjects with their source.
    let log = s.berth.stderr();
    assert!(log.contains("cert:root"), "the certificate's subject is logged as cert:root");
    assert!(log.contains("issuer:sso:root"), "the token's subject is logged as issuer:sso:root");
}

#[test]
fn config_check_refuses_ambiguous_names() {
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users");
    std::fs::write(&users, format!("{}\n", common::user_hash("root", ROOT_PW))).unwrap();
    for (snippet, needle) in [
        ("[auth]\nadmins = [\"build:42\"]\n", "auth.admins"),
        ("[access]\nadmin_policy = { users = [\"ci:bot\"], actions = [\"read\"] }\n", "ambiguous"),
        ("[access]\nadmin_policy = { users = [\"issuer:nope:bot\"], actions = [\"read\"] }\n", "no [[auth.issuers]]"),
        ("[access.groups]\n\"cert:ops\" = [\"root\"]\n", "bare name"),
    ] {
        let text = if snippet.starts_with("[auth]") {
            format!("[auth]\nhtpasswd = {:?}\n{}", users.display().to_string(), &snippet["[auth]\n".len()..])
        } else {
            format!("[auth]\nhtpasswd = {:?}\n{snippet}", users.display().to_string())
        };
        let file = dir.path().join("c.toml");
        std::fs::write(&file, text).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_berth")).args(["config", "check"]).arg(&file).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{snippet}: {err}");
        assert!(err.contains(needle), "{snippet}: {err}");
    }
}
