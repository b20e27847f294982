use std::time::Duration;

use jiff::Timestamp;
use std::collections::BTreeMap;

use meterstand_model::{Connection, Reading, Register, Tier, TierSet, TieredReading};
use meterstand_pseudonym::Pseudonym;

/// What a connection sent in one message, already pseudonymised.
#[derive(Debug, Clone)]
pub struct IngestItem {
    pub connection: Pseudonym,
    pub meter: Pseudonym,
    pub readings: Vec<TieredReading>,
    /// The connection's pseudonyms under older key versions (empty with one key): a
    /// connection record found under one of them moves to `connection` (re-keying).
    pub previous: Vec<Pseudonym>,
    /// From the metering company's correction topic: each reading replaces a different
    /// stored value (counted in [`WriteOutcome::corrected`], listed in
    /// [`WriteOutcome::corrections`]) instead of being a conflict. Consent and retention
    /// still gate it; a time not stored yet is stored like a reading.
    pub correction: bool,
}

/// One tier entry replaced by a correction. No EAN: the connection is its pseudonym.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Correction {
    pub connection: Pseudonym,
    pub tier: Tier,
    pub register: Register,
    pub time: Timestamp,
    pub old: u64,
    pub new: u64,
}

/// A count per tier.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TierCounts {
    pub interval: u64,
    pub day: u64,
    pub month: u64,
}

impl TierCounts {
    pub fn get(&self, tier: Tier) -> u64 {
        match tier {
            Tier::Interval => self.interval,
            Tier::Day => self.day,
            Tier::Month => self.month,
        }
    }

    pub fn add(&mut self, tier: Tier, n: u64) {
        match tier {
            Tier::Interval => self.interval += n,
            Tier::Day => self.day += n,
            Tier::Month => self.month += n,
        }
    }

    pub fn total(&self) -> u64 {
        self.interval + self.day + self.month
    }

    pub fn merge(&mut self, other: &TierCounts) {
        for tier in Tier::ALL {
            self.add(tier, other.get(tier));
        }
    }
}

/// What the gate and the write did with a batch. One reading can count in several tiers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteOutcome {
    /// Newly stored tier entries.
    pub stored: TierCounts,
    /// Tier entries the connection's consent does not allow.
    pub dropped_by_consent: TierCounts,
    /// Tier entries already past retention on arrival.
    pub expired: TierCounts,
    /// Tier entries already stored with the same value.
    pub duplicates: u64,
    /// Tier entries already stored with a different value (the first value is kept).
    pub conflicts: u64,
    /// Tier entries bound for a stored block that cannot be decoded: set aside (quarantined)
    /// so that the batch and the ones after it flow.
    pub quarantined: u64,
    /// Tier entries newly stored for a period whose statistics are already frozen (they
    /// are not applied to the statistics), and tier entries of such a period replaced by a
    /// correction (the frozen statistics keep the old value).
    pub late: u64,
    /// Tier entries whose stored value a correction replaced.
    pub corrected: u64,
    /// The replaced entries of this write, one per tier entry, for the audit log. Not
    /// accumulated by [`WriteOutcome::merge`]: a running total would only grow.
    pub corrections: Vec<Correction>,
}

impl WriteOutcome {
    pub fn merge(&mut self, other: &WriteOutcome) {
        self.stored.merge(&other.stored);
        self.dropped_by_consent.merge(&other.dropped_by_consent);
        self.expired.merge(&other.expired);
        self.duplicates += other.duplicates;
        self.conflicts += other.conflicts;
        self.quarantined += other.quarantined;
        self.late += other.late;
        self.corrected += other.corrected;
    }
}

/// Retention per tier, plus the tiers an erasure request must leave in place.
#[derive(Debug, Clone)]
pub struct RetentionPolicy {
    pub interval: Duration,
    pub day: Duration,
    pub month: Duration,
    /// Frozen statistics (anonymous: rows of at least k connections, no identifier).
    pub statistics: Duration,
    /// Tiers kept on erasure (month readings: fiscal retention, Art. 52 AWR).
    pub erasure_hold: TierSet,
    /// Why the held tiers are kept, for the receipt.
    pub hold_reason: String,
}

impl Default for RetentionPolicy {
    fn default() -> Self {
        const DAY: u64 = 86_400;
        RetentionPolicy {
            // humantime's month is 30.44 days; these match `config/default.toml`.
            interval: Duration::from_secs(13 * 2_630_016),
            day: Duration::from_secs(24 * 2_630_016),
            month: Duration::from_secs(7 * 365 * DAY + 2 * DAY),
            // humantime's "10years" (a year is 365.25 days).
            statistics: Duration::from_secs(3_652 * DAY + DAY / 2),
            erasure_hold: TierSet::EMPTY.with(Tier::Month),
            hold_reason:
                "fiscal retention obligation (Art. 52 AWR): billing readings are kept for 7 years"
                    .into(),
        }
    }
}

impl RetentionPolicy {
    pub fn period(&self, tier: Tier) -> Duration {
        match tier {
            Tier::Interval => self.interval,
            Tier::Day => self.day,
            Tier::Month => self.month,
        }
    }

    /// When readings of a held tier whose latest lies at `latest` (UTC seconds) expire.
    pub fn kept_until(&self, tier: Tier, latest: Option<i64>) -> Timestamp {
        let secs = i64::try_from(self.period(tier).as_secs()).unwrap_or(i64::MAX);
        latest
            .and_then(|t| Timestamp::from_second(t.saturating_add(secs)).ok())
            .unwrap_or(Timestamp::MAX)
    }

    /// Readings of `tier` older than this instant are expired.
    pub fn horizon(&self, tier: Tier, now: Timestamp) -> Timestamp {
        let secs = i64::try_from(self.period(tier).as_secs()).unwrap_or(i64::MAX);
        Timestamp::from_second(now.as_second().saturating_sub(secs)).unwrap_or(Timestamp::MIN)
    }
}

/// What stays after an erasure, why, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kept {
    pub tier: Tier,
    pub count: u64,
    pub reason: String,
    /// When the last of the kept readings expires.
    pub until: Timestamp,
}

/// The answer to an erasure or a consent withdrawal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ErasureReceipt {
    pub deleted: TierCounts,
    /// 1 when the connection record was deleted.
    pub connection: u64,
    pub meters: u64,
    pub kept: Vec<Kept>,
}

/// Everything stored for one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SubjectExport {
    pub connection: Option<Connection>,
    /// The subject's privacy state (objection, erasure, seal) under any of its pseudonyms.
    pub state: crate::SubjectState,
    /// Pseudonyms of the meters seen on this connection.
    pub meters: Vec<Pseudonym>,
    pub interval: Vec<Reading>,
    pub day: Vec<Reading>,
    pub month: Vec<Reading>,
    /// When a correction last replaced a stored reading: (tier, register, reading time) →
    /// correction time. Readings never corrected are not listed.
    pub corrected: BTreeMap<(Tier, Register, Timestamp), Timestamp>,
}

impl SubjectExport {
    /// When the reading of `tier` was corrected, if it was.
    pub fn corrected_at(&self, tier: Tier, reading: &Reading) -> Option<Timestamp> {
        self.corrected
            .get(&(tier, reading.register, reading.time))
            .copied()
    }

    pub fn tier(&self, tier: Tier) -> &[Reading] {
        match tier {
            Tier::Interval => &self.interval,
            Tier::Day => &self.day,
            Tier::Month => &self.month,
        }
    }

    pub fn tier_mut(&mut self, tier: Tier) -> &mut Vec<Reading> {
        match tier {
            Tier::Interval => &mut self.interval,
            Tier::Day => &mut self.day,
            Tier::Month => &mut self.month,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.connection.is_none()
            && self.state.is_empty()
            && self.meters.is_empty()
            && Tier::ALL.iter().all(|t| self.tier(*t).is_empty())
    }
}

/// The audit log's head kept outside the log (docs/design.md, "Audit log"): how many lines
/// its chain has (`lines`, the last line's seq + 1), the last line's hash, and the seq of the
/// oldest line retention keeps. The store keeps it; `meterstand-audit` says what it means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuditAnchor {
    pub lines: u64,
    pub hash: [u8; 32],
    pub first: u64,
}

impl AuditAnchor {
    /// The stored form: a format byte (1), `lines` and `first` big-endian, the hash.
    pub const LEN: usize = 1 + 8 + 8 + 32;

    pub fn to_bytes(&self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[0] = 1;
        out[1..9].copy_from_slice(&self.lines.to_be_bytes());
        out[9..17].copy_from_slice(&self.first.to_be_bytes());
        out[17..].copy_from_slice(&self.hash);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<AuditAnchor> {
        let bytes: &[u8; Self::LEN] = bytes.try_into().ok()?;
        if bytes[0] != 1 {
            return None;
        }
        let mut hash = [0u8; 32];
        hash.copy_from_slice(&bytes[17..]);
        Some(AuditAnchor {
            lines: u64::from_be_bytes(bytes[1..9].try_into().ok()?),
            first: u64::from_be_bytes(bytes[9..17].try_into().ok()?),
            hash,
        })
    }
}

/// What a backup wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BackupInfo {
    pub files: u64,
    pub bytes: u64,
    /// The subject-journal sequence number the backup had applied.
    pub journal_seq: u64,
    /// Older backups removed by the rotation (`[backup] keep`).
    pub removed: u64,
}

/// Why a store call failed. Engine errors keep their source (RocksDB's or the file
/// system's) for the logs; `Clone`, because one failed group commit answers every batch in it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("storage engine error while {context}: {source}")]
    Engine {
        context: &'static str,
        #[source]
        source: std::sync::Arc<dyn std::error::Error + Send + Sync>,
    },
    #[error("the store is shut down")]
    Closed,
    #[error("stored data is corrupt in {0}")]
    Corrupt(&'static str),
    #[error("invalid query: {0}")]
    InvalidQuery(String),
    #[error("not supported by this store: {0}")]
    Unsupported(&'static str),
}

impl StoreError {
    /// An engine failure while doing `context` (a lowercase phrase: "writing a batch").
    pub fn engine(
        context: &'static str,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> StoreError {
        StoreError::Engine {
            context,
            source: std::sync::Arc::new(source),
        }
    }
}
