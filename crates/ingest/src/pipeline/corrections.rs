//! Corrections: the gate that keeps them out unless `ingest.corrections` is on, and the
//! audit lines of those applied.
//!
//! Who published a correction: MQTT does not tell a subscriber who published a message, so
//! the audit line names the role the broker's ACL grants publishing on
//! `{prefix}/+/correction/#`, [`CORRECTION_PUBLISHER`]. That is only true when the ACL
//! lets no other account publish there (docs/operations.md, "The broker", shows the ACL):
//! the trust assumption of turning corrections on.

use std::sync::Arc;

use jiff::Timestamp;
use meterstand_audit::{Actor, AuditEntry, AuditLog};
use meterstand_codec::Reject;
use meterstand_model::{Register, TierSet};
use meterstand_pseudonym::Pseudonym;
use meterstand_store::Correction;

use super::{Context, WRITE_BACKOFF};
use crate::backoff::Backoff;
use crate::{IngestError, metrics};

/// The actor of a correction's audit line (kind `system`): the publisher role the broker's
/// ACL grants the correction topics, not ingest, which only applies what it was sent.
pub const CORRECTION_PUBLISHER: &str = "mqtt/corrections";

/// The reject reason (`meterstand_ingest_rejected_total{reason}`) of a correction that
/// arrived while `ingest.corrections` is off.
pub const CORRECTIONS_DISABLED: &str = "corrections_disabled";

/// Why a message is refused: one of the codec's reasons, or a correction while corrections
/// are off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    Codec(Reject),
    CorrectionsDisabled,
}

impl From<Reject> for Refused {
    fn from(r: Reject) -> Refused {
        Refused::Codec(r)
    }
}

impl Refused {
    /// The metric label.
    pub(super) fn reason(self) -> &'static str {
        match self {
            Refused::Codec(r) => r.reason(),
            Refused::CorrectionsDisabled => CORRECTIONS_DISABLED,
        }
    }
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Codec(r) => r.fmt(f),
            Refused::CorrectionsDisabled => {
                f.write_str("a correction while ingest.corrections is off")
            }
        }
    }
}

/// One reading of a correction message: who and what, never the value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct CorrectedReading {
    pub connection: Pseudonym,
    pub register: Register,
    pub time: Timestamp,
    /// The tiers whose period starts at `time`.
    pub tiers: TierSet,
}

/// Writes the audit lines of a durably written batch's corrections, before any of its acks
/// is released: one line per reading of a correction message (a reading in several tiers is
/// one line) naming the subject's pseudonym, the register and the period (reading time and
/// tiers) and how many stored tier entries this write replaced. Never the EAN, never the old
/// or the new value: the audit log outlives retention and erasure.
///
/// Why every reading of a correction message, and not only the entries the store reports
/// replaced: a correction whose line could not be written is not acknowledged (the caller
/// fails the batch, ingest stops), so the broker redelivers it; the store then finds the
/// corrected value already stored, a duplicate, and reports no replacement. The line comes
/// from the message itself, so the redelivery writes it (with 0 replaced entries), and so
/// does a redelivery after a crash between the store write and the audit line. No correction
/// is acknowledged without its audit line; a line may appear twice (a crash after the line
/// and before the ack), never not at all. A correction that changed nothing (the same value,
/// a time not stored before, a tier the consent gate dropped) gets its line too, with the
/// entries it replaced counted as 0 or fewer than its tiers.
///
/// A failed append is retried like a failed store write (`write_retries`, with backoff),
/// continuing after the lines already written. Past that, the batch is not acknowledged and
/// ingest stops with [`IngestError::Audit`].
pub(super) async fn audit_corrections(
    ctx: &Context,
    readings: &[CorrectedReading],
    replaced: Vec<Correction>,
) -> Result<(), IngestError> {
    if readings.is_empty() && replaced.is_empty() {
        return Ok(());
    }
    let (lines, corrected) = lines_of(readings, &replaced);
    metrics::CORRECTED_READINGS.inc_by(corrected as u64);
    let Some(audit) = ctx.config.audit.clone() else {
        return Ok(());
    };
    let entries: Arc<Vec<AuditEntry>> = Arc::new(
        lines
            .into_iter()
            .map(|(r, n)| {
                let mut entry = AuditEntry::correction(
                    r.connection.to_string(),
                    r.register.obis(),
                    r.time,
                    r.tiers.iter().map(|t| t.as_str()),
                    n,
                );
                entry.actor = Actor::system(CORRECTION_PUBLISHER);
                entry
            })
            .collect(),
    );
    write_lines(ctx, audit, entries).await
}

/// One line per (subject, register, time), in arrival order, with the tier entries the
/// store replaced; an entry the store reports that no message reading names (it should not
/// happen) still gets a line of its own. Also how many readings had a value replaced.
fn lines_of(
    readings: &[CorrectedReading],
    replaced: &[Correction],
) -> (Vec<(CorrectedReading, u64)>, usize) {
    let mut lines: Vec<(CorrectedReading, u64)> = Vec::new();
    let mut index = std::collections::HashMap::new();
    for r in readings {
        index
            .entry((r.connection, r.register, r.time))
            .or_insert_with(|| {
                lines.push((*r, 0));
                lines.len() - 1
            });
    }
    let mut corrected = std::collections::HashSet::new();
    for c in replaced {
        corrected.insert((c.connection, c.register, c.time));
        let i = *index
            .entry((c.connection, c.register, c.time))
            .or_insert_with(|| {
                lines.push((
                    CorrectedReading {
                        connection: c.connection,
                        register: c.register,
                        time: c.time,
                        tiers: TierSet::EMPTY,
                    },
                    0,
                ));
                lines.len() - 1
            });
        let (line, n) = &mut lines[i];
        line.tiers = line.tiers.with(c.tier);
        *n += 1;
    }
    (lines, corrected.len())
}

/// Appends `entries` on a blocking thread, retried like a store write; what could not be
/// written fails the batch (nothing of it is acknowledged).
async fn write_lines(
    ctx: &Context,
    audit: AuditLog,
    entries: Arc<Vec<AuditEntry>>,
) -> Result<(), IngestError> {
    let total = entries.len();
    let mut written = 0;
    let mut backoff = Backoff::new(WRITE_BACKOFF.0, WRITE_BACKOFF.1);
    let mut attempt = 1u32;
    loop {
        let (audit, batch) = (audit.clone(), entries.clone());
        let (done, result) = tokio::task::spawn_blocking(move || {
            let mut done = written;
            for entry in &batch[written..] {
                if let Err(e) = audit.append(entry) {
                    return (done, Err(e));
                }
                done += 1;
            }
            (done, Ok(()))
        })
        .await
        .map_err(|e| IngestError::task("audit write", &e))?;
        written = done;
        let error = match result {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if attempt > ctx.config.write_retries {
            metrics::CORRECTION_AUDIT_FAILURES.inc_by((total - written) as u64);
            return Err(IngestError::Audit {
                lines: total - written,
                attempts: attempt,
                source: error,
            });
        }
        let delay = backoff.next_delay();
        tracing::warn!(
            error = %error,
            attempt,
            retry_in_ms = delay.as_millis() as u64,
            "cannot write the audit lines of corrections; retrying"
        );
        tokio::time::sleep(delay).await;
        attempt += 1;
    }
}
