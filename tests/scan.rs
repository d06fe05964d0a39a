//! The scan extension over HTTP: layers in every compression, whiteouts and
//! replaced files, every analyzer's file format, OSV fixtures of each
//! ecosystem (and a RustSec-format advisory) matched into reports, 202
//! while pending, the CycloneDX and SARIF renderings, the pull policy, a
//! new database changing reports without a layer being inventoried again,
//! and hostile layers reported per layer while the registry keeps serving.

#![cfg(feature = "scan")]
#![allow(clippy::unwrap_used)]

mod common;
mod scan_support;

use std::path::Path;

use common::Berth;
use scan_support::*;
use serde_json::Value;

const DEB_STATUS: &str = "Package: libssl3\nStatus: install ok installed\nArchitecture: amd64\n\
Source: openssl\nVersion: 3.0.11-1~deb12u1\nDescription: TLS\n multi-line: text\n\n\
Package: openssl\nStatus: install ok installed\nArchitecture: amd64\nVersion: 3.0.11-1~deb12u1\n\n\
Package: libc6\nStatus: install ok installed\nArchitecture: amd64\nSource: glibc\nVersion: 2.36-9+deb12u4\n\n\
Package: removed\nStatus: deinstall ok config-files\nVersion: 1.0\n";

const APK_DB: &str = "C:Q1x=\nP:musl\nV:1.2.5-r0\nA:x86_64\nL:MIT\no:musl\n\n\
C:Q1y=\nP:libcrypto3\nV:3.3.1-r0\nA:x86_64\nL:Apache-2.0\no:openssl\n\n\
C:Q1z=\nP:libssl3\nV:3.3.1-r0\nA:x86_64\no:openssl\n";

fn osv(id: &str, ecosystem: &str, name: &str, range_type: &str, events: &str, extra: &str) -> String {
    format!(
        r#"{{"schema_version":"1.6.0","id":"{id}","modified":"2026-11-01T00:00:00Z","published":"2026-10-01T00:00:00Z",
"aliases":["CVE-{id}"],"summary":"{name}: a test advisory",
"severity":[{{"type":"CVSS_V3","score":"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H"}}],
"affected":[{{"package":{{"ecosystem":"{ecosystem}","name":"{name}"}},
"ranges":[{{"type":"{range_type}","events":{events}}}]{extra}}}],
"references":[{{"type":"ADVISORY","url":"https://example.invalid/{id}"}}]}}"#
    )
}

/// OSV files of each ecosystem, in a directory like osv.dev's exports.
fn write_fixtures(dir: &Path) {
    let files = [
        // Debian names the source package; libssl3 and openssl are built from it.
        (
            "Debian",
            osv(
                "DSA-0001",
                "Debian:12",
                "openssl",
                "ECOSYSTEM",
                r#"[{"introduced":"0"},{"fixed":"3.0.11-1~deb12u2"}]"#,
                "",
            ),
        ),
        // Fixed before the installed version: not a finding.
        (
            "Debian",
            osv(
                "DSA-0002",
                "Debian:12",
                "glibc",
                "ECOSYSTEM",
                r#"[{"introduced":"0"},{"fixed":"2.36-9+deb12u3"}]"#,
                "",
            ),
        ),
        // Another release of Debian: not this image.
        ("Debian", osv("DSA-0003", "Debian:11", "glibc", "ECOSYSTEM", r#"[{"introduced":"0"},{"fixed":"2.99"}]"#, "")),
        (
            "Alpine",
            osv(
                "ALPINE-0001",
                "Alpine:v3.20",
                "openssl",
                "ECOSYSTEM",
                r#"[{"introduced":"0"},{"fixed":"3.3.2-r0"}]"#,
                "",
            ),
        ),
        (
            "Alpine",
            osv("ALPINE-0002", "Alpine:v3.20", "musl", "ECOSYSTEM", r#"[{"introduced":"0"},{"fixed":"1.2.4-r0"}]"#, ""),
        ),
        (
            "Rocky",
            osv(
                "RLSA-0001",
                "Rocky Linux:9",
                "bash",
                "ECOSYSTEM",
                r#"[{"introduced":"0"},{"fixed":"5.1.8-9.el9"}]"#,
                "",
            ),
        ),
        (
            "PyPI",
            osv("PYSEC-0001", "PyPI", "Requests", "ECOSYSTEM", r#"[{"introduced":"2.3.0"},{"fixed":"2.32.0"}]"#, ""),
        ),
        (
            "PyPI",
            osv("PYSEC-0002", "PyPI", "urllib3", "ECOSYSTEM", r#"[{"introduced":"0"}]"#, r#","versions":["2.0.6"]"#),
        ),
        ("npm", osv("GHSA-0001", "npm", "lodash", "SEMVER", r#"[{"introduced":"0"},{"fixed":"4.17.21"}]"#, "")),
        ("Go", osv("GO-0001", "Go", "golang.org/x/text", "SEMVER", r#"[{"introduced":"0"},{"fixed":"0.3.8"}]"#, "")),
        ("Go", osv("GO-0002", "Go", "stdlib", "SEMVER", r#"[{"introduced":"1.21.0"},{"last_affected":"1.21.4"}]"#, "")),
        (
            "crates.io",
            osv("GHSA-crate-0001", "crates.io", "time", "SEMVER", r#"[{"introduced":"0.2.7"},{"fixed":"0.2.23"}]"#, ""),
        ),
    ];
    for (i, (eco, text)) in files.iter().enumerate() {
        let d = dir.join("osv").join(eco);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("{i}.json")), text).unwrap();
    }
    // The Alpine ones as a zip export, the way osv.dev publishes them.
    let alpine = dir.join("osv/Alpine");
    let zip_file = std::fs::File::create(dir.join("alpine-all.zip")).unwrap();
    let mut zip = zip::ZipWriter::new(zip_file);
    let stored = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let mut names: Vec<_> = std::fs::read_dir(&alpine).unwrap().flatten().map(|e| e.path()).collect();
    names.sort();
    for path in names {
        zip.start_file(path.file_name().unwrap().to_string_lossy(), stored).unwrap();
        std::io::Write::write_all(&mut zip, &std::fs::read(&path).unwrap()).unwrap();
    }
    zip.finish().unwrap();
    std::fs::remove_dir_all(&alpine).unwrap();
    // A RustSec-format advisory (the real snapshot is tested against a
    // cargo-auditable binary in tests/scan_images.rs).
    let rs = dir.join("rustsec/crates/smallvec");
    std::fs::create_dir_all(&rs).unwrap();
    std::fs::write(
        rs.join("RUSTSEC-2021-0003.md"),
        "```toml\n[advisory]\nid = \"RUSTSEC-2021-0003\"\npackage = \"smallvec\"\ndate = \"2021-01-08\"\n\
cvss = \"CVSS:3.1/AV:N/AC:L/PR:N/UI:N/S:U/C:H/I:H/A:H\"\naliases = [\"CVE-2021-25900\"]\n\n[versions]\n\
patched = [\">= 0.6.14, < 1.0.0\", \">= 1.6.1\"]\n```\n\n# Buffer overflow in SmallVec::insert_many\n",
    )
    .unwrap();
}

/// A Go binary as far as the analyzer cares: an ELF file holding Go 1.18+
/// build information (the inline form).
fn go_binary() -> Vec<u8> {
    let mut data = b"\x7fELF".to_vec();
    data.resize(4096, 0);
    let mut h = b"\xff Go buildinf:".to_vec();
    h.extend([8, 2]);
    h.resize(32, 0);
    let modinfo = "0123456789abcdefpath\texample.com/app\nmod\texample.com/app\t(devel)\t\n\
dep\tgolang.org/x/text\tv0.3.7\th1:x=\nbuild\t-compiler=gc\n0123456789abcdef";
    for s in ["go1.21.3", modinfo] {
        // Length as an unsigned varint.
        let mut n = s.len();
        while n >= 0x80 {
            h.push((n as u8 & 0x7f) | 0x80);
            n >>= 7;
        }
        h.push(n as u8);
        h.extend_from_slice(s.as_bytes());
    }
    data.extend(h);
    data.resize(8192, 0);
    data
}

fn pairs(v: &[(&str, &str)]) -> Vec<(String, String)> {
    v.iter().map(|(a, b)| ((*a).to_owned(), (*b).to_owned())).collect()
}

fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with([' ', '{']) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reports_match_each_ecosystem_and_follow_the_database() {
    let berth = Berth::start(
        "[scan]\non_push = false\nworkers = 1\n\
[[scan.policies]]\nrepositories = \"prod/**\"\nseverity = \"high\"\nallow = [\"CVE-GHSA-0001\"]\n",
    );
    let base = berth.base.clone();

    // Debian: os-release behind a symlink, the status file replaced by a
    // later layer, a distroless status.d file whited out, all three
    // compressions.
    let deb_base = tar(&[
        Item::File("usr/lib/os-release", b"ID=debian\nVERSION_ID=\"12\"\nVERSION_CODENAME=bookworm\n"),
        Item::Symlink("etc/os-release", "../usr/lib/os-release"),
        Item::File("var/lib/dpkg/status", b"Package: old\nStatus: install ok installed\nVersion: 1\n"),
        Item::File("var/lib/dpkg/status.d/tzdata", b"Package: tzdata\nVersion: 2024a-0+deb12u1\nArchitecture: all\n"),
        Item::File("var/lib/dpkg/status.d/gone", b"Package: gone\nVersion: 1.0\n"),
    ]);
    let deb_top = tar(&[
        Item::File("var/lib/dpkg/status", DEB_STATUS.as_bytes()),
        Item::File("var/lib/dpkg/status.d/.wh.gone", b""),
    ]);
    let lang = tar(&[
        Item::File("usr/lib/python3/site-packages/requests-2.31.0.dist-info/METADATA", b"Metadata-Version: 2.1\nName: requests\nVersion: 2.31.0\nLicense: Apache 2.0\n\nbody\n"),
        Item::File("usr/lib/python3/site-packages/urllib3-2.0.6.dist-info/METADATA", b"Name: urllib3\nVersion: 2.0.6\n"),
        Item::File("app/node_modules/lodash/package.json", br#"{"name":"lodash","version":"4.17.20","license":"MIT"}"#),
        Item::File("app/package-lock.json", br#"{"lockfileVersion":3,"packages":{"":{"name":"app"},"node_modules/lodash":{"version":"4.17.20"}}}"#),
        Item::File(
            "src/Cargo.lock",
            b"version = 3\n[[package]]\nname = \"smallvec\"\nversion = \"1.6.0\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n\n\
[[package]]\nname = \"time\"\nversion = \"0.2.22\"\nsource = \"registry+https://github.com/rust-lang/crates.io-index\"\n",
        ),
        Item::Exec("usr/local/bin/app", &go_binary()),
    ]);
    let zstd_layer = zstd(&lang).expect("the zstd command (scripts/install-test-deps)");
    let deb = push_image(
        &base,
        "prod/deb",
        "1",
        &[(LAYER_GZIP, gzip(&deb_base)), (LAYER_TAR, deb_top), (LAYER_ZSTD, zstd_layer)],
    )
    .await;

    // Alpine and Rocky (an rpmdb.sqlite made by the sqlite3 tool from RPM
    // headers; tests/scan_images.rs uses one made by rpm itself).
    let apk = push_image(
        &base,
        "dev/alpine",
        "1",
        &[(
            LAYER_GZIP,
            gzip(&tar(&[
                Item::File("etc/os-release", b"ID=alpine\nVERSION_ID=3.20.3\n"),
                Item::File("lib/apk/db/installed", APK_DB.as_bytes()),
            ])),
        )],
    )
    .await;
    let rpmdb = rpmdb_sqlite(&[
        ("bash", "5.1.8", "6.el9", "bash-5.1.8-6.el9.src.rpm"),
        ("zlib", "1.2.11", "40.el9", "zlib-1.2.11-40.el9.src.rpm"),
    ]);
    let rocky = push_image(
        &base,
        "dev/rocky",
        "1",
        &[(
            LAYER_GZIP,
            gzip(&tar(&[
                Item::File("etc/os-release", b"ID=\"rocky\"\nVERSION_ID=\"9.3\"\n"),
                Item::File("var/lib/rpm/rpmdb.sqlite", &rpmdb),
            ])),
        )],
    )
    .await;
    // Scratch: a static binary only.
    let scratch = push_image(&base, "dev/scratch", "1", &[(LAYER_TAR, tar(&[Item::Exec("hello", &[7u8; 128])]))]).await;

    // Not queued on push (on_push = false): the first read answers 202.
    let resp = common::client().get(format!("{base}/v2/prod/deb/_berth/scan/1")).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    assert!(resp.headers().contains_key("retry-after"));

    // Inventory only, before any database.
    let r = report(&base, "prod/deb", "1").await;
    assert!(r["database"].is_null());
    assert_eq!(r["os"]["id"], "debian");
    assert_eq!(r["artifact"]["digest"], deb.as_str());
    let pk = packages(&r);
    for want in [
        "libssl3@3.0.11-1~deb12u1",
        "openssl@3.0.11-1~deb12u1",
        "libc6@2.36-9+deb12u4",
        "tzdata@2024a-0+deb12u1",
        "requests@2.31.0",
        "urllib3@2.0.6",
        "lodash@4.17.20",
        "smallvec@1.6.0",
        "stdlib@1.21.3",
        "golang.org/x/text@v0.3.7",
    ] {
        assert!(pk.contains(&want.to_owned()), "{want} missing from {pk:?}");
    }
    // Replaced by the top layer, whited out, or not installed.
    for gone in ["old@1", "gone@1.0", "removed@1.0"] {
        assert!(!pk.contains(&gone.to_owned()), "{gone} still listed");
    }
    let analyzers = &r["platforms"][0]["analyzers"];
    for a in ["dpkg", "python", "npm", "npm-lock", "cargo-lock", "gobinary"] {
        assert!(analyzers[a].as_u64().unwrap_or(0) > 0, "{a}: {analyzers}");
    }
    let layers = r["platforms"][0]["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 3);
    assert!(layers.iter().all(|l| l["errors"].as_array().is_none_or(|e| e.is_empty())), "{layers:?}");

    let sc = report(&base, "dev/scratch", "1").await;
    assert!(sc["os"].is_null(), "{sc}");
    let nothing: Vec<&str> =
        sc["platforms"][0]["nothing_found"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
    for a in ["os-release", "dpkg", "apk", "rpm", "gobinary", "cargo-auditable", "python", "npm"] {
        assert!(nothing.contains(&a), "{a} not in {nothing:?}");
    }
    assert_eq!(sc["package_count"], 0);
    assert_eq!(sc["artifact"]["digest"], scratch.as_str());
    assert!(sc["platforms"][0]["layers"][0]["errors"].as_array().is_none_or(|e| e.is_empty()));

    // The database: OSV fixtures of each ecosystem and a RustSec advisory.
    let fixtures = tempfile::tempdir().unwrap();
    write_fixtures(fixtures.path());
    let (v1, import_log) = import_logged(
        &berth,
        &[&fixtures.path().join("osv"), &fixtures.path().join("alpine-all.zip"), &fixtures.path().join("rustsec")],
    );
    assert!(import_log.contains("vulndb_import"), "no audit line for the import: {import_log}");
    let r = report_with_db(&base, "prod/deb", "1", &v1).await;
    assert_eq!(findings(&r, "DSA-0001"), pairs(&[("libssl3", "3.0.11-1~deb12u1"), ("openssl", "3.0.11-1~deb12u1")]));
    let dsa = r["findings"].as_array().unwrap().iter().find(|f| f["id"] == "DSA-0001").unwrap();
    assert_eq!(dsa["fixed_version"], "3.0.11-1~deb12u2");
    assert_eq!(dsa["severity"], "critical");
    assert_eq!(dsa["score"], 9.8);
    assert_eq!(dsa["path"], "var/lib/dpkg/status");
    assert_eq!(dsa["aliases"][0], "CVE-DSA-0001");
    assert!(dsa["layer"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(findings(&r, "PYSEC-0001"), pairs(&[("requests", "2.31.0")]));
    assert_eq!(findings(&r, "PYSEC-0002"), pairs(&[("urllib3", "2.0.6")]));
    // Both the installed package.json and the lockfile name lodash.
    assert_eq!(findings(&r, "GHSA-0001"), pairs(&[("lodash", "4.17.20"), ("lodash", "4.17.20")]));
    assert_eq!(findings(&r, "GO-0001"), pairs(&[("golang.org/x/text", "v0.3.7")]));
    assert_eq!(findings(&r, "GO-0002"), pairs(&[("stdlib", "1.21.3")]));
    assert_eq!(findings(&r, "RUSTSEC-2021-0003"), pairs(&[("smallvec", "1.6.0")]));
    assert_eq!(findings(&r, "GHSA-crate-0001"), pairs(&[("time", "0.2.22")]));
    let found = ids(&r);
    for absent in ["DSA-0002", "DSA-0003"] {
        assert!(!found.contains(&absent.to_owned()), "{absent} in {found:?}");
    }
    assert_eq!(r["summary"]["critical"].as_u64().unwrap() as usize, r["findings"].as_array().unwrap().len());

    let a = report_with_db(&base, "dev/alpine", "1", &v1).await;
    assert_eq!(findings(&a, "ALPINE-0001"), pairs(&[("libcrypto3", "3.3.1-r0"), ("libssl3", "3.3.1-r0")]));
    assert_eq!(ids(&a), ["ALPINE-0001"]);
    assert_eq!(a["artifact"]["digest"], apk.as_str());
    let k = report_with_db(&base, "dev/rocky", "1", &v1).await;
    assert_eq!(findings(&k, "RLSA-0001"), pairs(&[("bash", "5.1.8-6.el9")]));
    assert_eq!(ids(&k), ["RLSA-0001"]);
    assert_eq!(k["artifact"]["digest"], rocky.as_str());

    // Every platform of an index: an arm64 variant with only musl.
    let apk2 = push_image(
        &base,
        "dev/alpine",
        "2",
        &[(
            LAYER_GZIP,
            gzip(&tar(&[
                Item::File("etc/os-release", b"ID=alpine\nVERSION_ID=3.20.3\n"),
                Item::File("lib/apk/db/installed", b"P:musl\nV:1.2.5-r0\no:musl\n"),
            ])),
        )],
    )
    .await;
    let s1 = manifest_size(&base, "dev/alpine", "1").await;
    let s2 = manifest_size(&base, "dev/alpine", "2").await;
    push_index(&base, "dev/alpine", "multi", &[(&apk, s1, "linux", "amd64"), (&apk2, s2, "linux", "arm64")]).await;
    let m = report_with_db(&base, "dev/alpine", "multi", &v1).await;
    let platforms: Vec<&str> =
        m["platforms"].as_array().unwrap().iter().map(|p| p["platform"].as_str().unwrap()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    assert_eq!(m["package_count"], 4);
    let f: Vec<(&str, &str)> = m["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["id"].as_str().unwrap(), f["platform"].as_str().unwrap()))
        .collect();
    assert_eq!(f, [("ALPINE-0001", "linux/amd64"), ("ALPINE-0001", "linux/amd64")]);

    // The CLI: the same report, exit statuses, the database's status.
    let (code, out, err) = cli(&berth, &["scan", "dev/alpine:1", "--format", "json"]);
    assert_eq!(code, 0, "{err}");
    let j: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(ids(&j), ["ALPINE-0001"]);
    let (code, out, _) = cli(&berth, &["scan", "dev/alpine:1"]);
    assert_eq!(code, 0);
    assert!(out.contains("ALPINE-0001") && out.contains("alpine 3.20.3"), "{out}");
    assert_eq!(cli(&berth, &["scan", &format!("dev/alpine@{apk}"), "--fail-on", "high"]).0, 3);
    assert_eq!(cli(&berth, &["scan", "dev/rocky:1", "--format", "sarif", "--fail-on", "critical"]).0, 3);
    let (code, _, err) = cli(&berth, &["scan", "dev/nope:1"]);
    assert_eq!(code, 1);
    assert!(err.contains("manifest unknown"), "{err}");
    assert_eq!(cli(&berth, &["scan", "Bad Name"]).0, 2);
    let (code, out, _) = cli(&berth, &["vulndb", "status", "--json"]);
    assert_eq!(code, 0);
    let st: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(st["version"], v1.as_str());
    let kinds: Vec<&str> = st["sources"].as_array().unwrap().iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["osv", "osv-zip", "rustsec"]);
    assert_eq!(st["ecosystems"]["alpine"], 2);

    // Renderings.
    let (status, cdx) = report_raw(&base, "prod/deb", "1", "cyclonedx").await;
    assert_eq!(status, 200);
    let cdx: Value = serde_json::from_str(&cdx).unwrap();
    assert_eq!(cdx["bomFormat"], "CycloneDX");
    let comps = cdx["components"].as_array().unwrap();
    assert!(
        comps.iter().any(|c| c["purl"].as_str().unwrap().starts_with("pkg:deb/debian/libssl3@3.0.11-1~deb12u1")),
        "{comps:?}"
    );
    assert!(comps.iter().any(|c| c["purl"] == "pkg:golang/golang.org/x/text@v0.3.7"));
    let vex = cdx["vulnerabilities"].as_array().unwrap();
    let dsa = vex.iter().find(|v| v["id"] == "DSA-0001").unwrap();
    assert_eq!(dsa["affects"].as_array().unwrap().len(), 2);
    assert_eq!(dsa["analysis"]["state"], "exploitable");
    let (status, sarif) = report_raw(&base, "prod/deb", "1", "sarif").await;
    assert_eq!(status, 200);
    let sarif: Value = serde_json::from_str(&sarif).unwrap();
    assert_eq!(sarif["version"], "2.1.0");
    assert_eq!(sarif["runs"][0]["results"].as_array().unwrap().len(), r["findings"].as_array().unwrap().len());
    let (status, body) = report_raw(&base, "prod/deb", "1", "xml").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("UNSUPPORTED"));
    let (status, body) = report_raw(&base, "prod/deb", "nope", "json").await;
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("MANIFEST_UNKNOWN"));

    // The policy on prod/**: critical findings refuse the pull, naming the
    // count and the worst; dev/** has no policy.
    let resp = common::client()
        .get(format!("{base}/v2/prod/deb/manifests/1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    let body = resp.text().await.unwrap();
    assert!(
        body.contains("DENIED") && body.contains("finding(s) at or above high") && body.contains("the worst is"),
        "{body}"
    );
    let log = berth.stderr();
    assert!(log.contains("scan_policy_deny"), "no audit line for the refusal");
    // An allowlisted finding does not count: lodash's only finding.
    push_image(
        &base,
        "prod/npm",
        "1",
        &[(
            LAYER_TAR,
            tar(&[Item::File("app/node_modules/lodash/package.json", br#"{"name":"lodash","version":"4.17.20"}"#)]),
        )],
    )
    .await;
    let n = report_with_db(&base, "prod/npm", "1", &v1).await;
    assert_eq!(ids(&n), ["GHSA-0001"]);
    let resp = common::client()
        .get(format!("{base}/v2/prod/npm/manifests/1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "the allowlisted finding refused the pull");
    let resp = common::client()
        .get(format!("{base}/v2/dev/alpine/manifests/1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    // A new database: a fix for lodash withdrawn, an advisory for tzdata
    // added. Reports change; no layer is inventoried again.
    let before = common::client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    let layers_before = metric(&before, "berth_scan_layers_total");
    assert_eq!(layers_before, 8.0, "every layer inventoried once");
    let fixtures2 = tempfile::tempdir().unwrap();
    write_fixtures(fixtures2.path());
    std::fs::write(
        fixtures2.path().join("osv/Debian/tz.json"),
        osv("DSA-0004", "Debian:12", "tzdata", "ECOSYSTEM", r#"[{"introduced":"0"},{"fixed":"2024b-0+deb12u1"}]"#, ""),
    )
    .unwrap();
    let npm_fixture = fixtures2.path().join("osv/npm/8.json");
    let text = std::fs::read_to_string(&npm_fixture).unwrap();
    let withdrawn = text.replacen(r#""id":"GHSA-0001","#, r#""id":"GHSA-0001","withdrawn":"2026-11-02T00:00:00Z","#, 1);
    std::fs::write(&npm_fixture, withdrawn).unwrap();
    let v2 = import(
        &berth,
        &[&fixtures2.path().join("osv"), &fixtures2.path().join("alpine-all.zip"), &fixtures2.path().join("rustsec")],
    );
    assert_ne!(v1, v2);
    let r2 = report_with_db(&base, "prod/deb", "1", &v2).await;
    assert_eq!(findings(&r2, "DSA-0004"), pairs(&[("tzdata", "2024a-0+deb12u1")]));
    assert!(findings(&r2, "GHSA-0001").is_empty());
    let after = common::client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert_eq!(metric(&after, "berth_scan_layers_total"), layers_before, "layers were inventoried again");
    assert!(metric(&after, "berth_scan_policy_denials_total") >= 1.0);
    assert!(metric(&after, "berth_scan_reports_total") >= 4.0);

    // The extension is listed.
    let d: Value =
        common::client().get(format!("{base}/v2/_oci/ext/discover")).send().await.unwrap().json().await.unwrap();
    assert!(d["extensions"].as_array().unwrap().iter().any(|e| e["name"] == "_berth.scan"), "{d}");
}

/// An rpmdb.sqlite made by the sqlite3 tool: the `Packages` table rpm
/// writes (hnum, blob), each blob an RPM header.
fn rpmdb_sqlite(pkgs: &[(&str, &str, &str, &str)]) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("rpmdb.sqlite");
    let mut sql = String::from("CREATE TABLE Packages (hnum INTEGER PRIMARY KEY AUTOINCREMENT, blob BLOB NOT NULL);\n");
    for (name, version, release, src) in pkgs {
        let h = rpm_header(&[(1000, name), (1001, version), (1002, release), (1022, "x86_64"), (1044, src)]);
        sql.push_str(&format!("INSERT INTO Packages (blob) VALUES (X'{}');\n", hex::encode(h)));
    }
    // Enough rows to spill past one page and use overflow pages.
    let big = "x".repeat(6000);
    let h = rpm_header(&[(1000, "big"), (1001, "1"), (1002, "1"), (1004, &big)]);
    sql.push_str(&format!("INSERT INTO Packages (blob) VALUES (X'{}');\n", hex::encode(h)));
    let out = std::process::Command::new("sqlite3").arg(&db).arg(sql).output().expect("sqlite3");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(&db).unwrap()
}

fn rpm_header(strings: &[(u32, &str)]) -> Vec<u8> {
    let mut index = Vec::new();
    let mut data = Vec::new();
    for (tag, s) in strings {
        index.extend(tag.to_be_bytes());
        index.extend(6u32.to_be_bytes());
        index.extend((data.len() as u32).to_be_bytes());
        index.extend(1u32.to_be_bytes());
        data.extend(s.as_bytes());
        data.push(0);
    }
    let mut out = ((index.len() / 16) as u32).to_be_bytes().to_vec();
    out.extend((data.len() as u32).to_be_bytes());
    out.extend(index);
    out.extend(data);
    out
}

/// 10 GiB of zeros as concatenated gzip members (a reader of gzip streams
/// reads them as one): the first holds a tar header for one 10 GiB file.
fn gzip_bomb() -> Vec<u8> {
    const CHUNK: usize = 64 << 20;
    let zeros = vec![0u8; CHUNK];
    let member = gzip(&zeros);
    let mut header = tar::Header::new_gnu();
    header.set_path("bomb.bin").unwrap();
    header.set_size(10 << 30);
    header.set_mode(0o644);
    header.set_cksum();
    let mut first = header.as_bytes().to_vec();
    first.extend_from_slice(&zeros[..CHUNK - 512]);
    let mut out = gzip(&first);
    for _ in 1..160 {
        out.extend_from_slice(&member);
    }
    out
}

/// 4 MiB of incompressible data, then a GNU long name of 300 MiB: the tar
/// reader would hold the name in memory, were it not refused first.
fn long_name_layer() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let noise = common::bytes(4 << 20, 5);
    let mut h = tar::Header::new_gnu();
    h.set_size(noise.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "noise.bin", noise.as_slice()).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(300 << 20);
    h.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
    h.set_cksum();
    b.append(&h, std::io::Read::take(std::io::repeat(b'a'), 300 << 20)).unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    b.append_data(&mut h, "after", &b"abc"[..]).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

/// A legitimate layer that starts with 300 MiB of text compressing several
/// hundred to one, then 8 MiB of incompressible data and a Python package:
/// within 100 times the blob's size, so no bomb.
fn compressible_layer() -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(300 << 20);
    h.set_mode(0o644);
    b.append_data(&mut h, "var/log/app.log", std::io::Read::take(std::io::repeat(b'x'), 300 << 20)).unwrap();
    let noise = common::bytes(8 << 20, 6);
    let mut h = tar::Header::new_gnu();
    h.set_size(noise.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "opt/noise.bin", noise.as_slice()).unwrap();
    let meta = b"Name: six\nVersion: 1.16.0\n";
    let mut h = tar::Header::new_gnu();
    h.set_size(meta.len() as u64);
    h.set_mode(0o644);
    b.append_data(&mut h, "usr/lib/python3/site-packages/six-1.16.0.dist-info/METADATA", &meta[..]).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

/// A GNU sparse tar of a 10 GiB file at `var/lib/dpkg/status`, made by GNU tar.
fn sparse_layer() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("var/lib/dpkg");
    std::fs::create_dir_all(&status).unwrap();
    let f = std::fs::File::create(status.join("status")).unwrap();
    f.set_len(10 << 30).unwrap();
    let out = dir.path().join("layer.tar");
    let ok = std::process::Command::new("tar")
        .args(["--sparse", "--format=gnu", "-C"])
        .arg(dir.path())
        .args(["-cf"])
        .arg(&out)
        .arg("var")
        .status()
        .unwrap();
    assert!(ok.success());
    let data = std::fs::read(&out).unwrap();
    assert!(data.len() < 1 << 20, "the sparse tar is {} bytes", data.len());
    data
}

fn layer_problems(r: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for l in r["platforms"][0]["layers"].as_array().unwrap() {
        for k in ["errors", "warnings"] {
            for e in l[k].as_array().into_iter().flatten() {
                out.push(format!("{k}: {}", e.as_str().unwrap()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_layers_are_reported_per_layer_and_the_registry_keeps_serving() {
    let berth = Berth::start("[scan]\nworkers = 2\n");
    let base = berth.base.clone();
    let os = Item::File("etc/os-release", b"ID=debian\nVERSION_ID=12\n");

    let not_tar = push_image(&base, "bad/nottar", "1", &[(LAYER_GZIP, gzip(&common::bytes(100_000, 7)))]).await;
    let garbage = push_image(&base, "bad/garbage", "1", &[(LAYER_TAR, common::bytes(100_000, 8))]).await;
    let bomb = push_image(&base, "bad/bomb", "1", &[(LAYER_GZIP, gzip_bomb())]).await;
    let sparse = push_image(&base, "bad/sparse", "1", &[(LAYER_TAR, tar(&[os])), (LAYER_TAR, sparse_layer())]).await;
    let traversal = push_image(
        &base,
        "bad/traversal",
        "1",
        &[(
            LAYER_TAR,
            tar(&[
                Item::RawName(b"../../etc/os-release", b"ID=evil\nVERSION_ID=1\n"),
                Item::RawName(b"/etc/../../../var/lib/dpkg/status", b"Package: evil\nVersion: 1\n"),
                Item::File("var/lib/dpkg/status", b"Package: good\nStatus: install ok installed\nVersion: 1.0\n"),
            ]),
        )],
    )
    .await;
    let loops = push_image(
        &base,
        "bad/loops",
        "1",
        &[(
            LAYER_TAR,
            tar(&[
                Item::Symlink("etc/os-release", "../usr/lib/os-release"),
                Item::Symlink("usr/lib/os-release", "../../etc/os-release"),
            ]),
        )],
    )
    .await;
    let compressible = push_image(&base, "good/compressible", "1", &[(LAYER_GZIP, compressible_layer())]).await;
    let long_name = push_image(&base, "bad/longname", "1", &[(LAYER_GZIP, long_name_layer())]).await;
    let bdb = push_image(
        &base,
        "bad/bdb",
        "1",
        &[(
            LAYER_TAR,
            tar(&[
                Item::File("etc/os-release", b"ID=centos\nVERSION_ID=7\n"),
                Item::File("var/lib/rpm/Packages", &[0u8; 4096]),
            ]),
        )],
    )
    .await;
    let mut huge = String::new();
    let paragraph = "Package: filler\nStatus: install ok installed\nVersion: 1.0\nDescription: x\n";
    while huge.len() < 100 << 20 {
        huge.push_str(paragraph);
        huge.push('\n');
    }
    let big_status = push_image(
        &base,
        "bad/status",
        "1",
        &[(LAYER_TAR, tar(&[Item::File("var/lib/dpkg/status", huge.as_bytes())]))],
    )
    .await;
    drop(huge);

    let expect = |r: &Value, digest: &str, want: &str| {
        assert_eq!(r["artifact"]["digest"], digest);
        let p = layer_problems(r);
        assert!(p.iter().any(|e| e.contains(want)), "expected {want:?} in {p:?}");
    };
    expect(&report(&base, "bad/nottar", "1").await, &not_tar, "errors: not a tar archive");
    expect(&report(&base, "bad/garbage", "1").await, &garbage, "errors: not a tar archive");
    let b = report(&base, "bad/bomb", "1").await;
    expect(&b, &bomb, "errors: decompression bomb");
    let s = report(&base, "bad/sparse", "1").await;
    expect(&s, &sparse, "warnings: var/lib/dpkg/status: 10737418240 bytes, over the");
    assert_eq!(s["os"]["id"], "debian");
    let t = report(&base, "bad/traversal", "1").await;
    expect(&t, &traversal, "escapes the layer's root");
    assert!(t["os"].is_null(), "a name outside the root must not count: {t}");
    assert_eq!(packages(&t), ["good@1.0"]);
    let l = report(&base, "bad/loops", "1").await;
    assert_eq!(l["artifact"]["digest"], loops.as_str());
    assert!(l["os"].is_null());
    let c = report(&base, "good/compressible", "1").await;
    assert_eq!(c["artifact"]["digest"], compressible.as_str());
    assert!(layer_problems(&c).is_empty(), "{:?}", layer_problems(&c));
    assert_eq!(packages(&c), ["six@1.16.0"]);
    expect(&report(&base, "bad/longname", "1").await, &long_name, "errors: a tar extension header");
    expect(
        &report(&base, "bad/bdb", "1").await,
        &bdb,
        "var/lib/rpm/Packages: a Berkeley DB rpmdb, which is not supported",
    );
    let st = report(&base, "bad/status", "1").await;
    expect(&st, &big_status, "warnings: var/lib/dpkg/status: ");
    assert_eq!(st["package_count"], 0);

    // Still serving: a normal push and pull, the API's root.
    let ok = push_image(
        &base,
        "good/app",
        "1",
        &[(LAYER_GZIP, gzip(&tar(&[Item::File("etc/os-release", b"ID=alpine\nVERSION_ID=3.20.0\n")])))],
    )
    .await;
    let resp = common::client()
        .get(format!("{base}/v2/good/app/manifests/1"))
        .header("accept", "application/vnd.oci.image.manifest.v1+json")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(report(&base, "good/app", "1").await["artifact"]["digest"], ok.as_str());
    let peak = common::peak_rss(berth.pid());
    eprintln!("peak RSS of the server: {} MiB", peak >> 20);
    assert!(peak < 300 << 20, "peak RSS {} MiB", peak >> 20);
    let log = berth.stderr();
    assert!(!log.contains("panicked"), "{log}");
    let metrics = common::client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    assert!(metric(&metrics, "berth_scan_layer_errors_total") >= 3.0, "{metrics}");
    assert!(metric(&metrics, "berth_scan_jobs_total{outcome=\"ok\"}") >= 7.0);
}
