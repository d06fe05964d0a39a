//! The listener: accepts connections, serves HTTP/1.1 and h2c with a
//! header-read timeout against slow-loris clients, and shuts down
//! gracefully: on SIGTERM/SIGINT it stops accepting, lets in-flight requests
//! finish for up to the grace period, then exits.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt as _;

use crate::api::{self, App, PeerAddr};
use crate::config::{Config, StateBackend, StorageBackend};
use crate::registry::{Registry, RegistryOptions};

/// A bound, ready-to-run server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    app: Arc<App>,
    header_read_timeout: Duration,
    shutdown_grace: Duration,
    janitor_interval: Duration,
}

impl Server {
    /// Open the backends and bind the listener.
    pub async fn bind(config: &Config) -> anyhow::Result<Server> {
        let store: Arc<dyn berth_storage::ObjectStore> = match config.storage.backend {
            StorageBackend::Fs => {
                let fs = &config.storage.fs;
                let store = berth_storage_fs::FsStore::open(&fs.root, berth_storage_fs::FsOptions { fsync: fs.fsync })
                    .with_context(|| format!("cannot use storage directory {}", fs.root.display()))?;
                Arc::new(store)
            }
        };
        let state: Arc<dyn berth_state::SharedState> = match config.state.backend {
            StateBackend::Memory => Arc::new(berth_state::MemoryState::new()),
        };
        let body_idle = config.server.body_idle_timeout.0;
        let options = RegistryOptions {
            upload_ttl: config.uploads.session_ttl.0,
            // A lease must outlive the longest pause a client may take mid-body.
            upload_lock_ttl: (body_idle * 2).max(Duration::from_secs(30)),
            ..RegistryOptions::default()
        };
        let in_memory_state = matches!(config.state.backend, StateBackend::Memory);
        let registry = Registry::new(store, state, options);
        if in_memory_state {
            // Sessions lived in this process's memory: whatever is staged from
            // an earlier run can never be completed.
            match registry.sweep_orphaned_uploads(Duration::ZERO).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(removed = n, "removed uploads left by an earlier run"),
                Err(e) => tracing::warn!(error = %e, "cannot sweep uploads left by an earlier run"),
            }
        }
        let app = Arc::new(App {
            registry,
            gate: crate::auth::Gate::anonymous(),
            body_idle_timeout: config.server.body_idle_timeout.0,
        });
        let listener = TcpListener::bind(config.server.listen)
            .await
            .with_context(|| format!("cannot listen on {}", config.server.listen))?;
        Ok(Server {
            listener,
            app,
            header_read_timeout: config.server.header_read_timeout.0,
            shutdown_grace: config.server.shutdown_grace.0,
            janitor_interval: config.uploads.janitor_interval.0,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serve until `shutdown` resolves, then drain.
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
        let router: Router = api::router(self.app.clone());
        let janitor = tokio::spawn(run_janitor(self.app.registry.clone(), self.janitor_interval));
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder.http1().timer(TokioTimer::new()).header_read_timeout(self.header_read_timeout).keep_alive(true);
        builder.http2().timer(TokioTimer::new()).keep_alive_interval(Some(Duration::from_secs(30)));
        let graceful = GracefulShutdown::new();
        tracing::info!(addr = %self.listener.local_addr()?, "listening");
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                accepted = self.listener.accept() => match accepted {
                    Ok(pair) => pair,
                    Err(e) => {
                        // Out of descriptors and similar: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let router = router.clone();
            let service = hyper::service::service_fn(move |mut req: hyper::Request<Incoming>| {
                req.extensions_mut().insert(PeerAddr(peer));
                router.clone().oneshot(req)
            });
            let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(%peer, error = %e, "connection ended with an error");
                }
            });
        }
        tracing::info!(grace = ?self.shutdown_grace, "shutting down: draining in-flight requests");
        drop(self.listener);
        janitor.abort();
        tokio::select! {
            () = graceful.shutdown() => tracing::info!("all connections closed"),
            () = tokio::time::sleep(self.shutdown_grace) => tracing::warn!("grace period over; closing remaining connections"),
        }
        Ok(())
    }
}

/// Periodically abort abandoned uploads.
async fn run_janitor(registry: Registry, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match registry.expire_uploads(1000).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "expired abandoned uploads"),
            Err(e) => tracing::warn!(error = %e, "upload janitor failed"),
        }
        let orphan_age = registry.options().orphan_upload_age;
        match registry.sweep_orphaned_uploads(orphan_age).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(removed = n, "removed orphaned staged uploads"),
            Err(e) => tracing::warn!(error = %e, "orphaned upload sweep failed"),
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
