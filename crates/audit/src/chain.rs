//! The line format and hash rule described in the crate documentation: canonical JSON, the
//! BLAKE3 link to the previous line, encoding a line and checking one on its own.

use std::fmt;
use std::str::FromStr;

use serde_json::{Map, Value};

use crate::entry::AuditEntry;
use crate::verify::ProblemKind;
use crate::{AuditError, MAX_LINE_BYTES};

/// The `prev` of the first line: 32 zero bytes.
pub const GENESIS_HASH: [u8; 32] = [0; 32];

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

fn link_hash(prev: &[u8; 32], canonical_without_hash: &[u8]) -> [u8; 32] {
    let mut hasher = blake3::Hasher::new();
    hasher.update(prev);
    hasher.update(canonical_without_hash);
    *hasher.finalize().as_bytes()
}

/// The line (with its `\n`) for `entry` at `seq` after a line hashed `prev`, and its hash.
pub(crate) fn encode_line(
    entry: &AuditEntry,
    seq: u64,
    prev: &[u8; 32],
) -> Result<(Vec<u8>, [u8; 32]), AuditError> {
    let mut value = serde_json::to_value(entry)?;
    let map = value.as_object_mut().ok_or_else(|| {
        AuditError::Json(serde::ser::Error::custom(
            "an entry must encode as an object",
        ))
    })?;
    map.insert("seq".into(), seq.into());
    map.insert("prev".into(), hex::encode(prev).into());
    let mut bytes = Vec::with_capacity(512);
    canonical(&value, &mut bytes)?;
    let hash = link_hash(prev, &bytes);
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
    /// The entry's own fields, chain fields removed.
    pub fields: Map<String, Value>,
}

/// Checks one line (without its `\n`) on its own.
pub(crate) fn check_line(bytes: &[u8]) -> Result<CheckedLine, (ProblemKind, String)> {
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
    if link_hash(&prev, &canon) != hash {
        return Err((
            ProblemKind::Edited,
            "the hash does not match the line's content: the line was edited".into(),
        ));
    }
    fields.remove("seq");
    fields.remove("prev");
    Ok(CheckedLine {
        seq,
        prev,
        hash,
        fields,
    })
}
