//! RabbitMQ over lapin, with our own reconnect loop (lapin's auto-recovery does not reliably
//! restore consumers and confirm mode). Two connections, as RabbitMQ recommends: publishing
//! (blocked under flow control) never stalls consuming and acking.
//!
//! * Publishing uses one channel in confirm mode (`confirm_select`), persistent, mandatory; a call
//!   returns after the broker's ack, retrying over reconnects until `publish_timeout`.
//! * Consumers resubscribe after a connection loss; deliveries unacked at that moment are
//!   redelivered by the broker (`redelivered = true`).
//! * Every declared topology is remembered and declared again after each reconnect, so exclusive
//!   per-replica queues come back too.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use contracts::headers;
use contracts::names::exchanges;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};
use tokio::time::Instant;

use crate::broker::{
    Delivery, ExchangeKind, MessageBroker, QueueConsumer, QueueSpec, Settle, Topology,
};
use crate::{Error, Headers, Message, Result};

const BACKEND: &str = "rabbitmq";

#[derive(Debug, Clone)]
pub struct RabbitOptions {
    /// `amqp://user:pass@host:5672/%2f`
    pub uri: String,
    /// Shown in the RabbitMQ management UI.
    pub connection_name: String,
    /// How long a publish keeps retrying (over reconnects) before it fails.
    pub publish_timeout: Duration,
    /// Heartbeat, so a dead peer is noticed within about twice this.
    pub heartbeat_secs: u16,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl RabbitOptions {
    pub fn new(uri: impl Into<String>, connection_name: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            connection_name: connection_name.into(),
            publish_timeout: Duration::from_secs(30),
            heartbeat_secs: 10,
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }
}

/// RabbitMQ implementation of [`MessageBroker`]. Cheap to clone.
#[derive(Clone)]
pub struct RabbitBroker {
    inner: Arc<Inner>,
}

struct Inner {
    options: RabbitOptions,
    publish_conn: ConnectionSlot,
    consume_conn: ConnectionSlot,
    publisher: tokio::sync::Mutex<Option<Channel>>,
    declared: std::sync::Mutex<Topology>,
    consumer_seq: AtomicU64,
}

struct ConnectionSlot {
    role: &'static str,
    live: tokio::sync::Mutex<Option<Arc<Connection>>>,
}

impl RabbitBroker {
    /// Create the client; connections open lazily and reopen after failures.
    pub fn new(options: RabbitOptions) -> Result<Self> {
        let _ = uri_with_heartbeat(&options.uri, options.heartbeat_secs)?;
        Ok(Self {
            inner: Arc::new(Inner {
                options,
                publish_conn: ConnectionSlot {
                    role: "publish",
                    live: tokio::sync::Mutex::new(None),
                },
                consume_conn: ConnectionSlot {
                    role: "consume",
                    live: tokio::sync::Mutex::new(None),
                },
                publisher: tokio::sync::Mutex::new(None),
                declared: std::sync::Mutex::new(Topology::default()),
                consumer_seq: AtomicU64::new(0),
            }),
        })
    }

    /// Close both connections (graceful shutdown). Unacked deliveries return to their queues.
    pub async fn close(&self) {
        for slot in [&self.inner.publish_conn, &self.inner.consume_conn] {
            if let Some(conn) = slot.live.lock().await.take() {
                let _ = conn.close(200, "shutdown".into()).await;
            }
        }
    }
}

fn uri_with_heartbeat(uri: &str, heartbeat: u16) -> Result<lapin::uri::AMQPUri> {
    let mut parsed: lapin::uri::AMQPUri = uri.parse().map_err(|e: String| Error::Invalid {
        backend: BACKEND,
        detail: format!("invalid AMQP URI: {e}"),
    })?;
    if parsed.query.heartbeat.is_none() {
        parsed.query.heartbeat = Some(heartbeat);
    }
    if parsed.query.connection_timeout.is_none() {
        parsed.query.connection_timeout = Some(5_000);
    }
    Ok(parsed)
}

fn unavailable(e: impl std::fmt::Display) -> Error {
    Error::Unavailable {
        backend: BACKEND,
        detail: e.to_string(),
    }
}

/// Map a lapin error: channel-level refusals are not retryable, connection trouble is.
fn classify(e: lapin::Error, what: &str, name: &str) -> Error {
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
        match amqp.kind() {
            AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND) => {
                return Error::NotFound {
                    backend: BACKEND,
                    kind: if what == "publish" {
                        "exchange"
                    } else {
                        "queue"
                    },
                    name: name.into(),
                };
            }
            AMQPErrorKind::Soft(
                AMQPSoftError::PRECONDITIONFAILED
                | AMQPSoftError::RESOURCELOCKED
                | AMQPSoftError::ACCESSREFUSED,
            ) => {
                return Error::Invalid {
                    backend: BACKEND,
                    detail: format!("{what} `{name}`: {}", amqp.get_message()),
                };
            }
            _ => {}
        }
    }
    unavailable(format!("{what} `{name}`: {e}"))
}

impl Inner {
    /// A live connection of `slot`, reconnecting with backoff until `deadline`. A fresh consume
    /// connection gets the remembered topology declared; a fresh publish connection its exchanges.
    async fn connection(
        &self,
        slot: &ConnectionSlot,
        deadline: Instant,
    ) -> Result<Arc<Connection>> {
        let mut live = slot.live.lock().await;
        if let Some(conn) = live.as_ref()
            && conn.status().connected()
        {
            return Ok(conn.clone());
        }
        *live = None;
        let uri = uri_with_heartbeat(&self.options.uri, self.options.heartbeat_secs)?;
        let mut delay = self.options.reconnect_min;
        let mut last_error = String::from("timed out");
        loop {
            let props = ConnectionProperties::default().with_connection_name(
                format!("{}/{}", self.options.connection_name, slot.role).into(),
            );
            let attempt =
                tokio::time::timeout_at(deadline, Connection::connect_uri(uri.clone(), props))
                    .await;
            match attempt {
                Ok(Ok(conn)) => {
                    let conn = Arc::new(conn);
                    let topology = self.remembered();
                    let topology = if slot.role == "publish" {
                        Topology {
                            exchanges: topology.exchanges,
                            ..Topology::default()
                        }
                    } else {
                        topology
                    };
                    if let Err(e) = declare_on(&conn, &topology).await {
                        tracing::warn!(error = %e, "declaring topology after reconnect failed");
                        if !e.is_transient() {
                            return Err(e);
                        }
                        last_error = e.to_string();
                    } else {
                        metrics::counter!("messaging_connections_opened_total", "backend" => BACKEND, "role" => slot.role)
                            .increment(1);
                        tracing::debug!(role = slot.role, "connected to RabbitMQ");
                        *live = Some(conn.clone());
                        return Ok(conn);
                    }
                }
                Ok(Err(e)) => {
                    tracing::debug!(role = slot.role, error = %e, "RabbitMQ connect failed");
                    last_error = e.to_string();
                }
                Err(_) => {}
            }
            if Instant::now() + delay > deadline {
                return Err(unavailable(format!(
                    "cannot connect ({} connection): {last_error}",
                    slot.role
                )));
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.options.reconnect_max);
        }
    }

    fn remembered(&self) -> Topology {
        self.declared
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    async fn publisher_channel(&self, deadline: Instant) -> Result<Channel> {
        let mut slot = self.publisher.lock().await;
        if let Some(ch) = slot.as_ref()
            && ch.status().connected()
        {
            return Ok(ch.clone());
        }
        *slot = None;
        let conn = self.connection(&self.publish_conn, deadline).await?;
        let ch = conn.create_channel().await.map_err(unavailable)?;
        // Without confirm_select, lapin resolves every publish as NotRequested: no guarantee.
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        *slot = Some(ch.clone());
        Ok(ch)
    }

    async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<()> {
        let deadline = Instant::now() + self.options.publish_timeout;
        let props = properties(message);
        let mut delay = self.options.reconnect_min;
        loop {
            let attempt = async {
                let ch = self.publisher_channel(deadline).await?;
                let confirm = ch
                    .basic_publish(
                        exchange.into(),
                        routing_key.into(),
                        BasicPublishOptions {
                            mandatory: true,
                            ..BasicPublishOptions::default()
                        },
                        &message.payload,
                        props.clone(),
                    )
                    .await
                    .map_err(|e| classify(e, "publish", exchange))?;
                confirm.await.map_err(|e| classify(e, "publish", exchange))
            };
            let result = match tokio::time::timeout_at(deadline, attempt).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(Error::Timeout {
                        backend: BACKEND,
                        what: "publisher confirm",
                        after: self.options.publish_timeout,
                    });
                }
            };
            match result {
                Ok(Confirmation::Ack(None)) => {
                    metrics::counter!("messaging_published_total", "backend" => BACKEND, "exchange" => exchange.to_owned())
                        .increment(1);
                    return Ok(());
                }
                Ok(Confirmation::Ack(Some(_returned))) => {
                    return Err(Error::Unroutable {
                        backend: BACKEND,
                        exchange: exchange.into(),
                        routing_key: routing_key.into(),
                    });
                }
                Ok(Confirmation::Nack(_)) => {
                    tracing::warn!(exchange, "broker nacked a publish; retrying");
                }
                Ok(Confirmation::NotRequested) => {
                    return Err(Error::Invalid {
                        backend: BACKEND,
                        detail: "publisher confirms are not enabled on the channel".into(),
                    });
                }
                Err(e) if !e.is_transient() => return Err(e),
                Err(e) => {
                    tracing::debug!(error = %e, exchange, "publish failed; retrying after reconnect");
                }
            }
            if Instant::now() + delay > deadline {
                return Err(Error::Timeout {
                    backend: BACKEND,
                    what: "publisher confirm",
                    after: self.options.publish_timeout,
                });
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(self.options.reconnect_max);
        }
    }
}

/// Declare exchanges, then queues, then bindings, on a temporary channel of `conn`.
async fn declare_on(conn: &Connection, topology: &Topology) -> Result<()> {
    if topology == &Topology::default() {
        return Ok(());
    }
    let ch = conn.create_channel().await.map_err(unavailable)?;
    for e in &topology.exchanges {
        let kind = match e.kind {
            ExchangeKind::Fanout => lapin::ExchangeKind::Fanout,
            ExchangeKind::Direct => lapin::ExchangeKind::Direct,
        };
        ch.exchange_declare(
            e.name.as_str().into(),
            kind,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|err| classify(err, "declare exchange", &e.name))?;
    }
    for q in &topology.queues {
        ch.queue_declare(
            q.name.as_str().into(),
            QueueDeclareOptions {
                durable: q.durable,
                exclusive: q.exclusive,
                auto_delete: q.auto_delete,
                ..QueueDeclareOptions::default()
            },
            queue_arguments(q),
        )
        .await
        .map_err(|err| classify(err, "declare queue", &q.name))?;
    }
    for b in &topology.bindings {
        ch.queue_bind(
            b.queue.as_str().into(),
            b.exchange.as_str().into(),
            b.routing_key.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(|err| classify(err, "bind queue", &b.queue))?;
    }
    let _ = ch.close(200, "declared".into()).await;
    Ok(())
}

fn queue_arguments(q: &QueueSpec) -> FieldTable {
    let mut args = FieldTable::default();
    if q.dead_letter {
        // Rejections and expiries go to `<queue>.dlq` natively; our dead_letter() adds a reason.
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString(exchanges::DEAD_LETTER.into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(q.name.as_str().into()),
        );
    }
    args
}

fn properties(message: &Message) -> BasicProperties {
    let mut table = FieldTable::default();
    for (k, v) in message.headers.iter() {
        table.insert(k.into(), AMQPValue::LongString(v.into()));
    }
    let mut props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(table);
    if let Some(id) = message.headers.message_id() {
        props = props.with_message_id(id.into());
    }
    if let Some(id) = message.headers.correlation_id() {
        props = props.with_correlation_id(id.into());
    }
    if let Some(p) = message.headers.producer() {
        props = props.with_app_id(p.into());
    }
    if let Some(s) = message.headers.schema() {
        props = props.with_type(s.into());
    }
    if let Ok(now) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        props = props.with_timestamp(now.as_secs());
    }
    props
}

fn header_text(value: &AMQPValue) -> Option<String> {
    Some(match value {
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        AMQPValue::ShortString(s) => s.as_str().to_owned(),
        AMQPValue::Boolean(b) => b.to_string(),
        AMQPValue::ShortShortInt(v) => v.to_string(),
        AMQPValue::ShortShortUInt(v) => v.to_string(),
        AMQPValue::ShortInt(v) => v.to_string(),
        AMQPValue::ShortUInt(v) => v.to_string(),
        AMQPValue::LongInt(v) => v.to_string(),
        AMQPValue::LongUInt(v) => v.to_string(),
        AMQPValue::LongLongInt(v) => v.to_string(),
        AMQPValue::Timestamp(v) => v.to_string(),
        AMQPValue::ByteArray(b) => String::from_utf8_lossy(b.as_slice()).into_owned(),
        // x-death and other structured RabbitMQ headers are not part of our header set.
        _ => return None,
    })
}

fn headers_of(props: &BasicProperties) -> Headers {
    let mut out = Headers::new();
    if let Some(table) = props.headers() {
        for (k, v) in table.inner() {
            if let Some(text) = header_text(v) {
                out.insert(k.as_str(), text);
            }
        }
    }
    // Messages from plain AMQP publishers (e.g. the original .NET services) carry ids only as
    // properties, or not at all.
    if out.message_id().is_none()
        && let Some(id) = props.message_id()
    {
        out.insert(headers::MESSAGE_ID, id.as_str());
    }
    if out.correlation_id().is_none()
        && let Some(id) = props.correlation_id()
    {
        out.insert(headers::CORRELATION_ID, id.as_str());
    }
    out
}

#[async_trait]
impl MessageBroker for RabbitBroker {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn declare(&self, topology: &Topology) -> Result<()> {
        {
            let mut declared = self
                .inner
                .declared
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            *declared = std::mem::take(&mut *declared).merge(topology);
        }
        let deadline = Instant::now() + self.inner.options.publish_timeout;
        loop {
            let conn = self
                .inner
                .connection(&self.inner.consume_conn, deadline)
                .await?;
            match declare_on(&conn, topology).await {
                Ok(()) => return Ok(()),
                Err(e) if e.is_transient() && Instant::now() < deadline => {
                    tokio::time::sleep(self.inner.options.reconnect_min).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<()> {
        self.inner.publish(exchange, routing_key, message).await
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn QueueConsumer>> {
        let seq = self.inner.consumer_seq.fetch_add(1, Ordering::Relaxed);
        let mut consumer = RabbitQueueConsumer {
            inner: self.inner.clone(),
            queue: queue.into(),
            prefetch: prefetch.max(1),
            tag: format!("{}.{}.{}", self.inner.options.connection_name, queue, seq),
            current: None,
        };
        // Subscribe now so a missing queue is reported to the caller, not on the first next().
        let deadline = Instant::now() + self.inner.options.publish_timeout;
        consumer.current = Some(consumer.subscribe(deadline).await?);
        Ok(Box::new(consumer))
    }

    async fn check(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(2);
        self.inner
            .connection(&self.inner.consume_conn, deadline)
            .await?;
        Ok(())
    }
}

struct RabbitQueueConsumer {
    inner: Arc<Inner>,
    queue: String,
    prefetch: u16,
    tag: String,
    current: Option<(lapin::Consumer, Channel)>,
}

impl RabbitQueueConsumer {
    async fn subscribe(&self, deadline: Instant) -> Result<(lapin::Consumer, Channel)> {
        let conn = self
            .inner
            .connection(&self.inner.consume_conn, deadline)
            .await?;
        let ch = conn.create_channel().await.map_err(unavailable)?;
        ch.basic_qos(self.prefetch, BasicQosOptions::default())
            .await
            .map_err(unavailable)?;
        let consumer = ch
            .basic_consume(
                self.queue.as_str().into(),
                self.tag.as_str().into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| classify(e, "consume", &self.queue))?;
        Ok((consumer, ch))
    }
}

#[async_trait]
impl QueueConsumer for RabbitQueueConsumer {
    async fn next(&mut self) -> Result<Delivery> {
        let mut delay = self.inner.options.reconnect_min;
        loop {
            if self.current.is_none() {
                let deadline = Instant::now() + self.inner.options.reconnect_max * 2;
                match self.subscribe(deadline).await {
                    Ok(c) => {
                        tracing::info!(queue = %self.queue, "consumer re-attached");
                        self.current = Some(c);
                        delay = self.inner.options.reconnect_min;
                    }
                    Err(e) if e.is_transient() => {
                        tracing::debug!(queue = %self.queue, error = %e, "consumer waiting for RabbitMQ");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(self.inner.options.reconnect_max);
                        continue;
                    }
                    Err(e) => return Err(e),
                }
            }
            let Some((consumer, _)) = self.current.as_mut() else {
                continue;
            };
            match consumer.next().await {
                Some(Ok(d)) => {
                    let message = Message {
                        headers: headers_of(&d.properties),
                        payload: d.data.into(),
                    };
                    return Ok(Delivery {
                        message,
                        queue: self.queue.clone(),
                        exchange: d.exchange.as_str().to_owned(),
                        routing_key: d.routing_key.as_str().to_owned(),
                        redelivered: d.redelivered,
                        settle: Box::new(RabbitSettle {
                            acker: d.acker,
                            inner: self.inner.clone(),
                        }),
                    });
                }
                Some(Err(e)) => {
                    tracing::warn!(queue = %self.queue, error = %e, "consumer lost its channel; reconnecting");
                    self.current = None;
                }
                None => {
                    tracing::warn!(queue = %self.queue, "consumer cancelled; reconnecting");
                    self.current = None;
                }
            }
        }
    }
}

impl Drop for RabbitQueueConsumer {
    fn drop(&mut self) {
        if let Some((_, ch)) = self.current.take() {
            // Closing the channel returns unacked deliveries to the queue at once.
            tokio::spawn(async move {
                let _ = ch.close(200, ShortString::from("consumer dropped")).await;
            });
        }
    }
}

struct RabbitSettle {
    acker: lapin::Acker,
    inner: Arc<Inner>,
}

fn settle_error(e: lapin::Error) -> Error {
    Error::Stale {
        backend: BACKEND,
        what: "delivery",
        detail: format!("{e} (the broker redelivers it)"),
    }
}

#[async_trait]
impl Settle for RabbitSettle {
    async fn ack(&self) -> Result<()> {
        match self.acker.ack(BasicAckOptions::default()).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Stale {
                backend: BACKEND,
                what: "delivery",
                detail: "already settled or its channel is gone".into(),
            }),
            Err(e) => Err(settle_error(e)),
        }
    }

    async fn nack(&self, requeue: bool) -> Result<()> {
        match self
            .acker
            .nack(BasicNackOptions {
                requeue,
                multiple: false,
            })
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Stale {
                backend: BACKEND,
                what: "delivery",
                detail: "already settled or its channel is gone".into(),
            }),
            Err(e) => Err(settle_error(e)),
        }
    }

    async fn dead_letter(&self, message: &Message, queue: &str, reason: &str) -> Result<()> {
        // RabbitMQ's own dead-lettering cannot carry a reason, so publish the copy ourselves
        // (confirmed) and only then ack the original: a crash in between duplicates, never loses.
        let mut copy = message.clone();
        copy.headers.insert(headers::DEAD_LETTER_REASON, reason);
        copy.headers.insert(headers::DEAD_LETTER_QUEUE, queue);
        self.inner
            .publish(exchanges::DEAD_LETTER, queue, &copy)
            .await?;
        self.ack().await
    }
}
