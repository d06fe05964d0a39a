//! Berth: an OCI Distribution Specification v1.1 container registry.
//!
//! Layers, top to bottom (see docs/architecture.md): `api` (HTTP) ->
//! `auth` (identity, typed access) -> `registry` (services) -> backends
//! (`berth-storage`, `berth-state` and their implementations). `oci` holds
//! the pure spec types every layer shares; `config` and `server` wire it up.

pub mod api;
pub mod auth;
pub mod config;
pub mod conn;
#[cfg(any(
    feature = "metrics",
    feature = "mirror",
    feature = "otel",
    feature = "scan",
    feature = "search",
    feature = "ui"
))]
pub mod ext;
pub mod flavor;
pub mod glob;
pub mod mesh;
pub mod metrics;
pub mod oci;
pub mod ratelimit;
pub mod registry;
pub mod server;
pub mod telemetry;
pub mod timefmt;
pub mod tls;
