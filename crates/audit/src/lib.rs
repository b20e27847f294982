//! The audit log: who did what to which pseudonymous subject, when, and with what outcome.
//! This crate owns the file format, the hash chain that makes removed or altered lines
//! detectable, appending (one synced line per call, file mode 0600), verifying a log, and the
//! per-token access report for the supplier's privacy officer. It knows no keys, no store and no
//! HTTP: callers build an [`AuditEntry`] and the [`AuditLog`] chains and writes it.
//!
//! # File format and hash rule
//!
//! One JSON object per line, UTF-8, each line ending in `\n`. The object holds the fields of
//! [`AuditEntry`] plus three chain fields:
//!
//! - `seq`: 0 for the first line, then +1 per line;
//! - `prev`: the `hash` of the line before, as 64 lowercase hex digits; for the first line 64
//!   zeros (the genesis hash, 32 zero bytes);
//! - `hash`: `hex(BLAKE3(prev_bytes ‖ canonical(object without "hash")))`, where `prev_bytes`
//!   are the 32 bytes `prev` spells and `canonical` is defined below.
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
//! byte breaks a hash, the canonical form, the JSON, or the line structure.
//!
//! # What [`verify`] detects, and what it cannot
//!
//! It walks the whole file and names each broken line (1-based) with the reason: a line edited
//! (hash or canonical form wrong, or not an entry at all), lines deleted (a gap in `seq`), lines
//! reordered or duplicated (`seq` going back), a line whose `prev` does not match the line
//! before (that line was replaced, hash and all), and a torn last line (no `\n`).
//!
//! Deleting lines *at the end* leaves a shorter but perfectly valid chain, and so does
//! replacing the whole file with a freshly computed chain: nothing inside the file can tell.
//! Both are detected only against a head recorded elsewhere: [`AuditLog::head`] returns the
//! current [`ChainHead`] (`<lines>:<hash>`); the service should log it at start-up and
//! periodically (and after each backup), and [`verify`] checks a given head is still in the
//! file. The chain is not keyed, so it proves integrity relative to such a head, not who wrote
//! the file.
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
//! digits. Tokens appear by id only, never the secret. EANs appear only in a [`Report`] after
//! [`Report::map_eans`] was given a CRM list explicitly.
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
mod log;
mod report;
mod verify;

#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use chain::{ChainHead, ChainHeadParseError, GENESIS_HASH};
pub use entry::{Actor, AuditEntry, CORRECTION_PARAMS, Outcome, action, holds_ean_like};
pub use log::AuditLog;
pub use report::{
    ActorKind, ActorReport, CsvRow, EanMapping, EanSubject, Integrity, Report, report,
};
pub use verify::{Problem, ProblemKind, VerifyReport, verify};

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
        "audit log {path} was changed by another writer since it was opened; open one AuditLog per file and share it"
    )]
    Changed { path: PathBuf },
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
