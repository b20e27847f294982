//! Access that fails closed: the token table re-read on SIGHUP (a reload that cannot take
//! the file as it is keeps only the tokens still in it), `token revoke` (in [`revoke`]), and
//! the file descriptor budget that sizes `api.max_connections`. See docs/design.md §4 and
//! docs/operations.md §4.

use std::collections::BTreeMap;
use std::path::Path;

use meterstand_api::{ApiState, Identity, TokenTable, metrics};
use meterstand_audit::{Actor, AuditEntry, Outcome};

use crate::config::Config;

mod revoke;
#[cfg(test)]
mod tests;

pub use revoke::{RevokeArgs, remove_token, revoke};

/// Audit action of a token table reload (SIGHUP), whatever its outcome.
pub const TOKEN_RELOAD: &str = "token.reload";
/// Audit action of a token leaving the table in force (one line per token), written by the
/// service when the reload that removes it takes effect: the moment from which it is refused.
pub const TOKEN_REVOKE: &str = "token.revoke";
/// The actor (kind `system`) of reload and revocation lines: an operator's action, taken
/// by whoever may signal the process (the service cannot know who).
pub const OPERATOR: &str = "operator";

/// What a token table reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reload {
    /// The generation of the table now in force (`meterstand_token_table_generation`).
    pub generation: u64,
    /// Its fingerprint (`meterstand_token_table_info{fingerprint}`).
    pub fingerprint: String,
    /// Tokens in force now.
    pub tokens: usize,
    /// Ids of tokens in force before and not now, sorted.
    pub removed: Vec<String>,
    /// Ids of tokens in force now and not before, sorted.
    pub added: Vec<String>,
    /// Why the configuration could not be taken as it is; then no token was added and only
    /// tokens still in the file were kept (none if the file could not be read or parsed).
    pub failure: Option<String>,
}

/// Re-reads the token table from the configuration and puts it in force. Fails closed: when
/// the configuration does not load (invalid, a token file unreadable), the table in force
/// keeps only the tokens whose entry (same id, role and hash, or a token file that still
/// holds the same token) is still in the file, adds none, and the failure is counted in
/// `meterstand_token_reload_failures_total`. When the file cannot be read or is not TOML at
/// all, nothing can be known to be still in it: every token is refused until a reload
/// succeeds or the service restarts (Prometheus then sees `/metrics` refuse its token, and
/// the log says why). Every reload is an audit line, and so is every token it removed.
pub fn reload_tokens(
    api: &ApiState,
    file: Option<&Path>,
    env: &BTreeMap<String, String>,
) -> Reload {
    let old = api.tokens();
    let loaded = Config::load(file, env)
        .map_err(anyhow::Error::from)
        .and_then(|c| c.token_table());
    let (table, failure) = match loaded {
        Ok(table) => (table, None),
        Err(e) => {
            metrics::TOKEN_RELOAD_FAILURES.inc();
            match entries_in_file(file) {
                Ok(entries) => (
                    old.retain(|hash, identity| entries.iter().any(|e| e.grants(hash, identity))),
                    Some(format!("{e:#}")),
                ),
                Err(unreadable) => (
                    TokenTable::default(),
                    Some(format!(
                        "{e:#}; {unreadable}: every token is refused until a reload succeeds"
                    )),
                ),
            }
        }
    };
    let (removed, added) = (ids_missing(&old, &table), ids_missing(&table, &old));
    let (fingerprint, tokens) = (table.fingerprint(), table.entries().count());
    let generation = api.replace_tokens(table);
    let reload = Reload {
        generation,
        fingerprint,
        tokens,
        removed,
        added,
        failure,
    };
    audit(api, &reload);
    reload
}

/// Ids of `a`'s entries that `b` does not hold (same token, same id and role), sorted.
fn ids_missing(a: &TokenTable, b: &TokenTable) -> Vec<String> {
    let mut ids: Vec<String> = a
        .entries()
        .filter(|(hash, identity)| !b.entries().any(|(h, i)| h == *hash && i == *identity))
        .map(|(_, identity)| identity.id.clone())
        .collect();
    ids.sort();
    ids.dedup();
    ids
}

/// The reload's audit line and one line per token it removed. A line that cannot be written
/// is logged; the table is in force regardless (a revocation must not wait on the log).
fn audit(api: &ApiState, reload: &Reload) {
    let outcome = if reload.failure.is_some() {
        Outcome::Error
    } else {
        Outcome::Ok
    };
    let mut lines = vec![
        AuditEntry::new(Actor::system(OPERATOR), TOKEN_RELOAD, outcome)
            .with_param("signal", "SIGHUP")
            .with_param("generation", reload.generation.to_string())
            .with_param("fingerprint", &reload.fingerprint)
            .with_param("tokens", reload.tokens.to_string())
            .with_param("removed", reload.removed.join(","))
            .with_param("added", reload.added.join(",")),
    ];
    lines.extend(reload.removed.iter().map(|id| {
        AuditEntry::new(Actor::system(OPERATOR), TOKEN_REVOKE, Outcome::Ok)
            .with_param("token", id)
            .with_param("generation", reload.generation.to_string())
    }));
    for line in &lines {
        if let Err(e) = api.audit_log().append(line) {
            tracing::error!(error = %e, action = %line.action, "cannot write the audit line of a token reload");
        }
    }
}

/// One `[[api.tokens]]` entry as written in the file, read leniently: what a failed reload
/// still finds there.
#[derive(Debug, Default)]
struct FileEntry {
    id: String,
    role: String,
    hash: Option<String>,
    file: Option<std::path::PathBuf>,
}

impl FileEntry {
    /// Whether this entry still grants the token with SHA-256 `hash` to `identity`: same id
    /// and role, and the same hash, or a token file that still holds the same token.
    fn grants(&self, hash: &[u8; 32], identity: &Identity) -> bool {
        if self.id != identity.id || self.role != identity.role.as_str() {
            return false;
        }
        if let Some(text) = &self.hash {
            return meterstand_api::parse_hash(text).is_some_and(|h| &h == hash);
        }
        self.file.as_ref().is_some_and(|path| {
            crate::client::read_token(path)
                .ok()
                .and_then(|token| meterstand_api::parse_hash(&meterstand_api::hash_token(&token)))
                .is_some_and(|h| &h == hash)
        })
    }
}

/// The token entries of the config file, or why it cannot be read or parsed at all.
fn entries_in_file(file: Option<&Path>) -> Result<Vec<FileEntry>, String> {
    let Some(path) = file else {
        return Ok(Vec::new());
    };
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("the config file {} cannot be read ({e})", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|_| format!("the config file {} is not TOML", path.display()))?;
    let entries = table
        .get("api")
        .and_then(|api| api.get("tokens"))
        .and_then(|tokens| tokens.as_array())
        .map(|tokens| {
            tokens
                .iter()
                .filter_map(|t| t.as_table())
                .map(|t| {
                    let field = |key: &str| t.get(key).and_then(|v| v.as_str()).map(str::to_string);
                    FileEntry {
                        id: field("id").unwrap_or_default(),
                        role: field("role").unwrap_or_default(),
                        hash: field("hash"),
                        file: field("file").map(Into::into),
                    }
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(entries)
}

/// Descriptors kept for everything but HTTP connections and RocksDB's table files:
/// standard streams, the runtime's epoll and wake-up descriptors, the MQTT connection, the
/// audit log, the subject journal, RocksDB's WAL, MANIFEST, LOCK and info log, a backup
/// being written, token and key files being read, and headroom for what a library opens.
const RESERVED_FDS: u64 = 256;

/// The most connections the default allows, whatever the file limit: an idle connection
/// still costs a task and its buffers (tens of KiB), and the API's clients are few (the
/// CRM, the privacy officer, analysts' tools, Prometheus).
const MAX_DEFAULT_CONNECTIONS: u64 = 4096;

/// The fewest connections the default allows, however low the file limit.
const MIN_DEFAULT_CONNECTIONS: u64 = 16;

/// `api.max_connections`, or when it is 0 (the default) the share of the file limit left
/// for connections: of the descriptors beyond `RESERVED_FDS`, half go to RocksDB (it
/// keeps every table file open; at the default target file size of 64 MiB, 32,640
/// descriptors under `LimitNOFILE=65536` cover some 2 TiB of store) and half to HTTP
/// connections, at most `MAX_DEFAULT_CONNECTIONS` and at least
/// `MIN_DEFAULT_CONNECTIONS`. Examples: limit 1024 → 384, 4096 → 1920, 65536 → 4096.
pub fn max_connections(configured: usize, file_limit: u64) -> usize {
    if configured > 0 {
        return configured;
    }
    let share = file_limit.saturating_sub(RESERVED_FDS) / 2;
    usize::try_from(share.clamp(MIN_DEFAULT_CONNECTIONS, MAX_DEFAULT_CONNECTIONS))
        .unwrap_or(usize::MAX)
}

/// The soft limit of open files in force; `u64::MAX` stands for unlimited.
pub fn file_limit() -> u64 {
    rustix::process::getrlimit(rustix::process::Resource::Nofile)
        .current
        .unwrap_or(u64::MAX)
}

/// Raises the soft limit of open files to the hard limit (what systemd's `LimitNOFILE`, or
/// `ulimit -Hn`, allows) and returns the soft limit now in force; `u64::MAX` stands for
/// unlimited. Failing to raise it is logged, and the limit as it was is returned.
pub fn raise_file_limit() -> u64 {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let current = limit.current.unwrap_or(u64::MAX);
    if limit.current.is_some() && limit.current != limit.maximum {
        let raised = rustix::process::Rlimit {
            current: limit.maximum,
            maximum: limit.maximum,
        };
        match setrlimit(Resource::Nofile, raised) {
            Ok(()) => return limit.maximum.unwrap_or(u64::MAX),
            Err(e) => {
                tracing::warn!(error = %e, soft = current, "cannot raise the open file limit")
            }
        }
    }
    current
}
