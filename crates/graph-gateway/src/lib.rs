//! The public GraphQL API (HTTP + WebSocket), OIDC auth, per-owner subscriptions.
//!
//!
//! * [`schema`]: the GraphQL types and resolvers; [`http`]: `/graphql` over POST and WebSocket.
//! * [`oidc`]: bearer-token validation (discovery, JWKS cache, rotation); [`issuer`]: the
//!   development issuer `trackunit up` and the tests run.
//! * [`events`]: this replica's RabbitMQ queue → the caller's subscriptions.
//! * [`upstream`]: calls to tu-ingestion-service and the orchestrator's read API.

pub mod client;
pub mod events;
pub mod http;
pub mod issuer;
pub mod oidc;
pub mod schema;
pub mod upstream;

use anyhow::Context;
use messaging::MessageBroker;
use messaging::config::MessagingConfig;
use messaging::memory::InProcessBroker;
use runtime::{Health, Shutdown};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

pub const SERVICE: &str = contracts::names::services::GRAPH_GATEWAY;

/// This service's own settings (env vars; defaults run the embedded mode).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Listen address of the HTTP server (`/graphql` and the ops routes).
    pub http_addr: String,
    /// tu-ingestion-service (the original's variable name).
    pub ingestion_base_url: String,
    /// svc-analysis-orchestrator's read API.
    pub orchestrator_base_url: String,
    /// The internal token ingestion and the orchestrator expect (`x-internal-token`).
    pub internal_auth_api_key: String,
    /// OIDC issuer URL (discovery at `<issuer>/.well-known/openid-configuration`), e.g.
    /// `https://login.microsoftonline.com/<tenant>/v2.0` or `https://kc.example/realms/trackunit`.
    /// Empty: built from the original's `AZUREAD__TENANTID`.
    pub oidc_issuer: String,
    /// Accepted `aud` values, comma-separated. Empty: the original's `AZUREAD__AUDIENCE`,
    /// `api://<AZUREAD__CLIENTID>` and `<AZUREAD__CLIENTID>`.
    pub oidc_audiences: String,
    /// Scope every protected operation requires, in `scp` (Entra) or `scope` (Keycloak).
    /// Empty: the original's `AUTH__REQUIREDSCOPE`, else `analysis`. A full URI such as
    /// `api://<id>/analysis` is reduced to its last segment, which is what `scp` carries.
    pub oidc_required_scope: String,
    /// Longest time a fetched JWKS is used before it is fetched again (a shorter
    /// `Cache-Control: max-age` from the provider wins).
    pub oidc_jwks_max_age_secs: u64,
    /// A token with an unknown `kid` triggers a JWKS refetch at most this often.
    pub oidc_refetch_cooldown_secs: u64,
    /// While the provider is unreachable, the last keys stay in use for at most this long.
    pub oidc_max_stale_secs: u64,
    /// Clock skew allowed on `exp` and `nbf`.
    pub oidc_clock_skew_secs: u64,
    /// The original's Entra ID settings, still honoured when the OIDC_* ones are empty.
    #[serde(rename = "azuread__tenantid")]
    pub azuread_tenant_id: String,
    #[serde(rename = "azuread__audience")]
    pub azuread_audience: String,
    #[serde(rename = "azuread__clientid")]
    pub azuread_client_id: String,
    #[serde(rename = "auth__requiredscope")]
    pub auth_required_scope: String,
    /// Serve GraphiQL at `GET /graphql` (development mode).
    pub graphql_development: bool,
    /// Name of this replica's event queue (`graph-gateway.events.<id>`). Empty: the host name
    /// plus a random suffix, so two replicas never share a queue.
    pub gateway_replica_id: String,
    /// Largest GraphQL request body accepted.
    pub max_request_bytes: usize,
    /// Deepest query accepted.
    pub max_query_depth: usize,
    /// Highest query complexity accepted (each field counts 1, lists multiply by `first`).
    pub max_query_complexity: usize,
    /// Per client (token subject, else IP address): sustained requests per second…
    pub rate_limit_per_second: u32,
    /// …and the burst allowed above it. 0 turns rate limiting off.
    pub rate_limit_burst: u32,
    /// Events buffered per subscription; a subscriber that falls this far behind is ended
    /// with a `SLOW_CONSUMER` error instead of growing memory.
    pub subscriber_buffer: usize,
    /// Keepalive ping interval on WebSocket connections.
    pub ws_keepalive_secs: u64,
    /// A WebSocket that sends no `connection_init` within this time is closed.
    pub ws_init_timeout_secs: u64,
    /// WebSocket connections held at once; more are refused with 503.
    pub max_ws_connections: usize,
    /// Timeout of calls to ingestion and the orchestrator.
    pub upstream_timeout_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8080".into(),
            ingestion_base_url: "http://127.0.0.1:8081".into(),
            orchestrator_base_url: "http://127.0.0.1:8084".into(),
            internal_auth_api_key: String::new(),
            oidc_issuer: String::new(),
            oidc_audiences: String::new(),
            oidc_required_scope: String::new(),
            oidc_jwks_max_age_secs: 3600,
            oidc_refetch_cooldown_secs: 30,
            oidc_max_stale_secs: 24 * 3600,
            oidc_clock_skew_secs: 60,
            azuread_tenant_id: String::new(),
            azuread_audience: String::new(),
            azuread_client_id: String::new(),
            auth_required_scope: String::new(),
            graphql_development: false,
            gateway_replica_id: String::new(),
            max_request_bytes: 64 * 1024,
            max_query_depth: 12,
            max_query_complexity: 5000,
            rate_limit_per_second: 20,
            rate_limit_burst: 60,
            subscriber_buffer: 64,
            ws_keepalive_secs: 15,
            ws_init_timeout_secs: 10,
            max_ws_connections: 20_000,
            upstream_timeout_secs: 10,
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
        Ok(Self {
            broker: config.messaging.message_broker(SERVICE, in_process)?,
        })
    }
}

impl Settings {
    /// The OIDC settings, with the original's `AZUREAD__*`/`AUTH__*` as fallbacks. No issuer
    /// configured is an error: the gateway never runs without token validation.
    pub fn oidc(&self) -> anyhow::Result<oidc::OidcSettings> {
        let tenant = self.azuread_tenant_id.trim();
        let issuer = match (self.oidc_issuer.trim(), tenant) {
            ("", "") => anyhow::bail!(
                "no identity provider configured: set OIDC_ISSUER (or the original's AZUREAD__TENANTID)"
            ),
            ("", tenant) => format!("https://login.microsoftonline.com/{tenant}/v2.0"),
            (issuer, _) => issuer.trim_end_matches('/').to_owned(),
        };
        let mut audiences: Vec<String> = self
            .oidc_audiences
            .split(',')
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map(str::to_owned)
            .collect();
        if audiences.is_empty() {
            let client = self.azuread_client_id.trim();
            audiences = [
                self.azuread_audience.trim().to_owned(),
                if client.is_empty() {
                    String::new()
                } else {
                    format!("api://{client}")
                },
                client.to_owned(),
            ]
            .into_iter()
            .filter(|a| !a.is_empty())
            .collect();
        }
        anyhow::ensure!(
            !audiences.is_empty(),
            "no audience configured: set OIDC_AUDIENCES (or AZUREAD__AUDIENCE / AZUREAD__CLIENTID)"
        );
        let scope = [&self.oidc_required_scope, &self.auth_required_scope]
            .into_iter()
            .map(|s| s.trim())
            .find(|s| !s.is_empty())
            .unwrap_or("analysis");
        // `api://<id>/analysis` → `analysis`: `scp` carries the short name.
        let scope = scope.rsplit('/').next().unwrap_or(scope).to_owned();
        Ok(oidc::OidcSettings {
            issuer,
            audiences,
            required_scope: scope,
            jwks_max_age: Duration::from_secs(self.oidc_jwks_max_age_secs.max(1)),
            refetch_cooldown: Duration::from_secs(self.oidc_refetch_cooldown_secs),
            max_stale: Duration::from_secs(self.oidc_max_stale_secs),
            clock_skew: Duration::from_secs(self.oidc_clock_skew_secs),
        })
    }

    /// This replica's id: configured, else host name + random suffix.
    pub fn replica_id(&self) -> String {
        let configured = self.gateway_replica_id.trim();
        if !configured.is_empty() {
            return configured.to_owned();
        }
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.trim().is_empty())
            .unwrap_or_else(|| "local".into());
        let suffix = uuid::Uuid::new_v4().simple().to_string();
        format!("{host}.{}", &suffix[..8])
    }
}

/// Run until `shutdown`, then drain within the grace period.
pub async fn run(config: Config, deps: Deps, shutdown: Shutdown) -> anyhow::Result<()> {
    let settings = &config.settings;
    let oidc = settings.oidc()?;
    tracing::info!(issuer = %oidc.issuer, audiences = ?oidc.audiences, scope = %oidc.required_scope, "validating tokens");
    let validator = Arc::new(oidc::Validator::new(oidc));
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
    let hub = events::Hub::new(settings.subscriber_buffer);
    let attached = hub.clone();
    health.check("events", move || {
        let attached = attached.is_attached();
        async move {
            if attached {
                Ok(())
            } else {
                Err("not consuming the events queue".to_owned())
            }
        }
    });
    let keys = validator.clone();
    health.check_optional("oidc", move || {
        let keys = keys.clone();
        async move {
            if keys.has_keys().await {
                Ok(())
            } else {
                Err("no signing keys from the identity provider yet".to_owned())
            }
        }
    });
    let token = shutdown.token();
    let replica = settings.replica_id();
    tracing::info!(replica, "gateway replica");
    let events_task = tokio::spawn(hub.clone().run(deps.broker.clone(), replica, token.clone()));
    {
        let validator = validator.clone();
        tokio::spawn(async move {
            if let Err(e) = validator.warm_up().await {
                tracing::warn!(error = %e, "identity provider not reachable at startup; will retry on the first token");
            }
        });
    }
    let upstreams = upstream::Upstreams::new(
        &settings.ingestion_base_url,
        &settings.orchestrator_base_url,
        &settings.internal_auth_api_key,
        Duration::from_secs(settings.upstream_timeout_secs.max(1)),
    )?;
    let schema = schema::build(
        schema::Services {
            upstreams,
            hub,
            broker: deps.broker.clone(),
        },
        settings.max_query_depth,
        settings.max_query_complexity,
    );
    let limiter = http::limiter(settings.rate_limit_per_second, settings.rate_limit_burst);
    if let Some(limiter) = limiter.clone() {
        let token = token.clone();
        // Forget idle clients so the limiter's memory stays bounded.
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(60));
            loop {
                tokio::select! {
                    () = token.cancelled() => break,
                    _ = tick.tick() => limiter.retain_recent(),
                }
            }
        });
    }
    let state = http::AppState {
        schema,
        validator,
        limiter,
        development: settings.graphql_development,
        max_request_bytes: settings.max_request_bytes,
        ws: http::WsSettings {
            keepalive: Duration::from_secs(settings.ws_keepalive_secs.max(1)),
            init_timeout: Duration::from_secs(settings.ws_init_timeout_secs.max(1)),
            max_connections: settings.max_ws_connections,
            send_timeout: Duration::from_secs(30),
        },
        ws_connections: Arc::default(),
        shutdown: token.clone(),
    };
    let listener = runtime::http::bind(&settings.http_addr).await?;
    tracing::info!(service = SERVICE, addr = %listener.local_addr()?, "listening");
    let router = runtime::http::service_router(SERVICE, http::routes(state), health.clone());
    runtime::http::serve_service(listener, router, health.clone(), token.clone()).await?;
    token.cancel();
    if let Err(e) = events_task.await {
        tracing::warn!(error = %e, "events task");
    }
    tracing::info!(service = SERVICE, "stopped");
    Ok(())
}
