//! Consumer loops used by every service: bounded concurrency, retry with exponential backoff for
//! transient errors, dead-lettering (with the reason) for messages that can never succeed, and a
//! graceful stop that finishes in-flight work and hands back the rest.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use contracts::headers;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::broker::{Delivery, QueueConsumer};
use crate::log::{EventLog, LogConsumer, LogRecord, TopicSpec};
use crate::{Message, Result};

/// What a handler reports when it fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandlerError {
    /// May succeed later (a dependency is down): retried with backoff.
    #[error("transient: {0}")]
    Transient(String),
    /// Will never succeed (undecodable, violates the contract): dead-lettered with this reason.
    #[error("permanent: {0}")]
    Permanent(String),
}

impl HandlerError {
    pub fn transient(e: impl std::fmt::Display) -> Self {
        Self::Transient(e.to_string())
    }

    pub fn permanent(e: impl std::fmt::Display) -> Self {
        Self::Permanent(e.to_string())
    }
}

impl From<crate::Error> for HandlerError {
    fn from(e: crate::Error) -> Self {
        if e.is_transient() {
            Self::Transient(e.to_string())
        } else {
            Self::Permanent(e.to_string())
        }
    }
}

#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts before a transiently failing message is dead-lettered.
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    fn backoff(&self, attempt: u32) -> Duration {
        let factor = 2u32.saturating_pow(attempt.saturating_sub(1).min(16));
        (self.initial_backoff * factor).min(self.max_backoff)
    }
}

#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Deliveries (or, for the log, partitions) processed at once.
    pub concurrency: usize,
    /// Log only: records of one partition handled at once. 1 (the default) keeps the
    /// partition's order; more lets slow records (a long recognition) not hold up the ones
    /// behind them, at the price of order. Commits stay contiguous either way: an offset is
    /// committed only when it and every record before it are done.
    pub per_partition: usize,
    pub retry: RetryPolicy,
    /// Label for logs and metrics.
    pub name: String,
}

impl RunOptions {
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            concurrency: 1,
            per_partition: 1,
            retry: RetryPolicy::default(),
            name: name.into(),
        }
    }

    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    pub fn per_partition(mut self, n: usize) -> Self {
        self.per_partition = n.max(1);
        self
    }
}

enum Verdict {
    Done,
    DeadLetter(String),
    /// Stopped by shutdown while waiting to retry.
    GiveBack,
}

/// Run `handler` with retries; what to do with the message afterwards.
async fn attempt<F, Fut>(
    name: &str,
    message: &Message,
    retry: &RetryPolicy,
    shutdown: &CancellationToken,
    handler: &F,
) -> Verdict
where
    F: Fn(Message) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let mut attempt = 0;
    loop {
        attempt += 1;
        let started = Instant::now();
        let outcome = handler(message.clone()).await;
        metrics::histogram!("messaging_handle_seconds", "consumer" => name.to_owned())
            .record(started.elapsed().as_secs_f64());
        match outcome {
            Ok(()) => {
                metrics::counter!("messaging_handled_total", "consumer" => name.to_owned(), "outcome" => "ok")
                    .increment(1);
                return Verdict::Done;
            }
            Err(HandlerError::Permanent(reason)) => {
                metrics::counter!("messaging_handled_total", "consumer" => name.to_owned(), "outcome" => "dead_letter")
                    .increment(1);
                tracing::warn!(consumer = name, message_id = ?message.headers.message_id(), %reason, "dead-lettering message");
                return Verdict::DeadLetter(reason);
            }
            Err(HandlerError::Transient(e)) if attempt >= retry.max_attempts => {
                metrics::counter!("messaging_handled_total", "consumer" => name.to_owned(), "outcome" => "dead_letter")
                    .increment(1);
                tracing::error!(consumer = name, attempt, error = %e, "giving up; dead-lettering message");
                return Verdict::DeadLetter(format!("gave up after {attempt} attempts: {e}"));
            }
            Err(HandlerError::Transient(e)) => {
                metrics::counter!("messaging_handled_total", "consumer" => name.to_owned(), "outcome" => "retry")
                    .increment(1);
                let wait = retry.backoff(attempt);
                tracing::warn!(consumer = name, attempt, ?wait, error = %e, "transient failure; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown.cancelled() => return Verdict::GiveBack,
                }
            }
        }
    }
}

/// Consume a queue until `shutdown`, settling each delivery by the handler's verdict:
/// ack on success, dead-letter (reason in `x-dead-letter-reason`) on a permanent error or when
/// retries run out, requeue when stopped mid-retry. On shutdown no new delivery is taken and
/// in-flight ones finish. Returns an error only if the queue itself is unusable.
pub async fn run_queue<F, Fut>(
    mut consumer: Box<dyn QueueConsumer>,
    options: RunOptions,
    shutdown: CancellationToken,
    handler: F,
) -> Result<()>
where
    F: Fn(Message) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(options.concurrency));
    let mut tasks = JoinSet::new();
    let result = loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => break Ok(()) },
            _ = shutdown.cancelled() => break Ok(()),
        };
        let delivery = tokio::select! {
            d = consumer.next() => d,
            _ = shutdown.cancelled() => break Ok(()),
        };
        let delivery = match delivery {
            Ok(d) => d,
            Err(e) => break Err(e),
        };
        let handler = handler.clone();
        let shutdown = shutdown.clone();
        let options = options.clone();
        tasks.spawn(async move {
            settle(delivery, &options, &shutdown, handler.as_ref()).await;
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    };
    while tasks.join_next().await.is_some() {}
    drop(consumer);
    result
}

async fn settle<F, Fut>(
    delivery: Delivery,
    options: &RunOptions,
    shutdown: &CancellationToken,
    handler: &F,
) where
    F: Fn(Message) -> Fut,
    Fut: Future<Output = Result<(), HandlerError>>,
{
    let name = &options.name;
    let outcome = match attempt(name, &delivery.message, &options.retry, shutdown, handler).await {
        Verdict::Done => delivery.ack().await,
        Verdict::GiveBack => delivery.requeue().await,
        Verdict::DeadLetter(reason) => {
            // If even the dead-letter publish fails, the message stays unacked and the broker
            // delivers it again once this consumer goes; nothing is lost.
            delivery.dead_letter(&reason).await
        }
    };
    if let Err(e) = outcome {
        tracing::warn!(consumer = %name, error = %e, "could not settle delivery; it will be redelivered");
    }
}

/// Consume a log until `shutdown`. Records of one partition are handled in order, one at a
/// time, and committed after each; up to `concurrency` partitions are handled in parallel.
/// Records that fail permanently (or run out of retries) go to `<topic>.dlq` with the reason in
/// `x-dead-letter-reason`, then are committed.
pub async fn run_log<F, Fut>(
    log: Arc<dyn EventLog>,
    consumer: Box<dyn LogConsumer>,
    options: RunOptions,
    shutdown: CancellationToken,
    handler: F,
) -> Result<()>
where
    F: Fn(LogRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let consumer: Arc<dyn LogConsumer> = Arc::from(consumer);
    let handler = Arc::new(handler);
    let permits = Arc::new(Semaphore::new(options.concurrency));
    let mut lanes: HashMap<(String, i32), mpsc::Sender<LogRecord>> = HashMap::new();
    let mut tasks = JoinSet::new();
    loop {
        let record = tokio::select! {
            r = consumer.recv() => r?,
            _ = shutdown.cancelled() => break,
        };
        let lane_key = (record.topic.clone(), record.partition);
        let lane = lanes.entry(lane_key).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(16);
            tasks.spawn(run_lane(
                rx,
                log.clone(),
                consumer.clone(),
                options.clone(),
                shutdown.clone(),
                permits.clone(),
                handler.clone(),
            ));
            tx
        });
        tokio::select! {
            sent = lane.send(record) => if sent.is_err() { break },
            _ = shutdown.cancelled() => break,
        }
        while tasks.try_join_next().is_some() {}
    }
    drop(lanes);
    while tasks.join_next().await.is_some() {}
    Ok(())
}

async fn run_lane<F, Fut>(
    mut rx: mpsc::Receiver<LogRecord>,
    log: Arc<dyn EventLog>,
    consumer: Arc<dyn LogConsumer>,
    options: RunOptions,
    shutdown: CancellationToken,
    permits: Arc<Semaphore>,
    handler: Arc<F>,
) where
    F: Fn(LogRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let dlq_ready = Arc::new(tokio::sync::OnceCell::new());
    // Offsets taken but not finished; everything below the smallest is done.
    let mut open: std::collections::BTreeSet<i64> = Default::default();
    let mut highest_done: Option<i64> = None;
    let mut committed: Option<i64> = None;
    let mut running = JoinSet::new();
    let mut stopped = false;
    let mut topic_partition = None;
    let mut first_taken: Option<i64> = None;
    loop {
        let room = running.len() < options.per_partition;
        tokio::select! {
            biased;
            Some(done) = running.join_next(), if !running.is_empty() => {
                match done {
                    Ok((offset, true)) => {
                        open.remove(&offset);
                        highest_done = highest_done.max(Some(offset));
                    }
                    // Given back or failed to dead-letter: never commit past it.
                    Ok((_, false)) => stopped = true,
                    Err(_) => stopped = true,
                }
            }
            record = rx.recv(), if room && !stopped => {
                let Some(record) = record else { stopped = true; continue };
                if shutdown.is_cancelled() {
                    // Not handled, not committed: delivered again after the restart.
                    stopped = true;
                    continue;
                }
                topic_partition.get_or_insert_with(|| (record.topic.clone(), record.partition));
                first_taken.get_or_insert(record.offset);
                open.insert(record.offset);
                let (log, opts, shutdown, permits, handler, dlq_ready) = (
                    log.clone(),
                    options.clone(),
                    shutdown.clone(),
                    permits.clone(),
                    handler.clone(),
                    dlq_ready.clone(),
                );
                running.spawn(async move {
                    let offset = record.offset;
                    let Ok(_permit) = permits.acquire().await else {
                        return (offset, false);
                    };
                    let ok = process(record, &log, &opts, &shutdown, handler.as_ref(), &dlq_ready).await;
                    (offset, ok)
                });
            }
            else => break,
        }
        // Everything taken below the oldest open record is done; with none open, all is.
        let target = match open.first() {
            Some(first) => Some(first - 1),
            None => highest_done,
        };
        if let (Some(target), Some(first), Some((topic, partition))) =
            (target, first_taken, &topic_partition)
            && target >= first
            && committed.is_none_or(|c| target > c)
        {
            match consumer.commit(topic, *partition, target).await {
                Ok(()) => committed = Some(target),
                Err(e) => {
                    tracing::warn!(consumer = %options.name, error = %e, "commit failed; the record may come again")
                }
            }
        }
        if stopped && running.is_empty() {
            break;
        }
    }
}

/// Handle one record with retries; dead-letter it when it can never succeed. True when the
/// record is finished (handled or dead-lettered) and may be committed.
async fn process<F, Fut>(
    record: LogRecord,
    log: &Arc<dyn EventLog>,
    options: &RunOptions,
    shutdown: &CancellationToken,
    handler: &F,
    dlq_ready: &tokio::sync::OnceCell<()>,
) -> bool
where
    F: Fn(LogRecord) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    let by_record = |m: Message| {
        let mut r = record.clone();
        r.message = m;
        handler(r)
    };
    let verdict = attempt(
        &options.name,
        &record.message,
        &options.retry,
        shutdown,
        &by_record,
    )
    .await;
    match verdict {
        Verdict::Done => true,
        Verdict::GiveBack => false,
        Verdict::DeadLetter(reason) => {
            let dlq = format!("{}.dlq", record.topic);
            let created = dlq_ready
                .get_or_try_init(|| async {
                    log.create_topics(&[TopicSpec::new(dlq.clone(), 1)]).await
                })
                .await;
            if let Err(e) = created {
                tracing::error!(error = %e, topic = %dlq, "cannot create dead-letter topic; not committing");
                return false;
            }
            let mut copy = record.message.clone();
            copy.headers
                .insert(headers::DEAD_LETTER_REASON, reason.as_str());
            copy.headers
                .insert(headers::DEAD_LETTER_QUEUE, record.topic.as_str());
            let key = record.key.clone().unwrap_or_default();
            if let Err(e) = log.produce(&dlq, &key, &copy).await {
                tracing::error!(error = %e, topic = %dlq, "dead-letter produce failed; not committing");
                return false;
            }
            metrics::counter!("messaging_dead_lettered_total", "queue" => dlq).increment(1);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(1),
        };
        assert_eq!(p.backoff(1), Duration::from_millis(100));
        assert_eq!(p.backoff(2), Duration::from_millis(200));
        assert_eq!(p.backoff(4), Duration::from_millis(800));
        assert_eq!(p.backoff(5), Duration::from_secs(1));
        assert_eq!(p.backoff(60), Duration::from_secs(1));
    }
}
