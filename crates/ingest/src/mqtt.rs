//! The MQTT session: connect options (MQTT 5, or 3.1.1 for brokers without it), the poll
//! loop that hands each received publish to the pipeline, acks through rumqttc's client,
//! reconnects with backoff and makes every connection loss visible.

mod poll;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use meterstand_pseudonym::Pseudonymiser;
use meterstand_store::ReadingWriter;
use rumqttc::{TlsConfiguration, Transport, v5};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::acks::{AckClient, AckQueue, CHANNEL_CAPACITY};
use crate::pipeline::{Context, StoreWriter};
use crate::{IngestConfig, IngestError, IngestStatus, MqttVersion, metrics};
use poll::{ByteBudget, Link, PollLoop, Protocol, V5, V311};

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
        let (host, port) = (config.url.host.clone(), config.url.port);
        let transport = if config.url.tls {
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
        let parts = Parts {
            config,
            writer: Arc::new(StoreWriter(store)),
            pseudonymiser,
            status,
            shutdown,
        };
        match self {
            Session::V5(options) => parts.run::<V5>(*options).await,
            Session::V311(options) => parts.run::<V311>(*options).await,
        }
    }
}

/// What a session runs with, whichever the protocol version.
struct Parts<S> {
    config: IngestConfig,
    writer: Arc<StoreWriter<S>>,
    pseudonymiser: Arc<Pseudonymiser>,
    status: Arc<IngestStatus>,
    shutdown: CancellationToken,
}

impl<S: ReadingWriter> Parts<S> {
    async fn run<P: Protocol>(self, options: P::Options) -> Result<(), IngestError> {
        let Parts {
            config,
            writer,
            pseudonymiser,
            status,
            shutdown,
        } = self;
        // The received queue is bounded by our window (with 3.1.1 the broker's own in-flight
        // limit is its window): a broker that sends past its Receive Maximum (Mosquitto 2.0
        // delivering an offline session's backlog) would otherwise fill memory with the whole
        // backlog. When it is full the poll loop waits, the socket stops being read and TCP
        // holds the broker back. Acks never wait on the poll loop: what does not fit
        // rumqttc's request channel waits in the `AckQueue`, 8 bytes an ack (see acks.rs).
        let (received_tx, received_rx) = mpsc::channel(config.max_unacked.max(1));
        // The bytes of what is inside, bounded like the count: the poll loop takes a message's
        // payload size from this before handing it on and the pipeline gives it back when the
        // message is acknowledged (or dropped). At least one largest message fits.
        let budget = ByteBudget::new(
            config
                .max_unacked_bytes
                .max(config.limits.max_payload_bytes),
        );
        let stop = CancellationToken::new();
        let (client, eventloop) = P::open(options, CHANNEL_CAPACITY);
        let acks = Arc::new(AckQueue::new(client.clone()));
        let poll = PollLoop::<P> {
            client: client.clone(),
            acks: acks.clone(),
            budget,
            topics: config.topics(),
            received: received_tx,
            link: Link::new(status.clone()),
            shutdown: shutdown.clone(),
            stop: stop.clone(),
        };
        let poller = Poller::spawn(poll.run(eventloop))?;
        let ctx = Arc::new(Context {
            config,
            pseudonymiser,
            status: status.clone(),
        });
        let result = crate::pipeline::run(ctx, writer, acks.clone(), received_rx, shutdown).await;
        let disconnect = leave(&acks, || P::disconnect(&client)).await;
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
        status.subscribed.store(false, Ordering::SeqCst);
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
    Ok(tls_transport_from_pem(ca, client_auth))
}

/// TLS to the broker, trusting the PEM CA `ca`, with a PEM client certificate and key for
/// mutual TLS. Ingest and the simulator connect through this one function.
pub fn tls_transport_from_pem(ca: Vec<u8>, client_auth: Option<(Vec<u8>, Vec<u8>)>) -> Transport {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Transport::tls_with_config(TlsConfiguration::Simple {
        ca,
        alpn: None,
        client_auth,
    })
}

/// How long a clean stop waits for the acks of what was written to reach the connection.
const ACK_DRAIN: Duration = Duration::from_secs(10);

/// Ends the session cleanly: once every ack is written (or `ACK_DRAIN` passed), queues the
/// DISCONNECT behind them. Whether it was queued.
async fn leave<C: AckClient>(acks: &AckQueue<C>, disconnect: impl FnOnce() -> bool) -> bool {
    if !acks.drained(ACK_DRAIN).await {
        tracing::warn!("stopping with acks not yet written: the broker redelivers those messages");
    }
    disconnect()
}
