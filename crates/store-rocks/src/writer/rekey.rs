//! Re-keying after a key rotation, in the group that first sees a connection under its new
//! pseudonym: the connection record moves from the older pseudonym to the current one, and
//! the subject's state (objection, erasure, seal) is carried to the current one, so that
//! one state holds across every key version.

use meterstand_pseudonym::Pseudonym;
use meterstand_store::{IngestItem, StoreError, SubjectState};
use rocksdb::WriteBatch;

use crate::engine::{CF_CONNECTIONS, Shared, encode_connection};
use crate::{metrics, subjects};

/// What re-keying changed in memory, to undo if the group's batch is not written.
#[derive(Default)]
pub(super) struct Rekeyed {
    /// Records moved, (old, new), in order.
    moved: Vec<(Pseudonym, Pseudonym)>,
    /// States carried to a new pseudonym, with the state it had before.
    carried: Vec<(Pseudonym, SubjectState)>,
}

/// Moves records and carries states for the items of a group that name older pseudonyms,
/// in memory (for the gate) and in `batch`.
pub(super) fn rekey<'a>(
    shared: &Shared,
    items: impl Iterator<Item = &'a IngestItem> + Clone,
    batch: &mut WriteBatch,
) -> Result<Rekeyed, StoreError> {
    let mut done = Rekeyed::default();
    // With one key version (the usual case) no item names an older pseudonym.
    if items.clone().all(|i| i.previous.is_empty()) {
        return Ok(done);
    }
    let cf = shared.cf(CF_CONNECTIONS)?;
    let mut connections = shared.connections.write();
    let mut states = shared.subjects.write();
    for item in items.filter(|i| !i.previous.is_empty()) {
        let old_state = SubjectState::union_all(
            item.previous
                .iter()
                .map(|p| subjects::state_in(&states, *p)),
        );
        let current = subjects::state_in(&states, item.connection);
        let merged = current.union(old_state);
        if merged != current {
            shared.put_subject_state(batch, &[item.connection], merged)?;
            subjects::remember(&mut states, &[item.connection], merged);
            done.carried.push((item.connection, current));
        }
        if connections.contains_key(&item.connection) {
            continue;
        }
        let Some(old) = item
            .previous
            .iter()
            .find(|old| connections.contains_key(old))
            .copied()
        else {
            continue;
        };
        if let Some(c) = connections.remove(&old) {
            batch.delete_cf(cf, old.to_bytes());
            batch.put_cf(cf, item.connection.to_bytes(), encode_connection(&c));
            connections.insert(item.connection, c);
            done.moved.push((old, item.connection));
            metrics::REKEYED.inc();
        }
    }
    Ok(done)
}

/// Puts back what `rekey` changed in memory (its batch was not written).
pub(super) fn undo(shared: &Shared, done: &Rekeyed) {
    if done.moved.is_empty() && done.carried.is_empty() {
        return;
    }
    let mut connections = shared.connections.write();
    for (old, new) in done.moved.iter().rev() {
        if let Some(c) = connections.remove(new) {
            connections.insert(*old, c);
        }
    }
    let mut states = shared.subjects.write();
    for (p, before) in done.carried.iter().rev() {
        subjects::remember(&mut states, &[*p], *before);
    }
}
