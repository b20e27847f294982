//! Reading the ends of a log file without reading all of it: the last complete line (for the
//! chain head), the first line (where a segment starts), and a hash of a byte range.

use std::fs::File;
use std::os::unix::fs::FileExt;

use jiff::Timestamp;
use serde_json::Value;

use crate::MAX_LINE_BYTES;

const CHUNK: usize = 64 * 1024;

pub(crate) enum Scan {
    Found(u64),
    /// No `\n` between the start of the file and `end`.
    Start,
    /// None within the limit.
    TooFar,
}

/// The offset of the last `\n` before `end`, scanning backwards in chunks, giving up after
/// `limit` bytes without one if a limit is given.
pub(crate) fn rfind_newline(file: &File, end: u64, limit: Option<u64>) -> std::io::Result<Scan> {
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

/// The bytes of the complete line that ends with the `\n` at `end` (without it), or `None`
/// when that line is longer than allowed.
pub(crate) fn line_ending_at(file: &File, end: u64) -> std::io::Result<Option<Vec<u8>>> {
    let start = match rfind_newline(file, end, Some(MAX_LINE_BYTES as u64 + 1))? {
        Scan::Found(p) => p + 1,
        Scan::Start => 0,
        Scan::TooFar => return Ok(None),
    };
    let mut line = vec![0u8; (end - start) as usize];
    file.read_exact_at(&mut line, start)?;
    Ok(Some(line))
}

/// The last complete line of the first `len` bytes of `file`, if any.
pub(crate) fn last_line(file: &File, len: u64) -> std::io::Result<Option<Vec<u8>>> {
    match rfind_newline(file, len, None)? {
        Scan::Found(end) => line_ending_at(file, end),
        Scan::Start | Scan::TooFar => Ok(None),
    }
}

/// The first complete line of `file` (read by offset, whatever the file's position), if any.
pub(crate) fn first_line(file: &File) -> std::io::Result<Option<Vec<u8>>> {
    let mut line = Vec::new();
    let mut buf = vec![0u8; 4096];
    loop {
        let n = file.read_at(&mut buf, line.len() as u64)?;
        if n == 0 {
            return Ok(None);
        }
        if let Some(i) = buf[..n].iter().position(|&b| b == b'\n') {
            line.extend_from_slice(&buf[..i]);
            return Ok(Some(line));
        }
        line.extend_from_slice(&buf[..n]);
        if line.len() > MAX_LINE_BYTES {
            return Ok(None);
        }
    }
}

pub(crate) fn hash_range(file: &File, from: u64, to: u64) -> std::io::Result<[u8; 32]> {
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

/// What a line says about itself, read without checking it (deciding which segment is old
/// enough to go, or where a segment starts; `verify` checks them).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Peek {
    pub seq: u64,
    pub time: Option<Timestamp>,
}

pub(crate) fn peek(line: &[u8]) -> Option<Peek> {
    let value: Value = serde_json::from_slice(line).ok()?;
    let seq = value.get("seq")?.as_u64()?;
    let time = value
        .get("time")
        .and_then(Value::as_str)
        .and_then(|t| t.parse().ok());
    Some(Peek { seq, time })
}
