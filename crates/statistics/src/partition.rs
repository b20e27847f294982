//! The fixed partition of one period's connections.

use std::collections::BTreeMap;

use meterstand_model::{Postcode4, Profile};
use serde::{Deserialize, Serialize};

use crate::{Area, MemberId, ProfileCover, Row};

/// One connection's contribution to one period: its consumption in that period and the
/// attributes it is grouped by. Each member appears at most once per call.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contribution {
    pub member: MemberId,
    pub postcode4: Option<Postcode4>,
    pub profile: Option<Profile>,
    pub consumption: u64,
}

/// The published rows of a period, sorted, plus (not published) the members each row counts,
/// in the same order. `members[i]` is sorted.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Partition {
    pub rows: Vec<Row>,
    pub members: Vec<Vec<MemberId>>,
}

/// Merge level of a row, used only to break ties when folding rows into the remainder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Level {
    Region,
    Postcode,
    Cell,
}

struct Pending<'a> {
    area: Area,
    profile: ProfileCover,
    level: Level,
    members: Vec<&'a Contribution>,
}

fn area_of(p: Option<Postcode4>) -> Area {
    p.map_or(Area::Unknown, Area::Postcode4)
}

fn cover_of(p: &Option<Profile>) -> ProfileCover {
    p.clone()
        .map_or(ProfileCover::Unknown, ProfileCover::Profile)
}

/// Partitions one period's contributions into rows of at least `k` connections.
///
/// 1. Cells (postcode4, profile), unknown postcode or profile being a value of its own; a
///    cell of at least `k` is a row.
/// 2. The smaller cells of one postcode together: a row `(postcode4, *)` if at least `k`.
/// 3. What is left of the postcodes of one region (postcode2): a row `(region, *)` if at
///    least `k`. Unknown postcodes have no region and skip this step.
/// 4. What is left: the remainder `(rest, *)`. While it holds 1..k-1, the smallest row
///    (ties: the coarsest level, then the first in row order) is folded into it. If no row is
///    left and it is still below `k`, the whole period publishes nothing.
///
/// Deterministic: the result depends on the set of contributions only, not their order.
/// `k` below 1 is taken as 1.
pub fn partition(contributions: &[Contribution], k: u32) -> Partition {
    let k = usize::try_from(k.max(1)).unwrap_or(usize::MAX);
    let mut cells: BTreeMap<(Option<Postcode4>, Option<Profile>), Vec<&Contribution>> =
        BTreeMap::new();
    for c in contributions {
        cells
            .entry((c.postcode4, c.profile.clone()))
            .or_default()
            .push(c);
    }

    let mut rows: Vec<Pending<'_>> = Vec::new();
    let mut postcode_pool: BTreeMap<Option<Postcode4>, Vec<&Contribution>> = BTreeMap::new();
    for ((postcode, profile), members) in cells {
        if members.len() >= k {
            rows.push(Pending {
                area: area_of(postcode),
                profile: cover_of(&profile),
                level: Level::Cell,
                members,
            });
        } else {
            postcode_pool.entry(postcode).or_default().extend(members);
        }
    }

    let mut region_pool: BTreeMap<u8, Vec<&Contribution>> = BTreeMap::new();
    let mut rest: Vec<&Contribution> = Vec::new();
    for (postcode, members) in postcode_pool {
        if members.len() >= k {
            rows.push(Pending {
                area: area_of(postcode),
                profile: ProfileCover::Any,
                level: Level::Postcode,
                members,
            });
        } else {
            match postcode {
                Some(p) => region_pool
                    .entry(Area::region_of(p))
                    .or_default()
                    .extend(members),
                None => rest.extend(members),
            }
        }
    }

    for (region, members) in region_pool {
        if members.len() >= k {
            rows.push(Pending {
                area: Area::Region(region),
                profile: ProfileCover::Any,
                level: Level::Region,
                members,
            });
        } else {
            rest.extend(members);
        }
    }

    rows.sort_by(|a, b| (a.area, &a.profile).cmp(&(b.area, &b.profile)));
    close_remainder(&mut rows, rest, k);
    published(rows)
}

/// What is left under k after the regions: the smallest rows join it until it holds k, and
/// it becomes the remainder row (or, with nothing left to add, is not published).
fn close_remainder<'a>(rows: &mut Vec<Pending<'a>>, mut rest: Vec<&'a Contribution>, k: usize) {
    while !rest.is_empty() && rest.len() < k {
        let smallest = rows
            .iter()
            .enumerate()
            .min_by_key(|(i, r)| (r.members.len(), r.level, *i))
            .map(|(i, _)| i);
        let Some(i) = smallest else { break };
        rest.extend(rows.remove(i).members);
    }
    if rest.len() >= k {
        rows.push(Pending {
            area: Area::Remainder,
            profile: ProfileCover::Any,
            level: Level::Region,
            members: rest,
        });
    }
}

/// The rows as published: each with its sorted member ids, count and consumption.
fn published(rows: Vec<Pending<'_>>) -> Partition {
    let mut out = Partition::default();
    for pending in rows {
        let mut ids: Vec<MemberId> = pending.members.iter().map(|c| c.member).collect();
        ids.sort_unstable();
        out.rows.push(Row {
            area: pending.area,
            profile: pending.profile,
            connections: u32::try_from(ids.len()).unwrap_or(u32::MAX),
            consumption: pending
                .members
                .iter()
                .fold(0u64, |sum, c| sum.saturating_add(c.consumption)),
        });
        out.members.push(ids);
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use proptest::prelude::*;

    use super::*;
    use crate::{GroupBy, view};

    fn c(id: u64, postcode: Option<u16>, profile: Option<&str>) -> Contribution {
        Contribution {
            member: MemberId::from(id),
            postcode4: postcode.map(|p| Postcode4::new(p).expect("postcode")),
            profile: profile.map(|p| p.parse().expect("profile")),
            consumption: 100 + id,
        }
    }

    fn fleet(spec: &[(Option<u16>, Option<&str>, u64)]) -> Vec<Contribution> {
        let mut id = 0;
        let mut out = Vec::new();
        for &(postcode, profile, n) in spec {
            for _ in 0..n {
                out.push(c(id, postcode, profile));
                id += 1;
            }
        }
        out
    }

    fn shape(p: &Partition) -> Vec<(String, String, u32)> {
        p.rows
            .iter()
            .map(|r| (r.area.to_string(), r.profile.to_string(), r.connections))
            .collect()
    }

    fn s(a: &str, b: &str, n: u32) -> (String, String, u32) {
        (a.into(), b.into(), n)
    }

    #[test]
    fn merges_cells_then_postcodes_then_regions() {
        let p = partition(
            &fleet(&[
                (Some(3500), Some("E1A"), 12),
                (Some(3500), Some("E1B"), 6),
                (Some(3500), Some("E1C"), 5),
                (Some(3511), Some("E1A"), 4),
                (Some(3512), Some("E1A"), 7),
                (Some(1000), Some("E1A"), 10),
            ]),
            10,
        );
        assert_eq!(
            shape(&p),
            vec![
                s("1000", "E1A", 10),
                s("3500", "E1A", 12),
                s("3500", "*", 11),
                s("35", "*", 11),
            ]
        );
    }

    #[test]
    fn a_small_remainder_takes_the_smallest_row_with_it() {
        // The fleet: 12 E1A + 1 E1B in 1000, 10 E1A in 2000.
        let p = partition(
            &fleet(&[
                (Some(1000), Some("E1A"), 12),
                (Some(1000), Some("E1B"), 1),
                (Some(2000), Some("E1A"), 10),
            ]),
            10,
        );
        assert_eq!(shape(&p), vec![s("1000", "E1A", 12), s("rest", "*", 11)]);
        let total: u32 = p.rows.iter().map(|r| r.connections).sum();
        assert_eq!(total, 23);
    }

    #[test]
    fn unknown_attributes_are_values_of_their_own() {
        let p = partition(
            &fleet(&[
                (None, Some("E1A"), 10),
                (None, None, 3),
                (Some(1000), None, 10),
                (Some(1000), Some("E1A"), 2),
                (Some(1001), Some("E1A"), 9),
            ]),
            10,
        );
        // The 3 of unknown postcode and profile are below k: the smallest row, (1000,
        // unknown) with 10 (first of two tens in row order), is folded into the remainder.
        assert_eq!(
            shape(&p),
            vec![
                s("10", "*", 11),
                s("unknown", "E1A", 10),
                s("rest", "*", 13)
            ]
        );
    }

    #[test]
    fn a_fleet_below_k_publishes_nothing() {
        let p = partition(&fleet(&[(Some(1000), Some("E1A"), 9)]), 10);
        assert!(p.rows.is_empty());
        assert!(partition(&[], 10).rows.is_empty());
    }

    fn arb_fleet() -> impl Strategy<Value = Vec<Contribution>> {
        let postcodes = prop_oneof![
            Just(None),
            (0usize..8).prop_map(|i| Some([1000, 1001, 1010, 2000, 2001, 3500, 3511, 9999][i]))
        ];
        let profiles = prop_oneof![
            Just(None),
            (0usize..3).prop_map(|i| Some(["E1A", "E1B", "G1A"][i]))
        ];
        proptest::collection::vec((postcodes, profiles, 0u64..50_000), 0..120).prop_map(|v| {
            v.into_iter()
                .enumerate()
                .map(|(i, (postcode, profile, w))| Contribution {
                    consumption: w,
                    ..c(i as u64, postcode, profile)
                })
                .collect()
        })
    }

    proptest! {
        #[test]
        fn rows_are_disjoint_at_least_k_and_every_view_row_too(
            fleet in arb_fleet(), k in 1u32..15, seed in any::<u64>()
        ) {
            let p = partition(&fleet, k);
            let mut seen = BTreeSet::new();
            for (row, members) in p.rows.iter().zip(&p.members) {
                prop_assert!(row.connections >= k);
                prop_assert_eq!(row.connections as usize, members.len());
                for m in members {
                    prop_assert!(seen.insert(*m), "a member in two rows");
                }
            }
            // Everyone is counted unless the whole period is below k.
            if fleet.len() >= k as usize {
                prop_assert_eq!(seen.len(), fleet.len());
            } else {
                prop_assert!(p.rows.is_empty());
            }
            let mut sorted = p.rows.clone();
            sorted.sort();
            prop_assert_eq!(&sorted, &p.rows);
            for g in GroupBy::ALL {
                for row in view(&p.rows, g) {
                    prop_assert!(row.connections >= k);
                }
            }
            // Order of the input does not matter.
            let mut shuffled = fleet.clone();
            let n = shuffled.len();
            if n > 1 {
                for i in 0..n {
                    let j = (seed.wrapping_mul(i as u64 + 7) % n as u64) as usize;
                    shuffled.swap(i, j);
                }
            }
            prop_assert_eq!(partition(&shuffled, k), p);
        }
    }
}
