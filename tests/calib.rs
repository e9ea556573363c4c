//! Calibration: histogram statistics, the four amax methods against analytic values and independent
//! references, unusable statistics, collection over the tiny BERT, and the sentence sets.

mod common;

use common::*;
use qfuse::import::{self, ImportOptions};
use qfuse::interp::Tensor;
use qfuse::ir::{DType, Op, ValueId};
use qfuse::quant::calib::{
    self, choose_amax, default_calibration_sentences, default_eval_sentences, read_sentences, CalibIssue, CalibMethod, TensorStats,
    NUM_BINS,
};
use std::collections::HashSet;

// ---------------------------------------------------------------------------------------------
// Sample generators
// ---------------------------------------------------------------------------------------------

/// splitmix64 uniforms in (0, 1).
fn uniforms(n: usize, seed: u64) -> Vec<f64> {
    let mut s = seed;
    (0..n)
        .map(|_| {
            s = s.wrapping_add(0x9E3779B97F4A7C15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58476D1CE4E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D049BB133111EB);
            z ^= z >> 31;
            ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        })
        .collect()
}

/// Inverse standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9).
fn inv_norm_cdf(p: f64) -> f64 {
    const A: [f64; 6] =
        [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
    const B: [f64; 5] = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
    const C: [f64; 6] =
        [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
    const D: [f64; 4] = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
    let tail = |q: f64| {
        (((((C[0] * q + C[1]) * q + C[2]) * q + C[3]) * q + C[4]) * q + C[5]) / ((((D[0] * q + D[1]) * q + D[2]) * q + D[3]) * q + 1.0)
    };
    if p < 0.02425 {
        tail((-2.0 * p.ln()).sqrt())
    } else if p > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - p).ln()).sqrt())
    } else {
        let q = p - 0.5;
        let r = q * q;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * q
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
}

/// A stratified standard-normal sample of size `n` (quantiles at `(k + ½)/n`, alternating signs),
/// so its empirical percentiles equal the analytic ones to within the stratification step.
fn stratified_gaussian(n: usize) -> Vec<f32> {
    (0..n)
        .map(|k| {
            let u = (k as f64 + 0.5) / n as f64;
            let half_normal = inv_norm_cdf(0.5 + 0.5 * u);
            (if k % 2 == 0 { half_normal } else { -half_normal }) as f32
        })
        .collect()
}

/// A random Gaussian sample (Box–Muller).
fn random_gaussian(n: usize, seed: u64) -> Vec<f32> {
    let u = uniforms(n + 1, seed);
    (0..n).map(|k| ((-2.0 * u[k].ln()).sqrt() * (std::f64::consts::TAU * u[k + 1]).cos()) as f32).collect()
}

/// A random Laplace(0, b) sample.
fn random_laplace(n: usize, seed: u64, b: f64) -> Vec<f32> {
    let u = uniforms(2 * n, seed);
    (0..n).map(|k| (-b * u[2 * k].ln() * if u[2 * k + 1] < 0.5 { -1.0 } else { 1.0 }) as f32).collect()
}

fn stats_of(batches: &[&[f32]]) -> TensorStats {
    let mut s = TensorStats::new();
    for b in batches {
        s.add(b);
    }
    s
}

fn true_amax(xs: &[f32]) -> f32 {
    xs.iter().fold(0.0f32, |m, x| m.max(x.abs()))
}

// ---------------------------------------------------------------------------------------------
// Max, Percentile, histogram
// ---------------------------------------------------------------------------------------------

#[test]
fn max_equals_the_true_max() {
    let xs = random_gaussian(100_000, 1);
    let (a, b) = xs.split_at(30_000);
    let s = stats_of(&[a, b, &[-7.25, 0.0]]);
    assert_eq!(s.amax(), 7.25);
    assert_eq!(s.count(), 100_002);
    for dt in [DType::I8, DType::F8E4M3] {
        assert_eq!(choose_amax(&s, CalibMethod::Max, dt), Ok(7.25));
    }
    let s = stats_of(&[&xs]);
    assert_eq!(choose_amax(&s, CalibMethod::Max, DType::I8), Ok(true_amax(&xs)));
}

#[test]
fn percentile_of_uniform_is_within_one_bin() {
    let n = 1 << 20;
    let xs: Vec<f32> = (0..n).map(|k| ((k as f64 + 0.5) / n as f64) as f32 * if k % 3 == 0 { -1.0 } else { 1.0 }).collect();
    for (p, want) in [(50.0, 0.5), (99.0, 0.99), (99.9, 0.999), (99.99, 0.9999)] {
        let s = stats_of(&[&xs]);
        let got = choose_amax(&s, CalibMethod::Percentile(p), DType::I8).unwrap() as f64;
        assert!((got - want).abs() <= s.bin_width(), "p{p}: {got} vs {want} (bin {})", s.bin_width());
    }
    assert_eq!(choose_amax(&stats_of(&[&xs]), CalibMethod::Percentile(100.0), DType::I8), Ok(true_amax(&xs)));
}

#[test]
fn percentile_of_gaussian_is_within_one_bin() {
    let xs = stratified_gaussian(1 << 20);
    // Two-sided normal quantiles: P(|x| < t) = p  ⇔  t = Φ⁻¹((1 + p) / 2).
    for (p, want) in [(95.0, 1.959963984540054), (99.9, 3.2905267314918945), (99.99, 3.890591886413094)] {
        // One batch (full resolution) and growing batches (doubled range).
        let (lo, hi): (Vec<f32>, Vec<f32>) = xs.iter().partition(|x| x.abs() < 1.0);
        for s in [stats_of(&[&xs]), stats_of(&[&lo, &hi])] {
            let got = choose_amax(&s, CalibMethod::Percentile(p), DType::I8).unwrap() as f64;
            assert!((got - want).abs() <= s.bin_width(), "p{p}: {got} vs {want} (bin {})", s.bin_width());
        }
    }
}

#[test]
fn histogram_doubling_equals_histogram_built_with_final_range() {
    let base: Vec<f32> = random_gaussian(50_000, 7);
    let first: Vec<f32> = base[..10_000].iter().map(|x| x * 0.1).collect();
    let r0 = true_amax(&first);
    // Batch 2 peaks exactly at 2·r0 (the range becomes 2·r0 and that value sits on its top edge),
    // and also contains r0 itself (the old top edge); batch 3 forces two more doublings.
    let mut second: Vec<f32> = base[10_000..30_000].iter().map(|x| (x * 0.2).clamp(-2.0 * r0, 2.0 * r0)).collect();
    second.extend([2.0 * r0, -r0, r0]);
    let third: Vec<f32> = base[30_000..].iter().map(|x| x * 1.5 * r0).filter(|x| x.abs() <= 8.0 * r0).chain([-7.9 * r0]).collect();
    let batched = stats_of(&[&first, &second, &third]);
    assert_eq!(batched.range(), (8.0 * r0) as f64, "r0 = {r0}: 2 doublings, then 2 more");

    let all: Vec<f32> = [&first[..], &second[..], &third[..]].concat();
    let mut direct = TensorStats::with_range(8.0 * r0);
    direct.add(&all);
    let diff: Vec<(usize, u64, u64)> = (0..NUM_BINS)
        .filter(|&k| batched.histogram()[k] != direct.histogram()[k])
        .map(|k| (k, batched.histogram()[k], direct.histogram()[k]))
        .collect();
    assert!(diff.is_empty(), "merging bin pairs should be exact; (bin, merged, direct): {diff:?}");
    assert_eq!((batched.count(), batched.amax()), (direct.count(), direct.amax()));
    assert_eq!(batched.histogram().iter().sum::<u64>(), all.len() as u64);

    // Against a histogram over [0, amax] (all data in one batch): both interpolated percentiles lie
    // in the bin holding the sample percentile, so they agree within the two bin widths.
    let single = stats_of(&[&all]);
    assert_eq!(single.range(), single.amax() as f64);
    for p in [50.0, 90.0, 99.0, 99.9] {
        let a = choose_amax(&batched, CalibMethod::Percentile(p), DType::I8).unwrap() as f64;
        let b = choose_amax(&single, CalibMethod::Percentile(p), DType::I8).unwrap() as f64;
        assert!((a - b).abs() <= batched.bin_width() + single.bin_width(), "p{p}: {a} vs {b}");
    }
}

#[test]
fn histogram_of_a_single_batch_is_exact() {
    // 2048 values at bin centres of [0, 2048] plus the max: one count per bin, max in the last bin.
    let mut xs: Vec<f32> = (0..NUM_BINS).map(|k| k as f32 + 0.5).collect();
    xs.push(2048.0);
    let s = stats_of(&[&xs]);
    assert_eq!(s.range(), 2048.0);
    let mut want = vec![1u64; NUM_BINS];
    want[NUM_BINS - 1] = 2;
    assert_eq!(s.histogram(), &want[..]);
}

/// A batch long enough to be scanned and binned in parallel chunks (several times the chunk of
/// 65,536) gives exactly the counts of the plain serial loop written out here: NaN and ±inf apart,
/// the amax, the last bin holding |x| = range.
#[test]
fn a_long_batch_is_binned_as_the_serial_loop_bins_it() {
    let mut xs = random_laplace(300_001, 11, 3.0);
    xs[17] = f32::NAN;
    xs[200_000] = f32::INFINITY;
    xs[250_000] = f32::NEG_INFINITY;
    let amax = xs.iter().filter(|x| x.is_finite()).fold(0.0f32, |m, x| m.max(x.abs()));
    let s = stats_of(&[&xs]);
    let (mut bins, mut nan, mut inf) = (vec![0u64; NUM_BINS], 0u64, 0u64);
    for x in &xs {
        let a = x.abs();
        if a.is_nan() {
            nan += 1;
        } else if a.is_infinite() {
            inf += 1;
        } else {
            bins[((a as f64 * (NUM_BINS as f64 / amax as f64)) as usize).min(NUM_BINS - 1)] += 1;
        }
    }
    assert_eq!((s.amax(), s.nan_count(), s.inf_count(), s.count()), (amax, nan, inf, xs.len() as u64));
    assert_eq!(s.range(), amax as f64);
    assert_eq!(s.histogram(), &bins[..]);
}

#[test]
fn zeros_before_data_stay_in_bin_zero() {
    let s = stats_of(&[&[0.0, -0.0, 0.0], &[1.0, 0.25]]);
    assert_eq!(s.range(), 1.0);
    assert_eq!(s.histogram()[0], 3);
    assert_eq!(s.histogram()[512], 1);
    assert_eq!(s.histogram()[NUM_BINS - 1], 1);
}

// ---------------------------------------------------------------------------------------------
// Entropy
// ---------------------------------------------------------------------------------------------

/// A literal port of pytorch-quantization's `_compute_amax_entropy` (numpy linspace/digitize,
/// scipy `entropy`), independent of the crate's implementation.
fn reference_entropy(hist: &[u64], width: f64, levels: usize) -> f64 {
    let mut bins: Vec<f64> = hist.iter().map(|&c| c as f64).collect();
    bins[0] = bins[1];
    let mut divergences = Vec::new();
    for i in 128..=bins.len() {
        let step = i as f64 / levels as f64;
        let space: Vec<f64> = (0..=levels).map(|k| if k == levels { i as f64 } else { k as f64 * step }).collect();
        // np.digitize(j, space) − 1 = (number of edges ≤ j) − 1.
        let digit: Vec<i64> =
            (0..i).map(|j| if bins[j] == 0.0 { -1 } else { space.iter().filter(|&&e| e <= j as f64).count() as i64 - 1 }).collect();
        let mut counts = vec![0.0; levels + 1];
        let mut members = vec![0.0; levels + 1];
        for j in 0..i {
            if digit[j] >= 0 {
                counts[digit[j] as usize] += bins[j];
                members[digit[j] as usize] += 1.0;
            }
        }
        let q: Vec<f64> =
            (0..i).map(|j| if digit[j] >= 0 { counts[digit[j] as usize] / members[digit[j] as usize] } else { 0.0 }).collect();
        let mut p: Vec<f64> = bins[..i].to_vec();
        p[i - 1] += bins[i..].iter().sum::<f64>();
        let (ps, qs): (f64, f64) = (p.iter().sum(), q.iter().sum());
        let mut kl = 0.0;
        for j in 0..i {
            let (pj, qj) = (p[j] / ps, q[j] / qs);
            if pj > 0.0 {
                kl += if qj > 0.0 { pj * (pj / qj).ln() } else { f64::INFINITY };
            }
        }
        divergences.push(kl);
    }
    let mut best = 0;
    for (k, &d) in divergences.iter().enumerate() {
        if d <= divergences[best] {
            best = k;
        }
    }
    (best + 128) as f64 * width
}

#[test]
fn entropy_clips_outliers_but_keeps_three_sigma() {
    let mut xs = random_gaussian(1 << 19, 3);
    xs.extend([40.0, -40.0, 38.5, -39.0, 40.0]);
    let s = stats_of(&[&xs]);
    assert_eq!(choose_amax(&s, CalibMethod::Max, DType::I8), Ok(40.0));
    for dt in [DType::I8, DType::F8E4M3] {
        let a = choose_amax(&s, CalibMethod::Entropy, dt).unwrap();
        assert!(a > 3.0 && a < 20.0, "{dt}: entropy amax {a} should lie between 3σ and half the outliers");
    }
}

#[test]
fn entropy_matches_a_literal_port_of_tensorrt() {
    let gauss = random_gaussian(200_000, 11);
    let laplace = random_laplace(200_000, 12, 1.0);
    let mut outliers = random_gaussian(200_000, 13);
    outliers.extend([25.0, -30.0]);
    let mut relu_like: Vec<f32> = random_gaussian(100_000, 14).into_iter().map(|x| x.max(0.0)).collect();
    relu_like.extend(random_laplace(1000, 15, 3.0));
    for (name, xs) in [("gauss", gauss), ("laplace", laplace), ("outliers", outliers), ("relu", relu_like)] {
        let s = stats_of(&[&xs]);
        let want = reference_entropy(s.histogram(), s.bin_width(), 128).min(s.amax() as f64) as f32;
        let got = choose_amax(&s, CalibMethod::Entropy, DType::I8).unwrap();
        assert_eq!(got, want, "{name}");
    }
}

#[test]
fn entropy_takes_the_last_minimum_on_ties() {
    // Isolated spikes with an empty top of the histogram: every cut past the last spike keeps each
    // spike alone in its quantized group, so Q = P and KL = 0 for all of them; the last (2048) wins.
    let mut s = TensorStats::with_range(100.0);
    s.add(&[1.0, -5.0, 20.0, 30.0, 30.0, 1.0]);
    assert_eq!(calib::methods::entropy_amax(&s, 128), 100.0);
    assert_eq!(reference_entropy(s.histogram(), s.bin_width(), 128), 100.0);
    // The result is capped at the largest value seen.
    assert_eq!(choose_amax(&s, CalibMethod::Entropy, DType::I8), Ok(30.0));
}

// ---------------------------------------------------------------------------------------------
// MSE
// ---------------------------------------------------------------------------------------------

/// Σ (x − fake_quant_i8(x))² over the samples, with scale amax/127, RNE and clamp to [−128, 127].
fn int8_sq_error(xs: &[f32], amax: f32) -> f64 {
    let s = amax as f64 / 127.0;
    xs.iter().map(|&x| (x as f64 - (x as f64 / s).round_ties_even().clamp(-128.0, 127.0) * s).powi(2)).sum()
}

#[test]
fn mse_beats_max_on_laplace_for_int8() {
    let xs = random_laplace(1 << 18, 21, 1.0);
    let s = stats_of(&[&xs]);
    let max = choose_amax(&s, CalibMethod::Max, DType::I8).unwrap();
    let mse = choose_amax(&s, CalibMethod::Mse, DType::I8).unwrap();
    assert!(mse < max, "mse amax {mse} vs max {max}");
    let (e_mse, e_max) = (int8_sq_error(&xs, mse), int8_sq_error(&xs, max));
    assert!(e_mse < e_max, "error with mse amax {e_mse} vs with max {e_max}");
    // The MSE pick is (near-)optimal over a grid of alternatives too.
    for f in [0.5, 0.7, 1.3, 1.6] {
        assert!(e_mse <= int8_sq_error(&xs, mse * f), "factor {f}");
    }
}

#[test]
fn mse_for_fp8_is_finite_and_within_range() {
    let xs = random_laplace(1 << 16, 22, 0.5);
    let s = stats_of(&[&xs]);
    let a = choose_amax(&s, CalibMethod::Mse, DType::F8E4M3).unwrap();
    assert!(a.is_finite() && a > 0.0 && a <= s.amax(), "{a}");
}

// ---------------------------------------------------------------------------------------------
// Unusable statistics
// ---------------------------------------------------------------------------------------------

const METHODS: [CalibMethod; 4] = [CalibMethod::Max, CalibMethod::Percentile(99.9), CalibMethod::Entropy, CalibMethod::Mse];

#[test]
fn unusable_statistics_are_reported_not_panicked() {
    let empty = TensorStats::new();
    let zeros = stats_of(&[&[0.0; 100], &[]]);
    let bad = stats_of(&[&[1.0, f32::NAN, 2.0, f32::INFINITY, f32::NEG_INFINITY, f32::NAN, f32::NAN]]);
    assert_eq!((bad.nan_count(), bad.inf_count(), bad.count(), bad.amax()), (3, 2, 7, 2.0));
    for m in METHODS {
        for dt in [DType::I8, DType::F8E4M3, DType::I4, DType::U8, DType::F4E2M1] {
            assert_eq!(choose_amax(&empty, m, dt), Err(CalibIssue::NoData));
            assert_eq!(choose_amax(&zeros, m, dt), Err(CalibIssue::AllZero));
            assert_eq!(choose_amax(&bad, m, dt), Err(CalibIssue::NonFinite { nan: 3, inf: 2 }));
        }
    }
    assert!(CalibIssue::NonFinite { nan: 3, inf: 2 }.to_string().contains("3 NaN"));
}

#[test]
fn degenerate_but_usable_statistics_give_positive_amax() {
    for xs in [vec![5.0f32], vec![1e-30, -1e-30], vec![3.0; 1000], vec![f32::MAX, 1.0]] {
        let s = stats_of(&[&xs]);
        for m in METHODS {
            for dt in [DType::I8, DType::F8E4M3, DType::I4] {
                let a = choose_amax(&s, m, dt).unwrap();
                assert!(a > 0.0 && a <= s.amax() && a.is_finite(), "{xs:?} {m} {dt}: {a}");
            }
        }
    }
}

#[test]
fn method_names_round_trip() {
    for m in METHODS.into_iter().chain([CalibMethod::Percentile(99.99)]) {
        assert_eq!(m.to_string().parse::<CalibMethod>(), Ok(m));
    }
    assert_eq!("percentile".parse::<CalibMethod>(), Ok(CalibMethod::Percentile(99.99)));
    assert_eq!("MSE".parse::<CalibMethod>(), Ok(CalibMethod::Mse));
    for bad in ["", "kl", "percentile:", "percentile:0", "percentile:101", "percentile:x"] {
        assert!(bad.parse::<CalibMethod>().is_err(), "{bad}");
    }
}

// ---------------------------------------------------------------------------------------------
// Collection over the tiny BERT
// ---------------------------------------------------------------------------------------------

fn tiny_batch(rows: usize, seq: usize, seed: i64) -> Vec<(&'static str, Tensor)> {
    let n = rows * seq;
    let ids: Vec<i64> = (0..n as i64).map(|k| (k * 7 + seed) % 12).collect();
    let mask: Vec<i64> = (0..n).map(|k| if k % seq == seq - 1 && k / seq == 1 { 0 } else { 1 }).collect();
    let types: Vec<i64> = (0..n).map(|k| (k % seq >= seq / 2) as i64).collect();
    vec![
        ("input_ids", Tensor::i64(vec![rows, seq], ids)),
        ("attention_mask", Tensor::i64(vec![rows, seq], mask)),
        ("token_type_ids", Tensor::i64(vec![rows, seq], types)),
    ]
}

#[test]
fn collect_covers_every_matmul_input_of_tiny_bert() {
    let dir = tiny_bert_dir();
    let model = import::load(dir.path(), &ImportOptions::default()).unwrap();
    let g = &model.graph;
    let mut values: Vec<ValueId> = Vec::new();
    for node in g.nodes.values().filter(|n| matches!(n.op, Op::MatMul { .. })) {
        for &v in &node.inputs {
            if !values.contains(&v) {
                values.push(v);
            }
        }
    }
    assert!(values.len() >= 12, "6 linear layers + attention matmuls, got {}", values.len());
    let input_ids = g.values.ids().find(|&v| matches!(&g.nodes[g.values[v].producer].op, Op::Input { .. })).unwrap();
    let mut wanted = values.clone();
    wanted.push(input_ids);

    let batches = vec![tiny_batch(2, 5, 1), tiny_batch(3, 7, 4)];
    let cal = calib::collect(g, &model.weights, &batches, &wanted, true).unwrap();
    assert_eq!((cal.batches, cal.samples), (2, 5));
    for v in &values {
        let s = &cal.stats[v];
        assert!(s.count() > 0, "{v} not observed");
        assert!(s.amax() > 0.0, "{v}");
    }
    for m in METHODS {
        for dt in [DType::I8, DType::F8E4M3] {
            let (amaxes, issues) = cal.amaxes(g, m, dt);
            // The i64 input has no f32 data: reported, not calibrated.
            assert_eq!(issues, vec![(input_ids, CalibIssue::NoData)], "{m} {dt}");
            let got: HashSet<ValueId> = amaxes.keys().copied().collect();
            assert_eq!(got, values.iter().copied().collect::<HashSet<_>>());
            assert!(amaxes.values().all(|&a| a > 0.0 && a.is_finite()), "{m} {dt}");
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Sentence sets and files
// ---------------------------------------------------------------------------------------------

#[test]
fn sentence_sets_are_disjoint_and_large_enough() {
    let cal = default_calibration_sentences();
    let eval = default_eval_sentences();
    assert!(cal.len() >= 64, "{}", cal.len());
    assert!(eval.len() >= 48, "{}", eval.len());
    let cal_set: HashSet<&String> = cal.iter().collect();
    let eval_set: HashSet<&String> = eval.iter().collect();
    assert_eq!(cal_set.len(), cal.len(), "duplicate calibration sentence");
    assert_eq!(eval_set.len(), eval.len(), "duplicate eval sentence");
    let shared: Vec<_> = cal_set.intersection(&eval_set).collect();
    assert!(shared.is_empty(), "shared sentences: {shared:?}");
    let words = |s: &String| s.split_whitespace().count();
    assert!(cal.iter().chain(&eval).all(|s| (3..=60).contains(&words(s))));
    assert!(cal.iter().any(|s| words(s) >= 40) && cal.iter().any(|s| words(s) <= 5));
    assert!(cal.iter().filter(|s| s.ends_with('?')).count() >= 5);
    assert!(cal.iter().filter(|s| s.chars().any(|c| c.is_ascii_digit())).count() >= 5);
}

#[test]
fn read_sentences_skips_blank_lines_and_names_bad_lines() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("cal.txt");
    std::fs::write(&good, "first line\r\n\n   \nsecond  line  \nthird").unwrap();
    assert_eq!(read_sentences(&good).unwrap(), vec!["first line", "second  line", "third"]);

    let bad = dir.path().join("bad.txt");
    std::fs::write(&bad, b"ok\nstill ok\nbroken \xff\xfe here\n").unwrap();
    let e = read_sentences(&bad).unwrap_err();
    assert!(e.contains("bad.txt") && e.contains("line 3") && e.contains("UTF-8"), "{e}");

    let blank = dir.path().join("blank.txt");
    std::fs::write(&blank, "\n \n").unwrap();
    assert!(read_sentences(&blank).unwrap_err().contains("blank.txt"));
    let e = read_sentences(&dir.path().join("missing.txt")).unwrap_err();
    assert!(e.contains("missing.txt"), "{e}");
}
