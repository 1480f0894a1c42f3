//! The HTTP API (v1): routes, auth, limits, and the mapping of every service
//! error to problem+json.
//!
//! Architecture Invariant: handlers never write to the store. Every write goes
//! through a service (`CommandService`, `ModuleRegistry`); pages and
//! subscriptions read the store directly.
//!
//! - `modules`, `aggregates`, `events`, `projections`: the routes, one file per resource.
//! - `problem`: errors as RFC 9457 problems with stable codes.
//! - `request`: path, query and body parsing with clear errors and limits.
//! - `auth`: bearer tokens and roles. `metrics`: Prometheus. `render`: event JSON.

mod admin;
mod aggregates;
mod auth;
mod events;
pub mod integrity;
mod listen;
mod metrics;
mod modules;
mod problem;
mod processes;
mod projections;
mod render;
mod request;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{delete, get, post, put};
use serde_json::json;
use tokio::sync::watch;

pub use auth::{Role, Tokens};
pub use listen::{ConnectionLimits, raise_file_limit, serve};
pub use metrics::Metrics;
pub use problem::ApiError;

use crate::commands::CommandService;
use crate::modules::ModuleRegistry;
use crate::projections::ProjectionService;
use crate::store::Backend;

/// Request body limits.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_module_bytes: usize,
    pub max_command_bytes: usize,
    /// Time a request body has to arrive, whole (408 `body_timeout` after).
    pub body_timeout: std::time::Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_module_bytes: 32 << 20,
            max_command_bytes: 64 << 10,
            body_timeout: std::time::Duration::from_secs(60),
        }
    }
}

#[derive(Clone)]
pub struct AppState {
    pub store: Backend,
    pub modules: Arc<ModuleRegistry>,
    pub commands: Arc<CommandService>,
    pub projections: Arc<ProjectionService>,
    pub processes: Arc<crate::processes::ProcessService>,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
    /// Becomes true when the server is shutting down: subscriptions end.
    pub shutdown: watch::Receiver<bool>,
}

pub fn router(app: AppState, tokens: Tokens) -> Router {
    let openapi_document = openapi_document(&app);
    let tokens = Arc::new(tokens);
    let role =
        |role: Role| axum::middleware::from_fn_with_state((tokens.clone(), role), auth::require);
    let admin = Router::new()
        .route("/v1/modules/{name}/{version}", put(modules::put))
        .route("/v1/modules/{name}/activate", post(modules::activate))
        .route("/v1/modules/{name}/{version}/whatif", post(modules::whatif))
        .route("/v1/modules/{name}/rollback", post(modules::rollback))
        .route(
            "/v1/modules/{name}/{version}/check",
            post(modules::start_check),
        )
        .route("/v1/admin/backup", post(admin::backup))
        .route("/v1/integrity/seal", post(integrity::seal))
        .route("/v1/integrity/verify", get(integrity::verify))
        .route("/v1/projections/{name}/promote", post(projections::promote))
        .route(
            "/v1/projections/{name}/versions/{version}/rebuild",
            post(projections::rebuild),
        )
        .route(
            "/v1/projections/{name}/versions/{version}/retry",
            post(projections::retry),
        )
        .route(
            "/v1/projections/{name}/versions/{version}/skip",
            post(projections::skip),
        )
        .route(
            "/v1/projections/{name}/versions/{version}",
            delete(projections::drop_version),
        )
        .route(
            "/v1/projections/{name}/versions/{version}/verify",
            post(projections::verify),
        )
        .route_layer(role(Role::Admin));
    let writer = Router::new()
        .route(
            "/v1/aggregates/{aggregate_type}/{id}/commands",
            post(aggregates::command),
        )
        .route_layer(role(Role::Writer));
    let reader = Router::new()
        .route("/v1/modules", get(modules::list))
        .route("/v1/modules/{name}", get(modules::get))
        .route("/v1/modules/{name}/{version}/check", get(modules::check))
        .route(
            "/v1/aggregates/{aggregate_type}/{id}",
            get(aggregates::state),
        )
        .route(
            "/v1/aggregates/{aggregate_type}/{id}/events",
            get(aggregates::events),
        )
        .route(
            "/v1/aggregates/{aggregate_type}/{id}/verify",
            get(aggregates::verify),
        )
        .route("/v1/events", get(events::page))
        .route("/v1/events/subscribe", get(events::subscribe))
        .route("/v1/events/{position}/proof", get(integrity::proof))
        .route("/v1/integrity", get(integrity::status))
        .route("/v1/processes", get(processes::list))
        .route("/v1/processes/{name}", get(processes::get))
        .route("/v1/processes/{name}/{id}", get(processes::instance))
        .route("/v1/projections", get(projections::list))
        .route("/v1/projections/{name}", get(projections::get))
        .route(
            "/v1/projections/{name}/versions/{version}",
            get(projections::version),
        )
        .route(
            "/v1/projections/{name}/versions/{version}/digest",
            get(projections::digest),
        )
        .route("/v1/projections/{name}/diff", get(projections::diff))
        .route("/v1/projections/{name}/docs", get(projections::documents))
        .route(
            "/v1/projections/{name}/docs/{*key}",
            get(projections::document),
        )
        .route(
            "/v1/projections/{name}/queries/{query}",
            get(projections::query),
        )
        .route("/metrics", get(metrics_text))
        .route_layer(role(Role::Reader));
    Router::new()
        .route("/healthz", get(healthz))
        .route(
            "/v1/openapi.json",
            get(move || async move {
                (
                    [(header::CONTENT_TYPE, "application/json")],
                    openapi_document.clone(),
                )
            }),
        )
        .merge(admin)
        .merge(writer)
        .merge(reader)
        // Bodies are read with per-route limits inside the handlers (modules and
        // commands differ), which answer 413 as problem+json.
        .layer(DefaultBodyLimit::disable())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(axum::middleware::from_fn(request::close_if_body_unread))
        .with_state(app)
}

/// Whether this process does its job: 200 while the store accepts writes,
/// 503 (problem+json, `store_not_writable`, with the reason) once a storage
/// failure stopped them, so a supervisor restarts it (a restart reopens the
/// store and recovers from what is on disk); on PostgreSQL, while the
/// database does not answer, so a load balancer sends requests elsewhere.
async fn healthz(State(app): State<AppState>) -> axum::response::Response {
    let head = app.store.head();
    match app.store.unwritable().await {
        None => axum::Json(json!({"status": "ok", "head": head, "writable": true})).into_response(),
        Some(reason) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_not_writable",
            format!("the store refuses writes after a storage failure; restart the process to recover: {reason}"),
        )
        .with("head", head)
        .with("writable", false)
        .with("reason", reason)
        .into_response(),
    }
}

/// The OpenAPI document of these routes; `tests/openapi.rs` checks the two agree.
const OPENAPI: &str = include_str!("openapi.json");

/// The document as this server runs it: bounds that are configuration
/// (`wait_ms`) carry this server's values, so the document never promises
/// what the server refuses.
fn openapi_document(app: &AppState) -> String {
    let mut doc: serde_json::Value =
        serde_json::from_str(OPENAPI).expect("openapi.json is JSON (tests/openapi.rs)");
    let max_wait = app.projections.max_wait().as_millis() as u64;
    if let Some(paths) = doc["paths"].as_object_mut() {
        for item in paths.values_mut() {
            let operations = item
                .as_object_mut()
                .into_iter()
                .flat_map(|o| o.values_mut());
            for op in operations {
                let params = op
                    .get_mut("parameters")
                    .and_then(|p| p.as_array_mut())
                    .into_iter()
                    .flatten();
                for param in params.filter(|p| p["name"] == "wait_ms") {
                    param["schema"]["maximum"] = max_wait.into();
                }
            }
        }
    }
    doc.to_string()
}

async fn metrics_text(State(app): State<AppState>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        app.metrics.render(&metrics::Readings {
            head: app.store.head(),
            cache: app.commands.cache_stats(),
            pool: app.modules.guest_pool_stats(),
            store_writable: app.store.write_failure().is_none(),
            projections: app.projections.list(),
            processes: app.processes.list(),
            module_outcomes: app.modules.outcomes(),
        }),
    )
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!("no route for {}", uri.path()))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!("{method} is not allowed on {}", uri.path()),
    )
}
