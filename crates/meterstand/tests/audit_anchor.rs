//! The audit log fails closed (docs/design.md, "Audit log"): lines removed from its end while
//! the service is stopped are found against the head the store anchored — at start-up (an
//! error line, `meterstand_audit_chain_intact` 0, the service keeps serving) and by
//! `meterstand audit verify`, which exits 1 naming the gap until an operator acknowledges it.
//! A restore and a key rotation each write their line. The real binary, a real Mosquitto.

mod common;

use std::process::Output;
use std::time::{Duration, Instant};

use common::*;

/// The CLI with everything the operator's shell would have: the key file and the audit log
/// of the test's service, and a login name.
fn operator(dirs: &ServiceDirs, args: &[&str]) -> Output {
    cli_command(dirs, args)
        .env("USER", "op-anna")
        .output()
        .expect("run meterstand")
}

fn json_lines(dirs: &ServiceDirs) -> Vec<serde_json::Value> {
    std::fs::read_to_string(&dirs.audit)
        .expect("audit log")
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect()
}

fn wait_metric(svc: &Spawned, name: &str, value: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let now = svc.metric(name);
        if now == Some(value) {
            return;
        }
        assert!(Instant::now() < deadline, "{name} is {now:?}, not {value}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_tail_removed_while_stopped_is_reported_at_start_and_by_verify() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(tmp.path());
    let svc = Spawned::start(&dirs, &broker.url(), &[]);
    // Audited calls: refused ones are lines too.
    for _ in 0..5 {
        let (status, _) = svc
            .http("GET", "/v1/statistics", None, None)
            .expect("an answer");
        assert_eq!(status, 401);
    }
    assert_eq!(svc.metric("meterstand_audit_chain_intact"), Some(1.0));
    svc.stop();

    // The insider removes the last three lines (their own calls) while nothing runs.
    let text = std::fs::read_to_string(&dirs.audit).expect("audit log");
    let lines: Vec<&str> = text.lines().collect();
    assert!(lines.len() >= 6, "{text}");
    let last = json_lines(&dirs).last().expect("a line")["seq"]
        .as_u64()
        .expect("seq");
    let kept = lines[..lines.len() - 3].join("\n") + "\n";
    std::fs::write(&dirs.audit, kept).expect("cut the tail");
    let (ends, anchored) = (last - 3, last);

    // Offline, against the anchor in the stopped service's store.
    let out = operator(&dirs, &["audit", "verify"]);
    let said = text_of(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "log ends at sequence {ends}, anchor says {anchored}: 3 lines missing"
        )),
        "{said}"
    );

    // Start-up: an error line, the gauge at 0, and the service keeps serving.
    let svc = Spawned::start(&dirs, &broker.url(), &[]);
    wait_metric(&svc, "meterstand_audit_chain_intact", 0.0);
    assert!(svc.metric("meterstand_audit_head_sequence").is_some());
    assert_eq!(
        svc.http("GET", "/readyz", None, None).map(|r| r.0),
        Some(200)
    );
    let log = std::fs::read_to_string(&dirs.log).expect("service log");
    let reported = log
        .lines()
        .find(|l| l.contains("audit log does not reach the head anchored in the store"))
        .unwrap_or_else(|| panic!("no error line in:\n{log}"));
    assert!(reported.contains("ERROR"), "{reported}");
    assert!(reported.contains("missing=3"), "{reported}");

    // With the service running (it holds the store): verify still reads the anchor, and the
    // gap the service recorded keeps it failing, named.
    let out = operator(&dirs, &["audit", "verify"]);
    let said = text_of(&out);
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(&format!(
            "the log ended at sequence {ends}, the anchor said {anchored}: 3 lines missing"
        )),
        "{said}"
    );
    let gap = json_lines(&dirs)
        .iter()
        .find(|l| l["action"] == "audit.gap")
        .and_then(|l| l["seq"].as_u64())
        .expect("an audit.gap line");
    assert_eq!(
        gap,
        ends + 1,
        "the gap line is the first line after the cut"
    );

    // Until the operator acknowledges it, with a reason, as a line of its own.
    let out = operator(
        &dirs,
        &[
            "audit",
            "acknowledge",
            "--gap",
            &gap.to_string(),
            "--reason",
            "three lines restored to the incident file",
        ],
    );
    assert!(out.status.success(), "{}", text_of(&out));
    let out = operator(&dirs, &["audit", "verify"]);
    assert!(out.status.success(), "{}", text_of(&out));
    let ack = json_lines(&dirs)
        .into_iter()
        .find(|l| l["action"] == "audit.gap_acknowledged")
        .expect("the acknowledgement");
    assert_eq!(ack["actor"]["kind"], "operator");
    assert_eq!(ack["actor"]["user"], "op-anna");
    // The service takes the operator's line into its chain with its next one.
    assert!(svc.metric("meterstand_audit_head_sequence").is_some());
    svc.stop();
    let out = operator(&dirs, &["audit", "verify"]);
    assert!(out.status.success(), "{}", text_of(&out));
}

#[test]
fn a_restore_and_a_key_rotation_write_their_lines() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(tmp.path());
    let svc = Spawned::start(&dirs, &broker.url(), &[]);
    let (status, body) = svc
        .http(
            "POST",
            "/v1/backups",
            Some(&token("operator")),
            Some(r#"{"name":"nightly"}"#),
        )
        .expect("backup");
    assert_eq!(status, 200, "{body}");
    svc.stop();

    let backup = dirs.root.join("backups").join("nightly");
    let out = operator(
        &dirs,
        &[
            "restore",
            "--from",
            &backup.display().to_string(),
            "--force",
        ],
    );
    assert!(out.status.success(), "{}", text_of(&out));
    let lines = json_lines(&dirs);
    let restore = lines.last().expect("a line");
    assert_eq!(restore["action"], "store.restore", "{restore}");
    assert_eq!(restore["outcome"], "ok");
    assert_eq!(restore["actor"]["kind"], "operator");
    assert_eq!(restore["actor"]["user"], "op-anna");
    assert_eq!(restore["params"]["backup"], "nightly");
    assert_eq!(restore["params"]["replayed"], "0");
    assert!(
        restore["params"]["taken"]
            .as_str()
            .is_some_and(|t| t.len() > 10)
    );
    assert!(restore["key_version"].as_u64() == Some(1), "{restore}");
    // Anchored in the restored store: verify reads that anchor and agrees.
    let out = operator(&dirs, &["audit", "verify"]);
    assert!(out.status.success(), "{}", text_of(&out));
    assert!(
        text_of(&out).contains(&format!(
            "sequence {}",
            restore["seq"].as_u64().expect("seq")
        )),
        "{}",
        text_of(&out)
    );

    let out = operator(
        &dirs,
        &[
            "keygen",
            "--out",
            &dirs.key_file.display().to_string(),
            "--rotate",
        ],
    );
    assert!(out.status.success(), "{}", text_of(&out));
    let rotate = json_lines(&dirs).pop().expect("a line");
    assert_eq!(rotate["action"], "key.rotate", "{rotate}");
    assert_eq!(rotate["params"]["version"], "2");
    // Written under the version the running service still has.
    assert_eq!(rotate["key_version"], 1);

    // The service under version 2 chains on; everything verifies with the ring.
    let svc = Spawned::start(&dirs, &broker.url(), &[]);
    assert_eq!(svc.metric("meterstand_audit_chain_intact"), Some(1.0));
    svc.stop();
    let last = json_lines(&dirs).pop().expect("a line");
    assert_eq!(last["key_version"], 2, "{last}");
    let out = operator(&dirs, &["audit", "verify"]);
    assert!(out.status.success(), "{}", text_of(&out));
}

fn text_of(out: &Output) -> String {
    format!("{}{}", text(&out.stdout), text(&out.stderr))
}
