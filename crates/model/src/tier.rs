use serde::{Deserialize, Serialize};

/// Storage granularity. A reading can lie on several tiers at once (a month boundary is
/// also a day and an interval boundary).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Interval,
    Day,
    Month,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Interval, Tier::Day, Tier::Month];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Interval => "interval",
            Tier::Day => "day",
            Tier::Month => "month",
        }
    }

    fn bit(self) -> u8 {
        match self {
            Tier::Interval => 1,
            Tier::Day => 2,
            Tier::Month => 4,
        }
    }
}

impl std::str::FromStr for Tier {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "interval" => Ok(Tier::Interval),
            "day" => Ok(Tier::Day),
            "month" => Ok(Tier::Month),
            _ => Err("granularity must be interval, day or month".into()),
        }
    }
}

/// A set of tiers, as a bit mask.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TierSet(u8);

impl TierSet {
    pub const EMPTY: TierSet = TierSet(0);
    pub const ALL: TierSet = TierSet(0b111);

    pub fn with(self, tier: Tier) -> TierSet {
        TierSet(self.0 | tier.bit())
    }

    pub fn contains(self, tier: Tier) -> bool {
        self.0 & tier.bit() != 0
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    pub fn intersect(self, other: TierSet) -> TierSet {
        TierSet(self.0 & other.0)
    }

    /// Tiers in `self` that are not in `other`.
    pub fn minus(self, other: TierSet) -> TierSet {
        TierSet(self.0 & !other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = Tier> {
        Tier::ALL.into_iter().filter(move |t| self.contains(*t))
    }
}

impl FromIterator<Tier> for TierSet {
    fn from_iter<I: IntoIterator<Item = Tier>>(iter: I) -> Self {
        iter.into_iter().fold(TierSet::EMPTY, TierSet::with)
    }
}

/// Consent levels of the Dutch smart-meter codes of conduct. Each level allows the tiers
/// of the levels below it plus one finer tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentLevel {
    /// Remote reading switched off: nothing is stored.
    Off,
    /// No consent needed: monthly readings for billing.
    Standard,
    /// Opt-in: day readings too.
    Daily,
    /// Explicit consent: quarter-hour (gas: hourly) readings too.
    Interval,
}

impl ConsentLevel {
    pub fn allowed_tiers(self) -> TierSet {
        match self {
            ConsentLevel::Off => TierSet::EMPTY,
            ConsentLevel::Standard => TierSet::EMPTY.with(Tier::Month),
            ConsentLevel::Daily => TierSet::EMPTY.with(Tier::Month).with(Tier::Day),
            ConsentLevel::Interval => TierSet::EMPTY
                .with(Tier::Month)
                .with(Tier::Day)
                .with(Tier::Interval),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ConsentLevel::Off => "off",
            ConsentLevel::Standard => "standard",
            ConsentLevel::Daily => "daily",
            ConsentLevel::Interval => "interval",
        }
    }

    pub fn from_code(code: u8) -> Option<ConsentLevel> {
        [
            ConsentLevel::Off,
            ConsentLevel::Standard,
            ConsentLevel::Daily,
            ConsentLevel::Interval,
        ]
        .into_iter()
        .find(|c| *c as u8 == code)
    }
}

impl std::str::FromStr for ConsentLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "off" => Ok(ConsentLevel::Off),
            "standard" => Ok(ConsentLevel::Standard),
            "daily" => Ok(ConsentLevel::Daily),
            "interval" => Ok(ConsentLevel::Interval),
            _ => Err("consent must be off, standard, daily or interval".into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consent_levels_nest() {
        assert!(ConsentLevel::Off.allowed_tiers().is_empty());
        let std = ConsentLevel::Standard.allowed_tiers();
        assert!(std.contains(Tier::Month) && !std.contains(Tier::Day));
        let daily = ConsentLevel::Daily.allowed_tiers();
        assert!(daily.contains(Tier::Day) && !daily.contains(Tier::Interval));
        assert_eq!(ConsentLevel::Interval.allowed_tiers().iter().count(), 3);
        assert_eq!(
            ConsentLevel::Interval
                .allowed_tiers()
                .minus(daily)
                .iter()
                .collect::<Vec<_>>(),
            vec![Tier::Interval]
        );
        for c in ["off", "standard", "daily", "interval"] {
            let level: ConsentLevel = c.parse().expect("valid");
            assert_eq!(level.as_str(), c);
            assert_eq!(ConsentLevel::from_code(level as u8), Some(level));
        }
        assert!("full".parse::<ConsentLevel>().is_err());
    }
}
