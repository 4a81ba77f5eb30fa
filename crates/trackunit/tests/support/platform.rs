//! The analysis-path services as tasks over in-process or real brokers, shared by the
//! end-to-end test and the analysis bench (included with `#[path]`).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use contracts::ImageUploaded;
use contracts::names::{Topics, exchanges};
use messaging::broker::{QueueSpec, Topology};
use messaging::config::MessagingConfig;
use messaging::memory::InProcessBroker;
use messaging::{EventLog, Message, MessageBroker, QueueConsumer};
use objectstore::{ObjectStore, S3Config};
use runtime::Shutdown;
use svc_ai_vision_adapter::engine::RecognitionEngine;
use tokio::task::JoinHandle;
use uuid::Uuid;

pub const TOKEN: &str = "analysis-path-test-token";

pub struct Platform {
    pub log: Arc<dyn EventLog>,
    pub store: ObjectStore,
    pub topics: Topics,
    pub events: Box<dyn QueueConsumer>,
    pub orchestrator: String,
    pub shutdown: Shutdown,
    pub tasks: Vec<JoinHandle<anyhow::Result<()>>>,
    pub _guards: Vec<Box<dyn std::any::Any + Send>>,
}

pub struct Parts {
    pub messaging: MessagingConfig,
    pub s3: S3Config,
    pub database_url: String,
    pub topics: Topics,
    pub group_suffix: String,
    pub guards: Vec<Box<dyn std::any::Any + Send>>,
}

pub async fn in_process_parts() -> Parts {
    let store = testkit::EmbeddedStore::start(20 * 1024 * 1024).await;
    let database_url = testkit::sqlite_database(store.dir());
    Parts {
        messaging: MessagingConfig::default(),
        s3: store.config.clone(),
        database_url,
        topics: Topics::default(),
        group_suffix: String::new(),
        guards: vec![Box::new(store)],
    }
}

pub async fn real_parts() -> Parts {
    let vhost = testkit::RabbitVhost::create();
    let unique = testkit::unique("ap");
    let topic = |name: &str| format!("{unique}.{name}");
    Parts {
        messaging: MessagingConfig {
            kafka_brokers: testkit::kafka_brokers(),
            rabbit_url: vhost.url(),
            ..MessagingConfig::default()
        },
        s3: testkit::garage_s3(),
        database_url: testkit::postgres_database().await,
        topics: Topics {
            topic_image_uploaded: topic("image.uploaded"),
            topic_recognition_requested: topic("recognition.requested"),
            topic_recognition_completed: topic("recognition.completed"),
            topic_recognition_failed: topic("recognition.failed"),
        },
        group_suffix: format!(".{unique}"),
        guards: vec![Box::new(vhost)],
    }
}

pub async fn start(
    parts: Parts,
    timeout: Duration,
    engine: Arc<dyn RecognitionEngine>,
) -> Platform {
    let in_process = InProcessBroker::memory();
    let shutdown = Shutdown::new();
    let mut tasks = Vec::new();
    let addr = || format!("127.0.0.1:{}", testkit::free_port());
    let http = reqwest::Client::new();
    let mut ready = Vec::new();

    let media = tu_media_access_service::Config {
        settings: tu_media_access_service::Settings {
            http_addr: addr(),
            internal_auth_api_key: TOKEN.into(),
            ..Default::default()
        },
        s3: parts.s3.clone(),
    };
    let media_url = format!("http://{}", media.settings.http_addr);
    ready.push(media_url.clone());
    let deps = tu_media_access_service::Deps::connect(&media).expect("media deps");
    tasks.push(tokio::spawn(tu_media_access_service::run(
        media,
        deps,
        shutdown.clone(),
    )));

    let orchestrator = svc_analysis_orchestrator::Config {
        settings: svc_analysis_orchestrator::Settings {
            http_addr: addr(),
            database_url: parts.database_url.clone(),
            internal_auth_api_key: TOKEN.into(),
            recognition_timeout_secs: timeout.as_secs_f64(),
            ..Default::default()
        },
        messaging: parts.messaging.clone(),
    };
    let orchestrator_url = format!("http://{}", orchestrator.settings.http_addr);
    ready.push(orchestrator_url.clone());
    let deps = svc_analysis_orchestrator::Deps::connect(&orchestrator, &in_process)
        .await
        .expect("orchestrator deps");
    tasks.push(tokio::spawn(svc_analysis_orchestrator::run(
        orchestrator,
        deps,
        shutdown.clone(),
    )));

    let bridge = svc_messaging_bridge::Config {
        settings: svc_messaging_bridge::Settings {
            http_addr: addr(),
            consumer_group: format!("svc-messaging-bridge{}", parts.group_suffix),
            ..Default::default()
        },
        messaging: parts.messaging.clone(),
        topics: parts.topics.clone(),
    };
    ready.push(format!("http://{}", bridge.settings.http_addr));
    let deps = svc_messaging_bridge::Deps::connect(&bridge, &in_process).expect("bridge deps");
    tasks.push(tokio::spawn(svc_messaging_bridge::run(
        bridge,
        deps,
        shutdown.clone(),
    )));

    let adapter = svc_ai_vision_adapter::Config {
        settings: svc_ai_vision_adapter::Settings {
            http_addr: addr(),
            media_access_url: media_url,
            internal_auth_api_key: TOKEN.into(),
            consumer_group: format!("svc-ai-vision-adapter{}", parts.group_suffix),
            max_download_bytes: 256 * 1024,
            ..Default::default()
        },
        messaging: parts.messaging.clone(),
        topics: parts.topics.clone(),
    };
    ready.push(format!("http://{}", adapter.settings.http_addr));
    let log = parts
        .messaging
        .event_log("test", &in_process)
        .expect("event log");
    let deps = svc_ai_vision_adapter::Deps {
        log: log.clone(),
        engine,
    };
    tasks.push(tokio::spawn(svc_ai_vision_adapter::run(
        adapter,
        deps,
        shutdown.clone(),
    )));

    for base in ready {
        testkit::wait_ready(&http, &base).await;
    }

    // What a gateway replica would see.
    let broker: Arc<dyn MessageBroker> = parts
        .messaging
        .message_broker("test", &in_process)
        .expect("broker");
    let queue = testkit::unique("events");
    broker
        .declare(
            &Topology::new()
                .queue(QueueSpec::exclusive(queue.clone()))
                .bind(exchanges::ANALYSIS_STARTED, &queue, "")
                .bind(exchanges::ANALYSIS_COMPLETED, &queue, "")
                .bind(exchanges::ANALYSIS_FAILED, &queue, ""),
        )
        .await
        .expect("declare the event queue");
    let events = broker.consume(&queue, 100).await.expect("consume events");
    let mut guards = parts.guards;
    guards.push(Box::new(broker));
    Platform {
        log,
        store: ObjectStore::new(&parts.s3).expect("store"),
        topics: parts.topics,
        events,
        orchestrator: orchestrator_url,
        shutdown,
        tasks,
        _guards: guards,
    }
}

pub fn png(width: u32, height: u32) -> Bytes {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x * 7) as u8, (y * 5) as u8, ((x + y) * 3) as u8])
    });
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("encode png");
    Bytes::from(out.into_inner())
}

/// Store `bytes` and announce it as ingestion would; `checksum_of` is what the upload claimed.
pub async fn upload(
    p: &Platform,
    name: &str,
    bytes: Bytes,
    checksum_of: &[u8],
) -> (String, String) {
    let key = format!("images/2026/11/22/{}-{name}.png", Uuid::new_v4());
    p.store
        .put(&key, bytes.clone(), "image/png")
        .await
        .expect("put object");
    let correlation = format!("corr-{name}");
    announce(
        p,
        &key,
        bytes.len(),
        &testkit::sha256_checksum(checksum_of),
        &correlation,
    )
    .await;
    (key, correlation)
}

/// Produce an `ImageUploaded` for a stored object (a new upload id each time).
pub async fn announce(
    p: &Platform,
    key: &str,
    len: usize,
    checksum: &str,
    correlation: &str,
) -> Uuid {
    let event = ImageUploaded {
        upload_id: Uuid::now_v7(),
        object_key: key.to_owned(),
        content_type: "image/png".into(),
        bytes: len as i64,
        checksum: checksum.to_owned(),
        occurred_at: Utc::now(),
        owner: Some("alice".into()),
    };
    let message = Message::from_contract(&event, "tu-ingestion-service", correlation);
    p.log
        .produce(&p.topics.topic_image_uploaded, key, &message)
        .await
        .expect("produce ImageUploaded");
    event.upload_id
}
