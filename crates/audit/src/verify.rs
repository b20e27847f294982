//! Walking a log file: every line checked on its own and against the line before.

use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chain::{ChainHead, GENESIS_HASH, check_line};
use crate::entry::AuditEntry;
use crate::{AuditError, MAX_LINE_BYTES};

/// Problems kept in a [`VerifyReport`]; more are only counted.
const MAX_PROBLEMS: usize = 100;

/// What is wrong with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Not a JSON object with valid chain fields, not an audit entry, or too long: the line
    /// was damaged or written by something else.
    Malformed,
    /// A valid-looking line whose bytes or content no longer match its hash.
    Edited,
    /// `seq` jumped forward: lines before this one were removed.
    Deleted,
    /// `seq` went back: lines were moved or duplicated.
    Reordered,
    /// `seq` is right but `prev` is not the previous line's hash: the line before was replaced
    /// by one with a recomputed hash.
    BrokenLink,
    /// The last line has no `\n`: a crash mid-write (the service cuts it off when it opens the
    /// log) or a cut file.
    TornTail,
    /// The file ends before the recorded head: lines were removed from the end.
    Truncated,
    /// The line at the recorded head has a different hash: the log was rewritten.
    HeadMismatch,
}

/// One broken line: its 1-based number in the file, what is wrong, and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    pub line: u64,
    pub kind: ProblemKind,
    pub detail: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {}: {}", self.line, self.detail)
    }
}

/// The result of [`verify`]. `head` is where the chain ends (from the last line that is valid
/// on its own); `problems` holds the first 100, `problem_count` all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    pub lines: u64,
    pub head: ChainHead,
    pub expected_head: Option<ChainHead>,
    pub problems: Vec<Problem>,
    pub problem_count: u64,
}

impl VerifyReport {
    pub fn is_ok(&self) -> bool {
        self.problem_count == 0
    }

    pub fn first_problem(&self) -> Option<&Problem> {
        self.problems.first()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_ok() {
            write!(f, "ok: {} lines, head {}", self.lines, self.head)?;
            if self.expected_head.is_some() {
                write!(f, " (the recorded head is in the log)")?;
            }
            return Ok(());
        }
        write!(
            f,
            "BROKEN: {} problem(s) in {} lines",
            self.problem_count, self.lines
        )?;
        for problem in &self.problems {
            write!(f, "\n  {problem}")?;
        }
        if self.problem_count > self.problems.len() as u64 {
            write!(f, "\n  …")?;
        }
        Ok(())
    }
}

/// Checks the whole log: each line's canonical form and hash, `seq` continuity and `prev`
/// links, a torn tail, and, given the head recorded earlier, that the log still reaches it with
/// the same hash. Corruption is reported, not returned as an error; errors are I/O only.
pub fn verify(path: &Path, expected: Option<&ChainHead>) -> Result<VerifyReport, AuditError> {
    walk(path, expected, |_, _| {})
}

/// Walks the log, verifying as [`verify`] does, and hands every line that is an audit entry
/// intact on its own to `on_entry` with its line number, even where the chain around it is
/// broken (the report says so); edited or malformed lines are not handed on.
pub(crate) fn walk(
    path: &Path,
    expected: Option<&ChainHead>,
    mut on_entry: impl FnMut(u64, AuditEntry),
) -> Result<VerifyReport, AuditError> {
    let io = |op: &'static str| {
        let path = path.to_path_buf();
        move |source| AuditError::Io { op, path, source }
    };
    let file = File::open(path).map_err(io("open"))?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut walker = Walker::new(expected.copied());
    let mut buf = Vec::new();
    loop {
        buf.clear();
        let raw = read_line(&mut reader, &mut buf).map_err(io("read"))?;
        let line_no = walker.lines + 1;
        match raw {
            Raw::End => break,
            Raw::TooLong => {
                walker.lines += 1;
                walker.bad_line(
                    ProblemKind::Malformed,
                    "the line is longer than allowed".into(),
                );
            }
            Raw::Torn => {
                walker.lines += 1;
                walker.problem(
                    ProblemKind::TornTail,
                    "the last line has no line end: torn by a crash or cut".into(),
                );
            }
            Raw::Line => {
                walker.lines += 1;
                if let Some(entry) = walker.line(&buf) {
                    on_entry(line_no, entry);
                }
            }
        }
    }
    Ok(walker.finish())
}

enum Raw {
    Line,
    Torn,
    TooLong,
    End,
}

/// Reads one line into `buf` without its `\n`, never holding more than [`MAX_LINE_BYTES`].
fn read_line(reader: &mut impl BufRead, buf: &mut Vec<u8>) -> std::io::Result<Raw> {
    let limit = MAX_LINE_BYTES as u64 + 1;
    let n = reader.by_ref().take(limit).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(Raw::End);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Raw::Line);
    }
    if (n as u64) < limit {
        return Ok(Raw::Torn);
    }
    // Too long: skip to the end of the line, a buffer at a time.
    loop {
        let chunk = reader.fill_buf()?;
        if chunk.is_empty() {
            return Ok(Raw::TooLong);
        }
        if let Some(i) = chunk.iter().position(|&b| b == b'\n') {
            reader.consume(i + 1);
            return Ok(Raw::TooLong);
        }
        let len = chunk.len();
        reader.consume(len);
    }
}

struct Walker {
    expected: Option<ChainHead>,
    /// Lines read so far (the current one included once counted).
    lines: u64,
    next_seq: u64,
    /// The previous line's hash, or `None` right after a line whose hash cannot be trusted.
    prev: Option<[u8; 32]>,
    head: ChainHead,
    /// The hash of the line with the expected head's last `seq`, once seen.
    at_expected: Option<[u8; 32]>,
    problems: Vec<Problem>,
    problem_count: u64,
}

impl Walker {
    fn new(expected: Option<ChainHead>) -> Walker {
        Walker {
            expected,
            lines: 0,
            next_seq: 0,
            prev: Some(GENESIS_HASH),
            head: ChainHead::EMPTY,
            at_expected: None,
            problems: Vec::new(),
            problem_count: 0,
        }
    }

    fn problem(&mut self, kind: ProblemKind, detail: String) {
        self.problem_at(self.lines, kind, detail);
    }

    fn problem_at(&mut self, line: u64, kind: ProblemKind, detail: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem { line, kind, detail });
        }
    }

    /// A line that cannot be trusted: the next one is checked for `seq` but not for `prev`.
    fn bad_line(&mut self, kind: ProblemKind, detail: String) {
        self.problem(kind, detail);
        self.next_seq = self.next_seq.saturating_add(1);
        self.prev = None;
    }

    fn line(&mut self, bytes: &[u8]) -> Option<AuditEntry> {
        let checked = match check_line(bytes) {
            Ok(c) => c,
            Err((kind, detail)) => {
                self.bad_line(kind, detail);
                return None;
            }
        };
        let seq = checked.seq;
        if seq > self.next_seq {
            let missing = seq - self.next_seq;
            self.problem(
                ProblemKind::Deleted,
                format!(
                    "seq {seq} where {} was expected: {missing} line(s) before this one were removed",
                    self.next_seq
                ),
            );
        } else if seq < self.next_seq {
            self.problem(
                ProblemKind::Reordered,
                format!(
                    "seq {seq} where {} was expected: lines were moved or duplicated",
                    self.next_seq
                ),
            );
        } else if self.prev.is_some_and(|prev| prev != checked.prev) {
            self.problem(
                ProblemKind::BrokenLink,
                "prev is not the previous line's hash: the line before was replaced".into(),
            );
        }
        // Carry on from this line, so that one removed line is one problem, not a cascade.
        self.next_seq = seq.saturating_add(1);
        self.prev = Some(checked.hash);
        self.head = ChainHead {
            lines: seq.saturating_add(1),
            hash: checked.hash,
        };
        if let Some(expected) = self.expected
            && expected.lines > 0
            && seq == expected.lines - 1
            && self.at_expected.is_none()
        {
            self.at_expected = Some(checked.hash);
        }
        match serde_json::from_value::<AuditEntry>(Value::Object(checked.fields)) {
            Ok(entry) => Some(entry),
            Err(e) => {
                self.problem(ProblemKind::Malformed, format!("not an audit entry ({e})"));
                None
            }
        }
    }

    fn finish(mut self) -> VerifyReport {
        if let Some(expected) = self.expected
            && expected.lines > 0
        {
            // Problems about the end of the file are numbered as the line after its last.
            let after = self.lines + 1;
            match self.at_expected {
                None => self.problem_at(
                    after,
                    ProblemKind::Truncated,
                    format!(
                        "the recorded head {expected} is not in the log, whose chain ends at {}: lines were removed from the end",
                        self.head
                    ),
                ),
                Some(hash) if hash != expected.hash => self.problem_at(
                    after,
                    ProblemKind::HeadMismatch,
                    format!(
                        "the line with seq {} does not have the recorded head's hash {expected}: the log was rewritten",
                        expected.lines - 1
                    ),
                ),
                Some(_) => {}
            }
        }
        VerifyReport {
            lines: self.lines,
            head: self.head,
            expected_head: self.expected,
            problems: self.problems,
            problem_count: self.problem_count,
        }
    }
}
