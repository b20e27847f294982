//! Subjects' privacy state ([`SubjectState`]: objection, erasure, seal) in the column
//! family that held erasure tombstones, keyed by a one-way hash of each pseudonym so that
//! no file keeps an erased pseudonym's bytes. Pure: the engine reads and writes through it.
//!
//! ```text
//! key   = the pseudonym's one-way hash (16 bytes)
//! value = format (1: this one) | flags (1 objected, 2 erased) | sealed before (i64 BE
//!         UTC seconds, i64::MIN: none)                          = 10 bytes
//!         empty: an erasure tombstone of an earlier version (erased, sealed at load)
//! ```

use std::collections::HashMap;

use jiff::Timestamp;
use meterstand_pseudonym::Pseudonym;
use meterstand_store::SubjectState;

const FORMAT: u8 = 1;
const OBJECTED: u8 = 1;
const ERASED: u8 = 2;

/// The key of a pseudonym's state: a one-way hash, never the pseudonym itself.
pub(crate) fn key(p: Pseudonym) -> [u8; 16] {
    let hash = blake3::derive_key("meterstand 2026 erasure tombstone", &p.to_bytes());
    let mut out = [0u8; 16];
    out.copy_from_slice(&hash[..16]);
    out
}

pub(crate) fn encode(s: &SubjectState) -> [u8; 10] {
    let mut v = [0u8; 10];
    v[0] = FORMAT;
    v[1] = if s.objected { OBJECTED } else { 0 } | if s.erased { ERASED } else { 0 };
    let sealed = s.sealed_before.map_or(i64::MIN, Timestamp::as_second);
    v[2..].copy_from_slice(&sealed.to_be_bytes());
    v
}

/// Decodes a stored state; an empty value (an earlier version's tombstone) is an erasure
/// whose seal is `now`: what it kept stays out of analysis.
pub(crate) fn decode(v: &[u8], now: Timestamp) -> Option<SubjectState> {
    if v.is_empty() {
        return Some(SubjectState {
            objected: false,
            erased: true,
            sealed_before: Some(now),
        });
    }
    if v.len() != 10 || v[0] != FORMAT {
        return None;
    }
    let sealed = i64::from_be_bytes(v[2..].try_into().ok()?);
    Some(SubjectState {
        objected: v[1] & OBJECTED != 0,
        erased: v[1] & ERASED != 0,
        sealed_before: if sealed == i64::MIN {
            None
        } else {
            Some(Timestamp::from_second(sealed).ok()?)
        },
    })
}

/// The state recorded under one pseudonym (none: the default).
pub(crate) fn state_in(states: &HashMap<[u8; 16], SubjectState>, p: Pseudonym) -> SubjectState {
    if states.is_empty() {
        return SubjectState::default();
    }
    states.get(&key(p)).copied().unwrap_or_default()
}

/// Sets `state` under every one of `all` in memory, once the batch that carries it is
/// written.
pub(crate) fn remember(
    states: &mut HashMap<[u8; 16], SubjectState>,
    all: &[Pseudonym],
    state: SubjectState,
) {
    for p in all {
        if state.is_empty() {
            states.remove(&key(*p));
        } else {
            states.insert(key(*p), state);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_round_trip_and_old_tombstones_read_as_sealed_erasures() {
        let now: Timestamp = "2026-12-01T00:00:00Z".parse().expect("ts");
        for s in [
            SubjectState::default(),
            SubjectState {
                objected: true,
                erased: false,
                sealed_before: None,
            },
            SubjectState {
                objected: true,
                erased: true,
                sealed_before: Some(now),
            },
        ] {
            assert_eq!(decode(&encode(&s), now), Some(s));
        }
        assert_eq!(
            decode(&[], now),
            Some(SubjectState {
                objected: false,
                erased: true,
                sealed_before: Some(now)
            })
        );
        assert_eq!(decode(&[9, 0], now), None);
    }
}
