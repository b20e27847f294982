//! k-anonymity for aggregate cells. A cell with fewer than `k` contributing connections is
//! suppressed (primary suppression). So that the total of a period minus its visible cells
//! cannot reveal a suppressed one, the suppressed cells of each period must together hold at
//! least `k` connections: otherwise the smallest visible cells of that period are suppressed
//! too (secondary suppression), until they do or nothing is left.

use std::collections::BTreeMap;

use jiff::Timestamp;
use meterstand_store::{AggregateCell, GroupKey};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Released {
    pub period_start: Timestamp,
    pub group: GroupKey,
    /// `None` when suppressed.
    pub cell: Option<(u64, u64)>,
}

pub fn suppress(cells: Vec<AggregateCell>, k: u64) -> Vec<Released> {
    let mut by_period: BTreeMap<Timestamp, Vec<AggregateCell>> = BTreeMap::new();
    for cell in cells {
        by_period.entry(cell.period_start).or_default().push(cell);
    }
    let mut out = Vec::new();
    for (period_start, mut cells) in by_period {
        cells.sort_by(|a, b| a.group.cmp(&b.group));
        let mut hidden: Vec<bool> = cells.iter().map(|c| c.connections < k).collect();
        let mut hidden_connections: u64 = cells
            .iter()
            .zip(&hidden)
            .filter(|(_, h)| **h)
            .map(|(c, _)| c.connections)
            .sum();
        if hidden.iter().any(|h| *h) {
            while hidden_connections < k {
                let smallest = cells
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| !hidden[*i])
                    .min_by_key(|(_, c)| c.connections)
                    .map(|(i, _)| i);
                let Some(i) = smallest else { break };
                hidden[i] = true;
                hidden_connections += cells[i].connections;
            }
        }
        for (cell, hide) in cells.into_iter().zip(hidden) {
            out.push(Released {
                period_start,
                group: cell.group,
                cell: (!hide).then_some((cell.connections, cell.consumption)),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use meterstand_model::Postcode4;

    use super::*;

    fn cell(day: i64, postcode: u16, connections: u64) -> AggregateCell {
        AggregateCell {
            period_start: Timestamp::from_second(day * 86_400).expect("time"),
            group: GroupKey {
                postcode4: Some(Postcode4::new(postcode).expect("postcode")),
                profile: None,
            },
            connections,
            consumption: connections * 1000,
        }
    }

    fn visible(r: &[Released]) -> Vec<(u16, Option<u64>)> {
        r.iter()
            .map(|c| {
                (
                    c.group.postcode4.map(Postcode4::get).unwrap_or(0),
                    c.cell.map(|(n, _)| n),
                )
            })
            .collect()
    }

    #[test]
    fn nine_is_suppressed_ten_is_shown() {
        let r = suppress(vec![cell(0, 1000, 10)], 10);
        assert_eq!(visible(&r), vec![(1000, Some(10))]);
        let r = suppress(vec![cell(0, 1000, 9)], 10);
        assert_eq!(visible(&r), vec![(1000, None)]);
    }

    #[test]
    fn a_lone_small_cell_takes_the_smallest_visible_one_with_it() {
        let r = suppress(
            vec![cell(0, 1000, 3), cell(0, 2000, 50), cell(0, 3000, 12)],
            10,
        );
        assert_eq!(
            visible(&r),
            vec![(1000, None), (2000, Some(50)), (3000, None)]
        );
    }

    #[test]
    fn enough_hidden_connections_need_no_secondary_suppression() {
        let r = suppress(
            vec![cell(0, 1000, 6), cell(0, 2000, 5), cell(0, 3000, 11)],
            10,
        );
        assert_eq!(
            visible(&r),
            vec![(1000, None), (2000, None), (3000, Some(11))]
        );
    }

    #[test]
    fn periods_are_judged_separately() {
        let r = suppress(vec![cell(0, 1000, 10), cell(1, 1000, 9)], 10);
        assert_eq!(visible(&r), vec![(1000, Some(10)), (1000, None)]);
    }
}
