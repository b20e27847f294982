use serde::{Deserialize, Serialize};

use crate::ConsentLevel;

/// Four-digit Dutch postcode area (1000–9999): coarse enough to group by, too coarse to
/// identify a household on its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Postcode4(u16);

/// A load profile code such as `E1A` or `G1A`: 1–8 ASCII letters and digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Profile(Box<str>);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectionError {
    #[error("postcode4 must be four digits from 1000 to 9999")]
    Postcode,
    #[error("profile must be 1 to 8 ASCII letters or digits (e.g. E1A, G1A)")]
    Profile,
}

impl Postcode4 {
    pub fn new(value: u16) -> Result<Self, ConnectionError> {
        if (1000..=9999).contains(&value) {
            Ok(Postcode4(value))
        } else {
            Err(ConnectionError::Postcode)
        }
    }

    pub fn get(self) -> u16 {
        self.0
    }
}

impl std::str::FromStr for Postcode4 {
    type Err = ConnectionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(ConnectionError::Postcode);
        }
        Postcode4::new(s.parse().map_err(|_| ConnectionError::Postcode)?)
    }
}

impl TryFrom<String> for Postcode4 {
    type Error = ConnectionError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Postcode4> for String {
    fn from(p: Postcode4) -> String {
        p.0.to_string()
    }
}

impl std::fmt::Display for Postcode4 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl std::str::FromStr for Profile {
    type Err = ConnectionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 8 || !s.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(ConnectionError::Profile);
        }
        Ok(Profile(s.into()))
    }
}

impl TryFrom<String> for Profile {
    type Error = ConnectionError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Profile> for String {
    fn from(p: Profile) -> String {
        p.0.into()
    }
}

impl Profile {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// What the supplier's CRM registers for a connection. Keyed by pseudonym only.
///
/// An objection to analytical use is not part of it: that is the subject's right, recorded
/// by the privacy officer and kept with the subject's other privacy state, so that no CRM
/// update can withdraw it (`docs/design.md`, "One privacy state per subject").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Connection {
    pub consent: ConsentLevel,
    pub postcode4: Option<Postcode4>,
    pub profile: Option<Profile>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_validate() {
        assert_eq!("1234".parse::<Postcode4>().map(Postcode4::get), Ok(1234));
        assert!("0999".parse::<Postcode4>().is_err());
        assert!("12345".parse::<Postcode4>().is_err());
        assert!("12a4".parse::<Postcode4>().is_err());
        assert!("E1A".parse::<Profile>().is_ok());
        assert!("".parse::<Profile>().is_err());
        assert!("E1A;drop".parse::<Profile>().is_err());
    }
}
