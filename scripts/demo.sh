#!/usr/bin/env bash
# The main job on the default model (all-MiniLM-L6-v2): installs what it needs into .cache/
# (pinned, idempotent, offline once cached), builds qfuse, imports the model (IR summary),
# compiles it with the fp8 recipe to a .plan (calibration, Q/DQ, fusion report, CUDA kernels from
# templates compiled by NVRTC to sm_90a), shows what the plan holds, measures the recipe's
# accuracy against FP32 on held-out texts, and embeds a few sentences: on the GPU from the plan
# when one is present (then also checks the plan against the interpreter and times it), else with
# the reference interpreter running the same fused FP8 graph. Then the default decoder
# (SmolLM2-135M-Instruct from its GGUF): greedy generation with the fp8 recipe and an FP8 KV cache,
# from a compiled decoder plan on the GPU when one is present, else on the reference interpreter,
# streamed as it comes.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/cache.sh"
qfuse_ensure_model
qfuse_ensure_decoder
qfuse_ensure_nvrtc
cd "$QFUSE_ROOT"
cargo build --release --locked --quiet
qfuse=target/release/qfuse
mkdir -p target/demo
echo "== import =="
"$qfuse" import "$QFUSE_MODEL_DIR" --dump-ir target/demo/minilm.ir
echo
echo "== compile --recipe fp8 -o minilm-fp8.plan (calibrate, insert Q/DQ, fuse, generate CUDA, NVRTC) =="
"$qfuse" compile "$QFUSE_MODEL_DIR" --recipe fp8 -o target/demo/minilm-fp8.plan
echo
echo "== inspect minilm-fp8.plan =="
"$qfuse" inspect target/demo/minilm-fp8.plan
echo
echo "== eval --recipe fp8 (per-layer and end-to-end accuracy vs FP32, held-out texts) =="
"$qfuse" eval "$QFUSE_MODEL_DIR" --recipe fp8
echo
texts=("A man is eating food." "A man is eating a piece of bread." "The new movie is awesome."
  "The new movie is so great." "A woman is playing violin." "The stock market fell sharply today.")
gpu=0
nvidia-smi -L >/dev/null 2>&1 && gpu=1
if [[ "$gpu" == 1 ]]; then
  echo "== run minilm-fp8.plan on the GPU =="
  "$qfuse" run target/demo/minilm-fp8.plan "${texts[@]}"
  echo
  echo "== check the plan against the interpreter, kernel by kernel and end to end =="
  "$qfuse" check target/demo/minilm-fp8.plan --model "$QFUSE_MODEL_DIR" || true
  echo
  echo "== bench: batch 32 x 128 tokens =="
  "$qfuse" bench target/demo/minilm-fp8.plan --batch 32 --seq 128
else
  echo "== embed --recipe fp8 (no GPU here: the reference interpreter runs the plan's fused FP8 graph) =="
  "$qfuse" embed "$QFUSE_MODEL_DIR" --recipe fp8 "${texts[@]}"
fi
echo
question="What is the capital of France? Answer in one sentence."
if [[ "$gpu" == 1 ]]; then
  echo "== SmolLM2-135M-Instruct (GGUF): compile an fp8 decoder plan with an FP8 KV cache, generate on the GPU =="
  "$qfuse" compile "$QFUSE_DECODER_GGUF" --recipe fp8 --kv-cache fp8 --max-seq 2048 -o target/demo/smollm2-fp8.plan
  "$qfuse" generate target/demo/smollm2-fp8.plan --chat --prompt "$question" --max-new-tokens 48
else
  echo "== generate with SmolLM2-135M-Instruct (GGUF), fp8 recipe, fp8 KV cache, reference interpreter (no GPU here) =="
  "$qfuse" generate "$QFUSE_DECODER_GGUF" --recipe fp8 --kv-cache fp8 --chat --prompt "$question" --max-new-tokens 48
fi
