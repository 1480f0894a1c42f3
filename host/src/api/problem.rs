//! Errors as `application/problem+json` (RFC 9457), each with a stable `code`.
//! This is the one place where service errors become HTTP statuses.

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value, json};

use crate::commands::{CommandError, Precondition};
use crate::modules::{CompileBudget, ModuleError, NotReady};
use crate::projections::ProjectionError;
use crate::runtime::GuestError;
use crate::store::StoreError;

#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub detail: String,
    pub extra: Map<String, Value>,
    /// Seconds for a `Retry-After` header (503s that will pass).
    pub retry_after: Option<u64>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            extra: Map::new(),
            retry_after: None,
        }
    }

    pub fn with(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.to_string(), value.into());
        self
    }

    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, "not_found", detail)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({
            "type": format!("https://refold.dev/problems/{}", self.code.replace('_', "-")),
            "title": self.status.canonical_reason().unwrap_or("Error"),
            "status": self.status.as_u16(),
            "detail": self.detail,
            "code": self.code,
        });
        if let Value::Object(fields) = &mut body {
            fields.extend(self.extra);
        }
        let mut response = (self.status, body.to_string()).into_response();
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(seconds) = self.retry_after {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        response
    }
}

impl From<GuestError> for ApiError {
    fn from(err: GuestError) -> Self {
        // A guest that fails is the module's fault, not the caller's: 422 says the
        // request was understood but could not be processed.
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            err.code(),
            err.to_string(),
        )
    }
}

impl From<StoreError> for ApiError {
    fn from(err: StoreError) -> Self {
        let status = match &err {
            StoreError::WrongExpectedVersion { .. } => StatusCode::PRECONDITION_FAILED,
            StoreError::InvalidStream(_) | StoreError::InvalidEvent { .. } => {
                StatusCode::BAD_REQUEST
            }
            StoreError::DuplicateEventId { .. } | StoreError::CommandIdInUse { .. } => {
                StatusCode::CONFLICT
            }
            StoreError::NotSealedYet { .. } | StoreError::ModuleActive { .. } => {
                StatusCode::CONFLICT
            }
            StoreError::ModuleNotRegistered { .. } => StatusCode::NOT_FOUND,
            StoreError::Unavailable(_) | StoreError::LeaseLost(_) => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            StoreError::Unsupported { .. } => StatusCode::NOT_IMPLEMENTED,
            StoreError::Locked { .. }
            | StoreError::Storage { .. }
            | StoreError::Corrupt { .. }
            | StoreError::IntegrityViolation { .. } => {
                tracing::error!(error = %err, "store failure");
                StatusCode::INTERNAL_SERVER_ERROR
            }
        };
        let problem = ApiError::new(status, err.code(), err.to_string());
        match err {
            StoreError::WrongExpectedVersion { actual, .. } => {
                problem.with("actual_version", actual)
            }
            StoreError::NotSealedYet {
                position,
                next_seal_at,
            } => problem
                .with("position", position)
                .with("next_seal_at", next_seal_at),
            StoreError::IntegrityViolation { position, .. } => problem.with("position", position),
            _ => problem,
        }
    }
}

/// `Retry-After` for a replay that timed out on a busy host.
const REPLAY_RETRY_AFTER_SECS: u64 = 5;

impl From<CommandError> for ApiError {
    fn from(err: CommandError) -> Self {
        let code = err.code();
        match err {
            CommandError::UnknownAggregateType(_) => {
                ApiError::new(StatusCode::NOT_FOUND, code, err.to_string())
            }
            CommandError::InvalidRequest(_) | CommandError::InvalidCommand(_) => {
                ApiError::bad_request(code, err.to_string())
            }
            // Payment-API style (Stripe): a key names one request; answering another
            // request with the first one's result would hide a client's bug.
            CommandError::CommandIdReused {
                command_id,
                stream,
            } => ApiError::new(
                StatusCode::CONFLICT,
                code,
                format!(
                    "the Idempotency-Key {command_id:?} was first used for a different request (a command on {stream}); \
                     a key stands for one request, which is its aggregate type and id and its exact body bytes \
                     (not If-Match, X-Correlation-ID or X-Causation-ID). Send the first request's body to that \
                     aggregate again to get its result, or use a new key for a new command"
                ),
            )
            .with("idempotency_key", command_id)
            .with("first_aggregate_type", stream.aggregate_type())
            .with("first_aggregate_id", stream.aggregate_id()),
            CommandError::Rejected {
                code: reason,
                message,
            } => ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "rejected", message)
                .with("reason", reason),
            CommandError::WrongExpectedVersion {
                ref expected,
                actual,
            } => {
                let problem = ApiError::new(StatusCode::PRECONDITION_FAILED, code, err.to_string())
                    .with("actual_version", actual);
                match expected {
                    Precondition::AtVersion(versions) => {
                        let problem = problem.with("expected_versions", versions.clone());
                        match versions.as_slice() {
                            [one] => problem.with("expected_version", *one),
                            _ => problem,
                        }
                    }
                    Precondition::Exists => problem.with("expected_exists", true),
                    Precondition::None => problem,
                }
            }
            CommandError::Guest(guest) => guest.into(),
            CommandError::InvalidGuestOutput { .. } | CommandError::StateTooLarge { .. } => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, err.to_string())
            }
            CommandError::Conflict { .. } => {
                ApiError::new(StatusCode::CONFLICT, code, err.to_string())
            }
            CommandError::NotFound(detail) => ApiError::not_found(detail),
            CommandError::TooManyVerifies { running } => {
                ApiError::new(StatusCode::TOO_MANY_REQUESTS, code, err.to_string())
                    .with("running", running)
            }
            CommandError::ReplayTimedOut { ref module, .. } => {
                let module = module.clone();
                let mut problem =
                    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, err.to_string())
                        .with("module", module);
                problem.retry_after = Some(REPLAY_RETRY_AFTER_SECS);
                problem
            }
            CommandError::ModuleNotReady(not_ready) => not_ready.into(),
            CommandError::Store(store) => store.into(),
        }
    }
}

impl From<NotReady> for ApiError {
    fn from(err: NotReady) -> Self {
        // Not the client's fault, and (while compiling) soon over: 503.
        let problem = ApiError::new(StatusCode::SERVICE_UNAVAILABLE, err.code(), err.to_string());
        match err {
            NotReady::Compiling {
                module,
                retry_after,
            } => {
                let mut problem = problem.with("module", module);
                problem.retry_after = Some(retry_after.as_secs().max(1));
                problem
            }
            NotReady::CompileFailed { module, code, .. } => {
                problem.with("module", module).with("compile_code", code)
            }
        }
    }
}

impl From<ModuleError> for ApiError {
    fn from(err: ModuleError) -> Self {
        let code = err.code();
        match err {
            ModuleError::InvalidName { .. } | ModuleError::InvalidVersion { .. } => {
                ApiError::bad_request(code, err.to_string())
            }
            ModuleError::InvalidModule(_) | ModuleError::CompileCrashed(_) => {
                ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, err.to_string())
            }
            ModuleError::CompileBudgetExceeded { budget, .. } => {
                let problem =
                    ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, code, err.to_string());
                match budget {
                    CompileBudget::Time { limit } => problem
                        .with("budget", "time")
                        .with("limit_ms", limit.as_millis() as u64),
                    CompileBudget::Memory { limit_bytes } => problem
                        .with("budget", "memory")
                        .with("limit_bytes", limit_bytes),
                }
            }
            ModuleError::NotReady(not_ready) => not_ready.into(),
            ModuleError::Conflict {
                ref existing_digest,
                ..
            } => {
                let digest = existing_digest.clone();
                ApiError::new(StatusCode::CONFLICT, code, err.to_string())
                    .with("existing_digest", digest)
            }
            ModuleError::NotFound(_) => ApiError::not_found(err.to_string()),
            ModuleError::InvalidCanary(_) | ModuleError::CanaryNotSupported(_) => {
                ApiError::bad_request(code, err.to_string())
            }
            ModuleError::CanaryInProgress {
                ref canary,
                percent,
                ..
            } => {
                let canary = canary.clone();
                ApiError::new(StatusCode::CONFLICT, code, err.to_string())
                    .with("canary_version", canary)
                    .with("canary_percent", percent)
            }
            ModuleError::RollbackFromMismatch { ref actual, .. } => {
                let actual = actual.clone();
                ApiError::new(StatusCode::CONFLICT, code, err.to_string())
                    .with("rollback_from", actual)
            }
            ModuleError::CanaryNotNewer { ref stable, .. } => {
                let stable = stable.clone();
                ApiError::new(StatusCode::CONFLICT, code, err.to_string())
                    .with("stable_version", stable)
            }
            ModuleError::PromoteProjection(_)
            | ModuleError::KindMismatch { .. }
            | ModuleError::NoActiveVersion(_)
            | ModuleError::CanaryIsStable(_)
            | ModuleError::NothingToRollBack(_)
            | ModuleError::CheckRequired { .. }
            | ModuleError::CheckFailed { .. }
            | ModuleError::CheckStale { .. } => {
                ApiError::new(StatusCode::CONFLICT, code, err.to_string())
            }
            ModuleError::Store(store) => store.into(),
            ModuleError::Host(_) => {
                tracing::error!(error = %err, "module host failure");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, code, err.to_string())
            }
        }
    }
}

impl From<ProjectionError> for ApiError {
    fn from(err: ProjectionError) -> Self {
        let detail = err.to_string();
        match err {
            ProjectionError::NotFound(_) => ApiError::not_found(detail),
            ProjectionError::NotLive { .. } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "projection_not_live",
                detail,
            ),
            ProjectionError::Lagging {
                position,
                head,
                lag,
                ..
            } => ApiError::new(StatusCode::CONFLICT, "projection_lagging", detail)
                .with("position", position)
                .with("head", head)
                .with("lag", lag),
            ProjectionError::IsLive(..) => {
                ApiError::new(StatusCode::CONFLICT, "projection_live", detail)
            }
            ProjectionError::NotFailed(_) => {
                ApiError::new(StatusCode::CONFLICT, "projection_not_failed", detail)
            }
            ProjectionError::Failed { failure, .. } => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "projection_failed", detail)
                    .with("position", failure.position)
                    .with("failure_code", failure.code)
            }
            ProjectionError::Timeout {
                wanted,
                reached,
                head,
                ..
            } => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "min_position_timeout",
                detail,
            )
            .with("min_position", wanted)
            .with("position", reached)
            .with("head", head)
            .with("beyond_head", wanted > head),
            ProjectionError::InvalidRequest(_) => ApiError::bad_request("invalid_request", detail),
            ProjectionError::UnknownQuery(..) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_query", detail)
            }
            ProjectionError::BadQueryArguments(..) => {
                ApiError::bad_request("bad_query_arguments", detail)
            }
            ProjectionError::InvalidGuestOutput { .. } => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_guest_output",
                detail,
            ),
            ProjectionError::Closed => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "shutting_down", detail)
            }
            ProjectionError::Internal(_) => {
                tracing::error!(error = %detail, "projection service failure");
                ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal_error", detail)
            }
            ProjectionError::VerifyInProgress {
                position, target, ..
            } => ApiError::new(StatusCode::CONFLICT, "verify_in_progress", detail)
                .with("position", position)
                .with("target", target),
            ProjectionError::Busy(_) => {
                ApiError::new(StatusCode::CONFLICT, "projection_busy", detail)
            }
            // Only a caller that went away cancels, so hardly anyone reads this.
            ProjectionError::VerifyCancelled(_) => {
                ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "verify_cancelled", detail)
            }
            ProjectionError::Guest(guest) => guest.into(),
            ProjectionError::Module(module) => module.into(),
            ProjectionError::Store(store) => store.into(),
        }
    }
}
