//! Analysis events from RabbitMQ to the subscribers they belong to.
//!
//! Each replica has its own exclusive queue bound to the three `analysis.*` fanouts, so every
//! replica sees every event and serves its own subscribers. An event goes only to subscribers
//! whose token subject is the event's `owner`; an event without an owner goes to nobody.
//! Each subscription has a bounded buffer: a subscriber that falls behind by a whole buffer is
//! ended with `SLOW_CONSUMER` rather than letting memory grow.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use contracts::names::exchanges;
use contracts::{AnalysisCompleted, AnalysisFailed, AnalysisStarted};
use messaging::{MessageBroker, QueueConsumer};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub enum Event {
    Started(AnalysisStarted),
    /// Boxed: with its recognition payload it is several times the size of the others.
    Completed(Box<AnalysisCompleted>),
    Failed(AnalysisFailed),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    Started,
    Completed,
    Failed,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Started => "started",
            Kind::Completed => "completed",
            Kind::Failed => "failed",
        }
    }
}

impl Event {
    pub fn kind(&self) -> Kind {
        match self {
            Event::Started(_) => Kind::Started,
            Event::Completed(_) => Kind::Completed,
            Event::Failed(_) => Kind::Failed,
        }
    }

    fn owner(&self) -> Option<&str> {
        match self {
            Event::Started(e) => e.owner.as_deref(),
            Event::Completed(e) => e.owner.as_deref(),
            Event::Failed(e) => e.owner.as_deref(),
        }
    }

    fn upload_id(&self) -> Option<Uuid> {
        match self {
            Event::Started(e) => e.upload_id,
            Event::Completed(e) => e.upload_id,
            Event::Failed(e) => e.upload_id,
        }
    }

    fn analysis_id(&self) -> Option<Uuid> {
        match self {
            Event::Started(e) => e.analysis_id,
            Event::Completed(e) => e.analysis_id,
            Event::Failed(e) => Some(e.analysis_id),
        }
    }
}

/// Which of the caller's events a subscription wants.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    pub upload_id: Option<Uuid>,
    pub analysis_id: Option<Uuid>,
}

impl Filter {
    fn matches(&self, event: &Event) -> bool {
        self.upload_id.is_none_or(|u| event.upload_id() == Some(u))
            && self
                .analysis_id
                .is_none_or(|a| event.analysis_id() == Some(a))
    }
}

struct Entry {
    id: u64,
    kind: Kind,
    filter: Filter,
    tx: mpsc::Sender<Arc<Event>>,
    overflowed: Arc<AtomicBool>,
}

#[derive(Default)]
struct Registry {
    by_owner: HashMap<String, Vec<Entry>>,
}

/// Subscribers by owner. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    registry: Arc<Mutex<Registry>>,
    next_id: Arc<AtomicU64>,
    buffer: usize,
    attached: Arc<AtomicBool>,
}

/// One subscription: the events, and whether it was ended for falling behind.
pub struct Subscription {
    pub events: mpsc::Receiver<Arc<Event>>,
    pub overflowed: Arc<AtomicBool>,
    _guard: Unsubscribe,
}

struct Unsubscribe {
    hub: Hub,
    owner: String,
    id: u64,
    kind: Kind,
}

impl Drop for Unsubscribe {
    fn drop(&mut self) {
        self.hub.remove(&self.owner, self.id);
        metrics::gauge!("gateway_subscriptions", "event" => self.kind.as_str()).decrement(1.0);
    }
}

impl Hub {
    pub fn new(buffer: usize) -> Self {
        Self {
            registry: Arc::default(),
            next_id: Arc::new(AtomicU64::new(1)),
            buffer: buffer.max(1),
            attached: Arc::new(AtomicBool::new(false)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Registry> {
        self.registry.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn subscribe(&self, owner: &str, kind: Kind, filter: Filter) -> Subscription {
        let (tx, rx) = mpsc::channel(self.buffer);
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let overflowed = Arc::new(AtomicBool::new(false));
        self.lock()
            .by_owner
            .entry(owner.to_owned())
            .or_default()
            .push(Entry {
                id,
                kind,
                filter,
                tx,
                overflowed: overflowed.clone(),
            });
        metrics::gauge!("gateway_subscriptions", "event" => kind.as_str()).increment(1.0);
        Subscription {
            events: rx,
            overflowed,
            _guard: Unsubscribe {
                hub: self.clone(),
                owner: owner.to_owned(),
                id,
                kind,
            },
        }
    }

    fn remove(&self, owner: &str, id: u64) {
        let mut registry = self.lock();
        if let Some(entries) = registry.by_owner.get_mut(owner) {
            entries.retain(|e| e.id != id);
            if entries.is_empty() {
                registry.by_owner.remove(owner);
            }
        }
    }

    /// Hand `event` to its owner's matching subscriptions; returns how many got it.
    pub fn dispatch(&self, event: Event) -> usize {
        let Some(owner) = event.owner().map(str::to_owned) else {
            metrics::counter!("gateway_events_unowned_total").increment(1);
            return 0;
        };
        let kind = event.kind();
        let event = Arc::new(event);
        let mut delivered = 0;
        let mut registry = self.lock();
        let Some(entries) = registry.by_owner.get_mut(&owner) else {
            return 0;
        };
        entries.retain(|e| {
            if e.kind != kind || !e.filter.matches(&event) {
                return true;
            }
            match e.tx.try_send(event.clone()) {
                Ok(()) => {
                    delivered += 1;
                    true
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    // Dropping the sender ends the stream; the flag tells it why.
                    e.overflowed.store(true, Ordering::SeqCst);
                    metrics::counter!("gateway_slow_consumers_total").increment(1);
                    false
                }
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            }
        });
        if entries.is_empty() {
            registry.by_owner.remove(&owner);
        }
        if delivered > 0 {
            metrics::counter!("gateway_events_delivered_total", "event" => kind.as_str())
                .increment(delivered as u64);
        }
        delivered
    }

    /// The events queue is consumed (readiness).
    pub fn is_attached(&self) -> bool {
        self.attached.load(Ordering::SeqCst)
    }

    /// Consume this replica's queue until `stop`, dispatching every event. The broker's consumer
    /// reconnects by itself after a broker restart (and declares the queue again).
    pub async fn run(
        self,
        broker: Arc<dyn MessageBroker>,
        replica: String,
        stop: CancellationToken,
    ) -> anyhow::Result<()> {
        let queue = messaging::topology::gateway_events_queue(&replica);
        let mut consumer: Box<dyn QueueConsumer> = loop {
            let attempt = async {
                broker
                    .declare(&messaging::topology::gateway_events(&replica))
                    .await?;
                broker.consume(&queue, 256).await
            };
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                r = attempt => match r {
                    Ok(c) => break c,
                    Err(e) => {
                        tracing::warn!(error = %e, queue, "cannot consume the events queue yet; retrying");
                        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                    }
                },
            }
        };
        self.attached.store(true, Ordering::SeqCst);
        tracing::info!(queue, "consuming analysis events");
        loop {
            let delivery = tokio::select! {
                () = stop.cancelled() => break,
                d = consumer.next() => d,
            };
            let delivery = match delivery {
                Ok(d) => d,
                Err(e) => {
                    tracing::warn!(error = %e, "events consumer");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            let decoded = match delivery.exchange.as_str() {
                exchanges::ANALYSIS_STARTED => delivery.message.decode().map(Event::Started),
                exchanges::ANALYSIS_COMPLETED => delivery
                    .message
                    .decode()
                    .map(|c| Event::Completed(Box::new(c))),
                exchanges::ANALYSIS_FAILED => delivery.message.decode().map(Event::Failed),
                other => {
                    tracing::warn!(exchange = other, "event from an unexpected exchange");
                    let _ = delivery.ack().await;
                    continue;
                }
            };
            match decoded {
                Ok(event) => {
                    metrics::counter!("gateway_events_received_total", "event" => event.kind().as_str())
                        .increment(1);
                    self.dispatch(event);
                }
                Err(e) => {
                    // The queue is exclusive and has no DLQ: a bad event is logged and counted.
                    metrics::counter!("gateway_events_undecodable_total").increment(1);
                    tracing::warn!(error = %e, exchange = delivery.exchange, "undecodable event");
                }
            }
            // Events are notifications: a lost one is recovered by querying `analysis(id)`.
            if let Err(e) = delivery.ack().await {
                tracing::debug!(error = %e, "ack of an event");
            }
        }
        self.attached.store(false, Ordering::SeqCst);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    fn started(owner: &str, upload: Uuid) -> Event {
        Event::Started(AnalysisStarted {
            analysis_id: Some(Uuid::now_v7()),
            upload_id: Some(upload),
            object_key: "images/k.png".into(),
            owner: Some(owner.into()),
            correlation_id: None,
            started_at: Some(Utc::now()),
        })
    }

    #[tokio::test]
    async fn events_go_to_their_owner_only_and_filters_apply() {
        let hub = Hub::new(8);
        let upload = Uuid::now_v7();
        let mut alice = hub.subscribe("alice", Kind::Started, Filter::default());
        let mut alice_other = hub.subscribe(
            "alice",
            Kind::Started,
            Filter {
                upload_id: Some(Uuid::now_v7()),
                analysis_id: None,
            },
        );
        let mut alice_completed = hub.subscribe("alice", Kind::Completed, Filter::default());
        let mut bob = hub.subscribe("bob", Kind::Started, Filter::default());
        assert_eq!(hub.dispatch(started("alice", upload)), 1);
        assert!(alice.events.try_recv().is_ok());
        assert!(alice_other.events.try_recv().is_err(), "filtered out");
        assert!(alice_completed.events.try_recv().is_err(), "other kind");
        assert!(bob.events.try_recv().is_err(), "someone else's event");
        let mut unowned = started("x", upload);
        if let Event::Started(e) = &mut unowned {
            e.owner = None;
        }
        assert_eq!(
            hub.dispatch(unowned),
            0,
            "an event without owner goes to nobody"
        );
    }

    #[tokio::test]
    async fn a_slow_subscriber_is_ended_not_buffered_forever() {
        let hub = Hub::new(2);
        let mut slow = hub.subscribe("alice", Kind::Started, Filter::default());
        for _ in 0..2 {
            assert_eq!(hub.dispatch(started("alice", Uuid::now_v7())), 1);
        }
        assert_eq!(hub.dispatch(started("alice", Uuid::now_v7())), 0);
        assert!(slow.overflowed.load(Ordering::SeqCst));
        assert!(slow.events.recv().await.is_some());
        assert!(slow.events.recv().await.is_some());
        assert!(slow.events.recv().await.is_none(), "ended after its buffer");
        assert!(hub.lock().by_owner.is_empty());
    }

    #[tokio::test]
    async fn dropping_a_subscription_unregisters_it() {
        let hub = Hub::new(2);
        let sub = hub.subscribe("alice", Kind::Failed, Filter::default());
        assert_eq!(hub.lock().by_owner.len(), 1);
        drop(sub);
        assert!(hub.lock().by_owner.is_empty());
    }
}
