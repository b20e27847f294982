//! Appending to the log: open (and recover a torn tail), then one synced line per entry.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use crate::chain::{ChainHead, check_line, encode_line};
use crate::entry::{Actor, AuditEntry, Outcome, action};
use crate::{AuditError, MAX_LINE_BYTES};

const CHUNK: usize = 64 * 1024;

/// The open audit log. Cheap to clone; clones share one file and one chain head, and appends
/// from any thread are serialised. Open it once per file: a second writer (another
/// `AuditLog`, another process) would fork the chain, so `append` refuses once it sees the file
/// grew behind its back.
#[derive(Debug, Clone)]
pub struct AuditLog {
    path: PathBuf,
    state: Arc<Mutex<State>>,
}

#[derive(Debug)]
struct State {
    file: File,
    head: ChainHead,
    /// The file's length as far as this writer knows.
    len: u64,
    /// A failed write could not be taken back; nothing more may be chained onto it.
    broken: bool,
}

impl AuditLog {
    /// Opens the log for appending, creating it (mode 0600, missing parent directories 0700).
    /// Reads only the end of the file: the last complete line must be a valid entry and gives
    /// the chain head. A torn last line is cut off and an `audit.recovered` line records it.
    /// The rest of the chain is `verify`'s job.
    pub fn open(path: &Path) -> Result<AuditLog, AuditError> {
        let io = |op: &'static str| {
            let path = path.to_path_buf();
            move |source| AuditError::Io { op, path, source }
        };
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty());
        if let Some(dir) = dir {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io("create the directory of"))?;
        }
        let file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)
            .map_err(io("open"))?;
        let meta = file.metadata().map_err(io("stat"))?;
        if !meta.is_file() {
            return Err(io("open")(std::io::Error::other("not a regular file")));
        }
        let mode = meta.mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(AuditError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        // Make the file's directory entry durable too, so a new log survives a crash.
        if let Some(dir) = dir {
            File::open(dir)
                .and_then(|d| d.sync_all())
                .map_err(io("sync the directory of"))?;
        }

        let len = meta.len();
        let last_newline = match rfind_newline(&file, len, None).map_err(io("read"))? {
            Scan::Found(p) => Some(p),
            Scan::Start | Scan::TooFar => None,
        };
        let complete = last_newline.map_or(0, |p| p + 1);
        let head = match last_newline {
            None => ChainHead::EMPTY,
            Some(end) => last_line_head(&file, end).map_err(|e| match e {
                TailError::Io(source) => io("read")(source),
                TailError::Corrupt(reason) => AuditError::Corrupt {
                    path: path.to_path_buf(),
                    reason,
                },
            })?,
        };
        let mut state = State {
            file,
            head,
            len,
            broken: false,
        };

        if complete < len {
            // A crash mid-write left a line without its `\n`: it was never acknowledged, so it
            // is dropped, and the drop itself goes into the chain.
            let torn = len - complete;
            let digest = hash_range(&state.file, complete, len).map_err(io("read"))?;
            state.file.set_len(complete).map_err(io("truncate"))?;
            state.file.sync_all().map_err(io("sync"))?;
            state.len = complete;
            let entry =
                AuditEntry::new(Actor::system("audit"), action::AUDIT_RECOVERED, Outcome::Ok)
                    .with_param("discarded_bytes", torn.to_string())
                    .with_param("discarded_blake3", hex::encode(digest));
            state.append(&entry, path)?;
        }
        Ok(AuditLog {
            path: path.to_path_buf(),
            state: Arc::new(Mutex::new(state)),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The current chain head, for the service to log (at start-up, periodically) so that a
    /// later `verify` can tell whether lines were removed from the end.
    pub fn head(&self) -> Result<ChainHead, AuditError> {
        let state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        Ok(state.head)
    }

    /// Chains `entry`, writes it as one line and syncs it to disk; returns the new head.
    /// Blocking: call it from a blocking thread. An entry that could carry an identifier
    /// (see the crate documentation) is refused and nothing is written.
    pub fn append(&self, entry: &AuditEntry) -> Result<ChainHead, AuditError> {
        entry.check()?;
        let mut state = self.state.lock().map_err(|_| AuditError::Poisoned)?;
        state.append(entry, &self.path)
    }
}

impl State {
    fn append(&mut self, entry: &AuditEntry, path: &Path) -> Result<ChainHead, AuditError> {
        let io = |op: &'static str| {
            let path = path.to_path_buf();
            move |source| AuditError::Io { op, path, source }
        };
        if self.broken {
            return Err(AuditError::Broken {
                path: path.to_path_buf(),
            });
        }
        let lines = self
            .head
            .lines
            .checked_add(1)
            .ok_or_else(|| AuditError::Corrupt {
                path: path.to_path_buf(),
                reason: "the sequence number is exhausted".into(),
            })?;
        let (line, hash) = encode_line(entry, self.head.lines, &self.head.hash)?;
        let len = self.file.metadata().map_err(io("stat"))?.len();
        if len != self.len {
            return Err(AuditError::Changed {
                path: path.to_path_buf(),
            });
        }
        let written = self
            .file
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
            return Err(io("write")(source));
        }
        self.len += line.len() as u64;
        self.head = ChainHead { lines, hash };
        Ok(self.head)
    }
}

enum TailError {
    Io(std::io::Error),
    Corrupt(String),
}

impl From<std::io::Error> for TailError {
    fn from(e: std::io::Error) -> Self {
        TailError::Io(e)
    }
}

/// The head after the complete line that ends with the `\n` at `end`.
fn last_line_head(file: &File, end: u64) -> Result<ChainHead, TailError> {
    let start = match rfind_newline(file, end, Some(MAX_LINE_BYTES as u64 + 1))? {
        Scan::Found(p) => p + 1,
        Scan::Start => 0,
        Scan::TooFar => {
            return Err(TailError::Corrupt(
                "the last complete line is longer than allowed".into(),
            ));
        }
    };
    let mut line = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut line, start)?;
    let checked = check_line(&line).map_err(|(_, why)| {
        let hint = if why.contains("`hash`") {
            " (an audit log from before the hash chain? move it aside)"
        } else {
            ""
        };
        TailError::Corrupt(format!(
            "the last complete line is not a valid entry: {why}{hint}"
        ))
    })?;
    let lines = checked.seq.checked_add(1).ok_or_else(|| {
        TailError::Corrupt("the last complete line's sequence number is exhausted".into())
    })?;
    Ok(ChainHead {
        lines,
        hash: checked.hash,
    })
}

enum Scan {
    Found(u64),
    /// No `\n` between the start of the file and `end`.
    Start,
    /// None within the limit.
    TooFar,
}

/// The offset of the last `\n` before `end`, scanning backwards in chunks, giving up after
/// `limit` bytes without one if a limit is given.
fn rfind_newline(file: &File, end: u64, limit: Option<u64>) -> std::io::Result<Scan> {
    let mut buf = vec![0u8; CHUNK];
    let mut hi = end;
    while hi > 0 {
        if limit.is_some_and(|limit| end - hi >= limit) {
            return Ok(Scan::TooFar);
        }
        let lo = hi.saturating_sub(CHUNK as u64);
        let n = (hi - lo) as usize;
        file.read_exact_at(&mut buf[..n], lo)?;
        if let Some(i) = buf[..n].iter().rposition(|&b| b == b'\n') {
            return Ok(Scan::Found(lo + i as u64));
        }
        hi = lo;
    }
    Ok(Scan::Start)
}

fn hash_range(file: &File, from: u64, to: u64) -> std::io::Result<[u8; 32]> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; CHUNK];
    let mut at = from;
    while at < to {
        let n = ((to - at) as usize).min(CHUNK);
        file.read_exact_at(&mut buf[..n], at)?;
        hasher.update(&buf[..n]);
        at += n as u64;
    }
    Ok(*hasher.finalize().as_bytes())
}
