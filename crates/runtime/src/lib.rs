//! What every service shares, so each binary stays a thin `main`:
//!
//! * [`config`]: typed config from env vars over embedded-mode defaults;
//! * [`telemetry`]: structured logs (JSON or text) carrying the correlation id, OpenTelemetry traces
//!   (exported over OTLP/HTTP when `OTEL_EXPORTER_OTLP_ENDPOINT` is set), the Prometheus recorder;
//! * [`http`]: the common HTTP stack: `/health/live`, `/health/ready`, `/metrics`, correlation ids,
//!   trace context from `traceparent`, request metrics, graceful shutdown;
//! * [`health`]: readiness checks of real dependencies;
//! * [`shutdown`]: SIGTERM/SIGINT → one cancellation token, 20 s to drain.

pub mod config;
pub mod correlation;
pub mod health;
pub mod http;
pub mod shutdown;
pub mod telemetry;

pub use correlation::CorrelationId;
pub use health::Health;
pub use shutdown::Shutdown;
