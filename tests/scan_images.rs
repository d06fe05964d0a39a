//! Inventories of images built here (tests/scan_images/build.sh: umoci and
//! buildah, from this machine's dpkg database, a distroless status.d, an
//! apk database, an rpmdb written by rpm, pip and npm installs, a Go binary
//! built by Debian's Go and the berth release binary built with cargo
//! auditable, with later layers deleting and replacing packages) compared
//! with Trivy 0.76's on the same OCI layouts; and the RustSec snapshot
//! matched against a binary built with cargo auditable that depends on a
//! crate version with a known advisory.

#![cfg(feature = "scan")]
#![allow(clippy::unwrap_used)]

mod common;
mod scan_support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::Berth;
use scan_support::*;
use serde_json::Value;

fn repo_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn venv() -> PathBuf {
    common::venv_python().parent().unwrap().parent().unwrap().to_path_buf()
}

fn site_packages() -> PathBuf {
    let lib = venv().join("lib");
    let python = std::fs::read_dir(&lib)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("python"))
        .unwrap();
    python.path().join("site-packages")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// PEP 503 for PyPI names; Go versions without their `v`.
fn normalize(kind: &str, name: &str, version: &str) -> (String, String, String) {
    let name = if kind == "pypi" { name.to_ascii_lowercase().replace(['_', '.'], "-") } else { name.to_owned() };
    let version = if kind == "golang" { version.trim_start_matches('v').to_owned() } else { version.to_owned() };
    (kind.to_owned(), name, version)
}

type Inventory = BTreeSet<(String, String, String)>;

/// Trivy's packages: CycloneDX components with a purl. Go main modules
/// built outside version control have no version; Berth leaves those out
/// (no advisory can match them).
fn trivy(layout: &Path, cache: &Path) -> Inventory {
    let out = run(Command::new(venv().join("bin/trivy"))
        .args(["image", "--input"])
        .arg(layout)
        .args([
            "--scanners",
            "license",
            "--format",
            "cyclonedx",
            "--offline-scan",
            "--skip-db-update",
            "--skip-java-db-update",
            "--skip-check-update",
            "--skip-version-check",
            "--disable-telemetry",
            "--quiet",
            "--cache-dir",
        ])
        .arg(cache)
        .env("TRIVY_NO_PROGRESS", "true"));
    let bom: Value = serde_json::from_str(&out).unwrap();
    let mut set = Inventory::new();
    for c in bom["components"].as_array().unwrap() {
        let Some(purl) = c["purl"].as_str() else { continue };
        let kind = purl.strip_prefix("pkg:").unwrap().split('/').next().unwrap();
        let version = c["version"].as_str().unwrap_or_default();
        if version.is_empty() {
            continue;
        }
        set.insert(normalize(kind, c["name"].as_str().unwrap(), version));
    }
    set
}

/// Berth's packages. Lockfiles are left out: Trivy's image scan does not
/// read them (Berth does, and reports them with their path).
fn berth(report: &Value) -> Inventory {
    let mut set = Inventory::new();
    for p in report["platforms"][0]["packages"].as_array().unwrap() {
        if matches!(p["analyzer"].as_str(), Some("npm-lock" | "cargo-lock")) {
            continue;
        }
        let kind = p["type"].as_str().unwrap();
        let mut version = p["version"].as_str().unwrap().to_owned();
        if let Some(e) = p["epoch"].as_u64().filter(|e| *e > 0) {
            version = format!("{e}:{version}");
        }
        set.insert(normalize(kind, p["name"].as_str().unwrap(), &version));
    }
    set
}

fn push_layout(berth: &Berth, layout: &Path, repo: &str) {
    run(Command::new("skopeo")
        .args(["copy", "--quiet", "--insecure-policy", "--dest-tls-verify=false"])
        .arg(format!("oci:{}:t", layout.display()))
        .arg(format!("docker://{}/{repo}:t", berth.addr)));
}

fn by_kind(set: &Inventory) -> std::collections::BTreeMap<String, usize> {
    let mut m = std::collections::BTreeMap::new();
    for (k, _, _) in set {
        *m.entry(k.clone()).or_insert(0) += 1;
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inventories_agree_with_trivy() {
    let out = tempfile::tempdir().unwrap();
    let release = common::release_bin();
    run(Command::new(repo_dir().join("tests/scan_images/build.sh"))
        .arg(out.path().join("images"))
        .arg(&release)
        .arg(site_packages())
        .arg(repo_dir().join("scripts/oracles/node_modules"))
        .arg(repo_dir().join("scripts/oracles/package-lock.json")));
    let server = Berth::start("");
    let cache = out.path().join("trivy-cache");
    for name in ["debian", "distroless", "rocky", "alpine"] {
        let layout = out.path().join("images").join(name);
        push_layout(&server, &layout, &format!("scan/{name}"));
        let r = report(&server.base, &format!("scan/{name}"), "t").await;
        let ours = berth(&r);
        let mut theirs = trivy(&layout, &cache);
        // Trivy also lists the crates a cargo-auditable binary was built
        // from local paths (here the workspace's own: berth, berth-*);
        // Berth leaves them out, as no registry publishes them and no
        // advisory can name them.
        let local = workspace_crates();
        theirs.retain(|(k, n, v)| !(k == "cargo" && local.contains(&(n.clone(), v.clone()))));
        let only_ours: Vec<_> = ours.difference(&theirs).collect();
        let only_theirs: Vec<_> = theirs.difference(&ours).collect();
        eprintln!("{name}: berth {:?}, trivy {:?}", by_kind(&ours), by_kind(&theirs));
        assert!(
            only_ours.is_empty() && only_theirs.is_empty(),
            "{name}: only Berth lists {only_ours:?}\nonly Trivy lists {only_theirs:?}"
        );
        assert!(!ours.is_empty(), "{name}: nothing found");
        match name {
            "debian" => {
                // The whiteouts and the replaced database: no requests, no
                // vim, one of the two semver copies; the pip, npm, Go and
                // cargo-auditable analyzers all found something.
                assert!(!ours.iter().any(|(k, n, _)| k == "pypi" && n == "requests"));
                assert!(!ours.iter().any(|(k, n, _)| k == "deb" && n.starts_with("vim")));
                let semver: Vec<_> = r["platforms"][0]["packages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .filter(|p| p["name"] == "semver" && p["analyzer"] == "npm")
                    .collect();
                assert_eq!(semver.len(), 1, "{semver:?}");
                assert_eq!(semver[0]["path"], "app/node_modules/semver/package.json");
                for kind in ["deb", "pypi", "npm", "golang", "cargo"] {
                    assert!(by_kind(&ours).get(kind).copied().unwrap_or(0) > 0, "no {kind} package");
                }
                assert!(ours.contains(&("cargo".into(), "tokio".into(), tokio_version())), "berth's own tokio");
                assert_eq!(r["os"]["id"], "debian");
            }
            "rocky" => assert!(ours.contains(&("rpm".into(), "tiny".into(), "1:1.2.3-4".into()))),
            "alpine" => assert_eq!(r["os"]["version_id"], "3.20.3"),
            _ => {}
        }
    }
}

/// (name, version) of the workspace's own crates.
fn workspace_crates() -> BTreeSet<(String, String)> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let meta: Value = serde_json::from_str(&run(Command::new(cargo)
        .args(["metadata", "--offline", "--locked", "--no-deps", "--format-version", "1"])
        .current_dir(repo_dir())))
    .unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["name"].as_str().unwrap().to_owned(), p["version"].as_str().unwrap().to_owned()))
        .collect()
}

/// The version of tokio in Cargo.lock (the release binary embeds it).
fn tokio_version() -> String {
    let lock = std::fs::read_to_string(repo_dir().join("Cargo.lock")).unwrap();
    let i = lock.find("name = \"tokio\"\n").unwrap();
    lock[i..].lines().nth(1).unwrap().trim_start_matches("version = \"").trim_end_matches('"').to_owned()
}

/// The RustSec snapshot: BERTH_ADVISORY_DB, else ../shared/advisory-db
/// beside the repository or beside its origin (as scripts/check-supply-chain).
fn advisory_db() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_ADVISORY_DB") {
        return PathBuf::from(p);
    }
    let mut candidates = vec![repo_dir().join("../shared/advisory-db")];
    if let Ok(out) = Command::new("git").args(["remote", "get-url", "origin"]).current_dir(repo_dir()).output() {
        let origin = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if !origin.is_empty() {
            candidates.push(PathBuf::from(origin).join("../shared/advisory-db"));
        }
    }
    candidates
        .into_iter()
        .find(|p| p.join("crates").is_dir())
        .unwrap_or_else(|| panic!("no RustSec snapshot: set BERTH_ADVISORY_DB (see scripts/check-supply-chain)"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rustsec_snapshot_finds_a_vulnerable_crate_in_an_auditable_binary() {
    // A program using smallvec 1.6.0 (RUSTSEC-2021-0003, patched in 1.6.1),
    // built with cargo auditable.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("vulnerable");
    std::fs::create_dir_all(src.join("src")).unwrap();
    std::fs::write(
        src.join("Cargo.toml"),
        "[package]\nname = \"vulnerable\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n[dependencies]\nsmallvec = \"=1.6.0\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::write(
        src.join("src/main.rs"),
        "fn main() { let mut v: smallvec::SmallVec<[u8; 4]> = smallvec::SmallVec::new(); v.push(1); println!(\"{}\", v.len()); }\n",
    )
    .unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    run(Command::new(&cargo)
        .args(["auditable", "build", "--release", "--quiet"])
        .current_dir(&src)
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .env_remove("RUSTFLAGS"));
    let binary = std::fs::read(dir.path().join("target/release/vulnerable")).unwrap();

    let server = Berth::start("");
    let digest = push_image(
        &server.base,
        "rust/app",
        "1",
        &[(LAYER_GZIP, gzip(&tar(&[Item::Exec("usr/local/bin/vulnerable", &binary)])))],
    )
    .await;
    let version = import(&server, &[&advisory_db()]);
    let r = report_with_db(&server.base, "rust/app", "1", &version).await;
    assert_eq!(r["artifact"]["digest"], digest.as_str());
    assert_eq!(findings(&r, "RUSTSEC-2021-0003"), [("smallvec".to_owned(), "1.6.0".to_owned())]);
    let f = r["findings"].as_array().unwrap().iter().find(|f| f["id"] == "RUSTSEC-2021-0003").unwrap();
    assert_eq!(f["path"], "usr/local/bin/vulnerable");
    assert_eq!(f["type"], "cargo");
    assert!(f["aliases"].as_array().unwrap().iter().any(|a| a == "CVE-2021-25900"), "{f}");
    assert_eq!(f["severity"], "critical", "{f}");
    assert!(f["fixed_version"].as_str().unwrap().contains(">= 1.6.1"), "{f}");
}
