//! Access control end to end, from one table: every endpoint against
//! {anonymous, reader, writer, admin, a user of another repository, a
//! revoked token}, with the expected status and error code. Also: a digest
//! known from another repository is not readable, a mount from an
//! unreadable repository is not a mount, the catalog lists only readable
//! repositories, another user's upload session is invisible, creating a
//! tag is not moving one, and a policy change applies to a running server
//! (file change, and SIGHUP) while requests run.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::{client, sha256, Berth};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

fn basic(user: &str) -> String {
    common::basic(user, &format!("{user}-password"))
}

const POLICY: &str = r#"
[access]
default_policy = []
anonymous_policy = []
admin_policy = { users = ["admin"], actions = ["read", "create", "update", "delete"] }

[[access.repositories]]
pattern = "team/**"
policies = [
  { users = ["reader"], actions = ["read"] },
  { users = ["creator"], actions = ["read", "create"] },
  { users = ["writer"], actions = ["read", "create", "update"] },
]

[[access.repositories]]
pattern = "other/**"
policies = [{ users = ["other"], actions = ["read", "create", "update", "delete"] }]
"#;

struct Setup {
    _dir: tempfile::TempDir,
    config: std::path::PathBuf,
    berth: Berth,
}

fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    common::users_file(dir.path(), &["reader", "creator", "writer", "admin", "other"]);
    let key = common::token_key(&dir.path().join("token.pem"), common::KeyKind::Ed25519);
    let auth = format!(
        "[auth]\nhtpasswd = {:?}\nadmins = [\"admin\"]\nreload_interval = \"100ms\"\n[auth.throttle]\nuser_lockout = 1000\n\
         [auth.token]\nkey_file = {:?}\n",
        dir.path().join("users").display().to_string(),
        key.display().to_string()
    );
    let config = dir.path().join("extra.toml");
    let log = format!("[log]\naudit_file = {:?}\n", dir.path().join("audit.jsonl").display().to_string());
    std::fs::write(&config, format!("{auth}{POLICY}")).unwrap();
    let berth = Berth::start(&format!("{log}{auth}{POLICY}"));
    Setup { _dir: dir, config, berth }
}

async fn send(
    b: &Berth,
    method: &str,
    path: &str,
    auth: Option<&str>,
    body: Option<(String, Vec<u8>)>,
) -> (u16, String) {
    let mut req = client().request(method.parse().unwrap(), b.url(path));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    if let Some((ct, data)) = body {
        req = req.header("content-type", ct).body(data);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap_or_default();
    let code = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["errors"][0]["code"].as_str().map(str::to_owned))
        .unwrap_or_default();
    (status, code)
}

async fn push_blob(b: &Berth, repo: &str, auth: &str, data: &[u8]) -> String {
    let d = sha256(data);
    let (status, _) = send(
        b,
        "POST",
        &format!("/v2/{repo}/blobs/uploads/?digest={d}"),
        Some(auth),
        Some(("application/octet-stream".into(), data.to_vec())),
    )
    .await;
    assert_eq!(status, 201, "setup push to {repo}");
    d
}

fn manifest(config: &str, config_len: usize, salt: &str) -> Vec<u8> {
    serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": config_len},
        "layers": [], "annotations": {"salt": salt}
    })
    .to_string()
    .into_bytes()
}

/// Expected (status, error code) for each identity, in the order
/// anonymous, reader, writer, admin, other, revoked.
type Row = [(u16, &'static str); 6];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorization_matrix() {
    let s = start();
    let b = &s.berth;
    let admin = basic("admin");
    // Content: team/app has a config blob and manifest tagged v1; other/app
    // has a blob nobody in team may read.
    let config = br#"{"architecture":"amd64","os":"linux"}"#;
    let config_digest = push_blob(b, "team/app", &admin, config).await;
    let v1 = manifest(&config_digest, config.len(), "v1");
    let v1_digest = sha256(&v1);
    assert_eq!(send(b, "PUT", "/v2/team/app/manifests/v1", Some(&admin), Some((OCI.into(), v1.clone()))).await.0, 201);
    let secret = push_blob(b, "other/app", &basic("other"), b"other team's secret layer").await;

    // A token for writer, then revoked.
    let resp = client()
        .get(b.url("/v2/token?service=berth&scope=repository:team/app:pull,push"))
        .header("authorization", basic("writer"))
        .send()
        .await
        .unwrap();
    let token: serde_json::Value = resp.json().await.unwrap();
    let token = token["token"].as_str().unwrap().to_owned();
    let jti = {
        let claims = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
        claims["jti"].as_str().unwrap().to_owned()
    };
    assert_eq!(send(b, "GET", "/v2/team/app/tags/list", Some(&format!("Bearer {token}")), None).await.0, 200);
    let resp = client()
        .post(b.url("/admin/revocations"))
        .header("authorization", &admin)
        .json(&serde_json::json!({"jti": jti}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let identities: [Option<String>; 6] = [
        None,
        Some(basic("reader")),
        Some(basic("writer")),
        Some(admin.clone()),
        Some(basic("other")),
        Some(format!("Bearer {token}")),
    ];
    const UN: (u16, &str) = (401, "UNAUTHORIZED");
    const DENIED: (u16, &str) = (403, "DENIED");
    let new_blob = |who: usize| format!("new blob pushed by identity {who}").into_bytes();
    // (name, method, path, body)
    type Case = (&'static str, &'static str, String, Option<(String, Vec<u8>)>, Row);
    let mut cases: Vec<Case> = vec![
        ("ping", "GET", "/v2/".into(), None, [UN, (200, ""), (200, ""), (200, ""), (200, ""), UN]),
        (
            "manifest GET",
            "GET",
            "/v2/team/app/manifests/v1".into(),
            None,
            [UN, (200, ""), (200, ""), (200, ""), DENIED, UN],
        ),
        (
            "manifest HEAD",
            "HEAD",
            "/v2/team/app/manifests/v1".into(),
            None,
            [(401, ""), (200, ""), (200, ""), (200, ""), (403, ""), (401, "")],
        ),
        (
            "blob GET",
            "GET",
            format!("/v2/team/app/blobs/{config_digest}"),
            None,
            [UN, (200, ""), (200, ""), (200, ""), DENIED, UN],
        ),
        ("tags", "GET", "/v2/team/app/tags/list".into(), None, [UN, (200, ""), (200, ""), (200, ""), DENIED, UN]),
        (
            "referrers",
            "GET",
            format!("/v2/team/app/referrers/{v1_digest}"),
            None,
            [UN, (200, ""), (200, ""), (200, ""), DENIED, UN],
        ),
        // A digest known from another repository is not readable here, by anyone.
        (
            "foreign digest",
            "GET",
            format!("/v2/team/app/blobs/{secret}"),
            None,
            [UN, (404, "BLOB_UNKNOWN"), (404, "BLOB_UNKNOWN"), (404, "BLOB_UNKNOWN"), DENIED, UN],
        ),
        (
            "upload start",
            "POST",
            "/v2/team/app/blobs/uploads/".into(),
            None,
            [UN, DENIED, (202, ""), (202, ""), DENIED, UN],
        ),
        // A mount from a repository the caller cannot read is a plain upload, not a mount.
        (
            "mount",
            "POST",
            format!("/v2/team/app/blobs/uploads/?mount={secret}&from=other/app"),
            None,
            [UN, DENIED, (202, ""), (201, ""), DENIED, UN],
        ),
        (
            "manifest DELETE",
            "DELETE",
            format!("/v2/other/app/manifests/{v1_digest}"),
            None,
            [UN, DENIED, DENIED, (404, "MANIFEST_UNKNOWN"), (404, "MANIFEST_UNKNOWN"), UN],
        ),
        (
            "blob DELETE",
            "DELETE",
            format!("/v2/team/app/blobs/{}", sha256(b"never pushed")),
            None,
            [UN, DENIED, DENIED, (404, "BLOB_UNKNOWN"), DENIED, UN],
        ),
    ];
    for (i, who) in ["anon", "reader", "writer", "admin", "other", "revoked"].iter().enumerate() {
        let data = new_blob(i);
        let expected: Row = [UN, DENIED, (201, ""), (201, ""), DENIED, UN];
        let mut row = [(0u16, ""); 6];
        row[i] = expected[i];
        cases.push((
            "monolithic push",
            "POST",
            format!("/v2/team/app/blobs/uploads/?digest={}", sha256(&data)),
            Some(("application/octet-stream".into(), data)),
            row,
        ));
        let m = manifest(&config_digest, config.len(), &format!("new-{who}"));
        let mut row = [(0u16, ""); 6];
        row[i] = expected[i];
        cases.push(("new tag", "PUT", format!("/v2/team/app/manifests/new-{who}"), Some((OCI.into(), m)), row));
    }
    let mut failures = Vec::new();
    for (name, method, path, body, row) in &cases {
        for (i, auth) in identities.iter().enumerate() {
            let (want_status, want_code) = row[i];
            if want_status == 0 {
                continue; // this identity is exercised by its own row
            }
            let (status, code) = send(b, method, path, auth.as_deref(), body.clone()).await;
            if status != want_status || (!want_code.is_empty() && code != want_code) {
                failures.push(format!(
                    "{name} {method} {path} as #{i}: got {status} {code}, want {want_status} {want_code}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "authorization matrix:\n{}", failures.join("\n"));

    // Creating a tag is not moving one: creator may add, not move.
    let moved = manifest(&config_digest, config.len(), "moved");
    assert_eq!(
        send(b, "PUT", "/v2/team/app/manifests/fresh", Some(&basic("creator")), Some((OCI.into(), moved.clone())))
            .await
            .0,
        201
    );
    assert_eq!(
        send(b, "PUT", "/v2/team/app/manifests/v1", Some(&basic("creator")), Some((OCI.into(), moved.clone()))).await,
        (403, "DENIED".into())
    );
    assert_eq!(
        send(b, "PUT", "/v2/team/app/manifests/v1", Some(&basic("writer")), Some((OCI.into(), moved))).await.0,
        201
    );

    // The catalog lists only readable repositories.
    for (who, want) in
        [("reader", vec!["team/app"]), ("other", vec!["other/app"]), ("admin", vec!["other/app", "team/app"])]
    {
        let resp = client().get(b.url("/v2/_catalog")).header("authorization", basic(who)).send().await.unwrap();
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["repositories"], serde_json::json!(want), "{who}");
    }
    assert_eq!(send(b, "GET", "/v2/_catalog", None, None).await.0, 401);

    // Another user's upload session does not exist for anyone else.
    let resp = client()
        .post(b.url("/v2/team/app/blobs/uploads/"))
        .header("authorization", basic("writer"))
        .send()
        .await
        .unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    for (method, body) in [
        ("GET", None),
        ("PATCH", Some(("application/octet-stream".to_owned(), b"x".to_vec()))),
        ("PUT", None),
        ("DELETE", None),
    ] {
        let path = if method == "PUT" { format!("{location}?digest={}", sha256(b"")) } else { location.clone() };
        let (status, code) = send(b, method, &path, Some(&admin), body).await;
        assert_eq!((status, code.as_str()), (404, "BLOB_UPLOAD_UNKNOWN"), "{method} of another user's upload");
    }
    assert_eq!(send(b, "GET", &location, Some(&basic("writer")), None).await.0, 204);

    // The token service grants no more than policy allows.
    let resp = client()
        .get(
            b.url("/v2/token?service=berth&scope=repository:team/app:pull,push,delete&scope=repository:other/app:pull"),
        )
        .header("authorization", basic("reader"))
        .send()
        .await
        .unwrap();
    let body: serde_json::Value = resp.json().await.unwrap();
    let claims = body["token"].as_str().unwrap().split('.').nth(1).unwrap().to_owned();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(claims).unwrap()).unwrap();
    assert_eq!(claims["access"], serde_json::json!([{"type": "repository", "name": "team/app", "actions": ["pull"]}]));

    // The audit trail: JSON lines with writes, denials and failed
    // authentications, and no credential anywhere.
    let audit = std::fs::read_to_string(s._dir.path().join("audit.jsonl")).unwrap();
    let records: Vec<serde_json::Value> = audit.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let has = |subject: &str, outcome: &str, operation: &str| {
        records.iter().any(|r| r["subject"] == subject && r["outcome"] == outcome && r["operation"] == operation)
    };
    // Subjects are named with their source.
    assert!(has("htpasswd:writer", "ok", "manifest_put"), "no record of a write");
    assert!(has("htpasswd:other", "denied", "manifest_get"), "no record of a denial");
    assert!(has("anonymous", "unauthenticated", "blob_get"), "no record of a failed authentication");
    assert!(records.iter().all(|r| r["target"] == "berth::audit" || r.get("target").is_none()));
    assert!(records.iter().all(|r| r["client"].as_str().is_some_and(|c| c.starts_with("127."))));
    for secret in ["reader-password", "writer-password", "admin-password", "other-password", token.as_str()] {
        assert!(!audit.contains(secret), "a credential reached the audit log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn policy_changes_apply_while_requests_run() {
    let s = start();
    let b = &s.berth;
    let config = br#"{"os":"linux"}"#;
    push_blob(b, "team/app", &basic("admin"), config).await;
    // A token minted under the old policy is checked against the new one.
    let resp = client()
        .get(b.url("/v2/token?service=berth&scope=repository:team/app:pull"))
        .header("authorization", basic("reader"))
        .send()
        .await
        .unwrap();
    let token = resp.json::<serde_json::Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    let reader_token = format!("Bearer {token}");

    // Readers keep reading in the background while the policy changes.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background = {
        let (url, stop) = (b.url("/v2/team/app/tags/list"), stop.clone());
        tokio::spawn(async move {
            let (mut ok, mut denied, mut other) = (0, 0, 0);
            for _ in 0..2000 {
                if stop.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                match client()
                    .get(&url)
                    .header("authorization", basic("reader"))
                    .send()
                    .await
                    .map(|r| r.status().as_u16())
                {
                    Ok(200) | Ok(404) => ok += 1,
                    Ok(403) => denied += 1,
                    _ => other += 1,
                }
            }
            (ok, denied, other)
        })
    };
    // Take read away from reader by editing the file the server was started with.
    let config_path = b.dir.path().join("berth.toml");
    let text = std::fs::read_to_string(&config_path).unwrap();
    let revoked = text.replace(r#"{ users = ["reader"], actions = ["read"] },"#, "");
    assert_ne!(text, revoked);
    std::fs::write(&config_path, revoked).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while send(b, "GET", "/v2/team/app/tags/list", Some(&reader_token), None).await.0 != 403 {
        assert!(tokio::time::Instant::now() < deadline, "the new policy never applied to the token holder");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(send(b, "GET", "/v2/team/app/tags/list", Some(&basic("reader")), None).await.0, 403);

    // The file as an editor leaves it between truncating and writing:
    // empty. It is refused, never read as "no access rules" (a CI run once
    // caught a reload in that gap and every user could read everything).
    let refusals = |b: &Berth| b.stderr().matches("access policy not reloaded").count();
    std::fs::write(&config_path, "").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while refusals(b) == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the empty file was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.stderr().contains("is empty"), "{}", b.stderr());
    assert_eq!(send(b, "GET", "/v2/team/app/tags/list", Some(&basic("reader")), None).await.0, 403);

    // A broken policy is refused and the one in force stays.
    std::fs::write(&config_path, text.replace("pattern = \"team/**\"", "pattern = \"/team\"")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while refusals(b) < 2 {
        assert!(tokio::time::Instant::now() < deadline, "the bad policy was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(send(b, "GET", "/v2/team/app/tags/list", Some(&basic("reader")), None).await.0, 403);

    // SIGHUP reloads too: restore the original file with the same size and
    // timestamp change, then signal.
    std::fs::write(&config_path, &text).unwrap();
    let _ = Command::new("kill").args(["-HUP", &b.pid().to_string()]).status();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while send(b, "GET", "/v2/team/app/tags/list", Some(&basic("reader")), None).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the restored policy never applied");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The timer may have applied the restored file before the signal came:
    // wait for the signal's own reload.
    let plain = |b: &Berth| -> String {
        // Drop ANSI colour codes of the text log format.
        let log = b.stderr();
        let mut out = String::new();
        let mut chars = log.chars();
        while let Some(c) = chars.next() {
            if c == '\u{1b}' {
                for c in chars.by_ref() {
                    if c == 'm' {
                        break;
                    }
                }
            } else {
                out.push(c);
            }
        }
        out
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !plain(b).lines().any(|l| l.contains("access policy reloaded") && l.contains("by_signal=true")) {
        assert!(tokio::time::Instant::now() < deadline, "SIGHUP did not reload the policy");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (ok, denied, other) = background.await.unwrap();
    assert_eq!(other, 0, "requests failed during reloads ({ok} ok, {denied} denied)");
    assert!(ok > 0);
    let _ = &s.config;
}
