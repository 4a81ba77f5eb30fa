//! `trackunit analyze`, `watch` and `analyses`: the client side of the flow.
//!
//! analyze: subscribe first (so no event can be missed), then per file `startUpload` → PUT the
//! bytes straight to storage (with a progress bar) → `confirmUpload` with the real size and
//! sha256 → wait for the upload's `onAnalysisCompleted` or `onAnalysisFailed`. Files run
//! concurrently; the exit code is non-zero when any analysis failed.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use futures::StreamExt;
use graph_gateway::client::{HttpClient, Incoming, Protocol, WsClient};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::{Value, json};
use sha2::Digest;
use tokio::sync::oneshot;

use crate::session::{self, SessionArgs};

#[derive(Debug, Args)]
pub struct AnalyzeArgs {
    /// Photos to analyse (JPEG, PNG or WebP).
    #[arg(required = true)]
    pub photos: Vec<PathBuf>,
    #[command(flatten)]
    pub session: SessionArgs,
    /// One JSON object per line instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Plain text without progress bars (for logs).
    #[arg(long)]
    pub text: bool,
    /// Files in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Longest wait for one analysis after its upload is confirmed.
    #[arg(long, default_value_t = 180)]
    pub timeout_secs: u64,
}

const EVENT_FIELDS: &str = "analysisId uploadId objectKey correlationId";
const AGGREGATE: &str = "brand type machineType model weight year attachment confidence isConfident typeConfidence typeSource name";

fn ws_url(gateway: &str) -> String {
    if let Some(rest) = gateway.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = gateway.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        gateway.to_owned()
    }
}

/// How one file ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub file: String,
    pub upload_id: Option<String>,
    pub analysis_id: Option<String>,
    /// `completed`, `failed`, `error` (never reached the platform) or `timeout`.
    pub status: &'static str,
    pub aggregate: Option<Value>,
    pub provider: Option<String>,
    pub reason: Option<String>,
    pub message: Option<String>,
    /// Confirm → completed, as the client saw it.
    pub seconds: Option<f64>,
}

impl Outcome {
    fn error(file: &str, message: String) -> Self {
        Self {
            file: file.to_owned(),
            upload_id: None,
            analysis_id: None,
            status: "error",
            aggregate: None,
            provider: None,
            reason: None,
            message: Some(message),
            seconds: None,
        }
    }

    pub fn succeeded(&self) -> bool {
        self.status == "completed"
    }

    fn to_json(&self) -> Value {
        json!({
            "file": self.file, "status": self.status, "uploadId": self.upload_id,
            "analysisId": self.analysis_id, "provider": self.provider,
            "machine": self.aggregate, "reason": self.reason, "message": self.message,
            "seconds": self.seconds,
        })
    }
}

/// Events by upload id; an event that arrives before its waiter registers is kept for it.
#[derive(Default)]
struct Waiters {
    waiting: HashMap<String, oneshot::Sender<Value>>,
    early: HashMap<String, Value>,
}

type Shared = Arc<Mutex<Waiters>>;

fn lock(w: &Shared) -> std::sync::MutexGuard<'_, Waiters> {
    w.lock().unwrap_or_else(|p| p.into_inner())
}

fn route(waiters: &Shared, event: Value) {
    let Some(upload) = event["uploadId"].as_str().map(str::to_owned) else {
        return;
    };
    let mut w = lock(waiters);
    match w.waiting.remove(&upload) {
        Some(tx) => {
            let _ = tx.send(event);
        }
        None => {
            w.early.insert(upload, event);
        }
    }
}

fn wait_for(waiters: &Shared, upload: &str) -> oneshot::Receiver<Value> {
    let (tx, rx) = oneshot::channel();
    let mut w = lock(waiters);
    match w.early.remove(upload) {
        Some(event) => {
            let _ = tx.send(event);
        }
        None => {
            w.waiting.insert(upload.to_owned(), tx);
        }
    }
    rx
}

/// A subscription connection with the caller's `completed` and `failed` events (and `started`).
async fn open_events(gateway: &str, token: &str, started: bool) -> anyhow::Result<WsClient> {
    let mut ws = WsClient::connect(
        &ws_url(gateway),
        Protocol::TransportWs,
        None,
        json!({"Authorization": format!("Bearer {token}")}),
    )
    .await
    .context("opening the subscription")?;
    if started {
        ws.subscribe(
            "started",
            &format!("subscription {{ onAnalysisStarted {{ {EVENT_FIELDS} startedAt }} }}"),
            json!({}),
        )
        .await?;
    }
    ws.subscribe(
        "completed",
        &format!(
            "subscription {{ onAnalysisCompleted {{ {EVENT_FIELDS} success completedAt recognitionPayload {{ provider {{ name }} aggregate {{ {AGGREGATE} }} }} }} }}"
        ),
        json!({}),
    )
    .await?;
    ws.subscribe(
        "failed",
        &format!(
            "subscription {{ onAnalysisFailed {{ {EVENT_FIELDS} reason message failedAt }} }}"
        ),
        json!({}),
    )
    .await?;
    Ok(ws)
}

pub async fn run(args: AnalyzeArgs) -> anyhow::Result<i32> {
    let token = session::token(&args.session, true).await?;
    let http = HttpClient::new(args.session.gateway.clone(), Some(token.clone()));
    // Subscribe before the first upload: nothing can complete unseen.
    let mut ws = open_events(&args.session.gateway, &token, false).await?;
    let waiters: Shared = Arc::default();
    let (ws_error_tx, mut ws_error) = tokio::sync::watch::channel(None::<String>);
    let reader = {
        let waiters = waiters.clone();
        tokio::spawn(async move {
            loop {
                match ws.next(Duration::from_secs(3600)).await {
                    Ok(Incoming::Next { payload, .. }) => {
                        let data = &payload["data"];
                        let event = if let Some(c) = data.get("onAnalysisCompleted") {
                            let mut c = c.clone();
                            c["__kind"] = json!("completed");
                            c
                        } else if let Some(f) = data.get("onAnalysisFailed") {
                            let mut f = f.clone();
                            f["__kind"] = json!("failed");
                            f
                        } else {
                            continue;
                        };
                        route(&waiters, event);
                    }
                    Ok(Incoming::Error { errors, .. }) => {
                        let _ = ws_error_tx.send(Some(errors.to_string()));
                        break;
                    }
                    Ok(Incoming::Complete { .. }) => {}
                    Err(e) => {
                        let _ = ws_error_tx.send(Some(e.to_string()));
                        break;
                    }
                }
            }
        })
    };
    // A refused subscription shows up at once; give it a moment before uploading.
    if tokio::time::timeout(Duration::from_millis(300), ws_error.changed())
        .await
        .is_ok()
        && let Some(e) = ws_error.borrow().clone()
    {
        bail!("the subscription was refused: {e}");
    }

    let progress = if args.text || args.json {
        None
    } else {
        Some(MultiProgress::new())
    };
    let timeout = Duration::from_secs(args.timeout_secs);
    let outcomes: Vec<Outcome> = futures::stream::iter(args.photos.iter().cloned())
        .map(|path| {
            let http = http.clone();
            let waiters = waiters.clone();
            let progress = progress.clone();
            let text = args.text;
            async move {
                let file = path.display().to_string();
                let outcome =
                    match analyze_one(&http, &waiters, &path, progress.as_ref(), timeout).await {
                        Ok(o) => o,
                        Err(e) => Outcome::error(&file, format!("{e:#}")),
                    };
                if text {
                    eprintln!("{}: {}", outcome.file, outcome.status);
                }
                outcome
            }
        })
        .buffer_unordered(args.concurrency.max(1))
        .collect()
        .await;
    reader.abort();
    if let Some(p) = &progress {
        let _ = p.clear();
    }
    if args.json {
        for o in &outcomes {
            println!("{}", o.to_json());
        }
    } else {
        print!("{}", crate::output::table(&outcomes));
    }
    let failed = outcomes.iter().filter(|o| !o.succeeded()).count();
    if failed > 0 {
        for o in outcomes.iter().filter(|o| !o.succeeded()) {
            eprintln!(
                "{}: {} {}",
                o.file,
                o.reason.as_deref().unwrap_or(o.status),
                o.message.as_deref().unwrap_or("")
            );
        }
        return Ok(1);
    }
    Ok(0)
}

fn content_type(path: &std::path::Path, bytes: &[u8]) -> anyhow::Result<&'static str> {
    if bytes.starts_with(&[0xFF, 0xD8, 0xFF]) {
        return Ok("image/jpeg");
    }
    if bytes.starts_with(b"\x89PNG\r\n\x1a\n") {
        return Ok("image/png");
    }
    if bytes.len() > 12 && &bytes[..4] == b"RIFF" && &bytes[8..12] == b"WEBP" {
        return Ok("image/webp");
    }
    // Not an image we know: let the platform say so (it refuses it with a reason).
    match path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        Some("png") => Ok("image/png"),
        Some("webp") => Ok("image/webp"),
        _ => Ok("image/jpeg"),
    }
}

async fn analyze_one(
    http: &HttpClient,
    waiters: &Shared,
    path: &std::path::Path,
    progress: Option<&MultiProgress>,
    timeout: Duration,
) -> anyhow::Result<Outcome> {
    let file = path.display().to_string();
    let bytes = tokio::fs::read(path)
        .await
        .with_context(|| format!("reading {file}"))?;
    let content_type = content_type(path, &bytes)?;
    let checksum = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    let filename = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("photo.jpg");
    let started = http
        .data(
            "mutation($f: String!, $c: String!) { startUpload(filename: $f, contentType: $c) { correlationId imageUploadPayload { uploadId key putUrl expiresAt requiredHeaders { name value } } } }",
            json!({"f": filename, "c": content_type}),
        )
        .await
        .context("startUpload")?;
    let payload = &started["startUpload"]["imageUploadPayload"];
    let upload_id = payload["uploadId"]
        .as_str()
        .context("startUpload gave no uploadId")?
        .to_owned();
    let put_url = payload["putUrl"].as_str().context("no putUrl")?.to_owned();
    let done = wait_for(waiters, &upload_id);

    let bar = progress.map(|p| {
        let bar = p.add(ProgressBar::new(bytes.len() as u64));
        bar.set_style(
            ProgressStyle::with_template("{msg:30!} [{bar:30}] {bytes}/{total_bytes}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_message(filename.to_owned());
        bar
    });
    // Exactly the signed headers, each once: a duplicate breaks the presigned signature.
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::CONTENT_TYPE,
        reqwest::header::HeaderValue::from_static(content_type),
    );
    headers.insert(reqwest::header::CONTENT_LENGTH, bytes.len().into());
    for h in payload["requiredHeaders"].as_array().into_iter().flatten() {
        if let (Some(n), Some(v)) = (h["name"].as_str(), h["value"].as_str())
            && let (Ok(n), Ok(v)) = (
                reqwest::header::HeaderName::from_bytes(n.as_bytes()),
                reqwest::header::HeaderValue::from_str(v),
            )
        {
            headers.insert(n, v);
        }
    }
    let put = reqwest::Client::new().put(&put_url).headers(headers);
    let len = bytes.len();
    let chunks: Vec<Result<bytes::Bytes, std::io::Error>> = bytes
        .chunks(64 * 1024)
        .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
        .collect();
    let bar_for_stream = bar.clone();
    let body = futures::stream::iter(chunks).inspect(move |c| {
        if let (Some(b), Ok(c)) = (&bar_for_stream, c) {
            b.inc(c.len() as u64);
        }
    });
    let response = put
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
        .context("uploading to storage")?;
    if !response.status().is_success() {
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        bail!(
            "storage refused the upload: HTTP {status} {}",
            text.chars().take(200).collect::<String>()
        );
    }
    if let Some(b) = &bar {
        b.set_message(format!("{filename} (analysing)"));
    }
    http.data(
        "mutation($u: String!, $b: Int!, $c: String!) { confirmUpload(uploadId: $u, bytes: $b, checksum: $c) { status } }",
        json!({"u": upload_id, "b": len, "c": checksum}),
    )
    .await
    .context("confirmUpload")?;
    let confirmed = Instant::now();
    let event = tokio::time::timeout(timeout, done).await;
    if let Some(b) = &bar {
        b.finish_and_clear();
    }
    let mut outcome = Outcome {
        file,
        upload_id: Some(upload_id),
        analysis_id: None,
        status: "timeout",
        aggregate: None,
        provider: None,
        reason: None,
        message: None,
        seconds: Some(confirmed.elapsed().as_secs_f64()),
    };
    let event = match event {
        Ok(Ok(e)) => e,
        Ok(Err(_)) => {
            outcome.status = "error";
            outcome.message = Some("the subscription ended".into());
            return Ok(outcome);
        }
        Err(_) => {
            outcome.message = Some(format!("no result within {} s", timeout.as_secs()));
            return Ok(outcome);
        }
    };
    outcome.analysis_id = event["analysisId"].as_str().map(str::to_owned);
    if event["__kind"] == "completed" {
        outcome.status = "completed";
        let recognition = &event["recognitionPayload"];
        outcome.aggregate = Some(recognition["aggregate"].clone());
        outcome.provider = recognition["provider"]["name"].as_str().map(str::to_owned);
    } else {
        outcome.status = "failed";
        outcome.reason = event["reason"].as_str().map(str::to_owned);
        outcome.message = event["message"].as_str().map(str::to_owned);
    }
    Ok(outcome)
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// One JSON object per line.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many events (default: until Ctrl-C).
    #[arg(long)]
    pub count: Option<usize>,
}

/// `trackunit watch`: the caller's analysis events as they happen.
pub async fn watch(args: WatchArgs) -> anyhow::Result<i32> {
    let token = session::token(&args.session, true).await?;
    let mut ws = open_events(&args.session.gateway, &token, true).await?;
    eprintln!("watching your analyses (Ctrl-C stops)");
    let mut seen = 0;
    loop {
        let next = tokio::select! {
            n = ws.next(Duration::from_secs(24 * 3600)) => n,
            _ = tokio::signal::ctrl_c() => return Ok(0),
        };
        match next {
            Ok(Incoming::Next { id, payload }) => {
                let data = &payload["data"];
                let Some(event) = data.as_object().and_then(|o| o.values().next()) else {
                    continue;
                };
                if args.json {
                    println!("{}", json!({"event": id, "data": event}));
                } else {
                    println!("{}", crate::output::event_line(&id, event));
                }
                seen += 1;
                if args.count.is_some_and(|c| seen >= c) {
                    return Ok(0);
                }
            }
            Ok(Incoming::Error { errors, .. }) => bail!("subscription refused: {errors}"),
            Ok(Incoming::Complete { .. }) => {}
            Err(e) => bail!("the subscription ended: {e}"),
        }
    }
}

#[derive(Debug, Args)]
pub struct AnalysesArgs {
    #[command(flatten)]
    pub session: SessionArgs,
    /// How many (newest first).
    #[arg(long, default_value_t = 20)]
    pub first: i32,
    /// Continue after this cursor (printed under the list).
    #[arg(long)]
    pub after: Option<String>,
    #[arg(long)]
    pub json: bool,
}

/// `trackunit analyses`: the caller's past analyses.
pub async fn analyses(args: AnalysesArgs) -> anyhow::Result<i32> {
    let token = session::token(&args.session, true).await?;
    let http = HttpClient::new(args.session.gateway.clone(), Some(token));
    let data = http
        .data(
            &format!("query($n: Int, $a: String) {{ analyses(first: $n, after: $a) {{ nodes {{ id uploadId objectKey status reason message requestedAt completedAt result {{ provider {{ name }} aggregate {{ {AGGREGATE} }} }} }} pageInfo {{ hasNextPage endCursor }} }} }}"),
            json!({"n": args.first, "a": args.after}),
        )
        .await?;
    let connection = &data["analyses"];
    let nodes = connection["nodes"].as_array().cloned().unwrap_or_default();
    if args.json {
        for n in &nodes {
            println!("{n}");
        }
    } else {
        print!("{}", crate::output::analyses_table(&nodes));
        if let Some(cursor) = connection["pageInfo"]["endCursor"].as_str() {
            println!("more: trackunit analyses --after {cursor}");
        }
    }
    Ok(0)
}
