//! `svc-analysis-orchestrator`: the service as its own process (what a container runs).

use svc_analysis_orchestrator::{Config, Deps, SERVICE, run};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    runtime::telemetry::init(&runtime::telemetry::TelemetryOptions::from_env(SERVICE));
    let config = Config::from_env(None)?;
    let shutdown = runtime::Shutdown::on_signals();
    // Only used when no real broker is configured (a standalone try-out).
    let in_process = messaging::memory::InProcessBroker::memory();
    let deps = Deps::connect(&config, &in_process).await?;
    let result = run(config, deps, shutdown).await;
    runtime::telemetry::shutdown();
    result
}
