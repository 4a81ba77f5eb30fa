//! The orchestrator's state machine and read API on the in-process broker, with SQLite and with
//! PostgreSQL: idempotency under redelivery, RequestAnalysis ownership, late and duplicate
//! results, dead-lettering of garbage, paging.

use std::time::Duration;

use chrono::Utc;
use contracts::names::{exchanges, queues, routing_keys};
use contracts::{
    AiProvider, FailureReason, ImageUploaded, MachineAggregate, RecognitionCompleted,
    RecognitionFailed, RequestAnalysis, headers,
};
use messaging::broker::{QueueSpec, Topology};
use messaging::memory::InProcessBroker;
use messaging::{Delivery, Message, MessageBroker, QueueConsumer};
use runtime::Shutdown;
use svc_analysis_orchestrator::{Config, Deps, Settings, run};
use uuid::Uuid;

const TOKEN: &str = "orchestrator-test-token";

struct Harness {
    broker: InProcessBroker,
    base: String,
    events: Box<dyn QueueConsumer>,
    requests: Box<dyn QueueConsumer>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

async fn start(database_url: Option<String>) -> Harness {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = InProcessBroker::memory();
    let config = Config {
        settings: Settings {
            http_addr: format!("127.0.0.1:{}", testkit::free_port()),
            database_url: database_url.unwrap_or_else(|| testkit::sqlite_database(dir.path())),
            internal_auth_api_key: TOKEN.into(),
            recognition_timeout_secs: 60.0,
            ..Settings::default()
        },
        ..Config::default()
    };
    let base = format!("http://{}", config.settings.http_addr);
    let deps = Deps::connect(&config, &broker).await.expect("deps");
    let shutdown = Shutdown::new();
    let task = tokio::spawn(run(config, deps, shutdown.clone()));
    let http = reqwest::Client::new();
    testkit::wait_ready(&http, &base).await;
    broker
        .declare(
            &Topology::new()
                .queue(QueueSpec::durable("t.events"))
                .bind(exchanges::ANALYSIS_STARTED, "t.events", "")
                .bind(exchanges::ANALYSIS_COMPLETED, "t.events", "")
                .bind(exchanges::ANALYSIS_FAILED, "t.events", ""),
        )
        .await
        .expect("declare");
    let events = broker.consume("t.events", 100).await.expect("events");
    let requests = broker
        .consume(queues::BRIDGE_RECOGNITION_REQUESTS, 100)
        .await
        .expect("requests");
    Harness {
        broker,
        base,
        events,
        requests,
        shutdown,
        task,
        http,
        _dir: dir,
    }
}

impl Harness {
    async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("join").expect("clean stop");
    }

    async fn publish(&self, exchange: &str, key: &str, message: &Message) {
        self.broker
            .publish(exchange, key, message)
            .await
            .expect("publish");
    }

    /// Every delivery on `consumer` within `quiet` of the previous one.
    async fn drain(consumer: &mut Box<dyn QueueConsumer>, quiet: Duration) -> Vec<Delivery> {
        let mut out = Vec::new();
        while let Ok(Ok(d)) = tokio::time::timeout(quiet, consumer.next()).await {
            out.push(d);
        }
        out
    }

    async fn events(&mut self) -> Vec<(String, serde_json::Value)> {
        let got = Self::drain(&mut self.events, Duration::from_millis(700)).await;
        let mut out = Vec::new();
        for d in got {
            out.push((
                d.message.headers.schema().unwrap_or_default().to_owned(),
                serde_json::from_slice(&d.message.payload).expect("json"),
            ));
            d.ack().await.expect("ack");
        }
        out
    }

    async fn requests(&mut self) -> Vec<Message> {
        let got = Self::drain(&mut self.requests, Duration::from_millis(700)).await;
        let mut out = Vec::new();
        for d in got {
            out.push(d.message.clone());
            d.ack().await.expect("ack");
        }
        out
    }

    async fn get(&self, path: &str, owner: Option<&str>) -> (u16, serde_json::Value) {
        let mut req = self
            .http
            .get(format!("{}{path}", self.base))
            .header("x-internal-token", TOKEN);
        if let Some(o) = owner {
            req = req.header("x-owner", o);
        }
        let r = req.send().await.expect("get");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(serde_json::Value::Null))
    }
}

fn uploaded(owner: &str) -> ImageUploaded {
    ImageUploaded {
        upload_id: Uuid::now_v7(),
        object_key: format!("images/2026/11/22/{}.jpg", Uuid::new_v4()),
        content_type: "image/jpeg".into(),
        bytes: 1234,
        checksum: format!("sha256:{}", "ab".repeat(32)),
        occurred_at: Utc::now(),
        owner: Some(owner.into()),
    }
}

fn completed(analysis_id: Uuid, object_key: &str, confident: bool) -> RecognitionCompleted {
    RecognitionCompleted {
        analysis_id: Some(analysis_id),
        upload_id: None,
        object_key: Some(object_key.into()),
        owner: None,
        provider: AiProvider {
            name: "test".into(),
            ..AiProvider::default()
        },
        aggregate: MachineAggregate {
            brand: Some("Komatsu".into()),
            confidence: if confident { 0.8 } else { 0.2 },
            is_confident: confident,
            ..MachineAggregate::default()
        },
        text: vec![],
        timings: None,
        completed_at: Some(Utc::now()),
    }
}

fn schemas(events: &[(String, serde_json::Value)]) -> Vec<&str> {
    events.iter().map(|(s, _)| s.as_str()).collect()
}

async fn redelivered_upload_starts_one_analysis(db: Option<String>) {
    let mut h = start(db).await;
    let event = uploaded("alice");
    let message = Message::from_contract(&event, "tu-ingestion-service", "corr-1");
    h.publish(exchanges::IMAGE_UPLOADED, "", &message).await;
    h.publish(exchanges::IMAGE_UPLOADED, "", &message).await;
    // The same upload again under a new message id (ingestion confirmed twice).
    let again = Message::from_contract(&event, "tu-ingestion-service", "corr-1");
    h.publish(exchanges::IMAGE_UPLOADED, "", &again).await;

    let events = h.events().await;
    assert_eq!(schemas(&events), ["analysis.started.v1"], "{events:?}");
    let started = &events[0].1;
    assert_eq!(started["uploadId"], event.upload_id.to_string());
    assert_eq!(started["owner"], "alice");
    let requests = h.requests().await;
    assert_eq!(requests.len(), 1, "one recognition request");
    let request: contracts::RecognitionRequested = requests[0].decode().expect("request");
    assert_eq!(request.checksum.as_deref(), Some(event.checksum.as_str()));
    assert_eq!(request.bytes, Some(1234));
    assert_eq!(
        requests[0].headers.get(headers::PARTITION_KEY),
        Some(event.object_key.as_str()),
        "the bridge keys it by object"
    );
    assert_eq!(requests[0].headers.correlation_id(), Some("corr-1"));
    assert_eq!(started["analysisId"], request.analysis_id.to_string());

    // The answer arrives twice (the adapter redid it after a crash): one completion.
    for _ in 0..2 {
        let m = Message::from_contract(
            &completed(request.analysis_id, &event.object_key, false),
            "svc-ai-vision-adapter",
            "corr-1",
        );
        h.publish(exchanges::RECOGNITION_COMPLETED, "", &m).await;
    }
    let events = h.events().await;
    assert_eq!(schemas(&events), ["analysis.completed.v1"], "{events:?}");
    assert_eq!(
        events[0].1["success"], false,
        "an unconfident result is not a success"
    );
    assert_eq!(
        events[0].1["recognitionPayload"]["aggregate"]["brand"],
        "Komatsu"
    );
    // A failure after the completion (the two queues are independent) changes nothing.
    let late = RecognitionFailed {
        analysis_id: Some(request.analysis_id),
        upload_id: None,
        object_key: event.object_key.clone(),
        owner: None,
        reason: FailureReason::EngineError,
        message: "late".into(),
        failed_at: Utc::now(),
    };
    h.publish(
        exchanges::RECOGNITION_FAILED,
        "",
        &Message::from_contract(&late, "svc-ai-vision-adapter", "corr-1"),
    )
    .await;
    assert!(
        h.events().await.is_empty(),
        "a late failure after completion is dropped"
    );

    let (status, body) = h
        .get(
            &format!("/v1/analyses/{}", request.analysis_id),
            Some("alice"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(body["status"], "completed");
    assert_eq!(body["success"], false);
    for field in ["requestedAt", "startedAt", "completedAt"] {
        assert!(body[field].is_string(), "{field} recorded: {body}");
    }
    h.stop().await;
}

async fn request_analysis_needs_the_owners_object(db: Option<String>) {
    let mut h = start(db).await;
    let event = uploaded("alice");
    h.publish(
        exchanges::IMAGE_UPLOADED,
        "",
        &Message::from_contract(&event, "tu-ingestion-service", "c-up"),
    )
    .await;
    let _ = h.events().await;
    let _ = h.requests().await;

    let mine = Uuid::now_v7();
    let command = |owner: &str, id: Uuid, key: &str| RequestAnalysis {
        correlation_id: format!("c-{owner}"),
        object_key: key.into(),
        analysis_id: Some(id),
        owner: Some(owner.into()),
        requested_at: Some(Utc::now()),
    };
    let again = Message::from_contract(
        &command("alice", mine, &event.object_key),
        "graph-gateway",
        "c-alice",
    );
    h.publish(
        exchanges::ANALYSIS_COMMANDS,
        routing_keys::REQUEST_ANALYSIS,
        &again,
    )
    .await;
    h.publish(
        exchanges::ANALYSIS_COMMANDS,
        routing_keys::REQUEST_ANALYSIS,
        &again,
    )
    .await;
    let events = h.events().await;
    assert_eq!(schemas(&events), ["analysis.started.v1"], "{events:?}");
    assert_eq!(events[0].1["analysisId"], mine.to_string());
    let requests = h.requests().await;
    assert_eq!(requests.len(), 1);
    let request: contracts::RecognitionRequested = requests[0].decode().expect("request");
    assert_eq!(request.analysis_id, mine);
    assert_eq!(
        request.checksum.as_deref(),
        Some(event.checksum.as_str()),
        "the new analysis verifies against the upload's checksum"
    );

    // Mallory asks for Alice's object; and someone asks for an object that never existed.
    let theirs = Uuid::now_v7();
    let missing = Uuid::now_v7();
    for (owner, id, key) in [
        ("mallory", theirs, event.object_key.as_str()),
        ("alice", missing, "images/2026/01/01/nothing.jpg"),
    ] {
        h.publish(
            exchanges::ANALYSIS_COMMANDS,
            routing_keys::REQUEST_ANALYSIS,
            &Message::from_contract(&command(owner, id, key), "graph-gateway", "c"),
        )
        .await;
    }
    let events = h.events().await;
    assert_eq!(
        schemas(&events),
        ["analysis.failed.v1", "analysis.failed.v1"],
        "{events:?}"
    );
    for (_, e) in &events {
        assert_eq!(e["reason"], "not_found");
    }
    assert!(h.requests().await.is_empty(), "nothing to recognise");
    let (status, _) = h
        .get(&format!("/v1/analyses/{theirs}"), Some("alice"))
        .await;
    assert_eq!(status, 404, "mallory's failed request is not alice's");
    h.stop().await;
}

async fn garbage_is_dead_lettered_with_a_reason(db: Option<String>) {
    let h = start(db).await;
    let mut dlq = h
        .broker
        .consume(
            &queues::dead_letter(queues::ORCHESTRATOR_IMAGE_UPLOADED),
            10,
        )
        .await
        .expect("dlq");
    h.publish(
        exchanges::IMAGE_UPLOADED,
        "",
        &Message::new("{not json").with_header(headers::SCHEMA, "image.uploaded.v1"),
    )
    .await;
    let d = tokio::time::timeout(Duration::from_secs(10), dlq.next())
        .await
        .expect("dead-lettered in time")
        .expect("next");
    let reason = d
        .message
        .headers
        .get(headers::DEAD_LETTER_REASON)
        .unwrap_or_default();
    assert!(reason.contains("not a valid ImageUploaded"), "{reason}");
    // A result for an analysis nobody started goes the same way.
    let mut dlq2 = h
        .broker
        .consume(
            &queues::dead_letter(queues::ORCHESTRATOR_RECOGNITION_COMPLETED),
            10,
        )
        .await
        .expect("dlq");
    h.publish(
        exchanges::RECOGNITION_COMPLETED,
        "",
        &Message::from_contract(&completed(Uuid::now_v7(), "images/x.jpg", true), "t", "c"),
    )
    .await;
    let d = tokio::time::timeout(Duration::from_secs(10), dlq2.next())
        .await
        .expect("dead-lettered in time")
        .expect("next");
    assert!(
        d.message
            .headers
            .get(headers::DEAD_LETTER_REASON)
            .is_some_and(|r| r.contains("no analysis")),
        "{:?}",
        d.message.headers
    );
    h.stop().await;
}

async fn lists_page_newest_first_per_owner(db: Option<String>) {
    let mut h = start(db).await;
    let mut uploads = Vec::new();
    for _ in 0..5 {
        let e = uploaded("alice");
        h.publish(
            exchanges::IMAGE_UPLOADED,
            "",
            &Message::from_contract(&e, "tu-ingestion-service", "c"),
        )
        .await;
        uploads.push(e);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    h.publish(
        exchanges::IMAGE_UPLOADED,
        "",
        &Message::from_contract(&uploaded("bob"), "tu-ingestion-service", "c"),
    )
    .await;
    assert_eq!(h.events().await.len(), 6);

    let mut seen = Vec::new();
    let mut path = "/v1/analyses?first=2".to_owned();
    loop {
        let (status, page) = h.get(&path, Some("alice")).await;
        assert_eq!(status, 200, "{page}");
        let items = page["items"].as_array().expect("items");
        assert!(items.len() <= 2);
        seen.extend(
            items
                .iter()
                .map(|i| i["uploadId"].as_str().unwrap_or_default().to_owned()),
        );
        match page["nextCursor"].as_str() {
            Some(c) => path = format!("/v1/analyses?first=2&after={c}"),
            None => break,
        }
    }
    let newest_first: Vec<String> = uploads
        .iter()
        .rev()
        .map(|u| u.upload_id.to_string())
        .collect();
    assert_eq!(
        seen, newest_first,
        "all of alice's, newest first, none twice, none of bob's"
    );

    let (status, page) = h
        .get(
            &format!("/v1/analyses?uploadId={}", uploads[0].upload_id),
            Some("alice"),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(page["items"].as_array().map(Vec::len), Some(1));
    for bad in [
        "/v1/analyses?first=0",
        "/v1/analyses?first=101",
        "/v1/analyses?after=%25%25",
    ] {
        let (status, body) = h.get(bad, Some("alice")).await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert!(body["detail"].is_string(), "problem body: {body}");
    }
    let (status, _) = h.get("/v1/analyses", None).await;
    assert_eq!(status, 400, "a listing needs an owner or an upload");
    let r = h
        .http
        .get(format!("{}/v1/analyses?first=1", h.base))
        .header("x-owner", "alice")
        .send()
        .await
        .expect("get");
    assert_eq!(r.status(), 401, "no internal token");
    h.stop().await;
}

macro_rules! suite {
    ($name:ident, $db:expr) => {
        mod $name {
            #[tokio::test]
            async fn redelivered_upload_starts_one_analysis() {
                super::redelivered_upload_starts_one_analysis($db).await;
            }
            #[tokio::test]
            async fn request_analysis_needs_the_owners_object() {
                super::request_analysis_needs_the_owners_object($db).await;
            }
            #[tokio::test]
            async fn garbage_is_dead_lettered_with_a_reason() {
                super::garbage_is_dead_lettered_with_a_reason($db).await;
            }
            #[tokio::test]
            async fn lists_page_newest_first_per_owner() {
                super::lists_page_newest_first_per_owner($db).await;
            }
        }
    };
}

suite!(sqlite, None);
suite!(postgres, Some(testkit::postgres_database().await));

#[tokio::test]
async fn timeout_fails_an_unanswered_analysis_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = InProcessBroker::memory();
    let config = Config {
        settings: Settings {
            http_addr: format!("127.0.0.1:{}", testkit::free_port()),
            database_url: testkit::sqlite_database(dir.path()),
            internal_auth_api_key: TOKEN.into(),
            recognition_timeout_secs: 0.5,
            ..Settings::default()
        },
        ..Config::default()
    };
    let base = format!("http://{}", config.settings.http_addr);
    let deps = Deps::connect(&config, &broker).await.expect("deps");
    let shutdown = Shutdown::new();
    let task = tokio::spawn(run(config, deps, shutdown.clone()));
    testkit::wait_ready(&reqwest::Client::new(), &base).await;
    broker
        .declare(&Topology::new().queue(QueueSpec::durable("t.failed")).bind(
            exchanges::ANALYSIS_FAILED,
            "t.failed",
            "",
        ))
        .await
        .expect("declare");
    let mut failed = broker.consume("t.failed", 10).await.expect("consume");
    let event = uploaded("alice");
    broker
        .publish(
            exchanges::IMAGE_UPLOADED,
            "",
            &Message::from_contract(&event, "tu-ingestion-service", "c"),
        )
        .await
        .expect("publish");
    let d = tokio::time::timeout(Duration::from_secs(10), failed.next())
        .await
        .expect("timed out in time")
        .expect("next");
    let body: serde_json::Value = serde_json::from_slice(&d.message.payload).expect("json");
    assert_eq!(body["reason"], "timeout");
    assert_eq!(body["objectKey"], event.object_key.as_str());
    d.ack().await.expect("ack");
    assert!(
        tokio::time::timeout(Duration::from_secs(2), failed.next())
            .await
            .is_err(),
        "one failure only"
    );
    shutdown.trigger();
    task.await.expect("join").expect("stop");
}
