//! Identifiers as a metering company sends them.

use meterstand_model::Ean;

/// The `n`-th EAN of a test's own range: Dutch (`871…`), with a valid check digit. Give
/// each test file its own `space` (0–999) so that suites never share a connection.
pub fn ean_from(space: u64, n: u64) -> Ean {
    assert!(
        space < 1000 && n < 100_000_000,
        "EAN space {space}/{n} out of range"
    );
    Ean::from_body(87_100_000_000_000_000 + space * 100_000_000 + n)
        .expect("the body stays below 10^17")
}

/// [`ean_from`] in space 0.
pub fn ean(n: u64) -> Ean {
    ean_from(0, n)
}

/// The EAN's 18 digits with the check digit changed: what a broken meter would send.
pub fn bad_check_digit(ean: &Ean) -> String {
    let mut s = ean.expose().to_string();
    let last = if s.ends_with('0') { "1" } else { "0" };
    s.replace_range(17.., last);
    s
}

/// A DSMR equipment identifier for the `n`-th meter.
pub fn meter_id(n: u64) -> String {
    format!("E00310032627{:05}", n % 100_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eans_are_valid_dutch_and_distinct() {
        let a = ean_from(3, 1);
        assert!(a.expose().starts_with("871"));
        assert_ne!(a.expose(), ean_from(3, 2).expose());
        assert!(bad_check_digit(&a).parse::<Ean>().is_err());
        assert!(a.expose().parse::<Ean>().is_ok());
    }
}
