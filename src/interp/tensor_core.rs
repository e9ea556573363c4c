//! How a tensor core sums: a model of the f32 accumulation inside one MMA instruction, which
//! is not IEEE arithmetic (the addends are aligned to the largest of them and lose the bits past
//! a fixed width before they are added), for [`super::Accumulation::TensorCore`].
//!
//! The model (the family the literature on tensor-core numerics describes; its parameters for
//! the H100 were fitted to the hardware's own results by `scripts/probe_mma_accumulation.py` on
//! the GPU and `scripts/fit_mma_accumulation.py` here):
//!
//! ```text
//! acc ← C
//! for each group of `group` consecutive k (in k order):
//!     addends ← acc, a[k]·b[k] for k in the group        (products exact)
//!     e ← the largest exponent among the nonzero addends, a product's taken as e(a) + e(b), its
//!         operands' exponents (as the hardware aligns it, before the product is normalised:
//!         a product of significands in [2, 4) counts one below its own exponent), the
//!         accumulator's its own; e(x) = max(⌊log2 |x|⌋, `min_exponent`)
//!     each addend truncated to a multiple of 2^(e − bits)  (`align`: toward zero or toward −∞)
//!     acc ← the exact sum of the truncated addends, kept to its `sum_bits` leading bits and
//!           then to f32 (both `normalize`)
//! ```
//!
//! [`H100_F16`] reproduces every one of 262,144 probed f16 `mma.sync.m16n8k16` and
//! `wgmma.m64n8k16` results bit for bit, and [`H100_E4M3`] every one of 131,072 FP8
//! `wgmma.m64n8k32` results: that instruction aligns its 32 products and the accumulator to 13
//! bits and keeps 14 bits of their sum (the "about 14 bits" of FP8 accumulation that DeepSeek-V3
//! reports, and why FP8 GEMMs promote their partial sums into f32 registers).
//!
//! Everything is exact in f64: products of f32 values have at most 48 significant bits, and a
//! group's truncated addends are integer multiples of 2^(e − bits) below 2^(bits + 1), so their
//! sum (at most 33 of them) stays below 2^(bits + 7) ≤ 2^53.

/// A rounding direction of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rounding {
    /// Toward zero (truncation of the magnitude).
    TowardZero,
    /// Toward −∞ (truncation of a two's-complement significand).
    Down,
    /// To nearest, ties to even.
    NearestEven,
}

/// The parameters of one tensor-core instruction family's sums (module doc).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TensorCoreSums {
    /// Products summed together with the running accumulator in one step.
    pub group: u32,
    /// Bits kept below the leading bit of a step's largest addend.
    pub bits: u32,
    /// How an addend loses its bits past those.
    pub align: Rounding,
    /// Leading bits kept of a step's exact sum (24 or more: f32's own).
    pub sum_bits: u32,
    /// How a step's exact sum becomes the accumulator: its `sum_bits` leading bits, then f32.
    pub normalize: Rounding,
    /// The least exponent an operand counts with (its format's least normal exponent:
    /// subnormal operands align as if they had it).
    pub min_exponent: i32,
}

/// The H100's f16 tensor cores (f32 accumulators): `mma.sync.aligned.m16n8k16…f32.f16.f16.f32`
/// (attention.cu, paged_prefill.cu) and `wgmma…m64nNk16.f32.f16.f16` (gemm.cu): the 16 products
/// of an instruction and the accumulator in one step, 25 bits below the largest, truncated,
/// the sum truncated to f32.
pub const H100_F16: TensorCoreSums =
    TensorCoreSums { group: 16, bits: 25, align: Rounding::TowardZero, sum_bits: 24, normalize: Rounding::TowardZero, min_exponent: -14 };

/// The H100's FP8 tensor cores: `wgmma…m64nNk32.f32.e4m3.e4m3` (gemm.cu's FP8 path; fast
/// accumulation chains it over all of K, the default promotes every 128-byte k-tile's partial
/// into f32 registers): the 32 products of an instruction and its accumulator in one step, 13
/// bits below the largest, truncated, and 14 bits of the sum kept (truncated).
pub const H100_E4M3: TensorCoreSums =
    TensorCoreSums { group: 32, bits: 13, align: Rounding::TowardZero, sum_bits: 14, normalize: Rounding::TowardZero, min_exponent: -6 };

impl TensorCoreSums {
    /// `c + Σ_k a[k]·b[k]` summed as the model says, `a` and `b` read through `at(k)` for
    /// k = 0..len. Non-finite operands or sums fall back to IEEE f32 sums in k order (the model
    /// says nothing about them; they are rare and propagate alike).
    pub fn dot(&self, c: f32, len: usize, at: impl Fn(usize) -> (f32, f32)) -> f32 {
        let group = self.group.max(1) as usize;
        let mut acc = c;
        for k0 in (0..len).step_by(group) {
            let ks = k0..(k0 + group).min(len);
            match self.lead(acc, ks.clone(), &at) {
                Some(lead) => acc = self.step(acc, lead, ks, &at),
                None => {
                    return (k0..len).fold(acc, |s, k| {
                        let (a, b) = at(k);
                        s + a * b
                    })
                }
            }
        }
        acc
    }

    /// `Σ_k a[k]·b[k]` summed with promotion, `a` and `b` read through `at(k)` for k = 0..len:
    /// k split into consecutive chunks of `every` (the last may be shorter; `every` 0 counts as
    /// `len`), each chunk summed by [`Self::dot`] from an accumulator of 0, and the chunk partials
    /// added in k order into an f32 total with IEEE round-to-nearest, starting from 0 (`0 + p₀`,
    /// `+ p₁`, …). This is what an FP8 `wgmma` mainloop computes when it adds each k-tile's
    /// tensor-core partial sum to f32 registers (gemm.cu's promotion); with `every` ≥ `len` it is
    /// [`Self::dot`] from 0. Chunks start their step groups afresh, as the hardware's do: an
    /// `every` that is not a multiple of `group` ends a chunk inside a group.
    pub fn promoted_dot(&self, every: usize, len: usize, at: impl Fn(usize) -> (f32, f32)) -> f32 {
        let every = if every == 0 { len.max(1) } else { every };
        (0..len).step_by(every).fold(0.0f32, |total, k0| total + self.dot(0.0, every.min(len - k0), |k| at(k0 + k)))
    }

    /// The alignment exponent of one step over `ks` with running sum `acc`: the largest among
    /// its nonzero addends (a product's e(a) + e(b)), `i32::MIN` when all are zero; `None` when
    /// an addend is not finite.
    fn lead(&self, acc: f32, ks: std::ops::Range<usize>, at: &impl Fn(usize) -> (f32, f32)) -> Option<i32> {
        let acc_lead = if acc == 0.0 { i32::MIN } else { exponent(f64::from(acc)) };
        ks.map(at).try_fold(acc.is_finite().then_some(acc_lead)?, |lead, (a, b)| {
            let p = f64::from(a) * f64::from(b);
            match (p.is_finite(), p != 0.0) {
                (false, _) => None,
                (true, true) => Some(lead.max(self.operand_exponent(a) + self.operand_exponent(b))),
                (true, false) => Some(lead),
            }
        })
    }

    /// One step: the exact sum of the accumulator and the products of `ks`, each truncated to a
    /// multiple of 2^(lead − bits), kept to `sum_bits` and rounded to f32.
    fn step(&self, acc: f32, lead: i32, ks: std::ops::Range<usize>, at: &impl Fn(usize) -> (f32, f32)) -> f32 {
        if lead == i32::MIN {
            return 0.0;
        }
        let scale = f64::from(lead - self.bits as i32).exp2();
        let aligned = |x: f64| truncate(x / scale, self.align) * scale;
        let sum = ks.map(at).fold(aligned(f64::from(acc)), |s, (a, b)| s + aligned(f64::from(a) * f64::from(b)));
        round_f32(keep_bits(sum, self.sum_bits, self.normalize), self.normalize)
    }

    /// The exponent an operand aligns with: ⌊log2 |x|⌋, at least `min_exponent`.
    fn operand_exponent(&self, x: f32) -> i32 {
        exponent(f64::from(x)).max(self.min_exponent)
    }
}

impl std::fmt::Display for TensorCoreSums {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "groups of {}, {} bits below the largest addend, addends {}, {} bits of the sum kept {}",
            self.group, self.bits, self.align, self.sum_bits, self.normalize
        )
    }
}

impl std::fmt::Display for Rounding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rounding::TowardZero => "toward zero",
            Rounding::Down => "toward −∞",
            Rounding::NearestEven => "to nearest even",
        })
    }
}

/// ⌊log2 |x|⌋ of a finite nonzero f64.
fn exponent(x: f64) -> i32 {
    let biased = ((x.to_bits() >> 52) & 0x7ff) as i32;
    if biased == 0 {
        // Subnormal f64 (never reached by f32 products): scale up first.
        return exponent(x * 2f64.powi(64)) - 64;
    }
    biased - 1023
}

/// `x` kept to its `bits` leading bits, rounded as `mode` (unchanged when `bits` ≥ 53 or x = 0).
fn keep_bits(x: f64, bits: u32, mode: Rounding) -> f64 {
    if x == 0.0 || !x.is_finite() || bits >= 53 {
        return x;
    }
    let scale = f64::from(exponent(x) + 1 - bits as i32).exp2();
    truncate(x / scale, mode) * scale
}

/// `x` (a multiple of 2^-52 or coarser relative to its unit) to an integer, rounded as `mode`.
fn truncate(x: f64, mode: Rounding) -> f64 {
    match mode {
        Rounding::TowardZero => x.trunc(),
        Rounding::Down => x.floor(),
        Rounding::NearestEven => x.round_ties_even(),
    }
}

/// The f64 `x` rounded to f32 as `mode` says.
pub fn round_f32(x: f64, mode: Rounding) -> f32 {
    let nearest = x as f32;
    let back = f64::from(nearest);
    if back == x || !nearest.is_finite() || mode == Rounding::NearestEven {
        return nearest;
    }
    let toward_zero = |r: f32| if f64::from(r).abs() > x.abs() { next_toward_zero(r) } else { r };
    match mode {
        Rounding::TowardZero => toward_zero(nearest),
        Rounding::Down if back > x => next_down(nearest),
        Rounding::Down | Rounding::NearestEven => nearest,
    }
}

/// The f32 next to `r` in the direction of zero (`r` finite and nonzero).
fn next_toward_zero(r: f32) -> f32 {
    f32::from_bits(r.to_bits() - 1)
}

/// The f32 next to `r` toward −∞ (`r` finite).
fn next_down(r: f32) -> f32 {
    if r == 0.0 {
        -f32::from_bits(1)
    } else if r > 0.0 {
        f32::from_bits(r.to_bits() - 1)
    } else {
        f32::from_bits(r.to_bits() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const RZ: TensorCoreSums = TensorCoreSums {
        group: 8,
        bits: 24,
        align: Rounding::TowardZero,
        sum_bits: 24,
        normalize: Rounding::TowardZero,
        min_exponent: -126,
    };

    #[test]
    fn small_addends_lose_their_bits_below_the_largest() {
        // 1 + 8 · 2^-26: each 2^-26 lies below 2^(0 − 24) and truncates to 0 in one step; IEEE f32
        // sums in one order would lose them too, but an exact sum keeps 2^-23.
        let tiny = 2f32.powi(-13);
        let r = RZ.dot(1.0, 8, |_| (tiny, tiny));
        assert_eq!(r, 1.0);
        let wide = TensorCoreSums { bits: 27, ..RZ };
        assert_eq!(wide.dot(1.0, 8, |_| (tiny, tiny)), 1.0 + 2f32.powi(-23));
    }

    #[test]
    fn the_group_sets_where_the_running_sum_is_rounded() {
        // 16 products of 2^-24 onto 1: in groups of 16 the exact 2^-20 survives; in groups of 1
        // each step rounds toward zero back to 1.
        let p = 2f32.powi(-12);
        let g16 = TensorCoreSums { group: 16, bits: 26, ..RZ };
        assert_eq!(g16.dot(1.0, 16, |_| (p, p)), 1.0 + 2f32.powi(-20));
        let g1 = TensorCoreSums { group: 1, ..g16 };
        assert_eq!(g1.dot(1.0, 16, |_| (p, p)), 1.0);
    }

    #[test]
    fn truncation_toward_minus_infinity_moves_negative_addends_down() {
        let m =
            TensorCoreSums { group: 1, bits: 1, align: Rounding::Down, sum_bits: 24, normalize: Rounding::NearestEven, min_exponent: -126 };
        // Addends 1 and −0.75 (lead 0, unit 2^-1): −0.75 floors to −1, the sum is 0.
        assert_eq!(m.dot(1.0, 1, |_| (-0.75, 1.0)), 0.0);
        let z = TensorCoreSums { align: Rounding::TowardZero, ..m };
        assert_eq!(z.dot(1.0, 1, |_| (-0.75, 1.0)), 0.5);
    }

    #[test]
    fn a_product_aligns_at_its_operands_exponents() {
        // 1.5 · 1.5 = 2.25 aligns at exponent 0 (not 1): with 2 bits the unit is 2^-2, so
        // 2.25 and 0.25 survive whole; aligned at 2.25's own exponent 1 the unit would be 2^-1
        // and both would lose their quarter.
        let m = TensorCoreSums {
            group: 2,
            bits: 2,
            align: Rounding::TowardZero,
            sum_bits: 24,
            normalize: Rounding::NearestEven,
            min_exponent: -14,
        };
        let ops = [(1.5f32, 1.5f32), (0.5, 0.5)];
        assert_eq!(m.dot(0.0, 2, |k| ops[k]), 2.5);
        // An f16 subnormal operand aligns at −14, its product at −14 + 0.
        let tiny = 2f32.powi(-20);
        assert_eq!(m.dot(0.0, 1, |_| (tiny, 1.0)), 0.0, "2^-20 lies below 2^(-14 - 2)");
    }

    /// 1,200 results of the H100's f16 tensor cores (600 of `mma.sync.m16n8k16`, 600 of
    /// `wgmma.m64n8k16`) and 1,000 of its FP8 `wgmma.m64n8k32`, from
    /// `scripts/probe_mma_accumulation.py`: after a u32 count, per record 64 bytes of operands
    /// (16 `a` then 16 `b` f16 bit patterns; or 32 `a` then 32 `b` E4M3 codes), then C and D as
    /// f32, little-endian.
    const H100_F16_PROBE: &[u8] = include_bytes!("../../tests/data/h100_f16_mma.bin");
    const H100_E4M3_PROBE: &[u8] = include_bytes!("../../tests/data/h100_e4m3_wgmma.bin");

    /// (records reproduced by `model`, records IEEE fused sums in k order reproduce, records).
    fn replay(probe: &[u8], model: TensorCoreSums, k: usize, operand: impl Fn(&[u8], usize) -> f32) -> (usize, usize, usize) {
        let (count, mut rest) = probe.split_at(4);
        let count = u32::from_le_bytes(count.try_into().unwrap()) as usize;
        assert_eq!(rest.len(), count * 72);
        let (mut exact, mut ieee) = (0, 0);
        for _ in 0..count {
            let (rec, next) = rest.split_at(72);
            rest = next;
            let f32_at = |at: usize| f32::from_le_bytes(rec[at..at + 4].try_into().unwrap());
            let (c, d) = (f32_at(64), f32_at(68));
            let got = model.dot(c, k, |i| (operand(rec, i), operand(rec, k + i)));
            exact += usize::from(got.to_bits() == d.to_bits());
            // IEEE f32 fused sums in k order (what a CUDA-core loop of fmaf computes) for contrast.
            let fma = (0..k).fold(c, |s, i| operand(rec, i).mul_add(operand(rec, k + i), s));
            ieee += usize::from(fma.to_bits() == d.to_bits());
        }
        (exact, ieee, count)
    }

    #[test]
    fn the_h100_models_reproduce_the_probed_tensor_cores_bit_for_bit() {
        let f16 = |rec: &[u8], i: usize| half::f16::from_le_bytes([rec[2 * i], rec[2 * i + 1]]).to_f32();
        let (exact, ieee, count) = replay(H100_F16_PROBE, H100_F16, 16, f16);
        println!("f16: {exact} of {count} probed results reproduced; IEEE fused sums in k order give {ieee}");
        assert_eq!(exact, count, "every probed f16 result, bit for bit");
        assert!(ieee < count / 2, "IEEE sums differ from the tensor cores in most results ({ieee} of {count} equal)");
        let e4m3 = |rec: &[u8], i: usize| crate::numerics::e4m3_to_f32(rec[i]);
        let (exact, ieee, count) = replay(H100_E4M3_PROBE, H100_E4M3, 32, e4m3);
        println!("e4m3: {exact} of {count} probed results reproduced; IEEE fused sums in k order give {ieee}");
        assert_eq!(exact, count, "every probed FP8 result, bit for bit");
        assert!(ieee < count / 2, "IEEE sums differ from the FP8 tensor cores in most results ({ieee} of {count} equal)");
        let f16_model_on_fp8 = replay(H100_E4M3_PROBE, TensorCoreSums { group: 32, ..H100_F16 }, 32, e4m3).0;
        assert!(f16_model_on_fp8 < count / 2, "the FP8 instruction keeps fewer bits than the f16 one ({f16_model_on_fp8})");
    }

    #[test]
    fn rounding_to_f32_in_each_direction() {
        let x = 1.0 + 2f64.powi(-24) * 1.5; // between 1 and 1 + 2^-23, nearer the latter
        assert_eq!(round_f32(x, Rounding::NearestEven), 1.0 + 2f32.powi(-23));
        assert_eq!(round_f32(x, Rounding::TowardZero), 1.0);
        assert_eq!(round_f32(-x, Rounding::TowardZero), -1.0);
        assert_eq!(round_f32(-x, Rounding::Down), -1.0 - 2f32.powi(-23));
        assert_eq!(round_f32(x, Rounding::Down), 1.0);
    }

    /// Deterministic operands in a wide exponent range (E4M3-like magnitudes), for comparisons.
    fn wide_operands(k: usize, seed: u32) -> Vec<(f32, f32)> {
        (0..k)
            .map(|i| {
                let h = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed.wrapping_mul(40_503));
                let a = ((h % 15) as f32 - 7.0) * 2f32.powi((h >> 8) as i32 % 9 - 4);
                let b = ((h >> 4) % 13) as f32 * 0.125 - 0.75;
                (a, b)
            })
            .collect()
    }

    #[test]
    fn promotion_over_all_of_k_is_one_chained_sum() {
        for (seed, k) in [(1, 96), (2, 128), (3, 200), (4, 31)] {
            let ops = wide_operands(k, seed);
            let chained = H100_E4M3.dot(0.0, k, |i| ops[i]);
            for every in [k, k + 1, 4096, 0] {
                assert_eq!(H100_E4M3.promoted_dot(every, k, |i| ops[i]).to_bits(), chained.to_bits(), "k {k}, every {every}");
            }
        }
        assert_eq!(H100_E4M3.promoted_dot(128, 0, |_| (1.0, 1.0)), 0.0, "an empty sum is 0");
    }

    #[test]
    fn promotion_keeps_what_a_chained_fp8_sum_swamps() {
        // 32 products of 256 (the first instruction's step, exact: 8192), then 96 products of
        // 2^-3: chained, each later step aligns 2^-3 to 13 bits below 8192's exponent (unit 2^0)
        // and loses it entirely; promoted every 32, the three later chunks sum to 4 each (exact)
        // and the f32 total is 8192 + 12.
        let at = |k: usize| if k < 32 { (16.0f32, 16.0f32) } else { (0.5f32, 0.25f32) };
        let chained = H100_E4M3.dot(0.0, 128, at);
        assert_eq!(chained, 8192.0);
        assert_eq!(H100_E4M3.promoted_dot(32, 128, at), 8204.0);
        assert_eq!(H100_E4M3.promoted_dot(64, 128, at), 8200.0, "chunks of 64: the first chunk swamps its second step");
        // The chunk partials add in f32 with round-to-nearest-even: 2^24 + 1 + 1 added one partial
        // at a time stays 2^24 (each tie rounds to even), while one f16 step keeps 2^24 + 2; and
        // (2^24 + 2) + 1 rounds up to 2^24 + 4 (the tie's even neighbour), not down as the tensor
        // cores' truncation would.
        let big = 2f32.powi(12);
        let at = |k: usize| if k == 0 { (big, big) } else { (1.0f32, 1.0f32) };
        assert_eq!(H100_F16.promoted_dot(1, 3, at), 2f32.powi(24));
        assert_eq!(H100_F16.promoted_dot(3, 3, at), 2f32.powi(24) + 2.0);
        assert_eq!(H100_F16.promoted_dot(3, 4, at), 2f32.powi(24) + 4.0);
        assert_eq!(H100_F16.dot(0.0, 4, at), 2f32.powi(24) + 2.0, "chained: the last 1 is truncated away");
    }

    #[test]
    fn exact_sums_are_kept_and_non_finite_ones_fall_back() {
        assert_eq!(RZ.dot(0.5, 4, |k| (k as f32, 2.0)), 12.5);
        assert!(RZ.dot(0.0, 2, |_| (f32::INFINITY, 1.0)).is_infinite());
        assert_eq!(RZ.dot(3.0, 0, |_| (1.0, 1.0)), 3.0);
    }
}
