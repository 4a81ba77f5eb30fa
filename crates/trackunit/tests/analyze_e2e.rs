//! What a new user runs: `trackunit up` (a process, embedded defaults, the offline engine) and
//! `trackunit analyze` on generated machine photos. Asserts the recognised brand and model, the
//! events `watch` streams, the exit code and reason of a photo that is no image, and that a
//! restart keeps the analyses.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

struct Up {
    child: Child,
    gateway: String,
    env: Vec<(String, String)>,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Up {
    fn start(data: &Path, env: Option<Vec<(String, String)>>) -> Self {
        let env = env.unwrap_or_else(|| {
            let mut env = vec![(
                "TRACKUNIT_OIDC_ADDR".to_owned(),
                format!("127.0.0.1:{}", testkit::free_port()),
            )];
            env.push((
                "TRACKUNIT_S3_ADDR".into(),
                format!("127.0.0.1:{}", testkit::free_port()),
            ));
            for s in [
                "GRAPH_GATEWAY",
                "TU_INGESTION_SERVICE",
                "TU_MEDIA_ACCESS_SERVICE",
                "SVC_MESSAGING_BRIDGE",
                "SVC_ANALYSIS_ORCHESTRATOR",
                "SVC_AI_VISION_ADAPTER",
            ] {
                env.push((
                    format!("{s}_HTTP_ADDR"),
                    format!("127.0.0.1:{}", testkit::free_port()),
                ));
            }
            // No engine setting: `up` picks the offline engine when the models are there.
            env
        });
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trackunit"));
        cmd.args(["up", "--data-dir"])
            .arg(data)
            .env("LOG_FORMAT", "json")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        for v in [
            "KAFKA_BROKERS",
            "RABBIT_URL",
            "S3_ENDPOINT",
            "DATABASE_URL",
            "INTERNAL_AUTH_API_KEY",
            "OIDC_ISSUER",
        ] {
            cmd.env_remove(v);
        }
        for (k, v) in &env {
            cmd.env(k, v);
        }
        let gateway = env
            .iter()
            .find(|(k, _)| k == "GRAPH_GATEWAY_HTTP_ADDR")
            .map(|(_, v)| format!("http://{v}"))
            .expect("gateway address");
        Self {
            child: cmd.spawn().expect("spawn trackunit up"),
            gateway,
            env,
        }
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        for (k, v) in &self.env {
            if k.ends_with("_HTTP_ADDR") {
                testkit::wait_ready(&http, &format!("http://{v}")).await;
            }
        }
    }

    fn stop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(25);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                assert!(status.success(), "clean exit: {status}");
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("trackunit up still running 25 s after SIGTERM");
    }

    fn cli(&self, data: &Path, cache: &Path) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_trackunit"));
        cmd.env("TRACKUNIT_GATEWAY", format!("{}/graphql", self.gateway))
            .env("TRACKUNIT_DATA_DIR", data)
            .env("TRACKUNIT_TOKEN_CACHE", cache)
            .env_remove("TRACKUNIT_TOKEN")
            .env_remove("TRACKUNIT_AUTHORITY");
        for (k, v) in &self.env {
            if k == "TRACKUNIT_OIDC_ADDR" {
                cmd.env(k, v);
            }
        }
        cmd
    }
}

fn json_lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn write_photo(dir: &Path, brand: &str, model: &str, seed: u64) -> std::path::PathBuf {
    let path = dir.join(format!("{brand}-{model}.jpg"));
    recognition::testset::render_machine_photo(brand, model, seed, false)
        .expect("render")
        .save_with_format(&path, image::ImageFormat::Jpeg)
        .expect("save");
    path
}

#[tokio::test]
async fn up_then_analyze_recognises_machines_and_a_restart_keeps_them() {
    let data = tempfile::tempdir().expect("tempdir");
    let work = tempfile::tempdir().expect("tempdir");
    let cache = work.path().join("token.json");
    let mut up = Up::start(data.path(), None);
    up.wait_ready().await;

    let machines = [
        ("Caterpillar", "320D", 0),
        ("Komatsu", "PC210", 1),
        ("Volvo", "EC220", 2),
    ];
    let photos: Vec<_> = machines
        .iter()
        .map(|(b, m, s)| write_photo(work.path(), b, m, *s))
        .collect();

    // watch in the background: it must see the Started and Completed of every photo.
    let watch = up
        .cli(data.path(), &cache)
        .args(["watch", "--json", "--count", "6"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("watch");
    tokio::time::sleep(Duration::from_secs(2)).await;

    let out = up
        .cli(data.path(), &cache)
        .arg("analyze")
        .arg("--json")
        .args(&photos)
        .output()
        .expect("analyze");
    let results = json_lines(&out);
    assert!(
        out.status.success(),
        "analyze failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(results.len(), machines.len(), "{results:?}");
    for (brand, model, _) in machines {
        let r = results
            .iter()
            .find(|r| r["file"].as_str().is_some_and(|f| f.contains(brand)))
            .expect("a result per photo");
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["machine"]["brand"], brand, "{r}");
        assert_eq!(r["machine"]["model"], model, "{r}");
        assert_eq!(r["machine"]["isConfident"], true, "{r}");
        assert!(
            r["provider"]
                .as_str()
                .is_some_and(|p| p.starts_with("offline")),
            "{r}"
        );
    }
    let watched = tokio::task::spawn_blocking(move || watch.wait_with_output())
        .await
        .expect("join")
        .expect("watch output");
    let events = json_lines(&watched);
    let count = |kind: &str| events.iter().filter(|e| e["event"] == kind).count();
    assert_eq!(count("started"), 3, "{events:?}");
    assert_eq!(count("completed"), 3, "{events:?}");

    // Not an image: exit code 1 and the reason.
    let junk = work.path().join("junk.jpg");
    std::fs::write(&junk, b"this is not a photo of a machine").expect("write");
    let out = up
        .cli(data.path(), &cache)
        .args(["analyze", "--json"])
        .arg(&junk)
        .output()
        .expect("analyze junk");
    assert_eq!(
        out.status.code(),
        Some(1),
        "non-zero exit for a failed analysis"
    );
    let r = &json_lines(&out)[0];
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(r["reason"], "not_an_image", "{r}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not_an_image"),
        "the reason is printed"
    );

    // A restart on the same data keeps the analyses (and the login).
    up.stop();
    let mut again = Up::start(data.path(), Some(up.env.clone()));
    again.wait_ready().await;
    let out = again
        .cli(data.path(), &cache)
        .args(["analyses", "--json", "--first", "10"])
        .output()
        .expect("analyses");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = json_lines(&out);
    assert_eq!(listed.len(), 4, "3 completed + 1 failed: {listed:?}");
    assert_eq!(
        listed.iter().filter(|a| a["status"] == "COMPLETED").count(),
        3
    );
    // The table form prints the machine.
    let out = again
        .cli(data.path(), &cache)
        .args(["analyses"])
        .output()
        .expect("analyses");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.contains("Komatsu") && table.contains("PC210"),
        "{table}"
    );
    again.stop();
}
