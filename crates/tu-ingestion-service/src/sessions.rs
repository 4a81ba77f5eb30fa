//! Upload sessions in the database. Every statement runs in a transaction (PgBouncer-safe).

use database::sqlx::{self, AnyConnection, Row};
use database::{Db, DbError, now_ms};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Pending,
    Uploaded,
    Expired,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "Pending",
            Status::Uploaded => "Uploaded",
            Status::Expired => "Expired",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "Uploaded" => Status::Uploaded,
            "Expired" => Status::Expired,
            _ => Status::Pending,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub owner: String,
    pub object_key: String,
    pub content_type: String,
    pub filename: String,
    pub status: Status,
    pub bytes: Option<i64>,
    pub checksum: Option<String>,
    pub correlation_id: Option<String>,
    pub created_at: i64,
    pub expires_at: i64,
    pub confirmed_at: Option<i64>,
}

impl Session {
    /// Pending and past its expiry (the janitor may not have marked it yet).
    pub fn is_expired(&self, now: i64) -> bool {
        self.status == Status::Expired || (self.status == Status::Pending && self.expires_at < now)
    }
}

const COLUMNS: &str = "id, owner, object_key, content_type, filename, status, bytes, checksum, \
                       correlation_id, created_at, expires_at, confirmed_at";

fn from_row(r: &sqlx::any::AnyRow) -> Result<Session, sqlx::Error> {
    Ok(Session {
        id: r.try_get("id")?,
        owner: r.try_get("owner")?,
        object_key: r.try_get("object_key")?,
        content_type: r.try_get("content_type")?,
        filename: r.try_get("filename")?,
        status: Status::parse(&r.try_get::<String, _>("status")?),
        bytes: r.try_get("bytes")?,
        checksum: r.try_get("checksum")?,
        correlation_id: r.try_get("correlation_id")?,
        created_at: r.try_get("created_at")?,
        expires_at: r.try_get("expires_at")?,
        confirmed_at: r.try_get("confirmed_at")?,
    })
}

pub async fn insert(db: &Db, s: &Session) -> Result<(), DbError> {
    let mut tx = db.begin().await?;
    sqlx::query(
        "INSERT INTO upload_sessions (id, owner, object_key, content_type, filename, status, \
         correlation_id, created_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(&s.id)
    .bind(&s.owner)
    .bind(&s.object_key)
    .bind(&s.content_type)
    .bind(&s.filename)
    .bind(s.status.as_str())
    .bind(&s.correlation_id)
    .bind(s.created_at)
    .bind(s.expires_at)
    .persistent(false)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// The session `id` of `owner` (another owner's session is reported as absent).
pub async fn find(db: &Db, id: &str, owner: &str) -> Result<Option<Session>, DbError> {
    let mut tx = db.begin().await?;
    let row = sqlx::query(database::sqlx::AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM upload_sessions WHERE id = $1 AND owner = $2"
    )))
    .bind(id)
    .bind(owner)
    .persistent(false)
    .fetch_optional(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(row.as_ref().map(from_row).transpose()?)
}

/// Mark `id` uploaded if it is still pending; `false` if someone else got there first.
pub async fn mark_uploaded(
    conn: &mut AnyConnection,
    id: &str,
    bytes: i64,
    checksum: &str,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE upload_sessions SET status = 'Uploaded', bytes = $1, checksum = $2, confirmed_at = $3 \
         WHERE id = $4 AND status = 'Pending'",
    )
    .bind(bytes)
    .bind(checksum)
    .bind(now_ms())
    .bind(id)
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Expire pending sessions past their expiry; returns their object keys.
pub async fn expire_due(db: &Db, now: i64) -> Result<Vec<String>, DbError> {
    let mut tx = db.begin().await?;
    let keys: Vec<String> = sqlx::query(
        "SELECT object_key FROM upload_sessions WHERE status = 'Pending' AND expires_at < $1",
    )
    .bind(now)
    .persistent(false)
    .fetch_all(&mut *tx)
    .await?
    .iter()
    .map(|r| r.try_get::<String, _>("object_key"))
    .collect::<Result<_, _>>()?;
    sqlx::query("UPDATE upload_sessions SET status = 'Expired' WHERE status = 'Pending' AND expires_at < $1")
        .bind(now)
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(keys)
}
