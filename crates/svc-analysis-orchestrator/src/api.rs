//! The read API the gateway calls (internal token; `x-owner` scopes what the caller may see):
//! `GET /v1/analyses/{id}`, `GET /v1/analyses?uploadId=…`, `GET /v1/analyses?first=&after=`.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use database::Db;
use serde::{Deserialize, Serialize};

use crate::store::{self, Analysis, ListQuery};

const MAX_PAGE: i64 = 100;
const DEFAULT_PAGE: i64 = 20;

pub fn routes(db: Db) -> Router {
    Router::new()
        .route("/v1/analyses", get(list))
        .route("/v1/analyses/{id}", get(by_id))
        .with_state(db)
}

/// An analysis as the API shows it.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AnalysisView {
    pub id: String,
    pub upload_id: Option<String>,
    pub object_key: String,
    pub owner: Option<String>,
    pub correlation_id: Option<String>,
    pub origin: String,
    pub status: String,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub success: Option<bool>,
    pub result: Option<serde_json::Value>,
    pub requested_at: Option<DateTime<Utc>>,
    pub started_at: Option<DateTime<Utc>>,
    pub completed_at: Option<DateTime<Utc>>,
    pub failed_at: Option<DateTime<Utc>>,
}

impl From<Analysis> for AnalysisView {
    fn from(a: Analysis) -> Self {
        Self {
            id: a.id,
            upload_id: a.upload_id,
            object_key: a.object_key,
            owner: a.owner,
            correlation_id: a.correlation_id,
            origin: a.origin,
            status: a.status.as_str().into(),
            reason: a.reason,
            message: a.message,
            success: a.success,
            result: a.result.and_then(|r| serde_json::from_str(&r).ok()),
            requested_at: store::to_time(a.requested_at),
            started_at: a.started_at.and_then(store::to_time),
            completed_at: a.completed_at.and_then(store::to_time),
            failed_at: a.failed_at.and_then(store::to_time),
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Page {
    pub items: Vec<AnalysisView>,
    /// Pass as `after` for the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

fn problem(status: StatusCode, title: &str, detail: impl Into<String>) -> Response {
    runtime::http::problem(status, title, detail)
}

fn unavailable(e: database::DbError) -> Response {
    tracing::warn!(error = %e, "reading analyses");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Database unavailable",
        "analyses cannot be read right now; retry shortly",
    )
}

async fn by_id(
    State(db): State<Db>,
    owner: Option<auth::owner::Owner>,
    Path(id): Path<String>,
) -> Response {
    let found = async {
        let mut tx = db.begin().await?;
        let a = store::get(&mut tx, &id).await?;
        tx.commit().await?;
        Ok::<_, database::DbError>(a)
    }
    .await;
    match found {
        Err(e) => unavailable(e),
        // Someone else's analysis is answered like a missing one.
        Ok(Some(a))
            if owner
                .as_ref()
                .is_none_or(|o| a.owner.as_deref() == Some(o.as_str())) =>
        {
            Json(AnalysisView::from(a)).into_response()
        }
        Ok(_) => problem(
            StatusCode::NOT_FOUND,
            "Analysis not found",
            format!("no analysis {id}"),
        ),
    }
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ListParams {
    upload_id: Option<String>,
    owner: Option<String>,
    first: Option<i64>,
    after: Option<String>,
}

async fn list(
    State(db): State<Db>,
    caller: Option<auth::owner::Owner>,
    Query(p): Query<ListParams>,
) -> Response {
    // The gateway's x-owner wins; `owner=` is for operators calling the API directly.
    let owner = caller.map(|o| o.as_str().to_owned()).or(p.owner);
    if owner.is_none() && p.upload_id.is_none() {
        return problem(
            StatusCode::BAD_REQUEST,
            "Missing filter",
            "give x-owner (or owner=) or uploadId=",
        );
    }
    let limit = p.first.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return problem(
            StatusCode::BAD_REQUEST,
            "Invalid page size",
            format!("first must be between 1 and {MAX_PAGE}"),
        );
    }
    let before = match p.after.as_deref().map(decode_cursor) {
        None => None,
        Some(Some(c)) => Some(c),
        Some(None) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Invalid cursor",
                "after is not a cursor this API gave out",
            );
        }
    };
    let query = ListQuery {
        owner,
        upload_id: p.upload_id,
        before,
        // One more than asked tells whether there is a next page.
        limit: limit + 1,
    };
    match store::list(&db, &query).await {
        Err(e) => unavailable(e),
        Ok(mut rows) => {
            let more = rows.len() as i64 > limit;
            rows.truncate(limit as usize);
            let next_cursor = more
                .then(|| rows.last().map(|a| encode_cursor(a.requested_at, &a.id)))
                .flatten();
            Json(Page {
                items: rows.into_iter().map(AnalysisView::from).collect(),
                next_cursor,
            })
            .into_response()
        }
    }
}

fn encode_cursor(requested_at: i64, id: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{requested_at}:{id}"))
}

fn decode_cursor(cursor: &str) -> Option<(i64, String)> {
    let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (at, id) = text.split_once(':')?;
    Some((at.parse().ok()?, id.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = encode_cursor(1_700_000_000_123, "0190-abc");
        assert_eq!(
            decode_cursor(&c),
            Some((1_700_000_000_123, "0190-abc".into()))
        );
        assert_eq!(decode_cursor("not base64!"), None);
        let no_colon = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("12345");
        assert_eq!(decode_cursor(&no_colon), None);
    }
}
