//! `/v1/aggregates/{type}/{id}`: commands, state (also as of a version), events,
//! and the determinism audit (`/verify`).

use std::time::Instant;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::json;
use serde_json::value::RawValue;

use super::AppState;
use super::problem::ApiError;
use super::render::{EventView, event_views};
use super::request::{self, QueryPairs};
use crate::commands::{CommandError, CommandRequest, Precondition};
use crate::store::{
    Direction, MAX_AGGREGATE_ID_LEN, MAX_AGGREGATE_TYPE_LEN, MAX_METADATA_ID_LEN, StreamId,
};

// The bodies below are typed, never built as a `serde_json::Value`: event data
// and states are written out as the stored text (`RawValue`), so what a reader
// gets is byte for byte what was stored, and no text can fail to re-encode.

/// A command's answer, the same for the command and for every retry of it.
#[derive(Serialize)]
struct CommandReply<'a> {
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    version: u64,
    position: Option<u64>,
    module: &'a str,
    command_id: &'a str,
    events: Vec<EventView<'a>>,
}

#[derive(Serialize)]
struct StateReply<'a> {
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    version: u64,
    /// The same as `folded_by`, kept for clients written before it.
    module: &'a str,
    /// The module that folded the events into this state and rendered it (the active one).
    folded_by: &'a str,
    /// The `producer` of the event at `version` (null if it has none).
    last_event_producer: Option<&'a str>,
    state: &'a RawValue,
}

#[derive(Serialize)]
struct StreamPage<'a> {
    aggregate_type: &'a str,
    aggregate_id: &'a str,
    events: Vec<EventView<'a>>,
    next_version: u64,
}

fn stream_path(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    stream_path_of(path, false)
}

/// `stream_path`, where `processes` also admits a process's instance
/// streams (`process:<name>`), whose events are read like any stream's.
fn stream_path_of(
    path: Result<Path<(String, String)>, PathRejection>,
    processes: bool,
) -> Result<(String, String), ApiError> {
    let Path((aggregate_type, id)) = path.map_err(request::path_error)?;
    request::segment("aggregate type", &aggregate_type, MAX_AGGREGATE_TYPE_LEN)?;
    // Over HTTP an aggregate type is the name of the module that handles it:
    // every route holds a name to that one rule (a read of a type no module
    // could have would otherwise answer an empty 200).
    match aggregate_type.strip_prefix("process:") {
        Some(process) if processes => crate::modules::validate_name(process)?,
        _ => crate::modules::validate_name(&aggregate_type)?,
    }
    request::segment("aggregate id", &id, MAX_AGGREGATE_ID_LEN)?;
    Ok((aggregate_type, id))
}

fn etag(version: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{version}\""))
        .expect("digits and quotes are a valid header value")
}

/// `If-Match` (RFC 9110, section 13.1.1) as a precondition: `*` is "the
/// aggregate exists"; a list of entity tags `"3", "4"` (a bare 3 is taken as
/// `"3"`) is "the aggregate is at one of these versions", `"0"` being "it has
/// no events yet". If-Match compares strongly, so a weak tag `W/"3"` matches
/// nothing: it is dropped, and a list of weak tags alone fails as a
/// precondition (412). Several header lines make one list.
fn precondition(headers: &HeaderMap) -> Result<Precondition, ApiError> {
    let mut lines = headers.get_all(header::IF_MATCH).iter().peekable();
    if lines.peek().is_none() {
        return Ok(Precondition::None);
    }
    let invalid = |why: String| {
        ApiError::bad_request(
            "invalid_request",
            format!(
                "If-Match must be * (the aggregate exists) or versions in quotes separated by commas, like \"3\" or \"3\", \"4\" (\"0\": no events yet); {why}"
            ),
        )
    };
    let mut tags = Vec::new();
    for line in lines {
        let line = line
            .to_str()
            .map_err(|_| invalid("the header is not visible ASCII".to_string()))?;
        tags.extend(line.split(',').map(str::trim).filter(|t| !t.is_empty()));
    }
    if tags == ["*"] {
        return Ok(Precondition::Exists);
    }
    if tags.is_empty() {
        return Err(invalid("the header is empty".to_string()));
    }
    let mut versions = Vec::new();
    for tag in tags {
        let (weak, opaque) = match tag.strip_prefix("W/") {
            Some(rest) => (true, rest),
            None => (false, tag),
        };
        let quoted = opaque.strip_prefix('"').and_then(|t| t.strip_suffix('"'));
        let version = match quoted {
            Some(inner) => inner.parse::<u64>().ok(),
            // A bare number, as earlier releases took it; a weak tag must be quoted.
            None if !weak => opaque.parse::<u64>().ok(),
            None => None,
        };
        let Some(version) = version else {
            let why = if tag == "*" {
                "* cannot be listed with entity tags".to_string()
            } else {
                format!("{tag:?} is not a version in quotes")
            };
            return Err(invalid(why));
        };
        if !weak {
            versions.push(version);
        }
    }
    Ok(Precondition::at_versions(versions))
}

fn header_id(headers: &HeaderMap, name: &str) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get(name) else {
        return Ok(None);
    };
    let text = value
        .to_str()
        .map_err(|_| {
            ApiError::bad_request("invalid_request", format!("{name} must be visible ASCII"))
        })?
        .trim();
    request::segment(name, text, MAX_METADATA_ID_LEN)?;
    Ok(Some(text.to_string()))
}

/// The `Idempotency-Key`, which may not take the form of a process's command
/// ids: those belong to the process runner.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let key = header_id(headers, "idempotency-key")?;
    if let Some(key) = &key
        && key.starts_with(crate::processes::COMMAND_ID_PREFIX)
    {
        return Err(ApiError::bad_request(
            "reserved_idempotency_key",
            format!(
                "idempotency keys starting with {:?} are the command ids of process managers; choose another key",
                crate::processes::COMMAND_ID_PREFIX
            ),
        ));
    }
    Ok(key)
}

pub async fn command(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let started = Instant::now();
    let result = async {
        let (aggregate_type, aggregate_id) = stream_path(path)?;
        let bytes =
            request::body(body, app.limits.max_command_bytes, app.limits.body_timeout).await?;
        let command = request::json_text(&bytes, "invalid_command")?;
        let request = CommandRequest {
            aggregate_type,
            aggregate_id,
            command,
            precondition: precondition(&headers)?,
            command_id: idempotency_key(&headers)?,
            correlation_id: header_id(&headers, "x-correlation-id")?,
            causation_id: header_id(&headers, "x-causation-id")?,
        };
        // The command runs to its end in its own task even if the client goes away:
        // a dropped request must not release the aggregate's lock mid-append.
        let commands = app.commands.clone();
        let outcome = tokio::spawn(async move { commands.execute(request).await })
            .await
            .map_err(|e| {
                ApiError::new(
                    axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                    "internal",
                    format!("the command task failed: {e}"),
                )
            })??;
        Ok::<_, ApiError>(outcome)
    }
    .await;
    match &result {
        Ok(outcome) => app.metrics.command(
            "ok",
            started.elapsed(),
            if outcome.repeated {
                0
            } else {
                outcome.events.len()
            },
        ),
        Err(problem) => app.metrics.command(problem.code, started.elapsed(), 0),
    }
    let outcome = result?;
    let body = CommandReply {
        aggregate_type: outcome.stream.aggregate_type(),
        aggregate_id: outcome.stream.aggregate_id(),
        version: outcome.version,
        position: outcome.position,
        module: &outcome.module,
        command_id: &outcome.command_id,
        events: event_views(&outcome.events),
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(outcome.version));
    if outcome.repeated {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

pub async fn state(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (aggregate_type, aggregate_id) = stream_path(path)?;
    let at_version = QueryPairs::parse(query.as_deref())?.number("at_version")?;
    let view = app
        .commands
        .read_state(&aggregate_type, &aggregate_id, at_version)
        .await?;
    // `read_state` checked the text; whitespace around it is not part of the value.
    let state: &RawValue =
        serde_json::from_str(&view.state).map_err(|e| CommandError::InvalidGuestOutput {
            module: view.folded_by.clone(),
            reason: format!("render returned text that is not JSON: {e}"),
        })?;
    let body = StateReply {
        aggregate_type: &aggregate_type,
        aggregate_id: &aggregate_id,
        version: view.version,
        module: &view.folded_by,
        folded_by: &view.folded_by,
        last_event_producer: view.last_event_producer.as_deref(),
        state,
    };
    let mut response = Json(body).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(view.version));
    Ok(response)
}

pub async fn events(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (aggregate_type, aggregate_id) = stream_path_of(path, true)?;
    let stream = StreamId::new(&aggregate_type, &aggregate_id)
        .map_err(|e| ApiError::bad_request("invalid_request", e.to_string()))?;
    let query = QueryPairs::parse(query.as_deref())?;
    let from = query.number("from_version")?.unwrap_or(1).max(1);
    let limit = query.limit()?;
    let events = app
        .store
        .read_stream(&stream, from, Direction::Forward, limit)?;
    let next_version = events.last().map_or(from, |e| e.version + 1);
    let body = StreamPage {
        aggregate_type: &aggregate_type,
        aggregate_id: &aggregate_id,
        events: event_views(&events),
        next_version,
    };
    Ok(Json(body).into_response())
}

/// `GET /v1/aggregates/{type}/{id}/verify`: replays the stream and compares
/// every recorded state digest. A divergence is a finding, not an error: 200
/// with `ok: false` and the first divergent version.
pub async fn verify(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let (aggregate_type, aggregate_id) = stream_path(path)?;
    let mut shutdown = app.shutdown.clone();
    // Dropping the audit is safe (it writes nothing): a stopping server does not wait for it.
    let report = tokio::select! {
        report = app.commands.verify(&aggregate_type, &aggregate_id) => report?,
        _ = shutdown.wait_for(|stopping| *stopping) => {
            return Err(ApiError::new(
                axum::http::StatusCode::SERVICE_UNAVAILABLE,
                "shutting_down",
                "the server is shutting down; verify again once it is back",
            ));
        }
    };
    let first = report.first_divergence().map(|m| {
        json!({
            "version": m.version,
            "module": m.module,
            "recorded": m.recorded,
            "replayed": m.replayed,
            "batching": m.batching.as_str(),
        })
    });
    Ok(Json(json!({
        "aggregate_type": aggregate_type,
        "aggregate_id": aggregate_id,
        "ok": report.ok(),
        "complete": report.complete(),
        "events": report.events,
        "digests_checked": report.checked,
        "digests_unchecked": report.unchecked,
        "unchecked_modules": report.unavailable_modules,
        "divergences": report.divergences,
        "first_divergence": first,
    })))
}
