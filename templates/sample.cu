{{prelude}}
{{ops}}
// qfuse sample (src/codegen/sample.rs): the next token of each of `rows` sequences from its logits
// row (V = {{vocab}} entries of trait L; row b starts at logits + b·row_stride), written to out[b]
// (i32; −1 when the row is all NaN). One CTA of 1024 threads per row: grid (rows, 1, 1).
// The rules are src/generate/sample.rs `choose` (docs/codegen.md "Sampling"), with row b's counter
// = counter + b (wrapping):
// - temperature == 0: greedy, the first index of the largest logit, NaN skipped (a block argmax
//   whose ties go to the smaller index; −0 and +0 tie as in `>`).
// - otherwise: the non-NaN logits in descending total order (ties: smaller index first), cut to
//   the first K = min(top_k, 256) (top_k = 0: 256; MAX_TOP_K); f64 weights
//   w_i = exp((l_i − l_0) / temperature); the smallest prefix whose running sum of w_i / Σw reaches
//   top_p (f64 sums in order); u = SplitMix64 uniform(seed, counter_b) in [0, 1); the inverse-CDF
//   walk over the kept weights (target = u · Σkept; first i with target < w_i, else target −= w_i;
//   the last kept one if none). Every f64 operation is the CPU's, in the CPU's order, with explicit
//   round-to-nearest intrinsics (no FMA); `exp` is CUDA's (≤ 1 ulp in f64), the one operation
//   that may differ from the CPU's in the last bit.
// Selection of the K largest: keys (orderable bits of the logit) << 32 | (2^32 − 1 − index) are
// unique and order exactly like the CPU's sort; a radix select over 8-bit digits (one histogram
// pass over the row per digit, stopping as soon as the K-th key's prefix bucket is taken whole)
// finds the K-th key; the K keys at or above it are gathered and sorted by a bitonic sort in
// shared memory; one thread then runs the f64 sums and the walk.

typedef {{t}} LT_;

#define QF_V {{vocab}}LL
#define QF_THREADS 1024
#define QF_MAX_K 256

QF_DEVICE unsigned long long qf_mix(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

// `uniform(seed, counter)` of src/generate/sample.rs: 53 random bits / 2^53 (exact).
QF_DEVICE double qf_uniform(unsigned long long seed, unsigned long long counter) {
    const unsigned long long x = qf_mix(qf_mix(seed) ^ counter) >> 11;
    return __dmul_rn(static_cast<double>(x), 1.1102230246251565e-16);  // 2^-53
}

// Rust's f32::total_cmp order as an unsigned integer.
QF_DEVICE unsigned long long qf_key(float x, long long i) {
    const unsigned int bits = __float_as_uint(x);
    const unsigned int ord = (bits & 0x80000000u) ? ~bits : (bits | 0x80000000u);
    return (static_cast<unsigned long long>(ord) << 32) | static_cast<unsigned long long>(0xFFFFFFFFu - static_cast<unsigned int>(i));
}

// (value, index) with index < 0 meaning "none": true if a beats b under the greedy rule.
QF_DEVICE bool qf_better(float av, int ai, float bv, int bi) {
    return ai >= 0 && (bi < 0 || av > bv || (av == bv && ai < bi));
}

extern "C" __global__ void __launch_bounds__(QF_THREADS) {{kernel_name}}(const LT_::T* __restrict__ logits, int* __restrict__ out,
        long long rows, long long row_stride, float temperature, int top_k, float top_p, long long seed, long long counter) {
    qf_pdl_enter();
    __shared__ unsigned int hist[256];
    __shared__ unsigned long long cand[QF_MAX_K];
    __shared__ double w[QF_MAX_K];
    __shared__ float red_v[32];
    __shared__ int red_i[32];
    __shared__ unsigned long long s_prefix, s_mask;
    __shared__ int s_remaining, s_done, s_count, s_k;
    const long long b = blockIdx.x;
    if (b >= rows) return;
    const LT_::T* row = logits + b * row_stride;
    const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;

    if (temperature == 0.0f) {
        float best = 0.0f;
        int bi = -1;
        for (long long i = tid; i < QF_V; i += QF_THREADS) {
            const float x = LT_::load(row[i]);
            if (x == x && (bi < 0 || x > best)) {
                best = x;
                bi = static_cast<int>(i);
            }
        }
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, best, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (qf_better(ov, oi, best, bi)) {
                best = ov;
                bi = oi;
            }
        }
        if (lane == 0) {
            red_v[warp] = best;
            red_i[warp] = bi;
        }
        __syncthreads();
        if (tid == 0) {
            for (int k = 1; k < QF_THREADS / 32; ++k) {
                if (qf_better(red_v[k], red_i[k], best, bi)) {
                    best = red_v[k];
                    bi = red_i[k];
                }
            }
            out[b] = bi;
        }
        return;
    }

    // The number of candidates K: min(top_k or MAX_TOP_K, MAX_TOP_K, non-NaN logits).
    int valid = 0;
    for (long long i = tid; i < QF_V; i += QF_THREADS) {
        const float x = LT_::load(row[i]);
        valid += x == x;
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) valid += __shfl_xor_sync(0xffffffffu, valid, o);
    if (lane == 0) red_i[warp] = valid;
    __syncthreads();
    if (tid == 0) {
        long long n = 0;
        for (int k = 0; k < QF_THREADS / 32; ++k) n += red_i[k];
        long long k = top_k > 0 && top_k < QF_MAX_K ? top_k : QF_MAX_K;
        s_k = static_cast<int>(k < n ? k : n);
        s_prefix = 0;
        s_mask = 0;
        s_remaining = s_k;
        s_done = 0;
        s_count = 0;
    }
    __syncthreads();
    const int K = s_k;
    if (K == 0) {
        if (tid == 0) out[b] = -1;
        return;
    }

    // Radix select of the K-th largest key, 8 bits at a time from the top.
    for (int shift = 56; shift >= 0; shift -= 8) {
        if (tid < 256) hist[tid] = 0;
        __syncthreads();
        const unsigned long long prefix = s_prefix, mask = s_mask;
        for (long long i = tid; i < QF_V; i += QF_THREADS) {
            const float x = LT_::load(row[i]);
            if (x != x) continue;
            const unsigned long long key = qf_key(x, i);
            if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 255u], 1u);
        }
        __syncthreads();
        if (tid == 0) {
            const unsigned int need = static_cast<unsigned int>(s_remaining);
            unsigned int above = 0;
            int d = 255;
            for (; d > 0; --d) {
                if (above + hist[d] >= need) break;
                above += hist[d];
            }
            s_remaining = static_cast<int>(need - above);
            s_prefix = prefix | (static_cast<unsigned long long>(d) << shift);
            s_mask = mask | (255ull << shift);
            s_done = hist[d] == need - above;
        }
        __syncthreads();
        if (s_done) break;
    }

    // Gather the K keys at or above the K-th (exactly K: keys are unique), then sort them.
    {
        const unsigned long long prefix = s_prefix, mask = s_mask;
        if (tid < QF_MAX_K) cand[tid] = 0;  // below every key of a non-NaN logit
        __syncthreads();
        for (long long i = tid; i < QF_V; i += QF_THREADS) {
            const float x = LT_::load(row[i]);
            if (x != x) continue;
            const unsigned long long key = qf_key(x, i);
            if ((key & mask) >= prefix) {
                const int at = atomicAdd(&s_count, 1);
                if (at < QF_MAX_K) cand[at] = key;
            }
        }
        __syncthreads();
    }
    for (int k = 2; k <= QF_MAX_K; k <<= 1) {
        for (int j = k >> 1; j > 0; j >>= 1) {
            if (tid < QF_MAX_K) {
                const int o = tid ^ j;
                if (o > tid) {
                    const unsigned long long a = cand[tid], c = cand[o];
                    const bool descending = (tid & k) == 0;
                    if (descending ? a < c : a > c) {
                        cand[tid] = c;
                        cand[o] = a;
                    }
                }
            }
            __syncthreads();
        }
    }

    // f64 weights, then the CPU's sums and walk in one thread.
    const double temp = static_cast<double>(temperature);
    const double top = static_cast<double>(LT_::load(row[0xFFFFFFFFu - static_cast<unsigned int>(cand[0] & 0xFFFFFFFFull)]));
    if (tid < K) {
        const long long idx = 0xFFFFFFFFu - static_cast<unsigned int>(cand[tid] & 0xFFFFFFFFull);
        const double l = static_cast<double>(LT_::load(row[idx]));
        w[tid] = exp(__ddiv_rn(__dsub_rn(l, top), temp));
    }
    __syncthreads();
    if (tid == 0) {
        double total = 0.0;
        for (int i = 0; i < K; ++i) total = __dadd_rn(total, w[i]);
        int kept = 0;
        double mass = 0.0;
        for (int i = 0; i < K; ++i) {
            mass = __dadd_rn(mass, __ddiv_rn(w[i], total));
            ++kept;
            if (mass >= static_cast<double>(top_p)) break;
        }
        double kept_total = 0.0;
        for (int i = 0; i < kept; ++i) kept_total = __dadd_rn(kept_total, w[i]);
        const unsigned long long ctr = static_cast<unsigned long long>(counter) + static_cast<unsigned long long>(b);
        double target = __dmul_rn(qf_uniform(static_cast<unsigned long long>(seed), ctr), kept_total);
        int pick = kept - 1;
        for (int i = 0; i < kept; ++i) {
            if (target < w[i]) {
                pick = i;
                break;
            }
            target = __dsub_rn(target, w[i]);
        }
        out[b] = static_cast<int>(0xFFFFFFFFu - static_cast<unsigned int>(cand[pick] & 0xFFFFFFFFull));
    }
}
