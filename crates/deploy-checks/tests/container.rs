//! The Dockerfile and its build, as far as this machine goes without Docker: multi-stage, a
//! non-root runtime, exactly the workspace's binaries (the list in scripts/container-build.sh,
//! which the build stage runs, equals `cargo metadata`'s [[bin]] targets), and every binary a
//! manifest or the compose file runs is in the image. The release build itself is not run here
//! (minutes on two cores): `scripts/container-build.sh OUT` runs it, see docs/deployment.md.

use std::collections::BTreeSet;

use deploy_checks::{kustomize, kustomize_roots, repo_path, run, yaml_file};
use regex::Regex;

fn workspace_binaries() -> BTreeSet<String> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = run(
        std::path::Path::new(&cargo),
        &["metadata", "--no-deps", "--format-version", "1"],
    )
    .expect("cargo metadata");
    assert!(out.success, "cargo metadata: {}", out.stderr);
    let meta: serde_json::Value = serde_json::from_str(&out.stdout).expect("metadata json");
    meta["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter(|t| {
            t["kind"]
                .as_array()
                .is_some_and(|k| k.iter().any(|k| k == "bin"))
        })
        .filter_map(|t| t["name"].as_str().map(str::to_owned))
        .collect()
}

fn script_binaries() -> BTreeSet<String> {
    let script = std::fs::read_to_string(repo_path("scripts/container-build.sh")).expect("script");
    let block = script
        .split("BINARIES=(")
        .nth(1)
        .and_then(|s| s.split(')').next())
        .expect("BINARIES=( … ) in scripts/container-build.sh");
    block.split_whitespace().map(str::to_owned).collect()
}

#[test]
fn the_dockerfile_is_multi_stage_non_root_and_ships_every_binary() {
    let dockerfile = std::fs::read_to_string(repo_path("Dockerfile")).expect("Dockerfile");
    let from = Regex::new(r"(?m)^FROM\s+(\S+)(?:\s+AS\s+(\S+))?").expect("regex");
    let stages: Vec<(String, Option<String>)> = from
        .captures_iter(&dockerfile)
        .map(|c| (c[1].to_owned(), c.get(2).map(|m| m.as_str().to_owned())))
        .collect();
    assert!(stages.len() >= 2, "multi-stage: {stages:?}");
    let (runtime_base, runtime_name) = stages.last().expect("a final stage");
    assert_eq!(runtime_name.as_deref(), Some("runtime"));
    assert!(
        runtime_base.contains("slim") || runtime_base.contains("distroless"),
        "a small runtime base, not {runtime_base}"
    );
    // The final stage runs as a non-root user, by uid.
    let final_stage = dockerfile.rsplit("\nFROM ").next().expect("final stage");
    let user = Regex::new(r"(?m)^USER\s+(\S+)").expect("regex");
    let users: Vec<String> = user
        .captures_iter(final_stage)
        .map(|c| c[1].to_owned())
        .collect();
    let last = users.last().expect("USER in the runtime stage");
    let uid = last.split(':').next().unwrap_or_default();
    assert!(
        uid.parse::<u32>().is_ok_and(|u| u >= 1000),
        "USER {last}: a numeric non-root uid (Kubernetes runAsNonRoot can check it)"
    );
    // The build stage runs the same script as CI; the runtime gets its output and the models.
    assert!(dockerfile.contains("scripts/container-build.sh /out"));
    assert!(final_stage.contains("COPY --from=build /out/ /"));
    assert!(final_stage.contains("COPY --from=models"));

    let workspace = workspace_binaries();
    let listed = script_binaries();
    assert_eq!(
        listed, workspace,
        "scripts/container-build.sh BINARIES = the workspace's binaries"
    );
    let documented: BTreeSet<String> = Regex::new(r"(?m)^#\s+/usr/local/bin/(\S+)")
        .expect("regex")
        .captures_iter(&dockerfile)
        .map(|c| c[1].to_owned())
        .collect();
    assert_eq!(documented, workspace, "the Dockerfile's list of binaries");
}

#[test]
fn the_build_script_checks_itself_without_building() {
    let out = run(
        &repo_path("scripts/container-build.sh"),
        &["/tmp/deploy-checks-never-written", "--check"],
    )
    .expect("container-build.sh --check");
    assert!(out.success, "{}{}", out.stdout, out.stderr);
    assert!(
        out.stdout
            .contains("cargo build --locked --profile release"),
        "{}",
        out.stdout
    );
    for b in workspace_binaries() {
        assert!(out.stdout.contains(&format!("--bin {b}")), "{b} is built");
    }
}

#[test]
fn every_binary_run_by_a_manifest_or_compose_is_in_the_image() {
    let image = script_binaries();
    let mut run_by = BTreeSet::new();
    for root in kustomize_roots().expect("roots") {
        for doc in kustomize(&root).expect("kustomize") {
            for c in doc["spec"]["template"]["spec"]["containers"]
                .as_array()
                .into_iter()
                .flatten()
            {
                if let Some(b) = c["command"][0]
                    .as_str()
                    .and_then(|c| c.strip_prefix("/usr/local/bin/"))
                {
                    assert!(
                        c["image"].as_str().is_some_and(|i| i.contains("trackunit")),
                        "{b}: runs from the trackunit image"
                    );
                    run_by.insert(b.to_owned());
                }
            }
        }
    }
    let compose = yaml_file(&repo_path("deploy/compose/compose.yaml")).expect("compose");
    for (_, s) in compose[0]["services"].as_object().expect("services") {
        if let Some(b) = s["command"][0]
            .as_str()
            .and_then(|c| c.strip_prefix("/usr/local/bin/"))
        {
            run_by.insert(b.to_owned());
        }
    }
    assert!(run_by.len() >= 6, "{run_by:?}");
    let missing: Vec<&String> = run_by.difference(&image).collect();
    assert!(missing.is_empty(), "not in the image: {missing:?}");
}
