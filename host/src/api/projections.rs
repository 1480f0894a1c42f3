//! `/v1/projections`: versions and their status, operator actions (promote,
//! rebuild, retry, skip, drop, verify), documents, queries and diffs.
//!
//! Reads go to the live version unless `?version=` names another, and accept
//! `min_position=P` (with `wait_ms`) to wait until the version has processed P:
//! a command's reply carries its position, so a client reads its own writes.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::value::RawValue;
use serde_json::{Value, json};

use super::AppState;
use super::problem::ApiError;
use super::request::{self, QueryPairs};
use crate::modules::{
    MAX_MODULE_NAME_LEN, MAX_MODULE_VERSION_LEN, validate_name, validate_version,
};
use crate::projections::VersionHandle;
use crate::runtime::{MAX_DOC_KEY_LEN, MAX_SCAN_LIMIT};

const MAX_QUERY_NAME_LEN: usize = 128;
const MAX_DIFF_SAMPLES: u64 = 1000;

/// The reserved query parameters of reads; the rest are a query's arguments.
const READ_PARAMS: [&str; 3] = ["version", "min_position", "wait_ms"];

fn name_of(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = path.map_err(request::path_error)?;
    request::segment("projection name", &name, MAX_MODULE_NAME_LEN)?;
    validate_name(&name)?;
    Ok(name)
}

fn name_version(
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<(String, String), ApiError> {
    let Path((name, version)) = path.map_err(request::path_error)?;
    request::segment("projection name", &name, MAX_MODULE_NAME_LEN)?;
    request::segment("version", &version, MAX_MODULE_VERSION_LEN)?;
    validate_name(&name)?;
    validate_version(&version)?;
    Ok((name, version))
}

pub async fn list(State(app): State<AppState>) -> Response {
    Json(json!({ "projections": app.projections.list() })).into_response()
}

pub async fn get(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = name_of(path)?;
    Ok(Json(app.projections.view(&name)?).into_response())
}

pub async fn version(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (name, version) = name_version(path)?;
    let mut view = serde_json::to_value(app.projections.version_status(&name, &version)?)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let skips = app.projections.skips(&name, &version)?;
    view["skipped"] = serde_json::to_value(skips).unwrap_or(Value::Null);
    Ok(Json(view).into_response())
}

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PromoteBody {
    version: String,
    #[serde(default)]
    force: bool,
}

pub async fn promote(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Response, ApiError> {
    let name = name_of(path)?;
    let bytes = request::body(body, 4096, app.limits.body_timeout).await?;
    let body: PromoteBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("the body must be {{\"version\": \"X.Y.Z\", \"force\": false}}: {e}"),
        )
    })?;
    validate_version(&body.version)?;
    Ok(Json(app.projections.promote(&name, &body.version, body.force)?).into_response())
}

pub async fn rebuild(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (name, version) = name_version(path)?;
    let force = QueryPairs::parse(query.as_deref())?.flag("force")?;
    let view = app.projections.rebuild(&name, &version, force).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

pub async fn retry(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (name, version) = name_version(path)?;
    let view = app.projections.retry(&name, &version).await?;
    Ok((StatusCode::ACCEPTED, Json(view)).into_response())
}

/// `POST .../skip?position=P`: P must be the failing event's position, so a
/// skip never passes over an event the operator did not see fail.
pub async fn skip(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (name, version) = name_version(path)?;
    let position = QueryPairs::parse(query.as_deref())?
        .number("position")?
        .ok_or_else(|| {
            ApiError::bad_request(
                "invalid_request",
                "say which event to skip with ?position=P (the failing event's position)",
            )
        })?;
    Ok(Json(app.projections.skip(&name, &version, position).await?).into_response())
}

pub async fn drop_version(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (name, version) = name_version(path)?;
    app.projections.drop_version(&name, &version).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `POST .../versions/{version}/verify`: rebuilds the version into a scratch
/// generation and compares it with the version's documents. A divergence is
/// a finding, not an error: 200 with `ok: false`. Admin: it costs a full replay.
pub async fn verify(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (name, version) = name_version(path)?;
    let mut shutdown = app.shutdown.clone();
    // Dropping the verify stops it, deletes its scratch and restarts the
    // version's runner: a stopping server does not wait for a whole replay.
    let report = tokio::select! {
        report = app.projections.verify(&name, &version) => report?,
        _ = shutdown.wait_for(|stopping| *stopping) => {
            return Err(crate::projections::ProjectionError::Closed.into());
        }
    };
    Ok(Json(report).into_response())
}

pub async fn digest(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Response, ApiError> {
    let (name, version) = name_version(path)?;
    Ok(Json(app.projections.digest(&name, &version).await?).into_response())
}

pub async fn diff(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let name = name_of(path)?;
    let query = QueryPairs::parse(query.as_deref())?;
    let version = |key: &str| -> Result<String, ApiError> {
        let v = query.get(key).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_request",
                format!("a diff needs ?from=VERSION&to=VERSION; {key} is missing"),
            )
        })?;
        validate_version(v)?;
        Ok(v.to_string())
    };
    let (from, to) = (version("from")?, version("to")?);
    let samples = query.number("sample")?.unwrap_or(20).min(MAX_DIFF_SAMPLES) as usize;
    Ok(Json(app.projections.diff(&name, &from, &to, samples).await?).into_response())
}

/// The version a read goes to, after waiting for `min_position` if asked.
async fn read_target(
    app: &AppState,
    name: &str,
    query: &QueryPairs,
) -> Result<std::sync::Arc<VersionHandle>, ApiError> {
    let version = query.get("version");
    if let Some(v) = version {
        validate_version(v)?;
    }
    let handle = app.projections.read_target(name, version).await?;
    if let Some(position) = query.number("min_position")? {
        let wait = query.number("wait_ms")?.map(Duration::from_millis);
        app.projections.wait_for(&handle, position, wait).await?;
    }
    Ok(handle)
}

fn with_read_headers(mut response: Response, version: &str, position: u64) -> Response {
    let headers = response.headers_mut();
    if let Ok(v) = HeaderValue::from_str(version) {
        headers.insert("refold-projection-version", v);
    }
    headers.insert("refold-position", HeaderValue::from(position));
    response
}

fn raw(json: &str) -> Result<&RawValue, ApiError> {
    serde_json::from_str(json).map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "corrupt_record",
            format!("a stored document is not JSON: {e}"),
        )
    })
}

/// `GET /v1/projections/{name}/docs/{*key}`: the document itself.
pub async fn document(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let Path((name, key)) = path.map_err(request::path_error)?;
    request::segment("projection name", &name, MAX_MODULE_NAME_LEN)?;
    validate_name(&name)?;
    if key.is_empty() || key.len() > MAX_DOC_KEY_LEN {
        return Err(ApiError::bad_request(
            "invalid_request",
            format!("document keys are 1 to {MAX_DOC_KEY_LEN} bytes"),
        ));
    }
    let query = QueryPairs::parse(query.as_deref())?;
    let handle = read_target(&app, &name, &query).await?;
    let (position, doc) = app.projections.get_document(&handle, &key)?;
    let Some(doc) = doc else {
        return Err(ApiError::not_found(format!(
            "{} has no document {key:?} (at position {position})",
            handle.label()
        ))
        .with("position", position));
    };
    let response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        doc,
    )
        .into_response();
    Ok(with_read_headers(response, handle.version(), position))
}

/// Typed, so documents go out as the stored text, never re-encoded.
#[derive(serde::Serialize)]
struct DocumentsPage<'a> {
    projection: &'a str,
    version: &'a str,
    position: u64,
    documents: Vec<DocumentView<'a>>,
    next_after: Option<String>,
}

#[derive(serde::Serialize)]
struct DocumentView<'a> {
    key: &'a str,
    doc: &'a RawValue,
}

/// `GET /v1/projections/{name}/docs?prefix=&after=&limit=`: documents in key order.
pub async fn documents(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let name = name_of(path)?;
    let query = QueryPairs::parse(query.as_deref())?;
    let limit = query.limit()?;
    // A scan may return what `limit` allows.
    const _: () = assert!(MAX_SCAN_LIMIT as u64 >= request::MAX_LIMIT);
    let prefix = query.get("prefix").unwrap_or("").to_string();
    let after = query.get("after").map(str::to_string);
    let handle = read_target(&app, &name, &query).await?;
    let page = app
        .projections
        .scan_documents(&handle, &prefix, after.as_deref(), limit)?;
    let next_after = match page.documents.len() {
        n if n == limit => page.documents.last().map(|(k, _)| k.clone()),
        _ => None,
    };
    let mut documents = Vec::with_capacity(page.documents.len());
    for (key, doc) in &page.documents {
        documents.push(DocumentView {
            key,
            doc: raw(doc)?,
        });
    }
    let body = Json(DocumentsPage {
        projection: &name,
        version: &page.version,
        position: page.position,
        documents,
        next_after,
    });
    Ok(with_read_headers(
        body.into_response(),
        &page.version,
        page.position,
    ))
}

/// `GET /v1/projections/{name}/queries/{query}?arg=value`: the guest answers.
/// Arguments become a JSON object; a value that is a JSON number (by the
/// rules of `json_text`, and kept as written) or a boolean is passed as one,
/// anything else as a string.
pub async fn query(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(raw_query): RawQuery,
) -> Result<Response, ApiError> {
    let Path((name, query_name)) = path.map_err(request::path_error)?;
    request::segment("projection name", &name, MAX_MODULE_NAME_LEN)?;
    request::segment("query name", &query_name, MAX_QUERY_NAME_LEN)?;
    validate_name(&name)?;
    let query = QueryPairs::parse(raw_query.as_deref())?;
    // Numbers keep their text (a 30-digit id stays one), built as raw JSON.
    let mut args: BTreeMap<String, Box<RawValue>> = BTreeMap::new();
    for (key, value) in query.pairs().iter().cloned() {
        if READ_PARAMS.contains(&key.as_str()) {
            continue;
        }
        let scalar = value == "true"
            || value == "false"
            || (value.starts_with(|c: char| c == '-' || c.is_ascii_digit())
                && crate::json_text::check_stored(&value).is_ok());
        let raw = if scalar {
            RawValue::from_string(value)
        } else {
            serde_json::value::to_raw_value(&value)
        };
        let raw = raw.map_err(|e| {
            ApiError::bad_request("invalid_request", format!("a query argument: {e}"))
        })?;
        args.insert(key, raw);
    }
    let args = serde_json::to_string(&args).map_err(|e| {
        ApiError::bad_request("invalid_request", format!("the query arguments: {e}"))
    })?;
    let handle = read_target(&app, &name, &query).await?;
    let (position, answer) = app.projections.query(&handle, &query_name, &args).await?;
    let response = (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        )],
        answer,
    )
        .into_response();
    Ok(with_read_headers(response, handle.version(), position))
}
