//! `meterstand backup --name NAME` asks the running service for a consistent checkpoint in
//! a child of `[backup] dir`; `meterstand restore --from DIR` puts one in place of
//! `store.path` (service stopped): it refuses when the subject journal does not reach back
//! to the backup, keeps every statistics period the replaced store had frozen, replays the
//! erasures, consent changes and objections journalled since the backup was taken, and
//! proves it opens. A restore is audited (`store.restore`: which backup, which journal
//! entries were replayed), and its line anchored in the restored store; the audit log must
//! open before anything is touched.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use meterstand_audit::{AuditEntry, AuditLog, LogOptions, Outcome, action};
use meterstand_store::backups::BackupRecord;
use meterstand_store::journal::SubjectJournal;
use meterstand_store::{ReadingStore, SystemClock};
use meterstand_store_rocks::{RocksStore, StoreConfig};

use crate::client::{Client, ServerArgs};
use crate::config::Config;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// Name of the backup: a new child of the service's `[backup] dir` (letters, digits,
    /// '.', '_', '-'). On the store's file system unchanged files are hard-linked, so a
    /// backup costs little space.
    #[arg(long, value_name = "NAME")]
    pub name: String,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A directory written by `meterstand backup`.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Replace an existing store.path instead of refusing. The old store is deleted once
    /// the restore opens, unless --keep-previous is given.
    #[arg(long)]
    pub force: bool,
    /// With --force: keep the old store as PATH.before-restore-TIME. Such a copy is
    /// outside every retention and erasure (the journal replays only onto the restored store):
    /// delete it yourself as soon as you can.
    #[arg(long, requires = "force")]
    pub keep_previous: bool,
    /// Restore although the subject journal does not reach back to the backup (pruned,
    /// missing or reset): erasures, consent changes and objections made after the backup
    /// may then be undone, and must be carried out again by hand.
    #[arg(long)]
    pub accept_journal_gap: bool,
}

pub async fn backup(args: BackupArgs, default_server: &str) -> anyhow::Result<()> {
    let client = Client::new(&args.server, default_server)?;
    let body = client
        .send(
            reqwest::Method::POST,
            "/v1/backups",
            Some(serde_json::json!({ "name": args.name })),
        )
        .await?;
    let v: serde_json::Value = serde_json::from_str(&body).context("unexpected answer")?;
    println!(
        "backup written to {} ({} files, {} bytes, {} ms)",
        v["path"].as_str().unwrap_or("?"),
        v["files"],
        v["bytes"],
        v["millis"]
    );
    println!("the master key file is not in it: back it up separately");
    Ok(())
}

fn copy_dir(from: &Path, to: &Path) -> anyhow::Result<u64> {
    std::fs::create_dir_all(to)?;
    let mut files = 0;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            files += copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)
                .with_context(|| format!("copying {}", entry.path().display()))?;
            files += 1;
        }
    }
    Ok(files)
}

/// Restores, and writes the `store.restore` line (outcome `error` when it fails after the
/// audit log opened).
pub fn restore(
    args: RestoreArgs,
    config: &Config,
    env: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let keys = crate::audit::load_chain_keys(config, env)?;
    let log = AuditLog::open_with(
        &config.api.audit_log,
        LogOptions {
            keys,
            roll_monthly: false,
        },
    )
    .with_context(|| {
        format!(
            "opening api.audit_log {} (a restore is audited)",
            config.api.audit_log.display()
        )
    })?;
    let restored = restore_store(&args, config, &log);
    if restored.is_err() {
        let line = AuditEntry::operator(action::STORE_RESTORE, Outcome::Error)
            .with_param("backup", backup_label(&args.from));
        if let Err(e) = log.append(&line) {
            eprintln!("warning: the failed restore could not be audited: {e}");
        }
    }
    restored
}

/// The backup's directory name for the audit line, unless it looks like it holds an EAN.
fn backup_label(from: &Path) -> String {
    let name = from
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if meterstand_audit::holds_ean_like(&name) {
        "(withheld: the name looks like an EAN)".into()
    } else {
        name
    }
}

fn restore_store(args: &RestoreArgs, config: &Config, log: &AuditLog) -> anyhow::Result<()> {
    let target = config.store.path.clone();
    let occupied = check_restorable(args, &target)?;
    let store_config = crate::service::store_config(config)?;
    // Read before anything opens a store (opening creates an empty journal where none is).
    let journal = SubjectJournal::read(&config.store.journal)?;
    let previous = open_previous(occupied, &store_config)?;
    // The backup, copied beside the target and opened without the journal: its watermark.
    let staging = sibling(&target, "restoring");
    if staging.exists() {
        std::fs::remove_dir_all(&staging)
            .with_context(|| format!("removing the unfinished restore {}", staging.display()))?;
    }
    let files = copy_dir(&args.from, &staging)?;
    let staged = RocksStore::open(
        StoreConfig {
            path: staging.clone(),
            journal: None,
            ..store_config.clone()
        },
        Arc::new(SystemClock),
    )
    .with_context(|| format!("the backup {} does not open", args.from.display()))?;
    let from = staged.journal_watermark()?;
    let applied = previous.as_ref().map_or(0, |(_, applied)| *applied);
    if let Some(gap) = journal.gap(from, applied) {
        if !args.accept_journal_gap {
            drop(staged);
            let _ = std::fs::remove_dir_all(&staging);
            bail!(
                "refusing to restore: {gap}. The backup had applied the subject journal up to #{from}; \
                 without the entries after it, erasures, consent changes and objections made since the backup \
                 would be undone (erased readings would come back). Restore the journal ({}) from where you keep \
                 its copy, or pass --accept-journal-gap and carry them out again by hand",
                config.store.journal.display()
            );
        }
        println!(
            "warning: {gap}; restoring anyway (--accept-journal-gap): erasures, consent changes and objections made after the backup (journal entries after #{from}) may be undone: carry them out again"
        );
    }
    let carried = match &previous {
        Some((live, _)) => carry_statistics(live, &staged)?,
        None => 0,
    };
    staged.close()?;
    let aside = move_aside(previous.map(|(live, _)| live), &target, args.keep_previous)?;
    std::fs::rename(&staging, &target)
        .with_context(|| format!("moving the restored store to {}", target.display()))?;
    // Opening replays the journal: erasures, consent changes and objections after the backup.
    let store = Arc::new(
        RocksStore::open(store_config, Arc::new(SystemClock))
            .with_context(|| format!("the restored store at {} does not open", target.display()))?,
    );
    for line in store.replayed() {
        println!("re-applied {line}");
    }
    audit_restore(log, args, &store, from, carried)?;
    let sizes = store.refresh_size_metrics()?;
    store.close()?;
    if let Some(aside) = aside.filter(|_| !args.keep_previous) {
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("deleting the previous store {}", aside.display()))?;
        println!("deleted the previous store");
    }
    println!(
        "restored {files} files from {} to {}; {carried} frozen statistics periods kept from the store it replaced; it opens cleanly (bytes per tier: interval {}, day {}, month {})",
        args.from.display(),
        target.display(),
        sizes.interval,
        sizes.day,
        sizes.month
    );
    Ok(())
}

/// Whether `args.from` is a backup and the target may take it; whether the target holds a
/// store (to be moved aside).
fn check_restorable(args: &RestoreArgs, target: &Path) -> anyhow::Result<bool> {
    if !args.from.join("CURRENT").is_file() {
        bail!(
            "{} is not a meterstand backup (no RocksDB CURRENT file)",
            args.from.display()
        );
    }
    let occupied = target.exists()
        && std::fs::read_dir(target)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
    if occupied && !args.force {
        bail!(
            "store.path {} is not empty; stop the service and pass --force to move it aside",
            target.display()
        );
    }
    Ok(occupied)
}

/// The store being replaced: its watermark, and the statistics it froze (a restore never
/// changes a frozen period). Opening it also proves no service holds it (RocksDB's lock is
/// advisory to rename).
fn open_previous(
    occupied: bool,
    store_config: &StoreConfig,
) -> anyhow::Result<Option<(RocksStore, u64)>> {
    if !occupied {
        println!(
            "note: no store at {} to carry frozen statistics over from: periods frozen after the backup was taken will be computed again from the restored readings",
            store_config.path.display()
        );
        return Ok(None);
    }
    let live =
        RocksStore::open(store_config.clone(), Arc::new(SystemClock)).with_context(|| {
            format!(
                "the store at {} is in use or damaged; stop the service first",
                store_config.path.display()
            )
        })?;
    let applied = live.journal_watermark()?;
    Ok(Some((live, applied)))
}

/// Closes the replaced store and moves it beside the target (or removes an empty target
/// directory); where it went.
fn move_aside(
    previous: Option<RocksStore>,
    target: &Path,
    keep_previous: bool,
) -> anyhow::Result<Option<PathBuf>> {
    let Some(live) = previous else {
        if target.exists() {
            std::fs::remove_dir(target)
                .with_context(|| format!("replacing the empty {}", target.display()))?;
        }
        return Ok(None);
    };
    live.close()?;
    let stamp = jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ");
    let moved = sibling(target, &format!("before-restore-{stamp}"));
    std::fs::rename(target, &moved)
        .with_context(|| format!("moving {} aside", target.display()))?;
    if keep_previous {
        println!(
            "kept the old store as {} (outside retention and erasure: delete it soon)",
            moved.display()
        );
    }
    Ok(Some(moved))
}

/// The restore's audit line: which backup, and which journal entries were replayed onto it;
/// anchored in the store now in place (its own anchor is the backup's, older than the log).
fn audit_restore(
    log: &AuditLog,
    args: &RestoreArgs,
    store: &Arc<RocksStore>,
    from: u64,
    carried: u64,
) -> anyhow::Result<()> {
    let record = BackupRecord::read(&args.from).ok().flatten();
    let line = AuditEntry::operator(action::STORE_RESTORE, Outcome::Ok)
        .with_param("backup", backup_label(&args.from))
        .with_param(
            "taken",
            record.map(|r| r.taken).unwrap_or_else(|| "unknown".into()),
        )
        .with_param("journal_from", from.to_string())
        .with_param("journal_to", store.journal_watermark()?.to_string())
        .with_param("replayed", store.replayed().len().to_string())
        .with_param("journal_gap_accepted", args.accept_journal_gap.to_string())
        .with_param("frozen_periods_kept", carried.to_string());
    log.attach_anchor(Arc::new(crate::audit::anchor::StoreAnchor(store.clone())))?;
    log.append(&line)
        .context("writing the restore's audit line")?;
    Ok(())
}

/// `PATH.suffix` beside `path`.
fn sibling(path: &Path, suffix: &str) -> PathBuf {
    PathBuf::from(format!("{}.{suffix}", path.display()))
}

/// Copies every frozen period of `from` that `to` does not have: the statistics published
/// before the restore are published after it, unchanged (anonymous, they outlive readings,
/// erasure and restores). A year at a time, so memory follows a year of periods.
fn carry_statistics(from: &RocksStore, to: &RocksStore) -> anyhow::Result<u64> {
    const YEAR: i64 = 366 * 86_400;
    let mut carried = 0;
    for tier in meterstand_model::Tier::ALL {
        for kind in meterstand_store::freeze::KINDS {
            let all = from.statistics(tier, kind, jiff::Timestamp::MIN, jiff::Timestamp::MAX)?;
            let (Some(first), Some(last)) = (all.first(), all.last()) else {
                continue;
            };
            let (first, last) = (
                first.key.period_start.as_second(),
                last.key.period_start.as_second(),
            );
            drop(all);
            let mut start = first;
            while start <= last {
                let end = start.saturating_add(YEAR);
                let periods = from.statistics(
                    tier,
                    kind,
                    jiff::Timestamp::from_second(start)?,
                    jiff::Timestamp::from_second(end.min(last + 1))?,
                )?;
                carried += to.freeze(&periods, None)?;
                start = end;
            }
        }
    }
    Ok(carried)
}
