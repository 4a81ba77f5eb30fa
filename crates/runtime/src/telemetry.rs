//! Logs, traces and the metrics recorder, set up once per process.
//!
//! * Logs: `tracing` to stdout, JSON (`LOG_FORMAT=json`, the default when stdout is not a terminal)
//!   or compact text; filter from `RUST_LOG` (default `info`). JSON lines carry every span's fields,
//!   so the `correlation_id` put on request and message spans appears on each line beneath them.
//! * Traces: an OpenTelemetry tracer always runs, so trace ids exist and travel in `traceparent`
//!   over HTTP, Kafka and AMQP; spans are exported over OTLP/HTTP only when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`service.name` = the service, or `OTEL_SERVICE_NAME`).
//! * Metrics: one Prometheus recorder; `/metrics` renders it.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

#[derive(Debug, Clone)]
pub struct TelemetryOptions {
    pub service: String,
    pub log_format: LogFormat,
    /// Which log lines are written, `RUST_LOG` syntax.
    pub filter: String,
    /// Which spans become trace spans (`OTEL_TRACES_FILTER`, same syntax; default `info`).
    pub trace_filter: String,
    /// OTLP/HTTP endpoint, e.g. `http://otel-collector:4318`.
    pub otlp_endpoint: Option<String>,
}

impl TelemetryOptions {
    /// From `LOG_FORMAT`, `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_SERVICE_NAME`.
    pub fn from_env(service: &str) -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let log_format = match var("LOG_FORMAT").as_deref() {
            Some("json") => LogFormat::Json,
            Some("text") => LogFormat::Text,
            _ if std::io::stdout().is_terminal() => LogFormat::Text,
            _ => LogFormat::Json,
        };
        Self {
            service: var("OTEL_SERVICE_NAME").unwrap_or_else(|| service.to_owned()),
            log_format,
            filter: var("RUST_LOG").unwrap_or_else(|| "info".to_owned()),
            trace_filter: var("OTEL_TRACES_FILTER").unwrap_or_else(|| "info".to_owned()),
            otlp_endpoint: var("OTEL_EXPORTER_OTLP_ENDPOINT"),
        }
    }
}

pub struct Telemetry {
    provider: SdkTracerProvider,
    pub exporting: bool,
}

static TELEMETRY: OnceLock<Telemetry> = OnceLock::new();
static METRICS: OnceLock<PrometheusHandle> = OnceLock::new();

/// Install logging and tracing for this process. Later calls return the first setup.
pub fn init(options: &TelemetryOptions) -> &'static Telemetry {
    TELEMETRY.get_or_init(|| {
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(options.service.clone())
            .build();
        let mut builder = SdkTracerProvider::builder().with_resource(resource);
        let mut exporting = false;
        if let Some(endpoint) = &options.otlp_endpoint {
            use opentelemetry_otlp::WithExportConfig;
            match opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_endpoint(format!("{}/v1/traces", endpoint.trim_end_matches('/')))
                .build()
            {
                Ok(exporter) => {
                    builder = builder.with_batch_exporter(exporter);
                    exporting = true;
                }
                Err(e) => eprintln!("OTLP exporter for {endpoint} not started: {e}"),
            }
        }
        let provider = builder.build();
        let tracer = provider.tracer(options.service.clone());
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

        // Separate filters: a quiet RUST_LOG must not switch off the spans that carry traces.
        let log_filter =
            EnvFilter::try_new(&options.filter).unwrap_or_else(|_| EnvFilter::new("info"));
        let trace_filter =
            EnvFilter::try_new(&options.trace_filter).unwrap_or_else(|_| EnvFilter::new("info"));
        let _ = tracing_subscriber::registry()
            .with(log_layer(options.log_format, std::io::stdout, log_filter))
            .with(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(trace_filter),
            )
            .try_init();
        Telemetry {
            provider,
            exporting,
        }
    })
}

/// The log line format: JSON lines carry every enclosing span's fields (correlation ids).
fn log_layer<S, W>(
    format: LogFormat,
    writer: W,
    filter: EnvFilter,
) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    W: for<'w> tracing_subscriber::fmt::MakeWriter<'w> + Send + Sync + 'static,
{
    match format {
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(true)
            .with_target(true)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .compact()
            .with_target(false)
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    }
}

/// Flush and stop span export (end of graceful shutdown).
pub fn shutdown() {
    if let Some(t) = TELEMETRY.get()
        && t.exporting
    {
        let _ = t.provider.force_flush();
    }
}

/// The process-wide Prometheus recorder (installed on first use).
pub fn metrics() -> &'static PrometheusHandle {
    METRICS.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(&[
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ])
            .unwrap_or_else(|_| PrometheusBuilder::new());
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (tests embedding several services).
        let _ = metrics::set_global_recorder(recorder);
        handle
    })
}

struct HeaderInjector<'a>(&'a mut http::HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Put the current span's trace context on outgoing HTTP headers.
pub fn inject_http(headers: &mut http::HeaderMap) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(headers));
}

/// Continue the caller's trace: make `span` a child of the `traceparent` on incoming headers.
pub fn link_http(span: &tracing::Span, headers: &http::HeaderMap) {
    if headers.contains_key("traceparent") {
        let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
        let _ = span.set_parent(cx);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().expect("lock").extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn json_log_lines_carry_the_correlation_id_of_enclosing_spans() {
        let buffer = Buffer::default();
        let sink = buffer.clone();
        let subscriber = tracing_subscriber::registry().with(log_layer(
            LogFormat::Json,
            move || sink.clone(),
            EnvFilter::new("info"),
        ));
        tracing::subscriber::with_default(subscriber, || {
            let outer = tracing::info_span!("http_request", correlation_id = "7c9f10a6c21f45e4");
            let _o = outer.enter();
            let inner = tracing::info_span!("confirm_upload", upload_id = "u-1");
            let _i = inner.enter();
            tracing::info!(bytes = 42, "upload confirmed");
        });
        let text = String::from_utf8(buffer.0.lock().expect("lock").clone()).expect("utf8");
        let line: serde_json::Value =
            serde_json::from_str(text.lines().next().expect("a line")).expect("json");
        assert_eq!(line["message"], "upload confirmed");
        assert_eq!(line["bytes"], 42);
        let spans = line["spans"].as_array().expect("spans");
        assert_eq!(spans[0]["correlation_id"], "7c9f10a6c21f45e4");
        assert_eq!(spans[1]["upload_id"], "u-1");
    }
}
