#!/usr/bin/env python3
"""Records what the H100's tensor cores compute, for the interpreter's model of their accumulation.

Runs on the GPU machine (CuPy + NVRTC, sm_90a). Each probe feeds crafted operands to one tensor-core
instruction, the accumulator preloaded with C, and records D = A·B + C as the hardware rounds it:

  mma16   mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32   (a warp; attention.cu's MMA)
  wgmma16 wgmma.mma_async m64n8k16.f32.f16.f16                 (a warpgroup; gemm.cu's f16/bf16 path)
  wgmma8  wgmma.mma_async m64n8k32.f32.e4m3.e4m3               (a warpgroup; gemm.cu's FP8 path)

Operands are random with wide exponent spreads (so the alignment of addends shows) and, for a
third of the outputs, C close to −Σ A·B (so cancellation shows). Every output is one dot product:
the record holds, per output, its K operand pairs, C and D. `scripts/fit_mma_accumulation.py` (run
here, on the CPU) finds the accumulation model that reproduces every D bit for bit.

Usage: python3 scripts/probe_mma_accumulation.py OUT_DIR [--blocks N]
"""
import argparse
import os
import sys

import numpy as np

try:
    import cupy as cp
except ImportError:  # pragma: no cover - the GPU machine has CuPy
    sys.exit("probe_mma_accumulation: CuPy is needed (the GPU machine has it)")

SOURCE = r"""
typedef unsigned char uint8_t;
typedef unsigned short uint16_t;
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;

// One warp per 16x8 output tile: A [16][16] f16 row-major, B [8][16] f16 (n-major, K contiguous),
// C, D [16][8] f32, all per warp (blockIdx.x * warps + warp).
extern "C" __global__ void mma16(const uint16_t* A, const uint16_t* B, const float* C, float* D) {
    const int warp = (blockIdx.x * blockDim.x + threadIdx.x) / 32, lane = threadIdx.x % 32;
    const uint16_t* a = A + warp * 256;
    const uint16_t* b = B + warp * 128;
    const float* c = C + warp * 128;
    float* d = D + warp * 128;
    const int g = lane / 4, q = lane % 4;
    uint32_t ra[4], rb[2];
    // a0a1: (g, 2q..), a2a3: (g+8, 2q..), a4a5: (g, 2q+8..), a6a7: (g+8, 2q+8..)
    const int ar[4] = {g, g + 8, g, g + 8}, ac[4] = {2 * q, 2 * q, 2 * q + 8, 2 * q + 8};
    for (int i = 0; i < 4; ++i) ra[i] = a[ar[i] * 16 + ac[i]] | (uint32_t(a[ar[i] * 16 + ac[i] + 1]) << 16);
    // b0b1: (k = 2q.., n = g), b2b3: (k = 2q+8.., n = g)
    rb[0] = b[g * 16 + 2 * q] | (uint32_t(b[g * 16 + 2 * q + 1]) << 16);
    rb[1] = b[g * 16 + 2 * q + 8] | (uint32_t(b[g * 16 + 2 * q + 9]) << 16);
    float r[4] = {c[g * 8 + 2 * q], c[g * 8 + 2 * q + 1], c[(g + 8) * 8 + 2 * q], c[(g + 8) * 8 + 2 * q + 1]};
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                 : "+f"(r[0]), "+f"(r[1]), "+f"(r[2]), "+f"(r[3])
                 : "r"(ra[0]), "r"(ra[1]), "r"(ra[2]), "r"(ra[3]), "r"(rb[0]), "r"(rb[1]));
    d[g * 8 + 2 * q] = r[0];
    d[g * 8 + 2 * q + 1] = r[1];
    d[(g + 8) * 8 + 2 * q] = r[2];
    d[(g + 8) * 8 + 2 * q + 1] = r[3];
}

__device__ __forceinline__ uint32_t swz(uint32_t off) { return off ^ (((off >> 7) & 7u) << 4); }
__device__ __forceinline__ uint64_t desc_sw128(uint32_t addr) {
    return (uint64_t)((addr & 0x3FFFFu) >> 4) | ((uint64_t)1 << 16) | ((uint64_t)(1024 >> 4) << 32) | ((uint64_t)1 << 62);
}

// One warpgroup (128 threads) per 64x8 output tile; KB bytes of K per row (32: k16 f16 or k32
// e4m3). A [64][KB] and B [8][KB] bytes, K-major, placed in 128-byte swizzled rows; C, D [64][8].
template <bool E4M3>
__device__ void wgmma_probe(const uint8_t* A, const uint8_t* B, const float* C, float* D) {
    __shared__ __align__(1024) uint8_t sa[64 * 128];
    __shared__ __align__(1024) uint8_t sb[8 * 128];
    const int t = threadIdx.x, blk = blockIdx.x;
    const uint8_t* a = A + blk * 64 * 32;
    const uint8_t* b = B + blk * 8 * 32;
    for (int i = t; i < 64 * 128; i += 128) sa[i] = 0;
    for (int i = t; i < 8 * 128; i += 128) sb[i] = 0;
    __syncthreads();
    for (int i = t; i < 64 * 32; i += 128) sa[swz((i / 32) * 128 + i % 32)] = a[i];
    for (int i = t; i < 8 * 32; i += 128) sb[swz((i / 32) * 128 + i % 32)] = b[i];
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    const int w = t / 32, lane = t % 32, g = lane / 4, q = lane % 4;
    const float* c = C + blk * 512;
    float* d = D + blk * 512;
    const int r0 = 16 * w + g, r1 = r0 + 8;
    float r[4] = {c[r0 * 8 + 2 * q], c[r0 * 8 + 2 * q + 1], c[r1 * 8 + 2 * q], c[r1 * 8 + 2 * q + 1]};
    const uint64_t da = desc_sw128((uint32_t)__cvta_generic_to_shared(sa));
    const uint64_t db = desc_sw128((uint32_t)__cvta_generic_to_shared(sb));
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
    if (E4M3) {
        asm volatile("wgmma.mma_async.sync.aligned.m64n8k32.f32.e4m3.e4m3 {%0,%1,%2,%3}, %4, %5, 1, 1, 1;\n"
                     : "+f"(r[0]), "+f"(r[1]), "+f"(r[2]), "+f"(r[3]) : "l"(da), "l"(db));
    } else {
        asm volatile("wgmma.mma_async.sync.aligned.m64n8k16.f32.f16.f16 {%0,%1,%2,%3}, %4, %5, 1, 1, 1, 0, 0;\n"
                     : "+f"(r[0]), "+f"(r[1]), "+f"(r[2]), "+f"(r[3]) : "l"(da), "l"(db));
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");
    d[r0 * 8 + 2 * q] = r[0];
    d[r0 * 8 + 2 * q + 1] = r[1];
    d[r1 * 8 + 2 * q] = r[2];
    d[r1 * 8 + 2 * q + 1] = r[3];
}
extern "C" __global__ void wgmma16(const uint8_t* A, const uint8_t* B, const float* C, float* D) { wgmma_probe<false>(A, B, C, D); }
extern "C" __global__ void wgmma8(const uint8_t* A, const uint8_t* B, const float* C, float* D) { wgmma_probe<true>(A, B, C, D); }
"""


def random_f16(rng, shape, spread):
    """f16 values: random sign, exponent in [-spread, spread], random significand (normal numbers)."""
    e = rng.integers(-spread, spread + 1, size=shape)
    m = rng.integers(0, 1024, size=shape)
    s = rng.integers(0, 2, size=shape)
    bits = (s << 15) | ((e + 15) << 10) | m
    return bits.astype(np.uint16)


def random_e4m3(rng, shape):
    """E4M3 codes, every finite one (NaN 0x7f/0xff excluded)."""
    codes = rng.integers(0, 256, size=shape).astype(np.uint8)
    codes[(codes & 0x7F) == 0x7F] ^= 1
    return codes


def e4m3_values(codes):
    c = codes.astype(np.int64)
    s = np.where(c & 0x80, -1.0, 1.0)
    e = (c >> 3) & 0xF
    m = c & 7
    return s * np.where(e == 0, m / 8.0 * 2.0**-6, (1 + m / 8.0) * 2.0 ** (e - 7.0))


def c_values(rng, dots, spread):
    """C per output: two thirds random f32 across 2^±spread (a tenth of them 0), one third close
    to −dot (cancellation), the exact dot from f64 (exact for these operands)."""
    n = dots.shape[0]
    e = rng.integers(-spread, spread + 1, size=n).astype(np.float64)
    c = (rng.random(n) + 0.5) * 2.0**e * np.where(rng.random(n) < 0.5, -1.0, 1.0)
    c[rng.random(n) < 0.1] = 0.0
    cancel = rng.random(n) < 0.34
    c[cancel] = -dots[cancel] * (1.0 + (rng.random(cancel.sum()) - 0.5) * 2.0**-rng.integers(8, 30, size=cancel.sum()))
    return c.astype(np.float32)


def run(kind, blocks, rng):
    module = cp.RawModule(code=SOURCE, options=("-arch=sm_90a", "-std=c++17"), name_expressions=None)
    if kind == "mma16":
        warps = blocks * 4
        A = random_f16(rng, (warps, 16, 16), 8)
        B = random_f16(rng, (warps, 8, 16), 8)
        af, bf = A.view(np.float16).astype(np.float64), B.view(np.float16).astype(np.float64)
        dots = np.einsum("wmk,wnk->wmn", af, bf).reshape(-1)
        C = c_values(rng, dots, 12).reshape(warps, 16, 8)
        D = cp.zeros((warps, 16, 8), dtype=cp.float32)
        module.get_function("mma16")((blocks,), (128,), (cp.asarray(A), cp.asarray(B), cp.asarray(C), D))
        a_rows = np.repeat(A[:, :, None, :], 8, axis=2).reshape(-1, 16)
        b_cols = np.repeat(B[:, None, :, :], 16, axis=1).reshape(-1, 16)
    else:
        e4m3 = kind == "wgmma8"
        k = 32 if e4m3 else 16
        if e4m3:
            A, B = random_e4m3(rng, (blocks, 64, 32)), random_e4m3(rng, (blocks, 8, 32))
            af, bf = e4m3_values(A), e4m3_values(B)
        else:
            A, B = random_f16(rng, (blocks, 64, 16), 8), random_f16(rng, (blocks, 8, 16), 8)
            af, bf = A.view(np.float16).astype(np.float64), B.view(np.float16).astype(np.float64)
        dots = np.einsum("wmk,wnk->wmn", af, bf).reshape(-1)
        C = c_values(rng, dots, 12).reshape(blocks, 64, 8)
        D = cp.zeros((blocks, 64, 8), dtype=cp.float32)
        raw_a = cp.asarray(A.view(np.uint8).reshape(blocks, -1))
        raw_b = cp.asarray(B.view(np.uint8).reshape(blocks, -1))
        module.get_function(kind)((blocks,), (128,), (raw_a, raw_b, cp.asarray(C), D))
        a_rows = np.repeat(A[:, :, None, :], 8, axis=2).reshape(-1, k)
        b_cols = np.repeat(B[:, None, :, :], 64, axis=1).reshape(-1, k)
    cp.cuda.Device().synchronize()
    return {"a": a_rows, "b": b_cols, "c": C.reshape(-1), "d": cp.asnumpy(D).reshape(-1)}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("out")
    parser.add_argument("--blocks", type=int, default=256)
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    rng = np.random.default_rng(7)
    for kind in ("mma16", "wgmma16", "wgmma8"):
        try:
            rec = run(kind, args.blocks, rng)
        except Exception as e:  # one probe failing must not hide the others
            print(f"{kind}: FAILED {type(e).__name__}: {e}")
            continue
        path = os.path.join(args.out, f"{kind}.npz")
        np.savez_compressed(path, **rec)
        print(f"{kind}: {rec['d'].size} outputs -> {path}; non-finite {int((~np.isfinite(rec['d'])).sum())}")


if __name__ == "__main__":
    main()
