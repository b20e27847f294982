//! The checks `Config::load` runs after deserialising: values in range, keys that go together,
//! and paths that must not lie inside the data directory. Each refusal names the key.

use std::path::Path;
use std::time::Duration;

use super::{Config, ConfigError, inside};

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let value_err = |key, value: &dyn std::fmt::Display, allowed: &str| ConfigError::Value {
            key,
            value: value.to_string(),
            allowed: allowed.to_string(),
            origin: String::new(),
        };
        if self.broker.embedded {
            self.broker_listen()?;
        }
        if self.broker.url.tls && self.broker.ca_file.is_empty() {
            return Err(value_err("broker.ca_file", &"", "mqtts:// needs a CA file"));
        }
        if self.broker.client_id.is_empty() || self.broker.client_id.len() > 64 {
            return Err(value_err(
                "broker.client_id",
                &self.broker.client_id,
                "1 to 64 characters",
            ));
        }
        let topic_ok = |s: &str| {
            !s.is_empty()
                && !s.contains(['+', '#', '$'])
                && !s.starts_with('/')
                && !s.ends_with('/')
        };
        if !topic_ok(&self.broker.topic_prefix) {
            return Err(value_err(
                "broker.topic_prefix",
                &self.broker.topic_prefix,
                "a topic without wildcards, $, or leading/trailing /",
            ));
        }
        if self.broker.share_group.contains(['/', '+', '#']) {
            return Err(value_err(
                "broker.share_group",
                &self.broker.share_group,
                "a name without / + #",
            ));
        }
        if !(256..=16 * 1024 * 1024).contains(&self.ingest.max_payload_bytes) {
            return Err(value_err(
                "ingest.max_payload_bytes",
                &self.ingest.max_payload_bytes,
                "256 to 16777216",
            ));
        }
        if !(1..=100_000).contains(&self.ingest.max_readings_per_message) {
            return Err(value_err(
                "ingest.max_readings_per_message",
                &self.ingest.max_readings_per_message,
                "1 to 100000",
            ));
        }
        if !(1..=100_000).contains(&self.ingest.batch_max_messages) {
            return Err(value_err(
                "ingest.batch_max_messages",
                &self.ingest.batch_max_messages,
                "1 to 100000",
            ));
        }
        if self.ingest.batch_max_delay > Duration::from_secs(10) {
            return Err(value_err(
                "ingest.batch_max_delay",
                &humantime::format_duration(self.ingest.batch_max_delay),
                "at most 10s",
            ));
        }
        if !(1..=65_535).contains(&self.ingest.max_unacked) {
            return Err(value_err(
                "ingest.max_unacked",
                &self.ingest.max_unacked,
                "1 to 65535 (MQTT 5 Receive Maximum)",
            ));
        }
        if self.p1.boundary_window.is_zero() || self.p1.boundary_window > Duration::from_secs(900) {
            return Err(value_err(
                "p1.boundary_window",
                &humantime::format_duration(self.p1.boundary_window),
                "more than 0 and at most 15m",
            ));
        }
        if !(32 << 20..=64 << 30).contains(&self.store.memory.0) {
            return Err(value_err(
                "store.memory",
                &self.store.memory,
                "32MiB to 64GiB",
            ));
        }
        if inside(&self.store.journal, &self.store.path) {
            return Err(value_err(
                "store.journal",
                &self.store.journal.display(),
                "a file outside store.path (backups of the store must not carry it)",
            ));
        }
        if inside(&self.backup.dir, &self.store.path) {
            return Err(value_err(
                "backup.dir",
                &self.backup.dir.display(),
                "a directory outside store.path",
            ));
        }
        for (key, d) in [
            ("api.header_timeout", self.api.header_timeout),
            ("api.body_timeout", self.api.body_timeout),
        ] {
            if d < Duration::from_millis(100) || d > Duration::from_secs(600) {
                return Err(value_err(
                    key,
                    &humantime::format_duration(d),
                    "100ms to 10m",
                ));
            }
        }
        for (key, d) in [
            ("retention.interval", self.retention.interval),
            ("retention.day", self.retention.day),
            ("retention.month", self.retention.month),
        ] {
            if d < Duration::from_secs(86_400) {
                return Err(value_err(
                    key,
                    &humantime::format_duration(d),
                    "at least 1day",
                ));
            }
        }
        if self.retention.statistics < self.retention.month {
            return Err(value_err(
                "retention.statistics",
                &humantime::format_duration(self.retention.statistics),
                "at least retention.month (statistics outlive the readings they come from)",
            ));
        }
        if self.statistics.settle < Duration::from_secs(60)
            || self.statistics.settle > Duration::from_secs(30 * 86_400)
        {
            return Err(value_err(
                "statistics.settle",
                &humantime::format_duration(self.statistics.settle),
                "1m to 30days",
            ));
        }
        if self.statistics.quiet > Duration::from_secs(86_400) {
            return Err(value_err(
                "statistics.quiet",
                &humantime::format_duration(self.statistics.quiet),
                "0s to 1day",
            ));
        }
        if !(1..=1000).contains(&self.backup.keep) {
            return Err(value_err(
                "backup.keep",
                &self.backup.keep,
                "1 to 1000 (backups kept; the journal reaches back to the oldest)",
            ));
        }
        if self.retention.sweep_interval < Duration::from_secs(1) {
            return Err(value_err(
                "retention.sweep_interval",
                &humantime::format_duration(self.retention.sweep_interval),
                "at least 1s",
            ));
        }
        if self.privacy.min_group_size < 2 {
            return Err(value_err(
                "privacy.min_group_size",
                &self.privacy.min_group_size,
                "at least 2 (1 would publish single connections)",
            ));
        }
        if meterstand_model::Calendar::new(&self.privacy.timezone).is_err() {
            return Err(value_err(
                "privacy.timezone",
                &self.privacy.timezone,
                "an IANA time zone such as Europe/Amsterdam",
            ));
        }
        for (i, t) in self.api.tokens.iter().enumerate() {
            if !["analyst", "privacy_officer", "crm", "operator"].contains(&t.role.as_str()) {
                return Err(ConfigError::Invalid(format!(
                    "api.tokens[{i}].role = {:?}: one of analyst, privacy_officer, crm, operator",
                    t.role
                )));
            }
            match (&t.file, t.hash.is_empty()) {
                (Some(_), false) | (None, true) => {
                    return Err(ConfigError::Invalid(format!(
                        "api.tokens[{i}] ({:?}): give exactly one of hash = \"sha256:<hex>\" or file = \"<path>\"",
                        t.id
                    )));
                }
                (None, false) if meterstand_api::parse_hash(&t.hash).is_none() => {
                    return Err(ConfigError::Invalid(format!(
                        "api.tokens[{i}].hash: expected sha256:<64 hex digits>"
                    )));
                }
                _ => {}
            }
        }
        if self.api.max_body_bytes < 256 || self.api.max_body_bytes > 16 << 20 {
            return Err(value_err(
                "api.max_body_bytes",
                &self.api.max_body_bytes,
                "256 to 16777216",
            ));
        }
        if self.api.max_concurrent == 0 || self.api.max_concurrent > 100_000 {
            return Err(value_err(
                "api.max_concurrent",
                &self.api.max_concurrent,
                "1 to 100000",
            ));
        }
        self.validate_tls()?;
        for (key, d) in [
            ("api.max_range_interval", self.api.max_range_interval),
            ("api.max_range_day", self.api.max_range_day),
            ("api.max_range_month", self.api.max_range_month),
        ] {
            if d < Duration::from_secs(86_400) {
                return Err(value_err(
                    key,
                    &humantime::format_duration(d),
                    "at least 1day",
                ));
            }
        }
        Ok(())
    }

    /// `api.tls_cert` and `api.tls_key` both or neither, the files there, the key owner-only,
    /// `api.client_ca` only with them; plain HTTP off loopback only with `api.allow_plaintext`.
    fn validate_tls(&self) -> Result<(), ConfigError> {
        let api = &self.api;
        let value_err = |key, value: &str, allowed: &str| ConfigError::Value {
            key,
            value: value.to_string(),
            allowed: allowed.to_string(),
            origin: String::new(),
        };
        match (api.tls_cert.is_empty(), api.tls_key.is_empty()) {
            (false, true) => {
                return Err(value_err(
                    "api.tls_key",
                    "",
                    "the PEM private key of api.tls_cert (api.tls_cert and api.tls_key are given together)",
                ));
            }
            (true, false) => {
                return Err(value_err(
                    "api.tls_cert",
                    "",
                    "the PEM certificate chain of api.tls_key (api.tls_cert and api.tls_key are given together)",
                ));
            }
            _ => {}
        }
        if api.tls_cert.is_empty() && !api.client_ca.is_empty() {
            return Err(value_err(
                "api.client_ca",
                &api.client_ca,
                "empty unless api.tls_cert and api.tls_key are set (client certificates need HTTPS)",
            ));
        }
        for (key, path) in [
            ("api.tls_cert", &api.tls_cert),
            ("api.tls_key", &api.tls_key),
            ("api.client_ca", &api.client_ca),
        ] {
            if !path.is_empty() && !Path::new(path).is_file() {
                return Err(value_err(key, path, "an existing PEM file"));
            }
        }
        if !api.tls_key.is_empty() {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&api.tls_key)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                return Err(value_err(
                    "api.tls_key",
                    &api.tls_key,
                    &format!(
                        "a key file readable by its owner only (it is mode {:o}; run chmod 600 on it)",
                        mode & 0o777
                    ),
                ));
            }
        }
        if api.tls_cert.is_empty() && !api.allow_plaintext && !api.listen.ip().is_loopback() {
            return Err(value_err(
                "api.listen",
                &api.listen.to_string(),
                "a loopback address while HTTPS is off: bearer tokens and subject exports would \
                 cross the network in the clear; set api.tls_cert and api.tls_key, or \
                 api.allow_plaintext = true if a TLS-terminating proxy is in front",
            ));
        }
        Ok(())
    }
}
