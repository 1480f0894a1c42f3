//! Taking requests apart with clear errors: path segments, query strings and
//! bodies with limits. axum's own extractors answer in plain text; these answer
//! in problem+json like everything else.

use axum::body::{Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::http::StatusCode;
use std::time::Duration;

use super::problem::ApiError;

/// Checks a path segment: not empty, not `.` or `..`, no control characters, bounded.
pub fn segment<'a>(what: &str, value: &'a str, max: usize) -> Result<&'a str, ApiError> {
    let bad = |why: &str| {
        Err(ApiError::bad_request(
            "invalid_request",
            format!("{what} {value:?} {why}"),
        ))
    };
    if value.is_empty() {
        return bad("is empty");
    }
    if value == "." || value == ".." {
        return bad("is not allowed");
    }
    if value.len() > max {
        return bad(&format!("is longer than {max} bytes"));
    }
    if value.chars().any(char::is_control) {
        return bad("contains a control character");
    }
    Ok(value)
}

pub fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::bad_request(
        "invalid_request",
        format!("invalid path: {}", rejection.body_text()),
    )
}

/// The query string as key/value pairs (keys may repeat).
pub struct QueryPairs(Vec<(String, String)>);

impl QueryPairs {
    pub fn parse(raw: Option<&str>) -> Result<QueryPairs, ApiError> {
        let pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(raw.unwrap_or(""))
            .map_err(|e| {
                ApiError::bad_request("invalid_request", format!("invalid query string: {e}"))
            })?;
        Ok(QueryPairs(pairs))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of a key; comma-separated values count as several.
    pub fn all(&self, key: &str) -> Vec<String> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .flat_map(|(_, v)| v.split(','))
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_string)
            .collect()
    }

    pub fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .filter(|v| !v.is_empty())
            .map(|v| {
                v.parse::<u64>().map_err(|_| {
                    ApiError::bad_request(
                        "invalid_request",
                        format!("query parameter {key} must be a non-negative integer, not {v:?}"),
                    )
                })
            })
            .transpose()
    }

    pub fn flag(&self, key: &str) -> Result<bool, ApiError> {
        match self.get(key) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(other) => Err(ApiError::bad_request(
                "invalid_request",
                format!("query parameter {key} must be true or false, not {other:?}"),
            )),
        }
    }
}

/// Reads a body of at most `limit` bytes that arrives within `timeout` (a
/// client that trickles a body must not hold a connection for hours).
pub async fn body(body: Body, limit: usize, timeout: Duration) -> Result<Bytes, ApiError> {
    let read = tokio::time::timeout(timeout, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                format!("the body did not arrive within {} s", timeout.as_secs_f64()),
            )
        })?;
    read.map_err(|e| {
        // axum wraps http-body-util's LengthLimitError; its text is the stable part.
        let mut too_large = false;
        let mut source: Option<&dyn std::error::Error> = Some(&e);
        while let Some(err) = source {
            too_large |= err.to_string().contains("length limit exceeded");
            source = err.source();
        }
        if too_large {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!("the body is larger than the limit of {limit} bytes"),
            )
        } else {
            ApiError::bad_request("invalid_request", format!("could not read the body: {e}"))
        }
    })
}

/// A body that must be UTF-8 JSON by the rules of `json_text::check`.
pub fn json_text(bytes: &Bytes, code: &'static str) -> Result<String, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| ApiError::bad_request(code, format!("the body is not UTF-8: {e}")))?;
    crate::json_text::check(text)
        .map_err(|e| ApiError::bad_request(code, format!("the body is not JSON: {e}")))?;
    Ok(text.to_string())
}
