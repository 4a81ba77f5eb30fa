//! Every env var a manifest or the compose file sets for a service is one the service reads,
//! and every variable it needs in a deployment is set.
//!
//! What a service reads is derived from the code, not listed by hand:
//! - the serde field names of each config part its `Config` is made of (`runtime::config` reads
//!   field `http_addr` from `HTTP_ADDR`), got by serializing the parts' defaults; the `Config`
//!   structs are destructured without `..`, so a new part fails to compile here until it is
//!   added (graph-gateway, being rewritten, uses `..`);
//! - plus the names passed to `std::env::var`/`var_os` in the shared crates and the service's
//!   own source (telemetry's `RUST_LOG`, `OTEL_EXPORTER_OTLP_ENDPOINT`…, `HOSTNAME`).
//!
//! What a deployment must set is derived too:
//! - `INTERNAL_AUTH_API_KEY` wherever it is read (every service refuses to start without it);
//! - every variable whose embedded default cannot work in a pod: one pointing at 127.0.0.1 or
//!   localhost, or a SQLite database;
//! - from the flow edges (tests/support/flows.rs): a service with an edge to Redpanda needs
//!   `KAFKA_BROKERS`, to RabbitMQ `RABBIT_URL`, to PgBouncer `DATABASE_URL`, to PostgreSQL
//!   `DATABASE_MIGRATE_URL`, to MinIO with an S3 client the S3 keys, to the OTel collector
//!   `OTEL_EXPORTER_OTLP_ENDPOINT`, to the OIDC provider `OIDC_ISSUER` and `OIDC_AUDIENCES`.

#[path = "support/flows.rs"]
mod flows;

use std::collections::{BTreeMap, BTreeSet};

use deploy_checks::{env_names, kustomize, kustomize_roots, manifest_id, repo_path, yaml_file};
use flows::{SERVICES, flow_edges};
use regex::Regex;
use serde_json::Value;

/// Field names of a config part, and those whose default cannot work in a pod.
fn part<T: serde::Serialize>(
    config: &T,
    reads: &mut BTreeSet<String>,
    local_defaults: &mut BTreeSet<String>,
) {
    reads.extend(env_names(config).expect("config part serializes to an object"));
    if let Ok(Value::Object(map)) = serde_json::to_value(config) {
        for (k, v) in map {
            if let Some(s) = v.as_str()
                && (s.contains("127.0.0.1") || s.contains("localhost") || s.starts_with("sqlite:"))
            {
                local_defaults.insert(k.to_uppercase());
            }
        }
    }
}

/// Names given to `std::env::var("…")`/`var_os("…")` in the sources under these crates.
fn direct_reads(crates: &[&str]) -> BTreeSet<String> {
    let re = Regex::new(r#"\bvar(?:_os)?\(\s*"([A-Z][A-Z0-9_]*)"\s*\)"#).expect("regex");
    let mut out = BTreeSet::new();
    for c in crates {
        let dir = repo_path(&format!("crates/{c}/src"));
        for file in deploy_checks::files_under(&dir, &[".rs"]).expect("sources") {
            let text = std::fs::read_to_string(&file).expect("source");
            out.extend(re.captures_iter(&text).map(|m| m[1].to_owned()));
        }
    }
    out
}

struct Reads {
    known: BTreeSet<String>,
    local_defaults: BTreeSet<String>,
}

fn reads(service: &str) -> Reads {
    let (mut known, mut local) = (BTreeSet::new(), BTreeSet::new());
    let (k, l) = (&mut known, &mut local);
    match service {
        "graph-gateway" => {
            // `..`: the gateway is being rewritten; its Settings are final.
            let graph_gateway::Config {
                settings,
                messaging,
                ..
            } = graph_gateway::Config::default();
            part(&settings, k, l);
            part(&messaging, k, l);
        }
        "tu-ingestion-service" => {
            let tu_ingestion_service::Config {
                settings,
                s3,
                messaging,
                topics,
            } = tu_ingestion_service::Config::default();
            part(&settings, k, l);
            part(&s3, k, l);
            part(&messaging, k, l);
            part(&topics, k, l);
        }
        "tu-media-access-service" => {
            let tu_media_access_service::Config { settings, s3 } =
                tu_media_access_service::Config::default();
            part(&settings, k, l);
            part(&s3, k, l);
        }
        "svc-messaging-bridge" => {
            let svc_messaging_bridge::Config {
                settings,
                messaging,
                topics,
            } = svc_messaging_bridge::Config::default();
            part(&settings, k, l);
            part(&messaging, k, l);
            part(&topics, k, l);
        }
        "svc-analysis-orchestrator" => {
            let svc_analysis_orchestrator::Config {
                settings,
                messaging,
            } = svc_analysis_orchestrator::Config::default();
            part(&settings, k, l);
            part(&messaging, k, l);
        }
        "svc-ai-vision-adapter" => {
            let svc_ai_vision_adapter::Config {
                settings,
                messaging,
                topics,
            } = svc_ai_vision_adapter::Config::default();
            part(&settings, k, l);
            part(&messaging, k, l);
            part(&topics, k, l);
        }
        other => panic!("unknown service {other}"),
    }
    known.extend(direct_reads(&[
        "runtime",
        "messaging",
        "objectstore",
        "database",
        "auth",
        service,
    ]));
    Reads {
        known,
        local_defaults: local,
    }
}

fn required(service: &str, r: &Reads) -> BTreeSet<String> {
    let mut req = r.local_defaults.clone();
    if r.known.contains("INTERNAL_AUTH_API_KEY") {
        req.insert("INTERNAL_AUTH_API_KEY".into());
    }
    for (from, to, port, _) in flow_edges() {
        if from != service {
            continue;
        }
        let needs: &[&str] = match (to.as_str(), port) {
            ("redpanda", _) => &["KAFKA_BROKERS"],
            ("rabbitmq", _) => &["RABBIT_URL"],
            ("pgbouncer", _) => &["DATABASE_URL"],
            ("postgres", _) => &["DATABASE_MIGRATE_URL"],
            ("minio", _) if r.known.contains("S3_ACCESS_KEY") => {
                &["S3_ACCESS_KEY", "S3_SECRET_KEY"]
            }
            ("otel-collector", _) => &["OTEL_EXPORTER_OTLP_ENDPOINT"],
            ("internet", 443) if service == "graph-gateway" => &["OIDC_ISSUER", "OIDC_AUDIENCES"],
            _ => &[],
        };
        req.extend(needs.iter().map(|s| (*s).to_owned()));
    }
    req
}

#[test]
fn what_the_services_read_is_derived_from_the_code() {
    let r = reads("tu-ingestion-service");
    for v in [
        "HTTP_ADDR",
        "DATABASE_URL",
        "S3_ENDPOINT",
        "KAFKA_BROKERS",
        "TOPIC_IMAGE_UPLOADED",
        "RUST_LOG",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "HOSTNAME",
    ] {
        assert!(r.known.contains(v), "{v} in {:?}", r.known);
    }
    let g = reads("graph-gateway");
    for v in [
        "OIDC_ISSUER",
        "OIDC_AUDIENCES",
        "AZUREAD__TENANTID",
        "RABBIT_URL",
    ] {
        assert!(g.known.contains(v), "{v} in {:?}", g.known);
    }
    assert_eq!(
        required("svc-messaging-bridge", &reads("svc-messaging-bridge")),
        BTreeSet::from(
            [
                "HTTP_ADDR",
                "KAFKA_BROKERS",
                "RABBIT_URL",
                "OTEL_EXPORTER_OTLP_ENDPOINT"
            ]
            .map(String::from)
        )
    );
}

/// Env var names a container gets: `env` entries and the keys of ConfigMaps in `envFrom`.
fn container_env(
    container: &Value,
    configmaps: &BTreeMap<String, BTreeSet<String>>,
    ns: &str,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for e in container["env"].as_array().into_iter().flatten() {
        out.insert(e["name"].as_str().expect("env name").to_owned());
    }
    for src in container["envFrom"].as_array().into_iter().flatten() {
        if let Some(name) = src["configMapRef"]["name"].as_str() {
            let keys = configmaps
                .get(&format!("{ns}/{name}"))
                .unwrap_or_else(|| panic!("ConfigMap {ns}/{name} is not in the manifests"));
            let prefix = src["prefix"].as_str().unwrap_or_default();
            out.extend(keys.iter().map(|k| format!("{prefix}{k}")));
        } else {
            panic!(
                "envFrom other than a ConfigMap in the manifests ({src}): its names cannot be checked; use env with secretKeyRef"
            );
        }
    }
    out
}

fn check(origin: &str, service: &str, set: &BTreeSet<String>) -> Vec<String> {
    let r = reads(service);
    let mut problems = Vec::new();
    for v in set.difference(&r.known) {
        problems.push(format!("{origin}: {service} does not read {v}"));
    }
    for v in required(service, &r).difference(set) {
        problems.push(format!("{origin}: {service} needs {v}, which is not set"));
    }
    problems
}

#[test]
fn manifests_set_only_variables_the_services_read_and_every_required_one() {
    let mut problems = Vec::new();
    for root in kustomize_roots().expect("roots") {
        let docs = kustomize(&root).expect("kustomize");
        let origin = root
            .strip_prefix(repo_path(""))
            .unwrap_or(&root)
            .display()
            .to_string();
        let configmaps: BTreeMap<String, BTreeSet<String>> = docs
            .iter()
            .filter(|d| d["kind"] == "ConfigMap")
            .map(|d| {
                (
                    format!(
                        "{}/{}",
                        d["metadata"]["namespace"].as_str().unwrap_or_default(),
                        d["metadata"]["name"].as_str().unwrap_or_default()
                    ),
                    d["data"]
                        .as_object()
                        .into_iter()
                        .flatten()
                        .map(|(k, _)| k.clone())
                        .collect(),
                )
            })
            .collect();
        let mut seen = BTreeSet::new();
        for d in docs.iter().filter(|d| d["kind"] == "Deployment") {
            let ns = d["metadata"]["namespace"].as_str().unwrap_or_default();
            for c in d["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                // A service container runs the binary of the same name.
                let Some(binary) = c["command"][0]
                    .as_str()
                    .and_then(|b| b.strip_prefix("/usr/local/bin/"))
                else {
                    continue;
                };
                assert!(
                    SERVICES.contains(&binary),
                    "{}: runs {binary}",
                    manifest_id(d)
                );
                seen.insert(binary.to_owned());
                let set = container_env(c, &configmaps, ns);
                problems.extend(check(&origin, binary, &set));
            }
        }
        assert_eq!(
            seen.len(),
            SERVICES.len(),
            "{origin}: every service is deployed: {seen:?}"
        );
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn compose_sets_only_variables_the_services_read_and_every_required_one() {
    let compose = yaml_file(&repo_path("deploy/compose/compose.yaml")).expect("compose file");
    let services = compose[0]["services"].as_object().expect("services");
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for (name, svc) in services {
        let Some(binary) = svc["command"][0]
            .as_str()
            .or(svc["entrypoint"][0].as_str())
            .and_then(|b| b.strip_prefix("/usr/local/bin/"))
            .filter(|b| SERVICES.contains(b))
        else {
            continue;
        };
        seen.insert(binary.to_owned());
        assert!(
            svc["env_file"].is_null(),
            "{name}: env_file hides what is set; use environment"
        );
        let set: BTreeSet<String> = match &svc["environment"] {
            Value::Object(m) => m.keys().cloned().collect(),
            Value::Array(a) => a
                .iter()
                .filter_map(Value::as_str)
                .map(|s| s.split('=').next().unwrap_or_default().to_owned())
                .collect(),
            _ => BTreeSet::new(),
        };
        problems.extend(check("deploy/compose/compose.yaml", binary, &set));
    }
    assert_eq!(
        seen.len(),
        SERVICES.len(),
        "every service is in the compose file: {seen:?}"
    );
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
