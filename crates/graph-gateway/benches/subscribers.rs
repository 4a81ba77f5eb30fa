//! Concurrent WebSocket subscribers: graph-gateway against the reference `graphql-ws` server on
//! Node, same workload, same run.
//!
//! For each server and each N in `SUBSCRIBERS` (default `1000,10000`): open N connections, each a
//! user of its own with one `onAnalysisStarted` subscription; report the connections held, the
//! server's RSS growth per idle connection, then `ROUNDS` rounds of one event per user and the
//! events/s delivered and publish→client latency p50/p99.
//!
//! graph-gateway runs as its own process (`graph-gateway` binary, release) on RabbitMQ (the
//! bench publishes to `analysis.started` as the orchestrator does), tokens from a development
//! issuer served here. The Node peer gets its events over a local HTTP call into its in-memory
//! pubsub — one hop fewer than the gateway's RabbitMQ, which favours the peer on latency.
//!
//! Run: `. $(scripts/test-infra.sh env) && cargo bench -p graph-gateway --bench subscribers`
//! (env `SUBSCRIBERS`, `ROUNDS`, `SERVERS=gateway,node`).

use std::collections::HashMap;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chrono::Utc;
use contracts::AnalysisStarted;
use contracts::names::exchanges;
use futures::{SinkExt, StreamExt};
use graph_gateway::issuer::{DevIssuer, TokenSpec};
use hdrhistogram::Histogram;
use messaging::config::MessagingConfig;
use messaging::memory::InProcessBroker;
use messaging::{Message, MessageBroker};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

const AUDIENCE: &str = "api://trackunit-bench";

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

struct Server {
    name: &'static str,
    child: Child,
    ws_url: String,
    publish: Publisher,
}

enum Publisher {
    Rabbit(Arc<dyn MessageBroker>),
    Http(reqwest::Client, String),
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Publisher {
    async fn publish(&self, users: &[String]) {
        match self {
            Publisher::Rabbit(broker) => {
                let mut sends = futures::stream::iter(users.iter().map(|u| {
                    let event = AnalysisStarted {
                        analysis_id: None,
                        upload_id: None,
                        object_key: "images/bench.jpg".into(),
                        owner: Some(u.clone()),
                        // Stamped as it is published: latency is publish → client.
                        correlation_id: Some(now_ns().to_string()),
                        started_at: Some(Utc::now()),
                    };
                    let broker = broker.clone();
                    async move {
                        let m = Message::from_contract(&event, "bench", "bench");
                        broker.publish(exchanges::ANALYSIS_STARTED, "", &m).await
                    }
                }))
                .buffer_unordered(256);
                while let Some(r) = sends.next().await {
                    if let Err(e) = r {
                        eprintln!("publish: {e}");
                    }
                }
            }
            Publisher::Http(http, url) => {
                for chunk in users.chunks(2000) {
                    if let Err(e) = http
                        .post(url)
                        .json(&json!({"users": chunk, "stamp": now_ns().to_string()}))
                        .send()
                        .await
                    {
                        eprintln!("publish: {e}");
                    }
                }
            }
        }
    }
}

async fn wait_http(url: &str) {
    let http = reqwest::Client::new();
    for _ in 0..300 {
        if http
            .get(url)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} did not come up");
}

async fn start_gateway(issuer: &DevIssuer, amqp: &str) -> Server {
    let port = testkit::free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_graph-gateway"))
        .env("HTTP_ADDR", format!("127.0.0.1:{port}"))
        .env("OIDC_ISSUER", issuer.issuer())
        .env("OIDC_AUDIENCES", AUDIENCE)
        .env("RABBIT_URL", amqp)
        .env("RATE_LIMIT_BURST", "0")
        .env("MAX_WS_CONNECTIONS", "100000")
        .env("SUBSCRIBER_BUFFER", "64")
        .env("RUST_LOG", "warn")
        .env("LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn graph-gateway");
    wait_http(&format!("http://127.0.0.1:{port}/health/ready")).await;
    let config = MessagingConfig {
        rabbit_url: amqp.to_owned(),
        ..Default::default()
    };
    let broker = config
        .message_broker("bench", &InProcessBroker::memory())
        .expect("broker");
    Server {
        name: "graph-gateway",
        child,
        ws_url: format!("ws://127.0.0.1:{port}/graphql"),
        publish: Publisher::Rabbit(broker),
    }
}

async fn start_node() -> Server {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/benches/node-peer");
    if !std::path::Path::new(dir)
        .join("node_modules/graphql-ws")
        .exists()
    {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund", "--prefix", dir])
            .status()
            .expect("npm (Node.js) is needed for the peer");
        assert!(status.success(), "npm ci in {dir}");
    }
    let port = testkit::free_port();
    let child = Command::new("node")
        .arg(format!("{dir}/server.mjs"))
        .env("PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn node");
    wait_http(&format!("http://127.0.0.1:{port}/health")).await;
    Server {
        name: "node graphql-ws",
        child,
        ws_url: format!("ws://127.0.0.1:{port}/graphql"),
        publish: Publisher::Http(
            reqwest::Client::new(),
            format!("http://127.0.0.1:{port}/publish"),
        ),
    }
}

/// One subscriber: connects, inits, subscribes, then reports each event's latency.
async fn subscriber(
    url: String,
    init: Value,
    ready: Arc<AtomicUsize>,
    latencies: mpsc::UnboundedSender<u64>,
) {
    let Ok(mut request) = url.as_str().into_client_request() else {
        return;
    };
    request.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static("graphql-transport-ws"),
    );
    let Ok((mut ws, _)) = tokio_tungstenite::connect_async(request).await else {
        return;
    };
    let send = |v: Value| WsMessage::Text(v.to_string().into());
    if ws
        .send(send(json!({"type": "connection_init", "payload": init})))
        .await
        .is_err()
    {
        return;
    }
    let mut acked = false;
    while let Some(Ok(m)) = ws.next().await {
        let WsMessage::Text(t) = m else { continue };
        let v: Value = serde_json::from_str(&t).unwrap_or(Value::Null);
        match v["type"].as_str() {
            Some("connection_ack") if !acked => {
                acked = true;
                let sub = json!({"id": "1", "type": "subscribe", "payload": {"query": "subscription { onAnalysisStarted { objectKey correlationId } }"}});
                if ws.send(send(sub)).await.is_err() {
                    return;
                }
                // The server has the subscription once it processed this message; a ping
                // round trip after it tells us.
                if ws.send(send(json!({"type": "ping"}))).await.is_err() {
                    return;
                }
            }
            Some("pong") => {
                ready.fetch_add(1, Ordering::SeqCst);
            }
            Some("next") => {
                let stamp = v["payload"]["data"]["onAnalysisStarted"]["correlationId"]
                    .as_str()
                    .and_then(|s| s.parse::<u128>().ok());
                if let Some(stamp) = stamp {
                    let us = (now_ns().saturating_sub(stamp) / 1000) as u64;
                    let _ = latencies.send(us);
                }
            }
            Some("ping") => {
                let _ = ws.send(send(json!({"type": "pong"}))).await;
            }
            _ => {}
        }
    }
}

struct Figures {
    held: usize,
    kib_per_conn: f64,
    events_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

async fn measure(server: &Server, n: usize, rounds: usize, tokens: &[String]) -> Figures {
    let pid = server.child.id();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_before = rss_kib(pid);
    let ready = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let users: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
    let mut tasks = Vec::with_capacity(n);
    for (i, user) in users.iter().enumerate() {
        let init = match server.publish {
            Publisher::Rabbit(_) => json!({"Authorization": format!("Bearer {}", tokens[i])}),
            Publisher::Http(..) => json!({"user": user}),
        };
        tasks.push(tokio::spawn(subscriber(
            server.ws_url.clone(),
            init,
            ready.clone(),
            tx.clone(),
        )));
        // Connect in waves so the listen backlog never overflows.
        if i % 250 == 249 {
            while ready.load(Ordering::SeqCst) + 250 < i {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    while ready.load(Ordering::SeqCst) < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let held = ready.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss_after = rss_kib(pid);
    let kib_per_conn = rss_after.saturating_sub(rss_before) as f64 / held.max(1) as f64;

    let mut hist = Histogram::<u64>::new(3).expect("histogram");
    let mut delivered = 0usize;
    let started = Instant::now();
    for _ in 0..rounds {
        server.publish.publish(&users).await;
        let mut got = 0;
        let round_deadline = Instant::now() + Duration::from_secs(60);
        while got < held {
            match tokio::time::timeout_at(round_deadline.into(), rx.recv()).await {
                Ok(Some(us)) => {
                    let _ = hist.record(us.max(1));
                    got += 1;
                }
                _ => break,
            }
        }
        delivered += got;
    }
    let elapsed = started.elapsed().as_secs_f64();
    for t in tasks {
        t.abort();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    Figures {
        held,
        kib_per_conn,
        events_per_sec: delivered as f64 / elapsed,
        p50_ms: hist.value_at_quantile(0.5) as f64 / 1000.0,
        p99_ms: hist.value_at_quantile(0.99) as f64 / 1000.0,
    }
}

#[tokio::main]
async fn main() {
    let sizes: Vec<usize> = env_list("SUBSCRIBERS", "1000,10000")
        .iter()
        .filter_map(|s| s.parse().ok())
        .collect();
    let rounds: usize = std::env::var("ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    let servers = env_list("SERVERS", "gateway,node");
    let issuer = DevIssuer::spawn_local().await.expect("issuer");
    let vhost = testkit::RabbitVhost::create();
    let max = sizes.iter().copied().max().unwrap_or(0);
    let tokens: Vec<String> = (0..max)
        .map(|i| {
            issuer
                .token(&TokenSpec {
                    subject: format!("u{i}"),
                    audience: AUDIENCE.into(),
                    scope: "analysis".into(),
                    lifetime: Duration::from_secs(3600),
                })
                .expect("token")
        })
        .collect();
    let mut rows: Vec<(String, usize, Figures)> = Vec::new();
    for &n in &sizes {
        for s in &servers {
            let server = match s.as_str() {
                "gateway" => start_gateway(&issuer, &vhost.url()).await,
                "node" => start_node().await,
                other => panic!("unknown server {other}"),
            };
            eprintln!("{}: {n} subscribers…", server.name);
            let f = measure(&server, n, rounds, &tokens).await;
            rows.push((server.name.to_owned(), n, f));
        }
    }
    println!(
        "\n{:<18} {:>11} {:>6} {:>16} {:>10} {:>9} {:>9}",
        "server", "subscribers", "held", "KiB/idle conn", "events/s", "p50 ms", "p99 ms"
    );
    let mut by_size: HashMap<usize, Vec<&(String, usize, Figures)>> = HashMap::new();
    for row in &rows {
        by_size.entry(row.1).or_default().push(row);
        let (name, n, f) = row;
        println!(
            "{:<18} {:>11} {:>6} {:>16.1} {:>10.0} {:>9.2} {:>9.2}",
            name, n, f.held, f.kib_per_conn, f.events_per_sec, f.p50_ms, f.p99_ms
        );
    }
    for n in &sizes {
        let group = &by_size[n];
        if let (Some(g), Some(p)) = (
            group.iter().find(|r| r.0 == "graph-gateway"),
            group.iter().find(|r| r.0 != "graph-gateway"),
        ) {
            println!(
                "{n} subscribers, gateway/peer: memory {:.2}x, events/s {:.2}x, p99 {:.2}x",
                g.2.kib_per_conn / p.2.kib_per_conn.max(0.001),
                g.2.events_per_sec / p.2.events_per_sec.max(0.001),
                g.2.p99_ms / p.2.p99_ms.max(0.001)
            );
        }
    }
}
