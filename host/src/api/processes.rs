//! `/v1/processes`: process managers and their instances. Read-only: a
//! process is uploaded and activated under `/v1/modules` like any module, and
//! an instance's stream is also readable under `/v1/aggregates/process:<name>/<id>`.

use axum::Json;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::AppState;
use super::problem::ApiError;
use super::request::{self, QueryPairs};
use crate::modules::{MAX_MODULE_NAME_LEN, validate_name};
use crate::processes::{
    InstanceView, PendingCommand, PendingDeadline, ProcessError, parse_status, status_name,
};
use crate::store::MAX_AGGREGATE_ID_LEN;

fn name_of(name: &str) -> Result<(), ApiError> {
    request::segment("process name", name, MAX_MODULE_NAME_LEN)?;
    validate_name(name)?;
    Ok(())
}

pub async fn list(State(app): State<AppState>) -> Response {
    Json(json!({ "processes": app.processes.list() })).into_response()
}

/// `GET /v1/processes/{name}?status=&after=&limit=`: the process and a page
/// of its instances.
pub async fn get(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Path(name) = path.map_err(request::path_error)?;
    name_of(&name)?;
    let query = QueryPairs::parse(query.as_deref())?;
    query.only(&["status", "after", "limit"])?;
    let status = query
        .get("status")
        .map(|s| {
            parse_status(s).ok_or_else(|| {
                ApiError::bad_request(
                    "invalid_request",
                    format!("status must be running, completed or failed, not {s:?}"),
                )
            })
        })
        .transpose()?;
    let limit = query.limit()?;
    let after = query.get("after");
    let view = app.processes.get(&name)?;
    let page = app.processes.instances(&name, status, after, limit)?;
    let mut body = serde_json::to_value(view).map_err(internal)?;
    body["status_filter"] = json!(status.map(status_name));
    body["page"] = serde_json::to_value(page).map_err(internal)?;
    Ok(Json(body).into_response())
}

#[derive(Serialize)]
struct InstanceBody<'a> {
    process: &'a str,
    id: &'a str,
    stream: String,
    version: u64,
    status: &'static str,
    folded_by: &'a str,
    state: &'a RawValue,
    pending_commands: &'a [PendingCommand],
    deadlines: &'a [PendingDeadline],
    next_deadline_ms: Option<u64>,
    last_position: u64,
    inputs: u64,
    stalled: Option<&'a str>,
    history: Vec<super::render::EventView<'a>>,
    /// Pass as `history_from` for more history; none when this is the end.
    history_next: Option<u64>,
}

/// `GET /v1/processes/{name}/{id}?history_from=&limit=`: one instance folded
/// now by the active version, with its pending commands and deadlines and a
/// page of its stream.
pub async fn instance(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Path((name, id)) = path.map_err(request::path_error)?;
    name_of(&name)?;
    request::segment("instance id", &id, MAX_AGGREGATE_ID_LEN)?;
    let query = QueryPairs::parse(query.as_deref())?;
    query.only(&["history_from", "limit"])?;
    let from = query.number("history_from")?.unwrap_or(1);
    let limit = query.limit()?;
    let view: InstanceView = app.processes.instance(&name, &id, from, limit).await?;
    let state: &RawValue = serde_json::from_str(&view.state).map_err(internal)?;
    let history_next = match view.history.last() {
        Some(last) if view.history.len() == limit && last.version < view.version => {
            Some(last.version + 1)
        }
        _ => None,
    };
    let body = InstanceBody {
        process: &view.name,
        id: &view.id,
        stream: view.stream.to_string(),
        version: view.version,
        status: status_name(view.status),
        folded_by: &view.folded_by,
        state,
        pending_commands: &view.pending_commands,
        deadlines: &view.deadlines,
        next_deadline_ms: view.next_deadline_ms,
        last_position: view.last_position,
        inputs: view.inputs,
        stalled: view.stalled.as_deref(),
        history: super::render::event_views(&view.history),
        history_next,
    };
    Ok(Json(body).into_response())
}

fn internal(e: serde_json::Error) -> ApiError {
    ApiError::new(
        StatusCode::INTERNAL_SERVER_ERROR,
        "internal_error",
        e.to_string(),
    )
}

impl From<ProcessError> for ApiError {
    fn from(err: ProcessError) -> Self {
        let detail = err.to_string();
        match err {
            ProcessError::UnknownProcess(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_process", detail)
            }
            ProcessError::UnknownInstance { .. } => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_instance", detail)
            }
            ProcessError::InvalidRequest(_) => ApiError::bad_request("invalid_request", detail),
            ProcessError::Guest(g) => g.into(),
            ProcessError::NotReady(n) => n.into(),
            ProcessError::Fold(_) => ApiError::new(
                StatusCode::UNPROCESSABLE_ENTITY,
                "process_fold_failed",
                detail,
            ),
            ProcessError::Store(s) => s.into(),
        }
    }
}
