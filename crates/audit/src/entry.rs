//! What one audit line says, and the checks that keep identifiers out of it.

use std::collections::BTreeMap;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::AuditError;

/// The only parameters a [`action::CORRECTION`] line may have: who and what was corrected,
/// never a value. Lines written by earlier versions also hold `old` and `new`; they still
/// verify and report (the chain covers each line as written), but no such line is written
/// any more.
pub const CORRECTION_PARAMS: [&str; 3] = ["register", "tiers", "time"];

/// Action names, fixed so that reports and tools can rely on them.
pub mod action {
    pub const STATISTICS_READ: &str = "statistics.read";
    pub const AGGREGATES_READ: &str = "aggregates.read";
    pub const SERIES_READ: &str = "series.read";
    /// The analyst ids of the series open to analysis.
    pub const SERIES_LIST: &str = "series.list";
    pub const SUBJECT_EXPORT: &str = "subject.export";
    pub const SUBJECT_ERASE: &str = "subject.erase";
    pub const CONNECTION_PUT: &str = "connection.put";
    pub const BACKUP_CREATE: &str = "backup.create";
    /// A correction from MQTT applied to a stored reading (actor `system`/`ingest`): the
    /// subject, register and period, never a value ([`super::AuditEntry::correction`]).
    pub const CORRECTION: &str = "correction";
    /// A call refused before any handler ran (401, 403).
    pub const AUTH_REFUSED: &str = "auth.refused";
    /// Written by [`crate::AuditLog::open`] after dropping a torn last line.
    pub const AUDIT_RECOVERED: &str = "audit.recovered";
    /// The first line of every segment after the first: its `seq` and `prev` continue the
    /// previous segment's head (also in the `previous` parameter), so a log whose older
    /// segments were removed by retention still starts at a provable point.
    pub const AUDIT_SEGMENT: &str = "audit.segment";
    /// Written once when a log of unkeyed (legacy) lines is first opened with keys: every
    /// line from here on is keyed, and this keyed line's `prev` fixes the legacy part.
    pub const AUDIT_KEYED: &str = "audit.keyed";
    /// Whole segments removed by retention (`segments`, `kept_from`: the oldest kept seq).
    pub const AUDIT_RETENTION: &str = "audit.retention";
    /// The service found at start-up that the log does not reach the head anchored in the
    /// store (`anchor`, `found`, `missing`): lines were removed. Fails `verify` until an
    /// operator acknowledges it ([`AUDIT_GAP_ACKNOWLEDGED`]).
    pub const AUDIT_GAP: &str = "audit.gap";
    /// An operator acknowledged the recorded gap whose line has seq `gap_seq` (`reason`).
    pub const AUDIT_GAP_ACKNOWLEDGED: &str = "audit.gap_acknowledged";
    /// `meterstand restore`: which backup (`backup`, `taken`) and what the journal replay
    /// re-applied (`replayed`, `journal_from`, `journal_gap_accepted`).
    pub const STORE_RESTORE: &str = "store.restore";
    /// `meterstand keygen --rotate`: the new master key version (`version`).
    pub const KEY_ROTATE: &str = "key.rotate";
    /// `meterstand token revoke`: the token id (`token_id`), never the token.
    pub const TOKEN_REVOKE: &str = "token.revoke";
    /// The service re-read its configuration or token table (SIGHUP).
    pub const CONFIG_RELOAD: &str = "config.reload";
}

/// Who acted. A token appears by its id only, never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// A bearer token. `role` is absent when the token's id is known but it grants no role
    /// (e.g. a revoked token presented again).
    Token {
        token_id: String,
        #[serde(default)]
        role: Option<String>,
    },
    /// A refused call whose token, if any, matched no known id.
    Unauthenticated,
    /// The service itself, e.g. `ingest` applying a correction, `audit` recovering the log.
    System { component: String },
    /// A person at the command line (`meterstand restore`, `keygen --rotate`, `token
    /// revoke`): the login name, `SUDO_USER` first ([`Actor::operator_from_env`]).
    Operator { user: String },
}

impl Actor {
    pub fn token(token_id: impl Into<String>, role: impl Into<String>) -> Actor {
        Actor::Token {
            token_id: token_id.into(),
            role: Some(role.into()),
        }
    }

    pub fn system(component: impl Into<String>) -> Actor {
        Actor::System {
            component: component.into(),
        }
    }

    pub fn operator(user: impl Into<String>) -> Actor {
        Actor::Operator { user: user.into() }
    }

    /// The person running this process: `SUDO_USER` (who ran `sudo`), else `USER`, else
    /// `LOGNAME`, else `uid:<n>` of this process.
    pub fn operator_from_env() -> Actor {
        let named = ["SUDO_USER", "USER", "LOGNAME"]
            .iter()
            .filter_map(|k| std::env::var(k).ok())
            .find(|v| !v.trim().is_empty());
        let user = named.unwrap_or_else(|| {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self")
                .map(|m| format!("uid:{}", m.uid()))
                .unwrap_or_else(|_| "unknown".into())
        });
        Actor::operator(user)
    }
}

/// How a call ended; the same classes the API uses for its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Ok,
    Denied,
    Invalid,
    NotFound,
    Error,
}

impl Outcome {
    pub fn from_status(status: u16) -> Outcome {
        match status {
            200..=299 => Outcome::Ok,
            401 | 403 => Outcome::Denied,
            404 => Outcome::NotFound,
            400..=499 => Outcome::Invalid,
            _ => Outcome::Error,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Denied => "denied",
            Outcome::Invalid => "invalid",
            Outcome::NotFound => "not_found",
            Outcome::Error => "error",
        }
    }
}

/// One audit line before the log chains it (`seq`, `prev`, `hash` are the log's business).
/// Every field is always written, so every line has the same keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it happened, RFC 3339 in UTC.
    #[serde(with = "rfc3339")]
    pub time: Timestamp,
    pub actor: Actor,
    /// See [`action`].
    pub action: String,
    /// The matched route template (`/v1/subjects/{ean}/export`), never the request path: that
    /// holds the EAN.
    #[serde(default)]
    pub route: Option<String>,
    /// Query and body parameters worth keeping (for analysts: the query). Never an EAN.
    #[serde(default)]
    pub params: BTreeMap<String, String>,
    /// Storage pseudonyms (`v1-<hex>`) of the subjects whose data was read or changed.
    #[serde(default)]
    pub subjects: Vec<String>,
    /// Rows returned or changed, where the action has rows.
    #[serde(default)]
    pub rows: Option<u64>,
    pub outcome: Outcome,
    /// HTTP status; absent for work that is not a call (corrections, recovery).
    #[serde(default)]
    pub status: Option<u16>,
    /// Client address, where known.
    #[serde(default)]
    pub remote: Option<String>,
}

impl AuditEntry {
    /// An entry stamped now, with no route, parameters, subjects or rows yet.
    pub fn new(actor: Actor, action: impl Into<String>, outcome: Outcome) -> AuditEntry {
        AuditEntry {
            time: Timestamp::now(),
            actor,
            action: action.into(),
            route: None,
            params: BTreeMap::new(),
            subjects: Vec::new(),
            rows: None,
            outcome,
            status: None,
            remote: None,
        }
    }

    /// An HTTP call that reached its handler; the outcome follows from the status.
    pub fn call(
        actor: Actor,
        action: impl Into<String>,
        route: impl Into<String>,
        status: u16,
    ) -> AuditEntry {
        let mut entry = AuditEntry::new(actor, action, Outcome::from_status(status));
        entry.route = Some(route.into());
        entry.status = Some(status);
        entry
    }

    /// A call refused by authentication or authorisation (401/403). `actor` is the presented
    /// token's id where it is known, else [`Actor::Unauthenticated`].
    pub fn refused(actor: Actor, route: impl Into<String>, status: u16) -> AuditEntry {
        AuditEntry::call(actor, action::AUTH_REFUSED, route, status)
    }

    /// A correction from MQTT applied to one register reading of one subject: which subject
    /// (`pseudonym`), which register and which period (`reading_time`, and the `tiers` whose
    /// period starts there, e.g. `["interval", "day"]`), and `replaced`, how many stored tier
    /// entries this delivery replaced (0 when it found the corrected value already stored, as
    /// a redelivery does). Never the old or the new value: a reading value would outlive its
    /// retention and the subject's erasure in this log ([`AuditLog::append`] refuses any other
    /// parameter on a correction line, see [`CORRECTION_PARAMS`]).
    ///
    /// [`AuditLog::append`]: crate::AuditLog::append
    pub fn correction<'a>(
        pseudonym: impl Into<String>,
        register: impl Into<String>,
        reading_time: Timestamp,
        tiers: impl IntoIterator<Item = &'a str>,
        replaced: u64,
    ) -> AuditEntry {
        let tiers: Vec<&str> = tiers.into_iter().collect();
        AuditEntry::new(Actor::system("ingest"), action::CORRECTION, Outcome::Ok)
            .with_subject(pseudonym)
            .with_param("register", register)
            .with_param("time", reading_time.to_string())
            .with_param("tiers", tiers.join(","))
            .with_rows(replaced)
    }

    /// An operator's action at the command line, by the person running this process.
    pub fn operator(action: impl Into<String>, outcome: Outcome) -> AuditEntry {
        AuditEntry::new(Actor::operator_from_env(), action, outcome)
    }

    pub fn with_time(mut self, time: Timestamp) -> AuditEntry {
        self.time = time;
        self
    }

    pub fn with_param(mut self, key: impl Into<String>, value: impl Into<String>) -> AuditEntry {
        self.params.insert(key.into(), value.into());
        self
    }

    pub fn with_subject(mut self, pseudonym: impl Into<String>) -> AuditEntry {
        self.subjects.push(pseudonym.into());
        self
    }

    pub fn with_rows(mut self, rows: u64) -> AuditEntry {
        self.rows = Some(rows);
        self
    }

    pub fn with_remote(mut self, remote: impl Into<String>) -> AuditEntry {
        self.remote = Some(remote.into());
        self
    }

    /// Refuses entries that could carry an identifier: subjects that are not pseudonyms, and
    /// text with a free-standing run of 18 digits (the length of an EAN). Error messages name
    /// the field, never its value.
    pub(crate) fn check(&self) -> Result<(), AuditError> {
        if self.action.is_empty() {
            return Err(AuditError::Empty { field: "action" });
        }
        let mut texts: Vec<(String, &str)> = vec![("action".into(), self.action.as_str())];
        match &self.actor {
            Actor::Token { token_id, role } => {
                if token_id.is_empty() {
                    return Err(AuditError::Empty { field: "token_id" });
                }
                texts.push(("token_id".into(), token_id));
                if let Some(role) = role {
                    texts.push(("role".into(), role));
                }
            }
            Actor::System { component } => {
                if component.is_empty() {
                    return Err(AuditError::Empty { field: "component" });
                }
                texts.push(("component".into(), component));
            }
            Actor::Operator { user } => {
                if user.is_empty() {
                    return Err(AuditError::Empty { field: "user" });
                }
                texts.push(("user".into(), user));
            }
            Actor::Unauthenticated => {}
        }
        if let Some(route) = &self.route {
            texts.push(("route".into(), route));
        }
        if let Some(remote) = &self.remote {
            texts.push(("remote".into(), remote));
        }
        for (key, value) in &self.params {
            texts.push(("parameter name".into(), key));
            texts.push((format!("parameter {key:?}"), value));
        }
        if let Some((field, _)) = texts.iter().find(|(_, text)| holds_ean_like(text)) {
            // A parameter *name* that looks like an EAN must not be echoed either.
            let field = if holds_ean_like(field) {
                "parameter name".to_string()
            } else {
                field.clone()
            };
            return Err(AuditError::Identifier { field });
        }
        if self.action == action::CORRECTION
            && let Some(key) = self
                .params
                .keys()
                .find(|k| !CORRECTION_PARAMS.contains(&k.as_str()))
        {
            // Named only if it is one of ours: an unknown name is not echoed.
            let field = match key.as_str() {
                "old" | "new" | "value" => key.clone(),
                _ => "parameter name".to_string(),
            };
            return Err(AuditError::ReadingValue { field });
        }
        if let Some(index) = self.subjects.iter().position(|s| !is_pseudonym(s)) {
            return Err(AuditError::Subject { index });
        }
        Ok(())
    }
}

/// `v<version>-<32 lowercase hex digits>`, the text form of `meterstand_pseudonym::Pseudonym`.
pub(crate) fn is_pseudonym(s: &str) -> bool {
    let Some((version, hash)) = s.strip_prefix('v').and_then(|r| r.split_once('-')) else {
        return false;
    };
    !version.is_empty()
        && version.len() <= 5
        && version.bytes().all(|b| b.is_ascii_digit())
        && version.parse::<u16>().is_ok_and(|v| v > 0)
        && hash.len() == 32
        && hash.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A run of exactly 18 digits not glued to other letters or digits: how an EAN shows up in a
/// path (`/v1/subjects/8712…/export`) or a query. Runs inside hex strings do not count, so a
/// pseudonym or hash never trips it. Public so that callers can leave such a value out of an
/// entry instead of having [`crate::AuditLog::append`] refuse the whole entry.
pub fn holds_ean_like(s: &str) -> bool {
    let bytes = s.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        if !bytes[i].is_ascii_digit() {
            i += 1;
            continue;
        }
        let start = i;
        while i < bytes.len() && bytes[i].is_ascii_digit() {
            i += 1;
        }
        let free_before = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let free_after = i == bytes.len() || !bytes[i].is_ascii_alphanumeric();
        if i - start == 18 && free_before && free_after {
            return true;
        }
    }
    false
}

pub(crate) mod rfc3339 {
    use jiff::Timestamp;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(time: &Timestamp, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(time)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "v1-0123456789abcdef0123456789abcdef";

    #[test]
    fn pseudonym_shape() {
        assert!(is_pseudonym(P));
        assert!(is_pseudonym("v65535-0123456789abcdef0123456789abcdef"));
        for bad in [
            "v0-0123456789abcdef0123456789abcdef",
            "v1-0123456789ABCDEF0123456789abcdef",
            "v1-0123456789abcdef0123456789abcde",
            "871234567890123456",
            "v-0123456789abcdef0123456789abcdef",
            "",
        ] {
            assert!(!is_pseudonym(bad), "{bad}");
        }
    }

    #[test]
    fn ean_like_runs() {
        assert!(holds_ean_like("871234567890123456"));
        assert!(holds_ean_like("/v1/subjects/871234567890123456/export"));
        assert!(holds_ean_like("ean=871234567890123456&x=1"));
        assert!(!holds_ean_like("/v1/subjects/{ean}/export"));
        assert!(!holds_ean_like("1764288000000000000")); // 19 digits: nanoseconds, not an EAN
        assert!(!holds_ean_like("87123456789012345")); // 17
        assert!(!holds_ean_like("a871234567890123456")); // inside a hex string
        assert!(!holds_ean_like(P));
        assert!(!holds_ean_like("2026-11-28T00:00:00Z"));
    }

    #[test]
    fn check_refuses_identifiers_without_echoing_them() {
        let ean = "871234567890123456";
        let base = AuditEntry::call(
            Actor::token("po-1", "privacy_officer"),
            action::SUBJECT_EXPORT,
            "/v1/subjects/{ean}/export",
            200,
        );
        assert!(base.clone().with_subject(P).check().is_ok());
        let cases = [
            base.clone().with_subject(ean),
            base.clone().with_param("ean", ean),
            base.clone().with_param(ean, "x"),
            AuditEntry {
                route: Some(format!("/v1/subjects/{ean}/export")),
                ..base.clone()
            },
        ];
        for entry in cases {
            let err = entry.check().expect_err("refused");
            assert!(!err.to_string().contains(ean), "{err}");
        }
    }

    #[test]
    fn outcome_classes() {
        assert_eq!(Outcome::from_status(204), Outcome::Ok);
        assert_eq!(Outcome::from_status(401), Outcome::Denied);
        assert_eq!(Outcome::from_status(403), Outcome::Denied);
        assert_eq!(Outcome::from_status(404), Outcome::NotFound);
        assert_eq!(Outcome::from_status(422), Outcome::Invalid);
        assert_eq!(Outcome::from_status(500), Outcome::Error);
    }
}
