//! The bridge over the in-process broker and over real RabbitMQ + tansu: both directions keep
//! order per partition/key and carry the header set; a record no queue would receive goes to
//! `<topic>.dlq` with the reason and does not hold back the others.

use std::sync::Arc;
use std::time::Duration;

use contracts::headers;
use contracts::names::{Topics, exchanges, routing_keys};
use messaging::broker::{ExchangeKind, QueueSpec, Topology};
use messaging::config::MessagingConfig;
use messaging::log::SubscribeOptions;
use messaging::memory::InProcessBroker;
use messaging::{EventLog, Message, MessageBroker};
use runtime::Shutdown;
use svc_messaging_bridge::{Config, Deps, Settings, run};

struct Setup {
    messaging: MessagingConfig,
    topics: Topics,
    suffix: String,
    _vhost: Option<testkit::RabbitVhost>,
}

fn in_process() -> Setup {
    Setup {
        messaging: MessagingConfig::default(),
        topics: Topics::default(),
        suffix: String::new(),
        _vhost: None,
    }
}

fn real() -> Setup {
    let vhost = testkit::RabbitVhost::create();
    let unique = testkit::unique("br");
    let t = |n: &str| format!("{unique}.{n}");
    Setup {
        messaging: MessagingConfig {
            kafka_brokers: testkit::kafka_brokers(),
            rabbit_url: vhost.url(),
            ..MessagingConfig::default()
        },
        topics: Topics {
            topic_image_uploaded: t("image.uploaded"),
            topic_recognition_requested: t("recognition.requested"),
            topic_recognition_completed: t("recognition.completed"),
            topic_recognition_failed: t("recognition.failed"),
        },
        suffix: format!(".{unique}"),
        _vhost: Some(vhost),
    }
}

struct Running {
    base: String,
    log: Arc<dyn EventLog>,
    broker: Arc<dyn MessageBroker>,
    shutdown: Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

async fn start(setup: &Setup, routes: &str) -> Running {
    let in_process = InProcessBroker::memory();
    let config = Config {
        settings: Settings {
            http_addr: format!("127.0.0.1:{}", testkit::free_port()),
            bridge_routes: routes.into(),
            consumer_group: format!("svc-messaging-bridge{}", setup.suffix),
            ..Settings::default()
        },
        messaging: setup.messaging.clone(),
        topics: setup.topics.clone(),
    };
    let base = format!("http://{}", config.settings.http_addr);
    let deps = Deps::connect(&config, &in_process).expect("deps");
    let log = deps.log.clone();
    let broker = deps.broker.clone();
    let shutdown = Shutdown::new();
    let task = tokio::spawn(run(config, deps, shutdown.clone()));
    testkit::wait_ready(&reqwest::Client::new(), &base).await;
    Running {
        base,
        log,
        broker,
        shutdown,
        task,
    }
}

impl Running {
    async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.base))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    async fn stop(self) {
        self.shutdown.trigger();
        self.task.await.expect("join").expect("clean stop");
    }
}

fn message(n: usize, correlation: &str) -> Message {
    Message::new(format!(r#"{{"n":{n}}}"#))
        .with_header(headers::MESSAGE_ID, format!("m-{correlation}-{n}"))
        .with_header(headers::CORRELATION_ID, correlation)
        .with_header(headers::SCHEMA, "image.uploaded.v1")
        .with_header(headers::PRODUCER, "tu-ingestion-service")
        .with_header(
            headers::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
}

const N: usize = 60;

async fn both_directions_keep_order_and_headers(setup: Setup) {
    let r = start(&setup, "").await;
    r.broker
        .declare(
            &Topology::new()
                .queue(QueueSpec::durable("t.uploaded"))
                .bind(exchanges::IMAGE_UPLOADED, "t.uploaded", ""),
        )
        .await
        .expect("declare");
    let mut uploaded = r.broker.consume("t.uploaded", 200).await.expect("consume");

    // Kafka → RabbitMQ: two keys interleaved; each key's order must hold.
    for n in 0..N {
        let key = if n.is_multiple_of(2) {
            "images/a.jpg"
        } else {
            "images/b.jpg"
        };
        r.log
            .produce(&setup.topics.topic_image_uploaded, key, &message(n, "k2r"))
            .await
            .expect("produce");
    }
    // One without any message id (as the original .NET ingestion sent): it gets a stable one.
    r.log
        .produce(
            &setup.topics.topic_image_uploaded,
            "images/c.jpg",
            &Message::new(r#"{"n":"bare"}"#),
        )
        .await
        .expect("produce");
    let mut per_key: std::collections::HashMap<bool, Vec<usize>> = Default::default();
    let mut bare_id = None;
    for _ in 0..=N {
        let d = tokio::time::timeout(Duration::from_secs(30), uploaded.next())
            .await
            .expect("forwarded in time")
            .expect("next");
        let body: serde_json::Value = serde_json::from_slice(&d.message.payload).expect("json");
        match body["n"].as_u64() {
            Some(n) => {
                let n = n as usize;
                let h = &d.message.headers;
                assert_eq!(h.message_id(), Some(format!("m-k2r-{n}").as_str()));
                assert_eq!(h.correlation_id(), Some("k2r"));
                assert_eq!(h.schema(), Some("image.uploaded.v1"));
                assert_eq!(h.producer(), Some("tu-ingestion-service"));
                assert_eq!(
                    h.get(headers::TRACEPARENT),
                    Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
                );
                per_key.entry(n.is_multiple_of(2)).or_default().push(n);
            }
            None => bare_id = d.message.headers.message_id().map(str::to_owned),
        }
        d.ack().await.expect("ack");
    }
    for (_, ns) in per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "order per key");
        assert_eq!(ns.len(), N / 2, "none lost, none doubled");
    }
    assert_eq!(
        bare_id,
        Some(Message::new(r#"{"n":"bare"}"#).dedupe_id()),
        "a message without an id gets the payload-derived one"
    );

    // RabbitMQ → Kafka, keyed by x-partition-key.
    let consumer = r
        .log
        .subscribe(
            &testkit::unique("reader"),
            &[setup.topics.topic_recognition_requested.as_str()],
            SubscribeOptions::default(),
        )
        .await
        .expect("subscribe");
    for n in 0..N {
        let key = if n.is_multiple_of(3) {
            "images/x.jpg"
        } else {
            "images/y.jpg"
        };
        r.broker
            .publish(
                exchanges::ANALYSIS_COMMANDS,
                routing_keys::RECOGNITION_REQUEST,
                &message(n, "r2k").with_header(headers::PARTITION_KEY, key),
            )
            .await
            .expect("publish");
    }
    let mut per_key: std::collections::HashMap<String, Vec<usize>> = Default::default();
    for _ in 0..N {
        let record = tokio::time::timeout(Duration::from_secs(30), consumer.recv())
            .await
            .expect("forwarded in time")
            .expect("recv");
        let body: serde_json::Value =
            serde_json::from_slice(&record.message.payload).expect("json");
        let n = body["n"].as_u64().expect("n") as usize;
        let expected_key = if n.is_multiple_of(3) {
            "images/x.jpg"
        } else {
            "images/y.jpg"
        };
        assert_eq!(
            record.key.as_deref(),
            Some(expected_key),
            "Kafka key = x-partition-key"
        );
        assert_eq!(
            record.message.headers.message_id(),
            Some(format!("m-r2k-{n}").as_str())
        );
        assert_eq!(record.message.headers.correlation_id(), Some("r2k"));
        assert!(record.message.headers.get(headers::TRACEPARENT).is_some());
        per_key.entry(expected_key.to_owned()).or_default().push(n);
    }
    for (key, ns) in per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "order of {key}");
    }
    let metrics = r.metrics().await;
    for name in [
        "bridge_forwarded_total",
        "bridge_in_flight",
        "bridge_lag_seconds",
        "bridge_forward_seconds",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics");
    }
    let forwarded = |route: &str| {
        metrics
            .lines()
            .find(|l| l.starts_with("bridge_forwarded_total") && l.contains(route))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    let to_rabbit = format!("kafka:{}->rabbit:", setup.topics.topic_image_uploaded);
    assert!(
        forwarded(&to_rabbit) >= (N + 1) as f64,
        "forwarded count of {to_rabbit}: {metrics}"
    );
    r.stop().await;
}

async fn unroutable_goes_to_the_dlq_with_the_reason(setup: Setup) {
    let unique = testkit::unique("dl");
    let (lost, fine) = (format!("{unique}.lost"), format!("{unique}.fine"));
    let (nowhere, somewhere) = (format!("{unique}.nowhere"), format!("{unique}.somewhere"));
    let routes = format!("kafka:{lost} -> rabbit:{nowhere}; kafka:{fine} -> rabbit:{somewhere}");
    // The exchanges exist; only `somewhere` has a queue.
    let probe = InProcessBroker::memory();
    let broker = setup
        .messaging
        .message_broker("test", &probe)
        .expect("broker");
    broker
        .declare(
            &Topology::new()
                .exchange(nowhere.clone(), ExchangeKind::Fanout)
                .exchange(somewhere.clone(), ExchangeKind::Fanout),
        )
        .await
        .expect("declare");
    let log = setup.messaging.event_log("test", &probe).expect("log");
    log.create_topics(&[
        messaging::log::TopicSpec::new(lost.clone(), 1),
        messaging::log::TopicSpec::new(fine.clone(), 1),
        // Created up front so the reader below sees it from the start.
        messaging::log::TopicSpec::new(format!("{lost}.dlq"), 1),
    ])
    .await
    .expect("topics");
    let is_in_process = setup.messaging.kafka_brokers.is_empty();
    let r = if is_in_process {
        // One in-process broker for the test and the bridge.
        let config = Config {
            settings: Settings {
                http_addr: format!("127.0.0.1:{}", testkit::free_port()),
                bridge_routes: routes.clone(),
                ..Settings::default()
            },
            ..Config::default()
        };
        let base = format!("http://{}", config.settings.http_addr);
        let deps = Deps::connect(&config, &probe).expect("deps");
        let shutdown = Shutdown::new();
        let task = tokio::spawn(run(config, deps, shutdown.clone()));
        testkit::wait_ready(&reqwest::Client::new(), &base).await;
        Running {
            base,
            log: log.clone(),
            broker: broker.clone(),
            shutdown,
            task,
        }
    } else {
        start(&setup, &routes).await
    };
    r.broker
        .declare(
            &Topology::new()
                .queue(QueueSpec::durable(format!("{unique}.q")))
                .bind(&somewhere, &format!("{unique}.q"), ""),
        )
        .await
        .expect("declare");
    let mut fine_queue = r
        .broker
        .consume(&format!("{unique}.q"), 10)
        .await
        .expect("consume");
    let dlq = r
        .log
        .subscribe(
            &testkit::unique("dlq-reader"),
            &[format!("{lost}.dlq").as_str()],
            SubscribeOptions::default(),
        )
        .await
        .expect("subscribe dlq");
    r.log
        .produce(&lost, "k", &message(1, "lost"))
        .await
        .expect("produce");
    r.log
        .produce(&fine, "k", &message(2, "fine"))
        .await
        .expect("produce");
    let d = tokio::time::timeout(Duration::from_secs(30), fine_queue.next())
        .await
        .expect("the routable one arrives")
        .expect("next");
    assert_eq!(d.message.headers.correlation_id(), Some("fine"));
    d.ack().await.expect("ack");
    let dead = tokio::time::timeout(Duration::from_secs(60), dlq.recv())
        .await
        .expect("dead-lettered in time")
        .expect("recv");
    assert_eq!(dead.message.headers.correlation_id(), Some("lost"));
    let reason = dead
        .message
        .headers
        .get(headers::DEAD_LETTER_REASON)
        .unwrap_or_default();
    assert!(
        reason.contains("unroutable") && reason.contains(&nowhere),
        "{reason}"
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_both_directions_keep_order_and_headers() {
    both_directions_keep_order_and_headers(in_process()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_brokers_both_directions_keep_order_and_headers() {
    both_directions_keep_order_and_headers(real()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_unroutable_goes_to_the_dlq_with_the_reason() {
    unroutable_goes_to_the_dlq_with_the_reason(in_process()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_brokers_unroutable_goes_to_the_dlq_with_the_reason() {
    unroutable_goes_to_the_dlq_with_the_reason(real()).await;
}
