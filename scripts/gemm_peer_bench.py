#!/usr/bin/env python3
"""Peers for qfuse's GEMM benchmark (FP8 and f16 kernels), and the comparison table.

Times, at the shapes qfuse-gemm-bench ran (read from its JSON lines), with the same method
(10 warm-up launches, a spin kernel that keeps the GPU busy while the host enqueues, then the
median of 30 launches each bracketed by CUDA events; random E4M3 codes without NaN):
  - cuBLASLt FP8 through torch._scaled_mm (per-tensor scales, f16 out), with and without
    use_fast_accum (fast = no promotion of the tensor cores' FP8 accumulator);
  - torch f16 matmul (cuBLAS) on the same shapes;
  - for qfuse's INT8 kernels (`GEMM_KINDS=int8`), cuBLASLt INT8 through torch._int_mm (s8 x s8 ->
    s32, A row-major, B column-major, i.e. the same "TN" layout) on random i8 operands; TOPS and
    the ratio qfuse / cuBLASLt (qfuse's kernels also run their epilogue and store f16 or i8, the
    peer stores s32);
  - for qfuse's weight-only kernels (`GEMM_KINDS=wonly`: f16 activations, W8A16 i8 per channel or
    W4A16 u4 groups of 128 with u8 zero points, +bias, f16 out), on random weights of the same
    format: torch f16 F.linear (cuBLAS, bias included) with the weight dequantized to f16
    beforehand (the "dequantize then cuBLAS" baseline, dequantization not timed), and
    torch._weight_int8pack_mm (W8A16, f16) / torch._weight_int4pack_mm (W4A16, bf16, tinygemm
    packing by torch._convert_weight_to_int4pack, zero points folded into its float zeros) where
    the build has them ("n/a" otherwise); TFLOP/s, qfuse's weight GB/s for M <= 16, the ratios
    qfuse / peer and each peer's normwise error on sampled rows (a check of the peer's packing).
  - for qfuse's skinny kernels (`GEMM_KINDS=skinny`: M <= 16 at Llama-3-8B's linear shapes),
    the weight-streaming peers at the same M, N, K: torch bf16 F.linear (cuBLAS) and
    torch._scaled_mm FP8 (per-tensor scales, bf16 out; M padded to 16, its smallest M), in weight
    GB/s (weight bytes / median time), plus the device copy bandwidth (a 1 GiB device-to-device
    copy, read + write bytes / time) that the skinny kernels aim at (>= 80 %), all in this run.
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


def int8_peer(m, n, k, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    a = torch.randint(-128, 128, (m, k), dtype=torch.int8, device="cuda", generator=gen)
    b = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda", generator=gen)
    bt = b.t()  # [K, N] column-major
    # Exactness of the peer on a few rows (s32 sums of i8 products are exact for K < 2^17).
    rows = torch.randperm(m, generator=gen, device="cuda")[:8]
    y = torch._int_mm(a, bt)
    # CUDA has no int64 matmul: the exact reference runs on the CPU (8 rows).
    ref = a[rows].long().cpu() @ b.long().cpu().t()
    exact = bool((y[rows].long().cpu() == ref).all().item())
    ms = median_ms(lambda: torch._int_mm(a, bt))
    del a, b, y
    torch.cuda.empty_cache()
    return {"kind": "peer-int8", "m": m, "n": n, "k": k, "cublaslt_int8": 2.0 * m * n * k / (ms * 1e-3) / 1e12, "exact": exact}


def int8_table(rows, out):
    """qfuse's best checked INT8 variant per shape against torch._int_mm, TOPS."""
    int8 = [r for r in rows if r.get("kind") == "qfuse" and "tflops" in r and r.get("operand") == "I8"]
    shapes = sorted({(r["m"], r["n"], r["k"]) for r in int8}, key=lambda s: -s[0] * s[1] * s[2])
    if not shapes:
        return
    print()
    print(f"{'TOPS, median of 30':18s} {'qfuse INT8 best variant':44s} {'TOPS':>6s} {'cuBLASLt':>8s} {'ratio':>6s}  (plain = f16 out; +dyn = a_scale, b_scale, bias)")
    for i, s in enumerate(shapes):
        p = int8_peer(*s, seed=100 + i)
        if out:
            out.write(json.dumps(p) + "\n")
        for epi in sorted({r["epilogue"] for r in int8 if (r["m"], r["n"], r["k"]) == s}):
            c = [r for r in int8 if (r["m"], r["n"], r["k"]) == s and r["epilogue"] == epi and r["check"] == "ok"]
            best = max(c, key=lambda r: r["tflops"], default=None)
            cell = f"{best['variant'][:44]:44s} {best['tflops']:6.0f}" if best else f"{'- (no checked variant)':44s} {'-':>6s}"
            ratio = f"{best['tflops'] / p['cublaslt_int8']:6.2f}" if best else f"{'-':>6s}"
            exact = "" if p["exact"] else "  (cuBLASLt NOT exact on sampled rows)"
            print(f"{'x'.join(map(str, s)):18s} {cell} {p['cublaslt_int8']:8.0f} {ratio}  {epi}{exact}")


def wonly_weights(fmt, n, k, gen):
    """Random codes, scales, zero points (W4A16) and the weight dequantized as qfuse does it:
    (q - z) * s in f32, rounded to f16."""
    groups = 1 if fmt == "W8A16" else k // 128
    if fmt == "W8A16":
        q = torch.randint(-128, 128, (n, k), dtype=torch.int8, device="cuda", generator=gen)
        z = torch.zeros(n, groups, device="cuda")
    else:
        q = torch.randint(0, 16, (n, k), dtype=torch.uint8, device="cuda", generator=gen)
        z = torch.randint(0, 16, (n, groups), device="cuda", generator=gen).float()
    rms_q = 73.9 if fmt == "W8A16" else 6.52
    s = (torch.rand(n, groups, device="cuda", generator=gen) + 0.5) * (10.0 / ((1 / 3) ** 0.5 * rms_q * k**0.5))
    rep = lambda t: t.repeat_interleave(k // groups, dim=1)
    w16 = ((q.float() - rep(z)) * rep(s)).half()
    return q, s, z, w16


def int8pack(a, q, s, z):
    return lambda: torch._weight_int8pack_mm(a, q, s[:, 0].half())


def int4pack(a, q, s, z):
    """tinygemm: w = (q - 8) * scale + zero, so zero = (8 - z) * scale gives (q - z) * scale."""
    n, k = q.shape
    inner = next(t for t in (8, 4, 2) if k % (t * 16) == 0)
    try:  # torch >= 2.5: [N, K/2] uint8, even k in the high nibble
        packed = torch._convert_weight_to_int4pack((q[:, ::2] << 4 | q[:, 1::2]).contiguous(), inner)
    except RuntimeError:  # older: [N, K] int32
        packed = torch._convert_weight_to_int4pack(q.int().contiguous(), inner)
    sz = torch.stack([s, (8 - z) * s], dim=-1).transpose(0, 1).contiguous().bfloat16()
    ab = a.bfloat16()
    return lambda: torch._weight_int4pack_mm(ab, packed, 128, sz)


def wonly_peer(fmt, m, n, k, seed):
    gen = torch.Generator(device="cuda").manual_seed(seed)
    a = (torch.rand(m, k, device="cuda", generator=gen) * 2 - 1).half()
    q, s, z, w16 = wonly_weights(fmt, n, k, gen)
    bias = ((torch.rand(n, device="cuda", generator=gen) * 8) - 4).half()
    flops = 2.0 * m * n * k
    rows = torch.randperm(m, generator=gen, device="cuda")[:16]
    ref = a[rows].double() @ w16.double().t()
    out = {"kind": "peer-wonly", "format": fmt, "m": m, "n": n, "k": k}
    # Each maker returns the timed call (packing, which may be missing from the build, is not timed).
    makers = {
        "torch_f16": lambda: lambda: torch.nn.functional.linear(a, w16, bias),
        "pack": lambda: (int8pack if fmt == "W8A16" else int4pack)(a, q, s, z),
    }
    for name, make in makers.items():
        try:
            f = make()
            y = f().double()[rows] - (bias.double() if name == "torch_f16" else 0)
            out[name + "_err"] = ((y - ref).norm() / ref.norm()).item()
            out[name] = flops / (median_ms(f) * 1e-3) / 1e12
        except Exception as e:  # a peer missing from this build (or failing) prints n/a
            out[name] = None
            out[name + "_why"] = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
    del a, q, s, z, w16
    torch.cuda.empty_cache()
    return out


def wonly_table(rows, out):
    """qfuse's weight-only kernels per shape against torch f16 (dequantized weight) and the
    int8pack / int4pack kernels, TFLOP/s."""
    wonly = [r for r in rows if r.get("kind") == "qfuse" and "tflops" in r and r.get("operand") in ("W8A16", "W4A16")]
    if not wonly:
        return
    wonly.sort(key=lambda r: (r["operand"], -r["n"] * r["k"], r["n"], r["k"], r["m"]))
    print()
    print("weight-only GEMM/GEMV (f16 activations, +bias, f16 out), TFLOP/s, median of 30; GB/s = weight bytes (codes, scales, zero points) / time")
    print(f"{'format':6s} {'M x N x K':16s} {'path':4s} {'check':5s} {'qfuse':>6s} {'GB/s':>6s} {'torch f16':>9s} {'q/f16':>6s} {'pack':>6s} {'q/pack':>6s}  peer errors (f16, pack)")
    na = lambda x, f: f"{x:{f}}" if x is not None else "n/a"
    for i, r in enumerate(wonly):
        p = wonly_peer(r["operand"], r["m"], r["n"], r["k"], seed=200 + i)
        if out:
            out.write(json.dumps(p) + "\n")
        ratio = lambda key: f"{r['tflops'] / p[key]:6.2f}" if p.get(key) else f"{'n/a':>6s}"
        gbps = f"{r['weight_gbps']:6.0f}" if "weight_gbps" in r else f"{'':6s}"
        errs = ", ".join(na(p.get(key + "_err"), ".1e") for key in ("torch_f16", "pack"))
        why = f"  (pack: {p['pack_why']})" if "pack_why" in p else ""
        print(
            f"{r['operand']:6s} {'x'.join(map(str, (r['m'], r['n'], r['k']))):16s} {r.get('path') or '':4s} {r['check']:5s} "
            f"{r['tflops']:6.2f} {gbps} {na(p['torch_f16'], '9.2f'):>9s} {ratio('torch_f16')} {na(p['pack'], '6.2f'):>6s} {ratio('pack')}  {errs}{why}"
        )


def copy_gbps():
    """Device-to-device copy bandwidth: (read + write bytes) / median time of a 1 GiB copy."""
    x = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    ms = median_ms(lambda: y.copy_(x))
    del x, y
    torch.cuda.empty_cache()
    return 2 * (1 << 30) / (ms * 1e-3) / 1e9


def skinny_peer(m, n, k, seed):
    """Weight GB/s of torch bf16 F.linear and torch._scaled_mm FP8 at M x N x K."""
    gen = torch.Generator(device="cuda").manual_seed(seed)
    out = {"kind": "peer-skinny", "m": m, "n": n, "k": k}
    a = torch.randn(m, k, device="cuda", generator=gen).bfloat16()
    w = (torch.randn(n, k, device="cuda", generator=gen) / k**0.5).bfloat16()
    out["torch_bf16_gbps"] = n * k * 2 / (median_ms(lambda: torch.nn.functional.linear(a, w)) * 1e-3) / 1e9
    del w
    try:
        mp = max(16, (m + 15) // 16 * 16)
        a8 = random_e4m3(mp, k, gen)
        b8 = random_e4m3(n, k, gen)
        one = torch.tensor(1.0, dtype=torch.float32, device="cuda")
        f = lambda: torch._scaled_mm(a8, b8.t(), scale_a=one, scale_b=one, out_dtype=torch.bfloat16)
        out["scaled_mm_gbps"] = n * k / (median_ms(f) * 1e-3) / 1e9
        del a8, b8
    except Exception as e:  # a peer missing from this build prints n/a
        out["scaled_mm_gbps"] = None
        out["scaled_mm_why"] = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
    del a
    torch.cuda.empty_cache()
    return out


def skinny_table(rows, out):
    """qfuse's skinny kernels (M <= 16) per format and shape: weight GB/s, % of copy bandwidth,
    and the peers' weight GB/s at the same shapes."""
    sk = [r for r in rows if r.get("kind") == "qfuse-skinny"]
    if not sk:
        return
    copy = copy_gbps()
    if out:
        out.write(json.dumps({"kind": "peer-copy", "copy_gbps": copy}) + "\n")
    shapes = sorted({(r["m"], r["n"], r["k"]) for r in sk})
    peer = {}
    for i, s in enumerate(shapes):
        peer[s] = skinny_peer(*s, seed=300 + i)
        if out:
            out.write(json.dumps(peer[s]) + "\n")
    print()
    print(f"skinny GEMMs (M <= 16), weight GB/s = weight bytes / median of 30; device copy bandwidth {copy:.0f} GB/s (1 GiB D2D, read + write)")
    print(f"{'format':12s} {'M x N x K':18s} {'check':5s} {'qfuse GB/s':>10s} {'% copy':>7s} {'torch bf16':>10s} {'scaled_mm':>10s}  variant")
    na = lambda x: f"{x:10.0f}" if x is not None else f"{'n/a':>10s}"
    for r in sorted(sk, key=lambda r: (r["format"], r["n"], r["k"], r["m"])):
        p = peer[(r["m"], r["n"], r["k"])]
        print(
            f"{r['format']:12s} {'x'.join(map(str, (r['m'], r['n'], r['k']))):18s} {r['check']:5s} {r['weight_gbps']:10.0f} "
            f"{100 * r['weight_gbps'] / copy:6.1f}% {na(p['torch_bf16_gbps'])} {na(p.get('scaled_mm_gbps'))}  {r['variant']}"
        )


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
    out = open(args.out, "w") if args.out else None
    if out:
        for p in peer.values():
            out.write(json.dumps(p) + "\n")
    int8_table(rows, out)
    wonly_table(rows, out)
    skinny_table(rows, out)

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
