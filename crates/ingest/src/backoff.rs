//! The one retry delay of ingest, for reconnects and store writes: exponential, capped,
//! with decorrelated jitter, so instances sharing a `$share` subscription that lost the
//! broker together do not come back in lockstep.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Decorrelated jitter (AWS architecture blog, "Exponential Backoff and Jitter"): each
/// delay is drawn from `[base, 3 × previous]` and capped, so it grows roughly
/// exponentially, never drops below `base` (no hot loop) and differs per instance.
#[derive(Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    previous: Duration,
    rng: StdRng,
}

impl Backoff {
    /// Seeded from the operating system: every process draws its own delays.
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        Backoff::with_rng(base, cap, StdRng::from_os_rng())
    }

    /// Reproducible delays, for tests.
    pub fn seeded(base: Duration, cap: Duration, seed: u64) -> Backoff {
        Backoff::with_rng(base, cap, StdRng::seed_from_u64(seed))
    }

    fn with_rng(base: Duration, cap: Duration, rng: StdRng) -> Backoff {
        let base = base.max(Duration::from_millis(1));
        Backoff {
            base,
            cap: cap.max(base),
            previous: base,
            rng,
        }
    }

    /// The delay before the next attempt.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.base.as_micros() as u64;
        let high = (self.previous.as_micros() as u64)
            .saturating_mul(3)
            .max(base);
        let drawn = Duration::from_micros(self.rng.random_range(base..=high));
        self.previous = drawn.min(self.cap);
        self.previous
    }

    /// After a success: the next failure starts again from `base`.
    pub fn reset(&mut self) {
        self.previous = self.base;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const CAP: Duration = Duration::from_secs(10);

    #[test]
    fn stays_between_base_and_cap() {
        let mut b = Backoff::seeded(BASE, CAP, 7);
        for _ in 0..1000 {
            let d = b.next_delay();
            assert!((BASE..=CAP).contains(&d), "{d:?}");
        }
    }

    #[test]
    fn grows_to_the_cap() {
        let mut b = Backoff::seeded(BASE, CAP, 1);
        let first: Vec<Duration> = (0..3).map(|_| b.next_delay()).collect();
        assert!(first.iter().all(|d| *d <= Duration::from_millis(2700)));
        // Long runs wait seconds, not the base: the mean sits at a good part of the cap
        // (decorrelated jitter may fall back, never below the base).
        let late: Vec<Duration> = (0..200).map(|_| b.next_delay()).skip(100).collect();
        let mean = late.iter().sum::<Duration>() / 100;
        assert!(mean >= CAP / 3, "mean of late delays {mean:?}");
        let near_cap = late.iter().filter(|d| **d >= CAP / 3).count();
        assert!(near_cap >= 40, "{near_cap} of 100 delays near the cap");
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::seeded(BASE, CAP, 3);
        for _ in 0..50 {
            b.next_delay();
        }
        b.reset();
        assert!(b.next_delay() <= BASE * 3);
    }

    #[test]
    fn same_seed_same_delays_other_seed_other_delays() {
        let run = |seed| {
            let mut b = Backoff::seeded(BASE, CAP, seed);
            (0..10).map(|_| b.next_delay()).collect::<Vec<_>>()
        };
        assert_eq!(run(42), run(42));
        // Two instances that failed together do not retry together.
        assert_ne!(run(42), run(43));
    }
}
