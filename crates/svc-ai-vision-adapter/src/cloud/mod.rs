//! Cloud engines over REST: Google Cloud Vision ([`google`]) as a recogniser and Gemini
//! ([`gemini`]) as an enricher, with one retry policy ([`Retry`]): 408/429/5xx, timeouts and
//! connection errors are retried with exponential backoff and full jitter, honouring
//! `Retry-After`; anything else fails at once.

pub mod auth;
pub mod gemini;
pub mod google;
pub mod shaping;

use std::time::Duration;

use contracts::FailureReason;
use rand::Rng;

use crate::Settings;
use crate::engine::EngineError;

/// How cloud calls are retried.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Attempts per call, the first included.
    pub attempts: u32,
    /// Backoff before the second attempt; doubles each time, with full jitter.
    pub base: Duration,
    /// No single wait is longer (a longer `Retry-After` gives up instead).
    pub max_wait: Duration,
}

impl Retry {
    pub fn from_settings(s: &Settings) -> Self {
        Self {
            attempts: s.cloud_attempts.max(1),
            base: Duration::from_millis(s.cloud_backoff_ms),
            max_wait: Duration::from_secs(10),
        }
    }

    /// The wait before attempt `attempt + 1` (1-based `attempt`): `Retry-After` when the server
    /// gave one, else a random duration up to `base · 2^(attempt-1)`.
    pub fn wait(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.max_wait);
        }
        let ceiling = self
            .base
            .saturating_mul(1u32 << (attempt.saturating_sub(1)).min(16))
            .min(self.max_wait);
        let ms = ceiling.as_millis() as u64;
        if ms == 0 {
            return Duration::ZERO;
        }
        Duration::from_millis(rand::rng().random_range(ms / 2..=ms))
    }
}

/// An HTTP client for cloud calls (per-attempt timeout).
pub fn http_client(s: &Settings) -> anyhow::Result<reqwest::Client> {
    use anyhow::Context;
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(s.cloud_timeout_secs.max(1)))
        .user_agent(concat!("svc-ai-vision-adapter/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cloud HTTP client")
}

/// One attempt's outcome, for [`send_with_retry`].
pub(crate) enum Attempt<T> {
    Done(T),
    /// Worth another try after the wait (`Retry-After` if the server gave one).
    Retry(String, Option<Duration>),
    Fail(EngineError),
}

/// Run `attempt` under `retry`. `what` names the call in errors ("Google Vision").
pub(crate) async fn send_with_retry<T, F, Fut>(
    retry: &Retry,
    what: &str,
    mut attempt: F,
) -> Result<T, EngineError>
where
    F: FnMut(u32) -> Fut,
    Fut: std::future::Future<Output = Attempt<T>>,
{
    let mut last = String::new();
    for n in 1..=retry.attempts {
        match attempt(n).await {
            Attempt::Done(v) => return Ok(v),
            Attempt::Fail(e) => return Err(e),
            Attempt::Retry(why, after) => {
                metrics::counter!("vision_cloud_retries_total", "service" => what.to_owned())
                    .increment(1);
                tracing::debug!(service = what, attempt = n, reason = %why, "retrying");
                if let Some(after) = after
                    && after > retry.max_wait
                {
                    return Err(EngineError::transient(format!(
                        "{what}: {why}; asked to retry after {}s, longer than we wait",
                        after.as_secs()
                    )));
                }
                last = why;
                if n < retry.attempts {
                    tokio::time::sleep(retry.wait(n, after)).await;
                }
            }
        }
    }
    Err(EngineError::transient(format!(
        "{what} unavailable after {} attempts: {last}",
        retry.attempts
    )))
}

/// Classify an HTTP answer that is not a success: retry 408/429/5xx, else fail. A 400/413
/// about the image is the caller's fault (`not_an_image` / `too_large`); anything else
/// (401/403 credentials, 404 wrong endpoint or model) is ours (`engine_error`).
pub(crate) fn classify_status<T>(
    what: &str,
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    body: &str,
) -> Attempt<T> {
    let detail = error_message(body);
    let why = format!("HTTP {}{}", status.as_u16(), detail_suffix(&detail));
    if status.as_u16() == 408 || status.as_u16() == 429 || status.is_server_error() {
        return Attempt::Retry(why, retry_after(headers));
    }
    let lower = detail.to_ascii_lowercase();
    let reason = if status.as_u16() == 413 || lower.contains("payload size exceeds") {
        FailureReason::TooLarge
    } else if status.as_u16() == 400 && lower.contains("image") {
        FailureReason::NotAnImage
    } else {
        FailureReason::EngineError
    };
    Attempt::Fail(EngineError::rejected(reason, format!("{what}: {why}")))
}

/// A request that did not get an answer: timeouts and connection errors are retried.
pub(crate) fn classify_send_error<T>(e: reqwest::Error) -> Attempt<T> {
    let e = e.without_url();
    if e.is_timeout() || e.is_connect() || e.is_request() || e.is_body() {
        Attempt::Retry(e.to_string(), None)
    } else {
        Attempt::Fail(EngineError::new(e.to_string()))
    }
}

fn detail_suffix(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// `{"error":{"message":...}}` (Google's error body) or the start of the body.
pub(crate) fn error_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| {
            v.pointer("/error/message")
                .and_then(|m| m.as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// `Retry-After` in seconds (the HTTP-date form is not used by Google APIs).
fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_with_jitter_and_honours_retry_after() {
        let r = Retry {
            attempts: 4,
            base: Duration::from_millis(100),
            max_wait: Duration::from_secs(1),
        };
        for _ in 0..50 {
            let w1 = r.wait(1, None);
            assert!(w1 >= Duration::from_millis(50) && w1 <= Duration::from_millis(100));
            let w3 = r.wait(3, None);
            assert!(w3 >= Duration::from_millis(200) && w3 <= Duration::from_millis(400));
            assert!(r.wait(20, None) <= Duration::from_secs(1));
        }
        assert_eq!(
            r.wait(1, Some(Duration::from_millis(700))),
            Duration::from_millis(700)
        );
    }
}
