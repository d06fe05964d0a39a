//! Extensions: each is a Cargo feature with its own dependencies, absent
//! from the minimal flavor (`--no-default-features`). The core reaches them
//! only through the few `cfg`-gated calls in `telemetry`, `metrics` and the
//! API's request middleware.

#[cfg(feature = "mirror")]
pub mod mirror;
#[cfg(feature = "otel")]
pub mod otel;
#[cfg(feature = "metrics")]
pub mod prometheus;
#[cfg(feature = "scan")]
pub mod scan;
#[cfg(feature = "search")]
pub mod search;
#[cfg(feature = "ui")]
pub mod ui;
