//! Appending to the log: open (and recover a torn tail), then one synced line per entry,
//! under an exclusive lock that every writer takes (the service, and `meterstand restore`,
//! `keygen --rotate` or `token revoke` at the same time), rolling over to a new segment when
//! the month changes. After each line the new head goes to the [`AnchorSink`], if one is
//! attached.

use std::fmt;
use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use jiff::Timestamp;
use rustix::fs::{FlockOperation, flock};

use crate::AuditError;
use crate::chain::{Anchor, ChainHead, check_line, encode_line};
use crate::entry::{Actor, AuditEntry, Outcome, action};
use crate::keys::ChainKeys;
use crate::segments::{dir_of, sealed, sealed_name};
use crate::tail::{first_line, hash_range, last_line, peek};

/// The most bytes another writer may have appended between two of ours (a few operator
/// lines); more means something else writes to the file.
const MAX_CATCH_UP: u64 = 16 << 20;

/// Keeps the anchor outside the log (the service: in the store). Called with the log's lock
/// held, after every line is on disk and after retention moved `first`; failures are the
/// sink's to report (the line is written either way).
pub trait AnchorSink: Send + Sync + fmt::Debug {
    fn anchor(&self, anchor: &Anchor);
}

/// How to open a log.
#[derive(Debug, Clone, Default)]
pub struct LogOptions {
    /// Chain new lines under the current key (the service always does). Without keys the
    /// log is unkeyed, as before keyed chains (tests), and a keyed log is refused.
    pub keys: ChainKeys,
    /// Seal the active file and start a new segment when an entry's month (UTC) is later
    /// than the active segment's first line's. Only the long-running writer (the service)
    /// rolls; a command-line writer appends to whatever segment is active.
    pub roll_monthly: bool,
}

/// What [`AuditLog::remove_segments_before`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Removed {
    pub segments: Vec<PathBuf>,
    /// The seq of the oldest line kept.
    pub first: u64,
}

/// The open audit log. Cheap to clone; clones share one file and one chain head, and appends
/// from any thread are serialised; appends from other processes are serialised by a lock
/// file (`<file name>.lock`) and taken into the chain before the next line, once they check.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    path: PathBuf,
    file: File,
    ino: u64,
    lock: File,
    head: ChainHead,
    /// Whether the last line is keyed.
    head_keyed: bool,
    /// The active file's length as far as this writer knows.
    len: u64,
    /// A failed write could not be taken back; nothing more may be chained onto it.
    broken: bool,
    options: LogOptions,
    /// The month (UTC) of the active segment's first line; `None` while it is empty.
    month: Option<(i16, i8)>,
    /// The seq of the active segment's first line.
    active_first: u64,
    /// The seq of the oldest line kept.
    first: u64,
    sink: Option<Arc<dyn AnchorSink>>,
}

/// The exclusive lock on the lock file, released on drop.
struct Locked<'a>(&'a File);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = flock(self.0, FlockOperation::Unlock);
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> AuditError {
    let path = path.to_path_buf();
    move |source| AuditError::Io { op, path, source }
}

fn lock<'a>(lock: &'a File, path: &Path) -> Result<Locked<'a>, AuditError> {
    flock(lock, FlockOperation::LockExclusive)
        .map_err(|e| io_err("lock", path)(std::io::Error::from(e)))?;
    Ok(Locked(lock))
}

fn month_of(time: Timestamp) -> (i16, i8) {
    let date = jiff::tz::TimeZone::UTC.to_datetime(time).date();
    (date.year(), date.month())
}

/// Opens (creating, mode 0600) a file of the log, refusing one others may read.
fn open_private(path: &Path, read_write: bool) -> Result<File, AuditError> {
    let file = OpenOptions::new()
        .read(true)
        .write(read_write)
        .append(!read_write)
        .create(true)
        .mode(0o600)
        .open(path)
        .map_err(io_err("open", path))?;
    let meta = file.metadata().map_err(io_err("stat", path))?;
    if !meta.is_file() {
        return Err(io_err("open", path)(std::io::Error::other(
            "not a regular file",
        )));
    }
    let mode = meta.mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(AuditError::TooOpen {
            path: path.to_path_buf(),
            mode,
        });
    }
    Ok(file)
}

fn sync_dir(path: &Path) -> Result<(), AuditError> {
    let dir = dir_of(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("sync the directory of", path))
}

impl AuditLog {
    /// Opens an unkeyed log in one file (no roll-over): tests and benchmarks. The service
    /// uses [`AuditLog::open_with`] with the chain keys.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        AuditLog::open_with(path, LogOptions::default())
    }

    /// Opens the log for appending, creating it (mode 0600, missing parent directories 0700).
    /// Reads only the end of the active file: the last complete line must be a valid entry
    /// and gives the chain head. A torn last line is cut off and an `audit.recovered` line
    /// records it; a log of unkeyed lines opened with keys gets an `audit.keyed` line. The
    /// rest of the chain is `verify`'s job.
    pub fn open_with(path: &Path, options: LogOptions) -> Result<AuditLog, AuditError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_err("create the directory of", path))?;
        }
        let lock_path = PathBuf::from(format!("{}.lock", path.display()));
        let lock_file = open_private(&lock_path, true)?;
        let guard = lock(&lock_file, path)?;
        let file = open_private(path, false)?;
        // Make the file's directory entry durable too, so a new log survives a crash.
        sync_dir(path)?;
        let ino = file.metadata().map_err(io_err("stat", path))?.ino();
        let mut state = State {
            path: path.to_path_buf(),
            file,
            ino,
            lock: lock_file.try_clone().map_err(io_err("open", &lock_path))?,
            head: ChainHead::EMPTY,
            head_keyed: false,
            len: 0,
            broken: false,
            options,
            month: None,
            active_first: 0,
            first: 0,
            sink: None,
        };
        state.load()?;
        if state.options.keys.is_keyed() && state.head.lines > 0 && !state.head_keyed {
            // From here on every line is keyed; this one's `prev` fixes the legacy part.
            let entry = AuditEntry::new(Actor::system("audit"), action::AUDIT_KEYED, Outcome::Ok)
                .with_param("legacy_lines", state.head.lines.to_string());
            state.write(&entry)?;
        }
        drop(guard);
        Ok(AuditLog {
            path: path.to_path_buf(),
            state: Arc::new(Mutex::new(state)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current chain head, as this writer last saw it.
    pub fn head(&self) -> Result<ChainHead, AuditError> {
        let state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        Ok(state.head)
    }

    /// The head and the oldest kept seq, as this writer last saw them.
    pub fn anchor(&self) -> Result<Anchor, AuditError> {
        let state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        Ok(state.anchor())
    }

    /// From now on the head goes to `sink` after every line; it gets the current one at once.
    pub fn attach_anchor(&self, sink: Arc<dyn AnchorSink>) -> Result<(), AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        sink.anchor(&state.anchor());
        state.sink = Some(sink);
        Ok(())
    }

    /// Chains `entry`, writes it as one line and syncs it to disk; returns the new head.
    /// Blocking: call it from a blocking thread. An entry that could carry an identifier
    /// (see the crate documentation) is refused and nothing is written.
    pub fn append(&self, entry: &AuditEntry) -> Result<ChainHead, AuditError> {
        entry.check()?;
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        let lock_file = state.lock.try_clone().map_err(io_err("lock", &self.path))?;
        let _guard = lock(&lock_file, &self.path)?;
        state.catch_up()?;
        if state.options.roll_monthly
            && state.len > 0
            && state.month.is_some_and(|m| month_of(entry.time) > m)
        {
            state.roll()?;
        }
        let head = state.write(entry)?;
        state.send_anchor();
        Ok(head)
    }

    /// Takes in lines other writers appended and re-anchors; an error when the file shrank,
    /// was replaced, or holds lines that do not continue the chain (someone edited it).
    pub fn refresh(&self) -> Result<ChainHead, AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        let lock_file = state.lock.try_clone().map_err(io_err("lock", &self.path))?;
        let _guard = lock(&lock_file, &self.path)?;
        let before = state.head;
        state.catch_up()?;
        if state.head != before {
            state.send_anchor();
        }
        Ok(state.head)
    }

    /// Seals the active segment now and starts the next one (the service rolls over monthly
    /// by itself). Nothing happens to an empty active segment.
    pub fn roll(&self) -> Result<(), AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        let lock_file = state.lock.try_clone().map_err(io_err("lock", &self.path))?;
        let _guard = lock(&lock_file, &self.path)?;
        state.catch_up()?;
        if state.len > 0 {
            state.roll()?;
        }
        Ok(())
    }

    /// Removes the sealed segments whose last line is older than `cutoff`, oldest first and
    /// only while each one before was removed too; the active segment always stays. The
    /// anchor's `first` moves before any file goes, and an `audit.retention` line records
    /// what went.
    pub fn remove_segments_before(&self, cutoff: Timestamp) -> Result<Removed, AuditError> {
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        let lock_file = state.lock.try_clone().map_err(io_err("lock", &self.path))?;
        let _guard = lock(&lock_file, &self.path)?;
        state.catch_up()?;
        let mut gone = Vec::new();
        let mut kept_from = state.active_first;
        for (seq, segment) in sealed(&self.path)? {
            let ends = crate::segments::ends(&segment)?;
            if ends.last_time.is_some_and(|t| t < cutoff) {
                gone.push(segment);
            } else {
                kept_from = seq;
                break;
            }
        }
        if gone.is_empty() {
            return Ok(Removed {
                segments: gone,
                first: state.first,
            });
        }
        // The anchor first: a crash before the files go leaves more than it says, not less.
        state.first = kept_from;
        state.send_anchor();
        for segment in &gone {
            std::fs::remove_file(segment).map_err(io_err("remove", segment))?;
        }
        sync_dir(&self.path)?;
        let entry = AuditEntry::new(Actor::system("audit"), action::AUDIT_RETENTION, Outcome::Ok)
            .with_param("segments", gone.len().to_string())
            .with_param("kept_from", kept_from.to_string());
        state.write(&entry)?;
        state.send_anchor();
        Ok(Removed {
            segments: gone,
            first: kept_from,
        })
    }
}

enum Tail {
    Empty,
    Line(Vec<u8>),
}

impl State {
    fn anchor(&self) -> Anchor {
        Anchor {
            head: self.head,
            first: Some(self.first),
        }
    }

    fn send_anchor(&self) {
        if let Some(sink) = &self.sink {
            sink.anchor(&self.anchor());
        }
    }

    fn corrupt(&self, reason: String) -> AuditError {
        AuditError::Corrupt {
            path: self.path.clone(),
            reason,
        }
    }

    /// Reads the head (from the active file, or the last sealed segment when the active one
    /// is empty), recovers a torn tail, and finds the oldest kept seq.
    fn load(&mut self) -> Result<(), AuditError> {
        let path = self.path.clone();
        let len = self.file.metadata().map_err(io_err("stat", &path))?.len();
        let complete = match crate::tail::rfind_newline(&self.file, len, None)
            .map_err(io_err("read", &path))?
        {
            crate::tail::Scan::Found(p) => p + 1,
            _ => 0,
        };
        let sealed = sealed(&path)?;
        let tail = if complete > 0 {
            match last_line(&self.file, complete).map_err(io_err("read", &path))? {
                Some(line) => Tail::Line(line),
                None => {
                    return Err(
                        self.corrupt("the last complete line is longer than allowed".into())
                    );
                }
            }
        } else if let Some((_, last)) = sealed.last() {
            let file = File::open(last).map_err(io_err("open", last))?;
            let len = file.metadata().map_err(io_err("stat", last))?.len();
            match last_line(&file, len).map_err(io_err("read", last))? {
                Some(line) => Tail::Line(line),
                None => Tail::Empty,
            }
        } else {
            Tail::Empty
        };
        if let Tail::Line(line) = tail {
            self.adopt_tail(&line)?;
        }
        self.len = len;
        self.active_first = self.head.lines;
        if complete > 0
            && let Some(first) = first_line(&self.file).map_err(io_err("read", &path))?
            && let Some(peek) = peek(&first)
        {
            self.active_first = peek.seq;
            self.month = peek.time.map(month_of);
        }
        self.first = sealed.first().map_or(self.active_first, |(seq, _)| *seq);
        if complete < len {
            self.recover_torn(complete, len)?;
        }
        Ok(())
    }

    /// Takes the head from the last complete line, which must be valid on its own.
    fn adopt_tail(&mut self, line: &[u8]) -> Result<(), AuditError> {
        let checked = check_line(line, &self.options.keys).map_err(|(_, why)| {
            let hint = if why.contains("`hash`") {
                " (an audit log from before the hash chain? move it aside)"
            } else {
                ""
            };
            self.corrupt(format!(
                "the last complete line is not a valid entry: {why}{hint}"
            ))
        })?;
        if checked.key_version.is_some() && !self.options.keys.is_keyed() {
            return Err(AuditError::Keyed {
                path: self.path.clone(),
            });
        }
        if !checked.hash_checked {
            return Err(self.corrupt(
                "the last line is keyed under a key version the key ring does not hold".into(),
            ));
        }
        let lines = checked.seq.checked_add(1).ok_or_else(|| {
            self.corrupt("the last complete line's sequence number is exhausted".into())
        })?;
        self.head = ChainHead {
            lines,
            hash: checked.hash,
        };
        self.head_keyed = checked.key_version.is_some();
        Ok(())
    }

    /// A crash mid-write left a line without its `\n`: it was never acknowledged, so it is
    /// dropped, and the drop itself goes into the chain.
    fn recover_torn(&mut self, complete: u64, len: u64) -> Result<(), AuditError> {
        let path = self.path.clone();
        let torn = len - complete;
        let digest = hash_range(&self.file, complete, len).map_err(io_err("read", &path))?;
        self.file
            .set_len(complete)
            .map_err(io_err("truncate", &path))?;
        self.file.sync_all().map_err(io_err("sync", &path))?;
        self.len = complete;
        let entry = AuditEntry::new(Actor::system("audit"), action::AUDIT_RECOVERED, Outcome::Ok)
            .with_param("discarded_bytes", torn.to_string())
            .with_param("discarded_blake3", hex::encode(digest));
        self.write(&entry)?;
        Ok(())
    }

    /// Takes in what other writers appended since this one last wrote: complete lines that
    /// continue the chain. Anything else is [`AuditError::Changed`].
    fn catch_up(&mut self) -> Result<(), AuditError> {
        let changed = || AuditError::Changed {
            path: self.path.clone(),
        };
        let same_file = std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.ino);
        let len = self
            .file
            .metadata()
            .map_err(io_err("stat", &self.path))?
            .len();
        if !same_file || len < self.len || len - self.len > MAX_CATCH_UP {
            return Err(changed());
        }
        if len == self.len {
            return Ok(());
        }
        let mut bytes = vec![0u8; (len - self.len) as usize];
        self.file
            .read_exact_at(&mut bytes, self.len)
            .map_err(io_err("read", &self.path))?;
        if bytes.last() != Some(&b'\n') {
            return Err(changed());
        }
        for line in bytes[..bytes.len() - 1].split(|&b| b == b'\n') {
            let checked = check_line(line, &self.options.keys).map_err(|_| changed())?;
            if checked.key_version.is_some() && !self.options.keys.is_keyed() {
                return Err(AuditError::Keyed {
                    path: self.path.clone(),
                });
            }
            let keyed_ok = checked.key_version.is_some() || !self.options.keys.is_keyed();
            // A line under a newer key version than this writer has: a command run after
            // `keygen --rotate`, before the service restarted. Its link is checked here, its
            // hash by `verify` with the new key ring.
            let newer_key = checked
                .key_version
                .is_some_and(|v| v > self.options.keys.current_version());
            if !(checked.hash_checked || newer_key)
                || !keyed_ok
                || checked.seq != self.head.lines
                || checked.prev != self.head.hash
            {
                return Err(changed());
            }
            if self.month.is_none() {
                self.active_first = checked.seq;
                self.month = crate::tail::peek(line).and_then(|p| p.time).map(month_of);
            }
            self.head = ChainHead {
                lines: checked.seq.saturating_add(1),
                hash: checked.hash,
            };
            self.head_keyed = checked.key_version.is_some();
        }
        self.len = len;
        Ok(())
    }

    /// Renames the active file to its sealed name and starts an empty one; the next line
    /// written is the new segment's `audit.segment` line.
    fn roll(&mut self) -> Result<(), AuditError> {
        let path = self.path.clone();
        let target = sealed_name(&path, self.active_first);
        if target.exists() {
            return Err(self.corrupt(format!("the segment {} exists already", target.display())));
        }
        std::fs::rename(&path, &target).map_err(io_err("seal", &path))?;
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(io_err("create", &path))?;
        sync_dir(&path)?;
        self.ino = file.metadata().map_err(io_err("stat", &path))?.ino();
        self.file = file;
        self.len = 0;
        self.month = None;
        self.active_first = self.head.lines;
        Ok(())
    }

    /// Writes `entry` (after the segment's first line, if the active file is empty and the
    /// chain is not).
    fn write(&mut self, entry: &AuditEntry) -> Result<ChainHead, AuditError> {
        if self.len == 0 && self.head.lines > 0 {
            let start = AuditEntry::new(Actor::system("audit"), action::AUDIT_SEGMENT, Outcome::Ok)
                .with_time(entry.time)
                .with_param("previous", self.head.to_string());
            self.write_line(&start)?;
        }
        self.write_line(entry)
    }

    fn write_line(&mut self, entry: &AuditEntry) -> Result<ChainHead, AuditError> {
        let path = self.path.clone();
        if self.broken {
            return Err(AuditError::Broken { path });
        }
        let lines = self
            .head
            .lines
            .checked_add(1)
            .ok_or_else(|| self.corrupt("the sequence number is exhausted".into()))?;
        let (line, hash) =
            encode_line(entry, self.head.lines, &self.head.hash, &self.options.keys)?;
        let len = self.file.metadata().map_err(io_err("stat", &path))?.len();
        if len != self.len {
            return Err(AuditError::Changed { path });
        }
        let written = (&self.file)
            .write_all(&line)
            .and_then(|()| self.file.sync_data());
        if let Err(source) = written {
            // Take back whatever part of the line reached the file, so that the next line
            // does not glue onto half of this one. If even that fails, stop appending.
            let undone = self
                .file
                .set_len(self.len)
                .and_then(|()| self.file.sync_all());
            if undone.is_err() {
                self.broken = true;
            }
            return Err(io_err("write", &path)(source));
        }
        if self.len == 0 {
            self.active_first = self.head.lines;
            self.month = Some(month_of(entry.time));
        }
        self.len += line.len() as u64;
        self.head = ChainHead { lines, hash };
        self.head_keyed = self.options.keys.is_keyed();
        Ok(self.head)
    }
}
