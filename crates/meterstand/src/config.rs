//! Configuration: `config/default.toml` (embedded) ← `--config FILE` ← `METERSTAND__SECTION__KEY`
//! environment variables. Environment overrides arrive as a map so tests never touch the
//! process environment. `validate` names the key, the value and what is allowed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use meterstand_ingest::BrokerUrl;
use meterstand_model::{ConsentLevel, Tier, TierSet};
use serde::{Deserialize, Serialize};

pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");
const ENV_PREFIX: &str = "METERSTAND__";
pub const KEY_FILE_ENV: &str = "METERSTAND_KEY_FILE";

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub broker: BrokerConfig,
    pub p1: P1Section,
    pub ingest: IngestSection,
    pub store: StoreSection,
    pub backup: BackupSection,
    pub keys: KeysSection,
    pub api: ApiSection,
    pub consent: ConsentSection,
    pub retention: RetentionSection,
    pub privacy: PrivacySection,
    pub statistics: StatisticsSection,
    pub log: LogSection,
}

/// `Debug` is written by hand: it redacts the password.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub embedded: bool,
    pub url: BrokerUrl,
    pub client_id: String,
    pub topic_prefix: String,
    pub share_group: String,
    pub username: String,
    pub password: String,
    pub ca_file: String,
    pub client_cert: String,
    pub client_key: String,
    #[serde(with = "humantime_serde_compat")]
    pub keep_alive: Duration,
    pub protocol: MqttProtocol,
}

/// MQTT protocol version spoken to the broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MqttProtocol {
    /// MQTT 5: the broker learns our packet size limit and ack window.
    #[serde(rename = "5")]
    V5,
    /// MQTT 3.1.1, for brokers without MQTT 5 (the embedded broker speaks only this).
    #[serde(rename = "3.1.1")]
    V311,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct P1Section {
    #[serde(with = "humantime_serde_compat")]
    pub boundary_window: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestSection {
    pub max_payload_bytes: usize,
    pub max_readings_per_message: usize,
    #[serde(with = "humantime_serde_compat")]
    pub max_future: Duration,
    pub batch_max_messages: usize,
    #[serde(with = "humantime_serde_compat")]
    pub batch_max_delay: Duration,
    pub max_unacked: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreSection {
    pub path: PathBuf,
    pub compression: Compression,
    /// The erasure and consent journal: outside `path`, so backups do not carry it.
    pub journal: PathBuf,
    /// One memory budget for RocksDB (block cache and memtables) and the writer's caches.
    pub memory: ByteSize,
}

/// A size in bytes written with a binary unit: `256MiB`, `1GiB`, `512KiB`, or plain bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;
    fn from_str(s: &str) -> Result<ByteSize, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (digits, unit) = s.split_at(split);
        let n: u64 = digits
            .parse()
            .map_err(|_| format!("{s:?} is not a size such as 256MiB or 1GiB"))?;
        let factor: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(format!("{s:?}: the unit must be B, KiB, MiB or GiB")),
        };
        n.checked_mul(factor)
            .map(ByteSize)
            .ok_or_else(|| format!("{s:?} is too large"))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            n if n % (1 << 30) == 0 && n > 0 => write!(f, "{}GiB", n >> 30),
            n if n % (1 << 20) == 0 && n > 0 => write!(f, "{}MiB", n >> 20),
            n if n % (1 << 10) == 0 && n > 0 => write!(f, "{}KiB", n >> 10),
            n => write!(f, "{n}B"),
        }
    }
}

impl Serialize for ByteSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for ByteSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<ByteSize, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    /// Backups are children of this directory (created 0700), named by the request.
    pub dir: PathBuf,
}

/// Block compression of the stored tiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    Zstd,
    Lz4,
    None,
}

impl From<Compression> for meterstand_store_rocks::Compression {
    fn from(c: Compression) -> Self {
        match c {
            Compression::Zstd => meterstand_store_rocks::Compression::Zstd,
            Compression::Lz4 => meterstand_store_rocks::Compression::Lz4,
            Compression::None => meterstand_store_rocks::Compression::None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeysSection {
    pub file: PathBuf,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub listen: SocketAddr,
    pub audit_log: PathBuf,
    pub max_body_bytes: usize,
    pub max_concurrent: usize,
    #[serde(with = "humantime_serde_compat")]
    pub max_range_interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub max_range_day: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub max_range_month: Duration,
    pub metrics_require_token: bool,
    #[serde(with = "humantime_serde_compat")]
    pub header_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub body_timeout: Duration,
    /// HTTPS certificate chain (PEM); empty: plain HTTP.
    pub tls_cert: String,
    /// Its private key (PEM, not group or world readable); given with `tls_cert`.
    pub tls_key: String,
    /// CA certificates (PEM) that client certificates must chain to; empty: none asked.
    pub client_ca: String,
    /// Plain HTTP on an address off loopback is refused unless this is true.
    pub allow_plaintext: bool,
    pub tokens: Vec<TokenEntry>,
}

/// One API token: its SHA-256 `hash`, or a `file` holding the token itself (read and hashed
/// at start; refused when group or world readable).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenEntry {
    pub id: String,
    pub role: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub hash: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsentSection {
    pub default: ConsentLevel,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSection {
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub day: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub month: Duration,
    /// Frozen statistics (anonymous; they outlive the readings and erasure).
    #[serde(with = "humantime_serde_compat")]
    pub statistics: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub sweep_interval: Duration,
    pub erasure_hold: Vec<Tier>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatisticsSection {
    /// How long a closed period waits for late readings before it is frozen.
    #[serde(with = "humantime_serde_compat")]
    pub settle: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    pub min_group_size: u32,
    pub timezone: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub format: LogFormat,
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Plain,
    Json,
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("embedded", &self.embedded)
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("topic_prefix", &self.topic_prefix)
            .field("share_group", &self.share_group)
            .field("username", &self.username)
            .field(
                "password",
                &if self.password.is_empty() {
                    ""
                } else {
                    "<redacted>"
                },
            )
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("keep_alive", &self.keep_alive)
            .field("protocol", &self.protocol)
            .finish()
    }
}

/// Durations as humantime text ("13months", "20ms") in both directions.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&humantime::format_duration(*d).to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(d)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!(
                "{text:?} is not a duration such as 20ms, 15m, 13months: {e}"
            ))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML: {message}")]
    Parse { path: String, message: String },
    #[error("environment variable {var}: {message}")]
    Env { var: String, message: String },
    #[error("config: {0}")]
    Invalid(String),
    #[error("config key {key}{origin}: {message}")]
    Typed {
        key: String,
        origin: String,
        message: String,
    },
    #[error("config key {key} = {value:?}{origin}: {allowed}")]
    Value {
        key: &'static str,
        value: String,
        allowed: String,
        /// Where the value came from (` (FILE line N)`, ` (from VAR)`), or empty for a default.
        origin: String,
    },
}

impl Config {
    /// Defaults, then the file, then the environment overrides.
    pub fn load(
        file: Option<&Path>,
        env: &BTreeMap<String, String>,
    ) -> Result<Config, ConfigError> {
        let mut merged: toml::Table =
            DEFAULT_TOML
                .parse()
                .map_err(|e: toml::de::Error| ConfigError::Parse {
                    path: "config/default.toml".into(),
                    message: e.to_string(),
                })?;
        let mut file_text = None;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.into(),
                source,
            })?;
            file_text = Some((path, text.clone()));
            let overlay: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Parse {
                        path: path.display().to_string(),
                        message: e.to_string(),
                    })?;
            merge(&mut merged, overlay);
        }
        for (var, value) in env {
            let Some(rest) = var.strip_prefix(ENV_PREFIX) else {
                continue;
            };
            let parts: Vec<String> = rest.split("__").map(|p| p.to_ascii_lowercase()).collect();
            let [section, key] = parts.as_slice() else {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: "expected METERSTAND__SECTION__KEY".into(),
                });
            };
            let table = merged
                .get_mut(section)
                .and_then(|t| t.as_table_mut())
                .ok_or_else(|| ConfigError::Env {
                    var: var.clone(),
                    message: format!("unknown section [{section}]"),
                })?;
            let existing = table.get(key).ok_or_else(|| ConfigError::Env {
                var: var.clone(),
                message: format!("unknown key {section}.{key}"),
            })?;
            let parsed = parse_env_value(existing, value).map_err(|message| ConfigError::Env {
                var: var.clone(),
                message,
            })?;
            table.insert(key.clone(), parsed);
        }
        let config: Config =
            serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
                let key = e.path().to_string();
                let origin = origin_of(&key, file_text.as_ref(), env);
                ConfigError::Typed {
                    key,
                    origin,
                    message: e.into_inner().message().to_string(),
                }
            })?;
        config.validate().map_err(|e| match e {
            ConfigError::Value {
                key,
                value,
                allowed,
                ..
            } => ConfigError::Value {
                key,
                value,
                allowed,
                origin: origin_of(key, file_text.as_ref(), env),
            },
            other => other,
        })?;
        Ok(config)
    }

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

    /// The HTTPS files, when `api.tls_cert` is set.
    pub fn tls_files(&self) -> Option<meterstand_api::TlsFiles> {
        (!self.api.tls_cert.is_empty()).then(|| meterstand_api::TlsFiles {
            cert: PathBuf::from(&self.api.tls_cert),
            key: PathBuf::from(&self.api.tls_key),
            client_ca: (!self.api.client_ca.is_empty()).then(|| PathBuf::from(&self.api.client_ca)),
        })
    }

    /// The base URL of this configuration's API for the CLI clients: `https://` when TLS is
    /// configured; an unspecified listen address (`0.0.0.0`, `::`) becomes loopback.
    pub fn api_base_url(&self) -> String {
        let mut addr = self.api.listen;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                std::net::IpAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                std::net::IpAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let scheme = if self.api.tls_cert.is_empty() {
            "http"
        } else {
            "https"
        };
        format!("{scheme}://{addr}")
    }

    /// The token table: hashes as configured, token files read and hashed.
    pub fn token_table(&self) -> anyhow::Result<meterstand_api::TokenTable> {
        let mut entries = Vec::new();
        for t in &self.api.tokens {
            let role: meterstand_api::Role = t.role.parse().map_err(anyhow::Error::msg)?;
            let hash = match &t.file {
                None => t.hash.clone(),
                Some(path) => {
                    let token = crate::client::read_token(path)
                        .with_context(|| format!("api token {:?}", t.id))?;
                    meterstand_api::hash_token(&token)
                }
            };
            entries.push((t.id.clone(), role, hash));
        }
        Ok(meterstand_api::TokenTable::new(entries.iter().map(
            |(id, role, hash)| (id.as_str(), *role, hash.as_str()),
        ))?)
    }

    pub fn api_config(&self) -> meterstand_api::ApiConfig {
        meterstand_api::ApiConfig {
            min_group_size: self.privacy.min_group_size,
            max_body_bytes: self.api.max_body_bytes,
            max_concurrent: self.api.max_concurrent,
            max_range: meterstand_api::MaxRange {
                interval: self.api.max_range_interval,
                day: self.api.max_range_day,
                month: self.api.max_range_month,
            },
            metrics_require_token: self.api.metrics_require_token,
            header_timeout: self.api.header_timeout,
            body_timeout: self.api.body_timeout,
            backup_dir: self.backup.dir.clone(),
            ..meterstand_api::ApiConfig::default()
        }
    }

    /// The embedded broker's listen address: the broker URL's host must be an IP address.
    pub fn broker_listen(&self) -> Result<SocketAddr, ConfigError> {
        let url = &self.broker.url;
        url.host
            .parse::<std::net::IpAddr>()
            .map(|ip| SocketAddr::new(ip, url.port))
            .map_err(|_| ConfigError::Value {
                key: "broker.url",
                value: url.to_string(),
                allowed: "with broker.embedded = true, mqtt://<ip>:<port> to listen on".into(),
                origin: String::new(),
            })
    }

    pub fn erasure_hold(&self) -> TierSet {
        self.retention.erasure_hold.iter().copied().collect()
    }

    /// What `run` checks before it starts, so that `config check` refuses the same: the key
    /// file loads (owner-only, owned by this user, outside the data directory) and every API
    /// token is usable.
    pub fn preflight(&self, env: &BTreeMap<String, String>) -> anyhow::Result<()> {
        let key_file = self.key_file(env);
        if inside(&key_file, &self.store.path) {
            anyhow::bail!(
                "key file {} lies inside store.path {}: a copy of the data would carry the key that links it to people; move it out",
                key_file.display(),
                self.store.path.display()
            );
        }
        meterstand_pseudonym::KeyRing::load(&key_file).with_context(|| {
            format!(
                "loading the master key (create one with `meterstand keygen --out {}`)",
                key_file.display()
            )
        })?;
        self.token_table()?;
        if let Some(files) = self.tls_files() {
            meterstand_api::tls::server_config(&files)?;
        }
        Ok(())
    }

    /// The key file: `METERSTAND_KEY_FILE` wins over `keys.file`.
    pub fn key_file(&self, env: &BTreeMap<String, String>) -> PathBuf {
        env.get(KEY_FILE_ENV)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| self.keys.file.clone())
    }

    /// The effective configuration as TOML, secrets redacted.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        if !shown.broker.password.is_empty() {
            shown.broker.password = "<redacted>".into();
        }
        for t in &mut shown.api.tokens {
            if !t.hash.is_empty() {
                t.hash = "<redacted>".into();
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Whether `path` lies inside `dir`, compared on absolute, lexically normalised paths.
pub fn inside(path: &Path, dir: &Path) -> bool {
    let absolute = |p: &Path| {
        let p = if p.is_absolute() {
            p.to_path_buf()
        } else {
            std::env::current_dir().unwrap_or_default().join(p)
        };
        let mut out = PathBuf::new();
        for part in p.components() {
            match part {
                std::path::Component::ParentDir => {
                    out.pop();
                }
                std::path::Component::CurDir => {}
                other => out.push(other),
            }
        }
        out
    };
    absolute(path).starts_with(absolute(dir))
}

/// Where the value of `key` (`section.key`, maybe with `[i]`) came from: an environment
/// variable, a line of the config file, or nothing (the defaults).
fn origin_of(key: &str, file: Option<&(&Path, String)>, env: &BTreeMap<String, String>) -> String {
    let mut parts = key.split('.');
    let (Some(section), Some(leaf)) = (parts.next(), parts.next()) else {
        return String::new();
    };
    let leaf = leaf.split('[').next().unwrap_or(leaf);
    let var = format!(
        "{ENV_PREFIX}{}__{}",
        section.to_ascii_uppercase(),
        leaf.to_ascii_uppercase()
    );
    if env.contains_key(&var) {
        return format!(" (from {var})");
    }
    let Some((path, text)) = file else {
        return String::new();
    };
    let mut current = "";
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if let Some(header) = line.strip_prefix('[') {
            current = header
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim();
        } else if current == section
            && line
                .split('=')
                .next()
                .is_some_and(|k| k.trim() == leaf && line.contains('='))
        {
            return format!(" ({} line {})", path.display(), n + 1);
        }
    }
    String::new()
}

fn merge(base: &mut toml::Table, overlay: toml::Table) {
    for (k, v) in overlay {
        match (base.get_mut(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => merge(b, o),
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
}

/// Reads an environment value in the type of the default it replaces.
fn parse_env_value(existing: &toml::Value, raw: &str) -> Result<toml::Value, String> {
    match existing {
        toml::Value::String(_) => Ok(toml::Value::String(raw.to_string())),
        toml::Value::Boolean(_) => raw
            .parse()
            .map(toml::Value::Boolean)
            .map_err(|_| format!("{raw:?} is not true or false")),
        toml::Value::Integer(_) => raw
            .parse()
            .map(toml::Value::Integer)
            .map_err(|_| format!("{raw:?} is not a whole number")),
        _ => format!("v = {raw}")
            .parse::<toml::Table>()
            .ok()
            .and_then(|mut t| t.remove("v"))
            .ok_or_else(|| format!("{raw:?} is not a TOML value (e.g. [\"month\"])")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn defaults_load_and_validate() {
        let c = Config::load(None, &BTreeMap::new()).expect("defaults are valid");
        assert_eq!(c.broker.topic_prefix, "meters");
        assert_eq!(c.privacy.min_group_size, 10);
        assert_eq!(
            c.retention.interval,
            humantime::parse_duration("13months").expect("valid")
        );
        assert_eq!(c.consent.default, ConsentLevel::Standard);
        assert!(c.erasure_hold().contains(Tier::Month));
    }

    #[test]
    fn file_then_env_override() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "[api]\nlisten = \"127.0.0.1:9000\"\n[privacy]\nmin_group_size = 12\n",
        )
        .expect("write");
        let c = Config::load(
            Some(&path),
            &env(&[
                ("METERSTAND__PRIVACY__MIN_GROUP_SIZE", "15"),
                ("OTHER", "x"),
            ]),
        )
        .expect("valid");
        assert_eq!(c.api.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(c.privacy.min_group_size, 15);
        let c = Config::load(None, &env(&[("METERSTAND__RETENTION__ERASURE_HOLD", "[]")]))
            .expect("valid");
        assert!(c.erasure_hold().is_empty());
        let c = Config::load(None, &env(&[("METERSTAND_KEY_FILE", "/run/secrets/key")]))
            .expect("valid");
        assert_eq!(
            c.key_file(&env(&[("METERSTAND_KEY_FILE", "/run/secrets/key")])),
            PathBuf::from("/run/secrets/key")
        );
    }

    #[test]
    fn errors_name_key_value_and_what_is_allowed() {
        let err = Config::load(
            None,
            &env(&[("METERSTAND__CONSENT__DEFAULT", "everything")]),
        )
        .expect_err("bad consent");
        let text = err.to_string();
        assert!(
            text.contains("consent.default")
                && text.contains("everything")
                && text.contains("interval"),
            "{text}"
        );
        let err = Config::load(None, &env(&[("METERSTAND__PRIVACY__MIN_GROUP_SIZE", "1")]))
            .expect_err("too small");
        assert!(err.to_string().contains("privacy.min_group_size"));
        let err = Config::load(
            None,
            &env(&[("METERSTAND__PRIVACY__MIN_GROUP_SIZE", "ten")]),
        )
        .expect_err("not a number");
        assert!(
            err.to_string()
                .contains("METERSTAND__PRIVACY__MIN_GROUP_SIZE")
        );
        let err =
            Config::load(None, &env(&[("METERSTAND__NOPE__X", "1")])).expect_err("unknown section");
        assert!(err.to_string().contains("unknown section"));
        let err = Config::load(None, &env(&[("METERSTAND__RETENTION__DAY", "soon")]))
            .expect_err("bad duration");
        assert!(err.to_string().contains("soon"));
        let err = Config::load(None, &env(&[("METERSTAND__BROKER__URL", "http://x")]))
            .expect_err("bad url");
        assert!(err.to_string().contains("broker.url"));
        let err = Config::load(None, &env(&[("METERSTAND__STORE__COMPRESSION", "gzip")]))
            .expect_err("bad compression");
        let text = err.to_string();
        assert!(
            text.contains("store.compression") && text.contains("gzip") && text.contains("lz4"),
            "{text}"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.toml");
        std::fs::write(&path, "[api]\nlisen = \"x\"\n").expect("write");
        assert!(
            Config::load(Some(&path), &BTreeMap::new())
                .expect_err("typo")
                .to_string()
                .contains("lisen")
        );
    }

    /// A typed value refused from a file names the key, the value, what is allowed, and the
    /// file and line; from the environment, the variable.
    #[test]
    fn typed_refusals_name_key_file_and_line() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.toml");
        std::fs::write(
            &path,
            "[store]\npath = \"d\"\n\n[retention]\ninterval = \"banana\"\n",
        )
        .expect("write");
        let text = Config::load(Some(&path), &BTreeMap::new())
            .expect_err("banana")
            .to_string();
        assert!(
            text.contains("retention.interval")
                && text.contains("banana")
                && text.contains("line 5"),
            "{text}"
        );
        std::fs::write(&path, "[api]\nmax_concurrent = -3\n").expect("write");
        let text = Config::load(Some(&path), &BTreeMap::new())
            .expect_err("negative")
            .to_string();
        assert!(
            text.contains("api.max_concurrent") && text.contains("-3") && text.contains("line 2"),
            "{text}"
        );
        std::fs::write(&path, "[api]\nmax_concurrent = 0\n").expect("write");
        let text = Config::load(Some(&path), &BTreeMap::new())
            .expect_err("zero")
            .to_string();
        assert!(
            text.contains("api.max_concurrent") && text.contains("line 2"),
            "{text}"
        );
        let text = Config::load(None, &env(&[("METERSTAND__API__LISTEN", "localhost")]))
            .expect_err("not an address")
            .to_string();
        assert!(
            text.contains("api.listen") && text.contains("METERSTAND__API__LISTEN"),
            "{text}"
        );
    }

    /// `api.tls_cert`/`api.tls_key` both or neither, existing files, an owner-only key,
    /// `client_ca` only with HTTPS, and plain HTTP off loopback only when allowed.
    #[test]
    fn https_keys_are_validated_and_plaintext_off_loopback_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let text = |e: &[(&str, &str)]| {
            Config::load(None, &env(e))
                .expect_err("refused")
                .to_string()
        };
        let t = text(&[("METERSTAND__API__LISTEN", "0.0.0.0:8080")]);
        assert!(
            t.contains("api.listen")
                && t.contains("0.0.0.0:8080")
                && t.contains("api.allow_plaintext")
                && t.contains("api.tls_cert"),
            "{t}"
        );
        let c = Config::load(
            None,
            &env(&[
                ("METERSTAND__API__LISTEN", "0.0.0.0:8080"),
                ("METERSTAND__API__ALLOW_PLAINTEXT", "true"),
            ]),
        )
        .expect("allowed");
        assert_eq!(c.api_base_url(), "http://127.0.0.1:8080");
        Config::load(None, &env(&[("METERSTAND__API__LISTEN", "[::1]:8080")])).expect("loopback");

        let dir = tempfile::tempdir().expect("tempdir");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "x").expect("write");
        std::fs::write(&key, "x").expect("write");
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
        let (cert_s, key_s) = (cert.to_str().expect("utf-8"), key.to_str().expect("utf-8"));
        let t = text(&[("METERSTAND__API__TLS_CERT", cert_s)]);
        assert!(t.contains("api.tls_key") && t.contains("together"), "{t}");
        let t = text(&[("METERSTAND__API__TLS_KEY", key_s)]);
        assert!(t.contains("api.tls_cert") && t.contains("together"), "{t}");
        let t = text(&[("METERSTAND__API__CLIENT_CA", cert_s)]);
        assert!(t.contains("api.client_ca"), "{t}");
        let t = text(&[
            ("METERSTAND__API__TLS_CERT", "/nonexistent/c.pem"),
            ("METERSTAND__API__TLS_KEY", key_s),
        ]);
        assert!(
            t.contains("api.tls_cert")
                && t.contains("/nonexistent/c.pem")
                && t.contains("existing"),
            "{t}"
        );
        let t = text(&[
            ("METERSTAND__API__TLS_CERT", cert_s),
            ("METERSTAND__API__TLS_KEY", key_s),
        ]);
        assert!(
            t.contains("api.tls_key") && t.contains("644") && t.contains("chmod 600"),
            "{t}"
        );
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        let c = Config::load(
            None,
            &env(&[
                ("METERSTAND__API__LISTEN", "0.0.0.0:8443"),
                ("METERSTAND__API__TLS_CERT", cert_s),
                ("METERSTAND__API__TLS_KEY", key_s),
            ]),
        )
        .expect("https off loopback");
        assert_eq!(c.api_base_url(), "https://127.0.0.1:8443");
        // The files are not PEM: what preflight (`run`, `config check`) builds says so.
        let files = c.tls_files().expect("tls configured");
        let e = meterstand_api::tls::server_config(&files)
            .expect_err("not pem")
            .to_string();
        assert!(e.contains("api.tls_cert") && e.contains("c.pem"), "{e}");
    }

    #[test]
    fn debug_never_shows_the_broker_password() {
        let mut c = Config::load(None, &BTreeMap::new()).expect("defaults");
        c.broker.password = "hunter2".into();
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn a_key_file_inside_the_data_directory_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data = dir.path().join("data");
        let key = data.join("master.key");
        std::fs::create_dir_all(&data).expect("dir");
        meterstand_pseudonym::KeyRing::generate()
            .expect("key")
            .create(&key)
            .expect("write");
        let env = env(&[
            ("METERSTAND__STORE__PATH", data.to_str().expect("utf-8")),
            ("METERSTAND_KEY_FILE", key.to_str().expect("utf-8")),
        ]);
        let c = Config::load(None, &env).expect("valid");
        let text = format!("{:#}", c.preflight(&env).expect_err("inside"));
        assert!(text.contains("inside store.path"), "{text}");
    }

    #[test]
    fn redaction_hides_secrets() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("m.toml");
        let hash = format!("sha256:{}", "ab".repeat(32));
        std::fs::write(
            &path,
            format!("[broker]\npassword = \"hunter2\"\n[[api.tokens]]\nid = \"a\"\nrole = \"analyst\"\nhash = \"{hash}\"\n"),
        )
        .expect("write");
        let c = Config::load(Some(&path), &BTreeMap::new()).expect("valid");
        let shown = c.redacted_toml();
        assert!(!shown.contains("hunter2") && !shown.contains(&"ab".repeat(32)));
        assert!(shown.contains("<redacted>") && shown.contains("analyst"));
    }
}
