//! TLS on the listener and mTLS authentication, with certificates made by
//! the test (rcgen): a trusted client certificate authenticates (subject
//! from a SPIFFE URI SAN, groups from OU); an untrusted CA, an expired
//! certificate and plain HTTP fail the handshake; a trusted certificate
//! naming no acceptable identity is a 401; a client without a certificate
//! falls back to Basic credentials; a replaced server certificate is served
//! without a restart.

#![allow(clippy::unwrap_used)]

mod common;

use std::process::Command;
use std::time::Duration;

use base64::Engine as _;
use common::pki::{ca, client, leaf, server_sans, uri, Ca};
use common::{sha256, Berth};

struct Setup {
    dir: tempfile::TempDir,
    server_ca: Ca,
    client_ca: Ca,
    berth: Berth,
}

impl Setup {
    fn https(&self, path: &str) -> String {
        format!("https://{}{path}", self.berth.addr)
    }
}

fn start() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let server_ca = ca("server-ca");
    let client_ca = ca("client-ca");
    let (cert, key) = leaf(&server_ca, "berth-server", server_sans(), None, false);
    std::fs::write(dir.path().join("server.pem"), cert).unwrap();
    std::fs::write(dir.path().join("server.key"), key).unwrap();
    std::fs::write(dir.path().join("client-ca.pem"), client_ca.cert.pem()).unwrap();
    std::fs::write(dir.path().join("users"), format!("{}\n", common::user_hash("carol", "carol-pw"))).unwrap();
    let p = |f: &str| dir.path().join(f).display().to_string();
    let toml = format!(
        "[server.tls]\ncert_file = {:?}\nkey_file = {:?}\nclient_ca_file = {:?}\nclient_auth = \"optional\"\n\
         [auth]\nhtpasswd = {:?}\nreload_interval = \"100ms\"\n\
         [auth.mtls]\nsubject = \"uri\"\nuri_prefix = \"spiffe://test/\"\ngroups_from_ou = true\n",
        p("server.pem"),
        p("server.key"),
        p("client-ca.pem"),
        p("users")
    );
    let berth = Berth::start(&toml);
    Setup { dir, server_ca, client_ca, berth }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificates_authenticate_and_bad_ones_are_refused() {
    let s = start();
    let ca_pem = s.server_ca.cert.pem();

    // No certificate, no credentials: TLS works, the registry asks for auth.
    let anon = client(&ca_pem, None);
    assert_eq!(anon.get(s.https("/v2/")).send().await.unwrap().status(), 401);
    // No certificate but a password: Basic still works.
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("carol:carol-pw"));
    assert_eq!(anon.get(s.https("/v2/")).header("authorization", basic).send().await.unwrap().status(), 200);

    // A trusted certificate with a SPIFFE ID authenticates; a push works.
    let alice = leaf(&s.client_ca, "alice", vec![uri("spiffe://test/alice")], Some("builders"), false);
    let c = client(&ca_pem, Some(&alice));
    assert_eq!(c.get(s.https("/v2/")).send().await.unwrap().status(), 200);
    let data = b"over mutual TLS".to_vec();
    let resp = c
        .post(s.https(&format!("/v2/team/app/blobs/uploads/?digest={}", sha256(&data))))
        .body(data.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    // Trusted, but the certificate names no identity under the prefix.
    let stranger = leaf(&s.client_ca, "bob", vec![uri("spiffe://elsewhere/bob")], None, false);
    let resp = client(&ca_pem, Some(&stranger)).get(s.https("/v2/")).send().await.unwrap();
    assert_eq!(resp.status(), 401);

    // Refused in the handshake: another CA, and an expired certificate.
    let rogue_ca = ca("rogue-ca");
    let rogue = leaf(&rogue_ca, "mallory", vec![uri("spiffe://test/mallory")], None, false);
    assert!(client(&ca_pem, Some(&rogue)).get(s.https("/v2/")).send().await.is_err(), "untrusted CA accepted");
    let expired = leaf(&s.client_ca, "old", vec![uri("spiffe://test/old")], None, true);
    assert!(client(&ca_pem, Some(&expired)).get(s.https("/v2/")).send().await.is_err(), "expired certificate accepted");

    // Plain HTTP on the TLS port gets nowhere.
    let plain = common::client().get(format!("http://{}/v2/", s.berth.addr)).send().await;
    assert!(plain.is_err() || plain.unwrap().status() != 200);

    let log = s.berth.stderr();
    assert!(log.contains("client certificate refused"), "the refused identity was not logged");
    assert!(!log.contains("carol-pw"));
}

fn served_subject(addr: &str) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {addr} -servername localhost </dev/null 2>/dev/null | openssl x509 -noout -subject"
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn a_replaced_certificate_is_served_without_a_restart() {
    let s = start();
    assert!(served_subject(&s.berth.addr).contains("berth-server"), "{}", served_subject(&s.berth.addr));
    let (cert, key) = leaf(&s.server_ca, "berth-rotated", server_sans(), None, false);
    // Key first, then certificate: a reload in between sees a mismatched pair and keeps the old one.
    std::fs::write(s.dir.path().join("server.key"), key).unwrap();
    std::fs::write(s.dir.path().join("server.pem"), cert).unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !served_subject(&s.berth.addr).contains("berth-rotated") {
        assert!(std::time::Instant::now() < deadline, "the new certificate was never served");
        std::thread::sleep(Duration::from_millis(100));
    }
    // A broken file keeps the last good certificate in force. (The
    // rotation above may have been reported once already: a reload between
    // the key and the certificate.)
    let reports = |s: &Setup| s.berth.stderr().matches("TLS files not reloaded").count();
    let before = reports(&s);
    std::fs::write(s.dir.path().join("server.pem"), "not a certificate").unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while reports(&s) == before {
        assert!(std::time::Instant::now() < deadline, "the broken file was not reported");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(served_subject(&s.berth.addr).contains("berth-rotated"));
}

/// Browsers speak HTTP/2 to a registry that serves TLS itself, and send no
/// `Host` header with it (the host is the request's authority): the UI's
/// sign-in, which checks `Origin` against the host, works all the same.
#[cfg(feature = "ui")]
#[test]
fn the_ui_signs_in_over_http2() {
    let s = start();
    let ca = s.dir.path().join("server-ca.pem");
    std::fs::write(&ca, s.server_ca.cert.pem()).unwrap();
    let jar = s.dir.path().join("cookies.txt");
    let curl = |args: &[&str]| -> String {
        let out = Command::new("curl")
            .args(["-s", "--http2", "--cacert"])
            .arg(&ca)
            .arg("-b")
            .arg(&jar)
            .arg("-c")
            .arg(&jar)
            .args(["-o", "/dev/null", "-w", "%{http_version} %{http_code}"])
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let base = s.https("");
    assert_eq!(curl(&[&format!("{base}/ui/login")]), "2 200", "the form, over HTTP/2");
    let jar_text = std::fs::read_to_string(&jar).unwrap();
    let csrf = jar_text
        .lines()
        .find(|l| l.contains("\t__Host-berth_csrf\t"))
        .and_then(|l| l.split('\t').next_back())
        .unwrap_or_else(|| panic!("no CSRF cookie in {jar_text}"))
        .to_owned();
    let sign_in = |origin: &str| {
        curl(&[
            "-H",
            &format!("Origin: {origin}"),
            "--data-urlencode",
            &format!("csrf={csrf}"),
            "--data-urlencode",
            "username=carol",
            "--data-urlencode",
            "password=carol-pw",
            &format!("{base}/ui/login"),
        ])
    };
    assert_eq!(sign_in(&base), "2 303", "sign-in over HTTP/2 (403: the Origin check found no host)");
    // Another site's Origin is still refused.
    let forged = sign_in("https://evil.example");
    assert_eq!(forged, "2 403");
}
