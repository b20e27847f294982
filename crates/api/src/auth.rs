//! Bearer tokens with roles. Only SHA-256 hashes of tokens are configured; a presented token
//! is hashed and looked up, so the server never holds a token in plain text. The empty token
//! is never a token: its hash is refused when the table is built and an empty bearer value is
//! treated as no token at all.

use std::collections::HashMap;
use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::ApiState;
use crate::error::ApiError;

/// A token's role; in the config `analyst`, `privacy_officer`, `crm` or `operator`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Analyst,
    PrivacyOfficer,
    Crm,
    Operator,
}

impl Role {
    pub const ALL: [Role; 4] = [
        Role::Analyst,
        Role::PrivacyOfficer,
        Role::Crm,
        Role::Operator,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Analyst => "analyst",
            Role::PrivacyOfficer => "privacy_officer",
            Role::Crm => "crm",
            Role::Operator => "operator",
        }
    }
}

impl FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Role, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                format!("{s:?} is not a role: analyst, privacy_officer, crm or operator")
            })
    }
}

/// The `sha256:<hex>` form stored in the config for a token.
pub fn hash_token(token: &str) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(token.trim().as_bytes()))
    )
}

/// Parses `sha256:<64 hex>`.
pub fn parse_hash(text: &str) -> Option<[u8; 32]> {
    let hex_part = text.strip_prefix("sha256:")?;
    let mut out = [0u8; 32];
    hex::decode_to_slice(hex_part, &mut out).ok()?;
    Some(out)
}

/// Who is calling: a configured token's id and role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub id: String,
    pub role: Role,
}

#[derive(Debug, Clone, Default)]
pub struct TokenTable {
    by_hash: HashMap<[u8; 32], Identity>,
}

/// The SHA-256 of the empty string: a configured hash equal to it would let an empty bearer
/// value in.
const EMPTY_TOKEN_HASH: [u8; 32] = [
    0xe3, 0xb0, 0xc4, 0x42, 0x98, 0xfc, 0x1c, 0x14, 0x9a, 0xfb, 0xf4, 0xc8, 0x99, 0x6f, 0xb9, 0x24,
    0x27, 0xae, 0x41, 0xe4, 0x64, 0x9b, 0x93, 0x4c, 0xa4, 0x95, 0x99, 0x1b, 0x78, 0x52, 0xb8, 0x55,
];

/// The crate's error enum: what can be wrong with a configured token table.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token {id:?}: hash must be sha256:<64 hex digits>")]
    BadHash { id: String },
    #[error("token {id:?}: the same token is configured twice")]
    Duplicate { id: String },
    #[error(
        "token {id:?}: the hash is that of the empty token; generate one with `meterstand token new`"
    )]
    EmptyToken { id: String },
    #[error("a token id must not be empty")]
    EmptyId,
}

impl TokenTable {
    /// From `(id, role, "sha256:<hex>")` entries.
    pub fn new<'a>(
        entries: impl IntoIterator<Item = (&'a str, Role, &'a str)>,
    ) -> Result<TokenTable, TokenError> {
        let mut by_hash = HashMap::new();
        for (id, role, hash) in entries {
            if id.is_empty() {
                return Err(TokenError::EmptyId);
            }
            let key = parse_hash(hash).ok_or_else(|| TokenError::BadHash { id: id.into() })?;
            if key == EMPTY_TOKEN_HASH {
                return Err(TokenError::EmptyToken { id: id.into() });
            }
            let identity = Identity {
                id: id.to_string(),
                role,
            };
            if by_hash.insert(key, identity).is_some() {
                return Err(TokenError::Duplicate { id: id.into() });
            }
        }
        Ok(TokenTable { by_hash })
    }

    pub fn lookup(&self, token: &str) -> Option<&Identity> {
        if token.is_empty() {
            return None;
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if digest == EMPTY_TOKEN_HASH {
            return None;
        }
        self.by_hash.get(&digest)
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }

    /// The configured token ids, for metrics that are exported from the start.
    pub fn ids(&self) -> impl Iterator<Item = &str> {
        self.by_hash.values().map(|i| i.id.as_str())
    }

    /// Every entry: the token's SHA-256 and who it is.
    pub fn entries(&self) -> impl Iterator<Item = (&[u8; 32], &Identity)> {
        self.by_hash.iter()
    }

    /// The entries `keep` accepts, the others dropped: the table a failed reload leaves in
    /// force (only tokens still in the file).
    pub fn retain(&self, mut keep: impl FnMut(&[u8; 32], &Identity) -> bool) -> TokenTable {
        TokenTable {
            by_hash: self
                .by_hash
                .iter()
                .filter(|(hash, identity)| keep(hash, identity))
                .map(|(hash, identity)| (*hash, identity.clone()))
                .collect(),
        }
    }

    /// A short hash of the whole table (ids, roles and token hashes, in a fixed order): equal
    /// for equal tables whatever the order of the config entries, different as soon as one
    /// token is added, removed or changes role. Exported as
    /// `meterstand_token_table_info{fingerprint}`, so that `meterstand token revoke` can
    /// tell that the service runs exactly the table it wrote. 64 bits of SHA-256: a hash of
    /// hashes, it reveals nothing about a token.
    pub fn fingerprint(&self) -> String {
        let mut entries: Vec<(&str, &str, &[u8; 32])> = self
            .by_hash
            .iter()
            .map(|(hash, i)| (i.id.as_str(), i.role.as_str(), hash))
            .collect();
        entries.sort();
        let mut digest = Sha256::new();
        for (id, role, hash) in entries {
            digest.update((id.len() as u64).to_be_bytes());
            digest.update(id.as_bytes());
            digest.update(role.as_bytes());
            digest.update([0]);
            digest.update(hash);
        }
        let full: [u8; 32] = digest.finalize().into();
        hex::encode(&full[..8])
    }
}

/// What the request presented in its `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credential {
    /// No bearer token (or an empty one).
    None,
    /// A bearer token that matches no configured hash (unknown, revoked, mistyped).
    Unknown,
    /// A configured token.
    Known(Identity),
}

/// The caller as the request presents itself; handlers decide with [`Caller::require`], and
/// the audit layer records refusals with the token's id where it is known.
#[derive(Debug, Clone)]
pub struct Caller(pub Credential);

impl Caller {
    /// 401 without a known token, 403 for a role not in `allowed`.
    pub fn require(&self, allowed: &[Role]) -> Result<&Identity, ApiError> {
        let Credential::Known(identity) = &self.0 else {
            return Err(ApiError::unauthorized());
        };
        if allowed.contains(&identity.role) {
            Ok(identity)
        } else {
            Err(ApiError::forbidden(identity.role.as_str()))
        }
    }

    pub fn identity(&self) -> Option<&Identity> {
        match &self.0 {
            Credential::Known(i) => Some(i),
            _ => None,
        }
    }

    /// Looks the bearer token of `headers` up in `tokens`.
    pub(crate) fn from_headers(headers: &HeaderMap, tokens: &TokenTable) -> Caller {
        let Some(value) = headers.get(AUTHORIZATION) else {
            return Caller(Credential::None);
        };
        // The scheme name is case-insensitive (RFC 9110, 11.1).
        let token = value.to_str().ok().and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        });
        match token {
            None => Caller(Credential::Unknown),
            Some("") => Caller(Credential::None),
            Some(t) => match tokens.lookup(t) {
                Some(identity) => Caller(Credential::Known(identity.clone())),
                None => Caller(Credential::Unknown),
            },
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = std::convert::Infallible;

    /// The audit layer has already looked the token up; handlers see the same answer even if
    /// the token table is replaced while the request runs.
    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Caller, Self::Rejection> {
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        Ok(Caller::from_headers(&parts.headers, &state.tokens()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_by_hash_only() {
        let hash = hash_token("s3cret-token");
        let table = TokenTable::new([("a1", Role::Analyst, hash.as_str())]).expect("table");
        assert_eq!(
            table.lookup("s3cret-token").map(|i| i.role),
            Some(Role::Analyst)
        );
        assert!(table.lookup("s3cret-tokeN").is_none());
        assert!(TokenTable::new([("x", Role::Crm, "md5:00")]).is_err());
        assert!(
            TokenTable::new([
                ("a", Role::Crm, hash.as_str()),
                ("b", Role::Analyst, hash.as_str())
            ])
            .is_err()
        );
    }

    #[test]
    fn the_empty_token_is_never_a_token() {
        assert_eq!(parse_hash(&hash_token("")), Some(EMPTY_TOKEN_HASH));
        let empty = hash_token("");
        assert!(matches!(
            TokenTable::new([("e", Role::Operator, empty.as_str())]),
            Err(TokenError::EmptyToken { .. })
        ));
        let hash = hash_token("s3cret-token");
        let table = TokenTable::new([("a1", Role::Analyst, hash.as_str())]).expect("table");
        assert!(table.lookup("").is_none());
        let mut headers = HeaderMap::new();
        headers.insert(AUTHORIZATION, "Bearer   ".parse().expect("header"));
        assert_eq!(Caller::from_headers(&headers, &table).0, Credential::None);
        headers.insert(AUTHORIZATION, "Basic abc".parse().expect("header"));
        assert_eq!(
            Caller::from_headers(&headers, &table).0,
            Credential::Unknown
        );
        headers.insert(
            AUTHORIZATION,
            "Bearer s3cret-token".parse().expect("header"),
        );
        assert!(Caller::from_headers(&headers, &table).identity().is_some());
    }

    #[test]
    fn the_fingerprint_follows_the_table_not_the_order() {
        let (a, b) = (hash_token("token-a"), hash_token("token-b"));
        let ab = TokenTable::new([
            ("a", Role::Analyst, a.as_str()),
            ("b", Role::Crm, b.as_str()),
        ])
        .expect("table");
        let ba = TokenTable::new([
            ("b", Role::Crm, b.as_str()),
            ("a", Role::Analyst, a.as_str()),
        ])
        .expect("table");
        assert_eq!(ab.fingerprint(), ba.fingerprint());
        assert_eq!(ab.fingerprint().len(), 16);
        let only_b = ab.retain(|_, i| i.id != "a");
        assert_eq!(only_b.ids().collect::<Vec<_>>(), ["b"]);
        assert_ne!(only_b.fingerprint(), ab.fingerprint());
        let other_role = TokenTable::new([
            ("a", Role::Operator, a.as_str()),
            ("b", Role::Crm, b.as_str()),
        ])
        .expect("table");
        assert_ne!(other_role.fingerprint(), ab.fingerprint());
        assert_ne!(TokenTable::default().fingerprint(), ab.fingerprint());
    }

    #[test]
    fn require_distinguishes_missing_from_wrong_role() {
        let none = Caller(Credential::None);
        assert_eq!(
            none.require(&[Role::Crm]).map_err(|e| e.status.as_u16()),
            Err(401)
        );
        let crm = Caller(Credential::Known(Identity {
            id: "c".into(),
            role: Role::Crm,
        }));
        assert!(crm.require(&[Role::Crm]).is_ok());
        assert_eq!(
            crm.require(&[Role::Analyst]).map_err(|e| e.status.as_u16()),
            Err(403)
        );
    }
}
