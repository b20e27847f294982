//! The API against its own description: a schema-driven fuzzer (schemathesis, from PyPI)
//! reads `/openapi.json` of the running service and sends what the document calls valid and
//! invalid, once per role with that role's token. Every check it has must pass: no 5xx, no
//! request the document calls valid refused, every status, content type and body as
//! documented, invalid input refused, authentication not ignored.
//!
//! The rules JSON Schema cannot state (an EAN's check digit, `from` not after `to`, the
//! longest range per granularity) are written in the document's descriptions and taught to
//! the fuzzer by `tests/schemathesis/hooks.py`.
//!
//! `scripts/test` installs schemathesis into `~/.cache/meterstand/venv` when the machine has
//! Python 3; without it this test says so and does nothing (set `METERSTAND_SCHEMATHESIS` to
//! use another installation).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::*;
use jiff::Timestamp;
use meterstand_model::{Reading, Register};

const SCHEMATHESIS_ENV: &str = "METERSTAND_SCHEMATHESIS";

/// The schemathesis executable: `$METERSTAND_SCHEMATHESIS`, the venv `scripts/test` makes, or
/// one on `PATH`.
fn schemathesis() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os(SCHEMATHESIS_ENV) {
        return Some(PathBuf::from(path));
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))?;
    let venv = cache.join("meterstand/venv/bin/schemathesis");
    if venv.is_file() {
        return Some(venv);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("schemathesis"))
            .find(|p| p.is_file())
    })
}

/// Quarter-hour import readings (both tariffs: a consumption needs every register of its
/// kind) of `days` whole days from `start`, household-like steps.
fn day_readings(start: Timestamp, days: i64, n: u64) -> Vec<Reading> {
    (0..days * 96)
        .flat_map(|i| {
            let time = Timestamp::from_second(start.as_second() + i * 900).expect("in range");
            let step = 20 + (n * 7 + i as u64) % 50;
            [
                Reading {
                    register: Register::ImportT1,
                    time,
                    value: 1_000_000 + i as u64 * step,
                },
                Reading {
                    register: Register::ImportT2,
                    time,
                    value: 2_000_000 + i as u64 * (step / 2),
                },
            ]
        })
        .collect()
}

#[test]
fn every_role_fuzzed_from_the_openapi_document_gets_documented_answers() {
    let Some(fuzzer) = schemathesis() else {
        meterstand_testkit::tool_missing(
            "the OpenAPI fuzz test",
            &format!(
                "schemathesis not found (scripts/test installs it from PyPI when python3 is \
                 present; or set {SCHEMATHESIS_ENV})"
            ),
        );
        return;
    };
    let seed = Seed::new("openapi_fuzz");
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));

    // Something for every route to answer with: twelve registered connections of one
    // postcode, two days of quarter-hours each, and (after a restart) their frozen statistics.
    let svc = InProcess::start(&dirs, &broker.url(), &[]);
    let mut publisher = Publisher::connect(broker.port, "openapi-publisher");
    let start = Timestamp::from_second((Timestamp::now().as_second() / 86_400 - 4) * 86_400)
        .expect("in range");
    for n in 0..12 {
        let e = ean_from(7, n);
        let (status, body) = svc
            .http(
                "PUT",
                &format!("/v1/connections/{}", e.expose()),
                Some(&token("crm")),
                Some(r#"{"consent":"interval","postcode4":"3511","profile":"E1A"}"#),
            )
            .expect("put");
        assert_eq!(status, 200, "{body}");
        publisher.publish(
            &format!("meters/{}/json", e.expose()),
            json_payload(&meter_id(n), &day_readings(start, 2, n)),
        );
    }
    publisher.wait_acked();
    svc.wait_acked(12, Duration::from_secs(30));
    svc.stop();
    // Statistics freeze at start-up once a period has settled.
    let svc = InProcess::start(
        &dirs,
        &broker.url(),
        &[
            ("METERSTAND__STATISTICS__SETTLE", "1h"),
            ("METERSTAND__STATISTICS__QUIET", "0s"),
        ],
    );
    let stats = format!(
        "/v1/statistics?from={start}&to={}&granularity=day",
        Timestamp::from_second(start.as_second() + 2 * 86_400).expect("in range")
    );
    meterstand_testkit::eventually(
        "statistics frozen at start-up",
        Duration::from_secs(30),
        || {
            let (status, body) = svc
                .http("GET", &stats, Some(&token("analyst")), None)
                .expect("statistics");
            assert_eq!(status, 200, "{body}");
            body.contains("\"connections\":12")
        },
    );

    let hooks = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/schemathesis/hooks.py");
    let schema = format!("http://{}/openapi.json", svc.api);
    for role in ["analyst", "privacy_officer", "crm", "operator"] {
        let out = Command::new(&fuzzer)
            .args(["run", &schema, "--checks", "all", "--include-tag", role])
            .args(["--max-examples", "100", "--workers", "2", "--no-color"])
            .args(["--seed", &seed.value().to_string()])
            .args(["-H", &format!("Authorization: Bearer {}", token(role))])
            .env("SCHEMATHESIS_HOOKS", &hooks)
            .env("NO_COLOR", "1")
            .current_dir(tmp.path())
            .output()
            .expect("run schemathesis");
        let report = text(&out.stdout);
        assert!(
            out.status.success(),
            "schemathesis found failures for role {role}:\n{report}\n{}",
            text(&out.stderr)
        );
        // The run really exercised the role's operations.
        let summary = report
            .lines()
            .find(|l| l.contains(" generated, "))
            .unwrap_or_else(|| panic!("no summary for {role}:\n{report}"));
        let generated: u64 = summary
            .split_whitespace()
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("unreadable summary: {summary}"));
        assert!(
            generated >= 100,
            "{role}: only {generated} cases: {summary}"
        );
        assert!(
            summary.contains(&format!("{generated} passed")),
            "{role}: {summary}"
        );
        eprintln!("{role}: {summary}");
    }
    svc.stop();
}
