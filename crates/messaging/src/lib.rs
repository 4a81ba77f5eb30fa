//! Messaging with two faces, each with a real-broker and an in-process implementation:
//!
//! | face | trait | production | one-process mode |
//! |---|---|---|---|
//! | Kafka-style log | [`EventLog`] | [`kafka::KafkaLog`] (rdkafka) | [`memory::InProcessBroker`] |
//! | RabbitMQ-style broker | [`MessageBroker`] | [`rabbit::RabbitBroker`] (lapin) | [`memory::InProcessBroker`] |
//!
//! All implementations pass one contract suite (`tests/contract.rs`). [`consume`] holds the
//! consumer loops with retry, backoff and dead-lettering that services use; [`topology`] declares
//! the platform's exchanges and queues.

pub mod broker;
pub mod config;
pub mod consume;
pub mod error;
pub mod kafka;
pub mod log;
pub mod memory;
pub mod message;
pub mod rabbit;
pub mod topology;
pub mod trace;

pub use broker::{Delivery, MessageBroker, QueueConsumer, Topology};
pub use error::{Error, Result};
pub use log::{EventLog, LogConsumer, LogRecord};
pub use message::{Headers, Message};
