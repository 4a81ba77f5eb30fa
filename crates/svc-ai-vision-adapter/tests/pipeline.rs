//! The adapter's pipeline against a misbehaving storage server: retries with backoff on
//! 429/5xx, a refusal is `download_failed` at once, a missing object is `download_failed`, the
//! media-access URL is asked for once, and the compatibility switch reads `ImageUploaded`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use chrono::Utc;
use contracts::names::Topics;
use contracts::{AiProvider, ImageUploaded, MachineAggregate, RecognitionRequested};
use messaging::log::SubscribeOptions;
use messaging::memory::InProcessBroker;
use messaging::{EventLog, LogConsumer, LogRecord, Message};
use svc_ai_vision_adapter::engine::{EngineError, Image, Recognition, RecognitionEngine};
use svc_ai_vision_adapter::pipeline::{Limits, MediaAccess, Pipeline};
use uuid::Uuid;

struct Fixed;

#[async_trait]
impl RecognitionEngine for Fixed {
    fn provider(&self) -> AiProvider {
        AiProvider {
            name: "fixed".into(),
            ..AiProvider::default()
        }
    }
    async fn recognize(&self, image: Image) -> Result<Recognition, EngineError> {
        Ok(Recognition {
            aggregate: MachineAggregate {
                brand: Some("Volvo".into()),
                model: Some(format!("EC{}", image.decoded.width())),
                confidence: 0.7,
                is_confident: true,
                ..MachineAggregate::default()
            },
            text: vec![],
            provider: None,
        })
    }
}

#[derive(Default)]
struct Storage {
    /// Status codes to answer before the object, per name.
    script: Mutex<HashMap<String, Vec<u16>>>,
    objects: Mutex<HashMap<String, Vec<u8>>>,
    gets: AtomicUsize,
    url_requests: AtomicUsize,
    base: Mutex<String>,
}

async fn get_url(
    State(s): State<Arc<Storage>>,
    headers: HeaderMap,
    Json(body): Json<serde_json::Value>,
) -> Response {
    if headers
        .get("x-internal-token")
        .and_then(|v| v.to_str().ok())
        != Some("tok")
    {
        return StatusCode::UNAUTHORIZED.into_response();
    }
    s.url_requests.fetch_add(1, Ordering::SeqCst);
    let key = body["objectKey"].as_str().unwrap_or_default().to_owned();
    let known = s.objects.lock().expect("lock").contains_key(&key)
        || s.script.lock().expect("lock").contains_key(&key);
    if !known {
        return (
            StatusCode::NOT_FOUND,
            Json(serde_json::json!({"objectKey": key})),
        )
            .into_response();
    }
    let base = s.base.lock().expect("lock").clone();
    Json(serde_json::json!({"url": format!("{base}/obj/{key}"), "expiresAt": Utc::now()}))
        .into_response()
}

async fn object(State(s): State<Arc<Storage>>, Path(key): Path<String>) -> Response {
    s.gets.fetch_add(1, Ordering::SeqCst);
    if let Some(codes) = s.script.lock().expect("lock").get_mut(&key)
        && !codes.is_empty()
    {
        let code = codes.remove(0);
        return StatusCode::from_u16(code)
            .unwrap_or(StatusCode::IM_A_TEAPOT)
            .into_response();
    }
    match s.objects.lock().expect("lock").get(&key) {
        Some(bytes) => ([("content-type", "image/png")], bytes.clone()).into_response(),
        None => StatusCode::NOT_FOUND.into_response(),
    }
}

struct Rig {
    storage: Arc<Storage>,
    pipeline: Pipeline,
    log: Arc<dyn EventLog>,
    results: Box<dyn LogConsumer>,
    _stop: tokio_util::sync::DropGuard,
}

async fn rig() -> Rig {
    let storage = Arc::new(Storage::default());
    let app = axum::Router::new()
        .route("/internal/v0/media/get-url", post(get_url))
        .route("/obj/{*key}", get(object))
        .with_state(storage.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let base = format!("http://{}", listener.local_addr().expect("addr"));
    *storage.base.lock().expect("lock") = base.clone();
    let stop = tokio_util::sync::CancellationToken::new();
    let token = stop.clone();
    tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { token.cancelled().await })
            .await
    });
    let log: Arc<dyn EventLog> = Arc::new(InProcessBroker::memory());
    let topics = Topics::default();
    log.create_topics(&messaging::topology::kafka_topics(&topics, 1))
        .await
        .expect("topics");
    let results = log
        .subscribe(
            "t",
            &[
                topics.topic_recognition_completed.as_str(),
                topics.topic_recognition_failed.as_str(),
            ],
            SubscribeOptions::default(),
        )
        .await
        .expect("subscribe");
    let http = reqwest::Client::new();
    let pipeline = Pipeline {
        media: MediaAccess {
            http: http.clone(),
            base_url: base,
            token: "tok".into(),
        },
        engine: Arc::new(Fixed),
        engine_slots: Arc::new(tokio::sync::Semaphore::new(2)),
        limits: Limits {
            retry_backoff: Duration::from_millis(20),
            download_timeout: Duration::from_secs(5),
            ..Limits::default()
        },
        log: log.clone(),
        topics,
        http,
    };
    Rig {
        storage,
        pipeline,
        log,
        results,
        _stop: stop.drop_guard(),
    }
}

fn png(w: u32) -> Vec<u8> {
    let img = image::RgbImage::from_pixel(w, 10, image::Rgb([10, 20, 30]));
    let mut out = std::io::Cursor::new(Vec::new());
    img.write_to(&mut out, image::ImageFormat::Png)
        .expect("png");
    out.into_inner()
}

fn request(key: &str, bytes: &[u8]) -> RecognitionRequested {
    RecognitionRequested {
        analysis_id: Uuid::now_v7(),
        upload_id: Some(Uuid::now_v7()),
        object_key: key.into(),
        owner: Some("alice".into()),
        content_type: Some("image/png".into()),
        bytes: Some(bytes.len() as i64),
        checksum: Some(testkit::sha256_checksum(bytes)),
        requested_at: Utc::now(),
    }
}

fn record(topic: &str, message: Message) -> LogRecord {
    LogRecord {
        topic: topic.into(),
        partition: 0,
        offset: 0,
        key: None,
        message,
        timestamp_ms: None,
    }
}

async fn result(rig: &Rig) -> (String, serde_json::Value) {
    let r = tokio::time::timeout(Duration::from_secs(10), rig.results.recv())
        .await
        .expect("a result")
        .expect("recv");
    (
        r.message.headers.schema().unwrap_or_default().to_owned(),
        serde_json::from_slice(&r.message.payload).expect("json"),
    )
}

#[tokio::test]
async fn retries_busy_storage_and_asks_for_the_url_once() {
    let rig = rig().await;
    let bytes = png(220);
    rig.storage
        .objects
        .lock()
        .expect("lock")
        .insert("a.png".into(), bytes.clone());
    rig.storage
        .script
        .lock()
        .expect("lock")
        .insert("a.png".into(), vec![503, 429, 500]);
    let req = request("a.png", &bytes);
    let topic = rig.pipeline.topics.topic_recognition_requested.clone();
    rig.pipeline
        .handle(record(&topic, Message::from_contract(&req, "t", "c-1")))
        .await
        .expect("handled");
    let (schema, body) = result(&rig).await;
    assert_eq!(schema, "recognition.completed.v1", "{body}");
    assert_eq!(body["aggregate"]["model"], "EC220");
    assert_eq!(body["aggregate"]["name"], "Volvo, EC220");
    assert_eq!(body["analysisId"], req.analysis_id.to_string());
    assert!(body["timings"]["downloadMs"].is_number());
    assert_eq!(
        rig.storage.gets.load(Ordering::SeqCst),
        4,
        "3 refusals, then the object"
    );
    assert_eq!(
        rig.storage.url_requests.load(Ordering::SeqCst),
        1,
        "one URL, not two"
    );
}

#[tokio::test]
async fn refusals_and_missing_objects_are_download_failures() {
    let rig = rig().await;
    let bytes = png(50);
    rig.storage
        .objects
        .lock()
        .expect("lock")
        .insert("denied.png".into(), bytes.clone());
    rig.storage
        .script
        .lock()
        .expect("lock")
        .insert("denied.png".into(), vec![403]);
    rig.storage
        .script
        .lock()
        .expect("lock")
        .insert("down.png".into(), vec![503; 10]);
    let topic = rig.pipeline.topics.topic_recognition_requested.clone();
    for key in ["denied.png", "missing.png", "down.png"] {
        let req = request(key, &bytes);
        rig.pipeline
            .handle(record(&topic, Message::from_contract(&req, "t", "c")))
            .await
            .expect("handled: the failure is reported, not retried forever");
        let (schema, body) = result(&rig).await;
        assert_eq!(schema, "recognition.failed.v1", "{key}: {body}");
        assert_eq!(body["reason"], "download_failed", "{key}: {body}");
        assert!(
            !body["message"]
                .as_str()
                .unwrap_or_default()
                .contains("/obj/"),
            "no URL in the message: {body}"
        );
    }
    assert_eq!(
        rig.storage.gets.load(Ordering::SeqCst),
        1 + Limits::default().download_attempts as usize,
        "a 403 is not retried; a 503 is, up to the attempt limit"
    );
}

#[tokio::test]
async fn compatibility_mode_reads_image_uploaded() {
    let rig = rig().await;
    let bytes = png(77);
    rig.storage
        .objects
        .lock()
        .expect("lock")
        .insert("c.png".into(), bytes.clone());
    let uploaded = ImageUploaded {
        upload_id: Uuid::now_v7(),
        object_key: "c.png".into(),
        content_type: "image/png".into(),
        bytes: bytes.len() as i64,
        checksum: testkit::sha256_checksum(&bytes),
        occurred_at: Utc::now(),
        owner: None,
    };
    let topic = rig.pipeline.topics.topic_image_uploaded.clone();
    rig.pipeline
        .handle(record(&topic, Message::from_contract(&uploaded, "t", "c")))
        .await
        .expect("handled");
    let (schema, body) = result(&rig).await;
    assert_eq!(schema, "recognition.completed.v1", "{body}");
    assert_eq!(body["uploadId"], uploaded.upload_id.to_string());
    let _ = &rig.log;
}

#[tokio::test]
async fn undecodable_requests_are_permanent_failures() {
    let rig = rig().await;
    let topic = rig.pipeline.topics.topic_recognition_requested.clone();
    let err = rig
        .pipeline
        .handle(record(&topic, Message::new("{oops")))
        .await
        .expect_err("garbage");
    assert!(
        matches!(err, messaging::consume::HandlerError::Permanent(ref m) if m.contains("RecognitionRequested")),
        "{err:?}"
    );
}

/// Counts how many recognitions run at once.
struct Counting {
    now: AtomicUsize,
    max: AtomicUsize,
}

#[async_trait]
impl RecognitionEngine for Counting {
    fn provider(&self) -> AiProvider {
        AiProvider {
            name: "counting".into(),
            ..AiProvider::default()
        }
    }
    async fn recognize(&self, _image: Image) -> Result<Recognition, EngineError> {
        let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
        self.max.fetch_max(now, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(100)).await;
        self.now.fetch_sub(1, Ordering::SeqCst);
        Ok(Recognition::default())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_engine_runs_within_its_concurrency_limit() {
    let mut rig = rig().await;
    let engine = Arc::new(Counting {
        now: AtomicUsize::new(0),
        max: AtomicUsize::new(0),
    });
    rig.pipeline.engine = engine.clone();
    rig.pipeline.engine_slots = Arc::new(tokio::sync::Semaphore::new(2));
    let bytes = png(30);
    rig.storage
        .objects
        .lock()
        .expect("lock")
        .insert("n.png".into(), bytes.clone());
    let topic = rig.pipeline.topics.topic_recognition_requested.clone();
    let handles: Vec<_> = (0..6)
        .map(|_| {
            let pipeline = rig.pipeline.clone();
            let message = Message::from_contract(&request("n.png", &bytes), "t", "c");
            let topic = topic.clone();
            tokio::spawn(async move { pipeline.handle(record(&topic, message)).await })
        })
        .collect();
    for h in handles {
        h.await.expect("join").expect("handled");
    }
    assert_eq!(
        engine.max.load(Ordering::SeqCst),
        2,
        "never more than the 2 slots, and both used"
    );
    for _ in 0..6 {
        let (schema, body) = result(&rig).await;
        assert_eq!(schema, "recognition.completed.v1", "{body}");
        assert_eq!(
            body["aggregate"]["isConfident"], false,
            "nothing known is not confident"
        );
        assert!(
            body["aggregate"]["brand"].is_null(),
            "nothing made up: {body}"
        );
    }
}
