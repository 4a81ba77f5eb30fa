//! Fault tests of the analysis path over real RabbitMQ + tansu + Garage + PostgreSQL, with every
//! service a process of its own (`trackunit up --only <service>`, what a container runs): 200
//! analyses in flight while a service is killed with SIGKILL and started again, or while every
//! `ImageUploaded` is delivered twice. At the end every analysis has exactly one
//! `AnalysisStarted` and exactly one `AnalysisCompleted` — counted by message id, as consumers
//! dedupe (a copy republished after a crash carries the same id) — and nothing is lost.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use contracts::names::{Topics, exchanges};
use contracts::{ImageUploaded, headers};
use messaging::broker::{QueueSpec, Topology};
use messaging::config::MessagingConfig;
use messaging::memory::InProcessBroker;
use messaging::{EventLog, Message, MessageBroker, QueueConsumer};
use objectstore::ObjectStore;
use uuid::Uuid;

const ANALYSES: usize = 200;
const TOKEN: &str = "faults-test-token";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill(&'static str),
    DuplicateDeliveries,
    /// `stop_app`/`start_app` of the RabbitMQ node the services use (the faults node).
    RestartRabbitMq,
    /// kill -9 and restart of the Kafka broker (a tansu of this test's own, on SQLite storage).
    RestartTansu,
}

struct Service {
    name: &'static str,
    env: Vec<(String, String)>,
    child: Option<Child>,
    log: PathBuf,
    base: String,
}

impl Service {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("log file");
        let child = Command::new(env!("CARGO_BIN_EXE_trackunit"))
            .args(["up", "--only", self.name])
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start trackunit up --only");
        self.child = Some(child);
    }

    fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.kill9();
    }
}

struct Rig {
    services: Vec<Service>,
    log: Arc<dyn EventLog>,
    events: Box<dyn QueueConsumer>,
    topics: Topics,
    key: String,
    bytes_len: usize,
    checksum: String,
    dir: tempfile::TempDir,
    tansu: Option<Arc<std::sync::Mutex<testkit::OwnTansu>>>,
    _vhost: testkit::RabbitVhost,
    _broker: Arc<dyn MessageBroker>,
}

async fn rig(fault: Fault) -> Rig {
    let dir = tempfile::tempdir().expect("tempdir");
    let vhost = if fault == Fault::RestartRabbitMq {
        testkit::RabbitVhost::create_on_faults_node()
    } else {
        testkit::RabbitVhost::create()
    };
    let tansu = (fault == Fault::RestartTansu)
        .then(|| Arc::new(std::sync::Mutex::new(testkit::OwnTansu::start())));
    let unique = testkit::unique("faults");
    let topics = Topics {
        topic_image_uploaded: format!("{unique}.image.uploaded"),
        topic_recognition_requested: format!("{unique}.recognition.requested"),
        topic_recognition_completed: format!("{unique}.recognition.completed"),
        topic_recognition_failed: format!("{unique}.recognition.failed"),
    };
    let s3 = testkit::garage_s3();
    let database_url = testkit::postgres_database().await;
    let messaging = MessagingConfig {
        kafka_brokers: match &tansu {
            Some(t) => t.lock().expect("tansu").brokers(),
            None => testkit::kafka_brokers(),
        },
        rabbit_url: vhost.url(),
        ..MessagingConfig::default()
    };
    let port = |_: &str| testkit::free_port();
    let media_port = port("media");
    let common: Vec<(String, String)> = vec![
        ("KAFKA_BROKERS".into(), messaging.kafka_brokers.clone()),
        ("RABBIT_URL".into(), messaging.rabbit_url.clone()),
        ("S3_ENDPOINT".into(), s3.s3_endpoint.clone()),
        ("S3_REGION".into(), s3.s3_region.clone()),
        ("S3_BUCKET".into(), s3.s3_bucket.clone()),
        ("S3_ACCESS_KEY".into(), s3.s3_access_key.clone()),
        ("S3_SECRET_KEY".into(), s3.s3_secret_key.clone()),
        ("INTERNAL_AUTH_API_KEY".into(), TOKEN.into()),
        (
            "TOPIC_IMAGE_UPLOADED".into(),
            topics.topic_image_uploaded.clone(),
        ),
        (
            "TOPIC_RECOGNITION_REQUESTED".into(),
            topics.topic_recognition_requested.clone(),
        ),
        (
            "TOPIC_RECOGNITION_COMPLETED".into(),
            topics.topic_recognition_completed.clone(),
        ),
        (
            "TOPIC_RECOGNITION_FAILED".into(),
            topics.topic_recognition_failed.clone(),
        ),
        ("DATABASE_URL".into(), database_url),
        ("RECOGNITION_TIMEOUT_SECS".into(), "300".into()),
        ("LOG_FORMAT".into(), "text".into()),
        (
            "RUST_LOG".into(),
            std::env::var("TU_FAULTS_LOG").unwrap_or_else(|_| "warn".into()),
        ),
    ];
    let mut services = Vec::new();
    for (name, extra) in [
        ("tu-media-access-service", vec![]),
        ("svc-analysis-orchestrator", vec![]),
        (
            "svc-messaging-bridge",
            vec![("CONSUMER_GROUP", format!("bridge.{unique}"))],
        ),
        (
            "svc-ai-vision-adapter",
            vec![
                ("CONSUMER_GROUP", format!("adapter.{unique}")),
                ("MEDIA_ACCESS_URL", format!("http://127.0.0.1:{media_port}")),
            ],
        ),
    ] {
        let http_port = if name == "tu-media-access-service" {
            media_port
        } else {
            port(name)
        };
        let data_dir = dir.path().join(name);
        let mut env = common.clone();
        env.push(("HTTP_ADDR".into(), format!("127.0.0.1:{http_port}")));
        env.push((
            "TRACKUNIT_DATA_DIR".into(),
            data_dir.to_string_lossy().into_owned(),
        ));
        env.extend(extra.into_iter().map(|(k, v)| (k.to_owned(), v)));
        let mut s = Service {
            name,
            env,
            child: None,
            log: dir.path().join(format!("{name}.log")),
            base: format!("http://127.0.0.1:{http_port}"),
        };
        s.spawn();
        services.push(s);
    }
    let http = reqwest::Client::new();
    for s in &services {
        wait_ready(&http, s, Duration::from_secs(60)).await;
    }

    let probe = InProcessBroker::memory();
    let log = messaging.event_log("test", &probe).expect("log");
    let broker = messaging.message_broker("test", &probe).expect("broker");
    let queue = testkit::unique("events");
    broker
        .declare(
            &Topology::new()
                // Durable, so it outlives a RabbitMQ restart with what it holds.
                .queue(QueueSpec::durable(queue.clone()))
                .bind(exchanges::ANALYSIS_STARTED, &queue, "")
                .bind(exchanges::ANALYSIS_COMPLETED, &queue, "")
                .bind(exchanges::ANALYSIS_FAILED, &queue, ""),
        )
        .await
        .expect("declare");
    let events = broker.consume(&queue, 500).await.expect("consume");

    let img = image::RgbImage::from_fn(48, 32, |x, y| image::Rgb([x as u8 * 5, y as u8 * 7, 90]));
    let mut png = std::io::Cursor::new(Vec::new());
    img.write_to(&mut png, image::ImageFormat::Png)
        .expect("png");
    let bytes = bytes::Bytes::from(png.into_inner());
    let key = format!("images/2026/11/22/{}.png", Uuid::new_v4());
    ObjectStore::new(&s3)
        .expect("store")
        .put(&key, bytes.clone(), "image/png")
        .await
        .expect("put");
    Rig {
        services,
        log,
        events,
        topics,
        key,
        bytes_len: bytes.len(),
        checksum: testkit::sha256_checksum(&bytes),
        dir,
        tansu,
        _vhost: vhost,
        _broker: broker,
    }
}

async fn wait_ready(http: &reqwest::Client, s: &Service, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        if let Ok(r) = http.get(format!("{}/health/ready", s.base)).send().await
            && r.status() == 200
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} not ready; its log:\n{}",
            s.name,
            tail(&s.log)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

#[derive(Default, Debug)]
struct Seen {
    started: HashSet<String>,
    completed: HashSet<String>,
    failed: HashSet<String>,
    copies: usize,
}

async fn run(fault: Fault) {
    let mut rig = rig(fault).await;
    let mut uploads = Vec::new();
    for n in 0..ANALYSES {
        let event = ImageUploaded {
            upload_id: Uuid::now_v7(),
            object_key: rig.key.clone(),
            content_type: "image/png".into(),
            bytes: rig.bytes_len as i64,
            checksum: rig.checksum.clone(),
            occurred_at: Utc::now(),
            owner: Some("alice".into()),
        };
        let message =
            Message::from_contract(&event, "tu-ingestion-service", &format!("faults-{n}"));
        let copies = if fault == Fault::DuplicateDeliveries {
            2
        } else {
            1
        };
        for _ in 0..copies {
            rig.log
                .produce(&rig.topics.topic_image_uploaded, &format!("k{n}"), &message)
                .await
                .expect("produce");
        }
        uploads.push(event.upload_id.to_string());
    }

    let mut seen: HashMap<String, Seen> = HashMap::new();
    let mut faulted = false;
    let deadline = Instant::now()
        + Duration::from_secs(
            std::env::var("TU_FAULTS_DEADLINE")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(240),
        );
    let mut quiet_until: Option<Instant> = None;
    loop {
        let finished = seen
            .values()
            .filter(|s| !s.completed.is_empty() || !s.failed.is_empty())
            .count();
        // Strike once a quarter of the analyses are through: the rest are in flight somewhere.
        if !faulted && finished >= ANALYSES / 4 {
            faulted = true;
            match fault {
                Fault::Kill(name) => {
                    let s = rig
                        .services
                        .iter_mut()
                        .find(|s| s.name == name)
                        .expect("service");
                    s.kill9();
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    s.spawn();
                }
                Fault::RestartRabbitMq => tokio::task::spawn_blocking(|| {
                    testkit::restart_rabbit_faults_node(Duration::from_secs(2))
                })
                .await
                .expect("restart"),
                Fault::RestartTansu => {
                    let tansu = rig.tansu.clone().expect("own tansu");
                    tokio::task::spawn_blocking(move || {
                        tansu
                            .lock()
                            .expect("tansu")
                            .kill_and_restart(Duration::from_secs(2))
                    })
                    .await
                    .expect("restart")
                }
                Fault::DuplicateDeliveries => {}
            }
        }
        if finished == ANALYSES && quiet_until.is_none() {
            // Everything ended; anything still coming now would be a duplicate.
            quiet_until = Some(Instant::now() + Duration::from_secs(4));
        }
        if quiet_until.is_some_and(|q| Instant::now() > q) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{fault:?}: only {finished} of {ANALYSES} analyses ended; logs in {}:\n{}",
            rig.dir.path().display(),
            rig.services
                .iter()
                .map(|s| format!("--- {}\n{}", s.name, tail(&s.log)))
                .collect::<Vec<_>>()
                .join("\n")
        );
        let Ok(Ok(d)) = tokio::time::timeout(Duration::from_millis(250), rig.events.next()).await
        else {
            continue;
        };
        let body: serde_json::Value = serde_json::from_slice(&d.message.payload).expect("json");
        let upload = body["uploadId"].as_str().unwrap_or_default().to_owned();
        let id = d
            .message
            .headers
            .message_id()
            .unwrap_or_default()
            .to_owned();
        let entry = seen.entry(upload).or_default();
        entry.copies += 1;
        match d.message.headers.schema() {
            Some("analysis.started.v1") => entry.started.insert(id),
            Some("analysis.completed.v1") => entry.completed.insert(id),
            Some("analysis.failed.v1") => entry.failed.insert(format!("{id} {}", body["reason"])),
            other => panic!("unexpected {other:?}"),
        };
        assert!(
            d.message.headers.get(headers::CORRELATION_ID).is_some(),
            "correlation id carried"
        );
        // An ack lost in a broker restart means a redelivery: counted above as a copy.
        let _ = d.ack().await;
    }

    assert!(faulted, "the fault was injected");
    let mut copies = 0;
    for upload in &uploads {
        let s = seen
            .get(upload)
            .unwrap_or_else(|| panic!("{fault:?}: analysis of upload {upload} lost"));
        assert_eq!(s.started.len(), 1, "{fault:?}: one AnalysisStarted: {s:?}");
        assert_eq!(
            s.completed.len(),
            1,
            "{fault:?}: one AnalysisCompleted: {s:?}"
        );
        assert!(s.failed.is_empty(), "{fault:?}: nothing failed: {s:?}");
        copies += s.copies - 2;
    }
    assert_eq!(
        seen.len(),
        ANALYSES,
        "{fault:?}: no analysis of unknown origin"
    );
    eprintln!("{fault:?}: {ANALYSES} analyses, {copies} redelivered copies (same message id)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_kill_the_bridge() {
    run(Fault::Kill("svc-messaging-bridge")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_kill_the_orchestrator() {
    run(Fault::Kill("svc-analysis-orchestrator")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_kill_the_vision_adapter() {
    run(Fault::Kill("svc-ai-vision-adapter")).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_restart_rabbitmq() {
    run(Fault::RestartRabbitMq).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_restart_tansu() {
    run(Fault::RestartTansu).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn faults_duplicate_deliveries() {
    run(Fault::DuplicateDeliveries).await;
}
