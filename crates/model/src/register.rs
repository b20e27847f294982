use serde::{Deserialize, Serialize};

/// A cumulative register, named by its OBIS code. Values are integers in the register's
/// stored unit: Wh for electricity, dm³ for gas. Never floats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[repr(u8)]
pub enum Register {
    ImportT1 = 1,
    ImportT2 = 2,
    ExportT1 = 3,
    ExportT2 = 4,
    /// `0-n:24.2.1`, n = 1..4 (the M-Bus channel; it carries no meaning once stored).
    Gas = 5,
}

/// What analysts ask for: import and export add both tariffs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegisterKind {
    Import,
    Export,
    Gas,
}

/// The unit a reading is published in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Unit {
    Kwh,
    M3,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    #[error("value is negative")]
    Negative,
    #[error("value has more than 3 decimals")]
    TooPrecise,
    #[error("value is not a decimal number")]
    NotANumber,
    #[error("value exceeds the plausible maximum of {max} {unit}")]
    Absurd { max: u64, unit: &'static str },
}

impl Register {
    pub const ALL: [Register; 5] = [
        Register::ImportT1,
        Register::ImportT2,
        Register::ExportT1,
        Register::ExportT2,
        Register::Gas,
    ];

    /// Largest plausible register value in the published unit: a household meter shows at
    /// most 6 integer digits; 100 million leaves room for large connections and still stops
    /// garbage such as 1e300 or a serial number sent as a value.
    pub const MAX_PUBLISHED: u64 = 100_000_000;

    pub fn from_obis(code: &str) -> Option<Register> {
        match code {
            "1-0:1.8.1" => Some(Register::ImportT1),
            "1-0:1.8.2" => Some(Register::ImportT2),
            "1-0:2.8.1" => Some(Register::ExportT1),
            "1-0:2.8.2" => Some(Register::ExportT2),
            "0-1:24.2.1" | "0-2:24.2.1" | "0-3:24.2.1" | "0-4:24.2.1" => Some(Register::Gas),
            _ => None,
        }
    }

    pub fn obis(self) -> &'static str {
        match self {
            Register::ImportT1 => "1-0:1.8.1",
            Register::ImportT2 => "1-0:1.8.2",
            Register::ExportT1 => "1-0:2.8.1",
            Register::ExportT2 => "1-0:2.8.2",
            Register::Gas => "0-1:24.2.1",
        }
    }

    pub fn from_code(code: u8) -> Option<Register> {
        Register::ALL.into_iter().find(|r| *r as u8 == code)
    }

    pub fn unit(self) -> Unit {
        match self {
            Register::Gas => Unit::M3,
            _ => Unit::Kwh,
        }
    }

    pub fn kind(self) -> RegisterKind {
        match self {
            Register::ImportT1 | Register::ImportT2 => RegisterKind::Import,
            Register::ExportT1 | Register::ExportT2 => RegisterKind::Export,
            Register::Gas => RegisterKind::Gas,
        }
    }

    /// Seconds between interval readings: quarter-hours for electricity, hours for gas.
    pub fn interval_seconds(self) -> i64 {
        match self {
            Register::Gas => 3600,
            _ => 900,
        }
    }
}

impl RegisterKind {
    pub fn registers(self) -> &'static [Register] {
        match self {
            RegisterKind::Import => &[Register::ImportT1, Register::ImportT2],
            RegisterKind::Export => &[Register::ExportT1, Register::ExportT2],
            RegisterKind::Gas => &[Register::Gas],
        }
    }

    /// The unit consumption of this kind is reported in.
    pub fn stored_unit(self) -> &'static str {
        match self {
            RegisterKind::Gas => "dm3",
            _ => "Wh",
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RegisterKind::Import => "import",
            RegisterKind::Export => "export",
            RegisterKind::Gas => "gas",
        }
    }
}

impl std::str::FromStr for RegisterKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "import" => Ok(RegisterKind::Import),
            "export" => Ok(RegisterKind::Export),
            "gas" => Ok(RegisterKind::Gas),
            _ => Err("register must be import, export or gas".into()),
        }
    }
}

impl Unit {
    pub fn from_label(label: &str) -> Option<Unit> {
        match label {
            "kWh" => Some(Unit::Kwh),
            "m3" | "m³" => Some(Unit::M3),
            _ => None,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Unit::Kwh => "kWh",
            Unit::M3 => "m3",
        }
    }
}

/// Parses a decimal with at most 3 decimals into thousandths (kWh → Wh, m³ → dm³).
pub fn parse_milli(text: &str) -> Result<u64, ValueError> {
    plain_milli(text.as_bytes()).map_or_else(|| milli_by_parts(text), Ok)
}

/// Any other form, the plain way: trimmed, a sign, leading and trailing zeros, and the
/// reason a value is refused.
fn milli_by_parts(text: &str) -> Result<u64, ValueError> {
    let text = text.trim();
    if let Some(rest) = text.strip_prefix('-') {
        return match milli_by_parts(rest) {
            Ok(0) => Ok(0),
            Ok(_) | Err(ValueError::Absurd { .. }) => Err(ValueError::Negative),
            Err(e) => Err(e),
        };
    }
    let (int, frac) = text.split_once('.').unwrap_or((text, ""));
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ValueError::NotANumber);
    }
    if !frac.bytes().all(|b| b.is_ascii_digit()) || (text.contains('.') && frac.is_empty()) {
        return Err(ValueError::NotANumber);
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > 3 {
        return Err(ValueError::TooPrecise);
    }
    let int = int.trim_start_matches('0');
    let absurd = ValueError::Absurd {
        max: Register::MAX_PUBLISHED,
        unit: "",
    };
    if int.len() > 9 {
        return Err(absurd);
    }
    let whole: u64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| ValueError::NotANumber)?
    };
    if whole > Register::MAX_PUBLISHED {
        return Err(absurd);
    }
    let mut milli = 0u64;
    for (i, d) in frac.bytes().enumerate() {
        milli += u64::from(d - b'0') * 10u64.pow(2 - i as u32);
    }
    Ok(whole * 1000 + milli)
}

/// The form publishers send, in one loop: up to nine digits, then optionally a point and
/// one to three decimals, within `Register::MAX_PUBLISHED`. `None` for anything else (signs,
/// spaces, leading zeros past nine digits, more decimals), which `parse_milli` then reads
/// the long way; where this gives a value, the long way gives the same.
fn plain_milli(text: &[u8]) -> Option<u64> {
    let digit = |b: u8| {
        let d = b.wrapping_sub(b'0');
        (d < 10).then_some(u64::from(d))
    };
    let (int, frac) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], Some(&text[dot + 1..])),
        None => (text, None),
    };
    if int.is_empty() || int.len() > 9 {
        return None;
    }
    let mut whole = 0u64;
    for &b in int {
        whole = whole * 10 + digit(b)?;
    }
    let mut milli = 0u64;
    if let Some(frac) = frac {
        if frac.is_empty() || frac.len() > 3 {
            return None;
        }
        for (i, &b) in frac.iter().enumerate() {
            milli += digit(b)? * [100, 10, 1][i];
        }
    }
    (whole <= Register::MAX_PUBLISHED).then_some(whole * 1000 + milli)
}

/// Formats thousandths as a decimal with exactly 3 decimals (Wh → "12.345" kWh).
pub fn format_milli(value: u64) -> String {
    format!("{}.{:03}", value / 1000, value % 1000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn parse_milli_agrees_with_the_plain_version(
            text in "[ ]?-?[0-9]{0,12}[.]?[0-9]{0,6}[.0-9a-e+ ]{0,2}",
            plain in "[0-9]{1,10}([.][0-9]{0,4})?",
        ) {
            // Where the one-loop form gives a value, the plain way gives the same; up to nine
            // digits without decimals it gives one unless the plain way refuses the value.
            for text in [&text, &plain] {
                match plain_milli(text.as_bytes()) {
                    Some(fast) => prop_assert_eq!(Ok(fast), milli_by_parts(text), "{:?}", text),
                    None if text.len() <= 9 && text.bytes().all(|b| b.is_ascii_digit()) => {
                        prop_assert!(milli_by_parts(text).is_err(), "{:?}", text)
                    }
                    None => {}
                }
            }
        }
    }

    #[test]
    fn obis_codes_round_trip() {
        for r in Register::ALL {
            assert_eq!(Register::from_obis(r.obis()), Some(r));
            assert_eq!(Register::from_code(r as u8), Some(r));
        }
        assert_eq!(Register::from_obis("0-3:24.2.1"), Some(Register::Gas));
        assert_eq!(Register::from_obis("1-0:1.7.0"), None);
        assert_eq!(Register::Gas.unit(), Unit::M3);
        assert_eq!(Register::ExportT2.kind(), RegisterKind::Export);
    }

    #[test]
    fn decimals() {
        assert_eq!(parse_milli("12345.678"), Ok(12_345_678));
        assert_eq!(parse_milli("0.5"), Ok(500));
        assert_eq!(parse_milli("7"), Ok(7000));
        assert_eq!(parse_milli("1.2300"), Ok(1230));
        assert_eq!(parse_milli("1.2345"), Err(ValueError::TooPrecise));
        assert_eq!(parse_milli("-1"), Err(ValueError::Negative));
        assert_eq!(parse_milli("-0"), Ok(0));
        assert_eq!(parse_milli("abc"), Err(ValueError::NotANumber));
        assert_eq!(parse_milli("1."), Err(ValueError::NotANumber));
        assert_eq!(parse_milli(".5"), Err(ValueError::NotANumber));
        assert_eq!(parse_milli("1e5"), Err(ValueError::NotANumber));
        assert!(matches!(
            parse_milli("100000001"),
            Err(ValueError::Absurd { .. })
        ));
        assert!(matches!(
            parse_milli("99999999999999999999999"),
            Err(ValueError::Absurd { .. })
        ));
        assert_eq!(format_milli(12_345_678), "12345.678");
        assert_eq!(format_milli(5), "0.005");
    }

    proptest! {
        #[test]
        fn milli_round_trips(v in 0u64..=Register::MAX_PUBLISHED * 1000) {
            prop_assert_eq!(parse_milli(&format_milli(v)), Ok(v));
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,40}") {
            let _ = parse_milli(&s);
        }
    }
}
