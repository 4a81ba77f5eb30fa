#!/usr/bin/env bash
# A Python venv with RapidOCR (rapidocr-onnxruntime==1.4.4 on onnxruntime==1.31.1), the peer the
# recognition bench compares against. Idempotent. Prints the venv's python on stdout.
set -euo pipefail
VENV="${TRACKUNIT_RAPIDOCR_VENV:-$HOME/.local/share/trackunit/rapidocr-venv}"
if ! "$VENV/bin/python" -c 'import rapidocr_onnxruntime' >/dev/null 2>&1; then
  python3 -m venv "$VENV"
  "$VENV/bin/python" -m pip install --quiet --upgrade pip >&2
  "$VENV/bin/python" -m pip install --quiet "rapidocr-onnxruntime==1.4.4" "onnxruntime==1.31.1" >&2
fi
echo "$VENV/bin/python"
