//! The line format and hash rule described in the crate documentation: canonical JSON, the
//! (keyed) BLAKE3 link to the previous line, encoding a line and checking one on its own.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::entry::AuditEntry;
use crate::keys::ChainKeys;
use crate::{AuditError, MAX_LINE_BYTES};

/// Where the chain stands, for keeping outside the log file: the head, and the seq of the
/// oldest line still kept (segments before it were removed by retention). `first` is `None`
/// when only a head was recorded (`verify --head`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Anchor {
    pub head: ChainHead,
    pub first: Option<u64>,
}

/// What is wrong with a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProblemKind {
    /// Not a JSON object with valid chain fields, not an audit entry, or too long: the line
    /// was damaged or written by something else.
    Malformed,
    /// A valid-looking line whose bytes or content no longer match its hash.
    Edited,
    /// `seq` jumped forward: lines before this one were removed.
    Deleted,
    /// `seq` went back: lines were moved or duplicated.
    Reordered,
    /// `seq` is right but `prev` is not the previous line's hash: the line before was replaced
    /// by one with a recomputed hash.
    BrokenLink,
    /// The last line has no `\n`: a crash mid-write (the service cuts it off when it opens the
    /// log) or a cut file.
    TornTail,
    /// The file ends before the recorded head: lines were removed from the end.
    Truncated,
    /// The line at the recorded head has a different hash: the log was rewritten.
    HeadMismatch,
    /// A keyed line under a key version the key ring does not hold (or no key was given):
    /// its hash cannot be checked.
    UnknownKey,
    /// An unkeyed line after the chain was keyed: written, or re-chained, without the key.
    Unkeyed,
    /// The log starts after the oldest line the anchor says is kept: segments were removed
    /// outside retention.
    OutsideRetention,
    /// An `audit.gap` line: the service found lines missing at start-up, and no operator
    /// has acknowledged it yet.
    RecordedGap,
}

/// The `prev` of the first line: 32 zero bytes.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

/// The field naming the key version a keyed line is hashed under; absent on unkeyed lines.
pub(crate) const KEY_VERSION: &str = "key_version";

/// Where a log's chain ends: how many lines it has and the hash of the last one (the genesis
/// hash for an empty log). Written and parsed as `<lines>:<64 hex digits>`, so it can be logged
/// by the service and handed to `verify` later to detect lines removed from the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChainHead {
    pub lines: u64,
    pub hash: [u8; 32],
}

impl ChainHead {
    pub const EMPTY: ChainHead = ChainHead {
        lines: 0,
        hash: GENESIS_HASH,
    };

    /// The sequence number of the last line, `None` for an empty chain.
    pub fn last_seq(&self) -> Option<u64> {
        self.lines.checked_sub(1)
    }
}

impl fmt::Display for ChainHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.lines, hex::encode(self.hash))
    }
}

/// A chain head that does not look like `<lines>:<64 lowercase hex digits>`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a chain head looks like 42:<64 lowercase hex digits>")]
pub struct ChainHeadParseError;

impl FromStr for ChainHead {
    type Err = ChainHeadParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (lines, hash) = s.trim().split_once(':').ok_or(ChainHeadParseError)?;
        let lines = lines.parse().map_err(|_| ChainHeadParseError)?;
        let hash = parse_hash(hash).ok_or(ChainHeadParseError)?;
        Ok(ChainHead { lines, hash })
    }
}

impl serde::Serialize for ChainHead {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for ChainHead {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// 64 lowercase hex digits to 32 bytes. Uppercase is refused so that one hash has one spelling.
pub(crate) fn parse_hash(s: &str) -> Option<[u8; 32]> {
    if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
        return None;
    }
    let mut out = [0u8; 32];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}

/// Writes `v` in the canonical form. Keys are sorted here rather than relying on
/// `serde_json::Map`'s order, which changes if any crate in the build enables `preserve_order`.
pub(crate) fn canonical(v: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match v {
        Value::Object(map) => canonical_object(map, out)?,
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                canonical(item, out)?;
            }
            out.push(b']');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

fn canonical_object(map: &Map<String, Value>, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    let mut members: Vec<(&String, &Value)> = map.iter().collect();
    members.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    out.push(b'{');
    for (i, (key, value)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        serde_json::to_writer(&mut *out, key)?;
        out.push(b':');
        canonical(value, out)?;
    }
    out.push(b'}');
    Ok(())
}

/// `BLAKE3(prev ‖ canonical)`, keyed with `key` for a keyed line.
fn link_hash(key: Option<&[u8; 32]>, prev: &[u8; 32], canonical_without_hash: &[u8]) -> [u8; 32] {
    let mut hasher = match key {
        Some(key) => blake3::Hasher::new_keyed(key),
        None => blake3::Hasher::new(),
    };
    hasher.update(prev);
    hasher.update(canonical_without_hash);
    *hasher.finalize().as_bytes()
}

/// The line (with its `\n`) for `entry` at `seq` after a line hashed `prev`, and its hash:
/// keyed under the current key of `keys` when there is one.
pub(crate) fn encode_line(
    entry: &AuditEntry,
    seq: u64,
    prev: &[u8; 32],
    keys: &ChainKeys,
) -> Result<(Vec<u8>, [u8; 32]), AuditError> {
    let key = keys.current();
    let mut value = serde_json::to_value(entry)?;
    let map = value.as_object_mut().ok_or_else(|| {
        AuditError::Json(serde::ser::Error::custom(
            "an entry must encode as an object",
        ))
    })?;
    map.insert("seq".into(), seq.into());
    map.insert("prev".into(), hex::encode(prev).into());
    if let Some((version, _)) = key {
        map.insert(KEY_VERSION.into(), version.into());
    }
    let mut bytes = Vec::with_capacity(512);
    canonical(&value, &mut bytes)?;
    let hash = link_hash(key.map(|(_, k)| k), prev, &bytes);
    if let Some(map) = value.as_object_mut() {
        map.insert("hash".into(), hex::encode(hash).into());
    }
    bytes.clear();
    canonical(&value, &mut bytes)?;
    bytes.push(b'\n');
    if bytes.len() > MAX_LINE_BYTES {
        return Err(AuditError::TooLarge {
            len: bytes.len(),
            max: MAX_LINE_BYTES,
        });
    }
    Ok((bytes, hash))
}

/// A line that is valid on its own (canonical, hash matches its content); whether it links to
/// the line before is the caller's check.
#[derive(Debug)]
pub(crate) struct CheckedLine {
    pub seq: u64,
    pub prev: [u8; 32],
    pub hash: [u8; 32],
    /// The key version of a keyed line; `None` for an unkeyed (legacy) line.
    pub key_version: Option<u16>,
    /// `false` when the line is keyed under a version `keys` does not hold: its form was
    /// checked, its hash could not be.
    pub hash_checked: bool,
    /// The entry's own fields, chain fields removed.
    pub fields: Map<String, Value>,
}

/// Checks one line (without its `\n`) on its own: a keyed line under the key it names.
pub(crate) fn check_line(
    bytes: &[u8],
    keys: &ChainKeys,
) -> Result<CheckedLine, (ProblemKind, String)> {
    let malformed = |why: String| (ProblemKind::Malformed, why);
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| malformed(format!("not JSON ({e})")))?;
    let Value::Object(mut fields) = value else {
        return Err(malformed("not a JSON object".into()));
    };
    // The chain fields first: a line without them is not a chained entry at all.
    let hash = match fields.get("hash") {
        Some(Value::String(s)) => parse_hash(s),
        _ => None,
    }
    .ok_or_else(|| malformed("no valid `hash`".into()))?;
    let prev = match fields.get("prev") {
        Some(Value::String(s)) => parse_hash(s),
        _ => None,
    }
    .ok_or_else(|| malformed("no valid `prev`".into()))?;
    let seq = fields
        .get("seq")
        .and_then(Value::as_u64)
        .ok_or_else(|| malformed("no valid `seq`".into()))?;
    let key_version = match fields.get(KEY_VERSION) {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .and_then(|v| u16::try_from(v).ok())
                .ok_or_else(|| malformed(format!("no valid `{KEY_VERSION}`")))?,
        ),
    };
    let mut canon = Vec::with_capacity(bytes.len());
    canonical_object(&fields, &mut canon)
        .map_err(|e| malformed(format!("cannot re-encode ({e})")))?;
    if canon != bytes {
        return Err((
            ProblemKind::Edited,
            "the line is not in canonical form: bytes were changed".into(),
        ));
    }
    fields.remove("hash");
    canon.clear();
    canonical_object(&fields, &mut canon)
        .map_err(|e| malformed(format!("cannot re-encode ({e})")))?;
    let key = key_version.and_then(|v| keys.get(v));
    let hash_checked = key_version.is_none() || key.is_some();
    if hash_checked && link_hash(key, &prev, &canon) != hash {
        let why = if key.is_some() {
            "the keyed hash does not match the line's content: the line was edited (or re-chained without the key)"
        } else {
            "the hash does not match the line's content: the line was edited"
        };
        return Err((ProblemKind::Edited, why.into()));
    }
    fields.remove("seq");
    fields.remove("prev");
    fields.remove(KEY_VERSION);
    Ok(CheckedLine {
        seq,
        prev,
        hash,
        key_version,
        hash_checked,
        fields,
    })
}
