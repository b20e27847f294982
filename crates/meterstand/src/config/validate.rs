//! The checks `Config::load` runs after deserialising: values in range, keys that go together,
//! and paths that must not lie inside the data directory. Each refusal names the key. One
//! method per section, all called from `validate`; ingest's own settings are checked by
//! ingest (`IngestConfig::validate`).

use std::time::Duration;

use super::{Config, ConfigError, inside};

fn value_err(key: &'static str, value: &dyn std::fmt::Display, allowed: &str) -> ConfigError {
    ConfigError::Value {
        key,
        value: value.to_string(),
        allowed: allowed.to_string(),
        origin: String::new(),
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.validate_broker()?;
        self.validate_ingest()?;
        self.validate_store()?;
        self.validate_retention()?;
        self.validate_statistics()?;
        self.validate_api()?;
        if self.privacy.min_group_size < 2 {
            return Err(value_err(
                "privacy.min_group_size",
                &self.privacy.min_group_size,
                "at least 2 (1 would publish single connections)",
            ));
        }
        Ok(())
    }

    /// `[broker]`: the embedded listener, TLS with its CA, plain MQTT on loopback only.
    fn validate_broker(&self) -> Result<(), ConfigError> {
        if self.broker.embedded {
            self.broker_listen()?;
        }
        if self.broker.url.tls && self.broker.ca_file.is_none() {
            return Err(value_err("broker.ca_file", &"", "mqtts:// needs a CA file"));
        }
        if !self.broker.url.tls && !self.broker.allow_plaintext && !self.broker.url.is_loopback() {
            return Err(value_err(
                "broker.url",
                &self.broker.url,
                "mqtts:// (with broker.ca_file), or mqtt:// to a loopback address: plain MQTT \
                 would carry EANs in topics, the readings and the broker password across the \
                 network in the clear; set broker.allow_plaintext = true only if the network \
                 path to the broker is protected otherwise (e.g. a TLS tunnel on this host)",
            ));
        }
        Ok(())
    }

    /// `[ingest]` and `[p1]`, by ingest's own rules.
    fn validate_ingest(&self) -> Result<(), ConfigError> {
        // Ingest's own settings, by ingest's own rules (the one place they are checked).
        crate::service::ingest_config(self)
            .validate()
            .map_err(|e| match e {
                meterstand_ingest::IngestError::Config {
                    key,
                    value,
                    allowed,
                } => ConfigError::Value {
                    key,
                    value,
                    allowed,
                    origin: String::new(),
                },
                other => ConfigError::Invalid(other.to_string()),
            })?;
        Ok(())
    }

    /// `[store]` and `[backup]`: the budget, and the journal and backups outside the store.
    fn validate_store(&self) -> Result<(), ConfigError> {
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
        if !(1..=1000).contains(&self.backup.keep) {
            return Err(value_err(
                "backup.keep",
                &self.backup.keep,
                "1 to 1000 (backups kept; the journal reaches back to the oldest)",
            ));
        }
        Ok(())
    }

    /// `[retention]`: at least a day per tier, statistics outliving the readings.
    fn validate_retention(&self) -> Result<(), ConfigError> {
        for (key, d) in [
            ("retention.interval", self.retention.interval),
            ("retention.day", self.retention.day),
            ("retention.month", self.retention.month),
            ("retention.audit", self.retention.audit),
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
        if self.retention.sweep_interval < Duration::from_secs(1) {
            return Err(value_err(
                "retention.sweep_interval",
                &humantime::format_duration(self.retention.sweep_interval),
                "at least 1s",
            ));
        }
        Ok(())
    }

    /// `[statistics]`: settle and quiet.
    fn validate_statistics(&self) -> Result<(), ConfigError> {
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
        Ok(())
    }

    /// `[api]`: tokens, limits, timeouts, ranges and HTTPS.
    fn validate_api(&self) -> Result<(), ConfigError> {
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
        for (i, t) in self.api.tokens.iter().enumerate() {
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
        if self.api.max_connections > 1_000_000 {
            return Err(value_err(
                "api.max_connections",
                &self.api.max_connections,
                "0 (sized from the file limit at start) or 1 to 1000000",
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
        let value_err = |key, value: &str, allowed: &str| value_err(key, &value, allowed);
        match (&api.tls_cert, &api.tls_key) {
            (Some(_), None) => {
                return Err(value_err(
                    "api.tls_key",
                    "",
                    "the PEM private key of api.tls_cert (api.tls_cert and api.tls_key are given together)",
                ));
            }
            (None, Some(_)) => {
                return Err(value_err(
                    "api.tls_cert",
                    "",
                    "the PEM certificate chain of api.tls_key (api.tls_cert and api.tls_key are given together)",
                ));
            }
            _ => {}
        }
        if let (None, Some(ca)) = (&api.tls_cert, &api.client_ca) {
            return Err(value_err(
                "api.client_ca",
                &ca.display().to_string(),
                "unset unless api.tls_cert and api.tls_key are set (client certificates need HTTPS)",
            ));
        }
        for (key, path) in [
            ("api.tls_cert", &api.tls_cert),
            ("api.tls_key", &api.tls_key),
            ("api.client_ca", &api.client_ca),
        ] {
            if let Some(path) = path.as_deref().filter(|p| !p.is_file()) {
                return Err(value_err(
                    key,
                    &path.display().to_string(),
                    "an existing PEM file",
                ));
            }
        }
        if let Some(key) = &api.tls_key {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(key)
                .map(|m| m.permissions().mode())
                .unwrap_or(0);
            if mode & 0o077 != 0 {
                return Err(value_err(
                    "api.tls_key",
                    &key.display().to_string(),
                    &format!(
                        "a key file readable by its owner only (it is mode {:o}; run chmod 600 on it)",
                        mode & 0o777
                    ),
                ));
            }
        }
        if api.tls_cert.is_none() && !api.allow_plaintext && !api.listen.ip().is_loopback() {
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
