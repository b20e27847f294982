//! What operators, the CRM and the privacy officer do through the binary: the CLI clients
//! against a running service, exact counters on `/metrics`, `promtool check metrics`, and a
//! backup taken under load, restored and compared. The service runs in-process except where
//! the test reads its log or counts its metrics exactly (metrics are per process).

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use jiff::Timestamp;
use meterstand_model::{Calendar, ConsentLevel, Ean, Reading, Register, Tier};
use meterstand_store::{ReadingStore, TierCounts};

/// This file's own EANs.
fn ean(n: u64) -> Ean {
    ean_from(2, n)
}

fn token_arg(dirs: &ServiceDirs, role: &str) -> String {
    token_file(&dirs.root, role).display().to_string()
}

/// A recent local midnight that is not the 1st, so its readings are interval and day ones.
fn recent_midnight(cal: &Calendar) -> Timestamp {
    let mut day = cal.date_of(Timestamp::now()).yesterday().expect("date");
    if day.day() == 1 {
        day = day.yesterday().expect("date");
    }
    cal.date_start(day).expect("midnight")
}

/// A spawned service (its metrics are exact per process, its log is read), consent default
/// `standard`, JSON log lines, with the CRM's import of connections 1–3 done.
struct Operated {
    tmp: tempfile::TempDir,
    broker: Mosquitto,
    dirs: ServiceDirs,
    svc: Spawned,
    server: String,
}

impl Operated {
    fn start() -> Operated {
        let tmp = tempfile::tempdir().expect("tempdir");
        let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
        let dirs = ServiceDirs::new(&tmp.path().join("svc"));
        let svc = Spawned::start(
            &dirs,
            &broker.url(),
            &[
                ("METERSTAND__CONSENT__DEFAULT", "standard"),
                ("METERSTAND__LOG__FORMAT", "json"),
            ],
        );
        let server = format!("http://{}", svc.api);
        let o = Operated {
            tmp,
            broker,
            dirs,
            svc,
            server,
        };
        let out = o.import();
        assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
        o
    }

    /// `meterstand connections import` of three good rows and two bad ones.
    fn import(&self) -> std::process::Output {
        let csv = self.tmp.path().join("connections.csv");
        std::fs::write(
            &csv,
            format!(
                "ean,consent,postcode4,profile\n{},interval,1234,E1A\n{},daily,1234,E1A\n{},standard,,\n{},daily,1234,E1A\n{},always,1234,E1A\n",
                ean(1).expose(),
                ean(2).expose(),
                ean(3).expose(),
                bad_check_digit(&ean(9)),
                ean(5).expose()
            ),
        )
        .expect("csv");
        self.cli_as(
            "crm",
            &["connections", "import", &csv.display().to_string()],
        )
    }

    /// The CLI against this service with `role`'s token file.
    fn cli_as(&self, role: &str, args: &[&str]) -> std::process::Output {
        let token = token_arg(&self.dirs, role);
        let mut all = args.to_vec();
        all.extend(["--server", &self.server, "--token-file", &token]);
        cli(&self.dirs, &all)
    }

    /// Four quarter-hours from a recent local midnight for connections 1–4 (the fourth
    /// unregistered: default consent standard), one duplicate message and two rejects;
    /// what the gate stores and drops, per tier.
    fn publish_known_readings(&self) -> (TierCounts, TierCounts) {
        let cal = Calendar::amsterdam();
        let t0 = recent_midnight(&cal);
        let readings: Vec<Reading> = (0..4)
            .map(|i| Reading {
                register: Register::ImportT1,
                time: Timestamp::from_second(t0.as_second() + i * 900).expect("time"),
                value: 5_000_000 + i as u64 * 100,
            })
            .collect();
        let mut publisher = Publisher::connect(self.broker.port, "operate-publisher");
        let (mut stored, mut dropped) = (TierCounts::default(), TierCounts::default());
        for (n, consent) in [
            (1, ConsentLevel::Interval),
            (2, ConsentLevel::Daily),
            (3, ConsentLevel::Standard),
            (4, ConsentLevel::Standard),
        ] {
            publisher.publish(
                &format!("meters/{}/json", ean(n).expose()),
                json_payload("E0031003262700001", &readings),
            );
            for r in &readings {
                for tier in cal.tiers_of(r.register, r.time).iter() {
                    if consent.allowed_tiers().contains(tier) {
                        stored.add(tier, 1);
                    } else {
                        dropped.add(tier, 1);
                    }
                }
            }
        }
        publisher.publish(
            &format!("meters/{}/json", ean(1).expose()),
            json_payload("E0031003262700001", &readings),
        );
        publisher.publish(
            &format!("meters/{}/json", ean(1).expose()),
            b"{broken".to_vec(),
        );
        publisher.publish(
            &format!("meters/{}/json", bad_check_digit(&ean(9))),
            json_payload("E0031003262700001", &readings),
        );
        publisher.wait_acked();
        self.svc.wait_acked(7, Duration::from_secs(30));
        (stored, dropped)
    }

    fn exposition(&self) -> String {
        let (status, exposition) = self
            .svc
            .http("GET", "/metrics", Some(&token("operator")), None)
            .expect("metrics");
        assert_eq!(status, 200);
        exposition
    }
}

#[test]
fn the_crm_import_refuses_bad_rows_by_line_without_echoing_them() {
    let o = Operated::start();
    let out = o.import();
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("imported 3 connections, 2 rows refused"));
    let err = text(&out.stderr);
    assert!(err.contains("connections.csv:5: bad EAN"), "{err}");
    assert!(err.contains("connections.csv:6: bad consent"), "{err}");
    let bad = bad_check_digit(&ean(9));
    assert!(!err.contains(&bad), "the refused EAN is echoed: {err}");
    // Two imports of the same three rows.
    assert!(o.exposition().contains(
        r#"meterstand_api_requests_total{method="PUT",route="/v1/connections/{ean}",status="200"} 6"#
    ));
}

#[test]
fn ingest_counters_are_exact_and_promtool_accepts_the_exposition() {
    let o = Operated::start();
    let (stored, dropped) = o.publish_known_readings();
    assert_eq!((stored.interval, stored.day, stored.month), (4, 2, 0));
    assert_eq!((dropped.interval, dropped.day), (12, 2));
    let exposition = o.exposition();
    let metrics: BTreeMap<&str, f64> = exposition
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k, v.parse().ok()?))
        })
        .collect();
    let m = |name: &str| {
        *metrics
            .get(name)
            .unwrap_or_else(|| panic!("{name} missing from /metrics"))
    };
    assert_eq!(m("meterstand_ingest_messages_total"), 7.0);
    assert_eq!(m("meterstand_ingest_readings_total"), 20.0);
    for (reason, n) in [("malformed", 1.0), ("bad_ean", 1.0), ("unknown_obis", 0.0)] {
        let name = format!(r#"meterstand_ingest_rejected_total{{reason="{reason}"}}"#);
        assert_eq!(m(&name), n, "{reason}");
    }
    for tier in Tier::ALL {
        let t = tier.as_str();
        let stored_metric = format!(r#"meterstand_store_readings_stored_total{{tier="{t}"}}"#);
        assert_eq!(m(&stored_metric), stored.get(tier) as f64, "stored {t}");
        // Connection 1 has interval consent: its repeated message is all duplicates.
        let dropped_metric = format!(r#"meterstand_store_dropped_by_consent_total{{tier="{t}"}}"#);
        assert_eq!(m(&dropped_metric), dropped.get(tier) as f64, "dropped {t}");
        let deleted = format!(r#"meterstand_retention_deleted_total{{tier="{t}"}}"#);
        assert_eq!(m(&deleted), 0.0);
    }
    assert_eq!(m("meterstand_store_duplicates_total"), 5.0);
    assert_eq!(m("meterstand_store_conflicts_total"), 0.0);
    assert_eq!(m("meterstand_ingest_unacked_messages"), 0.0);
    assert_eq!(m("meterstand_mqtt_connected"), 1.0);
    assert_eq!(m("meterstand_store_erasures_total"), 0.0);
    assert!(m("meterstand_ingest_reading_lag_seconds_count") >= 5.0);
    assert!(m(r#"meterstand_store_size_bytes{tier="interval"}"#) >= 0.0);

    // promtool accepts the exposition.
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus) is installed by scripts/test");
    std::io::Write::write_all(
        promtool.stdin.as_mut().expect("stdin"),
        exposition.as_bytes(),
    )
    .expect("write");
    let checked = promtool.wait_with_output().expect("promtool");
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        text(&checked.stdout),
        text(&checked.stderr)
    );

    // Every metric the dashboard and the alert rules use is exported.
    let families: std::collections::BTreeSet<&str> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    for file in [
        "config/grafana/meterstand.json",
        "config/prometheus/alerts.yml",
    ] {
        let body = std::fs::read_to_string(repo().join(file)).expect("read");
        let mut used = 0;
        for (i, _) in body.match_indices("meterstand_") {
            let name: String = body[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(
                families.contains(family),
                "{file} uses {name}, which is not exported"
            );
            used += 1;
        }
        assert!(used > 5, "{file} uses almost no meterstand metric");
    }
}

fn repo() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The alert rules are valid and fire as their unit tests expect.
#[test]
fn the_alert_rules_pass_promtool_and_their_unit_tests() {
    let rules = repo().join("config/prometheus");
    for args in [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&rules)
            .output()
            .expect("promtool (Debian package prometheus) is installed by scripts/test");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
    }
}

/// Export (JSON and CSV) and erasure through the CLI; the erasure shows on `/metrics`.
fn export_and_erase(o: &Operated) {
    o.publish_known_readings();
    let e1 = ean(1);
    let out = o.cli_as(
        "privacy_officer",
        &["subject", "export", "--ean", e1.expose()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("export json");
    assert_eq!(v["connection"]["consent"], "interval");
    assert_eq!(v["readings"]["interval"].as_array().map(Vec::len), Some(4));
    assert_eq!(v["readings"]["day"][0]["value"], "5000.000");
    let csv_out = o.tmp.path().join("export.csv");
    let csv_arg = csv_out.display().to_string();
    let args = [
        "subject",
        "export",
        "--ean",
        e1.expose(),
        "--format",
        "csv",
        "--out",
        &csv_arg,
    ];
    let out = o.cli_as("privacy_officer", &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let csv_text = std::fs::read_to_string(&csv_out).expect("csv");
    assert_eq!(
        csv_text
            .lines()
            .filter(|l| l.starts_with("reading,"))
            .count(),
        5
    );
    let out = o.cli_as(
        "privacy_officer",
        &["subject", "erase", "--ean", e1.expose()],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("receipt json");
    assert_eq!(v["deleted"]["interval"], 4);
    assert_eq!(v["deleted"]["day"], 1);
    assert_eq!(v["deleted"]["connection"], 1);
    assert!(
        o.exposition()
            .contains("meterstand_store_erasures_total 1\n")
    );
}

#[test]
fn the_privacy_officer_exports_and_erases_through_the_cli() {
    export_and_erase(&Operated::start());
}

/// The wrong role, a bad EAN, a server that is not there and a readable token file are clear
/// errors that never echo the EAN.
#[test]
fn cli_errors_are_clear_and_never_echo_the_ean() {
    let o = Operated::start();
    let e1 = ean(1);
    let out = o.cli_as("crm", &["subject", "erase", "--ean", e1.expose()]);
    assert!(!out.status.success());
    assert!(text(&out.stderr).contains("403"), "{}", text(&out.stderr));
    assert!(o.exposition().contains(
        r#"meterstand_api_requests_total{method="DELETE",route="/v1/subjects/{ean}",status="403"} 1"#
    ));
    let out = o.cli_as("privacy_officer", &["subject", "export", "--ean", "123"]);
    assert!(text(&out.stderr).contains("--ean must be 18 digits"));
    // reqwest's errors name the URL, whose path holds the EAN.
    let nowhere = format!("http://127.0.0.1:{}", free_port());
    let po = token_arg(&o.dirs, "privacy_officer");
    let args = [
        "subject",
        "export",
        "--ean",
        e1.expose(),
        "--server",
        &nowhere,
        "--token-file",
        &po,
    ];
    let out = cli(&o.dirs, &args);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("cannot reach the API"),
        "{err}"
    );
    assert!(!err.contains(e1.expose()), "the EAN is in the error: {err}");
    let loose = o.tmp.path().join("loose.token");
    std::fs::write(&loose, token("privacy_officer")).expect("token");
    let loose = loose.display().to_string();
    let args = [
        "subject",
        "export",
        "--ean",
        e1.expose(),
        "--server",
        &o.server,
        "--token-file",
        &loose,
    ];
    let out = cli(&o.dirs, &args);
    assert!(
        text(&out.stderr).contains("chmod 600"),
        "{}",
        text(&out.stderr)
    );
}

/// Revocation without a restart: the token leaves the config file, and `token revoke`
/// succeeds once the running service, told by SIGHUP, confirms it refuses the token.
#[test]
fn a_revoked_token_is_refused_without_a_restart() {
    let o = Operated::start();
    let stats = "/v1/statistics?from=2026-11-01&to=2026-11-02&granularity=day";
    let analyst = |svc: &Spawned| {
        svc.http("GET", stats, Some(&token("analyst")), None)
            .expect("stats")
            .0
    };
    assert_eq!(analyst(&o.svc), 200);
    let pid = o.svc.child.id().to_string();
    let out = o.cli_as(
        "operator",
        &["token", "revoke", "--id", "analyst-1", "--pid", &pid],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    // Confirmed means refused from now on.
    assert_eq!(analyst(&o.svc), 401);
}

/// The calls of a session are audited, one line each, without an EAN; `audit verify` holds
/// the chain, `audit report` lists a token's calls, an edited line is caught; every line of
/// the service's own log is JSON and holds no EAN.
#[test]
fn the_audit_log_verifies_reports_and_catches_an_edit() {
    let o = Operated::start();
    export_and_erase(&o);
    let out = o.cli_as("crm", &["subject", "erase", "--ean", ean(1).expose()]);
    assert!(!out.status.success());
    let Operated { dirs, svc, .. } = o;
    svc.stop();

    let log_path = dirs.audit.display().to_string();
    let out = cli(&dirs, &["audit", "verify", "--log", &log_path]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let window = [
        "--from",
        "2000-01-01T00:00:00Z",
        "--to",
        "2100-01-01T00:00:00Z",
    ];
    let mut args = vec![
        "audit",
        "report",
        "--token",
        "privacy_officer-1",
        "--log",
        &log_path,
    ];
    args.extend(window);
    let out = cli(&dirs, &args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("report json");
    let actors = report["actors"].as_array().expect("actors");
    assert_eq!(actors.len(), 1, "{report}");
    assert!(actors[0]["calls"].as_u64().unwrap_or(0) >= 3, "{report}");

    // The import's 3 puts, 2 exports, 1 erasure, 1 refused erasure (and the operator's
    // metric scrapes between them); the hash chain holds under the key.
    let audit = std::fs::read_to_string(&dirs.audit).expect("audit log");
    let keys = meterstand::audit::chain_keys(&dirs.key_ring());
    let verified = meterstand_audit::verify_with(&dirs.audit, &keys, None).expect("verify");
    assert!(verified.is_ok(), "{verified}");
    let actions: Vec<String> = audit
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("json line");
            format!(
                "{} {}",
                v["action"].as_str().unwrap_or(""),
                v["outcome"].as_str().unwrap_or("")
            )
        })
        .filter(|a| {
            a.starts_with("connection.") || a.starts_with("subject.") || a.starts_with("auth.")
        })
        .collect();
    let mut want = vec!["connection.put ok"; 3];
    want.extend([
        "subject.export ok",
        "subject.export ok",
        "subject.erase ok",
        "auth.refused denied",
    ]);
    assert_eq!(actions, want);
    // An edited line is caught, by the library and by the CLI's exit code.
    let edited = audit.replacen("subject.export", "subject.exporx", 1);
    std::fs::write(&dirs.audit, edited).expect("edit");
    let out = cli(&dirs, &["audit", "verify", "--log", &log_path]);
    assert!(!out.status.success(), "an edited audit log verified");
    let log = std::fs::read_to_string(&dirs.log).expect("service log");
    assert!(log.lines().count() > 3);
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("log.format = json, yet a line is not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
    }
    for n in [1, 2, 3, 4, 5] {
        assert!(!audit.contains(ean(n).expose()) && !log.contains(ean(n).expose()));
    }
}

fn publish_stream(port: u16, id: &str, from: u64, to: u64) -> Vec<(Ean, Reading)> {
    let mut publisher = Publisher::connect(port, id);
    let start = quarters_ago(400);
    let mut sent = Vec::new();
    for i in from..to {
        let e = ean(1_000 + i % 50);
        let r = Reading {
            register: Register::ImportT1,
            time: Timestamp::from_second(start.as_second() + (i / 50) as i64 * 900).expect("t"),
            value: 1_000_000 + i,
        };
        publisher.publish(
            &format!("meters/{}/json", e.expose()),
            json_payload("E0031003262700002", &[r]),
        );
        sent.push((e, r));
    }
    publisher.wait_acked();
    sent
}

fn interval_readings(
    store: &meterstand_store_rocks::RocksStore,
    p: &meterstand_pseudonym::Pseudonymiser,
    sent: &[(Ean, Reading)],
) -> BTreeMap<(String, i64), u64> {
    let mut eans: Vec<&Ean> = sent.iter().map(|(e, _)| e).collect();
    eans.sort_by_key(|e| e.expose().to_string());
    eans.dedup_by_key(|e| e.expose().to_string());
    let mut out = BTreeMap::new();
    for e in eans {
        let export = store.export(&[p.ean(e)]).expect("export");
        for r in export.interval {
            out.insert((e.expose().to_string(), r.time.as_second()), r.value);
        }
    }
    out
}

#[test]
fn backup_under_load_restores_to_a_consistent_store() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let svc = InProcess::start(&dirs, &broker.url(), &[]);
    let server = format!("http://{}", svc.api);

    let before = publish_stream(broker.port, "backup-a", 0, 500);
    svc.wait_acked(500, Duration::from_secs(60));
    let port = broker.port;
    let during = std::thread::spawn(move || publish_stream(port, "backup-b", 500, 5_500));
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while svc.acked() < 1_000 {
        assert!(
            std::time::Instant::now() < deadline,
            "the stream did not start"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let backup = dirs.root.join("backups").join("nightly");
    let op = token_arg(&dirs, "operator");
    let out = cli(
        &dirs,
        &[
            "backup",
            "--name",
            "nightly",
            "--server",
            &server,
            "--token-file",
            &op,
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("backup written to"));
    use std::os::unix::fs::PermissionsExt;
    for entry in std::fs::read_dir(&backup).expect("backup dir") {
        let meta = entry.expect("entry").metadata().expect("meta");
        assert_eq!(
            meta.permissions().mode() & 0o077,
            0,
            "backup files are owner-only"
        );
    }
    let during = during.join().expect("publisher");
    svc.wait_acked(5_500, Duration::from_secs(120));

    // Restoring over a store in use is refused, with or without --force.
    let out = cli(&dirs, &["restore", "--from", &backup.display().to_string()]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("is not empty"),
        "{}",
        text(&out.stderr)
    );
    let out = cli(
        &dirs,
        &[
            "restore",
            "--from",
            &backup.display().to_string(),
            "--force",
        ],
    );
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("stop the service first"),
        "{}",
        text(&out.stderr)
    );
    svc.stop();

    let restored_path = tmp.path().join("restored");
    let from = backup.display().to_string();
    let out = cli_command(&dirs, &["restore", "--from", &from])
        .env("METERSTAND__STORE__PATH", &restored_path)
        .output()
        .expect("restore");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("opens cleanly"));

    let p = dirs.pseudonymiser();
    let mut all = before.clone();
    all.extend(during);
    let live = {
        let store = dirs.open_store();
        interval_readings(&store, &p, &all)
    };
    let restored = {
        let mut config = meterstand_store_rocks::StoreConfig::new(&restored_path);
        config.compression = meterstand_store_rocks::Compression::None;
        let store = meterstand_store_rocks::RocksStore::open(
            config,
            std::sync::Arc::new(meterstand_store::ManualClock::new(Timestamp::now())),
        )
        .expect("open restored");
        interval_readings(&store, &p, &all)
    };
    assert_eq!(
        live.len(),
        5_500,
        "every published reading is in the live store"
    );
    for (e, r) in &before {
        assert_eq!(
            restored.get(&(e.expose().to_string(), r.time.as_second())),
            Some(&r.value),
            "a reading acked before the backup is missing from it"
        );
    }
    assert!(restored.len() >= 1_000 && restored.len() <= 5_500);
    for (k, v) in &restored {
        assert_eq!(
            live.get(k),
            Some(v),
            "the backup holds what the store never had"
        );
    }
    eprintln!("backup held {} of 5500 readings", restored.len());
}

#[test]
fn after_a_key_rotation_connection_records_follow_their_ean() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let standard = [("METERSTAND__CONSENT__DEFAULT", "standard")];
    let e = ean(77);
    let svc = InProcess::start(&dirs, &broker.url(), &standard);
    let (status, body) = svc
        .http(
            "PUT",
            &format!("/v1/connections/{}", e.expose()),
            Some(&token("crm")),
            Some(r#"{"consent":"interval","postcode4":"1234"}"#),
        )
        .expect("put");
    assert_eq!(status, 200, "{body}");
    svc.stop();

    // The operator rotates the key; the service starts under version 2.
    let out = cli(
        &dirs,
        &[
            "keygen",
            "--out",
            &dirs.key_file.display().to_string(),
            "--rotate",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let svc = InProcess::start(&dirs, &broker.url(), &standard);
    let t0 = quarters_ago(8);
    let readings: Vec<Reading> = (0..4)
        .map(|i| Reading {
            register: Register::ImportT1,
            time: Timestamp::from_second(t0.as_second() + i * 900).expect("time"),
            value: 9_000_000 + i as u64,
        })
        .collect();
    let mut publisher = Publisher::connect(broker.port, "rotation-publisher");
    publisher.publish(
        &format!("meters/{}/json", e.expose()),
        json_payload("E0031003262700004", &readings),
    );
    publisher.wait_acked();
    svc.wait_acked(1, Duration::from_secs(30));
    // The interval consent registered under version 1 still applies.
    let totals = svc.service_totals();
    assert_eq!(totals.stored.interval, 4);
    assert_eq!(totals.dropped_by_consent.interval, 0);
    assert_eq!(
        svc.metric("meterstand_store_rekeyed_connections_total"),
        Some(1.0)
    );
    let (status, body) = svc
        .http(
            "GET",
            &format!("/v1/subjects/{}/export", e.expose()),
            Some(&token("privacy_officer")),
            None,
        )
        .expect("export");
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).expect("json");
    assert!(
        v["pseudonym"]
            .as_str()
            .is_some_and(|p| p.starts_with("v2-")),
        "{v}"
    );
    assert_eq!(v["pseudonyms"].as_array().map(Vec::len), Some(2));
    assert_eq!(v["connection"]["consent"], "interval");
    assert_eq!(v["readings"]["interval"].as_array().map(Vec::len), Some(4));
    svc.stop();
}
