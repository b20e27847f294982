//! The subject journal: every data-subject operation (an erasure, a consent change, an
//! objection) is appended here, synced, *before* the store carries it out, and the store
//! records the last entry it has applied (its watermark). So
//! - an operation interrupted by a crash is redone at the next start ([`replay`]), and
//! - a restored backup, whose watermark is that of the moment it was taken, gets every later
//!   operation re-applied, instead of bringing erased data back or an objection undone.
//!
//! Minimal: an entry holds only what its replay needs, pseudonyms (under every key version)
//! and the new consent level or objection, never an EAN, a postcode or a profile. Bounded:
//! entries that no kept backup can need are pruned ([`SubjectJournal::prune`]); the first
//! line then says up to which sequence number entries were pruned, so that a restore can
//! tell a journal that reaches back to its backup from one that does not
//! ([`JournalContents::gap`]).
//!
//! One order: appending an entry, carrying it out and raising the watermark happen under
//! one lock, and an entry whose operation failed is carried out before the next one is
//! appended, so the watermark never passes an entry that was not applied.
//!
//! The journal lives outside the data directory and outside backups. Entries are JSON lines.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use meterstand_model::{Connection, ConsentLevel};
use meterstand_pseudonym::Pseudonym;
use parking_lot::{Mutex, MutexGuard};
use serde::{Deserialize, Serialize};

use crate::{ErasureReceipt, StoreError};

/// One journalled operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum JournalOp {
    /// Erase everything of these pseudonyms but the held tiers.
    Erase { pseudonyms: Vec<String> },
    /// The connection's consent became `consent` (current pseudonym first): replayed, it
    /// removes what the level does not allow. Journals of earlier versions called this
    /// `connection` and carried more fields, which are ignored.
    #[serde(alias = "connection")]
    Consent {
        pseudonyms: Vec<String>,
        consent: ConsentLevel,
    },
    /// The privacy officer recorded (`true`) or withdrew an objection.
    Objection {
        pseudonyms: Vec<String>,
        objected: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JournalEntry {
    pub seq: u64,
    pub time: String,
    #[serde(flatten)]
    pub op: JournalOp,
}

/// The first line of a pruned journal.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Header {
    pruned_through: u64,
}

/// The subject operations a journal entry carries out, without journalling them again.
pub trait SubjectOps {
    fn connection(&self, p: Pseudonym) -> Result<Option<Connection>, StoreError>;
    fn put_connection(
        &self,
        all: &[Pseudonym],
        connection: Connection,
    ) -> Result<ErasureReceipt, StoreError>;
    fn erase(&self, pseudonyms: &[Pseudonym]) -> Result<ErasureReceipt, StoreError>;
    fn set_objection(&self, all: &[Pseudonym], objected: bool) -> Result<(), StoreError>;
    fn journal_watermark(&self) -> Result<u64, StoreError>;
    fn set_journal_watermark(&self, seq: u64) -> Result<(), StoreError>;
}

/// What a journal file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JournalContents {
    /// Whether the file exists.
    pub exists: bool,
    /// Entries up to this sequence number were pruned (0: none).
    pub pruned_through: u64,
    pub entries: Vec<JournalEntry>,
}

impl JournalContents {
    /// The last sequence number this journal has handed out.
    pub fn last(&self) -> u64 {
        self.entries.last().map_or(self.pruned_through, |e| e.seq)
    }

    /// Why this journal cannot bring a store whose watermark is `from` up to date with a
    /// store that had applied up to `applied` (0 when unknown), if it cannot: it was pruned
    /// past `from`, or it ends before what was applied (reset or replaced), or it is missing
    /// although operations were journalled.
    pub fn gap(&self, from: u64, applied: u64) -> Option<String> {
        let needed = from.max(applied);
        if !self.exists && needed > 0 {
            return Some(format!(
                "the subject journal is missing, but the stores have applied entries up to #{needed}"
            ));
        }
        if self.pruned_through > from {
            return Some(format!(
                "the subject journal was pruned through #{}, after the backup's #{from}",
                self.pruned_through
            ));
        }
        if self.last() < needed {
            return Some(format!(
                "the subject journal ends at #{}, before #{needed} (reset or replaced?)",
                self.last()
            ));
        }
        None
    }
}

/// The append-only journal file.
#[derive(Debug)]
pub struct SubjectJournal {
    path: PathBuf,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    file: File,
    /// The last sequence number handed out.
    last: u64,
}

/// Held while no subject operation may run (a backup reading the watermark).
#[derive(Debug)]
pub struct JournalHold<'a>(#[allow(dead_code)] MutexGuard<'a, Inner>);

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

fn line_of<T: Serialize>(value: &T) -> Result<Vec<u8>, StoreError> {
    let mut line =
        serde_json::to_vec(value).map_err(|e| StoreError::engine("encoding a journal entry", e))?;
    line.push(b'\n');
    Ok(line)
}

impl JournalOp {
    pub fn erase(pseudonyms: &[Pseudonym]) -> JournalOp {
        JournalOp::Erase {
            pseudonyms: texts(pseudonyms),
        }
    }

    pub fn consent(all: &[Pseudonym], consent: ConsentLevel) -> JournalOp {
        JournalOp::Consent {
            pseudonyms: texts(all),
            consent,
        }
    }

    pub fn objection(all: &[Pseudonym], objected: bool) -> JournalOp {
        JournalOp::Objection {
            pseudonyms: texts(all),
            objected,
        }
    }

    /// Carries the operation out (idempotent: redoing it changes nothing more). A consent
    /// change keeps the postcode and profile of the record it finds (none: a record with
    /// neither), so that a replay removes what the level does not allow.
    pub fn apply(&self, ops: &dyn SubjectOps) -> Result<ErasureReceipt, StoreError> {
        match self {
            JournalOp::Erase { pseudonyms } => ops.erase(&parse_all(pseudonyms)?),
            JournalOp::Consent {
                pseudonyms,
                consent,
            } => {
                let all = parse_all(pseudonyms)?;
                let mut record = None;
                for p in &all {
                    if let Some(c) = ops.connection(*p)? {
                        record = Some(c);
                        break;
                    }
                }
                let connection = match record {
                    Some(c) => Connection {
                        consent: *consent,
                        ..c
                    },
                    None => Connection {
                        consent: *consent,
                        postcode4: None,
                        profile: None,
                    },
                };
                ops.put_connection(&all, connection)
            }
            JournalOp::Objection {
                pseudonyms,
                objected,
            } => {
                ops.set_objection(&parse_all(pseudonyms)?, *objected)?;
                Ok(ErasureReceipt::default())
            }
        }
    }

    fn describe(&self) -> String {
        let first = |ps: &[String]| ps.first().cloned().unwrap_or_default();
        match self {
            JournalOp::Erase { pseudonyms } => format!("erasure of {}", pseudonyms.join(", ")),
            JournalOp::Consent {
                pseudonyms,
                consent,
            } => format!("consent {} for {}", consent.as_str(), first(pseudonyms)),
            JournalOp::Objection {
                pseudonyms,
                objected,
            } => format!(
                "objection {} for {}",
                if *objected { "recorded" } else { "withdrawn" },
                first(pseudonyms)
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
        let last = Self::read(path)?.last();
        let file = Self::append_to(path)?;
        Ok(SubjectJournal {
            path: path.to_path_buf(),
            inner: Mutex::new(Inner { file, last }),
        })
    }

    fn append_to(path: &Path) -> Result<File, StoreError> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(path)
            .map_err(io("opening the subject journal"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Journals `op`, then carries it out with `apply` (the live operation, of which `op`
    /// is what a replay needs) and raises the watermark on `ops`, all under the journal's
    /// lock. Entries not applied yet (an operation that failed earlier) are carried out
    /// first.
    pub fn run(
        &self,
        ops: &dyn SubjectOps,
        op: JournalOp,
        apply: impl FnOnce(&JournalOp) -> Result<ErasureReceipt, StoreError>,
    ) -> Result<ErasureReceipt, StoreError> {
        let mut inner = self.inner.lock();
        if ops.journal_watermark()? < inner.last {
            replay_entries(ops, &Self::read(&self.path)?)?;
        }
        let seq = inner.last + 1;
        let entry = JournalEntry {
            seq,
            time: jiff::Timestamp::now().to_string(),
            op,
        };
        let line = line_of(&entry)?;
        inner
            .file
            .write_all(&line)
            .map_err(io("writing the subject journal"))?;
        inner
            .file
            .sync_data()
            .map_err(io("syncing the subject journal"))?;
        inner.last = seq;
        let receipt = apply(&entry.op)?;
        ops.set_journal_watermark(seq)?;
        Ok(receipt)
    }

    /// Holds off every subject operation while the guard lives: a backup takes its
    /// checkpoint and reads the watermark under it, so the two agree.
    pub fn hold(&self) -> JournalHold<'_> {
        JournalHold(self.inner.lock())
    }

    /// Drops the entries up to `through`: rewrites the journal without them (a temporary
    /// file synced, then renamed over it), its first line saying how far it was pruned.
    pub fn prune(&self, through: u64) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let contents = Self::read(&self.path)?;
        let through = through.min(inner.last);
        if through <= contents.pruned_through {
            return Ok(());
        }
        let tmp = self.path.with_extension("pruning");
        let mut out = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("writing the pruned subject journal"))?;
        let mut bytes = line_of(&Header {
            pruned_through: through,
        })?;
        for entry in contents.entries.iter().filter(|e| e.seq > through) {
            bytes.extend(line_of(entry)?);
        }
        out.write_all(&bytes)
            .and_then(|()| out.sync_all())
            .map_err(io("writing the pruned subject journal"))?;
        std::fs::rename(&tmp, &self.path).map_err(io("replacing the subject journal"))?;
        if let Some(dir) = self.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("syncing the journal directory"))?;
        }
        inner.file = Self::append_to(&self.path)?;
        Ok(())
    }

    /// What the journal at `path` holds (nothing when it does not exist). A torn last line
    /// (a crash while appending, before the operation ran) is ignored.
    pub fn read(path: &Path) -> Result<JournalContents, StoreError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(JournalContents::default());
            }
            Err(e) => return Err(StoreError::engine("reading the subject journal", e)),
        };
        let mut contents = JournalContents {
            exists: true,
            ..JournalContents::default()
        };
        let lines: Vec<String> = BufReader::new(file)
            .lines()
            .collect::<Result<_, _>>()
            .map_err(io("reading the subject journal"))?;
        let count = lines.len();
        for (i, line) in lines.into_iter().enumerate() {
            if i == 0
                && let Ok(header) = serde_json::from_str::<Header>(&line)
            {
                contents.pruned_through = header.pruned_through;
                continue;
            }
            match serde_json::from_str::<JournalEntry>(&line) {
                Ok(entry) => contents.entries.push(entry),
                Err(_) if i + 1 == count => {}
                Err(_) => return Err(StoreError::Corrupt("the subject journal")),
            }
        }
        Ok(contents)
    }
}

/// Re-applies every entry the store has not applied yet (its watermark), in order,
/// advancing the watermark after each; returns what was redone, one line each.
fn replay_entries(
    ops: &dyn SubjectOps,
    contents: &JournalContents,
) -> Result<Vec<String>, StoreError> {
    let watermark = ops.journal_watermark()?;
    let mut done = Vec::new();
    for entry in contents.entries.iter().filter(|e| e.seq > watermark) {
        let receipt = entry.op.apply(ops)?;
        ops.set_journal_watermark(entry.seq)?;
        done.push(format!(
            "#{} {}: deleted {} readings",
            entry.seq,
            entry.op.describe(),
            receipt.deleted.total()
        ));
    }
    Ok(done)
}

/// Re-applies every entry of the journal at `path` that the store has not applied yet.
pub fn replay(ops: &dyn SubjectOps, path: &Path) -> Result<Vec<String>, StoreError> {
    replay_entries(ops, &SubjectJournal::read(path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> JournalEntry {
        JournalEntry {
            seq,
            time: String::new(),
            op: JournalOp::Erase {
                pseudonyms: Vec::new(),
            },
        }
    }

    #[test]
    fn old_connection_entries_read_as_consent_changes_without_attributes() {
        let line = r#"{"seq":3,"time":"t","op":"connection","pseudonyms":["x"],"consent":"standard","postcode4":1234,"profile":"E1A","analytics":true}"#;
        let e: JournalEntry = serde_json::from_str(line).expect("old entry");
        assert_eq!(
            e.op,
            JournalOp::Consent {
                pseudonyms: vec!["x".into()],
                consent: ConsentLevel::Standard
            }
        );
        let written = String::from_utf8(line_of(&e).expect("line")).expect("utf-8");
        assert!(
            !written.contains("1234") && !written.contains("E1A"),
            "{written}"
        );
    }

    /// Records what is carried out; the first erasure fails (a store error half-way).
    #[derive(Default)]
    struct Ops {
        fail_next: std::cell::Cell<bool>,
        done: std::cell::RefCell<Vec<String>>,
        watermark: std::cell::Cell<u64>,
    }

    impl SubjectOps for Ops {
        fn connection(&self, _: Pseudonym) -> Result<Option<Connection>, StoreError> {
            Ok(None)
        }
        fn put_connection(
            &self,
            _: &[Pseudonym],
            c: Connection,
        ) -> Result<ErasureReceipt, StoreError> {
            self.done
                .borrow_mut()
                .push(format!("consent {}", c.consent.as_str()));
            Ok(ErasureReceipt::default())
        }
        fn erase(&self, ps: &[Pseudonym]) -> Result<ErasureReceipt, StoreError> {
            if self.fail_next.replace(false) {
                return Err(StoreError::Closed);
            }
            self.done.borrow_mut().push(format!("erase {}", ps.len()));
            Ok(ErasureReceipt::default())
        }
        fn set_objection(&self, _: &[Pseudonym], objected: bool) -> Result<(), StoreError> {
            self.done.borrow_mut().push(format!("objection {objected}"));
            Ok(())
        }
        fn journal_watermark(&self) -> Result<u64, StoreError> {
            Ok(self.watermark.get())
        }
        fn set_journal_watermark(&self, seq: u64) -> Result<(), StoreError> {
            self.watermark.set(seq);
            Ok(())
        }
    }

    #[test]
    fn an_entry_that_failed_is_carried_out_before_the_next_and_the_watermark_never_skips_it() {
        let dir = tempfile::tempdir().expect("tmp");
        let journal = SubjectJournal::open(&dir.path().join("j.jsonl")).expect("open");
        let ops = Ops::default();
        let p = Pseudonym {
            version: 1,
            hash: [7; 16],
        };
        ops.fail_next.set(true);
        let erase = JournalOp::erase(&[p]);
        assert!(journal.run(&ops, erase, |op| op.apply(&ops)).is_err());
        assert_eq!(ops.watermark.get(), 0, "not applied: the watermark stays");
        let object = JournalOp::objection(&[p], true);
        journal.run(&ops, object, |op| op.apply(&ops)).expect("run");
        assert_eq!(*ops.done.borrow(), vec!["erase 1", "objection true"]);
        assert_eq!(ops.watermark.get(), 2);
        // Replayed onto a store that applied nothing (a restore of an early backup).
        let fresh = Ops::default();
        let lines = replay(&fresh, journal.path()).expect("replay");
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(*fresh.done.borrow(), vec!["erase 1", "objection true"]);
    }

    #[test]
    fn a_gap_is_named() {
        let missing = JournalContents::default();
        assert_eq!(
            missing.gap(0, 0),
            None,
            "nothing journalled, nothing missing"
        );
        assert!(missing.gap(4, 0).is_some_and(|w| w.contains("missing")));
        let pruned = JournalContents {
            exists: true,
            pruned_through: 5,
            entries: vec![entry(6), entry(7)],
        };
        assert_eq!(pruned.gap(5, 7), None);
        assert!(
            pruned
                .gap(4, 7)
                .is_some_and(|w| w.contains("pruned through #5"))
        );
        assert!(pruned.gap(5, 9).is_some_and(|w| w.contains("ends at #7")));
        let reset = JournalContents {
            exists: true,
            pruned_through: 0,
            entries: vec![entry(1)],
        };
        assert!(reset.gap(6, 0).is_some_and(|w| w.contains("ends at #1")));
    }
}
