//! The Kubernetes manifests (deploy/k8s): they render (kustomize), validate against the
//! Kubernetes schemas (kubernetes-validate, pinned in scripts/deploy-tools.sh), deny by default,
//! allow exactly the flows of target.md, and give every service what a production pod needs.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::Path;

#[path = "support/flows.rs"]
mod flows;

use deploy_checks::netpol::{Cluster, Node, tcp, udp, workload_nodes};
use deploy_checks::{
    files_under, kustomize, kustomize_roots, kustomize_text, manifest_id, repo_path, run, tool,
    yaml_file,
};
use flows::{Edge, SERVICES, e, flow_edges};
use serde_json::Value;

/// The Kubernetes version the manifests are validated against (kind's current node image).
const KUBERNETES_VERSION: &str = "1.32.0";

/// Custom resources (no schema in kubernetes-validate): checked field by field below.
const CUSTOM_KINDS: &[&str] = &["KongPlugin"];

fn base() -> Vec<Value> {
    kustomize(&repo_path("deploy/k8s/base")).expect("kubectl kustomize deploy/k8s/base")
}

#[test]
fn every_manifest_validates_against_kubernetes_schemas() {
    let validate = tool("kubernetes-validate").expect("kubernetes-validate");
    let dir = tempfile::tempdir().expect("tempdir");
    let roots = kustomize_roots().expect("kustomize roots");
    assert!(roots.len() >= 3, "base and the overlays: {roots:?}");
    for root in roots {
        let text = kustomize_text(&root).expect("kustomize");
        let file = dir.path().join(format!(
            "{}.yaml",
            root.file_name().unwrap_or_default().to_string_lossy()
        ));
        std::fs::write(&file, &text).expect("write rendered manifests");
        let out = run(
            &validate,
            &[
                "--strict",
                "--kubernetes-version",
                KUBERNETES_VERSION,
                "--quiet",
                &file.to_string_lossy(),
            ],
        )
        .expect("kubernetes-validate");
        let problems: Vec<&str> = out
            .stdout
            .lines()
            .chain(out.stderr.lines())
            .filter(|l| !l.trim().is_empty())
            .filter(|l| {
                !CUSTOM_KINDS.iter().any(|k| {
                    l.starts_with("WARN")
                        && l.contains(&format!("Couldn't find schema for kind {k} "))
                })
            })
            .collect();
        assert!(
            out.success && problems.is_empty(),
            "{}: kubernetes-validate --strict -k {KUBERNETES_VERSION} reported:\n{}",
            root.display(),
            problems.join("\n")
        );
        let docs = deploy_checks::yaml_docs(&text).expect("yaml");
        assert!(
            docs.len() > 50,
            "{}: {} objects",
            root.display(),
            docs.len()
        );
        for doc in &docs {
            let kind = doc["kind"].as_str().unwrap_or_default();
            if kind == "KongPlugin" {
                assert!(
                    doc["plugin"].is_string() && doc["config"].is_object(),
                    "{}: plugin and config",
                    manifest_id(doc)
                );
            }
        }
    }
}

/// Every YAML file under deploy/k8s/base is part of the kustomization (nothing silently left
/// out of `kubectl apply -k`).
#[test]
fn every_base_file_is_in_the_kustomization() {
    let root = repo_path("deploy/k8s/base");
    let k = yaml_file(&root.join("kustomization.yaml")).expect("kustomization");
    let listed: BTreeSet<String> = k[0]["resources"]
        .as_array()
        .expect("resources")
        .iter()
        .filter_map(Value::as_str)
        .map(str::to_owned)
        .collect();
    let on_disk: BTreeSet<String> = files_under(&root, &[".yaml", ".yml"])
        .expect("files")
        .iter()
        .filter_map(|p| p.strip_prefix(&root).ok())
        .map(|p| p.to_string_lossy().into_owned())
        .filter(|p| p != "kustomization.yaml")
        .collect();
    assert_eq!(listed, on_disk);
}

#[test]
fn nothing_secret_is_committed() {
    for root in kustomize_roots().expect("roots") {
        for doc in kustomize(&root).expect("kustomize") {
            assert_ne!(
                doc["kind"],
                "Secret",
                "{}: Secrets come from scripts/gen-secrets.sh, never from the repo",
                manifest_id(&doc)
            );
        }
    }
    // Values of secret-looking keys in ConfigMaps.
    for doc in base() {
        if doc["kind"] == "ConfigMap" {
            for (k, _) in doc["data"].as_object().into_iter().flatten() {
                let upper = k.to_uppercase();
                assert!(
                    !(upper.contains("PASSWORD")
                        || upper.contains("SECRET")
                        || upper.ends_with("_KEY") && !upper.ends_with("PUBLIC_KEY")
                        || upper.ends_with("_URL") && upper.contains("DATABASE")),
                    "{}: {k} belongs in a Secret",
                    manifest_id(&doc)
                );
            }
        }
    }
}

fn find<'a>(docs: &'a [Value], kind: &str, ns: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| {
            d["kind"] == kind && d["metadata"]["namespace"] == ns && d["metadata"]["name"] == name
        })
        .unwrap_or_else(|| panic!("{kind} {ns}/{name} is missing"))
}

#[test]
fn every_service_runs_as_production_needs() {
    let docs = base();
    let grace = runtime::shutdown::GRACE.as_secs();
    for name in SERVICES {
        let d = find(&docs, "Deployment", name, name);
        let spec = &d["spec"]["template"]["spec"];
        let c = &spec["containers"][0];
        assert_eq!(
            c["command"][0],
            format!("/usr/local/bin/{name}"),
            "{name}: runs its own binary from the image"
        );
        assert_eq!(
            c["readinessProbe"]["httpGet"]["path"], "/health/ready",
            "{name}"
        );
        assert_eq!(
            c["livenessProbe"]["httpGet"]["path"], "/health/live",
            "{name}"
        );
        for kind in ["requests", "limits"] {
            for res in ["cpu", "memory"] {
                assert!(
                    c["resources"][kind][res].is_string(),
                    "{name}: resources.{kind}.{res}"
                );
            }
        }
        let tgps = spec["terminationGracePeriodSeconds"].as_u64().unwrap_or(30);
        assert!(
            tgps >= grace + 5,
            "{name}: terminationGracePeriodSeconds {tgps} < the services' {grace} s drain + preStop"
        );
        assert_eq!(spec["securityContext"]["runAsNonRoot"], true, "{name}");
        assert_eq!(
            c["securityContext"]["allowPrivilegeEscalation"], false,
            "{name}"
        );
        assert_eq!(
            c["securityContext"]["readOnlyRootFilesystem"], true,
            "{name}"
        );
        let replicas = d["spec"]["replicas"].as_u64().unwrap_or(1);
        if name == "graph-gateway" {
            assert!(
                replicas >= 2,
                "graph-gateway runs >= 2 replicas, has {replicas}"
            );
        }
        let svc = find(&docs, "Service", name, name);
        assert_eq!(svc["spec"]["type"], "ClusterIP", "{name}");
        assert_eq!(svc["spec"]["ports"][0]["port"], 8080, "{name}");
        let pdb = find(&docs, "PodDisruptionBudget", name, name);
        assert_eq!(
            pdb["spec"]["selector"]["matchLabels"], d["spec"]["selector"]["matchLabels"],
            "{name}: the PDB covers the Deployment's pods"
        );
    }
    // Every workload, the infrastructure too, has resources and probes.
    for d in &docs {
        if !["Deployment", "StatefulSet"].contains(&d["kind"].as_str().unwrap_or_default()) {
            continue;
        }
        let containers = d["spec"]["template"]["spec"]["containers"]
            .as_array()
            .expect("containers");
        for c in containers {
            assert!(
                c["resources"]["limits"]["memory"].is_string(),
                "{} container {}: memory limit",
                manifest_id(d),
                c["name"]
            );
        }
        assert!(
            containers[0]["readinessProbe"].is_object()
                && containers[0]["livenessProbe"].is_object(),
            "{}: probes",
            manifest_id(d)
        );
    }
}

#[test]
fn every_namespace_denies_by_default() {
    let docs = base();
    let namespaces: BTreeSet<&str> = docs
        .iter()
        .filter(|d| d["kind"] == "Namespace")
        .filter_map(|d| d["metadata"]["name"].as_str())
        .collect();
    for s in SERVICES {
        assert!(namespaces.contains(s), "a namespace per service: {s}");
    }
    for ns in &namespaces {
        let deny = docs.iter().find(|d| {
            d["kind"] == "NetworkPolicy"
                && d["metadata"]["namespace"] == *ns
                && d["spec"]["podSelector"]
                    .as_object()
                    .is_some_and(|o| o.is_empty())
        });
        let deny = deny.unwrap_or_else(|| panic!("namespace {ns} has no default-deny policy"));
        let types: BTreeSet<&str> = deny["spec"]["policyTypes"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        assert_eq!(types, BTreeSet::from(["Ingress", "Egress"]), "{ns}");
        assert!(
            deny["spec"]["ingress"].is_null() && deny["spec"]["egress"].is_null(),
            "{ns}: the default-deny policy allows nothing"
        );
    }
    for d in &docs {
        if let Some(ns) = d["metadata"]["namespace"].as_str() {
            assert!(
                namespaces.contains(ns),
                "{} is in an undeclared namespace",
                manifest_id(d)
            );
        }
    }
}

/// What is not in our manifests but takes part in the flows: Kong (its Helm chart), Prometheus
/// and the OTel collector (namespace `monitoring`), cluster DNS, the Kubernetes API, a client
/// on the internet and one on a LAN, and the internet (the OIDC provider).
fn outside_nodes() -> Vec<Node> {
    vec![
        Node::pod(
            "kong",
            "api-gateway",
            &[("app.kubernetes.io/name", "kong")],
            vec![tcp(8443), tcp(8100)],
        ),
        Node::pod(
            "prometheus",
            "monitoring",
            &[("app.kubernetes.io/name", "prometheus")],
            vec![tcp(9090)],
        ),
        Node::pod(
            "otel-collector",
            "monitoring",
            &[("app.kubernetes.io/name", "opentelemetry-collector")],
            vec![tcp(4317), tcp(4318)],
        ),
        Node::pod(
            "kube-dns",
            "kube-system",
            &[("k8s-app", "kube-dns")],
            vec![udp(53), tcp(53)],
        ),
        Node::external(
            "kube-apiserver",
            Ipv4Addr::new(172, 18, 0, 2),
            vec![tcp(6443)],
        ),
        Node::external(
            "internet",
            Ipv4Addr::new(203, 0, 113, 10),
            vec![tcp(443), tcp(80)],
        ),
        Node::external("lan-client", Ipv4Addr::new(192, 168, 1, 20), vec![]),
    ]
}

fn allowed_edges(root: &Path) -> (BTreeSet<Edge>, Vec<String>) {
    let docs = kustomize(root).expect("kustomize");
    let cluster = Cluster::from_manifests(&docs, &["kube-system", "monitoring"]).expect("policies");
    let mut nodes = workload_nodes(&docs).expect("workloads");
    let names: BTreeSet<String> = nodes.iter().map(|n| n.name.clone()).collect();
    nodes.extend(
        outside_nodes()
            .into_iter()
            .filter(|n| !names.contains(&n.name)),
    );
    // Our policies govern connections to or from pods in our namespaces; what flows between
    // two outside parties (Prometheus -> the internet, say) is not theirs to allow.
    let ours: BTreeSet<String> = docs
        .iter()
        .filter(|d| d["kind"] == "Namespace")
        .filter_map(|d| d["metadata"]["name"].as_str().map(str::to_owned))
        .collect();
    let managed: BTreeSet<String> = nodes
        .iter()
        .filter(|n| n.namespace.as_ref().is_some_and(|ns| ours.contains(ns)))
        .map(|n| n.name.clone())
        .collect();
    let unisolated: Vec<String> = cluster
        .unisolated(&nodes)
        .into_iter()
        .filter(|n| managed.contains(n))
        .collect();
    let edges = cluster
        .edges(&nodes)
        .into_iter()
        .filter(|(from, to, _, _)| managed.contains(from) || managed.contains(to))
        .collect();
    (edges, unisolated)
}

fn diff(allowed: &BTreeSet<Edge>, expected: &BTreeSet<Edge>) -> String {
    let show = |s: Vec<&Edge>| {
        s.iter()
            .map(|(a, b, p, proto)| format!("  {a} -> {b}:{p}/{proto}"))
            .collect::<Vec<_>>()
            .join("\n")
    };
    format!(
        "allowed but not a flow:\n{}\na flow but not allowed:\n{}",
        show(allowed.difference(expected).collect()),
        show(expected.difference(allowed).collect())
    )
}

#[test]
fn network_policies_allow_exactly_the_flow_edges() {
    let expected = flow_edges();
    for overlay in ["deploy/k8s/base", "deploy/k8s/overlays/local"] {
        let (allowed, unisolated) = allowed_edges(&repo_path(overlay));
        assert!(
            unisolated.is_empty(),
            "{overlay}: pods without policies: {unisolated:?}"
        );
        assert!(
            allowed == expected,
            "{overlay}:\n{}",
            diff(&allowed, &expected)
        );
    }
    // RabbitMQ is reachable from nowhere outside the cluster (the original allowed 0.0.0.0/0).
    let (allowed, _) = allowed_edges(&repo_path("deploy/k8s/base"));
    assert!(
        !allowed.iter().any(|(from, to, _, _)| to == "rabbitmq"
            && ["internet", "lan-client"].contains(&from.as_str()))
    );
}

#[test]
fn the_cloud_vision_overlay_adds_only_the_adapters_egress_to_443() {
    let mut expected = flow_edges();
    expected.insert(e("svc-ai-vision-adapter", "internet", 443));
    let (allowed, unisolated) = allowed_edges(&repo_path("deploy/k8s/overlays/cloud-vision"));
    assert!(unisolated.is_empty(), "{unisolated:?}");
    assert!(allowed == expected, "{}", diff(&allowed, &expected));
}

/// RabbitMQ's boot definitions are the topology the services declare (so a service's declare
/// never meets a queue with other arguments), and Redpanda's topic list is the services' topics.
#[test]
fn broker_topology_matches_the_code() {
    let path = repo_path("deploy/k8s/base/platform/rabbitmq-definitions.json");
    let expected = rabbit_definitions();
    if std::env::var_os("DEPLOY_CHECKS_BLESS").is_some() {
        let text = serde_json::to_string_pretty(&expected).expect("json") + "\n";
        std::fs::write(&path, text).expect("write definitions");
    }
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("definitions"))
        .expect("definitions json");
    assert_eq!(
        file,
        expected,
        "{} differs from messaging::topology::platform() (DEPLOY_CHECKS_BLESS=1 rewrites it)",
        path.display()
    );

    let docs = base();
    let redpanda = find(&docs, "StatefulSet", "messaging", "redpanda");
    let script = redpanda["spec"]["template"]["spec"]["containers"]
        .as_array()
        .expect("containers")
        .iter()
        .find(|c| c["name"] == "topics")
        .expect("topics sidecar")["args"][0]
        .as_str()
        .expect("script")
        .to_owned();
    for topic in messaging::topology::kafka_topics(&contracts::names::Topics::default(), 4) {
        assert!(
            script.contains(&format!(" {} ", topic.name))
                || script.contains(&format!(" {};", topic.name)),
            "Redpanda creates {}",
            topic.name
        );
        assert!(
            script.contains(&format!("{}.dlq", topic.name)),
            "{}.dlq",
            topic.name
        );
    }
}

/// The platform topology as RabbitMQ definitions (vhost `/`, durable exchanges, queues with the
/// arguments `messaging::rabbit` declares them with, bindings).
fn rabbit_definitions() -> Value {
    let t = messaging::topology::platform();
    let exchanges: Vec<Value> = t
        .exchanges
        .iter()
        .map(|x| {
            serde_json::json!({
                "name": x.name, "vhost": "/",
                "type": match x.kind { messaging::broker::ExchangeKind::Fanout => "fanout", messaging::broker::ExchangeKind::Direct => "direct" },
                "durable": true, "auto_delete": false, "internal": false, "arguments": {}
            })
        })
        .collect();
    let queues: Vec<Value> = t
        .queues
        .iter()
        .filter(|q| q.durable && !q.exclusive)
        .map(|q| {
            let mut args = BTreeMap::new();
            if q.dead_letter {
                args.insert(
                    "x-dead-letter-exchange",
                    contracts::names::exchanges::DEAD_LETTER.to_owned(),
                );
                args.insert("x-dead-letter-routing-key", q.name.clone());
            }
            serde_json::json!({
                "name": q.name, "vhost": "/", "durable": true, "auto_delete": q.auto_delete,
                "arguments": args
            })
        })
        .collect();
    let bindings: Vec<Value> = t
        .bindings
        .iter()
        .map(|b| {
            serde_json::json!({
                "source": b.exchange, "vhost": "/", "destination": b.queue,
                "destination_type": "queue", "routing_key": b.routing_key, "arguments": {}
            })
        })
        .collect();
    serde_json::json!({
        "vhosts": [{"name": "/"}],
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings
    })
}

/// scripts/gen-secrets.sh k8s and scripts/dev-tls.sh k8s create every Secret (and key) the
/// manifests reference, and what they print validates.
#[test]
fn the_secret_scripts_cover_every_secret_reference() {
    let dir = tempfile::tempdir().expect("tempdir");
    let env_file = dir.path().join("compose/.env");
    let run_script = |script: &str| -> String {
        let out = std::process::Command::new(repo_path(script))
            .arg("k8s")
            .env("ENV_FILE", &env_file)
            .env("TLS_DIR", dir.path().join("tls"))
            .output()
            .expect("run script");
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let text = run_script("scripts/gen-secrets.sh") + &run_script("scripts/dev-tls.sh");
    let file = dir.path().join("secrets.yaml");
    std::fs::write(&file, &text).expect("write");
    let validate = tool("kubernetes-validate").expect("kubernetes-validate");
    let out = run(
        &validate,
        &[
            "--strict",
            "--kubernetes-version",
            KUBERNETES_VERSION,
            "--quiet",
            &file.to_string_lossy(),
        ],
    )
    .expect("kubernetes-validate");
    assert!(
        out.success && out.stdout.trim().is_empty(),
        "{}{}",
        out.stdout,
        out.stderr
    );

    let mut have: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for s in deploy_checks::yaml_docs(&text).expect("yaml") {
        let keys = s["stringData"]
            .as_object()
            .or(s["data"].as_object())
            .into_iter()
            .flatten()
            .map(|(k, v)| {
                assert!(
                    v.as_str().is_some_and(|v| !v.is_empty())
                        || k.ends_with("_API_KEY") && k != "INTERNAL_AUTH_API_KEY",
                    "{}: {k} is empty",
                    manifest_id(&s)
                );
                k.clone()
            })
            .collect();
        have.insert(
            (
                s["metadata"]["namespace"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                s["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
            ),
            keys,
        );
    }
    for root in kustomize_roots().expect("roots") {
        for doc in kustomize(&root).expect("kustomize") {
            let ns = doc["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let pod = &doc["spec"]["template"]["spec"];
            for c in pod["containers"].as_array().into_iter().flatten() {
                for e in c["env"].as_array().into_iter().flatten() {
                    let r = &e["valueFrom"]["secretKeyRef"];
                    if let (Some(name), Some(key)) = (r["name"].as_str(), r["key"].as_str()) {
                        let keys = have.get(&(ns.clone(), name.to_owned())).unwrap_or_else(|| {
                            panic!("{}: Secret {ns}/{name} is not generated", manifest_id(&doc))
                        });
                        assert!(
                            keys.contains(key),
                            "{}: {ns}/{name} has no {key}",
                            manifest_id(&doc)
                        );
                    }
                }
            }
            for v in pod["volumes"].as_array().into_iter().flatten() {
                if let Some(name) = v["secret"]["secretName"].as_str() {
                    assert!(
                        have.contains_key(&(ns.clone(), name.to_owned())),
                        "Secret {ns}/{name}"
                    );
                }
            }
            if doc["kind"] == "Ingress" {
                for t in doc["spec"]["tls"].as_array().into_iter().flatten() {
                    let name = t["secretName"].as_str().expect("secretName");
                    assert!(
                        have.contains_key(&(ns.clone(), name.to_owned())),
                        "TLS Secret {ns}/{name}"
                    );
                }
            }
        }
    }
}
