//! Readiness: each service registers checks of its real dependencies (broker, database,
//! storage). `/health/ready` runs them all, concurrently, each bounded by a timeout. While the
//! service drains for shutdown it reports not ready, so load balancers stop sending work.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use serde::Serialize;

type Check = Arc<dyn Fn() -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

#[derive(Clone, Default)]
pub struct Health {
    /// (name, critical, check)
    checks: Arc<RwLock<Vec<(String, bool, Check)>>>,
    draining: Arc<AtomicBool>,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct CheckResult {
    pub ok: bool,
    /// A failing non-critical check is reported but keeps the service ready (it can still do its
    /// job, e.g. accept uploads into the outbox while Kafka is down).
    pub critical: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub ms: u64,
}

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Report {
    pub status: &'static str,
    pub checks: BTreeMap<String, CheckResult>,
}

impl Report {
    pub fn is_ready(&self) -> bool {
        self.status == "ready"
    }
}

impl Health {
    pub fn new() -> Self {
        Self::default()
    }

    /// Register a named check; an `Err` makes the service not ready.
    pub fn check<F, Fut>(&self, name: impl Into<String>, f: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.add(name.into(), true, Arc::new(move || Box::pin(f())));
    }

    /// Register a check that is reported but does not affect readiness.
    pub fn check_optional<F, Fut>(&self, name: impl Into<String>, f: F)
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = Result<(), String>> + Send + 'static,
    {
        self.add(name.into(), false, Arc::new(move || Box::pin(f())));
    }

    fn add(&self, name: String, critical: bool, check: Check) {
        self.checks
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push((name, critical, check));
    }

    /// From now on report not ready (shutdown has begun).
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::SeqCst);
    }

    pub async fn report(&self, timeout: Duration) -> Report {
        let checks: Vec<(String, bool, Check)> = self
            .checks
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let runs = checks
            .into_iter()
            .map(|(name, critical, check)| async move {
                let started = Instant::now();
                let outcome = tokio::time::timeout(timeout, check()).await;
                let ms = started.elapsed().as_millis() as u64;
                let result = match outcome {
                    Ok(Ok(())) => CheckResult {
                        ok: true,
                        critical,
                        error: None,
                        ms,
                    },
                    Ok(Err(e)) => CheckResult {
                        ok: false,
                        critical,
                        error: Some(e),
                        ms,
                    },
                    Err(_) => CheckResult {
                        ok: false,
                        critical,
                        error: Some(format!("no answer within {timeout:?}")),
                        ms,
                    },
                };
                (name, result)
            });
        let checks: BTreeMap<String, CheckResult> =
            futures::future::join_all(runs).await.into_iter().collect();
        let draining = self.draining.load(Ordering::SeqCst);
        let ready = !draining && checks.values().all(|c| c.ok || !c.critical);
        Report {
            status: if draining {
                "draining"
            } else if ready {
                "ready"
            } else {
                "not_ready"
            },
            checks,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failing_or_hanging_check_makes_it_not_ready() {
        let h = Health::new();
        h.check("db", || async { Ok(()) });
        let r = h.report(Duration::from_millis(100)).await;
        assert!(r.is_ready());
        h.check("broker", || async { Err("connection refused".to_owned()) });
        h.check("slow", || async {
            tokio::time::sleep(Duration::from_secs(5)).await;
            Ok(())
        });
        let r = h.report(Duration::from_millis(100)).await;
        assert_eq!(r.status, "not_ready");
        assert_eq!(
            r.checks["broker"].error.as_deref(),
            Some("connection refused")
        );
        assert!(!r.checks["slow"].ok);
        assert!(r.checks["db"].ok);
    }

    #[tokio::test]
    async fn optional_checks_are_reported_but_keep_it_ready() {
        let h = Health::new();
        h.check("db", || async { Ok(()) });
        h.check_optional("kafka", || async { Err("broker down".to_owned()) });
        let r = h.report(Duration::from_millis(100)).await;
        assert!(r.is_ready());
        assert_eq!(r.checks["kafka"].error.as_deref(), Some("broker down"));
        assert!(!r.checks["kafka"].critical);
    }

    #[tokio::test]
    async fn draining_is_not_ready() {
        let h = Health::new();
        h.set_draining();
        assert_eq!(h.report(Duration::from_millis(50)).await.status, "draining");
    }
}
