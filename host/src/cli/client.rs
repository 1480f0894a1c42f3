//! Requests to the server, and every way one can fail, each with its exit code.

use std::fmt::Write as _;
use std::time::Duration;

use reqwest::header::HeaderMap;
use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::Value;

use super::ClientOptions;

/// A refused or unroutable server should fail fast, not hang the terminal.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Generous, because an upload may carry a few megabytes of component and the
/// server compiles it before answering. Streams (`--follow`) have no limit.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a client command did not succeed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// No answer from the server at all: exit code 2.
    Unreachable { server: String, reason: String },
    /// The server answered with an error status: exit code 1.
    Problem(Problem),
    /// Bad input on our side (file, URL, JSON): exit code 1.
    Local(String),
    /// Writing to stdout failed (a closed pipe exits 0).
    Output(std::io::Error),
    /// A verify ran and found a divergence: exit code 3.
    Diverged(String),
}

impl Failure {
    pub(crate) fn exit_code(&self) -> i32 {
        match self {
            Failure::Unreachable { .. } => 2,
            Failure::Output(e) if e.kind() == std::io::ErrorKind::BrokenPipe => 0,
            Failure::Diverged(_) => 3,
            _ => 1,
        }
    }
}

/// An error answer, read from an RFC 9457 problem document when there is one.
#[derive(Debug)]
pub(crate) struct Problem {
    pub status: u16,
    pub code: String,
    pub detail: String,
    pub actual_version: Option<u64>,
    /// A rejected command's domain code, such as `insufficient-funds`.
    pub reason: Option<String>,
    /// The body, when it was a JSON object, for `--json`.
    pub json: Option<String>,
}

impl Problem {
    pub(crate) fn from_response(status: StatusCode, body: &str) -> Problem {
        let reason = status.canonical_reason().unwrap_or("error");
        let fallback_code = format!("http_{}", status.as_u16());
        match serde_json::from_str::<Value>(body) {
            Ok(v) if v.is_object() => Problem {
                status: status.as_u16(),
                code: v["code"].as_str().map_or(fallback_code, str::to_owned),
                detail: v["detail"]
                    .as_str()
                    .or(v["title"].as_str())
                    .unwrap_or(reason)
                    .to_owned(),
                actual_version: v["actual_version"].as_u64(),
                reason: v["reason"].as_str().map(str::to_owned),
                json: Some(body.trim_end().to_owned()),
            },
            // Not from our server (a proxy, say): show a little of what came back.
            _ => {
                let text: String = body.trim().chars().take(300).collect();
                Problem {
                    status: status.as_u16(),
                    code: fallback_code,
                    detail: if text.is_empty() {
                        reason.to_owned()
                    } else {
                        text
                    },
                    actual_version: None,
                    reason: None,
                    json: None,
                }
            }
        }
    }

    /// `<code>: <detail>`, plus the actual version after a version conflict
    /// since that is what the user needs to retry with.
    pub(crate) fn message(&self) -> String {
        let mut message = match &self.reason {
            Some(reason) => format!("{} ({reason}): {}", self.code, self.detail),
            None => format!("{}: {}", self.code, self.detail),
        };
        if let Some(actual) = self.actual_version {
            let _ = write!(message, " (actual version {actual})");
        }
        message
    }
}

/// A successful answer.
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

pub(crate) struct Client {
    http: reqwest::Client,
    /// The server URL without a trailing slash.
    base: String,
    token: Option<String>,
}

impl Client {
    pub(crate) fn new(opts: &ClientOptions) -> Result<Client, Failure> {
        let base = opts.server.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base).map_err(|e| {
            Failure::Local(format!(
                "the server URL {:?} is not valid: {e}",
                opts.server
            ))
        })?;
        // This build of reqwest carries no TLS; say so rather than fail obscurely.
        if parsed.scheme() != "http" {
            return Err(Failure::Local(format!(
                "the server URL {:?} must start with http:// (this client speaks plain HTTP)",
                opts.server
            )));
        }
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .build()
            .map_err(|e| Failure::Local(format!("cannot set up the HTTP client: {e}")))?;
        Ok(Client {
            http,
            base,
            token: opts.token.clone(),
        })
    }

    /// The URL of `segments` under the server, each segment percent-encoded.
    pub(crate) fn url(
        &self,
        segments: &[&str],
        query: &[(&str, String)],
    ) -> Result<String, Failure> {
        let mut url = self.base.clone();
        for segment in segments {
            // URL parsers resolve `.` and `..` (even encoded), so such a name
            // would silently address another resource.
            if segment.is_empty() || *segment == "." || *segment == ".." {
                return Err(Failure::Local(format!(
                    "{segment:?} cannot be used as a name in a URL"
                )));
            }
            url.push('/');
            url.push_str(&encode(segment));
        }
        for (i, (key, value)) in query.iter().enumerate() {
            url.push(if i == 0 { '?' } else { '&' });
            url.push_str(&encode(key));
            url.push('=');
            url.push_str(&encode(value));
        }
        Ok(url)
    }

    pub(crate) fn request(&self, method: Method, url: &str) -> RequestBuilder {
        let request = self.http.request(method, url);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// Sends a request answered by one document; returns a success, and
    /// turns anything else into a [`Failure`].
    pub(crate) async fn call(&self, request: RequestBuilder) -> Result<Reply, Failure> {
        self.call_within(request, REQUEST_TIMEOUT).await
    }

    /// [`call`](Client::call) for a request that may take longer than the
    /// usual limit (a verify replays a whole stream or projection).
    pub(crate) async fn call_within(
        &self,
        request: RequestBuilder,
        timeout: Duration,
    ) -> Result<Reply, Failure> {
        let response = request
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| self.transport(e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.text().await.map_err(|e| self.transport(e))?;
        if status.is_success() {
            Ok(Reply {
                status,
                headers,
                body,
            })
        } else {
            Err(Failure::Problem(Problem::from_response(status, &body)))
        }
    }

    /// A request that got no (complete) answer.
    pub(crate) fn transport(&self, err: reqwest::Error) -> Failure {
        if err.is_builder() {
            Failure::Local(format!("cannot build the request: {}", root_cause(&err)))
        } else {
            self.unreachable(root_cause(&err))
        }
    }

    pub(crate) fn unreachable(&self, reason: String) -> Failure {
        Failure::Unreachable {
            server: self.base.clone(),
            reason,
        }
    }
}

/// The innermost error's message: reqwest's outer ones ("error sending
/// request for url ...") repeat what we print anyway, while the innermost
/// says what happened ("Connection refused (os error 111)").
pub(crate) fn root_cause(err: &(dyn std::error::Error + 'static)) -> String {
    let mut deepest = err;
    while let Some(source) = deepest.source() {
        deepest = source;
    }
    deepest.to_string()
}

/// Percent-encodes every byte but the unreserved ones (RFC 3986), so an id
/// with spaces, slashes or `?` stays a single path segment.
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(byte));
        } else {
            let _ = write!(out, "%{byte:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(server: &str) -> Client {
        let opts = ClientOptions {
            server: server.to_owned(),
            token: None,
            json: false,
        };
        Client::new(&opts).expect("a valid test URL")
    }

    #[test]
    fn encodes_path_segments() {
        assert_eq!(encode("acc-1_x.y~"), "acc-1_x.y~");
        assert_eq!(encode("a b/c?d#e%"), "a%20b%2Fc%3Fd%23e%25");
        assert_eq!(encode("é"), "%C3%A9");
    }

    #[test]
    fn builds_urls_under_the_base() {
        let c = client("http://h:7700/prefix/");
        let url = c
            .url(
                &["v1", "aggregates", "bank account", "a/1"],
                &[("at_version", "3".to_owned())],
            )
            .expect("valid segments");
        assert_eq!(
            url,
            "http://h:7700/prefix/v1/aggregates/bank%20account/a%2F1?at_version=3"
        );
        assert!(reqwest::Url::parse(&url).is_ok());
        assert!(matches!(c.url(&["v1", ".."], &[]), Err(Failure::Local(_))));
        assert!(matches!(c.url(&["v1", ""], &[]), Err(Failure::Local(_))));
    }

    #[test]
    fn reads_problem_documents() {
        let body = r#"{"type":"about:blank","title":"Conflict","status":409,
            "detail":"expected version 2","code":"wrong_expected_version","actual_version":5}"#;
        let p = Problem::from_response(StatusCode::CONFLICT, body);
        assert_eq!(
            p.message(),
            "wrong_expected_version: expected version 2 (actual version 5)"
        );
        assert!(p.json.is_some());

        let p = Problem::from_response(StatusCode::BAD_GATEWAY, "");
        assert_eq!(p.message(), "http_502: Bad Gateway");
        assert!(p.json.is_none());
    }
}
