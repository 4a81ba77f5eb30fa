//! In-process broker for the one-process mode (`trackunit up`): both faces — Kafka-style topics
//! with consumer groups and RabbitMQ-style exchanges/queues with acks — with the same semantics
//! the contract suite checks on the real brokers.
//!
//! With a data directory, every acknowledged change is journaled (flushed to the OS, optionally
//! fsynced) before the caller is told it happened, so a killed process loses nothing it
//! confirmed: at the next open, durable queues get their unacked messages back and consumer groups
//! resume after their last commit. Without one, it is memory only (tests, benches).

mod journal;
mod state;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use contracts::headers;
use contracts::names::exchanges;
use tokio::sync::Notify;

use self::journal::{Entry, Journal, Payload};
use self::state::{Member, QueueState, QueuedMessage, State, Unacked, assignment, headers_with};
use crate::broker::{Delivery, MessageBroker, QueueConsumer, Settle, Topology};
use crate::log::{
    EventLog, LogConsumer, LogRecord, RecordPosition, StartFrom, SubscribeOptions, TopicSpec,
};
use crate::{Error, Message, Result};

const BACKEND: &str = "in-process";

#[derive(Debug, Clone)]
pub struct InProcessOptions {
    /// Journal directory; `None` keeps everything in memory only.
    pub data_dir: Option<PathBuf>,
    /// fsync every journal write (survives power loss, not only a killed process). Slower.
    pub fsync: bool,
    /// Log records older than this are dropped when the journal is compacted.
    pub retention: Duration,
    /// Compact the journal when it has grown by this many bytes.
    pub compact_after_bytes: u64,
}

impl Default for InProcessOptions {
    fn default() -> Self {
        Self {
            data_dir: None,
            fsync: false,
            retention: Duration::from_secs(7 * 24 * 3600),
            compact_after_bytes: 64 * 1024 * 1024,
        }
    }
}

struct Core {
    state: State,
    journal: Option<Journal>,
    /// Bumped by [`InProcessBroker::restart`]; deliveries and members of an older epoch are stale.
    epoch: u64,
    /// Everything clients declared, declared again after a restart as reconnecting clients do.
    declared: Topology,
}

struct Inner {
    core: Mutex<Core>,
    options: InProcessOptions,
    log_changed: Notify,
    /// Per-queue wakeups; never removed, so a waiter never holds a replaced one.
    queue_changed: Mutex<HashMap<String, Arc<Notify>>>,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Core> {
        // A panic while holding the lock leaves consistent state (journal first, then apply).
        self.core.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue_notify(&self, queue: &str) -> Arc<Notify> {
        let mut map = self.queue_changed.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(queue.to_owned()).or_default().clone()
    }

    fn wake_queue(&self, queue: &str) {
        self.queue_notify(queue).notify_waiters();
    }

    fn wake_all(&self) {
        self.log_changed.notify_waiters();
        let map = self.queue_changed.lock().unwrap_or_else(|p| p.into_inner());
        for n in map.values() {
            n.notify_waiters();
        }
    }
}

impl Core {
    /// Journal `entries` (if journaled), then apply them. On a journal error nothing changes.
    fn persist(&mut self, entries: Vec<Entry>, options: &InProcessOptions) -> Result<()> {
        if let Some(journal) = &mut self.journal {
            journal.append(&entries)?;
        }
        for e in entries {
            self.state.apply(e);
        }
        if let (Some(journal), Some(dir)) = (&self.journal, &options.data_dir)
            && journal.written > options.compact_after_bytes
        {
            let keep_after = state::now_ms() - options.retention.as_millis() as i64;
            let snapshot = self.state.snapshot(keep_after);
            self.journal = Some(Journal::rewrite(dir, &snapshot, options.fsync)?);
            tracing::debug!(
                entries = snapshot.len(),
                "in-process broker journal compacted"
            );
        }
        Ok(())
    }

    /// Journal the entries flagged durable (in one append), then apply all of them.
    fn persist_mixed(
        &mut self,
        entries: Vec<(Entry, bool)>,
        options: &InProcessOptions,
    ) -> Result<()> {
        let (durable, volatile): (Vec<_>, Vec<_>) = entries.into_iter().partition(|(_, d)| *d);
        self.persist(durable.into_iter().map(|(e, _)| e).collect(), options)?;
        for (e, _) in volatile {
            self.state.apply(e);
        }
        Ok(())
    }

    fn is_durable_queue(&self, name: &str) -> bool {
        self.state.queues.get(name).is_some_and(|q| q.spec.durable)
    }
}

/// The in-process broker. Cheap to clone; all clones share one broker.
#[derive(Clone)]
pub struct InProcessBroker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InProcessBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessBroker")
            .field("data_dir", &self.inner.options.data_dir)
            .finish()
    }
}

impl Default for InProcessBroker {
    fn default() -> Self {
        Self::memory()
    }
}

impl InProcessBroker {
    /// Memory only.
    pub fn memory() -> Self {
        Self::build(InProcessOptions::default(), State::default(), None)
    }

    /// Open (or create) a journaled broker.
    pub fn open(options: InProcessOptions) -> Result<Self> {
        let (state, journal) = load(&options)?;
        Ok(Self::build(options, state, journal))
    }

    fn build(options: InProcessOptions, state: State, journal: Option<Journal>) -> Self {
        Self {
            inner: Arc::new(Inner {
                core: Mutex::new(Core {
                    state,
                    journal,
                    epoch: 0,
                    declared: Topology::default(),
                }),
                options,
                log_changed: Notify::new(),
                queue_changed: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// What a broker restart does, in place: state is rebuilt from the journal (memory only:
    /// everything is lost), unacknowledged deliveries and group memberships become stale, and
    /// consumers re-attach on their next call — as clients of a real broker reconnect.
    pub fn restart(&self) -> Result<()> {
        let mut core = self.inner.lock();
        let (mut state, journal) = load(&self.inner.options)?;
        let declared = core.declared.clone();
        for e in &declared.exchanges {
            state.apply(Entry::Exchange {
                name: e.name.clone(),
                kind: e.kind,
            });
        }
        for q in &declared.queues {
            state.apply(Entry::Queue { spec: q.clone() });
        }
        for b in &declared.bindings {
            state.apply(Entry::Bind { binding: b.clone() });
        }
        state.next_id = state.next_id.max(core.state.next_id);
        core.state = state;
        core.journal = journal;
        core.epoch += 1;
        drop(core);
        self.inner.wake_all();
        Ok(())
    }

    /// Messages ready (not delivered) in `queue`; `None` if it does not exist. For tests/metrics.
    pub fn queue_depth(&self, queue: &str) -> Option<usize> {
        self.inner
            .lock()
            .state
            .queues
            .get(queue)
            .map(|q| q.ready.len())
    }
}

fn load(options: &InProcessOptions) -> Result<(State, Option<Journal>)> {
    let mut state = State::default();
    let Some(dir) = &options.data_dir else {
        return Ok((state, None));
    };
    for entry in Journal::read(dir)? {
        state.apply(entry);
    }
    let keep_after = state::now_ms() - options.retention.as_millis() as i64;
    let journal = Journal::rewrite(dir, &state.snapshot(keep_after), options.fsync)?;
    tracing::debug!(path = %journal.path().display(), "in-process broker journal opened");
    Ok((state, Some(journal)))
}

#[async_trait]
impl EventLog for InProcessBroker {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn create_topics(&self, topics: &[TopicSpec]) -> Result<()> {
        let mut core = self.inner.lock();
        let entries: Vec<Entry> = topics
            .iter()
            .filter(|t| !core.state.topics.contains_key(&t.name))
            .map(|t| Entry::Topic {
                name: t.name.clone(),
                partitions: t.partitions.max(1),
            })
            .collect();
        if entries.is_empty() {
            return Ok(());
        }
        core.persist(entries, &self.inner.options)?;
        drop(core);
        self.inner.log_changed.notify_waiters();
        Ok(())
    }

    async fn produce(&self, topic: &str, key: &str, message: &Message) -> Result<RecordPosition> {
        let mut core = self.inner.lock();
        let Some(t) = core.state.topics.get(topic) else {
            return Err(Error::NotFound {
                backend: BACKEND,
                kind: "topic",
                name: topic.into(),
            });
        };
        let partition = state::partition_for(key, t.partitions.len());
        let offset = t.partitions[partition as usize].end();
        core.persist(
            vec![Entry::Append {
                topic: topic.into(),
                partition,
                offset,
                key: Some(key.into()),
                headers: message.headers.clone(),
                payload: Payload(message.payload.clone()),
                at_ms: state::now_ms(),
            }],
            &self.inner.options,
        )?;
        drop(core);
        self.inner.log_changed.notify_waiters();
        metrics::counter!("messaging_produced_total", "backend" => BACKEND, "topic" => topic.to_owned())
            .increment(1);
        Ok(RecordPosition {
            topic: topic.into(),
            partition,
            offset,
        })
    }

    async fn subscribe(
        &self,
        group: &str,
        topics: &[&str],
        options: SubscribeOptions,
    ) -> Result<Box<dyn LogConsumer>> {
        if topics.is_empty() {
            return Err(Error::Invalid {
                backend: BACKEND,
                detail: "subscribe needs at least one topic".into(),
            });
        }
        let topics: Vec<String> = topics.iter().map(|t| (*t).to_owned()).collect();
        let mut core = self.inner.lock();
        let id = join_group(&mut core, group, &topics);
        let epoch = core.epoch;
        drop(core);
        self.inner.log_changed.notify_waiters();
        Ok(Box::new(MemLogConsumer {
            inner: self.inner.clone(),
            group: group.into(),
            topics,
            start_from: options.start_from,
            member: Mutex::new(MemberCtx {
                id,
                epoch,
                positions: HashMap::new(),
                assigned: Vec::new(),
                cursor: 0,
            }),
        }))
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }
}

fn join_group(core: &mut Core, group: &str, topics: &[String]) -> u64 {
    let id = core.state.next_id();
    let g = core.state.groups.entry(group.to_owned()).or_default();
    g.members.push(Member {
        id,
        topics: topics.to_vec(),
    });
    g.generation += 1;
    id
}

struct MemberCtx {
    id: u64,
    epoch: u64,
    positions: HashMap<(String, i32), i64>,
    assigned: Vec<(String, i32)>,
    cursor: usize,
}

struct MemLogConsumer {
    inner: Arc<Inner>,
    group: String,
    topics: Vec<String>,
    start_from: StartFrom,
    member: Mutex<MemberCtx>,
}

impl MemLogConsumer {
    fn member(&self) -> MutexGuard<'_, MemberCtx> {
        self.member.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-join after a restart and bring the assignment up to date (rebalance, new topics).
    fn refresh(&self, core: &mut Core, m: &mut MemberCtx) -> bool {
        let mut rejoined = false;
        if m.epoch != core.epoch {
            m.id = join_group(core, &self.group, &self.topics);
            m.epoch = core.epoch;
            m.positions.clear();
            rejoined = true;
        }
        let Some(group) = core.state.groups.get(&self.group) else {
            return rejoined;
        };
        let assigned = assignment(group, &core.state.topics, m.id);
        m.positions.retain(|tp, _| assigned.contains(tp));
        for (topic, partition) in &assigned {
            let key = (topic.clone(), *partition);
            if m.positions.contains_key(&key) {
                continue;
            }
            let start = match group.committed.get(&key) {
                Some(offset) => *offset,
                None => {
                    let p = &core.state.topics[topic].partitions[*partition as usize];
                    match self.start_from {
                        StartFrom::Earliest => p.base,
                        StartFrom::Latest => p.end(),
                    }
                }
            };
            m.positions.insert(key, start);
        }
        m.assigned = assigned;
        rejoined
    }
}

#[async_trait]
impl LogConsumer for MemLogConsumer {
    async fn recv(&self) -> Result<LogRecord> {
        loop {
            let notified = self.inner.log_changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut core = self.inner.lock();
                let mut m = self.member();
                if self.refresh(&mut core, &mut m) {
                    drop(m);
                    drop(core);
                    self.inner.log_changed.notify_waiters();
                    continue;
                }
                let n = m.assigned.len();
                for i in 0..n {
                    let idx = (m.cursor + i) % n;
                    let (topic, partition) = m.assigned[idx].clone();
                    let p = &core.state.topics[&topic].partitions[partition as usize];
                    let key = (topic.clone(), partition);
                    let pos = m.positions.get(&key).copied().unwrap_or(p.base).max(p.base);
                    if let Some(record) = p.get(pos) {
                        let out = LogRecord {
                            topic,
                            partition,
                            offset: pos,
                            key: record.key.clone(),
                            message: record.message.clone(),
                            timestamp_ms: Some(record.at_ms),
                        };
                        m.positions.insert(key, pos + 1);
                        m.cursor = idx + 1;
                        return Ok(out);
                    }
                }
            }
            notified.await;
        }
    }

    async fn commit(&self, topic: &str, partition: i32, offset: i64) -> Result<()> {
        let mut core = self.inner.lock();
        let mut m = self.member();
        let stale = |detail: String| Error::Stale {
            backend: BACKEND,
            what: "commit",
            detail,
        };
        if m.epoch != core.epoch {
            return Err(stale(
                "the broker restarted since this record was read".into(),
            ));
        }
        self.refresh(&mut core, &mut m);
        if !m
            .assigned
            .iter()
            .any(|(t, p)| t == topic && *p == partition)
        {
            return Err(stale(format!(
                "partition {topic}/{partition} is no longer assigned to this member"
            )));
        }
        core.persist(
            vec![Entry::Commit {
                group: self.group.clone(),
                topic: topic.into(),
                partition,
                offset: offset + 1,
            }],
            &self.inner.options,
        )
    }

    async fn assignment(&self) -> Result<Vec<(String, i32)>> {
        let mut core = self.inner.lock();
        let mut m = self.member();
        self.refresh(&mut core, &mut m);
        Ok(m.assigned.clone())
    }
}

impl Drop for MemLogConsumer {
    fn drop(&mut self) {
        let mut core = self.inner.lock();
        let m = self.member();
        if m.epoch == core.epoch
            && let Some(g) = core.state.groups.get_mut(&self.group)
        {
            g.members.retain(|x| x.id != m.id);
            g.generation += 1;
        }
        drop(m);
        drop(core);
        self.inner.log_changed.notify_waiters();
    }
}

#[async_trait]
impl MessageBroker for InProcessBroker {
    fn backend(&self) -> &'static str {
        BACKEND
    }

    async fn declare(&self, topology: &Topology) -> Result<()> {
        let mut core = self.inner.lock();
        let mut durable = Vec::new();
        let mut volatile = Vec::new();
        for e in &topology.exchanges {
            match core.state.exchanges.get(&e.name) {
                Some(kind) if *kind != e.kind => {
                    return Err(Error::Invalid {
                        backend: BACKEND,
                        detail: format!(
                            "exchange `{}` exists as {:?}, declared as {:?}",
                            e.name, kind, e.kind
                        ),
                    });
                }
                Some(_) => {}
                None => durable.push(Entry::Exchange {
                    name: e.name.clone(),
                    kind: e.kind,
                }),
            }
        }
        for q in &topology.queues {
            if !core.state.queues.contains_key(&q.name) {
                let entry = Entry::Queue { spec: q.clone() };
                if q.durable {
                    durable.push(entry)
                } else {
                    volatile.push(entry)
                }
            }
        }
        for b in &topology.bindings {
            if !core.state.bindings.contains(b) {
                let to_durable = core.is_durable_queue(&b.queue)
                    || topology.queue_spec(&b.queue).is_some_and(|q| q.durable);
                let entry = Entry::Bind { binding: b.clone() };
                if to_durable {
                    durable.push(entry)
                } else {
                    volatile.push(entry)
                }
            }
        }
        core.persist(durable, &self.inner.options)?;
        for e in volatile {
            core.state.apply(e);
        }
        core.declared = std::mem::take(&mut core.declared).merge(topology);
        Ok(())
    }

    async fn publish(&self, exchange: &str, routing_key: &str, message: &Message) -> Result<()> {
        let mut core = self.inner.lock();
        let targets = route(&core.state, exchange, routing_key)?;
        let mut entries = Vec::new();
        for queue in &targets {
            let id = core.state.next_id();
            let entry = Entry::Enqueue {
                queue: queue.clone(),
                id,
                exchange: exchange.into(),
                routing_key: routing_key.into(),
                headers: message.headers.clone(),
                payload: Payload(message.payload.clone()),
            };
            entries.push((entry, core.is_durable_queue(queue)));
        }
        core.persist_mixed(entries, &self.inner.options)?;
        drop(core);
        for queue in &targets {
            self.inner.wake_queue(queue);
        }
        metrics::counter!("messaging_published_total", "backend" => BACKEND, "exchange" => exchange.to_owned())
            .increment(1);
        Ok(())
    }

    async fn consume(&self, queue: &str, prefetch: u16) -> Result<Box<dyn QueueConsumer>> {
        let mut core = self.inner.lock();
        let id = core.state.next_id();
        let epoch = core.epoch;
        let Some(q) = core.state.queues.get_mut(queue) else {
            return Err(Error::NotFound {
                backend: BACKEND,
                kind: "queue",
                name: queue.into(),
            });
        };
        q.consumers.insert(id, 0);
        Ok(Box::new(MemQueueConsumer {
            inner: self.inner.clone(),
            queue: queue.into(),
            prefetch: prefetch.max(1) as usize,
            id,
            epoch,
        }))
    }

    async fn check(&self) -> Result<()> {
        Ok(())
    }
}

fn route(state: &State, exchange: &str, routing_key: &str) -> Result<Vec<String>> {
    // The AMQP default exchange routes to the queue named by the routing key.
    let targets = if exchange.is_empty() {
        if state.queues.contains_key(routing_key) {
            vec![routing_key.to_owned()]
        } else {
            Vec::new()
        }
    } else {
        state
            .route(exchange, routing_key)
            .ok_or_else(|| Error::NotFound {
                backend: BACKEND,
                kind: "exchange",
                name: exchange.into(),
            })?
    };
    if targets.is_empty() {
        return Err(Error::Unroutable {
            backend: BACKEND,
            exchange: exchange.into(),
            routing_key: routing_key.into(),
        });
    }
    Ok(targets)
}

struct MemQueueConsumer {
    inner: Arc<Inner>,
    queue: String,
    prefetch: usize,
    id: u64,
    epoch: u64,
}

#[async_trait]
impl QueueConsumer for MemQueueConsumer {
    async fn next(&mut self) -> Result<Delivery> {
        let notify = self.inner.queue_notify(&self.queue);
        loop {
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut core = self.inner.lock();
                if self.epoch != core.epoch {
                    // Broker restarted: attach again, as a reconnecting client would.
                    self.id = core.state.next_id();
                    self.epoch = core.epoch;
                }
                let tag = core.state.next_id();
                let epoch = core.epoch;
                let Some(q) = core.state.queues.get_mut(&self.queue) else {
                    return Err(Error::NotFound {
                        backend: BACKEND,
                        kind: "queue",
                        name: self.queue.clone(),
                    });
                };
                let in_flight = q.consumers.entry(self.id).or_insert(0);
                if *in_flight < self.prefetch
                    && let Some(entry) = q.ready.pop_front()
                {
                    *in_flight += 1;
                    let delivery = Delivery {
                        message: entry.message.clone(),
                        queue: self.queue.clone(),
                        exchange: entry.exchange.clone(),
                        routing_key: entry.routing_key.clone(),
                        redelivered: entry.redelivered,
                        settle: Box::new(MemSettle {
                            inner: self.inner.clone(),
                            queue: self.queue.clone(),
                            tag,
                            epoch,
                        }),
                    };
                    q.unacked.insert(
                        tag,
                        Unacked {
                            entry,
                            consumer: self.id,
                        },
                    );
                    return Ok(delivery);
                }
            }
            notified.await;
        }
    }
}

impl Drop for MemQueueConsumer {
    fn drop(&mut self) {
        let mut core = self.inner.lock();
        if core.epoch != self.epoch {
            return;
        }
        let Some(q) = core.state.queues.get_mut(&self.queue) else {
            return;
        };
        q.consumers.remove(&self.id);
        requeue_unacked_of(q, self.id);
        let delete = q.spec.auto_delete && q.consumers.is_empty();
        if delete {
            core.state.apply(Entry::DeleteQueue {
                name: self.queue.clone(),
            });
        }
        drop(core);
        self.inner.wake_queue(&self.queue);
    }
}

/// A consumer went away: its unacked deliveries go back to the head of the queue, in order.
fn requeue_unacked_of(q: &mut QueueState, consumer: u64) {
    let mut tags: Vec<u64> = q
        .unacked
        .iter()
        .filter(|(_, u)| u.consumer == consumer)
        .map(|(t, _)| *t)
        .collect();
    tags.sort_unstable_by(|a, b| b.cmp(a));
    for tag in tags {
        if let Some(u) = q.unacked.remove(&tag) {
            q.ready.push_front(QueuedMessage {
                redelivered: true,
                ..u.entry
            });
        }
    }
}

struct MemSettle {
    inner: Arc<Inner>,
    queue: String,
    tag: u64,
    epoch: u64,
}

impl MemSettle {
    fn stale(&self, detail: &str) -> Error {
        Error::Stale {
            backend: BACKEND,
            what: "delivery",
            detail: format!("{} (queue `{}`)", detail, self.queue),
        }
    }

    /// Check the delivery is still ours and return its queued message.
    fn current<'a>(&self, core: &'a mut Core) -> Result<&'a mut QueueState> {
        if core.epoch != self.epoch {
            return Err(self.stale("the broker restarted since this delivery"));
        }
        let q = core
            .state
            .queues
            .get_mut(&self.queue)
            .ok_or_else(|| self.stale("queue deleted"))?;
        if !q.unacked.contains_key(&self.tag) {
            return Err(self.stale("already settled"));
        }
        Ok(q)
    }

    /// Remove the message and route a copy to `tu.dlx` with the reason.
    fn move_to_dead_letter(&self, reason: &str) -> Result<()> {
        let mut core = self.inner.lock();
        let q = self.current(&mut core)?;
        let entry = q.unacked[&self.tag].entry.clone();
        let durable_source = q.spec.durable;
        let targets = route(&core.state, exchanges::DEAD_LETTER, &self.queue)?;
        let headers = headers_with(
            &entry.message.headers,
            &[
                (headers::DEAD_LETTER_REASON, reason),
                (headers::DEAD_LETTER_QUEUE, &self.queue),
            ],
        );
        let mut entries = Vec::new();
        for target in &targets {
            let id = core.state.next_id();
            let enqueue = Entry::Enqueue {
                queue: target.clone(),
                id,
                exchange: exchanges::DEAD_LETTER.into(),
                routing_key: self.queue.clone(),
                headers: headers.clone(),
                payload: Payload(entry.message.payload.clone()),
            };
            entries.push((enqueue, core.is_durable_queue(target)));
        }
        let remove = Entry::Remove {
            queue: self.queue.clone(),
            id: entry.id,
        };
        entries.push((remove, durable_source));
        core.persist_mixed(entries, &self.inner.options)?;
        drop(core);
        for t in &targets {
            self.inner.wake_queue(t);
        }
        self.inner.wake_queue(&self.queue);
        Ok(())
    }
}

#[async_trait]
impl Settle for MemSettle {
    async fn ack(&self) -> Result<()> {
        let mut core = self.inner.lock();
        let q = self.current(&mut core)?;
        let id = q.unacked[&self.tag].entry.id;
        let durable = q.spec.durable;
        let remove = Entry::Remove {
            queue: self.queue.clone(),
            id,
        };
        core.persist_mixed(vec![(remove, durable)], &self.inner.options)?;
        drop(core);
        self.inner.wake_queue(&self.queue);
        Ok(())
    }

    async fn nack(&self, requeue: bool) -> Result<()> {
        if !requeue {
            let dead_letters = {
                let mut core = self.inner.lock();
                self.current(&mut core)?.spec.dead_letter
            };
            if dead_letters {
                return self.move_to_dead_letter("rejected");
            }
            return self.ack().await;
        }
        let mut core = self.inner.lock();
        let q = self.current(&mut core)?;
        if let Some(u) = q.unacked.remove(&self.tag) {
            if let Some(n) = q.consumers.get_mut(&u.consumer) {
                *n = n.saturating_sub(1);
            }
            q.ready.push_front(QueuedMessage {
                redelivered: true,
                ..u.entry
            });
        }
        drop(core);
        self.inner.wake_queue(&self.queue);
        Ok(())
    }

    async fn dead_letter(&self, _message: &Message, _queue: &str, reason: &str) -> Result<()> {
        self.move_to_dead_letter(reason)
    }
}
