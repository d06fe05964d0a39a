//! TLS on the public listener: rustls with the ring provider, TLS 1.2 and
//! 1.3 only (rustls implements no weak suites), certificate and key read
//! from files and re-read when they change, client certificates off,
//! optional or required, verified against a CA bundle.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, ServerConfig};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

pub use crate::config::ClientAuth;

/// Where the TLS material lives.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    pub client_ca_file: Option<PathBuf>,
    pub client_auth: ClientAuth,
}

impl TlsFiles {
    /// The files `[server.tls]` names.
    pub fn from_config(c: &crate::config::TlsConfig) -> TlsFiles {
        TlsFiles {
            cert_file: c.cert_file.clone(),
            key_file: c.key_file.clone(),
            client_ca_file: c.client_ca_file.clone(),
            client_auth: c.client_auth,
        }
    }
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read { path: path.to_owned(), source })
}

pub(crate) fn certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(path)?;
    let certs: Vec<_> = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Invalid { path: path.to_owned(), message: format!("bad PEM certificate: {e}") })?;
    if certs.is_empty() {
        return Err(TlsError::Invalid { path: path.to_owned(), message: "no certificate in the file".into() });
    }
    Ok(certs)
}

/// Build a server configuration from the files.
pub fn server_config(files: &TlsFiles) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = certs(&files.cert_file)?;
    let key_pem = read(&files.key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Invalid {
        path: files.key_file.clone(),
        message: "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file".into(),
    })?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| TlsError::Invalid { path: files.cert_file.clone(), message: e.to_string() })?;
    let builder = match (&files.client_ca_file, files.client_auth) {
        (_, ClientAuth::None) | (None, _) => builder.with_no_client_auth(),
        (Some(ca), mode) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certs(ca)? {
                roots
                    .add(cert)
                    .map_err(|e| TlsError::Invalid { path: ca.clone(), message: format!("bad CA certificate: {e}") })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let verifier = if mode == ClientAuth::Optional { verifier.allow_unauthenticated() } else { verifier };
            let verifier =
                verifier.build().map_err(|e| TlsError::Invalid { path: ca.clone(), message: e.to_string() })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|e| TlsError::Invalid { path: files.key_file.clone(), message: e.to_string() })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client configuration presenting `cert_file`/`key_file` and trusting
/// only the CAs in `ca_file` (the replica mesh's fleet CA).
pub fn client_config(ca_file: &Path, cert_file: &Path, key_file: &Path) -> Result<Arc<ClientConfig>, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for cert in certs(ca_file)? {
        roots
            .add(cert)
            .map_err(|e| TlsError::Invalid { path: ca_file.to_owned(), message: format!("bad CA certificate: {e}") })?;
    }
    let chain = certs(cert_file)?;
    let key_pem = read(key_file)?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|_| TlsError::Invalid {
        path: key_file.to_owned(),
        message: "no PEM private key (PKCS#8, PKCS#1 or SEC1) in the file".into(),
    })?;
    let config = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Invalid { path: cert_file.to_owned(), message: e.to_string() })?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| TlsError::Invalid { path: key_file.to_owned(), message: e.to_string() })?;
    Ok(Arc::new(config))
}

type Stamp = Vec<(Option<SystemTime>, u64)>;

fn stamp_of(paths: &[&Path]) -> Stamp {
    paths.iter().map(|p| std::fs::metadata(p).map(|m| (m.modified().ok(), m.len())).unwrap_or((None, 0))).collect()
}

fn stamp(files: &TlsFiles) -> Stamp {
    let mut paths = vec![files.cert_file.as_path(), files.key_file.as_path()];
    paths.extend(files.client_ca_file.as_deref());
    stamp_of(&paths)
}

/// The mesh's client configuration, rebuilt when its files change.
#[derive(Debug, Clone)]
pub struct ReloadingClientTls {
    files: [PathBuf; 3],
    current: Arc<RwLock<(Arc<ClientConfig>, Stamp)>>,
}

impl ReloadingClientTls {
    pub fn load(ca_file: &Path, cert_file: &Path, key_file: &Path) -> Result<ReloadingClientTls, TlsError> {
        let files = [ca_file.to_owned(), cert_file.to_owned(), key_file.to_owned()];
        let config = client_config(ca_file, cert_file, key_file)?;
        let stamp = stamp_of(&[ca_file, cert_file, key_file]);
        Ok(ReloadingClientTls { files, current: Arc::new(RwLock::new((config, stamp))) })
    }

    pub fn config(&self) -> Arc<ClientConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Rebuild if any file changed; a broken set keeps the old one.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let [ca, cert, key] = &self.files;
        let now = stamp_of(&[ca, cert, key]);
        if self.current.read().unwrap_or_else(|p| p.into_inner()).1 == now {
            return Ok(false);
        }
        let config = client_config(ca, cert, key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (config, now);
        Ok(true)
    }
}

/// The current server configuration, rebuilt when the files change.
#[derive(Debug, Clone)]
pub struct ReloadingTls {
    files: TlsFiles,
    current: Arc<RwLock<(Arc<ServerConfig>, Stamp)>>,
}

impl ReloadingTls {
    pub fn load(files: TlsFiles) -> Result<ReloadingTls, TlsError> {
        let config = server_config(&files)?;
        let stamp = stamp(&files);
        Ok(ReloadingTls { files, current: Arc::new(RwLock::new((config, stamp))) })
    }

    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).0.clone()
    }

    /// Rebuild if any file changed; a broken set of files keeps the old
    /// configuration in force.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let now = stamp(&self.files);
        if self.current.read().unwrap_or_else(|p| p.into_inner()).1 == now {
            return Ok(false);
        }
        let config = server_config(&self.files)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = (config, now);
        Ok(true)
    }

    /// Poll the files every `every`.
    pub fn spawn_reloader(&self, every: Duration) -> tokio::task::JoinHandle<()> {
        let this = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let t = this.clone();
                match tokio::task::spawn_blocking(move || t.reload_if_changed()).await {
                    Ok(Ok(true)) => tracing::info!("TLS certificate reloaded"),
                    Ok(Ok(false)) => {}
                    Ok(Err(e)) => tracing::error!(error = %e, "TLS files not reloaded; the previous certificate stays"),
                    Err(e) => tracing::error!(error = %e, "TLS reload task failed"),
                }
            }
        })
    }
}
