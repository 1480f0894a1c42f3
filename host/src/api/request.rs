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

/// A number in a path segment: digits only (no sign, no spaces).
pub fn path_number(what: &str, value: &str) -> Result<u64, ApiError> {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    value.parse::<u64>().ok().filter(|_| digits).ok_or_else(|| {
        ApiError::bad_request(
            "invalid_request",
            format!("{what} must be a non-negative integer, not {value:?}"),
        )
    })
}

pub fn path_error(rejection: PathRejection) -> ApiError {
    ApiError::bad_request(
        "invalid_request",
        format!("invalid path: {}", rejection.body_text()),
    )
}

/// `limit` on every route that pages: 1 to 1000, 100 when absent; anything
/// else is a 400 (never clamped silently).
pub const DEFAULT_LIMIT: u64 = 100;
pub const MAX_LIMIT: u64 = 1000;

/// The parameters that may be given more than once (filters: each value adds
/// to the set); any other key given twice is a 400, not "the last one wins".
const REPEATABLE: &[&str] = &["event_type", "aggregate_type"];

/// The query string as key/value pairs.
pub struct QueryPairs(Vec<(String, String)>);

impl QueryPairs {
    /// Strict: a `%` not followed by two hex digits, an encoding of bytes
    /// that are not UTF-8, or a key given twice (outside `REPEATABLE`) is a 400.
    pub fn parse(raw: Option<&str>) -> Result<QueryPairs, ApiError> {
        let raw = raw.unwrap_or("");
        check_percent_encoding(raw)?;
        let pairs = serde_urlencoded::from_str::<Vec<(String, String)>>(raw).map_err(|e| {
            ApiError::bad_request("invalid_request", format!("invalid query string: {e}"))
        })?;
        let mut seen = std::collections::HashSet::new();
        for (key, _) in &pairs {
            if !REPEATABLE.contains(&key.as_str()) && !seen.insert(key.as_str()) {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!("query parameter {key:?} is given more than once"),
                ));
            }
        }
        Ok(QueryPairs(pairs))
    }

    pub fn pairs(&self) -> &[(String, String)] {
        &self.0
    }

    /// `limit`: see [`DEFAULT_LIMIT`] and [`MAX_LIMIT`].
    pub fn limit(&self) -> Result<usize, ApiError> {
        let limit = self.number("limit")?.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("limit must be 1 to {MAX_LIMIT} (default {DEFAULT_LIMIT}), not {limit}"),
            ));
        }
        Ok(limit as usize)
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

    /// A non-negative integer; `key=` with no value is a 400 like any other
    /// value that is not a number (absent is `None`).
    pub fn number(&self, key: &str) -> Result<Option<u64>, ApiError> {
        self.get(key)
            .map(|v| {
                let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
                v.parse::<u64>().ok().filter(|_| digits).ok_or_else(|| {
                    ApiError::bad_request(
                        "invalid_request",
                        format!("query parameter {key} must be a non-negative integer, not {v:?}"),
                    )
                })
            })
            .transpose()
    }

    /// Refuses a key this route does not read: a typo (`form=` for `from=`)
    /// must not silently mean "no parameter", least of all on a route whose
    /// default is the whole log.
    pub fn only(&self, known: &[&str]) -> Result<(), ApiError> {
        match self.0.iter().find(|(k, _)| !known.contains(&k.as_str())) {
            Some((k, _)) => Err(ApiError::bad_request(
                "invalid_request",
                format!(
                    "unknown query parameter {k:?} (this route reads {})",
                    known.join(", ")
                ),
            )),
            None => Ok(()),
        }
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

/// Every `%` starts an escape of two hex digits, and what the escapes encode
/// is UTF-8 (the decoder we use would otherwise pass `%zz` through as text and
/// turn bad bytes into U+FFFD, so a client's mistake would mean something else).
fn check_percent_encoding(raw: &str) -> Result<(), ApiError> {
    let bytes = raw.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes
                .get(i + 1..i + 3)
                .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok());
            let Some(byte) = hex else {
                return Err(ApiError::bad_request(
                    "invalid_request",
                    format!(
                        "the query string has a `%` at byte {i} that is not followed by two hex digits"
                    ),
                ));
            };
            decoded.push(byte);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    std::str::from_utf8(&decoded).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("the query string's percent escapes do not encode UTF-8: {e}"),
        )
    })?;
    Ok(())
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

/// Answers that leave part of the request body unread close the connection,
/// and say so (`Connection: close`). Otherwise hyper closes it anyway after
/// the response, and a client that already put the connection back in its pool
/// sends its next request into a closed socket: "the server answered nothing".
/// (A rejected upload over the limit did exactly that to the request after it.)
pub async fn close_if_body_unread(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::http::header::{CONNECTION, CONTENT_LENGTH, TRANSFER_ENCODING};
    let headers = request.headers();
    let has_body = match headers.get(CONTENT_LENGTH) {
        Some(length) => length.as_bytes() != b"0",
        None => headers.contains_key(TRANSFER_ENCODING),
    };
    if !has_body {
        return next.run(request).await;
    }
    let ended = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (parts, body) = request.into_parts();
    let body = Body::new(EndTracked {
        inner: body,
        ended: ended.clone(),
    });
    let mut response = next
        .run(axum::extract::Request::from_parts(parts, body))
        .await;
    if !ended.load(std::sync::atomic::Ordering::Acquire) {
        response
            .headers_mut()
            .insert(CONNECTION, axum::http::HeaderValue::from_static("close"));
    }
    response
}

/// A request body that notes when it has been read to its end.
struct EndTracked {
    inner: Body,
    ended: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for EndTracked {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.inner).poll_frame(cx);
        if let std::task::Poll::Ready(None) = polled {
            self.ended.store(true, std::sync::atomic::Ordering::Release);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
