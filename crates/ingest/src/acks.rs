//! Acks on their way to the broker, kept as packet ids until the connection can take them.
//!
//! rumqttc's request channel is drained only by its event loop, which writes one request
//! per turn while a read turn takes up to ten messages, and picks between the two at random.
//! Under a broker that sends far past our window (Mosquitto 2.0 delivering an offline
//! session's backlog at once) acks fall behind by most of the backlog. Queued as rumqttc
//! requests they cost about 230 bytes each (226 MB of heap at a million-message backlog);
//! here the overflow costs the 8 bytes of an [`AckToken`]. The channel itself holds at most
//! [`IN_CHANNEL`] of our acks, so subscriptions and the DISCONNECT always find room.
//!
//! Order is kept: an ack goes straight to the channel only while nothing waits before it,
//! and the poll loop moves waiting acks over, oldest first, after every event.
//!
//! A lost connection ends a generation: rumqttc drops the acks still in its channel (the
//! broker redelivers those messages to the next connection, with their packet ids, and the
//! store absorbs the copy), so the waiting acks of that connection are dropped too and acks
//! of its messages that arrive later are not sent on the new one, where their packet ids may
//! already name other messages.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;

use crate::metrics;
use crate::pipeline::{AckError, Acker};

/// Most of our acks in rumqttc's request channel at once.
pub(crate) const IN_CHANNEL: u64 = 1024;

/// The request channel's capacity: our acks and room for the session's own requests
/// (subscriptions on every connect, the DISCONNECT).
pub(crate) const CHANNEL_CAPACITY: usize = IN_CHANNEL as usize + 64;

/// What acknowledging one message needs: its connection, packet id and QoS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AckToken {
    pub generation: u32,
    pub pkid: u16,
    pub qos: u8,
}

/// What the pipeline carries for each message until it is acknowledged: its ack, and its
/// share of the bytes ingest may hold (`IngestConfig::max_unacked_bytes`), given back when
/// the batch is done with the message.
#[derive(Debug)]
pub(crate) struct Held {
    pub ack: AckToken,
    /// Held, never read: dropping it gives the bytes back.
    pub _bytes: Option<tokio::sync::OwnedSemaphorePermit>,
}

/// The two rumqttc clients, as far as acking goes.
pub(crate) trait AckClient: Send + Sync + 'static {
    /// Queues the ack in rumqttc's request channel; false when it has no room (or is gone).
    fn try_ack(&self, pkid: u16, qos: u8) -> bool;
}

impl AckClient for v5::AsyncClient {
    fn try_ack(&self, pkid: u16, qos: u8) -> bool {
        use v5::mqttbytes::v5::Publish;
        let token = Publish {
            dup: false,
            qos: v5_qos(qos),
            retain: false,
            topic: Bytes::new(),
            pkid,
            payload: Bytes::new(),
            properties: None,
        };
        v5::AsyncClient::try_ack(self, &token).is_ok()
    }
}

impl AckClient for rumqttc::AsyncClient {
    fn try_ack(&self, pkid: u16, qos: u8) -> bool {
        let token = rumqttc::Publish {
            dup: false,
            qos: v311_qos(qos),
            retain: false,
            topic: String::new(),
            pkid,
            payload: Bytes::new(),
        };
        rumqttc::AsyncClient::try_ack(self, &token).is_ok()
    }
}

fn v5_qos(qos: u8) -> v5::mqttbytes::QoS {
    match qos {
        0 => v5::mqttbytes::QoS::AtMostOnce,
        1 => v5::mqttbytes::QoS::AtLeastOnce,
        _ => v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn v311_qos(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

/// The acks of one session, shared by the committer (which adds them in arrival order) and
/// the poll loop (which moves them into the connection and sees them written).
#[derive(Debug)]
pub(crate) struct AckQueue<C> {
    client: C,
    /// Acks waiting for room in the channel, oldest first.
    waiting: parking_lot::Mutex<VecDeque<AckToken>>,
    /// `waiting.len()`, read without the lock.
    waiting_len: AtomicUsize,
    generation: AtomicU32,
    /// Acks of this generation put into the channel, and seen written by the poll loop.
    handed: AtomicU64,
    written: AtomicU64,
    /// The poll loop has ended: nothing will ever drain the channel.
    closed: AtomicBool,
}

impl<C: AckClient> AckQueue<C> {
    pub(crate) fn new(client: C) -> AckQueue<C> {
        AckQueue {
            client,
            waiting: parking_lot::Mutex::new(VecDeque::new()),
            waiting_len: AtomicUsize::new(0),
            generation: AtomicU32::new(0),
            handed: AtomicU64::new(0),
            written: AtomicU64::new(0),
            closed: AtomicBool::new(false),
        }
    }

    /// The token for a message received now, on the current connection.
    pub(crate) fn token(&self, pkid: u16, qos: u8) -> AckToken {
        AckToken {
            generation: self.generation.load(Ordering::Acquire),
            pkid,
            qos,
        }
    }

    fn has_room(&self) -> bool {
        self.handed
            .load(Ordering::Acquire)
            .saturating_sub(self.written.load(Ordering::Acquire))
            < IN_CHANNEL
    }

    /// Puts `token` into the channel if it has room, and counts it.
    fn hand(&self, token: AckToken) -> bool {
        if token.qos == 0 {
            // QoS 0 has no ack.
            return true;
        }
        if !self.has_room() || !self.client.try_ack(token.pkid, token.qos) {
            return false;
        }
        self.handed.fetch_add(1, Ordering::AcqRel);
        true
    }

    fn set_waiting(&self, waiting: &VecDeque<AckToken>) {
        self.waiting_len.store(waiting.len(), Ordering::Release);
        metrics::ACKS_WAITING.set(waiting.len() as i64);
    }

    /// Adds one ack, after every ack added before it. Never waits.
    fn push(&self, token: AckToken) -> Result<(), AckError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(AckError::Closed);
        }
        let mut waiting = self.waiting.lock();
        if token.generation != self.generation.load(Ordering::Acquire) {
            // Its connection is gone: the broker redelivers the message.
            return Ok(());
        }
        if waiting.is_empty() && self.hand(token) {
            return Ok(());
        }
        waiting.push_back(token);
        self.set_waiting(&waiting);
        Ok(())
    }

    /// Poll loop, after every event: moves waiting acks into the channel while it has room.
    pub(crate) fn move_waiting(&self) {
        if self.waiting_len.load(Ordering::Acquire) == 0 {
            return;
        }
        let mut waiting = self.waiting.lock();
        while let Some(&token) = waiting.front() {
            if !self.hand(token) {
                break;
            }
            waiting.pop_front();
        }
        self.set_waiting(&waiting);
    }

    /// Poll loop: rumqttc wrote one of our acks.
    pub(crate) fn written(&self) {
        self.written.fetch_add(1, Ordering::AcqRel);
    }

    /// Poll loop: the connection is lost and rumqttc dropped the acks in its channel. Those
    /// messages, and every one of this connection not yet acknowledged, come again.
    pub(crate) fn connection_lost(&self) {
        let mut waiting = self.waiting.lock();
        self.generation.fetch_add(1, Ordering::AcqRel);
        waiting.clear();
        self.handed.store(0, Ordering::Release);
        self.written.store(0, Ordering::Release);
        self.set_waiting(&waiting);
    }

    /// Poll loop, on its way out.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
    }

    /// Every ack added so far has been written to the connection (or dropped with it).
    pub(crate) fn all_written(&self) -> bool {
        self.waiting_len.load(Ordering::Acquire) == 0
            && self.written.load(Ordering::Acquire) >= self.handed.load(Ordering::Acquire)
    }

    /// Waits until [`AckQueue::all_written`], the poll loop ends, or `within` passes.
    pub(crate) async fn drained(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.all_written() {
                return true;
            }
            if self.closed.load(Ordering::Acquire) || tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

impl<C: AckClient> Acker for std::sync::Arc<AckQueue<C>> {
    type Token = Held;

    fn ack(&self, token: &Held) -> Result<(), AckError> {
        self.push(token.ack)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use parking_lot::Mutex;

    use super::*;

    /// A request channel of fixed room that records what was queued.
    #[derive(Default)]
    struct Channel {
        room: Mutex<usize>,
        queued: Mutex<Vec<u16>>,
    }

    impl AckClient for Arc<Channel> {
        fn try_ack(&self, pkid: u16, _qos: u8) -> bool {
            let mut room = self.room.lock();
            if *room == 0 {
                return false;
            }
            *room -= 1;
            self.queued.lock().push(pkid);
            true
        }
    }

    fn queue(room: usize) -> (Arc<AckQueue<Arc<Channel>>>, Arc<Channel>) {
        let channel = Arc::new(Channel::default());
        *channel.room.lock() = room;
        (Arc::new(AckQueue::new(channel.clone())), channel)
    }

    /// The event loop writes `n` queued acks.
    fn write(q: &AckQueue<Arc<Channel>>, channel: &Channel, n: usize) {
        *channel.room.lock() += n;
        for _ in 0..n {
            q.written();
        }
        q.move_waiting();
    }

    #[test]
    fn acks_wait_compactly_and_leave_in_arrival_order() {
        let (q, channel) = queue(2);
        for pkid in 1..=5 {
            q.ack(&held(q.token(pkid, 1))).expect("queued");
        }
        assert_eq!(*channel.queued.lock(), vec![1, 2]);
        assert!(!q.all_written());
        write(&q, &channel, 2);
        assert_eq!(*channel.queued.lock(), vec![1, 2, 3, 4]);
        // A new ack goes behind the one still waiting, not past it.
        q.ack(&held(q.token(6, 1))).expect("queued");
        write(&q, &channel, 2);
        write(&q, &channel, 1);
        assert_eq!(*channel.queued.lock(), vec![1, 2, 3, 4, 5, 6]);
        write(&q, &channel, 1);
        assert!(q.all_written());
    }

    #[test]
    fn never_more_than_the_channel_share_at_once() {
        let (q, channel) = queue(usize::MAX);
        for pkid in 0..2000 {
            q.ack(&held(q.token(pkid, 1))).expect("queued");
        }
        assert_eq!(channel.queued.lock().len(), IN_CHANNEL as usize);
        assert_eq!(q.waiting_len.load(Ordering::Relaxed), 2000 - 1024);
    }

    #[test]
    fn a_lost_connection_drops_its_acks_and_later_ones_of_its_messages() {
        let (q, channel) = queue(1);
        let old = q.token(1, 1);
        q.ack(&held(old)).expect("queued");
        q.ack(&held(q.token(2, 1))).expect("queued");
        q.connection_lost();
        *channel.room.lock() = 10;
        q.move_waiting();
        // The old connection's late ack is not sent on the new one.
        q.ack(&held(q.token(3, 1).with_generation(old.generation)))
            .expect("dropped quietly");
        q.ack(&held(q.token(4, 1))).expect("queued");
        assert_eq!(*channel.queued.lock(), vec![1, 4]);
    }

    #[test]
    fn qos_0_needs_no_ack_and_a_closed_loop_takes_none() {
        let (q, channel) = queue(0);
        q.ack(&held(q.token(1, 0))).expect("nothing to send");
        assert!(q.all_written());
        q.close();
        assert_eq!(q.ack(&held(q.token(2, 1))), Err(AckError::Closed));
        assert!(channel.queued.lock().is_empty());
    }

    fn held(ack: AckToken) -> Held {
        Held { ack, _bytes: None }
    }

    impl AckToken {
        fn with_generation(mut self, generation: u32) -> AckToken {
            self.generation = generation;
            self
        }
    }
}
