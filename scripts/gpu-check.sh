#!/usr/bin/env bash
# The one command for the GPU machine (after scripts/build-gpu-bundle.sh here; carry gpu-bundle):
#   1. compile the default model to a plan per recipe ($PLANS; kernels from the bundle's
#      CUBIN cache, calibration by the interpreter on this machine's CPUs);
#   2. `qfuse check` each plan: every kernel's output against the interpreter running the same
#      fused IR (named tolerance per dtype), end-to-end cosine >= 0.9999 or the interpreter's
#      floor (two correct implementations of the IR against each other) minus 1e-4 where lower,
#      256 random inputs without NaN;
#   3. benchmark, side by side: `qfuse bench` of each plan at batch 32 x 128 tokens against
#      PyTorch f16 eager and torch.compile (same model folder), then qfuse's FP8 GEMM against
#      cuBLASLt (torch._scaled_mm) at 4096^3 and 8192^3 (scripts/gpu-gemm-bench.sh);
#   4. one summary table with ratios.
# BENCH=0 stops after the checks. Logs go to /tmp/gpu-check (and, on the device tool, one archive $OUT/gpu-check-logs.tgz: it
# returns at most 8 files).
# Verdicts: one line per plan after the checks, `verdict <plan>: PASS|FAIL|INFO (...)`. A plan is
# FAIL when it does not compile or a required check fails (`qfuse check` on the texts, and again
# at B*S <= 16). Plans in `informational` below are checked and reported but never FAIL (INFO,
# with the reason). Benchmarks are measurements, not checks: their errors are `info:` lines.
# Exit status 1 exactly when some plan's verdict is FAIL.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=/tmp/gpu-check
mkdir -p "$out"
# The bundle travels compressed (the tree that travels is limited to 64 MiB).
for f in gpu-bundle/qfuse.gz gpu-bundle/qfuse-gemm-bench.gz; do [[ -f "$f" ]] && gunzip -f "$f"; done
[[ -f gpu-bundle/kernels.tgz ]] && tar xzf gpu-bundle/kernels.tgz -C gpu-bundle && rm gpu-bundle/kernels.tgz
[[ -f gpu-bundle/cache.tgz ]] && tar xzf gpu-bundle/cache.tgz -C gpu-bundle && rm gpu-bundle/cache.tgz
chmod +x gpu-bundle/qfuse gpu-bundle/qfuse-gemm-bench
export QFUSE_CACHE_DIR="$PWD/gpu-bundle/cache"
q=gpu-bundle/qfuse
model=gpu-bundle/model
batch="${BATCH:-32}" seq="${SEQ:-128}"
rc=0
nvidia-smi --query-gpu=name,driver_version,clocks.max.sm,power.limit --format=csv,noheader 2>&1 | head -1

# Plans: name -> compile arguments. fp8 (the recipe's defaults) runs its FP8 GEMMs on promoted
# wgmma (--fp8-accum promoted); fp8-exact on mma.sync (--fp8-accum exact, E4M3 as f16 MMAs). Both
# record how each GEMM sums, and `qfuse check` judges each GEMM against its node summed that way:
# both must pass.
# The other recipes (int8-sq, w8a16, w4a16-*, nvfp4, fp8-block) compile with their defaults.
# fp8-attn runs attention on FP8 q, k, v (--fp8-attention); fp8-attn-d64 / -d128 are the same on
# the 6- and 3-head views of the model (head sizes 64 and 128, scripts/model-variant.sh).
declare -A args=([fp8-exact]="--recipe fp8 --fp8-accum exact" [fp8-attn]="--recipe fp8 --fp8-attention"
    [fp8-attn-d64]="--recipe fp8 --fp8-attention" [fp8-attn-d128]="--recipe fp8 --fp8-attention")
# Plans whose checks are informational, with the reason (every other plan must pass); none now.
declare -A informational=()
declare -A why=()
# fail PLAN WHY: a check of PLAN failed (required unless PLAN is informational).
fail() { why[$1]="${why[$1]:+${why[$1]}; }$2"; }
bash scripts/model-variant.sh "$model" /tmp/model-h6 6
bash scripts/model-variant.sh "$model" /tmp/model-h3 3
declare -A models=([fp8-attn-d64]=/tmp/model-h6 [fp8-attn-d128]=/tmp/model-h3)
plans="${PLANS:-fp16 fp8 fp8-dynamic fp8-exact fp8-attn fp8-attn-d64 fp8-attn-d128 int8-sq w8a16 w4a16-rtn w4a16-awq w4a16-gptq nvfp4 fp8-block}"
echo "== compile"
for r in $plans; do
    # shellcheck disable=SC2086
    if ! "$q" --quiet compile "${models[$r]:-$model}" ${args[$r]:---recipe $r} -o "/tmp/minilm-$r.plan" >"$out/compile-$r.log" 2>&1; then
        echo "compile $r FAILED:"; tail -30 "$out/compile-$r.log"; fail "$r" "compile failed"; continue
    fi
    echo "$r: $(grep -E '^plan:' "$out/compile-$r.log")"
    echo "    $(tail -1 "$out/compile-$r.log")"
done

echo "== check (GPU vs interpreter)"
for r in $plans; do
    [[ -f "/tmp/minilm-$r.plan" ]] || continue
    echo "-- $r"
    timeout 150 "$q" check "/tmp/minilm-$r.plan" --random 256 --all --model "${models[$r]:-$model}" >"$out/check-$r.log" 2>&1 \
        || fail "$r" "check failed: $(grep -E '^per-kernel' "$out/check-$r.log" | head -1)"
    # Failing kernels (if any), the worst result per dtype, and the summary lines.
    grep -E 'FAIL|error' "$out/check-$r.log" | head -20
    python3 scripts/check_summary.py "$out/check-$r.log"
    grep -E "^(per-kernel|end to end|floor|rule|info:|random inputs|PASS|FAIL)" "$out/check-$r.log"
done

# Small batches: at most 16 token rows the weight-only plans run their GEMV launches (the plan's
# launch guards pick them), so the same check on one short text covers that path.
echo "== check at B*S <= 16 (GEMV path of the weight-only plans)"
printf 'A man is eating food.\n' >"$out/one-text.txt"
for r in $plans; do
    [[ -f "/tmp/minilm-$r.plan" ]] || continue
    timeout 60 "$q" check "/tmp/minilm-$r.plan" --file "$out/one-text.txt" --random 16 --all >"$out/check-small-$r.log" 2>&1 \
        || fail "$r" "check at B*S <= 16 failed: $(grep -E '^per-kernel' "$out/check-small-$r.log" | head -1)"
    echo "-- $r: $(grep -E '^per-kernel' "$out/check-small-$r.log") $(grep -oE 'cosine GPU vs interpreter min [0-9.]+' "$out/check-small-$r.log")"
done

echo "== verdicts"
for r in $plans; do
    info="${informational[$r]:-}"
    if [[ -n $info ]]; then v="INFO ($info; ${why[$r]:-its checks passed})"
    elif [[ -n "${why[$r]:-}" ]]; then v="FAIL (${why[$r]})"; rc=1
    else v=PASS; fi
    echo "verdict $r: $v"
done
echo "required checks: $( ((rc == 0)) && echo 'all passed' || echo 'some FAILED')"

[[ "${BENCH:-1}" == 0 ]] && { [[ -n "${OUT:-}" ]] && tar czf "$OUT/gpu-check-logs.tgz" -C /tmp gpu-check; exit $rc; }
echo "== bench: MiniLM batch $batch x $seq"
: >"$out/bench.jsonl"
for r in $plans; do
    [[ -f "/tmp/minilm-$r.plan" ]] || continue
    "$q" bench "/tmp/minilm-$r.plan" --batch "$batch" --seq "$seq" --json --profile >>"$out/bench.jsonl" 2>"$out/profile-$r.log" \
        || { echo "info: bench $r failed (a measurement, not a check)"; tail -5 "$out/profile-$r.log"; }
    echo "-- qfuse $r: kernel time by template (one profiled run)"; head -8 "$out/profile-$r.log"
done
PYTHONUNBUFFERED=1 timeout 240 python3 scripts/minilm_peer_bench.py "$model" --batch "$batch" --seq "$seq" \
    >>"$out/bench.jsonl" 2>"$out/peer.log" || { echo "info: peer benchmark failed:"; tail -20 "$out/peer.log"; }
python3 - "$out/bench.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
peers = {r["peer"]: r for r in rows if "peer" in r and "median_ms" in r}
ours = [r for r in rows if "plan" in r]
print(f"{'MiniLM end to end':34s} {'median ms':>10s} " + " ".join(f"{'vs ' + p:>22s}" for p in peers))
for r in ours:
    name = "qfuse " + r["plan"].rsplit("minilm-", 1)[-1].removesuffix(".plan")
    ratios = " ".join(f"{p['median_ms'] / r['median_ms']:>21.2f}x" for p in peers.values())
    print(f"{name:34s} {r['median_ms']:>10.3f} {ratios}")
for p, r in peers.items():
    print(f"{'torch ' + p:34s} {r['median_ms']:>10.3f}")
for r in rows:
    if "error" in r:
        print("peer error:", r)
print("(ratio = peer time / qfuse time; > 1 means qfuse is faster)")
PY

echo "== GEMMs vs cuBLASLt / cuBLAS (FP8, INT8, weight-only)"
GEMM_KINDS="${GEMM_KINDS:-mma wgmma int8 wonly}" timeout 240 scripts/gpu-gemm-bench.sh \
    || echo "info: the GEMM benchmark failed (a measurement, not a check)"
[[ -n "${OUT:-}" ]] && tar czf "$OUT/gpu-check-logs.tgz" -C /tmp gpu-check gemm-bench 2>/dev/null
echo "required checks: $( ((rc == 0)) && echo 'all passed' || echo 'some FAILED') (verdicts above)"
exit $rc
