#!/usr/bin/env bash
# The main job on one machine, embedded defaults: fetch the recognition models, build `trackunit`,
# start the platform (`trackunit up`) in the background unless one already answers on :8080,
# generate a photo of a machine (`trackunit sample`), analyse it (`trackunit analyze`) and print
# what it is. Stops the platform it started, unless KEEP_RUNNING=1.
#
#   TRACKUNIT_DATA_DIR   where the platform keeps its data (default ~/.local/share/trackunit)
#   BRAND, MODEL         the machine to draw (default Caterpillar 320D)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '[demo] %s\n' "$*" >&2; }
listening() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

log "recognition models (PyPI wheels, pinned sha256; skipped when present)"
scripts/fetch-models.sh >/dev/null

log "building trackunit"
cargo build --locked -p trackunit
BIN="${CARGO_TARGET_DIR:-target}/debug/trackunit"

export TRACKUNIT_DATA_DIR="${TRACKUNIT_DATA_DIR:-${XDG_DATA_HOME:-$HOME/.local/share}/trackunit}"
mkdir -p "$TRACKUNIT_DATA_DIR"

UP_PID=""
stop_up() {
  if [ -n "$UP_PID" ] && [ "${KEEP_RUNNING:-0}" != 1 ]; then
    log "stopping the platform"
    kill -TERM "$UP_PID" 2>/dev/null || true
    wait "$UP_PID" 2>/dev/null || true
  fi
}
trap stop_up EXIT

if listening 8080; then
  log "a platform already answers on 127.0.0.1:8080; using it"
else
  log "starting the platform (log: $TRACKUNIT_DATA_DIR/up.log)"
  "$BIN" up >"$TRACKUNIT_DATA_DIR/up.log" 2>&1 &
  UP_PID=$!
  for _ in $(seq 600); do
    if curl -fsS http://127.0.0.1:8080/health/ready >/dev/null 2>&1 \
       && curl -fsS http://127.0.0.1:8085/health/ready >/dev/null 2>&1; then
      break
    fi
    kill -0 "$UP_PID" 2>/dev/null || { cat "$TRACKUNIT_DATA_DIR/up.log" >&2; exit 1; }
    sleep 0.2
  done
  [ "${KEEP_RUNNING:-0}" = 1 ] && log "the platform keeps running (pid $UP_PID); GraphiQL: http://127.0.0.1:8080/graphql"
fi

PHOTO="$TRACKUNIT_DATA_DIR/sample-machine.jpg"
"$BIN" sample --brand "${BRAND:-Caterpillar}" --model "${MODEL:-320D}" "$PHOTO"
"$BIN" analyze --text "$PHOTO"
