//! Monthly segments: the chain across files, retention by whole segments, what verify and
//! the report read, and a single-file log becoming the first segment.

use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use super::*;

fn keys() -> ChainKeys {
    ChainKeys::new([(1, Zeroizing::new([0x42; 32]))])
}

fn rolling(path: &Path) -> AuditLog {
    AuditLog::open_with(
        path,
        LogOptions {
            keys: keys(),
            roll_monthly: true,
        },
    )
    .expect("open")
}

fn day(date: &str) -> Timestamp {
    format!("{date}T12:00:00Z").parse().expect("time")
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Anchor>>);

impl AnchorSink for Recorder {
    fn anchor(&self, anchor: &Anchor) {
        self.0.lock().expect("lock").push(*anchor);
    }
}

/// Three lines in each of January to April 2026: four files, one chain.
fn four_months(path: &Path) -> AuditLog {
    let log = rolling(path);
    for (m, month) in ["2026-01", "2026-02", "2026-03", "2026-04"]
        .iter()
        .enumerate()
    {
        for d in 0..3 {
            let time = day(&format!("{month}-{:02}", 10 + d));
            log.append(&export("po-1", &pseudonym((m * 10 + d) as u32), time))
                .expect("append");
        }
    }
    log
}

fn names(path: &Path) -> Vec<String> {
    segments(path)
        .expect("segments")
        .iter()
        .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
        .collect()
}

#[test]
fn segments_chain_across_files_and_retention_removes_whole_old_ones() {
    let f = fixture();
    let log = four_months(&f.path);
    let sink = Arc::new(Recorder::default());
    log.attach_anchor(sink.clone()).expect("attach");
    // 3 lines in January; then a segment line and 3 lines per month: seq 0-2, 3-6, 7-10, 11-14.
    assert_eq!(
        names(&f.path),
        vec![
            "audit.log.00000000000000000000",
            "audit.log.00000000000000000003",
            "audit.log.00000000000000000007",
            "audit.log",
        ]
    );
    let february = segments(&f.path).expect("segments")[1].clone();
    let start: serde_json::Value = serde_json::from_slice(&lines(&february)[0]).expect("json");
    assert_eq!(start["action"], action::AUDIT_SEGMENT);
    assert_eq!(start["seq"], 3);
    let january_head: ChainHead = start["params"]["previous"]
        .as_str()
        .expect("previous")
        .parse()
        .expect("head");
    assert_eq!(january_head.lines, 3);
    assert_eq!(hex::encode(january_head.hash), start["prev"]);
    let report = verify_with(&f.path, &keys(), Some(&log.anchor().expect("a"))).expect("v");
    assert!(report.is_ok(), "{report}");
    assert_eq!(
        (report.segments, report.lines, report.first_seq),
        (4, 15, Some(0))
    );

    // Retention: segments whose last line is before March go (January's and February's,
    // last lines on the 12th); March's stays, and so does everything after it.
    let removed = log
        .remove_segments_before(day("2026-03-01"))
        .expect("retention");
    assert_eq!(removed.segments.len(), 2);
    assert_eq!(removed.first, 7);
    assert_eq!(names(&f.path).len(), 2);
    let anchors = sink.0.lock().expect("lock").clone();
    let last = *anchors.last().expect("anchored");
    assert_eq!(last.first, Some(7));
    let retention_line: serde_json::Value =
        serde_json::from_slice(lines(&f.path).last().expect("line")).expect("json");
    assert_eq!(retention_line["action"], action::AUDIT_RETENTION);
    assert_eq!(retention_line["params"]["kept_from"], "7");

    // Verify starts at the oldest kept segment: its first line carries the previous head.
    let report = verify_with(&f.path, &keys(), Some(&last)).expect("verify");
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.first_seq, Some(7));
    assert!(
        report.to_string().contains("kept from sequence 7"),
        "{report}"
    );
    // The report reads every kept segment.
    let r = report_with(
        &f.path,
        &keys(),
        Some(&last),
        day("2026-01-01"),
        day("2026-05-01"),
        None,
    )
    .expect("report");
    assert_eq!(r.entries, 3 + 1 + 3 + 1, "{r:?}"); // March and April, segment lines included
    assert!(r.integrity.ok);

    // Nothing younger than the cutoff goes; a second sweep removes nothing.
    assert!(
        log.remove_segments_before(day("2026-03-01"))
            .expect("again")
            .segments
            .is_empty()
    );
}

#[test]
fn a_segment_removed_outside_retention_is_detected() {
    let f = fixture();
    let log = four_months(&f.path);
    let anchor = log.anchor().expect("anchor");
    let files = segments(&f.path).expect("segments");
    // A middle segment: a gap in seq across files, no anchor needed.
    let march = std::fs::read(&files[2]).expect("read");
    std::fs::remove_file(&files[2]).expect("rm");
    let report = verify_with(&f.path, &keys(), None).expect("verify");
    assert_eq!(first(&report).kind, ProblemKind::Deleted, "{report}");
    assert_eq!(first(&report).file, "audit.log");
    std::fs::write(&files[2], march).expect("put back");
    std::fs::set_permissions(&files[2], std::fs::Permissions::from_mode(0o600)).expect("chmod");
    assert!(
        verify_with(&f.path, &keys(), Some(&anchor))
            .expect("v")
            .is_ok()
    );

    // The oldest segments, early: the rest starts at a segment line, so only the anchor
    // (which still says 0 is kept) shows it.
    std::fs::remove_file(&files[0]).expect("rm");
    std::fs::remove_file(&files[1]).expect("rm");
    assert!(verify_with(&f.path, &keys(), None).expect("v").is_ok());
    let report = verify_with(&f.path, &keys(), Some(&anchor)).expect("verify");
    assert_eq!(
        first(&report).kind,
        ProblemKind::OutsideRetention,
        "{report}"
    );
    assert!(
        first(&report)
            .detail
            .contains("starts at sequence 7, the anchor says 0 is kept: 7 lines removed"),
        "{report}"
    );
}

/// A single-file log of unkeyed lines keeps working: keyed from a marked point, and sealed
/// as the first segment when the month changes.
#[test]
fn a_single_file_log_becomes_the_first_segment() {
    let f = fixture();
    write_log(&f.path, 4);
    let log = rolling(&f.path);
    // write_log's lines are from November 2026; the next is in December.
    log.append(&export("po-1", &pseudonym(70), day("2026-12-02")))
        .expect("append");
    assert_eq!(
        names(&f.path),
        vec!["audit.log.00000000000000000000", "audit.log"]
    );
    let sealed = lines(&segments(&f.path).expect("s")[0]);
    assert_eq!(sealed.len(), 5, "4 legacy lines and the audit.keyed line");
    let report = verify_with(&f.path, &keys(), Some(&log.anchor().expect("a"))).expect("v");
    assert!(report.is_ok(), "{report}");
    assert_eq!((report.keyed_from, report.lines), (Some(4), 7));
    // Reopening finds the head in the active segment and keeps rolling from there.
    drop(log);
    let log = rolling(&f.path);
    assert_eq!(log.head().expect("head").lines, 7);
}
