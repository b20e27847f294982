//! The audit log: who did what to which pseudonymous subject, when, and with what outcome.
//! This crate owns the file format, the keyed hash chain that makes removed or altered lines
//! detectable, appending (one synced line per call, file mode 0600, writers taking turns on
//! a lock file), monthly segments and their retention, verifying a log against its anchor,
//! and the per-token access report for the supplier's privacy officer. It knows no store
//! and no HTTP, and no master key: callers derive the chain keys ([`ChainKeys`], the `audit`
//! purpose key of `meterstand-pseudonym`), keep the anchor ([`AnchorSink`]), build an
//! [`AuditEntry`], and the [`AuditLog`] chains and writes it. See docs/design.md, "Audit log".
//!
//! # File format and hash rule
//!
//! One JSON object per line, UTF-8, each line ending in `\n`. The object holds the fields of
//! [`AuditEntry`] plus the chain fields:
//!
//! - `seq`: 0 for the first line, then +1 per line, across segments;
//! - `prev`: the `hash` of the line before, as 64 lowercase hex digits; for the first line 64
//!   zeros (the genesis hash, 32 zero bytes);
//! - `key_version`: on a keyed line, the master key version whose audit key hashes it;
//! - `hash`: `hex(H(prev_bytes ‖ canonical(object without "hash")))`, where `prev_bytes` are
//!   the 32 bytes `prev` spells, `canonical` is defined below, and `H` is BLAKE3 keyed with
//!   the audit key of `key_version` (`blake3::keyed_hash`), or plain BLAKE3 on an unkeyed
//!   line.
//!
//! `canonical(v)` is JSON without any whitespace, object keys sorted by their UTF-8 bytes, and
//! strings escaped only where JSON requires: `\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t`, other
//! characters below U+0020 as `\u00xx` (lowercase hex), everything else written as is. Numbers
//! are integers in plain decimal. For these entries Python's
//! `json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False)` gives the same
//! bytes.
//!
//! A line is valid only if its bytes (without the `\n`) are exactly `canonical(object)`, `hash`
//! included. With that rule every byte of the file is covered: changing, adding or removing any
//! byte breaks a hash, the canonical form, the JSON, or the line structure. Without the key
//! nobody can compute a keyed line's hash, so an edited line cannot be re-chained.
//!
//! # Keyed and unkeyed (legacy) lines
//!
//! Logs written before keyed chains hold unkeyed lines. The first time a log whose last line
//! is unkeyed is opened with keys, an `audit.keyed` line is appended: it is keyed, and its
//! `prev` fixes the hash of the whole legacy part, which from then on cannot be edited and
//! re-chained either. After a keyed line an unkeyed one is a problem ([`ProblemKind::Unkeyed`]),
//! and so is a log verified with keys that holds no keyed line at all (re-chained whole).
//! [`AuditLog::open`] (no keys) is for tests and benchmarks; it refuses a keyed log.
//!
//! # Segments and retention
//!
//! The configured path is the active segment. A writer opened with `roll_monthly` seals it
//! when an entry's month (UTC) is later than that of the active segment's first line: it is
//! renamed `<file name>.<seq of its first line, 20 digits>` (names sort in chain order), and
//! the new active segment starts with an `audit.segment` line whose `seq` and `prev` continue
//! the previous head (also in its `previous` parameter). [`AuditLog::remove_segments_before`]
//! removes whole sealed segments whose last line is older than a cutoff, oldest first, moves
//! the anchor's `first` before it deletes, and records an `audit.retention` line. The oldest
//! kept segment then starts with a keyed segment line: a provable cut, not an error. A
//! single-file log from before segments is simply the first segment.
//!
//! # What [`verify_with`] detects, and the anchor
//!
//! It walks every kept segment, oldest first, and names each broken line (file and 1-based
//! line number) with the reason: a line edited (hash or canonical form wrong, or not an entry
//! at all), lines deleted (a gap in `seq`, also across files, or a first line that is neither
//! seq 0 nor a segment line), lines reordered or duplicated (`seq` going back), a line whose
//! `prev` does not match the line before (that line was replaced, hash and all), a torn last
//! line (no `\n`), an unkeyed line where keyed ones are due, and an `audit.gap` line no
//! `audit.gap_acknowledged` line names.
//!
//! Deleting lines *at the end*, or whole segments *at the start*, leaves a shorter but valid
//! chain: nothing inside the files can tell. Both are detected against the [`Anchor`] kept
//! outside the log (the service: in the store, after every line, through [`AnchorSink`]):
//! the log must still hold the anchored head with the same hash ([`ProblemKind::Truncated`],
//! [`ProblemKind::HeadMismatch`]) and must start no later than the anchor's oldest kept seq
//! ([`ProblemKind::OutsideRetention`]). A writer's lines reach the sink after they are on
//! disk, so an anchor can only lag the log (a crash in between), never lead it.
//!
//! # Writers
//!
//! Appends are serialised within a process by the log's mutex and across processes by an
//! exclusive `flock` on `<file name>.lock`: the service and a command (`restore`, `keygen
//! --rotate`, `token revoke`, `audit acknowledge`) can write at the same time. Before each line
//! a writer takes in the lines others appended since its last one, if they continue its
//! chain; a file that shrank, was replaced, or holds lines that do not continue it is
//! [`AuditError::Changed`]. Only the long-running writer rolls segments.
//!
//! # Crash recovery
//!
//! A line counts only once its `\n` is on disk. If the file ends in a torn line (a crash in the
//! middle of a write), [`AuditLog::open`] truncates those bytes and appends an
//! `audit.recovered` line (actor `system`/`audit`) that records how many bytes were dropped and
//! their BLAKE3 hash, so the recovery itself is in the chain. If the last *complete* line is
//! not a valid entry, `open` refuses: that is tampering or corruption, for `verify` and a
//! person, not for automatic repair.
//!
//! # Identifiers
//!
//! Entries name connections only by pseudonym (`v<version>-<32 hex digits>`), and callers
//! never put an EAN in a route or parameter; as a safety net [`AuditLog::append`] refuses an
//! entry whose subjects are not pseudonyms or whose text holds a free-standing run of 18
//! digits. Tokens appear by id only, never the secret; operators by login name. EANs appear
//! only in a [`Report`] after [`Report::map_eans`] was given a CRM list explicitly.
//!
//! # Who and what, never a reading value
//!
//! The log outlives the readings it mentions (retention, erasure), so it holds no reading
//! value: a correction line ([`AuditEntry::correction`]) names the subject, the register and
//! the period (reading time and tiers) and how many stored entries were replaced, and
//! [`AuditLog::append`] refuses a correction entry with any other parameter
//! ([`CORRECTION_PARAMS`]). Correction lines written by earlier versions carry `old` and `new`
//! values; they are left as written (the chain covers them byte for byte) and still verify and
//! report.

mod chain;
mod entry;
mod keys;
mod log;
pub mod metrics;
mod report;
mod segments;
mod tail;
mod verify;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use chain::{Anchor, ProblemKind};
pub use chain::{ChainHead, ChainHeadParseError, GENESIS_HASH};
pub use entry::{Actor, AuditEntry, CORRECTION_PARAMS, Outcome, action, holds_ean_like};
pub use keys::ChainKeys;
pub use log::{AnchorSink, AuditLog, LogOptions, Removed};
pub use report::{
    ActorKind, ActorReport, CsvRow, EanMapping, EanSubject, Integrity, Report, report, report_with,
};
pub use segments::segments;
pub use verify::{Problem, VerifyReport, verify, verify_with};

/// The longest line read or written (4 MiB): far above any real entry, and a bound on the
/// memory a hostile file can make us use.
pub const MAX_LINE_BYTES: usize = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("cannot {op} audit log {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "audit log {path} is accessible by group or others (mode {mode:o}); run `chmod 600 {path}` and start again"
    )]
    TooOpen { path: PathBuf, mode: u32 },
    #[error(
        "audit log {path}: {reason}; run `meterstand audit verify`, and move the file aside to start a new chain"
    )]
    Corrupt { path: PathBuf, reason: String },
    #[error(
        "audit log {path} was changed behind this writer's back (shortened, replaced, or lines that do not continue the chain); run `meterstand audit verify`"
    )]
    Changed { path: PathBuf },
    #[error(
        "audit log {path} is keyed; it can be appended to only with the chain keys (as the service and `meterstand` commands do)"
    )]
    Keyed { path: PathBuf },
    #[error(
        "audit log {path} stopped after a failed write that could not be undone; reopen it to recover"
    )]
    Broken { path: PathBuf },
    #[error("audit log lock poisoned: a thread panicked while appending")]
    Poisoned,
    #[error(
        "audit entry {field} looks like it holds an EAN; the audit log names connections only by pseudonym"
    )]
    Identifier { field: String },
    #[error(
        "correction audit entry has the parameter {field}; a correction line names subject, register and period (register, time, tiers), never a reading value"
    )]
    ReadingValue { field: String },
    #[error("audit entry subject #{index} is not a pseudonym (v<version>-<32 hex digits>)")]
    Subject { index: usize },
    #[error("audit entry has an empty {field}")]
    Empty { field: &'static str },
    #[error("audit entry is {len} bytes as a line, more than the {max} allowed")]
    TooLarge { len: usize, max: usize },
    #[error("audit report window: from {from} is after to {to}")]
    Window { from: String, to: String },
    #[error("cannot encode audit data as JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot write the audit report as CSV: {0}")]
    Csv(#[from] csv::Error),
}
