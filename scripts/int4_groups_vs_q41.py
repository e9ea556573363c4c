#!/usr/bin/env python3
# How closely do qfuse's INT4 weight groups re-quantize the Q4_1 weights of the default decoder, and
# which clip ratios does the data-free MSE search (`--weight-scale mse`) choose on them?
# Dependencies: scripts/requirements-decoder.txt (gguf, numpy), `bash scripts/cache.sh pyenv`.
#
# Usage: .cache/pyenv/bin/python scripts/int4_groups_vs_q41.py [model.gguf]   (about 2 min of CPU)
#
# Every Q4_1 matrix of the file (blk.*), dequantized by gguf-py and rounded to f16 as the graph reads
# it. Part 1, per group size G (groups of G along the input dimension, the last one shorter):
# - "int zero point": qfuse's asymmetric groups, range [min, max] widened to include 0,
#   s = (max − min)/15, z = round(−min/s), ŵ = (clamp(round(w/s) + z, 0, 15) − z)·s;
# - "float minimum": Q4_1's own form, s = (max − min)/15, ŵ = clamp(round((w − min)/s), 0, 15)·s + min;
# printing Σ(ŵ − w)²/Σw² and the share of weights reproduced exactly; for G = 32 the offset of the
# float minimum from the integer grid, min(frac, 1 − frac) of −min/s in steps, and the share of
# one-signed groups. Part 2: the clip search of src/quant/algo/clip.rs (ratios 1 − 0.5·i/49,
# i < 50, the first with the least Σ(ŵ − w)² wins) on INT8 symmetric rows and INT4 g128/g32 groups:
# share of regions clipped, mean ratio, and the squared error relative to no clipping.
# numpy rounds half to even, as qfuse does; scales are computed in f32 like qfuse's.
import sys
import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf.quants import dequantize

PATH = sys.argv[1] if len(sys.argv) > 1 else ".cache/models/SmolLM2-135M-Instruct/SmolLM2-135M-Instruct.Q4_1.gguf"
RATIOS = (1 - 0.5 * np.arange(50) / 49).astype(np.float32)


def weights():
    """(kind, W [n, k] f32 holding f16 values) of every Q4_1 block matrix."""
    for t in GGUFReader(PATH).tensors:
        if t.tensor_type == GGMLQuantizationType.Q4_1 and t.name.startswith("blk."):
            w = dequantize(t.data, t.tensor_type).astype(np.float32)
            yield t.name.split(".")[2], w.reshape(-1, w.shape[-1]).astype(np.float16).astype(np.float32)


def groups(w, g):
    """The column groups of g of w, each [n, ≤g]."""
    return (w[:, c0:c0 + g] for c0 in range(0, w.shape[1], g))


def qdq(v, bits, sym, ratio=np.float32(1.0)):
    """qfuse's round-to-nearest of each row of v on its range shrunk by ratio."""
    lo = np.minimum(v.min(-1, keepdims=True), 0) * ratio
    hi = np.maximum(v.max(-1, keepdims=True), 0) * ratio
    if sym:
        qmax = 2 ** (bits - 1) - 1
        s = (np.maximum(-lo, hi) / qmax).astype(np.float32)
        s[s == 0] = 1
        return np.clip(np.round(v / s), -qmax - 1, qmax) * s
    qmax = 2 ** bits - 1
    s = ((hi - lo) / qmax).astype(np.float32)
    s[s == 0] = 1
    z = np.clip(np.round(-lo / s), 0, qmax)
    return (np.clip(np.round(v / s) + z, 0, qmax) - z) * s


def float_min(v):
    """Q4_1's form: ŵ = q·s + min."""
    lo, hi = v.min(-1, keepdims=True), v.max(-1, keepdims=True)
    s = ((hi - lo) / 15).astype(np.float32)
    s[s == 0] = 1
    return np.clip(np.round((v - lo) / s), 0, 15) * s + lo, lo, s


def sq(a, b):
    return ((a - b).astype(np.float64) ** 2).sum(-1)


def part1(ws):
    wsq = sum(float((w.astype(np.float64) ** 2).sum()) for _, w in ws)
    for g in (32, 64, 128):
        err = {"int zero point": [0.0, 0, 0], "float minimum": [0.0, 0, 0]}
        offs, one_signed, count = [], 0, 0
        for _, w in ws:
            for v in groups(w, g):
                for name, d in (("int zero point", qdq(v, 4, False)), ("float minimum", float_min(v)[0])):
                    e = err[name]
                    e[0] += float(sq(d, v).sum())
                    e[1] += int((d == v).sum())
                    e[2] += v.size
                if g == 32:
                    _, lo, s = float_min(v)
                    frac = (-lo / s) % 1.0
                    offs.append(np.minimum(frac, 1 - frac).ravel())
                    one_signed += int(((v.min(-1) > 0) | (v.max(-1) < 0)).sum())
                    count += v.shape[0]
        for name, (e, exact, n) in err.items():
            print(f"g{g:<4} {name:15s} rel. sq. error {e / wsq:.3e}  exact {100 * exact / n:5.1f} %")
        if g == 32:
            o = np.concatenate(offs)
            print(f"g32  grid offset of the float minimum: mean {o.mean():.3f} steps (uniform: 0.25), "
                  f"{100 * (o < 0.01).mean():.1f} % of groups within 0.01; one-signed groups {100 * one_signed / count:.3f} %")


def search(v, bits, sym):
    """Chosen ratio per row of v, and the summed errors with and without clipping."""
    e0 = best = sq(qdq(v, bits, sym), v)
    ratio = np.ones(best.shape)
    for r in RATIOS[1:]:
        e = sq(qdq(v, bits, sym, r), v)
        ratio = np.where(e < best, r, ratio)
        best = np.minimum(e, best)
    return ratio, best.sum(), e0.sum()


def part2(ws):
    for name, bits, g, sym in (("int8 row", 8, None, True), ("int4 g128", 4, 128, False), ("int4 g32", 4, 32, False)):
        n = clipped = 0
        rsum = e = e0 = 0.0
        for _, w in ws:
            for v in groups(w, g or w.shape[1]):
                r, a, b = search(v, bits, sym)
                n, clipped, rsum, e, e0 = n + r.size, clipped + int((r < 1).sum()), rsum + float(r.sum()), e + a, e0 + b
        print(f"{name:10s} clipped {100 * clipped / n:5.1f} %  mean ratio {rsum / n:.3f}  squared error x{e / e0:.3f} of no clipping")


if __name__ == "__main__":
    ws = list(weights())
    print(f"{len(ws)} Q4_1 matrices")
    part1(ws)
    part2(ws)
