#!/usr/bin/env bash
# The main job on the default model (all-MiniLM-L6-v2): installs what it needs into .cache/
# (pinned, idempotent, offline once cached), builds qfuse, imports the model, prints the IR
# summary, and embeds a few sentences with the reference interpreter.
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
echo "== embed (reference interpreter, f32) =="
"$qfuse" embed "$QFUSE_MODEL_DIR" \
  "A man is eating food." \
  "A man is eating a piece of bread." \
  "The new movie is awesome." \
  "The new movie is so great." \
  "A woman is playing violin." \
  "The stock market fell sharply today."
