//! The search extension end to end: the JSON API under
//! `/v2/_berth/search/` against an access matrix (anonymous, a reader of one
//! team, a token holder, the admin) with no repository leaking through
//! results, totals or pages; image details (platforms, layers, labels,
//! referrers, times); bad input; the index following pushes and deletes;
//! and `berth search reindex`.

#![cfg(feature = "search")]
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::images::Pusher;
use common::{client, Berth};

const POLICY: &str = r#"
[access]
default_policy = []
anonymous_policy = []
admin_policy = { users = ["admin"], actions = ["read", "create", "update", "delete"] }

[[access.repositories]]
pattern = "team-a/**"
policies = [{ users = ["reader"], actions = ["read"] }]

[[access.repositories]]
pattern = "public/*"
anonymous_policy = ["read"]
default_policy = ["read"]
"#;

fn basic(user: &str) -> String {
    common::basic(user, &format!("{user}-password"))
}

struct Setup {
    _dir: tempfile::TempDir,
    berth: Berth,
}

fn start() -> Setup {
    let (dir, berth) =
        common::token_service_berth(&["reader", "admin", "nobody"], "[auth.throttle]\nuser_lockout = 1000", POLICY);
    Setup { _dir: dir, berth }
}

async fn get(b: &Berth, path: &str, auth: Option<&str>) -> (u16, serde_json::Value, reqwest::header::HeaderMap) {
    let mut r = client().get(b.url(path));
    if let Some(a) = auth {
        r = r.header("authorization", a);
    }
    let resp = r.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let text = resp.text().await.unwrap();
    let body = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
    (status, body, headers)
}

/// Every repository name a caller can reach for `q`, following `Link`s
/// page by page with `n`, checking that each page's total is the same.
async fn all_pages(b: &Berth, q: &str, n: usize, auth: Option<&str>) -> (Vec<String>, usize) {
    let mut path = format!("/v2/_berth/search/repositories?q={q}&n={n}");
    let mut names = Vec::new();
    let mut total = None;
    for _ in 0..100 {
        let (status, body, headers) = get(b, &path, auth).await;
        assert_eq!(status, 200, "{path}: {body}");
        let t = body["total"].as_u64().unwrap() as usize;
        assert_eq!(*total.get_or_insert(t), t, "the total changed between pages");
        let page: Vec<String> =
            body["repositories"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect();
        assert!(page.len() <= n);
        names.extend(page);
        match headers.get("link") {
            Some(link) => {
                let link = link.to_str().unwrap();
                path = link.trim_start_matches('<').split('>').next().unwrap().to_owned();
            }
            None => return (names, total.unwrap()),
        }
    }
    panic!("more than 100 pages");
}

/// Wait until a search as the admin returns `want` for `q`.
async fn wait_for(b: &Berth, q: &str, want: &[&str]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body, _) = get(b, &format!("/v2/_berth/search/repositories?q={q}"), Some(&basic("admin"))).await;
        let names: Vec<&str> = if status == 200 {
            body["repositories"].as_array().unwrap().iter().map(|r| r["name"].as_str().unwrap()).collect()
        } else {
            Vec::new()
        };
        if names == want {
            return;
        }
        assert!(Instant::now() < deadline, "search for {q:?} never returned {want:?}: {status} {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

const ALL: [&str; 6] =
    ["public/app", "team-a/app", "team-a/multi", "team-a/web", "team-b/app-internal", "team-b/secret"];

async fn populate(b: &Berth) -> (common::images::Pushed, common::images::Pushed) {
    let admin = Pusher::new(&b.base, Some(basic("admin")));
    let layer = common::bytes(3000, 1);
    let v1 = admin
        .image("team-a/app", Some("v1"), ("linux", "amd64"), &[("org.example.team", "a")], &[&layer, b"second layer"])
        .await;
    admin.image("team-a/app", Some("v2"), ("linux", "amd64"), &[("version", "2")], &[&layer]).await;
    admin.image("team-a/app", Some("latest"), ("linux", "amd64"), &[("version", "2")], &[&layer]).await;
    admin.referrer("team-a/app", &v1, "application/spdx+json", b"{\"spdxVersion\":\"SPDX-2.3\"}").await;
    admin.referrer("team-a/app", &v1, "application/vnd.dev.cosign.signature", b"signature bytes").await;
    admin.image("team-a/web", Some("1.0"), ("linux", "amd64"), &[], &[b"web"]).await;
    let amd = admin.image("team-a/multi", None, ("linux", "amd64"), &[], &[b"amd64 layer"]).await;
    let arm = admin.image("team-a/multi", None, ("linux", "arm64"), &[], &[b"arm64 layer bytes"]).await;
    let index = admin.index("team-a/multi", "1.0", &[(&amd, "linux", "amd64"), (&arm, "linux", "arm64")]).await;
    admin.image("team-b/secret", Some("v1"), ("linux", "amd64"), &[], &[b"secret"]).await;
    admin.image("team-b/app-internal", Some("v1"), ("linux", "amd64"), &[], &[b"internal"]).await;
    admin.image("public/app", Some("stable"), ("linux", "amd64"), &[], &[b"public"]).await;
    wait_for(b, "", &ALL).await;
    (v1, index)
}

#[tokio::test]
async fn search_answers_each_caller_with_only_what_it_may_read() {
    let s = start();
    let b = &s.berth;
    let (v1, index) = populate(b).await;

    // A token for the reader, scoped to one repository.
    let bearer = format!("Bearer {}", common::token_for(b, "reader", "repository:team-a/web:pull").await);

    // Who sees what, for several queries and page sizes.
    let matrix: [(&str, Option<String>, &[&str]); 5] = [
        ("anonymous", None, &["public/app"]),
        ("reader", Some(basic("reader")), &["public/app", "team-a/app", "team-a/multi", "team-a/web"]),
        ("token", Some(bearer.clone()), &["team-a/web"]),
        ("nobody", Some(basic("nobody")), &["public/app"]),
        ("admin", Some(basic("admin")), &ALL),
    ];
    let mut table = Vec::new();
    for (who, auth, visible) in &matrix {
        for q in ["", "app", "team", "secret", "a"] {
            for n in [1, 2, 50] {
                let (names, total) = all_pages(b, q, n, auth.as_deref()).await;
                let expected: BTreeSet<&str> =
                    visible.iter().copied().filter(|r| q.split_whitespace().all(|t| r.contains(t))).collect();
                let got: BTreeSet<&str> = names.iter().map(String::as_str).collect();
                assert_eq!(got, expected, "{who} q={q:?} n={n}");
                assert_eq!(names.len(), got.len(), "{who} q={q:?} n={n}: a name repeated across pages: {names:?}");
                assert_eq!(total, expected.len(), "{who} q={q:?} n={n}: the total counts hidden repositories");
            }
        }
        let (names, _) = all_pages(b, "", 50, auth.as_deref()).await;
        table.push(format!("{who}: {}", names.join(", ")));
    }
    println!("access matrix (who: repositories search shows)\n{}", table.join("\n"));

    // A hidden name as the cursor reveals nothing: the page after it is
    // the same whether or not the name exists.
    let r = Some(basic("reader"));
    let (_, after_hidden, _) =
        get(b, "/v2/_berth/search/repositories?q=app&last=team-b/app-internal", r.as_deref()).await;
    let (_, after_absent, _) =
        get(b, "/v2/_berth/search/repositories?q=app&last=team-b/app-internam", r.as_deref()).await;
    assert_eq!(after_hidden["repositories"], after_absent["repositories"]);
    assert_eq!(after_hidden["total"], 2);

    // Ranking: the exact name first, then names starting with the query.
    let (_, ranked, _) = get(b, "/v2/_berth/search/repositories?q=team-a/app", Some(&basic("admin"))).await;
    assert_eq!(ranked["repositories"][0]["name"], "team-a/app");
    assert_eq!(ranked["repositories"][0]["tags"], 3);
    assert!(ranked["repositories"][0]["last_push"].as_str().unwrap().ends_with('Z'));

    // Tags and details: the same rules as pulls.
    for (who, auth, tags, details) in [
        ("anonymous", None, 401, 401),
        ("nobody", Some(basic("nobody")), 403, 403),
        ("token for another repository", Some(bearer.clone()), 403, 403),
        ("reader", Some(basic("reader")), 200, 200),
    ] {
        let (status, body, _) = get(b, "/v2/_berth/search/tags/team-a/app", auth.as_deref()).await;
        assert_eq!(status, tags, "{who} tags: {body}");
        let (status, body, _) = get(b, "/v2/_berth/search/images/team-a/app/v1", auth.as_deref()).await;
        assert_eq!(status, details, "{who} details: {body}");
    }
    // A hidden repository and an absent one look alike to the reader.
    let (hidden, _, _) = get(b, "/v2/_berth/search/tags/team-b/secret", r.as_deref()).await;
    let (absent, _, _) = get(b, "/v2/_berth/search/tags/team-b/nothing", r.as_deref()).await;
    assert_eq!((hidden, absent), (403, 403));

    // Tags with digests, by name and newest first, in pages.
    let (_, tags, headers) = get(b, "/v2/_berth/search/tags/team-a/app?n=2", r.as_deref()).await;
    assert_eq!(tags["total"], 3);
    let names: Vec<&str> = tags["tags"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["latest", "v1"]);
    assert_eq!(tags["tags"][1]["digest"], v1.digest.as_str());
    let link = headers.get("link").unwrap().to_str().unwrap().to_owned();
    assert!(link.contains("last=v1"), "{link}");
    let next = link.trim_start_matches('<').split('>').next().unwrap();
    let (_, rest, headers) = get(b, next, r.as_deref()).await;
    assert_eq!(rest["tags"][0]["name"], "v2");
    assert!(headers.get("link").is_none());
    let (_, newest, _) = get(b, "/v2/_berth/search/tags/team-a/app?sort=pushed", r.as_deref()).await;
    assert_eq!(newest["tags"][2]["name"], "v1", "v1 was pushed first: {newest}");
    let (_, filtered, _) = get(b, "/v2/_berth/search/tags/team-a/app?q=V", r.as_deref()).await;
    assert_eq!(filtered["total"], 2);

    // Image details.
    let (_, d, headers) = get(b, "/v2/_berth/search/images/team-a/app/v1", r.as_deref()).await;
    assert_eq!(headers.get("cache-control").unwrap(), "private, no-store");
    assert_eq!(d["digest"], v1.digest.as_str());
    assert_eq!(d["media_type"], common::images::OCI_MANIFEST);
    assert_eq!(d["image"]["labels"]["org.example.team"], "a");
    assert_eq!(d["image"]["os"], "linux");
    assert_eq!(d["image"]["entrypoint"][0], "/bin/app");
    assert_eq!(d["image"]["history"].as_array().unwrap().len(), 2);
    assert_eq!(d["image"]["layers"].as_array().unwrap().len(), 2);
    assert_eq!(d["image"]["layers"][0]["size"], 3000);
    let config_size = d["image"]["config"]["size"].as_u64().unwrap();
    assert_eq!(d["image"]["total_size"].as_u64().unwrap(), config_size + 3000 + 12);
    assert_eq!(d["annotations"]["org.opencontainers.image.source"], "https://example.invalid/app");
    assert!(d["pushed"].as_str().unwrap().ends_with('Z'));
    let groups: Vec<&str> =
        d["referrers"].as_array().unwrap().iter().map(|g| g["artifact_type"].as_str().unwrap()).collect();
    assert_eq!(groups, ["application/spdx+json", "application/vnd.dev.cosign.signature"]);
    assert_eq!(d["referrers_truncated"], false);
    // By digest, the same manifest.
    let (_, by_digest, _) = get(b, &format!("/v2/_berth/search/images/team-a/app/{}", v1.digest), r.as_deref()).await;
    assert_eq!(by_digest["digest"], d["digest"]);
    // An index: its platforms with each child's size.
    let (_, multi, _) = get(b, "/v2/_berth/search/images/team-a/multi/1.0", r.as_deref()).await;
    assert_eq!(multi["digest"], index.digest.as_str());
    let platforms: Vec<&str> =
        multi["platforms"].as_array().unwrap().iter().map(|p| p["platform"].as_str().unwrap()).collect();
    assert_eq!(platforms, ["linux/amd64", "linux/arm64"]);
    assert_eq!(multi["platforms"][1]["layers"], 1);
    assert!(multi["platforms"][1]["total_size"].as_u64().unwrap() > 17);
    assert!(multi.get("image").is_none());

    // Bad input: clear errors with the spec's codes, never a 500.
    let admin = Some(basic("admin"));
    let long = "x".repeat(300);
    for (path, status, code) in [
        (format!("/v2/_berth/search/repositories?q={long}"), 400, "UNSUPPORTED"),
        ("/v2/_berth/search/repositories?n=-1".to_owned(), 400, "UNSUPPORTED"),
        ("/v2/_berth/search/tags/team-a/app?sort=size".to_owned(), 400, "UNSUPPORTED"),
        ("/v2/_berth/search/tags/Team-A/app".to_owned(), 400, "NAME_INVALID"),
        ("/v2/_berth/search/tags/team-a/none".to_owned(), 404, "NAME_UNKNOWN"),
        ("/v2/_berth/search/images/team-a/app/nope".to_owned(), 404, "MANIFEST_UNKNOWN"),
        ("/v2/_berth/search/images/team-a/app/sha256:00".to_owned(), 400, "DIGEST_INVALID"),
        ("/v2/_berth/search/images/team-a/app/-bad".to_owned(), 404, "MANIFEST_UNKNOWN"),
        ("/v2/_berth/search/everything".to_owned(), 404, "NAME_UNKNOWN"),
    ] {
        let (got, body, _) = get(b, &path, admin.as_deref()).await;
        assert_eq!(got, status, "{path}: {body}");
        assert_eq!(body["errors"][0]["code"], code, "{path}: {body}");
    }
    let resp = client()
        .post(b.url("/v2/_berth/search/repositories"))
        .header("authorization", basic("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert!(!b.stderr().contains("panicked"));
}

#[tokio::test]
async fn the_index_follows_pushes_deletes_and_reindex() {
    let s = start();
    let b = &s.berth;
    populate(b).await;
    let admin = Pusher::new(&b.base, Some(basic("admin")));
    // A new repository and a push by digest (no tag) show at once.
    admin.image("team-c/new", Some("v1"), ("linux", "amd64"), &[], &[b"new"]).await;
    wait_for(b, "team-c", &["team-c/new"]).await;
    let before = get(b, "/v2/_berth/search/repositories?q=team-c/new", Some(&basic("admin"))).await.1;
    assert_eq!(before["repositories"][0]["manifests"], 1);
    admin.image("team-c/new", None, ("linux", "arm64"), &[], &[b"by digest"]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body, _) = get(b, "/v2/_berth/search/repositories?q=team-c/new", Some(&basic("admin"))).await;
        if body["repositories"][0]["manifests"] == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "a push by digest never reached the index: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A deleted tag leaves the tag list.
    let resp = client()
        .delete(b.url("/v2/team-c/new/manifests/v1"))
        .header("authorization", basic("admin"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (_, body, _) = get(b, "/v2/_berth/search/tags/team-c/new", Some(&basic("admin"))).await;
        if body["total"] == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "a deleted tag stayed: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // `berth search reindex` writes the snapshot a replica starts from.
    let config = b.dir.path().join("berth.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["search", "reindex", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["repositories"], 7, "{stats}");
    assert_eq!(stats["tags"], 8, "{stats}");
    let area = b.data_dir().join("_derived/search");
    let snapshot = std::fs::read_dir(&area)
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().starts_with("snapshot-v1"))
        .unwrap_or_else(|| panic!("no snapshot in {}", area.display()));
    let text = std::fs::read_to_string(snapshot.path()).unwrap();
    assert!(text.starts_with("berth-search-snapshot v1\t"), "{text}");
    assert!(text.contains("R\tteam-c/new\t"), "{text}");
    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["search", "reindex", "--config", "/nonexistent/berth.toml"])
        .output()
        .unwrap();
    assert!(!bad.status.success());
}

/// What a replica answers for a search and for a repository's tags
/// (digests included), or `None` while its index is being built.
async fn answer(base: &str) -> Option<serde_json::Value> {
    let repos = client().get(format!("{base}/v2/_berth/search/repositories?q=&n=100")).send().await.unwrap();
    if repos.status() != 200 {
        return None;
    }
    let repos: serde_json::Value = repos.json().await.unwrap();
    let mut tags = serde_json::Map::new();
    for r in repos["repositories"].as_array().unwrap() {
        let name = r["name"].as_str().unwrap();
        let t: serde_json::Value = client()
            .get(format!("{base}/v2/_berth/search/tags/{name}?sort=pushed"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        tags.insert(name.to_owned(), t);
    }
    Some(serde_json::json!({ "repositories": repos, "tags": tags }))
}

/// Wait until every replica answers `expect(answer)` alike; the time it took.
async fn agree(fleet: &common::LocalFleet, what: &str, expect: impl Fn(&serde_json::Value) -> bool) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(30);
    loop {
        let mut answers = Vec::new();
        for n in 1..=3 {
            answers.push(answer(fleet.replica(n)).await);
        }
        let alike = answers.iter().all(|a| a.is_some() && a == &answers[0]);
        if alike && expect(answers[0].as_ref().unwrap()) {
            return started.elapsed();
        }
        assert!(Instant::now() < deadline, "{what}: the replicas never agreed:\n{answers:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Three replicas sharing S3 and Redis answer a search the same way, kept
/// current by change notices alone (the periodic rescan is an hour away).
#[tokio::test]
async fn every_replica_of_a_fleet_answers_alike() {
    let fleet = common::LocalFleet::up(3, &[("BERTH__SEARCH__RESCAN_INTERVAL", "1h")]);
    let names = |a: &serde_json::Value| -> Vec<String> {
        a["repositories"]["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    };
    agree(&fleet, "start", |a| names(a).is_empty()).await;

    // Pushes on different replicas: a new repository on each, a push by
    // digest, a tag moved.
    let on = |n: usize| Pusher::new(fleet.replica(n), None);
    on(1).image("fleet/one", Some("v1"), ("linux", "amd64"), &[], &[b"one"]).await;
    let lag_new = agree(&fleet, "a new repository", |a| names(a) == ["fleet/one"]).await;
    on(2).image("fleet/two", Some("v1"), ("linux", "amd64"), &[], &[b"two"]).await;
    on(3).image("fleet/two", None, ("linux", "arm64"), &[], &[b"by digest"]).await;
    let lag_digest = agree(&fleet, "a push by digest", |a| {
        a["repositories"]["repositories"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "fleet/two" && r["manifests"] == 2)
    })
    .await;
    let moved = on(3).image("fleet/one", Some("v1"), ("linux", "amd64"), &[("moved", "yes")], &[b"one"]).await;
    let lag_moved =
        agree(&fleet, "a moved tag", |a| a["tags"]["fleet/one"]["tags"][0]["digest"] == moved.digest.as_str()).await;
    // A tag deleted on one replica leaves every replica's answer.
    on(2).image("fleet/one", Some("v2"), ("linux", "amd64"), &[], &[b"v2"]).await;
    agree(&fleet, "a second tag", |a| a["tags"]["fleet/one"]["total"] == 2).await;
    let resp = client().delete(format!("{}/v2/fleet/one/manifests/v2", fleet.replica(1))).send().await.unwrap();
    assert_eq!(resp.status(), 202);
    let lag_deleted = agree(&fleet, "a deleted tag", |a| a["tags"]["fleet/one"]["total"] == 1).await;
    println!(
        "replicas agreed after: new repository {lag_new:?}, push by digest {lag_digest:?}, moved tag {lag_moved:?}, \
         deleted tag {lag_deleted:?}"
    );
    fleet.assert_no_server_errors();
}
