"""The peer for the recognition bench: RapidOCR (rapidocr-onnxruntime 1.4.4 on onnxruntime).
Reads image paths from argv[2:], one onnxruntime intra-op thread (argv[1] = threads), prints one
JSON line per image: {"file", "ms", "texts"} (after a warm-up on the first image)."""
import json
import sys
import time

from rapidocr_onnxruntime import RapidOCR

threads = int(sys.argv[1])
engine = RapidOCR(intra_op_num_threads=threads, inter_op_num_threads=1)
files = sys.argv[2:]
if files:
    engine(files[0])
for f in files:
    t0 = time.perf_counter()
    result, _ = engine(f)
    ms = (time.perf_counter() - t0) * 1000.0
    texts = [r[1] for r in (result or [])]
    print(json.dumps({"file": f, "ms": ms, "texts": texts}), flush=True)
