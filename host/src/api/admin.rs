//! `/v1/admin`: operations on the whole server.

use std::path::PathBuf;

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::AppState;
use super::problem::ApiError;
use super::request;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackupBody {
    /// A directory on the server's machine that does not exist yet or is empty.
    path: PathBuf,
}

/// `POST /v1/admin/backup {"path": "/backups/2026-11-27"}`: writes a data
/// directory that `refold serve --data-dir` opens as it is: the log, its
/// indexes and the registry at one durable position, and the module files.
/// Appends continue meanwhile. Read models are not copied: after a restore,
/// projections replay.
pub async fn backup(State(app): State<AppState>, body: Body) -> Result<Response, ApiError> {
    let bytes = request::body(body, 8192).await?;
    let body: BackupBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("the body must be {{\"path\": \"/absolute/dir\"}}: {e}"),
        )
    })?;
    if !body.path.is_absolute() {
        return Err(ApiError::bad_request(
            "invalid_request",
            "the backup path must be absolute (it is a path on the server's machine)",
        ));
    }
    let occupied = std::fs::read_dir(&body.path).is_ok_and(|mut d| d.next().is_some());
    if occupied {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "backup_target_not_empty",
            format!(
                "{} is not empty; back up into a new directory",
                body.path.display()
            ),
        ));
    }
    let (store, modules, path) = (app.store.clone(), app.modules.clone(), body.path.clone());
    let report = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let report = store.backup_to(&path.join("events"))?;
        // Exactly the files of the registry records the copy holds.
        let files = modules.copy_files_to(&report.modules, &path.join("modules"))?;
        Ok((report, files))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    let (report, files) = report;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "path": body.path,
            "position": report.position,
            "events": report.events,
            "streams": report.streams,
            "keys": report.keys,
            "module_files": files,
        })),
    )
        .into_response())
}
