//! The HTTP stack every service shares: ops routes, correlation ids, trace context, request
//! metrics and logs, panics turned into 500s, and graceful shutdown.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tracing::Instrument;

use crate::correlation::{self, CorrelationId};
use crate::health::Health;

/// How long `/health/ready` waits for each dependency.
const READY_TIMEOUT: Duration = Duration::from_secs(2);

/// `/health/live`, `/health/ready`, `/metrics`.
pub fn ops_routes(health: Health) -> Router {
    Router::new()
        .route(
            "/health/live",
            get(|| async { Json(serde_json::json!({"status": "live"})) }),
        )
        .route(
            "/health/ready",
            get(|State(health): State<Health>| async move {
                let report = health.report(READY_TIMEOUT).await;
                let code = if report.is_ready() {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                };
                (code, Json(report))
            }),
        )
        .route(
            "/metrics",
            get(|| async {
                (
                    [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                    crate::telemetry::metrics().render(),
                )
            }),
        )
        .with_state(health)
}

/// `app` plus the ops routes, wrapped in the common layers.
pub fn service_router(service: &'static str, app: Router, health: Health) -> Router {
    // Install the recorder before the first request records anything.
    crate::telemetry::metrics();
    app.merge(ops_routes(health))
        .layer(middleware::from_fn_with_state(service, observe))
        .layer(CatchPanicLayer::custom(|_| {
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(serde_json::json!({
                    "type": "about:blank", "title": "Internal Server Error", "status": 500,
                    "detail": "unexpected failure"
                })),
            )
                .into_response()
        }))
}

fn is_ops(route: &str) -> bool {
    route.starts_with("/health/") || route == "/metrics"
}

async fn observe(State(service): State<&'static str>, mut req: Request, next: Next) -> Response {
    let correlation_id = req
        .headers()
        .get(correlation::HEADER)
        .and_then(|v| v.to_str().ok())
        .and_then(correlation::sanitize)
        .unwrap_or_else(correlation::new_id);
    req.extensions_mut()
        .insert(CorrelationId(correlation_id.clone()));
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    let method = req.method().clone();
    let span = tracing::info_span!(
        "http_request",
        service,
        method = %method,
        route = %route,
        correlation_id = %correlation_id,
        status = tracing::field::Empty,
    );
    crate::telemetry::link_http(&span, req.headers());
    let started = Instant::now();
    let mut response = next.run(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let status = response.status();
    span.record("status", status.as_u16());
    let labels = [
        ("service", service.to_owned()),
        ("method", method.to_string()),
        ("route", route.clone()),
    ];
    metrics::histogram!("http_request_duration_seconds", &labels).record(elapsed.as_secs_f64());
    let mut with_status = labels.to_vec();
    with_status.push(("status", status.as_u16().to_string()));
    metrics::counter!("http_requests_total", &with_status).increment(1);
    span.in_scope(|| {
        if is_ops(&route) {
            tracing::debug!(
                status = status.as_u16(),
                ms = elapsed.as_millis() as u64,
                "request"
            );
        } else if status.is_server_error() {
            tracing::warn!(
                status = status.as_u16(),
                ms = elapsed.as_millis() as u64,
                "request failed"
            );
        } else {
            tracing::info!(
                status = status.as_u16(),
                ms = elapsed.as_millis() as u64,
                "request"
            );
        }
    });
    if let Ok(v) = HeaderValue::from_str(&correlation_id) {
        response.headers_mut().insert(correlation::HEADER, v);
    }
    response
}

/// Bind a listener, with the address in the error.
pub async fn bind(addr: &str) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {addr}: {e}")))
}

/// Serve until `shutdown`, then stop accepting and let in-flight requests finish — for at most
/// [`crate::shutdown::GRACE`]; long-lived connections still open then are dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::serve::ListenerExt;
    let graceful = shutdown.clone();
    // Without TCP_NODELAY a response written in two parts waits for the client's delayed ACK
    // (~40 ms on Linux) — on every internal call.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "TCP_NODELAY");
        }
    });
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move { graceful.cancelled().await });
    let deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(crate::shutdown::GRACE).await;
    };
    tokio::select! {
        served = server => served,
        () = deadline => {
            tracing::warn!(grace = ?crate::shutdown::GRACE, "connections still open after the grace period; closing them");
            Ok(())
        }
    }
}

/// [`serve`] for a service: readiness turns to "draining" as soon as shutdown starts, so load
/// balancers stop sending new work while in-flight requests finish.
pub async fn serve_service(
    listener: tokio::net::TcpListener,
    router: Router,
    health: Health,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let draining = {
        let shutdown = shutdown.clone();
        async move {
            shutdown.cancelled().await;
            health.set_draining();
        }
    };
    let (served, ()) = tokio::join!(serve(listener, router, shutdown), draining);
    served
}

/// An RFC 7807 problem body, the shape the original services answer errors with.
pub fn problem(status: StatusCode, title: &str, detail: impl Into<String>) -> Response {
    (
        status,
        Json(serde_json::json!({
            "type": "about:blank", "title": title, "status": status.as_u16(), "detail": detail.into()
        })),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn start(
        app: Router,
        health: Health,
    ) -> (
        String,
        CancellationToken,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let shutdown = CancellationToken::new();
        let router = service_router("test-svc", app, health);
        let task = tokio::spawn(serve(listener, router, shutdown.clone()));
        (format!("http://{addr}"), shutdown, task)
    }

    #[tokio::test]
    async fn correlation_ids_are_echoed_generated_and_sanitised() {
        let app = Router::new().route(
            "/echo",
            get(|axum::Extension(c): axum::Extension<CorrelationId>| async move { c.0 }),
        );
        let (base, shutdown, task) = start(app, Health::new()).await;
        let client = reqwest::Client::new();
        let r = client
            .get(format!("{base}/echo"))
            .header("X-Correlation-ID", "7c9f10a6c21f45e4a2f42c8b2a2b3a19")
            .send()
            .await
            .expect("send");
        assert_eq!(
            r.headers()["x-correlation-id"],
            "7c9f10a6c21f45e4a2f42c8b2a2b3a19"
        );
        assert_eq!(
            r.text().await.expect("body"),
            "7c9f10a6c21f45e4a2f42c8b2a2b3a19"
        );

        let r = client
            .get(format!("{base}/echo"))
            .send()
            .await
            .expect("send");
        let generated = r.headers()["x-correlation-id"]
            .to_str()
            .expect("ascii")
            .to_owned();
        assert_eq!(generated.len(), 32);

        let r = client
            .get(format!("{base}/echo"))
            .header("X-Correlation-ID", "bad id with spaces")
            .send()
            .await
            .expect("send");
        assert_ne!(r.headers()["x-correlation-id"], "bad id with spaces");
        shutdown.cancel();
        task.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn health_and_metrics_routes() {
        let health = Health::new();
        let (base, shutdown, task) = start(Router::new(), health.clone()).await;
        let client = reqwest::Client::new();
        let live = client
            .get(format!("{base}/health/live"))
            .send()
            .await
            .expect("live");
        assert_eq!(live.status(), 200);
        let ready = client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .expect("ready");
        assert_eq!(ready.status(), 200);

        health.check("broker", || async { Err("down".to_owned()) });
        let ready = client
            .get(format!("{base}/health/ready"))
            .send()
            .await
            .expect("ready");
        assert_eq!(ready.status(), 503);
        let body: serde_json::Value = ready.json().await.expect("json");
        assert_eq!(body["status"], "not_ready");
        assert_eq!(body["checks"]["broker"]["error"], "down");

        let metrics = client
            .get(format!("{base}/metrics"))
            .send()
            .await
            .expect("metrics");
        assert_eq!(metrics.status(), 200);
        let text = metrics.text().await.expect("text");
        assert!(text.contains("http_requests_total"), "{text}");
        assert!(text.contains(r#"route="/health/ready""#), "{text}");
        shutdown.cancel();
        task.await.expect("join").expect("serve");
    }

    #[tokio::test]
    async fn panics_become_500_problem_json() {
        let app = Router::new().route(
            "/boom",
            get(|| async {
                if true {
                    panic!("boom");
                }
                "unreachable"
            }),
        );
        let (base, shutdown, task) = start(app, Health::new()).await;
        let r = reqwest::get(format!("{base}/boom")).await.expect("send");
        assert_eq!(r.status(), 500);
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["title"], "Internal Server Error");
        shutdown.cancel();
        task.await.expect("join").expect("serve");
    }
}
