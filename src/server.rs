//! The listener: accepts connections, serves HTTP/1.1 and h2c, and shuts
//! down gracefully.
//!
//! Slow or stuck clients are bounded without ever cutting a long transfer
//! that is making progress: a connection must send its first byte within the
//! header-read timeout (hyper then bounds the rest of the headers), a request
//! body may pause at most the body idle timeout (in the handlers), and a
//! connection on which no byte moves either way for the connection idle
//! timeout is closed (this catches clients that stop reading a download).
//! At most `max_connections` are served at once. On SIGTERM/SIGINT /readyz
//! turns 503, the listener closes after the shutdown delay, and in-flight
//! requests get the grace period to finish.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tower::ServiceExt as _;

use crate::api::{self, App};
use crate::config::{Config, ConfigError, StateBackend, StorageBackend};
use crate::conn::{ClientInfo, Connection, TrustedProxies};
use crate::registry::{Registry, RegistryOptions};

/// Everything the configuration's files make: built once, by
/// [`Components::load`], which `config check` and `serve` both call, so
/// they cannot disagree and no file is read twice.
#[derive(Debug)]
pub struct Components {
    pub gate: crate::auth::Gate,
    pub tls: Option<crate::tls::ReloadingTls>,
    pub trusted_proxies: TrustedProxies,
    pub rate_limits: Option<crate::ratelimit::RateLimits>,
    pub metrics_access: Option<api::MetricsAccess>,
    /// The mesh's server and client TLS (`[mesh]`).
    pub mesh_tls: Option<(crate::tls::ReloadingTls, crate::tls::ReloadingClientTls)>,
}

impl Components {
    /// Read the files the configuration names (htpasswd, token key, JWKS,
    /// LDAP CA, TLS certificate and key) and check every name in policies,
    /// admins, rate-limit overrides and `[metrics]`. Connects to nothing.
    pub fn load(config: &Config) -> Result<Components, ConfigError> {
        let key = |key: &str, message: String| ConfigError::Key { key: key.into(), message };
        let gate = crate::auth::Gate::from_config(&config.auth, config.access.as_ref())?;
        let tls = match &config.server.tls {
            Some(t) => Some(
                crate::tls::ReloadingTls::load(crate::tls::TlsFiles::from_config(t))
                    .map_err(|e| key("server.tls", e.to_string()))?,
            ),
            None => None,
        };
        let trusted_proxies =
            TrustedProxies::parse(&config.server.trusted_proxies).map_err(|m| key("server.trusted_proxies", m))?;
        let ids = gate.issuer_ids();
        let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
        let rate_limits = if config.rate_limit.enabled {
            Some(crate::ratelimit::RateLimits::new(&config.rate_limit, &ids).map_err(|m| key("rate_limit", m))?)
        } else {
            None
        };
        let metrics_access = match &config.metrics {
            Some(m) => Some(api::MetricsAccess::from_config(m, &ids).map_err(|e| key("metrics", e))?),
            None => None,
        };
        let mesh_tls = match &config.mesh {
            Some(m) => Some((
                crate::mesh::server_tls(m).map_err(|e| key("mesh", e.to_string()))?,
                crate::mesh::client_tls(m).map_err(|e| key("mesh", e.to_string()))?,
            )),
            None => None,
        };
        Ok(Components { gate, tls, trusted_proxies, rate_limits, metrics_access, mesh_tls })
    }
}

/// Connection-level limits.
#[derive(Debug, Clone, Copy)]
struct Limits {
    header_read_timeout: Duration,
    connection_idle_timeout: Duration,
    shutdown_grace: Duration,
    shutdown_delay: Duration,
    max_connections: usize,
}

/// A bound, ready-to-run server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    /// Plain HTTP for probes and metrics (`server.health_listen`).
    health_listener: Option<TcpListener>,
    app: Arc<App>,
    limits: Limits,
    janitor_interval: Duration,
    /// Time between collection passes; `None` with `gc.enabled = false`.
    gc_interval: Option<Duration>,
    auth_reload_interval: Duration,
    tls: Option<crate::tls::ReloadingTls>,
    revocation_reload: Duration,
    /// The configuration file whose access policies are reloaded.
    config_file: Option<std::path::PathBuf>,
    mesh: Option<MeshParts>,
}

/// The mesh, bound and ready to run.
#[derive(Debug)]
struct MeshParts {
    mesh: Arc<crate::mesh::Mesh>,
    listener: TcpListener,
    server_tls: crate::tls::ReloadingTls,
    client_tls: crate::tls::ReloadingClientTls,
}

/// Open the object store and shared state the configuration names, and the
/// registry services over them (also used by CLI tools that act on a fleet).
pub async fn open_registry(config: &Config) -> anyhow::Result<Registry> {
    let store: Arc<dyn berth_storage::ObjectStore> = match config.storage.backend {
        StorageBackend::Fs => {
            let fs = &config.storage.fs;
            let store = berth_storage_fs::FsStore::open(
                &fs.root,
                berth_storage_fs::FsOptions { fsync: fs.fsync, direct_io: fs.direct_io },
            )
            .with_context(|| format!("cannot use storage directory {}", fs.root.display()))?;
            Arc::new(store)
        }
        StorageBackend::S3 => Arc::new(open_s3(&config.storage.s3).await?),
    };
    // Every call is counted and timed (`berth_store_*` metrics).
    let store: Arc<dyn berth_storage::ObjectStore> =
        Arc::new(crate::registry::instrumented::InstrumentedStore::new(store));
    let state: Arc<dyn berth_state::SharedState> = match config.state.backend {
        StateBackend::Memory => Arc::new(berth_state::MemoryState::new()),
        StateBackend::Redis => {
            let r = &config.state.redis;
            let tls_ca_pem = match &r.tls_ca_file {
                Some(path) => Some(
                    std::fs::read(path)
                        .with_context(|| format!("cannot read state.redis.tls_ca_file {}", path.display()))?,
                ),
                None => None,
            };
            let state = berth_state_redis::RedisState::connect(&redis_options(r, tls_ca_pem))
                .await
                .context("cannot connect to redis (state.redis.url)")?;
            Arc::new(state)
        }
    };
    // Every call is counted and timed (`berth_state_*` metrics).
    let state: Arc<dyn berth_state::SharedState> =
        Arc::new(crate::registry::instrumented_state::InstrumentedState::new(state));
    let body_idle = config.server.body_idle_timeout.0;
    let options = RegistryOptions {
        upload_ttl: config.uploads.session_ttl.0,
        // A lease must outlive the longest pause a client may take mid-body.
        upload_lock_ttl: (body_idle * 2).max(Duration::from_secs(30)),
        redirect_ttl: redirects(config).then_some(config.storage.redirect_ttl.0),
        delivery: delivery_rules(config),
        cache: crate::registry::cache::CacheOptions {
            manifest_bytes: config.cache.manifest_bytes,
            tag_ttl: config.cache.tag_ttl.0,
            ..Default::default()
        },
        gc: gc_options(config),
        quotas: config
            .quotas
            .iter()
            .map(|q| crate::registry::gc::usage::Quota::new(&q.repositories, q.max_bytes.0))
            .collect(),
        fetched_on_demand: config.mirror.upstreams.iter().map(|u| u.prefix.clone()).collect(),
        ..RegistryOptions::default()
    };
    let mut registry = Registry::new(store.clone(), state, options);
    if let Some(b) = &config.cache.blobs {
        let opts = crate::registry::blobcache::BlobCacheOptions {
            dir: b.dir.clone(),
            max_bytes: b.max_bytes.0,
            first_byte_timeout: config.mesh.as_ref().map_or(Duration::from_secs(2), |m| m.first_byte_timeout.0),
            idle_timeout: config.mesh.as_ref().map_or(Duration::from_secs(5), |m| m.idle_timeout.0),
            reverify_after: b.reverify_after.0,
        };
        let cache = tokio::task::spawn_blocking(move || crate::registry::blobcache::BlobCache::open(store, opts))
            .await?
            .with_context(|| format!("cannot use the blob cache directory {} (cache.blobs.dir)", b.dir.display()))?;
        registry = registry.with_blob_cache(Arc::new(cache));
    }
    Ok(registry)
}

/// Whether any repository's blobs may be redirected.
fn redirects(config: &Config) -> bool {
    let s = &config.storage;
    s.delivery == crate::config::BlobDelivery::Redirect
        || s.redirect_above.is_some()
        || s.delivery_rules
            .iter()
            .any(|r| r.delivery == crate::config::BlobDelivery::Redirect || r.redirect_above.is_some())
}

fn delivery_of(
    d: crate::config::BlobDelivery,
    above: Option<crate::config::ByteSize>,
) -> crate::registry::delivery::Delivery {
    use crate::config::BlobDelivery as B;
    use crate::registry::delivery::DeliveryMode as M;
    let mode = match d {
        B::Proxy => M::Proxy,
        B::Redirect => M::Redirect,
        B::Cache => M::Cache,
    };
    crate::registry::delivery::Delivery { mode, redirect_above: above.map(|b| b.0) }
}

/// `storage.delivery` and `[[storage.delivery_rules]]`.
pub fn delivery_rules(config: &Config) -> crate::registry::delivery::DeliveryRules {
    let s = &config.storage;
    s.delivery_rules
        .iter()
        .fold(crate::registry::delivery::DeliveryRules::new(delivery_of(s.delivery, s.redirect_above)), |rules, r| {
            rules.with_rule(&r.repositories, delivery_of(r.delivery, r.redirect_above))
        })
}

impl Server {
    /// Open the backends and bind the listener, with the components built
    /// from the configuration's files.
    pub async fn bind(config: &Config, components: Components) -> anyhow::Result<Server> {
        let Components { gate, tls, trusted_proxies, rate_limits, metrics_access, mesh_tls } = components;
        let registry = open_registry(config).await?;
        let body_idle = config.server.body_idle_timeout.0;
        if matches!(config.state.backend, StateBackend::Memory) {
            // Sessions lived in this process's memory: whatever is staged from
            // an earlier run can never be completed.
            match registry.sweep_orphaned_uploads(Duration::ZERO).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed uploads left by an earlier run"),
                Err(e) => tracing::warn!(error = %e, "cannot sweep uploads left by an earlier run"),
            }
        }
        let t = &config.auth.throttle;
        gate.set_throttle(crate::auth::throttle::Throttle::new(
            registry.state(),
            crate::auth::throttle::ThrottleOptions {
                window: t.window.0,
                user_lockout: t.user_lockout,
                ip_lockout: t.ip_lockout,
                delay_after: t.delay_after,
                max_delay: t.max_delay.0,
            },
        ));
        if gate.required() {
            // Known before the first request; if the store cannot be read
            // now, bearer tokens get 503 until the sync task manages to.
            match registry.load_revocations().await {
                Ok(all) => gate.revocations().replace(all),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read token revocations; tokens are refused until they are read")
                }
            }
        }
        let mesh = match (&config.mesh, mesh_tls) {
            (Some(m), Some((server_tls, client_tls))) => {
                let listener = TcpListener::bind(m.listen)
                    .await
                    .with_context(|| format!("cannot listen on {} (mesh.listen)", m.listen))?;
                let advertise = match &m.advertise {
                    Some(a) => a.clone(),
                    None => listener.local_addr()?.to_string(),
                };
                let opts = crate::mesh::MeshOptions {
                    advertise,
                    server_name: m.server_name.clone(),
                    heartbeat: m.heartbeat.0,
                    member_ttl: m.member_ttl.0,
                    first_byte_timeout: m.first_byte_timeout.0,
                };
                let mesh = Arc::new(
                    crate::mesh::Mesh::new(opts, registry.state(), client_tls.clone()).map_err(anyhow::Error::msg)?,
                );
                if let Some(cache) = registry.blob_cache() {
                    cache.set_peers(mesh.clone());
                }
                Some(MeshParts { mesh, listener, server_tls, client_tls })
            }
            _ => None,
        };
        let mut app = App::new(registry, gate, body_idle);
        if let Some(limits) = rate_limits {
            app.limiter = Some(crate::ratelimit::RateLimiter::new(app.registry.state(), limits));
        }
        app.trusted_proxies = trusted_proxies;
        app.metrics_on_main = config.server.health_listen.is_none();
        app.metrics_access = metrics_access;
        app.trust_trace_context = config.telemetry.otlp.as_ref().is_some_and(|o| o.trust_trace_context);
        #[cfg(feature = "scan")]
        if config.scan.enabled {
            app.scanner = Some(Arc::new(crate::ext::scan::Scanner::new(app.registry.clone(), config.scan.clone())));
        }
        #[cfg(feature = "mirror")]
        {
            #[cfg_attr(not(feature = "scan"), allow(unused_mut))]
            let mut mirror = crate::ext::mirror::Mirror::new(&config.mirror, app.registry.clone())
                .map_err(|e| anyhow::anyhow!(e))?;
            #[cfg(feature = "scan")]
            if let (Some(m), Some(scanner)) = (&mut mirror, &app.scanner) {
                // Mirrored images are scanned as pushed ones are.
                let scanner = scanner.clone();
                m.set_on_stored(Arc::new(move |repo, digest| scanner.on_push(repo, digest)));
            }
            app.mirror = mirror.map(Arc::new);
        }
        #[cfg(feature = "search")]
        if config.search.enabled {
            app.search = Some(Arc::new(crate::ext::search::Search::new(app.registry.clone(), config.search.clone())));
        }
        #[cfg(feature = "ui")]
        if config.ui.enabled {
            app.ui = Some(crate::ext::ui::UiSettings::from_config(&config.ui));
        }
        let app = Arc::new(app);
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        let health_listener = match config.server.health_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on {addr} (server.health_listen)"))?,
            ),
            None => None,
        };
        Ok(Server {
            listener,
            health_listener,
            app,
            limits: Limits {
                header_read_timeout: config.server.header_read_timeout.0,
                connection_idle_timeout: config.server.connection_idle_timeout.0,
                shutdown_grace: config.server.shutdown_grace.0,
                shutdown_delay: config.server.shutdown_delay.0,
                max_connections: config.server.max_connections,
            },
            janitor_interval: config.uploads.janitor_interval.0,
            gc_interval: config.gc.enabled.then_some(config.gc.interval.0),
            auth_reload_interval: config.auth.reload_interval.0,
            tls,
            revocation_reload: config.auth.revocation_reload.0,
            config_file: None,
            mesh,
        })
    }

    /// Reload access policies from `path` when it changes or on SIGHUP.
    pub fn watch_config(mut self, path: std::path::PathBuf) -> Server {
        self.config_file = Some(path);
        self
    }

    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The mesh's internal listener and the address peers dial, with `[mesh]`.
    pub fn mesh_addr(&self) -> Option<(SocketAddr, String)> {
        let m = self.mesh.as_ref()?;
        Some((m.listener.local_addr().ok()?, m.mesh.me().to_owned()))
    }

    /// The health listener's address, when one is configured.
    pub fn health_addr(&self) -> Option<SocketAddr> {
        self.health_listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serve until `shutdown` resolves, then drain.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let router: Router = api::router(self.app.clone());
        let janitor = tokio::spawn(run_janitor(self.app.registry.clone(), self.janitor_interval));
        let collector = self.gc_interval.map(|every| tokio::spawn(run_gc(self.app.registry.clone(), every)));
        let auth_reloader = self.app.gate.spawn_reloader(self.auth_reload_interval);
        let tls_reloader = self.tls.as_ref().map(|t| t.spawn_reloader(self.auth_reload_interval));
        let policy_reloader = self
            .config_file
            .clone()
            .map(|path| tokio::spawn(reload_policies(self.app.gate.clone(), path, self.auth_reload_interval)));
        let revocation_sync = self.app.gate.required().then(|| {
            crate::metrics::get()
                .revocations_tracked_since
                .store(crate::auth::token::now(), std::sync::atomic::Ordering::Relaxed);
            self.app.registry.spawn_revocation_sync(self.app.gate.revocations().clone(), self.revocation_reload)
        });
        let prober = tokio::spawn(run_probes(self.app.registry.clone()));
        #[cfg(feature = "mirror")]
        let mirror_sync = self.app.mirror.as_ref().map(|m| m.spawn_schedule()).unwrap_or_default();
        let cache_listener = self.app.registry.spawn_cache_listener();
        let (mesh, mesh_tasks) = match self.mesh {
            Some(m) => {
                tracing::info!(addr = %m.listener.local_addr()?, advertise = %m.mesh.me(), "mesh listener (mutual TLS, peers only)");
                let mut tasks = crate::mesh::spawn_server(
                    m.listener,
                    m.server_tls,
                    m.client_tls,
                    self.app.registry.clone(),
                    self.auth_reload_interval,
                );
                tasks.push(m.mesh.spawn_heartbeat());
                (Some(m.mesh), tasks)
            }
            None => (None, Vec::new()),
        };
        #[cfg(feature = "scan")]
        let scan_tasks = self.app.scanner.as_ref().map(|s| s.spawn()).unwrap_or_default();
        #[cfg(feature = "search")]
        let search_tasks = self.app.search.as_ref().map(|s| s.spawn()).unwrap_or_default();
        let health = self.health_listener.map(|listener| {
            let addr = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(%addr, "health listener (/livez, /readyz, /metrics) on plain HTTP");
            let router = api::health_router(self.app.clone());
            tokio::spawn(async move {
                if let Err(e) = axum::serve(listener, router).await {
                    tracing::error!(error = %e, "health listener failed");
                }
            })
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(self.limits.header_read_timeout).keep_alive(true);
        builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
        let builder = Arc::new(builder);
        let graceful = GracefulShutdown::new();
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        tracing::info!(addr = %self.listener.local_addr()?, tls = self.tls.is_some(), "listening");
        tokio::pin!(shutdown);
        // Set once shutdown starts: accepting continues until then.
        let mut stop_accepting_at: Option<tokio::time::Instant> = None;
        loop {
            // Waiting for a permit or a connection is interrupted by the next
            // shutdown step: the signal, then the end of the shutdown delay.
            let step = tokio::select! {
                permit = permits.clone().acquire_owned() => match permit {
                    Ok(permit) => tokio::select! {
                        accepted = self.listener.accept() => Control::Accepted(accepted, permit),
                        c = control(shutdown.as_mut(), stop_accepting_at) => c,
                    },
                    Err(_) => Control::StopAccepting, // the semaphore is never closed
                },
                c = control(shutdown.as_mut(), stop_accepting_at) => c,
            };
            let (accepted, permit) = match step {
                Control::Accepted(accepted, permit) => (accepted, permit),
                Control::ShutdownRequested => {
                    self.app.set_draining();
                    tracing::info!(delay = ?self.limits.shutdown_delay, "shutdown requested: readiness is now 503");
                    stop_accepting_at = Some(tokio::time::Instant::now() + self.limits.shutdown_delay);
                    continue;
                }
                Control::StopAccepting => break,
            };
            let (stream, peer) = match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of descriptors and similar: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let router = router.clone();
            let builder = builder.clone();
            let limits = self.limits;
            let watcher = graceful.watcher();
            let tls = self.tls.as_ref().map(crate::tls::ReloadingTls::config);
            let app = self.app.clone();
            tokio::spawn(async move {
                serve_connection(stream, peer, router, &builder, watcher, limits, tls, app).await;
                drop(permit);
            });
        }
        tracing::info!(grace = ?self.limits.shutdown_grace, "shutting down: finishing in-flight requests");
        drop(self.listener);
        janitor.abort();
        prober.abort();
        #[cfg(feature = "mirror")]
        for task in mirror_sync {
            task.abort();
        }
        for r in [collector, auth_reloader, tls_reloader, revocation_sync, policy_reloader].into_iter().flatten() {
            r.abort();
        }
        cache_listener.abort();
        if let Some(mesh) = &mesh {
            // Peers stop choosing this replica now; fills they have running
            // from it fall back to the object store when it closes.
            for t in &mesh_tasks {
                t.abort();
            }
            mesh.leave().await;
        }
        #[cfg(feature = "scan")]
        for t in scan_tasks {
            t.abort();
        }
        #[cfg(feature = "search")]
        for t in search_tasks {
            t.abort();
        }
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep(self.limits.shutdown_grace) => tracing::warn!("grace period over; closing remaining connections"),
        }
        // Probes keep their answers (503: draining) until the very end.
        if let Some(h) = health {
            h.abort();
        }
        Ok(())
    }
}

/// How often each backend is probed, and how long a probe may take
/// before it counts as down.
const PROBE_EVERY: Duration = Duration::from_secs(5);
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Probe the object store and the shared state on a fixed period, so
/// `berth_backend_up` says within seconds that one stopped answering, even
/// when no request is asking it (and when a hung backend would leave the
/// requests that do hanging too).
async fn run_probes(registry: Registry) {
    use std::sync::atomic::Ordering::Relaxed;
    /// Run one probe and record it as soon as it ends (a hung backend does
    /// not delay the other's figures); log when the verdict changes.
    async fn probe(
        name: &str,
        check: impl std::future::Future<Output = crate::registry::Result<()>>,
        up: &AtomicU64,
        took_ms: &AtomicU64,
        was_up: &mut Option<bool>,
    ) {
        let started = Instant::now();
        let answered = matches!(tokio::time::timeout(PROBE_TIMEOUT, check).await, Ok(Ok(())));
        up.store(u64::from(answered), Relaxed);
        took_ms.store(started.elapsed().as_millis() as u64, Relaxed);
        match (*was_up, answered) {
            (Some(true) | None, false) => {
                tracing::warn!(backend = name, "backend probe failed: the backend is not answering")
            }
            (Some(false), true) => tracing::info!(backend = name, "backend probe answered again"),
            _ => {}
        }
        *was_up = Some(answered);
    }
    let m = crate::metrics::get();
    let mut tick = tokio::time::interval(PROBE_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut store_was, mut state_was) = (None, None);
    loop {
        tick.tick().await;
        tokio::join!(
            probe("object store", registry.check_backends(), &m.probe_store_up, &m.probe_store_ms, &mut store_was),
            probe("shared state", registry.check_state(), &m.probe_state_up, &m.probe_state_ms, &mut state_was),
        );
    }
}

#[allow(clippy::too_many_arguments)]
async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    limits: Limits,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Arc<App>,
) {
    let _ = stream.set_nodelay(true);
    // Dead peers (a node that vanished mid-pull) are noticed by the kernel.
    let keepalive =
        socket2::TcpKeepalive::new().with_time(Duration::from_secs(60)).with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
    // hyper's protocol detection waits for bytes without a timeout of its own.
    let mut probe = [0u8; 1];
    match tokio::time::timeout(limits.header_read_timeout, stream.peek(&mut probe)).await {
        Ok(Ok(n)) if n > 0 => {}
        _ => return,
    }
    let Some(config) = tls else {
        let connection = Connection { peer, tls: false, client_certificate: None };
        return serve_io(stream, connection, router, builder, watcher, limits, app).await;
    };
    // The handshake shares the header deadline: a client that stalls in it
    // holds a connection slot no longer than one that stalls in its headers.
    let accepted =
        tokio::time::timeout(limits.header_read_timeout, tokio_rustls::TlsAcceptor::from(config).accept(stream));
    let stream = match accepted.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let client_certificate =
        stream.get_ref().1.peer_certificates().and_then(|chain| chain.first()).map(|c| Arc::new(c.to_vec()));
    let connection = Connection { peer, tls: true, client_certificate };
    serve_io(stream, connection, router, builder, watcher, limits, app).await;
}

async fn serve_io<S>(
    stream: S,
    connection: Connection,
    router: Router,
    builder: &auto::Builder<TokioExecutor>,
    watcher: hyper_util::server::graceful::Watcher,
    limits: Limits,
    app: Arc<App>,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TrackedIo::new(stream);
    let activity = io.activity.clone();
    let peer = connection.peer;
    // Who each request comes from is resolved here, once, from the
    // connection and the request's forwarding headers.
    let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
        // HTTP/2 carries the host in the request's authority and browsers
        // send no `Host` header with it: give the handlers one, as
        // HTTP/1.1 would (without any user info the authority holds).
        if !req.headers().contains_key(http::header::HOST) {
            let host = req.uri().authority().map(|a| match a.port_u16() {
                Some(port) => format!("{}:{port}", a.host()),
                None => a.host().to_owned(),
            });
            if let Some(v) = host.and_then(|h| http::HeaderValue::from_str(&h).ok()) {
                req.headers_mut().insert(http::header::HOST, v);
            }
        }
        let client = ClientInfo::resolve(&connection, req.headers(), &app.trusted_proxies);
        req.extensions_mut().insert(client);
        router.clone().oneshot(req)
    });
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    let conn = watcher.watch(conn);
    tokio::select! {
        result = conn => {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        }
        () = activity.idle_for(limits.connection_idle_timeout) => {
            tracing::info!(%peer, idle = ?limits.connection_idle_timeout, "closing idle connection");
        }
    }
}

/// The next shutdown step: the signal, then the end of the shutdown delay.
async fn control(
    shutdown: Pin<&mut impl std::future::Future<Output = ()>>,
    stop_at: Option<tokio::time::Instant>,
) -> Control {
    match stop_at {
        None => {
            shutdown.await;
            Control::ShutdownRequested
        }
        Some(at) => {
            tokio::time::sleep_until(at).await;
            Control::StopAccepting
        }
    }
}

/// What the accept loop does next.
enum Control {
    Accepted(io::Result<(TcpStream, SocketAddr)>, tokio::sync::OwnedSemaphorePermit),
    ShutdownRequested,
    StopAccepting,
}

/// When bytes last moved on a connection.
#[derive(Debug)]
struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    fn touch(&self) {
        self.last_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Resolves once nothing has moved for `limit`.
    async fn idle_for(&self, limit: Duration) {
        loop {
            let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
            let idle = self.epoch.elapsed().saturating_sub(last);
            if idle >= limit {
                return;
            }
            tokio::time::sleep(limit - idle).await;
        }
    }
}

/// A socket that records progress for the idle watchdog.
struct TrackedIo<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> TrackedIo<S> {
    fn new(inner: S) -> TrackedIo<S> {
        TrackedIo { inner, activity: Arc::new(Activity { epoch: Instant::now(), last_ms: AtomicU64::new(0) }) }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TrackedIo<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            this.activity.touch();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TrackedIo<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write(cx, data);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let polled = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(polled, Poll::Ready(Ok(n)) if n > 0) {
            this.activity.touch();
        }
        polled
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// Re-read the configuration file when it changes or on SIGHUP and install
/// its access policy. A file that does not load or validate is refused with
/// a log line, and the policy in force stays.
///
/// A change is loaded only once the file has stayed the same for a whole
/// interval and did not change while it was read: editors and `cp` truncate
/// a file before they write it, and a policy read half-way (or from the
/// empty file in between) must never be installed, not even for a moment.
/// An empty file is refused outright. SIGHUP loads at once.
async fn reload_policies(gate: crate::auth::Gate, path: std::path::PathBuf, every: Duration) {
    let stamp = |p: &std::path::Path| std::fs::metadata(p).ok().map(|m| (m.modified().ok(), m.len()));
    let mut last = stamp(&path);
    let mut seen = last;
    #[cfg(unix)]
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        let by_signal = tokio::select! {
            Some(()) = async { match hangup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            () = tokio::time::sleep(every) => false,
        };
        #[cfg(not(unix))]
        let by_signal = {
            tokio::time::sleep(every).await;
            false
        };
        let before = stamp(&path);
        if !by_signal {
            let settled = before == seen;
            seen = before;
            if before == last || !settled {
                continue;
            }
        }
        let ids = gate.issuer_ids();
        let loaded = load_policy(&path, before.map(|(_, len)| len), &ids);
        let after = stamp(&path);
        if after != before {
            // Written to while it was read: look again once it settles.
            seen = after;
            continue;
        }
        last = after;
        seen = after;
        match loaded {
            Ok(policy) => {
                let rules = policy.is_some();
                gate.set_policy(policy);
                tracing::info!(by_signal, access_policy = rules, "access policy reloaded");
            }
            Err(e) => tracing::error!(error = %e, "access policy not reloaded; the previous one stays in force"),
        }
    }
}

/// The access policy of the configuration file at `path` (`len` bytes long
/// when it was last looked at), or why not.
fn load_policy(
    path: &std::path::Path,
    len: Option<u64>,
    ids: &[String],
) -> Result<Option<crate::auth::policy::AccessPolicy>, String> {
    if len == Some(0) {
        return Err(format!(
            "{} is empty (being written?); to drop every access rule, remove the [access] section",
            path.display()
        ));
    }
    let ids: Vec<&str> = ids.iter().map(String::as_str).collect();
    crate::config::load(Some(path), std::env::vars())
        .and_then(|c| c.validate().map(|()| c))
        .map_err(|e| e.to_string())
        .and_then(|c| c.access.map(|a| crate::auth::policy::AccessPolicy::new(&a, &ids)).transpose())
}

/// The Redis options `[state.redis]` describes.
fn redis_options(r: &crate::config::RedisConfig, tls_ca_pem: Option<Vec<u8>>) -> berth_state_redis::RedisOptions {
    berth_state_redis::RedisOptions {
        url: r.url.expose().to_owned(),
        key_prefix: r.key_prefix.clone(),
        connect_timeout: r.connect_timeout.0,
        response_timeout: r.response_timeout.0,
        tls_ca_pem,
        username: r.username.clone(),
        password: r.password.as_ref().map(|p| p.expose().to_owned()),
    }
}

/// The S3 store the configuration describes.
async fn open_s3(c: &crate::config::S3Config) -> anyhow::Result<berth_storage_s3::S3Store> {
    berth_storage_s3::S3Store::connect(s3_options(c)).await.context("cannot set up the S3 client (storage.s3)")
}

/// The S3 options `[storage.s3]` describes.
fn s3_options(c: &crate::config::S3Config) -> berth_storage_s3::S3Options {
    use berth_storage_s3::{Encryption, S3Options, StaticCredentials};
    let mut o = S3Options::new(c.bucket.clone());
    o.region = c.region.clone();
    o.endpoint = c.endpoint.clone();
    o.force_path_style = c.force_path_style;
    o.prefix = c.prefix.clone();
    if let (Some(id), Some(secret)) = (&c.access_key_id, &c.secret_access_key) {
        o.credentials = Some(StaticCredentials {
            access_key_id: id.expose().to_owned(),
            secret_access_key: secret.expose().to_owned(),
            session_token: c.session_token.as_ref().map(|t| t.expose().to_owned()),
        });
    }
    o.profile = c.profile.clone();
    o.encryption = match c.encryption {
        crate::config::S3Encryption::BucketDefault => Encryption::BucketDefault,
        crate::config::S3Encryption::Sse => Encryption::S3,
        crate::config::S3Encryption::Kms => Encryption::Kms { key_id: c.kms_key_id.clone() },
    };
    o.storage_class = c.storage_class.clone();
    o.max_attempts = c.max_attempts;
    o.connect_timeout = c.connect_timeout.0;
    o.request_timeout = c.request_timeout.0;
    o.transfer_timeout = c.transfer_timeout.0;
    o.part_size = c.part_size;
    o.ca_file = c.ca_file.clone();
    o
}

/// The collector's options from `[gc]` and `[[retention.policies]]`
/// (already validated).
pub fn gc_options(config: &Config) -> crate::registry::gc::GcOptions {
    use crate::registry::gc::{RetentionRule, TagRetention};
    let policies = config
        .retention
        .policies
        .iter()
        .map(|p| {
            let mut rule = RetentionRule::new(&p.repositories);
            if let Ok(Some(untagged)) = p.untagged() {
                rule = rule.untagged(untagged);
            }
            if p.retains_tags() {
                rule = rule.tags(TagRetention {
                    keep_tags: p.keep_tags.iter().map(|t| (t.clone(), crate::glob::Glob::new(t))).collect(),
                    keep_last: p.keep_last,
                    pushed_within: p.keep_pushed_within.map(|d| d.0),
                    pulled_within: p.keep_pulled_within.map(|d| d.0),
                });
            }
            rule
        })
        .collect();
    crate::registry::gc::GcOptions {
        grace: config.gc.grace.0,
        untagged_after: config.gc.untagged_after.map(|d| d.0),
        policies,
        ..crate::registry::gc::GcOptions::default()
    }
}

/// Run a collection pass every `every`. Every replica runs this loop; the
/// fleet-wide lease lets one pass run at a time.
async fn run_gc(registry: Registry, every: Duration) {
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match registry.gc_pass(false, &crate::registry::gc::no_progress).await {
            Ok(Some(_)) => {}
            Ok(None) => tracing::debug!("garbage collection skipped: another replica holds the lease"),
            Err(e) => tracing::warn!(error = %e, "garbage collection pass failed"),
        }
    }
}

/// Periodically abort abandoned uploads. Every replica runs this loop; the
/// pass itself takes a fleet-wide lock, so one replica works at a time.
async fn run_janitor(registry: Registry, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Listing every staged write is costlier than reading the expiry
    // schedule, so orphans are looked for less often.
    let orphan_sweep_every = (every * 60).min(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        match registry.janitor_pass(orphan_sweep_every).await {
            Ok(Some(report)) if report != crate::registry::JanitorReport::default() => {
                tracing::info!(expired = report.expired, orphans = report.orphans, "janitor removed abandoned uploads")
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "upload janitor failed"),
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every configuration and option type that can hold a secret, formatted
    /// with `{:?}` (and the configuration as `config check` prints it):
    /// the secret never shows.
    #[test]
    fn no_configuration_or_option_type_prints_a_secret() {
        let secret = "Sup3r-S3cret-Value";
        // Builds without the `metrics` extension refuse the section.
        let metrics = if cfg!(feature = "metrics") {
            format!("[metrics]\nbearer_token = \"{secret}-scrape\"\n")
        } else {
            String::new()
        };
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("berth.toml");
        std::fs::write(
            &file,
            format!(
                "[state]\nbackend = \"redis\"\n\
                 [state.redis]\nurl = \"rediss://berth:{secret}@redis.example:6380/0\"\npassword = \"{secret}\"\n\
                 [storage]\nbackend = \"s3\"\n\
                 [storage.s3]\nbucket = \"b\"\naccess_key_id = \"AKIAEXAMPLE\"\nsecret_access_key = \"{secret}\"\n\
                 session_token = \"{secret}\"\n\
                 [auth.ldap]\nurl = \"ldaps://ldap.example\"\nbind_dn = \"cn=svc\"\nbind_password = \"{secret}\"\n\
                 user_base = \"dc=example\"\n{metrics}"
            ),
        )
        .unwrap();
        let config = crate::config::load(Some(&file), Vec::new()).unwrap();
        config.validate().unwrap();
        let components = Components::load(&config).unwrap();
        let ldap = crate::auth::ldap::LdapOptions::from_config(config.auth.ldap.as_ref().unwrap());
        let shown = [
            format!("{config:?}"),
            config.to_redacted_toml(),
            format!("{:?}", config.state.redis),
            format!("{:?}", config.storage.s3),
            format!("{:?}", config.auth),
            format!("{:?}", config.metrics),
            format!("{:?}", redis_options(&config.state.redis, Some(b"ca".to_vec()))),
            format!("{:?}", s3_options(&config.storage.s3)),
            format!("{ldap:?}"),
            format!("{:?}", crate::auth::ldap::LdapAuth::new(ldap.clone()).unwrap()),
            format!("{components:?}"),
        ];
        for text in shown {
            assert!(!text.contains(secret), "a secret is printed: {text}");
        }
    }
}
