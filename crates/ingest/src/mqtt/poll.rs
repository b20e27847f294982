//! The poll loop, written once for both protocol versions: each version's rumqttc types are
//! reduced to a [`Step`] by its [`Protocol`], and one loop hands publishes to the pipeline,
//! subscribes on every connect, tracks the acknowledged subscriptions that `/readyz` reports
//! and reconnects with backoff.

use std::fmt::Display;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::{Outgoing, v5};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::acks::{AckClient, AckQueue, Held};
use crate::backoff::Backoff;
use crate::pipeline::Received;
use crate::{IngestStatus, metrics};

/// First and longest pause between connection attempts.
const RECONNECT_BACKOFF: (Duration, Duration) =
    (Duration::from_millis(100), Duration::from_secs(10));

/// A connection that lasted this long counts as healthy: the next loss starts the backoff
/// again from its first step. Shorter ones (a broker that accepts and drops us at once) keep
/// backing off.
const STABLE_CONNECTION: Duration = Duration::from_secs(30);

/// How long the poll loop reads on after our DISCONNECT, for the broker to close: closing a
/// socket with unread data resets the connection, and the broker may then drop the acks
/// and the DISCONNECT still in its receive buffer.
const CLOSE_DRAIN: Duration = Duration::from_secs(1);

/// What one turn of a protocol's event loop means to ingest.
pub(super) enum Step {
    Connected {
        session_present: bool,
    },
    Publish(Publish),
    /// A SUBACK for one of our subscriptions; `refused` when the broker declined it or
    /// granted QoS 0 (delivery without acknowledgement: messages could be lost).
    Subscribed {
        refused: bool,
    },
    /// The broker ended the session (MQTT 5 only), with its reason.
    BrokerDisconnect(String),
    /// An ack of ours reached the connection.
    AckWritten,
    /// Our DISCONNECT reached the connection.
    DisconnectWritten,
    Other,
    Failed(String),
}

/// An incoming publish, as both versions have it.
pub(super) struct Publish {
    pub topic: Bytes,
    pub payload: Bytes,
    pub pkid: u16,
    pub qos: u8,
}

/// One protocol version's rumqttc client and event loop.
pub(super) trait Protocol: 'static {
    type Options: Send;
    type Client: AckClient + Clone;
    type EventLoop: Send + 'static;

    fn open(options: Self::Options, capacity: usize) -> (Self::Client, Self::EventLoop);
    fn poll(eventloop: &mut Self::EventLoop) -> impl Future<Output = Step> + Send;
    /// Queues a QoS 1 subscription.
    fn subscribe(client: &Self::Client, topic: &str) -> Result<(), String>;
    /// Queues a DISCONNECT; whether it was queued.
    fn disconnect(client: &Self::Client) -> bool;
}

/// MQTT 5.
pub(super) struct V5;

impl Protocol for V5 {
    type Options = v5::MqttOptions;
    type Client = v5::AsyncClient;
    type EventLoop = v5::EventLoop;

    fn open(options: v5::MqttOptions, capacity: usize) -> (v5::AsyncClient, v5::EventLoop) {
        v5::AsyncClient::new(options, capacity)
    }

    async fn poll(eventloop: &mut v5::EventLoop) -> Step {
        use v5::Event;
        use v5::mqttbytes::QoS;
        use v5::mqttbytes::v5::{Packet, SubscribeReasonCode};
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => Step::Connected {
                session_present: ack.session_present,
            },
            Ok(Event::Incoming(Packet::Publish(p))) => Step::Publish(Publish {
                topic: p.topic,
                payload: p.payload,
                pkid: p.pkid,
                qos: p.qos as u8,
            }),
            Ok(Event::Incoming(Packet::SubAck(ack))) => Step::Subscribed {
                refused: ack.return_codes.iter().any(|c| {
                    !matches!(
                        c,
                        SubscribeReasonCode::Success(QoS::AtLeastOnce | QoS::ExactlyOnce)
                    )
                }),
            },
            Ok(Event::Incoming(Packet::Disconnect(d))) => {
                Step::BrokerDisconnect(format!("{:?}", d.reason_code))
            }
            Ok(Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_))) => Step::AckWritten,
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Step::DisconnectWritten,
            Ok(_) => Step::Other,
            Err(e) => Step::Failed(e.to_string()),
        }
    }

    fn subscribe(client: &v5::AsyncClient, topic: &str) -> Result<(), String> {
        client
            .try_subscribe(topic, v5::mqttbytes::QoS::AtLeastOnce)
            .map_err(|e| e.to_string())
    }

    fn disconnect(client: &v5::AsyncClient) -> bool {
        client.try_disconnect().is_ok()
    }
}

/// MQTT 3.1.1, for brokers without 5.
pub(super) struct V311;

impl Protocol for V311 {
    type Options = rumqttc::MqttOptions;
    type Client = rumqttc::AsyncClient;
    type EventLoop = rumqttc::EventLoop;

    fn open(
        options: rumqttc::MqttOptions,
        capacity: usize,
    ) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
        rumqttc::AsyncClient::new(options, capacity)
    }

    async fn poll(eventloop: &mut rumqttc::EventLoop) -> Step {
        use rumqttc::{Event, Packet, QoS, SubscribeReasonCode};
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => Step::Connected {
                session_present: ack.session_present,
            },
            Ok(Event::Incoming(Packet::Publish(p))) => Step::Publish(Publish {
                topic: Bytes::from(p.topic),
                payload: p.payload,
                pkid: p.pkid,
                qos: p.qos as u8,
            }),
            Ok(Event::Incoming(Packet::SubAck(ack))) => Step::Subscribed {
                refused: ack.return_codes.iter().any(|c| {
                    !matches!(
                        c,
                        SubscribeReasonCode::Success(QoS::AtLeastOnce | QoS::ExactlyOnce)
                    )
                }),
            },
            Ok(Event::Outgoing(Outgoing::PubAck(_) | Outgoing::PubRec(_))) => Step::AckWritten,
            Ok(Event::Outgoing(Outgoing::Disconnect)) => Step::DisconnectWritten,
            Ok(_) => Step::Other,
            Err(e) => Step::Failed(e.to_string()),
        }
    }

    fn subscribe(client: &rumqttc::AsyncClient, topic: &str) -> Result<(), String> {
        client
            .try_subscribe(topic, rumqttc::QoS::AtLeastOnce)
            .map_err(|e| e.to_string())
    }

    fn disconnect(client: &rumqttc::AsyncClient) -> bool {
        client.try_disconnect().is_ok()
    }
}

/// What the poll loop works with besides the event loop itself.
pub(super) struct PollLoop<P: Protocol> {
    pub client: P::Client,
    pub acks: Arc<AckQueue<P::Client>>,
    pub budget: ByteBudget,
    pub topics: Vec<String>,
    pub received: mpsc::Sender<Received<Held>>,
    pub link: Link,
    /// Ingest is stopping: publishes are left unacknowledged for the next session.
    pub shutdown: CancellationToken,
    /// The session is being closed: no reconnecting.
    pub stop: CancellationToken,
}

impl<P: Protocol> PollLoop<P> {
    /// Each incoming publish is its own event: handed on as it comes, rumqttc's state is
    /// never looked into.
    pub(super) async fn run(mut self, mut eventloop: P::EventLoop) {
        let _closed = CloseOnDrop(&self.acks);
        loop {
            let step = P::poll(&mut eventloop).await;
            self.acks.move_waiting();
            match step {
                Step::Connected { session_present } => {
                    self.link.connected(session_present, self.topics.len());
                    for topic in &self.topics {
                        if let Err(e) = P::subscribe(&self.client, topic) {
                            tracing::error!(error = %e, "cannot queue subscription");
                        }
                    }
                }
                Step::Publish(publish) => {
                    if self.shutdown.is_cancelled() {
                        // Not acknowledged: the broker keeps it for our next session.
                        continue;
                    }
                    let bytes = self.budget.take(publish.payload.len()).await;
                    let message = Received {
                        topic: publish.topic,
                        payload: publish.payload,
                        received: Instant::now(),
                        token: Held {
                            ack: self.acks.token(publish.pkid, publish.qos),
                            _bytes: bytes,
                        },
                    };
                    deliver(&self.received, message).await;
                }
                Step::Subscribed { refused } => self.link.subscribed(refused),
                Step::BrokerDisconnect(reason) => {
                    tracing::warn!(reason, "mqtt broker sent disconnect");
                }
                Step::AckWritten => self.acks.written(),
                Step::DisconnectWritten => {
                    // Read on until the broker closes, so that ours is not a reset.
                    let _ = tokio::time::timeout(CLOSE_DRAIN, async {
                        while !matches!(P::poll(&mut eventloop).await, Step::Failed(_)) {}
                    })
                    .await;
                    return;
                }
                Step::Other => {}
                Step::Failed(e) => {
                    self.acks.connection_lost();
                    if self.stop.is_cancelled()
                        || !Link::wait(self.link.failed(&e), &self.stop).await
                    {
                        return;
                    }
                }
            }
        }
    }
}

/// Connection state shared by both protocol versions: status, metrics, logs, backoff.
pub(super) struct Link {
    status: Arc<IngestStatus>,
    backoff: Backoff,
    /// Failed attempts since the last successful connection.
    failures: u64,
    ever_connected: bool,
    connected_at: Option<Instant>,
    /// SUBACKs still due on this connection before ingest is subscribed.
    subacks_due: usize,
}

impl Link {
    pub(super) fn new(status: Arc<IngestStatus>) -> Link {
        Link {
            status,
            backoff: Backoff::new(RECONNECT_BACKOFF.0, RECONNECT_BACKOFF.1),
            failures: 0,
            ever_connected: false,
            connected_at: None,
            subacks_due: 0,
        }
    }

    fn connected(&mut self, session_present: bool, subscriptions: usize) {
        tracing::info!(session_present, "connected to mqtt broker");
        self.status.connected.store(true, Ordering::SeqCst);
        self.status.subscribed.store(false, Ordering::SeqCst);
        metrics::CONNECTED.set(1);
        self.failures = 0;
        self.ever_connected = true;
        self.connected_at = Some(Instant::now());
        self.subacks_due = subscriptions;
    }

    /// A SUBACK arrived. Ingest is subscribed (and `/readyz` ready) once every subscription
    /// of this connection is acknowledged; a refused one keeps it unready.
    fn subscribed(&mut self, refused: bool) {
        if refused {
            tracing::error!(
                "broker refused a subscription or granted it below QoS 1 (check its ACL and \
                 max_qos): not ready, nothing is received"
            );
            self.subacks_due = usize::MAX;
            return;
        }
        self.subacks_due = self.subacks_due.saturating_sub(1);
        if self.subacks_due == 0 {
            tracing::info!("subscribed");
            self.status.subscribed.store(true, Ordering::SeqCst);
        }
    }

    /// Logs and counts a poll error; returns how long to wait before the next attempt.
    fn failed(&mut self, error: &dyn Display) -> Duration {
        metrics::CONNECTION_ERRORS.inc();
        self.status.subscribed.store(false, Ordering::SeqCst);
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

/// Marks the ack queue closed however the poll loop ends.
struct CloseOnDrop<'a, C: AckClient>(&'a AckQueue<C>);

impl<C: AckClient> Drop for CloseOnDrop<'_, C> {
    fn drop(&mut self) {
        self.0.close();
    }
}

/// The payload bytes ingest may hold until they are acknowledged.
#[derive(Clone)]
pub(super) struct ByteBudget {
    bytes: Arc<Semaphore>,
    total: u32,
}

impl ByteBudget {
    pub(super) fn new(total: usize) -> ByteBudget {
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
