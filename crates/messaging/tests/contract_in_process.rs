//! The contract suite against the in-process broker (journaled to a temp dir).

mod support;

use std::sync::Arc;

use support::cases;

macro_rules! case {
    ($name:ident, log) => {
        #[tokio::test]
        async fn $name() {
            let (b, _dir) = support::in_process();
            cases::$name(Arc::new(b)).await;
        }
    };
    ($name:ident, broker) => {
        #[tokio::test]
        async fn $name() {
            let (b, _dir) = support::in_process();
            cases::$name(Arc::new(b)).await;
        }
    };
}

case!(log_headers_round_trip, log);
case!(log_orders_per_key, log);
case!(log_group_shares_partitions_and_rebalances, log);
case!(log_redelivers_what_was_not_committed, log);
case!(log_runner_commits_contiguously, log);
case!(broker_fanout_copies_to_every_queue, broker);
case!(broker_direct_routes_by_key, broker);
case!(broker_headers_round_trip, broker);
case!(broker_confirms_every_publish, broker);
case!(broker_ack_requeue_and_prefetch, broker);
case!(broker_redelivers_unacked_after_consumer_dies, broker);
case!(broker_competing_consumers_share_a_queue, broker);
case!(broker_dead_letters_with_reason, broker);
case!(broker_runner_retries_then_dead_letters, broker);

#[tokio::test]
async fn log_survives_restart() {
    let (b, _dir) = support::in_process();
    let restarter = b.clone();
    cases::log_survives_restart(Arc::new(b), || async move {
        restarter.restart().expect("restart");
    })
    .await;
}

#[tokio::test]
async fn broker_survives_restart() {
    let (b, _dir) = support::in_process();
    let restarter = b.clone();
    cases::broker_survives_restart(Arc::new(b), || async move {
        restarter.restart().expect("restart");
    })
    .await;
}

/// The one-process mode's own restart: the process dies (every client with it) and a new broker
/// opens the same journal. Unacked messages come back; groups resume after their last commit.
#[tokio::test]
async fn reopened_journal_keeps_queues_logs_and_commits() {
    use messaging::broker::{ExchangeKind, QueueSpec};
    use messaging::log::{SubscribeOptions, TopicSpec};
    use messaging::memory::{InProcessBroker, InProcessOptions};
    use messaging::{EventLog, Message, MessageBroker, Topology};

    let dir = tempfile::tempdir().expect("tempdir");
    let options = InProcessOptions {
        data_dir: Some(dir.path().to_owned()),
        ..InProcessOptions::default()
    };
    let topology = Topology::new()
        .exchange("ex", ExchangeKind::Fanout)
        .queue(QueueSpec::durable("work"))
        .bind("ex", "work", "");
    {
        let b = InProcessBroker::open(options.clone()).expect("open");
        b.declare(&topology).await.expect("declare");
        b.create_topics(&[TopicSpec::new("log", 2)])
            .await
            .expect("topics");
        for n in 0..5 {
            b.publish("ex", "", &Message::new(format!("q{n}")))
                .await
                .expect("publish");
            b.produce("log", &format!("k{n}"), &Message::new(format!("l{n}")))
                .await
                .expect("produce");
        }
        let mut c = b.consume("work", 10).await.expect("consume");
        let d0 = c.next().await.expect("d0");
        d0.ack().await.expect("ack");
        let _d1_unacked = c.next().await.expect("d1");
        let lc = b
            .subscribe("g", &["log"], SubscribeOptions::default())
            .await
            .expect("subscribe");
        let r = lc.recv().await.expect("record");
        lc.commit(&r.topic, r.partition, r.offset)
            .await
            .expect("commit");
        // Process dies here: nothing is closed cleanly.
        std::mem::forget(c);
        std::mem::forget(lc);
    }
    let b = InProcessBroker::open(options).expect("reopen");
    let mut c = b.consume("work", 10).await.expect("consume after reopen");
    let mut got = Vec::new();
    for _ in 0..4 {
        let d = tokio::time::timeout(std::time::Duration::from_secs(5), c.next())
            .await
            .expect("delivery")
            .expect("next");
        got.push(String::from_utf8_lossy(&d.message.payload).into_owned());
        d.ack().await.expect("ack");
    }
    assert_eq!(
        got,
        vec!["q1", "q2", "q3", "q4"],
        "acked q0 is gone; unacked q1 came back first"
    );
    let lc = b
        .subscribe("g", &["log"], SubscribeOptions::default())
        .await
        .expect("subscribe");
    let mut records = Vec::new();
    for _ in 0..4 {
        let r = tokio::time::timeout(std::time::Duration::from_secs(5), lc.recv())
            .await
            .expect("record")
            .expect("recv");
        records.push(String::from_utf8_lossy(&r.message.payload).into_owned());
    }
    records.sort();
    assert_eq!(
        records.len(),
        4,
        "the committed record is not read again: {records:?}"
    );
    // Topology survived: publishing still routes.
    b.publish("ex", "", &Message::new("after"))
        .await
        .expect("publish after reopen");
    assert_eq!(b.queue_depth("work"), Some(1));
}
