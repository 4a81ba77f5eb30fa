//! Kafka ↔ RabbitMQ, both directions, at-least-once, configured by a list of routes
//! ([`routes`]; defaults: Kafka `tu.image.uploaded`, `tu.recognition.completed`,
//! `tu.recognition.failed` → the RabbitMQ fanouts of the same names; queue
//! `bridge.recognition-requests` → Kafka `tu.recognition.requested`). How each direction keeps
//! order and never acks ahead of the other side: [`forward`].

pub mod forward;
pub mod routes;

use anyhow::Context;
use contracts::names::Topics;
use messaging::config::MessagingConfig;
use messaging::memory::InProcessBroker;
use messaging::{EventLog, MessageBroker};
use runtime::{Health, Shutdown};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use routes::Route;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = contracts::names::services::MESSAGING_BRIDGE;

/// This service's own settings (env vars; defaults run the embedded mode).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Listen address of the HTTP server (ops routes and API).
    pub http_addr: String,
    /// Partitions of topics this service creates.
    pub topic_partitions: i32,
    /// Route list (see [`routes`]); empty → the platform's four routes.
    pub bridge_routes: String,
    /// Kafka partitions forwarded at once, and RabbitMQ deliveries unacked at once per queue.
    pub max_in_flight: u16,
    /// Kafka consumer group (replicas share it and split the partitions).
    pub consumer_group: String,
    /// RabbitMQ → Kafka lanes per queue (one key always uses the same lane, keeping its order).
    pub lanes: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8083".into(),
            topic_partitions: 4,
            bridge_routes: String::new(),
            max_in_flight: 64,
            consumer_group: contracts::names::groups::MESSAGING_BRIDGE.into(),
            lanes: 8,
        }
    }
}

/// Configuration: this service's settings plus the shared parts, each read from env vars.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub settings: Settings,
    /// Brokers; empty → the in-process broker.
    pub messaging: MessagingConfig,
    /// Kafka topic names (`TOPIC_IMAGE_UPLOADED`, ...).
    pub topics: Topics,
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
            topics: runtime::config::from_env_over(prefix, &base.topics)?,
        })
    }
}

/// What the service talks to, connected from config (or shared, in the one-process mode).
pub struct Deps {
    pub log: Arc<dyn EventLog>,
    pub broker: Arc<dyn MessageBroker>,
}

impl Deps {
    /// Real brokers where configured; `in_process` otherwise.
    pub fn connect(config: &Config, in_process: &InProcessBroker) -> anyhow::Result<Self> {
        Ok(Self {
            log: config.messaging.event_log(SERVICE, in_process)?,
            broker: config.messaging.message_broker(SERVICE, in_process)?,
        })
    }
}

/// Run until `shutdown`, then drain within the grace period.
pub async fn run(config: Config, deps: Deps, shutdown: Shutdown) -> anyhow::Result<()> {
    let s = &config.settings;
    let routes = routes::parse(&s.bridge_routes, &config.topics)?;
    // The recorder before any work starts, so no early count is lost.
    let _ = runtime::telemetry::metrics();
    let health = Health::new();
    deps.broker
        .declare(&messaging::topology::platform())
        .await
        .context("declaring the RabbitMQ topology")?;
    let broker = deps.broker.clone();
    health.check(broker.backend(), move || {
        let broker = broker.clone();
        async move { broker.check().await.map_err(|e| e.to_string()) }
    });
    let mut topics = messaging::topology::kafka_topics(&config.topics, s.topic_partitions);
    for route in &routes {
        let topic = match route {
            Route::ToRabbit { topic, .. } | Route::ToKafka { topic, .. } => topic,
        };
        if !topics.iter().any(|t| &t.name == topic) {
            topics.push(messaging::log::TopicSpec::new(
                topic.clone(),
                s.topic_partitions,
            ));
        }
    }
    deps.log
        .create_topics(&topics)
        .await
        .context("creating the Kafka topics")?;
    let log = deps.log.clone();
    health.check(log.backend(), move || {
        let log = log.clone();
        async move { log.check().await.map_err(|e| e.to_string()) }
    });

    // Forwarders stop on `work`, after the HTTP server: in-flight messages finish first.
    let work = CancellationToken::new();
    let mut forwarders = JoinSet::new();
    {
        let (log, broker, routes, work) = (
            deps.log.clone(),
            deps.broker.clone(),
            routes.clone(),
            work.clone(),
        );
        let in_flight = s.max_in_flight.max(1) as usize;
        let group = s.consumer_group.clone();
        let subscribe = config.messaging.subscribe_options();
        forwarders.spawn(supervise("kafka->rabbit", work.clone(), move || {
            forward::kafka_to_rabbit(
                group.clone(),
                subscribe.clone(),
                log.clone(),
                broker.clone(),
                routes.clone(),
                in_flight,
                work.clone(),
            )
        }));
    }
    for route in &routes {
        if let Route::ToKafka { queue, topic } = route {
            let (log, broker, work) = (deps.log.clone(), deps.broker.clone(), work.clone());
            let (queue, topic) = (queue.clone(), topic.clone());
            let (in_flight, lanes) = (s.max_in_flight, s.lanes);
            forwarders.spawn(supervise("rabbit->kafka", work.clone(), move || {
                forward::rabbit_to_kafka(
                    broker.clone(),
                    log.clone(),
                    queue.clone(),
                    topic.clone(),
                    in_flight,
                    lanes,
                    work.clone(),
                )
            }));
        }
    }
    tracing::info!(service = SERVICE, routes = ?routes.iter().map(Route::label).collect::<Vec<_>>(), "forwarding");

    let listener = runtime::http::bind(&s.http_addr).await?;
    tracing::info!(service = SERVICE, addr = %listener.local_addr()?, "listening");
    let router = runtime::http::service_router(SERVICE, axum::Router::new(), health.clone());
    let token = shutdown.token();
    runtime::http::serve_service(listener, router, health.clone(), token.clone()).await?;
    work.cancel();
    runtime::shutdown::drain(
        async { while forwarders.join_next().await.is_some() {} },
        runtime::shutdown::GRACE,
    )
    .await;
    tracing::info!(service = SERVICE, "stopped");
    Ok(())
}

/// Run a forwarder again (after a backoff) whenever it fails, until `stop`.
async fn supervise<F, Fut>(name: &'static str, stop: CancellationToken, start: F)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = messaging::Result<()>>,
{
    let mut wait = Duration::from_millis(200);
    loop {
        match start().await {
            Ok(()) if stop.is_cancelled() => return,
            Ok(()) => {}
            Err(e) => {
                tracing::error!(forwarder = name, error = %e, ?wait, "forwarder failed; restarting")
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        wait = (wait * 2).min(Duration::from_secs(10));
    }
}
