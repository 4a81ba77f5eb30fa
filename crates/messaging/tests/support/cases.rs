//! The contract cases, written once against the traits and run against every backend.

#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use contracts::headers as h;
use messaging::broker::{ExchangeKind, QueueSpec};
use messaging::consume::{HandlerError, RetryPolicy, RunOptions, run_queue};
use messaging::log::{SubscribeOptions, TopicSpec};
use messaging::{
    Delivery, Error, EventLog, LogConsumer, LogRecord, Message, MessageBroker, QueueConsumer,
    Topology,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::unique;

const WAIT: Duration = Duration::from_secs(60);

fn msg(run: &str, n: usize) -> Message {
    Message::new(format!(r#"{{"n":{n}}}"#))
        .with_header(h::MESSAGE_ID, format!("{run}-{n}"))
        .with_header(h::CORRELATION_ID, run)
        .with_header(h::SCHEMA, "test.v1")
        .with_header(h::PRODUCER, "contract-suite")
}

fn id_of(m: &Message) -> String {
    m.headers.message_id().expect("x-message-id").to_owned()
}

fn seq_of(m: &Message) -> usize {
    let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("json payload");
    v["n"].as_u64().expect("n") as usize
}

async fn recv(consumer: &dyn LogConsumer) -> LogRecord {
    tokio::time::timeout(WAIT, consumer.recv())
        .await
        .expect("a record within the wait")
        .expect("recv")
}

async fn next(consumer: &mut Box<dyn QueueConsumer>) -> Delivery {
    tokio::time::timeout(WAIT, consumer.next())
        .await
        .expect("a delivery within the wait")
        .expect("next")
}

async fn expect_nothing(consumer: &mut Box<dyn QueueConsumer>, for_: Duration) {
    if let Ok(d) = tokio::time::timeout(for_, consumer.next()).await {
        panic!(
            "expected no delivery, got {:?}",
            d.map(|d| id_of(&d.message))
        );
    }
}

/// Produce, retrying on errors (at-least-once at the producer, as the outbox does).
async fn produce_until_acked(log: &dyn EventLog, topic: &str, key: &str, m: &Message) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match log.produce(topic, key, m).await {
            Ok(_) => return,
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!(error = %e, "produce failed; retrying");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("produce kept failing: {e}"),
        }
    }
}

async fn publish_until_confirmed(
    broker: &dyn MessageBroker,
    exchange: &str,
    key: &str,
    m: &Message,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        match broker.publish(exchange, key, m).await {
            Ok(()) => return,
            Err(e) if e.is_transient() && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("publish kept failing: {e}"),
        }
    }
}

// ---------------------------------------------------------------- Kafka-style log

pub async fn log_headers_round_trip(log: Arc<dyn EventLog>) {
    let topic = unique("headers");
    log.create_topics(&[TopicSpec::new(&topic, 1)])
        .await
        .expect("create");
    let sent = msg("hdr", 1)
        .with_header(
            h::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .with_header("x-unicode", "Kørsel ✓ 挖掘机");
    let pos = log.produce(&topic, "key-1", &sent).await.expect("produce");
    assert_eq!(pos.topic, topic);
    let c = log
        .subscribe(&unique("g"), &[&topic], SubscribeOptions::default())
        .await
        .expect("subscribe");
    let got = recv(c.as_ref()).await;
    assert_eq!(
        got.message, sent,
        "payload and every header survive the trip"
    );
    assert_eq!(got.key.as_deref(), Some("key-1"));
    assert_eq!((got.partition, got.offset), (pos.partition, pos.offset));
}

pub async fn log_orders_per_key(log: Arc<dyn EventLog>) {
    let topic = unique("order");
    log.create_topics(&[TopicSpec::new(&topic, 4)])
        .await
        .expect("create");
    let keys: Vec<String> = (0..6)
        .map(|k| format!("images/2025/01/0{k}/obj.jpg"))
        .collect();
    let per_key = 25;
    for n in 0..per_key {
        for (k, key) in keys.iter().enumerate() {
            log.produce(&topic, key, &msg(&format!("k{k}"), n))
                .await
                .expect("produce");
        }
    }
    let c = log
        .subscribe(&unique("g"), &[&topic], SubscribeOptions::default())
        .await
        .expect("subscribe");
    let mut last: HashMap<String, usize> = HashMap::new();
    let mut partitions: HashMap<String, i32> = HashMap::new();
    for _ in 0..per_key * keys.len() {
        let r = recv(c.as_ref()).await;
        let key = r.key.clone().expect("key");
        let n = seq_of(&r.message);
        if let Some(prev) = last.insert(key.clone(), n) {
            assert_eq!(n, prev + 1, "records of key {key} arrive in order");
        } else {
            assert_eq!(n, 0, "first record of {key}");
        }
        let p = *partitions.entry(key.clone()).or_insert(r.partition);
        assert_eq!(p, r.partition, "one key, one partition");
        c.commit(&r.topic, r.partition, r.offset)
            .await
            .expect("commit");
    }
    assert!(
        last.values().all(|n| *n == per_key - 1),
        "every record of every key: {last:?}"
    );
}

/// Spawn a task that receives, commits and reports records of `consumer` as (member, record).
fn pump(
    member: usize,
    consumer: Arc<dyn LogConsumer>,
    out: mpsc::UnboundedSender<(usize, LogRecord)>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let Ok(r) = consumer.recv().await else { return };
            let _ = consumer.commit(&r.topic, r.partition, r.offset).await;
            if out.send((member, r)).is_err() {
                return;
            }
        }
    })
}

async fn wait_for_assignment(members: &[&Arc<dyn LogConsumer>], partitions: usize) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut all = HashSet::new();
        let mut each_has = true;
        let mut total = 0;
        for m in members {
            let a = m.assignment().await.expect("assignment");
            each_has &= !a.is_empty();
            total += a.len();
            all.extend(a);
        }
        if each_has && all.len() == partitions && total == partitions {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "group never settled: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub async fn log_group_shares_partitions_and_rebalances(log: Arc<dyn EventLog>) {
    let topic = unique("group");
    let group = unique("g");
    log.create_topics(&[TopicSpec::new(&topic, 4)])
        .await
        .expect("create");
    let a: Arc<dyn LogConsumer> = Arc::from(
        log.subscribe(&group, &[&topic], SubscribeOptions::default())
            .await
            .expect("a"),
    );
    let b: Arc<dyn LogConsumer> = Arc::from(
        log.subscribe(&group, &[&topic], SubscribeOptions::default())
            .await
            .expect("b"),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pump_a = pump(0, a.clone(), tx.clone());
    let pump_b = pump(1, b.clone(), tx.clone());
    wait_for_assignment(&[&a, &b], 4).await;

    let keys = 40;
    for n in 0..100 {
        log.produce(&topic, &format!("key-{}", n % keys), &msg("share", n))
            .await
            .expect("produce");
    }
    let mut by_member: BTreeMap<usize, HashSet<String>> = BTreeMap::new();
    let mut seen = HashSet::new();
    while seen.len() < 100 {
        let (member, r) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("records")
            .expect("pump");
        let id = id_of(&r.message);
        assert!(
            seen.insert(id.clone()),
            "{id} delivered twice while the group was stable"
        );
        by_member.entry(member).or_default().insert(id);
    }
    assert_eq!(
        by_member.len(),
        2,
        "both members got records: {:?}",
        by_member.keys()
    );

    // B leaves; A takes over all partitions and gets everything produced afterwards.
    pump_b.abort();
    let _ = pump_b.await;
    drop(b);
    for n in 100..200 {
        log.produce(&topic, &format!("key-{}", n % keys), &msg("share", n))
            .await
            .expect("produce");
    }
    let mut after = HashSet::new();
    while after.len() < 100 {
        let (member, r) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("records after rebalance")
            .expect("pump");
        assert_eq!(member, 0, "only A is left");
        let n = seq_of(&r.message);
        if n >= 100 {
            after.insert(n);
        }
    }
    pump_a.abort();
}

pub async fn log_redelivers_what_was_not_committed(log: Arc<dyn EventLog>) {
    let topic = unique("redeliver");
    let group = unique("g");
    log.create_topics(&[TopicSpec::new(&topic, 1)])
        .await
        .expect("create");
    for n in 0..10 {
        log.produce(&topic, "one-key", &msg("redeliver", n))
            .await
            .expect("produce");
    }
    {
        let c = log
            .subscribe(&group, &[&topic], SubscribeOptions::default())
            .await
            .expect("subscribe");
        let mut records = Vec::new();
        for _ in 0..10 {
            records.push(recv(c.as_ref()).await);
        }
        assert_eq!(
            records
                .iter()
                .map(|r| seq_of(&r.message))
                .collect::<Vec<_>>(),
            (0..10).collect::<Vec<_>>()
        );
        // Processed only the first five; the consumer "dies" before the rest.
        let fifth = &records[4];
        c.commit(&fifth.topic, fifth.partition, fifth.offset)
            .await
            .expect("commit");
    }
    let c = log
        .subscribe(&group, &[&topic], SubscribeOptions::default())
        .await
        .expect("resubscribe");
    let first = recv(c.as_ref()).await;
    assert_eq!(
        seq_of(&first.message),
        5,
        "resumes right after the last commit"
    );
    let rest: Vec<usize> = {
        let mut v = vec![5];
        for _ in 0..4 {
            v.push(seq_of(&recv(c.as_ref()).await.message));
        }
        v
    };
    assert_eq!(rest, vec![5, 6, 7, 8, 9]);
}

/// With several records of a partition in flight (`per_partition`), one that keeps failing does
/// not hold up the ones behind it, and the commit never passes it: stopped while record 0 is
/// still failing, the group starts again at record 0.
pub async fn log_runner_commits_contiguously(log: Arc<dyn EventLog>) {
    let topic = unique("contiguous");
    let group = unique("g");
    log.create_topics(&[TopicSpec::new(&topic, 1)])
        .await
        .expect("create");
    for n in 0..6 {
        log.produce(&topic, "one-key", &msg("contiguous", n))
            .await
            .expect("produce");
    }
    let done = Arc::new(std::sync::Mutex::new(Vec::new()));
    let stop = CancellationToken::new();
    let consumer = log
        .subscribe(&group, &[&topic], SubscribeOptions::default())
        .await
        .expect("subscribe");
    let options = RunOptions {
        retry: RetryPolicy {
            max_attempts: 10_000,
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(50),
        },
        ..RunOptions::new("contiguous")
            .concurrency(4)
            .per_partition(4)
    };
    let runner = {
        let done = done.clone();
        tokio::spawn(messaging::consume::run_log(
            log.clone(),
            consumer,
            options,
            stop.clone(),
            move |r: LogRecord| {
                let done = done.clone();
                async move {
                    let n = seq_of(&r.message);
                    if n == 0 {
                        return Err(HandlerError::transient("not yet"));
                    }
                    done.lock().expect("lock").push(n);
                    Ok(())
                }
            },
        ))
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while done.lock().expect("lock").len() < 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "records behind a failing one were held up: {:?}",
            done.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    runner.await.expect("join").expect("runner");
    let c = log
        .subscribe(&group, &[&topic], SubscribeOptions::default())
        .await
        .expect("resubscribe");
    assert_eq!(
        seq_of(&recv(c.as_ref()).await.message),
        0,
        "nothing committed past the unfinished record"
    );
}

/// Produce 300 records while the broker restarts; every record is consumed at least once.
pub async fn log_survives_restart<R, Fut>(log: Arc<dyn EventLog>, restart: R)
where
    R: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let topic = unique("restart");
    let group = unique("g");
    log.create_topics(&[TopicSpec::new(&topic, 4)])
        .await
        .expect("create");
    let total = 300;
    let consumer: Arc<dyn LogConsumer> = Arc::from(
        log.subscribe(&group, &[&topic], SubscribeOptions::default())
            .await
            .expect("subscribe"),
    );
    let (tx, mut rx) = mpsc::unbounded_channel();
    let pumping = pump(0, consumer.clone(), tx);
    let producer = {
        let log = log.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for n in 0..total {
                produce_until_acked(
                    log.as_ref(),
                    &topic,
                    &format!("key-{}", n % 17),
                    &msg("restart", n),
                )
                .await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut seen = HashSet::new();
    while seen.len() < 100 {
        let (_, r) = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("records before restart")
            .expect("pump");
        seen.insert(seq_of(&r.message));
    }
    restart().await;
    producer.await.expect("producer");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < total {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some((_, r))) = tokio::time::timeout(left, rx.recv()).await else {
            let missing: Vec<usize> = (0..total).filter(|n| !seen.contains(n)).take(20).collect();
            panic!(
                "lost records after restart; {} of {total} seen; first missing {missing:?}",
                seen.len()
            );
        };
        seen.insert(seq_of(&r.message));
    }
    pumping.abort();
}

// ---------------------------------------------------------------- RabbitMQ-style broker

fn fanout_topology(exchange: &str, queues: &[String]) -> Topology {
    let mut t = Topology::new().exchange(exchange, ExchangeKind::Fanout);
    for q in queues {
        t = t.queue(QueueSpec::durable(q.clone())).bind(exchange, q, "");
    }
    t
}

pub async fn broker_fanout_copies_to_every_queue(broker: Arc<dyn MessageBroker>) {
    let exchange = unique("fan");
    let queues: Vec<String> = (0..3).map(|i| unique(&format!("fanq{i}"))).collect();
    broker
        .declare(&fanout_topology(&exchange, &queues))
        .await
        .expect("declare");
    for n in 0..5 {
        broker
            .publish(&exchange, "", &msg("fan", n))
            .await
            .expect("publish");
    }
    for q in &queues {
        let mut c = broker.consume(q, 10).await.expect("consume");
        let mut got = Vec::new();
        for _ in 0..5 {
            let d = next(&mut c).await;
            got.push(seq_of(&d.message));
            assert_eq!(d.exchange, exchange);
            d.ack().await.expect("ack");
        }
        assert_eq!(
            got,
            vec![0, 1, 2, 3, 4],
            "queue {q} got every message in order"
        );
        expect_nothing(&mut c, Duration::from_millis(300)).await;
    }
}

pub async fn broker_direct_routes_by_key(broker: Arc<dyn MessageBroker>) {
    let exchange = unique("direct");
    let (qa, qb) = (unique("qa"), unique("qb"));
    let topology = Topology::new()
        .exchange(&exchange, ExchangeKind::Direct)
        .queue(QueueSpec::durable(qa.clone()))
        .queue(QueueSpec::durable(qb.clone()))
        .bind(&exchange, &qa, "analysis.request")
        .bind(&exchange, &qb, "analysis.recognition.request");
    broker.declare(&topology).await.expect("declare");
    broker
        .publish(&exchange, "analysis.request", &msg("direct", 1))
        .await
        .expect("publish a");
    broker
        .publish(&exchange, "analysis.recognition.request", &msg("direct", 2))
        .await
        .expect("publish b");
    let mut ca = broker.consume(&qa, 5).await.expect("consume a");
    let mut cb = broker.consume(&qb, 5).await.expect("consume b");
    let da = next(&mut ca).await;
    assert_eq!(
        (seq_of(&da.message), da.routing_key.as_str()),
        (1, "analysis.request")
    );
    da.ack().await.expect("ack");
    let db = next(&mut cb).await;
    assert_eq!(seq_of(&db.message), 2);
    db.ack().await.expect("ack");
    expect_nothing(&mut ca, Duration::from_millis(300)).await;
    expect_nothing(&mut cb, Duration::from_millis(300)).await;

    // Mandatory: a key nobody is bound to is an error, not a silent drop.
    let err = broker
        .publish(&exchange, "nobody.listens", &msg("direct", 3))
        .await
        .expect_err("unroutable");
    assert!(matches!(err, Error::Unroutable { .. }), "{err}");
    let err = broker
        .publish(&unique("no-such-exchange"), "", &msg("direct", 4))
        .await
        .expect_err("missing exchange");
    assert!(matches!(err, Error::NotFound { .. }), "{err}");
    // The broker client is still usable after those channel errors.
    broker
        .publish(&exchange, "analysis.request", &msg("direct", 5))
        .await
        .expect("publish after errors");
    let d = next(&mut ca).await;
    assert_eq!(seq_of(&d.message), 5);
    d.ack().await.expect("ack");
}

pub async fn broker_headers_round_trip(broker: Arc<dyn MessageBroker>) {
    let exchange = unique("hdr");
    let q = unique("hdrq");
    broker
        .declare(&fanout_topology(&exchange, std::slice::from_ref(&q)))
        .await
        .expect("declare");
    let sent = msg("hdr", 7)
        .with_header(
            h::TRACEPARENT,
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        )
        .with_header("x-unicode", "Kørsel ✓ 挖掘机");
    broker.publish(&exchange, "", &sent).await.expect("publish");
    let mut c = broker.consume(&q, 1).await.expect("consume");
    let d = next(&mut c).await;
    assert_eq!(d.message, sent, "payload and every header survive the trip");
    assert!(!d.redelivered);
    d.ack().await.expect("ack");
}

pub async fn broker_confirms_every_publish(broker: Arc<dyn MessageBroker>) {
    let exchange = unique("confirm");
    let q = unique("confirmq");
    broker
        .declare(&fanout_topology(&exchange, std::slice::from_ref(&q)))
        .await
        .expect("declare");
    // Many concurrent publishes on one client: each returns only once the broker has it.
    let mut tasks = tokio::task::JoinSet::new();
    for n in 0..200 {
        let broker = broker.clone();
        let exchange = exchange.clone();
        tasks.spawn(async move { broker.publish(&exchange, "", &msg("confirm", n)).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("task").expect("confirmed");
    }
    let mut c = broker.consume(&q, 50).await.expect("consume");
    let mut got = HashSet::new();
    for _ in 0..200 {
        let d = next(&mut c).await;
        assert!(got.insert(seq_of(&d.message)), "no duplicates");
        d.ack().await.expect("ack");
    }
    expect_nothing(&mut c, Duration::from_millis(300)).await;
}

pub async fn broker_ack_requeue_and_prefetch(broker: Arc<dyn MessageBroker>) {
    let exchange = unique("ack");
    let q = unique("ackq");
    broker
        .declare(&fanout_topology(&exchange, std::slice::from_ref(&q)))
        .await
        .expect("declare");
    for n in 0..3 {
        broker
            .publish(&exchange, "", &msg("ack", n))
            .await
            .expect("publish");
    }
    let mut c = broker.consume(&q, 2).await.expect("consume");
    let d0 = next(&mut c).await;
    let d1 = next(&mut c).await;
    assert_eq!((seq_of(&d0.message), seq_of(&d1.message)), (0, 1));
    // Prefetch 2: the third waits until one is settled.
    expect_nothing(&mut c, Duration::from_millis(400)).await;
    d0.requeue().await.expect("requeue");
    let again = next(&mut c).await;
    let n = seq_of(&again.message);
    assert!(n == 0 || n == 2, "got {n}");
    if n == 0 {
        assert!(
            again.redelivered,
            "a requeued message is flagged redelivered"
        );
    }
    again.ack().await.expect("ack");
    d1.ack().await.expect("ack");
    // Exactly one message is left: whichever of 0 and 2 did not come back above.
    let last = next(&mut c).await;
    assert_eq!(seq_of(&last.message), if n == 0 { 2 } else { 0 });
    last.ack().await.expect("ack");
    expect_nothing(&mut c, Duration::from_millis(300)).await;
}

pub async fn broker_redelivers_unacked_after_consumer_dies(broker: Arc<dyn MessageBroker>) {
    let exchange = unique("die");
    let q = unique("dieq");
    broker
        .declare(&fanout_topology(&exchange, std::slice::from_ref(&q)))
        .await
        .expect("declare");
    for n in 0..10 {
        broker
            .publish(&exchange, "", &msg("die", n))
            .await
            .expect("publish");
    }
    {
        let mut dying = broker.consume(&q, 5).await.expect("consume");
        for _ in 0..3 {
            let d = next(&mut dying).await;
            drop(d); // taken, never acked
        }
    }
    let mut c = broker.consume(&q, 20).await.expect("consume again");
    let mut got = BTreeMap::new();
    while got.len() < 10 {
        let d = next(&mut c).await;
        got.insert(seq_of(&d.message), d.redelivered);
        d.ack().await.expect("ack");
    }
    for n in 0..3 {
        assert_eq!(got.get(&n), Some(&true), "message {n} redelivered: {got:?}");
    }
    expect_nothing(&mut c, Duration::from_millis(300)).await;
}

pub async fn broker_competing_consumers_share_a_queue(broker: Arc<dyn MessageBroker>) {
    let exchange = unique("compete");
    let q = unique("competeq");
    broker
        .declare(&fanout_topology(&exchange, std::slice::from_ref(&q)))
        .await
        .expect("declare");
    let mut a = broker.consume(&q, 1).await.expect("a");
    let mut b = broker.consume(&q, 1).await.expect("b");
    for n in 0..20 {
        broker
            .publish(&exchange, "", &msg("compete", n))
            .await
            .expect("publish");
    }
    let mut got_a = 0;
    let mut got_b = 0;
    let mut seen = HashSet::new();
    while seen.len() < 20 {
        tokio::select! {
            d = next(&mut a) => { seen.insert(seq_of(&d.message)); got_a += 1; tokio::time::sleep(Duration::from_millis(5)).await; d.ack().await.expect("ack"); }
            d = next(&mut b) => { seen.insert(seq_of(&d.message)); got_b += 1; tokio::time::sleep(Duration::from_millis(5)).await; d.ack().await.expect("ack"); }
        }
    }
    assert_eq!(got_a + got_b, 20, "each message to exactly one consumer");
    assert!(
        got_a > 0 && got_b > 0,
        "both consumers worked: {got_a}/{got_b}"
    );
}

pub async fn broker_dead_letters_with_reason(broker: Arc<dyn MessageBroker>) {
    let exchange = unique("dlx");
    let q = unique("dlxq");
    broker
        .declare(&fanout_topology(&exchange, std::slice::from_ref(&q)))
        .await
        .expect("declare");
    broker
        .publish(&exchange, "", &msg("dl", 1))
        .await
        .expect("publish");
    broker
        .publish(&exchange, "", &msg("dl", 2))
        .await
        .expect("publish");
    let mut c = broker.consume(&q, 5).await.expect("consume");
    let first = next(&mut c).await;
    let original = first.message.clone();
    first
        .dead_letter("not_an_image: magic bytes 0x3c3f")
        .await
        .expect("dead-letter");
    let second = next(&mut c).await;
    assert_eq!(seq_of(&second.message), 2, "the consumer goes on");
    second.ack().await.expect("ack");

    let mut dlq = broker
        .consume(&contracts::names::queues::dead_letter(&q), 5)
        .await
        .expect("consume dlq");
    let dead = next(&mut dlq).await;
    assert_eq!(dead.message.payload, original.payload);
    assert_eq!(
        dead.message.headers.message_id(),
        original.headers.message_id()
    );
    assert_eq!(
        dead.message.headers.get(h::DEAD_LETTER_REASON),
        Some("not_an_image: magic bytes 0x3c3f")
    );
    assert_eq!(
        dead.message.headers.get(h::DEAD_LETTER_QUEUE),
        Some(q.as_str())
    );
    dead.ack().await.expect("ack");
    expect_nothing(&mut c, Duration::from_millis(300)).await;
}

pub async fn broker_runner_retries_then_dead_letters(broker: Arc<dyn MessageBroker>) {
    let exchange = unique("runner");
    let q = unique("runnerq");
    broker
        .declare(&fanout_topology(&exchange, std::slice::from_ref(&q)))
        .await
        .expect("declare");
    // 0: fails twice then succeeds; 1: permanent; 2: always transient; 3: fine.
    for n in 0..4 {
        broker
            .publish(&exchange, "", &msg("runner", n))
            .await
            .expect("publish");
    }
    let attempts = Arc::new(std::sync::Mutex::new(HashMap::<usize, u32>::new()));
    let done = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let shutdown = CancellationToken::new();
    let consumer = broker.consume(&q, 4).await.expect("consume");
    let mut options = RunOptions::new("suite").concurrency(4);
    options.retry = RetryPolicy {
        max_attempts: 4,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
    };
    let runner = {
        let attempts = attempts.clone();
        let done = done.clone();
        tokio::spawn(run_queue(
            consumer,
            options,
            shutdown.clone(),
            move |m: Message| {
                let attempts = attempts.clone();
                let done = done.clone();
                async move {
                    let n = seq_of(&m);
                    let a = {
                        let mut map = attempts.lock().expect("lock");
                        let e = map.entry(n).or_default();
                        *e += 1;
                        *e
                    };
                    match n {
                        0 if a < 3 => Err(HandlerError::transient("database unavailable")),
                        1 => Err(HandlerError::permanent(
                            "payload violates image.uploaded.v1",
                        )),
                        2 => Err(HandlerError::transient("downstream timeout")),
                        _ => {
                            done.lock().expect("lock").push(n);
                            Ok(())
                        }
                    }
                }
            },
        ))
    };
    let mut dlq = broker
        .consume(&contracts::names::queues::dead_letter(&q), 5)
        .await
        .expect("dlq");
    let mut reasons = BTreeMap::new();
    for _ in 0..2 {
        let d = next(&mut dlq).await;
        reasons.insert(
            seq_of(&d.message),
            d.message
                .headers
                .get(h::DEAD_LETTER_REASON)
                .unwrap_or("")
                .to_owned(),
        );
        d.ack().await.expect("ack");
    }
    assert_eq!(reasons[&1], "payload violates image.uploaded.v1");
    assert!(
        reasons[&2].starts_with("gave up after 4 attempts: downstream timeout"),
        "{}",
        reasons[&2]
    );
    let deadline = tokio::time::Instant::now() + WAIT;
    while done.lock().expect("lock").len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "handled: {:?}",
            done.lock().expect("lock")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    runner.await.expect("join").expect("runner");
    let attempts = attempts.lock().expect("lock").clone();
    assert_eq!(attempts[&0], 3, "retried until it worked");
    assert_eq!(attempts[&1], 1, "permanent errors are not retried");
    assert_eq!(
        attempts[&2], 4,
        "transient errors retried max_attempts times"
    );
    let mut done = done.lock().expect("lock").clone();
    done.sort_unstable();
    assert_eq!(done, vec![0, 3]);
}

/// Publish 300 persistent messages while the broker restarts; all are consumed (at least once),
/// and a private (exclusive) queue is declared again and keeps receiving.
pub async fn broker_survives_restart<R, Fut>(broker: Arc<dyn MessageBroker>, restart: R)
where
    R: FnOnce() -> Fut,
    Fut: Future<Output = ()>,
{
    let exchange = unique("restart");
    let q = unique("restartq");
    let private = unique("private");
    let topology = fanout_topology(&exchange, std::slice::from_ref(&q))
        .queue(QueueSpec::exclusive(private.clone()))
        .bind(&exchange, &private, "");
    broker.declare(&topology).await.expect("declare");
    let total = 300;
    let (tx, mut rx) = mpsc::unbounded_channel::<usize>();
    let consuming = {
        let broker = broker.clone();
        let q = q.clone();
        tokio::spawn(async move {
            let mut c = broker.consume(&q, 20).await.expect("consume");
            loop {
                let Ok(d) = c.next().await else { return };
                let n = seq_of(&d.message);
                // An ack can fail across the restart; the broker then redelivers.
                if d.ack().await.is_ok() && tx.send(n).is_err() {
                    return;
                }
            }
        })
    };
    let (ptx, mut prx) = mpsc::unbounded_channel::<usize>();
    let private_consuming = {
        let broker = broker.clone();
        let private = private.clone();
        tokio::spawn(async move {
            let mut c = broker.consume(&private, 50).await.expect("consume private");
            loop {
                let Ok(d) = c.next().await else { return };
                let n = seq_of(&d.message);
                let _ = d.ack().await;
                if ptx.send(n).is_err() {
                    return;
                }
            }
        })
    };
    let producer = {
        let broker = broker.clone();
        let exchange = exchange.clone();
        tokio::spawn(async move {
            for n in 0..total {
                publish_until_confirmed(broker.as_ref(), &exchange, "", &msg("restart", n)).await;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    let mut seen = HashSet::new();
    while seen.len() < 100 {
        seen.insert(
            tokio::time::timeout(WAIT, rx.recv())
                .await
                .expect("before restart")
                .expect("consumer"),
        );
    }
    restart().await;
    producer.await.expect("producer");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while seen.len() < total {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Ok(Some(n)) = tokio::time::timeout(left, rx.recv()).await else {
            let missing: Vec<usize> = (0..total).filter(|n| !seen.contains(n)).take(20).collect();
            panic!(
                "lost messages across the restart; {} of {total}; first missing {missing:?}",
                seen.len()
            );
        };
        seen.insert(n);
    }
    // The private queue exists again: the last messages (published after the restart) reached it.
    let mut private_seen = HashSet::new();
    while let Ok(Some(n)) = tokio::time::timeout(Duration::from_secs(10), prx.recv()).await {
        private_seen.insert(n);
        if private_seen.contains(&(total - 1)) {
            break;
        }
    }
    assert!(
        private_seen.contains(&(total - 1)),
        "private queue re-declared after the restart"
    );
    consuming.abort();
    private_consuming.abort();
}
