use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};

use crate::{QUARTER_SECONDS, Register, Tier, TierSet};

/// Period boundaries in a local time zone (default `Europe/Amsterdam`). Boundaries are
/// computed locally and stored as UTC instants, so a day holds 92, 96 or 100 quarter-hours.
#[derive(Debug, Clone)]
pub struct Calendar {
    tz: TimeZone,
    /// Every UTC offset (seconds) the zone has between `OFFSETS_KNOWN`'s bounds: a time at
    /// which no such offset makes local midnight needs no zone lookup.
    offsets: Vec<i32>,
}

/// The span (Unix seconds) over which `Calendar::offsets` is complete: 1970 to 2100.
const OFFSETS_KNOWN: (i64, i64) = (0, 4_102_444_800);

#[derive(Debug, thiserror::Error)]
pub enum CalendarError {
    #[error("unknown time zone (expected an IANA name such as Europe/Amsterdam)")]
    UnknownTimeZone,
    #[error("time is outside the supported range")]
    OutOfRange,
}

/// A calendar is written as its IANA zone name (`"Europe/Amsterdam"`), so that a
/// configuration deserialises straight into one and names a bad zone where it stands.
impl serde::Serialize for Calendar {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.tz.iana_name().unwrap_or("UTC"))
    }
}

impl<'de> serde::Deserialize<'de> for Calendar {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Calendar, D::Error> {
        let name = String::deserialize(d)?;
        Calendar::new(&name).map_err(|e| serde::de::Error::custom(format!("{name:?}: {e}")))
    }
}

impl Calendar {
    pub fn new(time_zone: &str) -> Result<Calendar, CalendarError> {
        let tz = TimeZone::get(time_zone).map_err(|_| CalendarError::UnknownTimeZone)?;
        Ok(Calendar::with_zone(tz))
    }

    fn with_zone(tz: TimeZone) -> Calendar {
        let (from, to) = OFFSETS_KNOWN;
        let start = Timestamp::from_second(from).unwrap_or(Timestamp::UNIX_EPOCH);
        let mut offsets = vec![tz.to_offset(start).seconds()];
        for transition in tz.following(start) {
            if transition.timestamp().as_second() >= to {
                break;
            }
            offsets.push(transition.offset().seconds());
        }
        offsets.sort_unstable();
        offsets.dedup();
        Calendar { tz, offsets }
    }

    pub fn amsterdam() -> Calendar {
        // The bundled tz database always holds this zone; fall back to UTC rather than panic.
        Calendar::new("Europe/Amsterdam").unwrap_or_else(|_| Calendar::with_zone(TimeZone::UTC))
    }

    pub fn time_zone(&self) -> &TimeZone {
        &self.tz
    }

    /// The tiers on whose boundaries `t` lies for `register`: interval when on the register's
    /// interval grid (quarter-hours, gas hours), day at local midnight, month at local
    /// midnight on the 1st. Empty when `t` is on no boundary.
    pub fn tiers_of(&self, register: Register, t: Timestamp) -> TierSet {
        if t.subsec_nanosecond() != 0 {
            return TierSet::EMPTY;
        }
        let s = t.as_second();
        let mut tiers = TierSet::EMPTY;
        if s.rem_euclid(register.interval_seconds()) == 0 {
            tiers = tiers.with(Tier::Interval);
        }
        // Every zone's offset is a whole number of quarter-hours, so local midnight lies on
        // the UTC quarter grid; this spares the zone lookup for most readings.
        if s.rem_euclid(QUARTER_SECONDS) != 0 {
            return tiers;
        }
        // Most quarter-hours are local midnight under none of the zone's offsets (two of 96
        // can be, in Amsterdam): decided without the zone lookup.
        if (OFFSETS_KNOWN.0..OFFSETS_KNOWN.1).contains(&s)
            && !self
                .offsets
                .iter()
                .any(|o| (s + i64::from(*o)).rem_euclid(86_400) == 0)
        {
            return tiers;
        }
        let local = s + i64::from(self.tz.to_offset(t).seconds());
        if local.rem_euclid(86_400) == 0 {
            tiers = tiers.with(Tier::Day);
            if t.to_zoned_datetime(self.tz.clone()).day() == 1 {
                tiers = tiers.with(Tier::Month);
            }
        }
        tiers
    }

    /// Start of the local day that holds `t`.
    pub fn day_start(&self, t: Timestamp) -> Timestamp {
        t.to_zoned_datetime(self.tz.clone())
            .start_of_day()
            .map(|z| z.timestamp())
            .unwrap_or(t)
    }

    /// Start of the local month that holds `t`.
    pub fn month_start(&self, t: Timestamp) -> Timestamp {
        let date = t.to_zoned_datetime(self.tz.clone()).date().first_of_month();
        self.date_start(date).unwrap_or(t)
    }

    /// The instant of local midnight at the start of `date`.
    pub fn date_start(&self, date: Date) -> Result<Timestamp, CalendarError> {
        date.to_zoned_datetime(self.tz.clone())
            .map(|z| z.timestamp())
            .map_err(|_| CalendarError::OutOfRange)
    }

    /// The local date that holds `t`.
    pub fn date_of(&self, t: Timestamp) -> Date {
        t.to_zoned_datetime(self.tz.clone()).date()
    }

    /// Start of the period of `tier` that holds `t`.
    pub fn period_start(&self, tier: Tier, register: Register, t: Timestamp) -> Timestamp {
        match tier {
            Tier::Interval => {
                let step = register.interval_seconds();
                let s = t.as_second();
                Timestamp::from_second(s - s.rem_euclid(step)).unwrap_or(t)
            }
            Tier::Day => self.day_start(t),
            Tier::Month => self.month_start(t),
        }
    }

    /// The boundary after `start` (itself a boundary of `tier`): the end of its period.
    pub fn next_boundary(&self, tier: Tier, register: Register, start: Timestamp) -> Timestamp {
        let next = match tier {
            Tier::Interval => {
                Timestamp::from_second(start.as_second() + register.interval_seconds())
                    .map_err(|_| CalendarError::OutOfRange)
            }
            Tier::Day => self
                .date_of(start)
                .tomorrow()
                .map_err(|_| CalendarError::OutOfRange)
                .and_then(|d| self.date_start(d)),
            Tier::Month => self
                .date_of(start)
                .first_of_month()
                .checked_add(1.month())
                .map_err(|_| CalendarError::OutOfRange)
                .and_then(|d| self.date_start(d)),
        };
        next.unwrap_or(Timestamp::MAX)
    }

    /// Quarter-hours in a local day: 92 when clocks go forward, 100 when they go back.
    pub fn quarter_hours_in_day(&self, date: Date) -> i64 {
        let start = self.date_start(date);
        let end = date
            .tomorrow()
            .map_err(|_| CalendarError::OutOfRange)
            .and_then(|d| self.date_start(d));
        match (start, end) {
            (Ok(s), Ok(e)) => (e.as_second() - s.as_second()) / QUARTER_SECONDS,
            _ => 96,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;
    use proptest::prelude::*;

    /// `tiers_of` by the zone lookup alone, as it was before the offsets shortcut.
    fn tiers_by_lookup(cal: &Calendar, register: Register, t: Timestamp) -> TierSet {
        let s = t.as_second();
        let mut tiers = TierSet::EMPTY;
        if s.rem_euclid(register.interval_seconds()) == 0 {
            tiers = tiers.with(Tier::Interval);
        }
        let local = s + i64::from(cal.tz.to_offset(t).seconds());
        if s.rem_euclid(QUARTER_SECONDS) == 0 && local.rem_euclid(86_400) == 0 {
            tiers = tiers.with(Tier::Day);
            if t.to_zoned_datetime(cal.tz.clone()).day() == 1 {
                tiers = tiers.with(Tier::Month);
            }
        }
        tiers
    }

    #[test]
    fn the_offsets_shortcut_agrees_with_the_zone_lookup_in_odd_zones() {
        // Whole hours with DST, half and three-quarter hours, negative, and a zone that
        // changed its standard offset.
        for zone in [
            "Europe/Amsterdam",
            "Asia/Kolkata",
            "America/St_Johns",
            "Pacific/Chatham",
            "Asia/Kathmandu",
            "Pacific/Apia",
            "UTC",
        ] {
            let cal = Calendar::new(zone).expect("zone");
            // Every quarter-hour of a few years around DST changes and Apia's skipped day.
            let mut q = ts("2011-01-01T00:00:00Z").as_second();
            let end = ts("2013-01-01T00:00:00Z").as_second();
            while q < end {
                let t = Timestamp::from_second(q).expect("t");
                for register in [Register::ImportT1, Register::Gas] {
                    assert_eq!(
                        cal.tiers_of(register, t),
                        tiers_by_lookup(&cal, register, t),
                        "{zone} {t}"
                    );
                }
                q += QUARTER_SECONDS;
            }
        }
    }

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("valid timestamp")
    }

    #[test]
    fn dst_days_have_92_and_100_quarter_hours() {
        let cal = Calendar::amsterdam();
        assert_eq!(cal.quarter_hours_in_day(date(2026, 3, 29)), 92);
        assert_eq!(cal.quarter_hours_in_day(date(2026, 10, 25)), 100);
        assert_eq!(cal.quarter_hours_in_day(date(2026, 11, 26)), 96);
    }

    #[test]
    fn tiers_at_local_boundaries() {
        let cal = Calendar::amsterdam();
        let import = Register::ImportT1;
        // Local midnight on 1 December 2026 (winter time, UTC+1).
        let month = cal.tiers_of(import, ts("2026-11-30T23:00:00Z"));
        assert!(
            month.contains(Tier::Month)
                && month.contains(Tier::Day)
                && month.contains(Tier::Interval)
        );
        // Local midnight on 27 November: day and interval, not month.
        let day = cal.tiers_of(import, ts("2026-11-26T23:00:00Z"));
        assert!(day.contains(Tier::Day) && !day.contains(Tier::Month));
        // Summer time: local midnight is 22:00 UTC.
        assert!(
            cal.tiers_of(import, ts("2026-07-14T22:00:00Z"))
                .contains(Tier::Day)
        );
        assert!(
            !cal.tiers_of(import, ts("2026-07-14T23:00:00Z"))
                .contains(Tier::Day)
        );
        // A plain quarter-hour, and one that is on no grid at all.
        let q = cal.tiers_of(import, ts("2026-11-26T23:15:00Z"));
        assert!(q.contains(Tier::Interval) && !q.contains(Tier::Day));
        assert!(cal.tiers_of(import, ts("2026-11-26T23:07:00Z")).is_empty());
        assert!(
            cal.tiers_of(import, ts("2026-11-26T23:15:00.5Z"))
                .is_empty()
        );
        // Gas: hourly interval only.
        assert!(
            cal.tiers_of(Register::Gas, ts("2026-11-26T23:15:00Z"))
                .is_empty()
        );
        assert!(
            cal.tiers_of(Register::Gas, ts("2026-11-26T21:00:00Z"))
                .contains(Tier::Interval)
        );
    }

    #[test]
    fn period_starts_and_ends() {
        let cal = Calendar::amsterdam();
        let t = ts("2026-03-29T12:34:00Z");
        assert_eq!(cal.day_start(t), ts("2026-03-28T23:00:00Z"));
        assert_eq!(
            cal.next_boundary(Tier::Day, Register::Gas, ts("2026-03-28T23:00:00Z")),
            ts("2026-03-29T22:00:00Z")
        );
        assert_eq!(cal.month_start(t), ts("2026-02-28T23:00:00Z"));
        assert_eq!(
            cal.next_boundary(Tier::Month, Register::Gas, ts("2026-02-28T23:00:00Z")),
            ts("2026-03-31T22:00:00Z")
        );
        assert_eq!(
            cal.period_start(Tier::Interval, Register::ImportT1, t),
            ts("2026-03-29T12:30:00Z")
        );
        assert_eq!(
            cal.period_start(Tier::Interval, Register::Gas, t),
            ts("2026-03-29T12:00:00Z")
        );
        assert_eq!(
            cal.next_boundary(
                Tier::Interval,
                Register::ImportT1,
                ts("2026-03-29T12:30:00Z")
            ),
            ts("2026-03-29T12:45:00Z")
        );
        assert!(Calendar::new("Mars/Olympus").is_err());
    }

    proptest! {
        #[test]
        fn day_periods_tile_time(secs in 1_600_000_000i64..2_000_000_000) {
            let cal = Calendar::amsterdam();
            let t = Timestamp::from_second(secs).expect("in range");
            let start = cal.day_start(t);
            let end = cal.next_boundary(Tier::Day, Register::ImportT1, start);
            prop_assert!(start <= t && t < end);
            prop_assert!(cal.tiers_of(Register::ImportT1, start).contains(Tier::Day));
            prop_assert!(cal.tiers_of(Register::ImportT1, end).contains(Tier::Day));
            let quarters = (end.as_second() - start.as_second()) / QUARTER_SECONDS;
            prop_assert!(quarters == 92 || quarters == 96 || quarters == 100);
        }

        #[test]
        fn month_boundaries_are_day_boundaries(secs in 1_600_000_000i64..2_000_000_000) {
            let cal = Calendar::amsterdam();
            let t = Timestamp::from_second(secs).expect("in range");
            let start = cal.month_start(t);
            let tiers = cal.tiers_of(Register::ImportT1, start);
            prop_assert!(tiers.contains(Tier::Month) && tiers.contains(Tier::Day) && tiers.contains(Tier::Interval));
            prop_assert!(start <= t && t < cal.next_boundary(Tier::Month, Register::ImportT1, start));
        }

        #[test]
        fn interval_grid(q in 1_700_000i64..2_200_000, off in 1i64..900) {
            let cal = Calendar::amsterdam();
            let on = Timestamp::from_second(q * 900).expect("in range");
            prop_assert!(cal.tiers_of(Register::ImportT1, on).contains(Tier::Interval));
            let between = Timestamp::from_second(q * 900 + off).expect("in range");
            prop_assert!(cal.tiers_of(Register::ImportT1, between).is_empty());
        }
    }
}
