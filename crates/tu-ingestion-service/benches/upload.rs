//! Upload-path bench: start → PUT (presigned) → confirm for 1 MiB images, concurrently, through
//! the real service; then the PUT alone through a presigned URL against a direct SDK PUT to the
//! same store. Prints one table per stack: the embedded one (embedded S3 store, SQLite,
//! in-process broker) always, the production one (Garage, PostgreSQL, tansu) when the test
//! infrastructure's env is loaded (`. $(scripts/test-infra.sh env)`).
//!
//!   cargo bench -p tu-ingestion-service --bench upload
//!   BENCH_UPLOADS=400 BENCH_CONCURRENCY=16 cargo bench -p tu-ingestion-service --bench upload

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use objectstore::ObjectStore;
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tu_ingestion_service::{Config, Deps, run};

const TOKEN: &str = "bench-internal-token";
const SIZE: usize = 1024 * 1024;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Stack {
    name: &'static str,
    base: String,
    store: ObjectStore,
    shutdown: runtime::Shutdown,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
    _keep: Vec<Box<dyn std::any::Any>>,
}

async fn start(production: bool) -> anyhow::Result<Stack> {
    let mut keep: Vec<Box<dyn std::any::Any>> = Vec::new();
    let mut config = Config::default();
    config.settings.http_addr = format!("127.0.0.1:{}", testkit::free_port());
    config.settings.internal_auth_api_key = TOKEN.into();
    config.topics.topic_image_uploaded =
        format!("bench-uploaded-{}", uuid::Uuid::new_v4().simple());
    let in_process = messaging::memory::InProcessBroker::memory();
    if production {
        config.s3 = testkit::garage_s3();
        config.messaging.kafka_brokers = testkit::kafka_brokers();
        config.settings.database_url = testkit::postgres_database().await;
    } else {
        let store = testkit::EmbeddedStore::start(16 << 20).await;
        config.s3 = store.config.clone();
        config.settings.database_url = testkit::sqlite_database(store.dir());
        keep.push(Box::new(store));
    }
    let store = ObjectStore::new(&config.s3)?;
    let deps = Deps::connect(&config, &in_process).await?;
    keep.push(Box::new(in_process));
    let shutdown = runtime::Shutdown::new();
    let base = format!("http://{}", config.settings.http_addr);
    let task = tokio::spawn(run(config, deps, shutdown.clone()));
    testkit::wait_ready(&reqwest::Client::new(), &base).await;
    Ok(Stack {
        name: if production {
            "Garage + PostgreSQL + tansu"
        } else {
            "embedded S3 + SQLite + in-process"
        },
        base,
        store,
        shutdown,
        task,
        _keep: keep,
    })
}

fn image(seed: usize) -> Bytes {
    let mut v = vec![0xFF, 0xD8, 0xFF, 0xE0];
    v.extend((0..SIZE - 4).map(|i| ((i * 31 + seed) % 251) as u8));
    Bytes::from(v)
}

async fn presigned_put(http: &reqwest::Client, started: &Value, body: Bytes) -> anyhow::Result<()> {
    let mut req = http
        .put(started["putUrl"].as_str().context("putUrl")?)
        .body(body);
    for (k, v) in started["requiredHeaders"].as_object().context("headers")? {
        req = req.header(k, v.as_str().context("header")?);
    }
    let r = req.send().await?;
    if !r.status().is_success() {
        bail!("PUT answered {}", r.status());
    }
    Ok(())
}

async fn start_upload(http: &reqwest::Client, base: &str, owner: &str) -> anyhow::Result<Value> {
    let r = http
        .post(format!("{base}/v1/uploads/start"))
        .header("x-internal-token", TOKEN)
        .header("x-owner", owner)
        .json(&json!({"filename": "machine.jpg", "contentType": "image/jpeg"}))
        .send()
        .await?;
    if r.status() != 200 {
        bail!("start answered {}", r.status());
    }
    Ok(r.json().await?)
}

/// One upload end to end; its latency.
async fn one_upload(http: &reqwest::Client, base: &str, body: Bytes) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let started = start_upload(http, base, "bench-owner").await?;
    let checksum = testkit::sha256_checksum(&body);
    let len = body.len();
    presigned_put(http, &started, body).await?;
    let r = http
        .post(format!("{base}/v1/uploads/confirm"))
        .header("x-internal-token", TOKEN)
        .header("x-owner", "bench-owner")
        .json(&json!({"uploadId": started["uploadId"], "bytes": len, "checksum": checksum}))
        .send()
        .await?;
    if r.status() != 202 {
        bail!("confirm answered {}: {}", r.status(), r.text().await?);
    }
    Ok(t.elapsed())
}

fn pct(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// Run `n` jobs with `concurrency` at a time; (wall time, sorted latencies).
async fn drive<F, Fut>(
    n: usize,
    concurrency: usize,
    job: F,
) -> anyhow::Result<(Duration, Vec<Duration>)>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Duration>> + Send + 'static,
{
    let gate = Arc::new(Semaphore::new(concurrency));
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let permit = gate.clone().acquire_owned().await?;
        let fut = job(i);
        tasks.spawn(async move {
            let r = fut.await;
            drop(permit);
            r
        });
    }
    let mut lat = Vec::with_capacity(n);
    while let Some(r) = tasks.join_next().await {
        lat.push(r??);
    }
    let wall = t.elapsed();
    lat.sort();
    Ok((wall, lat))
}

fn row(what: &str, n: usize, wall: Duration, lat: &[Duration]) -> f64 {
    let per_s = n as f64 / wall.as_secs_f64();
    println!(
        "  {what:<34} {per_s:>8.1}/s {:>8.1} MiB/s   p50 {:>7.2} ms   p99 {:>7.2} ms",
        per_s * SIZE as f64 / (1024.0 * 1024.0),
        pct(lat, 0.5),
        pct(lat, 0.99)
    );
    per_s
}

async fn bench(production: bool, n: usize, concurrency: usize) -> anyhow::Result<()> {
    let stack = start(production).await?;
    let http = reqwest::Client::new();
    let bodies: Arc<Vec<Bytes>> = Arc::new((0..8).map(image).collect());
    println!("\n{} — {n} × 1 MiB, {concurrency} at a time", stack.name);

    // Warm-up (connections, topic creation, first statements).
    for i in 0..concurrency {
        one_upload(&http, &stack.base, bodies[i % 8].clone()).await?;
    }

    let (wall, lat) = {
        let (http, base, bodies) = (http.clone(), stack.base.clone(), bodies.clone());
        drive(n, concurrency, move |i| {
            let (http, base, body) = (http.clone(), base.clone(), bodies[i % 8].clone());
            async move { one_upload(&http, &base, body).await }
        })
        .await?
    };
    row("start → PUT → confirm", n, wall, &lat);

    // The PUT alone: presigned URL (what clients do) vs a direct SDK PUT, same store, same bytes.
    let presigned: Vec<Value> = {
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            v.push(start_upload(&http, &stack.base, "bench-put").await?);
        }
        v
    };
    let presigned = Arc::new(presigned);
    let (wall_p, lat_p) = {
        let (http, bodies, presigned) = (http.clone(), bodies.clone(), presigned.clone());
        drive(n, concurrency, move |i| {
            let (http, body, started) = (http.clone(), bodies[i % 8].clone(), presigned[i].clone());
            async move {
                let t = Instant::now();
                presigned_put(&http, &started, body).await?;
                Ok(t.elapsed())
            }
        })
        .await?
    };
    let (wall_d, lat_d) = {
        let (store, bodies) = (stack.store.clone(), bodies.clone());
        drive(n, concurrency, move |i| {
            let (store, body) = (store.clone(), bodies[i % 8].clone());
            async move {
                let t = Instant::now();
                let key = objectstore::keys::new_image_key("image/jpeg", chrono::Utc::now())
                    .context("key")?;
                store.put(&key, body, "image/jpeg").await?;
                Ok(t.elapsed())
            }
        })
        .await?
    };
    let p = row("PUT via presigned URL (reqwest)", n, wall_p, &lat_p);
    let d = row("PUT direct (aws-sdk-s3)", n, wall_d, &lat_d);
    println!("  presigned / direct PUT throughput ratio: {:.2}", p / d);

    stack.shutdown.trigger();
    stack.task.await??;
    Ok(())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let n = env_usize("BENCH_UPLOADS", 200);
    let concurrency = env_usize("BENCH_CONCURRENCY", 8);
    bench(false, n, concurrency).await?;
    if std::env::var_os("TU_TEST_S3_ACCESS_KEY").is_some() {
        bench(true, n, concurrency).await?;
    } else {
        println!(
            "\n(production stack skipped: load the test env with `. $(scripts/test-infra.sh env)`)"
        );
    }
    Ok(())
}
