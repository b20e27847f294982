//! A QoS 1 publisher with a ledger: every message gets an id, and the ledger records which
//! ids the broker acknowledged (a PUBACK to the publisher means the broker has it).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

/// What was published and what the broker acknowledged.
#[derive(Debug, Default)]
pub struct Ledger {
    /// Ids handed to the client, not yet written to the broker.
    queued: VecDeque<u64>,
    /// Packet id → message id of messages written, not yet acknowledged.
    inflight: HashMap<u16, u64>,
    /// Ids the broker acknowledged.
    pub acked: BTreeSet<u64>,
}

/// A synchronous QoS 1 publisher on its own small runtime.
#[derive(Debug)]
pub struct Publisher {
    rt: tokio::runtime::Runtime,
    client: AsyncClient,
    ledger: Arc<Mutex<Ledger>>,
    acked: tokio::sync::watch::Receiver<u64>,
    /// Messages published so far (the next message id).
    pub sent: u64,
}

impl Publisher {
    pub fn connect(port: u16, id: &str) -> Publisher {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let mut options = MqttOptions::new(id, "127.0.0.1", port);
        options.set_inflight(500);
        options.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(options, 1000);
        let ledger = Arc::new(Mutex::new(Ledger::default()));
        let (tx, acked) = tokio::sync::watch::channel(0u64);
        let book = ledger.clone();
        rt.spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                        let mut l = book.lock().expect("ledger");
                        // A retransmission after a reconnect reuses its packet id.
                        if !l.inflight.contains_key(&pkid)
                            && let Some(id) = l.queued.pop_front()
                        {
                            l.inflight.insert(pkid, id);
                        }
                    }
                    Ok(Event::Incoming(Packet::PubAck(ack))) => {
                        let mut l = book.lock().expect("ledger");
                        if let Some(id) = l.inflight.remove(&ack.pkid) {
                            l.acked.insert(id);
                        }
                        let _ = tx.send(l.acked.len() as u64);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        Publisher {
            rt,
            client,
            ledger,
            acked,
            sent: 0,
        }
    }

    /// Publishes with QoS 1 and returns the message's id in the ledger.
    pub fn publish(&mut self, topic: &str, payload: Vec<u8>) -> u64 {
        let id = self.sent;
        self.ledger.lock().expect("ledger").queued.push_back(id);
        let client = self.client.clone();
        let topic = topic.to_string();
        self.rt
            .block_on(async move {
                client
                    .publish(topic, QoS::AtLeastOnce, false, payload)
                    .await
            })
            .expect("publish");
        self.sent += 1;
        id
    }

    /// The ids the broker acknowledged so far.
    pub fn acked(&self) -> BTreeSet<u64> {
        self.ledger.lock().expect("ledger").acked.clone()
    }

    /// Blocks until the broker acknowledged everything published so far.
    pub fn wait_acked(&mut self) {
        let target = self.sent;
        let mut acked = self.acked.clone();
        let done = self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(60), acked.wait_for(|n| *n >= target))
                .await
                .map(|r| r.is_ok())
        });
        match done {
            Ok(true) => {}
            Ok(false) => panic!("publisher event loop ended"),
            Err(_) => panic!("the broker did not acknowledge everything within 60 s"),
        }
    }
}
