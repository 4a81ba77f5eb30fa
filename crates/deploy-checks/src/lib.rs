//! Checks of the deployment files: Kubernetes manifests (schemas, NetworkPolicies as a graph,
//! env vars), Prometheus rules and Alertmanager config, Grafana dashboards, the Dockerfile and
//! the compose stack. The checks are in `tests/`; this crate holds what they share: where the
//! repo and the tools are, YAML loading, a NetworkPolicy evaluator and a PromQL metric-name
//! extractor.
//!
//! The external tools (`kubernetes-validate`, `promtool`, `amtool`, `kubectl kustomize`) are
//! installed by `scripts/deploy-tools.sh`; a missing tool is an error, never a skip.

pub mod netpol;
pub mod promql;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// The repository root (two levels above this crate).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// A path relative to the repository root.
pub fn repo_path(rel: &str) -> PathBuf {
    repo_root().join(rel)
}

/// Where `scripts/deploy-tools.sh` installs its tools (`DEPLOY_TOOLS_DIR`, default
/// `~/.cache/trackunit-deploy-tools`).
pub fn tools_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEPLOY_TOOLS_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/trackunit-deploy-tools")
}

#[derive(Debug, thiserror::Error)]
pub enum ToolError {
    #[error(
        "`{0}` is not installed; run scripts/deploy-tools.sh (scripts/test.sh does) and try again"
    )]
    Missing(String),
}

/// A tool on PATH, or the error that says how to install it.
pub fn tool(name: &str) -> Result<PathBuf, ToolError> {
    if name == "kubernetes-validate" {
        let path = tools_dir().join("venv/bin/kubernetes-validate");
        return if path.is_file() {
            Ok(path)
        } else {
            Err(ToolError::Missing(path.display().to_string()))
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| ToolError::Missing(name.to_owned()))
}

/// Output of a finished command.
#[derive(Debug)]
pub struct Run {
    pub success: bool,
    pub stdout: String,
    pub stderr: String,
}

/// Run `program args…` in the repo root.
pub fn run(program: &Path, args: &[&str]) -> anyhow::Result<Run> {
    let out = Command::new(program)
        .args(args)
        .current_dir(repo_root())
        .output()
        .with_context(|| format!("running {}", program.display()))?;
    Ok(Run {
        success: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Every YAML document of `text` as JSON values (empty documents dropped).
pub fn yaml_docs(text: &str) -> anyhow::Result<Vec<Value>> {
    let mut docs = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(text) {
        let mut value = <serde_yaml::Value as serde::Deserialize>::deserialize(doc)?;
        value.apply_merge()?;
        if value.is_null() {
            continue;
        }
        docs.push(serde_json::to_value(value).context("YAML to JSON")?);
    }
    Ok(docs)
}

/// The YAML documents of a file.
pub fn yaml_file(path: &Path) -> anyhow::Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    yaml_docs(&text).with_context(|| format!("parsing {}", path.display()))
}

/// `kubectl kustomize <dir>`: the rendered manifests, as text.
pub fn kustomize_text(dir: &Path) -> anyhow::Result<String> {
    let kubectl = tool("kubectl")?;
    let dir_s = dir.to_string_lossy();
    let out = run(&kubectl, &["kustomize", &dir_s])?;
    if !out.success {
        bail!("kubectl kustomize {dir_s} failed: {}", out.stderr);
    }
    Ok(out.stdout)
}

/// `kubectl kustomize <dir>`: the rendered manifests.
pub fn kustomize(dir: &Path) -> anyhow::Result<Vec<Value>> {
    yaml_docs(&kustomize_text(dir)?)
}

/// The kustomize roots under `deploy/k8s` (base and every overlay).
pub fn kustomize_roots() -> anyhow::Result<Vec<PathBuf>> {
    let mut roots = vec![repo_path("deploy/k8s/base")];
    let overlays = repo_path("deploy/k8s/overlays");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&overlays)
        .with_context(|| format!("reading {}", overlays.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.join("kustomization.yaml").is_file())
        .collect();
    found.sort();
    roots.extend(found);
    Ok(roots)
}

/// `kind/namespace/name` of a manifest.
pub fn manifest_id(doc: &Value) -> String {
    format!(
        "{}/{}/{}",
        doc["kind"].as_str().unwrap_or("?"),
        doc["metadata"]["namespace"].as_str().unwrap_or("-"),
        doc["metadata"]["name"].as_str().unwrap_or("?")
    )
}

/// Field names of a serializable config struct, as the env vars `runtime::config` reads them
/// (serde name, upper-cased).
pub fn env_names<T: serde::Serialize>(config: &T) -> anyhow::Result<Vec<String>> {
    match serde_json::to_value(config)? {
        Value::Object(map) => Ok(map.keys().map(|k| k.to_uppercase()).collect()),
        other => bail!("a config struct serializes to an object, not {other}"),
    }
}

/// All files under `dir` (recursively) whose name ends with one of `exts`, sorted.
pub fn files_under(dir: &Path, exts: &[&str]) -> anyhow::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let path = entry?.path();
            if path.is_dir() {
                stack.push(path);
            } else if exts.iter().any(|e| path.to_string_lossy().ends_with(e)) {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}
