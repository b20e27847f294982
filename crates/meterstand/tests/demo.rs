//! `meterstand demo --exit` with a small fleet: embedded broker, simulated meters, the
//! service; it must print its summary and exit 0.

mod common;

use std::process::{Command, Stdio};

use common::*;

#[test]
fn demo_with_a_small_fleet_prints_its_summary_and_exits_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let out = Command::new(METERSTAND)
        .args(["demo", "--meters", "20", "--days", "1", "--exit", "--dir"])
        .arg(tmp.path())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .stdin(Stdio::null())
        .output()
        .expect("run meterstand demo");
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "demo exited with {}: {stdout}{}",
        out.status,
        text(&out.stderr)
    );
    for expected in ["== ingested", "published readings", "== where to look"] {
        assert!(stdout.contains(expected), "no {expected:?} in:\n{stdout}");
    }
}
