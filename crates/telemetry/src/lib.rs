//! Process-wide telemetry: the Prometheus exposition of every crate's metrics and the
//! tracing subscriber (plain or JSON, `RUST_LOG` honoured).

use prometheus::{Encoder, TextEncoder};

/// The text exposition of every registered metric.
pub fn render_metrics() -> String {
    let mut out = Vec::new();
    let families = prometheus::gather();
    if TextEncoder::new().encode(&families, &mut out).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Plain,
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("log filter {0:?} is invalid: {1}")]
    Filter(String, String),
}

/// Installs the global subscriber. `RUST_LOG` wins over `default_filter`.
pub fn init_logging(format: LogFormat, default_filter: &str) -> Result<(), TelemetryError> {
    use tracing_subscriber::EnvFilter;
    let filter = match std::env::var("RUST_LOG") {
        Ok(f) if !f.is_empty() => {
            EnvFilter::try_new(&f).map_err(|e| TelemetryError::Filter(f, e.to_string()))?
        }
        _ => EnvFilter::try_new(default_filter)
            .map_err(|e| TelemetryError::Filter(default_filter.into(), e.to_string()))?,
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}
