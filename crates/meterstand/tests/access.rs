//! Access fails closed, against the real binary and a real Mosquitto: a token reload that
//! cannot take the file as it is keeps only the tokens still in it; `token revoke` claims
//! success only when the running service confirms; plain MQTT to a remote broker is refused;
//! a flood of idle sockets stops neither calls nor ingest; corrections are opt-in.

mod common;

use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use meterstand_model::{Ean, Reading, Register};

/// This file's own EANs.
fn ean(n: u64) -> Ean {
    ean_from(25, n)
}

const STATS: &str = "/v1/statistics?from=2026-11-01&to=2026-11-02&granularity=day";

/// Whether a call with `role`'s token gets past authentication: statistics for the analyst,
/// an export for the privacy officer, a connection for the CRM, a backup request without a
/// name for the operator (refused 400 after the role check, 401 before it).
fn authorized(svc: &Spawned, role: &str) -> bool {
    let (method, path, body) = match role {
        "analyst" => ("GET", STATS.to_string(), None),
        "privacy_officer" => (
            "GET",
            format!("/v1/subjects/{}/export", ean(1).expose()),
            None,
        ),
        "crm" => (
            "PUT",
            format!("/v1/connections/{}", ean(1).expose()),
            Some(r#"{"consent":"daily"}"#),
        ),
        _ => ("POST", "/v1/backups".to_string(), Some("{}")),
    };
    let (status, body) = svc
        .http(method, &path, Some(&token(role)), body)
        .expect("the service answers");
    assert_ne!(status, 403, "{role}: {body}");
    status != 401
}

/// Waits until `metric` reads `value` on the (open) /metrics.
fn wait_metric(svc: &Spawned, metric: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = svc
            .client
            .get("/metrics")
            .and_then(|(_, body)| meterstand_testkit::http::parse_metric(&body, metric));
        if seen == Some(value) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{metric} is {seen:?}, not {value}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The audit lines with `action`.
fn audit_lines(dirs: &ServiceDirs, action: &str) -> Vec<String> {
    std::fs::read_to_string(&dirs.audit)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains(&format!(r#""action":"{action}""#)))
        .map(str::to_string)
        .collect()
}

/// A reload whose config does not load keeps only the tokens still in the file: the one
/// removed from it is refused, as is one whose token file no longer vouches for it, the
/// others still work; a file that is not TOML at all leaves no token in force. Each failure
/// is counted and audited; a good file restores the table.
#[test]
fn a_reload_that_cannot_take_the_file_keeps_only_tokens_still_in_it() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    // /metrics open: it must stay readable while every token is refused.
    let open = [("METERSTAND__API__METRICS_REQUIRE_TOKEN", "false")];
    let svc = Spawned::start(&dirs, &broker.url(), &open);
    for role in ["analyst", "privacy_officer", "crm", "operator"] {
        assert!(authorized(&svc, role), "{role} before");
    }
    let original = std::fs::read_to_string(&dirs.config).expect("config");

    // The analyst's entry removed, the CRM's token file opened to others (read_token refuses
    // it), and a value that does not validate: the config does not load.
    let without_analyst =
        meterstand::access::remove_token(&original, "analyst-1").expect("analyst entry");
    std::fs::write(
        &dirs.config,
        format!("{without_analyst}[ingest]\nmax_payload_bytes = 1\n"),
    )
    .expect("config");
    let crm_file = token_file(&dirs.root, "crm");
    std::fs::set_permissions(&crm_file, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    signal(&svc.child, "HUP");
    wait_metric(&svc, "meterstand_token_reload_failures_total", 1.0);
    assert!(!authorized(&svc, "analyst"), "removed from the file");
    assert!(!authorized(&svc, "crm"), "its token file no longer vouches");
    assert!(authorized(&svc, "privacy_officer"));
    assert!(authorized(&svc, "operator"));
    wait_metric(&svc, "meterstand_token_table_generation", 2.0);

    // Not TOML at all: nothing is known to be in the file, every token is refused.
    std::fs::write(&dirs.config, "[[api.tokens]\nid = ").expect("config");
    signal(&svc.child, "HUP");
    wait_metric(&svc, "meterstand_token_reload_failures_total", 2.0);
    for role in ["analyst", "privacy_officer", "crm", "operator"] {
        assert!(!authorized(&svc, role), "{role} with an unreadable table");
    }

    // A good file again: its table, and no more failures.
    std::fs::set_permissions(&crm_file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    std::fs::write(&dirs.config, &without_analyst).expect("config");
    signal(&svc.child, "HUP");
    wait_metric(&svc, "meterstand_token_table_generation", 4.0);
    assert!(!authorized(&svc, "analyst"));
    for role in ["privacy_officer", "crm", "operator"] {
        assert!(authorized(&svc, role), "{role} after a good reload");
    }
    svc.stop();

    let reloads = audit_lines(&dirs, "token.reload");
    assert_eq!(reloads.len(), 3, "{reloads:#?}");
    assert!(
        reloads[0].contains(r#""outcome":"error""#),
        "{}",
        reloads[0]
    );
    assert!(
        reloads[0].contains(r#""removed":"analyst-1,crm-1""#),
        "{}",
        reloads[0]
    );
    assert!(reloads[2].contains(r#""outcome":"ok""#), "{}", reloads[2]);
    assert!(
        reloads
            .iter()
            .all(|l| l.contains(r#""component":"operator""#))
    );
    let revoked = audit_lines(&dirs, "token.revoke");
    assert!(
        revoked.iter().any(|l| l.contains(r#""token":"analyst-1""#)),
        "{revoked:#?}"
    );
}

/// `token revoke` writes the file atomically (mode kept, no temporary file left) but exits
/// non-zero, naming what the service reports, when the service does not take it up; with
/// `--pid` the service confirms and the token is refused by the time the command returns.
#[test]
fn revoke_claims_success_only_when_the_service_confirms() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    std::fs::set_permissions(&dirs.config, std::fs::Permissions::from_mode(0o640)).expect("chmod");
    let svc = Spawned::start(&dirs, &broker.url(), &[]);
    let server = format!("http://{}", svc.api);
    let operator = token_file(&dirs.root, "operator").display().to_string();
    let revoke = |id: &str, extra: &[&str]| {
        let mut args = vec![
            "token",
            "revoke",
            "--id",
            id,
            "--server",
            &server,
            "--token-file",
            &operator,
        ];
        args.extend_from_slice(extra);
        // As `cli`, with the master key that keys the audit chain (the operator's line).
        Command::new(METERSTAND)
            .args(["--config".as_ref(), dirs.config.as_os_str()])
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("USER", "ops-test")
            .env("METERSTAND_KEY_FILE", &dirs.key_file)
            .env("METERSTAND__STORE__PATH", &dirs.data)
            .env("METERSTAND__API__AUDIT_LOG", &dirs.audit)
            .stdin(Stdio::null())
            .output()
            .expect("run meterstand")
    };

    // Nobody sends SIGHUP: the file changes, the service does not, and the command says so.
    let out = revoke("analyst-1", &["--timeout", "1s"]);
    let stderr = text(&out.stderr);
    assert!(
        !out.status.success(),
        "claimed success: {}",
        text(&out.stdout)
    );
    assert!(
        stderr.contains("not confirmed") && stderr.contains("generation 1"),
        "{stderr}"
    );
    let config = std::fs::read_to_string(&dirs.config).expect("config");
    assert!(
        !config.contains("analyst-1") && config.contains("crm-1"),
        "{config}"
    );
    let mode = std::fs::metadata(&dirs.config)
        .expect("meta")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o640, "the mode is kept");
    assert!(
        authorized(&svc, "analyst"),
        "the service still runs its old table"
    );

    // Revoking the token that would read the confirmation is refused, nothing changed.
    let out = revoke("operator-1", &["--timeout", "1s"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("being revoked"),
        "{}",
        text(&out.stderr)
    );
    let config = std::fs::read_to_string(&dirs.config).expect("config");
    assert!(config.contains("operator-1"), "{config}");

    // With --pid the service re-reads the file and confirms: both tokens refused at once.
    let pid = svc.child.id().to_string();
    let out = revoke("crm-1", &["--pid", &pid]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("confirmed"),
        "{}",
        text(&out.stdout)
    );
    assert!(!authorized(&svc, "crm"));
    assert!(!authorized(&svc, "analyst"));
    assert!(authorized(&svc, "privacy_officer"));
    let leftovers: Vec<_> = std::fs::read_dir(&dirs.root)
        .expect("dir")
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // No such entry: refused, nothing written.
    let out = revoke("nobody", &["--no-wait"]);
    assert!(!out.status.success() && text(&out.stderr).contains("nobody"));
    svc.stop();
    let revoked = audit_lines(&dirs, "token.revoke");
    assert!(
        revoked.iter().any(|l| l.contains(r#""token":"crm-1""#)),
        "{revoked:#?}"
    );
    // The operator's own lines: who ran it, and whether the service confirmed.
    let by_operator: Vec<&String> = revoked
        .iter()
        .filter(|l| l.contains(r#""kind":"operator""#) && l.contains("ops-test"))
        .collect();
    assert_eq!(by_operator.len(), 2, "{revoked:#?}");
    assert!(
        by_operator[0].contains(r#""confirmed":"no""#),
        "{}",
        by_operator[0]
    );
    assert!(
        by_operator[1].contains(r#""confirmed":"yes""#),
        "{}",
        by_operator[1]
    );
}

/// The meterstand binary with `env` only (no config file, no test defaults).
fn bare(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    Command::new(METERSTAND)
        .args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .expect("run meterstand")
}

/// Plain MQTT to a broker off loopback: `config check` and `run` refuse and name the key;
/// `broker.allow_plaintext = true` lets it through.
#[test]
fn plaintext_mqtt_to_a_remote_broker_is_refused_by_config_check_and_run() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dirs = ServiceDirs::new(tmp.path());
    let key = dirs.key_file.display().to_string();
    let data = dirs.data.display().to_string();
    let remote = [
        ("METERSTAND__BROKER__URL", "mqtt://192.0.2.10:1883"),
        ("METERSTAND_KEY_FILE", key.as_str()),
        ("METERSTAND__STORE__PATH", data.as_str()),
    ];
    for command in [&["config", "check"][..], &["run"][..]] {
        let out = bare(command, &remote);
        let stderr = text(&out.stderr);
        assert!(!out.status.success(), "{command:?} accepted it");
        assert!(
            stderr.contains("broker.url") && stderr.contains("broker.allow_plaintext"),
            "{command:?}: {stderr}"
        );
    }
    let mut allowed = remote.to_vec();
    allowed.push(("METERSTAND__BROKER__ALLOW_PLAINTEXT", "true"));
    let out = bare(&["config", "check"], &allowed);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("allow_plaintext = true"));
}

/// `meterstand run` under a file limit of `nofile` (soft and hard), as a child process.
fn spawn_limited(dirs: &ServiceDirs, broker: &str, extra: &[(&str, &str)], nofile: u32) -> Spawned {
    let api: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let log = std::fs::File::create(&dirs.log).expect("log");
    let child = Command::new("sh")
        .arg("-c")
        .arg(format!("ulimit -n {nofile} && exec \"$0\" \"$@\""))
        .arg(METERSTAND)
        .args(["run", "--config"])
        .arg(&dirs.config)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(dirs.env(broker, &api.to_string(), extra))
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("start meterstand");
    let svc = Spawned {
        child,
        api,
        client: Client::new(api),
    };
    svc.client.wait_ready(Duration::from_secs(30));
    svc
}

fn readings(from: u64, n: u64) -> Vec<Reading> {
    let start = quarters_ago(40);
    (0..n)
        .map(|i| Reading {
            register: Register::ImportT1,
            time: jiff::Timestamp::from_second(start.as_second() + i as i64 * 900).expect("time"),
            value: from + i * 10,
        })
        .collect()
}

/// 600 idle sockets against a service whose file limit is 512 (so at most 128 connections
/// by default): the service keeps its descriptors, an authenticated call is answered and
/// readings published after the flood are stored and acknowledged.
#[test]
fn an_idle_socket_flood_beyond_the_cap_stops_neither_calls_nor_ingest() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    // Idle sockets are not shed by the header timeout during the test.
    let slow = [("METERSTAND__API__HEADER_TIMEOUT", "10m")];
    let svc = spawn_limited(&dirs, &broker.url(), &slow, 512);
    let flood: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect(svc.api).ok())
        .collect();
    assert!(flood.len() > 512, "only {} sockets opened", flood.len());

    let (status, body) = svc
        .http("GET", "/metrics", Some(&token("operator")), None)
        .expect("an authenticated call is answered during the flood");
    assert_eq!(status, 200, "{body}");
    let metric = |name: &str| meterstand_testkit::http::parse_metric(&body, name);
    assert!(
        metric("meterstand_http_connections_evicted_total").is_some_and(|n| n >= 1.0),
        "{body}"
    );
    assert!(
        metric("meterstand_http_connections_open").is_some_and(|n| n <= 128.0),
        "{body}"
    );

    let mut publisher = Publisher::connect(broker.port, "access-flood-publisher");
    for n in 1..=20 {
        publisher.publish(
            &format!("meters/{}/json", ean(n).expose()),
            json_payload(&meter_id(n), &readings(1_000_000 * n, 4)),
        );
    }
    publisher.wait_acked();
    svc.wait_acked(20, Duration::from_secs(60));
    let (status, _) = svc
        .http(
            "GET",
            &format!("/v1/subjects/{}/export", ean(3).expose()),
            Some(&token("privacy_officer")),
            None,
        )
        .expect("answered");
    assert_eq!(status, 200);
    assert!(flood.len() > 512, "the flood stays open until here");
    drop(flood);
    svc.stop();
}

/// With `ingest.corrections` at its default (off), a correction published on the broker is
/// a counted reject: the stored value stays. Turned on, the same correction is applied and
/// its audit line names the publisher role, `mqtt/corrections`.
#[test]
fn corrections_are_refused_unless_turned_on() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let original = readings(5_000_000, 1);
    let corrected = vec![Reading {
        value: 5_000_500,
        ..original[0]
    }];
    let topic = |kind: &str| format!("meters/{}/{kind}", ean(50).expose());
    let stored = |dirs: &ServiceDirs| {
        let store = dirs.open_store();
        let p = dirs.pseudonymiser().ean(&ean(50));
        let t = original[0].time;
        let end = jiff::Timestamp::from_second(t.as_second() + 1).expect("t");
        meterstand_store::ReadingStore::readings(
            &store,
            p,
            meterstand_model::Tier::Interval,
            t,
            end,
        )
        .expect("read")
        .iter()
        .map(|r| r.value)
        .collect::<Vec<_>>()
    };

    let svc = Spawned::start(&dirs, &broker.url(), &[]);
    let mut publisher = Publisher::connect(broker.port, "access-corrections");
    publisher.publish(&topic("json"), json_payload(&meter_id(50), &original));
    publisher.publish(
        &topic("correction/json"),
        json_payload(&meter_id(50), &corrected),
    );
    publisher.wait_acked();
    svc.wait_acked(2, Duration::from_secs(60));
    let refused = svc
        .http("GET", "/metrics", Some(&token("operator")), None)
        .map(|(_, body)| {
            meterstand_testkit::http::parse_metric(
                &body,
                r#"meterstand_ingest_rejected_total{reason="corrections_disabled"}"#,
            )
        })
        .expect("metrics");
    assert_eq!(refused, Some(1.0));
    svc.stop();
    assert_eq!(stored(&dirs), vec![5_000_000], "the correction was applied");
    assert!(audit_lines(&dirs, "correction").is_empty());

    let on = [("METERSTAND__INGEST__CORRECTIONS", "true")];
    let svc = Spawned::start(&dirs, &broker.url(), &on);
    publisher.publish(
        &topic("correction/json"),
        json_payload(&meter_id(50), &corrected),
    );
    publisher.wait_acked();
    svc.wait_acked(1, Duration::from_secs(60));
    svc.stop();
    assert_eq!(stored(&dirs), vec![5_000_500]);
    let lines = audit_lines(&dirs, "correction");
    assert_eq!(lines.len(), 1, "{lines:#?}");
    assert!(
        lines[0].contains(r#""actor":{"component":"mqtt/corrections","kind":"system"}"#),
        "{}",
        lines[0]
    );
}
