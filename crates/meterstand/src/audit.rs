//! `meterstand audit verify`, `audit report` and `audit acknowledge`: the operator's and
//! privacy officer's view of the keyed, anchored audit log, read straight from its segment
//! files (the service may keep running) and checked against the anchor the store keeps
//! (read through a read-only instance, which the service's lock does not stop). Also
//! [`operator_line`], how a command writes its own line. The service's side is [`anchor`].
//! See docs/design.md, "Audit log".

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use meterstand_audit::{
    Anchor, AuditEntry, AuditLog, ChainHead, ChainKeys, LogOptions, Outcome, action,
};
use meterstand_model::Ean;
use meterstand_pseudonym::{KeyRing, Pseudonymiser};

use crate::config::Config;

pub mod anchor;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The audit log's active file (default: api.audit_log of the config); its sealed
    /// segments beside it are read too.
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// Check against this head (`LINES:HEX`) instead of the anchor in the store.
    #[arg(long, value_name = "LINES:HEX")]
    pub head: Option<ChainHead>,
    /// Do not read the anchor from the store (e.g. a copy of the log elsewhere): a removed
    /// tail or removed oldest segments then go unnoticed.
    #[arg(long, conflicts_with = "head")]
    pub no_anchor: bool,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ReportFormat {
    Json,
    Csv,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Start of the window (RFC 3339), inclusive.
    #[arg(long)]
    pub from: jiff::Timestamp,
    /// End of the window (RFC 3339), exclusive.
    #[arg(long)]
    pub to: jiff::Timestamp,
    /// Only this token's calls.
    #[arg(long, value_name = "ID")]
    pub token: Option<String>,
    #[arg(long, value_enum, default_value = "json")]
    pub format: ReportFormat,
    /// A CRM list of EANs (one per line, or the first column of a CSV): the affected
    /// subjects among them are listed by EAN.
    #[arg(long, value_name = "FILE")]
    pub eans: Option<PathBuf>,
    /// The audit log's active file (default: api.audit_log of the config).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct AcknowledgeArgs {
    /// The sequence number of the `audit.gap` line (`audit verify` names it).
    #[arg(long, value_name = "SEQ")]
    pub gap: u64,
    /// What was found and done (kept in the log; no EAN).
    #[arg(long)]
    pub reason: String,
}

/// The audit log's chain keys: the `audit` purpose key of every master key version.
pub fn chain_keys(ring: &KeyRing) -> ChainKeys {
    ChainKeys::new(meterstand_pseudonym::audit_keys(ring))
}

/// The chain keys from the configured key file (keyed hashes cannot be checked without).
pub fn load_chain_keys(
    config: &Config,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<ChainKeys> {
    let key_file = config.key_file(env);
    let ring = KeyRing::load(&key_file).with_context(|| {
        format!(
            "loading the master key {} (the audit chain is keyed with it)",
            key_file.display()
        )
    })?;
    Ok(chain_keys(&ring))
}

/// The anchor the store at `store.path` keeps, read without the store's lock.
pub fn read_anchor(config: &Config) -> anyhow::Result<Option<Anchor>> {
    let anchor = meterstand_store_rocks::read_audit_anchor(&config.store.path).with_context(
        || {
            format!(
                "reading the audit anchor from the store {} (pass --no-anchor to verify without it)",
                config.store.path.display()
            )
        },
    )?;
    Ok(anchor.map(anchor::from_record))
}

/// Exits non-zero (through the error) when the chain is broken, does not reach the anchor,
/// or holds a gap nobody acknowledged; the problems name the file, line and the gap.
pub fn verify(
    args: VerifyArgs,
    config: &Config,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let log = args.log.unwrap_or_else(|| config.api.audit_log.clone());
    let keys = load_chain_keys(config, env)?;
    let anchor = match (args.head, args.no_anchor) {
        (Some(head), _) => Some(Anchor { head, first: None }),
        (None, true) => None,
        (None, false) => {
            let anchor = read_anchor(config)?;
            match &anchor {
                Some(a) => println!(
                    "anchor in the store: head {} (sequence {}), kept from sequence {}",
                    a.head,
                    anchor::sequence_text(a.head),
                    a.first.unwrap_or(0)
                ),
                None => println!(
                    "note: the store holds no audit anchor yet (the service writes one at start)"
                ),
            }
            anchor
        }
    };
    let report = meterstand_audit::verify_with(&log, &keys, anchor.as_ref())
        .with_context(|| format!("reading the audit log {}", log.display()))?;
    println!("{report}");
    if !report.is_ok() {
        bail!("the audit log {} is not intact", log.display());
    }
    Ok(())
}

/// The access report over `[from, to)`; its `integrity` is checked against the anchor when
/// the store can be read (a note on stderr otherwise).
pub fn report(
    args: ReportArgs,
    config: &Config,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let log = args.log.unwrap_or_else(|| config.api.audit_log.clone());
    let key_file = config.key_file(env);
    let ring = KeyRing::load(&key_file)
        .with_context(|| format!("loading the master key {}", key_file.display()))?;
    let anchor = read_anchor(config).unwrap_or_else(|e| {
        eprintln!("note: {e:#}; the report's integrity is checked without the anchor");
        None
    });
    let mut report = meterstand_audit::report_with(
        &log,
        &chain_keys(&ring),
        anchor.as_ref(),
        args.from,
        args.to,
        args.token.as_deref(),
    )
    .with_context(|| format!("reading the audit log {}", log.display()))?;
    if let Some(list) = &args.eans {
        let text = std::fs::read_to_string(list)
            .with_context(|| format!("reading the EAN list {}", list.display()))?;
        let eans: Vec<String> = text
            .lines()
            .filter_map(|l| l.split(',').next())
            .map(|f| f.trim().trim_matches('"').to_string())
            .filter(|f| f.parse::<Ean>().is_ok())
            .collect();
        let pseudonymiser = Pseudonymiser::new(&ring);
        report.map_eans(eans, |text| {
            text.parse::<Ean>()
                .map(|e| {
                    pseudonymiser
                        .ean_all_versions(&e)
                        .iter()
                        .map(|p| p.to_string())
                        .collect()
                })
                .unwrap_or_default()
        });
    }
    match args.format {
        ReportFormat::Json => println!("{}", report.to_json()?),
        ReportFormat::Csv => print!("{}", report.to_csv()?),
    }
    Ok(())
}

/// Writes one line for an operator's action at the command line (restore, key rotation,
/// token revocation, acknowledging a gap) to the configured audit log, keyed like the
/// service's lines, by the person running the command ([`AuditEntry::operator`]). Safe while
/// the service runs: writers take turns on the log's lock file, and the service takes the
/// line into its chain and its anchor with its next line. Build the entry with
/// `AuditEntry::operator(action, outcome)` and `.with_param(...)` (no EAN, no secret).
pub fn operator_line(
    config: &Config,
    env: &BTreeMap<String, String>,
    entry: &AuditEntry,
) -> anyhow::Result<ChainHead> {
    operator_line_with(config, load_chain_keys(config, env)?, entry)
}

/// [`operator_line`] with keys already at hand.
pub fn operator_line_with(
    config: &Config,
    keys: ChainKeys,
    entry: &AuditEntry,
) -> anyhow::Result<ChainHead> {
    let path = &config.api.audit_log;
    let log = AuditLog::open_with(
        path,
        LogOptions {
            keys,
            roll_monthly: false,
        },
    )
    .with_context(|| format!("opening api.audit_log {}", path.display()))?;
    log.append(entry)
        .with_context(|| format!("writing the {} line to {}", entry.action, path.display()))
}

/// Records that an operator looked into a recorded gap: `audit verify` and the service's
/// `meterstand_audit_chain_intact` stop counting it.
pub fn acknowledge(
    args: AcknowledgeArgs,
    config: &Config,
    env: &BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let keys = load_chain_keys(config, env)?;
    let log = &config.api.audit_log;
    let verified = meterstand_audit::verify_with(log, &keys, None)
        .with_context(|| format!("reading the audit log {}", log.display()))?;
    let open: Vec<u64> = verified.problems.iter().filter_map(|p| p.seq).collect();
    if !open.contains(&args.gap) {
        bail!(
            "sequence {} is not an unacknowledged audit.gap line (open gaps: {:?})",
            args.gap,
            open
        );
    }
    let entry = AuditEntry::operator(action::AUDIT_GAP_ACKNOWLEDGED, Outcome::Ok)
        .with_param("gap_seq", args.gap.to_string())
        .with_param("reason", args.reason);
    let head = operator_line_with(config, keys, &entry)?;
    println!(
        "acknowledged the gap at sequence {}; head now {head}",
        args.gap
    );
    Ok(())
}
