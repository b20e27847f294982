//! `meterstand backup --to DIR` asks the running service for a consistent checkpoint;
//! `meterstand restore --from DIR` puts one in place of `store.path` (service stopped) and
//! proves it opens.

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
    /// Directory for the backup, on the service's machine; it must not exist yet. On the
    /// store's file system unchanged files are hard-linked, so a backup costs little space.
    #[arg(long, value_name = "DIR")]
    pub to: PathBuf,
    #[command(flatten)]
    pub server: ServerArgs,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A directory written by `meterstand backup`.
    #[arg(long, value_name = "DIR")]
    pub from: PathBuf,
    /// Move an existing store.path aside (to PATH.before-restore-TIME) instead of refusing.
    #[arg(long)]
    pub force: bool,
}

pub async fn backup(args: BackupArgs, default_listen: &str) -> anyhow::Result<()> {
    let to = if args.to.is_absolute() {
        args.to.clone()
    } else {
        std::env::current_dir()?.join(&args.to)
    };
    let client = Client::new(&args.server, default_listen)?;
    let body = client
        .send(
            reqwest::Method::POST,
            "/v1/backups",
            Some(serde_json::json!({ "to": to.display().to_string() })),
        )
        .await?;
    let v: serde_json::Value = serde_json::from_str(&body).context("unexpected answer")?;
    println!(
        "backup written to {} ({} files, {} bytes, {} ms)",
        to.display(),
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
        let aside = PathBuf::from(format!(
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
        std::fs::rename(&target, &aside)
            .with_context(|| format!("moving {} aside", target.display()))?;
        println!("moved the old store to {}", aside.display());
    }
    let files = copy_dir(&args.from, &target)?;
    let store = RocksStore::open(crate::service::store_config(config)?, Arc::new(SystemClock))
        .with_context(|| format!("the restored store at {} does not open", target.display()))?;
    let sizes = store.refresh_size_metrics()?;
    store.close()?;
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
