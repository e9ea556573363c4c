#!/usr/bin/env bash
# Decoder plans on the GPU machine (after scripts/build-gpu-bundle.sh decoder here; carry
# gpu-bundle and gguf-c after calls carrying gguf-a and gguf-b: the GGUF's three pieces, joined and
# hash-checked first, since one call carries at most 64 MiB):
#   1. compile SmolLM2-135M-Instruct (the default decoder, its real weights) to a plan per recipe;
#   2. `qfuse check` of each plan: 8 prompts of greedy tokens on the GPU and on the interpreter
#      running the plan's own IR on the same steps (first difference, top-two gap, noise, KL);
#   3. `qfuse bench` of each plan (prompt 128, 64 new tokens, batch 1 and 8) beside HF
#      transformers on a SmolLM2-shaped model (eager and torch.compile reduce-overhead, static
#      cache) and the device's copy bandwidth, measured in the same call.
# Logs: /tmp/gpu-decoder, archived to $OUT/gpu-decoder-logs.tgz.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=/tmp/gpu-decoder
mkdir -p "$out"
for f in gpu-bundle/qfuse.gz gpu-bundle/decoder_kernels_gpu.gz; do [[ -f "$f" ]] && gunzip -f "$f"; done
chmod +x gpu-bundle/qfuse gpu-bundle/decoder_kernels_gpu 2>/dev/null
[[ -f gpu-bundle/cache.tgz ]] && tar xzf gpu-bundle/cache.tgz -C gpu-bundle && rm gpu-bundle/cache.tgz
export QFUSE_CACHE_DIR="$PWD/gpu-bundle/cache"
q=gpu-bundle/qfuse
gguf=/tmp/smollm2.gguf
cat gguf-a/part.* gguf-b/part.* gguf-c/part.* > "$gguf"
echo "$(cat gguf-c/sha256)  $gguf" | sha256sum -c - || { echo "GGUF pieces do not join to the pinned file"; exit 1; }
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1
plans="${PLANS:-fp16 fp8+fp8kv}"
declare -A args=([fp16]="--recipe fp16 --kv-cache f16" [fp8+fp8kv]="--recipe fp8 --kv-cache fp8" [w8a16]="--recipe w8a16 --kv-cache f16"
    [int8-sq]="--recipe int8-sq --kv-cache f16" [w4a16-awq]="--recipe w4a16-awq --kv-cache f16" [fp8]="--recipe fp8 --kv-cache f16")
if [[ -x gpu-bundle/decoder_kernels_gpu ]]; then
    echo "== decoder kernels vs the interpreter (tests/decoder_kernels_gpu.rs)"
    timeout 120 gpu-bundle/decoder_kernels_gpu --ignored --test-threads=1 2>&1 | grep -E "^test |test result|panicked|assert" | head -20
fi
echo "== compile"
for p in $plans; do
    # shellcheck disable=SC2086
    if ! timeout 300 "$q" --quiet compile "$gguf" ${args[$p]} --max-seq 1024 --max-batch 8 --max-step 128 -o "/tmp/smol-$p.plan" >"$out/compile-$p.log" 2>&1; then
        echo "compile $p FAILED:"; tail -20 "$out/compile-$p.log"; continue
    fi
    echo "$p: $(grep -E '^plan:' "$out/compile-$p.log")"
done
echo "== check: greedy tokens, GPU vs the interpreter on the same steps (qfuse check)"
for p in $plans; do
    [[ -f /tmp/smol-$p.plan ]] || continue
    timeout 240 "$q" check "/tmp/smol-$p.plan" --max-new-tokens "${GEN:-32}" >"$out/check-$p.log" 2>&1; rc=$?
    echo "-- $p (exit $rc)"; grep -vE "^\s*$" "$out/check-$p.log" | tail -8
    timeout 60 "$q" generate "/tmp/smol-$p.plan" --chat --prompt "What is the capital of France?" --max-new-tokens 24 2>&1 | tail -2
done
echo "== bench (batch 1 and 8, prompt 128, 64 new tokens)"
for p in $plans; do
    [[ -f /tmp/smol-$p.plan ]] || continue
    timeout 120 "$q" bench "/tmp/smol-$p.plan" --prompt-len 128 --gen 64 --batch 1,8 2>&1 | tail -2
done
echo "== peers (same GPU, same call)"
timeout 300 python3 scripts/decoder_peer_bench.py 2>&1 | tail -12
tar czf "${OUT:-/tmp}/gpu-decoder-logs.tgz" -C /tmp gpu-decoder 2>/dev/null
