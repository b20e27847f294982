//! The service's side of the anchored audit chain (docs/design.md, "Audit log"): the store
//! keeps the head after every line ([`StoreAnchor`]); at start-up the log is compared with
//! the head the store kept, and what only the anchor can show (a removed tail, oldest
//! segments removed early) is written into the chain as an `audit.gap` line before the
//! anchor moves on; then the whole log is verified in the background. Every few minutes
//! [`watch`] takes in other writers' lines, logs the head, re-verifies while the chain is
//! not intact, and removes segments past `retention.audit`. Reported as
//! `meterstand_audit_head_sequence` and `meterstand_audit_chain_intact`; the service keeps
//! running either way.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use meterstand_audit::metrics::{CHAIN_INTACT, HEAD_SEQUENCE};
use meterstand_audit::{
    Actor, Anchor, AnchorSink, AuditEntry, AuditLog, ChainHead, ChainKeys, LogOptions, Outcome,
    action,
};
use meterstand_store::{AuditAnchor, ReadingStore};
use tokio_util::sync::CancellationToken;

/// How often the head is logged, other writers' lines taken in, and retention applied.
pub const WATCH_EVERY: Duration = Duration::from_secs(300);

/// The sequence number of a head's last line as text ("-" for an empty log).
pub fn sequence_text(head: ChainHead) -> String {
    head.last_seq()
        .map_or_else(|| "-".to_string(), |s| s.to_string())
}

pub fn from_record(record: AuditAnchor) -> Anchor {
    Anchor {
        head: ChainHead {
            lines: record.lines,
            hash: record.hash,
        },
        first: Some(record.first),
    }
}

pub fn to_record(anchor: &Anchor) -> AuditAnchor {
    AuditAnchor {
        lines: anchor.head.lines,
        hash: anchor.head.hash,
        first: anchor.first.unwrap_or(0),
    }
}

/// Keeps the head in the store after every line and exports its sequence number.
pub struct StoreAnchor(pub Arc<dyn ReadingStore>);

impl std::fmt::Debug for StoreAnchor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StoreAnchor")
    }
}

impl AnchorSink for StoreAnchor {
    fn anchor(&self, anchor: &Anchor) {
        HEAD_SEQUENCE.set(
            anchor
                .head
                .last_seq()
                .map_or(-1, |s| i64::try_from(s).unwrap_or(i64::MAX)),
        );
        if let Err(e) = self.0.set_audit_anchor(&to_record(anchor)) {
            tracing::error!(error = %e, head = %anchor.head, "cannot anchor the audit log's head in the store");
        }
    }
}

/// The gap lines for what only the anchor shows: lines removed from the end, and segments
/// removed before retention let them go.
fn gaps(anchored: &Anchor, now: &Anchor) -> Vec<AuditEntry> {
    let mut lines = Vec::new();
    let gap = |at: &str, found: String, anchor: u64, missing: u64| {
        AuditEntry::new(Actor::system("audit"), action::AUDIT_GAP, Outcome::Error)
            .with_param("at", at)
            .with_param("found", found)
            .with_param("anchor", anchor.to_string())
            .with_param("missing", missing.to_string())
    };
    if let Some(anchored_seq) = anchored.head.last_seq()
        && now.head.lines < anchored.head.lines
    {
        lines.push(gap(
            "end",
            sequence_text(now.head),
            anchored_seq,
            anchored.head.lines - now.head.lines,
        ));
    }
    if let (Some(kept), Some(first)) = (anchored.first, now.first)
        && first > kept
        && now.head.lines > 0
    {
        lines.push(gap("start", first.to_string(), kept, first - kept));
    }
    lines
}

/// Opens the service's log (keyed, monthly segments), compares it with the anchor the store
/// kept, writes a gap line for what is missing, then attaches the store as the anchor.
/// Returns the log and the anchor found at start, for [`watch`]'s first verification.
pub fn open_for_service(
    path: &Path,
    keys: ChainKeys,
    store: Arc<dyn ReadingStore>,
) -> anyhow::Result<(AuditLog, Option<Anchor>)> {
    let anchored = store
        .audit_anchor()
        .context("reading the audit anchor from the store")?
        .map(from_record);
    let log = AuditLog::open_with(
        path,
        LogOptions {
            keys,
            roll_monthly: true,
        },
    )
    .with_context(|| format!("opening api.audit_log {}", path.display()))?;
    let now = log.anchor()?;
    CHAIN_INTACT.set(1);
    if let Some(anchored) = &anchored {
        for line in gaps(anchored, &now) {
            CHAIN_INTACT.set(0);
            let param = |k: &str| line.params.get(k).cloned().unwrap_or_default();
            tracing::error!(
                at = %param("at"),
                found = %param("found"),
                anchor = %param("anchor"),
                missing = %param("missing"),
                log = %path.display(),
                "audit log does not reach the head anchored in the store: lines were removed; recorded as an audit.gap line (see `meterstand audit verify`)"
            );
            log.append(&line).context("writing the audit.gap line")?;
        }
    }
    log.attach_anchor(Arc::new(StoreAnchor(store)))?;
    tracing::info!(head = %log.head()?, anchored = ?anchored.map(|a| a.head.to_string()), "audit log opened");
    Ok((log, anchored))
}

/// Verifies the whole log against `anchor`; sets `meterstand_audit_chain_intact` and logs an
/// error naming the first problem. Blocking.
pub fn check(path: &Path, keys: &ChainKeys, anchor: Option<&Anchor>) -> bool {
    match meterstand_audit::verify_with(path, keys, anchor) {
        Ok(report) if report.is_ok() => {
            CHAIN_INTACT.set(1);
            true
        }
        Ok(report) => {
            CHAIN_INTACT.set(0);
            let first = report
                .first_problem()
                .map(ToString::to_string)
                .unwrap_or_default();
            tracing::error!(
                problems = report.problem_count,
                first = %first,
                log = %path.display(),
                "audit log does not verify; run `meterstand audit verify`"
            );
            false
        }
        Err(e) => {
            CHAIN_INTACT.set(0);
            tracing::error!(error = %e, "cannot verify the audit log");
            false
        }
    }
}

/// What [`watch`] needs.
#[derive(Debug, Clone)]
pub struct Watch {
    pub log: AuditLog,
    pub keys: ChainKeys,
    /// The anchor found at start-up: the first verification is against it.
    pub anchored: Option<Anchor>,
    /// `retention.audit`.
    pub retention: Duration,
    pub every: Duration,
}

/// The start-up verification, then every `every` until `stop`: take in other writers'
/// lines and log the head, re-verify while not intact, remove segments past retention.
pub async fn watch(w: Watch, stop: CancellationToken) {
    let path: PathBuf = w.log.path().to_path_buf();
    let mut anchor = w.anchored;
    let mut tick = tokio::time::interval(w.every);
    // An interval's first tick is at once: the first round runs now.
    tick.tick().await;
    loop {
        let (log, keys, first) = (w.log.clone(), w.keys.clone(), anchor.take());
        let path = path.clone();
        let retention = w.retention;
        let run = tokio::task::spawn_blocking(move || {
            if let Some(anchor) = first {
                check(&path, &keys, Some(&anchor));
            }
            round(&log, &path, &keys, retention);
        });
        if let Err(e) = run.await {
            tracing::error!(error = %e, "audit log check panicked");
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
    }
}

/// One round of [`watch`]. Blocking.
fn round(log: &AuditLog, path: &Path, keys: &ChainKeys, retention: Duration) {
    match log.refresh() {
        Ok(head) => tracing::info!(
            %head,
            sequence = %sequence_text(head),
            intact = CHAIN_INTACT.get(),
            "audit chain head"
        ),
        Err(e) => {
            CHAIN_INTACT.set(0);
            tracing::error!(error = %e, "audit log changed behind the service's back");
        }
    }
    if CHAIN_INTACT.get() == 0
        && let Ok(anchor) = log.anchor()
    {
        // Until it verifies again (an operator acknowledged the gap, or repaired the file).
        check(path, keys, Some(&anchor));
    }
    let keep = jiff::SignedDuration::try_from(retention).unwrap_or(jiff::SignedDuration::MAX);
    let cutoff = jiff::Timestamp::now()
        .checked_sub(keep)
        .unwrap_or(jiff::Timestamp::MIN);
    match log.remove_segments_before(cutoff) {
        Ok(removed) if !removed.segments.is_empty() => tracing::info!(
            segments = removed.segments.len(),
            kept_from = removed.first,
            "audit retention removed old segments"
        ),
        Ok(_) => {}
        Err(e) => tracing::error!(error = %e, "audit retention failed"),
    }
}
