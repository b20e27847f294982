//! Segment files. The configured path is the active segment; a sealed segment is the active
//! one renamed to `<file name>.<seq of its first line, 20 digits>` in the same directory, so
//! that names sort in chain order. A log from before segments is one active file and keeps
//! working: it becomes the first sealed segment at the first roll-over.

use std::fs::File;
use std::path::{Path, PathBuf};

use crate::AuditError;
use crate::tail::{last_line, peek};

const SEQ_DIGITS: usize = 20;

/// The sealed segment of `active` whose first line has `first_seq`.
pub(crate) fn sealed_name(active: &Path, first_seq: u64) -> PathBuf {
    let name = active
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    active.with_file_name(format!("{name}.{first_seq:0SEQ_DIGITS$}"))
}

pub(crate) fn dir_of(active: &Path) -> &Path {
    active
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
}

/// The sealed segments of `active`, oldest first, with the seq their name gives.
pub(crate) fn sealed(active: &Path) -> Result<Vec<(u64, PathBuf)>, AuditError> {
    let Some(name) = active.file_name().map(|n| n.to_string_lossy().into_owned()) else {
        return Ok(Vec::new());
    };
    let dir = dir_of(active);
    let entries = match std::fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(AuditError::Io {
                op: "list the segments of",
                path: active.to_path_buf(),
                source,
            });
        }
    };
    let mut out = Vec::new();
    for entry in entries.flatten() {
        let file = entry.file_name().to_string_lossy().into_owned();
        let Some(seq) = file
            .strip_prefix(name.as_str())
            .and_then(|rest| rest.strip_prefix('.'))
            .filter(|d| d.len() == SEQ_DIGITS && d.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|d| d.parse::<u64>().ok())
        else {
            continue;
        };
        out.push((seq, dir.join(file)));
    }
    out.sort();
    Ok(out)
}

/// Every file of the log, oldest first: the sealed segments, then the active one if it
/// exists. What `verify` and `report` read.
pub fn segments(active: &Path) -> Result<Vec<PathBuf>, AuditError> {
    let mut files: Vec<PathBuf> = sealed(active)?.into_iter().map(|(_, p)| p).collect();
    if active.exists() {
        files.push(active.to_path_buf());
    }
    Ok(files)
}

/// The time of a file's last complete line, read without checking it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ends {
    pub last_time: Option<jiff::Timestamp>,
}

pub(crate) fn ends(path: &Path) -> Result<Ends, AuditError> {
    let io = |source| AuditError::Io {
        op: "read",
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io)?;
    let len = file.metadata().map_err(io)?.len();
    let last = last_line(&file, len).map_err(io)?;
    Ok(Ends {
        last_time: last.as_deref().and_then(peek).and_then(|p| p.time),
    })
}
