//! tu-ingestion-service over HTTP, on three stacks: the embedded one (embedded S3 store, SQLite,
//! in-process broker), the production one (Garage, PostgreSQL, tansu) and PostgreSQL through
//! PgBouncer. Each test starts the real service on a free port.

use std::sync::Arc;
use std::time::Duration;

use messaging::log::SubscribeOptions;
use messaging::{EventLog, LogRecord};
use objectstore::ObjectStore;
use serde_json::{Value, json};
use testkit::sha256_checksum as sha;
use tu_ingestion_service::{Config, Deps, run};

const TOKEN: &str = "test-internal-token";
const OWNER: &str = "user-alice";
const MAX: u64 = 256 * 1024;

#[derive(Clone, Copy, PartialEq)]
enum Stack {
    Embedded,
    Production,
    PgBouncer,
}

struct Harness {
    base: String,
    config: Config,
    store: ObjectStore,
    log: Arc<dyn EventLog>,
    in_process: messaging::memory::InProcessBroker,
    shutdown: runtime::Shutdown,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    http: reqwest::Client,
    _guards: Vec<Box<dyn std::any::Any + Send>>,
}

async fn stack(stack: Stack, tweak: impl FnOnce(&mut Config)) -> Harness {
    // Spans with trace ids, as in a deployed service, so events carry `traceparent`.
    runtime::telemetry::init(&runtime::telemetry::TelemetryOptions::from_env(
        "upload-api-test",
    ));
    let mut guards: Vec<Box<dyn std::any::Any + Send>> = Vec::new();
    let mut config = Config::default();
    config.settings.http_addr = format!("127.0.0.1:{}", testkit::free_port());
    config.settings.internal_auth_api_key = TOKEN.into();
    config.settings.max_upload_bytes = MAX;
    config.topics.topic_image_uploaded = testkit::unique("uploaded");
    config.settings.topic_partitions = 2;
    let in_process = messaging::memory::InProcessBroker::memory();
    match stack {
        Stack::Embedded => {
            // The store's own limit is above the service's, so the service's check is what is tested.
            let store = testkit::EmbeddedStore::start((MAX * 4) as usize).await;
            config.s3 = store.config.clone();
            config.settings.database_url = testkit::sqlite_database(store.dir());
            guards.push(Box::new(store));
        }
        Stack::Production | Stack::PgBouncer => {
            config.s3 = testkit::garage_s3();
            config.messaging.kafka_brokers = testkit::kafka_brokers();
            if stack == Stack::PgBouncer {
                let (direct, pooled) = testkit::pgbouncer_database().await;
                config.settings.database_url = pooled;
                config.settings.database_migrate_url = direct;
            } else {
                config.settings.database_url = testkit::postgres_database().await;
            }
        }
    }
    tweak(&mut config);
    let mut h = Harness {
        base: format!("http://{}", config.settings.http_addr),
        store: ObjectStore::new(&config.s3).expect("store"),
        log: config
            .messaging
            .event_log("test", &in_process)
            .expect("log"),
        config,
        in_process,
        shutdown: runtime::Shutdown::new(),
        task: None,
        http: reqwest::Client::new(),
        _guards: guards,
    };
    h.start().await;
    h
}

impl Harness {
    async fn start(&mut self) {
        self.shutdown = runtime::Shutdown::new();
        let deps = Deps::connect(&self.config, &self.in_process)
            .await
            .expect("deps");
        self.task = Some(tokio::spawn(run(
            self.config.clone(),
            deps,
            self.shutdown.clone(),
        )));
        testkit::wait_ready(&self.http, &self.base).await;
    }

    async fn stop(&mut self) {
        self.shutdown.trigger();
        if let Some(t) = self.task.take() {
            t.await.expect("join").expect("service ran cleanly");
        }
    }

    fn post(&self, path: &str) -> reqwest::RequestBuilder {
        self.http
            .post(format!("{}{path}", self.base))
            .header("x-internal-token", TOKEN)
            .header("x-owner", OWNER)
    }

    async fn start_upload(&self, filename: &str, content_type: &str) -> Value {
        let r = self
            .post("/v1/uploads/start")
            .json(&json!({"filename": filename, "contentType": content_type}))
            .send()
            .await
            .expect("start");
        assert_eq!(r.status(), 200);
        r.json().await.expect("json")
    }

    async fn put(&self, started: &Value, body: &[u8]) -> reqwest::StatusCode {
        let mut req = self
            .http
            .put(started["putUrl"].as_str().expect("putUrl"))
            .body(body.to_vec());
        for (k, v) in started["requiredHeaders"]
            .as_object()
            .expect("requiredHeaders")
        {
            req = req.header(k, v.as_str().expect("header"));
        }
        req.send().await.expect("put").status()
    }

    async fn confirm(
        &self,
        upload_id: &str,
        bytes: i64,
        checksum: &str,
    ) -> (reqwest::StatusCode, Value) {
        let r = self
            .post("/v1/uploads/confirm")
            .header("X-Correlation-ID", "corr-test-0001")
            .json(&json!({"uploadId": upload_id, "bytes": bytes, "checksum": checksum}))
            .send()
            .await
            .expect("confirm");
        let status = r.status();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn consumer(&self) -> Box<dyn messaging::LogConsumer> {
        self.log
            .subscribe(
                &testkit::unique("g"),
                &[&self.config.topics.topic_image_uploaded],
                SubscribeOptions::default(),
            )
            .await
            .expect("subscribe")
    }
}

fn image(len: usize) -> Vec<u8> {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0];
    v.extend((0..len.saturating_sub(4)).map(|i| (i * 7 % 256) as u8));
    v
}

async fn next_event(c: &dyn messaging::LogConsumer, within: Duration) -> Option<LogRecord> {
    tokio::time::timeout(within, c.recv())
        .await
        .ok()
        .map(|r| r.expect("recv"))
}

// ---------------------------------------------------------------- cases

async fn upload_confirm_publishes_image_uploaded(h: Harness) {
    let consumer = h.consumer().await;
    let started = h.start_upload("excavator.JPG", "image/jpeg").await;
    let upload_id = started["uploadId"].as_str().expect("uploadId").to_owned();
    let key = started["key"].as_str().expect("key").to_owned();
    assert!(uuid::Uuid::parse_str(&upload_id).is_ok());
    assert!(
        objectstore::keys::is_image_key(&key) && key.ends_with(".jpg"),
        "{key}"
    );
    assert_eq!(started["requiredHeaders"]["content-type"], "image/jpeg");
    let expires: chrono::DateTime<chrono::Utc> = started["expiresAt"]
        .as_str()
        .expect("expiresAt")
        .parse()
        .expect("time");
    let left = expires - chrono::Utc::now();
    assert!(
        left > chrono::Duration::seconds(280) && left <= chrono::Duration::seconds(300),
        "{left}"
    );

    let body = image(40_000);
    assert!(h.put(&started, &body).await.is_success());
    let (status, resp) = h
        .confirm(
            &upload_id,
            body.len() as i64,
            &sha(&body).to_uppercase().replace("SHA256:", "sha256:"),
        )
        .await;
    assert_eq!(
        (status.as_u16(), resp),
        (202, json!({"status": "Accepted"}))
    );

    let record = next_event(consumer.as_ref(), Duration::from_secs(30))
        .await
        .expect("ImageUploaded published");
    assert_eq!(
        record.key.as_deref(),
        Some(key.as_str()),
        "keyed by objectKey"
    );
    let e: contracts::ImageUploaded = record.message.decode().expect("decode");
    assert_eq!(e.upload_id.to_string(), upload_id);
    assert_eq!(e.object_key, key);
    assert_eq!(e.bytes, body.len() as i64);
    assert_eq!(e.checksum, sha(&body), "checksum lower-cased");
    assert_eq!(e.content_type, "image/jpeg");
    assert_eq!(e.owner.as_deref(), Some(OWNER));
    let hdr = &record.message.headers;
    assert_eq!(
        hdr.correlation_id(),
        Some("corr-test-0001"),
        "the caller's correlation id travels on"
    );
    assert_eq!(hdr.schema(), Some("image.uploaded.v1"));
    assert_eq!(hdr.producer(), Some("tu-ingestion-service"));
    assert!(hdr.message_id().is_some_and(|id| id.len() == 36));
    assert!(hdr.get("traceparent").is_some(), "trace context");

    let r = h
        .http
        .get(format!("{}/v1/uploads/{upload_id}", h.base))
        .header("x-internal-token", TOKEN)
        .header("x-owner", OWNER)
        .send()
        .await
        .expect("status");
    assert_eq!(r.status(), 200);
    let view: Value = r.json().await.expect("json");
    assert_eq!(view["status"], "Uploaded");
    assert_eq!(view["bytes"], body.len());
    assert_eq!(view["filename"], "excavator.JPG");

    let metrics = h
        .http
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for name in [
        "ingestion_uploads_started_total",
        "ingestion_uploads_confirmed_total",
        "outbox_published_total",
        "outbox_lag_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
}

async fn bad_input_gets_the_original_errors(h: Harness) {
    let r = h
        .post("/v1/uploads/start")
        .json(&json!({"filename": "  ", "contentType": "text/plain"}))
        .send()
        .await
        .expect("start");
    assert_eq!(r.status(), 422);
    assert_eq!(
        r.json::<Value>().await.expect("json"),
        json!({"errors": {
            "filename": ["Filename cannot be empty"],
            "contentType": ["Unsupported MIME type; allowed: image/jpeg, image/png, image/webp"]
        }})
    );
    let (status, body) = h
        .confirm(&uuid::Uuid::new_v4().to_string(), 0, "sha256:abc")
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        body,
        json!({"errors": {
            "bytes": ["Must be greater than zero"],
            "checksum": ["Invalid checksum format (expected sha256:<64 hex>)"]
        }})
    );
    let (status, body) = h
        .confirm(
            &uuid::Uuid::new_v4().to_string(),
            MAX as i64 + 1,
            &sha(b"x"),
        )
        .await;
    assert_eq!(status, 422);
    assert_eq!(
        body["errors"]["bytes"][0],
        format!("Must be at most {MAX} bytes")
    );

    let unknown = uuid::Uuid::new_v4().to_string();
    let (status, body) = h.confirm(&unknown, 10, &sha(b"x")).await;
    assert_eq!(status, 404);
    assert_eq!(
        body,
        json!({"type": "about:blank", "title": "upload not found", "status": 404,
               "detail": format!("No upload session found for ID {unknown}.")})
    );

    let r = h
        .post("/v1/uploads/start")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 400);

    // Internal auth and the owner.
    let r = h
        .http
        .post(format!("{}/v1/uploads/start", h.base))
        .header("x-owner", OWNER)
        .json(&json!({"filename": "a.jpg", "contentType": "image/jpeg"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.expect("json")["detail"],
        "Missing internal token"
    );
    let r = h
        .http
        .post(format!("{}/v1/uploads/start", h.base))
        .header("x-internal-token", "guess")
        .header("x-owner", OWNER)
        .json(&json!({"filename": "a.jpg", "contentType": "image/jpeg"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.expect("json")["detail"],
        "Invalid internal token"
    );
    let r = h
        .http
        .post(format!("{}/v1/uploads/start", h.base))
        .header("x-internal-token", TOKEN)
        .json(&json!({"filename": "a.jpg", "contentType": "image/jpeg"}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 401, "no owner");

    // Another owner's upload does not exist for you.
    let started = h.start_upload("a.png", "image/png").await;
    let r = h
        .http
        .post(format!("{}/v1/uploads/confirm", h.base))
        .header("x-internal-token", TOKEN)
        .header("x-owner", "user-mallory")
        .json(&json!({"uploadId": started["uploadId"], "bytes": 10, "checksum": sha(b"x")}))
        .send()
        .await
        .expect("send");
    assert_eq!(r.status(), 404);
}

async fn confirm_checks_the_stored_object(h: Harness) {
    let consumer = h.consumer().await;
    // Nothing stored yet.
    let started = h.start_upload("a.jpg", "image/jpeg").await;
    let id = started["uploadId"].as_str().expect("id").to_owned();
    let (status, body) = h.confirm(&id, 1000, &sha(&image(1000))).await;
    assert_eq!(status, 409);
    assert_eq!(body["title"], "object not uploaded");

    // Stored, but another size than claimed.
    let body_bytes = image(1000);
    assert!(h.put(&started, &body_bytes).await.is_success());
    let (status, body) = h.confirm(&id, 999, &sha(&body_bytes)).await;
    assert_eq!(status, 409);
    assert_eq!(body["title"], "size mismatch");
    assert!(
        body["detail"]
            .as_str()
            .expect("detail")
            .contains("1000 bytes")
    );

    // Larger than the limit (S3 proper cannot refuse it at PUT): rejected and deleted.
    let big = h.start_upload("big.jpg", "image/jpeg").await;
    let big_body = image(MAX as usize + 1);
    assert!(h.put(&big, &big_body).await.is_success());
    let (status, body) = h
        .confirm(
            big["uploadId"].as_str().expect("id"),
            MAX as i64,
            &sha(&big_body),
        )
        .await;
    assert_eq!(status, 413, "{body}");
    assert!(
        h.store
            .head(big["key"].as_str().expect("key"))
            .await
            .expect("head")
            .is_none(),
        "the oversized object is deleted"
    );

    // None of these published anything.
    assert!(
        next_event(consumer.as_ref(), Duration::from_secs(1))
            .await
            .is_none()
    );
    // And the right values still work.
    let (status, _) = h.confirm(&id, 1000, &sha(&body_bytes)).await;
    assert_eq!(status, 202);
    assert!(
        next_event(consumer.as_ref(), Duration::from_secs(30))
            .await
            .is_some()
    );
}

async fn a_second_confirm_publishes_nothing_new(h: Harness) {
    let consumer = h.consumer().await;
    let started = h.start_upload("a.webp", "image/webp").await;
    let id = started["uploadId"].as_str().expect("id").to_owned();
    let body = image(2048);
    assert!(h.put(&started, &body).await.is_success());
    let checksum = sha(&body);
    let (a, b) = tokio::join!(
        h.confirm(&id, body.len() as i64, &checksum),
        h.confirm(&id, body.len() as i64, &checksum)
    );
    assert_eq!(
        (a.0.as_u16(), b.0.as_u16()),
        (202, 202),
        "concurrent confirms both answer 202"
    );
    let (again, _) = h.confirm(&id, body.len() as i64, &sha(&body)).await;
    assert_eq!(again, 202);
    let (other, detail) = h.confirm(&id, body.len() as i64, &sha(b"different")).await;
    assert_eq!(other, 409, "{detail}");
    assert!(
        next_event(consumer.as_ref(), Duration::from_secs(30))
            .await
            .is_some()
    );
    assert!(
        next_event(consumer.as_ref(), Duration::from_secs(2))
            .await
            .is_none(),
        "exactly one ImageUploaded"
    );
}

async fn sessions_expire(h: Harness) {
    let started = h.start_upload("late.jpg", "image/jpeg").await;
    let body = image(500);
    assert!(h.put(&started, &body).await.is_success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (status, resp) = h
        .confirm(started["uploadId"].as_str().expect("id"), 500, &sha(&body))
        .await;
    assert_eq!(status, 410, "{resp}");
    assert_eq!(resp["title"], "upload session expired");
}

async fn a_crash_between_commit_and_publish_loses_nothing(mut h: Harness) {
    let consumer = h.consumer().await;
    let started = h.start_upload("crash.jpg", "image/jpeg").await;
    let body = image(3000);
    assert!(h.put(&started, &body).await.is_success());
    let (status, _) = h
        .confirm(started["uploadId"].as_str().expect("id"), 3000, &sha(&body))
        .await;
    assert_eq!(status, 202);
    assert!(
        next_event(consumer.as_ref(), Duration::from_secs(2))
            .await
            .is_none(),
        "no relay ran: the event waits in the outbox"
    );
    h.stop().await;
    h.config.settings.outbox_relay = true;
    h.start().await;
    let record = next_event(consumer.as_ref(), Duration::from_secs(30))
        .await
        .expect("published after restart");
    let e: contracts::ImageUploaded = record.message.decode().expect("decode");
    assert_eq!(e.object_key, started["key"].as_str().expect("key"));
    assert!(
        next_event(consumer.as_ref(), Duration::from_secs(2))
            .await
            .is_none(),
        "once"
    );
}

macro_rules! suite {
    ($name:ident, $stack:expr) => {
        mod $name {
            use super::*;

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn upload_confirm_publishes_image_uploaded() {
                super::upload_confirm_publishes_image_uploaded(stack($stack, |_| {}).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn bad_input_gets_the_original_errors() {
                super::bad_input_gets_the_original_errors(stack($stack, |_| {}).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn confirm_checks_the_stored_object() {
                super::confirm_checks_the_stored_object(stack($stack, |_| {}).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_second_confirm_publishes_nothing_new() {
                super::a_second_confirm_publishes_nothing_new(stack($stack, |_| {}).await).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sessions_expire() {
                super::sessions_expire(stack($stack, |c| c.settings.session_ttl_secs = 1).await)
                    .await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn a_crash_between_commit_and_publish_loses_nothing() {
                super::a_crash_between_commit_and_publish_loses_nothing(
                    stack($stack, |c| c.settings.outbox_relay = false).await,
                )
                .await;
            }
        }
    };
}

suite!(embedded, Stack::Embedded);
suite!(production, Stack::Production);
suite!(pgbouncer, Stack::PgBouncer);

/// Kafka stopped while a confirm comes in: the confirm still answers 202, and the event goes out
/// once Kafka is back — exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_down_survives_restart_and_publishes_once() {
    let tansu = Arc::new(std::sync::Mutex::new(testkit::OwnTansu::start()));
    let brokers = tansu.lock().expect("tansu").brokers();
    let h = stack(Stack::Production, |c| {
        c.messaging.kafka_brokers = brokers.clone()
    })
    .await;
    let consumer = h.consumer().await;
    // Make sure the topic exists and the consumer has joined before the broker goes away.
    let warm = h.start_upload("warm.jpg", "image/jpeg").await;
    let warm_body = image(100);
    assert!(h.put(&warm, &warm_body).await.is_success());
    assert_eq!(
        h.confirm(
            warm["uploadId"].as_str().expect("id"),
            100,
            &sha(&warm_body)
        )
        .await
        .0,
        202
    );
    assert!(
        next_event(consumer.as_ref(), Duration::from_secs(60))
            .await
            .is_some()
    );

    tansu.lock().expect("tansu").kill();
    let started = h.start_upload("while-down.jpg", "image/jpeg").await;
    let body = image(700);
    assert!(h.put(&started, &body).await.is_success());
    let (status, _) = h
        .confirm(started["uploadId"].as_str().expect("id"), 700, &sha(&body))
        .await;
    assert_eq!(status, 202, "confirm does not need Kafka");
    let ready: Value = h
        .http
        .get(format!("{}/health/ready", h.base))
        .send()
        .await
        .expect("ready")
        .json()
        .await
        .expect("json");
    assert_eq!(
        ready["status"], "ready",
        "Kafka is optional for readiness: {ready}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    tansu.lock().expect("tansu").start_again();

    let record = next_event(consumer.as_ref(), Duration::from_secs(90))
        .await
        .expect("published after Kafka came back");
    let e: contracts::ImageUploaded = record.message.decode().expect("decode");
    assert_eq!(e.object_key, started["key"].as_str().expect("key"));
    assert!(
        next_event(consumer.as_ref(), Duration::from_secs(5))
            .await
            .is_none(),
        "exactly once"
    );
    drop(h);
}
