//! Analyses and the inbox in the database. Every statement runs inside the caller's transaction
//! (PgBouncer-safe, and so a state change and its outbox rows commit together).

use chrono::{DateTime, TimeZone, Utc};
use contracts::{FailureReason, RecognitionCompleted};
use database::sqlx::{self, AnyConnection, Row};
use database::{Db, DbError};
use serde::Serialize;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Requested,
    Started,
    Completed,
    Failed,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Requested => "requested",
            Status::Started => "started",
            Status::Completed => "completed",
            Status::Failed => "failed",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "started" => Status::Started,
            "completed" => Status::Completed,
            "failed" => Status::Failed,
            _ => Status::Requested,
        }
    }
}

/// How an analysis came about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// `ImageUploaded`: exactly one per upload.
    Upload,
    /// `RequestAnalysis`: the owner asked again.
    Request,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Upload => "upload",
            Origin::Request => "request",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Analysis {
    pub id: String,
    pub upload_id: Option<String>,
    pub object_key: String,
    pub owner: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Option<i64>,
    pub checksum: Option<String>,
    pub correlation_id: Option<String>,
    pub origin: String,
    pub status: Status,
    pub reason: Option<String>,
    pub message: Option<String>,
    pub success: Option<bool>,
    pub result: Option<String>,
    pub requested_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub deadline_at: Option<i64>,
}

/// What a new analysis starts from.
#[derive(Debug, Clone)]
pub struct NewAnalysis {
    pub id: String,
    pub origin: Origin,
    pub upload_id: Option<String>,
    pub object_key: String,
    pub owner: Option<String>,
    pub content_type: Option<String>,
    pub bytes: Option<i64>,
    pub checksum: Option<String>,
    pub correlation_id: Option<String>,
    pub requested_at: i64,
}

const COLUMNS: &str = "id, upload_id, object_key, owner, content_type, bytes, checksum, \
    correlation_id, origin, status, reason, message, success, result, requested_at, started_at, \
    completed_at, failed_at, deadline_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Analysis, sqlx::Error> {
    Ok(Analysis {
        id: r.try_get("id")?,
        upload_id: r.try_get("upload_id")?,
        object_key: r.try_get("object_key")?,
        owner: r.try_get("owner")?,
        content_type: r.try_get("content_type")?,
        bytes: r.try_get("bytes")?,
        checksum: r.try_get("checksum")?,
        correlation_id: r.try_get("correlation_id")?,
        origin: r.try_get("origin")?,
        status: Status::parse(&r.try_get::<String, _>("status")?),
        reason: r.try_get("reason")?,
        message: r.try_get("message")?,
        success: r.try_get::<Option<i64>, _>("success")?.map(|v| v != 0),
        result: r.try_get("result")?,
        requested_at: r.try_get("requested_at")?,
        started_at: r.try_get("started_at")?,
        completed_at: r.try_get("completed_at")?,
        failed_at: r.try_get("failed_at")?,
        deadline_at: r.try_get("deadline_at")?,
    })
}

/// Record `message_id` as handled by `consumer`. False: it was handled before (a redelivery).
pub async fn first_delivery(
    conn: &mut AnyConnection,
    consumer: &str,
    message_id: &str,
    now: i64,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "INSERT INTO inbox (consumer, message_id, received_at) VALUES ($1, $2, $3) \
         ON CONFLICT (consumer, message_id) DO NOTHING",
    )
    .bind(consumer)
    .bind(message_id)
    .bind(now)
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Insert a started analysis. False when it exists already (same id, or the upload has one).
pub async fn insert_started(
    conn: &mut AnyConnection,
    new: &NewAnalysis,
    now: i64,
    deadline_at: i64,
) -> Result<bool, DbError> {
    let upload_key = (new.origin == Origin::Upload)
        .then(|| new.upload_id.clone())
        .flatten();
    let done = sqlx::query(
        "INSERT INTO analyses (id, upload_key, upload_id, object_key, owner, content_type, bytes, \
         checksum, correlation_id, origin, status, requested_at, started_at, deadline_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, 'started', $11, $12, $13) \
         ON CONFLICT DO NOTHING",
    )
    .bind(&new.id)
    .bind(upload_key)
    .bind(&new.upload_id)
    .bind(&new.object_key)
    .bind(&new.owner)
    .bind(&new.content_type)
    .bind(new.bytes)
    .bind(&new.checksum)
    .bind(&new.correlation_id)
    .bind(new.origin.as_str())
    .bind(new.requested_at)
    .bind(now)
    .bind(deadline_at)
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Insert an analysis that failed before it could start (e.g. the object is not the caller's).
pub async fn insert_failed(
    conn: &mut AnyConnection,
    new: &NewAnalysis,
    reason: FailureReason,
    message: &str,
    now: i64,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "INSERT INTO analyses (id, upload_id, object_key, owner, correlation_id, origin, status, \
         reason, message, requested_at, failed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, 'failed', $7, $8, $9, $10) ON CONFLICT DO NOTHING",
    )
    .bind(&new.id)
    .bind(&new.upload_id)
    .bind(&new.object_key)
    .bind(&new.owner)
    .bind(&new.correlation_id)
    .bind(new.origin.as_str())
    .bind(reason.as_str())
    .bind(message)
    .bind(new.requested_at)
    .bind(now)
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// At most one analysis: `tail` (a constant condition and order, with `$1`) bound to `value`.
async fn one_where(
    conn: &mut AnyConnection,
    tail: &'static str,
    value: &str,
) -> Result<Option<Analysis>, DbError> {
    let row = sqlx::query(sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM analyses WHERE {tail}"
    )))
    .bind(value)
    .persistent(false)
    .fetch_optional(conn)
    .await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<Analysis>, DbError> {
    one_where(conn, "id = $1", id).await
}

/// The analysis an upload started (it holds the upload's checksum, size and owner).
pub async fn upload_analysis_of_object(
    conn: &mut AnyConnection,
    object_key: &str,
) -> Result<Option<Analysis>, DbError> {
    one_where(
        conn,
        "object_key = $1 AND origin = 'upload' ORDER BY requested_at DESC, id DESC LIMIT 1",
        object_key,
    )
    .await
}

/// The newest started analysis of an object: how a result without an analysis id (the original
/// adapter's) finds its analysis.
pub async fn started_of_object(
    conn: &mut AnyConnection,
    object_key: &str,
) -> Result<Option<Analysis>, DbError> {
    one_where(
        conn,
        "object_key = $1 AND status = 'started' ORDER BY started_at DESC, id DESC LIMIT 1",
        object_key,
    )
    .await
}

/// started → completed. False when it was no longer started (a duplicate or a late result).
pub async fn complete(
    conn: &mut AnyConnection,
    id: &str,
    success: bool,
    result: &RecognitionCompleted,
    now: i64,
) -> Result<bool, DbError> {
    let json = serde_json::to_string(result).unwrap_or_else(|_| "null".into());
    let done = sqlx::query(
        "UPDATE analyses SET status = 'completed', success = $1, result = $2, completed_at = $3 \
         WHERE id = $4 AND status = 'started'",
    )
    .bind(i64::from(success))
    .bind(json)
    .bind(now)
    .bind(id)
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// started → failed. False when it was no longer started.
pub async fn fail(
    conn: &mut AnyConnection,
    id: &str,
    reason: FailureReason,
    message: &str,
    now: i64,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE analyses SET status = 'failed', reason = $1, message = $2, failed_at = $3 \
         WHERE id = $4 AND status = 'started'",
    )
    .bind(reason.as_str())
    .bind(message)
    .bind(now)
    .bind(id)
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Started analyses past their deadline.
pub async fn overdue(db: &Db, now: i64, limit: i64) -> Result<Vec<String>, DbError> {
    let mut tx = db.begin().await?;
    let rows = sqlx::query(
        "SELECT id FROM analyses WHERE status = 'started' AND deadline_at < $1 \
         ORDER BY deadline_at LIMIT $2",
    )
    .bind(now)
    .bind(limit)
    .persistent(false)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(rows
        .iter()
        .map(|r| r.try_get::<String, _>("id"))
        .collect::<Result<_, _>>()?)
}

/// Forget inbox entries older than `before` (redeliveries come within minutes, not days).
pub async fn prune_inbox(db: &Db, before: i64) -> Result<u64, DbError> {
    let mut tx = db.begin().await?;
    let done = sqlx::query("DELETE FROM inbox WHERE received_at < $1")
        .bind(before)
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(done.rows_affected())
}

/// Filter and page for listing analyses, newest first.
#[derive(Debug, Clone, Default)]
pub struct ListQuery {
    pub owner: Option<String>,
    pub upload_id: Option<String>,
    /// Only analyses older than this `(requested_at, id)`.
    pub before: Option<(i64, String)>,
    pub limit: i64,
}

pub async fn list(db: &Db, q: &ListQuery) -> Result<Vec<Analysis>, DbError> {
    // Placeholders are numbered in order of the filters present.
    let mut sql = format!("SELECT {COLUMNS} FROM analyses WHERE 1 = 1");
    let mut n = 0;
    let mut next = || {
        n += 1;
        format!("${n}")
    };
    if q.owner.is_some() {
        sql += &format!(" AND owner = {}", next());
    }
    if q.upload_id.is_some() {
        sql += &format!(" AND upload_id = {}", next());
    }
    if q.before.is_some() {
        let (a, b, c) = (next(), next(), next());
        sql += &format!(" AND (requested_at < {a} OR (requested_at = {b} AND id < {c}))");
    }
    sql += &format!(" ORDER BY requested_at DESC, id DESC LIMIT {}", next());
    // Built from constants and numbered placeholders only; every value is bound.
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql)).persistent(false);
    if let Some(owner) = &q.owner {
        query = query.bind(owner.clone());
    }
    if let Some(upload) = &q.upload_id {
        query = query.bind(upload.clone());
    }
    if let Some((at, id)) = &q.before {
        query = query.bind(*at).bind(*at).bind(id.clone());
    }
    query = query.bind(q.limit);
    let mut tx = db.begin().await?;
    let rows = query.fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(rows.iter().map(from_row).collect::<Result<_, _>>()?)
}

pub fn to_time(ms: i64) -> Option<DateTime<Utc>> {
    Utc.timestamp_millis_opt(ms).single()
}
