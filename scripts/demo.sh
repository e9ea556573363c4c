#!/usr/bin/env bash
# The main job on the default model (all-MiniLM-L6-v2): installs what it needs into .cache/
# (pinned, idempotent, offline once cached), builds qfuse, imports the model (IR summary),
# quantizes it with the fp8 recipe (calibration, Q/DQ, fusion: the fusion report), measures the
# accuracy against FP32 on held-out texts, and embeds a few sentences with the fused FP8 graph.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/cache.sh"
qfuse_ensure_model
qfuse_ensure_nvrtc
cd "$QFUSE_ROOT"
cargo build --release --locked --quiet
qfuse=target/release/qfuse
mkdir -p target/demo
echo "== import =="
"$qfuse" import "$QFUSE_MODEL_DIR" --dump-ir target/demo/minilm.ir
echo
echo "== compile --recipe fp8 (calibrate, insert Q/DQ, fuse) =="
"$qfuse" compile "$QFUSE_MODEL_DIR" --recipe fp8 --emit ir -o target/demo/minilm-fp8.ir
echo
echo "== eval --recipe fp8 (per-layer and end-to-end accuracy vs FP32, held-out texts) =="
"$qfuse" eval "$QFUSE_MODEL_DIR" --recipe fp8
echo
echo "== embed --recipe fp8 (reference interpreter running the fused FP8 graph) =="
"$qfuse" embed "$QFUSE_MODEL_DIR" --recipe fp8 \
  "A man is eating food." \
  "A man is eating a piece of bread." \
  "The new movie is awesome." \
  "The new movie is so great." \
  "A woman is playing violin." \
  "The stock market fell sharply today."
