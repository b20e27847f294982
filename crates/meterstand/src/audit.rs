//! `meterstand audit verify` and `audit report`: the operator's and privacy officer's view of
//! the hash-chained audit log, read straight from the file (the service may keep running).

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use meterstand_audit::ChainHead;
use meterstand_model::Ean;
use meterstand_pseudonym::{KeyRing, Pseudonymiser};

use crate::config::Config;

#[derive(Debug, Args)]
pub struct VerifyArgs {
    /// The audit log (default: api.audit_log of the config).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
    /// The chain head recorded earlier (`LINES:HEX`, logged by the service at start): lines
    /// removed from the end, or a rewritten log, are only detectable against it.
    #[arg(long, value_name = "LINES:HEX")]
    pub head: Option<ChainHead>,
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
    /// subjects among them are listed by EAN. Needs the key file, like the service.
    #[arg(long, value_name = "FILE")]
    pub eans: Option<PathBuf>,
    /// The audit log (default: api.audit_log of the config).
    #[arg(long, value_name = "FILE")]
    pub log: Option<PathBuf>,
}

/// Exits non-zero (through the error) when the chain is broken.
pub fn verify(args: VerifyArgs, config: &Config) -> anyhow::Result<()> {
    let log = args.log.unwrap_or_else(|| config.api.audit_log.clone());
    let report = meterstand_audit::verify(&log, args.head.as_ref())
        .with_context(|| format!("reading the audit log {}", log.display()))?;
    println!("{report}");
    if !report.is_ok() {
        bail!("the audit log {} is not intact", log.display());
    }
    Ok(())
}

pub fn report(
    args: ReportArgs,
    config: &Config,
    env: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<()> {
    let log = args.log.unwrap_or_else(|| config.api.audit_log.clone());
    let mut report = meterstand_audit::report(&log, args.from, args.to, args.token.as_deref())
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
        let key_file = config.key_file(env);
        let ring = KeyRing::load(&key_file)
            .with_context(|| format!("loading the master key {}", key_file.display()))?;
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

/// Removes the `[[api.tokens]]` entry with `id` from a config file, keeping every other line
/// (comments included). Returns whether an entry was removed.
pub fn remove_token_entry(text: &str, id: &str) -> (String, bool) {
    let mut out = Vec::new();
    let mut block: Vec<&str> = Vec::new();
    let mut in_token = false;
    let mut removed = false;
    let is_ours = |block: &[&str]| {
        block.iter().any(|l| {
            let mut kv = l.splitn(2, '=');
            kv.next().is_some_and(|k| k.trim() == "id")
                && kv.next().is_some_and(|v| v.trim().trim_matches('"') == id)
        })
    };
    let flush = |block: &mut Vec<&str>, out: &mut Vec<String>, removed: &mut bool| {
        if is_ours(block) {
            *removed = true;
        } else {
            out.extend(block.iter().map(|l| l.to_string()));
        }
        block.clear();
    };
    for line in text.lines() {
        let header = line.trim_start().starts_with('[');
        if header && in_token {
            flush(&mut block, &mut out, &mut removed);
            in_token = false;
        }
        if line.trim() == "[[api.tokens]]" {
            in_token = true;
        }
        if in_token {
            block.push(line);
        } else {
            out.push(line.to_string());
        }
    }
    if in_token {
        flush(&mut block, &mut out, &mut removed);
    }
    let mut text = out.join("\n");
    text.push('\n');
    (text, removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revoking_removes_exactly_that_entry_and_keeps_comments() {
        let text = "# ours\n[api]\nlisten = \"127.0.0.1:8080\"\n\n[[api.tokens]]\nid = \"a-1\"\nrole = \"analyst\"\nhash = \"sha256:00\"\n\n[[api.tokens]]\nid = \"crm-1\" # the CRM\nrole = \"crm\"\nhash = \"sha256:11\"\n[log]\nlevel = \"info\"\n";
        let (out, removed) = remove_token_entry(text, "a-1");
        assert!(removed);
        assert!(!out.contains("a-1") && out.contains("crm-1") && out.contains("# ours"));
        assert!(out.contains("[log]") && out.contains("listen"));
        let parsed: toml::Table = out.parse().expect("still TOML");
        assert_eq!(parsed["api"]["tokens"].as_array().map(Vec::len), Some(1));
        let (same, removed) = remove_token_entry(&out, "nobody");
        assert!(!removed);
        assert_eq!(same, out);
    }
}
