#!/usr/bin/env bash
# Installs the tools the deployment checks (crates/deploy-checks) run, idempotently:
#   - kubernetes-validate (PyPI, pinned; bundles the Kubernetes schemas, validates offline)
#     into a venv at $DEPLOY_TOOLS_DIR/venv (default ~/.cache/trackunit-deploy-tools)
#   - promtool (Debian `prometheus`) and amtool (Debian `prometheus-alertmanager`)
#   - kubectl (for `kubectl kustomize`; from the machine's apt sources if missing)
# `scripts/deploy-tools.sh env` prints the env file the tests read (DEPLOY_TOOLS_DIR).
# Nothing is started: the Debian packages' daemons are stopped and disabled if apt starts them.
set -euo pipefail

KUBERNETES_VALIDATE_VERSION=1.37.0
DIR="${DEPLOY_TOOLS_DIR:-$HOME/.cache/trackunit-deploy-tools}"
log() { printf '[deploy-tools] %s\n' "$*" >&2; }

if [ "${1:-}" = env ]; then
    echo "export DEPLOY_TOOLS_DIR=$DIR"
    exit 0
fi

mkdir -p "$DIR"

# promtool, amtool
if ! command -v promtool >/dev/null || ! command -v amtool >/dev/null; then
    log "installing prometheus, prometheus-alertmanager (Debian)"
    export DEBIAN_FRONTEND=noninteractive
    # No daemons from the packages: the checks only need the command-line tools.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
    fi
    apt-get update -qq || true
    apt-get install -y -qq --no-install-recommends prometheus prometheus-alertmanager >/dev/null
    [ "$created_policy" = 1 ] && rm -f "$policy"
fi
command -v promtool >/dev/null || { log "promtool missing after install"; exit 1; }
command -v amtool >/dev/null || { log "amtool missing after install"; exit 1; }

# kubectl (its built-in kustomize renders the overlays)
if ! kubectl kustomize --help >/dev/null 2>&1; then
    log "installing kubectl"
    apt-get update -qq || true
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends kubectl >/dev/null
fi
kubectl kustomize --help >/dev/null 2>&1 || { log "kubectl with kustomize missing after install"; exit 1; }

# kubernetes-validate, pinned, in its own venv
venv="$DIR/venv"
have=""
if [ -x "$venv/bin/python" ]; then
    have="$("$venv/bin/python" -c 'import importlib.metadata as m; print(m.version("kubernetes-validate"))' 2>/dev/null || true)"
fi
if [ "$have" != "$KUBERNETES_VALIDATE_VERSION" ]; then
    log "installing kubernetes-validate==$KUBERNETES_VALIDATE_VERSION into $venv"
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
fi
"$venv/bin/kubernetes-validate" --version >/dev/null 2>&1 || "$venv/bin/kubernetes-validate" --help >/dev/null
log "ready: promtool, amtool, kubectl, $venv/bin/kubernetes-validate"
