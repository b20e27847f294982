//! An in-process MQTT broker (rumqttd) for the demo and single-box use; behind the
//! `embedded-broker` feature so production builds do not compile rumqttd. It speaks MQTT
//! 3.1.1 only: run ingest against it with `MqttVersion::V311`.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum EmbeddedBrokerError {
    #[error("embedded broker configuration: {0}")]
    Config(String),
    #[error("cannot start the embedded broker thread: {0}")]
    Thread(std::io::Error),
}

/// Handle of a running embedded broker. rumqttd offers no stop: it lives as long as the process.
#[derive(Debug)]
pub struct EmbeddedBroker {
    pub listen: SocketAddr,
}

impl EmbeddedBroker {
    /// Starts rumqttd on `listen` (MQTT 3.1.1), accepting payloads up to `max_payload` bytes.
    /// It has no login: anyone who reaches it may publish, so it listens on loopback only
    /// and any other address is refused. Run Mosquitto for anything beyond one machine.
    pub fn start(
        listen: SocketAddr,
        max_payload: usize,
    ) -> Result<EmbeddedBroker, EmbeddedBrokerError> {
        if !listen.ip().is_loopback() {
            return Err(EmbeddedBrokerError::Config(format!(
                "broker.url {listen}: the embedded broker has no login and listens on a \
                 loopback address only (127.0.0.1 or ::1); run Mosquitto to take readings \
                 from other machines"
            )));
        }
        let text = format!(
            r#"
id = 0
[router]
id = 0
max_connections = 10010
max_outgoing_packet_count = 200
max_segment_size = 104857600
max_segment_count = 10
[v4.1]
name = "v4-1"
listen = "{listen}"
next_connection_delay_ms = 1
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {max_payload}
max_inflight_count = 500
dynamic_filters = true
"#
        );
        let config: rumqttd::Config =
            toml::from_str(&text).map_err(|e| EmbeddedBrokerError::Config(e.to_string()))?;
        std::thread::Builder::new()
            .name("meterstand-embedded-broker".into())
            .spawn(move || {
                let mut broker = rumqttd::Broker::new(config);
                if let Err(e) = broker.start() {
                    tracing::error!(error = %e, "embedded broker stopped");
                }
            })
            .map_err(EmbeddedBrokerError::Thread)?;
        Ok(EmbeddedBroker { listen })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_a_public_address() {
        let public: SocketAddr = "0.0.0.0:18830".parse().expect("addr");
        let e = EmbeddedBroker::start(public, 1 << 16).expect_err("refused");
        assert!(e.to_string().contains("loopback"), "{e}");
    }
}
