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
        Ok(Self {
            broker,
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
            let c = graph_gateway::Config::from_env(p)?;
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
    eprintln!("{out}");
}
