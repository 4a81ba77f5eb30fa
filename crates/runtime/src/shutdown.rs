//! One cancellation token for the whole process, cancelled by SIGTERM or SIGINT (Ctrl-C).
//! Services stop taking work when it fires and must finish in-flight work within [`GRACE`].

use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Kubernetes' default `terminationGracePeriodSeconds` is 30 s; we promise to be gone in 20 s.
pub const GRACE: Duration = Duration::from_secs(20);

#[derive(Clone, Debug, Default)]
pub struct Shutdown {
    token: CancellationToken,
}

impl Shutdown {
    pub fn new() -> Self {
        Self::default()
    }

    /// A shutdown that fires on SIGTERM or SIGINT.
    pub fn on_signals() -> Self {
        let shutdown = Self::new();
        let token = shutdown.token.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested; draining");
            token.cancel();
        });
        shutdown
    }

    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    pub fn trigger(&self) {
        self.token.cancel();
    }

    pub fn is_triggered(&self) -> bool {
        self.token.is_cancelled()
    }

    pub async fn wait(&self) {
        self.token.cancelled().await
    }
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Wait for `work` to finish after shutdown, at most `grace`; `false` if it had to be abandoned.
pub async fn drain<F: std::future::Future>(work: F, grace: Duration) -> bool {
    match tokio::time::timeout(grace, work).await {
        Ok(_) => true,
        Err(_) => {
            tracing::warn!(
                ?grace,
                "in-flight work did not finish within the grace period"
            );
            false
        }
    }
}
