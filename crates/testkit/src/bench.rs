//! Fixtures the benchmarks share: a month of day readings for a fleet of households, a day of
//! quarter-hours of every register for one (or days of them, registers running on), and the
//! process's peak memory, printed beside every speed figure.

use jiff::civil::date;
use meterstand_model::sim::SimMeter;
use meterstand_model::{Calendar, Connection, ConsentLevel, Postcode4, TieredReading};
use meterstand_pseudonym::{Pseudonym, Pseudonymiser};
use meterstand_store::IngestItem;

/// `n` daily-consent households (seed 3) with their day readings at the 32 local midnights
/// of October 2026 and 1 November: per connection, its pseudonym, its CRM record and the
/// ingest item to write.
pub fn month_of_days(
    p: &Pseudonymiser,
    cal: &Calendar,
    n: u64,
) -> impl Iterator<Item = (Pseudonym, Connection, IngestItem)> {
    let meter = p.meter(&"E0000000000000001".parse().expect("valid meter id"));
    (0..n).map(move |i| {
        let mut m = SimMeter::new(i, 3);
        let ps = p.ean(&m.ean);
        let connection = connection_of(&m, ConsentLevel::Daily);
        let mut readings = Vec::new();
        for d in 0..=31 {
            let day = date(2026, 10, 1)
                .checked_add(jiff::Span::new().days(d))
                .expect("date");
            for reading in m.step(cal.date_start(day).expect("local midnight")) {
                readings.push(TieredReading {
                    reading,
                    tiers: cal.tiers_of(reading.register, reading.time),
                });
            }
        }
        let item = IngestItem {
            correction: false,
            connection: ps,
            previous: Vec::new(),
            meter,
            readings,
        };
        (ps, connection, item)
    })
}

/// `n` interval-consent households (seed 5) over the local day `day`: every quarter-hour from
/// its midnight to the next, with import on both tariffs, solar export on the roofs that have
/// it and hourly gas where there is gas (the simulator's load shapes, with noise). Per
/// connection, its pseudonym, its CRM record and the ingest item to write.
pub fn day_of_quarter_hours(
    p: &Pseudonymiser,
    cal: &Calendar,
    n: u64,
    day: jiff::civil::Date,
) -> impl Iterator<Item = (Pseudonym, Connection, IngestItem)> {
    let meter = p.meter(&"E0000000000000002".parse().expect("valid meter id"));
    let start = cal.date_start(day).expect("local midnight");
    let end = cal
        .date_start(day.tomorrow().expect("date"))
        .expect("local midnight");
    (0..n).map(move |i| {
        let mut m = SimMeter::new(i, 5);
        let ps = p.ean(&m.ean);
        let connection = connection_of(&m, ConsentLevel::Interval);
        let mut readings = Vec::new();
        let mut t = start;
        while t <= end {
            for reading in m.step(t) {
                readings.push(TieredReading {
                    reading,
                    tiers: cal.tiers_of(reading.register, reading.time),
                });
            }
            t = t
                .checked_add(jiff::SignedDuration::from_secs(900))
                .expect("in range");
        }
        let item = IngestItem {
            correction: false,
            connection: ps,
            previous: Vec::new(),
            meter,
            readings,
        };
        (ps, connection, item)
    })
}

/// `n` interval-consent households (seed 5: the population of [`day_of_quarter_hours`])
/// whose registers run on from one call to the next, so that history can be loaded day by
/// day and today's quarter-hours written after it without the registers starting again.
#[derive(Debug)]
pub struct QuarterHourFleet {
    meter: Pseudonym,
    households: Vec<(Pseudonym, SimMeter)>,
}

impl QuarterHourFleet {
    pub fn new(p: &Pseudonymiser, n: u64) -> QuarterHourFleet {
        QuarterHourFleet {
            meter: p.meter(&"E0000000000000002".parse().expect("valid meter id")),
            households: (0..n)
                .map(|i| {
                    let m = SimMeter::new(i, 5);
                    (p.ean(&m.ean), m)
                })
                .collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.households.len()
    }

    pub fn is_empty(&self) -> bool {
        self.households.is_empty()
    }

    /// Per household, its pseudonym and CRM record (interval consent).
    pub fn connections(&self) -> impl Iterator<Item = (Pseudonym, Connection)> + '_ {
        self.households
            .iter()
            .map(|(ps, m)| (*ps, connection_of(m, ConsentLevel::Interval)))
    }

    /// Household `i`'s readings at every quarter-hour boundary from `from` to `to`, both
    /// included (import on both tariffs, export with solar, gas on the hour), as one ingest
    /// item; its registers move on by as many quarter-hours.
    pub fn readings(
        &mut self,
        cal: &Calendar,
        i: usize,
        from: jiff::Timestamp,
        to: jiff::Timestamp,
    ) -> IngestItem {
        let (ps, m) = &mut self.households[i];
        let mut readings = Vec::new();
        let mut t = from;
        while t <= to {
            for reading in m.step(t) {
                readings.push(TieredReading {
                    reading,
                    tiers: cal.tiers_of(reading.register, reading.time),
                });
            }
            t = t
                .checked_add(jiff::SignedDuration::from_secs(900))
                .expect("in range");
        }
        IngestItem {
            correction: false,
            connection: *ps,
            previous: Vec::new(),
            meter: self.meter,
            readings,
        }
    }
}

/// The connection record of a simulated household.
fn connection_of(m: &SimMeter, consent: ConsentLevel) -> Connection {
    Connection {
        consent,
        postcode4: Some(Postcode4::new(m.postcode4).expect("valid postcode")),
        profile: Some(m.profile.parse().expect("valid profile")),
    }
}

/// Peak resident memory of this process so far (VmHWM), in MiB; 0 where /proc is missing.
pub fn peak_rss_mib() -> f64 {
    status_mib("VmHWM:")
}

/// Resident memory of this process now (VmRSS), in MiB; 0 where /proc is missing.
pub fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// Resets the process's peak RSS to its current RSS (Linux `clear_refs`), so that a phase
/// can report its own peak.
pub fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// CPU time (user and system) that process `pid` ("self" for this one) has used so far, in
/// seconds; 0 where /proc is missing. With the broker's, it shows what a phase cost in CPU,
/// which drifts less on a shared machine than its wall-clock rate.
pub fn cpu_seconds(pid: &str) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // Fields after the command name, which is in parentheses and may hold spaces:
            // utime and stime are the 14th and 15th fields of the whole line.
            let rest = &s[s.rfind(')')? + 1..];
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / CLOCK_TICKS_PER_SEC)
        })
        .unwrap_or(0.0)
}

/// CPU seconds used so far by each thread of this process, by thread id and name.
pub fn thread_cpu_seconds() -> Vec<(u32, String, f64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let name = std::fs::read_to_string(task.path().join("comm")).ok()?;
            let cpu = cpu_seconds(&format!("self/task/{tid}"));
            Some((tid, name.trim().to_owned(), cpu))
        })
        .collect()
}

/// `USER_HZ`, which is 100 on every Linux architecture the project builds for.
const CLOCK_TICKS_PER_SEC: f64 = 100.0;

fn status_mib(field: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(0.0, |kb| kb / 1024.0)
}
