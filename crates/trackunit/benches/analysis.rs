//! The platform's own overhead on the analysis path: `ImageUploaded` on Kafka to
//! `AnalysisCompleted` on RabbitMQ, with the `none` engine (answers at once), over the
//! in-process broker (embedded store, SQLite) and over RabbitMQ + tansu + Garage + PostgreSQL.
//!
//!   cargo bench -p trackunit --bench analysis            # both; real brokers need test-infra
//!   TU_BENCH_ONLY=in-process cargo bench -p trackunit --bench analysis
//!
//! Prints analyses/s and p50/p99 latency, one at a time (latency) and in a burst (throughput).

#[path = "../tests/support/platform.rs"]
mod platform;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use platform::{Platform, announce, png};
use svc_ai_vision_adapter::engine::NoEngine;
use uuid::Uuid;

const SEQUENTIAL: usize = 50;
const BURST: usize = 400;

fn main() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let only = std::env::var("TU_BENCH_ONLY").unwrap_or_default();
        println!(
            "analysis path, `none` engine: {SEQUENTIAL} one at a time, then a burst of {BURST}"
        );
        println!(
            "{:<34} {:>12} {:>10} {:>10}",
            "run", "analyses/s", "p50 ms", "p99 ms"
        );
        if only.is_empty() || only == "in-process" {
            let p = platform::start(
                platform::in_process_parts().await,
                Duration::from_secs(120),
                Arc::new(NoEngine),
            )
            .await;
            measure("in-process (embedded, SQLite)", p).await;
        }
        if only.is_empty() || only == "real" {
            let p = platform::start(
                platform::real_parts().await,
                Duration::from_secs(120),
                Arc::new(NoEngine),
            )
            .await;
            measure("RabbitMQ+tansu+Garage+PostgreSQL", p).await;
        }
    });
    Ok(())
}

/// Wait for `AnalysisCompleted` of the given uploads; when each arrived.
async fn completions(p: &mut Platform, want: usize, within: Duration) -> HashMap<Uuid, Instant> {
    let mut done = HashMap::new();
    let deadline = Instant::now() + within;
    while done.len() < want {
        let d = tokio::time::timeout_at(deadline.into(), p.events.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {want} analyses completed in {within:?}",
                    done.len()
                )
            })
            .expect("event");
        if d.message.headers.schema() == Some("analysis.completed.v1") {
            let body: serde_json::Value = serde_json::from_slice(&d.message.payload).expect("json");
            if let Some(id) = body["uploadId"]
                .as_str()
                .and_then(|s| Uuid::parse_str(s).ok())
            {
                done.insert(id, Instant::now());
            }
        } else if d.message.headers.schema() == Some("analysis.failed.v1") {
            panic!(
                "an analysis failed: {}",
                String::from_utf8_lossy(&d.message.payload)
            );
        }
        let _ = d.ack().await;
    }
    done
}

async fn measure(name: &str, mut p: Platform) {
    let bytes = png(64, 48);
    let key = format!("images/2026/11/22/{}-bench.png", Uuid::new_v4());
    p.store
        .put(&key, bytes.clone(), "image/png")
        .await
        .expect("put");
    let checksum = testkit::sha256_checksum(&bytes);

    // Warm-up: consumer groups join, connections open.
    announce(&p, &key, bytes.len(), &checksum, "warm-up").await;
    completions(&mut p, 1, Duration::from_secs(120)).await;

    let mut one = Histogram::<u64>::new(3).expect("histogram");
    let started = Instant::now();
    for _ in 0..SEQUENTIAL {
        let sent = Instant::now();
        let id = announce(&p, &key, bytes.len(), &checksum, "seq").await;
        let done = completions(&mut p, 1, Duration::from_secs(60)).await;
        let at = done.get(&id).copied().expect("its own completion");
        one.record((at - sent).as_micros() as u64).expect("record");
    }
    let seq_rate = SEQUENTIAL as f64 / started.elapsed().as_secs_f64();
    print_row(&format!("{name}, one at a time"), seq_rate, &one);

    let mut sent_at = HashMap::new();
    let first = Instant::now();
    for _ in 0..BURST {
        let id = announce(&p, &key, bytes.len(), &checksum, "burst").await;
        sent_at.insert(id, Instant::now());
    }
    let done = completions(&mut p, BURST, Duration::from_secs(300)).await;
    let mut burst = Histogram::<u64>::new(3).expect("histogram");
    let mut last = first;
    for (id, at) in &done {
        if let Some(sent) = sent_at.get(id) {
            burst
                .record((*at - *sent).as_micros() as u64)
                .expect("record");
        }
        last = last.max(*at);
    }
    let rate = BURST as f64 / (last - first).as_secs_f64();
    print_row(&format!("{name}, burst"), rate, &burst);

    p.shutdown.trigger();
    for t in p.tasks.drain(..) {
        let _ = t.await;
    }
}

fn print_row(name: &str, rate: f64, h: &Histogram<u64>) {
    println!(
        "{:<34} {:>12.1} {:>10.1} {:>10.1}",
        name,
        rate,
        h.value_at_quantile(0.5) as f64 / 1000.0,
        h.value_at_quantile(0.99) as f64 / 1000.0
    );
}
