#!/usr/bin/env python3
"""Peers for qfuse's GEMM benchmark (FP8 and f16 kernels), and the comparison table.

Times, at the shapes qfuse-gemm-bench ran (read from its JSON lines), with the same method
(10 warm-up launches, a spin kernel that keeps the GPU busy while the host enqueues, then the
median of 30 launches each bracketed by CUDA events; random E4M3 codes without NaN):
  - cuBLASLt FP8 through torch._scaled_mm (per-tensor scales, f16 out), with and without
    use_fast_accum (fast = no promotion of the tensor cores' FP8 accumulator);
  - torch f16 matmul (cuBLAS) on the same shapes.
Also reports cuBLASLt's normwise error against the exact result rounded to f16 on a few rows
(the reference qfuse's own check uses), to put qfuse's error numbers in context. Prints a short
table (qfuse's best exact / best fast FP8 variant against cuBLASLt, qfuse's best f16 variant
against torch f16), then the per-variant numbers of the square shapes. qfuse's kernels run the
epilogues of the plans (bias, GeLU, residual, output quantize) where their label says so; the
peers run plain scaled GEMMs.

usage: gemm_peer_bench.py QFUSE_JSONL [--out PEER_JSONL]
"""
import argparse
import json
import statistics

import torch

WARMUP, REPS = 10, 30


def random_e4m3(rows, cols, gen):
    x = torch.randint(0, 256, (rows, cols), dtype=torch.uint8, device="cuda", generator=gen)
    x[(x & 0x7F) == 0x7F] ^= 0x01  # NaN codes -> +-448
    return x.view(torch.float8_e4m3fn)


def median_ms(fn):
    for _ in range(WARMUP):
        fn()
    # Keep the GPU busy while the host enqueues the timed batch, so the events time the kernels
    # back to back rather than the host's launch rate (qfuse-gemm-bench does the same).
    torch.cuda._sleep(10_000_000)
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(REPS)]
    for e0, e1 in events:
        e0.record()
        fn()
        e1.record()
    torch.cuda.synchronize()
    return statistics.median(e0.elapsed_time(e1) for e0, e1 in events)


def norm_rel_err(y, a, b, alpha, rows):
    """||y - ref|| / ||ref|| on `rows`, ref = exact result rounded to f16 (as qfuse's check)."""
    ref = ((a[rows].double() @ b.double().t()) * alpha).half().double()
    got = y[rows].double()
    return ((got - ref).norm() / ref.norm()).item()


def peers(m, n, k, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    a = random_e4m3(m, k, gen)
    b = random_e4m3(n, k, gen)
    rms = lambda t: t.float().pow(2).mean().sqrt().item()
    alpha = 10.0 / (rms(a) * rms(b) * k**0.5)
    sa = torch.tensor(alpha, dtype=torch.float32, device="cuda")
    sb = torch.tensor(1.0, dtype=torch.float32, device="cuda")
    bt = b.t()  # [K, N] column-major, as cuBLASLt's FP8 "TN" wants
    flops = 2.0 * m * n * k
    out = {"kind": "peer", "m": m, "n": n, "k": k}
    rows = torch.randperm(m, generator=gen, device="cuda")[:16]
    for name, fast in (("cublaslt", False), ("cublaslt_fast", True)):
        f = lambda: torch._scaled_mm(a, bt, scale_a=sa, scale_b=sb, out_dtype=torch.float16, use_fast_accum=fast)
        ms = median_ms(f)
        out[name] = flops / (ms * 1e-3) / 1e12
        out[name + "_err"] = norm_rel_err(f(), a, b, alpha, rows)
    a16, b16 = a.to(torch.float16), b.to(torch.float16)
    ms = median_ms(lambda: a16 @ b16.t())
    out["torch_f16"] = flops / (ms * 1e-3) / 1e12
    del a, b, a16, b16
    torch.cuda.empty_cache()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("qfuse_jsonl")
    ap.add_argument("--out")
    args = ap.parse_args()
    rows = [json.loads(l) for l in open(args.qfuse_jsonl) if l.startswith("{")]
    bench = [r for r in rows if r.get("kind") == "qfuse" and "tflops" in r]
    wide = [r for r in bench if r.get("operand", "E4M3") == "F16"]
    bench = [r for r in bench if r.get("operand", "E4M3") == "E4M3"]
    shapes = sorted({(r["m"], r["n"], r["k"]) for r in bench + wide}, key=lambda s: -s[0] * s[1] * s[2])
    print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, cuBLASLt via torch._scaled_mm")
    peer = {s: peers(*s, seed=i + 1) for i, s in enumerate(shapes)}
    if args.out:
        with open(args.out, "w") as f:
            for p in peer.values():
                f.write(json.dumps(p) + "\n")

    def short(v):
        return " ".join(t for t in v.split() if not (t.startswith("g") and t[1:].isdigit()))

    def best(s, fast, rows=bench):
        c = [r for r in rows if (r["m"], r["n"], r["k"]) == s and r["check"] == "ok" and r["fast_accum"] == fast]
        return max(c, key=lambda r: r["tflops"], default=None)

    print()
    print(f"{'TFLOP/s, median of 30':18s} {'qfuse FP8 exact accumulation':33s} {'qfuse FP8 fast accumulation':33s} cuBLASLt cuBLASLt torch  exact/   fast/    {'qfuse f16':33s} f16/")
    print(f"{'M x N x K':18s} {'best variant':26s} {'TF/s':>6s} {'best variant':26s} {'TF/s':>6s} FP8      FP8 fast f16    cuBLASLt cuBLASLt-fast {'best variant':26s} {'TF/s':>6s} torch")
    for s in shapes:
        p, e, f, h = peer[s], best(s, False), best(s, True), best(s, False, wide)
        cell = lambda r: f"{short(r['variant'])[:26]:26s} {r['tflops']:6.0f}" if r else f"{'-':26s} {'-':>6s}"
        ratio = lambda r, key: f"{r['tflops'] / p[key]:8.2f}" if r else f"{'-':>8s}"
        print(
            f"{'x'.join(map(str, s)):18s} {cell(e)} {cell(f)} {p['cublaslt']:7.0f}  {p['cublaslt_fast']:7.0f} "
            f"{p['torch_f16']:5.0f} {ratio(e, 'cublaslt')} {ratio(f, 'cublaslt_fast')}      {cell(h)} {ratio(h, 'torch_f16')}"
        )
    print()
    print("normwise rel. error vs the exact result rounded to f16 (sampled rows):")
    for s in shapes:
        p, e, f = peer[s], best(s, False), best(s, True)
        q = lambda r: f"{r['stats']['norm_rel_err'] or float('nan'):.1e}" if r else "-"
        print(
            f"  {'x'.join(map(str, s)):18s} qfuse exact {q(e)}  qfuse fast {q(f)}  "
            f"cuBLASLt {p['cublaslt_err']:.1e}  cuBLASLt fast {p['cublaslt_fast_err']:.1e}"
        )
    print()
    print("qfuse variants at the square shapes (TFLOP/s, check, normwise error):")
    for s in shapes:
        if s[1] != s[2]:
            continue
        cells = [
            f"{short(r['variant']):34s} {r['tflops']:6.0f} {r['check']:4s} {r['stats']['norm_rel_err'] or float('nan'):.1e}"
            for r in sorted((r for r in bench + wide if (r["m"], r["n"], r["k"]) == s), key=lambda r: -r["tflops"])
        ]
        print(f"  {'x'.join(map(str, s))}:")
        for c in cells:
            print("    " + c)


if __name__ == "__main__":
    main()
