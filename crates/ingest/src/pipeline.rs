//! The core of ingest, free of MQTT: received messages → batches → durable writes → acks in
//! arrival order. The MQTT session (`mqtt.rs`) feeds it through a bounded channel and acks
//! through an [`Acker`]; tests drive it in-process with a recording acker and a fake writer.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use jiff::Timestamp;
use meterstand_codec::{Format, Mode, decode, p1, parse_ingest_topic};
use meterstand_pseudonym::Pseudonymiser;
use meterstand_store::{IngestItem, ReadingWriter, StoreError, WriteOutcome};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::backoff::Backoff;
use crate::{IngestConfig, IngestError, IngestStatus, metrics};

mod corrections;

use corrections::{CORRECTIONS_DISABLED, CorrectedReading, Refused, audit_corrections};

/// One received message, as the MQTT session hands it on.
pub(crate) struct Received<T> {
    pub topic: Bytes,
    pub payload: Bytes,
    pub received: Instant,
    /// What the acker needs to acknowledge this message (for rumqttc, its packet id).
    pub token: T,
}

/// Why an ack could not be queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AckError {
    /// The connection's event loop is gone.
    Closed,
}

/// Sends acknowledgements to the broker (the session's `AckQueue`; a recorder in tests).
pub(crate) trait Acker: Send + Sync + 'static {
    type Token: Send + 'static;
    /// Queues an ack after every ack queued before it. Never waits: acks must not wait on
    /// the poll loop, which may itself be waiting for the pipeline.
    fn ack(&self, token: &Self::Token) -> Result<(), AckError>;
}

/// The durable write. Takes the items by value: the first attempt gets them without a copy.
pub(crate) trait BatchWriter: Send + Sync + 'static {
    fn write(
        &self,
        items: Vec<IngestItem>,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send;
}

/// The store as ingest writes to it.
#[derive(Debug)]
pub(crate) struct StoreWriter<S>(pub Arc<S>);

impl<S: ReadingWriter> BatchWriter for StoreWriter<S> {
    fn write(
        &self,
        items: Vec<IngestItem>,
    ) -> impl Future<Output = Result<WriteOutcome, StoreError>> + Send {
        self.0.write(items)
    }
}

/// What the batcher and committer share.
pub(crate) struct Context {
    pub config: IngestConfig,
    pub pseudonymiser: Arc<Pseudonymiser>,
    pub status: Arc<IngestStatus>,
}

/// Batches waiting for the committer. Two let the batcher fill the next batch while one is
/// written; more would only hold unacknowledged messages in memory.
pub(crate) const COMMIT_QUEUE: usize = 2;

/// Batches being written at once: while the store syncs one, it applies the next.
pub(crate) const WRITES_IN_FLIGHT: usize = 2;

/// First and longest pause between attempts of a failed write.
const WRITE_BACKOFF: (Duration, Duration) = (Duration::from_millis(50), Duration::from_secs(5));

/// Runs the batcher and the committer until `received` closes or `shutdown` is cancelled and
/// everything received was written and acknowledged. Fails when a write fails past its
/// retries or a task dies: then nothing after the failed batch is acknowledged (the broker
/// redelivers it to our next session) and the caller must end the process.
pub(crate) async fn run<W: BatchWriter, A: Acker>(
    ctx: Arc<Context>,
    writer: Arc<W>,
    acker: A,
    received: mpsc::Receiver<Received<A::Token>>,
    shutdown: CancellationToken,
) -> Result<(), IngestError> {
    // Every reject series exists from the start, this one too (the codec's are
    // `metrics::init`'s).
    metrics::REJECTED.with_label_values(&[CORRECTIONS_DISABLED]);
    let (commit_tx, commit_rx) = mpsc::channel(COMMIT_QUEUE);
    let mut batcher = tokio::spawn(batch_loop(ctx.clone(), received, commit_tx, shutdown));
    let committed = commit_loop(ctx, writer, acker, commit_rx).await;
    if committed.is_err() {
        batcher.abort();
    }
    let batched = (&mut batcher).await;
    committed?;
    batched.map_err(|e| IngestError::task("batcher", &e))
}

/// One batch on its way to the store.
struct Batch<T> {
    /// The clock reading every message of the batch was checked against; a retry decodes
    /// again against the same reading, so it writes exactly what the first attempt did.
    now: Timestamp,
    /// Every message, in arrival order: what to acknowledge once the batch is durable.
    acks: Vec<(T, Instant)>,
    /// The items of the accepted messages, moved into the first write attempt.
    items: Vec<IngestItem>,
    /// Topic and payload of each accepted message: a retry decodes them again rather than
    /// every batch keeping a copy of its items for a retry that rarely comes.
    sources: Vec<(Bytes, Bytes)>,
    /// The newest reading time of each accepted message, for the lag histogram.
    newest: Vec<Timestamp>,
    /// Every reading of the batch's correction messages, in arrival order: each gets an audit
    /// line before the batch is acknowledged, whatever the write found (`audit_corrections`).
    /// Empty, and never allocated, in a batch without corrections.
    corrections: Vec<CorrectedReading>,
    rejected: u64,
}

impl<T> Batch<T> {
    fn new(now: Timestamp, capacity: usize) -> Batch<T> {
        Batch {
            now,
            acks: Vec::with_capacity(capacity),
            items: Vec::with_capacity(capacity),
            sources: Vec::with_capacity(capacity),
            newest: Vec::with_capacity(capacity),
            corrections: Vec::new(),
            rejected: 0,
        }
    }

    fn len(&self) -> usize {
        self.acks.len()
    }

    /// Adds the messages of `later`, which arrived after this batch's.
    fn append(&mut self, mut later: Batch<T>) {
        self.acks.append(&mut later.acks);
        self.items.append(&mut later.items);
        self.sources.append(&mut later.sources);
        self.newest.append(&mut later.newest);
        self.corrections.append(&mut later.corrections);
        self.rejected += later.rejected;
    }

    /// Decodes, validates and pseudonymises one message and adds it.
    fn push(&mut self, ctx: &Context, r: Received<T>) {
        metrics::MESSAGES.inc();
        match process(ctx, &r.topic, &r.payload, self.now) {
            Ok(Processed::Item(item, between_boundaries)) => {
                if between_boundaries {
                    metrics::P1_BETWEEN_BOUNDARIES.inc();
                }
                metrics::READINGS.inc_by(item.readings.len() as u64);
                if let Some(t) = item.readings.iter().map(|r| r.reading.time).max() {
                    self.newest.push(t);
                }
                if item.correction {
                    self.corrections
                        .extend(item.readings.iter().map(|r| CorrectedReading {
                            connection: item.connection,
                            register: r.reading.register,
                            time: r.reading.time,
                            tiers: r.tiers,
                        }));
                }
                self.items.push(item);
                self.sources.push((r.topic, r.payload));
            }
            Ok(Processed::Nothing { between_boundaries }) => {
                if between_boundaries {
                    metrics::P1_BETWEEN_BOUNDARIES.inc();
                }
            }
            Err(reject) => {
                self.rejected += 1;
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
            }
        }
        self.acks.push((r.token, r.received));
    }

    /// The items again, for a retry: the sources decoded against the same clock reading.
    fn rebuild_items(ctx: &Context, sources: &[(Bytes, Bytes)], now: Timestamp) -> Vec<IngestItem> {
        sources
            .iter()
            .filter_map(|(topic, payload)| match process(ctx, topic, payload, now) {
                Ok(Processed::Item(item, _)) => Some(item),
                _ => None,
            })
            .collect()
    }
}

/// What one message gives.
enum Processed {
    /// Readings to store; `true` for a P1 telegram between boundaries that still carried gas.
    Item(IngestItem, bool),
    /// Nothing to store and nothing wrong: a P1 telegram between boundaries (or untimed)
    /// without a gas reading on a boundary.
    Nothing { between_boundaries: bool },
}

/// Pure: the same message and clock reading always give the same result.
fn process(
    ctx: &Context,
    topic: &[u8],
    payload: &[u8],
    now: Timestamp,
) -> Result<Processed, Refused> {
    let config = &ctx.config;
    let topic = std::str::from_utf8(topic).map_err(|_| meterstand_codec::Reject::BadTopic)?;
    let (ean, format, mode) = parse_ingest_topic(&config.topic_prefix, topic)?;
    // Refused before its payload is even decoded: nothing of it is applied or kept.
    if mode == Mode::Correction && !config.corrections {
        return Err(Refused::CorrectionsDisabled);
    }
    let (decoded, between_boundaries) = match format {
        Format::P1 => {
            let telegram = p1::decode_telegram(payload, &config.calendar, &config.limits)?;
            let placed = p1::place(
                telegram,
                now,
                &config.calendar,
                config.p1_window(),
                &config.limits,
            )?;
            let between = placed.between_boundaries();
            (placed.decoded, between)
        }
        Format::Json | Format::Bincode => (
            decode(format, payload, now, &config.calendar, &config.limits)?,
            false,
        ),
    };
    if decoded.readings.is_empty() {
        return Ok(Processed::Nothing { between_boundaries });
    }
    let p = &ctx.pseudonymiser;
    Ok(Processed::Item(
        IngestItem {
            connection: p.ean(&ean),
            previous: p.ean_older_versions(&ean),
            meter: p.meter(&decoded.meter),
            readings: decoded.readings,
            correction: mode == Mode::Correction,
        },
        between_boundaries,
    ))
}

async fn batch_loop<T: Send + 'static>(
    ctx: Arc<Context>,
    mut received: mpsc::Receiver<Received<T>>,
    commit: mpsc::Sender<Batch<T>>,
    shutdown: CancellationToken,
) {
    let max = ctx.config.batch_max_messages.max(1);
    let delay = ctx.config.batch_max_delay;
    // A batch also closes at half the bytes ingest may hold, so that writing one overlaps
    // receiving and decoding the next (halves measured faster than quarters: per-batch
    // costs weigh more than a deeper pipeline).
    let max_bytes = (ctx.config.max_unacked_bytes / BATCHES_IN_BYTE_BUDGET).max(1);
    // Messages taken off the channel together, up to a batch: one wake-up for many.
    let mut buf: Vec<Received<T>> = Vec::with_capacity(max.min(1024));
    loop {
        // Messages left over from the last batch (it closed by bytes) start the next one.
        if buf.is_empty() {
            let n = tokio::select! {
                biased;
                _ = shutdown.cancelled() => break,
                n = received.recv_many(&mut buf, max) => n,
            };
            if n == 0 {
                // The session is gone: nothing more will come.
                return;
            }
        }
        // Decoding checks "too far in the future" against one clock reading per batch.
        let now = Timestamp::now();
        let mut raw: Vec<Received<T>> = Vec::with_capacity(max.min(1024));
        let deadline = tokio::time::Instant::now() + delay;
        let mut closed = false;
        let mut bytes = 0;
        loop {
            let mut take = 0;
            for r in &buf {
                if raw.len() + take >= max || bytes >= max_bytes {
                    break;
                }
                bytes += r.payload.len();
                take += 1;
            }
            raw.extend(buf.drain(..take));
            if raw.len() >= max || bytes >= max_bytes {
                break;
            }
            tokio::select! {
                n = received.recv_many(&mut buf, max - raw.len()) => if n == 0 {
                    closed = true;
                    break;
                },
                _ = tokio::time::sleep_until(deadline) => break,
                _ = shutdown.cancelled() => break,
            }
        }
        let Some(batch) = decode_batch(&ctx, now, raw).await else {
            return;
        };
        metrics::BATCH_MESSAGES.observe(batch.len() as f64);
        if commit.send(batch).await.is_err() || closed {
            return;
        }
    }
    // Shutdown: what was already received still gets written and acknowledged.
    received.close();
    loop {
        // Leftovers of a batch closed by bytes first.
        if buf.is_empty() && received.recv_many(&mut buf, max).await == 0 {
            return;
        }
        let Some(batch) = decode_batch(&ctx, Timestamp::now(), std::mem::take(&mut buf)).await
        else {
            return;
        };
        metrics::BATCH_MESSAGES.observe(batch.len() as f64);
        if commit.send(batch).await.is_err() {
            return;
        }
    }
}

/// Batches that fit in `max_unacked_bytes` at once (each closes at this fraction of it).
/// Batched ingest at the default budget: 2.1–2.5 M/s with 4, 2.6–3.3 M/s with 2.
const BATCHES_IN_BYTE_BUDGET: usize = 2;

/// Below this many messages a batch is decoded on one thread: splitting it would cost more
/// than it saves.
const DECODE_SPLIT_MIN: usize = 32;

/// Decodes a batch's messages (`Batch::push`) off the async workers, which keep serving the
/// MQTT connection: a large batch in two halves on two blocking threads at once, so that
/// decoding uses the second core while the store's writer is busy with the batch before.
/// `None` if the runtime is shutting down.
async fn decode_batch<T: Send + 'static>(
    ctx: &Arc<Context>,
    now: Timestamp,
    mut raw: Vec<Received<T>>,
) -> Option<Batch<T>> {
    fn decode_all<T>(ctx: &Context, now: Timestamp, raw: Vec<Received<T>>) -> Batch<T> {
        let mut batch = Batch::new(now, raw.len());
        for r in raw {
            batch.push(ctx, r);
        }
        batch
    }
    async fn joined<T>(handle: tokio::task::JoinHandle<Batch<T>>) -> Option<Batch<T>> {
        match handle.await {
            Ok(batch) => Some(batch),
            // A panic in decoding is the batcher's: its task fails and ingest stops.
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => None,
        }
    }
    let second = if raw.len() >= DECODE_SPLIT_MIN {
        let tail = raw.split_off(raw.len() / 2);
        let c = ctx.clone();
        Some(tokio::task::spawn_blocking(move || {
            decode_all(&c, now, tail)
        }))
    } else {
        None
    };
    let c = ctx.clone();
    let mut batch = joined(tokio::task::spawn_blocking(move || {
        decode_all(&c, now, raw)
    }))
    .await?;
    if let Some(second) = second {
        batch.append(joined(second).await?);
    }
    Some(batch)
}

/// A batch whose first write attempt is under way.
struct Flight<T> {
    batch: Batch<T>,
    writing: tokio::task::JoinHandle<Result<WriteOutcome, StoreError>>,
}

async fn commit_loop<W: BatchWriter, A: Acker>(
    ctx: Arc<Context>,
    writer: Arc<W>,
    acker: A,
    mut batches: mpsc::Receiver<Batch<A::Token>>,
) -> Result<(), IngestError> {
    let mut in_flight: VecDeque<Flight<A::Token>> = VecDeque::with_capacity(WRITES_IN_FLIGHT);
    let mut open = true;
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
                    let items = std::mem::take(&mut batch.items);
                    let writer = writer.clone();
                    let writing = tokio::spawn(async move {
                        if items.is_empty() {
                            return Ok(WriteOutcome::default());
                        }
                        writer.write(items).await
                    });
                    in_flight.push_back(Flight { batch, writing });
                    continue;
                }
                None if in_flight.is_empty() => return Ok(()),
                None => {}
            }
        }
        let Some(flight) = in_flight.pop_front() else {
            if open {
                continue;
            }
            return Ok(());
        };
        let outcome = match finish_write(&ctx, &*writer, flight.writing, &flight.batch).await {
            // The corrections are audited before any ack of their batch is released; a
            // batch whose audit lines cannot be written fails as an unstored batch does.
            Ok(mut o) => audit_corrections(
                &ctx,
                &flight.batch.corrections,
                std::mem::take(&mut o.corrections),
            )
            .await
            .map(|()| o),
            Err(e) => Err(e),
        };
        let outcome = match outcome {
            Ok(o) => o,
            Err(e) => {
                let unacked: usize =
                    flight.batch.len() + in_flight.iter().map(|f| f.batch.len()).sum::<usize>();
                // Not acknowledged, nor is anything after it: the broker redelivers them
                // to our next session, in order.
                tracing::error!(
                    error = %e,
                    messages = unacked,
                    "batch not stored or its corrections not audited; ingest stops"
                );
                for f in in_flight.drain(..) {
                    f.writing.abort();
                }
                metrics::UNACKED.sub(unacked as i64);
                return Err(e);
            }
        };
        acknowledge(&ctx, &acker, flight.batch, outcome).await?;
    }
}

/// Awaits a batch's first write attempt and retries it, with backoff, up to the configured
/// number of times. Only a retry decodes the batch's items again.
async fn finish_write<W: BatchWriter, T>(
    ctx: &Context,
    writer: &W,
    first: tokio::task::JoinHandle<Result<WriteOutcome, StoreError>>,
    batch: &Batch<T>,
) -> Result<WriteOutcome, IngestError> {
    let mut result = first
        .await
        .map_err(|e| IngestError::task("store write", &e))?;
    let retries = ctx.config.write_retries;
    let mut backoff = Backoff::new(WRITE_BACKOFF.0, WRITE_BACKOFF.1);
    let mut attempt = 1u32;
    loop {
        let error = match result {
            Ok(o) => return Ok(o),
            Err(StoreError::Closed) => {
                return Err(IngestError::Write {
                    attempts: attempt,
                    source: StoreError::Closed,
                });
            }
            Err(e) if attempt > retries => {
                return Err(IngestError::Write {
                    attempts: attempt,
                    source: e,
                });
            }
            Err(e) => e,
        };
        let delay = backoff.next_delay();
        metrics::WRITE_RETRIES.inc();
        tracing::warn!(
            error = %error,
            attempt,
            retry_in_ms = delay.as_millis() as u64,
            "store write failed; retrying"
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
        result = writer
            .write(Batch::<T>::rebuild_items(ctx, &batch.sources, batch.now))
            .await;
    }
}

/// Acknowledges a durably written batch whose corrections are audited, every message in
/// arrival order.
async fn acknowledge<A: Acker>(
    ctx: &Context,
    acker: &A,
    batch: Batch<A::Token>,
    outcome: WriteOutcome,
) -> Result<(), IngestError> {
    let status = &*ctx.status;
    status.outcome.lock().merge(&outcome);
    let now = Timestamp::now();
    for newest in &batch.newest {
        metrics::LAG.observe((now.as_second() - newest.as_second()).max(0) as f64);
    }
    status.rejected.fetch_add(batch.rejected, Ordering::Relaxed);
    status
        .messages
        .fetch_add(batch.len() as u64, Ordering::Relaxed);
    let acked_at = Instant::now();
    let total = batch.acks.len();
    for (i, (token, received)) in batch.acks.iter().enumerate() {
        if acker.ack(token).is_err() {
            // The event loop is gone: the rest stays unacknowledged for redelivery.
            metrics::UNACKED.sub((total - i) as i64);
            status.acked.fetch_add(i as u64, Ordering::Relaxed);
            return Err(IngestError::TaskFailed {
                task: "mqtt event loop",
                reason: "it stopped taking acknowledgements".into(),
            });
        }
        metrics::PUBLISH_TO_ACK
            .observe(acked_at.saturating_duration_since(*received).as_secs_f64());
    }
    metrics::UNACKED.sub(total as i64);
    status.acked.fetch_add(total as u64, Ordering::Relaxed);
    Ok(())
}

#[cfg(test)]
mod tests;
