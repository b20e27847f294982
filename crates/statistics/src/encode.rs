//! A compact, stable binary layout of one row, written by hand so that it cannot change with a
//! dependency. All integers big-endian.
//!
//! ```text
//! 0      version (1)
//! 1      area tag: 0 postcode4, 1 region, 2 unknown, 3 remainder, 4 any
//! 2..4   area value: the postcode (1000..=9999) or the region (10..=99); else 0
//! 4      profile tag: 0 profile, 1 unknown, 2 any
//! 5      profile length n (0 unless tag 0; then 1..=8)
//! 6..    n ASCII bytes of the profile
//! +0..4  connections (u32)
//! +4..12 consumption (u64)
//! ```

use meterstand_model::{Postcode4, Profile};

use crate::{Area, ProfileCover, Row};

pub const ENCODING_VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("statistics row is truncated")]
    Truncated,
    #[error("statistics row has unknown encoding version {0}")]
    Version(u8),
    #[error("statistics row has an invalid area")]
    Area,
    #[error("statistics row has an invalid profile")]
    Profile,
    #[error("statistics row has {0} trailing bytes")]
    Trailing(usize),
}

/// Encodes a row (at most 26 bytes).
pub fn encode(row: &Row) -> Vec<u8> {
    let mut out = Vec::with_capacity(26);
    out.push(ENCODING_VERSION);
    let (tag, value) = match row.area {
        Area::Postcode4(p) => (0u8, p.get()),
        Area::Region(r) => (1, u16::from(r)),
        Area::Unknown => (2, 0),
        Area::Remainder => (3, 0),
        Area::Any => (4, 0),
    };
    out.push(tag);
    out.extend_from_slice(&value.to_be_bytes());
    match &row.profile {
        ProfileCover::Profile(p) => {
            out.push(0);
            let bytes = p.as_str().as_bytes();
            // A valid profile is 1..=8 bytes.
            out.push(u8::try_from(bytes.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(bytes);
        }
        ProfileCover::Unknown => out.extend_from_slice(&[1, 0]),
        ProfileCover::Any => out.extend_from_slice(&[2, 0]),
    }
    out.extend_from_slice(&row.connections.to_be_bytes());
    out.extend_from_slice(&row.consumption.to_be_bytes());
    out
}

fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Result<&'a [u8], DecodeError> {
    if bytes.len() < n {
        return Err(DecodeError::Truncated);
    }
    let (head, tail) = bytes.split_at(n);
    *bytes = tail;
    Ok(head)
}

fn array<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], DecodeError> {
    let mut a = [0u8; N];
    a.copy_from_slice(take(bytes, N)?);
    Ok(a)
}

/// Decodes what [`encode`] wrote, refusing anything else.
pub fn decode(mut bytes: &[u8]) -> Result<Row, DecodeError> {
    let b = &mut bytes;
    let [version, area_tag] = array::<2>(b)?;
    if version != ENCODING_VERSION {
        return Err(DecodeError::Version(version));
    }
    let value = u16::from_be_bytes(array::<2>(b)?);
    let area = match (area_tag, value) {
        (0, p) => Area::Postcode4(Postcode4::new(p).map_err(|_| DecodeError::Area)?),
        (1, r @ 10..=99) => Area::Region(u8::try_from(r).map_err(|_| DecodeError::Area)?),
        (2, 0) => Area::Unknown,
        (3, 0) => Area::Remainder,
        (4, 0) => Area::Any,
        _ => return Err(DecodeError::Area),
    };
    let [profile_tag, len] = array::<2>(b)?;
    let profile = match (profile_tag, len) {
        (0, 1..=8) => {
            let text = std::str::from_utf8(take(b, usize::from(len))?)
                .map_err(|_| DecodeError::Profile)?;
            ProfileCover::Profile(text.parse::<Profile>().map_err(|_| DecodeError::Profile)?)
        }
        (1, 0) => ProfileCover::Unknown,
        (2, 0) => ProfileCover::Any,
        _ => return Err(DecodeError::Profile),
    };
    let connections = u32::from_be_bytes(array::<4>(b)?);
    let consumption = u64::from_be_bytes(array::<8>(b)?);
    if !b.is_empty() {
        return Err(DecodeError::Trailing(b.len()));
    }
    Ok(Row {
        area,
        profile,
        connections,
        consumption,
    })
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn arb_row() -> impl Strategy<Value = Row> {
        let area = prop_oneof![
            (1000u16..=9999).prop_map(|p| Area::Postcode4(Postcode4::new(p).expect("postcode"))),
            (10u8..=99).prop_map(Area::Region),
            Just(Area::Unknown),
            Just(Area::Remainder),
            Just(Area::Any),
        ];
        let profile = prop_oneof![
            "[A-Z0-9]{1,8}".prop_map(|p| ProfileCover::Profile(p.parse().expect("profile"))),
            Just(ProfileCover::Unknown),
            Just(ProfileCover::Any),
        ];
        (area, profile, any::<u32>(), any::<u64>()).prop_map(
            |(area, profile, connections, consumption)| Row {
                area,
                profile,
                connections,
                consumption,
            },
        )
    }

    proptest! {
        #[test]
        fn round_trip(row in arb_row()) {
            let bytes = encode(&row);
            prop_assert!(bytes.len() <= 26);
            prop_assert_eq!(decode(&bytes), Ok(row));
            for cut in 0..bytes.len() {
                prop_assert!(decode(&bytes[..cut]).is_err());
            }
            let mut longer = bytes.clone();
            longer.push(0);
            prop_assert_eq!(decode(&longer), Err(DecodeError::Trailing(1)));
        }

        #[test]
        fn garbage_is_refused_not_panicked_on(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(row) = decode(&bytes) {
                prop_assert_eq!(encode(&row), bytes);
            }
        }
    }

    #[test]
    fn layout_is_stable() {
        let row = Row {
            area: Area::Region(35),
            profile: ProfileCover::Profile("E1A".parse().expect("profile")),
            connections: 11,
            consumption: 258,
        };
        assert_eq!(
            encode(&row),
            vec![
                1, 1, 0, 35, 0, 3, b'E', b'1', b'A', 0, 0, 0, 11, 0, 0, 0, 0, 0, 0, 1, 2
            ]
        );
    }
}
