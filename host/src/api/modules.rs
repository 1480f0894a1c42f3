//! `/v1/modules`: upload, list, activate.

use std::collections::BTreeMap;

use axum::Json;
use axum::body::Body;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};

use super::AppState;
use super::problem::ApiError;
use super::request::{self, QueryPairs};
use crate::modules::{CompileState, LoadedModule, Uploaded, hex};

#[derive(Serialize)]
pub struct ModuleView {
    pub name: String,
    pub version: String,
    pub kind: &'static str,
    pub digest: String,
    pub size: u64,
    pub active: bool,
}

#[derive(Serialize)]
pub struct VersionView {
    pub version: String,
    pub kind: &'static str,
    pub digest: String,
    pub size: u64,
    pub uploaded_at_ms: u64,
    pub active: bool,
    pub compile: CompileView,
    /// The schema versions it emits its event types at, those other than 1
    /// (absent until it is compiled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_versions: Option<BTreeMap<String, u32>>,
}

/// Where a version's compilation stands: `ready`, `compiling` (after a start
/// without its cached artifact), or `failed` with the reason.
#[derive(Serialize)]
pub struct CompileView {
    pub state: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

impl CompileView {
    fn of(state: &CompileState) -> CompileView {
        let (code, detail) = match state {
            CompileState::Failed { code, reason } => (Some(*code), Some(reason.clone())),
            _ => (None, None),
        };
        CompileView {
            state: state.as_str(),
            code,
            detail,
        }
    }
}

#[derive(Serialize)]
pub struct ModuleSummary {
    pub name: String,
    pub active_version: Option<String>,
    pub versions: Vec<VersionView>,
    /// `GET /v1/modules/{name}` only: which version was active (for a
    /// projection: live) when, oldest first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub activations: Option<Vec<ActivationView>>,
}

/// `version` was active from `active_from_ms` until `active_until_ms`
/// (absent while it still is).
#[derive(Serialize)]
pub struct ActivationView {
    pub version: String,
    pub active_from_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_until_ms: Option<u64>,
}

fn activation_views(history: Vec<crate::store::Activation>) -> Vec<ActivationView> {
    let ends: Vec<Option<u64>> = history
        .iter()
        .skip(1)
        .map(|next| Some(next.at_ms))
        .chain([None])
        .collect();
    history
        .into_iter()
        .zip(ends)
        .map(|(a, until)| ActivationView {
            version: a.version,
            active_from_ms: a.at_ms,
            active_until_ms: until,
        })
        .collect()
}

fn view(app: &AppState, module: &LoadedModule) -> ModuleView {
    let r = &module.record;
    ModuleView {
        name: r.name.clone(),
        version: r.version.clone(),
        kind: r.kind.as_str(),
        digest: hex(&r.digest),
        size: r.size,
        active: is_active(app, &r.name, &r.version),
    }
}

fn is_active(app: &AppState, name: &str, version: &str) -> bool {
    app.modules.active_version(name).as_deref() == Some(version)
}

fn summaries(app: &AppState) -> Vec<ModuleSummary> {
    let mut by_name: BTreeMap<String, ModuleSummary> = BTreeMap::new();
    for module in app.modules.list() {
        let r = &module.record;
        let summary = by_name
            .entry(r.name.clone())
            .or_insert_with(|| ModuleSummary {
                name: r.name.clone(),
                active_version: app.modules.active_version(&r.name),
                versions: Vec::new(),
                activations: None,
            });
        summary.versions.push(VersionView {
            version: r.version.clone(),
            kind: r.kind.as_str(),
            digest: hex(&r.digest),
            size: r.size,
            uploaded_at_ms: r.uploaded_at_ms,
            active: summary.active_version.as_deref() == Some(r.version.as_str()),
            compile: CompileView::of(&module.state),
            schema_versions: match &module.state {
                CompileState::Ready(loaded) => Some(loaded.schema_versions()),
                _ => None,
            },
        });
    }
    by_name.into_values().collect()
}

pub async fn put(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
    body: Body,
) -> Result<(StatusCode, Json<ModuleView>), ApiError> {
    let Path((name, version)) = path.map_err(request::path_error)?;
    let activate = QueryPairs::parse(query.as_deref())?.flag("activate")?;
    let bytes = request::body(body, app.limits.max_module_bytes, app.limits.body_timeout).await?;
    let (uploaded, module) = app
        .modules
        .upload(&name, &version, bytes.to_vec(), activate)
        .await?;
    let status = match uploaded {
        Uploaded::Created => StatusCode::CREATED,
        Uploaded::Unchanged => StatusCode::OK,
    };
    Ok((status, Json(view(&app, &module))))
}

pub async fn list(State(app): State<AppState>) -> Json<serde_json::Value> {
    Json(serde_json::json!({ "modules": summaries(&app) }))
}

pub async fn get(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<ModuleSummary>, ApiError> {
    let Path(name) = path.map_err(request::path_error)?;
    let mut summary = summaries(&app)
        .into_iter()
        .find(|s| s.name == name)
        .ok_or_else(|| ApiError::not_found(format!("no module {name}")))?;
    summary.activations = Some(activation_views(app.store.activations(&name)?));
    Ok(Json(summary))
}

#[derive(Deserialize)]
struct ActivateBody {
    version: String,
}

pub async fn activate(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<ModuleView>, ApiError> {
    let Path(name) = path.map_err(request::path_error)?;
    let bytes = request::body(body, 4096, app.limits.body_timeout).await?;
    let body: ActivateBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("expected {{\"version\": \"...\"}}: {e}"),
        )
    })?;
    let module = app.modules.activate(&name, &body.version)?;
    Ok(Json(view(&app, &module)))
}

/// `POST /v1/modules/{name}/{version}/whatif?since=&limit=`: decides the
/// journaled commands of `name` again with `name@version` and reports what
/// would change (`commands::whatif`). `since` is unix ms, or the `next_since`
/// of an earlier answer; `limit` is 1 to `MAX_WHATIF_LIMIT` commands.
pub async fn whatif(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Json<crate::commands::WhatIfReport>, ApiError> {
    use crate::commands::{DEFAULT_WHATIF_LIMIT, MAX_WHATIF_LIMIT};
    let Path((name, version)) = path.map_err(request::path_error)?;
    let query = QueryPairs::parse(query.as_deref())?;
    query.only(&["since", "limit"])?;
    let (since_ms, after) = match query.get("since") {
        None | Some("") => (0, None),
        Some(since) => crate::store::JournalCursor::parse(since)
            .map_err(|e| ApiError::bad_request("invalid_request", e))?,
    };
    if after.as_ref().is_some_and(|id| id.len() > 1024) {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the command id in since is over 1024 bytes",
        ));
    }
    let limit = match query.number("limit")? {
        None => DEFAULT_WHATIF_LIMIT,
        Some(n) if (1..=MAX_WHATIF_LIMIT as u64).contains(&n) => n as usize,
        Some(n) => {
            return Err(ApiError::bad_request(
                "invalid_request",
                format!("limit is 1 to {MAX_WHATIF_LIMIT}, not {n}"),
            ));
        }
    };
    let report = app
        .commands
        .what_if(&name, &version, since_ms, after.as_deref(), limit)
        .await?;
    Ok(Json(report))
}
