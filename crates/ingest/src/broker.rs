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
    /// Without credentials anyone who reaches it may publish, so it listens on loopback
    /// only: any other address is refused (use [`EmbeddedBroker::start_with_credentials`]).
    pub fn start(
        listen: SocketAddr,
        max_payload: usize,
    ) -> Result<EmbeddedBroker, EmbeddedBrokerError> {
        if !listen.ip().is_loopback() {
            return Err(EmbeddedBrokerError::Config(format!(
                "broker.url {listen}: the embedded broker without credentials listens on a \
                 loopback address only (127.0.0.1 or ::1); set broker.username and \
                 broker.password to listen elsewhere"
            )));
        }
        EmbeddedBroker::launch(listen, max_payload, None)
    }

    /// Starts rumqttd on `listen`, any address, accepting only clients that log in with
    /// this username and password.
    pub fn start_with_credentials(
        listen: SocketAddr,
        max_payload: usize,
        username: &str,
        password: &str,
    ) -> Result<EmbeddedBroker, EmbeddedBrokerError> {
        if username.is_empty() || password.is_empty() {
            return Err(EmbeddedBrokerError::Config(
                "the embedded broker needs a non-empty username and password".into(),
            ));
        }
        EmbeddedBroker::launch(
            listen,
            max_payload,
            Some((username.to_string(), password.to_string())),
        )
    }

    fn launch(
        listen: SocketAddr,
        max_payload: usize,
        credentials: Option<(String, String)>,
    ) -> Result<EmbeddedBroker, EmbeddedBrokerError> {
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
        let mut config: rumqttd::Config =
            toml::from_str(&text).map_err(|e| EmbeddedBrokerError::Config(e.to_string()))?;
        if let Some((user, pass)) = credentials {
            // Set on the parsed config, not in the TOML text: no escaping of the password.
            for server in config.v4.iter_mut().flat_map(|m| m.values_mut()) {
                server.connections.auth = Some([(user.clone(), pass.clone())].into());
            }
        }
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
    fn refuses_a_public_address_without_credentials() {
        let public: SocketAddr = "0.0.0.0:18830".parse().expect("addr");
        let e = EmbeddedBroker::start(public, 1 << 16).expect_err("refused");
        assert!(e.to_string().contains("loopback"), "{e}");
        let e = EmbeddedBroker::start_with_credentials(public, 1 << 16, "", "")
            .expect_err("empty credentials refused");
        assert!(e.to_string().contains("username"), "{e}");
    }
}
