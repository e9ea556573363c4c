//! The weight-quantization algorithms of `qfuse::quant::algo` on deterministic synthetic data shaped
//! like transformer layers: weights with a few outlier input channels, activations with correlated
//! channels and a few large-magnitude ("salient") channels.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use qfuse::quant::algo::{
    awq_search, clip_search, dequantize_scaled, gptq, gptq_from_stats, output_error, quantize_with, rtn, smooth_factors,
    weight_absmax_per_input, AlgoError, AwqCalib, AwqOptions, ChannelStats, ClipOptions, GptqOptions, GroupQuant,
};
use std::time::Instant;

/// xorshift64* with uniform and normal draws.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f32 {
        let u1 = self.uniform().max(1e-7);
        let u2 = self.uniform();
        (-2.0 * u1.ln()).sqrt() * (std::f32::consts::TAU * u2).cos()
    }
}

/// `[n, k]` weights ~ N(0, 0.02²), with every input column `j ≡ 3 (mod 97)` six times larger.
fn weights(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n * k).map(|i| r.normal() * if i % k % 97 == 3 { 0.12 } else { 0.02 }).collect()
}

/// Input channels with 25× larger activations.
fn salient(k: usize) -> Vec<usize> {
    (0..k).filter(|j| j % 61 == 7).collect()
}

/// `[m, k]` activations: 16 shared latent factors plus noise (correlated channels), per-channel
/// magnitudes in [0.5, 1.5), and the [`salient`] channels 25× larger.
fn activations(m: usize, k: usize, seed: u64) -> Vec<f32> {
    const R: usize = 16;
    let mut r = Rng::new(seed);
    let mix: Vec<f32> = (0..R * k).map(|_| r.normal() / (R as f32).sqrt()).collect();
    let big = salient(k);
    let gain: Vec<f32> = (0..k).map(|j| (0.5 + r.uniform()) * if big.contains(&j) { 25.0 } else { 1.0 }).collect();
    let mut x = vec![0f32; m * k];
    for row in x.chunks_mut(k) {
        let z: Vec<f32> = (0..R).map(|_| r.normal()).collect();
        for (j, v) in row.iter_mut().enumerate() {
            let shared: f32 = (0..R).map(|i| z[i] * mix[i * k + j]).sum();
            *v = (shared + 0.3 * r.normal()) * gain[j];
        }
    }
    x
}

/// Checks codes against the code range and returns the worst `|w − ŵ| / (s/2)`.
fn rtn_error_ratio(w: &[f32], q: &GroupQuant) -> f32 {
    let (lo, hi) = if q.symmetric { (-(1 << (q.bits - 1)), (1 << (q.bits - 1)) - 1) } else { (0, (1 << q.bits) - 1) };
    assert!(q.codes.iter().all(|&c| (lo..=hi).contains(&i32::from(c))), "codes outside [{lo}, {hi}]");
    let d = q.dequantize();
    let ng = q.k.div_ceil(q.group);
    let mut worst = 0f32;
    for (i, (a, b)) in w.iter().zip(&d).enumerate() {
        let s = q.scales[i / q.k * ng + i % q.k / q.group];
        worst = worst.max((a - b).abs() / (s / 2.0));
    }
    worst
}

#[test]
fn rtn_error_is_at_most_half_a_step_with_a_ragged_last_group() {
    let (n, k, g) = (16, 200, 64);
    let mut w = weights(n, k, 1);
    for i in (0..n * k).step_by(13) {
        w[i] = 0.0;
    }
    for (bits, sym) in [(4, false), (4, true), (3, false), (8, true), (2, true), (7, false)] {
        let q = rtn(&w, n, k, bits, g, sym).unwrap();
        assert_eq!(q.scales.len(), n * 4);
        assert_eq!(q.zeros.as_ref().map(Vec::len), (!sym).then_some(n * 4));
        let worst = rtn_error_ratio(&w, &q);
        assert!(worst <= 1.0 + 1e-5, "{bits}-bit sym={sym}: error {worst}·s/2");
        // Every group's range includes 0, so exact zeros come back exactly.
        let d = q.dequantize();
        assert!(w.iter().zip(&d).all(|(a, b)| *a != 0.0 || *b == 0.0), "{bits}-bit sym={sym}: 0 not exact");
        // The ragged last group (8 columns) has the parameters of those 8 values alone.
        for r in 0..n {
            let tail = &w[r * k + 192..(r + 1) * k];
            let alone = rtn(tail, 1, 8, bits, g, sym).unwrap();
            assert_eq!(alone.scales[0], q.scales[r * 4 + 3]);
            assert_eq!(alone.codes, q.codes[r * k + 192..(r + 1) * k]);
        }
    }
}

#[test]
fn quantize_with_reuses_parameters() {
    let (n, k) = (4, 40);
    let w = weights(n, k, 2);
    let q = rtn(&w, n, k, 4, 16, false).unwrap();
    assert_eq!(quantize_with(&w, q.params()).unwrap(), q);
    // A weight twice as large saturates at the old parameters' ends.
    let w2: Vec<f32> = w.iter().map(|v| v * 2.0).collect();
    let q2 = quantize_with(&w2, q.params()).unwrap();
    assert!(q2.codes.contains(&15) && q2.codes.contains(&0));
    assert!(quantize_with(&w[1..], q.params()).is_err());
}

fn proptest_config() -> ProptestConfig {
    let file = concat!(env!("CARGO_MANIFEST_DIR"), "/proptest-regressions/quant_algo.txt");
    ProptestConfig { cases: 256, failure_persistence: Some(Box::new(FileFailurePersistence::Direct(file))), ..ProptestConfig::default() }
}

proptest! {
    #![proptest_config(proptest_config())]
    #[test]
    fn rtn_bound_holds_for_any_finite_group(vals in prop::collection::vec(-1e3f32..1e3, 1..70), g in 1usize..40, bits in 2u32..8, sym: bool) {
        let q = rtn(&vals, 1, vals.len(), bits, g, sym).unwrap();
        prop_assert!(rtn_error_ratio(&vals, &q) <= 1.0 + 1e-4);
    }
}

/// `a [m, k] · b[n, k]ᵀ` in f64.
fn product(a: &[f32], b: &[f32], k: usize) -> Vec<f64> {
    a.chunks(k).flat_map(|x| b.chunks(k).map(move |w| x.iter().zip(w).map(|(p, q)| f64::from(*p) * f64::from(*q)).sum::<f64>())).collect()
}

#[test]
fn smoothquant_preserves_the_product_and_balances_ranges() {
    let (m, k) = (64, 96);
    let x = activations(m, k, 3);
    let (wq, wv) = (weights(48, k, 4), weights(32, k, 5));
    let mut stats = ChannelStats::new(k).unwrap();
    stats.observe(&x, k).unwrap();
    let w_absmax = weight_absmax_per_input(&[(&wq, 48), (&wv, 32)], k).unwrap();
    let s = smooth_factors(stats.absmax(), &w_absmax, 0.5).unwrap();
    let xs: Vec<f32> = x.chunks(k).flat_map(|r| r.iter().zip(&s).map(|(v, f)| v / f)).collect();
    for (w, n) in [(&wq, 48), (&wv, 32)] {
        let ws: Vec<f32> = w.chunks(k).flat_map(|r| r.iter().zip(&s).map(|(v, f)| v * f)).collect();
        let (want, got) = (product(&x, w, k), product(&xs, &ws, k));
        let scale = want.iter().fold(0f64, |a, v| a.max(v.abs()));
        let worst = want.iter().zip(&got).fold(0f64, |a, (p, q)| a.max((p - q).abs()));
        assert!(worst <= 1e-5 * scale, "[{m}x{n}] product changed by {worst} (max |y| {scale})");
    }
    // α = 0.5: max|X_j/s_j| = max|W_j·s_j| = sqrt(max|X_j|·max|W_j|).
    for j in 0..k {
        let xa = (0..m).map(|r| xs[r * k + j].abs()).fold(0f32, f32::max);
        let wa = w_absmax[j] * s[j];
        let mid = (stats.absmax()[j] * w_absmax[j]).sqrt();
        assert!((xa - wa).abs() <= 1e-5 * mid && (xa - mid).abs() <= 1e-5 * mid, "channel {j}: {xa} vs {wa} vs {mid}");
    }
    // Smoothing flattens the activation outliers: the salient channels no longer dominate.
    let ratio = |v: &[f32]| v.iter().fold(0f32, |a, &b| a.max(b)) / v.iter().fold(f32::INFINITY, |a, &b| a.min(b));
    let smoothed: Vec<f32> = (0..k).map(|j| stats.absmax()[j] / s[j]).collect();
    assert!(ratio(&smoothed) < ratio(stats.absmax()) / 4.0);
}

/// Three `[384, 384]` weights sharing one input (Q, K, V: 1152×384 in all).
fn qkv(k: usize) -> Vec<Vec<f32>> {
    (0..3).map(|i| weights(384, k, 10 + i)).collect()
}

#[test]
fn awq_at_alpha_zero_is_rtn() {
    let k = 384;
    let ws = qkv(k);
    let x = activations(256, k, 20);
    let set: Vec<(&[f32], usize)> = ws.iter().map(|w| (w.as_slice(), 384)).collect();
    let opts = AwqOptions { grid: 1, ..Default::default() };
    let r = awq_search(&set, &AwqCalib { x: &x, k, mean_abs: None }, &opts).unwrap();
    assert_eq!(r.alpha, 0.0);
    assert!(r.scales.iter().all(|&s| s == 1.0));
    let mut err = 0f64;
    for (w, q) in ws.iter().zip(&r.quant) {
        let plain = rtn(w, 384, k, 4, 128, false).unwrap();
        assert_eq!(q, &plain);
        err += output_error(&x, k, w, &plain.dequantize(), 384).unwrap();
    }
    let mse = err / (256.0 * 1152.0);
    assert!((r.losses[0].1 - mse).abs() <= 1e-5 * mse, "loss at α = 0 {} vs RTN {mse}", r.losses[0].1);
}

#[test]
fn awq_beats_rtn_on_salient_channels() {
    let (m, k) = (2048, 384);
    let ws = qkv(k);
    let x = activations(m, k, 21);
    let set: Vec<(&[f32], usize)> = ws.iter().map(|w| (w.as_slice(), 384)).collect();
    let start = Instant::now();
    let r = awq_search(&set, &AwqCalib { x: &x, k, mean_abs: None }, &AwqOptions::default()).unwrap();
    let secs = start.elapsed().as_secs_f64();
    let (mut rtn_err, mut awq_err) = (0f64, 0f64);
    for (w, q) in ws.iter().zip(&r.quant) {
        rtn_err += output_error(&x, k, w, &rtn(w, 384, k, 4, 128, false).unwrap().dequantize(), 384).unwrap();
        awq_err += output_error(&x, k, w, &dequantize_scaled(q, &r.scales).unwrap(), 384).unwrap();
    }
    let outputs = (m * 1152) as f64;
    let (rtn_mse, awq_mse) = (rtn_err / outputs, awq_err / outputs);
    println!(
        "AWQ 1152x384, {m} rows: {secs:.2} s; alpha {} MSE {awq_mse:.4e} vs RTN {rtn_mse:.4e} (alpha 0 loss {:.4e})",
        r.alpha, r.losses[0].1
    );
    assert_eq!(r.losses.len(), 20);
    assert!(r.alpha > 0.0, "the search kept α = 0: {:?}", r.losses);
    assert!(awq_mse < rtn_mse && awq_mse < r.losses[0].1, "AWQ {awq_mse} not below RTN {rtn_mse} / α = 0 {}", r.losses[0].1);
    let best = r.losses.iter().map(|l| l.1).fold(f64::INFINITY, f64::min);
    assert!((awq_mse - best).abs() <= 1e-5 * best, "reported best {best} vs recomputed {awq_mse}");
    assert!(secs < 30.0, "AWQ search took {secs:.1} s");
}

#[test]
fn awq_from_stats_matches_direct_rows() {
    let k = 128;
    let w = weights(64, k, 30);
    let x = activations(300, k, 31);
    let mut stats = ChannelStats::new(k).unwrap().with_samples(512);
    for chunk in x.chunks(k * 37) {
        stats.observe(chunk, k).unwrap();
    }
    let opts = AwqOptions { group: 32, grid: 10, ..Default::default() };
    let a = awq_search(&[(&w, 64)], &AwqCalib::from_stats(&stats).unwrap(), &opts).unwrap();
    let b = awq_search(&[(&w, 64)], &AwqCalib { x: &x, k, mean_abs: None }, &opts).unwrap();
    assert_eq!((a.alpha, &a.scales, &a.quant), (b.alpha, &b.scales, &b.quant));
}

/// Per `(row, group)` of `w [n, k]`: `Σ_m (X_{m,g}·(w − ŵ)_{n,g})²` over the rows `x`, summed naively.
fn group_errors(x: &[f32], k: usize, w: &[f32], w_hat: &[f32], group: usize) -> Vec<f64> {
    let mut out = vec![];
    for (row, row_hat) in w.chunks(k).zip(w_hat.chunks(k)) {
        for c0 in (0..k).step_by(group) {
            let c1 = (c0 + group).min(k);
            let err = x.chunks(k).map(|xr| (c0..c1).map(|j| f64::from(xr[j]) * (f64::from(row[j]) - f64::from(row_hat[j]))).sum::<f64>());
            out.push(err.map(|v| v * v).sum());
        }
    }
    out
}

/// [`weights`] with one isolated outlier, 8× larger, every 211 elements.
fn outlier_weights(n: usize, k: usize, seed: u64) -> Vec<f32> {
    let mut w = weights(n, k, seed);
    w.iter_mut().step_by(211).for_each(|v| *v *= 8.0);
    w
}

#[test]
fn clip_never_increases_group_errors_and_cuts_outlier_errors() {
    let (n, k, m) = (384, 384, 400);
    let w = outlier_weights(n, k, 40);
    let x = activations(m, k, 41);
    // Asymmetric and symmetric groups, and a ragged last group (384 = 3·100 + 84).
    for (symmetric, group) in [(false, 128), (true, 128), (false, 100)] {
        let opts = ClipOptions { group, symmetric, ..Default::default() };
        let start = Instant::now();
        let c = clip_search(&w, n, &x, k, &opts).unwrap();
        let secs = start.elapsed().as_secs_f64();
        let plain = rtn(&w, n, k, 4, group, symmetric).unwrap();
        let (before, after) = (group_errors(&x, k, &w, &plain.dequantize(), group), group_errors(&x, k, &w, &c.quant.dequantize(), group));
        let worse = before.iter().zip(&after).filter(|(b, a)| **a > **b * (1.0 + 1e-9)).count();
        assert_eq!(worse, 0, "sym={symmetric} G={group}: {worse} groups got worse");
        let (sum_before, sum_after) = (before.iter().sum::<f64>(), after.iter().sum::<f64>());
        assert!((c.error_unclipped - sum_before).abs() <= 1e-6 * sum_before, "{} vs naive {sum_before}", c.error_unclipped);
        assert!((c.error - sum_after).abs() <= 1e-6 * sum_after, "{} vs naive {sum_after}", c.error);
        let (e_rtn, e_clip) =
            (output_error(&x, k, &w, &plain.dequantize(), n).unwrap(), output_error(&x, k, &w, &c.quant.dequantize(), n).unwrap());
        println!(
            "clip {n}x{k} sym={symmetric} G={group}: {secs:.2} s; mean ratio {:.3}; group error {:.4e} -> {:.4e}; output error {e_rtn:.4e} -> {e_clip:.4e}",
            c.mean_ratio, c.error_unclipped, c.error
        );
        assert!(sum_after < 0.9 * sum_before && e_clip < e_rtn, "sym={symmetric} G={group}: no gain on outlier weights");
        assert!(c.mean_ratio < 1.0 && c.ratios.iter().all(|r| (0.5..=1.0).contains(r)));
        let (lo, hi) = if symmetric { (-8, 7) } else { (0, 15) };
        assert!(c.quant.codes.iter().all(|&q| (lo..=hi).contains(&q)), "codes outside [{lo}, {hi}]");
        assert_eq!(quantize_with(&w, c.quant.params()).unwrap(), c.quant, "the parameters do not reproduce the codes");
    }
}

#[test]
fn clip_subsamples_rows_deterministically() {
    let (n, k, m) = (32, 64, 1000);
    let w = outlier_weights(n, k, 50);
    let x = activations(m, k, 51);
    let opts = ClipOptions { group: 32, max_rows: 300, ..Default::default() };
    let a = clip_search(&w, n, &x, k, &opts).unwrap();
    // Rows ⌊i·M/300⌋: evenly spaced, as the AWQ search takes them.
    let picked: Vec<f32> = (0..300).flat_map(|i| x[i * m / 300 * k..][..k].to_vec()).collect();
    let b = clip_search(&w, n, &picked, k, &ClipOptions { max_rows: 300, ..opts.clone() }).unwrap();
    assert_eq!((&a.quant, &a.ratios), (&b.quant, &b.ratios));
    assert_eq!(a.quant, clip_search(&w, n, &x, k, &opts).unwrap().quant);
}

#[test]
fn clip_timing_on_ffn_shapes() {
    let x = activations(512, 1536, 61);
    for (n, k) in [(1536, 384), (384, 1536)] {
        let w = weights(n, k, 60);
        let start = Instant::now();
        let c = clip_search(&w, n, &x[..512 * k], k, &ClipOptions::default()).unwrap();
        println!("clip {n}x{k}, 512 rows, G=128: {:.2} s (mean ratio {:.3})", start.elapsed().as_secs_f64(), c.mean_ratio);
        assert!(c.error <= c.error_unclipped);
    }
}

/// GPTQ and RTN output errors of one weight on the rows `x`.
fn gptq_vs_rtn(w: &[f32], n: usize, k: usize, x: &[f32], stats: &ChannelStats, opts: &GptqOptions) -> (f64, f64, f64) {
    let start = Instant::now();
    let r = gptq_from_stats(w, n, stats, opts).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(r.quant.codes.len(), n * k);
    let (lo, hi) = if opts.symmetric { (-8, 7) } else { (0, 15) };
    assert!(r.quant.codes.iter().all(|&c| (lo..=hi).contains(&c)));
    assert!(r.h_error.is_finite() && r.h_error > 0.0);
    let e_gptq = output_error(x, k, w, &r.quant.dequantize(), n).unwrap();
    let e_rtn = output_error(x, k, w, &rtn(w, n, k, opts.bits, opts.group, opts.symmetric).unwrap().dequantize(), n).unwrap();
    (e_gptq, e_rtn, secs)
}

#[test]
fn gptq_beats_rtn_on_correlated_inputs() {
    let (n, k, m) = (384, 1536, 2048);
    let w = weights(n, k, 40);
    let x = activations(m, k, 41);
    let start = Instant::now();
    let mut stats = ChannelStats::new(k).unwrap().with_hessian();
    stats.observe(&x, k).unwrap();
    println!("XᵀX of {m}x{k}: {:.2} s", start.elapsed().as_secs_f64());
    for (act_order, symmetric) in [(false, false), (true, false), (false, true), (true, true)] {
        let opts = GptqOptions { act_order, symmetric, ..Default::default() };
        let (e_gptq, e_rtn, secs) = gptq_vs_rtn(&w, n, k, &x, &stats, &opts);
        println!(
            "GPTQ {n}x{k} act_order={act_order} sym={symmetric}: {secs:.2} s; ‖X(W−Ŵ)ᵀ‖² {e_gptq:.4e} vs RTN {e_rtn:.4e} ({:.1} %)",
            100.0 * e_gptq / e_rtn
        );
        assert!(e_gptq <= 0.9 * e_rtn, "act_order={act_order} sym={symmetric}: GPTQ {e_gptq} not 10 % below RTN {e_rtn}");
        assert!(secs < 30.0, "GPTQ took {secs:.1} s");
    }
}

#[test]
fn gptq_handles_dead_channels_and_rank_deficient_inputs() {
    let (n, k) = (32, 64);
    let w = weights(n, k, 50);
    // 40 rows < 64 channels (rank-deficient), channel 5 always 0.
    let mut x = activations(40, k, 51);
    x.iter_mut().skip(5).step_by(k).for_each(|v| *v = 0.0);
    let mut stats = ChannelStats::new(k).unwrap().with_hessian();
    stats.observe(&x, k).unwrap();
    // Groups within blocks, groups longer than blocks, groups not dividing the block, ragged groups.
    for (act_order, group, block) in [(false, 16, 128), (true, 16, 128), (false, 48, 32), (true, 48, 32), (false, 24, 128), (false, 7, 10)]
    {
        let opts = GptqOptions { group, block, act_order, ..Default::default() };
        let r = gptq_from_stats(&w, n, &stats, &opts).unwrap();
        assert_eq!(r.dead, 1);
        let d = r.quant.dequantize();
        assert!((0..n).all(|row| d[row * k + 5] == 0.0), "the dead column is not zero");
        let e = output_error(&x, k, &w, &d, n).unwrap();
        let e_rtn = output_error(&x, k, &w, &rtn(&w, n, k, 4, group, false).unwrap().dequantize(), n).unwrap();
        assert!(e < e_rtn, "act_order={act_order} group={group} block={block}: {e} vs RTN {e_rtn}");
    }
}

#[test]
fn gptq_rejects_nan_and_indefinite_hessians() {
    let w = weights(4, 2, 60);
    let err = gptq(&w, 4, 2, &[1.0, f64::NAN, f64::NAN, 1.0], 3, &GptqOptions::default()).unwrap_err();
    assert!(err.to_string().contains("XᵀX[0, 1] is NaN"), "{err}");
    match gptq(&w, 4, 2, &[1.0, 2.0, 2.0, 1.0], 1, &GptqOptions::default()) {
        Err(AlgoError::NotPositiveDefinite { k: 2, percdamp, .. }) => assert!((percdamp - 0.1).abs() < 1e-12),
        other => panic!("expected NotPositiveDefinite, got {other:?}"),
    }
    let msg = gptq(&w, 4, 2, &[1.0, 2.0, 2.0, 1.0], 1, &GptqOptions::default()).unwrap_err().to_string();
    assert!(msg.contains("2-input layer") && msg.contains("larger percdamp"), "{msg}");
    // NaN activations are skipped by the statistics, so GPTQ on them runs.
    let mut stats = ChannelStats::new(2).unwrap().with_hessian();
    stats.observe(&[1.0, 0.5, f32::NAN, 2.0, -1.0, 0.25], 2).unwrap();
    assert_eq!(stats.nonfinite(), 1);
    assert!(gptq_from_stats(&w, 4, &stats, &GptqOptions { group: 2, ..Default::default() }).is_ok());
    assert!(gptq_from_stats(&w, 4, &ChannelStats::new(2).unwrap(), &GptqOptions::default()).is_err());
}
