//! The log-face contract suite against a real Kafka-API broker (tansu; `scripts/test-infra.sh`).

mod support;

use std::time::Duration;

use support::cases;

macro_rules! case {
    ($name:ident) => {
        #[tokio::test]
        async fn $name() {
            cases::$name(support::kafka()).await;
        }
    };
}

case!(log_headers_round_trip);
case!(log_orders_per_key);
case!(log_group_shares_partitions_and_rebalances);
case!(log_redelivers_what_was_not_committed);
case!(log_runner_commits_contiguously);

/// kill -9 of this test's own tansu (persistent storage) in the middle of the traffic.
#[tokio::test]
async fn log_survives_restart() {
    let tansu = std::sync::Arc::new(std::sync::Mutex::new(support::OwnTansu::start()));
    let brokers = tansu.lock().expect("tansu").brokers();
    let log = support::kafka_at(&brokers);
    let restarter = tansu.clone();
    cases::log_survives_restart(log, || async move {
        tokio::task::spawn_blocking(move || {
            restarter
                .lock()
                .expect("tansu")
                .kill_and_restart(Duration::from_secs(2));
        })
        .await
        .expect("restart");
    })
    .await;
    drop(tansu);
}
