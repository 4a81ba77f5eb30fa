//! A small OIDC issuer for development and tests: discovery, a JWKS with key rotation, and
//! RS256 tokens. `trackunit up` runs one so the embedded platform needs no identity provider
//! (its key lives in the data directory); the tests run one to exercise the real validation
//! path — discovery, JWKS fetches, rotation, an unreachable provider.
//!
//! It also answers the two grants `trackunit` uses: a development grant (the login secret from
//! the data directory buys a token, so `trackunit analyze` needs no login on one machine) and
//! the OAuth 2.0 device-code grant (RFC 8628), approved with the same secret at
//! `/device/approve` — the path a real provider's browser page takes.
//!
//! It is not a production identity provider: it signs what it is asked to sign.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use jsonwebtoken::jwk::{Jwk, JwkSet, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    #[error("generating an RSA key: {0}")]
    KeyGeneration(String),
    #[error("the signing key is not usable: {0}")]
    BadKey(String),
    #[error("signing a token: {0}")]
    Signing(String),
    #[error("serving the issuer: {0}")]
    Serve(String),
}

struct SigningKey {
    kid: String,
    encoding: EncodingKey,
    jwk: Jwk,
    private_pem: String,
    public_pem: String,
}

impl SigningKey {
    fn generate() -> Result<Self, IssuerError> {
        let key = rsa::PrivateKey::new(&mut getrandom::SysRng, 2048)
            .map_err(|e| IssuerError::KeyGeneration(e.to_string()))?;
        let pem = key
            .to_pkcs8_pem(LineEnding::LF)
            .map_err(|e| IssuerError::KeyGeneration(e.to_string()))?;
        Self::from_pem(&pem)
    }

    fn from_pem(private_pem: &str) -> Result<Self, IssuerError> {
        use rsa::pkcs8::DecodePrivateKey;
        let key = rsa::PrivateKey::from_pkcs8_pem(private_pem)
            .map_err(|e| IssuerError::BadKey(e.to_string()))?;
        let public_pem = key
            .to_public_key()
            .to_public_key_pem(LineEnding::LF)
            .map_err(|e| IssuerError::BadKey(e.to_string()))?;
        let encoding = EncodingKey::from_rsa_pem(private_pem.as_bytes())
            .map_err(|e| IssuerError::BadKey(e.to_string()))?;
        let mut jwk = Jwk::from_encoding_key(&encoding, Algorithm::RS256)
            .map_err(|e| IssuerError::BadKey(e.to_string()))?;
        // The kid is the key's thumbprint: stable across restarts for a persisted key.
        let kid = jwk
            .thumbprint(jsonwebtoken::jwk::ThumbprintHash::SHA256)
            .map_err(|e| IssuerError::BadKey(e.to_string()))?;
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        Ok(Self {
            kid,
            encoding,
            jwk,
            private_pem: private_pem.to_owned(),
            public_pem,
        })
    }
}

struct Inner {
    /// The last one signs; all are published.
    keys: Vec<SigningKey>,
    /// Device-code grants by device code.
    devices: std::collections::HashMap<String, DeviceGrant>,
}

struct DeviceGrant {
    user_code: String,
    expires: std::time::Instant,
    /// The subject once approved.
    approved: Option<String>,
}

/// What tokens of the login grants carry.
#[derive(Debug, Clone)]
pub struct Grants {
    /// The secret that authorises the development grant and device approvals.
    pub login_secret: String,
    pub audience: String,
    pub scope: String,
    pub lifetime: Duration,
}

/// The development issuer. Cheap to clone.
#[derive(Clone)]
pub struct DevIssuer {
    issuer: Arc<str>,
    inner: Arc<std::sync::RwLock<Inner>>,
    available: Arc<AtomicBool>,
    jwks_fetches: Arc<AtomicUsize>,
    grants: Option<Arc<Grants>>,
}

/// What a token says; [`DevIssuer::token`] fills the rest.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    pub subject: String,
    pub audience: String,
    pub scope: String,
    pub lifetime: Duration,
}

impl DevIssuer {
    /// A new issuer at `issuer` (its base URL) with a fresh key.
    pub fn generate(issuer: impl Into<String>) -> Result<Self, IssuerError> {
        Self::with_key(issuer, SigningKey::generate()?)
    }

    /// An issuer whose key is a PKCS#8 PEM (as [`DevIssuer::private_key_pem`] gives it).
    pub fn from_pem(issuer: impl Into<String>, private_pem: &str) -> Result<Self, IssuerError> {
        Self::with_key(issuer, SigningKey::from_pem(private_pem)?)
    }

    fn with_key(issuer: impl Into<String>, key: SigningKey) -> Result<Self, IssuerError> {
        let issuer: String = issuer.into();
        Ok(Self {
            issuer: issuer.trim_end_matches('/').into(),
            inner: Arc::new(std::sync::RwLock::new(Inner {
                keys: vec![key],
                devices: Default::default(),
            })),
            available: Arc::new(AtomicBool::new(true)),
            jwks_fetches: Arc::new(AtomicUsize::new(0)),
            grants: None,
        })
    }

    /// Also answer the development and device-code grants.
    pub fn with_grants(mut self, grants: Grants) -> Self {
        self.grants = Some(Arc::new(grants));
        self
    }

    /// A fresh issuer served on an ephemeral 127.0.0.1 port for as long as the runtime runs
    /// (tests and benches).
    pub async fn spawn_local() -> Result<Self, IssuerError> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| IssuerError::Serve(e.to_string()))?;
        let addr = listener
            .local_addr()
            .map_err(|e| IssuerError::Serve(e.to_string()))?;
        let issuer = Self::generate(format!("http://{addr}"))?;
        let router = issuer.router();
        tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(issuer)
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|p| p.into_inner())
    }

    fn current<T>(&self, f: impl FnOnce(&SigningKey) -> T) -> T {
        let inner = self.read();
        // `keys` is never empty: created with one, `retire` keeps the current one.
        f(&inner.keys[inner.keys.len() - 1])
    }

    pub fn private_key_pem(&self) -> String {
        self.current(|k| k.private_pem.clone())
    }

    pub fn public_key_pem(&self) -> String {
        self.current(|k| k.public_pem.clone())
    }

    pub fn current_kid(&self) -> String {
        self.current(|k| k.kid.clone())
    }

    /// Start signing with a new key; the old ones stay published until retired.
    pub fn rotate(&self) -> Result<String, IssuerError> {
        let key = SigningKey::generate()?;
        let kid = key.kid.clone();
        self.inner
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .keys
            .push(key);
        Ok(kid)
    }

    /// Stop publishing every key but the current one.
    pub fn retire_old_keys(&self) {
        let mut inner = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let n = inner.keys.len();
        inner.keys.drain(..n - 1);
    }

    /// Simulate an outage: discovery and JWKS answer 503 while `false`.
    pub fn set_available(&self, available: bool) {
        self.available.store(available, Ordering::SeqCst);
    }

    pub fn jwks_fetches(&self) -> usize {
        self.jwks_fetches.load(Ordering::SeqCst)
    }

    /// A token for `spec`, signed with the current key.
    pub fn token(&self, spec: &TokenSpec) -> Result<String, IssuerError> {
        let now = jsonwebtoken::get_current_timestamp();
        self.sign(&json!({
            "iss": &*self.issuer,
            "sub": spec.subject,
            "aud": spec.audience,
            "scope": spec.scope,
            "scp": spec.scope,
            "iat": now,
            "nbf": now,
            "exp": now + spec.lifetime.as_secs(),
        }))
    }

    /// Sign arbitrary claims with the current key (tests build bad tokens with it).
    pub fn sign(&self, claims: &Value) -> Result<String, IssuerError> {
        self.current(|k| {
            let mut header = Header::new(Algorithm::RS256);
            header.kid = Some(k.kid.clone());
            jsonwebtoken::encode(&header, claims, &k.encoding)
                .map_err(|e| IssuerError::Signing(e.to_string()))
        })
    }

    fn jwks(&self) -> JwkSet {
        JwkSet {
            keys: self.read().keys.iter().map(|k| k.jwk.clone()).collect(),
        }
    }

    /// `/.well-known/openid-configuration`, `/jwks`, and with grants `/token`,
    /// `/device/code`, `/device/approve`.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/.well-known/openid-configuration", get(discovery))
            .route("/jwks", get(jwks))
            .route("/token", axum::routing::post(token_endpoint))
            .route("/device/code", axum::routing::post(device_code))
            .route("/device/approve", axum::routing::post(device_approve))
            .with_state(self.clone())
    }
}

const DEV_GRANT: &str = "urn:trackunit:params:oauth:grant-type:dev";
const DEVICE_GRANT: &str = "urn:ietf:params:oauth:grant-type:device_code";

fn oauth_error(status: StatusCode, error: &str, description: &str) -> Response {
    (
        status,
        Json(json!({"error": error, "error_description": description})),
    )
        .into_response()
}

fn secret_ok(grants: &Grants, presented: &str) -> bool {
    use subtle::ConstantTimeEq;
    !grants.login_secret.is_empty()
        && bool::from(grants.login_secret.as_bytes().ct_eq(presented.as_bytes()))
}

fn random_code(len: usize) -> String {
    let mut bytes = vec![0u8; len];
    // The OS RNG does not fail on Linux; a failure leaves zeros and the grant still expires.
    let _ = getrandom::fill(&mut bytes);
    const ALPHABET: &[u8] = b"BCDFGHJKLMNPQRSTVWXZ";
    bytes
        .iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// Form fields (OAuth sends `application/x-www-form-urlencoded`).
type Form = axum::extract::Form<std::collections::HashMap<String, String>>;

async fn token_endpoint(State(issuer): State<DevIssuer>, form: Form) -> Response {
    let Some(grants) = issuer.grants.clone() else {
        return oauth_error(
            StatusCode::NOT_FOUND,
            "unsupported_grant_type",
            "no grants here",
        );
    };
    let field = |k: &str| form.0.get(k).map(String::as_str).unwrap_or("");
    let subject = match field("grant_type") {
        DEV_GRANT => {
            if !secret_ok(&grants, field("secret")) {
                return oauth_error(
                    StatusCode::UNAUTHORIZED,
                    "invalid_client",
                    "wrong login secret",
                );
            }
            let subject = field("subject").trim();
            if subject.is_empty() {
                "local-user".to_owned()
            } else {
                subject.to_owned()
            }
        }
        DEVICE_GRANT => {
            let code = field("device_code");
            let mut inner = issuer.inner.write().unwrap_or_else(|p| p.into_inner());
            let Some(grant) = inner.devices.get(code) else {
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "invalid_grant",
                    "unknown device code",
                );
            };
            if grant.expires < std::time::Instant::now() {
                inner.devices.remove(code);
                return oauth_error(
                    StatusCode::BAD_REQUEST,
                    "expired_token",
                    "the device code expired",
                );
            }
            match grant.approved.clone() {
                None => {
                    return oauth_error(
                        StatusCode::BAD_REQUEST,
                        "authorization_pending",
                        "waiting for the user to approve",
                    );
                }
                Some(subject) => {
                    inner.devices.remove(code);
                    subject
                }
            }
        }
        other => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant type `{other}` is not supported"),
            );
        }
    };
    let spec = TokenSpec {
        subject,
        audience: grants.audience.clone(),
        scope: grants.scope.clone(),
        lifetime: grants.lifetime,
    };
    match issuer.token(&spec) {
        Ok(token) => Json(json!({
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": grants.lifetime.as_secs(),
            "scope": grants.scope,
        }))
        .into_response(),
        Err(e) => oauth_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "server_error",
            &e.to_string(),
        ),
    }
}

async fn device_code(State(issuer): State<DevIssuer>) -> Response {
    if issuer.grants.is_none() {
        return oauth_error(
            StatusCode::NOT_FOUND,
            "unsupported_grant_type",
            "no grants here",
        );
    }
    let device = random_code(32);
    let user_code = format!("{}-{}", random_code(4), random_code(4));
    let expires_in = 600;
    issuer
        .inner
        .write()
        .unwrap_or_else(|p| p.into_inner())
        .devices
        .insert(
            device.clone(),
            DeviceGrant {
                user_code: user_code.clone(),
                expires: std::time::Instant::now() + Duration::from_secs(expires_in),
                approved: None,
            },
        );
    let base = &*issuer.issuer;
    Json(json!({
        "device_code": device,
        "user_code": user_code,
        "verification_uri": format!("{base}/device/approve"),
        "expires_in": expires_in,
        "interval": 1,
        "message": format!("To sign in, approve code {user_code} at {base}/device/approve"),
    }))
    .into_response()
}

/// What a user does in the browser: approve a user code (with the login secret, here).
async fn device_approve(State(issuer): State<DevIssuer>, form: Form) -> Response {
    let Some(grants) = issuer.grants.clone() else {
        return oauth_error(
            StatusCode::NOT_FOUND,
            "unsupported_grant_type",
            "no grants here",
        );
    };
    let field = |k: &str| form.0.get(k).map(String::as_str).unwrap_or("");
    if !secret_ok(&grants, field("secret")) {
        return oauth_error(
            StatusCode::UNAUTHORIZED,
            "access_denied",
            "wrong login secret",
        );
    }
    let subject = field("subject").trim();
    let subject = if subject.is_empty() {
        "local-user"
    } else {
        subject
    };
    let mut inner = issuer.inner.write().unwrap_or_else(|p| p.into_inner());
    let code = field("user_code").trim().to_ascii_uppercase();
    match inner.devices.values_mut().find(|g| g.user_code == code) {
        Some(grant) => {
            grant.approved = Some(subject.to_owned());
            Json(json!({"approved": code, "subject": subject})).into_response()
        }
        None => oauth_error(StatusCode::NOT_FOUND, "invalid_grant", "no such user code"),
    }
}

async fn discovery(State(issuer): State<DevIssuer>) -> Response {
    if !issuer.available.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let base = &*issuer.issuer;
    Json(json!({
        "issuer": base,
        "jwks_uri": format!("{base}/jwks"),
        "id_token_signing_alg_values_supported": ["RS256"],
        "response_types_supported": ["token"],
        "token_endpoint": format!("{base}/token"),
        "device_authorization_endpoint": format!("{base}/device/code"),
        "grant_types_supported": [DEV_GRANT, DEVICE_GRANT],
        "subject_types_supported": ["public"],
    }))
    .into_response()
}

async fn jwks(State(issuer): State<DevIssuer>) -> Response {
    if !issuer.available.load(Ordering::SeqCst) {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    issuer.jwks_fetches.fetch_add(1, Ordering::SeqCst);
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        Json(issuer.jwks()),
    )
        .into_response()
}
