//! Getting a token for the gateway, the way the original console client did with MSAL:
//!
//! 1. `--token` / `TRACKUNIT_TOKEN`: used as given.
//! 2. A cached token for the same gateway that is still valid for a minute.
//! 3. On one machine (`trackunit up`): the development issuer's grant, with the login secret
//!    from the data directory — no prompt.
//! 4. Otherwise the OAuth 2.0 device-code flow (RFC 8628) of the configured authority (Entra ID,
//!    Keycloak): the user approves a code in a browser, the token is cached.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Args;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Args)]
pub struct SessionArgs {
    /// The gateway's GraphQL endpoint.
    #[arg(
        long,
        env = "TRACKUNIT_GATEWAY",
        default_value = "http://127.0.0.1:8080/graphql"
    )]
    pub gateway: String,
    /// A bearer token to use as is.
    #[arg(long, env = "TRACKUNIT_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// OIDC authority for the device-code login (e.g.
    /// `https://login.microsoftonline.com/<tenant>/v2.0`, `https://kc.example/realms/trackunit`).
    /// Default: the development issuer of `trackunit up`.
    #[arg(long, env = "TRACKUNIT_AUTHORITY")]
    pub authority: Option<String>,
    /// The public client registered for the device-code flow.
    #[arg(long, env = "TRACKUNIT_CLIENT_ID", default_value = "trackunit-cli")]
    pub client_id: String,
    /// Scopes to ask for (Entra: `api://<api-client-id>/analysis offline_access`).
    #[arg(long, env = "TRACKUNIT_SCOPE", default_value = "openid analysis")]
    pub scope: String,
    /// `trackunit up`'s data directory (where the development login secret is).
    #[arg(long, env = "TRACKUNIT_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Cached {
    gateway: String,
    access_token: String,
    /// Seconds since the epoch.
    expires_at: u64,
}

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

fn cache_path() -> PathBuf {
    std::env::var_os("TRACKUNIT_TOKEN_CACHE")
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
                .map(|d| d.join("trackunit").join("token.json"))
        })
        .unwrap_or_else(|| PathBuf::from(".trackunit-token.json"))
}

fn read_cache(gateway: &str) -> Option<String> {
    let text = std::fs::read_to_string(cache_path()).ok()?;
    let cached: Cached = serde_json::from_str(&text).ok()?;
    (cached.gateway == gateway && cached.expires_at > now() + 60).then_some(cached.access_token)
}

fn write_cache(gateway: &str, token: &TokenAnswer) -> anyhow::Result<()> {
    let path = cache_path();
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let cached = Cached {
        gateway: gateway.to_owned(),
        access_token: token.access_token.clone(),
        expires_at: now() + token.expires_in.unwrap_or(3600),
    };
    let tmp = path.with_extension("tmp");
    {
        use std::io::Write;
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        options
            .open(&tmp)
            .and_then(|mut f| f.write_all(&serde_json::to_vec(&cached)?))
            .with_context(|| format!("writing {}", tmp.display()))?;
    }
    std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// Forget the cached token.
pub fn logout() -> anyhow::Result<bool> {
    match std::fs::remove_file(cache_path()) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e).context("removing the cached token"),
    }
}

#[derive(Debug, Deserialize)]
struct TokenAnswer {
    access_token: String,
    expires_in: Option<u64>,
}

#[derive(Debug, Deserialize)]
struct OAuthError {
    error: String,
    error_description: Option<String>,
}

#[derive(Debug, Deserialize)]
struct Discovery {
    token_endpoint: Option<String>,
    device_authorization_endpoint: Option<String>,
}

#[derive(Debug, Deserialize)]
struct DeviceAnswer {
    device_code: String,
    user_code: String,
    verification_uri: Option<String>,
    /// Entra ID's older name.
    verification_url: Option<String>,
    expires_in: u64,
    interval: Option<u64>,
    message: Option<String>,
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("trackunit")
}

fn dev_authority() -> String {
    format!(
        "http://{}",
        std::env::var("TRACKUNIT_OIDC_ADDR").unwrap_or_else(|_| crate::up::DEV_ISSUER_ADDR.into())
    )
}

/// A token for `args.gateway`, by the first way that works (see the module docs).
pub async fn token(args: &SessionArgs, interactive: bool) -> anyhow::Result<String> {
    if let Some(t) = args.token.as_ref().filter(|t| !t.trim().is_empty()) {
        return Ok(t.trim().to_owned());
    }
    if let Some(t) = read_cache(&args.gateway) {
        return Ok(t);
    }
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let authority = args
        .authority
        .clone()
        .unwrap_or_else(dev_authority)
        .trim_end_matches('/')
        .to_owned();
    let discovery: Discovery = http
        .get(format!("{authority}/.well-known/openid-configuration"))
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| {
            format!("cannot reach the identity provider at {authority} (is `trackunit up` running, or set --authority)")
        })?
        .json()
        .await
        .context("the identity provider's discovery document")?;
    let token_endpoint = discovery
        .token_endpoint
        .clone()
        .context("the identity provider names no token endpoint")?;
    // One machine: the development grant with the secret `trackunit up` keeps.
    if args.authority.is_none() {
        let dir = args.data_dir.clone().unwrap_or_else(default_data_dir);
        if let Ok(secret) = std::fs::read_to_string(dir.join(crate::up::LOGIN_SECRET_FILE)) {
            let answer = grant(
                &http,
                &token_endpoint,
                &[
                    ("grant_type", "urn:trackunit:params:oauth:grant-type:dev"),
                    ("secret", secret.trim()),
                    ("client_id", &args.client_id),
                ],
            )
            .await?
            .map_err(|e| anyhow::anyhow!("development login refused: {}", describe(&e)))?;
            write_cache(&args.gateway, &answer)?;
            return Ok(answer.access_token);
        }
    }
    if !interactive {
        bail!("not logged in: run `trackunit login` (or pass --token)");
    }
    let answer = device_flow(&http, args, &discovery, &token_endpoint).await?;
    write_cache(&args.gateway, &answer)?;
    Ok(answer.access_token)
}

fn describe(e: &OAuthError) -> String {
    match &e.error_description {
        Some(d) => format!("{} ({d})", e.error),
        None => e.error.clone(),
    }
}

async fn grant(
    http: &reqwest::Client,
    endpoint: &str,
    form: &[(&str, &str)],
) -> anyhow::Result<Result<TokenAnswer, OAuthError>> {
    let response = http
        .post(endpoint)
        .form(form)
        .send()
        .await
        .with_context(|| format!("POST {endpoint}"))?;
    let ok = response.status().is_success();
    let body = response.text().await.unwrap_or_default();
    if ok {
        return Ok(Ok(serde_json::from_str(&body)
            .with_context(|| format!("unexpected token answer: {body}"))?));
    }
    Ok(Err(serde_json::from_str(&body).unwrap_or(OAuthError {
        error: "invalid_response".into(),
        error_description: Some(body),
    })))
}

async fn device_flow(
    http: &reqwest::Client,
    args: &SessionArgs,
    discovery: &Discovery,
    token_endpoint: &str,
) -> anyhow::Result<TokenAnswer> {
    let endpoint = discovery
        .device_authorization_endpoint
        .as_deref()
        .context("the identity provider offers no device-code login")?;
    let device: DeviceAnswer = http
        .post(endpoint)
        .form(&[
            ("client_id", args.client_id.as_str()),
            ("scope", args.scope.as_str()),
        ])
        .send()
        .await
        .and_then(|r| r.error_for_status())
        .with_context(|| format!("POST {endpoint}"))?
        .json()
        .await
        .context("the device-code answer")?;
    let uri = device
        .verification_uri
        .or(device.verification_url)
        .unwrap_or_default();
    eprintln!(
        "{}",
        device.message.unwrap_or_else(|| format!(
            "To sign in, open {uri} and enter the code {}",
            device.user_code
        ))
    );
    let mut interval = Duration::from_secs(device.interval.unwrap_or(5).max(1));
    let deadline = std::time::Instant::now() + Duration::from_secs(device.expires_in);
    loop {
        tokio::time::sleep(interval).await;
        if std::time::Instant::now() > deadline {
            bail!("the sign-in code expired; run `trackunit login` again");
        }
        let answer = grant(
            http,
            token_endpoint,
            &[
                ("grant_type", "urn:ietf:params:oauth:grant-type:device_code"),
                ("device_code", &device.device_code),
                ("client_id", &args.client_id),
            ],
        )
        .await?;
        match answer {
            Ok(token) => return Ok(token),
            Err(e) if e.error == "authorization_pending" => {}
            Err(e) if e.error == "slow_down" => interval += Duration::from_secs(5),
            Err(e) => bail!("sign-in failed: {}", describe(&e)),
        }
    }
}

/// `trackunit login`: sign in now and cache the token.
pub async fn login(args: &SessionArgs) -> anyhow::Result<()> {
    let _ = logout();
    token(args, true).await?;
    eprintln!(
        "signed in; the token is cached in {}",
        cache_path().display()
    );
    Ok(())
}
