//! The RabbitMQ-style face: exchanges route to queues; consumers ack, requeue or dead-letter.

use async_trait::async_trait;
use contracts::names::{exchanges, queues};

use crate::{Message, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum ExchangeKind {
    /// Every bound queue gets a copy; routing keys are ignored.
    Fanout,
    /// Queues bound with exactly the message's routing key.
    Direct,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ExchangeSpec {
    pub name: String,
    pub kind: ExchangeKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct QueueSpec {
    pub name: String,
    /// Survives a broker restart (with its persistent messages).
    pub durable: bool,
    /// Belongs to the declaring connection; gone when it closes.
    pub exclusive: bool,
    /// Deleted when its last consumer goes.
    pub auto_delete: bool,
    /// Rejected messages go to `<name>.dlq` via `tu.dlx` (declared alongside).
    pub dead_letter: bool,
}

impl QueueSpec {
    /// A durable work queue with a dead-letter queue.
    pub fn durable(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            durable: true,
            exclusive: false,
            auto_delete: false,
            dead_letter: true,
        }
    }

    /// A private, per-process queue (e.g. one per gateway replica).
    pub fn exclusive(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            durable: false,
            exclusive: true,
            auto_delete: true,
            dead_letter: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct BindingSpec {
    pub exchange: String,
    pub queue: String,
    pub routing_key: String,
}

/// Exchanges, queues and bindings to declare. Declaring is idempotent.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Topology {
    pub exchanges: Vec<ExchangeSpec>,
    pub queues: Vec<QueueSpec>,
    pub bindings: Vec<BindingSpec>,
}

impl Topology {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn exchange(mut self, name: impl Into<String>, kind: ExchangeKind) -> Self {
        let spec = ExchangeSpec {
            name: name.into(),
            kind,
        };
        if !self.exchanges.contains(&spec) {
            self.exchanges.push(spec);
        }
        self
    }

    /// Add a queue; a dead-lettering queue also gets `tu.dlx`, `<name>.dlq` and their binding.
    pub fn queue(mut self, spec: QueueSpec) -> Self {
        if spec.dead_letter {
            let dlq = queues::dead_letter(&spec.name);
            self = self.exchange(exchanges::DEAD_LETTER, ExchangeKind::Direct);
            let dlq_spec = QueueSpec {
                name: dlq.clone(),
                dead_letter: false,
                ..QueueSpec::durable(dlq.clone())
            };
            if !self.queues.contains(&dlq_spec) {
                self.queues.push(dlq_spec);
            }
            self = self.bind(exchanges::DEAD_LETTER, &dlq, &spec.name);
        }
        if !self.queues.contains(&spec) {
            self.queues.push(spec);
        }
        self
    }

    pub fn bind(mut self, exchange: &str, queue: &str, routing_key: &str) -> Self {
        let spec = BindingSpec {
            exchange: exchange.into(),
            queue: queue.into(),
            routing_key: routing_key.into(),
        };
        if !self.bindings.contains(&spec) {
            self.bindings.push(spec);
        }
        self
    }

    pub fn merge(mut self, other: &Topology) -> Self {
        for e in &other.exchanges {
            self = self.exchange(e.name.clone(), e.kind);
        }
        for q in &other.queues {
            self = self.queue(q.clone());
        }
        for b in &other.bindings {
            self = self.bind(&b.exchange, &b.queue, &b.routing_key);
        }
        self
    }

    pub fn queue_spec(&self, name: &str) -> Option<&QueueSpec> {
        self.queues.iter().find(|q| q.name == name)
    }
}

/// A delivery of a message from a queue. Exactly one of [`Delivery::ack`], [`Delivery::requeue`],
/// [`Delivery::dead_letter`] should be called; dropping it unsettled leaves it unacknowledged
/// until the consumer goes, and the broker then delivers it again.
pub struct Delivery {
    pub message: Message,
    pub queue: String,
    pub exchange: String,
    pub routing_key: String,
    /// The broker delivered this message before (to this or another consumer).
    pub redelivered: bool,
    pub(crate) settle: Box<dyn Settle>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("queue", &self.queue)
            .field("exchange", &self.exchange)
            .field("routing_key", &self.routing_key)
            .field("redelivered", &self.redelivered)
            .field("message_id", &self.message.headers.message_id())
            .finish()
    }
}

impl Delivery {
    /// Done: the broker forgets the message.
    pub async fn ack(self) -> Result<()> {
        self.settle.ack().await
    }

    /// Put it back for another attempt (to any consumer of the queue).
    pub async fn requeue(self) -> Result<()> {
        self.settle.nack(true).await
    }

    /// Move it to `<queue>.dlq` with `reason` in `x-dead-letter-reason`; the consumer goes on.
    pub async fn dead_letter(self, reason: &str) -> Result<()> {
        metrics::counter!("messaging_dead_lettered_total", "queue" => self.queue.clone())
            .increment(1);
        self.settle
            .dead_letter(&self.message, &self.queue, reason)
            .await
    }
}

/// Backend-specific settlement of one delivery.
#[async_trait]
pub(crate) trait Settle: Send + Sync {
    async fn ack(&self) -> Result<()>;
    async fn nack(&self, requeue: bool) -> Result<()>;
    async fn dead_letter(&self, message: &Message, queue: &str, reason: &str) -> Result<()>;
}

/// RabbitMQ-style broker. Implementations: [`crate::rabbit::RabbitBroker`],
/// [`crate::memory::InProcessBroker`].
#[async_trait]
pub trait MessageBroker: Send + Sync + 'static {
    fn backend(&self) -> &'static str;

    /// Declare exchanges, queues and bindings; remembered and declared again after a reconnect.
    async fn declare(&self, topology: &Topology) -> Result<()>;

    /// Publish persistently and mandatorily; returns once the broker confirmed it. A message no
    /// queue would receive fails with [`crate::Error::Unroutable`].
    async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<()>;

    /// Consume `queue` with at most `prefetch` unacknowledged deliveries. The consumer survives
    /// broker restarts (it reconnects); deliveries unacked at that moment come again.
    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn QueueConsumer>>;

    /// The broker answers.
    async fn check(&self) -> Result<()>;
}

#[async_trait]
pub trait QueueConsumer: Send {
    /// The next delivery; waits (and reconnects) until there is one.
    async fn next(&mut self) -> Result<Delivery>;
}
