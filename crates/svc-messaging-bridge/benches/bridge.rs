//! The bridge's Kafka → RabbitMQ forwarding rate beside what its two halves can do alone,
//! measured in the same run: a raw Kafka consumer reading the same records, and raw RabbitMQ
//! publishes with confirms (4 concurrent publishers, as the bridge forwards 4 partitions).
//!
//!   cargo bench -p svc-messaging-bridge --bench bridge        # real brokers need test-infra
//!   TU_BENCH_ONLY=in-process cargo bench -p svc-messaging-bridge --bench bridge

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use messaging::broker::{ExchangeKind, QueueSpec, Topology};
use messaging::config::MessagingConfig;
use messaging::log::{SubscribeOptions, TopicSpec};
use messaging::memory::InProcessBroker;
use messaging::{EventLog, Message, MessageBroker};
use runtime::Shutdown;

const M: usize = 20_000;
const PARTITIONS: i32 = 4;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let only = std::env::var("TU_BENCH_ONLY").unwrap_or_default();
        println!("{M} records over {PARTITIONS} partitions, messages/s");
        println!(
            "{:<12} {:>16} {:>22} {:>16} {:>8}",
            "backend", "Kafka consume", "Rabbit publish+confirm", "bridge forward", "ratio"
        );
        if only.is_empty() || only == "in-process" {
            measure("in-process", MessagingConfig::default(), None).await;
        }
        if only.is_empty() || only == "real" {
            let vhost = testkit::RabbitVhost::create();
            let config = MessagingConfig {
                kafka_brokers: testkit::kafka_brokers(),
                rabbit_url: vhost.url(),
                ..MessagingConfig::default()
            };
            measure("real", config, Some(vhost)).await;
        }
    });
    Ok(())
}

fn record(n: usize) -> Message {
    Message::new(format!(
        r#"{{"n":{n},"objectKey":"images/2026/11/22/{n}.jpg"}}"#
    ))
    .with_header("x-message-id", format!("m-{n}"))
    .with_header("x-correlation-id", "bench")
    .with_header("x-schema", "image.uploaded.v1")
    .with_header("x-producer", "bench")
}

async fn measure(name: &str, config: MessagingConfig, _vhost: Option<testkit::RabbitVhost>) {
    let in_process = InProcessBroker::memory();
    let log: Arc<dyn EventLog> = config.event_log("bench", &in_process).expect("log");
    let broker: Arc<dyn MessageBroker> =
        config.message_broker("bench", &in_process).expect("broker");
    let topic = testkit::unique("bench.topic");
    let (forward_ex, raw_ex) = (testkit::unique("bench.fwd"), testkit::unique("bench.raw"));
    let (forward_q, raw_q) = (testkit::unique("bench.fwdq"), testkit::unique("bench.rawq"));
    log.create_topics(&[TopicSpec::new(topic.clone(), PARTITIONS)])
        .await
        .expect("topic");
    broker
        .declare(
            &Topology::new()
                .exchange(forward_ex.clone(), ExchangeKind::Fanout)
                .exchange(raw_ex.clone(), ExchangeKind::Fanout)
                .queue(QueueSpec::exclusive(forward_q.clone()))
                .queue(QueueSpec::exclusive(raw_q.clone()))
                .bind(&forward_ex, &forward_q, "")
                .bind(&raw_ex, &raw_q, ""),
        )
        .await
        .expect("declare");
    futures::stream::iter(0..M)
        .map(|n| {
            let (log, topic) = (log.clone(), topic.clone());
            async move {
                log.produce(&topic, &format!("k{}", n % 64), &record(n))
                    .await
                    .expect("produce")
            }
        })
        .buffer_unordered(256)
        .collect::<Vec<_>>()
        .await;

    // Raw Kafka consume of the same records.
    let consumer = log
        .subscribe(
            &testkit::unique("raw"),
            &[topic.as_str()],
            SubscribeOptions::default(),
        )
        .await
        .expect("subscribe");
    let mut first = None;
    for _ in 0..M {
        consumer.recv().await.expect("recv");
        first.get_or_insert_with(Instant::now);
    }
    let consume = rate(first, Instant::now());
    drop(consumer);

    // Raw RabbitMQ publishes with confirms, 4 at a time.
    let started = Instant::now();
    let publishers: Vec<_> = (0..PARTITIONS as usize)
        .map(|p| {
            let (broker, ex) = (broker.clone(), raw_ex.clone());
            tokio::spawn(async move {
                for n in (p..M).step_by(PARTITIONS as usize) {
                    broker.publish(&ex, "", &record(n)).await.expect("publish");
                }
            })
        })
        .collect();
    for p in publishers {
        p.await.expect("publisher");
    }
    let publish = M as f64 / started.elapsed().as_secs_f64();

    // The bridge forwarding the topic to an exchange, read by a consumer that acks.
    let mut deliveries = broker.consume(&forward_q, 1000).await.expect("consume");
    let bridge = svc_messaging_bridge::Config {
        settings: svc_messaging_bridge::Settings {
            http_addr: format!("127.0.0.1:{}", testkit::free_port()),
            bridge_routes: format!("kafka:{topic} -> rabbit:{forward_ex}"),
            consumer_group: testkit::unique("bridge"),
            ..Default::default()
        },
        messaging: config.clone(),
        ..Default::default()
    };
    let deps = svc_messaging_bridge::Deps::connect(&bridge, &in_process).expect("deps");
    let shutdown = Shutdown::new();
    let task = tokio::spawn(svc_messaging_bridge::run(bridge, deps, shutdown.clone()));
    let mut first = None;
    for _ in 0..M {
        let d = tokio::time::timeout(Duration::from_secs(120), deliveries.next())
            .await
            .expect("forwarded in time")
            .expect("delivery");
        first.get_or_insert_with(Instant::now);
        d.ack().await.expect("ack");
    }
    let forward = rate(first, Instant::now());
    shutdown.trigger();
    let _ = task.await;
    println!(
        "{name:<12} {consume:>16.0} {publish:>22.0} {forward:>16.0} {:>8.2}",
        forward / consume.min(publish)
    );
}

fn rate(first: Option<Instant>, last: Instant) -> f64 {
    let span = first.map_or(Duration::ZERO, |f| last - f).as_secs_f64();
    (M - 1) as f64 / span.max(1e-9)
}
