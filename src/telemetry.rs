//! Logging: structured `tracing` output as text or JSON lines; with the
//! `otel` extension, request spans exported over OTLP as well.

use tracing_subscriber::EnvFilter;

use crate::config::{LogConfig, LogFormat, TelemetryConfig};

/// What must outlive the server: the span exporter, flushed on shutdown.
#[derive(Debug, Default)]
pub struct Telemetry {
    #[cfg(feature = "otel")]
    otel: Option<crate::ext::otel::Exporter>,
}

impl Telemetry {
    /// Send what is still queued; called once the server has stopped.
    pub fn shutdown(self) {
        #[cfg(feature = "otel")]
        if let Some(exporter) = self.otel {
            exporter.shutdown();
        }
    }
}

/// Install the global subscriber. `RUST_LOG`, when set, wins over the config.
/// Fails only when the configured exporter cannot be built.
pub fn init(config: &LogConfig, telemetry: &TelemetryConfig) -> Result<Telemetry, String> {
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::Layer as _;

    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&config.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let main = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let main = match config.format {
        LogFormat::Json => main.json().flatten_event(true).with_filter(filter).boxed(),
        LogFormat::Text => main.with_filter(filter).boxed(),
    };
    // The audit trail, as JSON lines in a file of its own when configured.
    let audit = config.audit_file.as_ref().and_then(|path| {
        match std::fs::OpenOptions::new().create(true).append(true).open(path) {
            Ok(file) => Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::sync::Mutex::new(file))
                    .with_filter(
                        tracing_subscriber::filter::Targets::new().with_target("berth::audit", tracing::Level::INFO),
                    )
                    .boxed(),
            ),
            Err(e) => {
                eprintln!("berth: cannot open the audit log {}: {e}", path.display());
                None
            }
        }
    });
    #[cfg(feature = "otel")]
    {
        let exporter = match &telemetry.otlp {
            Some(otlp) => Some(crate::ext::otel::Exporter::new(otlp)?),
            None => None,
        };
        let layer = exporter.as_ref().map(|e| e.layer());
        let _ = tracing_subscriber::registry().with(main).with(audit).with(layer).try_init();
        Ok(Telemetry { otel: exporter })
    }
    #[cfg(not(feature = "otel"))]
    {
        // Config validation refuses `[telemetry.otlp]` in builds without it.
        let _ = telemetry;
        let _ = tracing_subscriber::registry().with(main).with(audit).try_init();
        Ok(Telemetry::default())
    }
}
