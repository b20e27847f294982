//! Restores played as the operator who restores last week's backup: a period frozen before
//! the restore answers exactly as before it (the erased household's day is not published
//! as a second figure), and a restore whose subject journal does not reach back to the
//! backup is refused unless told otherwise.

mod common;

use std::time::{Duration, Instant};

use common::*;
use jiff::Timestamp;
use meterstand_model::{Calendar, Ean, Reading, Register};

/// This file's own EANs.
fn ean(n: u64) -> Ean {
    ean_from(11, n)
}

/// A local day that ended three days ago: settled under a one-minute `statistics.settle`.
fn settled_day(cal: &Calendar) -> (Timestamp, Timestamp) {
    let day = cal
        .date_of(Timestamp::now())
        .checked_sub(jiff::Span::new().days(3))
        .expect("date");
    let start = cal.date_start(day).expect("midnight");
    let end = cal
        .date_start(day.tomorrow().expect("date"))
        .expect("midnight");
    (start, end)
}

/// A household's day of quarter-hours on both import registers, noisy by hour of day.
fn day_of(n: u64, start: Timestamp, end: Timestamp) -> Vec<Reading> {
    let mut out = Vec::new();
    let (mut t1, mut t2) = (4_000_000 + n * 1_000, 2_000_000 + n * 700);
    let mut t = start;
    let mut i = 0u64;
    while t <= end {
        out.push(Reading {
            register: Register::ImportT1,
            time: t,
            value: t1,
        });
        out.push(Reading {
            register: Register::ImportT2,
            time: t,
            value: t2,
        });
        let hour = (t.as_second() / 3600 % 24) as u64;
        let busy = if (6..9).contains(&hour) || (17..22).contains(&hour) {
            3
        } else {
            1
        };
        t1 += busy * (20 + (i * 7 + n * 13) % 31);
        t2 += (i * 5 + n) % 11;
        i += 1;
        t = Timestamp::from_second(t.as_second() + 900).expect("time");
    }
    out
}

const EXTRA: [(&str, &str); 2] = [
    ("METERSTAND__STATISTICS__SETTLE", "1m"),
    ("METERSTAND__STATISTICS__QUIET", "1s"),
];

fn statistics_path(start: Timestamp, end: Timestamp) -> String {
    format!(
        "/v1/statistics?from={start}&to={end}&granularity=day&register=import&group_by=postcode4,profile&format=json"
    )
}

/// Polls the statistics until the day is published; returns the answer's body.
fn published(svc: &InProcess, path: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (status, body) = svc
            .http("GET", path, Some(&token("analyst")), None)
            .expect("statistics");
        assert_eq!(status, 200, "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).expect("json");
        if v["rows"].as_array().is_some_and(|r| !r.is_empty()) {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "the day was never published: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn operator_backup(svc: &InProcess, name: &str) {
    let (status, body) = svc
        .http(
            "POST",
            "/v1/backups",
            Some(&token("operator")),
            Some(&format!(r#"{{"name": "{name}"}}"#)),
        )
        .expect("backup");
    assert_eq!(status, 200, "{body}");
}

/// Twelve households of 5000/E1A with a settled day: backup, the day frozen, one household
/// erased, the service stopped, the backup restored, the service started again. Without
/// the frozen day carried over, the restored readings less the replayed erasure were frozen
/// again: 11 connections, the difference one household's day.
#[test]
fn a_restore_keeps_every_period_frozen_before_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let cal = Calendar::amsterdam();
    let (start, end) = settled_day(&cal);
    const QUIET: [(&str, &str); 2] = [
        ("METERSTAND__STATISTICS__SETTLE", "1m"),
        ("METERSTAND__STATISTICS__QUIET", "4s"),
    ];
    let svc = InProcess::start(&dirs, &broker.url(), &QUIET);
    for n in 0..12 {
        let (status, body) = svc
            .http(
                "PUT",
                &format!("/v1/connections/{}", ean(n).expose()),
                Some(&token("crm")),
                Some(r#"{"consent": "interval", "postcode4": "5000", "profile": "E1A"}"#),
            )
            .expect("register");
        assert_eq!(status, 200, "{body}");
    }
    let mut publisher = Publisher::connect(broker.port, "restore-test");
    for n in 0..12 {
        publisher.publish(
            &format!("meters/{}/json", ean(n).expose()),
            json_payload(&meter_id(n), &day_of(n, start, end)),
        );
    }
    publisher.wait_acked();
    svc.wait_acked(12, Duration::from_secs(60));
    // The backup holds the readings but not yet the day's statistics (it is frozen once
    // quiet for a few seconds).
    operator_backup(&svc, "last-week");
    let path = statistics_path(start, end);
    let before = published(&svc, &path);
    let v: serde_json::Value = serde_json::from_str(&before).expect("json");
    assert_eq!(v["rows"][0]["connections"], 12, "{before}");
    let (status, body) = svc
        .http(
            "DELETE",
            &format!("/v1/subjects/{}", ean(3).expose()),
            Some(&token("privacy_officer")),
            None,
        )
        .expect("erase");
    assert_eq!(status, 200, "{body}");
    svc.stop();

    let backup = dirs.root.join("backups").join("last-week");
    let out = cli(
        &dirs,
        &[
            "restore",
            "--from",
            &backup.display().to_string(),
            "--force",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let said = text(&out.stdout);
    assert!(
        said.contains("re-applied #"),
        "the erasure is replayed: {said}"
    );
    assert!(said.contains("frozen statistics periods kept"), "{said}");

    let svc = InProcess::start(&dirs, &broker.url(), &EXTRA);
    // The freeze runs at start-up and every second: give it time to (wrongly) recompute.
    std::thread::sleep(Duration::from_secs(3));
    let after = published(&svc, &path);
    assert_eq!(
        after, before,
        "a frozen day answers exactly as before the restore"
    );
    // The erased household stays erased after the restore.
    let (status, body) = svc
        .http(
            "GET",
            &format!("/v1/subjects/{}/export?format=json", ean(3).expose()),
            Some(&token("privacy_officer")),
            None,
        )
        .expect("export");
    assert!(status == 200 || status == 404, "{status} {body}");
    let export: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    assert!(
        export["readings"]["interval"]
            .as_array()
            .is_none_or(|r| r.is_empty()),
        "{body}"
    );
    svc.stop();
}

/// The operator who restores a backup without the journal (lost, or reset): refused, and
/// the refusal says why and how to override; with the override, restored and warned.
#[test]
fn a_restore_without_a_journal_reaching_back_refuses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let svc = InProcess::start(&dirs, &broker.url(), &EXTRA);
    for n in 20..22 {
        let (status, body) = svc
            .http(
                "PUT",
                &format!("/v1/connections/{}", ean(n).expose()),
                Some(&token("crm")),
                Some(r#"{"consent": "daily", "postcode4": "5000", "profile": "E1A"}"#),
            )
            .expect("register");
        assert_eq!(status, 200, "{body}");
    }
    operator_backup(&svc, "b1");
    let (status, body) = svc
        .http(
            "DELETE",
            &format!("/v1/subjects/{}", ean(20).expose()),
            Some(&token("privacy_officer")),
            None,
        )
        .expect("erase");
    assert_eq!(status, 200, "{body}");
    svc.stop();
    // The journal is lost (the backup of it was forgotten).
    let journal = dirs.root.join("subject-journal.jsonl");
    std::fs::remove_file(&journal).expect("journal");
    let backup = dirs.root.join("backups").join("b1");
    let restore = |extra: &[&str]| {
        let mut args = vec![
            "restore",
            "--from",
            backup.to_str().expect("utf-8"),
            "--force",
        ];
        args.extend_from_slice(extra);
        cli(&dirs, &args)
    };
    let out = restore(&[]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("journal is missing") && err.contains("--accept-journal-gap"),
        "{err}"
    );
    assert!(
        dirs.data.join("CURRENT").is_file(),
        "the store is left as it was"
    );
    let out = restore(&["--accept-journal-gap"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("may be undone"),
        "{}",
        text(&out.stdout)
    );
}
