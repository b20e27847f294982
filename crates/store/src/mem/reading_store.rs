//! `ReadingStore` for [`MemStore`]: the store interface over the in-memory state.

#[allow(unused_imports)]
use super::*;

impl ReadingStore for MemStore {
    fn connection(&self, p: Pseudonym) -> Result<Option<Connection>, StoreError> {
        Ok(self.state.lock().connections.get(&p).cloned())
    }

    fn put_connection(
        &self,
        all: &[Pseudonym],
        connection: Connection,
    ) -> Result<ErasureReceipt, StoreError> {
        let Some(current) = all.first().copied() else {
            return Err(StoreError::InvalidQuery("no pseudonym given".into()));
        };
        let mut state = self.state.lock();
        let remove = TierSet::ALL.minus(connection.consent.allowed_tiers());
        let receipt = self.remove_tiers(&mut state, all, remove);
        let subject = state
            .subject_of(all)
            .after_registration(connection.consent, self.clock.now());
        state.set_subject(all, subject);
        for old in &all[1..] {
            state.connections.remove(old);
        }
        state.connections.insert(current, connection);
        Ok(receipt)
    }

    fn erase(&self, pseudonyms: &[Pseudonym]) -> Result<ErasureReceipt, StoreError> {
        let mut state = self.state.lock();
        let mut receipt = self.remove_tiers(&mut state, pseudonyms, TierSet::ALL);
        for p in pseudonyms {
            if state.connections.remove(p).is_some() {
                receipt.connection = 1;
            }
            let before = state.meters.len();
            state.meters.retain(|(c, _)| c != p);
            receipt.meters += (before - state.meters.len()) as u64;
        }
        let subject = state.subject_of(pseudonyms).after_erasure(self.clock.now());
        state.set_subject(pseudonyms, subject);
        Ok(receipt)
    }

    fn set_objection(&self, all: &[Pseudonym], objected: bool) -> Result<(), StoreError> {
        let mut state = self.state.lock();
        let subject = state
            .subject_of(all)
            .after_objection(objected, self.clock.now());
        state.set_subject(all, subject);
        Ok(())
    }

    fn subject_state(&self, all: &[Pseudonym]) -> Result<SubjectState, StoreError> {
        Ok(self.state.lock().subject_of(all))
    }

    fn knows(&self, p: Pseudonym) -> Result<bool, StoreError> {
        let state = self.state.lock();
        Ok(state.connections.contains_key(&p) || state.readings.keys().any(|k| k.1 == p))
    }

    fn export(&self, pseudonyms: &[Pseudonym]) -> Result<SubjectExport, StoreError> {
        let mut export = SubjectExport {
            state: self.subject_state(pseudonyms)?,
            ..SubjectExport::default()
        };
        for p in pseudonyms {
            if export.connection.is_none() {
                export.connection = self.connection(*p)?;
            }
            for tier in Tier::ALL {
                let readings = self.readings(*p, tier, Timestamp::MIN, Timestamp::MAX)?;
                export.tier_mut(tier).extend(readings);
            }
            let state = self.state.lock();
            export
                .meters
                .extend(state.meters.iter().filter(|(c, _)| c == p).map(|(_, m)| *m));
            for ((tier, q, register, time), at) in &state.corrected {
                if q == p
                    && *time >= self.horizon(*tier)
                    && let (Ok(time), Ok(at)) =
                        (Timestamp::from_second(*time), Timestamp::from_second(*at))
                {
                    export.corrected.insert((*tier, *register, time), at);
                }
            }
        }
        Ok(export)
    }

    fn readings(
        &self,
        p: Pseudonym,
        tier: Tier,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<Reading>, StoreError> {
        let state = self.state.lock();
        let mut out = Vec::new();
        for register in Register::ALL {
            self.scan(&state, p, register, tier, from, to, |time, value| {
                out.push(Reading {
                    register,
                    time,
                    value,
                });
            });
        }
        out.sort_by_key(|r| (r.time, r.register));
        Ok(out)
    }

    fn members(
        &self,
        tier: Tier,
        kind: RegisterKind,
        bounds: &[Timestamp],
        f: &mut dyn FnMut(Member<'_>),
    ) -> Result<(), StoreError> {
        let state = self.state.lock();
        let members: BTreeSet<Pseudonym> = state
            .readings
            .keys()
            .filter(|k| k.0 == tier)
            .map(|k| k.1)
            .collect();
        for p in members {
            let values = self.boundary_values(&state, p, kind, tier, bounds);
            if values
                .per_register
                .iter()
                .all(|v| v.iter().all(Option::is_none))
            {
                continue;
            }
            f(Member {
                pseudonym: p,
                connection: state.connections.get(&p),
                state: state.subject(&p),
                values: &values,
            });
        }
        Ok(())
    }

    fn pending_periods(&self) -> Result<Vec<PendingPeriod>, StoreError> {
        let state = self.state.lock();
        Ok(PendingPeriod::list(state.pending.iter().map(
            |(&(tier, kind, start), &last)| (tier, kind, start, last),
        )))
    }

    fn freeze(
        &self,
        periods: &[FrozenPeriod],
        settled: Option<&PendingPeriod>,
    ) -> Result<u64, StoreError> {
        let mut state = self.state.lock();
        if let Some(p) = settled {
            let unit = (p.key.tier, p.key.kind, p.key.period_start.as_second());
            if state.pending.get(&unit) != Some(&p.last_write.as_second()) {
                // Written into since it was listed: computed again once quiet.
                return Ok(0);
            }
            state.pending.remove(&unit);
        }
        let mut frozen = 0;
        for period in periods {
            let key = (
                period.key.tier,
                period.key.kind,
                period.key.period_start.as_second(),
            );
            if state.statistics.contains_key(&key) {
                continue;
            }
            state.statistics.insert(key, period.rows.clone());
            state.pending.remove(&key);
            frozen += 1;
        }
        Ok(frozen)
    }

    fn is_frozen(&self, key: PeriodKey) -> Result<bool, StoreError> {
        Ok(self.state.lock().statistics.contains_key(&(
            key.tier,
            key.kind,
            key.period_start.as_second(),
        )))
    }

    fn statistics(
        &self,
        tier: Tier,
        kind: RegisterKind,
        from: Timestamp,
        to: Timestamp,
    ) -> Result<Vec<FrozenPeriod>, StoreError> {
        if let Some(pause) = self.pause.lock().take() {
            let _ = pause.entered.send(());
            let _ = pause
                .release
                .recv_timeout(std::time::Duration::from_secs(10));
        }
        let state = self.state.lock();
        let horizon = self.horizon_statistics();
        let range = (tier, kind, from.as_second().max(horizon))..(tier, kind, to.as_second());
        if range.start.2 >= range.end.2 {
            return Ok(Vec::new());
        }
        Ok(state
            .statistics
            .range(range)
            .filter_map(|((tier, kind, start), rows)| {
                Some(FrozenPeriod {
                    key: PeriodKey {
                        tier: *tier,
                        kind: *kind,
                        period_start: Timestamp::from_second(*start).ok()?,
                    },
                    rows: rows.clone(),
                })
            })
            .collect())
    }

    fn sweep_retention(&self) -> Result<TierCounts, StoreError> {
        let horizons = Tier::ALL.map(|t| self.horizon(t));
        let statistics_horizon = self.horizon_statistics();
        let mut state = self.state.lock();
        state
            .statistics
            .retain(|key, _| key.2 >= statistics_horizon);
        let mut removed = TierCounts::default();
        state.readings.retain(|key, _| {
            let keep = key.3 >= horizons[key.0 as usize];
            if !keep {
                removed.add(key.0, 1);
            }
            keep
        });
        state
            .corrected
            .retain(|key, _| key.3 >= horizons[key.0 as usize]);
        Ok(removed)
    }

    /// A test double of a backup: the directory is created and holds one file that
    /// counts the readings the copy would hold.
    fn backup(&self, dir: &std::path::Path, _keep: usize) -> Result<BackupInfo, StoreError> {
        if dir.exists() {
            return Err(StoreError::InvalidQuery(
                "the backup directory must not exist yet".into(),
            ));
        }
        let count = self.state.lock().readings.len();
        let io = |e| StoreError::engine("writing the backup", e);
        std::fs::create_dir_all(dir).map_err(io)?;
        let text = format!("readings {count}\n");
        std::fs::write(dir.join("memstore.txt"), &text).map_err(io)?;
        Ok(BackupInfo {
            files: 1,
            bytes: text.len() as u64,
            ..BackupInfo::default()
        })
    }

    fn is_healthy(&self) -> bool {
        true
    }

    fn journal_watermark(&self) -> Result<u64, StoreError> {
        Ok(self.watermark.load(std::sync::atomic::Ordering::SeqCst))
    }

    fn set_journal_watermark(&self, seq: u64) -> Result<(), StoreError> {
        self.watermark
            .store(seq, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    }

    fn prune_journal(&self, _seq: u64) -> Result<(), StoreError> {
        Ok(())
    }

    fn audit_anchor(&self) -> Result<Option<crate::AuditAnchor>, StoreError> {
        Ok(*self.audit_anchor.lock())
    }

    fn set_audit_anchor(&self, anchor: &crate::AuditAnchor) -> Result<(), StoreError> {
        *self.audit_anchor.lock() = Some(*anchor);
        Ok(())
    }
}
