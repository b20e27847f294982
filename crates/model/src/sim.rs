//! Deterministic simulated connections with realistic load shapes, shared by the simulator,
//! the benchmarks and the tests: household import with a night and an evening peak on two
//! tariffs (low tariff at night and at weekends), solar export on sunny hours for some,
//! hourly gas with a winter heating curve for most. Pure: the caller supplies time.

use jiff::Timestamp;

use crate::{ConsentLevel, Ean, Reading, Register};

/// A small, fast, seedable generator (SplitMix64); good enough for load noise.
#[derive(Debug, Clone)]
pub struct SimRng(u64);

impl SimRng {
    pub fn new(seed: u64) -> SimRng {
        SimRng(seed ^ 0x9e37_79b9_7f4a_7c15)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, n)`.
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 { 0 } else { self.next_u64() % n }
    }
}

/// One simulated connection and its meter's registers.
#[derive(Debug, Clone)]
pub struct SimMeter {
    pub ean: Ean,
    pub meter_id: String,
    pub consent: ConsentLevel,
    pub postcode4: u16,
    pub profile: &'static str,
    pub solar: bool,
    pub gas: bool,
    /// Average import per quarter-hour in Wh.
    scale: u64,
    registers: [u64; 5],
    rng: SimRng,
}

impl SimMeter {
    /// The EAN of the `index`-th connection of population `seed`: synthetic, in the range
    /// the simulator and the test kit keep to (`8710000…`), with a valid check digit.
    pub fn ean_of(index: u64, seed: u64) -> Ean {
        let body = 87_100_000_000_000_000 + (seed % 1000) * 100_000_000 + index % 100_000_000;
        Ean::from_body(body).expect("the body stays below 10^17")
    }

    /// The `index`-th connection of a population drawn from `seed`. Consent: 10 % off,
    /// 30 % standard, 30 % daily, 30 % interval.
    pub fn new(index: u64, seed: u64) -> SimMeter {
        let mut rng = SimRng::new(seed.wrapping_mul(1_000_003).wrapping_add(index));
        let ean = SimMeter::ean_of(index, seed);
        let consent = match rng.below(10) {
            0 => ConsentLevel::Off,
            1..=3 => ConsentLevel::Standard,
            4..=6 => ConsentLevel::Daily,
            _ => ConsentLevel::Interval,
        };
        let gas = rng.below(10) < 8;
        SimMeter {
            ean,
            meter_id: format!("E00{:014}", 31_003_262_764_316 + index * 7 + seed % 97),
            consent,
            postcode4: 1000 + rng.below(40) as u16 * 37,
            profile: if gas { "E1A" } else { "E1B" },
            solar: rng.below(10) < 3,
            gas,
            scale: 50 + rng.below(80),
            registers: [
                1_000_000 + rng.below(20_000_000),
                1_000_000 + rng.below(20_000_000),
                rng.below(5_000_000),
                rng.below(5_000_000),
                rng.below(30_000_000),
            ],
            rng,
        }
    }

    /// Advances the registers by one quarter-hour ending at `t` (on the quarter grid) and
    /// returns the readings published at `t`: import (and export with solar) every
    /// quarter-hour, gas on the hour.
    pub fn step(&mut self, t: Timestamp) -> Vec<Reading> {
        let secs = t.as_second();
        let local_hour = ((secs / 3600 + 1).rem_euclid(24)) as u64; // CET, close enough for load shapes
        let weekday = (secs / 86_400 + 4).rem_euclid(7); // 0 = Sunday
        let day_of_year = (secs / 86_400).rem_euclid(365) as u64;
        let shape = match local_hour {
            0..=5 => 5,
            6..=8 => 12,
            9..=16 => 8,
            17..=21 => 20,
            _ => 10,
        };
        let noise = self.rng.below(self.scale / 2 + 1);
        let import = self.scale * shape / 10 + noise;
        let low_tariff = !(7..23).contains(&local_hour) || weekday == 0 || weekday == 6;
        self.registers[if low_tariff { 0 } else { 1 }] += import;
        let mut out = vec![
            Reading {
                register: Register::ImportT1,
                time: t,
                value: self.registers[0],
            },
            Reading {
                register: Register::ImportT2,
                time: t,
                value: self.registers[1],
            },
        ];
        if self.solar {
            // Sun from 8 to 18, stronger in summer (day 172 is the longest day).
            let season = 1 + (182 - (day_of_year as i64 - 172).unsigned_abs().min(182)) / 20;
            if (8..18).contains(&local_hour) {
                let export = season * (20 + self.rng.below(40));
                self.registers[if low_tariff { 2 } else { 3 }] += export;
            }
            out.push(Reading {
                register: Register::ExportT1,
                time: t,
                value: self.registers[2],
            });
            out.push(Reading {
                register: Register::ExportT2,
                time: t,
                value: self.registers[3],
            });
        }
        if self.gas {
            // dm³ per quarter: heating in winter, a little for hot water all year.
            let winter = (day_of_year as i64 - 196).unsigned_abs() / 12;
            self.registers[4] += winter * shape / 10 + self.rng.below(5);
            if secs % 3600 == 0 {
                out.push(Reading {
                    register: Register::Gas,
                    time: t,
                    value: self.registers[4],
                });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Calendar;

    #[test]
    fn registers_only_rise_and_sit_on_boundaries() {
        let cal = Calendar::amsterdam();
        let mut m = SimMeter::new(3, 42);
        let mut last = std::collections::HashMap::new();
        for i in 0..96 * 3 {
            let t = Timestamp::from_second(1_795_820_400 + i * 900).expect("in range");
            for r in m.step(t) {
                assert!(!cal.tiers_of(r.register, r.time).is_empty());
                let prev = last.insert(r.register, r.value).unwrap_or(0);
                assert!(r.value >= prev);
            }
        }
        assert!(last[&Register::ImportT1] > 0);
    }

    #[test]
    fn populations_are_repeatable_and_valid() {
        let a: Vec<_> = (0..50).map(|i| SimMeter::new(i, 7)).collect();
        let b: Vec<_> = (0..50).map(|i| SimMeter::new(i, 7)).collect();
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.ean, y.ean);
            assert_eq!(x.consent, y.consent);
            assert!(x.ean.expose().parse::<Ean>().is_ok());
            assert!(x.meter_id.parse::<crate::MeterId>().is_ok());
        }
        let distinct: std::collections::HashSet<_> = a.iter().map(|m| m.ean).collect();
        assert_eq!(distinct.len(), 50);
    }
}
