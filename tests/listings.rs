//! Listings that never hold everything: 10,000 referrers of one subject
//! come in pages linked with `Link` (filtered ones too), and the replica's
//! peak memory stays bounded; a catalog filtered by what the caller may read
//! does bounded work per page, continuing past names the caller may not see
//! with a cursor that does not reveal them.
//!
//! Records are written straight into the file store's layout (copies of
//! one the registry wrote), which is how 10,000 referrers cost seconds.

#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::{basic, client, sha256, Berth};

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

async fn push_blob(b: &Berth, auth: &str, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let resp = client()
        .post(b.url(&format!("/v2/{repo}/blobs/uploads/?digest={digest}")))
        .header("authorization", auth)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    digest
}

async fn put_manifest(b: &Berth, auth: &str, repo: &str, reference: &str, body: &[u8]) {
    let resp = client()
        .put(b.url(&format!("/v2/{repo}/manifests/{reference}")))
        .header("authorization", auth)
        .header("content-type", OCI_MANIFEST)
        .body(body.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "{}", resp.text().await.unwrap());
}

/// The file the fs store keeps key `key` in.
fn key_file(data: &Path, key: &str) -> PathBuf {
    data.join(format!("{key}@"))
}

/// `<...>; rel="next"` -> the path.
fn next_link(resp: &reqwest::Response) -> Option<String> {
    let link = resp.headers().get("link")?.to_str().unwrap();
    assert!(link.ends_with("rel=\"next\""), "{link}");
    Some(link[link.find('<').unwrap() + 1..link.find('>').unwrap()].to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_referrers_come_in_bounded_pages() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users"), format!("{}\n", common::user_hash("alice", "alice-pw-123456"))).unwrap();
    let b = Berth::start_release(
        &format!("[auth]\nhtpasswd = {:?}\n", dir.path().join("users").display().to_string()),
        &[],
    );
    let auth = basic("alice", "alice-pw-123456");
    let repo = "many/refs";
    let config = push_blob(&b, &auth, repo, b"{}").await;
    let subject = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config, "size": 2},
        "layers": []
    })
    .to_string();
    put_manifest(&b, &auth, repo, "subject", subject.as_bytes()).await;
    let subject_digest = sha256(subject.as_bytes());
    // One referrer through the API, with 8 KiB of annotations.
    let referrer = serde_json::json!({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST, "artifactType": "application/vnd.test.a",
        "config": {"mediaType": "application/vnd.oci.empty.v1+json", "digest": config, "size": 2},
        "layers": [],
        "subject": {"mediaType": OCI_MANIFEST, "digest": subject_digest, "size": subject.len()},
        "annotations": {"test.padding": "x".repeat(8192)}
    })
    .to_string();
    let referrer_digest = sha256(referrer.as_bytes());
    put_manifest(&b, &auth, repo, &referrer_digest, referrer.as_bytes()).await;

    // 9,999 more: copies of its record, half of another artifact type.
    let sub_hex = subject_digest.trim_start_matches("sha256:");
    let records = b.data_dir().join(format!("repositories/{repo}/_referrers/sha256/{sub_hex}"));
    let original = std::fs::read_to_string(key_file(&records, &format!("sha256-{}", &referrer_digest[7..]))).unwrap();
    let mut want = BTreeSet::from([referrer_digest.clone()]);
    for i in 1..10_000u32 {
        let digest = sha256(format!("referrer {i}").as_bytes());
        let mut record = original.replace(&referrer_digest, &digest);
        if i % 2 == 1 {
            record = record.replace("application/vnd.test.a", "application/vnd.test.b");
        }
        std::fs::write(key_file(&records, &format!("sha256-{}", &digest[7..])), record).unwrap();
        want.insert(digest);
    }

    // Every referrer, page by page.
    let list = |path: String| {
        let auth = auth.clone();
        let url = b.url(&path);
        async move { client().get(url).header("authorization", auth).send().await.unwrap() }
    };
    let list_all = || async {
        let mut path = format!("/v2/{repo}/referrers/{subject_digest}");
        let (mut seen, mut pages, mut largest) = (Vec::new(), 0, 0);
        loop {
            let resp = list(path.clone()).await;
            assert_eq!(resp.status(), 200);
            let next = next_link(&resp);
            let body = resp.bytes().await.unwrap();
            largest = largest.max(body.len());
            let index: serde_json::Value = serde_json::from_slice(&body).unwrap();
            let manifests = index["manifests"].as_array().unwrap();
            assert!(!manifests.is_empty() && manifests.len() <= 500, "page of {}", manifests.len());
            seen.extend(manifests.iter().map(|m| m["digest"].as_str().unwrap().to_owned()));
            pages += 1;
            match next {
                Some(p) => path = p,
                None => return (seen, pages, largest),
            }
        }
    };
    let (seen, pages, largest) = list_all().await;
    assert_eq!(seen.len(), 10_000, "every referrer exactly once");
    assert_eq!(seen.iter().cloned().collect::<BTreeSet<_>>(), want);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in digest order");
    assert!(pages >= 20, "{pages} pages");
    assert!(largest < 2 * 1024 * 1024, "largest page {largest} bytes");
    // Listing everything again costs no more memory than the first time:
    // the work is per page, not per referrer.
    let first = common::peak_rss(b.pid());
    for _ in 0..2 {
        assert_eq!(list_all().await.0.len(), 10_000);
    }
    let again = common::peak_rss(b.pid());
    assert!(again < first + 24 * 1024 * 1024, "peak RSS grew from {} to {} MiB", first >> 20, again >> 20);

    // Filtered: half of them, with the filter kept across pages.
    let mut path = format!("/v2/{repo}/referrers/{subject_digest}?artifactType=application/vnd.test.b");
    let mut filtered = 0;
    loop {
        let resp = list(path.clone()).await;
        assert_eq!(resp.headers()["oci-filters-applied"], "artifactType");
        let next = next_link(&resp);
        let index: serde_json::Value = resp.json().await.unwrap();
        for m in index["manifests"].as_array().unwrap() {
            assert_eq!(m["artifactType"], "application/vnd.test.b");
            filtered += 1;
        }
        match next {
            Some(p) => {
                assert!(p.contains("artifactType="), "{p}");
                path = p;
            }
            None => break,
        }
    }
    assert_eq!(filtered, 5_000);
    // A cursor that is not a digest is refused with the spec's code.
    let resp = list(format!("/v2/{repo}/referrers/{subject_digest}?last=nope")).await;
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("DIGEST_INVALID"));

    // All of it held at once would be over 240 MiB: 80 MiB of descriptors,
    // as much again as a JSON value, and its text. Pages keep the replica
    // well below that.
    let peak = common::peak_rss(b.pid());
    assert!(peak < 150 * 1024 * 1024, "peak RSS {} MiB", peak >> 20);
    eprintln!("10,000 referrers in {pages} pages, largest {largest} bytes, peak RSS {} MiB", peak >> 20);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_catalog_pages_past_hidden_names_without_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("users"), format!("{}\n", common::user_hash("alice", "alice-pw-123456"))).unwrap();
    let b = Berth::start(&format!(
        "[auth]\nhtpasswd = {:?}\n[access]\ndefault_policy = []\n\
         admin_policy = {{ users = [\"alice\"], actions = [\"create\"] }}\n\
         [[access.repositories]]\npattern = \"public/**\"\ndefault_policy = [\"read\"]\n",
        dir.path().join("users").display().to_string()
    ));
    let auth = basic("alice", "alice-pw-123456");
    for repo in ["public/a", "public/b", "secret/x"] {
        push_blob(&b, &auth, repo, repo.as_bytes()).await;
    }
    // 6,000 repositories alice may not see, sorted before the public ones.
    let entry = std::fs::read(key_file(&b.data_dir(), "_catalog/secret/x")).unwrap();
    let hidden = b.data_dir().join("_catalog/hidden");
    std::fs::create_dir_all(&hidden).unwrap();
    for i in 0..6_000u32 {
        std::fs::write(hidden.join(format!("project-{i:05}@")), &entry).unwrap();
    }

    let mut path = "/v2/_catalog?n=100".to_owned();
    let (mut names, mut requests) = (Vec::new(), 0);
    loop {
        let resp = client().get(b.url(&path)).header("authorization", &auth).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        requests += 1;
        let next = next_link(&resp);
        let body = resp.text().await.unwrap();
        assert!(!body.contains("hidden") && !body.contains("secret"), "{body}");
        if let Some(p) = &next {
            assert!(!p.contains("hidden") && !p.contains("secret"), "the cursor names a hidden repository: {p}");
        }
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        names.extend(v["repositories"].as_array().unwrap().iter().map(|r| r.as_str().unwrap().to_owned()));
        match next {
            Some(p) => path = p,
            None => break,
        }
        assert!(requests < 10, "the listing does not end");
    }
    assert_eq!(names, ["public/a", "public/b"]);
    // The first page stopped within its budget, before the public names.
    assert!(requests >= 2, "one request scanned all 6,000 hidden names");
    // A forged cursor is refused, not followed.
    let resp = client()
        .get(b.url("/v2/_catalog?n=10&last=~AAAAAAAAAAAAAAAAAAAAAAAAAAAA"))
        .header("authorization", &auth)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
}
