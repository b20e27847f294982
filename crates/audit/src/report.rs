//! The access report for the privacy officer: per actor what was done in a time window and to
//! which pseudonymous subjects; EANs only where a CRM list is given to map them back.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::Path;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::AuditError;
use crate::chain::Anchor;
use crate::chain::ChainHead;
use crate::entry::{Actor, AuditEntry, Outcome, rfc3339};
use crate::keys::ChainKeys;
use crate::verify::{Problem, walk};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActorKind {
    Token,
    System,
    Operator,
    Unauthenticated,
}

/// What one actor did in the window. `calls` counts every line, `refused` those with outcome
/// `denied`. `rows` and `subjects` come from the lines that were not refused (a not-found or
/// failed call still names whom it was about); subjects are sorted and distinct.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorReport {
    pub kind: ActorKind,
    /// The token id, the system component or the operator's login name; absent for
    /// unauthenticated calls.
    pub id: Option<String>,
    pub roles: Vec<String>,
    pub calls: u64,
    pub refused: u64,
    pub actions: BTreeMap<String, u64>,
    pub rows: u64,
    pub subjects: Vec<String>,
}

/// An EAN from the CRM list with those of its pseudonyms that the report's subjects hold.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EanSubject {
    pub ean: String,
    pub pseudonyms: Vec<String>,
}

/// The affected subjects mapped back to EANs; `unmapped` are affected pseudonyms that no EAN
/// of the given list produced (not in the CRM list, or under a key version no longer held).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EanMapping {
    pub subjects: Vec<EanSubject>,
    pub unmapped: Vec<String>,
}

/// Whether the log the report was read from is intact: the same walk as `verify_with`, with
/// the anchor when one was given. A report from a broken log is still produced, and says so
/// here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Integrity {
    pub ok: bool,
    pub lines: u64,
    pub head: ChainHead,
    pub problem_count: u64,
    pub first_problem: Option<Problem>,
}

/// The report over `[from, to)`, optionally for one token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    #[serde(with = "rfc3339")]
    pub from: Timestamp,
    #[serde(with = "rfc3339")]
    pub to: Timestamp,
    pub token: Option<String>,
    /// Lines in the window (and for the token, if one was asked for).
    pub entries: u64,
    /// Sorted by kind, then id.
    pub actors: Vec<ActorReport>,
    /// Every affected subject (pseudonym) over all actors, sorted and distinct.
    pub subjects: Vec<String>,
    /// Only after [`Report::map_eans`]: the one place an EAN appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eans: Option<EanMapping>,
    pub integrity: Integrity,
}

/// One CSV row: an actor × one of its subjects (an actor without subjects has one row with an
/// empty `subject`). The actor's totals repeat on each of its rows. `roles` are joined with
/// `;`, `actions` written `name=count;…`, `eans` (filled only after [`Report::map_eans`]) with
/// `;`. The window and the integrity verdict are in the JSON form only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CsvRow {
    pub actor_kind: ActorKind,
    pub actor_id: String,
    pub roles: String,
    pub calls: u64,
    pub refused: u64,
    pub rows: u64,
    pub actions: String,
    pub subject: String,
    pub eans: String,
}

#[derive(Default)]
struct Acc {
    roles: BTreeSet<String>,
    calls: u64,
    refused: u64,
    actions: BTreeMap<String, u64>,
    rows: u64,
    subjects: BTreeSet<String>,
}

/// [`report_with`] for an unkeyed log, without an anchor.
pub fn report(
    path: &Path,
    from: Timestamp,
    to: Timestamp,
    token: Option<&str>,
) -> Result<Report, AuditError> {
    report_with(path, &ChainKeys::unkeyed(), None, from, to, token)
}

/// Reads every kept segment of the log at `path` and reports what was accessed in
/// `[from, to)`, by every actor or only by the token `token`; the integrity verdict is the
/// walk's, against `anchor` if given.
pub fn report_with(
    path: &Path,
    keys: &ChainKeys,
    anchor: Option<&Anchor>,
    from: Timestamp,
    to: Timestamp,
    token: Option<&str>,
) -> Result<Report, AuditError> {
    if from > to {
        return Err(AuditError::Window {
            from: from.to_string(),
            to: to.to_string(),
        });
    }
    let mut actors: BTreeMap<(ActorKind, Option<String>), Acc> = BTreeMap::new();
    let mut entries = 0u64;
    let verified = walk(path, keys, anchor, |_, entry: AuditEntry| {
        if entry.time < from || entry.time >= to {
            return;
        }
        let (key, role) = match entry.actor {
            Actor::Token { token_id, role } => ((ActorKind::Token, Some(token_id)), role),
            Actor::System { component } => ((ActorKind::System, Some(component)), None),
            Actor::Operator { user } => ((ActorKind::Operator, Some(user)), None),
            Actor::Unauthenticated => ((ActorKind::Unauthenticated, None), None),
        };
        if let Some(wanted) = token
            && !(key.0 == ActorKind::Token && key.1.as_deref() == Some(wanted))
        {
            return;
        }
        entries += 1;
        let acc = actors.entry(key).or_default();
        acc.calls += 1;
        acc.roles.extend(role);
        *acc.actions.entry(entry.action).or_default() += 1;
        if entry.outcome == Outcome::Denied {
            acc.refused += 1;
        } else {
            acc.rows = acc.rows.saturating_add(entry.rows.unwrap_or(0));
            acc.subjects.extend(entry.subjects);
        }
    })?;

    let subjects: BTreeSet<String> = actors
        .values()
        .flat_map(|a| a.subjects.iter().cloned())
        .collect();
    let actors = actors
        .into_iter()
        .map(|((kind, id), acc)| ActorReport {
            kind,
            id,
            roles: acc.roles.into_iter().collect(),
            calls: acc.calls,
            refused: acc.refused,
            actions: acc.actions,
            rows: acc.rows,
            subjects: acc.subjects.into_iter().collect(),
        })
        .collect();
    Ok(Report {
        from,
        to,
        token: token.map(str::to_string),
        entries,
        actors,
        subjects: subjects.into_iter().collect(),
        eans: None,
        integrity: Integrity {
            ok: verified.is_ok(),
            lines: verified.lines,
            head: verified.head,
            problem_count: verified.problem_count,
            first_problem: verified.problems.into_iter().next(),
        },
    })
}

impl Report {
    /// Maps the affected subjects back to EANs from a CRM list. `pseudonyms_of` gives an EAN's
    /// pseudonyms under every key version (the caller has the key ring; this crate does not).
    /// Replaces an earlier mapping.
    pub fn map_eans<I, S, F>(&mut self, eans: I, pseudonyms_of: F)
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
        F: Fn(&str) -> Vec<String>,
    {
        let affected: BTreeSet<&str> = self.subjects.iter().map(String::as_str).collect();
        let mut by_ean: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut mapped: BTreeSet<String> = BTreeSet::new();
        for ean in eans {
            let ean = ean.as_ref().trim();
            if ean.is_empty() {
                continue;
            }
            for pseudonym in pseudonyms_of(ean) {
                if affected.contains(pseudonym.as_str()) {
                    mapped.insert(pseudonym.clone());
                    by_ean.entry(ean.to_string()).or_default().insert(pseudonym);
                }
            }
        }
        let unmapped = affected
            .into_iter()
            .filter(|p| !mapped.contains(*p))
            .map(str::to_string)
            .collect();
        self.eans = Some(EanMapping {
            subjects: by_ean
                .into_iter()
                .map(|(ean, pseudonyms)| EanSubject {
                    ean,
                    pseudonyms: pseudonyms.into_iter().collect(),
                })
                .collect(),
            unmapped,
        });
    }

    pub fn to_json(&self) -> Result<String, AuditError> {
        Ok(serde_json::to_string_pretty(self)?)
    }

    /// The rows of the CSV form, see [`CsvRow`].
    pub fn csv_rows(&self) -> Vec<CsvRow> {
        let mut eans_of: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for subject in self.eans.iter().flat_map(|m| &m.subjects) {
            for pseudonym in &subject.pseudonyms {
                eans_of
                    .entry(pseudonym.as_str())
                    .or_default()
                    .push(subject.ean.as_str());
            }
        }
        let mut rows = Vec::new();
        for actor in &self.actors {
            let row = |subject: &str| CsvRow {
                actor_kind: actor.kind,
                actor_id: actor.id.clone().unwrap_or_default(),
                roles: actor.roles.join(";"),
                calls: actor.calls,
                refused: actor.refused,
                rows: actor.rows,
                actions: actor
                    .actions
                    .iter()
                    .map(|(name, n)| format!("{name}={n}"))
                    .collect::<Vec<_>>()
                    .join(";"),
                subject: subject.to_string(),
                eans: eans_of
                    .get(subject)
                    .map(|e| e.join(";"))
                    .unwrap_or_default(),
            };
            if actor.subjects.is_empty() {
                rows.push(row(""));
            }
            rows.extend(actor.subjects.iter().map(|s| row(s)));
        }
        rows
    }

    pub fn write_csv(&self, out: impl Write) -> Result<(), AuditError> {
        let mut writer = csv::Writer::from_writer(out);
        let rows = self.csv_rows();
        if rows.is_empty() {
            // Still write the header, so an empty report is a valid, self-describing CSV.
            writer.write_record([
                "actor_kind",
                "actor_id",
                "roles",
                "calls",
                "refused",
                "rows",
                "actions",
                "subject",
                "eans",
            ])?;
        }
        for row in rows {
            writer.serialize(row)?;
        }
        writer.flush().map_err(csv::Error::from)?;
        Ok(())
    }

    pub fn to_csv(&self) -> Result<String, AuditError> {
        let mut out = Vec::new();
        self.write_csv(&mut out)?;
        String::from_utf8(out).map_err(|e| {
            AuditError::Csv(csv::Error::from(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e,
            )))
        })
    }
}
