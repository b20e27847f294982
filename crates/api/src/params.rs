//! Parsing and bounding of query parameters. Every failure names the parameter and what it
//! accepts, never echoing an identifier.

use std::str::FromStr;
use std::time::Duration;

use jiff::Timestamp;
use meterstand_model::{Calendar, RegisterKind, Tier};
use meterstand_statistics::GroupBy;

use crate::error::ApiError;
use crate::input::QueryParams;
use axum::http::StatusCode;

/// The longest range one query may span, per granularity.
#[derive(Debug, Clone, Copy)]
pub struct MaxRange {
    pub interval: Duration,
    pub day: Duration,
    pub month: Duration,
}

impl Default for MaxRange {
    fn default() -> MaxRange {
        const DAY: u64 = 86_400;
        MaxRange {
            interval: Duration::from_secs(93 * DAY),
            day: Duration::from_secs(3 * 366 * DAY),
            month: Duration::from_secs(10 * 366 * DAY),
        }
    }
}

impl MaxRange {
    pub fn get(&self, tier: Tier) -> Duration {
        match tier {
            Tier::Interval => self.interval,
            Tier::Day => self.day,
            Tier::Month => self.month,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
    Parquet,
}

impl Format {
    /// What `/v1/statistics` answers in: rows of one shape.
    pub const TABLES: [Format; 3] = [Format::Json, Format::Csv, Format::Parquet];
    /// What the subject export answers in: its records are of several shapes, so no Parquet.
    pub const EXPORT: [Format; 2] = [Format::Json, Format::Csv];

    pub fn as_str(self) -> &'static str {
        match self {
            Format::Json => "json",
            Format::Csv => "csv",
            Format::Parquet => "parquet",
        }
    }
}

/// `format`, one of `offered` (json when absent); the error lists what is offered.
pub fn format(text: Option<&str>, offered: &[Format]) -> Result<Format, ApiError> {
    let text = text.unwrap_or("json");
    offered
        .iter()
        .copied()
        .find(|f| f.as_str() == text)
        .ok_or_else(|| {
            let names: Vec<&str> = offered.iter().map(|f| f.as_str()).collect();
            let list = match names.split_last() {
                Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
                _ => names.concat(),
            };
            ApiError::bad_request(format!("format must be {list}"))
        })
}

pub fn granularity(text: Option<&str>) -> Result<Tier, ApiError> {
    Tier::from_str(text.unwrap_or("day"))
        .map_err(|_| ApiError::bad_request("granularity must be interval, day or month"))
}

pub fn register(text: Option<&str>) -> Result<RegisterKind, ApiError> {
    RegisterKind::from_str(text.unwrap_or("import"))
        .map_err(|_| ApiError::bad_request("register must be import, export or gas"))
}

const GROUP_BY: &str = "group_by must be empty, postcode4, profile, postcode4,profile or region";

/// The view of the published rows a query asks for.
pub fn group_by(text: Option<&str>) -> Result<GroupBy, ApiError> {
    let (mut postcode4, mut profile, mut region) = (false, false, false);
    for part in text.unwrap_or("").split(',').map(str::trim) {
        match part {
            "" => {}
            "postcode4" => postcode4 = true,
            "profile" => profile = true,
            "region" => region = true,
            _ => return Err(ApiError::bad_request(GROUP_BY)),
        }
    }
    match (region, postcode4, profile) {
        (true, false, false) => Ok(GroupBy::Region),
        (true, _, _) => Err(ApiError::bad_request(GROUP_BY)),
        (false, p, q) => Ok(GroupBy::from_fields(p, q)),
    }
}

const TIME: &str = "an RFC 3339 time (2026-11-01T00:00:00Z) or a date (2026-11-01)";

/// An RFC 3339 time, or a date meaning local midnight at its start.
pub fn time(name: &'static str, text: &str, calendar: &Calendar) -> Result<Timestamp, ApiError> {
    let bad = || ApiError::bad_request(format!("{name} must be {TIME}"));
    if text.len() > 64 {
        return Err(bad());
    }
    if let Ok(t) = Timestamp::from_str(text) {
        return Ok(t);
    }
    let date = jiff::civil::Date::from_str(text).map_err(|_| bad())?;
    calendar.date_start(date).map_err(|_| bad())
}

/// `from` and `to`, checked for order and against the maximum range of `tier`.
pub fn range(
    q: &QueryParams,
    tier: Tier,
    calendar: &Calendar,
    max: &MaxRange,
) -> Result<(Timestamp, Timestamp), ApiError> {
    range_of(
        q.required("from", TIME)?,
        q.required("to", TIME)?,
        tier,
        calendar,
        max,
    )
}

fn range_of(
    from: &str,
    to: &str,
    tier: Tier,
    calendar: &Calendar,
    max: &MaxRange,
) -> Result<(Timestamp, Timestamp), ApiError> {
    let from = time("from", from, calendar)?;
    let to = time("to", to, calendar)?;
    // Ranges are half-open, [from, to): from == to is an empty range (an empty answer),
    // from > to a mistake.
    if from > to {
        return Err(ApiError::bad_request("from must not be after to"));
    }
    let span = to.as_second().saturating_sub(from.as_second());
    let limit = max.get(tier);
    if u64::try_from(span).unwrap_or(u64::MAX) > limit.as_secs() {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "range_too_large",
            format!(
                "a {} query may span at most {} days",
                tier.as_str(),
                limit.as_secs() / 86_400
            ),
        ));
    }
    Ok((from, to))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_local_midnight() {
        let cal = Calendar::amsterdam();
        let t = time("from", "2026-07-01", &cal).expect("date");
        assert_eq!(t.to_string(), "2026-06-30T22:00:00Z");
        assert!(time("from", "2026-13-01", &cal).is_err());
        assert!(time("from", "yesterday", &cal).is_err());
    }

    #[test]
    fn ranges_are_bounded_per_granularity() {
        let cal = Calendar::amsterdam();
        let max = MaxRange::default();
        assert!(range_of("2026-01-01", "2026-03-01", Tier::Interval, &cal, &max).is_ok());
        let err =
            range_of("2026-01-01", "2026-06-01", Tier::Interval, &cal, &max).expect_err("too long");
        assert_eq!(err.code, "range_too_large");
        assert!(range_of("2026-01-01", "2026-06-01", Tier::Day, &cal, &max).is_ok());
        assert!(range_of("2026-02-01", "2026-01-01", Tier::Day, &cal, &max).is_err());
        // Half-open ranges: an empty one is a valid (empty) question.
        let (from, to) =
            range_of("2026-02-01", "2026-02-01", Tier::Day, &cal, &max).expect("empty range");
        assert_eq!(from, to);
    }

    #[test]
    fn formats_are_those_offered_and_the_error_lists_them() {
        assert_eq!(
            format(None, &Format::TABLES).expect("default"),
            Format::Json
        );
        assert_eq!(
            format(Some("parquet"), &Format::TABLES).expect("parquet"),
            Format::Parquet
        );
        let err = format(Some("xml"), &Format::TABLES).expect_err("xml");
        assert_eq!(err.message, "format must be json, csv or parquet");
        let err = format(Some("parquet"), &Format::EXPORT).expect_err("export");
        assert_eq!(err.message, "format must be json or csv");
    }

    #[test]
    fn group_by_is_limited_to_connection_attributes() {
        assert_eq!(
            group_by(Some("postcode4,profile")).expect("ok"),
            GroupBy::Row
        );
        assert_eq!(group_by(Some("region")).expect("ok"), GroupBy::Region);
        assert!(group_by(Some("region,profile")).is_err());
        assert!(group_by(Some("pseudonym")).is_err());
        assert_eq!(group_by(None).expect("ok"), GroupBy::Total);
    }
}
