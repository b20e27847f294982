//! Tests of the access report.

use super::*;

/// Tokens po-1 and po-2, inside and outside a window, refused and not.
fn report_fixture(path: &Path) {
    let log = AuditLog::open(path).expect("open");
    let append = |e: AuditEntry| {
        log.append(&e).expect("append");
    };
    append(export("po-1", &pseudonym(1), at(-10))); // before the window
    append(export("po-1", &pseudonym(2), at(0))); // first second of the window
    append(export("po-1", &pseudonym(3), at(50)));
    append(export("po-1", &pseudonym(3), at(51))); // again: one subject
    append(export("po-2", &pseudonym(4), at(60))); // another token
    append(
        AuditEntry::refused(
            Actor::Token {
                token_id: "po-1".into(),
                role: Some("analyst".into()),
            },
            "/v1/subjects/{ean}",
            403,
        )
        .with_time(at(70))
        .with_subject(pseudonym(5)), // refused: not touched
    );
    append(
        AuditEntry::call(
            Actor::token("po-1", "privacy_officer"),
            action::SUBJECT_ERASE,
            "/v1/subjects/{ean}",
            200,
        )
        .with_time(at(80))
        .with_subject(pseudonym(6))
        .with_rows(10),
    );
    append(AuditEntry::refused(Actor::Unauthenticated, "/v1/statistics", 401).with_time(at(90)));
    append(
        AuditEntry::correction(pseudonym(7), "1-0:1.8.1", at(0), ["interval"], 1).with_time(at(95)),
    );
    append(export("po-1", &pseudonym(8), at(100))); // `to` is exclusive
}

#[test]
fn the_report_lists_exactly_what_a_token_touched_in_the_window() {
    let f = fixture();
    report_fixture(&f.path);
    let report = report::report(&f.path, at(0), at(100), Some("po-1")).expect("report");
    assert!(report.integrity.ok);
    assert_eq!(report.entries, 5);
    assert_eq!(report.actors.len(), 1);
    let po1 = &report.actors[0];
    assert_eq!(po1.kind, ActorKind::Token);
    assert_eq!(po1.id.as_deref(), Some("po-1"));
    assert_eq!(po1.subjects, vec![pseudonym(2), pseudonym(3), pseudonym(6)]);
    assert_eq!(report.subjects, po1.subjects);
    assert_eq!(po1.calls, 5);
    assert_eq!(po1.refused, 1);
    assert_eq!(po1.rows, 3 + 3 + 3 + 10);
    assert_eq!(
        po1.roles,
        vec!["analyst".to_string(), "privacy_officer".into()]
    );
    assert_eq!(po1.actions.get("subject.export"), Some(&3));
    assert_eq!(po1.actions.get("auth.refused"), Some(&1));
    assert_eq!(po1.actions.get("subject.erase"), Some(&1));

    let all = report::report(&f.path, at(0), at(100), None).expect("report");
    let kinds: Vec<_> = all
        .actors
        .iter()
        .map(|a| (a.kind, a.id.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            (ActorKind::Token, Some("po-1")),
            (ActorKind::Token, Some("po-2")),
            (ActorKind::System, Some("ingest")),
            (ActorKind::Unauthenticated, None),
        ]
    );
    assert_eq!(
        all.subjects,
        vec![
            pseudonym(2),
            pseudonym(3),
            pseudonym(4),
            pseudonym(6),
            pseudonym(7)
        ]
    );

    let none = report::report(&f.path, at(0), at(100), Some("nobody")).expect("report");
    assert!(none.actors.is_empty() && none.subjects.is_empty());
    assert!(report::report(&f.path, at(1), at(0), None).is_err());
}

#[test]
fn report_json_and_csv_parse_back() {
    let f = fixture();
    report_fixture(&f.path);
    let mut report = report::report(&f.path, at(0), at(100), None).expect("report");
    let json = report.to_json().expect("json");
    assert!(!json.contains("\"eans\""));
    let back: Report = serde_json::from_str(&json).expect("parse json");
    assert_eq!(back, report);

    // A stand-in for the key ring: an EAN's pseudonyms under two key versions.
    let ean_of = |n: u32| format!("87{:016}", n);
    let pseudonyms_of = |ean: &str| -> Vec<String> {
        let n: u32 = ean[2..].parse().expect("test EAN");
        vec![pseudonym(n), format!("v2-{:032x}", n)]
    };
    report.map_eans([ean_of(2), ean_of(3), ean_of(9), ean_of(3)], pseudonyms_of);
    let mapping = report.eans.as_ref().expect("mapped");
    assert_eq!(
        mapping.subjects,
        vec![
            EanSubject {
                ean: ean_of(2),
                pseudonyms: vec![pseudonym(2)]
            },
            EanSubject {
                ean: ean_of(3),
                pseudonyms: vec![pseudonym(3)]
            },
        ]
    );
    assert_eq!(
        mapping.unmapped,
        vec![pseudonym(4), pseudonym(6), pseudonym(7)]
    );
    let json = report.to_json().expect("json");
    let back: Report = serde_json::from_str(&json).expect("parse json");
    assert_eq!(back, report);

    let csv = report.to_csv().expect("csv");
    let mut reader = csv::Reader::from_reader(csv.as_bytes());
    let rows: Vec<CsvRow> = reader
        .deserialize()
        .collect::<Result<_, _>>()
        .expect("parse csv");
    assert_eq!(rows, report.csv_rows());
    // po-1 ×3 subjects, po-2 ×1, ingest ×1, unauthenticated ×1 (no subject).
    assert_eq!(rows.len(), 6);
    let row3 = rows
        .iter()
        .find(|r| r.subject == pseudonym(3))
        .expect("row");
    assert_eq!(row3.eans, ean_of(3));
    assert_eq!(row3.actor_id, "po-1");
    let anon = rows.last().expect("row");
    assert_eq!(
        (anon.actor_kind, anon.subject.as_str()),
        (ActorKind::Unauthenticated, "")
    );

    // Empty reports still have a header.
    let empty = report::report(&f.path, at(1000), at(2000), None).expect("report");
    let csv = empty.to_csv().expect("csv");
    assert!(csv.starts_with("actor_kind,actor_id,"));
}
