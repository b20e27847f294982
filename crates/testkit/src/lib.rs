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

/// Set to `1` (as `.ci/run` does) to make a test that lacks an outside tool fail instead of
/// skipping that part.
pub const REQUIRE_TOOLS_ENV: &str = "METERSTAND_REQUIRE_TOOLS";

/// A test's outside tool is missing: fails the test when [`REQUIRE_TOOLS_ENV`] is `1`,
/// otherwise says plainly what is skipped and why.
pub fn tool_missing(what_is_skipped: &str, why: &str) {
    if std::env::var(REQUIRE_TOOLS_ENV).is_ok_and(|v| v == "1") {
        panic!(
            "{what_is_skipped}: {why} ({REQUIRE_TOOLS_ENV}=1, so this fails instead of skipping)"
        );
    }
    eprintln!("SKIPPED {what_is_skipped}: {why}");
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

/// How bytes can be spelled in a file: as they are, or as hex digits in lower or upper case
/// (RocksDB's info LOG prints keys as uppercase hex, a `Debug` or `Display` of a hash as
/// lowercase hex).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ByteForm {
    Raw,
    LowerHex,
    UpperHex,
}

impl ByteForm {
    pub const ALL: [ByteForm; 3] = [ByteForm::Raw, ByteForm::LowerHex, ByteForm::UpperHex];

    /// `bytes` spelled in this form.
    pub fn spell(self, bytes: &[u8]) -> Vec<u8> {
        const LOWER: &[u8; 16] = b"0123456789abcdef";
        const UPPER: &[u8; 16] = b"0123456789ABCDEF";
        let digits = match self {
            ByteForm::Raw => return bytes.to_vec(),
            ByteForm::LowerHex => LOWER,
            ByteForm::UpperHex => UPPER,
        };
        bytes
            .iter()
            .flat_map(|b| [digits[usize::from(b >> 4)], digits[usize::from(b & 0x0f)]])
            .collect()
    }
}

/// A file holding some bytes in some form, as [`files_containing_any_form`] finds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Trace {
    pub file: PathBuf,
    pub form: ByteForm,
}

/// The files below `dir` (recursively, every file: SST, WAL, MANIFEST, RocksDB's `LOG` and
/// `LOG.old.*`, anything else) that hold `needle` in any [`ByteForm`]: raw, lowercase hex or
/// uppercase hex. One [`Trace`] per file and form found, sorted. What a test of erasure
/// scans for: erased bytes must leave no trace, spelled any way.
pub fn files_containing_any_form(dir: &Path, needle: &[u8]) -> Vec<Trace> {
    if needle.is_empty() {
        return Vec::new();
    }
    let forms: Vec<(ByteForm, Vec<u8>)> = ByteForm::ALL
        .into_iter()
        .map(|form| (form, form.spell(needle)))
        .collect();
    let mut traces = Vec::new();
    for file in files_below(dir) {
        let bytes = std::fs::read(&file).unwrap_or_default();
        for (form, spelled) in &forms {
            if bytes
                .windows(spelled.len())
                .any(|w| w == spelled.as_slice())
            {
                traces.push(Trace {
                    file: file.clone(),
                    form: *form,
                });
            }
        }
    }
    traces.sort();
    traces
}

/// A quarter-hour boundary `quarters` quarter-hours before now.
pub fn quarters_ago(quarters: i64) -> jiff::Timestamp {
    let now = jiff::Timestamp::now().as_second() / 900 * 900;
    jiff::Timestamp::from_second(now - quarters * 900).expect("in range")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_containing_any_form_finds_raw_and_both_hex_spellings() {
        let dir = tempfile::tempdir().expect("tempdir");
        let needle = [0x00, 0x01, 0xab, 0xcd, 0xef, 0x7f];
        assert_eq!(ByteForm::LowerHex.spell(&needle), b"0001abcdef7f");
        assert_eq!(ByteForm::UpperHex.spell(&needle), b"0001ABCDEF7F");
        let sub = dir.path().join("sub");
        std::fs::create_dir_all(&sub).expect("mkdir");
        let raw = [&b"before "[..], &needle, b" after"].concat();
        std::fs::write(dir.path().join("000007.sst"), &raw).expect("write");
        std::fs::write(dir.path().join("LOG"), b"key: '0001ABCDEF7F02' seq").expect("write");
        std::fs::write(sub.join("LOG.old.1"), b"v1-0001abcdef7f").expect("write");
        // Mixed case, or one digit short, is not the needle.
        std::fs::write(dir.path().join("OPTIONS"), b"0001abCDef7f 0001ABCDEF7").expect("write");
        let traces = files_containing_any_form(dir.path(), &needle);
        let found: Vec<(String, ByteForm)> = traces
            .iter()
            .map(|t| {
                let name = t.file.file_name().expect("name").to_string_lossy();
                (name.into_owned(), t.form)
            })
            .collect();
        assert_eq!(found.len(), 3, "{traces:?}");
        for expected in [
            ("000007.sst".to_string(), ByteForm::Raw),
            ("LOG".to_string(), ByteForm::UpperHex),
            ("LOG.old.1".to_string(), ByteForm::LowerHex),
        ] {
            assert!(found.contains(&expected), "{expected:?} not in {found:?}");
        }
        assert!(files_containing_any_form(dir.path(), &[0x42; 8]).is_empty());
        assert!(files_containing_any_form(dir.path(), &[]).is_empty());
    }
}
