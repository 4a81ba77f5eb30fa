//! The only entry point of analysis: one state machine per analysis, emitting `analysis.*`.
//!
//! Foundation stage: serves the ops routes and declares the topology; the state machine, its
//! store and read API are built in the analysis-path issue.

use anyhow::Context;
use messaging::MessageBroker;
use messaging::config::MessagingConfig;
use messaging::memory::InProcessBroker;
use runtime::{Health, Shutdown};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const SERVICE: &str = contracts::names::services::ORCHESTRATOR;

/// This service's own settings (env vars; defaults run the embedded mode).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Listen address of the HTTP server (ops routes and API).
    pub http_addr: String,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8084".into(),
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
}

impl Deps {
    /// Real brokers where configured; `in_process` otherwise.
    pub fn connect(config: &Config, in_process: &InProcessBroker) -> anyhow::Result<Self> {
        let _ = (config, in_process);
        Ok(Self {
            broker: config.messaging.message_broker(SERVICE, in_process)?,
        })
    }
}

/// Run until `shutdown`, then drain within the grace period.
pub async fn run(config: Config, deps: Deps, shutdown: Shutdown) -> anyhow::Result<()> {
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
    let _ = &deps;
    let listener = runtime::http::bind(&config.settings.http_addr).await?;
    tracing::info!(service = SERVICE, addr = %listener.local_addr()?, "listening");
    let router = runtime::http::service_router(SERVICE, axum::Router::new(), health.clone());
    let token = shutdown.token();
    runtime::http::serve_service(listener, router, health.clone(), token.clone()).await?;
    tracing::info!(service = SERVICE, "stopped");
    Ok(())
}
