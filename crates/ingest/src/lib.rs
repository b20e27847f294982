//! MQTT ingest. An MQTT 5 session (rumqttc) hands each received publish to a bounded queue;
//! a batcher decodes, validates and pseudonymises them and gathers them into batches by
//! count and time; a committer writes each batch durably and only then acknowledges its
//! messages, in arrival order. Rejected messages are counted and acknowledged with their
//! batch, so they never loop. A write that fails past its retries, or the audit lines of a
//! batch's corrections that cannot be written, stop ingest with an error the binary must
//! turn into a non-zero exit ([`IngestHandle`]); the failed batch is not acknowledged.
//! Design notes: `DESIGN.md` beside this crate.

mod acks;
mod backoff;
#[cfg(feature = "embedded-broker")]
mod broker;
mod config;
pub mod metrics;
mod mqtt;
mod pipeline;
mod url;

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll};

use meterstand_pseudonym::Pseudonymiser;
use meterstand_store::{ReadingWriter, StoreError, WriteOutcome};
use tokio_util::sync::CancellationToken;

pub use backoff::Backoff;
#[cfg(feature = "embedded-broker")]
pub use broker::{EmbeddedBroker, EmbeddedBrokerError};
pub use config::{IngestConfig, MqttVersion, TlsFiles};
pub use mqtt::tls_transport_from_pem;
pub use url::{BrokerUrl, BrokerUrlError};

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mqtts:// needs broker.ca_file")]
    TlsNeedsCa,
    #[error("{key} = {value}: allowed is {allowed}")]
    Config {
        key: &'static str,
        value: String,
        allowed: String,
    },
    /// A batch could not be stored: it and everything after it stay unacknowledged.
    #[error("store write failed after {attempts} attempt(s); ingest stopped: {source}")]
    Write {
        attempts: u32,
        #[source]
        source: StoreError,
    },
    /// The audit lines of a stored batch's corrections could not be written: the batch and
    /// everything after it stay unacknowledged, and the redelivery writes the lines.
    #[error(
        "cannot write {lines} correction audit line(s) after {attempts} attempt(s); ingest stopped: {source}"
    )]
    Audit {
        lines: usize,
        attempts: u32,
        #[source]
        source: meterstand_audit::AuditError,
    },
    /// A task of the pipeline panicked or stopped without being asked to.
    #[error("ingest {task} task failed: {reason}")]
    TaskFailed { task: &'static str, reason: String },
}

impl IngestError {
    pub(crate) fn task(task: &'static str, e: &tokio::task::JoinError) -> IngestError {
        IngestError::TaskFailed {
            task,
            reason: if e.is_panic() {
                "panicked".into()
            } else {
                "cancelled".into()
            },
        }
    }
}

/// What `/readyz` and the demo read: connection state and running totals.
#[derive(Debug, Default)]
pub struct IngestStatus {
    pub connected: AtomicBool,
    /// Every subscription of the current connection is acknowledged by the broker: from
    /// here on, what is published reaches ingest.
    pub subscribed: AtomicBool,
    pub messages: AtomicU64,
    pub rejected: AtomicU64,
    pub acked: AtomicU64,
    /// parking_lot: a panic elsewhere cannot poison the totals into a silent zero.
    pub outcome: parking_lot::Mutex<WriteOutcome>,
}

impl IngestStatus {
    /// Connected and subscribed: what `/readyz` reports as the broker's part.
    pub fn is_receiving(&self) -> bool {
        self.connected.load(Ordering::SeqCst) && self.subscribed.load(Ordering::SeqCst)
    }

    pub fn totals(&self) -> WriteOutcome {
        self.outcome.lock().clone()
    }
}

/// Receives → batches → durably writes → acknowledges.
#[derive(Debug)]
pub struct Ingest;

impl Ingest {
    /// Checks the configuration and starts ingest on the current tokio runtime. It runs until
    /// `shutdown` is cancelled, then finishes in order: stop taking messages, write and
    /// acknowledge what was received, disconnect. Await the handle: it resolves early, with
    /// an error, when ingest dies (a write failed past its retries, a task panicked); the
    /// process should then exit non-zero so that a supervisor restarts it.
    pub fn start<S: ReadingWriter>(
        config: IngestConfig,
        store: Arc<S>,
        pseudonymiser: Arc<Pseudonymiser>,
        status: Arc<IngestStatus>,
        shutdown: CancellationToken,
    ) -> Result<IngestHandle, IngestError> {
        config.validate()?;
        let session = mqtt::Session::new(&config)?;
        metrics::init();
        let task = tokio::spawn(session.run(config, store, pseudonymiser, status, shutdown));
        Ok(IngestHandle { task })
    }

    /// [`Ingest::start`] and [`IngestHandle::wait`] in one.
    pub async fn run<S: ReadingWriter>(
        config: IngestConfig,
        store: Arc<S>,
        pseudonymiser: Arc<Pseudonymiser>,
        status: Arc<IngestStatus>,
        shutdown: CancellationToken,
    ) -> Result<(), IngestError> {
        Ingest::start(config, store, pseudonymiser, status, shutdown)?
            .wait()
            .await
    }
}

/// A running ingest. Resolves (as a future, or through [`IngestHandle::wait`]) with `Ok`
/// after an ordered shutdown and with `Err` as soon as ingest dies; dropping it does not
/// stop ingest (cancel the shutdown token for that).
#[derive(Debug)]
#[must_use = "a dead ingest is only seen by awaiting its handle"]
pub struct IngestHandle {
    task: tokio::task::JoinHandle<Result<(), IngestError>>,
}

impl IngestHandle {
    /// Waits until ingest has stopped; `Err` when it died rather than shut down.
    pub async fn wait(self) -> Result<(), IngestError> {
        self.await
    }

    /// Whether ingest has stopped (then awaiting the handle returns at once).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }
}

impl Future for IngestHandle {
    type Output = Result<(), IngestError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.task)
            .poll(cx)
            .map(|joined| match joined {
                Ok(result) => result,
                Err(e) => Err(IngestError::task("ingest", &e)),
            })
    }
}

#[cfg(test)]
impl IngestHandle {
    pub(crate) fn from_task(task: tokio::task::JoinHandle<Result<(), IngestError>>) -> Self {
        IngestHandle { task }
    }
}
