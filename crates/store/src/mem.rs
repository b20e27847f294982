//! An in-memory [`ReadingStore`] with the same gate, merge, retention and erasure rules as
//! the RocksDB engine, for unit tests of the API and ingest (no database to build or open).
//! The conformance tests in [`crate::conformance`] hold both backends to the same behaviour.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::mpsc;

use jiff::Timestamp;
use meterstand_model::{
    Calendar, Connection, ConsentLevel, Reading, Register, RegisterKind, Tier, TierSet,
};
use meterstand_pseudonym::Pseudonym;
use parking_lot::Mutex;

use meterstand_statistics::Row;

use crate::periods::{self, BoundaryValues};
use crate::{
    BackupInfo, Clock, Correction, ErasureReceipt, FrozenPeriod, IngestItem, Kept, Member,
    PendingPeriod, PeriodKey, ReadingStore, ReadingWriter, RetentionPolicy, StoreError,
    SubjectExport, SubjectState, TierCounts, WriteOutcome,
};

/// (tier, connection, register, time in seconds) → cumulative value.
type Key = (Tier, Pseudonym, Register, i64);

mod reading_store;

#[derive(Debug, Default)]
struct State {
    connections: HashMap<Pseudonym, Connection>,
    /// Subjects' privacy state per pseudonym (objection, erasure, seal); an erased one is
    /// gated like consent `off` until the CRM registers it again.
    subjects: HashMap<Pseudonym, SubjectState>,
    readings: BTreeMap<Key, u64>,
    /// Readings a correction replaced → when (UTC seconds), for the subject export.
    corrected: BTreeMap<Key, i64>,
    meters: BTreeSet<(Pseudonym, Pseudonym)>,
    /// Frozen statistics: (tier, kind, period start) → rows.
    statistics: BTreeMap<(Tier, RegisterKind, i64), Vec<Row>>,
    /// Units (days, months) written into and not frozen yet → their last write (seconds).
    pending: BTreeMap<(Tier, RegisterKind, i64), i64>,
}

impl State {
    fn subject(&self, p: &Pseudonym) -> SubjectState {
        self.subjects.get(p).copied().unwrap_or_default()
    }

    fn subject_of(&self, all: &[Pseudonym]) -> SubjectState {
        SubjectState::union_all(all.iter().map(|p| self.subject(p)))
    }

    fn set_subject(&mut self, all: &[Pseudonym], state: SubjectState) {
        for p in all {
            if state.is_empty() {
                self.subjects.remove(p);
            } else {
                self.subjects.insert(*p, state);
            }
        }
    }

    /// Whether a unit this tier entry feeds is frozen already.
    fn is_late(&self, calendar: &Calendar, tier: Tier, register: Register, t: Timestamp) -> bool {
        let mut late = false;
        periods::units_touched(calendar, tier, register, t, t, &mut |unit, start| {
            late |= self
                .statistics
                .contains_key(&(unit, register.kind(), start.as_second()));
        });
        late
    }

    /// Marks the units this tier entry feeds as written into at `now`.
    fn mark(
        &mut self,
        calendar: &Calendar,
        tier: Tier,
        register: Register,
        t: Timestamp,
        now: i64,
    ) {
        let pending = &mut self.pending;
        periods::units_touched(calendar, tier, register, t, t, &mut |unit, start| {
            pending.insert((unit, register.kind(), start.as_second()), now);
        });
    }
}

/// A test hook: the next statistics call says it entered, then waits for release.
#[derive(Debug)]
struct Pause {
    entered: mpsc::Sender<()>,
    release: mpsc::Receiver<()>,
}

#[derive(Debug)]
pub struct MemStore {
    state: Mutex<State>,
    default_consent: ConsentLevel,
    retention: RetentionPolicy,
    calendar: Calendar,
    clock: Arc<dyn Clock>,
    pause: Mutex<Option<Pause>>,
    watermark: std::sync::atomic::AtomicU64,
    fail_writes: std::sync::atomic::AtomicU32,
    audit_anchor: Mutex<Option<crate::AuditAnchor>>,
}

impl MemStore {
    pub fn new(clock: Arc<dyn Clock>) -> MemStore {
        MemStore::with_policy(clock, ConsentLevel::Standard, RetentionPolicy::default())
    }

    pub fn with_policy(
        clock: Arc<dyn Clock>,
        default_consent: ConsentLevel,
        retention: RetentionPolicy,
    ) -> MemStore {
        MemStore {
            state: Mutex::new(State::default()),
            default_consent,
            retention,
            calendar: Calendar::amsterdam(),
            clock,
            pause: Mutex::new(None),
            watermark: std::sync::atomic::AtomicU64::new(0),
            fail_writes: std::sync::atomic::AtomicU32::new(0),
            audit_anchor: Mutex::new(None),
        }
    }

    /// The next statistics call sends on the first channel, then blocks until the second
    /// one receives (or 10 s pass): a request held in flight.
    pub fn pause_next_statistics(&self) -> (mpsc::Receiver<()>, mpsc::Sender<()>) {
        let (entered_tx, entered_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *self.pause.lock() = Some(Pause {
            entered: entered_tx,
            release: release_rx,
        });
        (entered_rx, release_tx)
    }

    /// The next `n` writes fail with an engine error before storing anything.
    pub fn fail_next_writes(&self, n: u32) {
        self.fail_writes
            .store(n, std::sync::atomic::Ordering::SeqCst);
    }

    fn horizon(&self, tier: Tier) -> i64 {
        self.retention.horizon(tier, self.clock.now()).as_second()
    }

    fn horizon_statistics(&self) -> i64 {
        let secs = i64::try_from(self.retention.statistics.as_secs()).unwrap_or(i64::MAX);
        self.clock.now().as_second().saturating_sub(secs)
    }

    fn allowed(&self, state: &State, p: Pseudonym) -> TierSet {
        match state.connections.get(&p) {
            Some(c) => c.consent.allowed_tiers(),
            None if state.subject(&p).erased => ConsentLevel::Off.allowed_tiers(),
            None => self.default_consent.allowed_tiers(),
        }
    }

    fn write_now(&self, items: Vec<IngestItem>) -> Result<WriteOutcome, StoreError> {
        use std::sync::atomic::Ordering;
        if self
            .fail_writes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
        {
            return Err(StoreError::engine(
                "writing a batch",
                std::io::Error::other("injected write failure"),
            ));
        }
        let mut state = self.state.lock();
        let mut out = WriteOutcome::default();
        let horizons = Tier::ALL.map(|t| self.horizon(t));
        let now = self.clock.now().as_second();
        for item in items {
            rekey(&mut state, &item);
            let allowed = self.allowed(&state, item.connection);
            let mut stored_any = false;
            for tr in &item.readings {
                for tier in tr.tiers.iter() {
                    if !allowed.contains(tier) {
                        out.dropped_by_consent.add(tier, 1);
                    } else if tr.reading.time.as_second() < horizons[tier as usize] {
                        out.expired.add(tier, 1);
                    } else {
                        let key = (
                            tier,
                            item.connection,
                            tr.reading.register,
                            tr.reading.time.as_second(),
                        );
                        stored_any = true;
                        let (register, time) = (tr.reading.register, tr.reading.time);
                        match state.readings.get(&key) {
                            None => {
                                state.readings.insert(key, tr.reading.value);
                                out.stored.add(tier, 1);
                                if state.is_late(&self.calendar, tier, register, time) {
                                    out.late += 1;
                                }
                                state.mark(&self.calendar, tier, register, time, now);
                            }
                            Some(v) if *v == tr.reading.value => out.duplicates += 1,
                            Some(&old) if item.correction => {
                                state.readings.insert(key, tr.reading.value);
                                state.corrected.insert(key, now);
                                out.corrected += 1;
                                if state.is_late(&self.calendar, tier, register, time) {
                                    out.late += 1;
                                }
                                state.mark(&self.calendar, tier, register, time, now);
                                out.corrections.push(Correction {
                                    connection: item.connection,
                                    tier,
                                    register: tr.reading.register,
                                    time: tr.reading.time,
                                    old,
                                    new: tr.reading.value,
                                });
                            }
                            Some(_) => out.conflicts += 1,
                        }
                    }
                }
            }
            if stored_any {
                state.meters.insert((item.connection, item.meter));
            }
        }
        Ok(out)
    }

    /// Removes `tiers` (less the held ones) of `pseudonyms`; the receipt counts what went
    /// and what the holds keep.
    fn remove_tiers(
        &self,
        state: &mut State,
        pseudonyms: &[Pseudonym],
        tiers: TierSet,
    ) -> ErasureReceipt {
        let mut receipt = ErasureReceipt::default();
        for tier in tiers.iter() {
            let held = self.retention.erasure_hold.contains(tier);
            let mut count = 0;
            let mut latest: Option<i64> = None;
            for p in pseudonyms {
                let keys: Vec<Key> = state
                    .readings
                    .keys()
                    .filter(|(t, q, _, _)| *t == tier && q == p)
                    .copied()
                    .collect();
                count += keys.len() as u64;
                for key in keys {
                    latest = Some(latest.map_or(key.3, |l| l.max(key.3)));
                    if !held {
                        state.readings.remove(&key);
                        state.corrected.remove(&key);
                    }
                }
            }
            if held {
                if count > 0 {
                    receipt.kept.push(Kept {
                        tier,
                        count,
                        reason: self.retention.hold_reason.clone(),
                        until: self.retention.kept_until(tier, latest),
                    });
                }
            } else {
                receipt.deleted.add(tier, count);
            }
        }
        receipt
    }

    #[allow(clippy::too_many_arguments)]
    fn scan(
        &self,
        state: &State,
        p: Pseudonym,
        register: Register,
        tier: Tier,
        from: Timestamp,
        to: Timestamp,
        mut f: impl FnMut(Timestamp, u64),
    ) {
        let from_s = from.as_second().max(self.horizon(tier));
        let to_s = to.as_second();
        if from_s >= to_s {
            return;
        }
        for (key, value) in state
            .readings
            .range((tier, p, register, from_s)..(tier, p, register, to_s))
        {
            if let Ok(t) = Timestamp::from_second(key.3) {
                f(t, *value);
            }
        }
    }

    fn boundary_values(
        &self,
        state: &State,
        p: Pseudonym,
        kind: RegisterKind,
        tier: Tier,
        bounds: &[Timestamp],
    ) -> BoundaryValues {
        let mut values = BoundaryValues::default();
        let (Some(first), Some(last)) = (bounds.first(), bounds.last()) else {
            return values;
        };
        let end = Timestamp::from_second(last.as_second() + 1).unwrap_or(Timestamp::MAX);
        for register in kind.registers() {
            let mut v = vec![None; bounds.len()];
            self.scan(state, p, *register, tier, *first, end, |t, value| {
                if let Ok(i) = bounds.binary_search(&t) {
                    v[i] = Some(value);
                }
            });
            values.per_register.push(v);
        }
        values
    }
}

/// A connection record found only under an older pseudonym moves to the current one.
fn rekey(state: &mut State, item: &IngestItem) {
    if item.previous.is_empty() {
        return;
    }
    // The subject's state follows it to the new key version (an erasure or objection
    // recorded before the rotation holds under the new pseudonym too).
    let carried = state.subject_of(&item.previous);
    if !carried.is_empty() {
        let merged = state.subject(&item.connection).union(carried);
        state.subjects.insert(item.connection, merged);
    }
    if state.connections.contains_key(&item.connection) {
        return;
    }
    if let Some(old) = item
        .previous
        .iter()
        .find(|old| state.connections.contains_key(old))
        .copied()
        && let Some(c) = state.connections.remove(&old)
    {
        state.connections.insert(item.connection, c);
    }
}

impl ReadingWriter for MemStore {
    async fn write(&self, items: Vec<IngestItem>) -> Result<WriteOutcome, StoreError> {
        self.write_now(items)
    }
}
