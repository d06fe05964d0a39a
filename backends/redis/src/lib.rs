//! [`SharedState`] on Redis, for a fleet of replicas.
//!
//! Every key is namespaced with a configurable prefix. Operations that must
//! be atomic across replicas (fenced writes, lock acquisition, renewal and
//! release, counters with an expiry set at creation) are Lua scripts, so each
//! is one round trip and cannot interleave with another replica's. Locks use
//! one fleet-wide counter for fencing tokens, so a name's tokens always grow.
//! A Redis that cannot be reached is reported as
//! [`StateError::Unavailable`], which the registry turns into 503.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use berth_state::{Lease, Result, SharedState, StateError};
use bytes::Bytes;
use futures::stream::{BoxStream, StreamExt};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Client, Script};

const BACKEND: &str = "redis";

/// How to reach Redis. `Debug` hides the password and the URL's user
/// information.
#[derive(Clone)]
pub struct RedisOptions {
    /// `redis://[user:password@]host:port/db`.
    pub url: String,
    /// Prepended to every key and channel, so several registries (or tests)
    /// can share one Redis.
    pub key_prefix: String,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    /// PEM CA bundle to verify a `rediss://` server with, instead of the
    /// system's trust store.
    pub tls_ca_pem: Option<Vec<u8>>,
    /// ACL user and password; they replace any given in the URL, so the URL
    /// can stay free of secrets.
    pub username: Option<String>,
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOptions")
            .field("url", &redacted_url(&self.url))
            .field("key_prefix", &self.key_prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("tls_ca_pem", &self.tls_ca_pem.as_ref().map(|p| format!("{} bytes", p.len())))
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The URL with any user information (`user:password@`) replaced by `***`.
fn redacted_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return "***".into() };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***@{}", &rest[at + 1..]),
        None => url.to_owned(),
    }
}

impl RedisOptions {
    pub fn new(url: impl Into<String>) -> RedisOptions {
        RedisOptions {
            url: url.into(),
            key_prefix: "berth:".into(),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            tls_ca_pem: None,
            username: None,
            password: None,
        }
    }
}

/// Shared state kept in Redis.
#[derive(Clone)]
pub struct RedisState {
    client: Client,
    conn: ConnectionManager,
    prefix: String,
    scripts: std::sync::Arc<Scripts>,
}

impl std::fmt::Debug for RedisState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        f.debug_struct("RedisState").field("prefix", &self.prefix).finish_non_exhaustive()
    }
}

struct Scripts {
    set_fenced: Script,
    try_lock: Script,
    extend: Script,
    unlock: Script,
    incr: Script,
    rate_limit: Script,
    heartbeat: Script,
    members: Script,
}

impl Scripts {
    fn new() -> Scripts {
        Scripts {
            // KEYS: lock, value. ARGV: token, value, ttl ms.
            set_fenced: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
                    return 1
                  end
                  return 0",
            ),
            // KEYS: lock, fence counter. ARGV: ttl ms. Returns the token or 0.
            try_lock: Script::new(
                r"if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
                  local token = redis.call('INCR', KEYS[2])
                  redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
                  return token",
            ),
            // KEYS: lock. ARGV: token, ttl ms.
            extend: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then
                    redis.call('PEXPIRE', KEYS[1], ARGV[2])
                    return 1
                  end
                  return 0",
            ),
            // KEYS: lock. ARGV: token.
            unlock: Script::new(
                r"if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
                  return 0",
            ),
            // KEYS: counter. ARGV: by, ttl ms. The expiry is set when the
            // counter is created and never pushed back.
            incr: Script::new(
                r"local v = redis.call('INCRBY', KEYS[1], ARGV[1])
                  if redis.call('PTTL', KEYS[1]) == -1 then redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
                  return v",
            ),
            // GCRA. KEYS: the theoretical arrival time. ARGV: interval ms,
            // burst. Returns 0 to admit, or the ms to wait. Redis's own
            // clock, so every replica agrees.
            rate_limit: Script::new(
                r"local t = redis.call('TIME')
                  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                  local interval = tonumber(ARGV[1])
                  local tat = tonumber(redis.call('GET', KEYS[1]) or now)
                  if tat < now then tat = now end
                  local new_tat = tat + interval
                  local allow_at = new_tat - interval * tonumber(ARGV[2])
                  if now < allow_at then return allow_at - now end
                  redis.call('SET', KEYS[1], new_tat, 'PX', math.max(1, new_tat - now))
                  return 0",
            ),
            // A sorted set scored by expiry on Redis's clock. KEYS: group.
            // ARGV: member, ttl ms. The set itself outlives its members by
            // a margin, so an abandoned group disappears.
            heartbeat: Script::new(
                r"local t = redis.call('TIME')
                  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
                  redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[1])
                  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 4)
                  return 0",
            ),
            // KEYS: group. Members whose expiry is still ahead, sorted.
            members: Script::new(
                r"local t = redis.call('TIME')
                  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
                  local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. now, '+inf')
                  table.sort(live)
                  return live",
            ),
        }
    }
}

/// Redis errors that mean "not reachable now" become `Unavailable`.
fn map_err(e: redis::RedisError) -> StateError {
    if e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout() {
        StateError::Unavailable(e.to_string())
    } else {
        StateError::Backend { backend: BACKEND, source: Box::new(e) }
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis().clamp(1, u64::MAX as u128) as u64
}

fn unix_ms(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as f64).unwrap_or(0.0)
}

impl RedisState {
    /// Connect (the connection manager reconnects by itself afterwards).
    pub async fn connect(options: &RedisOptions) -> Result<RedisState> {
        // rustls needs a process-wide crypto provider; the first caller installs ring.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut info = redis::IntoConnectionInfo::into_connection_info(options.url.as_str()).map_err(map_err)?;
        let mut settings = info.redis_settings().clone();
        if let Some(user) = &options.username {
            settings = settings.set_username(user);
        }
        if let Some(password) = &options.password {
            settings = settings.set_password(password);
        }
        info = info.set_redis_settings(settings);
        let client = match &options.tls_ca_pem {
            Some(ca) => {
                Client::build_with_tls(info, redis::TlsCertificates { client_tls: None, root_cert: Some(ca.clone()) })
            }
            None => Client::open(info),
        }
        .map_err(map_err)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(options.connect_timeout))
            .set_response_timeout(Some(options.response_timeout))
            .set_number_of_retries(1);
        let conn = tokio::time::timeout(options.connect_timeout * 2, client.get_connection_manager_with_config(config))
            .await
            .map_err(|_| StateError::Unavailable("timed out connecting to redis".into()))?
            .map_err(map_err)?;
        Ok(RedisState {
            client,
            conn,
            prefix: options.key_prefix.clone(),
            scripts: std::sync::Arc::new(Scripts::new()),
        })
    }

    fn key(&self, k: &str) -> String {
        format!("{}{k}", self.prefix)
    }

    fn lock_key(&self, name: &str) -> String {
        format!("{}lock:{name}", self.prefix)
    }
}

#[async_trait]
impl SharedState for RedisState {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let mut c = self.conn.clone();
        let v: Option<Vec<u8>> = c.get(self.key(key)).await.map_err(map_err)?;
        Ok(v.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes, ttl: Duration) -> Result<()> {
        let mut c = self.conn.clone();
        let () = c.pset_ex(self.key(key), value.as_ref(), ms(ttl)).await.map_err(map_err)?;
        Ok(())
    }

    async fn set_fenced(&self, key: &str, value: Bytes, ttl: Duration, lease: &Lease) -> Result<()> {
        let mut c = self.conn.clone();
        let done: i64 = self
            .scripts
            .set_fenced
            .key(self.lock_key(&lease.name))
            .key(self.key(key))
            .arg(lease.token)
            .arg(value.as_ref())
            .arg(ms(ttl))
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        if done == 1 {
            Ok(())
        } else {
            Err(StateError::Fenced { name: lease.name.clone() })
        }
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let mut c = self.conn.clone();
        let _: i64 = c.del(self.key(key)).await.map_err(map_err)?;
        Ok(())
    }

    async fn try_lock(&self, name: &str, ttl: Duration) -> Result<Option<Lease>> {
        let mut c = self.conn.clone();
        let token: u64 = self
            .scripts
            .try_lock
            .key(self.lock_key(name))
            .key(self.key("fence"))
            .arg(ms(ttl))
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        Ok((token > 0).then(|| Lease { name: name.to_owned(), token }))
    }

    async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool> {
        let mut c = self.conn.clone();
        let done: i64 = self
            .scripts
            .extend
            .key(self.lock_key(&lease.name))
            .arg(lease.token)
            .arg(ms(ttl))
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        Ok(done == 1)
    }

    async fn unlock(&self, lease: &Lease) -> Result<()> {
        let mut c = self.conn.clone();
        let _: i64 = self
            .scripts
            .unlock
            .key(self.lock_key(&lease.name))
            .arg(lease.token)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn incr(&self, key: &str, by: i64, ttl: Duration) -> Result<i64> {
        let mut c = self.conn.clone();
        self.scripts.incr.key(self.key(key)).arg(by).arg(ms(ttl)).invoke_async(&mut c).await.map_err(map_err)
    }

    async fn rate_limit(&self, key: &str, interval: Duration, burst: u32) -> Result<Option<Duration>> {
        let mut c = self.conn.clone();
        let wait: i64 = self
            .scripts
            .rate_limit
            .key(self.key(key))
            .arg(ms(interval))
            .arg(burst)
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        Ok((wait > 0).then(|| Duration::from_millis(wait as u64)))
    }

    async fn schedule(&self, queue: &str, member: &str, due: SystemTime) -> Result<()> {
        let mut c = self.conn.clone();
        let _: i64 = c.zadd(self.key(queue), member, unix_ms(due)).await.map_err(map_err)?;
        Ok(())
    }

    async fn unschedule(&self, queue: &str, member: &str) -> Result<()> {
        let mut c = self.conn.clone();
        let _: i64 = c.zrem(self.key(queue), member).await.map_err(map_err)?;
        Ok(())
    }

    async fn due(&self, queue: &str, now: SystemTime, limit: usize) -> Result<Vec<String>> {
        let mut c = self.conn.clone();
        c.zrangebyscore_limit(self.key(queue), f64::NEG_INFINITY, unix_ms(now), 0, limit as isize)
            .await
            .map_err(map_err)
    }

    async fn heartbeat(&self, group: &str, member: &str, ttl: Duration) -> Result<()> {
        let mut c = self.conn.clone();
        let _: i64 = self
            .scripts
            .heartbeat
            .key(self.key(group))
            .arg(member)
            .arg(ms(ttl))
            .invoke_async(&mut c)
            .await
            .map_err(map_err)?;
        Ok(())
    }

    async fn members(&self, group: &str) -> Result<Vec<String>> {
        let mut c = self.conn.clone();
        self.scripts.members.key(self.key(group)).invoke_async(&mut c).await.map_err(map_err)
    }

    async fn leave(&self, group: &str, member: &str) -> Result<()> {
        let mut c = self.conn.clone();
        let _: i64 = c.zrem(self.key(group), member).await.map_err(map_err)?;
        Ok(())
    }

    async fn publish(&self, channel: &str, message: Bytes) -> Result<()> {
        let mut c = self.conn.clone();
        let _: i64 = c.publish(self.key(channel), message.as_ref()).await.map_err(map_err)?;
        Ok(())
    }

    async fn subscribe(&self, channel: &str) -> Result<BoxStream<'static, Bytes>> {
        let mut pubsub = self.client.get_async_pubsub().await.map_err(map_err)?;
        pubsub.subscribe(self.key(channel)).await.map_err(map_err)?;
        Ok(pubsub.into_on_message().map(|m| Bytes::from(m.get_payload_bytes().to_vec())).boxed())
    }
}

#[cfg(test)]
mod tests {
    use std::process::{Child, Command, Stdio};
    use std::sync::Arc;

    use super::*;

    #[test]
    fn debug_hides_passwords() {
        let mut o = RedisOptions::new("rediss://berth:hunter2-secret@redis.example:6380/0");
        o.password = Some("other-secret".into());
        let shown = format!("{o:?}");
        assert!(!shown.contains("hunter2") && !shown.contains("other-secret"), "{shown}");
        assert!(shown.contains("rediss://***@redis.example:6380/0"), "{shown}");
        assert_eq!(redacted_url("redis://127.0.0.1:6379/0"), "redis://127.0.0.1:6379/0");
        assert_eq!(redacted_url("not a url with pw@x"), "***");
    }

    /// A redis-server on a free loopback port, killed on drop.
    struct RedisServer {
        child: Child,
        port: u16,
    }

    impl Drop for RedisServer {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn start_redis() -> RedisServer {
        start_redis_with(&[])
    }

    fn start_redis_with(extra: &[&str]) -> RedisServer {
        let found = Command::new("sh").arg("-c").arg("command -v redis-server").output().map(|o| o.status.success());
        assert!(
            found.unwrap_or(false),
            "redis-server is not installed: run scripts/install-test-deps (or apt-get install redis-server)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        RedisServer { child, port }
    }

    async fn connect_when_ready(port: u16, prefix: &str) -> RedisState {
        let mut options = RedisOptions::new(format!("redis://127.0.0.1:{port}/"));
        options.key_prefix = prefix.into();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            match RedisState::connect(&options).await {
                Ok(s) if s.get("ping").await.is_ok() => return s,
                _ if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("redis on port {port} never became ready: {:?}", other.err()),
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance() {
        let server = start_redis();
        let state = connect_when_ready(server.port, "test-a:").await;
        berth_state::testing::run_all(Arc::new(state)).await;
    }

    /// The suite against the server in `BERTH_TEST_REDIS_URL` (CI's Redis
    /// service container), under a key prefix of its own; without the
    /// variable, against a local redis-server reached the same way, by URL.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn conformance_against_the_configured_server() {
        let local;
        let url = match std::env::var("BERTH_TEST_REDIS_URL") {
            Ok(url) => url,
            Err(_) => {
                local = start_redis();
                format!("redis://127.0.0.1:{}/", local.port)
            }
        };
        let mut options = RedisOptions::new(url.clone());
        options.key_prefix = format!("berth-test-{}:", std::process::id());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let state = loop {
            match RedisState::connect(&options).await {
                Ok(s) if s.get("ping").await.is_ok() => break s,
                _ if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("redis at {url} never became ready: {:?}", other.err()),
            }
        };
        berth_state::testing::run_all(Arc::new(state)).await;
    }

    /// An ACL user whose password comes from the options (in berth, a secret
    /// file), not the URL; a wrong password is refused with an error.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn acl_user_and_password_outside_the_url() {
        let server =
            start_redis_with(&["--user", "default", "off", "--user", "berth", "on", ">s3cret-pw", "~*", "&*", "+@all"]);
        let mut options = RedisOptions::new(format!("redis://127.0.0.1:{}/", server.port));
        options.username = Some("berth".into());
        options.password = Some("s3cret-pw".into());
        options.key_prefix = "acl:".into();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let state = loop {
            match RedisState::connect(&options).await {
                Ok(s) if s.get("ping").await.is_ok() => break s,
                _ if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
                other => panic!("redis with ACL never accepted the user: {:?}", other.err()),
            }
        };
        berth_state::testing::run_all(Arc::new(state)).await;

        options.password = Some("wrong".into());
        let refused = match RedisState::connect(&options).await {
            Err(e) => e.to_string(),
            Ok(s) => s.get("x").await.expect_err("a wrong password must not work").to_string(),
        };
        assert!(!refused.contains("wrong"), "the password leaked into an error: {refused}");
        // Without credentials the disabled default user gets nothing.
        let anonymous = RedisOptions::new(format!("redis://127.0.0.1:{}/", server.port));
        match RedisState::connect(&anonymous).await {
            Err(_) => {}
            Ok(s) => assert!(s.get("x").await.is_err(), "the default user is off"),
        }
    }

    /// `rediss://` with a private CA: the conformance suite over TLS, and a
    /// server whose certificate the CA did not sign is refused.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn tls_with_a_private_ca() {
        let dir = std::env::temp_dir().join(format!("berth-redis-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sh = |cmd: &str| {
            let out = Command::new("sh").arg("-c").arg(cmd).current_dir(&dir).output().unwrap();
            assert!(out.status.success(), "{cmd}: {}", String::from_utf8_lossy(&out.stderr));
        };
        sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=test-ca -keyout ca.key -out ca.pem 2>/dev/null");
        sh("openssl req -newkey rsa:2048 -nodes -subj /CN=localhost -keyout srv.key -out srv.csr 2>/dev/null");
        sh("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1' > ext.cnf && openssl x509 -req -in srv.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 -extfile ext.cnf -out srv.pem 2>/dev/null");
        sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca -keyout other.key -out other.pem 2>/dev/null");
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .args([
                "--tls-cert-file",
                "srv.pem",
                "--tls-key-file",
                "srv.key",
                "--tls-ca-cert-file",
                "ca.pem",
                "--tls-auth-clients",
                "no",
            ])
            .current_dir(&dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let _server = RedisServer { child, port };
        let mut options = RedisOptions::new(format!("rediss://127.0.0.1:{port}/"));
        options.key_prefix = "tls:".into();
        options.tls_ca_pem = Some(std::fs::read(dir.join("ca.pem")).unwrap());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let state = loop {
            match RedisState::connect(&options).await {
                Ok(s) if s.get("ping").await.is_ok() => break s,
                _ if tokio::time::Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
                other => panic!("TLS redis never became ready: {:?}", other.err()),
            }
        };
        berth_state::testing::values_and_expiry(&state).await;
        berth_state::testing::locks_and_fencing(&state).await;
        options.tls_ca_pem = Some(std::fs::read(dir.join("other.pem")).unwrap());
        assert!(RedisState::connect(&options).await.is_err(), "a server signed by another CA was trusted");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn prefixes_keep_registries_apart_and_outage_is_unavailable() {
        let server = start_redis();
        let a = connect_when_ready(server.port, "one:").await;
        let b = connect_when_ready(server.port, "two:").await;
        a.set("k", Bytes::from_static(b"a"), Duration::from_secs(60)).await.unwrap();
        assert_eq!(b.get("k").await.unwrap(), None);
        // Both see tokens from their own counters, both valid.
        assert!(a.try_lock("l", Duration::from_secs(5)).await.unwrap().is_some());
        assert!(b.try_lock("l", Duration::from_secs(5)).await.unwrap().is_some());
        drop(server);
        let err = a.get("k").await.unwrap_err();
        assert!(matches!(err, StateError::Unavailable(_)), "{err:?}");
    }
}
