use std::str::FromStr;

/// Equipment identifier (DSMR OBIS 0-0:96.1.1), e.g. `E0031003262764316`. Personal data:
/// it is pseudonymised like the EAN and never printed by `Debug`.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MeterId(Box<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeterIdError {
    #[error("a meter id has 1 to {max} characters, this one has {0}", max = MeterId::MAX_LEN)]
    Length(usize),
    #[error("a meter id has only ASCII letters and digits, character {0} is not one")]
    Character(usize),
}

impl MeterId {
    pub const MAX_LEN: usize = 34;

    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The id as text, for the subject export only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for MeterId {
    type Err = MeterIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return Err(MeterIdError::Length(s.chars().count()));
        }
        if let Some(pos) = s.bytes().position(|b| !b.is_ascii_alphanumeric()) {
            return Err(MeterIdError::Character(pos + 1));
        }
        Ok(MeterId(s.into()))
    }
}

impl std::fmt::Debug for MeterId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MeterId(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_dsmr_ids_and_rejects_others() {
        let id: MeterId = "E0031003262764316".parse().expect("valid");
        assert_eq!(id.expose(), "E0031003262764316");
        assert_eq!(format!("{id:?}"), "MeterId(<redacted>)");
        assert_eq!("".parse::<MeterId>(), Err(MeterIdError::Length(0)));
        assert_eq!("E003 1".parse::<MeterId>(), Err(MeterIdError::Character(5)));
        assert!("A".repeat(35).parse::<MeterId>().is_err());
    }

    proptest! {
        #[test]
        fn alphanumeric_round_trips(s in "[A-Za-z0-9]{1,34}") {
            let id: MeterId = s.parse().expect("valid");
            prop_assert_eq!(id.expose(), s.as_str());
        }
    }
}
