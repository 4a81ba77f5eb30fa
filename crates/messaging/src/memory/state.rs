//! The in-process broker's state. Every change is journaled before it is applied, so replaying
//! the journal rebuilds exactly what clients were told had happened.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

use tokio::sync::Notify;

use super::journal::{Entry, Payload};
use crate::broker::{BindingSpec, ExchangeKind, QueueSpec};
use crate::message::{Headers, Message};

#[derive(Debug, Clone)]
pub(super) struct StoredRecord {
    pub key: Option<String>,
    pub message: Message,
    pub at_ms: i64,
}

#[derive(Debug, Default)]
pub(super) struct PartitionState {
    /// Offset of `records[0]`.
    pub base: i64,
    pub records: VecDeque<StoredRecord>,
}

impl PartitionState {
    pub fn end(&self) -> i64 {
        self.base + self.records.len() as i64
    }

    pub fn get(&self, offset: i64) -> Option<&StoredRecord> {
        usize::try_from(offset - self.base)
            .ok()
            .and_then(|i| self.records.get(i))
    }
}

#[derive(Debug, Default)]
pub(super) struct TopicState {
    pub partitions: Vec<PartitionState>,
}

#[derive(Debug, Clone)]
pub(super) struct Member {
    pub id: u64,
    pub topics: Vec<String>,
}

#[derive(Debug, Default)]
pub(super) struct GroupState {
    /// In join order; assignment is a pure function of this list.
    pub members: Vec<Member>,
    pub committed: HashMap<(String, i32), i64>,
    pub generation: u64,
}

#[derive(Debug, Clone)]
pub(super) struct QueuedMessage {
    pub id: u64,
    pub message: Message,
    pub exchange: String,
    pub routing_key: String,
    pub redelivered: bool,
}

#[derive(Debug)]
pub(super) struct Unacked {
    pub entry: QueuedMessage,
    pub consumer: u64,
}

#[derive(Debug)]
pub(super) struct QueueState {
    pub spec: QueueSpec,
    pub ready: VecDeque<QueuedMessage>,
    /// By delivery tag.
    pub unacked: HashMap<u64, Unacked>,
    /// Consumer id → number of unacked deliveries.
    pub consumers: HashMap<u64, usize>,
    pub notify: Arc<Notify>,
}

impl QueueState {
    pub fn new(spec: QueueSpec) -> Self {
        Self {
            spec,
            ready: VecDeque::new(),
            unacked: HashMap::new(),
            consumers: HashMap::new(),
            notify: Arc::new(Notify::new()),
        }
    }
}

#[derive(Debug, Default)]
pub(super) struct State {
    pub topics: HashMap<String, TopicState>,
    pub groups: HashMap<String, GroupState>,
    pub exchanges: HashMap<String, ExchangeKind>,
    pub bindings: Vec<BindingSpec>,
    pub queues: HashMap<String, QueueState>,
    pub next_id: u64,
}

impl State {
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Apply one journal entry (replay, or after journaling a live change).
    pub fn apply(&mut self, entry: Entry) {
        match entry {
            Entry::Exchange { name, kind } => {
                self.exchanges.insert(name, kind);
            }
            Entry::Queue { spec } => {
                self.queues
                    .entry(spec.name.clone())
                    .or_insert_with(|| QueueState::new(spec));
            }
            Entry::Bind { binding } => {
                if !self.bindings.contains(&binding) {
                    self.bindings.push(binding);
                }
            }
            Entry::DeleteQueue { name } => {
                if let Some(q) = self.queues.remove(&name) {
                    q.notify.notify_waiters();
                }
                self.bindings.retain(|b| b.queue != name);
            }
            Entry::Topic { name, partitions } => {
                let topic = self.topics.entry(name).or_default();
                while topic.partitions.len() < partitions.max(1) as usize {
                    topic.partitions.push(PartitionState::default());
                }
            }
            Entry::Append {
                topic,
                partition,
                offset,
                key,
                headers,
                payload,
                at_ms,
            } => {
                let topic = self.topics.entry(topic).or_default();
                while topic.partitions.len() <= partition as usize {
                    topic.partitions.push(PartitionState::default());
                }
                let p = &mut topic.partitions[partition as usize];
                if p.records.is_empty() {
                    p.base = offset;
                }
                // Replay of a snapshot after retention: offsets continue where they left off.
                if offset == p.end() {
                    p.records.push_back(StoredRecord {
                        key,
                        message: Message {
                            headers,
                            payload: payload.0,
                        },
                        at_ms,
                    });
                }
            }
            Entry::Commit {
                group,
                topic,
                partition,
                offset,
            } => {
                self.groups
                    .entry(group)
                    .or_default()
                    .committed
                    .insert((topic, partition), offset);
            }
            Entry::Enqueue {
                queue,
                id,
                exchange,
                routing_key,
                headers,
                payload,
            } => {
                self.next_id = self.next_id.max(id);
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.ready.push_back(QueuedMessage {
                        id,
                        message: Message {
                            headers,
                            payload: payload.0,
                        },
                        exchange,
                        routing_key,
                        redelivered: false,
                    });
                    q.notify.notify_waiters();
                }
            }
            Entry::Remove { queue, id } => {
                if let Some(q) = self.queues.get_mut(&queue) {
                    q.ready.retain(|m| m.id != id);
                    let tags: Vec<u64> = q
                        .unacked
                        .iter()
                        .filter(|(_, u)| u.entry.id == id)
                        .map(|(t, _)| *t)
                        .collect();
                    for tag in tags {
                        if let Some(u) = q.unacked.remove(&tag)
                            && let Some(n) = q.consumers.get_mut(&u.consumer)
                        {
                            *n = n.saturating_sub(1);
                        }
                    }
                }
            }
        }
    }

    /// Queues an exchange routes `routing_key` to, in binding order, without duplicates.
    pub fn route(&self, exchange: &str, routing_key: &str) -> Option<Vec<String>> {
        let kind = *self.exchanges.get(exchange)?;
        let mut seen = HashSet::new();
        Some(
            self.bindings
                .iter()
                .filter(|b| b.exchange == exchange)
                .filter(|b| kind == ExchangeKind::Fanout || b.routing_key == routing_key)
                .filter(|b| self.queues.contains_key(&b.queue))
                .filter(|b| seen.insert(b.queue.clone()))
                .map(|b| b.queue.clone())
                .collect(),
        )
    }

    /// Journal entries that rebuild the durable part of this state. Log records older than
    /// `keep_after_ms` are dropped (retention); messages in durable queues, including unacked
    /// ones, are kept (unacked ones come back as ready after a restart).
    pub fn snapshot(&self, keep_after_ms: i64) -> Vec<Entry> {
        let mut out = Vec::new();
        for (name, kind) in &self.exchanges {
            out.push(Entry::Exchange {
                name: name.clone(),
                kind: *kind,
            });
        }
        let mut durable = HashSet::new();
        for (name, q) in &self.queues {
            if q.spec.durable {
                durable.insert(name.clone());
                out.push(Entry::Queue {
                    spec: q.spec.clone(),
                });
            }
        }
        for b in &self.bindings {
            if durable.contains(&b.queue) {
                out.push(Entry::Bind { binding: b.clone() });
            }
        }
        for (name, topic) in &self.topics {
            out.push(Entry::Topic {
                name: name.clone(),
                partitions: topic.partitions.len() as i32,
            });
            for (pi, p) in topic.partitions.iter().enumerate() {
                // Keep the newest record even when expired, so offsets never go back.
                let last = p.end() - 1;
                for (i, r) in p.records.iter().enumerate() {
                    let offset = p.base + i as i64;
                    if r.at_ms >= keep_after_ms || offset == last {
                        out.push(Entry::Append {
                            topic: name.clone(),
                            partition: pi as i32,
                            offset,
                            key: r.key.clone(),
                            headers: r.message.headers.clone(),
                            payload: Payload(r.message.payload.clone()),
                            at_ms: r.at_ms,
                        });
                    }
                }
            }
        }
        for (group, g) in &self.groups {
            for ((topic, partition), offset) in &g.committed {
                out.push(Entry::Commit {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: *partition,
                    offset: *offset,
                });
            }
        }
        for (name, q) in &self.queues {
            if !q.spec.durable {
                continue;
            }
            let mut messages: Vec<&QueuedMessage> = q
                .unacked
                .values()
                .map(|u| &u.entry)
                .chain(q.ready.iter())
                .collect();
            messages.sort_by_key(|m| m.id);
            for m in messages {
                out.push(Entry::Enqueue {
                    queue: name.clone(),
                    id: m.id,
                    exchange: m.exchange.clone(),
                    routing_key: m.routing_key.clone(),
                    headers: m.message.headers.clone(),
                    payload: Payload(m.message.payload.clone()),
                });
            }
        }
        out
    }
}

/// Partitions of `member` under round-robin assignment over the members subscribed to each topic.
pub(super) fn assignment(
    group: &GroupState,
    topics: &HashMap<String, TopicState>,
    member: u64,
) -> Vec<(String, i32)> {
    let mut names: Vec<&String> = group
        .members
        .iter()
        .flat_map(|m| m.topics.iter())
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    names.sort();
    let mut out = Vec::new();
    for name in names {
        let subscribed: Vec<u64> = group
            .members
            .iter()
            .filter(|m| m.topics.contains(name))
            .map(|m| m.id)
            .collect();
        let partitions = topics.get(name).map_or(0, |t| t.partitions.len());
        for p in 0..partitions {
            if subscribed.get(p % subscribed.len().max(1)) == Some(&member) {
                out.push((name.clone(), p as i32));
            }
        }
    }
    out
}

/// Stable partitioner (FNV-1a): the same key always lands on the same partition.
pub(super) fn partition_for(key: &str, partitions: usize) -> i32 {
    let mut hash: u32 = 0x811c_9dc5;
    for b in key.as_bytes() {
        hash ^= u32::from(*b);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    (hash as usize % partitions.max(1)) as i32
}

pub(super) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(super) fn headers_with(headers: &Headers, extra: &[(&str, &str)]) -> Headers {
    let mut h = headers.clone();
    for (k, v) in extra {
        h.insert(*k, *v);
    }
    h
}
