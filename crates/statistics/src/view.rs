//! Coarser views: sums of whole published rows, never recomputed from readings.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::{Area, ProfileCover, Row};

/// How published rows are grouped into a view. Every view row is the sum of the published
/// rows with the same [`view_key`]; a row is never split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// `group_by=postcode4,profile`: the published rows themselves.
    Row,
    /// `group_by=postcode4` (the area): rows of one postcode4 summed (`profile: *`); rows of
    /// a region, the unknown postcode or the remainder stay rows of their own.
    Postcode4,
    /// `group_by=region`: rows summed per region (postcode4 rows into the region they lie
    /// in, plus the region row itself); the unknown postcode and the remainder stay as-is.
    Region,
    /// `group_by=profile`: rows summed per profile (`area: *`); rows covering several
    /// profiles (`profile: *`) sum into one `*` row.
    Profile,
    /// No `group_by`: the sum of all published rows.
    Total,
}

impl GroupBy {
    pub const ALL: [GroupBy; 5] = [
        GroupBy::Row,
        GroupBy::Postcode4,
        GroupBy::Region,
        GroupBy::Profile,
        GroupBy::Total,
    ];

    /// The view for the API's `group_by` fields.
    pub fn from_fields(postcode4: bool, profile: bool) -> GroupBy {
        match (postcode4, profile) {
            (true, true) => GroupBy::Row,
            (true, false) => GroupBy::Postcode4,
            (false, true) => GroupBy::Profile,
            (false, false) => GroupBy::Total,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Row => "postcode4,profile",
            GroupBy::Postcode4 => "postcode4",
            GroupBy::Region => "region",
            GroupBy::Profile => "profile",
            GroupBy::Total => "",
        }
    }
}

/// The view row a published row is summed into.
pub fn view_key(row: &Row, group_by: GroupBy) -> (Area, ProfileCover) {
    match group_by {
        GroupBy::Row => (row.area, row.profile.clone()),
        GroupBy::Postcode4 => (row.area, ProfileCover::Any),
        GroupBy::Region => match row.area {
            Area::Postcode4(p) => (Area::Region(Area::region_of(p)), ProfileCover::Any),
            other => (other, ProfileCover::Any),
        },
        GroupBy::Profile => (Area::Any, row.profile.clone()),
        GroupBy::Total => (Area::Any, ProfileCover::Any),
    }
}

/// Sums the published rows of one period into the rows of a view, sorted by key. Since the
/// published rows are disjoint and each holds at least `k`, so does every view row; and any
/// difference of view rows (of any views of the same period) is a sum of whole published
/// rows, so it covers 0 or at least `k` connections.
pub fn view(rows: &[Row], group_by: GroupBy) -> Vec<Row> {
    let mut sums: BTreeMap<(Area, ProfileCover), (u32, u64)> = BTreeMap::new();
    for row in rows {
        let sum = sums.entry(view_key(row, group_by)).or_default();
        sum.0 = sum.0.saturating_add(row.connections);
        sum.1 = sum.1.saturating_add(row.consumption);
    }
    sums.into_iter()
        .map(|((area, profile), (connections, consumption))| Row {
            area,
            profile,
            connections,
            consumption,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use meterstand_model::Postcode4;

    use super::*;

    fn row(area: Area, profile: &str, connections: u32) -> Row {
        Row {
            area,
            profile: match profile {
                "*" => ProfileCover::Any,
                p => ProfileCover::Profile(p.parse().expect("profile")),
            },
            connections,
            consumption: u64::from(connections) * 10,
        }
    }

    fn pc(p: u16) -> Area {
        Area::Postcode4(Postcode4::new(p).expect("postcode"))
    }

    #[test]
    fn views_sum_whole_rows() {
        let rows = vec![
            row(pc(3500), "E1A", 12),
            row(pc(3500), "*", 11),
            row(pc(3511), "E1A", 10),
            row(Area::Region(35), "*", 11),
            row(Area::Remainder, "*", 10),
        ];
        let by_postcode: Vec<(String, u32)> = view(&rows, GroupBy::Postcode4)
            .iter()
            .map(|r| (r.area.to_string(), r.connections))
            .collect();
        assert_eq!(
            by_postcode,
            vec![
                ("3500".into(), 23),
                ("3511".into(), 10),
                ("35".into(), 11),
                ("rest".into(), 10)
            ]
        );
        let by_region: Vec<(String, u32)> = view(&rows, GroupBy::Region)
            .iter()
            .map(|r| (r.area.to_string(), r.connections))
            .collect();
        assert_eq!(by_region, vec![("35".into(), 44), ("rest".into(), 10)]);
        let by_profile: Vec<(String, u32)> = view(&rows, GroupBy::Profile)
            .iter()
            .map(|r| (r.profile.to_string(), r.connections))
            .collect();
        assert_eq!(by_profile, vec![("E1A".into(), 22), ("*".into(), 32)]);
        let total = view(&rows, GroupBy::Total);
        assert_eq!(total.len(), 1);
        assert_eq!(total[0].connections, 54);
        assert_eq!(total[0].consumption, 540);
        assert_eq!(view(&rows, GroupBy::Row), rows);
    }
}
