//! Tests of the log as a whole: appending, tampering with the file, recovery, reports.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use jiff::Timestamp;
use proptest::prelude::*;

use crate::chain::{ChainHead, GENESIS_HASH, encode_line};
use crate::*;

const T0: i64 = 1_795_000_000; // 2026-11-18T11:06:40Z

fn at(offset: i64) -> Timestamp {
    Timestamp::from_second(T0 + offset).expect("in range")
}

fn pseudonym(n: u32) -> String {
    format!("v1-{:032x}", u128::from(n) * 0x0101_0101)
}

fn export(token: &str, subject: &str, time: Timestamp) -> AuditEntry {
    AuditEntry::call(
        Actor::token(token, "privacy_officer"),
        action::SUBJECT_EXPORT,
        "/v1/subjects/{ean}/export",
        200,
    )
    .with_time(time)
    .with_subject(subject)
    .with_rows(3)
    .with_param("format", "json")
    .with_remote("127.0.0.1:50000")
}

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("audit").join("audit.log");
    Fixture { _dir: dir, path }
}

/// A log of `n` lines with a mix of actors, actions and awkward characters.
fn write_log(path: &Path, n: u32) -> ChainHead {
    let log = AuditLog::open(path).expect("open");
    for i in 0..n {
        let entry = match i % 4 {
            0 => export("po-1", &pseudonym(i), at(i64::from(i))),
            1 => AuditEntry::call(
                Actor::token("analyst-1", "analyst"),
                action::STATISTICS_READ,
                "/v1/statistics",
                200,
            )
            .with_time(at(i64::from(i)))
            .with_param("group_by", "postcode4,profile")
            .with_param("note", "quote \" backslash \\ tab \t é ✓ \u{1}")
            .with_rows(120),
            2 => AuditEntry::correction(pseudonym(i), "1-0:1.8.1", at(-900), ["interval"], 1)
                .with_time(at(i64::from(i))),
            _ => AuditEntry::refused(Actor::Unauthenticated, "/v1/subjects/{ean}", 401)
                .with_time(at(i64::from(i))),
        };
        log.append(&entry).expect("append");
    }
    log.head().expect("head")
}

fn lines(path: &Path) -> Vec<Vec<u8>> {
    let bytes = std::fs::read(path).expect("read");
    bytes
        .split_inclusive(|&b| b == b'\n')
        .map(<[u8]>::to_vec)
        .collect()
}

fn write_lines(path: &Path, lines: &[Vec<u8>]) {
    std::fs::write(path, lines.concat()).expect("write");
}

fn first(report: &VerifyReport) -> &Problem {
    report.first_problem().expect("a problem")
}

#[test]
fn appended_lines_verify() {
    let f = fixture();
    let head = write_log(&f.path, 50);
    assert_eq!(head.lines, 50);
    let report = verify(&f.path, Some(&head)).expect("verify");
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.lines, 50);
    assert_eq!(report.head, head);

    let mode = std::fs::metadata(&f.path)
        .expect("stat")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    let dir = f.path.parent().expect("parent");
    let mode = std::fs::metadata(dir).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o700);

    // Reopening continues the chain.
    let log = AuditLog::open(&f.path).expect("reopen");
    assert_eq!(log.head().expect("head"), head);
    log.append(&export("po-1", &pseudonym(7), at(100)))
        .expect("append");
    assert!(verify(&f.path, Some(&head)).expect("verify").is_ok());
}

#[test]
fn the_hash_rule_is_what_the_documentation_says() {
    // Rebuilt here from the crate documentation, independent of `chain`.
    let entry = AuditEntry::call(
        Actor::token("po-1", "privacy_officer"),
        action::SUBJECT_ERASE,
        "/v1/subjects/{ean}",
        200,
    )
    .with_time(at(0))
    .with_subject(pseudonym(1))
    .with_param("b", "é\"\n\u{1f}")
    .with_param("a", "1");
    let without_hash = format!(
        concat!(
            r#"{{"action":"subject.erase","actor":{{"kind":"token","role":"privacy_officer","token_id":"po-1"}},"#,
            r#""outcome":"ok","params":{{"a":"1","b":"é\"\n\u001f"}},"prev":"{zeros}","remote":null,"#,
            r#""route":"/v1/subjects/{{ean}}","rows":null,"seq":0,"status":200,"#,
            r#""subjects":["{p}"],"time":"2026-11-18T11:06:40Z"}}"#
        ),
        zeros = "0".repeat(64),
        p = pseudonym(1),
    );
    let mut hasher = blake3::Hasher::new();
    hasher.update(&GENESIS_HASH);
    hasher.update(without_hash.as_bytes());
    let hash = hasher.finalize().to_hex().to_string();
    let expected =
        without_hash.replacen(r#""outcome""#, &format!(r#""hash":"{hash}","outcome""#), 1) + "\n";

    let (line, raw) = encode_line(&entry, 0, &GENESIS_HASH, &ChainKeys::unkeyed()).expect("encode");
    assert_eq!(String::from_utf8(line).expect("utf-8"), expected);
    assert_eq!(hex::encode(raw), hash);
}

#[test]
fn a_deleted_middle_line_is_named() {
    let f = fixture();
    write_log(&f.path, 30);
    let mut all = lines(&f.path);
    all.remove(19); // line 20
    write_lines(&f.path, &all);
    let report = verify(&f.path, None).expect("verify");
    assert_eq!(report.problem_count, 1, "{report}");
    let problem = first(&report);
    assert_eq!(problem.line, 20);
    assert_eq!(problem.kind, ProblemKind::Deleted);
    assert!(problem.detail.contains("1 line(s)"), "{problem}");
}

#[test]
fn an_edited_byte_is_detected() {
    let f = fixture();
    write_log(&f.path, 12);
    let original = lines(&f.path);

    // A value changed, the JSON still valid: "rows":3 → "rows":4 on line 9 (an export).
    let mut all = original.clone();
    let text = String::from_utf8(all[8].clone()).expect("utf-8");
    assert!(text.contains(r#""rows":3"#));
    all[8] = text.replacen(r#""rows":3"#, r#""rows":4"#, 1).into_bytes();
    write_lines(&f.path, &all);
    let report = verify(&f.path, None).expect("verify");
    assert_eq!(report.problem_count, 1, "{report}");
    assert_eq!(first(&report).line, 9);
    assert_eq!(first(&report).kind, ProblemKind::Edited);

    // Harmless-looking whitespace is an edit too.
    let mut all = original.clone();
    let text = String::from_utf8(all[3].clone()).expect("utf-8");
    all[3] = text.replacen(r#""rows":"#, r#""rows": "#, 1).into_bytes();
    write_lines(&f.path, &all);
    let report = verify(&f.path, None).expect("verify");
    assert_eq!(
        (first(&report).line, first(&report).kind),
        (4, ProblemKind::Edited)
    );

    // Garbage.
    let mut all = original.clone();
    all[0][1] = b'#';
    write_lines(&f.path, &all);
    let report = verify(&f.path, None).expect("verify");
    assert_eq!(
        (first(&report).line, first(&report).kind),
        (1, ProblemKind::Malformed)
    );
}

#[test]
fn a_rehashed_edit_breaks_the_next_link() {
    let f = fixture();
    write_log(&f.path, 6);
    let mut all = lines(&f.path);
    // Someone who knows the rule rewrites line 3 with a new subject and a valid hash.
    let prev: [u8; 32] = {
        let text = String::from_utf8(all[2].clone()).expect("utf-8");
        let value: serde_json::Value = serde_json::from_str(&text).expect("json");
        let prev = value["prev"].as_str().expect("prev");
        crate::chain::parse_hash(prev).expect("hash")
    };
    let forged = export("po-1", &pseudonym(999), at(2));
    let (line, _) = encode_line(&forged, 2, &prev, &ChainKeys::unkeyed()).expect("encode");
    all[2] = line;
    write_lines(&f.path, &all);
    let report = verify(&f.path, None).expect("verify");
    assert_eq!(report.problem_count, 1, "{report}");
    assert_eq!(first(&report).line, 4);
    assert_eq!(first(&report).kind, ProblemKind::BrokenLink);
}

#[test]
fn reordered_lines_are_detected() {
    let f = fixture();
    write_log(&f.path, 8);
    let mut all = lines(&f.path);
    all.swap(4, 5);
    write_lines(&f.path, &all);
    let report = verify(&f.path, None).expect("verify");
    assert!(!report.is_ok());
    assert_eq!(first(&report).line, 5);
    assert!(
        report
            .problems
            .iter()
            .any(|p| p.kind == ProblemKind::Reordered),
        "{report}"
    );
}

#[test]
fn a_removed_tail_needs_the_recorded_head() {
    let f = fixture();
    let head = write_log(&f.path, 10);
    let mut all = lines(&f.path);
    all.truncate(8);
    write_lines(&f.path, &all);
    // On its own the shorter chain is valid: that is the documented limit.
    assert!(verify(&f.path, None).expect("verify").is_ok());
    let report = verify(&f.path, Some(&head)).expect("verify");
    assert_eq!(first(&report).kind, ProblemKind::Truncated, "{report}");
    assert_eq!(first(&report).line, 9);

    // A whole new chain of the same length does not carry the recorded hash.
    std::fs::remove_file(&f.path).expect("rm");
    let log = AuditLog::open(&f.path).expect("open");
    for i in 0..10 {
        log.append(&export("po-2", &pseudonym(i), at(i64::from(i))))
            .expect("append");
    }
    let report = verify(&f.path, Some(&head)).expect("verify");
    assert_eq!(first(&report).kind, ProblemKind::HeadMismatch, "{report}");

    let parsed: ChainHead = head.to_string().parse().expect("parse head");
    assert_eq!(parsed, head);
    assert!("10:abc".parse::<ChainHead>().is_err());
}

#[test]
fn a_torn_last_line_is_cut_off_and_recorded() {
    let f = fixture();
    write_log(&f.path, 3);
    let mut all = lines(&f.path);
    let torn = all[2][..40].to_vec();
    all.push(torn);
    write_lines(&f.path, &all);

    let report = verify(&f.path, None).expect("verify");
    assert_eq!(
        (first(&report).line, first(&report).kind),
        (4, ProblemKind::TornTail)
    );

    let log = AuditLog::open(&f.path).expect("open recovers");
    assert_eq!(log.head().expect("head").lines, 4);
    let report = verify(&f.path, None).expect("verify");
    assert!(report.is_ok(), "{report}");
    let last = lines(&f.path).pop().expect("a line");
    let value: serde_json::Value = serde_json::from_slice(&last).expect("json");
    assert_eq!(value["action"], "audit.recovered");
    assert_eq!(value["actor"]["kind"], "system");
    assert_eq!(value["params"]["discarded_bytes"], "40");
    assert_eq!(value["seq"], 3);
    log.append(&export("po-1", &pseudonym(1), at(5)))
        .expect("append");
    assert!(verify(&f.path, None).expect("verify").is_ok());
}

#[test]
fn a_file_of_only_a_torn_line_starts_over() {
    let f = fixture();
    std::fs::create_dir_all(f.path.parent().expect("parent")).expect("mkdir");
    std::fs::write(&f.path, b"{\"act").expect("write");
    std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let log = AuditLog::open(&f.path).expect("open");
    assert_eq!(log.head().expect("head").lines, 1);
    let report = verify(&f.path, None).expect("verify");
    assert!(report.is_ok(), "{report}");
}

#[test]
fn open_refuses_a_damaged_last_line_and_an_open_mode() {
    let f = fixture();
    write_log(&f.path, 3);
    let mut all = lines(&f.path);
    let n = all[2].len();
    all[2][n - 10] ^= 0x01;
    write_lines(&f.path, &all);
    let err = AuditLog::open(&f.path).expect_err("refused");
    assert!(matches!(err, AuditError::Corrupt { .. }), "{err}");

    let g = fixture();
    write_log(&g.path, 1);
    std::fs::set_permissions(&g.path, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let err = AuditLog::open(&g.path).expect_err("refused");
    assert!(
        matches!(err, AuditError::TooOpen { mode: 0o644, .. }),
        "{err}"
    );
}

#[test]
fn open_survives_hostile_files() {
    for content in [
        &b"\n"[..],
        b"\n\n\n",
        b"not json\n",
        b"[1,2,3]\n",
        b"{\"seq\":18446744073709551615}\n",
        &[0xff, 0xfe, b'\n'],
    ] {
        let f = fixture();
        std::fs::create_dir_all(f.path.parent().expect("parent")).expect("mkdir");
        std::fs::write(&f.path, content).expect("write");
        std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        assert!(AuditLog::open(&f.path).is_err());
        let report = verify(&f.path, None).expect("verify");
        assert!(!report.is_ok());
        report::report(&f.path, at(0), at(10), None).expect("report");
    }
}

#[test]
fn concurrent_appends_keep_the_chain() {
    let f = fixture();
    let log = AuditLog::open(&f.path).expect("open");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = log.clone();
            std::thread::spawn(move || {
                for i in 0..40 {
                    let entry = export(&format!("po-{t}"), &pseudonym(t * 100 + i), at(0));
                    log.append(&entry).expect("append");
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("thread");
    }
    let head = log.head().expect("head");
    assert_eq!(head.lines, 320);
    let report = verify(&f.path, Some(&head)).expect("verify");
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.lines, 320);
}

/// Two writers (the service and a command) take turns through the lock file: each takes the
/// other's lines into its chain. A file shortened behind a writer's back is refused.
#[test]
fn a_second_writer_takes_turns_and_a_shortened_file_is_refused() {
    let f = fixture();
    let a = AuditLog::open(&f.path).expect("open");
    let b = AuditLog::open(&f.path).expect("open");
    a.append(&export("po-1", &pseudonym(1), at(0)))
        .expect("append");
    b.append(&export("po-1", &pseudonym(2), at(1)))
        .expect("b takes a's line in");
    let head = a
        .append(&export("po-1", &pseudonym(3), at(2)))
        .expect("a takes b's line in");
    assert_eq!(head.lines, 3);
    assert_eq!(b.refresh().expect("refresh"), head);
    assert!(verify(&f.path, Some(&head)).expect("verify").is_ok());

    let mut all = lines(&f.path);
    all.pop();
    write_lines(&f.path, &all);
    let err = a
        .append(&export("po-1", &pseudonym(4), at(3)))
        .expect_err("refused");
    assert!(matches!(err, AuditError::Changed { .. }), "{err}");
    assert!(matches!(a.refresh(), Err(AuditError::Changed { .. })));
}

#[test]
fn entries_with_identifiers_are_not_written() {
    let f = fixture();
    let log = AuditLog::open(&f.path).expect("open");
    let ean = "871234567890123456";
    assert!(log.append(&export("po-1", ean, at(0))).is_err());
    assert!(
        log.append(&export("po-1", &pseudonym(1), at(0)).with_param("q", ean))
            .is_err()
    );
    assert_eq!(log.head().expect("head").lines, 0);
    assert_eq!(std::fs::read(&f.path).expect("read").len(), 0);
}

/// A correction line says which subject, register and period were corrected and how many
/// stored entries were replaced; an entry that would carry the old or new value is refused
/// and leaves no byte in the file.
#[test]
fn a_correction_line_names_who_and_what_never_a_value() {
    let f = fixture();
    let log = AuditLog::open(&f.path).expect("open");
    let entry = AuditEntry::correction(
        pseudonym(3),
        "1-0:1.8.1",
        at(-900),
        ["interval", "day", "month"],
        3,
    )
    .with_time(at(0));
    log.append(&entry).expect("append");
    let text = std::fs::read_to_string(&f.path).expect("read");
    let value: serde_json::Value = serde_json::from_str(text.trim_end()).expect("json");
    assert_eq!(value["action"], "correction");
    assert_eq!(value["actor"]["component"], "ingest");
    assert_eq!(value["subjects"], serde_json::json!([pseudonym(3)]));
    assert_eq!(
        value["params"],
        serde_json::json!({
            "register": "1-0:1.8.1",
            "time": at(-900).to_string(),
            "tiers": "interval,day,month",
        })
    );
    assert_eq!(value["rows"], 3);

    // What earlier versions wrote (old → new) is refused now, whatever the value looks like,
    // and nothing of it reaches the file.
    for (key, value) in [
        ("old", "12345.678 kWh"),
        ("new", "12345.987 kWh"),
        ("value", "12345987"),
        ("reading", "12345987"),
    ] {
        let err = log
            .append(&entry.clone().with_param(key, value))
            .expect_err("a value on a correction line is refused");
        assert!(matches!(err, AuditError::ReadingValue { .. }), "{err}");
        assert!(!err.to_string().contains(value), "{err}");
    }
    let bytes = std::fs::read(&f.path).expect("read");
    for needle in ["12345.678", "12345.987", "12345987", "kWh"] {
        assert!(
            !bytes.windows(needle.len()).any(|w| w == needle.as_bytes()),
            "{needle} is in the audit log"
        );
    }
    assert_eq!(log.head().expect("head").lines, 1);
    assert!(verify(&f.path, None).expect("verify").is_ok());
}

/// Correction lines of earlier versions carry the old and new values. They stay as written
/// (the chain covers their bytes): a log holding them verifies, reports and takes new lines.
#[test]
fn older_correction_lines_with_values_still_verify_and_report() {
    let f = fixture();
    std::fs::create_dir_all(f.path.parent().expect("parent")).expect("mkdir");
    // As an earlier version wrote them: register, time, old and new values.
    let older = |i: u32| {
        AuditEntry::new(Actor::system("ingest"), action::CORRECTION, Outcome::Ok)
            .with_time(at(i64::from(i)))
            .with_subject(pseudonym(i))
            .with_param("register", "1-0:1.8.1")
            .with_param("time", at(-900).to_string())
            .with_param("old", "12345.678 kWh")
            .with_param("new", "12345.679 kWh")
            .with_rows(1)
    };
    assert!(older(0).check().is_err(), "no longer written");
    let mut bytes = Vec::new();
    let mut prev = GENESIS_HASH;
    for seq in 0..2u32 {
        let (line, hash) =
            encode_line(&older(seq), u64::from(seq), &prev, &ChainKeys::unkeyed()).expect("encode");
        bytes.extend_from_slice(&line);
        prev = hash;
    }
    std::fs::write(&f.path, &bytes).expect("write");
    std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o600)).expect("chmod");

    let log = AuditLog::open(&f.path).expect("open after older lines");
    assert_eq!(log.head().expect("head").lines, 2);
    log.append(
        &AuditEntry::correction(pseudonym(2), "1-0:1.8.1", at(-900), ["interval"], 1)
            .with_time(at(2)),
    )
    .expect("append a new line");
    let head = log.head().expect("head");
    let report = verify(&f.path, Some(&head)).expect("verify");
    assert!(report.is_ok(), "{report}");
    assert_eq!(report.lines, 3);

    let report = report::report(&f.path, at(0), at(10), None).expect("report");
    assert!(report.integrity.ok);
    assert_eq!(report.entries, 3);
    assert_eq!(report.actors.len(), 1);
    let ingest = &report.actors[0];
    assert_eq!(
        (ingest.kind, ingest.id.as_deref()),
        (ActorKind::System, Some("ingest"))
    );
    assert_eq!(ingest.actions.get(action::CORRECTION), Some(&3));
    assert_eq!(ingest.rows, 3);
    assert_eq!(
        ingest.subjects,
        vec![pseudonym(0), pseudonym(1), pseudonym(2)]
    );
}

mod access_report;
mod keyed;
mod segments;

#[derive(Debug, Clone)]
enum Tamper {
    Replace { at: usize, xor: u8 },
    Delete { at: usize },
    Insert { at: usize, byte: u8 },
    DeleteLine { index: usize },
    SwapLines { index: usize },
    DuplicateLine { index: usize },
}

fn tamper() -> impl Strategy<Value = Tamper> {
    prop_oneof![
        (any::<usize>(), 1..=255u8).prop_map(|(at, xor)| Tamper::Replace { at, xor }),
        any::<usize>().prop_map(|at| Tamper::Delete { at }),
        (any::<usize>(), any::<u8>()).prop_map(|(at, byte)| Tamper::Insert { at, byte }),
        any::<usize>().prop_map(|index| Tamper::DeleteLine { index }),
        any::<usize>().prop_map(|index| Tamper::SwapLines { index }),
        any::<usize>().prop_map(|index| Tamper::DuplicateLine { index }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_tampering_is_detected(tamper in tamper()) {
        let f = fixture();
        let head = write_log(&f.path, 9);
        let bytes = std::fs::read(&f.path).expect("read");
        let mut all = lines(&f.path);
        let n = all.len();
        let (tampered, with_head) = match tamper {
            Tamper::Replace { at, xor } => {
                let mut b = bytes.clone();
                b[at % bytes.len()] ^= xor;
                (b, false)
            }
            Tamper::Delete { at } => {
                let mut b = bytes.clone();
                b.remove(at % bytes.len());
                (b, false)
            }
            Tamper::Insert { at, byte } => {
                let mut b = bytes.clone();
                b.insert(at % (bytes.len() + 1), byte);
                (b, false)
            }
            // Only these can shorten the chain at its end, which needs the recorded head.
            Tamper::DeleteLine { index } => {
                all.remove(index % n);
                (all.concat(), true)
            }
            Tamper::SwapLines { index } => {
                let i = index % (n - 1);
                all.swap(i, i + 1);
                (all.concat(), false)
            }
            Tamper::DuplicateLine { index } => {
                let i = index % n;
                let line = all[i].clone();
                all.insert(i, line);
                (all.concat(), false)
            }
        };
        std::fs::write(&f.path, &tampered).expect("write");
        let report = verify(&f.path, with_head.then_some(&head)).expect("verify");
        prop_assert!(!report.is_ok(), "undetected: {:?}", tamper);
    }
}

#[test]
fn a_log_from_before_the_chain_is_refused_with_a_hint() {
    let f = fixture();
    std::fs::create_dir_all(f.path.parent().expect("parent")).expect("mkdir");
    let legacy = concat!(
        r#"{"time":"2026-11-20T10:00:00Z","role":"crm","token_id":"crm-1","#,
        r#""action":"connection.put","pseudonym":null,"outcome":"ok","status":200}"#,
        "\n"
    );
    std::fs::write(&f.path, legacy).expect("write");
    std::fs::set_permissions(&f.path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let err = AuditLog::open(&f.path).expect_err("refused");
    assert!(err.to_string().contains("move it aside"), "{err}");
}
