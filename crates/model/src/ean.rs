use std::str::FromStr;

/// A connection id (EAN-18, GS1 mod-10 check digit). Stored as its ASCII digits so that
/// hashing it needs no formatting. Never printed by `Debug`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ean([u8; 18]);

/// Why a string is not a valid EAN. Never carries the offending digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EanError {
    #[error("an EAN has 18 digits, this one has {0} characters")]
    Length(usize),
    #[error("an EAN has only digits, character {0} is not one")]
    NotDigit(usize),
    #[error("the EAN check digit does not match (GS1 mod-10)")]
    CheckDigit,
}

impl Ean {
    /// The GS1 mod-10 check digit of a 17-digit body: weights 3,1,3,… from the right.
    pub fn check_digit(body: &[u8; 17]) -> u8 {
        let sum: u32 = body
            .iter()
            .rev()
            .enumerate()
            .map(|(i, d)| u32::from(d - b'0') * if i % 2 == 0 { 3 } else { 1 })
            .sum();
        ((10 - sum % 10) % 10) as u8
    }

    /// Completes a 17-digit body with its check digit (simulators and tests build EANs this way).
    pub fn from_body(body: u64) -> Option<Ean> {
        if body >= 100_000_000_000_000_000 {
            return None;
        }
        let mut digits = [b'0'; 18];
        let mut rest = body;
        for slot in digits[..17].iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        let mut body_digits = [0u8; 17];
        body_digits.copy_from_slice(&digits[..17]);
        digits[17] = b'0' + Self::check_digit(&body_digits);
        Some(Ean(digits))
    }

    /// The 18 ASCII digits, for hashing. Handle with care: this is personal data.
    pub fn as_bytes(&self) -> &[u8; 18] {
        &self.0
    }

    /// The digits as text, for the few places that must show them to their owner.
    pub fn expose(&self) -> &str {
        // The constructor admits ASCII digits only.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl FromStr for Ean {
    type Err = EanError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = s.as_bytes();
        if bytes.len() != 18 {
            return Err(EanError::Length(s.chars().count()));
        }
        if let Some(pos) = bytes.iter().position(|b| !b.is_ascii_digit()) {
            return Err(EanError::NotDigit(pos + 1));
        }
        let mut body = [0u8; 17];
        body.copy_from_slice(&bytes[..17]);
        if Self::check_digit(&body) != bytes[17] - b'0' {
            return Err(EanError::CheckDigit);
        }
        let mut digits = [0u8; 18];
        digits.copy_from_slice(bytes);
        Ok(Ean(digits))
    }
}

impl std::fmt::Debug for Ean {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Ean(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_valid_ean() {
        // A GS1 example body; check digit computed by hand: 3*(sum of odd-from-right) + even.
        let ean = Ean::from_body(87_123_456_789_012_345).expect("body fits");
        let parsed: Ean = ean.expose().parse().expect("valid");
        assert_eq!(parsed, ean);
        assert!(ean.expose().starts_with("871"));
    }

    #[test]
    fn hand_computed_check_digit() {
        // body 00000000000000001: rightmost digit weight 3 → sum 3 → check 7
        let mut body = [b'0'; 17];
        body[16] = b'1';
        assert_eq!(Ean::check_digit(&body), 7);
        assert!("000000000000000017".parse::<Ean>().is_ok());
        assert_eq!(
            "000000000000000018".parse::<Ean>(),
            Err(EanError::CheckDigit)
        );
    }

    #[test]
    fn rejects_with_reason_and_without_digits() {
        assert_eq!("123".parse::<Ean>(), Err(EanError::Length(3)));
        assert_eq!(
            "87123456789012345x".parse::<Ean>(),
            Err(EanError::NotDigit(18))
        );
        let valid = Ean::from_body(87_123_456_789_012_345).expect("body fits");
        let mut digits = *valid.as_bytes();
        digits[17] = b'0' + (digits[17] - b'0' + 1) % 10;
        let wrong = String::from_utf8(digits.to_vec()).expect("ascii");
        let err = wrong.parse::<Ean>().expect_err("check digit is off by one");
        assert_eq!(err, EanError::CheckDigit);
        assert!(!err.to_string().contains("87123"));
        assert_eq!(format!("{:?}", valid), "Ean(<redacted>)");
    }

    proptest! {
        #[test]
        fn every_body_gives_a_valid_ean(body in 0u64..100_000_000_000_000_000) {
            let ean = Ean::from_body(body).expect("in range");
            prop_assert_eq!(ean.expose().parse::<Ean>(), Ok(ean));
        }

        #[test]
        fn a_changed_digit_is_caught(body in 0u64..100_000_000_000_000_000, pos in 0usize..18, delta in 1u8..10) {
            let ean = Ean::from_body(body).expect("in range");
            let mut digits = *ean.as_bytes();
            digits[pos] = b'0' + (digits[pos] - b'0' + delta) % 10;
            let text = String::from_utf8(digits.to_vec()).expect("ascii");
            prop_assert_eq!(text.parse::<Ean>(), Err(EanError::CheckDigit));
        }

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,30}") {
            let _ = s.parse::<Ean>();
        }
    }
}
