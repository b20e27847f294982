//! The ordered shutdown as the supervisor sees it: SIGTERM closes the store on every path,
//! and a final flush that fails ends the process non-zero (it used to be skipped, the store
//! closed later on a worker thread and `run` exited 0).

mod common;

use std::time::{Duration, Instant};

use common::*;

#[test]
fn a_failed_final_flush_ends_the_process_non_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    let mut svc = Spawned::start(
        &dirs,
        &broker.url(),
        &[("METERSTAND_CRASH_TEST_FAULT", "close_flush")],
    );
    signal(&svc.child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = svc.child.try_wait().expect("wait") {
            break status;
        }
        assert!(Instant::now() < deadline, "no exit after SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(
        !status.success(),
        "the flush failed, yet it exited {status}"
    );
    let log = std::fs::read_to_string(&dirs.log).unwrap_or_default();
    assert!(log.contains("closing the store"), "{log}");
}

#[test]
fn sigterm_closes_the_store_and_exits_zero() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let broker = Mosquitto::start_in(&tmp.path().join("mosquitto"));
    let dirs = ServiceDirs::new(&tmp.path().join("svc"));
    Spawned::start(&dirs, &broker.url(), &[]).stop();
    // Closed, not merely dropped: the store opens at once (no lock held) with an empty WAL.
    let store = dirs.open_store();
    store.close().expect("close");
}
