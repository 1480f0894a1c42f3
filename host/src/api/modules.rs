//! `/v1/modules`: upload, list, activate (in full or as a canary), roll back.

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
use crate::modules::{CompileState, LoadedModule, OutcomeCounts, Uploaded, VersionRole, hex};

#[derive(Serialize)]
pub struct ModuleView {
    pub name: String,
    pub version: String,
    pub kind: &'static str,
    pub digest: String,
    pub size: u64,
    pub active: bool,
    /// The share of aggregate ids this version decides while it is a canary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub canary_percent: Option<u8>,
}

#[derive(Serialize)]
pub struct VersionView {
    pub version: String,
    pub kind: &'static str,
    pub digest: String,
    pub size: u64,
    pub uploaded_at_ms: u64,
    pub active: bool,
    /// `stable`, `canary`, `sticky` (newer than the stable version and out of
    /// the split: still decides for the aggregates whose last event it
    /// produced), `retired` (a forced rollback retired it) or `inactive`.
    pub role: &'static str,
    /// What the role means for commands, for `sticky` and `retired`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    pub compile: CompileView,
    /// The schema versions it emits its event types at, those other than 1
    /// (absent until it is compiled).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub schema_versions: Option<BTreeMap<String, u32>>,
    /// Commands this version decided since the server started.
    pub outcomes: OutcomeCounts,
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
    /// The aggregate's canary, if one runs: its version, share and start.
    pub canary: Option<CanaryJson>,
    /// Versions a forced rollback retired.
    pub retired_versions: Vec<String>,
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

#[derive(Serialize)]
pub struct CanaryJson {
    pub version: String,
    pub percent: u8,
    pub since_ms: u64,
}

fn role_note(role: VersionRole, name: &str) -> Option<String> {
    match role {
        VersionRole::Sticky => Some(format!(
            "newer than the stable version and out of the split: it still decides for the aggregates whose last event it produced (an aggregate never moves back to an older version), and stays loaded for them; outcomes.sticky counts those commands. A forced rollback (POST /v1/modules/{name}/rollback with {{\"force\": true}}) to an older version retires it"
        )),
        VersionRole::Retired => Some(
            "retired by a forced rollback: it decides for no aggregate, not even those whose last event it produced; activating it again takes it back".to_string(),
        ),
        VersionRole::Stable | VersionRole::Canary | VersionRole::Inactive => None,
    }
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
        canary_percent: app
            .modules
            .routing(&r.name)
            .and_then(|routing| routing.canary)
            .filter(|c| c.version == r.version)
            .map(|c| c.percent),
    }
}

fn is_active(app: &AppState, name: &str, version: &str) -> bool {
    app.modules.active_version(name).as_deref() == Some(version)
}

fn summaries(app: &AppState) -> Vec<ModuleSummary> {
    let mut by_name: BTreeMap<String, ModuleSummary> = BTreeMap::new();
    for module in app.modules.list() {
        let r = &module.record;
        let summary = by_name.entry(r.name.clone()).or_insert_with(|| {
            let routing = app.modules.routing(&r.name);
            ModuleSummary {
                name: r.name.clone(),
                active_version: app.modules.active_version(&r.name),
                canary: routing
                    .as_ref()
                    .and_then(|routing| routing.canary.clone())
                    .map(|c| CanaryJson {
                        version: c.version,
                        percent: c.percent,
                        since_ms: c.since_ms,
                    }),
                retired_versions: routing.map(|r| r.retired).unwrap_or_default(),
                versions: Vec::new(),
                activations: None,
            }
        });
        let role = app.modules.role(&r.name, &r.version);
        summary.versions.push(VersionView {
            version: r.version.clone(),
            kind: r.kind.as_str(),
            digest: hex(&r.digest),
            size: r.size,
            uploaded_at_ms: r.uploaded_at_ms,
            active: summary.active_version.as_deref() == Some(r.version.as_str()),
            role: role.as_str(),
            note: role_note(role, &r.name),
            compile: CompileView::of(&module.state),
            schema_versions: match &module.state {
                CompileState::Ready(loaded) => Some(loaded.schema_versions()),
                _ => None,
            },
            outcomes: app.modules.outcomes_of(&r.name, &r.version),
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
    let query = QueryPairs::parse(query.as_deref())?;
    let (activate, force) = (query.flag("activate")?, query.flag("force")?);
    let bytes = request::body(body, app.limits.max_module_bytes, app.limits.body_timeout).await?;
    let (uploaded, module) = app
        .modules
        .upload(&name, &version, bytes.to_vec(), activate, force)
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

/// `{"version": "2.0.0"}`, optionally with `"canary": 10` (or `"10%"`) and
/// `"force": true` (without a passing replay check).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ActivateBody {
    version: String,
    #[serde(default)]
    canary: Option<serde_json::Value>,
    #[serde(default)]
    force: bool,
}

/// A canary share: an integer 1..=100 or the same as a string with an
/// optional `%`; 100 is a full activation (None).
fn canary_percent(value: &serde_json::Value) -> Result<Option<u8>, ApiError> {
    let bad = || {
        ApiError::bad_request(
            "invalid_canary",
            format!(
                "canary must be a whole percentage from 1 to 100 (a number such as 10, or a string such as \"10%\"), not {}",
                shown(value)
            ),
        )
    };
    let percent = match value {
        serde_json::Value::Null => return Ok(None),
        // 26.0 is the integer 26 to JSON (and to JSON Schema).
        serde_json::Value::Number(n) => match (n.as_u64(), n.as_f64()) {
            (Some(whole), _) => whole,
            (None, Some(f)) if f.fract() == 0.0 && (0.0..=100.0).contains(&f) => f as u64,
            _ => return Err(bad()),
        },
        serde_json::Value::String(text) => {
            let digits = text.strip_suffix('%').unwrap_or(text);
            if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit())
            {
                return Err(bad());
            }
            digits.parse::<u64>().map_err(|_| bad())?
        }
        _ => return Err(bad()),
    };
    match percent {
        1..=99 => Ok(Some(percent as u8)),
        100 => Ok(None),
        _ => Err(bad()),
    }
}

/// A JSON object into `T`: serde would also take an array for a struct.
fn object<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if !value.is_object() {
        return Err("the body is not a JSON object".into());
    }
    serde_json::from_value(value).map_err(|e| e.to_string())
}

/// A client's value in an error, cut short.
fn shown(value: &serde_json::Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(64) {
        Some((at, _)) => format!("{}...", &text[..at]),
        None => text,
    }
}

pub async fn activate(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<ModuleView>, ApiError> {
    let Path(name) = path.map_err(request::path_error)?;
    let bytes = request::body(body, 4096, app.limits.body_timeout).await?;
    let body: ActivateBody = object(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("expected {{\"version\": \"...\"}} and optionally \"canary\": 1 to 100: {e}"),
        )
    })?;
    let percent = match &body.canary {
        Some(value) => canary_percent(value)?,
        None => None,
    };
    let module = match percent {
        Some(percent) => app
            .modules
            .activate_canary(&name, &body.version, percent, body.force)?,
        None => app.modules.activate(&name, &body.version, body.force)?,
    };
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

/// `{}`, `{"force": true}`, `{"from": "2.0.0"}`; an empty body is `{}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    #[serde(default)]
    force: bool,
    /// The version the caller means to roll back from: makes a retry safe.
    #[serde(default)]
    from: Option<String>,
}

#[derive(Serialize)]
pub struct RollbackView {
    pub name: String,
    /// The version rolled back from: the canary, or the previous stable one.
    pub from: String,
    /// The stable version now.
    pub to: String,
    pub canary_dropped: bool,
    pub forced: bool,
    /// Versions a forced rollback retired (every version newer than `to`).
    pub retired: Vec<String>,
}

pub async fn rollback(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    body: Body,
) -> Result<Json<RollbackView>, ApiError> {
    let Path(name) = path.map_err(request::path_error)?;
    let bytes = request::body(body, 4096, app.limits.body_timeout).await?;
    let body: RollbackBody = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        RollbackBody::default()
    } else {
        object(&bytes).map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!(
                    "expected no body, or {{\"force\": true|false, \"from\": \"VERSION\"}} (both optional): {e}"
                ),
            )
        })?
    };
    crate::modules::validate_name(&name)?;
    if let Some(from) = &body.from {
        crate::modules::validate_version(from)?;
    }
    let done = app
        .modules
        .rollback(&name, body.force, body.from.as_deref())?;
    Ok(Json(RollbackView {
        name,
        from: done.from,
        to: done.to,
        canary_dropped: done.canary_dropped,
        forced: done.forced,
        retired: done.retired,
    }))
}

/// `{}` (every stream) or `{"sample": ["id", ...]}`; an empty body is `{}`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct CheckBody {
    #[serde(default)]
    sample: Option<Vec<String>>,
}

/// `POST /v1/modules/{name}/{version}/check`: starts the replay check of a
/// candidate aggregate version in the background (`commands::check`); 202
/// with its status, or the status of the one already running.
pub async fn start_check(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
    body: Body,
) -> Result<(StatusCode, Json<crate::commands::CheckStatus>), ApiError> {
    let Path((name, version)) = path.map_err(request::path_error)?;
    let bytes = request::body(body, 300 << 10, app.limits.body_timeout).await?;
    let body: CheckBody = if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        CheckBody::default()
    } else {
        object(&bytes).map_err(|e| {
            ApiError::bad_request(
                "invalid_request",
                format!("expected no body, or {{\"sample\": [\"aggregate id\", ...]}}: {e}"),
            )
        })?
    };
    crate::modules::validate_name(&name)?;
    crate::modules::validate_version(&version)?;
    let status = app
        .commands
        .start_check(&name, &version, body.sample)
        .await?;
    Ok((StatusCode::ACCEPTED, Json(status)))
}

/// `GET /v1/modules/{name}/{version}/check`: the latest check of the version.
pub async fn check(
    State(app): State<AppState>,
    path: Result<Path<(String, String)>, PathRejection>,
) -> Result<Json<crate::commands::CheckStatus>, ApiError> {
    let Path((name, version)) = path.map_err(request::path_error)?;
    crate::modules::validate_name(&name)?;
    crate::modules::validate_version(&version)?;
    Ok(Json(app.commands.check_status(&name, &version)?))
}
