//! The two forwarding directions, both at-least-once.
//!
//! Kafka → RabbitMQ: one consumer-group member reads every source topic; records of a partition
//! are published one after another (order kept), each awaiting RabbitMQ's confirm, and the
//! offset is committed only after that confirm — so a committed offset never runs ahead of an
//! unconfirmed publish. Up to `max_in_flight` partitions forward at once. A broker outage is
//! retried without limit (nothing is dead-lettered because RabbitMQ was restarting); a record
//! no queue would receive goes to `<topic>.dlq` with the reason.
//!
//! RabbitMQ → Kafka: deliveries are spread over lanes by their Kafka key (`x-partition-key`),
//! so one key's messages are produced in order; each delivery is acked only after Kafka acked
//! the produce. Prefetch bounds what is in flight.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::Arc;
use std::time::{Duration, Instant};

use contracts::headers;
use messaging::consume::{HandlerError, RetryPolicy, RunOptions, run_log};
use messaging::log::SubscribeOptions;
use messaging::{Delivery, Error, EventLog, LogRecord, Message, MessageBroker};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::routes::Route;

/// Retry a broker outage for as long as it lasts; shutdown interrupts the wait.
fn retry_forever() -> RetryPolicy {
    RetryPolicy {
        max_attempts: u32::MAX,
        initial_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(5),
    }
}

/// Forward every `ToRabbit` route until `shutdown`.
pub async fn kafka_to_rabbit(
    group: String,
    subscribe: SubscribeOptions,
    log: Arc<dyn EventLog>,
    broker: Arc<dyn MessageBroker>,
    routes: Vec<Route>,
    max_in_flight: usize,
    shutdown: CancellationToken,
) -> messaging::Result<()> {
    let targets: HashMap<String, (String, String, String)> = routes
        .iter()
        .filter_map(|r| match r {
            Route::ToRabbit {
                topic,
                exchange,
                routing_key,
            } => Some((
                topic.clone(),
                (exchange.clone(), routing_key.clone(), r.label()),
            )),
            Route::ToKafka { .. } => None,
        })
        .collect();
    if targets.is_empty() {
        return Ok(());
    }
    let topics: Vec<&str> = targets.keys().map(String::as_str).collect();
    let consumer = log.subscribe(&group, &topics, subscribe).await?;
    let targets = Arc::new(targets);
    let options = RunOptions {
        retry: retry_forever(),
        ..RunOptions::new("bridge kafka->rabbit").concurrency(max_in_flight)
    };
    run_log(
        log,
        consumer,
        options,
        shutdown,
        move |record: LogRecord| {
            let broker = broker.clone();
            let targets = targets.clone();
            async move {
                let Some((exchange, routing_key, label)) = targets.get(&record.topic) else {
                    return Err(HandlerError::permanent(format!(
                        "no route for topic {}",
                        record.topic
                    )));
                };
                let message = with_message_id(record.message);
                let _in_flight = InFlight::new(label);
                if let Some(ts) = record.timestamp_ms {
                    metrics::histogram!("bridge_lag_seconds", "route" => label.clone())
                        .record((now_ms() - ts).max(0) as f64 / 1000.0);
                }
                match broker.publish(exchange, routing_key, &message).await {
                    Ok(()) => {
                        metrics::counter!("bridge_forwarded_total", "route" => label.clone())
                            .increment(1);
                        Ok(())
                    }
                    Err(e @ Error::Unroutable { .. }) => {
                        metrics::counter!("bridge_dead_lettered_total", "route" => label.clone())
                            .increment(1);
                        Err(HandlerError::permanent(format!("cannot route: {e}")))
                    }
                    Err(e) if e.is_transient() || matches!(e, Error::Closed { .. }) => {
                        Err(HandlerError::transient(e))
                    }
                    Err(e) => {
                        metrics::counter!("bridge_dead_lettered_total", "route" => label.clone())
                            .increment(1);
                        Err(HandlerError::permanent(e))
                    }
                }
            }
        },
    )
    .await
}

/// Forward one `ToKafka` route until `shutdown`.
pub async fn rabbit_to_kafka(
    broker: Arc<dyn MessageBroker>,
    log: Arc<dyn EventLog>,
    queue: String,
    topic: String,
    max_in_flight: u16,
    lanes: usize,
    shutdown: CancellationToken,
) -> messaging::Result<()> {
    let label = Route::ToKafka {
        queue: queue.clone(),
        topic: topic.clone(),
    }
    .label();
    let mut consumer = broker.consume(&queue, max_in_flight.max(1)).await?;
    let lanes = lanes.max(1);
    let per_lane = (max_in_flight as usize / lanes).max(1);
    let mut senders = Vec::with_capacity(lanes);
    let mut tasks = JoinSet::new();
    for _ in 0..lanes {
        let (tx, rx) = mpsc::channel::<Delivery>(per_lane);
        senders.push(tx);
        tasks.spawn(lane(
            rx,
            log.clone(),
            topic.clone(),
            label.clone(),
            shutdown.clone(),
        ));
    }
    let result = loop {
        let delivery = tokio::select! {
            d = consumer.next() => d,
            _ = shutdown.cancelled() => break Ok(()),
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => break Err(e),
        };
        let key = kafka_key(&delivery.message);
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        key.hash(&mut hasher);
        let lane = (hasher.finish() % lanes as u64) as usize;
        tokio::select! {
            sent = senders[lane].send(delivery) => if sent.is_err() { break Ok(()) },
            _ = shutdown.cancelled() => break Ok(()),
        }
    };
    drop(senders);
    while tasks.join_next().await.is_some() {}
    drop(consumer);
    result
}

/// The Kafka key of a message from RabbitMQ: `x-partition-key` (the objectKey), else its id.
fn kafka_key(message: &Message) -> String {
    message
        .headers
        .get(headers::PARTITION_KEY)
        .map(str::to_owned)
        .unwrap_or_else(|| message.dedupe_id())
}

async fn lane(
    mut rx: mpsc::Receiver<Delivery>,
    log: Arc<dyn EventLog>,
    topic: String,
    label: String,
    shutdown: CancellationToken,
) {
    let retry = retry_forever();
    while let Some(delivery) = rx.recv().await {
        if shutdown.is_cancelled() {
            // Unsettled deliveries come back when the consumer closes.
            let _ = delivery.requeue().await;
            continue;
        }
        let _in_flight = InFlight::new(&label);
        let key = kafka_key(&delivery.message);
        let message = with_message_id(delivery.message.clone());
        let mut wait = retry.initial_backoff;
        let outcome = loop {
            match log.produce(&topic, &key, &message).await {
                Ok(_) => break Ok(()),
                Err(e) if e.is_transient() => {
                    tracing::warn!(route = %label, error = %e, ?wait, "produce failed; retrying");
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => {}
                        _ = shutdown.cancelled() => break Err(None),
                    }
                    wait = (wait * 2).min(retry.max_backoff);
                }
                Err(e) => break Err(Some(e.to_string())),
            }
        };
        let settled = match outcome {
            Ok(()) => {
                metrics::counter!("bridge_forwarded_total", "route" => label.clone()).increment(1);
                delivery.ack().await
            }
            Err(None) => delivery.requeue().await,
            Err(Some(reason)) => {
                metrics::counter!("bridge_dead_lettered_total", "route" => label.clone())
                    .increment(1);
                tracing::warn!(route = %label, %reason, "cannot forward; dead-lettering");
                delivery
                    .dead_letter(&format!("cannot produce to {topic}: {reason}"))
                    .await
            }
        };
        if let Err(e) = settled {
            tracing::warn!(route = %label, error = %e, "could not settle; the broker redelivers");
        }
    }
}

/// Give a message without `x-message-id` (e.g. from the original .NET producers) a stable one,
/// so consumers downstream can still dedupe its redeliveries.
fn with_message_id(mut message: Message) -> Message {
    if message.headers.message_id().is_none() {
        let id = message.dedupe_id();
        message.headers.insert(headers::MESSAGE_ID, id);
    }
    message
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// `bridge_in_flight{route}` while alive.
struct InFlight {
    label: String,
    since: Instant,
}

impl InFlight {
    fn new(label: &str) -> Self {
        metrics::gauge!("bridge_in_flight", "route" => label.to_owned()).increment(1.0);
        Self {
            label: label.to_owned(),
            since: Instant::now(),
        }
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        metrics::gauge!("bridge_in_flight", "route" => self.label.clone()).decrement(1.0);
        metrics::histogram!("bridge_forward_seconds", "route" => self.label.clone())
            .record(self.since.elapsed().as_secs_f64());
    }
}
