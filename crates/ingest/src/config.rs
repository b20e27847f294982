//! What ingest is told: broker, session, topics, batching and decoding bounds.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use meterstand_codec::Limits;
use meterstand_model::Calendar;

use crate::{BrokerUrl, IngestError};

/// Client certificate and CA files for `mqtts://`.
#[derive(Debug, Clone, Default)]
pub struct TlsFiles {
    pub ca_file: Option<PathBuf>,
    pub client_cert: Option<PathBuf>,
    pub client_key: Option<PathBuf>,
}

/// The MQTT protocol version ingest speaks (`broker.protocol`: `"5"` or `"3.1.1"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MqttVersion {
    /// MQTT 5: the broker learns our Maximum Packet Size (it never sends us a bigger packet)
    /// and our Receive Maximum (it never has more unacknowledged messages out to us).
    #[default]
    #[serde(rename = "5")]
    V5,
    /// MQTT 3.1.1, for brokers without MQTT 5, such as the embedded rumqttd. The client then
    /// accepts packets up to the MQTT maximum (256 MB) so that an oversize message is a
    /// counted reject rather than a connection dropped and redelivered forever; set the
    /// broker's own message size limit to keep such packets away.
    #[serde(rename = "3.1.1")]
    V311,
}

/// Largest Receive Maximum MQTT 5 can state (a two-byte integer).
pub const MAX_RECEIVE_MAXIMUM: usize = u16::MAX as usize;

/// Largest P1 boundary window: a quarter-hour (beyond it, every telegram lies in a window).
const MAX_P1_WINDOW: Duration = Duration::from_secs(15 * 60);

/// Ingest settings. `Debug` redacts the broker password.
#[derive(Clone)]
pub struct IngestConfig {
    /// The broker, parsed once (config, simulator and ingest share [`BrokerUrl`]).
    pub url: BrokerUrl,
    pub client_id: String,
    pub topic_prefix: String,
    pub username: Option<String>,
    pub password: Option<String>,
    pub tls: TlsFiles,
    pub mqtt_version: MqttVersion,
    /// MQTT 5 session expiry after a disconnect; `None`: never (as a 3.1.1 persistent
    /// session). While the session lives the broker keeps what we have not acknowledged.
    pub session_expiry: Option<Duration>,
    pub limits: Limits,
    /// A batch is written when it holds this many messages…
    pub batch_max_messages: usize,
    /// …or when its first message has waited this long.
    pub batch_max_delay: Duration,
    /// Messages received and not yet acknowledged, at most: with MQTT 5 this is the Receive
    /// Maximum stated in CONNECT (1..=65535), so the broker enforces it; with 3.1.1 it is
    /// the received queue's capacity and the broker's in-flight window applies.
    pub max_unacked: usize,
    /// Payload bytes of the messages received and not yet acknowledged, at most: the poll
    /// loop stops reading from the broker (TCP holds it back) until acks free some. The
    /// service gives it `store.memory`'s ingest share.
    pub max_unacked_bytes: usize,
    /// A failed store write is retried this many times (with backoff from 50 ms to 5 s)
    /// before ingest stops with an error and the process exits for its supervisor to restart
    /// it (`ingest.write_retries`): a disk that is briefly full or slow is ridden out, a
    /// store that stays broken is not hidden.
    pub write_retries: u32,
    /// How long after a quarter-hour boundary a P1 telegram still gives that boundary's
    /// electricity reading (`[p1] boundary_window`).
    pub p1_boundary_window: Duration,
    pub keep_alive: Duration,
    pub calendar: Calendar,
    /// Where each correction gets its audit line before its batch is acknowledged
    /// (pseudonym, register, time, tiers; never a value); `None`: corrections are stored
    /// and counted but not audited (tests).
    pub audit: Option<meterstand_audit::AuditLog>,
    /// Whether `{prefix}/{ean}/correction/*` messages replace stored values
    /// (`ingest.corrections`, off by default). Off, each is a counted reject
    /// (`corrections_disabled`), acknowledged and never applied: a correction rewrites
    /// billing values, so it is taken only where the broker's ACL lets only the metering
    /// company's correction account publish there (docs/operations.md, "The broker").
    pub corrections: bool,
}

impl fmt::Debug for IngestConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IngestConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("topic_prefix", &self.topic_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("tls", &self.tls)
            .field("mqtt_version", &self.mqtt_version)
            .field("session_expiry", &self.session_expiry)
            .field("limits", &self.limits)
            .field("batch_max_messages", &self.batch_max_messages)
            .field("batch_max_delay", &self.batch_max_delay)
            .field("max_unacked", &self.max_unacked)
            .field("max_unacked_bytes", &self.max_unacked_bytes)
            .field("write_retries", &self.write_retries)
            .field("p1_boundary_window", &self.p1_boundary_window)
            .field("keep_alive", &self.keep_alive)
            .field("calendar", &self.calendar)
            .field("audit", &self.audit.as_ref().map(|a| a.path()))
            .field("corrections", &self.corrections)
            .finish()
    }
}

impl IngestConfig {
    pub fn new(url: BrokerUrl) -> IngestConfig {
        IngestConfig {
            url,
            client_id: "meterstand-ingest".into(),
            topic_prefix: "meters".into(),
            username: None,
            password: None,
            tls: TlsFiles::default(),
            mqtt_version: MqttVersion::V5,
            session_expiry: None,
            limits: Limits::default(),
            batch_max_messages: 4000,
            batch_max_delay: Duration::from_millis(20),
            max_unacked: 20_000,
            max_unacked_bytes: 32 << 20,
            write_retries: 5,
            p1_boundary_window: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            calendar: Calendar::amsterdam(),
            audit: None,
            corrections: false,
        }
    }

    /// The subscriptions: every payload format under the prefix, and the correction topics.
    /// One instance holds every connection: readings, consent and the day's boundary
    /// readings of one connection must meet in one store (docs/design.md, "Scaling out").
    pub fn topics(&self) -> Vec<String> {
        ["json", "bincode", "p1", "correction/+"]
            .iter()
            .map(|f| format!("{}/+/{f}", self.topic_prefix))
            .collect()
    }

    /// Checks the bounds `start` relies on: the one place ingest's settings are validated
    /// (the service's config check calls it too). The error names the key, the value and
    /// what is allowed.
    pub fn validate(&self) -> Result<(), IngestError> {
        let bad = |key: &'static str, value: &dyn std::fmt::Display, allowed: &str| {
            Err(IngestError::Config {
                key,
                value: value.to_string(),
                allowed: allowed.into(),
            })
        };
        let topic_ok = |s: &str| {
            !s.is_empty()
                && !s.contains(['+', '#', '$'])
                && !s.starts_with('/')
                && !s.ends_with('/')
        };
        if self.client_id.is_empty() || self.client_id.len() > 64 {
            return bad("broker.client_id", &self.client_id, "1 to 64 characters");
        }
        if !topic_ok(&self.topic_prefix) {
            let allowed = "a topic without wildcards, $, or leading/trailing /";
            return bad("broker.topic_prefix", &self.topic_prefix, allowed);
        }
        let payload = self.limits.max_payload_bytes;
        if !(256..=16 << 20).contains(&payload) {
            return bad("ingest.max_payload_bytes", &payload, "256 to 16777216");
        }
        let readings = self.limits.max_readings;
        if !(1..=100_000).contains(&readings) {
            return bad("ingest.max_readings_per_message", &readings, "1 to 100000");
        }
        if !(1..=100_000).contains(&self.batch_max_messages) {
            return bad(
                "ingest.batch_max_messages",
                &self.batch_max_messages,
                "1 to 100000",
            );
        }
        if self.batch_max_delay > Duration::from_secs(10) {
            let delay = format!("{:?}", self.batch_max_delay);
            return bad("ingest.batch_max_delay", &delay, "at most 10s");
        }
        if !(1..=MAX_RECEIVE_MAXIMUM).contains(&self.max_unacked) {
            let allowed = "1 to 65535 (the MQTT 5 Receive Maximum)";
            return bad("ingest.max_unacked", &self.max_unacked, allowed);
        }
        if self.write_retries > 100 {
            return bad("ingest.write_retries", &self.write_retries, "0 to 100");
        }
        if self.p1_boundary_window.is_zero() || self.p1_boundary_window > MAX_P1_WINDOW {
            let window = format!("{:?}", self.p1_boundary_window);
            return bad("p1.boundary_window", &window, "more than 0 and at most 15m");
        }
        Ok(())
    }

    /// The MQTT 5 Receive Maximum: our acknowledgement window.
    pub(crate) fn receive_maximum(&self) -> u16 {
        u16::try_from(self.max_unacked.clamp(1, MAX_RECEIVE_MAXIMUM)).unwrap_or(u16::MAX)
    }

    /// The MQTT 5 Maximum Packet Size: a payload up to the limit plus room for the topic
    /// and properties. Anything between the payload limit and this arrives and is counted
    /// as `oversize`; anything bigger the broker never sends us.
    pub(crate) fn max_packet_size(&self) -> u32 {
        const HEADROOM: usize = 64 * 1024;
        u32::try_from(self.limits.max_payload_bytes.saturating_add(HEADROOM)).unwrap_or(u32::MAX)
    }

    /// The boundary window as `p1::place` takes it (`validate` keeps it within 15 min).
    pub(crate) fn p1_window(&self) -> jiff::SignedDuration {
        jiff::SignedDuration::try_from(self.p1_boundary_window.min(MAX_P1_WINDOW))
            .unwrap_or(meterstand_codec::p1::DEFAULT_BOUNDARY_WINDOW)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts_the_password() {
        let mut c = IngestConfig::new(BrokerUrl::mqtt("127.0.0.1", 1883));
        c.username = Some("ingest".into());
        c.password = Some("s3cret-broker-pass".into());
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret-broker-pass"), "{shown}");
        assert!(shown.contains("<redacted>"), "{shown}");
        assert!(shown.contains("ingest"), "{shown}");
        let shown = format!("{c:#?}");
        assert!(!shown.contains("s3cret-broker-pass"), "{shown}");
    }

    #[test]
    fn subscribes_to_every_format_including_p1() {
        let c = IngestConfig::new(BrokerUrl::mqtt("127.0.0.1", 1883));
        assert_eq!(
            c.topics(),
            [
                "meters/+/json",
                "meters/+/bincode",
                "meters/+/p1",
                "meters/+/correction/+"
            ]
        );
    }

    #[test]
    fn validate_names_the_key() {
        let mut c = IngestConfig::new(BrokerUrl::mqtt("127.0.0.1", 1883));
        assert!(c.validate().is_ok());
        c.max_unacked = 70_000;
        let e = c.validate().expect_err("over the MQTT 5 limit").to_string();
        assert!(
            e.contains("ingest.max_unacked") && e.contains("70000"),
            "{e}"
        );
        c.max_unacked = 100;
        c.p1_boundary_window = Duration::from_secs(3600);
        let e = c.validate().expect_err("window too wide").to_string();
        assert!(e.contains("p1.boundary_window"), "{e}");
    }
}
