//! An S3-compatible server for tests: the endpoint in `BERTH_TEST_S3_ENDPOINT`
//! (with `BERTH_TEST_S3_ACCESS_KEY` / `BERTH_TEST_S3_SECRET_KEY`, e.g. a
//! MinIO in CI), or else a `moto_server` started on an ephemeral loopback
//! port and killed when the guard drops.

#![allow(clippy::unwrap_used, clippy::expect_used)] // test support: a failed setup is a failed test

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::{S3Options, S3Store, StaticCredentials};

/// A running S3-compatible server.
#[derive(Debug)]
pub struct S3TestServer {
    child: Option<Child>,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

/// Where `scripts/install-test-deps` puts moto_server, unless overridden.
fn moto_path() -> PathBuf {
    if let Some(p) = std::env::var_os("BERTH_MOTO_SERVER") {
        return PathBuf::from(p);
    }
    let venv = std::env::var_os("BERTH_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/test-venv"));
    venv.join("bin/moto_server")
}

impl S3TestServer {
    /// The configured endpoint, or a fresh moto_server.
    pub fn start() -> S3TestServer {
        if let Ok(endpoint) = std::env::var("BERTH_TEST_S3_ENDPOINT") {
            return S3TestServer {
                child: None,
                endpoint,
                access_key: std::env::var("BERTH_TEST_S3_ACCESS_KEY").unwrap_or_else(|_| "test".into()),
                secret_key: std::env::var("BERTH_TEST_S3_SECRET_KEY").unwrap_or_else(|_| "testsecret".into()),
            };
        }
        S3TestServer::start_moto()
    }

    /// Always a moto_server of our own (tests that stop the server need one).
    pub fn start_moto() -> S3TestServer {
        S3TestServer::spawn_moto(&[])
    }

    /// A moto_server serving HTTPS with the given certificate and key files.
    pub fn start_moto_tls(cert: &std::path::Path, key: &std::path::Path) -> S3TestServer {
        let (cert, key) = (cert.to_string_lossy().into_owned(), key.to_string_lossy().into_owned());
        S3TestServer::spawn_moto(&["-s", "-c", &cert, "-k", &key])
    }

    fn spawn_moto(extra: &[&str]) -> S3TestServer {
        let moto = moto_path();
        assert!(
            moto.exists(),
            "moto_server not found at {}: run scripts/install-test-deps (it installs moto[server] into a venv), \
             or set BERTH_TEST_S3_ENDPOINT to an S3-compatible server",
            moto.display()
        );
        let mut child = Command::new(&moto)
            .args(["-H", "127.0.0.1", "-p", "0"])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn moto_server");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if !sent {
                    if let Some(at) = line.find("Running on http") {
                        let _ = tx.send(line[at + "Running on ".len()..].trim().to_owned());
                        sent = true;
                    }
                }
                // Keep draining: moto logs every request.
            }
        });
        let mut server = S3TestServer {
            child: Some(child),
            endpoint: String::new(),
            access_key: "test".into(),
            secret_key: "testsecret".into(),
        };
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(endpoint) => server.endpoint = endpoint,
            Err(_) => panic!("moto_server did not report its address within 60s"),
        }
        server
    }

    /// Options for a store on `bucket` at this server.
    pub fn options(&self, bucket: &str) -> S3Options {
        let mut o = S3Options::new(bucket);
        o.endpoint = Some(self.endpoint.clone());
        o.force_path_style = true;
        o.region = Some("us-east-1".into());
        o.credentials = Some(StaticCredentials {
            access_key_id: self.access_key.clone(),
            secret_access_key: self.secret_key.clone(),
            session_token: None,
        });
        o.part_size = 5 * 1024 * 1024;
        o
    }

    /// A store on a new, empty bucket of its own.
    pub async fn fresh_store(&self) -> S3Store {
        let bucket = format!("berth-test-{}", uuid::Uuid::new_v4().simple());
        let store = S3Store::connect(self.options(&bucket)).await.expect("connect");
        store.ensure_bucket().await.expect("create bucket");
        store
    }

    /// Pause (SIGSTOP) or resume (SIGCONT) the server: a hung S3 that keeps its data.
    pub fn pause(&self, paused: bool) {
        let child = self.child.as_ref().expect("only a server this guard started can be paused");
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").arg(signal).arg(child.id().to_string()).status().expect("kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// The process id, for tests that signal it.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            // SIGKILL ends a stopped (paused) process too.
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
