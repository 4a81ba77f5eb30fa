//! The broker-face contract suite against real RabbitMQ (`scripts/test-infra.sh` starts it).

mod support;

use std::sync::Arc;
use std::time::Duration;

use support::cases;

macro_rules! case {
    ($name:ident) => {
        #[tokio::test]
        async fn $name() {
            cases::$name(Arc::new(support::rabbit())).await;
        }
    };
}

case!(broker_fanout_copies_to_every_queue);
case!(broker_direct_routes_by_key);
case!(broker_headers_round_trip);
case!(broker_confirms_every_publish);
case!(broker_ack_requeue_and_prefetch);
case!(broker_redelivers_unacked_after_consumer_dies);
case!(broker_competing_consumers_share_a_queue);
case!(broker_dead_letters_with_reason);
case!(broker_runner_retries_then_dead_letters);

/// `rabbitmqctl stop_app` / `start_app` on the faults node in the middle of the traffic.
#[tokio::test]
async fn broker_survives_restart() {
    let broker = support::rabbit_at(&support::amqp_faults_url());
    cases::broker_survives_restart(Arc::new(broker), || async {
        tokio::task::spawn_blocking(|| support::restart_rabbit_faults_node(Duration::from_secs(2)))
            .await
            .expect("restart");
    })
    .await;
}
