//! The keys of a keyed chain: one 32-byte BLAKE3 key per master-key version, derived by the
//! caller (`meterstand-pseudonym` has the `audit` purpose); this crate never sees the master
//! key. Key material never reaches `Debug`, `Display` or an error, and is zeroed on drop.

use std::collections::BTreeMap;
use std::fmt;

use zeroize::Zeroizing;

/// The chain keys by key version. Lines are written under the highest version and checked
/// under the version each line names (`key_version`). Empty: an unkeyed (legacy) chain, for
/// tests and for reading old logs; the service always has keys.
#[derive(Clone, Default)]
pub struct ChainKeys {
    keys: BTreeMap<u16, Zeroizing<[u8; 32]>>,
}

impl ChainKeys {
    /// Keys by version; a later duplicate version replaces an earlier one.
    pub fn new(keys: impl IntoIterator<Item = (u16, Zeroizing<[u8; 32]>)>) -> ChainKeys {
        ChainKeys {
            keys: keys.into_iter().collect(),
        }
    }

    /// No key: lines are chained with plain BLAKE3, as before keyed chains.
    pub fn unkeyed() -> ChainKeys {
        ChainKeys::default()
    }

    pub fn is_keyed(&self) -> bool {
        !self.keys.is_empty()
    }

    /// The version and key new lines are written under.
    pub(crate) fn current(&self) -> Option<(u16, &[u8; 32])> {
        self.keys.iter().next_back().map(|(v, k)| (*v, &**k))
    }

    /// The version new lines are written under (0: unkeyed).
    pub(crate) fn current_version(&self) -> u16 {
        self.current().map_or(0, |(v, _)| v)
    }

    pub(crate) fn get(&self, version: u16) -> Option<&[u8; 32]> {
        self.keys.get(&version).map(|k| &**k)
    }
}

impl fmt::Debug for ChainKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ChainKeys")
            .field("versions", &self.keys.keys().collect::<Vec<_>>())
            .field("keys", &"<redacted>")
            .finish()
    }
}
