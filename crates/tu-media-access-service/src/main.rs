//! `tu-media-access-service`: the service as its own process (what a container runs).

use tu_media_access_service::{Config, Deps, SERVICE, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::telemetry::init(&runtime::telemetry::TelemetryOptions::from_env(SERVICE));
    let config = Config::from_env(None)?;
    let shutdown = runtime::Shutdown::on_signals();
    let deps = Deps::connect(&config)?;
    let result = run(config, deps, shutdown).await;
    runtime::telemetry::shutdown();
    result
}
