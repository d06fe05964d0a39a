//! Building layers and images for the scanner's tests, pushing them over
//! HTTP, and waiting for reports.

#![allow(dead_code)]

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{self, Berth};

pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";

/// One tar entry.
pub enum Item<'a> {
    File(&'a str, &'a [u8]),
    Exec(&'a str, &'a [u8]),
    Symlink(&'a str, &'a str),
    /// A name written as is (no validation): hostile names.
    RawName(&'a [u8], &'a [u8]),
}

/// A tar stream (GNU headers) of the items.
pub fn tar(items: &[Item<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for item in items {
        let mut h = tar::Header::new_gnu();
        match item {
            Item::File(p, data) | Item::Exec(p, data) => {
                h.set_size(data.len() as u64);
                h.set_mode(if matches!(item, Item::Exec(..)) { 0o755 } else { 0o644 });
                h.set_entry_type(tar::EntryType::Regular);
                b.append_data(&mut h, p, *data).unwrap();
            }
            Item::Symlink(p, target) => {
                h.set_size(0);
                h.set_mode(0o777);
                h.set_entry_type(tar::EntryType::Symlink);
                b.append_link(&mut h, p, target).unwrap();
            }
            Item::RawName(name, data) => {
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_entry_type(tar::EntryType::Regular);
                let raw = &mut h.as_old_mut().name;
                raw[..name.len()].copy_from_slice(name);
                h.set_cksum();
                b.append(&h, *data).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut z = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    z.write_all(data).unwrap();
    z.finish().unwrap()
}

/// zstd through the `zstd` command (Debian's), when present.
pub fn zstd(data: &[u8]) -> Option<Vec<u8>> {
    let mut child = std::process::Command::new("zstd")
        .args(["-q", "-c", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .ok()?;
    let mut stdin = child.stdin.take()?;
    let owned = data.to_vec();
    let writer = std::thread::spawn(move || stdin.write_all(&owned));
    let out = child.wait_with_output().ok()?;
    writer.join().ok()?.ok()?;
    out.status.success().then_some(out.stdout)
}

pub async fn push_blob(base: &str, repo: &str, data: &[u8]) -> String {
    let client = common::client();
    let digest = common::sha256(data);
    let resp = client.post(format!("{base}/v2/{repo}/blobs/uploads/")).send().await.unwrap();
    assert_eq!(resp.status(), 202, "{}", resp.text().await.unwrap_or_default());
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    let url = if location.starts_with("http") { location } else { format!("{base}{location}") };
    let sep = if url.contains('?') { '&' } else { '?' };
    let resp = client.put(format!("{url}{sep}digest={digest}")).body(data.to_vec()).send().await.unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap_or_default());
    digest
}

/// Push an image of these (media type, bytes) layers; its manifest digest.
pub async fn push_image(base: &str, repo: &str, tag: &str, layers: &[(&str, Vec<u8>)]) -> String {
    let config =
        format!(r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":[]}},"tag":"{tag}"}}"#);
    let config_digest = push_blob(base, repo, config.as_bytes()).await;
    let mut descs = Vec::new();
    for (mt, data) in layers {
        let d = push_blob(base, repo, data).await;
        descs.push(format!(r#"{{"mediaType":"{mt}","digest":"{d}","size":{}}}"#, data.len()));
    }
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{}]}}"#,
        config.len(),
        descs.join(",")
    );
    let resp = common::client()
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.manifest.v1+json")
        .body(manifest.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap_or_default());
    common::sha256(manifest.as_bytes())
}

/// GET a report, following 202 + Retry-After until it is ready (bounded).
pub async fn report_raw(base: &str, repo: &str, reference: &str, format: &str) -> (u16, String) {
    let client = common::client();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let resp =
            client.get(format!("{base}/v2/{repo}/_berth/scan/{reference}?format={format}")).send().await.unwrap();
        let status = resp.status().as_u16();
        if status != 202 {
            return (status, resp.text().await.unwrap());
        }
        let wait = resp.headers().get("retry-after").and_then(|v| v.to_str().ok()?.parse::<u64>().ok()).unwrap_or(1);
        assert!(Instant::now() < deadline, "{repo}:{reference} still pending after 180 s");
        // Waiting on the scan's readiness as the API asks (Retry-After).
        tokio::time::sleep(Duration::from_secs(wait.min(2))).await;
    }
}

pub async fn report(base: &str, repo: &str, reference: &str) -> Value {
    let (status, body) = report_raw(base, repo, reference, "json").await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

/// `berth vulndb import` against the server's configuration.
pub fn import(berth: &Berth, paths: &[&Path]) -> String {
    import_logged(berth, paths).0
}

/// The imported version and the command's log (stderr).
pub fn import_logged(berth: &Berth, paths: &[&Path]) -> (String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["vulndb", "import", "--json", "--config"])
        .arg(berth.dir.path().join("berth.toml"))
        .args(paths)
        .output()
        .unwrap();
    assert!(out.status.success(), "import: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["version"].as_str().unwrap().to_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Run the berth CLI against the server's configuration: (exit status, stdout, stderr).
pub fn cli(berth: &Berth, args: &[&str]) -> (i32, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_berth"));
    cmd.args(args).arg("--config").arg(berth.dir.path().join("berth.toml"));
    let out = cmd.output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Push an index of these (manifest digest, size, os/arch) children.
pub async fn push_index(base: &str, repo: &str, tag: &str, children: &[(&str, u64, &str, &str)]) -> String {
    let manifests: Vec<String> = children
        .iter()
        .map(|(d, size, os, arch)| {
            format!(r#"{{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"{d}","size":{size},"platform":{{"os":"{os}","architecture":"{arch}"}}}}"#)
        })
        .collect();
    let index = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{}]}}"#,
        manifests.join(",")
    );
    let resp = common::client()
        .put(format!("{base}/v2/{repo}/manifests/{tag}"))
        .header("content-type", "application/vnd.oci.image.index.v1+json")
        .body(index.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap_or_default());
    common::sha256(index.as_bytes())
}

/// The size of a manifest as the registry serves it.
pub async fn manifest_size(base: &str, repo: &str, reference: &str) -> u64 {
    let resp = common::client()
        .get(format!("{base}/v2/{repo}/manifests/{reference}"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    resp.bytes().await.unwrap().len() as u64
}

/// Wait until the server's reports use database `version` (replicas read
/// the pointer at most every few seconds).
pub async fn report_with_db(base: &str, repo: &str, reference: &str, version: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = report(base, repo, reference).await;
        if r["database"]["version"] == version {
            return r;
        }
        assert!(Instant::now() < deadline, "the server did not switch to database {version}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// (package, installed version) of every finding with this id.
pub fn findings(r: &Value, id: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = r["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["id"] == id)
        .map(|f| (f["package"].as_str().unwrap().to_owned(), f["installed_version"].as_str().unwrap().to_owned()))
        .collect();
    out.sort();
    out
}

pub fn ids(r: &Value) -> Vec<String> {
    let mut out: Vec<String> =
        r["findings"].as_array().unwrap().iter().map(|f| f["id"].as_str().unwrap().to_owned()).collect();
    out.sort();
    out.dedup();
    out
}

/// `name@version` of every package of the report's first platform.
pub fn packages(r: &Value) -> Vec<String> {
    let mut out: Vec<String> = r["platforms"][0]["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| format!("{}@{}", p["name"].as_str().unwrap(), p["version"].as_str().unwrap()))
        .collect();
    out.sort();
    out
}
