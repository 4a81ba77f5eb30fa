#!/usr/bin/env bash
# The full test suite, with real brokers. This is the README's test command and what CI runs.
#   1. scripts/test-infra.sh up   (installs/starts RabbitMQ, PostgreSQL, tansu, Garage on loopback)
#   2. formatting and lints (cargo fmt --check, clippy -D warnings)
#   3. cargo nextest run --workspace, against those brokers
set -euo pipefail
cd "$(dirname "$0")/.."

phase() { printf '[test.sh %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

phase "test infrastructure"
# Not inside $(...): the output goes nowhere a background daemon could keep open.
scripts/test-infra.sh up >/dev/null
# shellcheck disable=SC1090
. "$(scripts/test-infra.sh env)"

command -v cargo-nextest >/dev/null || cargo install cargo-nextest --locked
scripts/fetch-models.sh >/dev/null  # PP-OCR models, libonnxruntime, tesseract, fonts (crates/recognition)
scripts/deploy-tools.sh  # kubernetes-validate, promtool, amtool, kubectl for crates/deploy-checks

phase "cargo fmt --check"
cargo fmt --all --check
phase "cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
phase "cargo nextest"
cargo nextest run --workspace --locked "$@"
phase "done"
