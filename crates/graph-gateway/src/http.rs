//! `/graphql` over HTTP POST and WebSocket (`graphql-transport-ws` and the legacy `graphql-ws`),
//! GraphiQL in development mode, request size limits and per-client rate limiting.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use async_graphql::Data;
use async_graphql::http::{GraphiQLSource, WebSocketProtocols, WsMessage};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{ConnectInfo, DefaultBodyLimit, FromRequestParts, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Extension, Json, Router};
use futures::{SinkExt, StreamExt};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use runtime::CorrelationId;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::oidc::{AuthError, Caller, Validator};
use crate::schema::{GatewaySchema, RequestAuth};

/// What the handlers share.
#[derive(Clone)]
pub struct AppState {
    pub schema: GatewaySchema,
    pub validator: Arc<Validator>,
    pub limiter: Option<Arc<DefaultKeyedRateLimiter<String>>>,
    pub development: bool,
    pub max_request_bytes: usize,
    pub ws: WsSettings,
    pub ws_connections: Arc<AtomicUsize>,
    pub shutdown: CancellationToken,
}

#[derive(Clone, Debug)]
pub struct WsSettings {
    pub keepalive: Duration,
    pub init_timeout: Duration,
    pub max_connections: usize,
    /// A client that does not take a message within this time is disconnected.
    pub send_timeout: Duration,
}

/// A rate limiter for `per_second` sustained and `burst` extra; `None` when `burst` is 0.
pub fn limiter(per_second: u32, burst: u32) -> Option<Arc<DefaultKeyedRateLimiter<String>>> {
    let burst = NonZeroU32::new(burst)?;
    let rate = NonZeroU32::new(per_second.max(1))?;
    Some(Arc::new(RateLimiter::keyed(
        Quota::per_second(rate).allow_burst(burst),
    )))
}

pub fn routes(state: AppState) -> Router {
    let limit = state.max_request_bytes;
    Router::new()
        .route("/graphql", get(get_graphql).post(post_graphql))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

fn graphql_error(status: StatusCode, message: &str, code: &str) -> Response {
    (
        status,
        Json(json!({"errors": [{"message": message, "extensions": {"code": code}}]})),
    )
        .into_response()
}

fn unauthorized(e: &AuthError) -> Response {
    metrics::counter!("gateway_auth_failures_total", "reason" => e.reason()).increment(1);
    let mut response = graphql_error(StatusCode::UNAUTHORIZED, &e.to_string(), e.code());
    let challenge = format!(
        "Bearer error=\"invalid_token\", error_description=\"{}\"",
        e.to_string().replace('"', "'")
    );
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        response.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    response
}

impl AppState {
    async fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, AuthError> {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.validator.validate_header(value).await
    }

    /// Over the limit → the 429 to answer with. The key is the token's subject when there is a
    /// valid one (many users behind one proxy), else the peer address.
    fn rate_limited(&self, auth: &Result<Caller, AuthError>, peer: IpAddr) -> Option<Response> {
        let limiter = self.limiter.as_ref()?;
        let key = match auth {
            Ok(caller) => format!("sub:{}", caller.subject),
            Err(_) => format!("ip:{peer}"),
        };
        match limiter.check_key(&key) {
            Ok(()) => None,
            Err(not_until) => {
                metrics::counter!("gateway_rate_limited_total").increment(1);
                let wait = not_until.wait_time_from(governor::clock::Clock::now(
                    &governor::clock::DefaultClock::default(),
                ));
                let secs = wait.as_secs().max(1);
                let mut response = graphql_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    &format!("too many requests; retry in {secs} s"),
                    "RATE_LIMITED",
                );
                if let Ok(v) = HeaderValue::from_str(&secs.to_string()) {
                    response.headers_mut().insert(header::RETRY_AFTER, v);
                }
                Some(response)
            }
        }
    }
}

async fn post_graphql(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(correlation): Extension<CorrelationId>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Response {
    let auth = app.authenticate(&headers).await;
    if let Some(limited) = app.rate_limited(&auth, peer.ip()) {
        return limited;
    }
    let body = match body {
        Ok(b) => b,
        Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => {
            return graphql_error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("request body over {} bytes", app.max_request_bytes),
                "REQUEST_TOO_LARGE",
            );
        }
        Err(e) => return graphql_error(StatusCode::BAD_REQUEST, &e.body_text(), "BAD_REQUEST"),
    };
    let request: async_graphql::Request = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return graphql_error(
                StatusCode::BAD_REQUEST,
                &format!("the body is not a GraphQL request: {e}"),
                "BAD_REQUEST",
            );
        }
    };
    let request = request.data(RequestAuth {
        auth,
        correlation_id: correlation.0,
    });
    let response = app.schema.execute(request).await;
    Json(response).into_response()
}

async fn get_graphql(
    State(app): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Extension(correlation): Extension<CorrelationId>,
    headers: HeaderMap,
    request: axum::extract::Request,
) -> Response {
    let (mut parts, _) = request.into_parts();
    let Ok(upgrade) = WebSocketUpgrade::from_request_parts(&mut parts, &()).await else {
        if app.development {
            return Html(
                GraphiQLSource::build()
                    .endpoint("/graphql")
                    .subscription_endpoint("/graphql")
                    .finish(),
            )
            .into_response();
        }
        return graphql_error(
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST for queries and mutations, a WebSocket for subscriptions",
            "METHOD_NOT_ALLOWED",
        );
    };
    let protocol = headers
        .get(header::SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok())
        .and_then(|list| {
            list.split(',')
                .find_map(|p| WebSocketProtocols::from_str(p.trim()).ok())
        });
    let Some(protocol) = protocol else {
        return graphql_error(
            StatusCode::BAD_REQUEST,
            "ask for the WebSocket subprotocol graphql-transport-ws (or graphql-ws)",
            "BAD_REQUEST",
        );
    };
    // A token on the upgrade request is checked now: no GraphQL answer is possible yet.
    let header_auth = if headers.contains_key(header::AUTHORIZATION) {
        match app.authenticate(&headers).await {
            Ok(caller) => Some(Ok(caller)),
            Err(e) => return unauthorized(&e),
        }
    } else {
        None
    };
    let limit_key = header_auth.clone().unwrap_or(Err(AuthError::Missing));
    if let Some(limited) = app.rate_limited(&limit_key, peer.ip()) {
        return limited;
    }
    if app.ws_connections.load(Ordering::SeqCst) >= app.ws.max_connections {
        return graphql_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "too many WebSocket connections on this replica; retry",
            "UNAVAILABLE",
        );
    }
    upgrade
        .protocols(async_graphql::http::ALL_WEBSOCKET_PROTOCOLS)
        .on_upgrade(move |socket| serve_ws(app, socket, protocol, header_auth, correlation.0))
}

/// The token a client put into `connection_init`: `{"Authorization": "Bearer …"}`,
/// `{"authorization": …}`, `{"token": …}` or `{"headers": {"Authorization": …}}`.
fn init_token(payload: &serde_json::Value) -> Option<String> {
    let pick = |v: &serde_json::Value| {
        ["Authorization", "authorization", "token", "accessToken"]
            .iter()
            .find_map(|k| v.get(*k).and_then(|t| t.as_str()).map(str::to_owned))
    };
    pick(payload).or_else(|| payload.get("headers").and_then(pick))
}

struct ConnectionGuard(Arc<AtomicUsize>);

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
        metrics::gauge!("gateway_ws_connections").decrement(1.0);
    }
}

async fn serve_ws(
    app: AppState,
    socket: WebSocket,
    protocol: WebSocketProtocols,
    header_auth: Option<Result<Caller, AuthError>>,
    correlation_id: String,
) {
    app.ws_connections.fetch_add(1, Ordering::SeqCst);
    metrics::gauge!("gateway_ws_connections").increment(1.0);
    let _guard = ConnectionGuard(app.ws_connections.clone());
    let (mut sink, stream) = socket.split();
    let incoming = stream
        .take_while(|m| {
            futures::future::ready(matches!(m, Ok(m) if !matches!(m, Message::Close(_))))
        })
        .filter_map(|m| {
            futures::future::ready(match m {
                Ok(Message::Text(t)) => Some(Bytes::copy_from_slice(t.as_bytes())),
                Ok(Message::Binary(b)) => Some(b),
                _ => None,
            })
        });
    let initialized = Arc::new(AtomicBool::new(false));
    let on_init = {
        let validator = app.validator.clone();
        let initialized = initialized.clone();
        move |payload: serde_json::Value| async move {
            // A token in the payload wins over the upgrade header's.
            let auth = match (init_token(&payload), header_auth) {
                (Some(token), _) => validator.validate_header(Some(&token)).await,
                (None, Some(auth)) => auth,
                (None, None) => Err(AuthError::Missing),
            };
            if let Err(e) = &auth {
                tracing::info!(
                    reason = e.reason(),
                    "WebSocket connection without a valid token"
                );
            }
            initialized.store(true, Ordering::SeqCst);
            let mut data = Data::default();
            data.insert(RequestAuth {
                auth,
                correlation_id,
            });
            Ok(data)
        }
    };
    let mut outgoing = async_graphql::http::WebSocket::new(app.schema.clone(), incoming, protocol)
        .on_connection_init(on_init);
    let mut keepalive = tokio::time::interval(app.ws.keepalive);
    keepalive.tick().await;
    let init_deadline = tokio::time::sleep(app.ws.init_timeout);
    tokio::pin!(init_deadline);
    let close = |code: u16, reason: &str| {
        Message::Close(Some(CloseFrame {
            code,
            reason: reason.to_owned().into(),
        }))
    };
    loop {
        let message = tokio::select! {
            next = outgoing.next() => match next {
                Some(WsMessage::Text(text)) => Message::Text(text.into()),
                Some(WsMessage::Close(code, reason)) => {
                    let _ = sink.send(close(code, &reason)).await;
                    break;
                }
                None => break,
            },
            _ = keepalive.tick() => Message::Ping(Bytes::new()),
            () = &mut init_deadline, if !initialized.load(Ordering::SeqCst) => {
                let _ = sink.send(close(4408, "Connection initialisation timeout")).await;
                break;
            }
            () = app.shutdown.cancelled() => {
                let _ = sink.send(close(1001, "server shutting down")).await;
                break;
            }
        };
        match tokio::time::timeout(app.ws.send_timeout, sink.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => break,
            Err(_) => {
                metrics::counter!("gateway_ws_send_timeouts_total").increment(1);
                tracing::info!("disconnecting a WebSocket client that stopped reading");
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_found_in_the_usual_init_payloads() {
        for payload in [
            json!({"Authorization": "Bearer abc"}),
            json!({"authorization": "Bearer abc"}),
            json!({"headers": {"Authorization": "Bearer abc"}}),
        ] {
            assert_eq!(init_token(&payload).as_deref(), Some("Bearer abc"));
        }
        assert_eq!(init_token(&json!({"token": "abc"})).as_deref(), Some("abc"));
        assert_eq!(init_token(&json!({})), None);
    }

    #[test]
    fn the_limiter_refuses_past_the_burst() {
        let limiter = limiter(1, 3).expect("limiter");
        let key = "sub:alice".to_owned();
        for _ in 0..3 {
            assert!(limiter.check_key(&key).is_ok());
        }
        assert!(limiter.check_key(&key).is_err());
        assert!(
            limiter.check_key(&"sub:bob".to_owned()).is_ok(),
            "per client"
        );
        assert!(super::limiter(10, 0).is_none(), "burst 0 turns it off");
    }
}
