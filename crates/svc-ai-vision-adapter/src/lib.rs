//! Recognition: consume `tu.recognition.requested` (group `svc-ai-vision-adapter`; with
//! `CONSUME_IMAGE_UPLOADED=true`, `tu.image.uploaded` directly, as the original deployment did),
//! fetch the image through media access, check it, run the engine, publish
//! `tu.recognition.completed` or `tu.recognition.failed` (reason codes: `download_failed`,
//! `checksum_mismatch`, `not_an_image`, `too_large`, `engine_error`), and commit the offset only
//! after that publish was acknowledged. The steps: [`pipeline`]; the engine slot: [`engine`].

pub mod cloud;
pub mod engine;
pub mod offline;
pub mod pipeline;

use anyhow::Context;
use contracts::names::Topics;
use messaging::EventLog;
use messaging::config::MessagingConfig;
use messaging::memory::InProcessBroker;
use runtime::{Health, Shutdown};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;

use contracts::names::groups;
use engine::RecognitionEngine;
use messaging::consume::{RunOptions, run_log};
use pipeline::{Limits, MediaAccess, Pipeline};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

pub const SERVICE: &str = contracts::names::services::VISION_ADAPTER;

/// This service's own settings (env vars; defaults run the embedded mode).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Listen address of the HTTP server (ops routes and API).
    pub http_addr: String,
    /// Partitions of topics this service creates.
    pub topic_partitions: i32,
    /// Base URL of tu-media-access-service.
    pub media_access_url: String,
    /// The internal token media access expects (env `INTERNAL_AUTH_API_KEY`).
    pub internal_auth_api_key: String,
    /// Compatibility switch: read `tu.image.uploaded` instead of `tu.recognition.requested`.
    pub consume_image_uploaded: bool,
    /// Kafka consumer group (replicas share it and split the partitions).
    pub consumer_group: String,
    /// Which engine recognises machines: a recogniser (`none`, `offline`, `google`) and any
    /// enrichers after it (`gemini`, `catalog`), joined by `+`, e.g. `google+gemini`.
    pub recognition_engine: String,
    /// Engine runs at once (CPU-bound; default: the number of cores).
    pub engine_concurrency: usize,
    /// Requests handled at once (also within one partition: a slow recognition does not hold
    /// up the ones behind it; offsets are still committed in order).
    pub max_in_flight: usize,
    pub max_download_bytes: u64,
    pub max_pixels: u64,
    pub download_timeout_secs: u64,
    /// Google Cloud Vision: API key (`?key=`); or else the service-account JSON below.
    pub google_vision_api_key: String,
    /// Path of a service-account JSON key (Google's ADC variable of the same name).
    pub google_application_credentials: String,
    /// Vision REST endpoint (`{endpoint}/v1/images:annotate`).
    pub google_vision_endpoint: String,
    /// OAuth token endpoint override (default: the key file's `token_uri`).
    pub google_token_uri: String,
    /// Vision features, comma-separated (the original: logo, text, web detection; add
    /// `LABEL_DETECTION`, `OBJECT_LOCALIZATION` if wanted).
    pub google_vision_features: String,
    /// `maxResults` per feature (the original: 5).
    pub google_vision_max_results: i32,
    /// Gemini reasoning: API key (env `GEMINI_API_KEY`, as the original).
    pub gemini_api_key: String,
    /// Gemini model (the original: `gemini-1.5-flash`).
    pub gemini_model: String,
    /// Gemini REST endpoint (`{endpoint}/v1beta/models/{model}:generateContent`).
    pub gemini_endpoint: String,
    /// Cloud calls: attempts per call (429/5xx/timeouts are retried) and the first backoff.
    pub cloud_attempts: u32,
    pub cloud_backoff_ms: u64,
    /// Cloud calls: timeout per attempt.
    pub cloud_timeout_secs: u64,
    /// Offline engine: directory of the PP-OCRv4 ONNX models (`scripts/fetch-models.sh`);
    /// empty = `$TRACKUNIT_MODELS_DIR` or `~/.local/share/trackunit/models`. Without the models
    /// the engine falls back to Tesseract.
    pub ocr_models_dir: String,
    /// Offline engine: `ort` (ONNX Runtime, fast) or `tract` (pure Rust; builds with the
    /// `recognition/tract` feature only).
    pub ocr_runtime: String,
    /// Offline engine: `libonnxruntime.so` for `ort`; empty = `ORT_DYLIB_PATH` or the models dir.
    pub onnxruntime_lib: String,
    /// Offline engine: intra-op threads per recognition (several run at once under
    /// `ENGINE_CONCURRENCY`).
    pub ocr_threads: usize,
    /// Optional machine-type image classifier (ONNX, input `[1,3,S,S]` RGB in 0..1) and its
    /// labels file (one machine type a line); empty = none.
    pub classifier_model: String,
    pub classifier_labels: String,
    /// The classifier's square input side `S`.
    pub classifier_input_size: u32,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            http_addr: "127.0.0.1:8085".into(),
            topic_partitions: 4,
            media_access_url: "http://127.0.0.1:8082".into(),
            internal_auth_api_key: String::new(),
            consume_image_uploaded: false,
            recognition_engine: "none".into(),
            consumer_group: groups::VISION_ADAPTER.into(),
            engine_concurrency: 0,
            max_in_flight: 16,
            max_download_bytes: 10 * 1024 * 1024,
            max_pixels: 40_000_000,
            download_timeout_secs: 30,
            google_vision_api_key: String::new(),
            google_application_credentials: String::new(),
            google_vision_endpoint: "https://vision.googleapis.com".into(),
            google_token_uri: String::new(),
            google_vision_features: "LOGO_DETECTION,TEXT_DETECTION,WEB_DETECTION".into(),
            google_vision_max_results: 5,
            gemini_api_key: String::new(),
            gemini_model: "gemini-1.5-flash".into(),
            gemini_endpoint: "https://generativelanguage.googleapis.com".into(),
            cloud_attempts: 4,
            cloud_backoff_ms: 200,
            cloud_timeout_secs: 20,
            ocr_models_dir: String::new(),
            ocr_runtime: "ort".into(),
            onnxruntime_lib: String::new(),
            ocr_threads: 1,
            classifier_model: String::new(),
            classifier_labels: String::new(),
            classifier_input_size: 224,
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
    pub engine: Arc<dyn RecognitionEngine>,
}

impl Deps {
    /// Real brokers where configured; `in_process` otherwise.
    pub fn connect(config: &Config, in_process: &InProcessBroker) -> anyhow::Result<Self> {
        Ok(Self {
            log: config.messaging.event_log(SERVICE, in_process)?,
            engine: engine::by_name(&config.settings)?,
        })
    }
}

/// Run until `shutdown`, then drain within the grace period.
pub async fn run(config: Config, deps: Deps, shutdown: Shutdown) -> anyhow::Result<()> {
    let s = &config.settings;
    anyhow::ensure!(
        !s.internal_auth_api_key.trim().is_empty(),
        "INTERNAL_AUTH_API_KEY must be set: media access requires it"
    );
    let health = Health::new();
    // The recorder before any work starts, so no early count is lost.
    let _ = runtime::telemetry::metrics();
    deps.log
        .create_topics(&messaging::topology::kafka_topics(
            &config.topics,
            s.topic_partitions,
        ))
        .await
        .context("creating the Kafka topics")?;
    let log = deps.log.clone();
    health.check(log.backend(), move || {
        let log = log.clone();
        async move { log.check().await.map_err(|e| e.to_string()) }
    });
    let http = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .build()
        .context("HTTP client")?;
    let media = MediaAccess {
        http: http.clone(),
        base_url: s.media_access_url.clone(),
        token: s.internal_auth_api_key.clone(),
    };
    {
        let (http, base) = (
            http.clone(),
            s.media_access_url.trim_end_matches('/').to_owned(),
        );
        health.check_optional("media_access", move || {
            let (http, url) = (http.clone(), format!("{base}/health/live"));
            async move {
                match http.get(&url).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("answered {}", r.status())),
                    Err(e) => Err(e.to_string()),
                }
            }
        });
    }
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    let engine_slots = if s.engine_concurrency == 0 {
        cores
    } else {
        s.engine_concurrency
    };
    let pipeline = Pipeline {
        media,
        engine: deps.engine.clone(),
        engine_slots: Arc::new(Semaphore::new(engine_slots)),
        limits: Limits {
            max_download_bytes: s.max_download_bytes,
            max_pixels: s.max_pixels,
            download_timeout: Duration::from_secs(s.download_timeout_secs.max(1)),
            ..Limits::default()
        },
        log: deps.log.clone(),
        topics: config.topics.clone(),
        http: reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .context("HTTP client")?,
    };
    let source = if s.consume_image_uploaded {
        config.topics.topic_image_uploaded.clone()
    } else {
        config.topics.topic_recognition_requested.clone()
    };
    let work = CancellationToken::new();
    let consumer_task = {
        let (log, work, source) = (deps.log.clone(), work.clone(), source.clone());
        let group = s.consumer_group.clone();
        let subscribe = config.messaging.subscribe_options();
        let options = RunOptions::new("vision adapter")
            .concurrency(s.max_in_flight.max(1))
            .per_partition(s.max_in_flight.max(1));
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(200);
            while !work.is_cancelled() {
                let consumer = match log
                    .subscribe(&group, &[source.as_str()], subscribe.clone())
                    .await
                {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::error!(error = %e, "subscribing; retrying");
                        tokio::select! { _ = tokio::time::sleep(wait) => {}, _ = work.cancelled() => break }
                        wait = (wait * 2).min(Duration::from_secs(10));
                        continue;
                    }
                };
                let pipeline = pipeline.clone();
                let result = run_log(
                    log.clone(),
                    consumer,
                    options.clone(),
                    work.clone(),
                    move |record| {
                        let pipeline = pipeline.clone();
                        async move { pipeline.handle(record).await }
                    },
                )
                .await;
                if let Err(e) = result {
                    tracing::error!(error = %e, "consumer failed; resubscribing");
                }
            }
        })
    };
    tracing::info!(service = SERVICE, topic = %source, engine = %deps.engine.provider().name, "consuming");

    let listener = runtime::http::bind(&s.http_addr).await?;
    tracing::info!(service = SERVICE, addr = %listener.local_addr()?, "listening");
    let router = runtime::http::service_router(SERVICE, axum::Router::new(), health.clone());
    let token = shutdown.token();
    runtime::http::serve_service(listener, router, health.clone(), token.clone()).await?;
    work.cancel();
    runtime::shutdown::drain(consumer_task, runtime::shutdown::GRACE).await;
    tracing::info!(service = SERVICE, "stopped");
    Ok(())
}
