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
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
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
