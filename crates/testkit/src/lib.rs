//! Fixtures shared by meterstand's test suites, so that every suite starts brokers, makes
//! identifiers and speaks HTTP the same way: EANs with valid check digits, fleets of simulated
//! connections, a real Mosquitto on a free port (never a fixed one), an HTTP client, a QoS 1
//! publisher that keeps a ledger of what the broker acknowledged, and seeded randomness that
//! names its seed when a test fails.
//!
//! It depends on neither the RocksDB store nor the binary, so that the API and ingest crates
//! can test with it without building RocksDB.

pub mod bench;
pub mod certs;
pub mod fleet;
pub mod http;
pub mod ids;
pub mod mosquitto;
pub mod publisher;
pub mod seed;

pub use certs::{TestCa, https_client};
pub use fleet::Fleet;
pub use http::{Http, Response};
pub use ids::{bad_check_digit, ean, ean_from, meter_id};
pub use mosquitto::{Mosquitto, TlsBroker, free_port, wait_for_port};
pub use publisher::{Ledger, Publisher};
pub use seed::Seed;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// Polls `done` every 20 ms until it holds; panics naming `what` after `within`.
pub fn eventually(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !done() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every file below `dir`, recursively.
pub fn files_below(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p)
            } else {
                out.push(p)
            }
        }
    }
    out
}

/// The files below `dir` that contain `needle` anywhere in their bytes.
pub fn files_containing(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    files_below(dir)
        .into_iter()
        .filter(|f| {
            let bytes = std::fs::read(f).unwrap_or_default();
            !needle.is_empty() && bytes.windows(needle.len()).any(|w| w == needle)
        })
        .collect()
}

/// A quarter-hour boundary `quarters` quarter-hours before now.
pub fn quarters_ago(quarters: i64) -> jiff::Timestamp {
    let now = jiff::Timestamp::now().as_second() / 900 * 900;
    jiff::Timestamp::from_second(now - quarters * 900).expect("in range")
}
