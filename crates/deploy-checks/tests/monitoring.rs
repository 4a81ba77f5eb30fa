//! Prometheus, Alertmanager, the OTel collector and Grafana's files: `promtool check rules`,
//! `promtool test rules` (the alerts fire on the series they are for), `promtool check config`
//! (with the rule files), `amtool check-config`, and the collector and dashboard structure.

use std::collections::BTreeSet;

use deploy_checks::{files_under, repo_path, run, tool, yaml_file};
use serde_json::Value;

fn rule_files() -> Vec<std::path::PathBuf> {
    let files: Vec<_> = files_under(&repo_path("deploy/prometheus/rules"), &[".yml"])
        .expect("rules")
        .into_iter()
        .filter(|f| !f.to_string_lossy().ends_with(".test.yml"))
        .collect();
    assert!(!files.is_empty(), "rule files");
    files
}

#[test]
fn promtool_checks_the_rules_and_their_unit_tests_pass() {
    let promtool = tool("promtool").expect("promtool");
    for f in rule_files() {
        let out = run(&promtool, &["check", "rules", &f.to_string_lossy()]).expect("promtool");
        assert!(out.success, "{}: {}{}", f.display(), out.stdout, out.stderr);
    }
    let tests = files_under(&repo_path("deploy/prometheus/rules"), &[".test.yml"]).expect("tests");
    assert!(!tests.is_empty(), "rule unit tests");
    for t in tests {
        let out = run(&promtool, &["test", "rules", &t.to_string_lossy()]).expect("promtool");
        assert!(out.success, "{}: {}{}", t.display(), out.stdout, out.stderr);
    }
}

#[test]
fn promtool_checks_the_prometheus_config_with_its_rules() {
    let promtool = tool("promtool").expect("promtool");
    let text =
        std::fs::read_to_string(repo_path("deploy/prometheus/prometheus.yml")).expect("config");
    // The config names the rules where compose mounts them; point it at the repo's copy.
    assert!(text.contains("/etc/prometheus/rules/*.rules.yml"));
    let rules = repo_path("deploy/prometheus/rules");
    let local = text.replace("/etc/prometheus/rules", &rules.to_string_lossy());
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("prometheus.yml");
    std::fs::write(&file, local).expect("write");
    let out = run(&promtool, &["check", "config", &file.to_string_lossy()]).expect("promtool");
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    let combined = out.stdout + &out.stderr;
    assert!(
        combined.contains("rule files found"),
        "the rule files are loaded: {combined}"
    );
    // Every service is a scrape job named after it (the dashboards' `job` label).
    let config = yaml_file(&repo_path("deploy/prometheus/prometheus.yml")).expect("yaml");
    let jobs: BTreeSet<&str> = config[0]["scrape_configs"]
        .as_array()
        .expect("scrape_configs")
        .iter()
        .filter_map(|j| j["job_name"].as_str())
        .collect();
    for s in [
        "graph-gateway",
        "tu-ingestion-service",
        "tu-media-access-service",
        "svc-messaging-bridge",
        "svc-analysis-orchestrator",
        "svc-ai-vision-adapter",
        "rabbitmq",
        "redpanda",
    ] {
        assert!(jobs.contains(s), "scrape job {s}");
    }
}

#[test]
fn amtool_checks_the_alertmanager_config() {
    let amtool = tool("amtool").expect("amtool");
    let file = repo_path("deploy/alertmanager/alertmanager.yml");
    let out = run(&amtool, &["check-config", &file.to_string_lossy()]).expect("amtool");
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    // Every severity the rules use is routed somewhere on purpose.
    let rules: BTreeSet<String> = rule_files()
        .iter()
        .flat_map(|f| {
            let docs = yaml_file(f).expect("rules yaml");
            docs[0]["groups"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .into_iter()
                .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
                .filter_map(|r| r["labels"]["severity"].as_str().map(str::to_owned))
                .collect::<Vec<_>>()
        })
        .collect();
    let am = std::fs::read_to_string(&file).expect("alertmanager.yml");
    for sev in rules {
        assert!(
            am.contains(&format!("severity=\"{sev}\""))
                || am.contains("severity=~\"") && am.contains(&sev),
            "alertmanager routes severity {sev}"
        );
    }
}

#[test]
fn the_collector_keeps_service_names_and_exports_traces() {
    let c = yaml_file(&repo_path("deploy/otel/collector.yaml"))
        .expect("collector")
        .remove(0);
    let traces = &c["service"]["pipelines"]["traces"];
    assert!(
        traces["receivers"]
            .as_array()
            .expect("receivers")
            .iter()
            .any(|r| r == "otlp")
    );
    for e in traces["exporters"].as_array().expect("exporters") {
        let name = e.as_str().expect("exporter");
        assert!(
            c["exporters"][name].is_object(),
            "exporter {name} is defined"
        );
    }
    for p in traces["processors"].as_array().expect("processors") {
        let name = p.as_str().expect("processor");
        assert!(
            c["processors"][name].is_object(),
            "processor {name} is defined"
        );
        assert!(
            !name.starts_with("resource")
                && !name.starts_with("attributes")
                && !name.starts_with("transform"),
            "{name} could rewrite service.name"
        );
    }
    assert_eq!(
        c["receivers"]["otlp"]["protocols"]["http"]["endpoint"],
        "0.0.0.0:4318"
    );
}

#[test]
fn dashboards_are_grafana_dashboards_on_the_provisioned_datasource() {
    let ds = yaml_file(&repo_path(
        "deploy/grafana/provisioning/datasources/datasources.yaml",
    ))
    .expect("datasources")
    .remove(0);
    let uids: BTreeSet<&str> = ds["datasources"]
        .as_array()
        .expect("datasources")
        .iter()
        .filter_map(|d| d["uid"].as_str())
        .collect();
    let mut seen = BTreeSet::new();
    let files =
        files_under(&repo_path("deploy/grafana/dashboards"), &[".json"]).expect("dashboards");
    assert!(files.len() >= 3, "{files:?}");
    for f in files {
        let d: Value =
            serde_json::from_str(&std::fs::read_to_string(&f).expect("read")).expect("json");
        let uid = d["uid"].as_str().expect("uid").to_owned();
        assert!(seen.insert(uid.clone()), "duplicate uid {uid}");
        assert!(
            d["title"].is_string() && d["schemaVersion"].is_number(),
            "{}",
            f.display()
        );
        let panels = d["panels"].as_array().expect("panels");
        assert!(!panels.is_empty());
        let mut ids = BTreeSet::new();
        for p in panels {
            assert!(
                ids.insert(p["id"].as_u64().expect("panel id")),
                "{uid}: panel ids unique"
            );
            let pds = p["datasource"]["uid"].as_str().expect("panel datasource");
            assert!(uids.contains(pds), "{uid}: datasource {pds} is provisioned");
            let targets = p["targets"].as_array().expect("targets");
            assert!(!targets.is_empty(), "{uid}: {} has queries", p["title"]);
            for t in targets {
                assert!(t["expr"].as_str().is_some_and(|e| !e.trim().is_empty()));
            }
        }
    }
}
