//! The header set. Kafka carries these as record headers; AMQP as message headers, with
//! `x-message-id` and `x-correlation-id` mirrored into the `message_id` / `correlation_id`
//! properties so plain AMQP tooling shows them.

/// UUID of this message; the dedupe key for idempotent consumers.
pub const MESSAGE_ID: &str = "x-message-id";
/// Propagated from the client's first call to the last event.
pub const CORRELATION_ID: &str = "x-correlation-id";
/// Contract and version, e.g. `image.uploaded.v1`.
pub const SCHEMA: &str = "x-schema";
/// Service that produced the message, e.g. `tu-ingestion-service`.
pub const PRODUCER: &str = "x-producer";
/// W3C trace context.
pub const TRACEPARENT: &str = "traceparent";
/// W3C trace state (optional companion of `traceparent`).
pub const TRACESTATE: &str = "tracestate";
/// Kafka key the bridge uses when it forwards an AMQP message to Kafka (the objectKey, so all
/// messages about one image stay in one partition, in order).
pub const PARTITION_KEY: &str = "x-partition-key";
/// Why a message was dead-lettered (set on the copy in `<queue>.dlq`).
pub const DEAD_LETTER_REASON: &str = "x-dead-letter-reason";
/// Queue a dead-lettered message came from.
pub const DEAD_LETTER_QUEUE: &str = "x-dead-letter-queue";

/// Headers every published message must carry.
pub const REQUIRED: &[&str] = &[MESSAGE_ID, CORRELATION_ID, SCHEMA, PRODUCER];
