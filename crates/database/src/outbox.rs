//! The transactional outbox: [`enqueue`] inside the caller's transaction, [`Relay`] publishes.
//!
//! Guarantees: a row is marked sent only after the broker acknowledged it (Kafka acks=all,
//! RabbitMQ confirm), so a crash between commit and publish loses nothing — the row is still
//! pending at the next start. Rows with the same destination and key are published in order; a
//! failure holds back the rest of that key until the retry. Several relays (replicas) share the
//! table through leases; a crashed relay's lease runs out. Delivery is at-least-once; the row id is
//! the message's `x-message-id`, so consumers dedupe retries.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use contracts::headers;
use messaging::{EventLog, Headers, Message, MessageBroker};
use sqlx::{AnyConnection, Row};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::{Db, DbError, now_ms};

/// Where a message goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// Kafka topic; the key picks the partition.
    Log { topic: String },
    /// RabbitMQ exchange with a routing key; a message no queue receives is an error (retried).
    Broker {
        exchange: String,
        routing_key: String,
    },
    /// A notification on a fanout exchange: when no queue is bound (nobody is listening, e.g. no
    /// gateway replica runs), it is dropped and counted instead of blocking the ones after it.
    Notify { exchange: String },
}

/// A message to publish once the transaction commits.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub destination: Destination,
    /// Kafka key (ignored for the broker, which routes by routing key).
    pub key: String,
    pub message: Message,
}

/// Insert `out` into the outbox on `conn` — call it inside the transaction that makes the state
/// change the message reports. Returns the message id.
pub async fn enqueue(conn: &mut AnyConnection, out: &Outgoing) -> Result<String, DbError> {
    let mut message = out.message.clone();
    let id = match message.headers.message_id() {
        Some(id) => id.to_owned(),
        None => {
            let id = uuid::Uuid::now_v7().to_string();
            message.headers.insert(headers::MESSAGE_ID, id.clone());
            id
        }
    };
    let (destination, target, route_key) = match &out.destination {
        Destination::Log { topic } => ("log", topic.clone(), out.key.clone()),
        Destination::Broker {
            exchange,
            routing_key,
        } => ("broker", exchange.clone(), routing_key.clone()),
        Destination::Notify { exchange } => ("notify", exchange.clone(), String::new()),
    };
    let headers_json = serde_json::to_string(&message.headers).unwrap_or_else(|_| "{}".into());
    let payload = String::from_utf8_lossy(&message.payload).into_owned();
    sqlx::query(
        "INSERT INTO outbox (id, destination, target, route_key, headers, payload, created_at, attempts) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, 0)",
    )
    .bind(&id)
    .bind(destination)
    .bind(target)
    .bind(route_key)
    .bind(headers_json)
    .bind(payload)
    .bind(now_ms())
    .persistent(false)
    .execute(conn)
    .await?;
    Ok(id)
}

#[derive(Debug, Clone)]
pub struct RelayOptions {
    /// Rows claimed per round.
    pub batch: i64,
    /// How long a claim holds before another relay may take the rows.
    pub lease: Duration,
    /// Poll interval when idle (commits in this process wake the relay at once).
    pub idle_poll: Duration,
    /// Sent rows are deleted after this long.
    pub retention: Duration,
    pub max_backoff: Duration,
}

impl Default for RelayOptions {
    fn default() -> Self {
        Self {
            batch: 200,
            // Short: a crashed relay's rows wait this long for a restarted one. Publishing a batch
            // takes milliseconds; an overrun only means a duplicate with the same message id.
            lease: Duration::from_secs(15),
            idle_poll: Duration::from_secs(1),
            retention: Duration::from_secs(24 * 3600),
            max_backoff: Duration::from_secs(30),
        }
    }
}

/// Publishes pending outbox rows.
#[derive(Clone)]
pub struct Relay {
    name: String,
    db: Db,
    log: Option<Arc<dyn EventLog>>,
    broker: Option<Arc<dyn MessageBroker>>,
    owner: String,
    wake: Arc<Notify>,
    options: RelayOptions,
}

struct Row_ {
    id: String,
    destination: String,
    target: String,
    route_key: String,
    headers: String,
    payload: String,
    attempts: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: i64,
    pub oldest_pending_ms: Option<i64>,
}

impl Relay {
    /// `name` labels metrics and logs (the service name).
    pub fn new(
        name: impl Into<String>,
        db: Db,
        log: Option<Arc<dyn EventLog>>,
        broker: Option<Arc<dyn MessageBroker>>,
        options: RelayOptions,
    ) -> Self {
        Self {
            name: name.into(),
            db,
            log,
            broker,
            owner: uuid::Uuid::new_v4().to_string(),
            wake: Arc::new(Notify::new()),
            options,
        }
    }

    /// Call `notify_one()` after committing a transaction with outbox rows.
    pub fn waker(&self) -> Arc<Notify> {
        self.wake.clone()
    }

    /// Publish until `shutdown`; the round in progress finishes first.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut failures: u32 = 0;
        let mut last_housekeeping = tokio::time::Instant::now() - Duration::from_secs(3600);
        loop {
            if shutdown.is_cancelled() {
                break;
            }
            if last_housekeeping.elapsed() > Duration::from_secs(10) {
                self.housekeeping().await;
                last_housekeeping = tokio::time::Instant::now();
            }
            let wait = match self.publish_pending().await {
                Ok(0) => {
                    failures = 0;
                    self.options.idle_poll
                }
                Ok(_) => {
                    failures = 0;
                    continue;
                }
                Err(e) => {
                    failures += 1;
                    let wait = backoff(failures, self.options.max_backoff);
                    tracing::warn!(relay = %self.name, error = %e, ?wait, "outbox relay round failed");
                    wait
                }
            };
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.cancelled() => {}
            }
        }
        tracing::debug!(relay = %self.name, "outbox relay stopped");
    }

    async fn housekeeping(&self) {
        match self.stats().await {
            Ok(s) => {
                metrics::gauge!("outbox_pending", "service" => self.name.clone())
                    .set(s.pending as f64);
                let lag = s
                    .oldest_pending_ms
                    .map_or(0.0, |t| (now_ms() - t).max(0) as f64 / 1000.0);
                metrics::gauge!("outbox_lag_seconds", "service" => self.name.clone()).set(lag);
            }
            Err(e) => tracing::debug!(error = %e, "outbox stats"),
        }
        let cutoff = now_ms() - self.options.retention.as_millis() as i64;
        let cleanup = async {
            let mut tx = self.db.begin().await?;
            sqlx::query("DELETE FROM outbox WHERE sent_at IS NOT NULL AND sent_at < $1")
                .bind(cutoff)
                .persistent(false)
                .execute(&mut *tx)
                .await?;
            tx.commit().await
        };
        if let Err(e) = cleanup.await {
            tracing::debug!(error = %e, "outbox cleanup");
        }
    }

    /// Pending rows and the age of the oldest (metrics, tests).
    pub async fn stats(&self) -> Result<OutboxStats, DbError> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(
            "SELECT COUNT(*) AS n, MIN(created_at) AS oldest FROM outbox WHERE sent_at IS NULL",
        )
        .persistent(false)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(OutboxStats {
            pending: row.try_get::<i64, _>("n")?,
            oldest_pending_ms: row.try_get::<Option<i64>, _>("oldest")?,
        })
    }

    /// One round: claim due rows, publish them (in order per key, keys in parallel), mark them.
    /// Returns how many were published; an error if rows were due and none could be published.
    pub async fn publish_pending(&self) -> Result<usize, DbError> {
        let now = now_ms();
        let lease_until = now + self.options.lease.as_millis() as i64;
        // One transaction per statement group: PgBouncer's transaction pooling keeps a server
        // connection only for a transaction, and sqlx parses and executes in separate round trips.
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "UPDATE outbox SET lease_owner = $1, lease_until = $2 \
             WHERE sent_at IS NULL AND (lease_until IS NULL OR lease_until < $3) AND id IN ( \
               SELECT id FROM outbox WHERE sent_at IS NULL AND (lease_until IS NULL OR lease_until < $3) \
               ORDER BY created_at, id LIMIT $4)",
        )
        .bind(&self.owner)
        .bind(lease_until)
        .bind(now)
        .bind(self.options.batch)
        .persistent(false)
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(
            "SELECT id, destination, target, route_key, headers, payload, attempts FROM outbox \
             WHERE lease_owner = $1 AND sent_at IS NULL ORDER BY created_at, id",
        )
        .bind(&self.owner)
        .persistent(false)
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        if rows.is_empty() {
            return Ok(0);
        }
        let mut groups: BTreeMap<(String, String, String), Vec<Row_>> = BTreeMap::new();
        for r in rows {
            let row = Row_ {
                id: r.try_get("id")?,
                destination: r.try_get("destination")?,
                target: r.try_get("target")?,
                route_key: r.try_get("route_key")?,
                headers: r.try_get("headers")?,
                payload: r.try_get("payload")?,
                attempts: r
                    .try_get::<i64, _>("attempts")
                    .or_else(|_| r.try_get::<i32, _>("attempts").map(i64::from))?,
            };
            groups
                .entry((
                    row.destination.clone(),
                    row.target.clone(),
                    row.route_key.clone(),
                ))
                .or_default()
                .push(row);
        }
        let due = groups.values().map(Vec::len).sum::<usize>();
        let results =
            futures::future::join_all(groups.into_values().map(|g| self.publish_group(g))).await;
        let mut published = 0;
        for r in results {
            published += r?;
        }
        if published == 0 && due > 0 {
            return Err(DbError::Sqlx(sqlx::Error::Protocol(format!(
                "{due} outbox rows due, none could be published"
            ))));
        }
        Ok(published)
    }

    /// Publish one key's rows in order; stop at the first failure and hold back the rest.
    async fn publish_group(&self, rows: Vec<Row_>) -> Result<usize, DbError> {
        let mut published = 0;
        for (i, row) in rows.iter().enumerate() {
            match self.publish(row).await {
                Ok(()) => {
                    let mut tx = self.db.begin().await?;
                    sqlx::query(
                        "UPDATE outbox SET sent_at = $1, lease_owner = NULL, lease_until = NULL WHERE id = $2",
                    )
                    .bind(now_ms())
                    .bind(&row.id)
                    .persistent(false)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    published += 1;
                    metrics::counter!("outbox_published_total", "service" => self.name.clone())
                        .increment(1);
                }
                Err(e) => {
                    metrics::counter!("outbox_publish_failures_total", "service" => self.name.clone()).increment(1);
                    let retry_at = now_ms()
                        + backoff((row.attempts + 1) as u32, self.options.max_backoff).as_millis()
                            as i64;
                    tracing::warn!(relay = %self.name, id = %row.id, attempts = row.attempts + 1, error = %e, "publish from outbox failed; will retry");
                    let mut tx = self.db.begin().await?;
                    sqlx::query(
                        "UPDATE outbox SET attempts = attempts + 1, last_error = $1, lease_owner = NULL, lease_until = $2 WHERE id = $3",
                    )
                    .bind(e.to_string())
                    .bind(retry_at)
                    .bind(&row.id)
                    .persistent(false)
                    .execute(&mut *tx)
                    .await?;
                    // The rest of this key waits for the failed one, keeping order.
                    for later in &rows[i + 1..] {
                        sqlx::query(
                            "UPDATE outbox SET lease_owner = NULL, lease_until = $1 WHERE id = $2",
                        )
                        .bind(retry_at)
                        .bind(&later.id)
                        .persistent(false)
                        .execute(&mut *tx)
                        .await?;
                    }
                    tx.commit().await?;
                    break;
                }
            }
        }
        Ok(published)
    }

    async fn publish(&self, row: &Row_) -> Result<(), messaging::Error> {
        let headers: Headers = serde_json::from_str(&row.headers).unwrap_or_default();
        let message = Message {
            headers,
            payload: row.payload.clone().into_bytes().into(),
        };
        match row.destination.as_str() {
            "log" => {
                let log = self.log.as_ref().ok_or_else(|| messaging::Error::Invalid {
                    backend: "outbox",
                    detail: "no event log configured for log destinations".into(),
                })?;
                log.produce(&row.target, &row.route_key, &message)
                    .await
                    .map(|_| ())
            }
            "broker" => {
                let broker = self
                    .broker
                    .as_ref()
                    .ok_or_else(|| messaging::Error::Invalid {
                        backend: "outbox",
                        detail: "no message broker configured for broker destinations".into(),
                    })?;
                broker.publish(&row.target, &row.route_key, &message).await
            }
            "notify" => {
                let broker = self
                    .broker
                    .as_ref()
                    .ok_or_else(|| messaging::Error::Invalid {
                        backend: "outbox",
                        detail: "no message broker configured for notifications".into(),
                    })?;
                match broker.publish(&row.target, "", &message).await {
                    Err(messaging::Error::Unroutable { .. }) => {
                        metrics::counter!("outbox_unrouted_total", "service" => self.name.clone(), "exchange" => row.target.clone())
                            .increment(1);
                        tracing::debug!(relay = %self.name, exchange = %row.target, "no queue bound; notification dropped");
                        Ok(())
                    }
                    other => other,
                }
            }
            other => Err(messaging::Error::Invalid {
                backend: "outbox",
                detail: format!("unknown destination `{other}`"),
            }),
        }
    }
}

fn backoff(failures: u32, max: Duration) -> Duration {
    let base = Duration::from_millis(250);
    (base * 2u32.saturating_pow(failures.saturating_sub(1).min(10))).min(max)
}
