//! `POST /v1/backups`: a checkpoint of the running store, confined to `[backup] dir`.

#[allow(unused_imports)]
use super::*;
use crate::auth::Caller;

/// A consistent backup of the whole store (RocksDB checkpoint) while it runs (operator).
#[utoipa::path(
    post, path = "/v1/backups", tag = "operator",
    request_body = BackupRequest,
    security(("bearer" = [])),
    responses(
        (status = 200, description = "Backup written", body = BackupResponse),
        (status = 400, description = "Bad body or name", body = ErrorBody),
        (status = 409, description = "A backup of that name exists (or is being written)", body = ErrorBody),
        (status = 401, description = "No valid token", body = ErrorBody),
        (status = 403, description = "Role is not operator", body = ErrorBody),
    )
)]
pub async fn backup(
    State(st): State<ApiState>,
    caller: Caller,
    record: CallRecord,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // The operator's role was checked before (routes.rs); the caller names who asked.
    let who = caller
        .identity()
        .ok_or_else(ApiError::unauthorized)?
        .id
        .clone();
    let body = st.body(&headers, body).await?;
    let fields = input::json_object(&body, &BackupRequest::FIELDS)?;
    const NAME: &str = "1 to 64 letters, digits, '.', '_' or '-', not starting with '.'";
    let name = input::string_field(&fields, "name", NAME)?
        .ok_or_else(|| ApiError::bad_request(format!("name is required: {NAME}")))?
        .to_string();
    if !BackupRequest::valid_name(&name) {
        return Err(ApiError::bad_request(format!("name must be {NAME}")));
    }
    // Backups stay under the configured directory: the request names a child, never a path.
    let dir = st.config().backup_dir.join(&name);
    // RocksDB builds a checkpoint in `<dir>.tmp` and empties that first: neither may exist.
    let tmp = st.config().backup_dir.join(format!("{name}.tmp"));
    if dir.exists() || tmp.exists() {
        return Err(ApiError::conflict(
            "a backup of that name exists; choose another",
        ));
    }
    // The name is the operator's choice, not personal data; one that could be taken for an
    // EAN is left out of the audit line rather than refused.
    if !meterstand_audit::holds_ean_like(&name) {
        record.param("name", name.as_str());
    }
    let _permit = st.permit()?;
    let started = std::time::Instant::now();
    let (target, parent) = (dir.clone(), st.config().backup_dir.clone());
    let keep = st.config().backup_keep;
    let info = st
        .blocking(move |b| {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&parent)
                .map_err(|e| {
                    meterstand_store::StoreError::engine("creating the backup directory", e)
                })?;
            b.backup(&target, keep)
        })
        .await??;
    let millis = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
    record.rows(info.files);
    tracing::info!(token = %who, path = %dir.display(), files = info.files, bytes = info.bytes, millis, "backup written");
    Ok(axum::Json(BackupResponse {
        path: dir.display().to_string(),
        files: info.files,
        bytes: info.bytes,
        millis,
    })
    .into_response())
}
