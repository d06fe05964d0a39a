//! Basic authentication against an htpasswd file, end to end with the real
//! binary: challenges, good and bad credentials (indistinguishable whether
//! the user exists), skopeo and oras with credentials, hot reload, weak
//! hashes refused at start-up naming the line, `berth user hash`, and no
//! password or credential header in any log line.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{basic, client, sha256, Berth};

const ALICE_PW: &str = "correct-horse-7Qx";
const BOB_PW: &str = "b0b-s3cret-Zr";

/// `berth user hash NAME` with the password on stdin.
fn user_hash(name: &str, password: &str) -> String {
    let line = common::user_hash(name, password);
    assert!(line.starts_with(&format!("{name}:$argon2id$")), "{line}");
    // (Only meaningful for passwords too long to turn up in random base64 by chance.)
    if password.len() >= 12 {
        assert!(!line.contains(password), "the password is in the hash line");
    }
    line
}

fn write_htpasswd(path: &Path, alice_pw: &str) {
    let bob = format!("bob:{}", bcrypt::hash(BOB_PW, 5).unwrap());
    std::fs::write(path, format!("# users\n{}\n{bob}\n", user_hash("alice", alice_pw))).unwrap();
}

fn start(dir: &Path) -> (Berth, PathBuf) {
    // Polling loops below send wrong passwords on purpose: keep the
    // failed-login throttle out of their way (it has a test of its own).
    start_with(dir, "[auth.throttle]\nuser_lockout = 1000\ndelay_after = 1000\n")
}

fn start_with(dir: &Path, extra: &str) -> (Berth, PathBuf) {
    let file = dir.join("users.htpasswd");
    write_htpasswd(&file, ALICE_PW);
    let toml = format!(
        "[auth]\nrealm = \"berth-test\"\nhtpasswd = {:?}\nreload_interval = \"100ms\"\n{extra}",
        file.display().to_string()
    );
    (Berth::start(&toml), file)
}

async fn status_of(b: &Berth, path: &str, auth: Option<String>) -> (u16, Option<String>, String) {
    let mut req = client().get(b.url(path));
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    let challenge = resp.headers().get("www-authenticate").map(|v| v.to_str().unwrap().to_owned());
    (resp.status().as_u16(), challenge, resp.text().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_challenges_and_checks_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _file) = start(dir.path());

    let (status, challenge, body) = status_of(&b, "/v2/", None).await;
    assert_eq!(status, 401);
    assert_eq!(challenge.as_deref(), Some("Basic realm=\"berth-test\", charset=\"UTF-8\""));
    assert!(body.contains("UNAUTHORIZED"), "{body}");
    for path in ["/v2/_catalog", "/v2/some/repo/tags/list", "/v2/some/repo/manifests/latest"] {
        assert_eq!(status_of(&b, path, None).await.0, 401, "{path}");
    }

    assert_eq!(status_of(&b, "/v2/", Some(basic("alice", ALICE_PW))).await.0, 200);
    assert_eq!(status_of(&b, "/v2/", Some(basic("bob", BOB_PW))).await.0, 200);
    // A wrong password and an unknown user get the same answer.
    let wrong = status_of(&b, "/v2/", Some(basic("alice", "nope"))).await;
    let unknown = status_of(&b, "/v2/", Some(basic("mallory", "nope"))).await;
    assert_eq!(wrong.0, 401);
    assert_eq!((wrong.0, &wrong.1, &wrong.2), (unknown.0, &unknown.1, &unknown.2));
    for bad in ["Basic", "Basic %%%", "Bearer abc", "Basic OmVtcHR5LXVzZXI=", "Digest x"] {
        let (status, challenge, _) = status_of(&b, "/v2/", Some(bad.to_owned())).await;
        assert_eq!(status, 401, "{bad:?}");
        assert!(challenge.is_some());
    }

    // A push and a pull with credentials.
    let data = b"authenticated blob".to_vec();
    let digest = sha256(&data);
    let resp = client()
        .post(b.url(&format!("/v2/team/app/blobs/uploads/?digest={digest}")))
        .header("authorization", basic("alice", ALICE_PW))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let anonymous = client().get(b.url(&format!("/v2/team/app/blobs/{digest}"))).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    let got = client()
        .get(b.url(&format!("/v2/team/app/blobs/{digest}")))
        .header("authorization", basic("bob", BOB_PW))
        .send()
        .await
        .unwrap();
    assert_eq!(got.status(), 200);
    assert_eq!(got.bytes().await.unwrap().to_vec(), data);

    // Neither passwords nor credential headers reach the log.
    let log = b.stderr();
    for secret in [ALICE_PW, BOB_PW, "nope", &basic("alice", ALICE_PW)[6..], &basic("bob", BOB_PW)[6..]] {
        assert!(!log.contains(secret), "the log contains a credential: {secret}");
    }
    assert!(log.contains("authentication failed"), "failed logins are logged (without details)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn htpasswd_changes_apply_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let (b, file) = start(dir.path());
    assert_eq!(status_of(&b, "/v2/", Some(basic("alice", ALICE_PW))).await.0, 200);
    write_htpasswd(&file, "rotated-pw-42");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while status_of(&b, "/v2/", Some(basic("alice", "rotated-pw-42"))).await.0 != 200 {
        assert!(tokio::time::Instant::now() < deadline, "the new password never took effect");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The old password (cached as verified a moment ago) no longer works.
    assert_eq!(status_of(&b, "/v2/", Some(basic("alice", ALICE_PW))).await.0, 401);
    // A broken edit is refused and the last good file stays in force.
    std::fs::write(&file, "alice:plaintext\n").unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !b.stderr().contains("htpasswd file not reloaded") {
        assert!(tokio::time::Instant::now() < deadline, "the broken file was not reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status_of(&b, "/v2/", Some(basic("alice", "rotated-pw-42"))).await.0, 200);
    assert!(!b.stderr().contains("plaintext"), "the refused line's secret was logged");
}

#[test]
fn weak_hashes_are_refused_at_start_up_naming_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("h");
    std::fs::write(
        &file,
        format!("{}\nold:$apr1$xyz$abcdefghijklmnopqrstu1\n", user_hash("ok", "long-enough-password")),
    )
    .unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(&config, format!("[auth]\nhtpasswd = {:?}\n", file.display().to_string())).unwrap();
    for args in [vec!["config", "check", config.to_str().unwrap()], vec!["serve", "--config", config.to_str().unwrap()]]
    {
        let out = Command::new(env!("CARGO_BIN_EXE_berth")).args(&args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("auth.htpasswd") && err.contains(":2:") && err.contains("MD5"), "{err}");
    }
    // With authentication configured, a network listener is allowed.
    std::fs::write(&file, format!("{}\n", user_hash("ok", "long-enough-password"))).unwrap();
    std::fs::write(
        &config,
        format!("[server]\nlisten = \"0.0.0.0:5000\"\n[auth]\nhtpasswd = {:?}\n", file.display().to_string()),
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_berth")).args(["config", "check", config.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn skopeo_and_oras_with_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _file) = start(dir.path());
    let work = tempfile::tempdir().unwrap();
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/build-images.sh");
    let out = Command::new("bash").arg(build).arg(work.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let src = format!("oci:{}/oci:multi", work.path().display());
    let dest = format!("docker://{}/team/image:v1", b.addr);
    let skopeo = |args: &[&str]| Command::new("skopeo").args(args).output().unwrap();
    let creds = format!("alice:{ALICE_PW}");
    let denied = skopeo(&["copy", "--quiet", "--dest-tls-verify=false", &src, &dest]);
    assert!(!denied.status.success(), "a push without credentials succeeded");
    let bad = skopeo(&["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", "alice:wrong", &src, &dest]);
    assert!(!bad.status.success(), "a push with a wrong password succeeded");
    let ok = skopeo(&["copy", "--quiet", "--dest-tls-verify=false", "--dest-creds", &creds, &src, &dest]);
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let back = format!("oci:{}/back:v1", work.path().display());
    let pulled =
        skopeo(&["copy", "--quiet", "--src-tls-verify=false", "--src-creds", &format!("bob:{BOB_PW}"), &dest, &back]);
    assert!(pulled.status.success(), "{}", String::from_utf8_lossy(&pulled.stderr));

    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/oras_referrers.py");
    let out = Command::new(common::venv_python())
        .arg(&script)
        .arg(&b.addr)
        .env("ORAS_USERNAME", "alice")
        .env("ORAS_PASSWORD", ALICE_PW)
        .env("ORAS_AUTH_BACKEND", "basic")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "oras with credentials:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let log = b.stderr();
    assert!(!log.contains(ALICE_PW) && !log.contains(BOB_PW), "a password reached the log");
    assert!(!log.contains("status=500") && !log.contains("\"status\":500"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failures_slow_down_then_lock_out() {
    let dir = tempfile::tempdir().unwrap();
    let (b, _file) = start_with(
        dir.path(),
        "[auth.throttle]\nwindow = \"10m\"\nuser_lockout = 3\nip_lockout = 8\ndelay_after = 1\nmax_delay = \"300ms\"\n",
    );
    for _ in 0..3 {
        assert_eq!(status_of(&b, "/v2/", Some(basic("alice", "wrong"))).await.0, 401);
    }
    // Locked out: even the right password is refused, with Retry-After.
    let resp = client().get(b.url("/v2/")).header("authorization", basic("alice", ALICE_PW)).send().await.unwrap();
    assert_eq!(resp.status(), 429);
    assert!(resp.headers().contains_key("retry-after"));
    assert!(resp.text().await.unwrap().contains("TOOMANYREQUESTS"));
    // An unknown name is treated exactly the same.
    for _ in 0..3 {
        assert_eq!(status_of(&b, "/v2/", Some(basic("nobody", "wrong"))).await.0, 401);
    }
    assert_eq!(status_of(&b, "/v2/", Some(basic("nobody", "wrong"))).await.0, 429);
    // Another user still gets in, until the address itself is locked out.
    assert_eq!(status_of(&b, "/v2/", Some(basic("bob", BOB_PW))).await.0, 200);
    for _ in 0..2 {
        assert_eq!(status_of(&b, "/v2/", Some(basic("bob", "wrong"))).await.0, 401);
    }
    // The address is locked out for any new login attempt...
    assert_eq!(status_of(&b, "/v2/", Some(basic("carol", "guess"))).await.0, 429);
    // ...while credentials verified a moment ago keep working without a
    // round trip to the shared counters.
    assert_eq!(status_of(&b, "/v2/", Some(basic("bob", BOB_PW))).await.0, 200);
    let log = b.stderr();
    assert!(log.contains("too many failures"));
    assert!(!log.contains(ALICE_PW) && !log.contains(BOB_PW));
}
