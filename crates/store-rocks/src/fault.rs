//! Fault injection for tests of failure paths: a store can be told that its next N block
//! reads of a tier, or its next N group writes, fail like a disk error would. Per store,
//! disarmed unless a test arms it; in production each check is one relaxed atomic load.

use std::sync::atomic::{AtomicU32, Ordering};

use meterstand_model::Tier;
use meterstand_store::StoreError;

/// Where a failure can be injected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultPoint {
    /// Reading a tier's blocks before a merge.
    BlockRead(Tier),
    /// Writing a group's batch.
    GroupWrite,
    /// Decoding a stored block of a tier (as if it were corrupt on disk).
    BlockDecode(Tier),
    /// The final flush when the store closes.
    CloseFlush,
}

impl FaultPoint {
    fn index(self) -> usize {
        match self {
            FaultPoint::BlockRead(t) => t as usize,
            FaultPoint::GroupWrite => 3,
            FaultPoint::BlockDecode(t) => 4 + t as usize,
            FaultPoint::CloseFlush => 7,
        }
    }
}

/// Fault injection into a child process, for the end-to-end tests that need a store failing
/// under the real binary (`crates/meterstand/tests/ingest.rs`): `group_write` makes every
/// group write fail, as a disk that stopped taking writes would; `close_flush` makes the
/// final flush at close fail. Read once at open; unset in production.
pub const FAULT_ENV: &str = "METERSTAND_CRASH_TEST_FAULT";

/// Failures still to inject, per point.
#[derive(Debug, Default)]
pub(crate) struct Faults([AtomicU32; 8]);

impl Faults {
    /// Arms what [`FAULT_ENV`] names; unknown names are ignored with a warning.
    pub(crate) fn arm_from_env(&self) {
        let Some(spec) = std::env::var_os(FAULT_ENV) else {
            return;
        };
        match spec.to_str() {
            Some("group_write") => {
                tracing::warn!(hook = FAULT_ENV, "every group write will fail (test fault)");
                self.arm(FaultPoint::GroupWrite, u32::MAX);
            }
            Some("close_flush") => {
                tracing::warn!(hook = FAULT_ENV, "the final flush will fail (test fault)");
                self.arm(FaultPoint::CloseFlush, 1);
            }
            _ => tracing::warn!(hook = FAULT_ENV, "unknown test fault ignored"),
        }
    }

    pub(crate) fn arm(&self, point: FaultPoint, times: u32) {
        self.0[point.index()].store(times, Ordering::SeqCst);
    }

    /// Whether an armed failure of `point` fires now (consuming it).
    pub(crate) fn fires(&self, point: FaultPoint) -> bool {
        self.check(point).is_err()
    }

    pub(crate) fn check(&self, point: FaultPoint) -> Result<(), StoreError> {
        let slot = &self.0[point.index()];
        if slot.load(Ordering::Relaxed) == 0 {
            return Ok(());
        }
        match slot.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)) {
            Ok(_) => Err(StoreError::engine(
                "an injected fault",
                std::io::Error::other(format!("injected failure at {point:?}")),
            )),
            Err(_) => Ok(()),
        }
    }
}
