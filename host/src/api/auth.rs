//! Bearer tokens with three roles. Each role includes the ones below it:
//! admin (modules) > writer (commands) > reader (reads).

use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::problem::ApiError;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Reader,
    Writer,
    Admin,
}

impl Role {
    fn name(self) -> &'static str {
        match self {
            Role::Reader => "reader",
            Role::Writer => "writer",
            Role::Admin => "admin",
        }
    }
}

/// Configured tokens. With none at all, every request is allowed (loopback only).
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    pub admin: Vec<String>,
    pub writer: Vec<String>,
    pub reader: Vec<String>,
}

impl Tokens {
    pub fn is_empty(&self) -> bool {
        self.admin.is_empty() && self.writer.is_empty() && self.reader.is_empty()
    }

    /// Refuses a token no client could present as meant: an empty one (an
    /// unset variable in a template would otherwise count as "tokens are
    /// configured" and open nothing, or worse, satisfy the rule that a
    /// non-loopback server needs tokens), or one with whitespace or bytes
    /// outside visible ASCII (an `Authorization` header cannot carry it
    /// intact, and it is trimmed on the way in).
    pub fn check(&self) -> Result<(), String> {
        for (role, list) in [
            (Role::Admin, &self.admin),
            (Role::Writer, &self.writer),
            (Role::Reader, &self.reader),
        ] {
            for (i, token) in list.iter().enumerate() {
                if token.is_empty() {
                    return Err(format!(
                        "{} token #{} is empty (an unset variable?); remove it or give it a value",
                        role.name(),
                        i + 1
                    ));
                }
                if !token.bytes().all(|b| b.is_ascii_graphic()) {
                    return Err(format!(
                        "{} token #{} holds whitespace or a byte outside visible ASCII, which an Authorization header cannot carry",
                        role.name(),
                        i + 1
                    ));
                }
            }
        }
        Ok(())
    }

    fn role_of(&self, token: &str) -> Option<Role> {
        let holds = |list: &[String]| {
            list.iter()
                .any(|t| constant_time_eq(t.as_bytes(), token.as_bytes()))
        };
        if holds(&self.admin) {
            Some(Role::Admin)
        } else if holds(&self.writer) {
            Some(Role::Writer)
        } else if holds(&self.reader) {
            Some(Role::Reader)
        } else {
            None
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The token of `Authorization: Bearer <token>`. The scheme name is
/// case-insensitive (RFC 9110, section 11.1); one or more spaces follow it.
fn bearer_token(value: &str) -> Option<&str> {
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_matches(' ');
    (!token.is_empty()).then_some(token)
}

/// Middleware: the route's required role travels as state.
pub async fn require(
    State((tokens, needed)): State<(std::sync::Arc<Tokens>, Role)>,
    request: Request,
    next: Next,
) -> Response {
    if tokens.is_empty() {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token);
    match presented.and_then(|t| tokens.role_of(t)) {
        Some(role) if role >= needed => next.run(request).await,
        Some(role) => ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "this needs the {} role; the token has {}",
                needed.name(),
                role.name()
            ),
        )
        .into_response(),
        None => {
            let mut response = ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required",
            )
            .into_response();
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
            response
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        for header in ["Bearer abc", "bearer abc", "BEARER  abc", "bEaReR abc "] {
            assert_eq!(bearer_token(header), Some("abc"), "{header:?}");
        }
        for header in ["Basic abc", "Bearer", "Bearer ", "Bearerabc", "Token abc"] {
            assert_eq!(bearer_token(header), None, "{header:?}");
        }
    }

    #[test]
    fn empty_or_unsendable_tokens_are_refused() {
        let tokens = |admin: &str| Tokens {
            admin: vec!["ok".into(), admin.into()],
            ..Tokens::default()
        };
        assert!(tokens("fine-token").check().is_ok());
        let empty = tokens("").check().unwrap_err();
        assert!(empty.contains("admin token #2 is empty"), "{empty}");
        assert!(tokens("two words").check().is_err());
        assert!(tokens("caf\u{e9}").check().is_err());
    }
}
