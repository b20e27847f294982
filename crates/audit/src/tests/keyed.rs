//! Keyed chains, the legacy migration, the anchor, other writers, recorded gaps.

use std::sync::{Arc, Mutex};

use zeroize::Zeroizing;

use super::*;

fn keys(byte: u8) -> ChainKeys {
    ChainKeys::new([(1, Zeroizing::new([byte; 32]))])
}

fn keyed(path: &Path) -> AuditLog {
    AuditLog::open_with(
        path,
        LogOptions {
            keys: keys(0x42),
            roll_monthly: false,
        },
    )
    .expect("open keyed")
}

fn write_keyed(path: &Path, n: u32) -> AuditLog {
    let log = keyed(path);
    for i in 0..n {
        log.append(&export("po-1", &pseudonym(i), at(i64::from(i))))
            .expect("append");
    }
    log
}

fn kinds(report: &VerifyReport) -> Vec<ProblemKind> {
    report.problems.iter().map(|p| p.kind).collect()
}

#[derive(Debug, Default)]
struct Recorder(Mutex<Vec<Anchor>>);

impl AnchorSink for Recorder {
    fn anchor(&self, anchor: &Anchor) {
        self.0.lock().expect("lock").push(*anchor);
    }
}

#[test]
fn a_keyed_chain_verifies_only_with_its_key() {
    let f = fixture();
    let head = write_keyed(&f.path, 10).head().expect("head");
    let ok = verify_with(&f.path, &keys(0x42), None).expect("verify");
    assert!(ok.is_ok(), "{ok}");
    assert_eq!((ok.keyed_from, ok.head), (Some(0), head));
    let text = std::fs::read_to_string(&f.path).expect("read");
    assert!(text.lines().all(|l| l.contains(r#""key_version":1"#)));

    let wrong = verify_with(&f.path, &keys(0x43), None).expect("verify");
    assert_eq!(wrong.problem_count, 10, "{wrong}");
    assert!(kinds(&wrong).iter().all(|k| *k == ProblemKind::Edited));
    let unkeyed = verify(&f.path, None).expect("verify");
    assert!(
        kinds(&unkeyed).contains(&ProblemKind::UnknownKey),
        "{unkeyed}"
    );
}

/// An insider who can edit the file but has no key: an edited line re-chained with a key
/// of their own, or the whole log re-chained without a key, does not verify.
#[test]
fn a_re_chained_edited_log_without_the_key_fails_verification() {
    let f = fixture();
    write_keyed(&f.path, 8);
    let original = lines(&f.path);
    let rechain = |keys: &ChainKeys, from: usize| {
        let mut all = original.clone();
        let mut prev = GENESIS_HASH;
        for (i, line) in all.iter_mut().enumerate() {
            let value: serde_json::Value = serde_json::from_slice(line).expect("json");
            if i >= from {
                let mut entry: AuditEntry = serde_json::from_value(value.clone()).expect("entry");
                if i == from {
                    entry.subjects = vec![pseudonym(999)];
                }
                let (text, hash) = encode_line(&entry, i as u64, &prev, keys).expect("encode");
                *line = text;
                prev = hash;
            } else {
                prev =
                    crate::chain::parse_hash(value["hash"].as_str().expect("hash")).expect("hash");
            }
        }
        all
    };
    // Under a key of their own, from line 4 on: every re-chained line fails.
    write_lines(&f.path, &rechain(&keys(0x66), 3));
    let report = verify_with(&f.path, &keys(0x42), None).expect("verify");
    assert_eq!(first(&report).line, 4, "{report}");
    assert_eq!(first(&report).kind, ProblemKind::Edited);
    // Without a key at all, the whole log: unkeyed lines where keyed ones are due.
    write_lines(&f.path, &rechain(&ChainKeys::unkeyed(), 0));
    assert!(
        verify(&f.path, None).expect("verify").is_ok(),
        "consistent, unkeyed"
    );
    let report = verify_with(&f.path, &keys(0x42), None).expect("verify");
    assert_eq!(kinds(&report), vec![ProblemKind::Unkeyed], "{report}");
    // From line 4 on, without a key: the keyed part ends where the unkeyed starts.
    write_lines(&f.path, &rechain(&ChainKeys::unkeyed(), 3));
    let report = verify_with(&f.path, &keys(0x42), None).expect("verify");
    assert_eq!(
        (first(&report).line, first(&report).kind),
        (4, ProblemKind::Unkeyed),
        "{report}"
    );
}

/// Migration: a log of unkeyed lines opened with keys gets an `audit.keyed` line, keyed, whose
/// `prev` fixes the legacy part; an edit there, re-chained, breaks that link.
#[test]
fn a_legacy_log_is_keyed_from_a_marked_point() {
    let f = fixture();
    write_log(&f.path, 5);
    let log = keyed(&f.path);
    let head = log
        .append(&export("po-1", &pseudonym(50), at(50)))
        .expect("append");
    assert_eq!(head.lines, 7);
    let all = lines(&f.path);
    let marker: serde_json::Value = serde_json::from_slice(&all[5]).expect("json");
    assert_eq!(marker["action"], action::AUDIT_KEYED);
    assert_eq!(marker["params"]["legacy_lines"], "5");
    assert_eq!(marker["key_version"], 1);
    let report = verify_with(&f.path, &keys(0x42), None).expect("verify");
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.keyed_from, Some(5));
    assert!(
        report
            .to_string()
            .contains("unkeyed (legacy) before sequence 5")
    );

    // The legacy part edited and re-chained (no key needed for it): the marker's link breaks.
    let mut edited = all.clone();
    let mut prev = GENESIS_HASH;
    for (i, line) in edited.iter_mut().enumerate().take(5) {
        let value: serde_json::Value = serde_json::from_slice(line).expect("json");
        let mut entry: AuditEntry = serde_json::from_value(value).expect("entry");
        if i == 2 {
            entry.rows = Some(0);
        }
        let (text, hash) =
            encode_line(&entry, i as u64, &prev, &ChainKeys::unkeyed()).expect("encode");
        *line = text;
        prev = hash;
    }
    write_lines(&f.path, &edited);
    let report = verify_with(&f.path, &keys(0x42), None).expect("verify");
    assert_eq!(
        (first(&report).line, first(&report).kind),
        (6, ProblemKind::BrokenLink),
        "{report}"
    );
    // And nothing unkeyed may append to it any more.
    write_lines(&f.path, &all);
    let err = AuditLog::open(&f.path).expect_err("keyed");
    assert!(matches!(err, AuditError::Keyed { .. }), "{err}");
}

/// The tail removed while nothing runs: only the anchor kept outside shows it, and the
/// verdict names the gap.
#[test]
fn a_removed_tail_is_named_against_the_anchor() {
    let f = fixture();
    let log = write_keyed(&f.path, 45);
    let anchor = log.anchor().expect("anchor");
    assert_eq!(anchor.head.last_seq(), Some(44));
    drop(log);
    let mut all = lines(&f.path);
    all.truncate(42);
    write_lines(&f.path, &all);
    assert!(
        verify_with(&f.path, &keys(0x42), None)
            .expect("verify")
            .is_ok()
    );
    let report = verify_with(&f.path, &keys(0x42), Some(&anchor)).expect("verify");
    assert_eq!(report.problem_count, 1, "{report}");
    assert_eq!(first(&report).kind, ProblemKind::Truncated);
    assert_eq!(
        first(&report).detail,
        "log ends at sequence 41, anchor says 44: 3 lines missing"
    );
}

/// Every line, and every line of another writer taken in, reaches the sink.
#[test]
fn the_sink_gets_every_head_and_other_writers_lines_are_taken_in() {
    let f = fixture();
    let service = write_keyed(&f.path, 2);
    let sink = Arc::new(Recorder::default());
    service.attach_anchor(sink.clone()).expect("attach");
    let cli = keyed(&f.path);
    let from_cli = cli
        .append(
            &AuditEntry::operator(action::STORE_RESTORE, Outcome::Ok).with_param("backup", "b1"),
        )
        .expect("operator line");
    assert_eq!(service.refresh().expect("refresh"), from_cli);
    let last = service
        .append(&export("po-1", &pseudonym(9), at(9)))
        .expect("append");
    let seen: Vec<u64> = sink
        .0
        .lock()
        .expect("lock")
        .iter()
        .map(|a| a.head.lines)
        .collect();
    assert_eq!(seen, vec![2, 3, 4]);
    assert_eq!(last.lines, 4);
    let report =
        verify_with(&f.path, &keys(0x42), Some(&service.anchor().expect("a"))).expect("verify");
    assert!(report.is_ok(), "{report}");
    let line: serde_json::Value = serde_json::from_slice(&lines(&f.path)[2]).expect("json");
    assert_eq!(line["actor"]["kind"], "operator");
    assert_eq!(line["action"], action::STORE_RESTORE);
}

/// A gap the service recorded fails verification until an operator acknowledges it.
#[test]
fn a_recorded_gap_fails_until_acknowledged() {
    let f = fixture();
    let log = write_keyed(&f.path, 3);
    let gap = AuditEntry::new(Actor::system("audit"), action::AUDIT_GAP, Outcome::Error)
        .with_param("at", "end")
        .with_param("found", "41")
        .with_param("anchor", "44")
        .with_param("missing", "3");
    log.append(&gap).expect("gap");
    let report = verify_with(&f.path, &keys(0x42), None).expect("verify");
    assert_eq!(kinds(&report), vec![ProblemKind::RecordedGap], "{report}");
    assert_eq!(first(&report).seq, Some(3));
    assert!(
        first(&report)
            .detail
            .contains("the log ended at sequence 41, the anchor said 44: 3 lines missing"),
        "{report}"
    );
    log.append(
        &AuditEntry::operator(action::AUDIT_GAP_ACKNOWLEDGED, Outcome::Ok)
            .with_param("gap_seq", "3")
            .with_param("reason", "restored from the nightly copy"),
    )
    .expect("ack");
    let report = verify_with(&f.path, &keys(0x42), None).expect("verify");
    assert!(report.is_ok(), "{report}");
}
