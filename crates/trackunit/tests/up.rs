//! `trackunit up` as a process: all six services come up ready on their ports, serve metrics,
//! an upload goes through the embedded store and SQLite, a SIGTERM stops the whole platform
//! cleanly within the 20 s grace period, and a restart on the same data dir keeps the upload.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const SERVICES: [&str; 6] = [
    "graph-gateway",
    "tu-ingestion-service",
    "tu-media-access-service",
    "svc-messaging-bridge",
    "svc-analysis-orchestrator",
    "svc-ai-vision-adapter",
];

struct Platform {
    child: Child,
    ports: Vec<(&'static str, u16)>,
}

impl Platform {
    fn port(&self, service: &str) -> u16 {
        self.ports
            .iter()
            .find(|(s, _)| *s == service)
            .map(|(_, p)| *p)
            .expect("known service")
    }

    fn stop_within_grace(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Instant::now();
        let status = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        loop {
            if let Some(exit) = self.child.try_wait().expect("wait") {
                assert!(exit.success(), "clean exit, got {exit}");
                return;
            }
            assert!(
                sent.elapsed() < Duration::from_secs(20),
                "still running 20 s after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Platform {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(data_dir: &std::path::Path) -> Platform {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_trackunit"));
    cmd.args(["up", "--data-dir"])
        .arg(data_dir)
        .env("LOG_FORMAT", "json")
        .env_remove("KAFKA_BROKERS")
        .env_remove("RABBIT_URL")
        .env_remove("S3_ENDPOINT")
        .env_remove("DATABASE_URL")
        .env_remove("INTERNAL_AUTH_API_KEY")
        // A small limit, to see the embedded store follow ingestion's setting.
        .env("TU_INGESTION_SERVICE_MAX_UPLOAD_BYTES", "1024")
        .env(
            "TRACKUNIT_S3_ADDR",
            format!("127.0.0.1:{}", testkit::free_port()),
        )
        .env(
            "TRACKUNIT_OIDC_ADDR",
            format!("127.0.0.1:{}", testkit::free_port()),
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut ports = Vec::new();
    for s in SERVICES {
        let port = testkit::free_port();
        cmd.env(
            format!("{}_HTTP_ADDR", s.to_uppercase().replace('-', "_")),
            format!("127.0.0.1:{port}"),
        );
        ports.push((s, port));
    }
    Platform {
        child: cmd.spawn().expect("spawn trackunit up"),
        ports,
    }
}

async fn wait_ready(client: &reqwest::Client, port: u16) -> serde_json::Value {
    testkit::wait_ready(client, &format!("http://127.0.0.1:{port}")).await
}

#[tokio::test]
async fn up_serves_every_service_keeps_uploads_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut platform = start(dir.path());
    let client = reqwest::Client::new();
    for (service, port) in platform.ports.clone() {
        let report = wait_ready(&client, port).await;
        assert_eq!(report["status"], "ready", "{service}: {report}");
        let live = client
            .get(format!("http://127.0.0.1:{port}/health/live"))
            .send()
            .await
            .expect("live");
        assert_eq!(live.status(), 200, "{service} live");
        let metrics = client
            .get(format!("http://127.0.0.1:{port}/metrics"))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("text");
        assert!(
            metrics.contains("http_requests_total"),
            "{service} exports metrics"
        );
    }
    assert!(
        dir.path().join("broker/broker.journal").exists(),
        "the in-process broker journals under the data dir"
    );

    // An upload through the embedded store and SQLite, with the generated internal token.
    let secrets: serde_json::Value = serde_json::from_slice(
        &std::fs::read(dir.path().join("secrets.json")).expect("secrets.json"),
    )
    .expect("json");
    let token = secrets["internal_token"]
        .as_str()
        .expect("token")
        .to_owned();
    let ingestion = format!("http://127.0.0.1:{}", platform.port("tu-ingestion-service"));
    let started: serde_json::Value = client
        .post(format!("{ingestion}/v1/uploads/start"))
        .header("x-internal-token", &token)
        .header("x-owner", "user-up")
        .json(&serde_json::json!({"filename": "dozer.png", "contentType": "image/png"}))
        .send()
        .await
        .expect("start")
        .json()
        .await
        .expect("json");
    let upload_id = started["uploadId"].as_str().expect("uploadId").to_owned();
    let body = b"\x89PNG\r\n\x1a\n not really a png, but bytes".to_vec();
    let put = client
        .put(started["putUrl"].as_str().expect("putUrl"))
        .header("content-type", "image/png")
        .body(body.clone())
        .send()
        .await
        .expect("put");
    assert!(put.status().is_success(), "PUT {}", put.status());
    let checksum = testkit::sha256_checksum(&body);
    let confirmed = client
        .post(format!("{ingestion}/v1/uploads/confirm"))
        .header("x-internal-token", &token)
        .header("x-owner", "user-up")
        .json(
            &serde_json::json!({"uploadId": upload_id, "bytes": body.len(), "checksum": checksum}),
        )
        .send()
        .await
        .expect("confirm");
    assert_eq!(confirmed.status(), 202);
    // Over the configured limit: the embedded store refuses the PUT itself.
    let big: serde_json::Value = client
        .post(format!("{ingestion}/v1/uploads/start"))
        .header("x-internal-token", &token)
        .header("x-owner", "user-up")
        .json(&serde_json::json!({"filename": "big.png", "contentType": "image/png"}))
        .send()
        .await
        .expect("start")
        .json()
        .await
        .expect("json");
    let refused = client
        .put(big["putUrl"].as_str().expect("putUrl"))
        .header("content-type", "image/png")
        .body(vec![0u8; 2048])
        .send()
        .await
        .expect("put");
    assert_eq!(
        refused.status(),
        413,
        "MAX_UPLOAD_BYTES reaches the embedded store"
    );

    // Media access signs a GET for it, with the same token.
    let media = format!(
        "http://127.0.0.1:{}",
        platform.port("tu-media-access-service")
    );
    let url: serde_json::Value = client
        .post(format!("{media}/internal/v0/media/get-url"))
        .header("x-internal-token", &token)
        .json(&serde_json::json!({"objectKey": started["key"]}))
        .send()
        .await
        .expect("get-url")
        .json()
        .await
        .expect("json");
    let fetched = client
        .get(url["url"].as_str().expect("url"))
        .send()
        .await
        .expect("GET");
    assert_eq!(
        fetched.bytes().await.expect("bytes").as_ref(),
        body.as_slice()
    );

    platform.stop_within_grace();

    // Same data dir: the upload is still there.
    let mut again = start(dir.path());
    let port = again.port("tu-ingestion-service");
    wait_ready(&client, port).await;
    let view: serde_json::Value = client
        .get(format!("http://127.0.0.1:{port}/v1/uploads/{upload_id}"))
        .header("x-internal-token", &token)
        .header("x-owner", "user-up")
        .send()
        .await
        .expect("status")
        .json()
        .await
        .expect("json");
    assert_eq!(view["status"], "Uploaded", "{view}");
    again.stop_within_grace();
}

#[test]
fn only_rejects_unknown_services() {
    let out = Command::new(env!("CARGO_BIN_EXE_trackunit"))
        .args(["up", "--only", "svc-coffee-maker"])
        .output()
        .expect("run");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("svc-coffee-maker") && stderr.contains("graph-gateway"),
        "{stderr}"
    );
}
