//! The REST contract of the original tu-ingestion-service ("v1 frozen"), its status codes and
//! error bodies, plus what it lacked: confirm checks the object, sizes are enforced, confirm is
//! idempotent, sessions belong to an owner and expire.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use auth::owner::Owner;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use chrono::{DateTime, TimeZone, Utc};
use contracts::ImageUploaded;
use database::outbox::{Destination, Outgoing, enqueue};
use database::{Db, now_ms};
use messaging::Message;
use objectstore::{ObjectStore, keys};
use runtime::CorrelationId;
use runtime::http::problem;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::sessions::{self, Session, Status};

#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub store: ObjectStore,
    pub relay_waker: Arc<Notify>,
    pub topic: String,
    pub max_upload_bytes: u64,
    pub presign_ttl: Duration,
    pub session_ttl: Duration,
}

pub fn routes(state: AppState) -> Router {
    Router::new()
        .route("/v1/uploads/start", post(start))
        .route("/v1/uploads/confirm", post(confirm))
        .route("/v1/uploads/{id}", get(status))
        .with_state(state)
}

/// `{"errors": {"field": ["message"]}}` with 422, as the original.
fn invalid(errors: BTreeMap<&'static str, Vec<String>>) -> Response {
    metrics::counter!("ingestion_uploads_rejected_total", "reason" => "invalid").increment(1);
    (
        StatusCode::UNPROCESSABLE_ENTITY,
        Json(serde_json::json!({ "errors": errors })),
    )
        .into_response()
}

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "request failed");
    problem(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Internal Server Error",
        "Unexpected failure; try again.",
    )
}

fn bad_json(e: JsonRejection) -> Response {
    problem(
        StatusCode::BAD_REQUEST,
        "Bad Request",
        format!("The body is not valid JSON: {}", e.body_text()),
    )
}

fn not_found(id: &str) -> Response {
    problem(
        StatusCode::NOT_FOUND,
        "upload not found",
        format!("No upload session found for ID {id}."),
    )
}

fn iso(ms: i64) -> String {
    Utc.timestamp_millis_opt(ms)
        .single()
        .unwrap_or_else(Utc::now)
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StartRequest {
    #[serde(default, alias = "Filename")]
    filename: Option<String>,
    #[serde(default, alias = "ContentType")]
    content_type: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct StartResponse {
    upload_id: String,
    key: String,
    put_url: String,
    expires_at: DateTime<Utc>,
    /// Headers the PUT must carry exactly (they are signed into the URL).
    required_headers: BTreeMap<String, String>,
}

const ALLOWED: &str = "Unsupported MIME type; allowed: image/jpeg, image/png, image/webp";

async fn start(
    State(app): State<AppState>,
    owner: Owner,
    Extension(correlation): Extension<CorrelationId>,
    body: Result<Json<StartRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let mut errors: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let filename = req.filename.unwrap_or_default();
    if filename.trim().is_empty() {
        errors
            .entry("filename")
            .or_default()
            .push("Filename cannot be empty".into());
    } else if filename.chars().count() > 255 {
        errors
            .entry("filename")
            .or_default()
            .push("Filename is too long (max 255 characters)".into());
    }
    let content_type = req
        .content_type
        .as_deref()
        .and_then(keys::allowed_content_type);
    if content_type.is_none() {
        errors
            .entry("contentType")
            .or_default()
            .push(ALLOWED.into());
    }
    let (Some(content_type), true) = (content_type, errors.is_empty()) else {
        return invalid(errors);
    };

    let now = now_ms();
    let Some(key) = keys::new_image_key(content_type, Utc::now()) else {
        return internal("no key for an allowed content type");
    };
    let presigned = match app
        .store
        .presign_put(&key, content_type, app.presign_ttl)
        .await
    {
        Ok(p) => p,
        Err(e) => return internal(e),
    };
    let session = Session {
        id: uuid::Uuid::new_v4().to_string(),
        owner: owner.0,
        object_key: key.clone(),
        content_type: content_type.into(),
        filename: filename.trim().to_owned(),
        status: Status::Pending,
        bytes: None,
        checksum: None,
        correlation_id: Some(correlation.0.clone()),
        created_at: now,
        expires_at: now + app.session_ttl.as_millis() as i64,
        confirmed_at: None,
    };
    if let Err(e) = sessions::insert(&app.db, &session).await {
        return internal(e);
    }
    metrics::counter!("ingestion_uploads_started_total").increment(1);
    tracing::info!(upload_id = %session.id, key = %key, "upload started");
    Json(StartResponse {
        upload_id: session.id,
        key,
        put_url: presigned.url,
        expires_at: presigned.expires_at,
        required_headers: presigned.headers.into_iter().collect(),
    })
    .into_response()
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConfirmRequest {
    #[serde(default, alias = "UploadId")]
    upload_id: Option<String>,
    #[serde(default, alias = "Bytes")]
    bytes: Option<i64>,
    #[serde(default, alias = "Checksum")]
    checksum: Option<String>,
}

/// `sha256:<64 hex>`, case-insensitive; returned lower-cased.
fn checksum_ok(c: &str) -> Option<String> {
    let hex = c
        .strip_prefix("sha256:")
        .or_else(|| c.strip_prefix("SHA256:"))?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
        .then(|| format!("sha256:{}", hex.to_ascii_lowercase()))
}

fn accepted() -> Response {
    (
        StatusCode::ACCEPTED,
        Json(serde_json::json!({ "status": "Accepted" })),
    )
        .into_response()
}

async fn confirm(
    State(app): State<AppState>,
    owner: Owner,
    Extension(correlation): Extension<CorrelationId>,
    body: Result<Json<ConfirmRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return bad_json(e),
    };
    let mut errors: BTreeMap<&'static str, Vec<String>> = BTreeMap::new();
    let upload_id = req.upload_id.unwrap_or_default();
    if upload_id.trim().is_empty() {
        errors
            .entry("uploadId")
            .or_default()
            .push("Required".into());
    }
    let bytes = req.bytes.unwrap_or(0);
    if bytes <= 0 {
        errors
            .entry("bytes")
            .or_default()
            .push("Must be greater than zero".into());
    } else if bytes as u64 > app.max_upload_bytes {
        errors
            .entry("bytes")
            .or_default()
            .push(format!("Must be at most {} bytes", app.max_upload_bytes));
    }
    let checksum = req.checksum.as_deref().and_then(checksum_ok);
    if checksum.is_none() {
        errors
            .entry("checksum")
            .or_default()
            .push("Invalid checksum format (expected sha256:<64 hex>)".into());
    }
    let (Some(checksum), true) = (checksum, errors.is_empty()) else {
        return invalid(errors);
    };
    let upload_id = upload_id.trim().to_owned();
    if uuid::Uuid::parse_str(&upload_id).is_err() {
        return not_found(&upload_id);
    }
    let session = match sessions::find(&app.db, &upload_id, &owner.0).await {
        Ok(Some(s)) => s,
        Ok(None) => return not_found(&upload_id),
        Err(e) => return internal(e),
    };
    if let Some(r) = already_confirmed(&session, bytes, &checksum) {
        return r;
    }
    if session.is_expired(now_ms()) {
        metrics::counter!("ingestion_uploads_rejected_total", "reason" => "expired").increment(1);
        return problem(
            StatusCode::GONE,
            "upload session expired",
            format!(
                "Upload session {upload_id} expired at {}; start a new upload.",
                iso(session.expires_at)
            ),
        );
    }

    // The original never looked at the object; we do: it must exist, fit, and match `bytes`.
    let info = match app.store.head(&session.object_key).await {
        Ok(Some(info)) => info,
        Ok(None) => {
            metrics::counter!("ingestion_uploads_rejected_total", "reason" => "object_missing")
                .increment(1);
            return problem(
                StatusCode::CONFLICT,
                "object not uploaded",
                format!(
                    "Nothing is stored at {}: PUT the file to putUrl before confirming.",
                    session.object_key
                ),
            );
        }
        Err(e) => {
            tracing::error!(error = %e, "checking the stored object failed");
            return problem(
                StatusCode::SERVICE_UNAVAILABLE,
                "Service Unavailable",
                "The object store is not available; confirm again shortly.",
            );
        }
    };
    if info.size > app.max_upload_bytes {
        metrics::counter!("ingestion_uploads_rejected_total", "reason" => "too_large").increment(1);
        if let Err(e) = app.store.delete(&session.object_key).await {
            tracing::warn!(error = %e, key = %session.object_key, "could not delete an oversized object");
        }
        return problem(
            StatusCode::PAYLOAD_TOO_LARGE,
            "object too large",
            format!(
                "The stored object has {} bytes; the limit is {}. It was deleted.",
                info.size, app.max_upload_bytes
            ),
        );
    }
    if info.size != bytes as u64 {
        metrics::counter!("ingestion_uploads_rejected_total", "reason" => "size_mismatch")
            .increment(1);
        return problem(
            StatusCode::CONFLICT,
            "size mismatch",
            format!(
                "bytes is {bytes}, but the stored object has {} bytes.",
                info.size
            ),
        );
    }

    let event = ImageUploaded {
        upload_id: uuid::Uuid::parse_str(&session.id).unwrap_or_default(),
        object_key: session.object_key.clone(),
        content_type: session.content_type.clone(),
        bytes,
        checksum: checksum.clone(),
        occurred_at: Utc::now(),
        owner: Some(session.owner.clone()),
    };
    let outgoing = Outgoing {
        destination: Destination::Log {
            topic: app.topic.clone(),
        },
        key: session.object_key.clone(),
        message: Message::from_contract(&event, crate::SERVICE, correlation.as_str()),
    };
    let won = async {
        let mut tx = app.db.begin().await?;
        let won = sessions::mark_uploaded(&mut tx, &session.id, bytes, &checksum).await?;
        if won {
            enqueue(&mut tx, &outgoing).await?;
        }
        tx.commit().await?;
        Ok::<_, database::DbError>(won)
    }
    .await;
    match won {
        Ok(true) => {
            app.relay_waker.notify_one();
            metrics::counter!("ingestion_uploads_confirmed_total").increment(1);
            tracing::info!(upload_id = %session.id, bytes, "upload confirmed");
            accepted()
        }
        // A concurrent confirm won the race; answer as for a repeated confirm.
        Ok(false) => match sessions::find(&app.db, &session.id, &session.owner).await {
            Ok(Some(s)) => {
                already_confirmed(&s, bytes, &checksum).unwrap_or_else(|| internal("confirm race"))
            }
            Ok(None) => not_found(&upload_id),
            Err(e) => internal(e),
        },
        Err(e) => internal(e),
    }
}

/// A repeated confirm: the same values are accepted again (nothing new is published); different
/// ones are a conflict.
fn already_confirmed(s: &Session, bytes: i64, checksum: &str) -> Option<Response> {
    if s.status != Status::Uploaded {
        return None;
    }
    if s.bytes == Some(bytes) && s.checksum.as_deref() == Some(checksum) {
        metrics::counter!("ingestion_confirm_repeats_total").increment(1);
        return Some(accepted());
    }
    Some(problem(
        StatusCode::CONFLICT,
        "already confirmed",
        format!(
            "Upload {} was confirmed with bytes={} and checksum={}.",
            s.id,
            s.bytes.unwrap_or_default(),
            s.checksum.as_deref().unwrap_or("")
        ),
    ))
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct UploadView {
    upload_id: String,
    key: String,
    content_type: String,
    filename: String,
    status: &'static str,
    bytes: Option<i64>,
    checksum: Option<String>,
    created_at: String,
    expires_at: String,
    confirmed_at: Option<String>,
}

async fn status(State(app): State<AppState>, owner: Owner, Path(id): Path<String>) -> Response {
    if uuid::Uuid::parse_str(&id).is_err() {
        return not_found(&id);
    }
    match sessions::find(&app.db, &id, &owner.0).await {
        Ok(Some(s)) => {
            let status = if s.is_expired(now_ms()) {
                Status::Expired
            } else {
                s.status
            };
            Json(UploadView {
                upload_id: s.id,
                key: s.object_key,
                content_type: s.content_type,
                filename: s.filename,
                status: status.as_str(),
                bytes: s.bytes,
                checksum: s.checksum,
                created_at: iso(s.created_at),
                expires_at: iso(s.expires_at),
                confirmed_at: s.confirmed_at.map(iso),
            })
            .into_response()
        }
        Ok(None) => not_found(&id),
        Err(e) => internal(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_are_checked_and_normalised() {
        let hex = "3E4F9A1C0B2D4E6F8A0C1E3F5A7B9C0D2E4F6A8B0C1D3E5F7A9B0C2D4E6F8A9C";
        assert_eq!(
            checksum_ok(&format!("sha256:{hex}")),
            Some(format!("sha256:{}", hex.to_lowercase()))
        );
        assert_eq!(checksum_ok(&format!("sha256:{}", &hex[1..])), None);
        assert_eq!(checksum_ok(&format!("md5:{hex}")), None);
        assert_eq!(checksum_ok(&format!("sha256:{}g", &hex[1..])), None);
    }
}
