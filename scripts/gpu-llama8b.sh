#!/usr/bin/env bash
# Decoder speed at Llama-3-8B's shape on the GPU machine (issue 13 item 6), after
# `scripts/build-gpu-bundle.sh shapes` here (carry gpu-bundle): writes a random-weight bf16 HF folder of
# that shape there (scripts/llama_shape_folder.py; transformers on the GPU), compiles it with qfuse per
# plan (calibration: two short texts, since the interpreter calibrates an 8B model on the CPU; speed does
# not depend on the scales), benches batch-1/8/16 decode at a 1k context and a 2,048-token prefill, and
# runs the HF peers (eager and torch.compile reduce-overhead, static cache) on the same folder, all in
# one call. Logs: /tmp/gpu-llama8b, archived to $OUT/gpu-llama8b-logs.tgz.
#   PLANS  plans to build (default "fp8+fp8kv fp16"); GEN: new tokens per decode run (default 32)
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=/tmp/gpu-llama8b
mkdir -p "$out"
for f in gpu-bundle/qfuse.gz; do [[ -f "$f" ]] && gunzip -f "$f"; done
chmod +x gpu-bundle/qfuse
export QFUSE_CACHE_DIR="$PWD/gpu-bundle/cache"
q=gpu-bundle/qfuse
model=/tmp/llama3-8b-shape
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1
[[ -f $model/config.json ]] || python3 scripts/llama_shape_folder.py "$model" gpu-bundle/tok 2>&1 | tail -2
printf 'The quick brown fox jumps over the lazy dog.\nWrite a haiku about the sea.\n' >"$out/calib.txt"
declare -A args=([fp16]="--recipe fp16 --kv-cache f16" [fp8+fp8kv]="--recipe fp8 --kv-cache fp8"
    [w4a16]="--recipe w4a16-rtn --kv-cache f16" [nvfp4]="--recipe nvfp4 --kv-cache f16")
plans="${PLANS:-fp8+fp8kv fp16}"
for p in $plans; do
    echo "== $p"
    # shellcheck disable=SC2086
    if ! /usr/bin/time -f "compile: %e s wall, %M KB peak" timeout 420 "$q" --quiet compile "$model" ${args[$p]} \
        --calib-file "$out/calib.txt" --max-seq 2048 --max-batch 16 --max-step 2048 -o "/tmp/l8b-$p.plan" >"$out/compile-$p.log" 2>&1; then
        echo "compile $p FAILED:"; tail -15 "$out/compile-$p.log"; continue
    fi
    grep -E '^plan:|compile:' "$out/compile-$p.log"
    timeout 240 "$q" bench "/tmp/l8b-$p.plan" --prompt-len 1024 --gen "${GEN:-32}" --batch 1,8,16 2>&1 | tail -4
    timeout 120 "$q" bench "/tmp/l8b-$p.plan" --prompt-len 2048 --gen 2 --batch 1 2>&1 | tail -1
    rm -f "/tmp/l8b-$p.plan"
done
echo "== peers (same GPU, same call, same folder)"
timeout 400 python3 scripts/decoder_peer_bench.py --model "$model" --prompt-len 1024 --gen "${GEN:-32}" --batch 1,8 2>&1 | tail -6
tar czf "${OUT:-/tmp}/gpu-llama8b-logs.tgz" -C /tmp gpu-llama8b 2>/dev/null
