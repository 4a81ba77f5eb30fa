#!/usr/bin/env bash
# Fetch what the offline recognition engine needs, once, into $TRACKUNIT_MODELS_DIR
# (default ~/.local/share/trackunit/models). Idempotent: files already there with the pinned
# sha256 are kept; nothing is downloaded then.
#   - PP-OCRv4 detector + recogniser and the mobile v2.0 direction classifier (ONNX), from the
#     PyPI wheel rapidocr-onnxruntime==1.4.4 (Apache-2.0); the character table is in the
#     recogniser's ONNX metadata (key `character`).
#   - libonnxruntime.so from the PyPI wheel onnxruntime==1.31.1 (MIT), for `ort` (load-dynamic).
#   - Debian tesseract-ocr + tesseract-ocr-eng (the fallback when the ONNX models are absent)
#     and fonts-dejavu-core + fonts-liberation (the generated test set), when apt-get is there.
# Prints the models directory on stdout.
set -euo pipefail

DIR="${TRACKUNIT_MODELS_DIR:-$HOME/.local/share/trackunit/models}"
RAPIDOCR_VERSION=1.4.4
ORT_VERSION=1.31.1
declare -A SHA=(
  [ch_PP-OCRv4_det_infer.onnx]=d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9
  [ch_PP-OCRv4_rec_infer.onnx]=48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b
  [ch_ppocr_mobile_v2.0_cls_infer.onnx]=e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c
  [libonnxruntime.so]=fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3
)

log() { printf '[fetch-models] %s\n' "$*" >&2; }
ok() { [[ -f "$DIR/$1" ]] && [[ "$(sha256sum "$DIR/$1" | cut -d' ' -f1)" == "${SHA[$1]}" ]]; }
check() {
  local got
  got="$(sha256sum "$DIR/$1" | cut -d' ' -f1)"
  if [[ "$got" != "${SHA[$1]}" ]]; then
    log "sha256 mismatch for $1: got $got, pinned ${SHA[$1]}"
    rm -f "$DIR/$1"
    exit 1
  fi
}

mkdir -p "$DIR"
PIP=(python3 -m pip)
command -v python3 >/dev/null || { log "python3 (with pip) is needed to fetch the wheels"; exit 1; }

if ! ok ch_PP-OCRv4_det_infer.onnx || ! ok ch_PP-OCRv4_rec_infer.onnx || ! ok ch_ppocr_mobile_v2.0_cls_infer.onnx; then
  tmp="$(mktemp -d)"; trap 'rm -rf "$tmp"' EXIT
  log "downloading rapidocr-onnxruntime==$RAPIDOCR_VERSION"
  "${PIP[@]}" download --quiet --no-deps --only-binary=:all: "rapidocr-onnxruntime==$RAPIDOCR_VERSION" -d "$tmp"
  python3 - "$tmp"/rapidocr_onnxruntime-*.whl "$DIR" <<'PY'
import sys, zipfile, os
whl, out = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith("rapidocr_onnxruntime/models/") and n.endswith(".onnx"):
            with open(os.path.join(out, os.path.basename(n)), "wb") as f:
                f.write(z.read(n))
PY
  for f in ch_PP-OCRv4_det_infer.onnx ch_PP-OCRv4_rec_infer.onnx ch_ppocr_mobile_v2.0_cls_infer.onnx; do check "$f"; done
fi

if ! ok libonnxruntime.so; then
  if [[ "$(uname -sm)" != "Linux x86_64" ]]; then
    log "no pinned onnxruntime for $(uname -sm); the engine can still use tract (OCR_RUNTIME=tract)"
  else
    tmp2="$(mktemp -d)"
    log "downloading onnxruntime==$ORT_VERSION (for libonnxruntime.so)"
    "${PIP[@]}" download --quiet --no-deps --only-binary=:all: --platform manylinux_2_28_x86_64 \
      --python-version 3.11 "onnxruntime==$ORT_VERSION" -d "$tmp2"
    python3 - "$tmp2"/onnxruntime-*.whl "$DIR" "$ORT_VERSION" <<'PY'
import sys, zipfile, os
whl, out, v = sys.argv[1], sys.argv[2], sys.argv[3]
with zipfile.ZipFile(whl) as z:
    with open(os.path.join(out, "libonnxruntime.so"), "wb") as f:
        f.write(z.read(f"onnxruntime/capi/libonnxruntime.so.{v}"))
PY
    rm -rf "$tmp2"
    check libonnxruntime.so
  fi
fi

# Tesseract and fonts: best effort (root + apt-get); the ONNX path does not need them.
need=()
command -v tesseract >/dev/null || need+=(tesseract-ocr tesseract-ocr-eng)
[[ -d /usr/share/fonts/truetype/dejavu ]] || need+=(fonts-dejavu-core)
[[ -d /usr/share/fonts/truetype/liberation ]] || need+=(fonts-liberation)
if ((${#need[@]})); then
  if command -v apt-get >/dev/null && [[ "$(id -u)" == 0 ]]; then
    log "installing ${need[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1 \
      || { apt-get update -qq >/dev/null 2>&1 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null 2>&1; } \
      || log "could not install ${need[*]}"
  else
    log "missing (install them for the tesseract fallback / test fonts): ${need[*]}"
  fi
fi

echo "$DIR"
