//! `meterstand backup --name NAME` asks the running service for a consistent checkpoint in
//! a child of `[backup] dir`; `meterstand restore --from DIR` puts one in place of
//! `store.path` (service stopped), replays the erasures and consent changes journalled
//! since the backup was taken, and proves it opens.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use meterstand_store::SystemClock;
use meterstand_store_rocks::RocksStore;

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

pub fn restore(args: RestoreArgs, config: &Config) -> anyhow::Result<()> {
    let target = config.store.path.clone();
    if !args.from.join("CURRENT").is_file() {
        bail!(
            "{} is not a meterstand backup (no RocksDB CURRENT file)",
            args.from.display()
        );
    }
    let mut aside = None;
    let occupied = target.exists()
        && std::fs::read_dir(&target)
            .map(|mut d| d.next().is_some())
            .unwrap_or(true);
    if occupied {
        if !args.force {
            bail!(
                "store.path {} is not empty; stop the service and pass --force to move it aside",
                target.display()
            );
        }
        let moved = PathBuf::from(format!(
            "{}.before-restore-{}",
            target.display(),
            jiff::Timestamp::now().strftime("%Y%m%dT%H%M%SZ")
        ));
        // RocksDB's lock is advisory to rename: make sure no service holds the store.
        let probe = RocksStore::open(crate::service::store_config(config)?, Arc::new(SystemClock))
            .with_context(|| {
                format!(
                    "the store at {} is in use or damaged; stop the service first",
                    target.display()
                )
            })?;
        probe.close()?;
        std::fs::rename(&target, &moved)
            .with_context(|| format!("moving {} aside", target.display()))?;
        if args.keep_previous {
            println!(
                "kept the old store as {} (outside retention and erasure: delete it soon)",
                moved.display()
            );
        }
        aside = Some(moved);
    }
    let files = copy_dir(&args.from, &target)?;
    // Opening replays the journal: erasures and consent changes made after the backup.
    let store = RocksStore::open(crate::service::store_config(config)?, Arc::new(SystemClock))
        .with_context(|| format!("the restored store at {} does not open", target.display()))?;
    for line in store.replayed() {
        println!("re-applied {line}");
    }
    let sizes = store.refresh_size_metrics()?;
    store.close()?;
    if let Some(aside) = aside.filter(|_| !args.keep_previous) {
        std::fs::remove_dir_all(&aside)
            .with_context(|| format!("deleting the previous store {}", aside.display()))?;
        println!("deleted the previous store");
    }
    println!(
        "restored {files} files from {} to {}; it opens cleanly (bytes per tier: interval {}, day {}, month {})",
        args.from.display(),
        target.display(),
        sizes.interval,
        sizes.day,
        sizes.month
    );
    Ok(())
}
