#!/usr/bin/env python3
"""Finds the accumulation model that reproduces a tensor-core probe bit for bit.

Reads the records of `scripts/probe_mma_accumulation.py` (GPU machine) and tries, on the CPU, every
model of a family parametrised as the literature on tensor-core numerics describes them:

  products a_k·b_k exact; K split into consecutive groups of `group` products; per group the
  running accumulator (C at first) and the group's products are aligned to the largest exponent
  among them — a product's exponent taken as e_a + e_b, its operands' exponents (before the
  product is normalised), the accumulator's its own — each truncated to a multiple of
  2^(that exponent − `bits`) (toward zero, `rz`, or toward −∞, `rd`), summed exactly, and the sum
  kept to its `sum_bits` leading bits (truncated) and rounded to f32 (`rz` or `rn`) as the next
  accumulator.

Prints, per probe, the models that reproduce the most outputs exactly (on --sample of them),
then checks the best one on every output.

Usage: python3 scripts/fit_mma_accumulation.py DIR [--sample N]
"""
import argparse
import itertools
import os

import numpy as np

SCALE = 240  # every value is held as an integer multiple of 2^-SCALE


def f16_ints(bits):
    b = bits.astype(np.int64)
    s = np.where(b >> 15, -1, 1)
    e = (b >> 10) & 0x1F
    m = b & 0x3FF
    sig = np.where(e == 0, m, m | 0x400)
    exp = np.where(e == 0, -24, e - 25)  # value = sig · 2^exp
    return s, sig, exp


def e4m3_ints(codes):
    c = codes.astype(np.int64)
    s = np.where(c & 0x80, -1, 1)
    e = (c >> 3) & 0xF
    m = c & 7
    sig = np.where(e == 0, m, m | 8)
    exp = np.where(e == 0, -9, e - 10)
    return s, sig, exp


def f32_int(x):
    """f32 value as an integer multiple of 2^-SCALE (exact)."""
    m, e = np.frexp(np.float64(x))
    return int(m * (1 << 53)) << (SCALE + int(e) - 53) if x != 0 else 0


def products(rec, e4m3):
    """Per output: the exact products (integers, units of 2^-SCALE) and their alignment exponents
    e_a + e_b (unbiased operand exponents; subnormal operands count as the least normal one)."""
    conv, frac = (e4m3_ints, 3) if e4m3 else (f16_ints, 10)
    sa, ma, ea = conv(rec["a"])
    sb, mb, eb = conv(rec["b"])
    sig = sa * sb * ma * mb
    exp = ea + eb + SCALE
    values = [[int(s) << int(x) for s, x in zip(srow, xrow)] for srow, xrow in zip(sig, exp)]
    return values, ((ea + frac) + (eb + frac)).tolist()


def lead(x):
    """floor(log2 |x|) of an integer (x ≠ 0)."""
    return abs(x).bit_length() - 1


def truncate(x, unit_log2, mode):
    if unit_log2 <= 0:
        return x
    unit = 1 << unit_log2
    if mode == "rd":
        return (x >> unit_log2) << unit_log2
    q = abs(x) // unit * unit
    return q if x >= 0 else -q


def round_f32(x, mode):
    """x (an integer multiple of 2^-SCALE) rounded to f32 (normal range), as an integer again."""
    if x == 0:
        return 0
    shift = lead(x) - 23
    if shift <= 0:
        return x
    a = abs(x)
    q, r = divmod(a, 1 << shift)
    if mode == "rn":
        half = 1 << (shift - 1)
        if r > half or (r == half and q & 1):
            q += 1
    elif mode == "ru":
        q += x > 0 and r > 0
    elif mode == "rd":
        q += x < 0 and r > 0
    v = q << shift
    return v if x >= 0 else -v


def keep_bits(x, bits):
    """x truncated (toward zero) to its `bits` leading bits."""
    if x == 0:
        return 0
    return truncate(x, lead(x) - bits + 1, "rz")


def model(terms, exps, c, group, bits, align, final, sum_bits=24):
    acc = c
    for g0 in range(0, len(terms), group):
        ts, es = terms[g0 : g0 + group], exps[g0 : g0 + group]
        cand = [e for t, e in zip(ts, es) if t != 0] + ([lead(acc) - SCALE] if acc != 0 else [])
        if not cand:
            acc = 0
            continue
        unit = max(cand) - bits + SCALE
        acc = round_f32(keep_bits(sum(truncate(t, unit, align) for t in [acc] + ts), sum_bits), final)
    return acc


def fit(path, sample, rng):
    rec = dict(np.load(path))
    e4m3 = os.path.basename(path).startswith("wgmma8")
    n = rec["d"].size
    idx = rng.choice(n, size=min(sample, n), replace=False)
    sub = {k: v[idx] for k, v in rec.items()}
    terms, exps = products(sub, e4m3)
    cs = [f32_int(x) for x in sub["c"]]
    ds = [f32_int(x) for x in sub["d"]]
    k = len(terms[0])
    groups = [g for g in (4, 8, 16, 32) if g <= k]
    results = []
    grid = itertools.product(groups, range(11, 28), ("rz", "rd"), ("rz", "rn"), (12, 13, 14, 15, 16, 24))
    for group, bits, align, final, sum_bits in grid:
        if sum_bits < bits - 2:
            continue
        hits = sum(model(t, e, c, group, bits, align, final, sum_bits) == d for t, e, c, d in zip(terms, exps, cs, ds))
        results.append((hits / len(ds), group, bits, align, final, sum_bits))
    results.sort(reverse=True)
    print(f"{os.path.basename(path)}: {len(ds)} of {n} outputs, K = {k}")
    for share, group, bits, align, final, sum_bits in results[:5]:
        print(f"  {share:8.4%}  group {group:2}  bits {bits}  align {align}  final {final}  sum bits {sum_bits}")
    _, group, bits, align, final, sum_bits = results[0]
    terms, exps = products(rec, e4m3)
    cs = [f32_int(x) for x in rec["c"]]
    ds = [f32_int(x) for x in rec["d"]]
    hits = sum(model(t, e, c, group, bits, align, final, sum_bits) == d for t, e, c, d in zip(terms, exps, cs, ds))
    print(f"  best on all {n} outputs: {hits} reproduced bit for bit ({hits / n:.4%})")
    return results[0]


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("dir")
    parser.add_argument("--sample", type=int, default=4000)
    args = parser.parse_args()
    rng = np.random.default_rng(1)
    for name in ("mma16.npz", "wgmma16.npz", "wgmma8.npz"):
        path = os.path.join(args.dir, name)
        if os.path.exists(path):
            fit(path, args.sample, rng)


if __name__ == "__main__":
    main()
