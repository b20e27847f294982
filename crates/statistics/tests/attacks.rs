//! The three attacks against per-query suppression (the old way, reimplemented
//! minimally here) and against the statistics tier; then a generic attacker over a random
//! fleet with small cells, every view × granularity, two overlapping ranges, before and after
//! a consent change and an erasure.

use std::collections::{BTreeMap, BTreeSet};

use meterstand_model::{Postcode4, Profile};
use meterstand_statistics::attack::{Figure, Finding, FindingKind, attack};
use meterstand_statistics::{GroupBy, MemberId, NestedContribution, freeze_nested, view_key};
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Slots (quarter-hours) per day in these tests: the rules do not depend on 96.
const SLOTS: u32 = 4;

#[derive(Debug, Clone)]
struct Member {
    id: MemberId,
    postcode4: Option<Postcode4>,
    profile: Option<Profile>,
    interval: bool,
    /// (day, slot) without a quarter-hour figure.
    gaps: BTreeSet<(u32, u32)>,
    /// Days without a day figure (daily-consent members only).
    no_day: BTreeSet<u32>,
    /// What happens to it at the change: consent lowered to daily, or erased.
    lowered: bool,
    erased: bool,
}

impl Member {
    fn new(id: u64, postcode: Option<u16>, profile: Option<&str>, interval: bool) -> Member {
        Member {
            id: MemberId::from(id),
            postcode4: postcode.map(|p| Postcode4::new(p).expect("postcode")),
            profile: profile.map(|p| p.parse().expect("profile")),
            interval,
            gaps: BTreeSet::new(),
            no_day: BTreeSet::new(),
            lowered: false,
            erased: false,
        }
    }

    /// What the store holds for this member on `day`, after the change or before it.
    fn readings(&self, day: u32, changed: bool) -> (Option<u64>, Vec<Option<u64>>) {
        if changed && self.erased {
            return (None, vec![]);
        }
        let value = |s: u32| 100 + u64::from(day * SLOTS + s) + u64::from(self.id.0[15]);
        let quarters: Vec<Option<u64>> = if self.interval && !(changed && self.lowered) {
            (0..SLOTS)
                .map(|s| (!self.gaps.contains(&(day, s))).then(|| value(s)))
                .collect()
        } else {
            vec![]
        };
        let day_value = (!self.no_day.contains(&day)).then(|| (0..SLOTS).map(value).sum());
        (day_value, quarters)
    }

    fn key(&self, g: GroupBy) -> String {
        let p = self.postcode4.map_or("?".into(), |p| p.to_string());
        let f = self
            .profile
            .as_ref()
            .map_or("?", |p| p.as_str())
            .to_string();
        match g {
            GroupBy::Row => format!("{p}/{f}"),
            GroupBy::Postcode4 => p,
            GroupBy::Region => p.get(..2).unwrap_or("?").to_string(),
            GroupBy::Profile => f,
            GroupBy::Total => String::new(),
        }
    }
}

fn day_slots(day: u32) -> std::ops::Range<u32> {
    day * SLOTS..(day + 1) * SLOTS
}

/// The old way: every query computed afresh from what is stored, cells below k suppressed.
fn old_release(fleet: &[Member], days: &[u32], changed: bool, tag: &str, k: u32) -> Vec<Figure> {
    let views = [
        GroupBy::Row,
        GroupBy::Postcode4,
        GroupBy::Profile,
        GroupBy::Total,
    ];
    let mut out = Vec::new();
    for &day in days {
        for g in views {
            let mut cells: BTreeMap<(String, Option<u32>), Vec<MemberId>> = BTreeMap::new();
            for m in fleet {
                let (d, q) = m.readings(day, changed);
                if d.is_some() {
                    cells.entry((m.key(g), None)).or_default().push(m.id);
                }
                for (s, v) in q.iter().enumerate() {
                    if v.is_some() {
                        let slot = day * SLOTS + u32::try_from(s).expect("slot");
                        cells.entry((m.key(g), Some(slot))).or_default().push(m.id);
                    }
                }
            }
            for ((key, slot), members) in cells {
                if members.len() < k as usize {
                    continue; // suppressed
                }
                let (gran, slots) = match slot {
                    None => ("day", day_slots(day)),
                    Some(s) => ("quarter", s..s + 1),
                };
                out.push(Figure::new(
                    format!("{tag} {gran} {day}/{slot:?} by {} {key}", g.as_str()),
                    format!("{tag}/{gran}/{}", g.as_str()),
                    members,
                    slots,
                ));
            }
        }
    }
    out
}

/// The statistics tier: a day and its quarter-hours frozen together, once.
fn freeze_day(fleet: &[Member], day: u32, changed: bool, k: u32) -> Vec<Figure> {
    let contributions: Vec<NestedContribution> = fleet
        .iter()
        .map(|m| {
            let (coarse, fine) = m.readings(day, changed);
            NestedContribution {
                member: m.id,
                postcode4: m.postcode4,
                profile: m.profile.clone(),
                coarse,
                fine,
            }
        })
        .collect();
    let stats = freeze_nested(&contributions, SLOTS as usize, k);
    let mut out = Vec::new();
    let mut publish =
        |part: &meterstand_statistics::Partition, gran: &str, slots: std::ops::Range<u32>| {
            for (row, members) in part.rows.iter().zip(&part.members) {
                assert!(row.connections >= k, "published row below k: {row:?}");
                assert_eq!(row.connections as usize, members.len());
            }
            for g in GroupBy::ALL {
                let mut views: BTreeMap<_, Vec<MemberId>> = BTreeMap::new();
                for (row, members) in part.rows.iter().zip(&part.members) {
                    views
                        .entry(view_key(row, g))
                        .or_default()
                        .extend(members.iter().copied());
                }
                for ((area, profile), members) in views {
                    assert!(members.len() >= k as usize);
                    out.push(Figure::new(
                        format!(
                            "{gran} {}.. by {} {area}/{profile}",
                            slots.start,
                            g.as_str()
                        ),
                        format!("{gran}/{}", g.as_str()),
                        members,
                        slots.clone(),
                    ));
                }
            }
        };
    publish(&stats.coarse, "day", day_slots(day));
    for (s, part) in stats.fine.iter().enumerate() {
        let slot = day * SLOTS + u32::try_from(s).expect("slot");
        publish(part, "quarter", slot..slot + 1);
    }
    // For every row, the day and the sum of its quarter-hours count cohorts 0 or >= k apart.
    for (i, day_members) in stats.coarse.members.iter().enumerate() {
        let row = &stats.coarse.rows[i];
        let fine: BTreeSet<MemberId> = stats
            .fine
            .first()
            .and_then(|p| {
                p.rows
                    .iter()
                    .position(|r| r.area == row.area && r.profile == row.profile)
                    .map(|j| p.members[j].iter().copied().collect())
            })
            .unwrap_or_default();
        let coarse: BTreeSet<MemberId> = day_members.iter().copied().collect();
        let apart = coarse.symmetric_difference(&fine).count();
        assert!(
            apart == 0 || apart >= k as usize,
            "day and quarters {apart} apart"
        );
    }
    out
}

fn leaks(findings: &[Finding]) -> Vec<&Finding> {
    findings
        .iter()
        .filter(|f| f.kind != FindingKind::SmallAtom)
        .collect()
}

fn show(findings: &[Finding]) -> String {
    findings
        .iter()
        .take(5)
        .map(|f| format!("{:?} {} members: {:?}", f.kind, f.members, f.labels))
        .collect::<Vec<_>>()
        .join("\n")
}

const K: u32 = 10;

fn across_groupings_fleet() -> Vec<Member> {
    let mut fleet = Vec::new();
    fleet.extend((0..12).map(|i| Member::new(i, Some(1000), Some("E1A"), false)));
    fleet.push(Member::new(12, Some(1000), Some("E1B"), false));
    fleet.extend((13..23).map(|i| Member::new(i, Some(2000), Some("E1A"), false)));
    fleet
}

#[test]
fn across_groupings_old_way_leaks_new_way_does_not() {
    let fleet = across_groupings_fleet();
    let old = attack(&old_release(&fleet, &[0], false, "q", K), K);
    assert!(
        old.iter()
            .any(|f| f.kind == FindingKind::Difference && f.members == 1),
        "the attacker should find 13 - 12 in the old way"
    );
    let new = attack(&freeze_day(&fleet, 0, false, K), K);
    assert!(new.is_empty(), "{}", show(&new));
}

fn across_granularities_fleet() -> Vec<Member> {
    let mut fleet: Vec<Member> = (0..10)
        .map(|i| Member::new(i, Some(1000), Some("E1A"), true))
        .collect();
    fleet.push(Member::new(10, Some(1000), Some("E1A"), false));
    fleet
}

#[test]
fn across_granularities_old_way_leaks_new_way_does_not() {
    let fleet = across_granularities_fleet();
    let old = attack(&old_release(&fleet, &[0], false, "q", K), K);
    assert!(
        old.iter()
            .any(|f| f.kind == FindingKind::RowMinusFamily && f.members == 1),
        "the attacker should find the day minus its quarter-hours: {}",
        show(&old)
    );
    let new = attack(&freeze_day(&fleet, 0, false, K), K);
    assert!(new.is_empty(), "{}", show(&new));
}

#[test]
fn across_time_old_way_leaks_new_way_does_not() {
    let mut fleet: Vec<Member> = (0..11)
        .map(|i| Member::new(i, Some(1000), Some("E1A"), true))
        .collect();
    fleet[3].erased = true;
    fleet[4].lowered = true;
    let mut old = old_release(&fleet, &[0], false, "before", K);
    old.extend(old_release(&fleet, &[0], true, "after", K));
    let found = attack(&old, K);
    assert!(
        found
            .iter()
            .any(|f| f.kind == FindingKind::Difference && f.members <= 2),
        "the attacker should find before - after"
    );
    // Frozen: the day was computed once, before the change; asking again after the change
    // returns the same rows.
    let mut new = freeze_day(&fleet, 0, false, K);
    new.extend(freeze_day(&fleet, 0, false, K));
    let found = attack(&new, K);
    assert!(found.is_empty(), "{}", show(&found));
}

#[test]
fn old_way_suppressed_cells_name_their_group_new_way_publishes_none() {
    // In the old way a cell of 1 is reported as suppressed under its own group; the new
    // tier has no row below k at all, merged rows say what they cover.
    let fleet = across_groupings_fleet();
    let figures = freeze_day(&fleet, 0, false, K);
    assert!(figures.iter().all(|f| !f.label.contains("E1B")));
}

/// A random fleet with small cells.
fn random_fleet(seed: u64, days: u32) -> (Vec<Member>, u32) {
    let mut rng = StdRng::seed_from_u64(seed);
    let k = [3u32, 5, 10][rng.random_range(0..3)];
    let n = rng.random_range(10..80u64);
    let postcodes = [
        Some(1000),
        Some(1001),
        Some(1010),
        Some(2000),
        Some(3500),
        None,
    ];
    let profiles = [Some("E1A"), Some("E1B"), Some("G1A"), None];
    let mut fleet: Vec<Member> = (0..n)
        .map(|i| {
            let mut m = Member::new(
                i,
                postcodes[rng.random_range(0..postcodes.len())],
                profiles[rng.random_range(0..profiles.len())],
                rng.random_bool(0.6),
            );
            for day in 0..days {
                if m.interval {
                    for s in 0..SLOTS {
                        if rng.random_bool(0.03) {
                            m.gaps.insert((day, s));
                        }
                    }
                } else if rng.random_bool(0.05) {
                    m.no_day.insert(day);
                }
            }
            m
        })
        .collect();
    let lowered = rng.random_range(0..fleet.len());
    fleet[lowered].lowered = true;
    let erased = rng.random_range(0..fleet.len());
    fleet[erased].erased = true;
    (fleet, k)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// Three days; the change (one member's consent lowered, one erased) happens after day 0
    /// and day 1 are frozen. Ranges [0, 1] and [1, 2], asked before and after the change:
    /// before, day 2 is not yet frozen; after, days 0 and 1 come back as frozen.
    #[test]
    fn the_attacker_finds_nothing_in_the_statistics(seed in any::<u64>()) {
        let (fleet, k) = random_fleet(seed, 3);
        let frozen: Vec<Vec<Figure>> = (0..3)
            .map(|day| freeze_day(&fleet, day, day >= 2, k))
            .collect();
        let mut seen = Vec::new();
        for range in [0..=1u32, 1..=2] {
            for (release, last_frozen) in [("before", 1u32), ("after", 2)] {
                for day in range.clone().filter(|d| *d <= last_frozen) {
                    seen.extend(frozen[day as usize].iter().cloned().map(|mut f| {
                        f.label = format!("{release} {}", f.label);
                        f
                    }));
                }
            }
        }
        let found = attack(&seen, k);
        prop_assert!(found.is_empty(), "seed {seed}, k {k}:\n{}", show(&found));
    }

    /// The same fleets in the old way: the generic attacker is not toothless.
    #[test]
    fn the_attacker_finds_the_old_way_out_often(seed in any::<u64>()) {
        let (fleet, k) = random_fleet(seed, 2);
        let mut seen = old_release(&fleet, &[0, 1], false, "before", k);
        seen.extend(old_release(&fleet, &[0, 1], true, "after", k));
        let found = attack(&seen, k);
        // The erased member is in some cell of at least k before and gone after, unless it
        // was never in a published cell; the lowered one likewise. Only check when the
        // fleet is big enough for cells of k to exist with it.
        let erased_counted = fleet
            .iter()
            .any(|m| m.erased && (m.readings(0, false).0.is_some() || m.readings(1, false).0.is_some()));
        if fleet.len() >= (k as usize) * 6 && erased_counted {
            prop_assert!(!leaks(&found).is_empty(), "seed {seed}: no leak found in the old way");
        }
    }
}
