//! Databases through one code path: sqlx's `Any` driver over SQLite (embedded default) or
//! PostgreSQL (production, directly or through PgBouncer in transaction mode).
//!
//! Rules every query here and in the services follows:
//! * portability: `$1, $2, …` placeholders (both drivers number them), ids as TEXT (UUIDs), times
//!   as BIGINT unix milliseconds, JSON as TEXT;
//! * PgBouncer (transaction pooling, which keeps a server connection only for the length of a
//!   transaction): statements are unnamed (`persistent(false)`) and always run inside an explicit
//!   transaction — sqlx parses and executes a statement in two round trips, which outside a
//!   transaction may land on two different server connections;
//! * migrations run over a direct connection (`DATABASE_MIGRATE_URL`) when the pool goes through
//!   PgBouncer.

pub mod outbox;

use std::time::Duration;

use sqlx::any::{AnyPoolOptions, install_default_drivers};
use sqlx::migrate::Migrator;
use sqlx::{Any, Pool};

pub use sqlx;

pub type Db = Pool<Any>;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Migrations every service database gets (the outbox).
pub static SHARED_MIGRATIONS: Migrator = sqlx::migrate!("./migrations");

/// Connect. `sqlite://path/file.db?mode=rwc` or `postgres://user:pass@host:5432/db` (add
/// `?statement-cache-capacity=0` behind PgBouncer). SQLite gets WAL and a busy timeout.
pub async fn connect(url: &str, max_connections: u32) -> Result<Db, DbError> {
    install_default_drivers();
    let is_sqlite = url.starts_with("sqlite:");
    let pool = AnyPoolOptions::new()
        // One writer at a time is all SQLite does; more connections only contend for the lock.
        .max_connections(if is_sqlite {
            max_connections.min(4)
        } else {
            max_connections
        })
        .acquire_timeout(Duration::from_secs(10))
        .after_connect(move |conn, _| {
            Box::pin(async move {
                if is_sqlite {
                    for pragma in [
                        "PRAGMA journal_mode = WAL",
                        "PRAGMA busy_timeout = 5000",
                        "PRAGMA synchronous = NORMAL",
                    ] {
                        sqlx::query(pragma).execute(&mut *conn).await?;
                    }
                }
                Ok(())
            })
        })
        .connect(url)
        .await?;
    Ok(pool)
}

/// Apply the shared migrations and the service's own (versions must not collide: the shared ones
/// use 1–999, services use timestamps). `locking` uses an advisory lock on PostgreSQL so replicas
/// starting together do not race; turn it off through PgBouncer's transaction pooling (or migrate
/// over a direct connection).
pub async fn migrate(db: &Db, service: &Migrator, locking: bool) -> Result<(), DbError> {
    let mut all: Vec<_> = SHARED_MIGRATIONS
        .iter()
        .chain(service.iter())
        .cloned()
        .collect();
    all.sort_by_key(|m| m.version);
    let mut migrator = Migrator::with_migrations(all);
    migrator.set_locking(locking);
    migrator.run(db).await?;
    Ok(())
}

/// A service's migrations at start: over `migrate_url` (a direct connection) when set — needed
/// when `db` goes through PgBouncer — else over `db`.
pub async fn migrate_at_start(
    db: &Db,
    migrate_url: &str,
    service: &Migrator,
) -> Result<(), DbError> {
    if migrate_url.trim().is_empty() {
        return migrate(db, service, true).await;
    }
    let direct = connect(migrate_url, 1).await?;
    let result = migrate(&direct, service, true).await;
    direct.close().await;
    result
}

/// `SELECT 1` (readiness).
pub async fn ping(db: &Db) -> Result<(), DbError> {
    let mut tx = db.begin().await?;
    sqlx::query("SELECT 1")
        .persistent(false)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    Ok(())
}

/// Unix milliseconds now.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}
