use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jiff::Timestamp;
use meterstand_codec::{Limits, Reject, decode, parse_topic};
use meterstand_model::Calendar;
use meterstand_pseudonym::Pseudonymiser;
use meterstand_store::{IngestItem, ReadingWriter, StoreError, WriteOutcome};
use rumqttc::{
    AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, Publish, QoS, TlsConfiguration,
    Transport,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::metrics;

/// Client certificate and CA files for `mqtts://`.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct IngestConfig {
    /// `mqtt://host:port` or `mqtts://host:port`.
    pub url: String,
    pub client_id: String,
    pub topic_prefix: String,
    /// Subscribe through `$share/{group}/…` so several instances split the load.
    pub share_group: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: TlsFiles,
    pub limits: Limits,
    /// A batch is written when it holds this many messages…
    pub batch_max_messages: usize,
    /// …or when its first message has waited this long.
    pub batch_max_delay: Duration,
    /// Messages expected to be received and not yet acknowledged: the broker's in-flight
    /// window bounds them (see DESIGN.md); this sizes the acknowledgement queue for it.
    pub max_unacked: usize,
    pub keep_alive: Duration,
    pub calendar: Calendar,
}

impl IngestConfig {
    pub fn new(url: impl Into<String>) -> IngestConfig {
        IngestConfig {
            url: url.into(),
            client_id: "meterstand-ingest".into(),
            topic_prefix: "meters".into(),
            share_group: None,
            username: None,
            password: None,
            tls: TlsFiles::default(),
            limits: Limits::default(),
            batch_max_messages: 2000,
            batch_max_delay: Duration::from_millis(20),
            max_unacked: 20_000,
            keep_alive: Duration::from_secs(30),
            calendar: Calendar::amsterdam(),
        }
    }

    pub fn topics(&self) -> Vec<String> {
        ["json", "bincode"]
            .iter()
            .map(|f| match &self.share_group {
                Some(g) => format!("$share/{g}/{}/+/{f}", self.topic_prefix),
                None => format!("{}/+/{f}", self.topic_prefix),
            })
            .collect()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("broker url {0:?}: expected mqtt://host:port or mqtts://host:port")]
    Url(String),
    #[error("cannot read TLS file {path}: {source}")]
    TlsFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("mqtts:// needs broker.ca_file")]
    TlsNeedsCa,
}

/// What `/readyz` and the demo read: connection state and running totals.
#[derive(Debug, Default)]
pub struct IngestStatus {
    pub connected: AtomicBool,
    pub messages: AtomicU64,
    pub rejected: AtomicU64,
    pub acked: AtomicU64,
    pub outcome: std::sync::Mutex<WriteOutcome>,
}

impl IngestStatus {
    pub fn totals(&self) -> WriteOutcome {
        self.outcome.lock().map(|o| *o).unwrap_or_default()
    }
}

/// One received message on its way to the store.
struct Entry {
    publish: Publish,
    received: Instant,
    item: Option<IngestItem>,
}

/// Receives → batches → durably writes → acknowledges.
#[derive(Debug)]
pub struct Ingest;

/// Batches waiting for the committer. Two let the batcher fill the next batch while one is
/// written; more would only hold unacknowledged messages in memory.
const COMMIT_QUEUE: usize = 2;

impl Ingest {
    /// Runs until `shutdown` is cancelled, then finishes in order: stop taking messages,
    /// write and acknowledge what was received, disconnect.
    pub async fn run<S: ReadingWriter>(
        config: IngestConfig,
        store: Arc<S>,
        pseudonymiser: Arc<Pseudonymiser>,
        status: Arc<IngestStatus>,
        shutdown: CancellationToken,
    ) -> Result<(), IngestError> {
        metrics::init();
        let options = mqtt_options(&config)?;
        // The request channel carries acks and only the poll loop drains it. The poll loop may
        // itself wait on the full received queue (backpressure), so this channel must hold an
        // ack for every message that can be inside the process: the received queue, the batch
        // being filled, the queued batches and the one being written. Smaller, and a broker
        // that sends past its in-flight window deadlocks acks against polling.
        let ack_capacity =
            config.max_unacked.max(1) + (COMMIT_QUEUE + 2) * config.batch_max_messages + 64;
        let (client, eventloop) = AsyncClient::new(options, ack_capacity);
        // Unbounded on purpose: only the poll loop can send acks (rumqttc's request channel),
        // so a poll loop waiting for room here while the committer waits for its acks to go
        // out is a deadlock (seen with ~60k messages queued for our session). What this holds
        // is bounded by the broker's in-flight window for our client; see DESIGN.md.
        let (received_tx, received_rx) = mpsc::unbounded_channel();
        let (commit_tx, commit_rx) = mpsc::channel(COMMIT_QUEUE);
        let polling_done = CancellationToken::new();
        let config = Arc::new(config);

        let poller = tokio::spawn(poll_loop(
            eventloop,
            client.clone(),
            config.clone(),
            received_tx,
            status.clone(),
            shutdown.clone(),
            polling_done.clone(),
        ));
        let batcher = tokio::spawn(batch_loop(
            config.clone(),
            pseudonymiser,
            received_rx,
            commit_tx,
            shutdown.clone(),
        ));
        commit_loop(
            store,
            client.clone(),
            commit_rx,
            status.clone(),
            shutdown.clone(),
        )
        .await;
        let _ = batcher.await;
        // Everything received was written and acknowledged (or will be redelivered); now leave.
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), polling_done.cancelled()).await;
        poller.abort();
        status.connected.store(false, Ordering::SeqCst);
        metrics::CONNECTED.set(0);
        Ok(())
    }
}

fn mqtt_options(config: &IngestConfig) -> Result<MqttOptions, IngestError> {
    let (tls, rest) = if let Some(r) = config.url.strip_prefix("mqtts://") {
        (true, r)
    } else if let Some(r) = config.url.strip_prefix("mqtt://") {
        (false, r)
    } else {
        return Err(IngestError::Url(config.url.clone()));
    };
    let rest = rest.trim_end_matches('/');
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse::<u16>()
                .map_err(|_| IngestError::Url(config.url.clone()))?,
        ),
        None => (rest, if tls { 8883 } else { 1883 }),
    };
    if host.is_empty() {
        return Err(IngestError::Url(config.url.clone()));
    }
    let mut o = MqttOptions::new(&config.client_id, host, port);
    o.set_clean_session(false);
    o.set_manual_acks(true);
    o.set_keep_alive(config.keep_alive);
    // Accept packets well past the payload limit so an oversize message is a counted reject
    // rather than a dropped connection; the broker's own limit (message_size_limit) stops
    // anything larger.
    let incoming = config
        .limits
        .max_payload_bytes
        .saturating_mul(4)
        .max(1 << 20);
    o.set_max_packet_size(incoming, 1 << 20);
    if let (Some(u), Some(p)) = (&config.username, &config.password) {
        o.set_credentials(u, p);
    }
    if tls {
        let read = |path: &PathBuf| {
            std::fs::read(path).map_err(|source| IngestError::TlsFile {
                path: path.clone(),
                source,
            })
        };
        let ca = read(config.tls.ca_file.as_ref().ok_or(IngestError::TlsNeedsCa)?)?;
        let client_auth = match (&config.tls.client_cert, &config.tls.client_key) {
            (Some(c), Some(k)) => Some((read(c)?, read(k)?)),
            _ => None,
        };
        let _ = rustls::crypto::ring::default_provider().install_default();
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Simple {
            ca,
            alpn: None,
            client_auth,
        }));
    }
    Ok(o)
}

async fn poll_loop(
    mut eventloop: EventLoop,
    client: AsyncClient,
    config: Arc<IngestConfig>,
    received: mpsc::UnboundedSender<Vec<(Publish, Instant)>>,
    status: Arc<IngestStatus>,
    shutdown: CancellationToken,
    done: CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    let mut failures = 0u64;
    // Publishes are handed on per network read, not one by one: rumqttc parses a whole read
    // into its event queue, and one hand-off per read spares a task wake-up per message.
    let mut chunk: Vec<(Publish, Instant)> = Vec::new();
    loop {
        if !chunk.is_empty() && eventloop.state.events.is_empty() {
            let n = chunk.len() as i64;
            if received.send(std::mem::take(&mut chunk)).is_err() {
                metrics::UNACKED.sub(n);
            }
        }
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                tracing::info!(
                    session_present = ack.session_present,
                    "connected to mqtt broker"
                );
                status.connected.store(true, Ordering::SeqCst);
                metrics::CONNECTED.set(1);
                backoff = Duration::from_millis(100);
                failures = 0;
                for topic in config.topics() {
                    if let Err(e) = client.try_subscribe(topic, QoS::AtLeastOnce) {
                        tracing::error!(error = %e, "cannot queue subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if shutdown.is_cancelled() {
                    // Not acknowledged: the broker keeps it for our next session.
                    continue;
                }
                metrics::UNACKED.inc();
                chunk.push((publish, Instant::now()));
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                done.cancel();
                return;
            }
            Ok(_) => {}
            Err(e) => {
                if shutdown.is_cancelled() && done.is_cancelled() {
                    return;
                }
                failures += 1;
                if status.connected.swap(false, Ordering::SeqCst) {
                    metrics::RECONNECTS.inc();
                }
                metrics::CONNECTED.set(0);
                // One refusal right at start is normal (an embedded broker still binding); from
                // the second attempt on it is worth a warning.
                if failures == 1 {
                    tracing::debug!(error = %e, retry_in_ms = backoff.as_millis() as u64, "mqtt broker not reachable yet");
                } else {
                    tracing::warn!(error = %e, attempt = failures, retry_in_ms = backoff.as_millis() as u64, "mqtt broker unreachable");
                }
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = done.cancelled() => return,
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

fn process(
    config: &IngestConfig,
    pseudonymiser: &Pseudonymiser,
    publish: &Publish,
    now: Timestamp,
) -> Result<IngestItem, Reject> {
    let (ean, format) = parse_topic(&config.topic_prefix, &publish.topic)?;
    let decoded = decode(
        format,
        &publish.payload,
        now,
        &config.calendar,
        &config.limits,
    )?;
    Ok(IngestItem {
        connection: pseudonymiser.ean(&ean),
        previous: pseudonymiser.ean_older_versions(&ean),
        meter: pseudonymiser.meter(&decoded.meter),
        readings: decoded.readings,
    })
}

fn entry(
    config: &IngestConfig,
    pseudonymiser: &Pseudonymiser,
    publish: Publish,
    received: Instant,
    now: Timestamp,
) -> Entry {
    metrics::MESSAGES.inc();
    let item = match process(config, pseudonymiser, &publish, now) {
        Ok(item) => {
            metrics::READINGS.inc_by(item.readings.len() as u64);
            Some(item)
        }
        Err(reject) => {
            let counter = metrics::REJECTED.with_label_values(&[reject.reason()]);
            counter.inc();
            // Sampled, and never with the topic or payload: they carry identifiers.
            let n = counter.get();
            if n <= 10 || n.is_power_of_two() {
                tracing::warn!(
                    reason = reject.reason(),
                    count = n,
                    "rejected message: {reject}"
                );
            }
            None
        }
    };
    Entry {
        publish,
        received,
        item,
    }
}

async fn batch_loop(
    config: Arc<IngestConfig>,
    pseudonymiser: Arc<Pseudonymiser>,
    mut received: mpsc::UnboundedReceiver<Vec<(Publish, Instant)>>,
    commit: mpsc::Sender<Vec<Entry>>,
    shutdown: CancellationToken,
) {
    // Messages of a chunk that did not fit the batch being closed start the next one.
    let mut carried: std::collections::VecDeque<(Publish, Instant)> = Default::default();
    loop {
        if carried.is_empty() {
            let chunk = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                m = received.recv() => match m { Some(m) => m, None => break },
            };
            carried.extend(chunk);
        }
        let mut batch = Vec::with_capacity(config.batch_max_messages.min(carried.len().max(64)));
        // Decoding checks "too far in the future" against one clock reading per batch.
        let now = Timestamp::now();
        let deadline = tokio::time::Instant::now() + config.batch_max_delay;
        loop {
            while batch.len() < config.batch_max_messages {
                let Some((p, t)) = carried.pop_front() else {
                    break;
                };
                batch.push(entry(&config, &pseudonymiser, p, t, now));
            }
            if batch.len() >= config.batch_max_messages {
                break;
            }
            tokio::select! {
                m = received.recv() => match m {
                    Some(chunk) => carried.extend(chunk),
                    None => break,
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.cancelled() => break,
            }
        }
        metrics::BATCH_MESSAGES.observe(batch.len() as f64);
        if commit.send(batch).await.is_err() {
            return;
        }
    }
    // Shutdown: what was already received still gets written and acknowledged.
    let now = Timestamp::now();
    let mut rest: Vec<Entry> = carried
        .drain(..)
        .map(|(p, t)| entry(&config, &pseudonymiser, p, t, now))
        .collect();
    while let Ok(chunk) = received.try_recv() {
        rest.extend(
            chunk
                .into_iter()
                .map(|(p, t)| entry(&config, &pseudonymiser, p, t, now)),
        );
    }
    if !rest.is_empty() {
        let _ = commit.send(rest).await;
    }
}

/// Batches being written at once: while the store syncs one, it applies the next.
const WRITES_IN_FLIGHT: usize = 2;

async fn commit_loop<S: ReadingWriter>(
    store: Arc<S>,
    client: AsyncClient,
    mut batches: mpsc::Receiver<Vec<Entry>>,
    status: Arc<IngestStatus>,
    shutdown: CancellationToken,
) {
    let mut in_flight: std::collections::VecDeque<Flight> = Default::default();
    let mut open = true;
    // After a failed batch nothing later is acknowledged either: acks stay in arrival order
    // (the broker redelivers the rest to our next session).
    let mut failed = false;
    loop {
        // Start writes until the pipeline is full; then finish the oldest, in order.
        if open && in_flight.len() < WRITES_IN_FLIGHT {
            let next = if in_flight.is_empty() {
                batches.recv().await
            } else {
                match batches.try_recv() {
                    Ok(b) => Some(b),
                    Err(mpsc::error::TryRecvError::Empty) => None,
                    Err(mpsc::error::TryRecvError::Disconnected) => {
                        open = false;
                        None
                    }
                }
            };
            match next {
                Some(mut batch) => {
                    let newest: Vec<Timestamp> = batch
                        .iter()
                        .filter_map(|e| {
                            e.item
                                .as_ref()?
                                .readings
                                .iter()
                                .map(|r| r.reading.time)
                                .max()
                        })
                        .collect();
                    let rejected = batch.iter().filter(|e| e.item.is_none()).count() as u64;
                    let items: Vec<IngestItem> =
                        batch.iter_mut().filter_map(|e| e.item.take()).collect();
                    let (store, shutdown) = (store.clone(), shutdown.clone());
                    let writing = tokio::spawn(async move {
                        if items.is_empty() {
                            return Ok(WriteOutcome::default());
                        }
                        write_with_retry(&*store, items, &shutdown).await
                    });
                    in_flight.push_back(Flight {
                        batch,
                        newest,
                        rejected,
                        writing,
                    });
                    continue;
                }
                None if in_flight.is_empty() => break,
                None => {}
            }
        }
        let Some(mut flight) = in_flight.pop_front() else {
            if !open {
                break;
            }
            continue;
        };
        let outcome = (&mut flight.writing)
            .await
            .unwrap_or_else(|e| Err(StoreError::engine("running the write task", e)));
        let outcome = match outcome {
            Ok(_) if failed => Err(StoreError::engine(
                "acknowledging in order",
                std::io::Error::other("an earlier batch failed"),
            )),
            other => other,
        };
        failed |= outcome.is_err();
        finish_batch(&client, &status, flight, outcome).await;
    }
}

/// A batch whose write is under way.
struct Flight {
    batch: Vec<Entry>,
    /// The newest reading time of each accepted message, for the lag histogram.
    newest: Vec<Timestamp>,
    rejected: u64,
    writing: tokio::task::JoinHandle<Result<WriteOutcome, StoreError>>,
}

/// Acknowledges a durably written batch in arrival order, or leaves a failed one unacked.
async fn finish_batch(
    client: &AsyncClient,
    status: &IngestStatus,
    flight: Flight,
    outcome: Result<WriteOutcome, StoreError>,
) {
    let batch = flight.batch;
    match outcome {
        Ok(outcome) => {
            if let Ok(mut total) = status.outcome.lock() {
                total.merge(&outcome);
            }
            let now = Timestamp::now();
            for newest in flight.newest {
                metrics::LAG.observe((now.as_second() - newest.as_second()).max(0) as f64);
            }
            status
                .rejected
                .fetch_add(flight.rejected, Ordering::Relaxed);
            status
                .messages
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
            // Durable: acknowledge, in arrival order. `try_ack` queues without a task
            // switch; only a full request channel makes us wait.
            let acked_at = Instant::now();
            let mut all_queued = true;
            for e in &batch {
                let queued = match client.try_ack(&e.publish) {
                    Ok(()) => true,
                    Err(_) => client.ack(&e.publish).await.is_ok(),
                };
                if !queued {
                    // The event loop is gone (shutdown): these stay unacknowledged and the
                    // broker redelivers them to our next session.
                    metrics::UNACKED.set(0);
                    all_queued = false;
                    break;
                }
                metrics::PUBLISH_TO_ACK
                    .observe(acked_at.saturating_duration_since(e.received).as_secs_f64());
            }
            if all_queued {
                metrics::UNACKED.sub(batch.len() as i64);
            }
            status
                .acked
                .fetch_add(batch.len() as u64, Ordering::Relaxed);
        }
        Err(e) => {
            // Not acknowledged: the broker redelivers these to our next session.
            tracing::error!(error = %e, messages = batch.len(), "batch not stored; leaving it unacknowledged");
            metrics::UNACKED.sub(batch.len() as i64);
        }
    }
}

/// Retries a failed write with backoff until it succeeds or shutdown is requested.
async fn write_with_retry<S: ReadingWriter>(
    store: &S,
    items: Vec<IngestItem>,
    shutdown: &CancellationToken,
) -> Result<WriteOutcome, StoreError> {
    let mut backoff = Duration::from_millis(50);
    loop {
        // The store takes the items; a copy stays for a retry.
        match store.write(items.clone()).await {
            Ok(o) => return Ok(o),
            Err(StoreError::Closed) => return Err(StoreError::Closed),
            Err(e) if shutdown.is_cancelled() => return Err(e),
            Err(e) => {
                tracing::error!(error = %e, retry_in_ms = backoff.as_millis() as u64, "store write failed");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}
