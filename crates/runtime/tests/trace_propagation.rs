//! One trace across hops: the producer's trace id arrives with the message (Kafka, AMQP,
//! in-process) and over HTTP, and the consumer's span continues it.

use std::sync::Arc;
use std::time::Duration;

use messaging::broker::{ExchangeKind, QueueSpec};
use messaging::log::{SubscribeOptions, TopicSpec};
use messaging::{EventLog, Message, MessageBroker, Topology};
use opentelemetry::trace::{TraceContextExt, TraceId};
use runtime::telemetry::{LogFormat, TelemetryOptions};
use tracing_opentelemetry::OpenTelemetrySpanExt;

fn init() {
    runtime::telemetry::init(&TelemetryOptions {
        service: "trace-test".into(),
        log_format: LogFormat::Text,
        // Quiet logs must not switch off tracing.
        filter: "warn".into(),
        trace_filter: "info".into(),
        otlp_endpoint: None,
    });
}

fn trace_id(span: &tracing::Span) -> TraceId {
    span.in_scope(|| {
        tracing::Span::current()
            .context()
            .span()
            .span_context()
            .trace_id()
    })
}

fn event() -> contracts::AnalysisStarted {
    contracts::AnalysisStarted {
        analysis_id: Some(uuid::Uuid::new_v4()),
        upload_id: None,
        object_key: "images/2025/11/02/edb2ccee-8b5c-4f21-9d3e-1a2b3c4d5e6f.jpg".into(),
        owner: Some("user-1".into()),
        correlation_id: Some("corr-1".into()),
        started_at: None,
    }
}

/// Build a message inside a producer span; return it with the producer's trace id.
fn produced() -> (Message, TraceId) {
    let span = tracing::info_span!("producer");
    let id = trace_id(&span);
    assert_ne!(id, TraceId::INVALID, "the tracer is installed");
    let msg = span.in_scope(|| Message::from_contract(&event(), "test", "corr-1"));
    let traceparent = msg.headers.get("traceparent").expect("traceparent header");
    assert!(
        traceparent.contains(&id.to_string()),
        "{traceparent} carries {id}"
    );
    (msg, id)
}

fn continues(received: &Message, id: TraceId) {
    let consumer = tracing::info_span!("consumer");
    messaging::trace::link_span(&consumer, &received.headers);
    assert_eq!(
        trace_id(&consumer),
        id,
        "the consumer continues the producer's trace"
    );
}

async fn through_broker(broker: Arc<dyn MessageBroker>) {
    let exchange = format!("t.trace.{}", uuid::Uuid::new_v4().simple());
    let queue = format!("{exchange}.q");
    broker
        .declare(
            &Topology::new()
                .exchange(&exchange, ExchangeKind::Fanout)
                .queue(QueueSpec::durable(queue.clone()))
                .bind(&exchange, &queue, ""),
        )
        .await
        .expect("declare");
    let (msg, id) = produced();
    broker.publish(&exchange, "", &msg).await.expect("publish");
    let mut c = broker.consume(&queue, 1).await.expect("consume");
    let d = tokio::time::timeout(Duration::from_secs(30), c.next())
        .await
        .expect("in time")
        .expect("next");
    continues(&d.message, id);
    d.ack().await.expect("ack");
}

async fn through_log(log: Arc<dyn EventLog>) {
    let topic = format!("t.trace.{}", uuid::Uuid::new_v4().simple());
    log.create_topics(&[TopicSpec::new(&topic, 1)])
        .await
        .expect("create");
    let (msg, id) = produced();
    log.produce(&topic, "k", &msg).await.expect("produce");
    let c = log
        .subscribe(
            &format!("{topic}.g"),
            &[&topic],
            SubscribeOptions::default(),
        )
        .await
        .expect("subscribe");
    let r = tokio::time::timeout(Duration::from_secs(60), c.recv())
        .await
        .expect("in time")
        .expect("recv");
    continues(&r.message, id);
}

fn env(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

#[tokio::test]
async fn through_the_in_process_broker() {
    init();
    let b = messaging::memory::InProcessBroker::memory();
    through_broker(Arc::new(b.clone())).await;
    through_log(Arc::new(b)).await;
}

#[tokio::test]
async fn through_rabbitmq() {
    init();
    let url = env(
        "TU_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/tu-test",
    );
    let broker = messaging::rabbit::RabbitBroker::new(messaging::rabbit::RabbitOptions::new(
        url,
        "trace-test",
    ))
    .expect("client");
    through_broker(Arc::new(broker)).await;
}

#[tokio::test]
async fn through_kafka() {
    init();
    let brokers = env("TU_TEST_KAFKA_BROKERS", "127.0.0.1:19092");
    let log =
        messaging::kafka::KafkaLog::new(messaging::kafka::KafkaOptions::new(brokers, "trace-test"))
            .expect("client");
    through_log(Arc::new(log)).await;
}

#[tokio::test]
async fn over_http_headers() {
    init();
    let span = tracing::info_span!("caller");
    let id = trace_id(&span);
    let mut headers = http::HeaderMap::new();
    span.in_scope(|| runtime::telemetry::inject_http(&mut headers));
    assert!(headers.contains_key("traceparent"));
    let server = tracing::info_span!("server");
    runtime::telemetry::link_http(&server, &headers);
    assert_eq!(trace_id(&server), id);
}
