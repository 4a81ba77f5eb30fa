//! With `OTEL_EXPORTER_OTLP_ENDPOINT` set, spans are exported over OTLP/HTTP with the service's
//! `service.name`. The collector here is a 127.0.0.1 HTTP server that records what it is sent.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use runtime::telemetry::{LogFormat, TelemetryOptions};

/// (content type, body) of every export request.
type Received = Arc<Mutex<Vec<(String, Bytes)>>>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_http_collector() {
    let received: Received = Arc::default();
    let app = Router::new()
        .route(
            "/v1/traces",
            post(
                |State(store): State<Received>,
                 headers: axum::http::HeaderMap,
                 body: Bytes| async move {
                    let ct = headers
                        .get("content-type")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    store.lock().expect("lock").push((ct, body));
                    ""
                },
            ),
        )
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let server = tokio::spawn(async move { axum::serve(listener, app).await });

    runtime::telemetry::init(&TelemetryOptions {
        service: "otlp-export-test-service".into(),
        log_format: LogFormat::Text,
        filter: "warn".into(),
        trace_filter: "info".into(),
        otlp_endpoint: Some(format!("http://{addr}")),
    });
    {
        let span = tracing::info_span!("confirm_upload", upload_id = "u-42");
        let _g = span.enter();
        tracing::info!("inside");
    }
    // The batch exporter runs on its own thread; flushing hands the span over.
    tokio::task::spawn_blocking(runtime::telemetry::shutdown)
        .await
        .expect("flush");

    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let got = received.lock().expect("lock").clone();
        if let Some((ct, body)) = got.first() {
            assert_eq!(ct, "application/x-protobuf");
            let text = String::from_utf8_lossy(body);
            assert!(
                text.contains("otlp-export-test-service"),
                "service.name in the resource"
            );
            assert!(text.contains("confirm_upload"), "the span is in the export");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "nothing exported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.abort();
}
