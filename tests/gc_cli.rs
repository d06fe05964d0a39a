//! Garbage collection from the outside, against a running registry: `berth
//! gc --dry-run --json` changes nothing and says why; `berth gc` deletes
//! while the server serves; the admin API (admins only) starts a pass and
//! reads the last report; /metrics and the audit log record it; bad
//! `[gc]` / `[[retention.policies]]` settings are refused by name.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use common::{client, sha256, Berth};

const OCI: &str = "application/vnd.oci.image.manifest.v1+json";

struct Setup {
    _users: tempfile::TempDir,
    berth: Berth,
    config: std::path::PathBuf,
    admin: String,
    alice: String,
}

fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let users = [common::user_hash("admin", "admin-password"), common::user_hash("alice", "alice-password")];
    let users_file = dir.path().join("users");
    std::fs::write(&users_file, users.join("\n") + "\n").unwrap();
    let extra = format!(
        "[auth]\nhtpasswd = {:?}\nadmins = [\"admin\"]\n[gc]\nenabled = false\ngrace = \"0s\"\n",
        users_file.display().to_string()
    );
    let berth = Berth::start(&extra);
    // The server's own configuration file, for the CLI to act on.
    let config = berth.dir.path().join("berth.toml");
    Setup {
        _users: dir,
        berth,
        config,
        admin: common::basic("admin", "admin-password"),
        alice: common::basic("alice", "alice-password"),
    }
}

async fn status_of(req: reqwest::RequestBuilder) -> (u16, String) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap_or_default())
}

async fn push_blob(s: &Setup, repo: &str, data: &[u8]) -> String {
    let d = sha256(data);
    let (status, body) = status_of(
        client()
            .post(s.berth.url(&format!("/v2/{repo}/blobs/uploads/?digest={d}")))
            .header("authorization", &s.alice)
            .header("content-type", "application/octet-stream")
            .body(data.to_vec()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    d
}

async fn push_image(s: &Setup, repo: &str, tag: &str, layer: &[u8]) -> Vec<u8> {
    let config = format!(r#"{{"os":"linux","tag":"{tag}"}}"#).into_bytes();
    let c = push_blob(s, repo, &config).await;
    let l = push_blob(s, repo, layer).await;
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": c, "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": l, "size": layer.len()}],
    })
    .to_string()
    .into_bytes();
    let (status, body) = status_of(
        client()
            .put(s.berth.url(&format!("/v2/{repo}/manifests/{tag}")))
            .header("authorization", &s.alice)
            .header("content-type", OCI)
            .body(manifest.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    manifest
}

async fn blob_status(s: &Setup, repo: &str, digest: &str) -> u16 {
    status_of(client().get(s.berth.url(&format!("/v2/{repo}/blobs/{digest}"))).header("authorization", &s.alice))
        .await
        .0
}

fn gc_cli(s: &Setup, args: &[&str]) -> std::process::Output {
    cli(s, "gc", args)
}

fn cli(s: &Setup, command: &str, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_berth")).arg(command).arg("--config").arg(&s.config).args(args).output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gc_from_the_cli_and_the_admin_api() {
    let s = start();
    let layer = b"the layer of the kept image".repeat(100);
    push_image(&s, "team/app", "v1", &layer).await;
    let stray = push_blob(&s, "team/app", b"uploaded, never referenced").await;
    let keep = sha256(&layer);

    // Dry run: JSON report naming the stray blob and why; nothing changes.
    let out = gc_cli(&s, &["--dry-run", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["dry_run"], true);
    let items = report["items"].as_array().unwrap();
    let stray_item = items.iter().find(|i| i["kind"] == "blob" && i["target"] == stray.as_str()).expect("stray listed");
    assert_eq!(stray_item["reason"], "no repository links it");
    assert!(items.iter().any(|i| i["kind"] == "link" && i["target"] == stray.as_str()));
    assert!(!items.iter().any(|i| i["target"] == keep.as_str()), "the kept image's layer is not a candidate");
    assert_eq!(blob_status(&s, "team/app", &stray).await, 200, "a dry run deleted");

    // A real pass, from the CLI, while the server runs.
    let out = gc_cli(&s, &[]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("deleted blob") && text.contains(&stray), "{text}");
    assert!(text.contains("no repository links it"), "{text}");
    assert_eq!(blob_status(&s, "team/app", &stray).await, 404);
    assert_eq!(blob_status(&s, "team/app", &keep).await, 200);
    let (status, _) =
        status_of(client().get(s.berth.url("/v2/team/app/manifests/v1")).header("authorization", &s.alice)).await;
    assert_eq!(status, 200);

    // The admin API: admins only.
    let (status, _) = status_of(client().post(s.berth.url("/admin/gc"))).await;
    assert_eq!(status, 401);
    let (status, body) = status_of(client().post(s.berth.url("/admin/gc")).header("authorization", &s.alice)).await;
    assert_eq!(status, 403, "{body}");
    let (status, _) = status_of(client().get(s.berth.url("/admin/gc")).header("authorization", &s.alice)).await;
    assert_eq!(status, 403);

    let stray2 = push_blob(&s, "team/app", b"another stray").await;
    let (status, body) =
        status_of(client().post(s.berth.url("/admin/gc?dry_run=true")).header("authorization", &s.admin)).await;
    assert_eq!(status, 200, "{body}");
    let dry: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(dry["items"].as_array().unwrap().iter().any(|i| i["target"] == stray2.as_str()));

    let resp = client().post(s.berth.url("/admin/gc")).header("authorization", &s.admin).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 202);
    assert_eq!(resp.headers()["location"], "/admin/gc");
    // Wait for that pass's report (bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let last = loop {
        let (status, body) = status_of(client().get(s.berth.url("/admin/gc")).header("authorization", &s.admin)).await;
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let done = v["running"].as_array().is_some_and(|r| r.is_empty())
            && v["last"]["items"].as_array().is_some_and(|i| i.iter().any(|x| x["target"] == stray2.as_str()));
        if done {
            break v["last"].clone();
        }
        assert!(std::time::Instant::now() < deadline, "the admin-started pass never reported: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(last["dry_run"], false);
    assert!(last["deleted"]["blobs"].as_u64().unwrap() >= 1);
    assert_eq!(blob_status(&s, "team/app", &stray2).await, 404);

    // Metrics of the server's own pass, and one audit line per deletion.
    let metrics = client().get(s.berth.url("/metrics")).send().await.unwrap().text().await.unwrap();
    if cfg!(feature = "metrics") {
        assert!(metrics.contains(r#"berth_gc_passes_total{outcome="ok"} 1"#), "{metrics}");
        assert!(metrics.contains(r#"berth_gc_deleted_objects_total{kind="blob"} 1"#), "{metrics}");
        assert!(metrics.contains("berth_gc_last_success_timestamp_seconds "), "{metrics}");
    }
    let log = s.berth.stderr();
    let audit: Vec<&str> = log.lines().filter(|l| l.contains("gc_delete")).collect();
    assert!(audit.iter().any(|l| l.contains(&stray2) && l.contains("blob")), "{log}");
    assert!(log.contains("gc_start"), "{log}");

    // Usage, from the CLI and the admin API.
    let out = cli(&s, "usage", &["team/**", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let usage: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let app = &usage["repositories"][0];
    assert_eq!(app["repository"], "team/app");
    assert!(app["bytes"].as_u64().unwrap() >= layer.len() as u64, "{usage}");
    let text = String::from_utf8_lossy(&cli(&s, "usage", &[]).stdout).into_owned();
    assert!(text.contains("REPOSITORY") && text.contains("team/app"), "{text}");
    let (status, body) =
        status_of(client().get(s.berth.url("/admin/usage?repositories=team%2F**")).header("authorization", &s.admin))
            .await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("team/app"), "{body}");
    let (status, _) = status_of(client().get(s.berth.url("/admin/usage")).header("authorization", &s.alice)).await;
    assert_eq!(status, 403);
    let (status, _) =
        status_of(client().get(s.berth.url("/admin/usage?repositories=%2Fbad")).header("authorization", &s.admin))
            .await;
    assert_eq!(status, 400);

    // Scrub: clean from the CLI (exit 0); then a corrupted blob makes it
    // exit 4, and the admin API runs one whose findings reach /metrics.
    let out = cli(&s, "scrub", &["--json"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let blob_file = s.berth.data_dir().join(format!("blobs/sha256/{}/{}@", &keep[7..9], &keep[7..]));
    let mut bytes = std::fs::read(&blob_file).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&blob_file, bytes).unwrap();
    let out = cli(&s, "scrub", &[]);
    assert_eq!(out.status.code(), Some(4));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("corrupt") && text.contains(&keep), "{text}");
    let (status, _) = status_of(client().post(s.berth.url("/admin/scrub")).header("authorization", &s.alice)).await;
    assert_eq!(status, 403);
    let (status, _) = status_of(client().post(s.berth.url("/admin/scrub")).header("authorization", &s.admin)).await;
    assert_eq!(status, 202);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = client().get(s.berth.url("/metrics")).send().await.unwrap().text().await.unwrap();
        if !cfg!(feature = "metrics") || metrics.contains(r#"berth_scrub_findings{class="corrupt"} 1"#) {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (status, body) = status_of(client().get(s.berth.url("/admin/scrub")).header("authorization", &s.admin)).await;
    assert_eq!(status, 200);
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["last"]["corrupt"][0]["target"], keep.as_str(), "{body}");
}

#[test]
fn bad_gc_settings_are_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    for (toml, key) in [
        ("[gc]\ninterval = \"0s\"\n", "gc.interval"),
        ("[gc]\ngrace = \"soon\"\n", "gc.grace"),
        (
            "[[retention.policies]]\nrepositories = \"ci/**\"\nuntagged_after = \"later\"\n",
            "retention.policies[0].untagged_after",
        ),
        ("[[retention.policies]]\nrepositories = \"/x\"\n", "retention.policies[0].repositories"),
        ("[[retention.policies]]\nrepositories = \"x\"\nkeep_everything = true\n", "keep_everything"),
    ] {
        let file = dir.path().join("c.toml");
        std::fs::write(&file, toml).unwrap();
        let out = Command::new(env!("CARGO_BIN_EXE_berth")).args(["config", "check"]).arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{toml}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(key), "{toml}: {err}");
        let out = Command::new(env!("CARGO_BIN_EXE_berth")).args(["gc", "--config"]).arg(&file).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "gc refuses it too: {toml}");
    }
    let file = dir.path().join("ok.toml");
    std::fs::write(
        &file,
        "[gc]\ninterval = \"30m\"\ngrace = \"2h\"\nuntagged_after = \"14d\"\n\
         [[retention.policies]]\nrepositories = \"ci/**\"\nuntagged_after = \"1d\"\n\
         [[retention.policies]]\nrepositories = \"releases/**\"\nuntagged_after = \"never\"\n",
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_berth")).args(["config", "check"]).arg(&file).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(printed.contains("[gc]") && printed.contains("untagged_after"), "{printed}");
}
