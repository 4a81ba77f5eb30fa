//! Kafka (any Kafka-API broker: Apache Kafka, Redpanda, tansu) over rdkafka with its bundled
//! librdkafka.
//!
//! * Produce: idempotent, `acks=all`; a call returns after the broker acknowledged the record,
//!   librdkafka retrying through broker restarts until `produce_timeout`.
//! * Consume: offsets are stored only when the caller commits a processed record
//!   (`enable.auto.offset.store=false`) and flushed by librdkafka every second, on rebalance and on
//!   close: nothing unprocessed is ever committed; after a crash at most a second of processed
//!   records comes again.

use std::time::Duration;

use async_trait::async_trait;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::util::Timeout;

use crate::log::{
    EventLog, LogConsumer, LogRecord, RecordPosition, StartFrom, SubscribeOptions, TopicSpec,
};
use crate::{Error, Headers, Message, Result};

const BACKEND: &str = "kafka";

#[derive(Debug, Clone)]
pub struct KafkaOptions {
    /// `host:port[,host:port]`
    pub brokers: String,
    pub client_id: String,
    /// How long a produce may take, retries included.
    pub produce_timeout: Duration,
    /// Replication factor for topics we create.
    pub replication: i32,
    /// Longest a fetch waits for data. Some brokers (tansu) answer only when it expires rather
    /// than when data arrives, so this bounds the latency of every Kafka hop.
    pub fetch_wait: Duration,
    /// Extra librdkafka settings (e.g. `security.protocol`, `sasl.*`).
    pub extra: Vec<(String, String)>,
}

impl KafkaOptions {
    pub fn new(brokers: impl Into<String>, client_id: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client_id: client_id.into(),
            produce_timeout: Duration::from_secs(30),
            replication: 1,
            fetch_wait: Duration::from_millis(50),
            extra: Vec::new(),
        }
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id)
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "2000")
            .set("topic.metadata.refresh.interval.ms", "5000");
        for (k, v) in &self.extra {
            c.set(k, v);
        }
        c
    }
}

/// Kafka implementation of [`EventLog`].
pub struct KafkaLog {
    options: KafkaOptions,
    producer: FutureProducer,
    admin: AdminClient<DefaultClientContext>,
}

impl KafkaLog {
    pub fn new(options: KafkaOptions) -> Result<Self> {
        let producer: FutureProducer = options
            .base()
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set(
                "message.timeout.ms",
                options.produce_timeout.as_millis().to_string(),
            )
            .create()
            .map_err(|e| invalid(format!("producer: {e}")))?;
        let admin = options
            .base()
            .create()
            .map_err(|e| invalid(format!("admin client: {e}")))?;
        Ok(Self {
            options,
            producer,
            admin,
        })
    }

    /// Wait until everything produced is acknowledged (graceful shutdown).
    pub fn flush(&self, timeout: Duration) {
        let _ = self.producer.flush(Timeout::After(timeout));
    }
}

fn invalid(detail: String) -> Error {
    Error::Invalid {
        backend: BACKEND,
        detail,
    }
}

fn map_produce_error(e: KafkaError, topic: &str, timeout: Duration) -> Error {
    match e.rdkafka_error_code() {
        Some(RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic) => {
            Error::NotFound {
                backend: BACKEND,
                kind: "topic",
                name: topic.into(),
            }
        }
        Some(RDKafkaErrorCode::MessageTimedOut) => Error::Timeout {
            backend: BACKEND,
            what: "produce acknowledgement",
            after: timeout,
        },
        Some(RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessage) => {
            invalid(format!("produce to `{topic}`: {e}"))
        }
        _ => Error::Unavailable {
            backend: BACKEND,
            detail: format!("produce to `{topic}`: {e}"),
        },
    }
}

fn kafka_headers(headers: &Headers) -> OwnedHeaders {
    headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
        h.insert(Header {
            key: k,
            value: Some(v),
        })
    })
}

#[async_trait]
impl EventLog for KafkaLog {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn create_topics(&self, topics: &[TopicSpec]) -> Result<()> {
        let new: Vec<NewTopic<'_>> = topics
            .iter()
            .map(|t| {
                NewTopic::new(
                    &t.name,
                    t.partitions.max(1),
                    TopicReplication::Fixed(self.options.replication),
                )
            })
            .collect();
        let opts =
            AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(10))));
        let results = self
            .admin
            .create_topics(new.iter(), &opts)
            .await
            .map_err(|e| Error::Unavailable {
                backend: BACKEND,
                detail: format!("create topics: {e}"),
            })?;
        for result in results {
            match result {
                Ok(_) => {}
                Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(Error::Unavailable {
                        backend: BACKEND,
                        detail: format!("create topic `{name}`: {code}"),
                    });
                }
            }
        }
        Ok(())
    }

    async fn produce(&self, topic: &str, key: &str, message: &Message) -> Result<RecordPosition> {
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(message.payload.as_ref())
            .headers(kafka_headers(&message.headers));
        let timeout = self.options.produce_timeout;
        match self.producer.send(record, Timeout::After(timeout)).await {
            Ok(delivery) => {
                metrics::counter!("messaging_produced_total", "backend" => BACKEND, "topic" => topic.to_owned())
                    .increment(1);
                Ok(RecordPosition {
                    topic: topic.into(),
                    partition: delivery.partition,
                    offset: delivery.offset,
                })
            }
            Err((e, _)) => Err(map_produce_error(e, topic, timeout)),
        }
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
        options: SubscribeOptions,
    ) -> Result<Box<dyn LogConsumer>> {
        let mut config = self.options.base();
        if let Some(id) = options.instance_id.as_deref().filter(|id| !id.is_empty()) {
            // Static membership (KIP-345): a restarted member takes its place back at once.
            config.set("group.instance.id", id);
        }
        let consumer: StreamConsumer<LoggingContext> = config
            .set("group.id", group)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "1000")
            .set(
                "auto.offset.reset",
                match options.start_from {
                    StartFrom::Earliest => "earliest",
                    StartFrom::Latest => "latest",
                },
            )
            .set(
                "session.timeout.ms",
                options.session_timeout.as_millis().to_string(),
            )
            .set(
                "heartbeat.interval.ms",
                (options.session_timeout.as_millis() / 4)
                    .max(100)
                    .to_string(),
            )
            .set("enable.partition.eof", "false")
            .set(
                "fetch.wait.max.ms",
                self.options.fetch_wait.as_millis().to_string(),
            )
            .create_with_context(LoggingContext {
                group: group.to_owned(),
            })
            .map_err(|e| invalid(format!("consumer: {e}")))?;
        consumer
            .subscribe(topics)
            .map_err(|e| invalid(format!("subscribe {topics:?}: {e}")))?;
        Ok(Box::new(KafkaConsumer { consumer }))
    }

    async fn check(&self) -> Result<()> {
        let producer = self.producer.clone();
        tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, Timeout::After(Duration::from_secs(2)))
                .map(|_| ())
        })
        .await
        .map_err(|e| Error::Unavailable {
            backend: BACKEND,
            detail: e.to_string(),
        })?
        .map_err(|e| Error::Unavailable {
            backend: BACKEND,
            detail: format!("metadata: {e}"),
        })
    }
}

struct LoggingContext {
    group: String,
}

impl ClientContext for LoggingContext {}

impl ConsumerContext for LoggingContext {
    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(tpl) => {
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions assigned")
            }
            Rebalance::Revoke(tpl) => {
                tracing::info!(group = %self.group, partitions = tpl.count(), "partitions revoked")
            }
            Rebalance::Error(e) => {
                tracing::warn!(group = %self.group, error = %e, "rebalance error")
            }
        }
    }
}

struct KafkaConsumer {
    consumer: StreamConsumer<LoggingContext>,
}

#[async_trait]
impl LogConsumer for KafkaConsumer {
    async fn recv(&self) -> Result<LogRecord> {
        loop {
            match self.consumer.recv().await {
                Ok(m) => {
                    let mut headers = Headers::new();
                    if let Some(h) = m.headers() {
                        for header in h.iter() {
                            if let Some(v) = header.value {
                                headers.insert(header.key, String::from_utf8_lossy(v).into_owned());
                            }
                        }
                    }
                    return Ok(LogRecord {
                        topic: m.topic().to_owned(),
                        partition: m.partition(),
                        offset: m.offset(),
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        timestamp_ms: m.timestamp().to_millis(),
                        message: Message {
                            headers,
                            payload: m
                                .payload()
                                .map(bytes::Bytes::copy_from_slice)
                                .unwrap_or_default(),
                        },
                    });
                }
                // Transport errors, unknown topics before they are created, rebalances in
                // progress: librdkafka recovers on its own; keep polling.
                Err(e) => {
                    tracing::debug!(error = %e, "kafka consumer error; continuing");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }

    async fn commit(&self, topic: &str, partition: i32, offset: i64) -> Result<()> {
        // rd_kafka_offset_store stores offset + 1: the next record to read.
        self.consumer
            .store_offset(topic, partition, offset)
            .map_err(|e| Error::Stale {
                backend: BACKEND,
                what: "commit",
                detail: format!("{topic}/{partition}@{offset}: {e}"),
            })
    }

    async fn assignment(&self) -> Result<Vec<(String, i32)>> {
        let tpl = self.consumer.assignment().map_err(|e| Error::Unavailable {
            backend: BACKEND,
            detail: format!("assignment: {e}"),
        })?;
        Ok(tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect())
    }
}
