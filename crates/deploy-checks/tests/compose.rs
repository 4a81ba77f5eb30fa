//! The compose stack (seed 004): every service the issue names is there, every `${VAR}` it
//! uses is in .env.example (which holds no secret values), the containers of each flow edge
//! share a network, Kong routes /graphql to oauth2-proxy with Redis rate limiting against a
//! Redis that exists, and the Keycloak realm has what the platform needs.

#[path = "support/flows.rs"]
mod flows;

use std::collections::{BTreeMap, BTreeSet};

use deploy_checks::{repo_path, yaml_file};
use regex::Regex;
use serde_json::Value;

fn compose() -> Value {
    yaml_file(&repo_path("deploy/compose/compose.yaml"))
        .expect("compose.yaml")
        .remove(0)
}

#[test]
fn the_stack_has_every_part_of_seed_004_and_the_platform() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    for name in [
        "traefik",
        "kong",
        "oauth2-proxy",
        "keycloak",
        "postgres",
        "pgbouncer",
        "redis",
        "minio",
        "rabbitmq",
        "redpanda",
        "otel-collector",
        "jaeger",
        "prometheus",
        "alertmanager",
        "grafana",
    ]
    .into_iter()
    .chain(flows::SERVICES)
    {
        assert!(services.contains_key(name), "compose has {name}");
    }
    for (name, s) in services {
        for dep in s["depends_on"]
            .as_object()
            .map(|o| o.keys().cloned().collect::<Vec<_>>())
            .or_else(|| {
                s["depends_on"].as_array().map(|a| {
                    a.iter()
                        .filter_map(|v| v.as_str().map(str::to_owned))
                        .collect()
                })
            })
            .unwrap_or_default()
        {
            assert!(
                services.contains_key(&dep),
                "{name} depends on missing {dep}"
            );
        }
    }
    let gateway_replicas = c["services"]["graph-gateway"]["deploy"]["replicas"]
        .as_u64()
        .unwrap_or(1);
    assert!(gateway_replicas >= 2, "graph-gateway replicas");
}

#[test]
fn every_variable_is_in_env_example_and_no_secret_is_committed() {
    let text = std::fs::read_to_string(repo_path("deploy/compose/compose.yaml")).expect("compose");
    let var = Regex::new(r"\$\{([A-Z][A-Z0-9_]*)(?::?[-?][^}]*)?\}").expect("regex");
    let used: BTreeSet<String> = var.captures_iter(&text).map(|c| c[1].to_owned()).collect();
    let example = std::fs::read_to_string(repo_path(".env.example")).expect(".env.example");
    let mut defined = BTreeMap::new();
    for line in example
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (k, v) = line.split_once('=').expect("KEY=value in .env.example");
        defined.insert(k.to_owned(), v.to_owned());
    }
    for v in &used {
        assert!(defined.contains_key(v), ".env.example lacks {v}");
    }
    for (k, v) in &defined {
        if k.contains("PASSWORD")
            || k.contains("SECRET")
            || k.ends_with("_KEY")
            || k.ends_with("_USER")
        {
            assert!(
                v.is_empty(),
                ".env.example: {k} must be empty (scripts/gen-secrets.sh fills it)"
            );
        }
    }
    // Secrets never appear literally in the files that are committed.
    let realm =
        std::fs::read_to_string(repo_path("deploy/keycloak/trackunit-realm.json")).expect("realm");
    let secret_value = Regex::new(r#""(secret|value)"\s*:\s*"([^"]*)""#).expect("regex");
    for c in secret_value.captures_iter(&realm) {
        assert!(
            c[2].starts_with("${"),
            "the realm's {} is a placeholder, not {}",
            &c[1],
            &c[2]
        );
    }
    let gitignore = std::fs::read_to_string(repo_path("deploy/.gitignore")).unwrap_or_default();
    for ignored in ["/compose/.env", "/compose/secrets/"] {
        assert!(
            gitignore.lines().any(|l| l.trim() == ignored),
            "deploy/.gitignore has {ignored}"
        );
    }
}

/// The compose service that plays each node of the flows.
fn compose_name(node: &str) -> Option<&str> {
    match node {
        "internet" | "lan-client" | "kube-apiserver" | "kube-dns" => None,
        other => Some(other),
    }
}

#[test]
fn each_flow_edge_shares_a_network() {
    let c = compose();
    let services = c["services"].as_object().expect("services");
    let networks = |name: &str| -> BTreeSet<String> {
        match &services[name]["networks"] {
            Value::Array(a) => a
                .iter()
                .filter_map(|v| v.as_str().map(str::to_owned))
                .collect(),
            Value::Object(o) => o.keys().cloned().collect(),
            _ => BTreeSet::from(["default".to_owned()]),
        }
    };
    let mut problems = Vec::new();
    for (from, to, _, _) in flows::flow_edges() {
        let (Some(a), Some(b)) = (compose_name(&from), compose_name(&to)) else {
            continue;
        };
        if !services.contains_key(a) || !services.contains_key(b) {
            continue;
        }
        if networks(a).is_disjoint(&networks(b)) {
            problems.push(format!("{a} -> {b}: no shared network"));
        }
    }
    // Compose-only edges: Traefik in front of Kong, MinIO, Grafana; Keycloak for the OIDC
    // checks; Prometheus scrapes, traces to Jaeger, alerts to Alertmanager, Grafana's sources.
    for (a, b) in [
        ("traefik", "kong"),
        ("traefik", "minio"),
        ("traefik", "grafana"),
        ("oauth2-proxy", "keycloak"),
        ("graph-gateway", "keycloak"),
        ("otel-collector", "jaeger"),
        ("prometheus", "alertmanager"),
        ("grafana", "prometheus"),
        ("grafana", "jaeger"),
        ("redpanda-init", "redpanda"),
        ("rabbitmq-init", "rabbitmq"),
    ] {
        if networks(a).is_disjoint(&networks(b)) {
            problems.push(format!("{a} -> {b}: no shared network"));
        }
    }
    // No data store is on the edge network.
    for store in ["postgres", "pgbouncer", "rabbitmq", "redpanda"] {
        if networks(store).contains("edge") {
            problems.push(format!("{store} is on the edge network"));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn kong_routes_graphql_to_oauth2_proxy_with_redis_rate_limiting() {
    let kong = yaml_file(&repo_path("deploy/kong/kong.yaml"))
        .expect("kong.yaml")
        .remove(0);
    let c = compose();
    let services = c["services"].as_object().expect("services");
    let upstream = &kong["upstreams"][0];
    assert_eq!(upstream["targets"][0]["target"], "oauth2-proxy:4180");
    let svc = &kong["services"][0];
    assert_eq!(svc["host"], upstream["name"]);
    let route = &svc["routes"][0];
    assert_eq!(route["paths"][0], "/graphql");
    assert_eq!(route["strip_path"], false);
    assert_eq!(route["response_buffering"], false, "subscriptions stream");
    let rl = svc["plugins"]
        .as_array()
        .expect("plugins")
        .iter()
        .find(|p| p["name"] == "rate-limiting")
        .expect("rate-limiting");
    assert_eq!(rl["config"]["policy"], "redis");
    let host = rl["config"]["redis"]["host"].as_str().expect("redis host");
    assert!(
        services.contains_key(host),
        "Kong's Redis `{host}` exists (the original's did not)"
    );
    // oauth2-proxy in bearer mode in front of graph-gateway.
    let o = &services["oauth2-proxy"]["environment"];
    assert_eq!(o["OAUTH2_PROXY_SKIP_JWT_BEARER_TOKENS"], "true");
    assert_eq!(o["OAUTH2_PROXY_UPSTREAMS"], "http://graph-gateway:8080");
    assert_eq!(
        o["OAUTH2_PROXY_OIDC_ISSUER_URL"], services["graph-gateway"]["environment"]["OIDC_ISSUER"],
        "oauth2-proxy and graph-gateway trust the same issuer"
    );
}

#[test]
fn the_keycloak_realm_has_the_api_client_the_device_client_and_a_test_user() {
    let realm: Value = serde_json::from_str(
        &std::fs::read_to_string(repo_path("deploy/keycloak/trackunit-realm.json")).expect("realm"),
    )
    .expect("realm json");
    assert_eq!(realm["realm"], "trackunit");
    let scope = realm["clientScopes"]
        .as_array()
        .expect("clientScopes")
        .iter()
        .find(|s| s["name"] == "analysis")
        .expect("scope analysis");
    let audience = scope["protocolMappers"]
        .as_array()
        .expect("mappers")
        .iter()
        .find(|m| m["protocolMapper"] == "oidc-audience-mapper")
        .expect("audience mapper");
    let clients = realm["clients"].as_array().expect("clients");
    let api = clients
        .iter()
        .find(|c| c["clientId"] == "trackunit-api")
        .expect("api client");
    assert_eq!(
        audience["config"]["included.client.audience"],
        api["clientId"]
    );
    assert!(
        api["defaultClientScopes"]
            .as_array()
            .expect("scopes")
            .iter()
            .any(|s| s == "analysis")
    );
    let cli = clients
        .iter()
        .find(|c| c["clientId"] == "trackunit-cli")
        .expect("cli client");
    assert_eq!(cli["publicClient"], true);
    assert_eq!(
        cli["attributes"]["oauth2.device.authorization.grant.enabled"],
        "true"
    );
    assert!(
        realm["users"]
            .as_array()
            .expect("users")
            .iter()
            .any(|u| u["username"] == "test-user")
    );
    let c = compose();
    assert_eq!(
        c["services"]["graph-gateway"]["environment"]["OIDC_AUDIENCES"], api["clientId"],
        "the gateway accepts the audience the realm puts in tokens"
    );
}
