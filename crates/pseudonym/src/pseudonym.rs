use std::collections::BTreeMap;
use std::str::FromStr;

use meterstand_model::{Ean, MeterId};
use zeroize::Zeroizing;

use crate::{KeyRing, KeyVersion};

/// `blake3::derive_key` contexts: fixed, unique per identifier kind, never reused.
const EAN_CONTEXT: &str = "meterstand 2026-11-27 connection EAN pseudonym v1";
const METER_CONTEXT: &str = "meterstand 2026-11-27 meter id pseudonym v1";
// Retired with the analysts' per-connection series (never reuse it for another purpose):
// "meterstand 2026-12-01 analyst series id v1".
/// The audit log's keyed hash chain (`meterstand-audit`): not an identifier, but the same
/// derivation, so that one master key ring is the only secret.
const AUDIT_CONTEXT: &str = "meterstand 2026-12-20 audit log chain key v1";

/// The audit purpose key of every master key version, oldest first: the audit log chains
/// its lines with keyed BLAKE3 under the current one, so that whoever can edit the log but
/// has no master key cannot re-chain it (docs/design.md, "Audit log").
pub fn audit_keys(ring: &KeyRing) -> Vec<(KeyVersion, Zeroizing<[u8; 32]>)> {
    ring.versions()
        .filter_map(|v| {
            let master = ring.key(v)?;
            Some((v, Zeroizing::new(blake3::derive_key(AUDIT_CONTEXT, master))))
        })
        .collect()
}

/// A keyed pseudonym: key version and 16 bytes of keyed BLAKE3. Its text form is
/// `v<version>-<32 hex digits>`, its binary form 2 bytes of version (big endian) then the hash,
/// so pseudonyms of one key version sort together.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Pseudonym {
    pub version: KeyVersion,
    pub hash: [u8; 16],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PseudonymParseError {
    #[error("a pseudonym looks like v1-0123456789abcdef0123456789abcdef")]
    Format,
}

impl Pseudonym {
    pub const LEN: usize = 18;

    pub fn to_bytes(self) -> [u8; Self::LEN] {
        let mut out = [0u8; Self::LEN];
        out[..2].copy_from_slice(&self.version.to_be_bytes());
        out[2..].copy_from_slice(&self.hash);
        out
    }

    pub fn from_bytes(bytes: &[u8]) -> Option<Pseudonym> {
        let bytes: &[u8; Self::LEN] = bytes.get(..Self::LEN)?.try_into().ok()?;
        let mut hash = [0u8; 16];
        hash.copy_from_slice(&bytes[2..]);
        Some(Pseudonym {
            version: u16::from_be_bytes([bytes[0], bytes[1]]),
            hash,
        })
    }
}

impl std::fmt::Display for Pseudonym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "v{}-{}", self.version, hex::encode(self.hash))
    }
}

impl std::fmt::Debug for Pseudonym {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Pseudonym({self})")
    }
}

impl FromStr for Pseudonym {
    type Err = PseudonymParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (version, hash_hex) = s
            .strip_prefix('v')
            .and_then(|r| r.split_once('-'))
            .ok_or(PseudonymParseError::Format)?;
        let version: KeyVersion = version.parse().map_err(|_| PseudonymParseError::Format)?;
        if version == 0 || hash_hex.len() != 32 || hash_hex.bytes().any(|b| b.is_ascii_uppercase())
        {
            return Err(PseudonymParseError::Format);
        }
        let mut hash = [0u8; 16];
        hex::decode_to_slice(hash_hex, &mut hash).map_err(|_| PseudonymParseError::Format)?;
        Ok(Pseudonym { version, hash })
    }
}

struct PurposeKeys {
    ean: Zeroizing<[u8; 32]>,
    meter: Zeroizing<[u8; 32]>,
}

/// Turns identifiers into pseudonyms under the current key version (and, for look-ups of
/// data not yet re-keyed, under every older version too).
pub struct Pseudonymiser {
    current: KeyVersion,
    keys: BTreeMap<KeyVersion, PurposeKeys>,
}

impl Pseudonymiser {
    pub fn new(ring: &KeyRing) -> Pseudonymiser {
        let keys = ring
            .versions()
            .filter_map(|v| {
                let master = ring.key(v)?;
                Some((
                    v,
                    PurposeKeys {
                        ean: Zeroizing::new(blake3::derive_key(EAN_CONTEXT, master)),
                        meter: Zeroizing::new(blake3::derive_key(METER_CONTEXT, master)),
                    },
                ))
            })
            .collect();
        Pseudonymiser {
            current: ring.current_version(),
            keys,
        }
    }

    pub fn current_version(&self) -> KeyVersion {
        self.current
    }

    /// The EAN's pseudonym under the current key.
    #[inline]
    pub fn ean(&self, ean: &Ean) -> Pseudonym {
        match self.keys.get(&self.current) {
            Some(k) => hash(self.current, &k.ean, ean.as_bytes()),
            None => Pseudonym {
                version: 0,
                hash: [0; 16],
            },
        }
    }

    /// The EAN's pseudonyms under the older key versions, newest first; empty with one key.
    pub fn ean_older_versions(&self, ean: &Ean) -> Vec<Pseudonym> {
        self.keys
            .iter()
            .rev()
            .filter(|(v, _)| **v != self.current)
            .map(|(v, k)| hash(*v, &k.ean, ean.as_bytes()))
            .collect()
    }

    /// The EAN's pseudonym under every key version, current first: where its data may lie.
    pub fn ean_all_versions(&self, ean: &Ean) -> Vec<Pseudonym> {
        self.keys
            .iter()
            .rev()
            .map(|(v, k)| hash(*v, &k.ean, ean.as_bytes()))
            .collect()
    }

    /// The meter id's pseudonym under the current key.
    pub fn meter(&self, meter: &MeterId) -> Pseudonym {
        match self.keys.get(&self.current) {
            Some(k) => hash(self.current, &k.meter, meter.as_bytes()),
            None => Pseudonym {
                version: 0,
                hash: [0; 16],
            },
        }
    }
}

#[inline]
fn hash(version: KeyVersion, key: &[u8; 32], input: &[u8]) -> Pseudonym {
    let full = blake3::keyed_hash(key, input);
    let mut hash = [0u8; 16];
    hash.copy_from_slice(&full.as_bytes()[..16]);
    Pseudonym { version, hash }
}

impl std::fmt::Debug for Pseudonymiser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pseudonymiser")
            .field("current", &self.current)
            .field("keys", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ring() -> KeyRing {
        KeyRing::from_keys([(1, [7u8; 32])])
    }

    #[test]
    fn same_digits_differ_across_kinds_and_keys() {
        let p = Pseudonymiser::new(&ring());
        let ean = Ean::from_body(87_100_000_000_000_001).expect("fits");
        let meter: MeterId = ean.expose().parse().expect("digits are a valid meter id");
        assert_ne!(p.ean(&ean).hash, p.meter(&meter).hash);
        let other = Pseudonymiser::new(&KeyRing::from_keys([(1, [8u8; 32])]));
        assert_ne!(p.ean(&ean), other.ean(&ean));
        assert_eq!(p.ean(&ean), p.ean(&ean));
    }

    #[test]
    fn rotation_tags_versions_and_finds_old_pseudonyms() {
        let mut ring = ring();
        let old = Pseudonymiser::new(&ring);
        ring.rotate().expect("rotate");
        let new = Pseudonymiser::new(&ring);
        let ean = Ean::from_body(87_100_000_000_000_002).expect("fits");
        assert_eq!(new.ean(&ean).version, 2);
        assert_eq!(old.ean(&ean).version, 1);
        let all = new.ean_all_versions(&ean);
        assert_eq!(all, vec![new.ean(&ean), old.ean(&ean)]);
    }

    #[test]
    fn the_audit_key_is_its_own_purpose_per_version() {
        let mut ring = ring();
        let one = audit_keys(&ring);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].0, 1);
        assert_eq!(*one[0].1, blake3::derive_key(AUDIT_CONTEXT, &[7u8; 32]));
        assert_ne!(*one[0].1, blake3::derive_key(EAN_CONTEXT, &[7u8; 32]));
        assert_ne!(*one[0].1, blake3::derive_key(METER_CONTEXT, &[7u8; 32]));
        assert_ne!(*one[0].1, [7u8; 32]);
        ring.rotate().expect("rotate");
        let two = audit_keys(&ring);
        assert_eq!(two.iter().map(|(v, _)| *v).collect::<Vec<_>>(), vec![1, 2]);
        assert_eq!(*two[0].1, *one[0].1);
        assert_ne!(*two[1].1, *two[0].1);
    }

    #[test]
    fn debug_hides_keys() {
        let p = Pseudonymiser::new(&KeyRing::from_keys([(1, [0xcd; 32])]));
        let text = format!("{p:?}");
        assert!(!text.contains("cdcd") && text.contains("<redacted>"));
        let derived = blake3::derive_key(EAN_CONTEXT, &[0xcd; 32]);
        assert!(!text.contains(&hex::encode(&derived[..4])));
    }

    #[test]
    fn text_form() {
        let p = Pseudonym {
            version: 3,
            hash: [0xab; 16],
        };
        assert_eq!(p.to_string(), format!("v3-{}", "ab".repeat(16)));
        assert!(
            "v0-abababababababababababababababab"
                .parse::<Pseudonym>()
                .is_err()
        );
        assert!(
            "v1-ABABABABABABABABABABABABABABABAB"
                .parse::<Pseudonym>()
                .is_err()
        );
        assert!("x1-ab".parse::<Pseudonym>().is_err());
        assert!("v1-abab".parse::<Pseudonym>().is_err());
    }

    proptest! {
        #[test]
        fn text_and_bytes_round_trip(version in 1u16.., hash in any::<[u8; 16]>()) {
            let p = Pseudonym { version, hash };
            prop_assert_eq!(p.to_string().parse::<Pseudonym>(), Ok(p));
            prop_assert_eq!(Pseudonym::from_bytes(&p.to_bytes()), Some(p));
        }

        #[test]
        fn parse_never_panics(s in "\\PC{0,60}") {
            let _ = s.parse::<Pseudonym>();
        }
    }
}
