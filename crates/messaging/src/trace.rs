//! W3C trace context across messages. The runtime crate installs the global propagator and the
//! tracer; here we only move `traceparent`/`tracestate` between spans and headers.

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Headers;

/// Write the current span's trace context into `headers` (no-op without an active trace).
pub fn inject_current(headers: &mut Headers) {
    let cx = tracing::Span::current().context();
    TraceContextPropagator::new().inject_context(&cx, headers);
}

/// The trace context a message carries.
pub fn extract(headers: &Headers) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(headers)
}

/// Make `span` a child of the trace the message carries, so one trace spans every hop.
pub fn link_span(span: &tracing::Span, headers: &Headers) {
    if headers.get(contracts::headers::TRACEPARENT).is_some() {
        let _ = span.set_parent(extract(headers));
    }
}
