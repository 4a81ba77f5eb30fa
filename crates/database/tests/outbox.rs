//! The outbox on SQLite and PostgreSQL: nothing is published before commit or after rollback,
//! everything is published after a crash, order per key survives failures, and two relays on one
//! table publish each message once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use database::outbox::{Destination, Outgoing, Relay, RelayOptions, enqueue};
use database::{Db, connect, migrate};
use messaging::broker::{ExchangeKind, QueueSpec};
use messaging::memory::InProcessBroker;
use messaging::{Message, MessageBroker, QueueConsumer, Topology};

static NO_MIGRATIONS: sqlx::migrate::Migrator = sqlx::migrate::Migrator::DEFAULT;

async fn sqlite() -> (Db, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = connect(&testkit::sqlite_database(dir.path()), 4)
        .await
        .expect("connect");
    migrate(&db, &NO_MIGRATIONS, true).await.expect("migrate");
    (db, dir)
}

async fn postgres() -> (Db, ()) {
    let db = connect(&testkit::postgres_database().await, 4)
        .await
        .expect("connect");
    migrate(&db, &NO_MIGRATIONS, true).await.expect("migrate");
    (db, ())
}

/// Through PgBouncer's transaction pooling (migrations over the direct connection, as deployed).
async fn pgbouncer() -> (Db, ()) {
    let (direct, pooled) = testkit::pgbouncer_database().await;
    let migrator = connect(&direct, 1).await.expect("connect direct");
    migrate(&migrator, &NO_MIGRATIONS, true)
        .await
        .expect("migrate");
    migrator.close().await;
    let db = connect(&pooled, 4)
        .await
        .expect("connect through PgBouncer");
    (db, ())
}

/// A broker that refuses the first `fail` publishes.
struct Flaky {
    inner: InProcessBroker,
    fail: AtomicU32,
}

#[async_trait]
impl MessageBroker for Flaky {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn declare(&self, t: &Topology) -> messaging::Result<()> {
        self.inner.declare(t).await
    }
    async fn publish(&self, e: &str, k: &str, m: &Message) -> messaging::Result<()> {
        if self.fail.load(Ordering::SeqCst) > 0 {
            self.fail.fetch_sub(1, Ordering::SeqCst);
            return Err(messaging::Error::Unavailable {
                backend: "flaky",
                detail: "injected".into(),
            });
        }
        self.inner.publish(e, k, m).await
    }
    async fn consume(&self, q: &str, p: u16) -> messaging::Result<Box<dyn QueueConsumer>> {
        self.inner.consume(q, p).await
    }
    async fn check(&self) -> messaging::Result<()> {
        Ok(())
    }
}

async fn broker(fail: u32) -> (Arc<Flaky>, Box<dyn QueueConsumer>) {
    let inner = InProcessBroker::memory();
    inner
        .declare(
            &Topology::new()
                .exchange("ex", ExchangeKind::Direct)
                .queue(QueueSpec::durable("q"))
                .bind("ex", "q", "rk"),
        )
        .await
        .expect("declare");
    let consumer = inner.consume("q", 1000).await.expect("consume");
    (
        Arc::new(Flaky {
            inner,
            fail: AtomicU32::new(fail),
        }),
        consumer,
    )
}

fn out(key: &str, n: usize) -> Outgoing {
    Outgoing {
        destination: Destination::Broker {
            exchange: "ex".into(),
            routing_key: "rk".into(),
        },
        key: key.into(),
        message: Message::new(format!(r#"{{"key":"{key}","n":{n}}}"#)).with_header("x-key", key),
    }
}

fn options() -> RelayOptions {
    RelayOptions {
        idle_poll: Duration::from_millis(50),
        max_backoff: Duration::from_millis(100),
        ..RelayOptions::default()
    }
}

async fn drain(consumer: &mut Box<dyn QueueConsumer>, n: usize) -> Vec<serde_json::Value> {
    let mut got = Vec::new();
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(20), consumer.next())
            .await
            .expect("published in time")
            .expect("next");
        got.push(serde_json::from_slice(&d.message.payload).expect("json"));
        d.ack().await.expect("ack");
    }
    got
}

async fn nothing_more(consumer: &mut Box<dyn QueueConsumer>) {
    assert!(
        tokio::time::timeout(Duration::from_millis(300), consumer.next())
            .await
            .is_err(),
        "no duplicates"
    );
}

async fn commit_publishes_rollback_does_not(db: Db) {
    let (b, mut consumer) = broker(0).await;
    let relay = Relay::new(
        "test",
        db.clone(),
        None,
        Some(b.clone() as Arc<dyn MessageBroker>),
        options(),
    );

    let mut tx = db.begin().await.expect("begin");
    enqueue(&mut tx, &out("rolled-back", 0))
        .await
        .expect("enqueue");
    tx.rollback().await.expect("rollback");
    let mut tx = db.begin().await.expect("begin");
    let id = enqueue(&mut tx, &out("committed", 1))
        .await
        .expect("enqueue");
    assert_eq!(
        relay.stats().await.expect("stats").pending,
        0,
        "not visible before commit"
    );
    tx.commit().await.expect("commit");
    assert_eq!(relay.stats().await.expect("stats").pending, 1);

    assert_eq!(relay.publish_pending().await.expect("round"), 1);
    let got = drain(&mut consumer, 1).await;
    assert_eq!(got[0]["key"], "committed");
    nothing_more(&mut consumer).await;
    let s = relay.stats().await.expect("stats");
    assert_eq!((s.pending, s.oldest_pending_ms), (0, None));
    assert_eq!(
        relay.publish_pending().await.expect("round"),
        0,
        "sent rows are not sent again"
    );
    assert_eq!(id.len(), 36, "row id is the message id");
}

async fn survives_a_crash_between_commit_and_publish(db: Db) {
    let (b, mut consumer) = broker(0).await;
    for n in 0..5 {
        let mut tx = db.begin().await.expect("begin");
        enqueue(&mut tx, &out("k", n)).await.expect("enqueue");
        tx.commit().await.expect("commit");
    }
    // The process "dies" here: no relay ran. A new one (new lease owner) picks everything up.
    let relay = Relay::new(
        "after-crash",
        db.clone(),
        None,
        Some(b.clone() as Arc<dyn MessageBroker>),
        options(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relay.clone().run(shutdown.clone()));
    let got = drain(&mut consumer, 5).await;
    let ns: Vec<i64> = got.iter().map(|v| v["n"].as_i64().expect("n")).collect();
    assert_eq!(ns, vec![0, 1, 2, 3, 4]);
    shutdown.cancel();
    task.await.expect("relay");
    nothing_more(&mut consumer).await;
}

async fn keeps_order_per_key_through_failures(db: Db) {
    let (b, mut consumer) = broker(3).await;
    for n in 0..10 {
        let mut tx = db.begin().await.expect("begin");
        enqueue(&mut tx, &out(if n % 2 == 0 { "even" } else { "odd" }, n))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
    }
    let relay = Relay::new(
        "flaky",
        db.clone(),
        None,
        Some(b.clone() as Arc<dyn MessageBroker>),
        options(),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let task = tokio::spawn(relay.clone().run(shutdown.clone()));
    let got = drain(&mut consumer, 10).await;
    let mut last: HashMap<String, i64> = HashMap::new();
    for v in &got {
        let key = v["key"].as_str().expect("key").to_owned();
        let n = v["n"].as_i64().expect("n");
        if let Some(prev) = last.insert(key.clone(), n) {
            assert!(n > prev, "{key}: {n} after {prev}");
        }
    }
    shutdown.cancel();
    task.await.expect("relay");
    nothing_more(&mut consumer).await;
    let mut tx = db.begin().await.expect("begin");
    let attempts: i64 =
        sqlx::query_scalar::<_, i64>("SELECT COALESCE(SUM(attempts), 0) FROM outbox")
            .persistent(false)
            .fetch_one(&mut *tx)
            .await
            .expect("sum of attempts");
    tx.commit().await.expect("commit");
    assert!(attempts >= 3, "the failures were recorded: {attempts}");
}

async fn two_relays_publish_each_message_once(db: Db) {
    let (b, mut consumer) = broker(0).await;
    let n = 200;
    for i in 0..n {
        let mut tx = db.begin().await.expect("begin");
        enqueue(&mut tx, &out(&format!("k{}", i % 13), i))
            .await
            .expect("enqueue");
        tx.commit().await.expect("commit");
    }
    let shutdown = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for name in ["a", "b"] {
        let relay = Relay::new(
            name,
            db.clone(),
            None,
            Some(b.clone() as Arc<dyn MessageBroker>),
            options(),
        );
        tasks.push(tokio::spawn(relay.run(shutdown.clone())));
    }
    let got = drain(&mut consumer, n).await;
    let mut seen = std::collections::HashSet::new();
    for v in &got {
        assert!(
            seen.insert(v["n"].as_i64().expect("n")),
            "published twice: {v}"
        );
    }
    shutdown.cancel();
    for t in tasks {
        t.await.expect("relay");
    }
    nothing_more(&mut consumer).await;
}

/// A notification to a fanout nobody listens on is dropped, and does not hold back the next one
/// once a listener exists; a command to an unbound route stays pending.
async fn unheard_notifications_are_dropped_commands_are_not(db: Db) {
    let inner = InProcessBroker::memory();
    inner
        .declare(
            &Topology::new()
                .exchange("news", ExchangeKind::Fanout)
                .exchange("ex", ExchangeKind::Direct),
        )
        .await
        .expect("declare");
    let broker: Arc<dyn MessageBroker> = Arc::new(inner.clone());
    let relay = Relay::new("test", db.clone(), None, Some(broker), options());
    let notify = |n: usize| Outgoing {
        destination: Destination::Notify {
            exchange: "news".into(),
        },
        key: String::new(),
        message: Message::new(format!(r#"{{"n":{n}}}"#)),
    };
    let mut tx = db.begin().await.expect("begin");
    enqueue(&mut tx, &notify(1)).await.expect("enqueue");
    enqueue(&mut tx, &out("unbound", 0)).await.expect("enqueue");
    tx.commit().await.expect("commit");
    assert_eq!(
        relay.publish_pending().await.expect("round"),
        1,
        "only the notification"
    );
    assert_eq!(
        relay.stats().await.expect("stats").pending,
        1,
        "the command to a route without a queue waits for one"
    );

    inner
        .declare(
            &Topology::new()
                .queue(QueueSpec::durable("listener"))
                .bind("news", "listener", ""),
        )
        .await
        .expect("declare listener");
    let mut consumer = inner.consume("listener", 10).await.expect("consume");
    let mut tx = db.begin().await.expect("begin");
    enqueue(&mut tx, &notify(2)).await.expect("enqueue");
    tx.commit().await.expect("commit");
    relay.publish_pending().await.expect("round");
    let got = drain(&mut consumer, 1).await;
    assert_eq!(
        got[0]["n"], 2,
        "the dropped one is not replayed, the heard one arrives"
    );
    nothing_more(&mut consumer).await;
}

macro_rules! suite {
    ($backend:ident) => {
        mod $backend {
            #[tokio::test]
            async fn commit_publishes_rollback_does_not() {
                let (db, _g) = super::$backend().await;
                super::commit_publishes_rollback_does_not(db).await;
            }
            #[tokio::test]
            async fn survives_a_crash_between_commit_and_publish() {
                let (db, _g) = super::$backend().await;
                super::survives_a_crash_between_commit_and_publish(db).await;
            }
            #[tokio::test]
            async fn keeps_order_per_key_through_failures() {
                let (db, _g) = super::$backend().await;
                super::keeps_order_per_key_through_failures(db).await;
            }
            #[tokio::test]
            async fn unheard_notifications_are_dropped_commands_are_not() {
                let (db, _g) = super::$backend().await;
                super::unheard_notifications_are_dropped_commands_are_not(db).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn two_relays_publish_each_message_once() {
                let (db, _g) = super::$backend().await;
                super::two_relays_publish_each_message_once(db).await;
            }
        }
    };
}

suite!(sqlite);
suite!(postgres);
suite!(pgbouncer);
