//! The attacker's ground truth: a seeded fleet with small cells, what each connection sends
//! and when, and what the store must hold of it at each freeze. Written from the rules
//! (consent gate, erasure, objection, late readings; `crates/store/src/freeze.rs`), not from
//! the store, so that a store or freeze bug shows up as a disagreement with the API.

use std::collections::BTreeMap;

use jiff::Timestamp;
use jiff::civil::date;
use meterstand_model::{Calendar, ConsentLevel, Register, Tier};

/// `privacy.min_group_size`, the freeze job's default.
pub const K: u32 = 10;
/// Seconds per quarter-hour: the attacker's slot.
pub const QUARTER: i64 = 900;
pub const REGISTERS: [Register; 2] = [Register::ImportT1, Register::ImportT2];

/// Local midnight at the start of a day of 2026 (Europe/Amsterdam).
pub fn local(month: i8, day: i8) -> Timestamp {
    Calendar::amsterdam()
        .date_start(date(2026, month, day))
        .expect("date")
}

/// The attacker's slot of an instant: quarter-hours since the first reading (October 1).
pub fn slot(t: Timestamp) -> u32 {
    u32::try_from((t.as_second() - local(10, 1).as_second()) / QUARTER).expect("slot")
}

/// Every instant anyone sends a reading for: the month boundaries of October, November and
/// December, and every quarter-hour of November 1 to 4 with the end of the 4th.
pub fn instants() -> Vec<Timestamp> {
    let mut out = vec![local(10, 1)];
    let (a, b) = (local(11, 1).as_second(), local(11, 5).as_second());
    // Local midnight lies on the UTC quarter-hour grid (whole-hour offsets).
    out.extend(
        (a..=b)
            .step_by(QUARTER as usize)
            .map(|s| Timestamp::from_second(s).expect("t")),
    );
    out.push(local(12, 1));
    out
}

/// Which freeze a period belongs to: the first (before the changes) or the second.
pub fn frozen_in(end: Timestamp, first_freeze: Timestamp) -> u8 {
    if end.as_second() + 48 * 3600 <= first_freeze.as_second() {
        1
    } else {
        2
    }
}

/// What happens to a connection between the two freezes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    None,
    /// Consent lowered from interval to daily (CRM `PUT`): its quarter-hours are deleted.
    /// Not to standard: a connection lowered to standard within a month counts in that
    /// month besides its days frozen before, the residual case of the statistics crate's
    /// DESIGN §7; the atom check flags it (an atom of one), although no combination of
    /// figures reaches it, since the month row's other members lie in no day figure.
    Lowered,
    /// Objects (privacy officer `PUT /v1/subjects/{ean}/objection`, then the CRM's routine
    /// update): left out of what is frozen afterwards.
    Objects,
    /// Erased (privacy officer `DELETE`).
    Erased,
}

#[derive(Debug, Clone)]
pub struct Member {
    /// EAN number (`common::ean(n)`) and attacker member id.
    pub n: u64,
    /// Registered through the CRM. An unregistered connection's readings are stored under
    /// the store's default consent (standard), but it counts in no statistic: without a
    /// record its state is unknown, and "no record" is never "open".
    pub registered: bool,
    pub postcode4: Option<u16>,
    pub profile: Option<&'static str>,
    pub consent: ConsentLevel,
    /// Wh per quarter-hour on each register.
    pub rates: [u64; 2],
    /// Instants (UTC seconds) missing from the first write: both registers, or only T2.
    pub gaps: BTreeMap<i64, bool>,
    /// The gaps arrive in a late write after the first freeze.
    pub late_fill: bool,
    /// Everything arrives only after the first freeze (late for the periods frozen then).
    pub joins_late: bool,
    pub change: Change,
}

impl Member {
    /// The cumulative register value it sends at `t`.
    pub fn value(&self, r: usize, t: Timestamp) -> u64 {
        1_000_000 * (r as u64 + 1) + self.rates[r] * u64::from(slot(t))
    }

    /// Its consumption over `[a, b)` (both registers).
    pub fn consumption(&self, a: Timestamp, b: Timestamp) -> u64 {
        u64::from(slot(b) - slot(a)) * (self.rates[0] + self.rates[1])
    }

    /// In which write (1: before the first freeze, 2: after the changes) register `r` at `t`
    /// is sent, if ever.
    pub fn written(&self, t: Timestamp, r: usize) -> Option<u8> {
        if t == local(12, 1) || self.joins_late {
            return Some(2);
        }
        match self.gaps.get(&t.as_second()) {
            Some(&both) if both || r == 1 => self.late_fill.then_some(2),
            _ => Some(1),
        }
    }

    fn consent_in(&self, phase: u8) -> ConsentLevel {
        if phase == 2 && self.change == Change::Lowered {
            ConsentLevel::Daily
        } else {
            self.consent
        }
    }

    /// Counted in statistics frozen in `phase` at all: registered, and not erased nor
    /// objecting.
    pub fn open(&self, phase: u8) -> bool {
        self.registered && (phase == 1 || !matches!(self.change, Change::Erased | Change::Objects))
    }

    /// Whether the store holds register `r` at `t` in `tier` when `phase`'s freeze runs.
    pub fn stored(&self, cal: &Calendar, tier: Tier, t: Timestamp, r: usize, phase: u8) -> bool {
        if phase == 2 && self.change == Change::Erased {
            return false; // tombstoned: never a member again
        }
        let Some(w) = self.written(t, r) else {
            return false;
        };
        w <= phase
            && cal.tiers_of(REGISTERS[r], t).contains(tier)
            && self.consent_in(w).allowed_tiers().contains(tier)
            && !(phase == 2 && self.change == Change::Lowered && tier == Tier::Interval)
    }

    fn both(&self, cal: &Calendar, tier: Tier, t: Timestamp, phase: u8) -> bool {
        (0..2).all(|r| self.stored(cal, tier, t, r, phase))
    }

    /// In the day `[a, b)` frozen in `phase`: `Some(complete quarter-hours)` if it counts in
    /// the day's cohort (a complete fine series, or both day readings).
    pub fn in_day(&self, cal: &Calendar, a: Timestamp, b: Timestamp, phase: u8) -> Option<bool> {
        if !self.open(phase) {
            return None;
        }
        let fine = (a.as_second()..=b.as_second())
            .step_by(QUARTER as usize)
            .all(|s| {
                self.both(
                    cal,
                    Tier::Interval,
                    Timestamp::from_second(s).expect("t"),
                    phase,
                )
            });
        (fine || (self.both(cal, Tier::Day, a, phase) && self.both(cal, Tier::Day, b, phase)))
            .then_some(fine)
    }

    /// In the month `[a, b)` frozen in `phase`: both month readings and no day reading on any
    /// day boundary of the month, its end included.
    pub fn in_month(&self, cal: &Calendar, a: Timestamp, b: Timestamp, phase: u8) -> bool {
        if !self.open(phase) || !self.both(cal, Tier::Month, a, phase) {
            return false;
        }
        if !self.both(cal, Tier::Month, b, phase) {
            return false;
        }
        let mut d = a;
        while d <= b {
            if (0..2).any(|r| self.stored(cal, Tier::Day, d, r, phase)) {
                return false;
            }
            d = cal.next_boundary(Tier::Day, Register::ImportT1, d);
        }
        true
    }

    /// What its cell is called in a row's group.
    pub fn area(&self) -> String {
        self.postcode4
            .map_or_else(|| "unknown".to_string(), |p| p.to_string())
    }

    pub fn profile_label(&self) -> String {
        self.profile.unwrap_or("unknown").to_string()
    }
}

/// The simulator's seedable generator (the api crate has no `rand` of its own; the seed
/// comes from the testkit), with the draws the fleet needs.
pub struct Rng(meterstand_model::sim::SimRng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(meterstand_model::sim::SimRng::new(seed))
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.0.below(n)
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    pub fn pick<T: Copy>(&mut self, weighted: &[(T, u64)]) -> T {
        let total: u64 = weighted.iter().map(|w| w.1).sum();
        let mut x = self.below(total);
        for &(v, w) in weighted {
            if x < w {
                return v;
            }
            x -= w;
        }
        weighted[0].0
    }
}

/// 80 to 110 connections over five postcodes in regions 10 and 35, four profiles, every
/// consent level; skewed so that some cells reach k and most do not (cell, postcode, region
/// and remainder rows, now and then a row folded into the remainder). Quarter-hour gaps, a missing day or month
/// boundary here and there, two late joiners, and the three changes on distinct members.
pub fn random_fleet(seed: u64) -> Vec<Member> {
    let mut rng = Rng::new(seed);
    let n = 80 + rng.below(31);
    let postcodes = [
        (Some(3500), 30),
        (Some(3511), 14),
        (Some(3512), 8),
        (Some(1000), 26),
        (Some(1011), 12),
        (None, 2),
    ];
    let profiles = [
        (Some("E1A"), 50),
        (Some("E1B"), 20),
        (Some("E2A"), 12),
        (Some("G1A"), 10),
        (None, 3),
    ];
    let consents = [
        (ConsentLevel::Interval, 50),
        (ConsentLevel::Daily, 25),
        (ConsentLevel::Standard, 25),
    ];
    let all = instants();
    let quarters = &all[1..all.len() - 1];
    let midnights = [local(11, 2), local(11, 3), local(11, 4)];
    let mut fleet: Vec<Member> = (0..n)
        .map(|i| {
            let registered = !rng.percent(3);
            let consent = rng.pick(&consents);
            let mut m = Member {
                n: i + 1,
                registered,
                postcode4: if registered {
                    rng.pick(&postcodes)
                } else {
                    None
                },
                profile: if registered {
                    rng.pick(&profiles)
                } else {
                    None
                },
                consent: if registered {
                    consent
                } else {
                    ConsentLevel::Standard
                },
                rates: [1 + rng.below(40), rng.below(20)],
                gaps: BTreeMap::new(),
                late_fill: rng.percent(50),
                joins_late: false,
                change: Change::None,
            };
            let gap = match m.consent {
                ConsentLevel::Interval if rng.percent(15) => {
                    Some(quarters[rng.below(quarters.len() as u64) as usize])
                }
                ConsentLevel::Daily if rng.percent(8) => Some(midnights[rng.below(3) as usize]),
                ConsentLevel::Standard if rng.percent(6) => {
                    Some([local(10, 1), local(11, 1)][rng.below(2) as usize])
                }
                _ => None,
            };
            if let Some(t) = gap {
                m.gaps.insert(t.as_second(), rng.percent(50));
            }
            m
        })
        .collect();
    let lowered = take(&mut rng, &fleet, |m| m.consent == ConsentLevel::Interval);
    fleet[lowered].change = Change::Lowered;
    let objects = take(&mut rng, &fleet, |_| true);
    fleet[objects].change = Change::Objects;
    let erased = take(&mut rng, &fleet, |_| true);
    fleet[erased].change = Change::Erased;
    for _ in 0..2 {
        let j = take(&mut rng, &fleet, |m| m.consent != ConsentLevel::Standard);
        fleet[j].joins_late = true;
    }
    fleet
}

/// A random registered member not picked for anything yet that `want`s.
fn take(rng: &mut Rng, fleet: &[Member], want: impl Fn(&Member) -> bool) -> usize {
    let free: Vec<usize> = (0..fleet.len())
        .filter(|&i| {
            let m = &fleet[i];
            m.registered && m.change == Change::None && !m.joins_late && want(m)
        })
        .collect();
    free[rng.below(free.len() as u64) as usize]
}
