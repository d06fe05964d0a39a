//! Shared harness for end-to-end tests: start the real `berth` binary on an
//! ephemeral loopback port with its own data directory, wait until it says
//! where it listens, and kill it when the guard drops (also on panic).

#![allow(clippy::unwrap_used)]
#![allow(dead_code)]

pub mod images;
pub mod pki;
pub mod ui;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest as _, Sha256};

/// A running berth; killed on drop.
pub struct Berth {
    child: Child,
    pub addr: String,
    pub base: String,
    pub dir: tempfile::TempDir,
    stderr_path: PathBuf,
}

impl Berth {
    /// Start with default settings plus `extra_toml` appended to the config.
    pub fn start(extra_toml: &str) -> Berth {
        Berth::start_with(extra_toml, &[])
    }

    pub fn start_with(extra_toml: &str, env: &[(&str, &str)]) -> Berth {
        Berth::start_binary(Path::new(env!("CARGO_BIN_EXE_berth")), extra_toml, env)
    }

    /// Start the hardened release binary (`BERTH_RELEASE_BIN`, which
    /// scripts/test builds): for tests whose figures (memory, timing
    /// under load) only mean something for the build that ships.
    pub fn start_release(extra_toml: &str, env: &[(&str, &str)]) -> Berth {
        Berth::start_binary(&release_bin(), extra_toml, env)
    }

    pub fn start_binary(bin: &Path, extra_toml: &str, env: &[(&str, &str)]) -> Berth {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("berth.toml");
        let data = dir.path().join("data");
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\n{extra_toml}\n[storage.fs]\nroot = {:?}\nfsync = false\n",
            data.display().to_string()
        );
        std::fs::write(&config, text).expect("write config");
        let stderr_path = dir.path().join("stderr.log");
        let mut cmd = Command::new(bin);
        cmd.arg("serve").arg("--config").arg(&config);
        for (k, v) in env {
            cmd.env(k, v);
        }
        Berth::launch(cmd, dir, stderr_path)
    }

    /// Run `cmd` (a berth, possibly behind a wrapper that execs it) with
    /// stdout piped and stderr to `stderr_path`; wait for its address.
    pub fn launch(mut cmd: Command, dir: tempfile::TempDir, stderr_path: PathBuf) -> Berth {
        let stderr = std::fs::File::create(&stderr_path).expect("stderr file");
        cmd.stdout(Stdio::piped()).stderr(stderr).stdin(Stdio::null());
        let mut child = cmd.spawn().expect("spawn berth");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let guard_dir = dir;
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                let log = std::fs::read_to_string(&stderr_path).unwrap_or_default();
                panic!("berth did not report its address within 60s; stderr:\n{log}");
            }
        };
        let addr =
            line.strip_prefix("listening on ").unwrap_or_else(|| panic!("unexpected first line {line:?}")).to_owned();
        Berth { child, base: format!("http://{addr}"), addr, dir: guard_dir, stderr_path }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Send SIGTERM and wait for the exit status (bounded).
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

impl Drop for Berth {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The release binary under test; never a fallback path, since an old
/// binary would pass for a new one.
pub fn release_bin() -> PathBuf {
    let path = std::env::var_os("BERTH_RELEASE_BIN").map(PathBuf::from).unwrap_or_else(|| {
        panic!(
            "BERTH_RELEASE_BIN is not set: build with `cargo auditable build --release --locked` and point it at \
             target/release/berth (scripts/test does both)"
        )
    });
    assert!(path.is_file(), "BERTH_RELEASE_BIN={} does not exist", path.display());
    path
}

/// Peak resident memory of a process (`VmHWM`), in bytes.
pub fn peak_rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
    let kib: u64 = line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("VmHWM value");
    kib * 1024
}

pub fn sha256(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(120))
        .build()
        .expect("client")
}

/// Deterministic pseudo-random bytes (xorshift), so tests need no RNG crate.
pub fn bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// All files under `dir`, recursively.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(entries) = std::fs::read_dir(&d) {
            for e in entries.flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else {
                    out.push(p);
                }
            }
        }
    }
    out
}

/// A redis-server on a loopback port, killed on drop.
pub struct RedisServer {
    child: Option<std::process::Child>,
    pub port: u16,
}

impl RedisServer {
    pub fn start() -> RedisServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0").expect("free port").local_addr().expect("addr").port();
        RedisServer::start_on(port)
    }

    /// Start on `port` and wait until it answers PING.
    pub fn start_on(port: u16) -> RedisServer {
        let found = Command::new("sh").arg("-c").arg("command -v redis-server").output().map(|o| o.status.success());
        assert!(
            found.unwrap_or(false),
            "redis-server is not installed: run scripts/install-test-deps (or apt-get install redis-server)"
        );
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn redis-server");
        let server = RedisServer { child: Some(child), port };
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
                use std::io::{Read, Write};
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut buf = [0u8; 7];
                if s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n" {
                    return server;
                }
            }
            assert!(std::time::Instant::now() < deadline, "redis-server on {port} never answered PING");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// Kill the server and wait for it to be gone.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A fleet started by `scripts/fleet up` in a directory of its own: S3
/// (moto), Redis, replicas and haproxy on loopback. `scripts/fleet down`
/// runs on drop, also when the test fails.
pub struct LocalFleet {
    pub dir: tempfile::TempDir,
    pub vars: std::collections::HashMap<String, String>,
}

impl LocalFleet {
    /// Start `replicas` replicas; `env` (BERTH__* settings) applies to each.
    pub fn up(replicas: usize, env: &[(&str, &str)]) -> LocalFleet {
        LocalFleet::up_with(replicas, &[], env)
    }

    /// Start `replicas` replicas with extra `scripts/fleet up` flags.
    pub fn up_with(replicas: usize, flags: &[&str], env: &[(&str, &str)]) -> LocalFleet {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut fleet = LocalFleet { dir, vars: Default::default() };
        let n = replicas.to_string();
        let mut args = vec!["up", "--replicas", n.as_str()];
        args.extend_from_slice(flags);
        let out = fleet.command(&args, env);
        fleet.vars = out.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
        assert!(fleet.vars.contains_key("lb_url"), "scripts/fleet up printed no lb_url:\n{out}");
        fleet
    }

    /// Run `scripts/fleet ARGS` for this fleet and return its stdout.
    pub fn run(&self, args: &[&str]) -> String {
        self.command(args, &[])
    }

    fn command(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fleet");
        let mut cmd = Command::new("bash");
        cmd.arg(script)
            .args(args)
            .env("BERTH_FLEET_DIR", self.dir.path())
            .env("BERTH_BIN", env!("CARGO_BIN_EXE_berth"));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.stdin(Stdio::null()).output().expect("run scripts/fleet");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "scripts/fleet {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    pub fn var(&self, key: &str) -> &str {
        self.vars.get(key).unwrap_or_else(|| panic!("scripts/fleet printed no {key}"))
    }

    pub fn lb(&self) -> &str {
        self.var("lb_url")
    }

    pub fn lb_hostport(&self) -> &str {
        self.lb().trim_start_matches("http://")
    }

    /// Base URL of replica `n` (1-based).
    pub fn replica(&self, n: usize) -> &str {
        self.var(&format!("replica_{n}"))
    }

    /// Every replica's log, for checking that no request failed with a 500.
    pub fn logs(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.dir.path()).expect("fleet dir").flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with("replica-") && name.ends_with(".log") {
                all.push_str(&std::fs::read_to_string(entry.path()).unwrap_or_default());
            }
        }
        all
    }

    pub fn assert_no_server_errors(&self) {
        let logs = self.logs();
        let bad: Vec<&str> = logs.lines().filter(|l| l.contains("\"status\":500") || l.contains("panicked")).collect();
        assert!(bad.is_empty(), "server errors in replica logs:\n{}", bad.join("\n"));
    }
}

impl Drop for LocalFleet {
    fn drop(&mut self) {
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fleet");
        let _ = Command::new("bash")
            .arg(script)
            .arg("down")
            .env("BERTH_FLEET_DIR", self.dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The signature algorithm of a token-service key [`token_key`] makes.
#[derive(Debug, Clone, Copy)]
pub enum KeyKind {
    /// ECDSA P-256 (ES256).
    P256,
    /// Ed25519 (EdDSA).
    Ed25519,
}

/// A token-service signing key (PKCS#8 PEM, made by openssl) at `path`.
pub fn token_key(path: &Path, kind: KeyKind) -> PathBuf {
    let algorithm: &[&str] = match kind {
        KeyKind::P256 => &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        KeyKind::Ed25519 => &["-algorithm", "ed25519"],
    };
    let out = Command::new("openssl").arg("genpkey").args(algorithm).arg("-out").arg(path).output().unwrap();
    assert!(out.status.success(), "openssl: {}", String::from_utf8_lossy(&out.stderr));
    path.to_owned()
}

/// An htpasswd file `dir/users` where each of `users` has the password
/// `<name>-password`.
pub fn users_file(dir: &Path, users: &[&str]) -> PathBuf {
    let lines: Vec<String> = users.iter().map(|u| user_hash(u, &format!("{u}-password"))).collect();
    let path = dir.join("users");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// A Berth with the htpasswd `users` ([`users_file`]), `admin` as its
/// admin, and the token service (an Ed25519 key): `auth_extra` goes into
/// `[auth]` (keys, or whole `[auth.*]` tables), `rest` after it all.
pub fn token_service_berth(users: &[&str], auth_extra: &str, rest: &str) -> (tempfile::TempDir, Berth) {
    let dir = tempfile::tempdir().unwrap();
    let htpasswd = users_file(dir.path(), users);
    let key = token_key(&dir.path().join("token.pem"), KeyKind::Ed25519);
    let config = format!(
        "[auth]\nhtpasswd = {:?}\nadmins = [\"admin\"]\n{auth_extra}\n[auth.token]\nkey_file = {:?}\n{rest}",
        htpasswd.display().to_string(),
        key.display().to_string()
    );
    let berth = Berth::start(&config);
    (dir, berth)
}

/// A token from `b`'s token service for `user` (password
/// `<user>-password`, as [`users_file`] writes it) with `scope`.
pub async fn token_for(b: &Berth, user: &str, scope: &str) -> String {
    let token: serde_json::Value = client()
        .get(b.url(&format!("/v2/token?service=berth&scope={scope}")))
        .header("authorization", basic(user, &format!("{user}-password")))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    token["token"].as_str().unwrap().to_owned()
}

/// `berth user hash NAME` with `password` on stdin: the htpasswd line.
pub fn user_hash(name: &str, password: &str) -> String {
    use std::io::Write as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_berth"))
        .args(["user", "hash", name])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run berth user hash");
    child.stdin.take().expect("stdin").write_all(format!("{password}\n").as_bytes()).expect("write password");
    let out = child.wait_with_output().expect("berth user hash");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8").trim().to_owned()
}

/// An `Authorization: Basic` value.
pub fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
}

/// The test venv's python (oras-py, moto), from scripts/install-test-deps.
pub fn venv_python() -> PathBuf {
    let venv = std::env::var_os("BERTH_TEST_VENV")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-venv"));
    let python = venv.join("bin/python");
    assert!(python.exists(), "{} is missing: run scripts/install-test-deps", python.display());
    python
}

/// The value of one series (`name{labels}` as exported) in a `/metrics`
/// text, 0 when absent.
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .map(|v| v.trim().parse().unwrap())
        .unwrap_or(0.0)
}

/// Push `data` as a blob of `repo` in one request; its digest.
pub async fn push_blob(base: &str, repo: &str, data: &[u8]) -> String {
    let digest = sha256(data);
    let resp = client()
        .post(format!("{base}/v2/{repo}/blobs/uploads/?digest={digest}"))
        .header("content-type", "application/octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "push blob to {base}: {}", resp.text().await.unwrap());
    digest
}
