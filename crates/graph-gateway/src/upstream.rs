//! Calls to tu-ingestion-service and the orchestrator's read API: the internal token, the
//! caller's subject (`x-owner`), the correlation id and the trace context on every call.
//! Upstream answers become [`UpstreamError`]s that the schema turns into coded GraphQL errors.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// 400/422: what the caller sent is wrong (`errors` has the field messages).
    #[error("{message}")]
    Invalid { message: String, errors: Value },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Gone(String),
    #[error("{0}")]
    TooLarge(String),
    /// Down, timing out, or answering 5xx.
    #[error("{service} is unavailable: {detail}")]
    Unavailable {
        service: &'static str,
        detail: String,
    },
}

impl UpstreamError {
    pub fn code(&self) -> &'static str {
        match self {
            UpstreamError::Invalid { .. } => "BAD_USER_INPUT",
            UpstreamError::NotFound(_) => "NOT_FOUND",
            UpstreamError::Conflict(_) => "CONFLICT",
            UpstreamError::Gone(_) => "UPLOAD_EXPIRED",
            UpstreamError::TooLarge(_) => "TOO_LARGE",
            UpstreamError::Unavailable { .. } => "UPSTREAM_UNAVAILABLE",
        }
    }
}

/// Who is asking, passed on to the services.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub owner: String,
    pub correlation_id: String,
}

#[derive(Clone)]
pub struct Upstreams {
    http: reqwest::Client,
    ingestion: String,
    orchestrator: String,
    internal_token: auth::internal::InternalToken,
}

impl Upstreams {
    pub fn new(
        ingestion: &str,
        orchestrator: &str,
        internal_token: &str,
        timeout: Duration,
    ) -> anyhow::Result<Self> {
        Ok(Self {
            http: reqwest::Client::builder()
                .timeout(timeout)
                .pool_idle_timeout(Duration::from_secs(30))
                .build()?,
            ingestion: ingestion.trim_end_matches('/').to_owned(),
            orchestrator: orchestrator.trim_end_matches('/').to_owned(),
            internal_token: auth::internal::InternalToken::new(internal_token),
        })
    }

    pub async fn ingestion<T: DeserializeOwned>(
        &self,
        cx: &CallContext,
        method: Method,
        path: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<T, UpstreamError> {
        let url = format!("{}{path}", self.ingestion);
        self.call("tu-ingestion-service", cx, method, &url, body)
            .await
    }

    pub async fn orchestrator<T: DeserializeOwned>(
        &self,
        cx: &CallContext,
        path_and_query: &str,
    ) -> Result<T, UpstreamError> {
        let url = format!("{}{path_and_query}", self.orchestrator);
        self.call(
            "svc-analysis-orchestrator",
            cx,
            Method::GET,
            &url,
            None::<&()>,
        )
        .await
    }

    async fn call<T: DeserializeOwned>(
        &self,
        service: &'static str,
        cx: &CallContext,
        method: Method,
        url: &str,
        body: Option<&(impl Serialize + Sync)>,
    ) -> Result<T, UpstreamError> {
        let mut headers = reqwest::header::HeaderMap::new();
        runtime::telemetry::inject_http(&mut headers);
        let (name, value) = self.internal_token.header();
        headers.insert(name, value);
        if let Ok(v) = cx.owner.parse() {
            headers.insert(auth::owner::HEADER, v);
        }
        if let Ok(v) = cx.correlation_id.parse() {
            headers.insert(runtime::correlation::HEADER, v);
        }
        let mut request = self.http.request(method, url).headers(headers);
        if let Some(body) = body {
            request = request.json(body);
        }
        let started = std::time::Instant::now();
        let response = request.send().await;
        metrics::histogram!("gateway_upstream_seconds", "service" => service)
            .record(started.elapsed().as_secs_f64());
        let response = response.map_err(|e| UpstreamError::Unavailable {
            service,
            detail: if e.is_timeout() {
                "timed out".into()
            } else {
                "cannot connect".into()
            },
        })?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| UpstreamError::Unavailable {
                service,
                detail: format!("reading the answer: {e}"),
            })?;
        let json: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status.is_success() {
            return serde_json::from_value(json).map_err(|e| UpstreamError::Unavailable {
                service,
                detail: format!("unexpected answer: {e}"),
            });
        }
        let detail = json
            .get("detail")
            .and_then(Value::as_str)
            .or_else(|| json.get("title").and_then(Value::as_str))
            .unwrap_or("")
            .to_owned();
        Err(match status {
            StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => {
                let errors = json.get("errors").cloned().unwrap_or(Value::Null);
                let message = if detail.is_empty() {
                    summarize(&errors)
                } else {
                    detail
                };
                UpstreamError::Invalid { message, errors }
            }
            StatusCode::NOT_FOUND => UpstreamError::NotFound(detail),
            StatusCode::CONFLICT => UpstreamError::Conflict(detail),
            StatusCode::GONE => UpstreamError::Gone(detail),
            StatusCode::PAYLOAD_TOO_LARGE => UpstreamError::TooLarge(detail),
            other => {
                tracing::warn!(
                    service,
                    status = other.as_u16(),
                    detail,
                    "upstream call failed"
                );
                UpstreamError::Unavailable {
                    service,
                    detail: format!("HTTP {}", other.as_u16()),
                }
            }
        })
    }
}

/// `{"field": ["msg", …]}` → "field: msg; …".
fn summarize(errors: &Value) -> String {
    let Some(map) = errors.as_object() else {
        return "invalid input".into();
    };
    map.iter()
        .map(|(field, msgs)| {
            let msgs: Vec<&str> = msgs
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_str).collect())
                .unwrap_or_default();
            format!("{field}: {}", msgs.join(", "))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn field_errors_are_summarized() {
        let errors =
            serde_json::json!({"bytes": ["Must be greater than zero"], "checksum": ["bad"]});
        assert_eq!(
            summarize(&errors),
            "bytes: Must be greater than zero; checksum: bad"
        );
    }
}
