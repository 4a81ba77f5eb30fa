//! The flows of target.md as network edges (from, to, port, protocol): the one list the
//! NetworkPolicy check compares against, and the env var check derives required variables from.
#![allow(dead_code)]

use std::collections::BTreeSet;

use deploy_checks::netpol::Proto;

pub const SERVICES: [&str; 6] = [
    "graph-gateway",
    "tu-ingestion-service",
    "tu-media-access-service",
    "svc-messaging-bridge",
    "svc-analysis-orchestrator",
    "svc-ai-vision-adapter",
];

pub type Edge = (String, String, u16, Proto);

pub fn e(from: &str, to: &str, port: u16) -> Edge {
    (from.into(), to.into(), port, Proto::Tcp)
}

/// The flows of target.md (and the edge list), edge for edge.
pub fn flow_edges() -> BTreeSet<Edge> {
    let mut edges = BTreeSet::from([
        // Clients reach Kong only, on 8443 (TLS terminated at Kong).
        e("internet", "kong", 8443),
        e("lan-client", "kong", 8443),
        // (Kong's TLS port is open to every address, the API server's too.)
        e("kube-apiserver", "kong", 8443),
        // Kong -> oauth2-proxy -> graph-gateway; Kong's rate limits in Redis; the clients'
        // presigned PUTs to MinIO through Kong; the ingress controller watches the API.
        e("kong", "oauth2-proxy", 4180),
        e("kong", "redis", 6379),
        e("kong", "minio", 9000),
        e("kong", "kube-apiserver", 6443),
        e("oauth2-proxy", "graph-gateway", 8080),
        e("oauth2-proxy", "internet", 443),
        // graph-gateway -> RabbitMQ, ingestion, the orchestrator's read API, the OIDC provider.
        e("graph-gateway", "rabbitmq", 5672),
        e("graph-gateway", "tu-ingestion-service", 8080),
        e("graph-gateway", "svc-analysis-orchestrator", 8080),
        e("graph-gateway", "internet", 443),
        // ingestion -> MinIO, Redpanda, PostgreSQL (PgBouncer; migrations direct).
        e("tu-ingestion-service", "minio", 9000),
        e("tu-ingestion-service", "redpanda", 9092),
        e("tu-ingestion-service", "pgbouncer", 6432),
        e("tu-ingestion-service", "postgres", 5432),
        // media access -> MinIO.
        e("tu-media-access-service", "minio", 9000),
        // vision adapter -> Redpanda, media access, and the image download from MinIO.
        e("svc-ai-vision-adapter", "redpanda", 9092),
        e("svc-ai-vision-adapter", "tu-media-access-service", 8080),
        e("svc-ai-vision-adapter", "minio", 9000),
        // bridge -> Redpanda, RabbitMQ.
        e("svc-messaging-bridge", "redpanda", 9092),
        e("svc-messaging-bridge", "rabbitmq", 5672),
        // orchestrator -> RabbitMQ, PostgreSQL (PgBouncer; migrations direct).
        e("svc-analysis-orchestrator", "rabbitmq", 5672),
        e("svc-analysis-orchestrator", "pgbouncer", 6432),
        e("svc-analysis-orchestrator", "postgres", 5432),
        e("pgbouncer", "postgres", 5432),
        // Prometheus -> every /metrics.
        e("prometheus", "rabbitmq", 15692),
        e("prometheus", "redpanda", 9644),
        e("prometheus", "minio", 9000),
        e("prometheus", "kong", 8100),
        e("prometheus", "oauth2-proxy", 44180),
    ]);
    for s in SERVICES {
        edges.insert(e("prometheus", s, 8080));
        // Traces to the collector.
        edges.insert(e(s, "otel-collector", 4318));
    }
    // DNS for everything that makes outgoing connections by name.
    for s in SERVICES
        .iter()
        .copied()
        .chain(["kong", "oauth2-proxy", "pgbouncer"])
    {
        edges.insert((s.into(), "kube-dns".into(), 53, Proto::Udp));
        edges.insert((s.into(), "kube-dns".into(), 53, Proto::Tcp));
    }
    edges
}
