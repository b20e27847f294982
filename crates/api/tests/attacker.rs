//! The generic attacker, over what the running API answers: a seeded fleet with small
//! cells; every `group_by` × granularity × two overlapping ranges, asked before and after a
//! consent change, an objection, an erasure and late readings; every answer row turned into
//! the set of (connection, quarter-hour) pairs it sums, and
//! `meterstand_statistics::attack::attack` run over all of them. No combination may isolate
//! fewer than k connections, and what was frozen before the changes must answer the same
//! after them.
//!
//! The API names only a row's group and its `connections`; the test knows the fleet, so it
//! rebuilds each row's members the way the freeze defines them (`reconstruct`) and checks
//! them against the row's `connections` and `consumption`, which keeps the rebuild honest.

mod common;
#[path = "attacker/fleet.rs"]
mod fleet;

use std::collections::{BTreeMap, BTreeSet};

use common::{Api, ean};
use fleet::{
    Change, K, Member, QUARTER, REGISTERS, frozen_in, instants, local, random_fleet, slot,
};
use jiff::Timestamp;
use meterstand_api::Role;
use meterstand_model::{Calendar, ConsentLevel, Reading, Tier, TieredReading};
use meterstand_statistics::MemberId;
use meterstand_statistics::attack::{Figure, Finding, attack};
use meterstand_store::IngestItem;
use meterstand_testkit::{Seed, meter_id};
use reqwest::Method;
use serde_json::{Value, json};

const GRANULARITIES: [&str; 3] = ["interval", "day", "month"];
const GROUP_BYS: [&str; 5] = ["postcode4,profile", "postcode4", "region", "profile", ""];
/// The view that is the published rows themselves.
const ROWS: &str = "postcode4,profile";

/// Two overlapping ranges per granularity (`from`, `to`): days 1–3 and 2–4 of November;
/// for months, October–November and November–December.
fn ranges(gran: &str) -> [(&'static str, &'static str); 2] {
    match gran {
        "month" => [("2026-10-01", "2026-12-01"), ("2026-11-01", "2027-01-01")],
        _ => [("2026-11-01", "2026-11-04"), ("2026-11-02", "2026-11-05")],
    }
}

fn date_start(text: &str) -> Timestamp {
    Calendar::amsterdam()
        .date_start(text.parse().expect("date"))
        .expect("start")
}

type Label = (String, String);
type Group = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
struct ApiRow {
    group: Group,
    connections: u64,
    consumption: u64,
}

/// (phase, granularity, group_by, period start) → the API's rows of that period.
type Answers = BTreeMap<(u8, &'static str, &'static str, Timestamp), Vec<ApiRow>>;

/// The periods of `gran` frozen by the end of `phase`: the November days 1–4 (each with its
/// quarter-hours) and the months October and November, each frozen once `settle` (48 h)
/// after its end has passed.
fn frozen_periods(gran: &str, phase: u8, first: Timestamp) -> Vec<(Timestamp, Timestamp)> {
    let days = (1..=4).map(|d| (local(11, d), local(11, d + 1)));
    let all: Vec<(Timestamp, Timestamp)> = match gran {
        "day" => days.collect(),
        "interval" => days
            .flat_map(|(a, b)| {
                (a.as_second()..b.as_second())
                    .step_by(QUARTER as usize)
                    .map(|s| {
                        let t = Timestamp::from_second(s).expect("t");
                        (t, Timestamp::from_second(s + QUARTER).expect("t"))
                    })
            })
            .collect(),
        _ => vec![(local(10, 1), local(11, 1)), (local(11, 1), local(12, 1))],
    };
    let cal = Calendar::amsterdam();
    let day_end = |t: Timestamp| cal.next_boundary(Tier::Day, REGISTERS[0], cal.day_start(t));
    all.into_iter()
        .filter(|&(a, b)| {
            // A quarter-hour is frozen with its day.
            let end = if gran == "interval" { day_end(a) } else { b };
            frozen_in(end, first) <= phase
        })
        .collect()
}

fn connection_body(m: &Member, consent: ConsentLevel) -> String {
    let mut body = json!({ "consent": consent.as_str() });
    if let Some(p) = m.postcode4 {
        body["postcode4"] = json!(p.to_string());
    }
    if let Some(p) = m.profile {
        body["profile"] = json!(p);
    }
    body.to_string()
}

async fn crm_put(api: &Api, m: &Member, consent: ConsentLevel) -> Value {
    let path = format!("/v1/connections/{}", ean(m.n).expose());
    let body = connection_body(m, consent);
    let (status, text) = api.send(Method::PUT, Role::Crm, &path, Some(body)).await;
    assert_eq!(status, 200, "PUT connection {}: {text}", m.n);
    serde_json::from_str(&text).expect("json")
}

/// What the fleet sends in `phase`: the meters send everything, the store's gate keeps what
/// consent allows.
fn items(api: &Api, fleet: &[Member], phase: u8) -> Vec<IngestItem> {
    let cal = Calendar::amsterdam();
    let times = instants();
    fleet
        .iter()
        .filter_map(|m| {
            let mut readings = Vec::new();
            for &t in &times {
                for (r, &register) in REGISTERS.iter().enumerate() {
                    if m.written(t, r) == Some(phase) {
                        readings.push(TieredReading {
                            reading: Reading {
                                register,
                                time: t,
                                value: m.value(r, t),
                            },
                            tiers: cal.tiers_of(register, t),
                        });
                    }
                }
            }
            (!readings.is_empty()).then(|| IngestItem {
                correction: false,
                connection: api.ps.ean(&ean(m.n)),
                previous: Vec::new(),
                meter: api.ps.meter(&meter_id(m.n).parse().expect("meter")),
                readings,
            })
        })
        .collect()
}

/// Every granularity × range × `group_by` as an analyst, JSON; rows kept per period. A
/// period in both ranges must answer the same in both.
async fn ask_everything(api: &Api, phase: u8, first: Timestamp, answers: &mut Answers) -> usize {
    let mut queries = 0;
    for gran in GRANULARITIES {
        let frozen = frozen_periods(gran, phase, first);
        for (from, to) in ranges(gran) {
            let (a, b) = (date_start(from), date_start(to));
            let expected = frozen.iter().filter(|p| a <= p.0 && p.0 < b).count();
            for gb in GROUP_BYS {
                let path =
                    format!("/v1/statistics?from={from}&to={to}&granularity={gran}&group_by={gb}");
                let v = api.json(Role::Analyst, &path).await;
                queries += 1;
                assert_eq!(v["min_group_size"], json!(K), "{path}");
                assert_eq!(v["periods"], json!(expected), "{path}, phase {phase}");
                let mut per: BTreeMap<Timestamp, Vec<ApiRow>> = BTreeMap::new();
                for r in v["rows"].as_array().expect("rows") {
                    let start: Timestamp =
                        r["period_start"].as_str().expect("s").parse().expect("t");
                    assert!(
                        frozen.iter().any(|p| p.0 == start),
                        "{path}: {start} not frozen"
                    );
                    let group = r["group"]
                        .as_object()
                        .expect("group")
                        .iter()
                        .map(|(k, v)| (k.clone(), v.as_str().expect("label").to_string()))
                        .collect();
                    per.entry(start).or_default().push(ApiRow {
                        group,
                        connections: r["connections"].as_u64().expect("n"),
                        consumption: r["consumption"].as_u64().expect("c"),
                    });
                }
                for (start, rows) in per {
                    let old = answers.insert((phase, gran, gb, start), rows.clone());
                    assert!(
                        old.is_none_or(|o| o == rows),
                        "{gran} {start} by {gb:?} differs between the two ranges"
                    );
                }
            }
        }
    }
    queries
}

/// The members of each published row of one period, by (area, profile), as `partition`
/// builds them over `cohort`: a cell's row holds the cell; `(postcode4, *)` the cells of that
/// postcode too small for a row; `(region, *)` what is left of the region's postcodes whose
/// pool was too small; `rest` everyone else. Which rows were folded into the remainder is
/// not in a label, but the published labels show it: a cell or pool of at least k without
/// its row was folded.
fn layout(
    fleet: &[Member],
    cohort: &[usize],
    labels: &BTreeSet<Label>,
) -> BTreeMap<Label, Vec<usize>> {
    let k = K as usize;
    let star = |area: String| (area, "*".to_string());
    let mut cells: BTreeMap<(Option<u16>, Option<&str>), Vec<usize>> = BTreeMap::new();
    for &i in cohort {
        cells
            .entry((fleet[i].postcode4, fleet[i].profile))
            .or_default()
            .push(i);
    }
    let (mut rows, mut rest) = (BTreeMap::new(), Vec::new());
    let mut postcodes: BTreeMap<Option<u16>, Vec<usize>> = BTreeMap::new();
    for ((postcode, _), members) in cells {
        let label = (fleet[members[0]].area(), fleet[members[0]].profile_label());
        if labels.contains(&label) {
            rows.insert(label, members);
        } else if members.len() >= k {
            rest.extend(members);
        } else {
            postcodes.entry(postcode).or_default().extend(members);
        }
    }
    let mut regions: BTreeMap<u16, Vec<usize>> = BTreeMap::new();
    for (postcode, members) in postcodes {
        let label = star(fleet[members[0]].area());
        match postcode {
            _ if labels.contains(&label) => {
                rows.insert(label, members);
            }
            Some(p) if members.len() < k => regions.entry(p / 100).or_default().extend(members),
            _ => rest.extend(members),
        }
    }
    for (region, members) in regions {
        let label = star(format!("{region:02}"));
        if labels.contains(&label) {
            rows.insert(label, members);
        } else {
            rest.extend(members);
        }
    }
    let remainder = star("rest".to_string());
    if labels.contains(&remainder) {
        rows.insert(remainder, rest);
    } else {
        assert!(
            rest.is_empty() || labels.is_empty(),
            "{} connections counted in no row: {labels:?}",
            rest.len()
        );
    }
    for label in labels {
        assert!(
            rows.contains_key(label),
            "published row {label:?} matches no cells"
        );
    }
    rows
}

/// The rows of one view of a period: the API's group of each published row.
fn view_group(label: &Label, gb: &str) -> Group {
    let (area, profile) = (label.0.clone(), label.1.clone());
    // A postcode row sums into its region (the postcode's first two digits); region,
    // unknown and remainder rows stay as they are.
    let region = |a: String| match a.parse::<u16>() {
        Ok(p) if p >= 1000 => format!("{:02}", p / 100),
        _ => a,
    };
    let pairs: Vec<(&str, String)> = match gb {
        ROWS => vec![("area", area), ("profile", profile)],
        "postcode4" => vec![("area", area)],
        "region" => vec![("area", region(area))],
        "profile" => vec![("profile", profile)],
        _ => vec![],
    };
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

/// A day's rows (counted members) and its quarter-hour rows.
type DayRows = (BTreeMap<Label, Vec<usize>>, BTreeMap<Label, Vec<usize>>);

/// The rows of the day starting at `a` and of its quarter-hours, as `freeze_nested` builds
/// them from the fleet as it was at that day's freeze: one layout over everyone with a day
/// figure; a row's quarter-hours over its members with complete quarter-hours if at least k.
/// The API does not say over which cohort a day row was counted (everyone with a day
/// figure, or only those with complete quarter-hours); the two differ in size whenever they
/// differ, so the row's `connections` picks it.
fn day_rows(
    fleet: &[Member],
    answers: &Answers,
    phase: u8,
    a: Timestamp,
    first: Timestamp,
) -> DayRows {
    let cal = Calendar::amsterdam();
    let b = cal.next_boundary(Tier::Day, REGISTERS[0], a);
    let frozen = state(answers, phase, "day", a, frozen_in(b, first));
    let mut cohort = Vec::new();
    let mut fine = BTreeSet::new();
    for (i, m) in fleet.iter().enumerate() {
        if let Some(complete) = m.in_day(&cal, a, b, frozen) {
            cohort.push(i);
            if complete {
                fine.insert(i);
            }
        }
    }
    let published = answers
        .get(&(phase, "day", ROWS, a))
        .cloned()
        .unwrap_or_default();
    let count: BTreeMap<Label, u64> = published
        .iter()
        .map(|r| {
            (
                (r.group["area"].clone(), r.group["profile"].clone()),
                r.connections,
            )
        })
        .collect();
    let labels = count.keys().cloned().collect();
    let (mut days, mut quarters) = (BTreeMap::new(), BTreeMap::new());
    for (label, members) in layout(fleet, &cohort, &labels) {
        let mut f: Vec<usize> = members
            .iter()
            .copied()
            .filter(|i| fine.contains(i))
            .collect();
        if f.len() < K as usize {
            f.clear();
        }
        let n = count[&label] as usize;
        let counted = if n != members.len() && n == f.len() {
            f.clone()
        } else {
            members
        };
        if !f.is_empty() {
            quarters.insert(label.clone(), f);
        }
        days.insert(label, counted);
    }
    (days, quarters)
}

/// The fleet state an answer was computed from: that of the freeze that froze its period.
/// An answer that changed after the first phase (the frozen check at the end forbids it) was
/// recomputed from the later state; it is rebuilt from that state, so that the attacker sees
/// what such a change gives away (before − after) instead of a mere mismatch.
fn state(answers: &Answers, phase: u8, gran: &'static str, a: Timestamp, frozen: u8) -> u8 {
    let changed = |gb| answers.get(&(1, gran, gb, a)) != answers.get(&(2, gran, gb, a));
    if phase == 2 && frozen == 1 && GROUP_BYS.into_iter().any(changed) {
        2
    } else {
        frozen
    }
}

/// Every answer row as a figure: its members (rebuilt, checked against `connections` and
/// `consumption`) × the quarter-hours of its period.
fn reconstruct(fleet: &[Member], answers: &Answers, first: Timestamp) -> Vec<Figure> {
    let cal = Calendar::amsterdam();
    let mut figures = Vec::new();
    let mut days: BTreeMap<(u8, Timestamp), DayRows> = BTreeMap::new();
    for phase in [1, 2] {
        for gran in GRANULARITIES {
            for (a, b) in frozen_periods(gran, phase, first) {
                let rows = match gran {
                    "month" => {
                        let frozen = state(answers, phase, gran, a, frozen_in(b, first));
                        let cohort: Vec<usize> = (0..fleet.len())
                            .filter(|&i| fleet[i].in_month(&cal, a, b, frozen))
                            .collect();
                        let labels = answers
                            .get(&(phase, gran, ROWS, a))
                            .into_iter()
                            .flatten()
                            .map(|r| (r.group["area"].clone(), r.group["profile"].clone()))
                            .collect();
                        layout(fleet, &cohort, &labels)
                    }
                    _ => {
                        let day = cal.day_start(a);
                        let d = days
                            .entry((phase, day))
                            .or_insert_with(|| day_rows(fleet, answers, phase, day, first));
                        if gran == "day" {
                            d.0.clone()
                        } else {
                            d.1.clone()
                        }
                    }
                };
                for gb in GROUP_BYS {
                    let mut view: BTreeMap<Group, Vec<usize>> = BTreeMap::new();
                    for (label, members) in &rows {
                        view.entry(view_group(label, gb))
                            .or_default()
                            .extend(members);
                    }
                    let got = answers
                        .get(&(phase, gran, gb, a))
                        .cloned()
                        .unwrap_or_default();
                    let groups: BTreeSet<&Group> = got.iter().map(|r| &r.group).collect();
                    assert_eq!(
                        groups.len(),
                        got.len(),
                        "{gran} {a} by {gb:?}: a group twice"
                    );
                    assert_eq!(
                        groups,
                        view.keys().collect::<BTreeSet<_>>(),
                        "phase {phase}: {gran} {a} by {gb:?}: the API's groups vs the fleet's"
                    );
                    for row in got {
                        let members = &view[&row.group];
                        let asked = ["before", "after"][usize::from(phase) - 1];
                        let label = format!("{asked}: {gran} {a} by {gb:?} {:?}", row.group);
                        let consumption: u64 =
                            members.iter().map(|&i| fleet[i].consumption(a, b)).sum();
                        assert_eq!(
                            (row.connections, row.consumption),
                            (members.len() as u64, consumption),
                            "{label}: the API's (connections, consumption) vs the fleet's"
                        );
                        // One family per granularity and view: its figures are disjoint (the
                        // rows of a period, periods apart) and may be added up. A period
                        // asked twice is one figure: `attack` merges equal ones.
                        figures.push(Figure::new(
                            label,
                            format!("{gran} by {gb:?}"),
                            members.iter().map(|&i| MemberId::from(fleet[i].n)),
                            slot(a)..slot(b),
                        ));
                    }
                }
            }
        }
    }
    figures
}

/// How many findings of each kind, and the first few.
fn show(findings: &[Finding]) -> String {
    let mut kinds: BTreeMap<String, usize> = BTreeMap::new();
    for f in findings {
        *kinds.entry(format!("{:?}", f.kind)).or_default() += 1;
    }
    let examples = findings.iter().take(6).map(|f| {
        let labels: Vec<&str> = f.labels.iter().take(4).map(String::as_str).collect();
        format!(
            "{:?} isolates {} connection(s): {}",
            f.kind,
            f.members,
            labels.join(" | ")
        )
    });
    std::iter::once(format!("{kinds:?}"))
        .chain(examples)
        .collect::<Vec<_>>()
        .join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_combination_of_api_answers_isolates_fewer_than_k() {
    let seed = Seed::new("no_combination_of_api_answers_isolates_fewer_than_k");
    let fleet = random_fleet(seed.value());
    // First freeze: days November 1 and 2 (with their quarter-hours) and October. Second,
    // after the changes: November 3 and 4 and November.
    let (first, second) = (local(11, 5), local(12, 4));
    let api = Api::start_at(first).await;
    for m in fleet.iter().filter(|m| m.registered) {
        crm_put(&api, m, m.consent).await;
    }
    api.write(items(&api, &fleet, 1)).await;
    api.freeze_at(first);
    let mut answers = Answers::new();
    let mut queries = ask_everything(&api, 1, first, &mut answers).await;

    for m in &fleet {
        match m.change {
            Change::None => {}
            Change::Lowered => {
                let v = crm_put(&api, m, ConsentLevel::Daily).await;
                assert!(!v["removed"].is_null(), "its quarter-hours go: {v}");
            }
            Change::Objects => {
                // The privacy officer records it; the CRM's routine update that follows
                // (same attributes, no objection field) must not bring it back.
                let v = api.objection(&ean(m.n), true).await;
                assert_eq!(v["objection"], true, "{v}");
                crm_put(&api, m, m.consent).await;
            }
            Change::Erased => {
                let path = format!("/v1/subjects/{}", ean(m.n).expose());
                let (status, text) = api
                    .send(Method::DELETE, Role::PrivacyOfficer, &path, None)
                    .await;
                assert_eq!(status, 200, "erase: {text}");
            }
        }
    }
    api.clock.set(second);
    let outcome = api.write(items(&api, &fleet, 2)).await;
    assert!(
        outcome.late > 0,
        "the late joiners' frozen days: {outcome:?}"
    );
    api.freeze_at(second);
    queries += ask_everything(&api, 2, first, &mut answers).await;

    let figures = reconstruct(&fleet, &answers, first);
    let findings = attack(&figures, K);
    eprintln!(
        "{} connections, {queries} queries, {} answer rows as figures, {} findings",
        fleet.len(),
        figures.len(),
        findings.len()
    );
    assert!(
        findings.is_empty(),
        "{} findings:\n{}",
        findings.len(),
        show(&findings)
    );

    // Frozen: every period answered before the changes answers the same after them.
    for ((phase, gran, gb, start), rows) in &answers {
        if *phase == 1 {
            assert_eq!(
                answers.get(&(2, *gran, *gb, *start)),
                Some(rows),
                "{gran} {start} by {gb:?} changed after the consent change and erasure"
            );
        }
    }
}
