//! Pseudonyms for personal identifiers. A master key ring (one 32-byte key per version)
//! lives in a key file outside the data directory; from each master key we derive one
//! purpose key per identifier kind with `blake3::derive_key`, and a pseudonym is the keyed
//! BLAKE3 hash of the identifier, truncated to 16 bytes, tagged with the key version. One
//! more purpose key per version is not for identifiers: [`audit_keys`], the audit log's chain.
//!
//! Key material never reaches `Debug`, `Display` or an error, and is zeroed on drop.

mod keyring;
mod pseudonym;

pub use keyring::{KeyError, KeyRing, KeyVersion};
pub use pseudonym::{Pseudonym, PseudonymParseError, Pseudonymiser, audit_keys};
