//! The three attacks against the running API (over `MemStore`): each must find
//! nothing below k. (Analysts read these aggregates only; the per-connection series are
//! retired, `tests/objection.rs`.)

mod common;

use common::{Api, ean};
use meterstand_api::Role;
use meterstand_model::ConsentLevel;
use meterstand_store::ReadingStore;
use serde_json::Value;

const DAY: &str = "/v1/statistics?from=2026-11-02&to=2026-11-03&granularity=day";
const QUARTERS: &str = "/v1/statistics?from=2026-11-02&to=2026-11-03&granularity=interval";

fn rows(v: &Value) -> Vec<(String, String, u64, u64)> {
    v["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .map(|r| {
            (
                r["group"]["area"].as_str().unwrap_or("").to_string(),
                r["group"]["profile"].as_str().unwrap_or("").to_string(),
                r["connections"].as_u64().expect("n"),
                r["consumption"].as_u64().expect("c"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_groupings_no_view_differs_by_one_household() {
    let api = Api::start().await;
    let mut n = 0;
    for (postcode, profile, count) in [(1000, "E1A", 12), (1000, "E1B", 1), (2000, "E1A", 10)] {
        for _ in 0..count {
            n += 1;
            api.register(&ean(n), ConsentLevel::Daily, postcode, profile);
            api.write_day(&ean(n), 10).await;
        }
    }
    api.freeze();
    let by_postcode = rows(
        &api.json(Role::Analyst, &format!("{DAY}&group_by=postcode4"))
            .await,
    );
    let by_cell = rows(
        &api.json(Role::Analyst, &format!("{DAY}&group_by=postcode4,profile"))
            .await,
    );
    for (area, _, a, _) in &by_postcode {
        for (cell_area, _, b, _) in &by_cell {
            if area == cell_area {
                let d = a.abs_diff(*b);
                assert!(d == 0 || d >= 10, "{area}: {a} vs {b}");
            }
        }
    }
    assert!(
        !by_postcode.iter().any(|r| r.0 == "1000" && r.2 == 13),
        "{by_postcode:?}"
    );
    let total: u64 = by_postcode.iter().map(|r| r.2).sum();
    assert_eq!(total, 23);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_granularities_the_day_is_the_sum_of_its_quarter_hours() {
    let api = Api::start().await;
    for n in 1..=10 {
        api.register(&ean(n), ConsentLevel::Interval, 1000, "E1A");
        api.write_day(&ean(n), 10).await;
    }
    // One daily-consent household in the same cell: its day figure alone would be day − Σ q.
    api.register(&ean(11), ConsentLevel::Daily, 1000, "E1A");
    api.write_day(&ean(11), 33).await;
    api.freeze();
    let day = rows(&api.json(Role::Analyst, DAY).await);
    let quarters = rows(&api.json(Role::Analyst, QUARTERS).await);
    assert_eq!(quarters.len(), 96);
    let sum: u64 = quarters.iter().map(|r| r.3).sum();
    assert_eq!(day.len(), 1);
    let d = day[0].2.abs_diff(quarters[0].2);
    assert!(
        d == 0 || d >= 10,
        "day {} vs quarter-hours {}",
        day[0].2,
        quarters[0].2
    );
    if d == 0 {
        assert_eq!(
            day[0].3, sum,
            "same cohort: the day is exactly its quarter-hours"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn across_time_a_statistic_does_not_change_after_consent_change_or_erasure() {
    let api = Api::start().await;
    for n in 1..=11 {
        api.register(&ean(n), ConsentLevel::Interval, 1000, "E1A");
        api.write_day(&ean(n), 10 + n).await;
    }
    api.freeze();
    let mut before = Vec::new();
    for g in ["", "postcode4", "profile", "region", "postcode4,profile"] {
        for q in [DAY, QUARTERS] {
            before.push(api.get(Role::Analyst, &format!("{q}&group_by={g}")).await);
        }
    }
    api.register(&ean(1), ConsentLevel::Standard, 1000, "E1A");
    tokio::task::block_in_place(|| api.store.erase(&[api.ps.ean(&ean(2))])).expect("erase");
    api.freeze();
    let mut after = Vec::new();
    for g in ["", "postcode4", "profile", "region", "postcode4,profile"] {
        for q in [DAY, QUARTERS] {
            after.push(api.get(Role::Analyst, &format!("{q}&group_by={g}")).await);
        }
    }
    assert_eq!(before, after);
    assert!(before.iter().all(|(s, _)| *s == 200));
}
