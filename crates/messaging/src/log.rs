//! The Kafka-style face: partitioned, replayable topics read by consumer groups.

use std::time::Duration;

use async_trait::async_trait;

use crate::{Message, Result};

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
}

impl TopicSpec {
    pub fn new(name: impl Into<String>, partitions: i32) -> Self {
        Self {
            name: name.into(),
            partitions,
        }
    }
}

/// Where a record landed.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RecordPosition {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
}

/// A consumed record.
#[derive(Debug, Clone, PartialEq)]
pub struct LogRecord {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<String>,
    pub message: Message,
    /// When the broker (or producer) stamped it, unix ms; how far behind a consumer is.
    pub timestamp_ms: Option<i64>,
}

impl LogRecord {
    pub fn position(&self) -> RecordPosition {
        RecordPosition {
            topic: self.topic.clone(),
            partition: self.partition,
            offset: self.offset,
        }
    }
}

/// Where a group with no committed offset starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum StartFrom {
    /// Read everything retained (our services: nothing published before the first start is lost).
    #[default]
    Earliest,
    Latest,
}

#[derive(Debug, Clone)]
pub struct SubscribeOptions {
    pub start_from: StartFrom,
    /// How long a dead member keeps its partitions before the group rebalances.
    pub session_timeout: Duration,
    /// Static group membership: the same id after a restart takes the member's place back
    /// without a rebalance (Kafka's `group.instance.id`). One id per member of a group; `None`
    /// for dynamic membership. The in-process broker ignores it.
    pub instance_id: Option<String>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self {
            start_from: StartFrom::Earliest,
            session_timeout: Duration::from_secs(10),
            instance_id: None,
        }
    }
}

/// Kafka-style log. Implementations: [`crate::kafka::KafkaLog`], [`crate::memory::InProcessBroker`].
#[async_trait]
pub trait EventLog: Send + Sync + 'static {
    /// Backend name for logs and metrics (`kafka`, `in-process`).
    fn backend(&self) -> &'static str;

    /// Create the topics that do not exist yet.
    async fn create_topics(&self, topics: &[TopicSpec]) -> Result<()>;

    /// Append a record and wait until the broker acknowledged it (acks=all). Records with the
    /// same key go to the same partition, in order.
    async fn produce(&self, topic: &str, key: &str, message: &Message) -> Result<RecordPosition>;

    /// Join consumer group `group` reading `topics`. Partitions are shared among the group's
    /// members and move when members come or go; a member starts a partition at the group's
    /// committed offset, so everything not committed is delivered again.
    async fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
        options: SubscribeOptions,
    ) -> Result<Box<dyn LogConsumer>>;

    /// The broker answers.
    async fn check(&self) -> Result<()>;
}

/// One member of a consumer group. Dropping it leaves the group.
#[async_trait]
pub trait LogConsumer: Send + Sync {
    /// The next record of any partition assigned to this member; waits until there is one.
    async fn recv(&self) -> Result<LogRecord>;

    /// Everything up to and including `offset` of this partition is processed. Only commit what
    /// is durable downstream: after a crash or rebalance, consumption restarts after the last
    /// commit. Committing a partition this member no longer owns fails with [`crate::Error::Stale`].
    async fn commit(&self, topic: &str, partition: i32, offset: i64) -> Result<()>;

    /// Partitions currently assigned to this member (for metrics and tests).
    async fn assignment(&self) -> Result<Vec<(String, i32)>>;
}
