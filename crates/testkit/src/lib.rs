//! Helpers for tests against the real parts `scripts/test-infra.sh` starts. A test that needs a
//! part which is not there fails with a message saying how to start it; nothing is skipped.

use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

/// A name unique to this test run: `t.<prefix>.<12 hex>`.
pub fn unique(prefix: &str) -> String {
    format!(
        "t.{prefix}.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// Panic with instructions if nothing listens on `host:port`.
pub fn require(what: &str, hostport: &str) {
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

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// Garage (S3) from the test infrastructure.
pub struct GarageEnv {
    pub endpoint: String,
    pub region: String,
    pub bucket: String,
    pub access_key: String,
    pub secret_key: String,
}

pub fn garage() -> GarageEnv {
    let env = GarageEnv {
        endpoint: env_or("TU_TEST_S3_ENDPOINT", "http://127.0.0.1:3900"),
        region: env_or("TU_TEST_S3_REGION", "garage"),
        bucket: env_or("TU_TEST_S3_BUCKET", "trackunit-images"),
        access_key: env_or("TU_TEST_S3_ACCESS_KEY", ""),
        secret_key: env_or("TU_TEST_S3_SECRET_KEY", ""),
    };
    require("Garage", env.endpoint.trim_start_matches("http://"));
    assert!(
        !env.access_key.is_empty(),
        "TU_TEST_S3_ACCESS_KEY is not set: source the env file `scripts/test-infra.sh env` prints"
    );
    env
}

/// PostgreSQL from the test infrastructure (`postgres://postgres@127.0.0.1:5432/postgres`).
pub fn postgres_admin_url() -> String {
    let url = env_or(
        "TU_TEST_DATABASE_URL",
        "postgres://postgres@127.0.0.1:5432/postgres",
    );
    require("PostgreSQL", "127.0.0.1:5432");
    url
}

/// A fresh, empty PostgreSQL database for one test; its URL.
pub async fn postgres_database() -> String {
    use sqlx::Connection;
    let admin = postgres_admin_url();
    let name = format!("t_{}", &uuid::Uuid::new_v4().simple().to_string()[..16]);
    let mut conn = sqlx::PgConnection::connect(&admin)
        .await
        .expect("connect to PostgreSQL");
    // The name is generated here (hex), never input.
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut conn)
        .await
        .expect("create test database");
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    format!("{base}/{name}")
}

/// A fresh SQLite database file in `dir`; its URL.
pub fn sqlite_database(dir: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", dir.join("test.db").display())
}

/// A fresh database: (direct URL, URL through PgBouncer in transaction mode on `:6432`).
pub async fn pgbouncer_database() -> (String, String) {
    let direct = postgres_database().await;
    require("PgBouncer", "127.0.0.1:6432");
    let name = direct.rsplit('/').next().unwrap_or_default().to_owned();
    let base = env_or(
        "TU_TEST_PGBOUNCER_URL",
        "postgres://postgres@127.0.0.1:6432",
    );
    (direct.clone(), format!("{base}/{name}"))
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

/// tansu shared by the suite (memory storage).
pub fn kafka_brokers() -> String {
    let brokers = env_or("TU_TEST_KAFKA_BROKERS", "127.0.0.1:19092");
    require("Kafka (tansu)", &brokers);
    brokers
}

/// A tansu broker owned by one test, so it can be stopped and restarted without disturbing the
/// shared one. Storage is a SQLite file in a temp dir (tansu's `libsql` engine), which survives
/// kill -9 — tansu 0.6's S3 (dynostore) engine reuses offsets after a restart, so it is not used.
pub struct OwnTansu {
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
    log: PathBuf,
}

impl OwnTansu {
    pub fn start() -> Self {
        let port = free_port();
        let dir = tempfile::tempdir().expect("tansu dir");
        let log = dir.path().join("tansu.log");
        let mut t = Self {
            port,
            child: None,
            dir,
            log,
        };
        t.spawn();
        t
    }

    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let bin = env_or("TU_TANSU_BIN", "tansu");
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("tansu log");
        let child = Command::new(&bin)
            .current_dir(self.dir.path())
            .args([
                "broker",
                "--listener-url",
                &url,
                "--advertised-listener-url",
                &url,
            ])
            .args(["--storage-engine", "sqlite://tansu.db"])
            .env("RUST_LOG", "warn")
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start tansu ({bin}): {e}; run scripts/test-infra.sh up")
            });
        self.child = Some(child);
        wait_for_port(self.port, Duration::from_secs(20));
    }

    /// kill -9 (the broker is gone until [`OwnTansu::start_again`]).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn start_again(&mut self) {
        self.spawn();
    }

    /// kill -9, wait, start again on the same port and storage.
    pub fn kill_and_restart(&mut self, down_for: Duration) {
        self.kill();
        std::thread::sleep(down_for);
        self.spawn();
    }
}

impl Drop for OwnTansu {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Garage from the test infrastructure, as the services' S3 settings.
pub fn garage_s3() -> objectstore::S3Config {
    let g = garage();
    objectstore::S3Config {
        s3_endpoint: g.endpoint,
        s3_region: g.region,
        s3_bucket: g.bucket,
        s3_access_key: g.access_key,
        s3_secret_key: g.secret_key,
        ..objectstore::S3Config::default()
    }
}

/// An embedded S3 store on a free port, objects under `<dir>/objects`; stops when dropped.
pub struct EmbeddedStore {
    /// Settings that reach it (endpoint, credentials, default bucket).
    pub config: objectstore::S3Config,
    dir: tempfile::TempDir,
    _server: objectstore::embedded::EmbeddedS3,
    _stop: tokio_util::sync::DropGuard,
}

impl EmbeddedStore {
    /// Refuses objects over `max_object_bytes`; creates the default bucket.
    pub async fn start(max_object_bytes: usize) -> Self {
        const ACCESS_KEY: &str = "embedded-test-key";
        const SECRET_KEY: &str = "embedded-test-secret-0123456789";
        let dir = tempfile::tempdir().expect("tempdir");
        let stop = tokio_util::sync::CancellationToken::new();
        let bucket = objectstore::S3Config::default().s3_bucket;
        let server = objectstore::embedded::EmbeddedS3::start(
            objectstore::embedded::EmbeddedS3Options {
                root: dir.path().join("objects"),
                addr: "127.0.0.1:0".into(),
                access_key: ACCESS_KEY.into(),
                secret_key: SECRET_KEY.into(),
                max_object_bytes,
                buckets: vec![bucket],
            },
            stop.clone(),
        )
        .await
        .expect("start the embedded store");
        let config = objectstore::S3Config {
            s3_endpoint: server.endpoint(),
            s3_access_key: ACCESS_KEY.into(),
            s3_secret_key: SECRET_KEY.into(),
            ..objectstore::S3Config::default()
        };
        Self {
            config,
            dir,
            _server: server,
            _stop: stop.drop_guard(),
        }
    }

    /// The temp dir the store lives in (free for the test's own files, e.g. a SQLite database).
    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

/// Poll `<base>/health/ready` until it answers 200 (at most 30 s); the readiness report.
pub async fn wait_ready(http: &reqwest::Client, base: &str) -> serde_json::Value {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{base}/health/ready")).send().await
            && r.status() == 200
        {
            return r.json().await.expect("readiness report");
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{base} never became ready"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The checksum an upload confirm carries: `sha256:<64 lower-case hex>`.
pub fn sha256_checksum(bytes: &[u8]) -> String {
    use sha2::Digest;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// A RabbitMQ virtual host of its own, for tests of services whose queue names are fixed (the
/// platform topology): parallel tests never share a queue. Deleted on drop.
pub struct RabbitVhost {
    pub name: String,
    node: String,
    url: String,
}

impl RabbitVhost {
    /// On the shared node (`TU_TEST_AMQP_URL`'s host and port; `rabbitmqctl` on this machine).
    pub fn create() -> Self {
        Self::create_on(
            &env_or(
                "TU_TEST_AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/tu-test",
            ),
            &env_or("TU_TEST_RABBIT_NODE", "rabbit@localhost"),
        )
    }

    /// On the faults node, which [`restart_rabbit_faults_node`] stops and starts.
    pub fn create_on_faults_node() -> Self {
        Self::create_on(
            &env_or(
                "TU_TEST_AMQP_FAULTS_URL",
                "amqp://guest:guest@127.0.0.1:5673/tu-test",
            ),
            &rabbit_faults_node(),
        )
    }

    fn create_on(base: &str, node: &str) -> Self {
        let node = node.to_owned();
        let hostport = base
            .trim_start_matches("amqp://")
            .rsplit_once('@')
            .map_or("127.0.0.1:5672", |(_, rest)| {
                rest.split('/').next().unwrap_or(rest)
            })
            .to_owned();
        require("RabbitMQ", &hostport);
        let name = unique("vhost");
        let ctl = |args: &[&str]| {
            let out = Command::new("rabbitmqctl")
                .args(["-q", "-n", &node])
                .args(args)
                .output()
                .expect("rabbitmqctl (installed by scripts/test-infra.sh)");
            assert!(
                out.status.success(),
                "rabbitmqctl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        ctl(&["add_vhost", &name]);
        ctl(&["set_permissions", "-p", &name, "guest", ".*", ".*", ".*"]);
        let root = base.rsplit_once('/').map_or(base, |(r, _)| r);
        Self {
            url: format!("{root}/{name}"),
            name,
            node,
        }
    }

    /// `amqp://guest:guest@host:port/<vhost>`.
    pub fn url(&self) -> String {
        self.url.clone()
    }
}

/// Name of the RabbitMQ faults node (`TU_TEST_RABBIT_FAULTS_NODE`).
pub fn rabbit_faults_node() -> String {
    env_or("TU_TEST_RABBIT_FAULTS_NODE", "tufaults@localhost")
}

/// Stop and start the RabbitMQ faults node's application, like a broker restart.
pub fn restart_rabbit_faults_node(down_for: Duration) {
    let node = rabbit_faults_node();
    let run = |args: &[&str]| {
        let status = Command::new("rabbitmqctl")
            .args(["-n", &node])
            .args(args)
            .stdout(std::process::Stdio::null())
            .status()
            .expect("rabbitmqctl");
        assert!(status.success(), "rabbitmqctl {args:?} on {node}");
    };
    run(&["stop_app"]);
    std::thread::sleep(down_for);
    run(&["start_app"]);
}

impl Drop for RabbitVhost {
    fn drop(&mut self) {
        let _ = Command::new("rabbitmqctl")
            .args(["-q", "-n", &self.node, "delete_vhost", &self.name])
            .output();
    }
}
