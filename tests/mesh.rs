//! The blob cache and the replica mesh on a real fleet (`scripts/fleet up
//! --mesh`: moto, Redis, replicas with blob caches and the mesh over mutual
//! TLS, haproxy): a herd of pulls costs one object-store GET for the whole
//! fleet (counted in moto's request log), the owner killed mid-stream, the
//! internal port refusing anything but a fleet certificate, a damaged
//! cache file and a restart, replicas joining and leaving under load.

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pki;
use common::{bytes, client, push_blob, sha256, LocalFleet};
use futures::StreamExt;
use sha2::{Digest as _, Sha256};

const MIB: usize = 1024 * 1024;

/// Pull a blob, hashing it as it streams; the digest of what arrived.
async fn pull(base: &str, repo: &str, digest: &str) -> Result<String, String> {
    let resp = client().get(format!("{base}/v2/{repo}/blobs/{digest}")).send().await.map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("status {}", resp.status()));
    }
    let mut h = Sha256::new();
    let mut body = resp.bytes_stream();
    while let Some(piece) = body.next().await {
        h.update(piece.map_err(|e| format!("body: {e}"))?);
    }
    Ok(format!("sha256:{}", hex::encode(h.finalize())))
}

/// Object-store GETs of one blob in moto's request log.
fn store_gets(fleet: &LocalFleet, digest: &str) -> usize {
    let hex = digest.trim_start_matches("sha256:");
    let needle = format!("GET /{}/blobs/sha256/{}/{hex}", fleet.var("s3_bucket"), &hex[..2]);
    std::fs::read_to_string(fleet.dir.path().join("s3.log")).unwrap().lines().filter(|l| l.contains(&needle)).count()
}

/// One metric of a replica's /metrics.
async fn metric(base: &str, name: &str) -> u64 {
    let text = client().get(format!("{base}/metrics")).send().await.unwrap().text().await.unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or_else(|| panic!("{name} missing from {base}/metrics"))
}

/// Wait until every running replica sees `n` mesh members.
async fn wait_members(fleet: &LocalFleet, replicas: &[usize], n: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    for &r in replicas {
        while metric(fleet.replica(r), "berth_mesh_members").await != n {
            assert!(Instant::now() < deadline, "replica {r} never saw {n} mesh members");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The replica (1-based) that owns `digest`.
fn owner(fleet: &LocalFleet, digest: &str) -> usize {
    let members: Vec<String> = (1..=3).map(|i| fleet.var(&format!("mesh_{i}")).to_owned()).collect();
    let mut sorted = members.clone();
    sorted.sort();
    let d: berth::oci::Digest = digest.parse().unwrap();
    let o = berth::mesh::rendezvous_owner(&sorted, &d).unwrap();
    members.iter().position(|m| m == o).unwrap() + 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_herd_costs_one_object_store_read_and_the_cache_outlives_restarts_and_damage() {
    // 96 clients on two cores can keep the owner from sending a peer its
    // first byte within the default 2 s, and the peer would then rightly
    // read the object store itself: this test is about a healthy owner.
    let fleet = LocalFleet::up_with(3, &["--mesh"], &[("BERTH__MESH__FIRST_BYTE_TIMEOUT", "30s")]);
    wait_members(&fleet, &[1, 2, 3], 3).await;
    let data = bytes(32 * MIB, 16);
    let digest = push_blob(fleet.lb(), "farm/base", &data).await;
    drop(data);
    let lb = fleet.lb().to_owned();
    let pulls: Vec<_> = (0..96)
        .map(|_| {
            let (lb, digest) = (lb.clone(), digest.clone());
            tokio::spawn(async move { pull(&lb, "farm/base", &digest).await })
        })
        .collect();
    for p in pulls {
        assert_eq!(p.await.unwrap().unwrap(), digest, "a client got other bytes");
    }
    assert_eq!(store_gets(&fleet, &digest), 1, "96 pulls through the fleet must cost one object-store GET");
    let mut store_gets_metric = 0;
    for r in 1..=3 {
        store_gets_metric += metric(fleet.replica(r), "berth_blob_cache_store_gets_total").await;
    }
    assert_eq!(store_gets_metric, 1);

    // A restart keeps the cache: the restarted replica serves from disk.
    fleet.run(&["stop", "1"]);
    fleet.run(&["start", "1"]);
    assert_eq!(pull(fleet.replica(1), "farm/base", &digest).await.unwrap(), digest);
    assert_eq!(metric(fleet.replica(1), "berth_blob_cache_hits_total").await, 1);
    assert_eq!(store_gets(&fleet, &digest), 1);

    // A damaged file is found before it is served and fetched again.
    fleet.run(&["stop", "2"]);
    let hex = digest.trim_start_matches("sha256:");
    let file = std::path::Path::new(fleet.var("cache_2")).join("blobs/sha256").join(hex);
    let mut b = std::fs::read(&file).unwrap();
    b[12345] ^= 0x40;
    std::fs::write(&file, b).unwrap();
    fleet.run(&["start", "2"]);
    assert_eq!(pull(fleet.replica(2), "farm/base", &digest).await.unwrap(), digest);
    assert_eq!(metric(fleet.replica(2), "berth_blob_cache_corrupt_total").await, 1);
    assert_eq!(pull(fleet.replica(2), "farm/base", &digest).await.unwrap(), digest);
    assert_eq!(metric(fleet.replica(2), "berth_blob_cache_hits_total").await, 1);

    // Authorization stays at the edge: a blob not linked into the
    // repository is unknown there, cached or not.
    let resp = client().get(format!("{}/v2/other/repo/blobs/{digest}", fleet.lb())).send().await.unwrap();
    assert_eq!(resp.status(), 404);
    fleet.assert_no_server_errors();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_complete_when_the_owner_is_killed_mid_stream() {
    let fleet = LocalFleet::up_with(3, &["--mesh"], &[]);
    wait_members(&fleet, &[1, 2, 3], 3).await;
    let mut mid_stream = 0;
    for attempt in 0..3u64 {
        let data = bytes(96 * MIB, 100 + attempt);
        let digest = push_blob(fleet.lb(), "farm/big", &data).await;
        drop(data);
        let o = owner(&fleet, &digest);
        let others: Vec<usize> = (1..=3).filter(|&r| r != o).collect();
        let fallbacks_before = metric(fleet.replica(others[0]), "berth_mesh_peer_fallbacks_total").await
            + metric(fleet.replica(others[1]), "berth_mesh_peer_fallbacks_total").await;
        // Clients of the two other replicas.
        let pulls: Vec<_> = (0..8)
            .map(|i| {
                let base = fleet.replica(others[i % 2]).to_owned();
                let digest = digest.clone();
                tokio::spawn(async move { pull(&base, "farm/big", &digest).await })
            })
            .collect();
        // Kill the owner once bytes from it are flowing.
        let watch = fleet.replica(others[0]).to_owned();
        let deadline = Instant::now() + Duration::from_secs(60);
        let before = metric(&watch, "berth_blob_cache_filled_bytes_total").await;
        while metric(&watch, "berth_blob_cache_filled_bytes_total").await == before {
            assert!(Instant::now() < deadline, "the fill never started");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        fleet.run(&["kill", &o.to_string()]);
        for p in pulls {
            assert_eq!(p.await.unwrap().unwrap(), digest, "a pull failed after the owner died");
        }
        let fallbacks = metric(fleet.replica(others[0]), "berth_mesh_peer_fallbacks_total").await
            + metric(fleet.replica(others[1]), "berth_mesh_peer_fallbacks_total").await;
        if fallbacks > fallbacks_before {
            mid_stream += 1;
            break;
        }
        // The fills finished before the kill landed: try again.
        fleet.run(&["start", &o.to_string()]);
        wait_members(&fleet, &[1, 2, 3], 3).await;
    }
    assert!(mid_stream > 0, "no attempt killed the owner while it was sending");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_internal_port_serves_fleet_certificates_only() {
    let fleet = LocalFleet::up_with(3, &["--mesh"], &[]);
    let data = bytes(MIB, 3);
    let digest = push_blob(fleet.lb(), "farm/small", &data).await;
    let pki_dir = std::path::Path::new(fleet.var("mesh_ca")).parent().unwrap().to_owned();
    let ca_pem = std::fs::read_to_string(fleet.var("mesh_ca")).unwrap();
    let mesh_addr: std::net::SocketAddr = fleet.var("mesh_1").parse().unwrap();
    let url = format!("https://berth-mesh:{}/_berth/mesh/v1/blobs/{digest}", mesh_addr.port());
    let client_with = |identity: Option<&(String, String)>| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(ca_pem.as_bytes()).unwrap())
            .resolve("berth-mesh", mesh_addr)
            .timeout(Duration::from_secs(20));
        if let Some((cert, key)) = identity {
            b = b.identity(reqwest::Identity::from_pem(format!("{cert}\n{key}").as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    // A peer's certificate: served, with a range too.
    let peer = (
        std::fs::read_to_string(pki_dir.join("r2.crt")).unwrap(),
        std::fs::read_to_string(pki_dir.join("r2.key")).unwrap(),
    );
    let resp = client_with(Some(&peer)).get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.unwrap() == data);
    let resp = client_with(Some(&peer)).get(&url).header("range", "bytes=1000-").send().await.unwrap();
    assert_eq!(resp.status(), 206);
    assert!(resp.bytes().await.unwrap() == data[1000..]);
    let unknown = url.replace(&digest, &sha256(b"nothing"));
    assert_eq!(client_with(Some(&peer)).get(&unknown).send().await.unwrap().status(), 404);
    // No client certificate: the handshake is refused.
    assert!(client_with(None).get(&url).send().await.is_err(), "served a client without a certificate");
    // A certificate from another CA, even naming the mesh: refused.
    let other = pki::ca("another CA");
    let stranger =
        pki::leaf(&other, "replica-9", vec![rcgen::SanType::DnsName("berth-mesh".try_into().unwrap())], None, false);
    assert!(client_with(Some(&stranger)).get(&url).send().await.is_err(), "served a certificate of another CA");
    // Plain HTTP gets nothing either.
    let plain = client().get(format!("http://{mesh_addr}/_berth/mesh/v1/blobs/{digest}")).send().await;
    assert!(!plain.is_ok_and(|r| r.status().is_success()), "served plain HTTP");
    // Counted after the refusal is sent: the client can be quicker.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while metric(fleet.replica(1), "berth_mesh_refused_connections_total").await < 3 {
        assert!(tokio::time::Instant::now() < deadline, "refused handshakes were not counted");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The main listener has no such route.
    let resp = client().get(format!("{}/_berth/mesh/v1/blobs/{digest}", fleet.replica(1))).send().await.unwrap();
    assert_eq!(resp.status(), 404);

    // Certificates are re-read on change: replica 1's is replaced by a new
    // one of the same CA, and new handshakes present it without a restart.
    assert_eq!(server_cn(mesh_addr, &pki_dir).await, "replica-1");
    let work = tempfile::tempdir().unwrap();
    let [key, csr, ext, crt] =
        ["new.key", "new.csr", "new.ext", "new.crt"].map(|f| work.path().join(f).to_string_lossy().into_owned());
    std::fs::write(&ext, "subjectAltName = DNS:berth-mesh\nextendedKeyUsage = serverAuth, clientAuth\n").unwrap();
    let ca_crt = pki_dir.join("ca.crt").to_string_lossy().into_owned();
    let ca_key = pki_dir.join("ca.key").to_string_lossy().into_owned();
    for args in [
        vec!["req", "-new", "-nodes", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256"]
            .into_iter()
            .chain(["-keyout", &key, "-out", &csr, "-subj", "/CN=rotated"])
            .collect::<Vec<&str>>(),
        vec!["x509", "-req", "-in", &csr, "-CA", &ca_crt, "-CAkey", &ca_key, "-set_serial", "0x5eed"]
            .into_iter()
            .chain(["-days", "2", "-extfile", &ext, "-out", &crt])
            .collect(),
    ] {
        let out = std::process::Command::new("openssl").args(&args).output().unwrap();
        assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    std::fs::copy(&key, pki_dir.join("r1.key")).unwrap();
    std::fs::copy(&crt, pki_dir.join("r1.crt")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while server_cn(mesh_addr, &pki_dir).await != "rotated" {
        assert!(Instant::now() < deadline, "the new mesh certificate was not picked up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the rotated replica still serves its peers.
    let resp = client_with(Some(&peer)).get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
}

/// The common name of the certificate the mesh listener at `addr`
/// presents, handshaking as replica 2.
async fn server_cn(addr: std::net::SocketAddr, pki_dir: &std::path::Path) -> String {
    let config =
        berth::tls::client_config(&pki_dir.join("ca.crt"), &pki_dir.join("r2.crt"), &pki_dir.join("r2.key")).unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("berth-mesh").unwrap();
    let tls = tokio_rustls::TlsConnector::from(config).connect(name, tcp).await.unwrap();
    let der = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
    let cn = cert.subject().iter_common_name().next().and_then(|c| c.as_str().ok()).unwrap_or_default().to_owned();
    cn
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_join_and_leave_while_pulls_run() {
    let fleet = LocalFleet::up_with(3, &["--mesh"], &[]);
    fleet.run(&["stop", "3"]);
    wait_members(&fleet, &[1, 2], 2).await;
    let mut blobs = Vec::new();
    for i in 0..8u64 {
        let data = bytes(4 * MIB + i as usize, 300 + i);
        blobs.push(push_blob(fleet.lb(), "farm/churn", &data).await);
    }
    let blobs = Arc::new(blobs);
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let lb = fleet.lb().to_owned();
    let clients: Vec<_> = (0..6)
        .map(|c| {
            let (lb, blobs, stop) = (lb.clone(), blobs.clone(), stop.clone());
            tokio::spawn(async move {
                let mut done = 0usize;
                // Bounded: at most 400 pulls per client.
                for i in 0..400usize {
                    if stop.load(std::sync::atomic::Ordering::SeqCst) && done >= 8 {
                        break;
                    }
                    let d = &blobs[(c + i) % blobs.len()];
                    assert_eq!(pull(&lb, "farm/churn", d).await.unwrap(), *d, "client {c}, pull {i}");
                    done += 1;
                }
                done
            })
        })
        .collect();
    // Join: replica 3 comes back; leave: replica 2 stops, while pulls run.
    fleet.run(&["start", "3"]);
    wait_members(&fleet, &[1, 3], 3).await;
    fleet.run(&["stop", "2"]);
    wait_members(&fleet, &[1, 3], 2).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut total = 0;
    for c in clients {
        total += c.await.unwrap();
    }
    assert!(total >= 48, "only {total} pulls ran");
    // Each blob came out of the bucket a handful of times at most (by each
    // owner it had, and by fills whose owner left), never once per pull.
    let gets: usize = blobs.iter().map(|d| store_gets(&fleet, d)).sum();
    assert!(gets <= blobs.len() * 5, "{gets} object-store GETs for {total} pulls of {} blobs", blobs.len());
    fleet.assert_no_server_errors();
}
