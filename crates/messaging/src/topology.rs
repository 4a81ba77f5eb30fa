//! The platform's RabbitMQ topology and Kafka topics, as target.md draws them. Every service
//! declares the whole topology at start (declaring is idempotent), so start order never matters.

use contracts::names::{Topics, exchanges as ex, queues as q, routing_keys as rk};

use crate::broker::{ExchangeKind, QueueSpec, Topology};
use crate::log::TopicSpec;

/// Exchanges, durable queues (each with its `.dlq`) and bindings of the analysis flow.
pub fn platform() -> Topology {
    Topology::new()
        .exchange(ex::IMAGE_UPLOADED, ExchangeKind::Fanout)
        .exchange(ex::RECOGNITION_COMPLETED, ExchangeKind::Fanout)
        .exchange(ex::RECOGNITION_FAILED, ExchangeKind::Fanout)
        .exchange(ex::ANALYSIS_STARTED, ExchangeKind::Fanout)
        .exchange(ex::ANALYSIS_COMPLETED, ExchangeKind::Fanout)
        .exchange(ex::ANALYSIS_FAILED, ExchangeKind::Fanout)
        .exchange(ex::ANALYSIS_COMMANDS, ExchangeKind::Direct)
        .queue(QueueSpec::durable(q::ORCHESTRATOR_IMAGE_UPLOADED))
        .bind(ex::IMAGE_UPLOADED, q::ORCHESTRATOR_IMAGE_UPLOADED, "")
        .queue(QueueSpec::durable(q::ORCHESTRATOR_RECOGNITION_COMPLETED))
        .bind(
            ex::RECOGNITION_COMPLETED,
            q::ORCHESTRATOR_RECOGNITION_COMPLETED,
            "",
        )
        .queue(QueueSpec::durable(q::ORCHESTRATOR_RECOGNITION_FAILED))
        .bind(
            ex::RECOGNITION_FAILED,
            q::ORCHESTRATOR_RECOGNITION_FAILED,
            "",
        )
        .queue(QueueSpec::durable(q::ORCHESTRATOR_ANALYSIS_COMMANDS))
        .bind(
            ex::ANALYSIS_COMMANDS,
            q::ORCHESTRATOR_ANALYSIS_COMMANDS,
            rk::REQUEST_ANALYSIS,
        )
        .queue(QueueSpec::durable(q::BRIDGE_RECOGNITION_REQUESTS))
        .bind(
            ex::ANALYSIS_COMMANDS,
            q::BRIDGE_RECOGNITION_REQUESTS,
            rk::RECOGNITION_REQUEST,
        )
}

/// Name of one gateway replica's event queue.
pub fn gateway_events_queue(replica: &str) -> String {
    format!("{}.{replica}", q::GATEWAY_EVENTS_PREFIX)
}

/// One gateway replica's private queue on the three `analysis.*` fanouts: every replica sees
/// every event and serves its own subscribers (the original shared one queue among replicas).
pub fn gateway_events(replica: &str) -> Topology {
    let queue = gateway_events_queue(replica);
    Topology::new()
        .exchange(ex::ANALYSIS_STARTED, ExchangeKind::Fanout)
        .exchange(ex::ANALYSIS_COMPLETED, ExchangeKind::Fanout)
        .exchange(ex::ANALYSIS_FAILED, ExchangeKind::Fanout)
        .queue(QueueSpec::exclusive(queue.clone()))
        .bind(ex::ANALYSIS_STARTED, &queue, "")
        .bind(ex::ANALYSIS_COMPLETED, &queue, "")
        .bind(ex::ANALYSIS_FAILED, &queue, "")
}

/// The four Kafka topics, `partitions` each (the original used 4).
pub fn kafka_topics(topics: &Topics, partitions: i32) -> Vec<TopicSpec> {
    topics
        .all()
        .into_iter()
        .map(|t| TopicSpec::new(t, partitions))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_work_queue_has_a_dead_letter_queue_and_a_binding() {
        let t = platform();
        for queue in t.queues.iter().filter(|q| q.dead_letter) {
            let dlq = q::dead_letter(&queue.name);
            assert!(t.queue_spec(&dlq).is_some(), "{dlq} declared");
            assert!(
                t.bindings.iter().any(|b| b.exchange == ex::DEAD_LETTER
                    && b.queue == dlq
                    && b.routing_key == queue.name),
                "{dlq} bound to tu.dlx with key {}",
                queue.name
            );
            assert!(
                t.bindings.iter().any(|b| b.queue == queue.name),
                "{} bound",
                queue.name
            );
        }
        assert_eq!(t.queues.iter().filter(|q| q.dead_letter).count(), 5);
    }

    #[test]
    fn gateway_queue_is_private_and_sees_all_three_events() {
        let t = gateway_events("pod-a");
        let q = t.queue_spec("graph-gateway.events.pod-a").expect("queue");
        assert!(q.exclusive && q.auto_delete && !q.durable);
        assert_eq!(t.bindings.len(), 3);
    }
}
