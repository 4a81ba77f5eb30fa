//! Bearer-token validation against an OIDC provider (Entra ID, Keycloak, or the development
//! issuer of `trackunit up`).
//!
//! Keys come from the provider's discovery document and JWKS. The JWKS is cached until it is
//! older than its max age; a token with an unknown `kid` triggers a refetch at most once per
//! cooldown (a provider that rotated keys is picked up, a flood of forged kids is not passed on);
//! concurrent refetches are merged into one; while the provider is down, the last keys stay in
//! use for a bounded time. Every key is pinned to its algorithm: a token whose `alg` differs from
//! its key's is refused, which closes `alg: none` and HMAC-with-the-public-key forgeries.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::sync::{Mutex, RwLock};

/// What the validator checks.
#[derive(Debug, Clone)]
pub struct OidcSettings {
    pub issuer: String,
    pub audiences: Vec<String>,
    /// Needed in `scp` (Entra) or `scope` (Keycloak); empty: no scope check.
    pub required_scope: String,
    pub jwks_max_age: Duration,
    pub refetch_cooldown: Duration,
    pub max_stale: Duration,
    pub clock_skew: Duration,
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// `sub`: whose uploads, analyses and events these are.
    pub subject: String,
    pub scopes: Vec<String>,
    /// Seconds since the epoch; subscriptions end when the token does.
    pub expires_at: u64,
}

/// Why a token was refused. [`AuthError::code`] is the GraphQL error code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token; send `Authorization: Bearer <token>`")]
    Missing,
    #[error("the token is not a well-formed JWT: {0}")]
    Malformed(String),
    #[error("token algorithm {0} is not accepted")]
    AlgorithmNotAllowed(String),
    #[error("the token was signed with a key the identity provider does not publish")]
    UnknownKey,
    #[error("the token's algorithm does not match its key")]
    AlgorithmMismatch,
    #[error("the token's signature is invalid")]
    BadSignature,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token was issued by another issuer")]
    WrongIssuer,
    #[error("the token is not meant for this API (audience)")]
    WrongAudience,
    #[error("the token lacks the required claim `{0}`")]
    MissingClaim(String),
    #[error("the token lacks the scope `{0}`")]
    MissingScope(String),
    #[error("the identity provider cannot be reached to check the token; try again")]
    ProviderUnavailable,
}

impl AuthError {
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::MissingScope(_) => "FORBIDDEN",
            _ => "UNAUTHENTICATED",
        }
    }

    /// A short label for metrics and logs.
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing",
            AuthError::Malformed(_) => "malformed",
            AuthError::AlgorithmNotAllowed(_) => "algorithm_not_allowed",
            AuthError::UnknownKey => "unknown_key",
            AuthError::AlgorithmMismatch => "algorithm_mismatch",
            AuthError::BadSignature => "bad_signature",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::MissingClaim(_) => "missing_claim",
            AuthError::MissingScope(_) => "missing_scope",
            AuthError::ProviderUnavailable => "provider_unavailable",
        }
    }
}

/// Asymmetric algorithms only: a JWKS publishes public keys, and an HMAC "key" made of one is
/// the classic forgery.
const ACCEPTED: [Algorithm; 8] = [
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::ES256,
    Algorithm::ES384,
];

struct PinnedKey {
    alg: Algorithm,
    key: DecodingKey,
}

#[derive(Default)]
struct Keys {
    by_kid: HashMap<String, Arc<PinnedKey>>,
    fetched_at: Option<Instant>,
    max_age: Duration,
    /// Bumped on every fetch attempt, so waiters on the fetch lock know one happened.
    generation: u64,
    last_attempt: Option<Instant>,
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawClaims {
    sub: Option<String>,
    exp: Option<u64>,
    #[serde(default)]
    scp: Option<ScopeClaim>,
    #[serde(default)]
    scope: Option<ScopeClaim>,
}

/// `scp`/`scope` come as a space-separated string or (some providers) an array.
#[derive(Deserialize)]
#[serde(untagged)]
enum ScopeClaim {
    Text(String),
    List(Vec<String>),
}

impl ScopeClaim {
    fn items(&self) -> Vec<String> {
        match self {
            ScopeClaim::Text(s) => s.split_whitespace().map(str::to_owned).collect(),
            ScopeClaim::List(l) => l.clone(),
        }
    }
}

pub struct Validator {
    settings: OidcSettings,
    http: reqwest::Client,
    keys: RwLock<Keys>,
    fetch: Mutex<()>,
    jwks_uri: RwLock<Option<String>>,
}

impl Validator {
    pub fn new(settings: OidcSettings) -> Self {
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        Self {
            settings,
            http,
            keys: RwLock::new(Keys::default()),
            fetch: Mutex::new(()),
            jwks_uri: RwLock::new(None),
        }
    }

    pub fn settings(&self) -> &OidcSettings {
        &self.settings
    }

    /// Fetch the keys now (at startup, so the first request does not wait). Errors are
    /// reported, not fatal: the provider may come up later.
    pub async fn warm_up(&self) -> Result<(), String> {
        let generation = self.keys.read().await.generation;
        self.refresh(generation).await
    }

    /// Whether keys are loaded and not past their stale limit (for `/health/ready` reports).
    pub async fn has_keys(&self) -> bool {
        let keys = self.keys.read().await;
        !keys.by_kid.is_empty()
            && keys
                .fetched_at
                .is_some_and(|at| at.elapsed() <= keys.max_age + self.settings.max_stale)
    }

    /// Validate `Authorization` header contents (`Bearer …`) or a bare token.
    pub async fn validate_header(&self, value: Option<&str>) -> Result<Caller, AuthError> {
        let token = value
            .map(str::trim)
            .map(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
                    .unwrap_or(v)
                    .trim()
            })
            .filter(|t| !t.is_empty())
            .ok_or(AuthError::Missing)?;
        self.validate(token).await
    }

    pub async fn validate(&self, token: &str) -> Result<Caller, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|e| {
            // `alg: none` (and other names jsonwebtoken does not know) fail to parse: say why.
            match raw_alg(token) {
                Some(alg) => AuthError::AlgorithmNotAllowed(alg),
                None => AuthError::Malformed(e.to_string()),
            }
        })?;
        if !ACCEPTED.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed(format!("{:?}", header.alg)));
        }
        let key = self.key_for(header.kid.as_deref()).await?;
        if key.alg != header.alg {
            return Err(AuthError::AlgorithmMismatch);
        }
        let mut validation = Validation::new(key.alg);
        validation.leeway = self.settings.clock_skew.as_secs();
        validation.validate_nbf = true;
        validation.set_issuer(&[&self.settings.issuer]);
        validation.set_audience(&self.settings.audiences);
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        let data =
            jsonwebtoken::decode::<RawClaims>(token, &key.key, &validation).map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => AuthError::BadSignature,
                    K::ExpiredSignature => AuthError::Expired,
                    K::ImmatureSignature => AuthError::NotYetValid,
                    K::InvalidIssuer => AuthError::WrongIssuer,
                    K::InvalidAudience => AuthError::WrongAudience,
                    K::MissingRequiredClaim(c) => AuthError::MissingClaim(c.clone()),
                    K::InvalidAlgorithm => AuthError::AlgorithmMismatch,
                    _ => AuthError::Malformed(e.to_string()),
                }
            })?;
        let claims = data.claims;
        let subject = claims
            .sub
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| AuthError::MissingClaim("sub".into()))?;
        let mut scopes = Vec::new();
        for claim in [&claims.scp, &claims.scope].into_iter().flatten() {
            scopes.extend(claim.items());
        }
        let required = &self.settings.required_scope;
        if !required.is_empty() && !scopes.iter().any(|s| s.eq_ignore_ascii_case(required)) {
            return Err(AuthError::MissingScope(required.clone()));
        }
        Ok(Caller {
            subject,
            scopes,
            expires_at: claims.exp.unwrap_or_default(),
        })
    }

    async fn key_for(&self, kid: Option<&str>) -> Result<Arc<PinnedKey>, AuthError> {
        let (found, fresh, generation, cooled_down) = {
            let keys = self.keys.read().await;
            let found = match kid {
                Some(kid) => keys.by_kid.get(kid).cloned(),
                // No kid: only unambiguous with a single published key.
                None if keys.by_kid.len() == 1 => keys.by_kid.values().next().cloned(),
                None => None,
            };
            let fresh = keys
                .fetched_at
                .is_some_and(|at| at.elapsed() < keys.max_age);
            let cooled_down = keys
                .last_attempt
                .is_none_or(|at| at.elapsed() >= self.settings.refetch_cooldown);
            (found, fresh, keys.generation, cooled_down)
        };
        match found {
            Some(key) if fresh => return Ok(key),
            // Expired cache: refresh; if the provider is down, stale keys serve for a while.
            Some(key) => {
                if self.refresh(generation).await.is_ok() {
                    if let Some(k) = self.lookup(kid).await {
                        return Ok(k);
                    }
                    return Err(AuthError::UnknownKey);
                }
                let keys = self.keys.read().await;
                let within_stale = keys
                    .fetched_at
                    .is_some_and(|at| at.elapsed() <= keys.max_age + self.settings.max_stale);
                return if within_stale {
                    Ok(key)
                } else {
                    Err(AuthError::ProviderUnavailable)
                };
            }
            None => {}
        }
        let empty = self.keys.read().await.by_kid.is_empty();
        if !cooled_down && !empty {
            return Err(AuthError::UnknownKey);
        }
        match self.refresh(generation).await {
            Ok(()) => self.lookup(kid).await.ok_or(AuthError::UnknownKey),
            Err(_) if empty => Err(AuthError::ProviderUnavailable),
            Err(_) => Err(AuthError::UnknownKey),
        }
    }

    async fn lookup(&self, kid: Option<&str>) -> Option<Arc<PinnedKey>> {
        let keys = self.keys.read().await;
        match kid {
            Some(kid) => keys.by_kid.get(kid).cloned(),
            None if keys.by_kid.len() == 1 => keys.by_kid.values().next().cloned(),
            None => None,
        }
    }

    /// Fetch discovery + JWKS, unless another caller did since `seen_generation` (merged fetch).
    async fn refresh(&self, seen_generation: u64) -> Result<(), String> {
        let _one_at_a_time = self.fetch.lock().await;
        {
            let keys = self.keys.read().await;
            if keys.generation != seen_generation {
                return if keys
                    .fetched_at
                    .is_some_and(|at| at.elapsed() < keys.max_age)
                {
                    Ok(())
                } else {
                    Err("the concurrent fetch failed".into())
                };
            }
        }
        let result = self.fetch_keys().await;
        let mut keys = self.keys.write().await;
        keys.generation += 1;
        keys.last_attempt = Some(Instant::now());
        match result {
            Ok((by_kid, max_age)) => {
                tracing::info!(keys = by_kid.len(), issuer = %self.settings.issuer, "fetched the identity provider's keys");
                keys.by_kid = by_kid;
                keys.fetched_at = Some(Instant::now());
                keys.max_age = max_age;
                Ok(())
            }
            Err(e) => {
                metrics::counter!("gateway_jwks_fetch_failures_total").increment(1);
                tracing::warn!(error = %e, issuer = %self.settings.issuer, "cannot fetch the identity provider's keys");
                Err(e)
            }
        }
    }

    async fn fetch_keys(&self) -> Result<(HashMap<String, Arc<PinnedKey>>, Duration), String> {
        let jwks_uri = self.jwks_uri().await?;
        metrics::counter!("gateway_jwks_fetches_total").increment(1);
        let response = self
            .http
            .get(&jwks_uri)
            .send()
            .await
            .map_err(|e| format!("GET {jwks_uri}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {jwks_uri}: HTTP {}", response.status()));
        }
        let max_age = response
            .headers()
            .get(reqwest::header::CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(cache_max_age)
            .map_or(self.settings.jwks_max_age, |d| {
                d.min(self.settings.jwks_max_age)
            });
        let set: JwkSet = response
            .json()
            .await
            .map_err(|e| format!("JWKS at {jwks_uri} is not valid: {e}"))?;
        let mut by_kid = HashMap::new();
        for jwk in &set.keys {
            let Some(kid) = jwk.common.key_id.clone() else {
                continue;
            };
            match pin(jwk) {
                Some(key) => {
                    by_kid.insert(kid, Arc::new(key));
                }
                None => tracing::debug!(kid, "skipping a JWK that cannot verify signatures here"),
            }
        }
        Ok((by_kid, max_age))
    }

    async fn jwks_uri(&self) -> Result<String, String> {
        if let Some(uri) = self.jwks_uri.read().await.clone() {
            return Ok(uri);
        }
        let issuer = self.settings.issuer.trim_end_matches('/');
        let url = format!("{issuer}/.well-known/openid-configuration");
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| format!("GET {url}: {e}"))?;
        if !response.status().is_success() {
            return Err(format!("GET {url}: HTTP {}", response.status()));
        }
        let discovery: Discovery = response
            .json()
            .await
            .map_err(|e| format!("discovery document at {url} is not valid: {e}"))?;
        // OIDC Discovery §4.3: the document must name the issuer it was fetched for.
        if discovery.issuer.trim_end_matches('/') != issuer {
            return Err(format!(
                "discovery at {url} names issuer {} instead of {}",
                discovery.issuer, self.settings.issuer
            ));
        }
        *self.jwks_uri.write().await = Some(discovery.jwks_uri.clone());
        Ok(discovery.jwks_uri)
    }
}

/// The algorithm a JWK is for: its `alg`, else the usual one for its key type. Symmetric and
/// encryption-only keys are skipped.
fn pin(jwk: &Jwk) -> Option<PinnedKey> {
    if matches!(
        jwk.common.public_key_use,
        Some(jsonwebtoken::jwk::PublicKeyUse::Encryption)
    ) {
        return None;
    }
    let alg = match (&jwk.common.key_algorithm, &jwk.algorithm) {
        (Some(alg), AlgorithmParameters::RSA(_) | AlgorithmParameters::EllipticCurve(_)) => {
            key_alg(*alg)?
        }
        (None, AlgorithmParameters::RSA(_)) => Algorithm::RS256,
        (None, AlgorithmParameters::EllipticCurve(ec)) => match ec.curve {
            jsonwebtoken::jwk::EllipticCurve::P256 => Algorithm::ES256,
            jsonwebtoken::jwk::EllipticCurve::P384 => Algorithm::ES384,
            _ => return None,
        },
        _ => return None,
    };
    if !ACCEPTED.contains(&alg) {
        return None;
    }
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(PinnedKey { alg, key })
}

fn key_alg(alg: KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        _ => return None,
    })
}

/// The `alg` of a token's header, read without trusting anything else in it.
fn raw_alg(token: &str) -> Option<String> {
    use base64::Engine as _;
    let header = token.split('.').next()?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    v.get("alg")?.as_str().map(str::to_owned)
}

fn cache_max_age(value: &str) -> Option<Duration> {
    value.split(',').find_map(|part| {
        let part = part.trim();
        let secs = part.strip_prefix("max-age=")?;
        secs.trim().parse::<u64>().ok().map(Duration::from_secs)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn max_age_is_read_from_cache_control() {
        assert_eq!(
            cache_max_age("public, max-age=300"),
            Some(Duration::from_secs(300))
        );
        assert_eq!(cache_max_age("no-store"), None);
        assert_eq!(cache_max_age("max-age=abc"), None);
    }

    #[test]
    fn codes_follow_the_reason() {
        assert_eq!(
            AuthError::MissingScope("analysis".into()).code(),
            "FORBIDDEN"
        );
        assert_eq!(AuthError::Expired.code(), "UNAUTHENTICATED");
        assert_eq!(AuthError::BadSignature.reason(), "bad_signature");
    }
}
