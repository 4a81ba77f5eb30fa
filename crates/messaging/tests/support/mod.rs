//! Backends for the contract suite. Real brokers come from `scripts/test-infra.sh` (which the
//! README's test command runs); a missing broker fails the test loudly, it never skips.

#![allow(dead_code)]

use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use messaging::kafka::{KafkaLog, KafkaOptions};
use messaging::memory::{InProcessBroker, InProcessOptions};
use messaging::rabbit::{RabbitBroker, RabbitOptions};

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// RabbitMQ shared by the suite (vhost `tu-test`, whose queues expire when unused).
pub fn amqp_url() -> String {
    env_or(
        "TU_TEST_AMQP_URL",
        "amqp://guest:guest@127.0.0.1:5672/tu-test",
    )
}

/// A second RabbitMQ node only the restart tests stop and start.
pub fn amqp_faults_url() -> String {
    env_or(
        "TU_TEST_AMQP_FAULTS_URL",
        "amqp://guest:guest@127.0.0.1:5673/tu-test",
    )
}

/// tansu shared by the suite.
pub fn kafka_brokers() -> String {
    env_or("TU_TEST_KAFKA_BROKERS", "127.0.0.1:19092")
}

pub fn require_port(what: &str, addr: &str) {
    let hostport = addr
        .rsplit('@')
        .next()
        .unwrap_or(addr)
        .split('/')
        .next()
        .unwrap_or(addr)
        .to_owned();
    let hostport = hostport.trim_start_matches("amqp://").to_owned();
    let ok = hostport
        .parse()
        .ok()
        .map(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok())
        .unwrap_or(false);
    assert!(
        ok,
        "{what} is not reachable at {hostport}: run `scripts/test-infra.sh up` (the README's test command does)"
    );
}

pub fn unique(prefix: &str) -> String {
    format!(
        "t.{prefix}.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

pub fn in_process() -> (InProcessBroker, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let broker = InProcessBroker::open(InProcessOptions {
        data_dir: Some(dir.path().to_owned()),
        ..InProcessOptions::default()
    })
    .expect("open in-process broker");
    (broker, dir)
}

pub fn rabbit_at(url: &str) -> RabbitBroker {
    require_port("RabbitMQ", url);
    let mut options = RabbitOptions::new(url, "contract-suite");
    options.publish_timeout = Duration::from_secs(45);
    RabbitBroker::new(options).expect("rabbit client")
}

pub fn rabbit() -> RabbitBroker {
    rabbit_at(&amqp_url())
}

pub fn kafka_at(brokers: &str) -> Arc<KafkaLog> {
    require_port("Kafka (tansu)", brokers);
    let mut options = KafkaOptions::new(brokers, "contract-suite");
    options.produce_timeout = Duration::from_secs(60);
    Arc::new(KafkaLog::new(options).expect("kafka client"))
}

pub fn kafka() -> Arc<KafkaLog> {
    kafka_at(&kafka_brokers())
}

#[allow(unused_imports)] // only the RabbitMQ suite restarts the faults node
pub use testkit::restart_rabbit_faults_node;

#[allow(unused_imports)] // only the Kafka suite restarts its own tansu
pub use testkit::OwnTansu;

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

pub fn wait_for_port(port: u16, within: Duration) {
    let deadline = std::time::Instant::now() + within;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    while std::time::Instant::now() < deadline {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    panic!("nothing listens on 127.0.0.1:{port} after {within:?}");
}

pub mod cases;
