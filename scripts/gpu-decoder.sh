#!/usr/bin/env bash
# The default decoder, SmolLM2-135M-Instruct (its real weights), on the GPU machine, after
# `scripts/build-gpu-bundle.sh decoder` here. One call carries at most 64 MiB, so the GGUF travels
# in three pieces: calls one and two carry gguf-a and gguf-b (command `true`), the next ones,
# at once after them while the machine is warm, gpu-bundle and gguf-c. Plans and the joined GGUF
# stay in gpu-bundle-work/ (git-ignored, kept between warm calls), so the steps can be split over
# several calls of at most 10 minutes each:
#   STEPS  (default "kernels compile check bench peers")
#     kernels  the GPU tests against the interpreter: tests/decoder_kernels_gpu.rs (every decoder
#              kernel), tests/skinny_gpu.rs (skinny, segmented and GLU GEMMs), tests/codegen_ops.rs
#              (row and element-wise kernels), tests/check_decoder_gpu.rs (`qfuse check` on plans);
#              TESTS="binary[:name filter] …" picks some
#     compile  a plan per recipe of PLANS (--max-seq 1024 --max-batch 64)
#     check    `qfuse check` of each plan against the interpreter on the same steps: a prefill
#              and a decode step kernel by kernel, greedy tokens of 8 prompts, teacher-forced
#              perplexity of CHUNKS (4) × 256 tokens of the GPL (within 0.5 %, KL beside the
#              interpreter's own summation-order floor), 256 random prompts without NaN
#     bench    `qfuse bench` (prompt 128, 64 new tokens, batch 1, 8 and 64; `--profile` for the
#              plans of PROFILE), beside the device's copy bandwidth measured in the same run
#     peers    HF transformers on a SmolLM2-shaped model (eager and torch.compile
#              reduce-overhead, static cache), same GPU, same call
#     ncu      Nsight Compute on the decode kernels matching NCU_KERNEL (regex, default
#              paged_attention) in a batch-1 `qfuse bench` of NCU_PLAN (fp16), --clock-control
#              none (the machine's clocks stay as they are): NCU_COUNT (1) launches after
#              NCU_SKIP (40) matching ones; the full section set, or only NCU_METRICS (a
#              comma-separated list) when given
#   PLANS  (default: every recipe of issue 13) names from the table below, plus fp16+prologue and
#          fp8+prologue (opt-in fuse-norm-prologue: the skinny GEMMs compute the RMSNorms at decode;
#          correct on an H100 but slower, docs/decoders.md) and fp8+fp8kv-noattnout (fp8 + FP8 KV
#          with --disable-pass fuse-attention-output: the quantize before o_proj as its own launch,
#          as before the attention stored those codes itself) and fp16+thread (the decode
#          attention's thread-per-score math, --decode-attention thread: the A/B of session 14's
#          warp path), fp16+nosplit and fp16+split4 (--decode-splits 1 / 4: the unsplit decode
#          attention, or at most 4 split-KV ranges, against the default 16); GEN: check tokens (32).
# Logs: gpu-bundle-work/logs, archived to $OUT/gpu-decoder-logs.tgz.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
work=gpu-bundle-work
out=$work/logs
mkdir -p "$out"
gpu_tests="decoder_kernels_gpu skinny_gpu codegen_ops check_decoder_gpu"
for f in qfuse $gpu_tests; do [[ -f gpu-bundle/$f.gz ]] && gunzip -f "gpu-bundle/$f.gz"; chmod +x "gpu-bundle/$f" 2>/dev/null; done
q=gpu-bundle/qfuse
gguf=$work/smollm2.gguf
if [[ ! -f $gguf ]]; then
    cat gguf-a/part.* gguf-b/part.* gguf-c/part.* >"$gguf.tmp" && mv "$gguf.tmp" "$gguf"
fi
echo "$(cat gguf-c/sha256)  $gguf" | sha256sum -c --quiet - || { echo "GGUF pieces do not join to the pinned file"; rm -f "$gguf"; exit 1; }
# The GPU tests that compile a whole decoder plan (tests/common gpu_test_decoder) take this one.
export QFUSE_PDL_MODEL="$PWD/$gguf"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader | head -1
steps="${STEPS:-kernels compile check bench peers}"
plans="${PLANS:-fp16 fp8 fp8-dynamic int8-sq w8a16 w4a16-awq w4a8-awq nvfp4 fp8+fp8kv fp8+nvfp4kv}"
declare -A args=([fp16]="--recipe fp16 --kv-cache f16" [fp8]="--recipe fp8 --kv-cache f16"
    [fp8-dynamic]="--recipe fp8-dynamic --kv-cache f16" [int8-sq]="--recipe int8-sq --kv-cache f16"
    [w8a16]="--recipe w8a16 --kv-cache f16" [w4a16-awq]="--recipe w4a16-awq --kv-cache f16"
    [w4a8-awq]="--recipe w4a8-awq --kv-cache f16" [nvfp4]="--recipe nvfp4 --kv-cache f16"
    [fp8+fp8kv]="--recipe fp8 --kv-cache fp8" [fp8+nvfp4kv]="--recipe fp8 --kv-cache nvfp4"
    [fp16+prologue]="--recipe fp16 --kv-cache f16 --enable-pass fuse-norm-prologue"
    [fp8+prologue]="--recipe fp8 --kv-cache fp8 --enable-pass fuse-norm-prologue"
    [fp8+fp8kv-noattnout]="--recipe fp8 --kv-cache fp8 --disable-pass fuse-attention-output"
    [fp16+thread]="--recipe fp16 --kv-cache f16 --decode-attention thread"
    [fp16+nosplit]="--recipe fp16 --kv-cache f16 --decode-splits 1"
    [fp16+split4]="--recipe fp16 --kv-cache f16 --decode-splits 4")
plan_of() { echo "$work/smol-${1//+/_}.plan"; }
for step in $steps; do
    case $step in
    kernels)
        # TESTS: "binary[:filter] …" (default: every GPU test binary of the bundle, unfiltered).
        for entry in ${TESTS:-$gpu_tests}; do
            t=${entry%%:*} filter=""
            [[ $entry == *:* ]] && filter=${entry#*:}
            [[ -x gpu-bundle/$t ]] || continue
            echo "== $t $filter: kernels vs the interpreter (tests/$t.rs, --ignored)"
            # shellcheck disable=SC2086
            timeout 200 "gpu-bundle/$t" --ignored --test-threads=1 --skip gpu_timings $filter 2>&1 | tee "$out/test-$t${filter:+-$filter}.log" \
                | grep -E "^test |test result|panicked|assert|worst" | head -30
        done
        ;;
    compile)
        echo "== compile (--max-seq 1024 --max-batch 64)"
        for p in $plans; do
            started=$(date +%s)
            # shellcheck disable=SC2086
            if ! timeout 300 "$q" --quiet compile "$gguf" ${args[$p]} --max-seq 1024 --max-batch 64 -o "$(plan_of "$p")" >"$out/compile-${p//+/_}.log" 2>&1; then
                echo "compile $p FAILED:"; tail -5 "$out/compile-${p//+/_}.log"; continue
            fi
            echo "$p: $(tail -1 "$out/compile-${p//+/_}.log") ($(( $(date +%s) - started )) s)"
        done
        ;;
    check)
        echo "== check: GPU vs the interpreter on the same steps (qfuse check)"
        for p in $plans; do
            [[ -f $(plan_of "$p") ]] || { echo "-- $p: no plan"; continue; }
            started=$(date +%s)
            timeout 300 "$q" check "$(plan_of "$p")" --max-new-tokens "${GEN:-32}" --chunks "${CHUNKS:-4}" >"$out/check-${p//+/_}.log" 2>&1; rc=$?
            echo "-- $p (exit $rc, $(( $(date +%s) - started )) s)"; grep -vE "^\s*$" "$out/check-${p//+/_}.log" | tail -16
            timeout 60 "$q" generate "$(plan_of "$p")" --chat --prompt "What is the capital of France?" --max-new-tokens 24 2>&1 | tail -2
        done
        ;;
    bench)
        echo "== bench (prompt 128, 64 new tokens, batch 1, 8, 64)"
        for p in $plans; do
            [[ -f $(plan_of "$p") ]] || continue
            profile=""
            [[ " ${PROFILE:-fp16 fp8+fp8kv} " == *" $p "* ]] && profile=--profile
            echo "-- $p"
            timeout 180 "$q" bench "$(plan_of "$p")" --prompt-len 128 --gen 64 --batch 1,8,64 $profile 2>&1 | sed "s|$work/||" \
                | tee "$out/bench-${p//+/_}.log" | tail -40
        done
        ;;
    peers)
        echo "== peers (same GPU, same call)"
        timeout 400 python3 scripts/decoder_peer_bench.py --batch 1,8,64 2>&1 | tail -12
        ;;
    ncu)
        p=${NCU_PLAN:-fp16}
        [[ -f $(plan_of "$p") ]] || { echo "-- ncu: no plan $p"; continue; }
        echo "== ncu: ${NCU_KERNEL:-paged_attention} in the batch-1 decode of $p"
        what=(--set full)
        [[ -n ${NCU_METRICS:-} ]] && what=(--metrics "$NCU_METRICS")
        timeout 300 ncu --clock-control none -k "regex:${NCU_KERNEL:-paged_attention}" --launch-skip "${NCU_SKIP:-40}" \
            --launch-count "${NCU_COUNT:-1}" "${what[@]}" "$q" bench "$(plan_of "$p")" --prompt-len 128 --gen 8 --batch 1 \
            >"$out/ncu-${p//+/_}.log" 2>&1
        [[ -n ${NCU_METRICS:-} ]] && grep -vE "^==PROF==|^\s*$" "$out/ncu-${p//+/_}.log" | grep -vE "^(smol|  prefill|  decode|   )" | tail -60
        grep -E "Duration|Elapsed Cycles|Registers Per|Achieved Occupancy|Stall|stall|Warp Cycles Per Issued|Issued Ipc|Memory Throughput|One or More|Grid Size|Block Size|Dynamic Shared" \
            "$out/ncu-${p//+/_}.log" | head -60
        ;;
    *) echo "unknown step $step" ;;
    esac
done
tar czf "${OUT:-/tmp}/gpu-decoder-logs.tgz" -C "$work" logs 2>/dev/null
