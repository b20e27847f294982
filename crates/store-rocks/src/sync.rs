//! Group commit, second half: a thread that syncs the WAL for every group the writer has
//! written since the last sync, then answers those groups' requests in write order, so
//! acknowledgements stay in arrival order while the writer already applies the next group.

use std::sync::Arc;
use std::time::Instant;

use meterstand_model::Tier;
use meterstand_store::{StoreError, WriteOutcome};
use tokio::sync::oneshot;

use crate::engine::{Shared, engine};
use crate::metrics;

/// Written groups waiting for a WAL sync, at most: bounds the replies held while the disk
/// is slow (the writer then waits, which is the backpressure ingest passes on).
pub(crate) const SYNC_QUEUE: usize = 64;

pub(crate) type Reply = oneshot::Sender<Result<WriteOutcome, StoreError>>;

/// A group in the memtable and WAL, waiting for the sync that makes it durable.
pub(crate) struct Written {
    pub(crate) replies: Vec<(Reply, WriteOutcome)>,
    pub(crate) started: Instant,
    pub(crate) readings: usize,
}

impl Written {
    pub(crate) fn finish(self, synced: Result<(), StoreError>) {
        match synced {
            Ok(()) => {
                metrics::WRITE_SECONDS.observe(self.started.elapsed().as_secs_f64());
                metrics::GROUP_READINGS.observe(self.readings as f64);
                for (reply, outcome) in self.replies {
                    record_outcome(&outcome);
                    let _ = reply.send(Ok(outcome));
                }
            }
            Err(e) => {
                for (reply, _) in self.replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

pub(crate) fn sync_wal(shared: &Shared) -> Result<(), StoreError> {
    shared.db.flush_wal(true).map_err(engine("syncing the WAL"))
}

/// One WAL sync covers every group written before it.
pub(crate) fn sync_loop(shared: Arc<Shared>, rx: std::sync::mpsc::Receiver<Written>) {
    while let Ok(first) = rx.recv() {
        let mut groups = vec![first];
        while let Ok(more) = rx.try_recv() {
            groups.push(more);
        }
        let synced = sync_wal(&shared);
        if let Err(e) = &synced {
            tracing::error!(error = %e, "WAL sync failed; batches are not acknowledged");
        }
        for g in groups {
            g.finish(synced.clone());
        }
    }
}

fn record_outcome(o: &WriteOutcome) {
    for tier in Tier::ALL {
        let t = [tier.as_str()];
        metrics::STORED
            .with_label_values(&t)
            .inc_by(o.stored.get(tier));
        metrics::DROPPED_BY_CONSENT
            .with_label_values(&t)
            .inc_by(o.dropped_by_consent.get(tier));
        metrics::EXPIRED_ON_ARRIVAL
            .with_label_values(&t)
            .inc_by(o.expired.get(tier));
    }
    metrics::DUPLICATES.inc_by(o.duplicates);
    metrics::CONFLICTS.inc_by(o.conflicts);
    metrics::LATE_READINGS.inc_by(o.late);
}
