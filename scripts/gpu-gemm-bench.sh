#!/usr/bin/env bash
# The one command for the GPU machine (after scripts/build-gpu-bundle.sh here, carry gpu-bundle):
# qfuse's GEMM kernels (FP8 and f16/bf16 operands, the plans' epilogues) checked against a CPU
# reference (exact accumulator, the interpreter's epilogue) and timed, then the peers (cuBLASLt
# FP8 via torch._scaled_mm, torch f16, cuBLASLt INT8 via torch._int_mm) timed the same way, then
# the tables. GEMM_KINDS picks the kernel families (default `mma wgmma-wg wgmma`; `int8` = the
# INT8 kernels, `wonly` = the weight-only W8A16 / W4A16 GEMV and GEMM against torch f16 and
# torch._weight_int8pack_mm / _weight_int4pack_mm, `skinny` = the M <= 16 decode kernels at
# Llama-3-8B's linear shapes (M = 1, 8, 16; f16, bf16, e4m3, e4m3 rowwise, i8, W8A16, W4A16) in
# weight GB/s against torch bf16 F.linear, torch._scaled_mm FP8 and the device copy bandwidth,
# e.g. GEMM_KINDS="int8 wonly", GEMM_KINDS=skinny or GEMM_KINDS="mma wgmma-wg wgmma int8 wonly skinny").
# Full logs and JSON lines go to /tmp/gemm-bench (gpu-check.sh archives them). Exit status 1 if a check failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out=/tmp/gemm-bench
mkdir -p "$out"
# Unpack the bundle when this script runs alone (gpu-check.sh does the same; both are idempotent).
[[ -f gpu-bundle/qfuse-gemm-bench.gz ]] && gunzip -f gpu-bundle/qfuse-gemm-bench.gz
[[ -f gpu-bundle/kernels.tgz ]] && tar xzf gpu-bundle/kernels.tgz -C gpu-bundle && rm gpu-bundle/kernels.tgz
# A bundle that left its kernels behind (to stay under a call's 64 MiB): NVRTC compiles them here.
[[ -d gpu-bundle/kernels ]] || gpu-bundle/qfuse-gemm-bench build gpu-bundle/kernels >/dev/null
chmod +x gpu-bundle/qfuse-gemm-bench 2>/dev/null
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,power.draw,power.limit,temperature.gpu \
    --format=csv,noheader 2>&1 | head -1
# One process per mainloop family: a kernel that hangs (the binary exits after 20 s) or fails
# cannot hide the results of the others.
rc=0
: >"$out/qfuse.jsonl"
: >"$out/qfuse.log"
for kind in ${GEMM_KINDS:-mma wgmma-wg wgmma}; do
    # The skinny family builds (and references) weights up to 128256 x 4096 on the host: more time.
    limit=300
    [ "$kind" = skinny ] && limit=1200
    timeout "$limit" gpu-bundle/qfuse-gemm-bench run gpu-bundle/kernels "$kind" >>"$out/qfuse.jsonl" 2>>"$out/qfuse.log"
    r=$?
    [ "$r" -ne 0 ] && { rc=1; echo "qfuse-gemm-bench run $kind: exit status $r"; }
done
grep -E "^device|CHECK FAILED|HANG|Error|panicked" "$out/qfuse.log" | sort -u | cut -c1-400
# The skinny kernels against the interpreter (tests/skinny_gpu.rs: every operand kind, M = 1, 5, 16).
if [[ " ${GEMM_KINDS:-} " == *" skinny "* ]]; then
    [[ -f gpu-bundle/skinny_gpu.gz ]] && gunzip -f gpu-bundle/skinny_gpu.gz
    if [[ -f gpu-bundle/skinny_gpu ]]; then
        chmod +x gpu-bundle/skinny_gpu
        echo "== skinny kernels vs the interpreter (tests/skinny_gpu.rs)"
        timeout 600 gpu-bundle/skinny_gpu --ignored --test-threads=1 --nocapture >"$out/skinny_gpu.log" 2>&1 || rc=1
        grep -E "^test |test result|panicked|M=16" "$out/skinny_gpu.log" | head -60
    fi
fi
python3 - "$out/qfuse.jsonl" <<'PY'
import json, sys
worst, wonly, rows_skinny = {}, [], []
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("kind") == "qfuse-skinny":
        rows_skinny.append(r)
        continue
    if r.get("kind") == "qfuse" and r.get("operand") in ("W8A16", "W4A16"):
        wonly.append(r)
        continue
    if r.get("kind") != "qfuse" or "tflops" in r:
        continue
    key = (r["n"], r["k"], r["variant"])
    w = worst.setdefault(key, {"ok": True, "ms": [], "norm": 0.0, "abs": 0.0, "bad": 0})
    s = r["stats"]
    w["ok"] &= r["check"] == "ok"
    w["ms"].append(str(r["m"]))
    w["norm"] = max(w["norm"], s["norm_rel_err"] if s["norm_rel_err"] is not None else float("inf"))
    w["abs"] = max(w["abs"], s["max_abs_err"])
    w["bad"] += s["bad"] + s["unwritten"]
for (n, k, v), w in sorted(worst.items()):
    print(f"check {'ok  ' if w['ok'] else 'FAIL'} N={n} K={k:<5} {v:44s} M={','.join(w['ms']):14s} "
          f"norm_rel<={w['norm']:.1e} max_abs<={w['abs']:.1e} bad={w['bad']}")
# Skinny kernels (M <= 16): checked on every row, weight GB/s (the peers and % of copy bandwidth
# come with gemm_peer_bench.py below).
for r in rows_skinny:
    s = r["stats"]
    print(f"skinny {'ok  ' if r['check'] == 'ok' else 'FAIL'} {r['format']:12s} {r['m']:>2}x{r['n']}x{r['k']:<6} {r['variant']:40s} "
          f"norm_rel={s['norm_rel_err'] if s['norm_rel_err'] is not None else float('inf'):.1e} bad={s['bad'] + s['unwritten']} "
          f"{r['median_ms'] * 1e3:8.1f} us {r['weight_gbps']:6.0f} GB/s")
# Weight-only kernels: every (M, N, K), checked (relative L2 <= 1e-3) and, except the check-only
# M values, timed (TFLOP/s; weight GB/s for M <= 16).
for r in sorted(wonly, key=lambda r: (r["operand"], r["n"], r["k"], r["m"])):
    s = r["stats"]
    t = f"{r['tflops']:7.2f} TF/s" if "tflops" in r else f"{'check only':>12s}"
    bw = f" {r['weight_gbps']:6.0f} GB/s" if "weight_gbps" in r else ""
    print(f"wonly {'ok  ' if r['check'] == 'ok' else 'FAIL'} {r['operand']} {r['m']:>5}x{r['n']}x{r['k']:<5} {r['variant']:38s} "
          f"norm_rel={s['norm_rel_err'] if s['norm_rel_err'] is not None else float('inf'):.1e} max_abs={s['max_abs_err']:.1e} "
          f"bad={s['bad'] + s['unwritten']} {t}{bw}")
PY
PYTHONUNBUFFERED=1 python3 scripts/gemm_peer_bench.py "$out/qfuse.jsonl" --out "$out/peer.jsonl" 2>"$out/peer.log" \
    || { echo "peer benchmark failed:"; tail -20 "$out/peer.log"; }
nvidia-smi --query-gpu=clocks.sm,power.draw,temperature.gpu --format=csv,noheader 2>&1 | head -1
exit $rc
