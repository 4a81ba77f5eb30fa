//! Google credentials: an API key, or a service account whose RS256-signed JWT assertion is
//! exchanged at its `token_uri` for an access token (OAuth 2.0 JWT bearer grant), cached until
//! a minute before it expires. Concurrent callers share one exchange.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

use super::{Attempt, Retry, classify_send_error, classify_status, send_with_retry};
use crate::engine::EngineError;

/// Scope requested for Vision.
pub const VISION_SCOPE: &str = "https://www.googleapis.com/auth/cloud-vision";
const JWT_BEARER: &str = "urn%3Aietf%3Aparams%3Aoauth%3Agrant-type%3Ajwt-bearer";
/// A token is renewed this long before it expires.
const EARLY: Duration = Duration::from_secs(60);

/// The fields of a service-account key file we use.
#[derive(Clone, Deserialize)]
pub struct ServiceAccountKey {
    #[serde(rename = "type", default)]
    pub kind: String,
    pub client_email: String,
    pub private_key: String,
    #[serde(default)]
    pub private_key_id: Option<String>,
    #[serde(default)]
    pub token_uri: Option<String>,
}

impl std::fmt::Debug for ServiceAccountKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountKey")
            .field("client_email", &self.client_email)
            .field("private_key", &"***")
            .finish()
    }
}

/// The JWT assertion's claims.
#[derive(Debug, Serialize, Deserialize)]
pub struct AssertionClaims {
    pub iss: String,
    pub scope: String,
    pub aud: String,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

struct Cached {
    token: String,
    renew_at: Instant,
}

/// Access tokens for one service account.
pub struct ServiceAccount {
    email: String,
    key_id: Option<String>,
    key: jsonwebtoken::EncodingKey,
    token_uri: String,
    scope: String,
    http: reqwest::Client,
    retry: Retry,
    cached: Mutex<Option<Cached>>,
}

impl ServiceAccount {
    /// From a key file's JSON; `token_uri` overrides the file's.
    pub fn from_json(
        json: &str,
        token_uri: Option<&str>,
        scope: &str,
        http: reqwest::Client,
        retry: Retry,
    ) -> anyhow::Result<Self> {
        let key: ServiceAccountKey =
            serde_json::from_str(json).context("not a service-account key file")?;
        anyhow::ensure!(
            key.kind.is_empty() || key.kind == "service_account",
            "the credentials file is of type `{}`, not `service_account`",
            key.kind
        );
        let signing = jsonwebtoken::EncodingKey::from_rsa_pem(key.private_key.as_bytes())
            .context("the service account's private_key is not an RSA PEM key")?;
        let token_uri = token_uri
            .filter(|u| !u.trim().is_empty())
            .map(str::to_owned)
            .or(key.token_uri.clone())
            .unwrap_or_else(|| "https://oauth2.googleapis.com/token".into());
        Ok(Self {
            email: key.client_email,
            key_id: key.private_key_id,
            key: signing,
            token_uri,
            scope: scope.to_owned(),
            http,
            retry,
            cached: Mutex::new(None),
        })
    }

    /// From a key file (`GOOGLE_APPLICATION_CREDENTIALS`).
    pub fn from_file(
        path: &str,
        token_uri: Option<&str>,
        scope: &str,
        http: reqwest::Client,
        retry: Retry,
    ) -> anyhow::Result<Self> {
        let json = std::fs::read_to_string(path)
            .with_context(|| format!("reading the service-account key file {path}"))?;
        Self::from_json(&json, token_uri, scope, http, retry)
            .with_context(|| format!("service-account key file {path}"))
    }

    pub fn email(&self) -> &str {
        &self.email
    }

    /// A valid access token: the cached one, or a fresh exchange.
    pub async fn token(&self) -> Result<String, EngineError> {
        let mut cached = self.cached.lock().await;
        if let Some(c) = cached.as_ref()
            && Instant::now() < c.renew_at
        {
            return Ok(c.token.clone());
        }
        let (token, lifetime) = self.exchange().await?;
        *cached = Some(Cached {
            token: token.clone(),
            renew_at: Instant::now() + lifetime.saturating_sub(EARLY),
        });
        Ok(token)
    }

    /// Forget the cached token (after the API refused it).
    pub async fn invalidate(&self) {
        *self.cached.lock().await = None;
    }

    fn assertion(&self) -> Result<String, EngineError> {
        let now = chrono::Utc::now().timestamp();
        let claims = AssertionClaims {
            iss: self.email.clone(),
            scope: self.scope.clone(),
            aud: self.token_uri.clone(),
            iat: now,
            exp: now + 3600,
        };
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256);
        header.kid = self.key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.key)
            .map_err(|e| EngineError::new(format!("signing the service-account assertion: {e}")))
    }

    async fn exchange(&self) -> Result<(String, Duration), EngineError> {
        let assertion = self.assertion()?;
        let body = format!("grant_type={JWT_BEARER}&assertion={assertion}");
        send_with_retry(&self.retry, "Google OAuth token endpoint", |_| {
            let request = self
                .http
                .post(&self.token_uri)
                .header(
                    reqwest::header::CONTENT_TYPE,
                    "application/x-www-form-urlencoded",
                )
                .body(body.clone());
            async move {
                let response = match request.send().await {
                    Ok(r) => r,
                    Err(e) => return classify_send_error(e),
                };
                let status = response.status();
                let headers = response.headers().clone();
                let text = response.text().await.unwrap_or_default();
                if !status.is_success() {
                    return match classify_status::<(String, Duration)>(
                        "Google OAuth token endpoint",
                        status,
                        &headers,
                        &text,
                    ) {
                        // A refused assertion is a credentials problem, never the image's.
                        Attempt::Fail(e) => Attempt::Fail(EngineError::new(format!(
                            "service account {}: {}",
                            self.email, e.message
                        ))),
                        other => other,
                    };
                }
                match serde_json::from_str::<TokenResponse>(&text) {
                    Ok(t) => Attempt::Done((
                        t.access_token,
                        Duration::from_secs(t.expires_in.unwrap_or(3600)),
                    )),
                    Err(e) => Attempt::Fail(EngineError::new(format!(
                        "Google OAuth token endpoint answered without an access token: {e}"
                    ))),
                }
            }
        })
        .await
    }
}
