//! tu-ingestion-service: upload sessions. A client asks to start an upload and gets a presigned
//! PUT URL and an object key; it PUTs the bytes straight to storage; it confirms, and the
//! service checks the stored object and publishes `ImageUploaded` to Kafka through a
//! transactional outbox — so a confirm answers 202 even while Kafka is down, and nothing is lost
//! if the process dies between the commit and the publish.
//!
//! Routes (internal: `x-internal-token` and the caller's `x-owner` from the gateway):
//! `POST /v1/uploads/start`, `POST /v1/uploads/confirm`, `GET /v1/uploads/{id}`.

mod api;
mod sessions;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use auth::internal::InternalToken;
use contracts::names::Topics;
use database::Db;
use database::outbox::{Relay, RelayOptions};
use messaging::EventLog;
use messaging::config::MessagingConfig;
use messaging::memory::InProcessBroker;
use objectstore::{ObjectStore, S3Config};
use runtime::{Health, Shutdown};
use serde::{Deserialize, Serialize};

pub const SERVICE: &str = contracts::names::services::INGESTION;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// This service's own settings (env vars; defaults run the embedded mode).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Listen address of the HTTP server.
    pub http_addr: String,
    /// `sqlite://…?mode=rwc` or `postgres://…` (through PgBouncer: see `database_migrate_url`).
    pub database_url: String,
    /// Direct database URL for migrations when `database_url` goes through PgBouncer.
    pub database_migrate_url: String,
    pub database_max_connections: u32,
    /// Shared secret callers present in `x-internal-token` (env `INTERNAL_AUTH_API_KEY`).
    pub internal_auth_api_key: String,
    /// Largest image accepted (bytes).
    pub max_upload_bytes: u64,
    /// Lifetime of the presigned PUT URL.
    pub presign_ttl_secs: u64,
    /// Lifetime of an upload session; an unconfirmed session then expires.
    pub session_ttl_secs: u64,
    /// Partitions of the topics created at start.
    pub topic_partitions: i32,
    /// Run the outbox relay in this process.
    pub outbox_relay: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8081".into(),
            database_url: "sqlite://tu-ingestion.db?mode=rwc".into(),
            database_migrate_url: String::new(),
            database_max_connections: 10,
            internal_auth_api_key: String::new(),
            max_upload_bytes: 10 * 1024 * 1024,
            presign_ttl_secs: 300,
            session_ttl_secs: 900,
            topic_partitions: 4,
            outbox_relay: true,
        }
    }
}

/// Configuration: this service's settings plus the shared parts, each read from env vars.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub settings: Settings,
    pub s3: S3Config,
    /// Brokers; empty → the in-process broker.
    pub messaging: MessagingConfig,
    /// Kafka topic names (`TOPIC_IMAGE_UPLOADED`, ...).
    pub topics: Topics,
}

impl Config {
    pub fn from_env(prefix: Option<&str>) -> anyhow::Result<Self> {
        Self::from_env_over(prefix, &Self::default())
    }

    /// Env vars over `base` instead of the defaults.
    pub fn from_env_over(prefix: Option<&str>, base: &Self) -> anyhow::Result<Self> {
        Ok(Self {
            settings: runtime::config::from_env_over(prefix, &base.settings)?,
            s3: runtime::config::from_env_over(prefix, &base.s3)?,
            messaging: runtime::config::from_env_over(prefix, &base.messaging)?,
            topics: runtime::config::from_env_over(prefix, &base.topics)?,
        })
    }
}

/// What the service talks to.
pub struct Deps {
    pub log: Arc<dyn EventLog>,
    pub store: ObjectStore,
    pub db: Db,
}

impl Deps {
    pub async fn connect(config: &Config, in_process: &InProcessBroker) -> anyhow::Result<Self> {
        let s = &config.settings;
        let db = database::connect(&s.database_url, s.database_max_connections)
            .await
            .with_context(|| {
                format!(
                    "connecting to {}",
                    runtime::config::redact_url(&s.database_url)
                )
            })?;
        Ok(Self {
            log: config.messaging.event_log(SERVICE, in_process)?,
            store: ObjectStore::new(&config.s3).context("object store")?,
            db,
        })
    }
}

/// Run until `shutdown`, then drain within the grace period.
pub async fn run(config: Config, deps: Deps, shutdown: Shutdown) -> anyhow::Result<()> {
    let s = &config.settings;
    let token = InternalToken::new(&s.internal_auth_api_key);
    anyhow::ensure!(
        token.is_configured(),
        "INTERNAL_AUTH_API_KEY must be set: the gateway presents it on every call"
    );
    database::migrate_at_start(&deps.db, &s.database_migrate_url, &MIGRATIONS)
        .await
        .context("applying migrations")?;
    if config.s3.s3_create_bucket {
        deps.store
            .ensure_bucket()
            .await
            .context("creating the bucket")?;
    }
    // Kafka may be down at start; uploads still work (the outbox holds the events).
    {
        let log = deps.log.clone();
        let topics = messaging::topology::kafka_topics(&config.topics, s.topic_partitions);
        let stop = shutdown.token();
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(500);
            while let Err(e) = log.create_topics(&topics).await {
                tracing::warn!(error = %e, "creating Kafka topics failed; retrying");
                tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = stop.cancelled() => return }
                wait = (wait * 2).min(Duration::from_secs(30));
            }
        });
    }

    let health = Health::new();
    {
        let db = deps.db.clone();
        health.check("database", move || {
            let db = db.clone();
            async move { database::ping(&db).await.map_err(|e| e.to_string()) }
        });
        let store = deps.store.clone();
        health.check("object_store", move || {
            let store = store.clone();
            async move { store.check().await.map_err(|e| e.to_string()) }
        });
        let log = deps.log.clone();
        health.check_optional(log.backend(), move || {
            let log = log.clone();
            async move { log.check().await.map_err(|e| e.to_string()) }
        });
    }

    let relay = Relay::new(
        SERVICE,
        deps.db.clone(),
        Some(deps.log.clone()),
        None,
        RelayOptions::default(),
    );
    let state = api::AppState {
        db: deps.db.clone(),
        store: deps.store.clone(),
        relay_waker: relay.waker(),
        topic: config.topics.topic_image_uploaded.clone(),
        max_upload_bytes: s.max_upload_bytes,
        presign_ttl: Duration::from_secs(s.presign_ttl_secs),
        session_ttl: Duration::from_secs(s.session_ttl_secs),
    };
    let api = api::routes(state).layer(axum::middleware::from_fn_with_state(
        token,
        auth::internal::require,
    ));
    let router = runtime::http::service_router(SERVICE, api, health.clone());

    let token = shutdown.token();
    let relay_task = s
        .outbox_relay
        .then(|| tokio::spawn(relay.run(token.clone())));
    let janitor_task = tokio::spawn(janitor(deps.db.clone(), deps.store.clone(), token.clone()));

    let listener = runtime::http::bind(&s.http_addr).await?;
    tracing::info!(service = SERVICE, addr = %listener.local_addr()?, "listening");
    runtime::http::serve_service(listener, router, health.clone(), token.clone()).await?;
    if let Some(t) = relay_task {
        runtime::shutdown::drain(t, runtime::shutdown::GRACE).await;
    }
    janitor_task.abort();
    deps.db.close().await;
    tracing::info!(service = SERVICE, "stopped");
    Ok(())
}

/// Expire unconfirmed sessions and delete whatever they may have stored.
async fn janitor(db: Db, store: ObjectStore, shutdown: tokio_util::sync::CancellationToken) {
    loop {
        match sessions::expire_due(&db, database::now_ms()).await {
            Ok(keys) => {
                for key in keys {
                    if let Err(e) = store.delete(&key).await {
                        tracing::debug!(error = %e, %key, "deleting an expired upload");
                    }
                    metrics::counter!("ingestion_uploads_expired_total").increment(1);
                }
            }
            Err(e) => tracing::warn!(error = %e, "expiring upload sessions"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(30)) => {}
            _ = shutdown.cancelled() => return,
        }
    }
}
