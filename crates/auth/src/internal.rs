//! The internal token. Responses follow the original tu-storage-service middleware: 401
//! `Missing internal token` / `Invalid internal token`, 500 `Internal auth not configured`.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use runtime::http::problem;
use subtle::ConstantTimeEq;

pub const HEADER: &str = "x-internal-token";

/// The shared secret. Empty means "not configured": every request is refused with 500, so a
/// missing secret can never mean an open door.
#[derive(Clone)]
pub struct InternalToken(Arc<str>);

impl std::fmt::Debug for InternalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("InternalToken(***)")
    }
}

impl InternalToken {
    pub fn new(secret: impl Into<String>) -> Self {
        Self(secret.into().trim().to_owned().into())
    }

    pub fn is_configured(&self) -> bool {
        !self.0.is_empty()
    }

    /// Constant-time comparison (only the length can leak).
    pub fn matches(&self, presented: &[u8]) -> bool {
        self.is_configured() && bool::from(self.0.as_bytes().ct_eq(presented))
    }

    /// The header a client sends.
    pub fn header(&self) -> (HeaderName, HeaderValue) {
        (
            HeaderName::from_static(HEADER),
            HeaderValue::from_str(&self.0).unwrap_or_else(|_| HeaderValue::from_static("")),
        )
    }
}

/// Middleware: refuse requests without the right `x-internal-token`.
/// `router.layer(axum::middleware::from_fn_with_state(token, require))`
pub async fn require(State(token): State<InternalToken>, req: Request, next: Next) -> Response {
    if !token.is_configured() {
        tracing::error!("INTERNAL_AUTH_API_KEY is not configured; refusing internal calls");
        return problem(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Internal Server Error",
            "Internal auth not configured",
        );
    }
    match req.headers().get(HEADER) {
        None => problem(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Missing internal token",
        ),
        Some(v) if token.matches(v.as_bytes()) => next.run(req).await,
        Some(_) => {
            tracing::warn!("refused a call with an invalid internal token");
            problem(
                StatusCode::UNAUTHORIZED,
                "Unauthorized",
                "Invalid internal token",
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::Router;
    use axum::routing::get;

    async fn serve(token: InternalToken) -> String {
        let app = Router::new()
            .route("/internal", get(|| async { "ok" }))
            .layer(axum::middleware::from_fn_with_state(token, require));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move { axum::serve(listener, app).await });
        format!("http://{addr}/internal")
    }

    #[tokio::test]
    async fn missing_wrong_and_right_tokens() {
        let url = serve(InternalToken::new("s3cret-token")).await;
        let c = reqwest::Client::new();
        let r = c.get(&url).send().await.expect("send");
        assert_eq!(r.status(), 401);
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["detail"], "Missing internal token");

        let r = c
            .get(&url)
            .header(HEADER, "s3cret-tokeN")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401);
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["detail"], "Invalid internal token");

        let r = c
            .get(&url)
            .header(HEADER, "s3cret")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 401, "a prefix is not the token");

        let r = c
            .get(&url)
            .header(HEADER, "s3cret-token")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.expect("text"), "ok");
    }

    #[tokio::test]
    async fn an_unconfigured_token_refuses_everything() {
        let url = serve(InternalToken::new("  ")).await;
        let r = reqwest::Client::new()
            .get(&url)
            .header(HEADER, "")
            .send()
            .await
            .expect("send");
        assert_eq!(r.status(), 500);
        let body: serde_json::Value = r.json().await.expect("json");
        assert_eq!(body["detail"], "Internal auth not configured");
    }

    #[test]
    fn debug_never_shows_the_secret() {
        assert_eq!(
            format!("{:?}", InternalToken::new("abc")),
            "InternalToken(***)"
        );
    }
}
