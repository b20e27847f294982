//! Seeded randomness: every random test input comes from a [`Seed`], which prints itself when
//! the test fails so that the failure can be replayed with `METERSTAND_TEST_SEED`.

use rand::SeedableRng;
use rand::rngs::StdRng;

/// The environment variable that fixes the seed of every test that reads one.
pub const SEED_ENV: &str = "METERSTAND_TEST_SEED";

/// A test's seed; on a panicking thread its `Drop` prints how to replay the run.
#[derive(Debug)]
pub struct Seed {
    value: u64,
    test: String,
}

impl Seed {
    /// The seed from `METERSTAND_TEST_SEED`, or a fresh random one.
    pub fn new(test: &str) -> Seed {
        let value = match std::env::var(SEED_ENV) {
            Ok(s) => s
                .trim()
                .parse()
                .unwrap_or_else(|_| panic!("{SEED_ENV}={s} is not a u64")),
            Err(_) => rand::random(),
        };
        eprintln!("{test}: seed {value}");
        Seed {
            value,
            test: test.to_string(),
        }
    }

    /// A fixed seed, for inputs that must never vary.
    pub fn fixed(test: &str, value: u64) -> Seed {
        Seed {
            value,
            test: test.to_string(),
        }
    }

    pub fn value(&self) -> u64 {
        self.value
    }

    /// A generator for one purpose; the same `stream` gives the same numbers for a seed.
    pub fn rng(&self, stream: u64) -> StdRng {
        StdRng::seed_from_u64(self.value ^ stream.wrapping_mul(0x9e37_79b9_7f4a_7c15))
    }
}

impl Drop for Seed {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "{}: failed with seed {}; replay with {SEED_ENV}={}",
                self.test, self.value, self.value
            );
        }
    }
}
