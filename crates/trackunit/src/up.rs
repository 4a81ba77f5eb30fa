//! `trackunit up`: the six services in one process, sharing one in-process broker journaled under
//! the data directory. Each service reads its config from env vars, and `<SERVICE>_<VAR>`
//! (e.g. `TU_INGESTION_SERVICE_HTTP_ADDR`) overrides a variable for that service only.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::{Args, ValueEnum};
use contracts::names::services;
use messaging::memory::{InProcessBroker, InProcessOptions};
use objectstore::S3Config;
use objectstore::embedded::{EmbeddedS3, EmbeddedS3Options};
use runtime::Shutdown;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

/// The seeds' service names, as `--only` accepts them.
#[allow(clippy::enum_variant_names)] // `tu-ingestion-service` is the name, suffix included
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
#[value(rename_all = "kebab-case")]
pub enum Service {
    GraphGateway,
    TuIngestionService,
    TuMediaAccessService,
    SvcMessagingBridge,
    SvcAnalysisOrchestrator,
    SvcAiVisionAdapter,
}

impl Service {
    const ALL: [Service; 6] = [
        Service::TuMediaAccessService,
        Service::TuIngestionService,
        Service::SvcMessagingBridge,
        Service::SvcAnalysisOrchestrator,
        Service::SvcAiVisionAdapter,
        Service::GraphGateway,
    ];

    fn name(self) -> &'static str {
        match self {
            Service::GraphGateway => services::GRAPH_GATEWAY,
            Service::TuIngestionService => services::INGESTION,
            Service::TuMediaAccessService => services::MEDIA_ACCESS,
            Service::SvcMessagingBridge => services::MESSAGING_BRIDGE,
            Service::SvcAnalysisOrchestrator => services::ORCHESTRATOR,
            Service::SvcAiVisionAdapter => services::VISION_ADAPTER,
        }
    }

    /// Env prefix for per-service overrides: `tu-ingestion-service` → `TU_INGESTION_SERVICE`.
    fn env_prefix(self) -> String {
        self.name().to_uppercase().replace('-', "_")
    }
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Where the platform keeps its data (broker journal, databases, objects).
    #[arg(long, env = "TRACKUNIT_DATA_DIR")]
    data_dir: Option<PathBuf>,
    /// Run only this service (what a container runs).
    #[arg(long, value_enum)]
    only: Option<Service>,
}

fn default_data_dir() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."))
        .join("trackunit")
}

pub async fn run(args: UpArgs) -> anyhow::Result<()> {
    let service_name = args.only.map_or(services::CLIENT, Service::name);
    runtime::telemetry::init(&runtime::telemetry::TelemetryOptions::from_env(
        service_name,
    ));
    let data_dir = args.data_dir.unwrap_or_else(default_data_dir);
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("creating {}", data_dir.display()))?;
    let shutdown = Shutdown::on_signals();
    let selected: Vec<Service> = match args.only {
        Some(s) => vec![s],
        None => Service::ALL.to_vec(),
    };
    let embedded = Embedded::start(&data_dir, &selected, &shutdown).await?;

    let mut tasks = JoinSet::new();
    let mut banner = Vec::new();
    if let Some(s3) = &embedded.s3 {
        banner.push(("embedded S3 store", s3.addr().to_string()));
    }
    if let Some(issuer) = &embedded.oidc_issuer {
        banner.push((
            "development OIDC issuer",
            issuer.trim_start_matches("http://").to_owned(),
        ));
    }
    for service in selected {
        let prefix = service.env_prefix();
        let (addr, task) = start(service, &prefix, &embedded, shutdown.clone())
            .await
            .with_context(|| format!("starting {}", service.name()))?;
        banner.push((service.name(), addr));
        tasks.spawn(async move { (service, task.await) });
    }
    print_banner(&data_dir, &banner);

    let mut failed = false;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok((_, Ok(()))) => {}
            Ok((service, Err(e))) => {
                tracing::error!(service = service.name(), error = %format!("{e:#}"), "service failed; stopping the platform");
                failed = true;
                shutdown.trigger();
            }
            Err(e) => {
                tracing::error!(error = %e, "service task panicked; stopping the platform");
                failed = true;
                shutdown.trigger();
            }
        }
    }
    shutdown.trigger();
    if let Some(s3) = embedded.s3
        && let Err(e) = s3.stopped().await
    {
        tracing::warn!(error = %e, "embedded S3 store stopped with an error");
    }
    runtime::telemetry::shutdown();
    if failed {
        anyhow::bail!("the platform stopped because a service failed");
    }
    Ok(())
}

/// The embedded parts the services share in one process, and the defaults that point at them.
/// Anything configured by env vars wins: `S3_ENDPOINT` set means a real store (no embedded one),
/// `DATABASE_URL` a real database, `INTERNAL_AUTH_API_KEY` a fixed secret.
struct Embedded {
    broker: InProcessBroker,
    /// All six services (not `--only`): embedded defaults everywhere.
    full_platform: bool,
    /// The development OIDC issuer's URL, when this process runs it.
    oidc_issuer: Option<String>,
    s3: Option<EmbeddedS3>,
    s3_config: S3Config,
    data_dir: PathBuf,
    internal_token: String,
}

/// Secrets `up` generates once and keeps in the data directory, so a restart keeps working with
/// what the previous run handed out (presigned URLs, stored sessions).
#[derive(Debug, Serialize, Deserialize)]
struct LocalSecrets {
    internal_token: String,
    s3_access_key: String,
    s3_secret_key: String,
}

impl LocalSecrets {
    fn load_or_create(path: &Path) -> anyhow::Result<Self> {
        if let Ok(text) = std::fs::read_to_string(path) {
            return serde_json::from_str(&text)
                .with_context(|| format!("reading {}", path.display()));
        }
        let secrets = Self {
            internal_token: random_secret(),
            s3_access_key: format!("GK{}", &random_secret()[..24]),
            s3_secret_key: random_secret(),
        };
        write_private(path, &serde_json::to_vec_pretty(&secrets)?)
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(secrets)
    }
}

fn random_secret() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path)?.write_all(bytes)
}

impl Embedded {
    async fn start(
        data_dir: &Path,
        selected: &[Service],
        shutdown: &Shutdown,
    ) -> anyhow::Result<Self> {
        let broker = InProcessBroker::open(InProcessOptions {
            data_dir: Some(data_dir.join("broker")),
            ..InProcessOptions::default()
        })
        .context("opening the in-process broker")?;
        let secrets = LocalSecrets::load_or_create(&data_dir.join("secrets.json"))?;
        let from_env: S3Config = runtime::config::from_env(None)?;
        let needs_store = selected.iter().any(|s| {
            matches!(
                s,
                Service::TuIngestionService | Service::TuMediaAccessService
            )
        });
        let (s3, s3_config) = if std::env::var_os("S3_ENDPOINT").is_none() && needs_store {
            // The store refuses at PUT time what ingestion would refuse at confirm, so it follows
            // ingestion's limit, `MAX_UPLOAD_BYTES` and its per-service override included.
            let ingestion: tu_ingestion_service::Settings =
                runtime::config::from_env(Some(&Service::TuIngestionService.env_prefix()))?;
            let options = EmbeddedS3Options {
                root: data_dir.join("objects"),
                addr: std::env::var("TRACKUNIT_S3_ADDR")
                    .unwrap_or_else(|_| "127.0.0.1:8086".into()),
                access_key: secrets.s3_access_key.clone(),
                secret_key: secrets.s3_secret_key.clone(),
                max_object_bytes: usize::try_from(ingestion.max_upload_bytes).unwrap_or(usize::MAX),
                buckets: vec![from_env.s3_bucket.clone()],
            };
            let s3 = EmbeddedS3::start(options, shutdown.token())
                .await
                .context("starting the embedded S3 store")?;
            let config = S3Config {
                s3_endpoint: s3.endpoint(),
                s3_access_key: secrets.s3_access_key.clone(),
                s3_secret_key: secrets.s3_secret_key.clone(),
                ..from_env
            };
            (Some(s3), config)
        } else {
            (None, from_env)
        };
        // `--only graph-gateway` (a container) must be configured with a real provider.
        let oidc_issuer = if selected.len() > 1
            && selected.contains(&Service::GraphGateway)
            && !identity_configured()
        {
            Some(start_dev_issuer(data_dir, shutdown).await?)
        } else {
            None
        };
        Ok(Self {
            broker,
            full_platform: selected.len() > 1,
            oidc_issuer,
            s3,
            s3_config,
            data_dir: data_dir.to_path_buf(),
            internal_token: secrets.internal_token,
        })
    }

    fn sqlite_url(&self, name: &str) -> String {
        format!("sqlite://{}?mode=rwc", self.data_dir.join(name).display())
    }
}

/// Audience and scope of the development issuer's tokens.
pub const DEV_AUDIENCE: &str = "api://trackunit-local";
pub const DEV_SCOPE: &str = "analysis";
/// Where `up` serves the development issuer (`TRACKUNIT_OIDC_ADDR`).
pub const DEV_ISSUER_ADDR: &str = "127.0.0.1:8087";
/// The file holding the development login secret, in the data directory.
pub const LOGIN_SECRET_FILE: &str = "oidc-login-secret";

/// A real identity provider is configured for the gateway (then `up` runs no issuer).
fn identity_configured() -> bool {
    let prefix = Service::GraphGateway.env_prefix();
    ["OIDC_ISSUER", "AZUREAD__TENANTID"].iter().any(|v| {
        [v.to_string(), format!("{prefix}_{v}")]
            .iter()
            .any(|name| std::env::var(name).is_ok_and(|x| !x.trim().is_empty()))
    })
}

/// The development issuer: key and login secret kept in the data directory, so tokens and
/// logins survive a restart.
async fn start_dev_issuer(data_dir: &Path, shutdown: &Shutdown) -> anyhow::Result<String> {
    let addr = std::env::var("TRACKUNIT_OIDC_ADDR").unwrap_or_else(|_| DEV_ISSUER_ADDR.into());
    let listener = runtime::http::bind(&addr).await?;
    let base = format!("http://{}", listener.local_addr()?);
    let key_path = data_dir.join("oidc-signing-key.pem");
    let issuer = match std::fs::read_to_string(&key_path) {
        Ok(pem) => graph_gateway::issuer::DevIssuer::from_pem(&base, &pem)
            .with_context(|| format!("reading {}", key_path.display()))?,
        Err(_) => {
            let issuer = graph_gateway::issuer::DevIssuer::generate(&base)?;
            write_private(&key_path, issuer.private_key_pem().as_bytes())
                .with_context(|| format!("writing {}", key_path.display()))?;
            issuer
        }
    };
    let secret_path = data_dir.join(LOGIN_SECRET_FILE);
    let login_secret = match std::fs::read_to_string(&secret_path) {
        Ok(s) => s.trim().to_owned(),
        Err(_) => {
            let s = random_secret();
            write_private(&secret_path, s.as_bytes())
                .with_context(|| format!("writing {}", secret_path.display()))?;
            s
        }
    };
    let issuer = issuer.with_grants(graph_gateway::issuer::Grants {
        login_secret,
        audience: DEV_AUDIENCE.into(),
        scope: DEV_SCOPE.into(),
        lifetime: std::time::Duration::from_secs(12 * 3600),
    });
    let router = issuer.router();
    let token = shutdown.token();
    tokio::spawn(async move {
        if let Err(e) = runtime::http::serve(listener, router, token).await {
            tracing::error!(error = %e, "development OIDC issuer stopped");
        }
    });
    tracing::info!(issuer = %base, "development OIDC issuer (not for production)");
    Ok(base)
}

/// The one-machine platform recognises offline when the models are there
/// (`scripts/fetch-models.sh`); `RECOGNITION_ENGINE` still wins.
fn default_engine(full_platform: bool) -> String {
    let defaults = svc_ai_vision_adapter::Settings::default();
    if !full_platform {
        return defaults.recognition_engine;
    }
    let dir = std::env::var("OCR_MODELS_DIR")
        .ok()
        .filter(|d| !d.trim().is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(recognition::default_models_dir);
    if recognition::models_present(&dir) {
        "offline+catalog".into()
    } else {
        tracing::warn!(
            models = %dir.display(),
            "no recognition models: analyses will recognise nothing (run scripts/fetch-models.sh)"
        );
        defaults.recognition_engine
    }
}

type Running = std::pin::Pin<Box<dyn std::future::Future<Output = anyhow::Result<()>> + Send>>;

async fn start(
    service: Service,
    prefix: &str,
    embedded: &Embedded,
    shutdown: Shutdown,
) -> anyhow::Result<(String, Running)> {
    let p = Some(prefix);
    let broker = &embedded.broker;
    Ok(match service {
        Service::GraphGateway => {
            let mut base = graph_gateway::Config::default();
            if let Some(issuer) = &embedded.oidc_issuer {
                base.settings.oidc_issuer = issuer.clone();
                base.settings.oidc_audiences = DEV_AUDIENCE.into();
                base.settings.graphql_development = true;
            }
            base.settings.internal_auth_api_key = embedded.internal_token.clone();
            // Ingestion and the orchestrator where this process serves them.
            let ingestion = tu_ingestion_service::Config::from_env(Some(
                &Service::TuIngestionService.env_prefix(),
            ))?;
            let orchestrator = svc_analysis_orchestrator::Config::from_env(Some(
                &Service::SvcAnalysisOrchestrator.env_prefix(),
            ))?;
            base.settings.ingestion_base_url = format!("http://{}", ingestion.settings.http_addr);
            base.settings.orchestrator_base_url =
                format!("http://{}", orchestrator.settings.http_addr);
            let c = graph_gateway::Config::from_env_over(p, &base)?;
            let d = graph_gateway::Deps::connect(&c, broker)?;
            (
                c.settings.http_addr.clone(),
                Box::pin(graph_gateway::run(c, d, shutdown)),
            )
        }
        Service::TuIngestionService => {
            let base = tu_ingestion_service::Config {
                settings: tu_ingestion_service::Settings {
                    database_url: embedded.sqlite_url("tu-ingestion.db"),
                    internal_auth_api_key: embedded.internal_token.clone(),
                    ..Default::default()
                },
                s3: embedded.s3_config.clone(),
                ..Default::default()
            };
            let c = tu_ingestion_service::Config::from_env_over(p, &base)?;
            let d = tu_ingestion_service::Deps::connect(&c, broker).await?;
            (
                c.settings.http_addr.clone(),
                Box::pin(tu_ingestion_service::run(c, d, shutdown)),
            )
        }
        Service::TuMediaAccessService => {
            let base = tu_media_access_service::Config {
                settings: tu_media_access_service::Settings {
                    internal_auth_api_key: embedded.internal_token.clone(),
                    ..Default::default()
                },
                s3: embedded.s3_config.clone(),
            };
            let c = tu_media_access_service::Config::from_env_over(p, &base)?;
            let d = tu_media_access_service::Deps::connect(&c)?;
            (
                c.settings.http_addr.clone(),
                Box::pin(tu_media_access_service::run(c, d, shutdown)),
            )
        }
        Service::SvcMessagingBridge => {
            let c = svc_messaging_bridge::Config::from_env(p)?;
            let d = svc_messaging_bridge::Deps::connect(&c, broker)?;
            (
                c.settings.http_addr.clone(),
                Box::pin(svc_messaging_bridge::run(c, d, shutdown)),
            )
        }
        Service::SvcAnalysisOrchestrator => {
            let base = svc_analysis_orchestrator::Config {
                settings: svc_analysis_orchestrator::Settings {
                    database_url: embedded.sqlite_url("svc-analysis-orchestrator.db"),
                    internal_auth_api_key: embedded.internal_token.clone(),
                    ..Default::default()
                },
                ..Default::default()
            };
            let c = svc_analysis_orchestrator::Config::from_env_over(p, &base)?;
            let d = svc_analysis_orchestrator::Deps::connect(&c, broker).await?;
            (
                c.settings.http_addr.clone(),
                Box::pin(svc_analysis_orchestrator::run(c, d, shutdown)),
            )
        }
        Service::SvcAiVisionAdapter => {
            // Media access where this process serves it (its address may be overridden).
            let media = tu_media_access_service::Config::from_env(Some(
                &Service::TuMediaAccessService.env_prefix(),
            ))?;
            let base = svc_ai_vision_adapter::Config {
                settings: svc_ai_vision_adapter::Settings {
                    media_access_url: format!("http://{}", media.settings.http_addr),
                    internal_auth_api_key: embedded.internal_token.clone(),
                    recognition_engine: default_engine(embedded.full_platform),
                    ..Default::default()
                },
                ..Default::default()
            };
            let c = svc_ai_vision_adapter::Config::from_env_over(p, &base)?;
            let d = svc_ai_vision_adapter::Deps::connect(&c, broker)?;
            (
                c.settings.http_addr.clone(),
                Box::pin(svc_ai_vision_adapter::run(c, d, shutdown)),
            )
        }
    })
}

fn print_banner(data_dir: &std::path::Path, services: &[(&str, String)]) {
    let mut out = String::from("\nTrackunit platform is starting (Ctrl-C stops it)\n");
    out.push_str(&format!("  data: {}\n", data_dir.display()));
    for (name, addr) in services {
        out.push_str(&format!(
            "  {name:<26} http://{addr}  (/health/ready, /metrics)\n"
        ));
    }
    if let Some((_, addr)) = services.iter().find(|(n, _)| *n == services::GRAPH_GATEWAY) {
        out.push_str(&format!(
            "\n  GraphQL:   http://{addr}/graphql  (GraphiQL in a browser, WebSocket for subscriptions)\n"
        ));
        out.push_str(
            "  Analyze:   trackunit analyze PHOTO.jpg   (a sample: trackunit sample machine.jpg)\n",
        );
        out.push_str("  Watch:     trackunit watch\n");
    }
    eprintln!("{out}");
}
