//! Messages/s and latency percentiles for both messaging faces on every backend, in one run.
//!
//!   . $(scripts/test-infra.sh env) && cargo bench -p messaging --bench throughput
//!
//! Each backend runs twice: under load (`WINDOW` = 256 publishes in flight, each waiting for its
//! broker ack/confirm; latency then includes queueing behind the others) and ping-pong (one message
//! end to end at a time: the unloaded hop latency). Consumers ack/commit every message. Latency is measured from just before the
//! publish call to the delivery. `BENCH_MESSAGES` (default 20000) sets the count. Backends missing from the
//! environment are reported as skipped, not faked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use messaging::broker::{ExchangeKind, QueueSpec};
use messaging::kafka::{KafkaLog, KafkaOptions};
use messaging::log::{SubscribeOptions, TopicSpec};
use messaging::memory::InProcessBroker;
use messaging::rabbit::{RabbitBroker, RabbitOptions};
use messaging::{EventLog, Message, MessageBroker, Topology};

const WINDOW: usize = 256;
/// Messages for the ping-pong latency runs.
const SINGLE: usize = 1000;
const SENT_AT: &str = "x-bench-sent-ns";

struct Outcome {
    name: String,
    messages: usize,
    elapsed: Duration,
    latency_us: Histogram<u64>,
}

fn payload(n: usize) -> Message {
    let body = format!(
        r#"{{"n":{n},"objectKey":"images/2025/11/02/{n:08}-8b5c-4f21-9d3e-1a2b3c4d5e6f.jpg","pad":"{}"}}"#,
        "x".repeat(400)
    );
    Message::new(body)
        .with_header(contracts::headers::MESSAGE_ID, format!("bench-{n}"))
        .with_header(contracts::headers::SCHEMA, "bench.v1")
}

fn stamp(mut m: Message, origin: Instant) -> Message {
    m.headers
        .insert(SENT_AT, origin.elapsed().as_nanos().to_string());
    m
}

fn latency_us(m: &Message, origin: Instant) -> u64 {
    let sent: u128 = m
        .headers
        .get(SENT_AT)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    ((origin.elapsed().as_nanos().saturating_sub(sent)) / 1000) as u64
}

async fn bench_log(
    name: &str,
    log: Arc<dyn EventLog>,
    n: usize,
    window: usize,
) -> anyhow::Result<Outcome> {
    let topic = format!("bench.{}", uuid::Uuid::new_v4().simple());
    log.create_topics(&[TopicSpec::new(&topic, 4)]).await?;
    let consumer: Arc<dyn messaging::LogConsumer> = Arc::from(
        log.subscribe(
            &format!("{topic}.g"),
            &[&topic],
            SubscribeOptions::default(),
        )
        .await?,
    );
    let origin = Instant::now();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let recv_task = {
        let consumer = consumer.clone();
        tokio::spawn(async move {
            loop {
                let Ok(r) = consumer.recv().await else { return };
                let lat = latency_us(&r.message, origin);
                let _ = consumer.commit(&r.topic, r.partition, r.offset).await;
                if tx.send(lat).is_err() {
                    return;
                }
            }
        })
    };
    // Wait until the group has its partitions, so the run measures steady state.
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.assignment().await?.len() < 4 {
        anyhow::ensure!(
            Instant::now() < deadline,
            "{name}: consumer never got its partitions"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    if window == 1 {
        let outcome = ping_pong(name, n, origin, &mut rx, |m| {
            let log = log.clone();
            let topic = topic.clone();
            async move { log.produce(&topic, "key", &m).await.map(|_| ()) }
        })
        .await;
        recv_task.abort();
        return outcome;
    }
    let started = Instant::now();
    let producer = {
        let log = log.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            let mut in_flight = FuturesUnordered::new();
            for i in 0..n {
                if in_flight.len() >= window
                    && let Some(r) = in_flight.next().await
                {
                    r?;
                }
                let log = log.clone();
                let topic = topic.clone();
                in_flight.push(async move {
                    let key = format!("key-{}", i % 64);
                    log.produce(&topic, &key, &stamp(payload(i), origin))
                        .await
                        .map(|_| ())
                });
            }
            while let Some(r) = in_flight.next().await {
                r?;
            }
            Ok::<_, messaging::Error>(())
        })
    };
    let mut hist = Histogram::<u64>::new(3)?;
    for _ in 0..n {
        let lat = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("{name}: consumer stopped"))?;
        hist.record(lat.max(1))?;
    }
    let elapsed = started.elapsed();
    producer.await??;
    recv_task.abort();
    Ok(Outcome {
        name: name.into(),
        messages: n,
        elapsed,
        latency_us: hist,
    })
}

async fn bench_broker(
    name: &str,
    broker: Arc<dyn MessageBroker>,
    n: usize,
    window: usize,
) -> anyhow::Result<Outcome> {
    let exchange = format!("bench.{}", uuid::Uuid::new_v4().simple());
    let queue = format!("{exchange}.q");
    broker
        .declare(
            &Topology::new()
                .exchange(&exchange, ExchangeKind::Fanout)
                .queue(QueueSpec::durable(queue.clone()))
                .bind(&exchange, &queue, ""),
        )
        .await?;
    let origin = Instant::now();
    let mut consumer = broker.consume(&queue, WINDOW as u16).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let recv_task = tokio::spawn(async move {
        loop {
            let Ok(d) = consumer.next().await else { return };
            let lat = latency_us(&d.message, origin);
            let _ = d.ack().await;
            if tx.send(lat).is_err() {
                return;
            }
        }
    });
    if window == 1 {
        let outcome = ping_pong(name, n, origin, &mut rx, |m| {
            let broker = broker.clone();
            let exchange = exchange.clone();
            async move { broker.publish(&exchange, "", &m).await }
        })
        .await;
        recv_task.abort();
        return outcome;
    }
    let started = Instant::now();
    let producer = {
        let broker = broker.clone();
        tokio::spawn(async move {
            let mut in_flight = FuturesUnordered::new();
            for i in 0..n {
                if in_flight.len() >= window
                    && let Some(r) = in_flight.next().await
                {
                    r?;
                }
                let broker = broker.clone();
                let exchange = exchange.clone();
                in_flight.push(async move {
                    broker
                        .publish(&exchange, "", &stamp(payload(i), origin))
                        .await
                });
            }
            while let Some(r) = in_flight.next().await {
                r?;
            }
            Ok::<_, messaging::Error>(())
        })
    };
    let mut hist = Histogram::<u64>::new(3)?;
    for _ in 0..n {
        let lat = tokio::time::timeout(Duration::from_secs(120), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("{name}: consumer stopped"))?;
        hist.record(lat.max(1))?;
    }
    let elapsed = started.elapsed();
    producer.await??;
    recv_task.abort();
    Ok(Outcome {
        name: name.into(),
        messages: n,
        elapsed,
        latency_us: hist,
    })
}

/// One message end to end at a time: publish, wait for its delivery, then the next.
async fn ping_pong<P, Fut>(
    name: &str,
    n: usize,
    origin: Instant,
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<u64>,
    mut publish: P,
) -> anyhow::Result<Outcome>
where
    P: FnMut(Message) -> Fut,
    Fut: std::future::Future<Output = Result<(), messaging::Error>>,
{
    let mut hist = Histogram::<u64>::new(3)?;
    let started = Instant::now();
    for i in 0..n {
        publish(stamp(payload(i), origin)).await?;
        let lat = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("{name}: consumer stopped"))?;
        hist.record(lat.max(1))?;
    }
    Ok(Outcome {
        name: name.into(),
        messages: n,
        elapsed: started.elapsed(),
        latency_us: hist,
    })
}

fn print(outcomes: &[Result<Outcome, (String, String)>]) {
    println!();
    println!(
        "{:<62} {:>9} {:>11} {:>9} {:>9} {:>9}",
        "scenario", "messages", "msg/s", "p50 ms", "p99 ms", "max ms"
    );
    for o in outcomes {
        match o {
            Ok(o) => println!(
                "{:<62} {:>9} {:>11.0} {:>9.2} {:>9.2} {:>9.2}",
                o.name,
                o.messages,
                o.messages as f64 / o.elapsed.as_secs_f64(),
                o.latency_us.value_at_quantile(0.50) as f64 / 1000.0,
                o.latency_us.value_at_quantile(0.99) as f64 / 1000.0,
                o.latency_us.max() as f64 / 1000.0,
            ),
            Err((name, why)) => println!("{name:<62} skipped: {why}"),
        }
    }
    println!();
}

async fn both_log(
    out: &mut Vec<Result<Outcome, (String, String)>>,
    name: &str,
    log: Arc<dyn EventLog>,
    n: usize,
) {
    for (label, count, window) in [("load", n, WINDOW), ("ping-pong", SINGLE.min(n), 1)] {
        let scenario = format!("{name} [{label}]");
        out.push(
            bench_log(&scenario, log.clone(), count, window)
                .await
                .map_err(|e| (scenario, e.to_string())),
        );
    }
}

async fn both_broker(
    out: &mut Vec<Result<Outcome, (String, String)>>,
    name: &str,
    broker: Arc<dyn MessageBroker>,
    n: usize,
) {
    for (label, count, window) in [("load", n, WINDOW), ("ping-pong", SINGLE.min(n), 1)] {
        let scenario = format!("{name} [{label}]");
        out.push(
            bench_broker(&scenario, broker.clone(), count, window)
                .await
                .map_err(|e| (scenario, e.to_string())),
        );
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n: usize = std::env::var("BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut outcomes = Vec::new();

    let in_process = InProcessBroker::memory();
    both_log(
        &mut outcomes,
        "in-process log: produce → consume+commit",
        Arc::new(in_process.clone()),
        n,
    )
    .await;
    both_broker(
        &mut outcomes,
        "in-process: publish → consume+ack",
        Arc::new(in_process),
        n,
    )
    .await;
    let journal_dir = tempfile::tempdir()?;
    let journaled = InProcessBroker::open(messaging::memory::InProcessOptions {
        data_dir: Some(journal_dir.path().to_owned()),
        ..Default::default()
    })?;
    both_broker(
        &mut outcomes,
        "in-process journaled (trackunit up)",
        Arc::new(journaled),
        n,
    )
    .await;

    match std::env::var("TU_TEST_KAFKA_BROKERS") {
        Ok(brokers) => {
            let log = KafkaLog::new(KafkaOptions::new(brokers, "bench"))?;
            both_log(
                &mut outcomes,
                "kafka/tansu: produce acks=all → consume+commit",
                Arc::new(log),
                n,
            )
            .await;
        }
        Err(_) => outcomes.push(Err((
            "kafka".into(),
            "TU_TEST_KAFKA_BROKERS not set".into(),
        ))),
    }
    match std::env::var("TU_TEST_AMQP_URL") {
        Ok(url) => {
            let broker = RabbitBroker::new(RabbitOptions::new(url, "bench"))?;
            both_broker(
                &mut outcomes,
                "rabbitmq: publish+confirm → consume+ack",
                Arc::new(broker),
                n,
            )
            .await;
        }
        Err(_) => outcomes.push(Err(("rabbitmq".into(), "TU_TEST_AMQP_URL not set".into()))),
    }
    print(&outcomes);
    Ok(())
}
