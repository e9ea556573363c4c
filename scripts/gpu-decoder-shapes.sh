#!/usr/bin/env bash
# Decoder kernels and decode speed on the GPU machine in one call, with no checkpoint carried
# (after `scripts/build-gpu-bundle.sh shapes` here; carry gpu-bundle):
#   1. the decoder kernels (tests/decoder_kernels_gpu.rs: RoPE, append, paged and split-KV attention,
#      sampling, and a whole plan of the shape folder below with programmatic dependent launch on
#      and off), the generator under load (tests/generate_gpu.rs: 16 threads, 2,000 requests) and
#      the skinny GEMMs (tests/skinny_gpu.rs) against the interpreter;
#   2. a random-weight HF folder of SmolLM2-135M's shape (scripts/llama_shape_folder.py; transformers
#      there), compiled per plan ($PLANS), then `qfuse check` (GPU vs the interpreter on the same
#      steps: per kernel, greedy tokens, perplexity of $CHUNKS chunks; $RANDOM_PROMPTS random
#      prompts), `qfuse generate`, `qfuse bench` (prompt 128, 64 new tokens, batch 1 and 8;
#      again with --no-pdl, the launches in plain stream order);
#   3. the HF peers on the same folder (static cache, eager and torch.compile reduce-overhead) and the
#      copy bandwidth, in the same call;
#   4. the skinny GEMMs timed at Llama-3-8B's linear shapes ($SKINNY_MAX_N caps N: the host reference
#      of the 128256-row LM head is slow).
# $STEPS picks sections (default all: "kernels skinnytest plans peers skinny"), so one machine's calls can
# split the work under the per-call limit. Logs: $OUT/gpu-shapes (so a call cut off at its limit
# still brings back what it wrote), else /tmp/gpu-shapes.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-/tmp}/gpu-shapes"
steps=" ${STEPS:-kernels skinnytest plans peers skinny} "
want() { [[ "$steps" == *" $1 "* ]]; }
mkdir -p "$out"
for f in gpu-bundle/*.gz; do [[ -f "$f" ]] && gunzip -f "$f"; done
[[ -f gpu-bundle/kernels.tgz ]] && tar xzf gpu-bundle/kernels.tgz -C gpu-bundle && rm gpu-bundle/kernels.tgz
chmod +x gpu-bundle/qfuse gpu-bundle/qfuse-gemm-bench gpu-bundle/decoder_kernels_gpu gpu-bundle/generate_gpu gpu-bundle/skinny_gpu 2>/dev/null
export QFUSE_CACHE_DIR="$PWD/gpu-bundle/cache"
q=gpu-bundle/qfuse
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1
model=/tmp/smollm2-shape
[[ -f "$model/config.json" ]] || python3 scripts/llama_shape_folder.py "$model" gpu-bundle/tok --shape smollm2 2>&1 | tail -1
if want kernels; then
echo "[${SECONDS}s] == decoder kernels vs the interpreter"
QFUSE_PDL_MODEL="$model" timeout 240 gpu-bundle/decoder_kernels_gpu --ignored --test-threads=1 >"$out/decoder_kernels.log" 2>&1
grep -E "^test |test result|panicked" "$out/decoder_kernels.log" | head -20
echo "[${SECONDS}s] == the generator: 16 threads, 2,000 requests"
QFUSE_PDL_MODEL="$model" timeout 200 gpu-bundle/generate_gpu --ignored --test-threads=1 --nocapture >"$out/generate_gpu.log" 2>&1
grep -E "^test |test result|panicked|identical|returned" "$out/generate_gpu.log" | head -10
fi
if want skinnytest; then
echo "[${SECONDS}s] == skinny GEMMs vs the interpreter"
timeout 150 gpu-bundle/skinny_gpu --ignored --test-threads=1 --nocapture >"$out/skinny_gpu.log" 2>&1
grep -E "^test |test result|panicked" "$out/skinny_gpu.log" | head -20
fi
printf 'The quick brown fox jumps over the lazy dog.\nWrite a haiku about the sea.\nWhat is 12 + 30?\n' >"$out/calib.txt"
declare -A args=([fp16]="--recipe fp16 --kv-cache f16" [fp8+fp8kv]="--recipe fp8 --kv-cache fp8" [w8a16]="--recipe w8a16 --kv-cache f16"
    [fp8+fp8kv+merge]="--recipe fp8 --kv-cache fp8 --enable-pass merge-sibling-gemms"
    [fp16+merge]="--recipe fp16 --kv-cache f16 --enable-pass merge-sibling-gemms")
plans="${PLANS:-fp16 fp8+fp8kv}"
want plans || plans=""
for p in $plans; do
    echo "[${SECONDS}s] == $p"
    # shellcheck disable=SC2086
    if ! /usr/bin/time -f "compile: %e s" timeout 150 "$q" --quiet compile "$model" ${args[$p]} --calib-file "$out/calib.txt" \
        --max-seq 1024 --max-batch 8 --max-step 128 -o "/tmp/shape-$p.plan" >"$out/compile-$p.log" 2>&1; then
        echo "compile $p FAILED:"; tail -12 "$out/compile-$p.log"; continue
    fi
    grep -E '^plan:|^compile:' "$out/compile-$p.log"
    timeout 240 "$q" check "/tmp/shape-$p.plan" --max-new-tokens "${GEN:-16}" --chunks "${CHUNKS:-1}" --random "${RANDOM_PROMPTS:-64}" >"$out/check-$p.log" 2>&1
    echo "check exit $?"; grep -vE "^\s*$" "$out/check-$p.log" | tail -12
    timeout 30 "$q" generate "/tmp/shape-$p.plan" --prompt "The capital of France is" --max-new-tokens 8 2>&1 | tail -1
    timeout 90 "$q" bench "/tmp/shape-$p.plan" --prompt-len 128 --gen 64 --batch "${BENCH_BATCH:-1,8}" 2>&1 | tail -3
    echo "-- without programmatic dependent launch (--no-pdl)"
    timeout 90 "$q" bench "/tmp/shape-$p.plan" --prompt-len 128 --gen 64 --batch "${BENCH_BATCH:-1,8}" --no-pdl 2>&1 | tail -3
done
if want peers; then
echo "[${SECONDS}s] == HF peers on the same folder (same GPU, same call)"
timeout "${PEER_TIMEOUT:-200}" python3 scripts/decoder_peer_bench.py --model "$model" --prompt-len 128 --gen 64 --batch "${PEER_BATCH:-1,8}" 2>&1 | tail -5
fi
if want skinny; then
echo "[${SECONDS}s] == skinny GEMMs at Llama-3-8B's linear shapes (weight GB/s; N <= ${SKINNY_MAX_N:-28672})"
QFUSE_SKINNY_MAX_N="${SKINNY_MAX_N:-28672}" timeout "${SKINNY_TIMEOUT:-150}" gpu-bundle/qfuse-gemm-bench run gpu-bundle/kernels skinny \
    >"$out/skinny.jsonl" 2>"$out/skinny.log"
echo "skinny bench exit $?"; grep -E "CHECK FAILED|panicked|Error" "$out/skinny.log" | head -5
timeout "${PEER_TIMEOUT:-150}" python3 scripts/gemm_peer_bench.py "$out/skinny.jsonl" 2>"$out/peer.log" | tail -40
fi
