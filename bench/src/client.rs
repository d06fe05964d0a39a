//! The registry operations the scenarios time, over plain Distribution API
//! HTTP(S) with optional basic or bearer authentication.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _};
use futures::StreamExt;
use reqwest::{Body, Method, RequestBuilder, Response, StatusCode};

use crate::data;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// Credentials for the registry under test.
#[derive(Debug, Clone, Default)]
pub enum Auth {
    #[default]
    None,
    Basic {
        user: String,
        password: String,
    },
    Bearer(String),
}

/// One registry endpoint.
#[derive(Debug, Clone)]
pub struct Registry {
    base: String,
    http: reqwest::Client,
    auth: Auth,
}

/// An operation's outcome: payload bytes moved, or a failure with the HTTP
/// status (0 for transport errors).
pub type OpResult = Result<u64, (u16, String)>;

fn fail(resp: &Response) -> (u16, String) {
    (resp.status().as_u16(), format!("unexpected status {}", resp.status()))
}

fn transport(e: reqwest::Error) -> (u16, String) {
    (e.status().map(|s| s.as_u16()).unwrap_or(0), e.to_string())
}

impl Registry {
    pub fn new(base: &str, auth: Auth, insecure: bool, connections: usize) -> anyhow::Result<Registry> {
        let http = reqwest::Client::builder()
            .pool_max_idle_per_host(connections.max(1))
            .redirect(reqwest::redirect::Policy::limited(3))
            .connect_timeout(Duration::from_secs(10))
            .danger_accept_invalid_certs(insecure)
            .tcp_nodelay(true)
            .build()
            .context("building the HTTP client")?;
        Ok(Registry { base: base.trim_end_matches('/').to_owned(), http, auth })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    fn request(&self, method: Method, path_or_url: &str) -> RequestBuilder {
        let url = if path_or_url.starts_with("http://") || path_or_url.starts_with("https://") {
            path_or_url.to_owned()
        } else {
            format!("{}{path_or_url}", self.base)
        };
        let req = self.http.request(method, url);
        match &self.auth {
            Auth::None => req,
            Auth::Basic { user, password } => req.basic_auth(user, Some(password)),
            Auth::Bearer(token) => req.bearer_auth(token),
        }
    }

    /// `GET /v2/`: is this a registry we can talk to?
    pub async fn check(&self) -> anyhow::Result<()> {
        let resp = self.request(Method::GET, "/v2/").send().await.with_context(|| format!("GET {}/v2/", self.base))?;
        if resp.status() != StatusCode::OK {
            bail!("{}/v2/ answered {}", self.base, resp.status());
        }
        Ok(())
    }

    /// `GET /v2/` with a wrong password answers 401: the scenario
    /// `failed-login` can run.
    pub async fn check_refuses_wrong_password(&self) -> anyhow::Result<()> {
        if !matches!(self.auth, Auth::Basic { .. }) {
            bail!("failed-login needs --user");
        }
        match self.failed_login(u64::MAX).await {
            Ok(_) => Ok(()),
            Err((status, e)) => bail!("{}/v2/ with a wrong password: {status} {e} (expected 401)", self.base),
        }
    }

    /// `GET /v2/` with the Basic user and wrong password number `i`.
    pub async fn failed_login(&self, i: u64) -> OpResult {
        let Auth::Basic { user, .. } = &self.auth else { return Err((0, "no Basic user".into())) };
        let resp = self
            .http
            .get(format!("{}/v2/", self.base))
            .basic_auth(user, Some(format!("wrong-password-{i}")))
            .send()
            .await
            .map_err(transport)?;
        match resp.status() {
            StatusCode::UNAUTHORIZED => Ok(0),
            _ => Err(fail(&resp)),
        }
    }

    /// Single-request monolithic push (`POST ?digest=`), generated blob.
    pub async fn push_monolithic(&self, repo: &str, seed: u64, size: u64, digest: &str) -> OpResult {
        let body = Body::wrap_stream(data::range_stream(seed, size, 0, size));
        let resp = self
            .request(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("content-type", "application/octet-stream")
            .header("content-length", size)
            .body(body)
            .send()
            .await
            .map_err(transport)?;
        match resp.status() {
            StatusCode::CREATED => Ok(size),
            // Registries without single-POST pushes answer 202: finish with PUT.
            StatusCode::ACCEPTED => {
                let loc = location(&resp)?;
                self.put_final(&loc, digest, Some((seed, size, 0, size))).await.map(|_| size)
            }
            _ => Err(fail(&resp)),
        }
    }

    /// `POST` then a `PUT ?digest=` carrying the whole blob.
    pub async fn push_post_put(&self, repo: &str, seed: u64, size: u64, digest: &str) -> OpResult {
        let loc = self.start_upload(repo).await?;
        self.put_final(&loc, digest, Some((seed, size, 0, size))).await.map(|_| size)
    }

    /// `POST`, `PATCH` chunks of `chunk` bytes with `Content-Range`, then `PUT ?digest=`.
    pub async fn push_chunked(&self, repo: &str, seed: u64, size: u64, digest: &str, chunk: u64) -> OpResult {
        let mut loc = self.start_upload(repo).await?;
        let mut offset = 0;
        while offset < size {
            let len = chunk.min(size - offset);
            let resp = self
                .request(Method::PATCH, &loc)
                .header("content-type", "application/octet-stream")
                .header("content-range", format!("{}-{}", offset, offset + len - 1))
                .header("content-length", len)
                .body(Body::wrap_stream(data::range_stream(seed, size, offset, len)))
                .send()
                .await
                .map_err(transport)?;
            if resp.status() != StatusCode::ACCEPTED {
                return Err(fail(&resp));
            }
            loc = location(&resp)?;
            offset += len;
        }
        self.put_final(&loc, digest, None).await.map(|_| size)
    }

    async fn start_upload(&self, repo: &str) -> Result<String, (u16, String)> {
        let resp = self
            .request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"))
            .header("content-length", 0)
            .send()
            .await
            .map_err(transport)?;
        if resp.status() != StatusCode::ACCEPTED {
            return Err(fail(&resp));
        }
        location(&resp)
    }

    async fn put_final(
        &self,
        loc: &str,
        digest: &str,
        body: Option<(u64, u64, u64, u64)>,
    ) -> Result<(), (u16, String)> {
        let sep = if loc.contains('?') { '&' } else { '?' };
        let mut req = self.request(Method::PUT, &format!("{loc}{sep}digest={digest}"));
        req = match body {
            Some((seed, size, offset, len)) => req
                .header("content-type", "application/octet-stream")
                .header("content-length", len)
                .body(Body::wrap_stream(data::range_stream(seed, size, offset, len))),
            None => req.header("content-length", 0),
        };
        let resp = req.send().await.map_err(transport)?;
        if resp.status() != StatusCode::CREATED {
            return Err(fail(&resp));
        }
        Ok(())
    }

    /// Push a small in-memory blob (fixtures).
    pub async fn push_bytes(&self, repo: &str, bytes: Vec<u8>) -> anyhow::Result<String> {
        let digest = format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&bytes)));
        let resp = self
            .request(Method::POST, &format!("/v2/{repo}/blobs/uploads/?digest={digest}"))
            .header("content-type", "application/octet-stream")
            .body(bytes.clone())
            .send()
            .await?;
        match resp.status() {
            StatusCode::CREATED => Ok(digest),
            StatusCode::ACCEPTED => {
                let loc = location(&resp).map_err(|e| anyhow!(e.1))?;
                let sep = if loc.contains('?') { '&' } else { '?' };
                let resp = self.request(Method::PUT, &format!("{loc}{sep}digest={digest}")).body(bytes).send().await?;
                if resp.status() != StatusCode::CREATED {
                    bail!("PUT blob answered {}", resp.status());
                }
                Ok(digest)
            }
            s => bail!("POST blob to {repo} answered {s}"),
        }
    }

    /// Push a generated blob (fixtures), by whichever push works.
    pub async fn push_generated(&self, repo: &str, seed: u64, size: u64) -> anyhow::Result<String> {
        let digest = data::digest(seed, size);
        self.push_monolithic(repo, seed, size, &digest).await.map_err(|(s, e)| anyhow!("push to {repo}: {s} {e}"))?;
        Ok(digest)
    }

    pub async fn put_manifest(&self, repo: &str, reference: &str, body: Vec<u8>) -> anyhow::Result<()> {
        let resp = self
            .request(Method::PUT, &format!("/v2/{repo}/manifests/{reference}"))
            .header("content-type", OCI_MANIFEST)
            .body(body)
            .send()
            .await?;
        if resp.status() != StatusCode::CREATED {
            bail!("PUT manifest {repo}:{reference} answered {}", resp.status());
        }
        Ok(())
    }

    /// GET or HEAD a manifest, reading the whole body.
    pub async fn manifest(&self, repo: &str, reference: &str, head: bool) -> OpResult {
        let method = if head { Method::HEAD } else { Method::GET };
        let resp = self
            .request(method, &format!("/v2/{repo}/manifests/{reference}"))
            .header("accept", OCI_MANIFEST)
            .send()
            .await
            .map_err(transport)?;
        if resp.status() != StatusCode::OK {
            return Err(fail(&resp));
        }
        drain(resp).await
    }

    /// GET a blob and stream it to nowhere, checking its length.
    pub async fn pull_blob(&self, repo: &str, digest: &str, size: u64) -> OpResult {
        let resp = self.request(Method::GET, &format!("/v2/{repo}/blobs/{digest}")).send().await.map_err(transport)?;
        if resp.status() != StatusCode::OK {
            return Err(fail(&resp));
        }
        let got = drain(resp).await?;
        if got != size {
            return Err((0, format!("received {got} of {size} bytes")));
        }
        Ok(got)
    }

    /// GET a listing (tags or catalog).
    pub async fn get_json(&self, path: &str) -> OpResult {
        let resp = self.request(Method::GET, path).send().await.map_err(transport)?;
        if resp.status() != StatusCode::OK {
            return Err(fail(&resp));
        }
        drain(resp).await
    }
}

fn location(resp: &Response) -> Result<String, (u16, String)> {
    resp.headers()
        .get("location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .ok_or_else(|| (resp.status().as_u16(), "response has no Location".into()))
}

async fn drain(resp: Response) -> OpResult {
    let mut n = 0u64;
    let mut body = resp.bytes_stream();
    while let Some(chunk) = body.next().await {
        n += chunk.map_err(transport)?.len() as u64;
    }
    Ok(n)
}

/// A minimal OCI image manifest for `config` and `layers` digests/sizes.
pub fn image_manifest(config: (&str, u64), layers: &[(&str, u64)]) -> Vec<u8> {
    let layers: Vec<serde_json::Value> = layers
        .iter()
        .map(
            |(d, s)| serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": d, "size": s}),
        )
        .collect();
    let m = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config.0, "size": config.1},
        "layers": layers,
    });
    serde_json::to_vec(&m).unwrap_or_default()
}
