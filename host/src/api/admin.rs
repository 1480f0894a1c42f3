//! `/v1/admin`: operations on the whole server.

use std::path::{Path, PathBuf};

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
    let bytes = request::body(body, 8192, app.limits.body_timeout).await?;
    let body: BackupBody = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::bad_request(
            "invalid_request",
            format!("the body must be {{\"path\": \"/absolute/dir\"}}: {e}"),
        )
    })?;
    // One backup at a time: two into one directory could otherwise each take
    // the other's files for their own (and clean them up).
    let Some(one_at_a_time) = BackupRunning::start() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "backup_in_progress",
            "a backup is running; try again when it has finished",
        ));
    };
    let target = BackupTarget::prepare(&body.path)?;
    let (store, modules, path) = (app.store.clone(), app.modules.clone(), body.path.clone());
    // The copy and its clean-up run to the end even if the client goes away.
    let (report, files) = tokio::task::spawn_blocking(move || -> Result<_, ApiError> {
        let _one_at_a_time = one_at_a_time;
        let copied = (|| -> Result<_, ApiError> {
            let report = store.backup_to(&path.join("events"))?;
            // Exactly the files of the registry records the copy holds.
            let files = modules.copy_files_to(&report.modules, &path.join("modules"))?;
            Ok((report, files))
        })();
        if copied.is_err() {
            target.clean_up();
        }
        copied
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "path": body.path,
            "position": report.position,
            "events": report.events,
            "streams": report.streams,
            "seals": report.seals,
            "keys": report.keys,
            "module_files": files,
        })),
    )
        .into_response())
}

/// Held while a backup runs (one per process).
struct BackupRunning;

static BACKUP_RUNNING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

impl BackupRunning {
    fn start() -> Option<BackupRunning> {
        use std::sync::atomic::Ordering;
        BACKUP_RUNNING
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .ok()
            .map(|_| BackupRunning)
    }
}

impl Drop for BackupRunning {
    fn drop(&mut self) {
        BACKUP_RUNNING.store(false, std::sync::atomic::Ordering::Release);
    }
}

/// The directory a backup writes into, checked before anything is written:
/// a bad target is the caller's mistake (400, 409), never a storage failure,
/// and a backup that fails leaves nothing behind.
struct BackupTarget {
    path: PathBuf,
    /// The directory was made for this backup (else it existed, empty).
    created: bool,
}

impl BackupTarget {
    fn prepare(path: &Path) -> Result<BackupTarget, ApiError> {
        let shown = path.display();
        let bad_path = |detail: String| ApiError::bad_request("invalid_backup_path", detail);
        let unusable =
            |detail: String| ApiError::new(StatusCode::CONFLICT, "backup_target_unusable", detail);
        if !path.is_absolute() {
            return Err(bad_path(
                "the backup path must be absolute (it is a path on the server's machine)".into(),
            ));
        }
        if path.as_os_str().as_encoded_bytes().contains(&0) {
            return Err(bad_path("the backup path holds a NUL byte".into()));
        }
        if path
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad_path(format!(
                "the backup path {shown} holds `..`; give the directory itself"
            )));
        }
        match std::fs::symlink_metadata(path) {
            Ok(meta) if !meta.is_dir() => {
                return Err(unusable(format!("{shown} exists and is not a directory")));
            }
            Ok(_) => {
                let occupied = std::fs::read_dir(path)
                    .map_err(|e| unusable(format!("cannot read {shown}: {e}")))?
                    .next()
                    .is_some();
                if occupied {
                    return Err(ApiError::new(
                        StatusCode::CONFLICT,
                        "backup_target_not_empty",
                        format!("{shown} is not empty; back up into a new directory"),
                    ));
                }
                return Ok(BackupTarget {
                    path: path.to_owned(),
                    created: false,
                });
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(unusable(format!("cannot use {shown}: {e}"))),
        }
        // Only the target itself is made: a missing parent is more likely a
        // typo than a wish for a new tree of directories.
        let parent = path.parent().unwrap_or(Path::new("/"));
        match std::fs::metadata(parent) {
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(unusable(format!("{} is not a directory", parent.display())));
            }
            Err(e) => {
                return Err(unusable(format!(
                    "the parent directory {} cannot be used: {e}",
                    parent.display()
                )));
            }
        }
        std::fs::create_dir(path).map_err(|e| unusable(format!("cannot create {shown}: {e}")))?;
        Ok(BackupTarget {
            path: path.to_owned(),
            created: true,
        })
    }

    /// After a failed backup: removes what it wrote, and the directory if it
    /// made it.
    fn clean_up(&self) {
        let result = if self.created {
            std::fs::remove_dir_all(&self.path)
        } else {
            ["events", "modules"]
                .iter()
                .map(|d| self.path.join(d))
                .filter(|d| d.exists())
                .try_for_each(std::fs::remove_dir_all)
        };
        if let Err(e) = result {
            tracing::warn!(path = %self.path.display(), error = %e, "could not remove a failed backup");
        }
    }
}
