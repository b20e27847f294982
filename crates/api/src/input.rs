//! Reading request input without ever echoing it. Query strings and JSON bodies are taken
//! apart here, and every refusal names the parameter or field and what it accepts, never the
//! value sent (which may be an EAN or anything else a client typed). Bodies are read only
//! after the role check, with a size limit and a time limit.

use std::pin::Pin;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::Query;
use axum::extract::rejection::QueryRejection;
use axum::http::{HeaderMap, header};
use serde_json::{Map, Value};

use crate::error::ApiError;

/// The query string as name/value pairs, checked against the names an endpoint accepts.
#[derive(Debug)]
pub(crate) struct QueryParams {
    pairs: Vec<(String, String)>,
}

pub(crate) type RawQuery = Result<Query<Vec<(String, String)>>, QueryRejection>;

impl QueryParams {
    /// Refuses unknown and repeated parameters (naming only the accepted ones).
    pub(crate) fn parse(raw: RawQuery, accepted: &[&'static str]) -> Result<QueryParams, ApiError> {
        let Query(pairs) =
            raw.map_err(|_| ApiError::bad_request("the query string is not valid URL encoding"))?;
        for (i, (name, _)) in pairs.iter().enumerate() {
            let Some(known) = accepted.iter().find(|a| **a == name.as_str()) else {
                return Err(ApiError::bad_request(if accepted.is_empty() {
                    "unknown query parameter: this endpoint takes none".to_string()
                } else {
                    format!(
                        "unknown query parameter: this endpoint accepts {}",
                        accepted.join(", ")
                    )
                }));
            };
            if pairs[..i].iter().any(|(n, _)| n == name) {
                return Err(ApiError::bad_request(format!(
                    "{known} is given more than once"
                )));
            }
        }
        Ok(QueryParams { pairs })
    }

    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// A parameter that must be there; `expected` says what it takes.
    pub(crate) fn required(&self, name: &'static str, expected: &str) -> Result<&str, ApiError> {
        self.get(name)
            .ok_or_else(|| ApiError::bad_request(format!("{name} is required: {expected}")))
    }
}

/// Reads a request body of at most `limit` bytes within `timeout`. A declared length over the
/// limit is refused before anything is read.
pub(crate) async fn read_body(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(ApiError::payload_too_large(limit));
    }
    match tokio::time::timeout(timeout, collect(body, limit)).await {
        Ok(result) => result,
        Err(_) => Err(ApiError::body_timeout(timeout)),
    }
}

async fn collect(mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut buf = Vec::new();
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame = frame.map_err(|_| ApiError::bad_request("the body could not be read"))?;
        if let Ok(data) = frame.into_data() {
            if buf.len().saturating_add(data.len()) > limit {
                return Err(ApiError::payload_too_large(limit));
            }
            buf.extend_from_slice(&data);
        }
    }
    Ok(Bytes::from(buf))
}

/// A JSON object with only the `accepted` fields. Syntax errors give a position, never text.
pub(crate) fn json_object(
    body: &[u8],
    accepted: &[&'static str],
) -> Result<Map<String, Value>, ApiError> {
    json_object_retiring(body, accepted, &[])
}

/// [`json_object`], refusing the `retired` fields of earlier versions each with its own
/// message (saying where the field went), whatever their value.
pub(crate) fn json_object_retiring(
    body: &[u8],
    accepted: &[&'static str],
    retired: &[(&'static str, &'static str)],
) -> Result<Map<String, Value>, ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "the body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })?;
    let Value::Object(fields) = value else {
        return Err(ApiError::bad_request(format!(
            "the body must be a JSON object with the fields {}",
            accepted.join(", ")
        )));
    };
    if let Some((_, message)) = retired.iter().find(|(name, _)| fields.contains_key(*name)) {
        return Err(ApiError::bad_request(*message));
    }
    if fields.keys().any(|k| !accepted.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!(
            "the body has an unknown field: accepted are {}",
            accepted.join(", ")
        )));
    }
    Ok(fields)
}

/// A string field; `None` when absent or null. A value of another type is refused by name.
pub(crate) fn string_field<'a>(
    fields: &'a Map<String, Value>,
    name: &'static str,
    expected: &str,
) -> Result<Option<&'a str>, ApiError> {
    match fields.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(ApiError::bad_request(format!(
            "{name} must be a string: {expected}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EAN: &str = "871687120000000001";

    fn message(e: ApiError) -> String {
        e.message
    }

    #[test]
    fn query_errors_name_the_parameter_not_the_value() {
        let pairs = |p: &[(&str, &str)]| -> RawQuery {
            Ok(Query(
                p.iter()
                    .map(|(a, b)| (a.to_string(), b.to_string()))
                    .collect(),
            ))
        };
        let unknown =
            QueryParams::parse(pairs(&[(EAN, "1")]), &["from", "to"]).expect_err("unknown");
        assert!(!message(unknown).contains(EAN));
        let twice = QueryParams::parse(pairs(&[("from", EAN), ("from", EAN)]), &["from"])
            .expect_err("twice");
        let m = message(twice);
        assert!(m.contains("from") && !m.contains(EAN), "{m}");
        let q = QueryParams::parse(pairs(&[("from", "x")]), &["from", "to"]).expect("ok");
        assert!(message(q.required("to", "a date").expect_err("missing")).contains("to"));
    }

    #[test]
    fn body_errors_name_the_field_not_the_value() {
        let accepted = ["consent", "postcode4"];
        for body in [
            format!(r#"{{"consent": {EAN}}}"#),
            format!(r#"{{"{EAN}": 1}}"#),
            format!(r#"[{EAN}]"#),
            format!(r#"{{"consent": {EAN}"#),
            format!(r#"{{"consent": "{EAN}" x}}"#),
        ] {
            let result = json_object(body.as_bytes(), &accepted)
                .and_then(|f| string_field(&f, "consent", "off or standard").map(|_| ()));
            let e = result.expect_err(&body);
            assert!(!e.message.contains(EAN), "{body}: {}", e.message);
        }
    }
}
