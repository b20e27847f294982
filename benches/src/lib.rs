//! What the end-to-end benchmarks share: persistent MQTT sessions made at the broker before
//! messages are queued for them, and ended after, so that each figure measures delivery of
//! what was queued and no offline session collects copies of the next run's messages.

use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

/// Creates a persistent session subscribed to the meters topics, then leaves it offline.
pub fn prepare_session(rt: &tokio::runtime::Runtime, port: u16, client_id: &str, filter: &str) {
    rt.block_on(async {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(false);
        let (client, mut el) = AsyncClient::new(o, 10);
        client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        loop {
            if let Ok(Event::Incoming(Packet::SubAck(_))) = el.poll().await {
                break;
            }
        }
        client.disconnect().await.expect("disconnect");
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while el.poll().await.is_ok() {}
        })
        .await;
    });
}

/// Ends a persistent session (a clean-session connect discards it at the broker), so that
/// an earlier kind's offline sessions do not collect copies of the next kind's messages:
/// ingest subscribes to every format, so its session would take P1 telegrams too.
pub fn end_session(rt: &tokio::runtime::Runtime, port: u16, client_id: &str) {
    rt.block_on(async {
        let mut o = MqttOptions::new(client_id, "127.0.0.1", port);
        o.set_clean_session(true);
        let (client, mut el) = AsyncClient::new(o, 10);
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(e) => panic!("ending session {client_id}: {e}"),
            }
        }
        client.disconnect().await.expect("disconnect");
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            while el.poll().await.is_ok() {}
        })
        .await;
    });
}
