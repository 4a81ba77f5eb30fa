#!/usr/bin/env bash
# The Dockerfile's build stage, runnable without Docker: builds the workspace's binaries once
# (release, locked) and lays out the runtime image's files under OUT:
#   OUT/usr/local/bin/<binary>   for every binary below
# Usage: scripts/container-build.sh OUT [--profile release|dev] [--check]
#   --check  only checks that BINARIES equals the workspace's [[bin]] targets (cargo metadata)
#            and prints the cargo command; builds nothing (what the tests run).
set -euo pipefail
cd "$(dirname "$0")/.."

# The image's binaries: the six services and the client/runner.
BINARIES=(
  graph-gateway
  tu-ingestion-service
  tu-media-access-service
  svc-messaging-bridge
  svc-analysis-orchestrator
  svc-ai-vision-adapter
  trackunit
)

out="${1:?usage: scripts/container-build.sh OUT [--profile release|dev] [--check]}"
shift
profile=release
check=0
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --check) check=1; shift ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done

# Every [[bin]] of the workspace must be in the image, and nothing else.
workspace_bins="$(cargo metadata --no-deps --format-version 1 --locked \
  | python3 -c 'import json,sys; m=json.load(sys.stdin); print("\n".join(sorted(t["name"] for p in m["packages"] for t in p["targets"] if "bin" in t["kind"])))')"
listed="$(printf '%s\n' "${BINARIES[@]}" | sort)"
if [ "$workspace_bins" != "$listed" ]; then
  echo "container-build: BINARIES differs from the workspace's binaries:" >&2
  diff <(echo "$workspace_bins") <(echo "$listed") >&2 || true
  exit 1
fi

args=(build --locked --profile "$profile")
for b in "${BINARIES[@]}"; do args+=(--bin "$b"); done
if [ "$check" = 1 ]; then
  echo "cargo ${args[*]}"
  exit 0
fi
cargo "${args[@]}"
target_dir="${CARGO_TARGET_DIR:-$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')}"
dir="$target_dir/$([ "$profile" = dev ] && echo debug || echo "$profile")"
mkdir -p "$out/usr/local/bin"
for b in "${BINARIES[@]}"; do
  install -m 0755 "$dir/$b" "$out/usr/local/bin/$b"
done
echo "container-build: $(ls "$out/usr/local/bin" | wc -l) binaries in $out/usr/local/bin" >&2
