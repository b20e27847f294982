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

/// `log.format`: `plain` or `json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
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
    // Colour codes only for a person at a terminal: a file or journald gets plain text.
    use std::io::IsTerminal;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Plain => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    Ok(())
}

/// Metric constructors for every crate's `metrics.rs`: build, register in the process-wide
/// registry, and keep going if the name is already registered (several services in one test
/// process). The definitions are static, so an invalid one is a programming error and panics
/// at first use.
pub mod metric {
    use prometheus::{
        Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
        Opts,
    };

    fn register<T: prometheus::core::Collector + Clone + 'static>(metric: T) -> T {
        let _ = prometheus::register(Box::new(metric.clone()));
        metric
    }

    fn valid<T>(name: &str, built: prometheus::Result<T>) -> T {
        built.unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"))
    }

    pub fn counter(name: &str, help: &str) -> IntCounter {
        register(valid(name, IntCounter::new(name, help)))
    }

    pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        register(valid(
            name,
            IntCounterVec::new(Opts::new(name, help), labels),
        ))
    }

    pub fn gauge(name: &str, help: &str) -> IntGauge {
        register(valid(name, IntGauge::new(name, help)))
    }

    pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        register(valid(name, IntGaugeVec::new(Opts::new(name, help), labels)))
    }

    /// A histogram with `count` exponential buckets from `start`, each `factor` apart.
    pub fn histogram(name: &str, help: &str, start: f64, factor: f64, count: usize) -> Histogram {
        let buckets = valid(name, prometheus::exponential_buckets(start, factor, count));
        register(valid(
            name,
            Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
        ))
    }

    /// [`histogram`] with labels.
    pub fn histogram_vec(
        name: &str,
        help: &str,
        labels: &[&str],
        (start, factor, count): (f64, f64, usize),
    ) -> HistogramVec {
        let buckets = valid(name, prometheus::exponential_buckets(start, factor, count));
        register(valid(
            name,
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels),
        ))
    }
}
