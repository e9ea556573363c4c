#!/usr/bin/env bash
# Decoder speed at Llama-3-8B's shape on the GPU machine (issue 13 item 6), after
# `scripts/build-gpu-bundle.sh shapes` here (carry gpu-bundle): writes a random-weight bf16 HF folder of
# that shape there (scripts/llama_shape_folder.py; transformers on the GPU), compiles it with qfuse per
# plan (calibration: two short texts, since the interpreter calibrates an 8B model on the CPU; speed does
# not depend on the scales), benches batch-1/8/64 decode at a 1k context and a 2,048-token prefill, and
# runs the HF peers (eager and torch.compile reduce-overhead, static cache) on the same folder.
#
# A device call is limited to 10 minutes, so the work is a list of steps that later calls on the same
# warm machine continue (the folder and the plans stay in /tmp while it is held):
#   STEPS  default "folder compile:fp8+fp8kv bench:fp8+fp8kv compile:fp16 bench:fp16 peers"
#          step names: folder | compile:<plan> | bench:<plan> | peers; plans: fp16 fp8+fp8kv w4a16 nvfp4
#   GEN    new tokens per decode run (default 32)
# Logs: /tmp/gpu-llama8b, archived to $OUT/gpu-llama8b-logs.tgz after every step.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=/tmp/gpu-llama8b
mkdir -p "$out"
for f in gpu-bundle/qfuse.gz; do [[ -f "$f" ]] && gunzip -f "$f"; done
chmod +x gpu-bundle/qfuse
export QFUSE_CACHE_DIR="$PWD/gpu-bundle/cache"
q=gpu-bundle/qfuse
model=/tmp/llama3-8b-shape
started=$SECONDS
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | head -1
printf 'The quick brown fox jumps over the lazy dog.\nWrite a haiku about the sea.\n' >"$out/calib.txt"
declare -A args=([fp16]="--recipe fp16 --kv-cache f16" [fp8+fp8kv]="--recipe fp8 --kv-cache fp8"
    [w4a16]="--recipe w4a16-rtn --kv-cache f16" [nvfp4]="--recipe nvfp4 --kv-cache f16")

folder() {
    [[ -f $model/config.json ]] || python3 scripts/llama_shape_folder.py "$model" gpu-bundle/tok 2>&1 | tail -2
}

compile() {
    local p=$1 plan=/tmp/l8b-$1.plan
    [[ -f $plan ]] && { echo "compile $p: kept from an earlier call"; return; }
    # shellcheck disable=SC2086
    if ! /usr/bin/time -f "compile: %e s wall, %M KB peak" timeout 560 "$q" --quiet compile "$model" ${args[$p]} \
        --calib-file "$out/calib.txt" --max-seq 2048 --max-batch 64 --max-step 2048 -o "$plan" >"$out/compile-$p.log" 2>&1; then
        echo "compile $p FAILED:"; tail -15 "$out/compile-$p.log"; rm -f "$plan"; return
    fi
    grep -E '^plan:|compile:|^decoder:' "$out/compile-$p.log"
}

bench() {
    local p=$1 plan=/tmp/l8b-$1.plan
    [[ -f $plan ]] || { echo "bench $p: no plan"; return; }
    # --profile: the first prefill step's and a decode step's kernels by template (docs/runtime.md).
    timeout 240 "$q" bench "$plan" --prompt-len 1024 --gen "${GEN:-32}" --batch 1,8,64 --profile 2>&1 | sed 's|/tmp/||' \
        | tee "$out/bench-$p.log" | tail -50
    timeout 120 "$q" bench "$plan" --prompt-len 2046 --gen 2 --batch 1 --profile 2>&1 | sed 's|/tmp/||' \
        | tee "$out/prefill-$p.log" | tail -16
}

peers() {
    echo "== peers (same GPU, same folder)"
    timeout 500 python3 scripts/decoder_peer_bench.py --model "$model" --prompt-len 1024 --gen "${GEN:-32}" --batch 1,8 2>&1 | tail -6
}

for step in ${STEPS:-folder compile:fp8+fp8kv bench:fp8+fp8kv compile:fp16 bench:fp16 peers}; do
    echo "== $step (at $((SECONDS - started)) s)"
    case $step in
        folder) folder ;;
        compile:*) compile "${step#compile:}" ;;
        bench:*) bench "${step#bench:}" ;;
        peers) peers ;;
        *) echo "unknown step $step" ;;
    esac
    tar czf "${OUT:-/tmp}/gpu-llama8b-logs.tgz" -C /tmp gpu-llama8b 2>/dev/null
done
df -h /tmp | tail -1; free -g | sed -n 2p
