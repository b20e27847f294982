//! The erasure and consent journal: every data-subject operation that removes data (an
//! erasure, a consent change) is appended here, synced, *before* the store carries it out,
//! and the store records the last entry it has applied (its watermark). So
//! - an operation interrupted by a crash is redone at the next start ([`replay`]), and
//! - a restored backup, whose watermark is that of the moment it was taken, gets every later
//!   erasure and consent change re-applied, instead of bringing erased data back.
//!
//! The journal lives outside the data directory and outside backups, and holds pseudonyms
//! only (under every key version), never an EAN. Entries are JSON lines.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use meterstand_model::{Connection, ConsentLevel, Postcode4, Profile};
use meterstand_pseudonym::Pseudonym;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

use crate::{ErasureReceipt, ReadingStore, StoreError};

/// One journalled operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum JournalOp {
    /// Erase everything of these pseudonyms but the held tiers.
    Erase { pseudonyms: Vec<String> },
    /// Register or change a connection: current pseudonym first, then older versions.
    Connection {
        pseudonyms: Vec<String>,
        consent: ConsentLevel,
        postcode4: Option<u16>,
        profile: Option<String>,
        analytics: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    pub time: String,
    #[serde(flatten)]
    pub op: JournalOp,
}

/// The append-only journal file.
#[derive(Debug)]
pub struct SubjectJournal {
    path: PathBuf,
    file: Mutex<(File, u64)>,
}

fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> StoreError {
    move |e| StoreError::engine(context, e)
}

fn texts(ps: &[Pseudonym]) -> Vec<String> {
    ps.iter().map(|p| p.to_string()).collect()
}

fn parse_all(texts: &[String]) -> Result<Vec<Pseudonym>, StoreError> {
    texts
        .iter()
        .map(|t| {
            t.parse()
                .map_err(|_| StoreError::Corrupt("the subject journal"))
        })
        .collect()
}

impl JournalOp {
    pub fn erase(pseudonyms: &[Pseudonym]) -> JournalOp {
        JournalOp::Erase {
            pseudonyms: texts(pseudonyms),
        }
    }

    pub fn connection(all: &[Pseudonym], c: &Connection) -> JournalOp {
        JournalOp::Connection {
            pseudonyms: texts(all),
            consent: c.consent,
            postcode4: c.postcode4.map(Postcode4::get),
            profile: c.profile.as_ref().map(|p| p.as_str().to_string()),
            analytics: c.analytics,
        }
    }

    /// Carries the operation out on `store` (idempotent: redoing it changes nothing more).
    pub fn apply(&self, store: &dyn ReadingStore) -> Result<ErasureReceipt, StoreError> {
        match self {
            JournalOp::Erase { pseudonyms } => store.erase(&parse_all(pseudonyms)?),
            JournalOp::Connection {
                pseudonyms,
                consent,
                postcode4,
                profile,
                analytics,
            } => {
                let corrupt = || StoreError::Corrupt("the subject journal");
                let connection = Connection {
                    consent: *consent,
                    postcode4: postcode4
                        .map(Postcode4::new)
                        .transpose()
                        .map_err(|_| corrupt())?,
                    profile: profile
                        .as_deref()
                        .map(str::parse::<Profile>)
                        .transpose()
                        .map_err(|_| corrupt())?,
                    analytics: *analytics,
                };
                store.put_connection(&parse_all(pseudonyms)?, connection)
            }
        }
    }

    fn describe(&self) -> String {
        match self {
            JournalOp::Erase { pseudonyms } => format!("erasure of {}", pseudonyms.join(", ")),
            JournalOp::Connection {
                pseudonyms,
                consent,
                ..
            } => format!(
                "consent {} for {}",
                consent.as_str(),
                pseudonyms.first().map_or("?", String::as_str)
            ),
        }
    }
}

impl SubjectJournal {
    /// Opens (creating, mode 0600, parent 0700) the journal and finds its last sequence number.
    pub fn open(path: &Path) -> Result<SubjectJournal, StoreError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("creating the journal directory"))?;
        }
        let last = Self::entries(path)?.last().map_or(0, |e| e.seq);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io("opening the subject journal"))?;
        Ok(SubjectJournal {
            path: path.to_path_buf(),
            file: Mutex::new((file, last)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends and syncs one entry; returns its sequence number.
    pub fn append(&self, op: JournalOp) -> Result<u64, StoreError> {
        let mut guard = self.file.lock();
        let seq = guard.1 + 1;
        let entry = JournalEntry {
            seq,
            time: jiff::Timestamp::now().to_string(),
            op,
        };
        let mut line = serde_json::to_vec(&entry)
            .map_err(|e| StoreError::engine("encoding a journal entry", e))?;
        line.push(b'\n');
        guard
            .0
            .write_all(&line)
            .map_err(io("writing the subject journal"))?;
        guard
            .0
            .sync_data()
            .map_err(io("syncing the subject journal"))?;
        guard.1 = seq;
        Ok(seq)
    }

    /// Every entry of the journal at `path` (none when it does not exist). A torn last line
    /// (a crash while appending, before the operation ran) is ignored.
    pub fn entries(path: &Path) -> Result<Vec<JournalEntry>, StoreError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::engine("reading the subject journal", e)),
        };
        let mut out = Vec::new();
        let lines: Vec<String> = BufReader::new(file)
            .lines()
            .collect::<Result<_, _>>()
            .map_err(io("reading the subject journal"))?;
        let count = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            match serde_json::from_str::<JournalEntry>(&line) {
                Ok(entry) => out.push(entry),
                Err(_) if i + 1 == count => {}
                Err(_) => return Err(StoreError::Corrupt("the subject journal")),
            }
        }
        Ok(out)
    }
}

/// Re-applies every journal entry the store has not applied yet (its watermark), in order,
/// advancing the watermark after each; returns what was redone, one line each.
pub fn replay(store: &dyn ReadingStore, path: &Path) -> Result<Vec<String>, StoreError> {
    let watermark = store.journal_watermark()?;
    let mut done = Vec::new();
    for entry in SubjectJournal::entries(path)?
        .into_iter()
        .filter(|e| e.seq > watermark)
    {
        let receipt = entry.op.apply(store)?;
        store.set_journal_watermark(entry.seq)?;
        done.push(format!(
            "#{} {}: deleted {} readings",
            entry.seq,
            entry.op.describe(),
            receipt.deleted.total()
        ));
    }
    Ok(done)
}
