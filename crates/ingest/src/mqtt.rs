//! The MQTT session: connect options (MQTT 5, or 3.1.1 for brokers without it), the poll
//! loop that hands each received publish to the pipeline, acks through rumqttc's client,
//! reconnects with backoff and makes every connection loss visible.

use std::fmt::Display;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use meterstand_pseudonym::Pseudonymiser;
use meterstand_store::ReadingWriter;
use rumqttc::{Outgoing, TlsConfiguration, Transport, v5};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::acks::{AckClient, AckQueue, CHANNEL_CAPACITY, Held};
use crate::backoff::Backoff;
use crate::pipeline::{Context, Received, StoreWriter};
use crate::{IngestConfig, IngestError, IngestStatus, MqttVersion, metrics};

/// First and longest pause between connection attempts.
const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(10));

/// A connection that lasted this long counts as healthy: the next loss starts the backoff
/// again from its first step. Shorter ones (a broker that accepts and drops us at once) keep
/// backing off.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// The largest packet MQTT 3.1.1 allows (remaining length). With 3.1.1 the broker does not
/// know our limit; a smaller one would drop the connection on a big message that the
/// persistent session then redelivers on every reconnect.
const MQTT311_MAX_PACKET: usize = 268_435_455;

/// Our own publishes in flight: ingest sends none, only subscriptions use packet ids.
const OUTGOING_INFLIGHT: u16 = 16;

/// Options for the configured protocol, checked before anything starts.
pub(crate) enum Session {
    V5(Box<v5::MqttOptions>),
    V311(Box<rumqttc::MqttOptions>),
}

impl Session {
    pub(crate) fn new(config: &IngestConfig) -> Result<Session, IngestError> {
        let (host, port, tls) = parse_url(&config.url)?;
        let transport = if tls {
            Some(tls_transport(config)?)
        } else {
            None
        };
        let credentials = match (&config.username, &config.password) {
            (Some(u), Some(p)) => Some((u.clone(), p.clone())),
            _ => None,
        };
        Ok(match config.mqtt_version {
            MqttVersion::V5 => {
                let mut o = v5::MqttOptions::new(&config.client_id, host, port);
                // A persistent session: what we have not acknowledged waits for us.
                o.set_clean_start(false);
                o.set_session_expiry_interval(Some(session_expiry_secs(config.session_expiry)));
                o.set_manual_acks(true);
                o.set_keep_alive(config.keep_alive);
                // Our ack window: the broker never has more unacknowledged messages out to us,
                // which bounds the received queue.
                o.set_receive_maximum(Some(config.receive_maximum()));
                // The broker never sends us a bigger packet (Mosquitto drops it for this
                // client and the rest flows); rumqttc reads up to this size too.
                o.set_max_packet_size(Some(config.max_packet_size()));
                // Ingest publishes nothing: rumqttc sizes its outgoing in-flight table by
                // this (65,536 slots, 13 MB, by default).
                o.set_outgoing_inflight_upper_limit(OUTGOING_INFLIGHT);
                if let Some((u, p)) = credentials {
                    o.set_credentials(u, p);
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                Session::V5(Box::new(o))
            }
            MqttVersion::V311 => {
                let mut o = rumqttc::MqttOptions::new(&config.client_id, host, port);
                o.set_clean_session(false);
                o.set_manual_acks(true);
                o.set_keep_alive(config.keep_alive);
                o.set_max_packet_size(MQTT311_MAX_PACKET, 1 << 20);
                o.set_inflight(OUTGOING_INFLIGHT);
                if let Some((u, p)) = credentials {
                    o.set_credentials(u, p);
                }
                if let Some(t) = transport {
                    o.set_transport(t);
                }
                Session::V311(Box::new(o))
            }
        })
    }

    /// Runs the session and the pipeline until shutdown (`Ok`) or until the pipeline dies.
    pub(crate) async fn run<S: ReadingWriter>(
        self,
        config: IngestConfig,
        store: Arc<S>,
        pseudonymiser: Arc<Pseudonymiser>,
        status: Arc<IngestStatus>,
        shutdown: CancellationToken,
    ) -> Result<(), IngestError> {
        let window = config.max_unacked.max(1);
        // The bytes of what is inside, bounded like the count: the poll loop takes a message's
        // payload size from this before handing it on and the pipeline gives it back when the
        // message is acknowledged (or dropped). At least one largest message fits.
        let budget = ByteBudget::new(
            config
                .max_unacked_bytes
                .max(config.limits.max_payload_bytes),
        );
        let stop = CancellationToken::new();
        let topics = config.topics();
        let writer = Arc::new(StoreWriter(store));
        let ctx = Arc::new(Context {
            config,
            pseudonymiser,
            status: status.clone(),
        });
        let link = Link::new(status.clone());
        // The received queue is bounded by our window: a broker that sends past its Receive
        // Maximum (Mosquitto 2.0 delivering an offline session's backlog) would otherwise
        // fill memory with the whole backlog. When it is full the poll loop waits, the
        // socket stops being read and TCP holds the broker back. Acks never wait on the
        // poll loop: what does not fit rumqttc's request channel waits in the `AckQueue`,
        // 8 bytes an ack (see acks.rs).
        let (result, disconnect, poller) = match self {
            Session::V5(options) => {
                let (client, eventloop) = v5::AsyncClient::new(*options, CHANNEL_CAPACITY);
                let acks = Arc::new(AckQueue::new(client.clone()));
                let (received_tx, received_rx) = mpsc::channel(window);
                let poller = Poller::spawn(poll_v5(
                    eventloop,
                    client.clone(),
                    acks.clone(),
                    budget.clone(),
                    topics,
                    received_tx,
                    link,
                    shutdown.clone(),
                    stop.clone(),
                ))?;
                let result =
                    crate::pipeline::run(ctx, writer, acks.clone(), received_rx, shutdown).await;
                let disconnect = leave(&acks, || client.try_disconnect().is_ok()).await;
                (result, disconnect, poller)
            }
            Session::V311(options) => {
                let (client, eventloop) = rumqttc::AsyncClient::new(*options, CHANNEL_CAPACITY);
                let acks = Arc::new(AckQueue::new(client.clone()));
                // As above; with 3.1.1 the broker's own in-flight limit is its window.
                let (received_tx, received_rx) = mpsc::channel(window);
                let poller = Poller::spawn(poll_v311(
                    eventloop,
                    client.clone(),
                    acks.clone(),
                    budget.clone(),
                    topics,
                    received_tx,
                    link,
                    shutdown.clone(),
                    stop.clone(),
                ))?;
                let result =
                    crate::pipeline::run(ctx, writer, acks.clone(), received_rx, shutdown).await;
                let disconnect = leave(&acks, || client.try_disconnect().is_ok()).await;
                (result, disconnect, poller)
            }
        };
        // Everything received was written and acknowledged (or is left for redelivery):
        // leave, giving the poll loop a moment to send the acks and the DISCONNECT.
        stop.cancel();
        let failed = poller
            .finish(if disconnect {
                Duration::from_secs(5)
            } else {
                Duration::ZERO
            })
            .await;
        status.connected.store(false, Ordering::SeqCst);
        metrics::CONNECTED.set(0);
        result?;
        match failed {
            Some(reason) => Err(IngestError::TaskFailed {
                task: "mqtt event loop",
                reason,
            }),
            None => Ok(()),
        }
    }
}

/// The poll loop, on a thread of its own with a single-threaded runtime. On the shared
/// runtime it moved between the two workers, and malloc kept each worker's arena at its
/// peak of read buffers (the payloads inside, up to ingest's byte budget): the batched bench
/// peaked 28 MiB higher. A thread of its own also means reading the socket never waits
/// behind other tasks.
struct Poller {
    /// How the loop ended: `None` on its own or cancelled, else why it failed.
    done: tokio::sync::oneshot::Receiver<Option<String>>,
    /// Ends the loop where it stands (after the wait for a clean end).
    kill: CancellationToken,
}

impl Poller {
    fn spawn(
        poll: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<Poller, IngestError> {
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let kill = CancellationToken::new();
        let killed = kill.clone();
        // The runtime is built on the thread: dropped on an async worker (were the thread
        // not to start), a runtime panics instead of letting us report the error.
        std::thread::Builder::new()
            .name("meterstand-mqtt".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        // Dropping `poll` closes the received queue: the pipeline ends.
                        let _ = done_tx.send(Some(format!("cannot start its runtime: {e}")));
                        return;
                    }
                };
                let run = std::panic::AssertUnwindSafe(|| {
                    runtime.block_on(async {
                        tokio::select! {
                            biased;
                            _ = killed.cancelled() => {}
                            _ = poll => {}
                        }
                    })
                });
                let failed = std::panic::catch_unwind(run)
                    .is_err()
                    .then(|| "panicked".to_owned());
                let _ = done_tx.send(failed);
            })
            .map_err(|e| IngestError::TaskFailed {
                task: "mqtt event loop",
                reason: format!("cannot start its thread: {e}"),
            })?;
        Ok(Poller { done, kill })
    }

    /// Waits up to `grace` for the loop to end on its own, then ends it; why it failed, if
    /// it did.
    async fn finish(mut self, grace: Duration) -> Option<String> {
        if let Ok(Ok(failed)) = tokio::time::timeout(grace, &mut self.done).await {
            return failed;
        }
        self.kill.cancel();
        // A loop that cannot be stopped (it is not at an await) is left to the process's end.
        tokio::time::timeout(Duration::from_secs(1), self.done)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    }
}

fn session_expiry_secs(expiry: Option<Duration>) -> u32 {
    // u32::MAX means "never expires" in MQTT 5.
    expiry.map_or(u32::MAX, |d| {
        u32::try_from(d.as_secs())
            .unwrap_or(u32::MAX - 1)
            .min(u32::MAX - 1)
    })
}

/// The one broker URL parser ([`crate::BrokerUrl`]), shared with the config and the simulator.
fn parse_url(url: &str) -> Result<(String, u16, bool), IngestError> {
    let u: crate::BrokerUrl = url.parse().map_err(|_| IngestError::Url(url.to_string()))?;
    Ok((u.host, u.port, u.tls))
}

fn tls_transport(config: &IngestConfig) -> Result<Transport, IngestError> {
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
    Ok(Transport::tls_with_config(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    }))
}

/// Connection state shared by both protocol versions: status, metrics, logs, backoff.
struct Link {
    status: Arc<IngestStatus>,
    backoff: Backoff,
    /// Failed attempts since the last successful connection.
    failures: u64,
    ever_connected: bool,
    connected_at: Option<Instant>,
}

impl Link {
    fn new(status: Arc<IngestStatus>) -> Link {
        Link {
            status,
            backoff: Backoff::new(RECONNECT_BACKOFF.0, RECONNECT_BACKOFF.1),
            failures: 0,
            ever_connected: false,
            connected_at: None,
        }
    }

    fn connected(&mut self, session_present: bool) {
        tracing::info!(session_present, "connected to mqtt broker");
        self.status.connected.store(true, Ordering::SeqCst);
        metrics::CONNECTED.set(1);
        self.failures = 0;
        self.ever_connected = true;
        self.connected_at = Some(Instant::now());
    }

    /// Logs and counts a poll error; returns how long to wait before the next attempt.
    fn failed(&mut self, error: &dyn Display) -> Duration {
        metrics::CONNECTION_ERRORS.inc();
        if let Some(since) = self.connected_at.take()
            && since.elapsed() >= STABLE_CONNECTION
        {
            self.backoff.reset();
        }
        let delay = self.backoff.next_delay();
        let retry_in_ms = delay.as_millis() as u64;
        self.failures += 1;
        if self.status.connected.swap(false, Ordering::SeqCst) {
            metrics::RECONNECTS.inc();
            metrics::CONNECTED.set(0);
            tracing::warn!(error = %error, retry_in_ms, "lost connection to mqtt broker");
        } else if !self.ever_connected && self.failures == 1 {
            // One refusal right at start is normal (an embedded broker still binding).
            tracing::debug!(error = %error, retry_in_ms, "mqtt broker not reachable yet");
        } else {
            tracing::warn!(
                error = %error,
                attempt = self.failures,
                retry_in_ms,
                "mqtt broker unreachable"
            );
        }
        delay
    }

    /// Waits out the backoff; `false` when the session is being closed.
    async fn wait(delay: Duration, stop: &CancellationToken) -> bool {
        tokio::select! {
            _ = tokio::time::sleep(delay) => true,
            _ = stop.cancelled() => false,
        }
    }
}

/// How long a clean stop waits for the acks of what was written to reach the connection.
const ACK_DRAIN: Duration = Duration::from_secs(10);

/// How long the poll loop reads on after our DISCONNECT, for the broker to close: closing a
/// socket with unread data resets the connection, and the broker may then drop the acks
/// and the DISCONNECT still in its receive buffer.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// Ends the session cleanly: once every ack is written (or `ACK_DRAIN` passed), queues the
/// DISCONNECT behind them. Whether it was queued.
async fn leave<C: AckClient>(acks: &AckQueue<C>, disconnect: impl FnOnce() -> bool) -> bool {
    if !acks.drained(ACK_DRAIN).await {
        tracing::warn!("stopping with acks not yet written: the broker redelivers those messages");
    }
    disconnect()
}

/// Marks the ack queue closed however the poll loop ends.
struct CloseOnDrop<'a, C: AckClient>(&'a AckQueue<C>);

impl<C: AckClient> Drop for CloseOnDrop<'_, C> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The payload bytes ingest may hold until they are acknowledged.
#[derive(Clone)]
struct ByteBudget {
    bytes: Arc<Semaphore>,
    total: u32,
}

impl ByteBudget {
    fn new(total: usize) -> ByteBudget {
        let total = u32::try_from(total.clamp(1, Semaphore::MAX_PERMITS)).unwrap_or(u32::MAX);
        ByteBudget {
            bytes: Arc::new(Semaphore::new(total as usize)),
            total,
        }
    }

    /// Takes a message's share, waiting (and so not reading from the broker) until acks give
    /// enough back. A message larger than the whole budget takes all of it.
    async fn take(&self, len: usize) -> Option<OwnedSemaphorePermit> {
        let want = u32::try_from(len).unwrap_or(u32::MAX).clamp(1, self.total);
        // Never closed; if it were, the message would simply not be counted.
        self.bytes.clone().acquire_many_owned(want).await.ok()
    }
}

/// Hands one publish to the pipeline, waiting while the received queue is full (a broker
/// sending past our window; see `Session::run`).
async fn deliver<T>(received: &mpsc::Sender<Received<T>>, message: Received<T>) {
    metrics::UNACKED.inc();
    if received.send(message).await.is_err() {
        // The pipeline is gone: not acknowledged, the broker redelivers it.
        metrics::UNACKED.dec();
    }
}

#[allow(clippy::too_many_arguments)]
async fn poll_v5(
    mut eventloop: v5::EventLoop,
    client: v5::AsyncClient,
    acks: Arc<AckQueue<v5::AsyncClient>>,
    budget: ByteBudget,
    topics: Vec<String>,
    received: mpsc::Sender<Received<Held>>,
    mut link: Link,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    use v5::Event;
    use v5::mqttbytes::QoS;
    use v5::mqttbytes::v5::{Packet, Publish};
    let _closed = CloseOnDrop(&acks);
    // Each incoming publish is its own event: handed on as it comes, rumqttc's state is
    // never looked into.
    loop {
        let event = eventloop.poll().await;
        acks.move_waiting();
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                link.connected(ack.session_present);
                for topic in &topics {
                    if let Err(e) = client.try_subscribe(topic.as_str(), QoS::AtLeastOnce) {
                        tracing::error!(error = %e, "cannot queue subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if shutdown.is_cancelled() {
                    // Not acknowledged: the broker keeps it for our next session.
                    continue;
                }
                let Publish {
                    qos,
                    topic,
                    pkid,
                    payload,
                    ..
                } = publish;
                let bytes = budget.take(payload.len()).await;
                let message = Received {
                    topic,
                    payload,
                    received: Instant::now(),
                    token: Held {
                        ack: acks.token(pkid, qos as u8),
                        _bytes: bytes,
                    },
                };
                deliver(&received, message).await;
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                use v5::mqttbytes::v5::SubscribeReasonCode;
                for code in &ack.return_codes {
                    if !matches!(code, SubscribeReasonCode::Success(_)) {
                        tracing::error!(reason = ?code, "broker refused a subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                tracing::warn!(reason = ?d.reason_code, "mqtt broker sent disconnect");
            }
            Ok(Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_))) => acks.written(),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                // Read on until the broker closes, so that ours is not a reset.
                let _ = tokio::time::timeout(CLOSE_DRAIN, async {
                    while eventloop.poll().await.is_ok() {}
                })
                .await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                acks.connection_lost();
                if stop.is_cancelled() || !Link::wait(link.failed(&e), &stop).await {
                    return;
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn poll_v311(
    mut eventloop: rumqttc::EventLoop,
    client: rumqttc::AsyncClient,
    acks: Arc<AckQueue<rumqttc::AsyncClient>>,
    budget: ByteBudget,
    topics: Vec<String>,
    received: mpsc::Sender<Received<Held>>,
    mut link: Link,
    shutdown: CancellationToken,
    stop: CancellationToken,
) {
    use rumqttc::{Event, Packet, Publish, QoS, SubscribeReasonCode};
    let _closed = CloseOnDrop(&acks);
    loop {
        let event = eventloop.poll().await;
        acks.move_waiting();
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                link.connected(ack.session_present);
                for topic in &topics {
                    if let Err(e) = client.try_subscribe(topic.as_str(), QoS::AtLeastOnce) {
                        tracing::error!(error = %e, "cannot queue subscription");
                    }
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => {
                if shutdown.is_cancelled() {
                    continue;
                }
                let Publish {
                    qos,
                    topic,
                    pkid,
                    payload,
                    ..
                } = publish;
                let bytes = budget.take(payload.len()).await;
                let message = Received {
                    topic: Bytes::from(topic),
                    payload,
                    received: Instant::now(),
                    token: Held {
                        ack: acks.token(pkid, qos as u8),
                        _bytes: bytes,
                    },
                };
                deliver(&received, message).await;
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                    tracing::error!("broker refused a subscription");
                }
            }
            Ok(Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_))) => acks.written(),
            Ok(Event::Outgoing(Outgoing::Disconnect)) => {
                let _ = tokio::time::timeout(CLOSE_DRAIN, async {
                    while eventloop.poll().await.is_ok() {}
                })
                .await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                acks.connection_lost();
                if stop.is_cancelled() || !Link::wait(link.failed(&e), &stop).await {
                    return;
                }
            }
        }
    }
}
