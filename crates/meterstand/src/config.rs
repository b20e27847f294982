//! Configuration: `config/default.toml` (embedded) ← `--config FILE` ← `METERSTAND__SECTION__KEY`
//! environment variables. Environment overrides arrive as a map so tests never touch the
//! process environment. `validate` names the key, the value and what is allowed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use meterstand_ingest::{BrokerUrl, MqttVersion};
use meterstand_model::{Calendar, ConsentLevel, Tier, TierSet};
use meterstand_store_rocks::Compression;
use meterstand_telemetry::LogFormat;
use serde::{Deserialize, Serialize};

pub const DEFAULT_TOML: &str = include_str!("../../../config/default.toml");
const ENV_PREFIX: &str = "METERSTAND__";
pub const KEY_FILE_ENV: &str = "METERSTAND_KEY_FILE";

/// Keys that are unset unless given (`Option` fields, absent from `config/default.toml`):
/// the environment may set them although the defaults do not hold them.
const OPTIONAL_KEYS: [(&str, &str); 8] = [
    ("broker", "username"),
    ("broker", "password"),
    ("broker", "ca_file"),
    ("broker", "client_cert"),
    ("broker", "client_key"),
    ("api", "tls_cert"),
    ("api", "tls_key"),
    ("api", "client_ca"),
];

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
    /// Broker login; unset: none.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub username: Option<String>,
    /// Secret: redacted by `config check`.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub password: Option<String>,
    /// PEM CA that signed an `mqtts://` broker's certificate.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate and key, for a broker that asks for one.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_cert: Option<PathBuf>,
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_key: Option<PathBuf>,
    #[serde(with = "humantime_serde_compat")]
    pub keep_alive: Duration,
    /// The embedded broker speaks 3.1.1 whatever this says.
    pub protocol: MqttVersion,
    /// Plain `mqtt://` to a broker off loopback is refused unless this is true.
    pub allow_plaintext: bool,
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
    /// Whether correction topics replace stored values; off, they are counted rejects.
    pub corrections: bool,
    /// A failed store write is retried this many times before ingest stops and the process
    /// exits for its supervisor (see `IngestConfig::write_retries`).
    pub write_retries: u32,
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

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSection {
    /// Backups are children of this directory (created 0700), named by the request.
    pub dir: PathBuf,
    /// Backups kept: after each new one the oldest beyond this many are removed, and the
    /// subject journal is pruned of what none of the kept ones needs.
    pub keep: usize,
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
    /// Connections open at once; 0: sized from the file limit at start
    /// ([`crate::access::max_connections`]).
    pub max_connections: usize,
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
    /// HTTPS certificate chain (PEM); unset: plain HTTP.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_cert: Option<PathBuf>,
    /// Its private key (PEM, not group or world readable); given with `tls_cert`.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to; unset: none asked.
    #[serde(
        default,
        deserialize_with = "unset_if_empty",
        skip_serializing_if = "Option::is_none"
    )]
    pub client_ca: Option<PathBuf>,
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
    pub role: meterstand_api::Role,
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
    /// The audit log: whole segments (a month each) older than this are removed by the
    /// sweep; the breach and accountability window.
    #[serde(with = "humantime_serde_compat")]
    pub audit: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StatisticsSection {
    /// How long a closed period waits for late readings before it is frozen.
    #[serde(with = "humantime_serde_compat")]
    pub settle: Duration,
    /// How long a period waits after its last write before it is frozen, so that history
    /// still being loaded is not frozen half-way.
    #[serde(with = "humantime_serde_compat")]
    pub quiet: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivacySection {
    pub min_group_size: u32,
    /// Day and month boundaries: an IANA time zone, parsed once here.
    pub timezone: Calendar,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    pub format: LogFormat,
    pub level: String,
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("embedded", &self.embedded)
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("topic_prefix", &self.topic_prefix)
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("client_cert", &self.client_cert)
            .field("client_key", &self.client_key)
            .field("keep_alive", &self.keep_alive)
            .field("protocol", &self.protocol)
            .field("allow_plaintext", &self.allow_plaintext)
            .finish()
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
        apply_env(&mut merged, env)?;
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

    /// The HTTPS files, when `api.tls_cert` and `api.tls_key` are set.
    pub fn tls_files(&self) -> Option<meterstand_api::TlsFiles> {
        Some(meterstand_api::TlsFiles {
            cert: self.api.tls_cert.clone()?,
            key: self.api.tls_key.clone()?,
            client_ca: self.api.client_ca.clone(),
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
        let scheme = if self.api.tls_cert.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{addr}")
    }

    /// The token table: hashes as configured, token files read and hashed.
    pub fn token_table(&self) -> anyhow::Result<meterstand_api::TokenTable> {
        let mut entries = Vec::new();
        for t in &self.api.tokens {
            let role = t.role;
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
            // Sized from the file limit in force now (`Service::start` raises it first).
            max_connections: crate::access::max_connections(
                self.api.max_connections,
                crate::access::file_limit(),
            ),
            max_range: meterstand_api::MaxRange {
                interval: self.api.max_range_interval,
                day: self.api.max_range_day,
                month: self.api.max_range_month,
            },
            metrics_require_token: self.api.metrics_require_token,
            header_timeout: self.api.header_timeout,
            body_timeout: self.api.body_timeout,
            backup_dir: self.backup.dir.clone(),
            backup_keep: self.backup.keep,
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
        if shown.broker.password.is_some() {
            shown.broker.password = Some("<redacted>".into());
        }
        for t in &mut shown.api.tokens {
            if !t.hash.is_empty() {
                t.hash = "<redacted>".into();
            }
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot render config: {e}\n"))
    }
}

/// Overlays the `METERSTAND__SECTION__KEY` variables of `env` on `merged`, each parsed as
/// the type of the value it replaces (an optional key's as text).
fn apply_env(merged: &mut toml::Table, env: &BTreeMap<String, String>) -> Result<(), ConfigError> {
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
        let optional = OPTIONAL_KEYS.contains(&(section.as_str(), key.as_str()));
        let parsed = match table.get(key) {
            // An optional key (unset by default) takes the text; empty unsets it.
            None if optional && value.is_empty() => {
                table.remove(key);
                continue;
            }
            None if optional => toml::Value::String(value.clone()),
            None => {
                return Err(ConfigError::Env {
                    var: var.clone(),
                    message: format!("unknown key {section}.{key}"),
                });
            }
            Some(existing) => {
                parse_env_value(existing, value).map_err(|message| ConfigError::Env {
                    var: var.clone(),
                    message,
                })?
            }
        };
        table.insert(key.clone(), parsed);
    }
    Ok(())
}

mod sources;
mod validate;
mod values;

pub use sources::inside;
use sources::{merge, origin_of, parse_env_value};
pub use values::ByteSize;
use values::{humantime_serde_compat, unset_if_empty};

#[cfg(test)]
mod tests;
