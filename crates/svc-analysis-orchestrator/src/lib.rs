//! The only entry point of analysis: one state machine per analysis, emitting `analysis.*`.
//!
//! Consumes (RabbitMQ, see `messaging::topology::platform`):
//! `orchestrator.image-uploaded` (`ImageUploaded`: one analysis per upload),
//! `orchestrator.analysis.commands` (`RequestAnalysis`: analyse an own object again),
//! `orchestrator.recognition-completed` / `-failed` (the vision adapter's answers, via the bridge).
//! Publishes through its outbox: `analysis.started`, `analysis.completed`, `analysis.failed`
//! (fanouts) and `RecognitionRequested` on `analysis.commands` / `analysis.recognition.request`.
//! A started analysis without an answer within `RECOGNITION_TIMEOUT_SECS` fails with `timeout`.
//! Read API for the gateway: `GET /v1/analyses/{id}`, `GET /v1/analyses?uploadId=|first=&after=`.

pub mod api;
mod flow;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use auth::internal::InternalToken;
use contracts::names::queues;
use database::Db;
use database::outbox::{Relay, RelayOptions};
use messaging::MessageBroker;
use messaging::config::MessagingConfig;
use messaging::consume::{RunOptions, run_queue};
use messaging::memory::InProcessBroker;
use runtime::{Health, Shutdown};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

pub use flow::Flow;

pub const SERVICE: &str = contracts::names::services::ORCHESTRATOR;

static MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// This service's own settings (env vars; defaults run the embedded mode).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Listen address of the HTTP server (ops routes and read API).
    pub http_addr: String,
    /// `sqlite://…?mode=rwc` or `postgres://…` (through PgBouncer: see `database_migrate_url`).
    pub database_url: String,
    /// Direct database URL for migrations when `database_url` goes through PgBouncer.
    pub database_migrate_url: String,
    pub database_max_connections: u32,
    /// Shared secret callers of the read API present in `x-internal-token`.
    pub internal_auth_api_key: String,
    /// A started analysis without a recognition answer by then fails with reason `timeout`.
    pub recognition_timeout_secs: f64,
    /// Deliveries handled at once per queue (also the prefetch).
    pub concurrency: u16,
    /// Run the outbox relay in this process.
    pub outbox_relay: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8084".into(),
            database_url: "sqlite://svc-analysis-orchestrator.db?mode=rwc".into(),
            database_migrate_url: String::new(),
            database_max_connections: 10,
            internal_auth_api_key: String::new(),
            recognition_timeout_secs: 120.0,
            concurrency: 16,
            outbox_relay: true,
        }
    }
}

/// Configuration: this service's settings plus the shared parts, each read from env vars.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub settings: Settings,
    /// Brokers; empty → the in-process broker.
    pub messaging: MessagingConfig,
}

impl Config {
    /// From env vars; `prefix` (e.g. the service name in `trackunit up`) overrides per service.
    pub fn from_env(prefix: Option<&str>) -> anyhow::Result<Self> {
        Self::from_env_over(prefix, &Self::default())
    }

    /// Env vars over `base` instead of the defaults.
    pub fn from_env_over(prefix: Option<&str>, base: &Self) -> anyhow::Result<Self> {
        Ok(Self {
            settings: runtime::config::from_env_over(prefix, &base.settings)?,
            messaging: runtime::config::from_env_over(prefix, &base.messaging)?,
        })
    }
}

/// What the service talks to, connected from config (or shared, in the one-process mode).
pub struct Deps {
    pub broker: Arc<dyn MessageBroker>,
    pub db: Db,
}

impl Deps {
    /// Real brokers where configured; `in_process` otherwise.
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
            broker: config.messaging.message_broker(SERVICE, in_process)?,
            db,
        })
    }
}

/// Run until `shutdown`, then drain within the grace period.
pub async fn run(config: Config, deps: Deps, shutdown: Shutdown) -> anyhow::Result<()> {
    let s = &config.settings;
    let token = InternalToken::new(&s.internal_auth_api_key);
    // The recorder before any work starts, so no early count is lost.
    let _ = runtime::telemetry::metrics();
    anyhow::ensure!(
        token.is_configured(),
        "INTERNAL_AUTH_API_KEY must be set: the gateway presents it on every read"
    );
    anyhow::ensure!(
        s.recognition_timeout_secs > 0.0,
        "RECOGNITION_TIMEOUT_SECS must be positive"
    );
    database::migrate_at_start(&deps.db, &s.database_migrate_url, &MIGRATIONS)
        .await
        .context("applying migrations")?;
    deps.broker
        .declare(&messaging::topology::platform())
        .await
        .context("declaring the RabbitMQ topology")?;

    let health = Health::new();
    {
        let db = deps.db.clone();
        health.check("database", move || {
            let db = db.clone();
            async move { database::ping(&db).await.map_err(|e| e.to_string()) }
        });
        let broker = deps.broker.clone();
        health.check(broker.backend(), move || {
            let broker = broker.clone();
            async move { broker.check().await.map_err(|e| e.to_string()) }
        });
    }

    let relay = Relay::new(
        SERVICE,
        deps.db.clone(),
        None,
        Some(deps.broker.clone()),
        RelayOptions::default(),
    );
    let flow = Flow {
        db: deps.db.clone(),
        relay_waker: relay.waker(),
        recognition_timeout: Duration::from_secs_f64(s.recognition_timeout_secs),
    };
    let token_ = shutdown.token();
    let mut workers = tokio::task::JoinSet::new();
    // Consumers stop on `work_stop`, before the relay, so what they commit still goes out.
    let work_stop = CancellationToken::new();
    type Handler = fn(Flow, messaging::Message) -> flow::HandlerFuture;
    let consumers: [(&str, Handler); 4] = [
        (queues::ORCHESTRATOR_IMAGE_UPLOADED, |f, m| {
            Box::pin(async move { f.on_image_uploaded(m).await })
        }),
        (queues::ORCHESTRATOR_ANALYSIS_COMMANDS, |f, m| {
            Box::pin(async move { f.on_request_analysis(m).await })
        }),
        (queues::ORCHESTRATOR_RECOGNITION_COMPLETED, |f, m| {
            Box::pin(async move { f.on_recognition_completed(m).await })
        }),
        (queues::ORCHESTRATOR_RECOGNITION_FAILED, |f, m| {
            Box::pin(async move { f.on_recognition_failed(m).await })
        }),
    ];
    for (queue, handler) in consumers {
        let consumer = deps
            .broker
            .consume(queue, s.concurrency.max(1))
            .await
            .with_context(|| format!("consuming {queue}"))?;
        let flow = flow.clone();
        let options = RunOptions::new(queue).concurrency(s.concurrency.max(1) as usize);
        let stop = work_stop.clone();
        workers.spawn(async move {
            if let Err(e) =
                run_queue(consumer, options, stop, move |m| handler(flow.clone(), m)).await
            {
                tracing::error!(queue, error = %e, "consumer stopped");
            }
        });
    }
    workers.spawn(sweeper(flow.clone(), work_stop.clone()));

    let relay_stop = CancellationToken::new();
    let relay_task = s
        .outbox_relay
        .then(|| tokio::spawn(relay.clone().run(relay_stop.clone())));
    {
        let relay = relay.clone();
        health.check_optional("outbox", move || {
            let relay = relay.clone();
            async move {
                let stats = relay.stats().await.map_err(|e| e.to_string())?;
                metrics::gauge!("outbox_pending", "service" => SERVICE).set(stats.pending as f64);
                Ok(())
            }
        });
    }

    let api = api::routes(deps.db.clone()).layer(axum::middleware::from_fn_with_state(
        token,
        auth::internal::require,
    ));
    let router = runtime::http::service_router(SERVICE, api, health.clone());
    let listener = runtime::http::bind(&s.http_addr).await?;
    tracing::info!(service = SERVICE, addr = %listener.local_addr()?, "listening");
    runtime::http::serve_service(listener, router, health.clone(), token_.clone()).await?;

    // Stop taking work, finish what is in flight, then let the relay publish what it committed.
    work_stop.cancel();
    runtime::shutdown::drain(
        async { while workers.join_next().await.is_some() {} },
        runtime::shutdown::GRACE / 2,
    )
    .await;
    if let Some(t) = relay_task {
        let _ = relay.publish_pending().await;
        relay_stop.cancel();
        runtime::shutdown::drain(t, runtime::shutdown::GRACE / 4).await;
    }
    deps.db.close().await;
    tracing::info!(service = SERVICE, "stopped");
    Ok(())
}

/// Time out overdue analyses; prune the inbox now and then.
async fn sweeper(flow: Flow, stop: CancellationToken) {
    // Check often enough that a timeout fires within a tenth of its length (at most 1 s late).
    let every =
        (flow.recognition_timeout / 10).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let mut last_prune = std::time::Instant::now();
    loop {
        match flow.expire_overdue().await {
            Ok(0) => {}
            Ok(n) => tracing::info!(expired = n, "analyses timed out"),
            Err(e) => tracing::warn!(error = %e, "timing out analyses"),
        }
        if last_prune.elapsed() > Duration::from_secs(3600) {
            last_prune = std::time::Instant::now();
            let week_ago = database::now_ms() - 7 * 24 * 3600 * 1000;
            if let Err(e) = store::prune_inbox(&flow.db, week_ago).await {
                tracing::warn!(error = %e, "pruning the inbox");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.cancelled() => return,
        }
    }
}
