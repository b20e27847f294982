//! Walking a log, segment after segment: every line checked on its own and against the line
//! before, the start of the oldest kept segment, recorded gaps, and the anchor.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::chain::Anchor;
use crate::chain::{ChainHead, GENESIS_HASH, ProblemKind, check_line};
use crate::entry::{AuditEntry, action};
use crate::keys::ChainKeys;
use crate::segments::segments;
use crate::{AuditError, MAX_LINE_BYTES};

/// Problems kept in a [`VerifyReport`]; more are only counted.
const MAX_PROBLEMS: usize = 100;

/// One broken line: its file (name only), its 1-based number in that file, what is wrong,
/// and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Problem {
    #[serde(default)]
    pub file: String,
    pub line: u64,
    pub kind: ProblemKind,
    pub detail: String,
    /// For a [`ProblemKind::RecordedGap`], the gap line's seq (what an acknowledgement
    /// names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} line {}: {}", self.file, self.line, self.detail)
    }
}

/// The result of [`verify_with`]. `head` is where the chain ends (from the last line that is
/// valid on its own); `problems` holds the first 100, `problem_count` all of them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyReport {
    /// Lines read, over all segments.
    pub lines: u64,
    /// Files read (segments, the active one included).
    #[serde(default)]
    pub segments: u64,
    /// The seq of the first line read: 0, or where the oldest kept segment starts.
    #[serde(default)]
    pub first_seq: Option<u64>,
    /// The seq of the first keyed line; lines before it are unkeyed (legacy).
    #[serde(default)]
    pub keyed_from: Option<u64>,
    pub head: ChainHead,
    pub expected_head: Option<ChainHead>,
    /// The oldest seq the anchor says is kept.
    #[serde(default)]
    pub expected_first: Option<u64>,
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
            write!(
                f,
                "ok: {} lines in {} segment(s), head {}",
                self.lines, self.segments, self.head
            )?;
            if let Some(first) = self.first_seq.filter(|s| *s > 0) {
                write!(f, ", kept from sequence {first}")?;
            }
            match self.keyed_from {
                Some(0) => write!(f, ", keyed")?,
                Some(seq) => write!(f, ", unkeyed (legacy) before sequence {seq}, keyed after")?,
                None => write!(f, ", unkeyed")?,
            }
            if self.expected_head.is_some() {
                write!(f, " (the anchored head is in the log)")?;
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

/// Checks an unkeyed log as [`verify_with`] does, against a head recorded earlier if given.
/// A keyed log needs its keys: here every keyed line is an [`ProblemKind::UnknownKey`].
pub fn verify(path: &Path, expected: Option<&ChainHead>) -> Result<VerifyReport, AuditError> {
    let anchor = expected.map(|head| Anchor {
        head: *head,
        first: None,
    });
    verify_with(path, &ChainKeys::unkeyed(), anchor.as_ref())
}

/// Checks the whole log, every kept segment oldest first: each line's canonical form and
/// (keyed) hash, `seq` continuity and `prev` links across segments, that the oldest kept
/// segment starts at a segment line (or at seq 0), that no unkeyed line follows a keyed one,
/// unacknowledged `audit.gap` lines, a torn tail, and, given the anchor, that the log still
/// reaches its head with the same hash and starts no later than its `first`. Corruption is
/// reported, not returned as an error; errors are I/O only.
pub fn verify_with(
    path: &Path,
    keys: &ChainKeys,
    anchor: Option<&Anchor>,
) -> Result<VerifyReport, AuditError> {
    walk(path, keys, anchor, |_, _| {})
}

/// Walks the log, verifying as [`verify_with`] does, and hands every line that is an audit
/// entry intact on its own to `on_entry` with its number over the whole log, even where the
/// chain around it is broken (the report says so); edited or malformed lines are not.
pub(crate) fn walk(
    path: &Path,
    keys: &ChainKeys,
    anchor: Option<&Anchor>,
    mut on_entry: impl FnMut(u64, AuditEntry),
) -> Result<VerifyReport, AuditError> {
    let mut files = segments(path)?;
    if files.is_empty() {
        // Nothing at all: the same error as before segments.
        files.push(path.to_path_buf());
    }
    let mut walker = Walker::new(keys, anchor.copied());
    for file_path in &files {
        let io = |op: &'static str| {
            let path = file_path.clone();
            move |source| AuditError::Io { op, path, source }
        };
        let file = File::open(file_path).map_err(io("open"))?;
        walker.start_file(file_path);
        let mut reader = BufReader::with_capacity(256 * 1024, file);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let raw = read_line(&mut reader, &mut buf).map_err(io("read"))?;
            match raw {
                Raw::End => break,
                Raw::TooLong => {
                    walker.count_line();
                    walker.bad_line(
                        ProblemKind::Malformed,
                        "the line is longer than allowed".into(),
                    );
                }
                Raw::Torn => {
                    walker.count_line();
                    walker.problem(
                        ProblemKind::TornTail,
                        "the last line has no line end: torn by a crash or cut".into(),
                    );
                }
                Raw::Line => {
                    walker.count_line();
                    if let Some(entry) = walker.line(&buf) {
                        on_entry(walker.lines, entry);
                    }
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

struct Walker<'k> {
    keys: &'k ChainKeys,
    expected: Option<Anchor>,
    /// The current file's name and the lines read from it.
    file: String,
    file_lines: u64,
    segments: u64,
    /// Lines read so far over all files.
    lines: u64,
    /// The seq of the first line that was valid on its own.
    first_seq: Option<u64>,
    next_seq: u64,
    /// The previous line's hash, or `None` right after a line whose hash cannot be trusted.
    prev: Option<[u8; 32]>,
    keyed_from: Option<u64>,
    /// Recorded gaps not acknowledged (yet): seq → where and what.
    gaps: BTreeMap<u64, (String, u64, String)>,
    head: ChainHead,
    /// The hash of the line with the expected head's last `seq`, once seen.
    at_expected: Option<[u8; 32]>,
    problems: Vec<Problem>,
    problem_count: u64,
}

impl<'k> Walker<'k> {
    fn new(keys: &'k ChainKeys, expected: Option<Anchor>) -> Walker<'k> {
        Walker {
            keys,
            expected,
            file: String::new(),
            file_lines: 0,
            segments: 0,
            lines: 0,
            first_seq: None,
            next_seq: 0,
            prev: Some(GENESIS_HASH),
            keyed_from: None,
            gaps: BTreeMap::new(),
            head: ChainHead::EMPTY,
            at_expected: None,
            problems: Vec::new(),
            problem_count: 0,
        }
    }

    fn start_file(&mut self, path: &Path) {
        self.file = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.file_lines = 0;
        self.segments += 1;
    }

    fn count_line(&mut self) {
        self.lines += 1;
        self.file_lines += 1;
    }

    fn problem(&mut self, kind: ProblemKind, detail: String) {
        self.problem_at(self.file.clone(), self.file_lines, kind, detail);
    }

    fn problem_at(&mut self, file: String, line: u64, kind: ProblemKind, detail: String) {
        self.problem_count += 1;
        if self.problems.len() < MAX_PROBLEMS {
            self.problems.push(Problem {
                file,
                line,
                kind,
                detail,
                seq: None,
            });
        }
    }

    /// A line that cannot be trusted: the next one is checked for `seq` but not for `prev`.
    fn bad_line(&mut self, kind: ProblemKind, detail: String) {
        self.problem(kind, detail);
        self.next_seq = self.next_seq.saturating_add(1);
        self.prev = None;
    }

    /// The sequence checks: the log's start, gaps, order, links.
    fn check_sequence(&mut self, seq: u64, prev: &[u8; 32], action: Option<&str>) {
        if self.first_seq.is_none() {
            self.first_seq = Some(seq);
            if seq == 0 {
                if *prev != GENESIS_HASH {
                    self.problem(
                        ProblemKind::BrokenLink,
                        "the first line's prev is not the genesis hash".into(),
                    );
                }
            } else if action != Some(action::AUDIT_SEGMENT) {
                self.problem(
                    ProblemKind::Deleted,
                    format!(
                        "the log starts at sequence {seq}, not at a segment's first line: {seq} line(s) before it were removed"
                    ),
                );
            }
            // A segment line at the start: older segments went by retention; its `prev`
            // is the head they ended at, fixed by this line's hash.
            return;
        }
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
        } else if self.prev.is_some_and(|p| p != *prev) {
            self.problem(
                ProblemKind::BrokenLink,
                "prev is not the previous line's hash: the line before was replaced".into(),
            );
        }
    }

    fn line(&mut self, bytes: &[u8]) -> Option<AuditEntry> {
        let checked = match check_line(bytes, self.keys) {
            Ok(c) => c,
            Err((kind, detail)) => {
                self.bad_line(kind, detail);
                return None;
            }
        };
        let seq = checked.seq;
        let action = checked
            .fields
            .get("action")
            .and_then(Value::as_str)
            .map(str::to_string);
        self.check_sequence(seq, &checked.prev, action.as_deref());
        match checked.key_version {
            Some(version) if !checked.hash_checked => self.problem(
                ProblemKind::UnknownKey,
                format!(
                    "keyed under key version {version}, which was not given: the hash cannot be checked"
                ),
            ),
            Some(_) => {
                self.keyed_from.get_or_insert(seq);
            }
            None => {
                if let Some(from) = self.keyed_from {
                    self.problem(
                        ProblemKind::Unkeyed,
                        format!(
                            "an unkeyed line after the chain was keyed at sequence {from}: written or re-chained without the key"
                        ),
                    );
                }
            }
        }
        // Carry on from this line, so that one removed line is one problem, not a cascade.
        self.next_seq = seq.saturating_add(1);
        self.prev = Some(checked.hash);
        self.head = ChainHead {
            lines: seq.saturating_add(1),
            hash: checked.hash,
        };
        if let Some(expected) = self.expected
            && expected.head.last_seq() == Some(seq)
            && self.at_expected.is_none()
        {
            self.at_expected = Some(checked.hash);
        }
        let entry = match serde_json::from_value::<AuditEntry>(Value::Object(checked.fields)) {
            Ok(entry) => entry,
            Err(e) => {
                self.problem(ProblemKind::Malformed, format!("not an audit entry ({e})"));
                return None;
            }
        };
        if checked.hash_checked {
            self.note_gap(seq, &entry);
        }
        Some(entry)
    }

    /// Keeps `audit.gap` lines until an `audit.gap_acknowledged` line names them.
    fn note_gap(&mut self, seq: u64, entry: &AuditEntry) {
        let param = |k: &str| entry.params.get(k).map(String::as_str).unwrap_or("?");
        if entry.action == action::AUDIT_GAP {
            let what = if param("at") == "start" {
                format!(
                    "the log started at sequence {}, the anchor said {} was kept: {} removed outside retention",
                    param("found"),
                    param("anchor"),
                    lines(param("missing")),
                )
            } else {
                format!(
                    "the log ended at sequence {}, the anchor said {}: {} missing",
                    param("found"),
                    param("anchor"),
                    lines(param("missing")),
                )
            };
            let detail = format!(
                "recorded gap: the service found at {} that {what}; not acknowledged (`meterstand audit acknowledge --gap {seq}`)",
                entry.time,
            );
            self.gaps
                .insert(seq, (self.file.clone(), self.file_lines, detail));
        } else if entry.action == action::AUDIT_GAP_ACKNOWLEDGED
            && let Some(gap) = entry.params.get("gap_seq").and_then(|s| s.parse().ok())
        {
            self.gaps.remove(&gap);
        }
    }

    fn finish(mut self) -> VerifyReport {
        for (seq, (file, line, detail)) in std::mem::take(&mut self.gaps) {
            self.problem_at(file, line, ProblemKind::RecordedGap, detail);
            if let Some(last) = self.problems.last_mut()
                && last.kind == ProblemKind::RecordedGap
                && last.line == line
            {
                last.seq = Some(seq);
            }
        }
        if self.keys.is_keyed()
            && self.lines > 0
            && self.keyed_from.is_none()
            && self.problem_count == 0
        {
            // A service with keys keys the log the first time it opens it (`audit.keyed`):
            // an unkeyed log here was re-chained without the key, or never opened by it.
            let (file, after) = (self.file.clone(), self.file_lines + 1);
            self.problem_at(
                file,
                after,
                ProblemKind::Unkeyed,
                "no line is keyed: the log was re-chained without the key (or the service never opened it)".into(),
            );
        }
        if let Some(expected) = self.expected {
            self.check_anchor(expected);
        }
        VerifyReport {
            lines: self.lines,
            segments: self.segments,
            first_seq: self.first_seq,
            keyed_from: self.keyed_from,
            head: self.head,
            expected_head: self.expected.map(|a| a.head),
            expected_first: self.expected.and_then(|a| a.first),
            problems: self.problems,
            problem_count: self.problem_count,
        }
    }

    fn check_anchor(&mut self, expected: Anchor) {
        // Problems about the end of the log are numbered as the line after its last.
        let (file, after) = (self.file.clone(), self.file_lines + 1);
        if let Some(anchored) = expected.head.last_seq() {
            match self.at_expected {
                None => {
                    let detail = match self.head.last_seq() {
                        Some(last) if last < anchored => format!(
                            "log ends at sequence {last}, anchor says {anchored}: {} missing",
                            lines(anchored - last)
                        ),
                        None => format!(
                            "log is empty, anchor says {anchored}: {} missing",
                            lines(expected.head.lines)
                        ),
                        Some(_) => format!(
                            "the anchored head {} (sequence {anchored}) is not in the log: lines were removed",
                            expected.head
                        ),
                    };
                    self.problem_at(file.clone(), after, ProblemKind::Truncated, detail);
                }
                Some(hash) if hash != expected.head.hash => self.problem_at(
                    file.clone(),
                    after,
                    ProblemKind::HeadMismatch,
                    format!(
                        "the line with sequence {anchored} does not have the anchored head's hash {}: the log was rewritten",
                        expected.head
                    ),
                ),
                Some(_) => {}
            }
        }
        if let (Some(kept), Some(first)) = (expected.first, self.first_seq)
            && first > kept
        {
            self.problem_at(
                file,
                after,
                ProblemKind::OutsideRetention,
                format!(
                    "the log starts at sequence {first}, the anchor says {kept} is kept: {} removed outside retention",
                    lines(first - kept)
                ),
            );
        }
    }
}

/// "1 line", "3 lines" (a count, or its text from a parameter).
fn lines(n: impl fmt::Display) -> String {
    let n = n.to_string();
    if n == "1" {
        "1 line".into()
    } else {
        format!("{n} lines")
    }
}
