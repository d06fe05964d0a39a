//! The replica mesh: one owner per blob digest, so a fleet reads each blob
//! from the object store once however many clients pull it.
//!
//! - **Membership** lives in shared state: every replica renews a heartbeat
//!   with its internal address (`mesh.advertise`) every `mesh.heartbeat`,
//!   lasting `mesh.member_ttl`, and reads the live members back. No member
//!   list is configured; a replica that stops renewing drops out after the
//!   TTL, one that shuts down leaves at once. A replica that cannot refresh
//!   its view for a TTL trusts no peer and reads the object store.
//! - **Ownership**: rendezvous hashing over the live members (the member
//!   with the highest hash of (member, digest) owns it), so a member joining
//!   or leaving moves only the digests it wins or owned.
//! - **Fetching** ([`PeerSource`] for the blob cache): a replica that is not
//!   the owner fills its cache from the owner over the internal listener;
//!   the blob cache falls back to the object store when the owner does not
//!   answer within `mesh.first_byte_timeout`, or stalls for
//!   `mesh.idle_timeout` mid-stream.
//! - **The internal listener** speaks HTTP/1.1 over TLS 1.3 and requires a
//!   client certificate from the fleet CA (`mesh.ca_file`); dialing a peer
//!   checks its certificate against the same CA and `mesh.server_name`.
//!   Both sides re-read their files when they change. It serves one thing:
//!   `GET /_berth/mesh/v1/blobs/<digest>` (optionally `Range: bytes=N-`),
//!   from this replica's blob cache, without repository or access checks:
//!   peers are not users, and the replica the client talked to authorized
//!   the pull.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use berth_state::SharedState;
use berth_storage::{ByteStream, StorageError};
use bytes::Bytes;
use futures::StreamExt;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rustls_pki_types::ServerName;
use sha2::Digest as _;
use tokio::net::{TcpListener, TcpStream};
use tower::ServiceExt;

use crate::metrics;
use crate::oci::{Digest, OciError};
use crate::registry::blobcache::PeerSource;
use crate::registry::Registry;
use crate::tls::{ReloadingClientTls, ReloadingTls, TlsError, TlsFiles};

/// Shared-state group of the live members.
const GROUP: &str = "mesh:members";
/// Connections the internal listener serves at once.
const MAX_CONNECTIONS: usize = 1024;
/// Path prefix of the one resource the internal listener serves.
const BLOBS_PATH: &str = "/_berth/mesh/v1/blobs/";

/// Settings of the mesh (from `[mesh]`, with the bound address resolved).
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// `host:port` peers dial to reach this replica.
    pub advertise: String,
    pub server_name: String,
    pub heartbeat: Duration,
    pub member_ttl: Duration,
    pub first_byte_timeout: Duration,
}

/// The member with the highest rendezvous score for `digest`.
pub fn rendezvous_owner<'a>(members: &'a [String], digest: &Digest) -> Option<&'a str> {
    members.iter().max_by_key(|m| score(m, digest)).map(String::as_str)
}

fn score(member: &str, digest: &Digest) -> [u8; 32] {
    let mut h = sha2::Sha256::new();
    h.update(member.as_bytes());
    h.update(b"\n");
    h.update(digest.to_string().as_bytes());
    h.finalize().into()
}

#[derive(Debug)]
struct View {
    members: Vec<String>,
    /// When the members were last read from shared state.
    refreshed: Option<Instant>,
}

/// This replica's membership and its client side.
#[derive(Debug)]
pub struct Mesh {
    opts: MeshOptions,
    state: Arc<dyn SharedState>,
    view: RwLock<View>,
    client_tls: ReloadingClientTls,
    server_name: ServerName<'static>,
}

impl Mesh {
    pub fn new(opts: MeshOptions, state: Arc<dyn SharedState>, client_tls: ReloadingClientTls) -> Result<Mesh, String> {
        let server_name = ServerName::try_from(opts.server_name.clone())
            .map_err(|_| format!("mesh.server_name {:?} is not a DNS name", opts.server_name))?;
        Ok(Mesh {
            opts,
            state,
            view: RwLock::new(View { members: Vec::new(), refreshed: None }),
            client_tls,
            server_name,
        })
    }

    /// This replica's address in the mesh.
    pub fn me(&self) -> &str {
        &self.opts.advertise
    }

    /// The members as last seen (this replica included once it has
    /// announced itself).
    pub fn members(&self) -> Vec<String> {
        self.view.read().unwrap_or_else(|p| p.into_inner()).members.clone()
    }

    /// Renew the heartbeat and read the members back, once.
    pub async fn refresh(&self) -> Result<(), berth_state::StateError> {
        self.state.heartbeat(GROUP, &self.opts.advertise, self.opts.member_ttl).await?;
        let mut members = self.state.members(GROUP).await?;
        if !members.contains(&self.opts.advertise) {
            members.push(self.opts.advertise.clone());
            members.sort();
        }
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        if view.members != members {
            let joined: Vec<&str> = members.iter().filter(|m| !view.members.contains(m)).map(String::as_str).collect();
            let left: Vec<&str> = view.members.iter().filter(|m| !members.contains(m)).map(String::as_str).collect();
            tracing::info!(
                joined = %joined.join(" "),
                left = %left.join(" "),
                members = members.len(),
                "mesh membership changed"
            );
        }
        metrics::get().mesh_members.store(members.len() as u64, Ordering::Relaxed);
        view.members = members;
        view.refreshed = Some(Instant::now());
        Ok(())
    }

    /// Keep the heartbeat going.
    pub fn spawn_heartbeat(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(this.opts.heartbeat);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tick.tick().await;
                match this.refresh().await {
                    Ok(()) if failing => {
                        failing = false;
                        tracing::info!("mesh membership refreshed again");
                    }
                    Ok(()) => {}
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "cannot refresh mesh membership; peers are not asked until it works");
                    }
                    Err(_) => {}
                }
            }
        })
    }

    /// Leave the mesh at once (shutdown), so peers stop choosing this
    /// replica before its heartbeat would expire.
    pub async fn leave(&self) {
        if let Err(e) = self.state.leave(GROUP, &self.opts.advertise).await {
            tracing::warn!(error = %e, "cannot leave the mesh; peers notice when the heartbeat expires");
        }
    }

    async fn dial(&self, peer: &str, digest: &Digest, offset: u64) -> Result<ByteStream, String> {
        let tcp = TcpStream::connect(peer).await.map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let connector = tokio_rustls::TlsConnector::from(self.client_tls.config());
        let tls = connector.connect(self.server_name.clone(), tcp).await.map_err(|e| format!("TLS: {e}"))?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(TokioIo::new(tls)).await.map_err(|e| format!("HTTP: {e}"))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let mut req = hyper::Request::get(format!("{BLOBS_PATH}{digest}"))
            .header(header::HOST, peer)
            .body(http_body_util::Empty::<Bytes>::new())
            .map_err(|e| e.to_string())?;
        if offset > 0 {
            let range = HeaderValue::from_str(&format!("bytes={offset}-")).map_err(|e| e.to_string())?;
            req.headers_mut().insert(header::RANGE, range);
        }
        let resp = sender.send_request(req).await.map_err(|e| format!("HTTP: {e}"))?;
        let want = if offset > 0 { StatusCode::PARTIAL_CONTENT } else { StatusCode::OK };
        if resp.status() != want {
            return Err(format!("peer answered {}", resp.status()));
        }
        let body = http_body_util::BodyStream::new(resp.into_body()).filter_map(|frame| async move {
            match frame {
                Ok(f) => f.into_data().ok().map(Ok),
                Err(e) => Some(Err(StorageError::Unavailable { backend: "mesh", source: Box::new(e) })),
            }
        });
        Ok(body.boxed())
    }
}

#[async_trait]
impl PeerSource for Mesh {
    fn owner(&self, digest: &Digest) -> Option<String> {
        let view = self.view.read().unwrap_or_else(|p| p.into_inner());
        // A stale view may name peers that are gone: trust nobody.
        if view.refreshed.is_none_or(|t| t.elapsed() >= self.opts.member_ttl) {
            return None;
        }
        let owner = rendezvous_owner(&view.members, digest)?;
        (owner != self.opts.advertise).then(|| owner.to_owned())
    }

    async fn open(&self, peer: &str, digest: &Digest, offset: u64) -> Result<ByteStream, String> {
        match tokio::time::timeout(self.opts.first_byte_timeout, self.dial(peer, digest, offset)).await {
            Ok(r) => r,
            Err(_) => Err(format!("no answer within {:?}", self.opts.first_byte_timeout)),
        }
    }
}

/// The internal listener's TLS: this replica's certificate, client
/// certificates required and checked against the fleet CA.
pub fn server_tls(c: &crate::config::MeshConfig) -> Result<ReloadingTls, TlsError> {
    ReloadingTls::load(TlsFiles {
        cert_file: c.cert_file.clone(),
        key_file: c.key_file.clone(),
        client_ca_file: Some(c.ca_file.clone()),
        client_auth: crate::config::ClientAuth::Required,
    })
}

/// The client side's TLS: the same certificate, peers checked against the
/// fleet CA.
pub fn client_tls(c: &crate::config::MeshConfig) -> Result<ReloadingClientTls, TlsError> {
    ReloadingClientTls::load(&c.ca_file, &c.cert_file, &c.key_file)
}

/// Serve peers on `listener` until the task is aborted.
pub fn spawn_server(
    listener: TcpListener,
    tls: ReloadingTls,
    client_tls: ReloadingClientTls,
    registry: Registry,
    reload_every: Duration,
) -> Vec<tokio::task::JoinHandle<()>> {
    let reloader = tls.spawn_reloader(reload_every);
    let client_reloader = tokio::spawn(async move {
        let mut tick = tokio::time::interval(reload_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let t = client_tls.clone();
            match tokio::task::spawn_blocking(move || t.reload_if_changed()).await {
                Ok(Ok(true)) => tracing::info!("mesh client certificate reloaded"),
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::error!(error = %e, "mesh TLS files not reloaded; the previous ones stay"),
                Err(e) => tracing::error!(error = %e, "mesh TLS reload task failed"),
            }
        }
    });
    let router =
        Router::new().route("/_berth/mesh/v1/blobs/{digest}", axum::routing::get(serve_blob)).with_state(registry);
    let accept = tokio::spawn(async move {
        let builder = Arc::new(auto::Builder::new(TokioExecutor::new()).http1_only());
        // Peers open one connection per fill; strangers are refused in the
        // handshake, and cannot hold more than this many sockets meanwhile.
        let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            let Ok(permit) = permits.clone().acquire_owned().await else { return };
            let (stream, peer) = match listener.accept().await {
                Ok(pair) => pair,
                Err(e) => {
                    tracing::warn!(error = %e, "mesh accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let config = tls.config();
            let router = router.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                serve_peer(stream, peer, config, router, &builder).await;
                drop(permit);
            });
        }
    });
    vec![reloader, client_reloader, accept]
}

async fn serve_peer(
    stream: TcpStream,
    peer: SocketAddr,
    config: Arc<rustls::ServerConfig>,
    router: Router,
    builder: &auto::Builder<TokioExecutor>,
) {
    let _ = stream.set_nodelay(true);
    let accepted =
        tokio::time::timeout(Duration::from_secs(10), tokio_rustls::TlsAcceptor::from(config).accept(stream));
    let stream = match accepted.await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            metrics::inc(&metrics::get().mesh_refused);
            tracing::warn!(%peer, error = %e, "mesh connection refused");
            return;
        }
        Err(_) => {
            metrics::inc(&metrics::get().mesh_refused);
            return;
        }
    };
    let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| router.clone().oneshot(req));
    if let Err(e) = builder.serve_connection(TokioIo::new(stream), service).await {
        tracing::debug!(%peer, error = %e, "mesh connection ended with an error");
    }
}

fn plain(status: StatusCode, message: &str) -> Response {
    (status, message.to_owned()).into_response()
}

async fn serve_blob(State(registry): State<Registry>, Path(digest): Path<String>, headers: HeaderMap) -> Response {
    let Ok(digest) = digest.parse::<Digest>() else {
        return plain(StatusCode::BAD_REQUEST, "not a digest");
    };
    let offset = match headers.get(header::RANGE).map(|v| v.to_str().unwrap_or("")) {
        None => None,
        Some(r) => match r.strip_prefix("bytes=").and_then(|r| r.strip_suffix('-')).and_then(|n| n.parse::<u64>().ok())
        {
            Some(n) => Some(n),
            None => return plain(StatusCode::RANGE_NOT_SATISFIABLE, "only bytes=N- is served"),
        },
    };
    metrics::inc(&metrics::get().mesh_served);
    let read = match registry.blob_for_peer(&digest, offset.map(|n| n..u64::MAX)).await {
        Ok(read) => read,
        Err(OciError::BlobUnknown(_)) => return plain(StatusCode::NOT_FOUND, "blob unknown"),
        Err(OciError::RangeNotSatisfiable { .. }) => return plain(StatusCode::RANGE_NOT_SATISFIABLE, "range"),
        Err(e) => {
            tracing::warn!(%digest, error = %e, "serving a peer failed");
            return plain(StatusCode::SERVICE_UNAVAILABLE, "unavailable");
        }
    };
    let len = read.range.end - read.range.start;
    let mut resp = Response::new(Body::from_stream(read.body));
    resp.headers_mut().insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    if offset.is_some() {
        *resp.status_mut() = StatusCode::PARTIAL_CONTENT;
        let cr = format!("bytes {}-{}/{}", read.range.start, read.range.end.saturating_sub(1), read.size);
        if let Ok(v) = HeaderValue::from_str(&cr) {
            resp.headers_mut().insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_moves_only_what_the_changed_member_wins() {
        let members: Vec<String> = (1..=3).map(|i| format!("10.0.0.{i}:5443")).collect();
        let digests: Vec<Digest> = (0..3000u32).map(|i| Digest::sha256(&i.to_le_bytes())).collect();
        let before: Vec<String> =
            digests.iter().map(|d| rendezvous_owner(&members, d).unwrap_or_default().to_owned()).collect();
        // Spread: each of three members owns roughly a third.
        for m in &members {
            let n = before.iter().filter(|o| *o == m).count();
            assert!((800..1200).contains(&n), "{m} owns {n} of 3000");
        }
        // A fourth member takes only digests it wins; nothing moves between
        // the others.
        let mut more = members.clone();
        more.push("10.0.0.4:5443".into());
        for (d, old) in digests.iter().zip(&before) {
            let new = rendezvous_owner(&more, d).unwrap_or_default();
            assert!(new == old || new == "10.0.0.4:5443");
        }
        // A member leaving hands over only what it owned.
        let fewer = &members[1..];
        for (d, old) in digests.iter().zip(&before) {
            let new = rendezvous_owner(fewer, d).unwrap_or_default();
            if old != "10.0.0.1:5443" {
                assert_eq!(new, old);
            }
        }
        assert_eq!(rendezvous_owner(&[], &digests[0]), None);
    }
}
