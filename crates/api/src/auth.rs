//! Bearer tokens with roles. Only SHA-256 hashes of tokens are configured; a presented token
//! is hashed and looked up, so the server never holds a token in plain text.

use std::collections::HashMap;
use std::str::FromStr;

use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::ApiState;
use crate::error::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
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

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token {id:?}: hash must be sha256:<64 hex digits>")]
    BadHash { id: String },
    #[error("token {id:?}: the same token is configured twice")]
    Duplicate { id: String },
}

impl TokenTable {
    /// From `(id, role, "sha256:<hex>")` entries.
    pub fn new<'a>(
        entries: impl IntoIterator<Item = (&'a str, Role, &'a str)>,
    ) -> Result<TokenTable, TokenError> {
        let mut by_hash = HashMap::new();
        for (id, role, hash) in entries {
            let key = parse_hash(hash).ok_or_else(|| TokenError::BadHash { id: id.into() })?;
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
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.by_hash.get(&digest)
    }

    pub fn is_empty(&self) -> bool {
        self.by_hash.is_empty()
    }
}

/// The caller as the request presents itself; handlers decide with [`Caller::require`] so
/// that refused privacy calls can still be audited.
#[derive(Debug, Clone)]
pub struct Caller(pub Option<Identity>);

impl Caller {
    /// 401 without a known token, 403 for a role not in `allowed`.
    pub fn require(&self, allowed: &[Role]) -> Result<&Identity, ApiError> {
        let identity = self.0.as_ref().ok_or_else(ApiError::unauthorized)?;
        if allowed.contains(&identity.role) {
            Ok(identity)
        } else {
            Err(ApiError::forbidden(identity.role.as_str()))
        }
    }
}

impl FromRequestParts<ApiState> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &ApiState,
    ) -> Result<Caller, Self::Rejection> {
        let token = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim);
        Ok(Caller(
            token.and_then(|t| state.tokens().lookup(t).cloned()),
        ))
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
    fn require_distinguishes_missing_from_wrong_role() {
        let none = Caller(None);
        assert_eq!(
            none.require(&[Role::Crm]).map_err(|e| e.status.as_u16()),
            Err(401)
        );
        let crm = Caller(Some(Identity {
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
