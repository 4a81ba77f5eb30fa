//! tu-media-access-service: short-lived presigned GET URLs for stored images, for internal
//! callers only (the vision adapter). `POST /internal/v0/media/get-url` `{objectKey}` →
//! `{url, expiresAt}`. Unlike the original it enforces the internal token and answers 404 for an
//! object that does not exist instead of signing a URL that can only fail later.

use std::time::Duration;

use anyhow::Context;
use auth::internal::InternalToken;
use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use objectstore::{ObjectStore, S3Config, StoreError};
use runtime::http::problem;
use runtime::{Health, Shutdown};
use serde::{Deserialize, Serialize};

pub const SERVICE: &str = contracts::names::services::MEDIA_ACCESS;
pub const GET_URL_PATH: &str = "/internal/v0/media/get-url";

/// This service's own settings (env vars; defaults run the embedded mode).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Listen address of the HTTP server (ops routes and API).
    pub http_addr: String,
    /// Shared secret callers present in `x-internal-token` (env `INTERNAL_AUTH_API_KEY`).
    pub internal_auth_api_key: String,
    /// Lifetime of the URLs handed out (the original's 300 s).
    pub presign_ttl_secs: u64,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8082".into(),
            internal_auth_api_key: String::new(),
            presign_ttl_secs: 300,
        }
    }
}

/// Configuration: this service's settings plus the object store, each read from env vars.
#[derive(Debug, Clone, Default)]
pub struct Config {
    pub settings: Settings,
    pub s3: S3Config,
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
        })
    }
}

/// What the service talks to.
pub struct Deps {
    pub store: ObjectStore,
}

impl Deps {
    pub fn connect(config: &Config) -> anyhow::Result<Self> {
        Ok(Self {
            store: ObjectStore::new(&config.s3).context("object store")?,
        })
    }
}

#[derive(Clone)]
struct AppState {
    store: ObjectStore,
    ttl: Duration,
}

/// The request; `objectKey` (camelCase, as the original) or `ObjectKey`.
#[derive(Debug, Deserialize)]
struct GetUrlRequest {
    #[serde(rename = "objectKey", alias = "ObjectKey", default)]
    object_key: Option<String>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GetUrlResponse {
    pub url: String,
    pub expires_at: chrono::DateTime<chrono::Utc>,
}

pub fn routes(store: ObjectStore, ttl: Duration) -> Router {
    Router::new()
        .route(GET_URL_PATH, post(get_url))
        .with_state(AppState { store, ttl })
}

async fn get_url(
    State(state): State<AppState>,
    body: Result<Json<GetUrlRequest>, JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => {
            return problem(
                StatusCode::BAD_REQUEST,
                "Bad Request",
                format!("The body is not valid JSON: {}", e.body_text()),
            );
        }
    };
    let key = req.object_key.unwrap_or_default();
    let key = key.trim();
    if key.is_empty() {
        metrics::counter!("media_urls_refused_total", "reason" => "invalid").increment(1);
        return (
            StatusCode::UNPROCESSABLE_ENTITY,
            Json(serde_json::json!({"errors": {"objectKey": ["Required"]}})),
        )
            .into_response();
    }
    match state.store.head(key).await {
        Ok(Some(_)) => {}
        Ok(None) => {
            metrics::counter!("media_urls_refused_total", "reason" => "not_found").increment(1);
            return (
                StatusCode::NOT_FOUND,
                Json(serde_json::json!({"objectKey": key})),
            )
                .into_response();
        }
        Err(e) => return store_failure(e),
    }
    match state.store.presign_get(key, state.ttl).await {
        Ok(p) => {
            metrics::counter!("media_urls_issued_total").increment(1);
            Json(GetUrlResponse {
                url: p.url,
                expires_at: p.expires_at,
            })
            .into_response()
        }
        Err(e) => store_failure(e),
    }
}

fn store_failure(e: StoreError) -> Response {
    tracing::error!(error = %e, "object store call failed");
    problem(
        StatusCode::SERVICE_UNAVAILABLE,
        "Service Unavailable",
        "The object store is not available; try again.",
    )
}

/// Run until `shutdown`, then drain within the grace period.
pub async fn run(config: Config, deps: Deps, shutdown: Shutdown) -> anyhow::Result<()> {
    let s = &config.settings;
    let token = InternalToken::new(&s.internal_auth_api_key);
    anyhow::ensure!(
        token.is_configured(),
        "INTERNAL_AUTH_API_KEY must be set: the vision adapter presents it on every call"
    );
    let health = Health::new();
    {
        let store = deps.store.clone();
        health.check("object_store", move || {
            let store = store.clone();
            async move { store.check().await.map_err(|e| e.to_string()) }
        });
    }
    let api = routes(deps.store, Duration::from_secs(s.presign_ttl_secs)).layer(
        axum::middleware::from_fn_with_state(token, auth::internal::require),
    );
    let router = runtime::http::service_router(SERVICE, api, health.clone());
    let listener = runtime::http::bind(&s.http_addr).await?;
    tracing::info!(service = SERVICE, addr = %listener.local_addr()?, "listening");
    runtime::http::serve_service(listener, router, health, shutdown.token()).await?;
    tracing::info!(service = SERVICE, "stopped");
    Ok(())
}
