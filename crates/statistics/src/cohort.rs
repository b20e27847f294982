//! One cohort across granularities: a coarse period (a day) and its fine periods (its
//! quarter-hours) count the same connections per row, or cohorts at least `k` apart.

use std::collections::BTreeSet;

use meterstand_model::{Postcode4, Profile};
use serde::{Deserialize, Serialize};

use crate::{Contribution, MemberId, Partition, Row, partition};

/// Over which cohort a coarse row is computed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CohortChoice {
    /// Everyone with a coarse figure: the two cohorts are equal or at least `k` apart.
    Coarse,
    /// Only the fine cohort: the coarse one differs from it by 1..k-1 connections. A member
    /// of the fine cohort without a coarse reading counts with the sum of its fine figures.
    Fine,
}

/// Chooses the cohort of a coarse row given the *published* fine cohort of the same row
/// (empty if the fine row is not published) and the coarse cohort. The coarse figure minus
/// the sum of the fine figures then covers the symmetric difference of the cohorts: if that
/// is 1..k-1 connections the coarse row is computed over the fine cohort (difference 0),
/// otherwise over the coarse cohort (difference 0 or at least `k`).
pub fn coarse_cohort<M: Ord>(fine: &BTreeSet<M>, coarse: &BTreeSet<M>, k: u32) -> CohortChoice {
    let differ = fine.symmetric_difference(coarse).count();
    let k = usize::try_from(k.max(1)).unwrap_or(usize::MAX);
    if differ > 0 && differ < k {
        CohortChoice::Fine
    } else {
        CohortChoice::Coarse
    }
}

/// One connection's figures in a coarse period and its fine periods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NestedContribution {
    pub member: MemberId,
    pub postcode4: Option<Postcode4>,
    pub profile: Option<Profile>,
    /// Consumption over the coarse period (both boundary readings), if known.
    pub coarse: Option<u64>,
    /// Consumption per fine period, in order; `None` where it is not known. Counted only if
    /// complete (one `Some` per fine period).
    pub fine: Vec<Option<u64>>,
}

impl NestedContribution {
    fn complete_fine(&self, periods: usize) -> Option<Vec<u64>> {
        if self.fine.len() != periods {
            return None;
        }
        self.fine.iter().copied().collect()
    }
}

/// The statistics of a coarse period and all its fine periods, frozen together.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NestedStatistics {
    /// The coarse period's rows and their members.
    pub coarse: Partition,
    /// Per fine period, in order: its rows and their members. Every fine period has the
    /// same rows (a subset of the coarse rows' keys) over the same members.
    pub fine: Vec<Partition>,
}

/// Freezes a coarse period (a day) together with its `fine_periods` fine periods (its 92, 96
/// or 100 quarter-hours; or a month with its days if they are frozen together).
///
/// - The fine cohort is the members with a complete fine series. Their coarse consumption is
///   the sum of their fine figures, so that both granularities add up exactly.
/// - The coarse cohort is the fine cohort plus members with a coarse figure only.
/// - One partition (see [`partition`]) over the coarse cohort fixes the rows of both.
/// - Per row, the fine rows (one per fine period) are published over that row's fine
///   members if there are at least `k` of them, else that row has no fine rows this period.
/// - Per row, the coarse row is computed over the cohort [`coarse_cohort`] picks.
///
/// So for every row, the coarse figure and the sum of its fine figures differ by 0 or at
/// least `k` connections, and every published row holds at least `k`.
pub fn freeze_nested(
    contributions: &[NestedContribution],
    fine_periods: usize,
    k: u32,
) -> NestedStatistics {
    let mut coarse_in: Vec<Contribution> = Vec::new();
    let mut fine_of: std::collections::BTreeMap<MemberId, Vec<u64>> = Default::default();
    for c in contributions {
        let fine = c.complete_fine(fine_periods);
        let coarse = match &fine {
            Some(series) => Some(series.iter().fold(0u64, |s, v| s.saturating_add(*v))),
            None => c.coarse,
        };
        let Some(consumption) = coarse else { continue };
        if let Some(series) = fine {
            fine_of.insert(c.member, series);
        }
        coarse_in.push(Contribution {
            member: c.member,
            postcode4: c.postcode4,
            profile: c.profile.clone(),
            consumption,
        });
    }
    let consumption_of: std::collections::BTreeMap<MemberId, u64> = coarse_in
        .iter()
        .map(|c| (c.member, c.consumption))
        .collect();
    let layout = partition(&coarse_in, k);
    let k_len = usize::try_from(k.max(1)).unwrap_or(usize::MAX);

    let mut out = NestedStatistics {
        coarse: Partition::default(),
        fine: vec![Partition::default(); fine_periods],
    };
    for (row, members) in layout.rows.iter().zip(&layout.members) {
        let coarse: BTreeSet<MemberId> = members.iter().copied().collect();
        let mut fine: BTreeSet<MemberId> = members
            .iter()
            .copied()
            .filter(|m| fine_of.contains_key(m))
            .collect();
        if fine.len() < k_len {
            fine.clear();
        }
        let counted: Vec<MemberId> = match coarse_cohort(&fine, &coarse, k) {
            CohortChoice::Coarse => coarse.iter().copied().collect(),
            CohortChoice::Fine => fine.iter().copied().collect(),
        };
        out.coarse.rows.push(Row {
            connections: u32::try_from(counted.len()).unwrap_or(u32::MAX),
            consumption: counted
                .iter()
                .map(|m| consumption_of.get(m).copied().unwrap_or(0))
                .fold(0u64, u64::saturating_add),
            ..row.clone()
        });
        out.coarse.members.push(counted);
        if fine.is_empty() {
            continue;
        }
        let fine: Vec<MemberId> = fine.into_iter().collect();
        for (period, part) in out.fine.iter_mut().enumerate() {
            part.rows.push(Row {
                connections: u32::try_from(fine.len()).unwrap_or(u32::MAX),
                consumption: fine
                    .iter()
                    .filter_map(|m| fine_of.get(m).and_then(|s| s.get(period)).copied())
                    .fold(0u64, u64::saturating_add),
                ..row.clone()
            });
            part.members.push(fine.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(ids: std::ops::Range<u64>) -> BTreeSet<u64> {
        ids.collect()
    }

    #[test]
    fn cohorts_one_to_k_minus_one_apart_use_the_fine_one() {
        let k = 10;
        assert_eq!(
            coarse_cohort(&set(0..10), &set(0..10), k),
            CohortChoice::Coarse
        );
        assert_eq!(
            coarse_cohort(&set(0..10), &set(0..11), k),
            CohortChoice::Fine
        );
        assert_eq!(
            coarse_cohort(&set(0..10), &set(0..19), k),
            CohortChoice::Fine
        );
        assert_eq!(
            coarse_cohort(&set(0..10), &set(0..20), k),
            CohortChoice::Coarse
        );
        // An unpublished fine row: the coarse row stands alone.
        assert_eq!(
            coarse_cohort(&set(0..0), &set(0..12), k),
            CohortChoice::Coarse
        );
    }

    fn member(id: u64, coarse: Option<u64>, fine: Vec<Option<u64>>) -> NestedContribution {
        NestedContribution {
            member: MemberId::from(id),
            postcode4: Some(Postcode4::new(1000).expect("postcode")),
            profile: Some("E1A".parse().expect("profile")),
            coarse,
            fine,
        }
    }

    #[test]
    fn ten_interval_and_one_daily_publish_the_day_over_the_ten() {
        let mut fleet: Vec<_> = (0..10)
            .map(|i| member(i, Some(40), vec![Some(10); 4]))
            .collect();
        fleet.push(member(10, Some(1000), vec![]));
        let s = freeze_nested(&fleet, 4, 10);
        assert_eq!(s.coarse.rows.len(), 1);
        assert_eq!(s.coarse.rows[0].connections, 10);
        assert_eq!(s.coarse.rows[0].consumption, 400);
        for q in &s.fine {
            assert_eq!(q.rows[0].connections, 10);
            assert_eq!(q.rows[0].consumption, 100);
        }
    }

    #[test]
    fn cohorts_k_apart_publish_both_over_their_own() {
        let mut fleet: Vec<_> = (0..10)
            .map(|i| member(i, Some(40), vec![Some(10); 4]))
            .collect();
        // Ten daily-consent members, and one with a gap in its quarter-hours.
        fleet.extend((10..19).map(|i| member(i, Some(7), vec![])));
        fleet.push(member(19, Some(7), vec![Some(1), None, Some(2), Some(4)]));
        let s = freeze_nested(&fleet, 4, 10);
        assert_eq!(s.coarse.rows[0].connections, 20);
        assert_eq!(s.coarse.rows[0].consumption, 400 + 70);
        assert_eq!(s.fine[2].rows[0].connections, 10);
    }

    #[test]
    fn a_fine_row_below_k_is_not_published_and_the_day_stands_alone() {
        let mut fleet: Vec<_> = (0..4)
            .map(|i| member(i, Some(40), vec![Some(10); 4]))
            .collect();
        fleet.extend((4..14).map(|i| member(i, Some(7), vec![])));
        let s = freeze_nested(&fleet, 4, 10);
        assert_eq!(s.coarse.rows[0].connections, 14);
        assert!(s.fine.iter().all(|q| q.rows.is_empty()));
    }
}
