//! Tests of the CPU reference interpreter against hand-computed values and naive `f64` references.

use qfuse::interp::{self, InterpError, NoWeights, RunOptions, Tensor, WeightSource};
use qfuse::ir::{self, DType, Graph};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn graph(src: &str) -> Graph {
    let g = ir::parse(src).unwrap_or_else(|e| panic!("{e}\n{src}"));
    ir::verify(&g, "test").unwrap_or_else(|e| panic!("{e}\n{src}"));
    g
}

/// Runs `src` without weights and returns the outputs by name.
fn run(src: &str, inputs: Vec<(&str, Tensor)>) -> HashMap<String, Tensor> {
    run_w(src, &NoWeights, inputs)
}

fn run_w(src: &str, w: &dyn WeightSource, inputs: Vec<(&str, Tensor)>) -> HashMap<String, Tensor> {
    interp::run(&graph(src), w, &inputs).unwrap_or_else(|e| panic!("{e}")).into_iter().collect()
}

fn run_err(src: &str, w: &dyn WeightSource, inputs: Vec<(&str, Tensor)>) -> InterpError {
    match interp::run(&graph(src), w, &inputs) {
        Ok(_) => panic!("expected an error"),
        Err(e) => e,
    }
}

fn f32s(t: &Tensor) -> &[f32] {
    t.as_f32().expect("f32-held tensor")
}

/// Deterministic values in [-1, 1).
fn rand_vec(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

fn assert_close(got: &[f32], want: &[f64], rtol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = rtol * w.abs().max(1.0);
        assert!((g as f64 - w).abs() <= tol, "{what}[{i}]: got {g}, want {w}");
    }
}

fn dims(shape: &[usize]) -> String {
    shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(",")
}

fn weights(list: Vec<(&str, Tensor)>) -> HashMap<String, Arc<Tensor>> {
    list.into_iter().map(|(n, t)| (n.to_string(), Arc::new(t))).collect()
}

// ---------------------------------------------------------------------------------------------
// Matmul
// ---------------------------------------------------------------------------------------------

/// Naive f64 batched matmul with NumPy batch broadcasting.
fn naive_matmul(a: &[f32], ash: &[usize], b: &[f32], bsh: &[usize], ta: bool, tb: bool) -> (Vec<f64>, Vec<usize>) {
    let (ra, rb) = (ash.len(), bsh.len());
    let (m, k) = if ta { (ash[ra - 1], ash[ra - 2]) } else { (ash[ra - 2], ash[ra - 1]) };
    let n = if tb { bsh[rb - 2] } else { bsh[rb - 1] };
    let r = (ra - 2).max(rb - 2);
    let pad = |s: &[usize]| -> Vec<usize> { std::iter::repeat_n(1, r - s.len()).chain(s.iter().copied()).collect() };
    let (pa, pb) = (pad(&ash[..ra - 2]), pad(&bsh[..rb - 2]));
    let batch: Vec<usize> = pa.iter().zip(&pb).map(|(&x, &y)| x.max(y)).collect();
    let nb: usize = batch.iter().product();
    let mut out = vec![0f64; nb * m * n];
    for bi in 0..nb {
        let (mut rem, mut ao, mut bo, mut sa, mut sb) = (bi, 0, 0, 1, 1);
        for d in (0..r).rev() {
            let idx = rem % batch[d];
            rem /= batch[d];
            ao += if pa[d] == 1 { 0 } else { idx * sa };
            bo += if pb[d] == 1 { 0 } else { idx * sb };
            sa *= pa[d];
            sb *= pb[d];
        }
        let (ao, bo) = (ao * m * k, bo * k * n);
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0f64;
                for p in 0..k {
                    let av = if ta { a[ao + p * m + i] } else { a[ao + i * k + p] };
                    let bv = if tb { b[bo + j * k + p] } else { b[bo + p * n + j] };
                    acc += av as f64 * bv as f64;
                }
                out[bi * m * n + i * n + j] = acc;
            }
        }
    }
    (out, batch.into_iter().chain([m, n]).collect())
}

/// `matmul` against the naive product, in the default f32 order and in the split-K one.
fn check_matmul(ash: &[usize], bsh: &[usize], ta: bool, tb: bool, seed: u64) {
    for acc in [interp::Accumulation::F32, interp::Accumulation::F32SplitK { parts: 2 }, interp::Accumulation::F32SplitK { parts: 3 }] {
        check_matmul_with(ash, bsh, ta, tb, seed, acc);
    }
}

fn check_matmul_with(ash: &[usize], bsh: &[usize], ta: bool, tb: bool, seed: u64, acc: interp::Accumulation) {
    let (na, nb) = (ash.iter().product(), bsh.iter().product());
    let (a, b) = (rand_vec(na, seed), rand_vec(nb, seed + 1));
    let (want, osh) = naive_matmul(&a, ash, &b, bsh, ta, tb);
    let flags = [(ta, "transpose_a"), (tb, "transpose_b")].iter().filter(|f| f.0).map(|f| f.1).collect::<Vec<_>>().join(", ");
    let src = format!(
        "graph \"mm\" {{\n %0 = input \"a\" : f32[{}]\n %1 = input \"b\" : f32[{}]\n %2 = matmul %0, %1 {{{flags}}} : f32[{}]\n return \"y\" = %2\n}}",
        dims(ash),
        dims(bsh),
        dims(&osh)
    );
    let inputs = vec![("a", Tensor::f32(ash.to_vec(), a)), ("b", Tensor::f32(bsh.to_vec(), b))];
    let opts = RunOptions { accumulation: acc, ..Default::default() };
    let out = interp::run_with(&graph(&src), &NoWeights, &inputs, &opts, &mut |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out[0].1.shape, osh);
    assert_close(f32s(&out[0].1), &want, 1e-4, &format!("matmul {ash:?}x{bsh:?} ta={ta} tb={tb} {acc:?}"));
}

#[test]
fn matmul_all_transpose_combos_vs_naive() {
    for (i, (ta, tb)) in [(false, false), (false, true), (true, false), (true, true)].into_iter().enumerate() {
        let (m, k, n) = (7, 13, 5);
        let a = |batch: &[usize]| -> Vec<usize> { batch.iter().copied().chain(if ta { [k, m] } else { [m, k] }).collect() };
        let b = |batch: &[usize]| -> Vec<usize> { batch.iter().copied().chain(if tb { [n, k] } else { [k, n] }).collect() };
        let seed = 10 * i as u64;
        check_matmul(&a(&[]), &b(&[]), ta, tb, seed);
        check_matmul(&a(&[3]), &b(&[3]), ta, tb, seed + 2);
        check_matmul(&a(&[2, 3]), &b(&[]), ta, tb, seed + 4); // rank-2 b (Linear)
        check_matmul(&a(&[2, 1]), &b(&[3]), ta, tb, seed + 6); // broadcast batch
        check_matmul(&a(&[]), &b(&[4]), ta, tb, seed + 8); // rank-2 a, batched b
    }
}

#[test]
fn matmul_linear_and_attention_shapes_vs_naive() {
    check_matmul(&[2, 37, 64], &[48, 64], false, true, 100); // Linear over all rows
    check_matmul(&[2, 3, 16, 8], &[2, 3, 16, 8], false, true, 101); // Q·Kᵀ, batches in parallel
    check_matmul(&[2, 3, 16, 16], &[2, 3, 16, 8], false, false, 102); // P·V
    check_matmul(&[1, 300, 70], &[70, 90], false, false, 103); // single big product
}

#[test]
fn matmul_f16_output_is_rounded() {
    let src = r#"graph "h" {
  %0 = input "a" : f16[1,2]
  %1 = input "b" : f16[2,1]
  %2 = matmul %0, %1 : f16[1,1]
  return "y" = %2
}"#;
    // 1·1 + 2^-12·1 = 1 + 2^-12, which rounds to 1.0 in f16.
    let a = Tensor::from_f32_as(DType::F16, vec![1, 2], vec![1.0, 2f32.powi(-12)]);
    let b = Tensor::from_f32_as(DType::F16, vec![2, 1], vec![1.0, 1.0]);
    let out = run(src, vec![("a", a), ("b", b)]);
    assert_eq!(f32s(&out["y"]), &[1.0]);
}

#[test]
fn large_linear_4096x384x1536_matches_f64() {
    let src = r#"graph "perf" {
  %0 = input "x" : f32[4096,384]
  %1 = weight @w : f32[1536,384]
  %2 = matmul %0, %1 {transpose_b} : f32[4096,1536]
  return "y" = %2
}"#;
    let g = graph(src);
    let w = weights(vec![("w", Tensor::f32(vec![1536, 384], rand_vec(1536 * 384, 7)))]);
    let x = Tensor::f32(vec![4096, 384], rand_vec(4096 * 384, 8));
    let inputs = [("x", x)];
    let t = Instant::now();
    let out = interp::run(&g, &w, &inputs).unwrap();
    let dt = t.elapsed();
    eprintln!("4096x384x1536 matmul: {dt:?} (informational: timings are not asserted)");
    // Spot-check a few entries against f64.
    let (xv, wv, y) = (f32s(&inputs[0].1), f32s(&w["w"]), f32s(&out[0].1));
    for &(i, j) in &[(0, 0), (4095, 1535), (1234, 777)] {
        let want: f64 = (0..384).map(|p| xv[i * 384 + p] as f64 * wv[j * 384 + p] as f64).sum();
        assert!((y[i * 1536 + j] as f64 - want).abs() < 1e-4, "y[{i},{j}]");
    }
}

// ---------------------------------------------------------------------------------------------
// Normalisation, softmax, activations
// ---------------------------------------------------------------------------------------------

#[test]
fn layernorm_rmsnorm_l2_vs_f64() {
    let (rows, h) = (5, 48);
    let x: Vec<f32> = rand_vec(rows * h, 3).iter().map(|v| v * 4.0 + 1.5).collect();
    let (gam, bet) = (rand_vec(h, 4), rand_vec(h, 5));
    let src = r#"graph "ln" {
  %0 = input "x" : f32[5,48]
  %1 = input "g" : f32[48]
  %2 = input "b" : f32[48]
  %3 = layernorm %0, %1, %2 {eps=1e-5} : f32[5,48]
  %4 = rmsnorm %0, %1 {eps=1e-6} : f32[5,48]
  %5 = l2_normalize %0 {eps=1e-12} : f32[5,48]
  return "ln" = %3, "rms" = %4, "l2" = %5
}"#;
    let out = run(
        src,
        vec![
            ("x", Tensor::f32(vec![rows, h], x.clone())),
            ("g", Tensor::f32(vec![h], gam.clone())),
            ("b", Tensor::f32(vec![h], bet.clone())),
        ],
    );
    let (mut ln, mut rms, mut l2) = (vec![], vec![], vec![]);
    for r in x.chunks(h) {
        let r: Vec<f64> = r.iter().map(|&v| v as f64).collect();
        let mean = r.iter().sum::<f64>() / h as f64;
        let var = r.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / h as f64;
        let ms = r.iter().map(|v| v * v).sum::<f64>() / h as f64;
        let norm = (ms * h as f64).sqrt();
        for i in 0..h {
            ln.push((r[i] - mean) / (var + 1e-5).sqrt() * gam[i] as f64 + bet[i] as f64);
            rms.push(r[i] / (ms + 1e-6).sqrt() * gam[i] as f64);
            l2.push(r[i] / norm.max(1e-12));
        }
    }
    assert_close(f32s(&out["ln"]), &ln, 1e-5, "layernorm");
    assert_close(f32s(&out["rms"]), &rms, 1e-5, "rmsnorm");
    assert_close(f32s(&out["l2"]), &l2, 1e-6, "l2_normalize");
}

#[test]
fn l2_normalize_floor_on_zero_row() {
    let src = r#"graph "l2" {
  %0 = input "x" : f32[2,3]
  %1 = l2_normalize %0 {eps=1e-12} : f32[2,3]
  return "y" = %1
}"#;
    let out = run(src, vec![("x", Tensor::f32(vec![2, 3], vec![0.0, 0.0, 0.0, 3.0, 0.0, 4.0]))]);
    assert_eq!(f32s(&out["y"]), &[0.0, 0.0, 0.0, 0.6, 0.0, 0.8]);
}

fn softmax_ref(v: &[f64]) -> Vec<f64> {
    let m = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let s: f64 = v.iter().map(|x| (x - m).exp()).sum();
    v.iter().map(|x| (x - m).exp() / s).collect()
}

#[test]
fn softmax_last_and_middle_axis_vs_f64() {
    let x: Vec<f32> = rand_vec(2 * 3 * 4, 9).iter().map(|v| v * 8.0).collect();
    let src = r#"graph "sm" {
  %0 = input "x" : f32[2,3,4]
  %1 = softmax %0 {axis=-1} : f32[2,3,4]
  %2 = softmax %0 {axis=1} : f32[2,3,4]
  return "last" = %1, "mid" = %2
}"#;
    let out = run(src, vec![("x", Tensor::f32(vec![2, 3, 4], x.clone()))]);
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let last: Vec<f64> = xd.chunks(4).flat_map(softmax_ref).collect();
    assert_close(f32s(&out["last"]), &last, 1e-6, "softmax last");
    let mut mid = vec![0f64; 24];
    for b in 0..2 {
        for j in 0..4 {
            let col: Vec<f64> = (0..3).map(|i| xd[b * 12 + i * 4 + j]).collect();
            for (i, v) in softmax_ref(&col).into_iter().enumerate() {
                mid[b * 12 + i * 4 + j] = v;
            }
        }
    }
    assert_close(f32s(&out["mid"]), &mid, 1e-6, "softmax mid");
}

#[test]
fn softmax_all_neg_inf_row_is_nan() {
    let src = r#"graph "sm" {
  %0 = input "x" : f32[2,2]
  %1 = softmax %0 {axis=-1} : f32[2,2]
  return "y" = %1
}"#;
    let ninf = f32::NEG_INFINITY;
    let out = run(src, vec![("x", Tensor::f32(vec![2, 2], vec![ninf, ninf, 0.0, ninf]))]);
    let y = f32s(&out["y"]);
    assert!(y[0].is_nan() && y[1].is_nan());
    assert_eq!(&y[2..], &[1.0, 0.0]);
}

#[test]
fn activations_vs_f64() {
    let x: Vec<f32> = rand_vec(64, 11).iter().map(|v| v * 6.0).chain([-10.0, -5.0, 0.0, 5.0]).collect();
    let src = r#"graph "act" {
  %0 = input "x" : f32[68]
  %1 = gelu %0 : f32[68]
  %2 = gelu_tanh %0 : f32[68]
  %3 = silu %0 : f32[68]
  %4 = relu %0 : f32[68]
  %5 = tanh %0 : f32[68]
  %6 = exp %0 : f32[68]
  return "gelu" = %1, "gelu_tanh" = %2, "silu" = %3, "relu" = %4, "tanh" = %5, "exp" = %6
}"#;
    let out = run(src, vec![("x", Tensor::f32(vec![68], x.clone()))]);
    let xd: Vec<f64> = x.iter().map(|&v| v as f64).collect();
    let map = |f: &dyn Fn(f64) -> f64| xd.iter().map(|&v| f(v)).collect::<Vec<_>>();
    let k = (2.0 / std::f64::consts::PI).sqrt();
    let gelu = map(&|v| 0.5 * v * libm::erfc(-v / std::f64::consts::SQRT_2));
    // Absolute + relative check for gelu (tiny negative tail values).
    for (i, (&g, &w)) in f32s(&out["gelu"]).iter().zip(&gelu).enumerate() {
        assert!((g as f64 - w).abs() <= 1e-6 * w.abs().max(1e-3), "gelu[{i}] ({}): {g} vs {w}", xd[i]);
    }
    assert_close(f32s(&out["gelu_tanh"]), &map(&|v| 0.5 * v * (1.0 + (k * (v + 0.044715 * v.powi(3))).tanh())), 1e-6, "gelu_tanh");
    assert_close(f32s(&out["silu"]), &map(&|v| v / (1.0 + (-v).exp())), 1e-6, "silu");
    assert_close(f32s(&out["relu"]), &map(&|v| v.max(0.0)), 0.0, "relu");
    assert_close(f32s(&out["tanh"]), &map(&f64::tanh), 1e-6, "tanh");
    assert_close(f32s(&out["exp"]), &map(&f64::exp), 1e-6, "exp");
}

// ---------------------------------------------------------------------------------------------
// Element-wise, f16 rounding, shape ops, reductions
// ---------------------------------------------------------------------------------------------

#[test]
fn f16_add_rounds_to_output_dtype() {
    let src = r#"graph "h" {
  %0 = input "a" : f16[2]
  %1 = input "b" : f16[2]
  %2 = add %0, %1 : f16[2]
  %3 = cast %0 : f32[2]
  %4 = cast %1 : f32[2]
  %5 = add %3, %4 : f32[2]
  return "h" = %2, "f" = %5
}"#;
    let a = Tensor::from_f32_as(DType::F16, vec![2], vec![1.0, 1.0]);
    let b = Tensor::from_f32_as(DType::F16, vec![2], vec![2f32.powi(-12), 2f32.powi(-10)]);
    assert_eq!(f32s(&b), &[2f32.powi(-12), 2f32.powi(-10)], "both exact in f16");
    let out = run(src, vec![("a", a), ("b", b)]);
    assert_eq!(f32s(&out["h"]), &[1.0, 1.0 + 2f32.powi(-10)]);
    assert_eq!(f32s(&out["f"]), &[1.0 + 2f32.powi(-12), 1.0 + 2f32.powi(-10)]);
}

#[test]
fn binary_broadcasting() {
    let src = r#"graph "bc" {
  %0 = input "x" : f32[2,3]
  %1 = input "bias" : f32[3]
  %2 = input "col" : f32[2,1]
  %3 = add %0, %1 : f32[2,3]
  %4 = mul %2, %1 : f32[2,3]
  %5 = scalar 2.0 : f32[]
  %6 = sub %5, %0 : f32[2,3]
  %7 = max %0, %2 : f32[2,3]
  %8 = div %0, %2 : f32[2,3]
  return "add" = %3, "outer" = %4, "rsub" = %6, "max" = %7, "div" = %8
}"#;
    let x = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
    let out = run(
        src,
        vec![
            ("x", Tensor::f32(vec![2, 3], x)),
            ("bias", Tensor::f32(vec![3], vec![10.0, 20.0, 30.0])),
            ("col", Tensor::f32(vec![2, 1], vec![2.0, 5.0])),
        ],
    );
    assert_eq!(f32s(&out["add"]), &[11.0, 22.0, 33.0, 14.0, 25.0, 36.0]);
    assert_eq!(f32s(&out["outer"]), &[20.0, 40.0, 60.0, 50.0, 100.0, 150.0]);
    assert_eq!(f32s(&out["rsub"]), &[1.0, 0.0, -1.0, -2.0, -3.0, -4.0]);
    assert_eq!(f32s(&out["max"]), &[2.0, 2.0, 3.0, 5.0, 5.0, 6.0]);
    assert_eq!(f32s(&out["div"]), &[0.5, 1.0, 1.5, 0.8, 1.0, 1.2]);
}

#[test]
fn gather_iota_cast_reshape_transpose() {
    let src = r#"graph "s" {
  sym B max=4
  %0 = input "ids" : i64[B,3]
  %1 = weight @emb : f32[5,2]
  %2 = gather %1, %0 : f32[B,3,2] loc("emb")
  %3 = iota : i64[3]
  %4 = cast %3 : f32[3]
  %5 = transpose %2 {perm=[0,2,1]} : f32[B,2,3]
  %6 = reshape %5 : f32[B,6]
  %7 = cast %4 : i8[3]
  %8 = scalar 2.5 : f32[]
  %9 = mul %4, %8 : f32[3]
  %10 = cast %9 : i32[3]
  return "g" = %2, "iota" = %4, "t" = %6, "i8" = %7, "i32" = %10
}"#;
    let emb: Vec<f32> = (0..10).map(|v| v as f32).collect();
    let w = weights(vec![("emb", Tensor::f32(vec![5, 2], emb))]);
    let out = run_w(src, &w, vec![("ids", Tensor::i64(vec![2, 3], vec![4, 0, 2, 1, 1, 3]))]);
    assert_eq!(out["g"].shape, vec![2, 3, 2]);
    assert_eq!(f32s(&out["g"]), &[8.0, 9.0, 0.0, 1.0, 4.0, 5.0, 2.0, 3.0, 2.0, 3.0, 6.0, 7.0]);
    assert_eq!(f32s(&out["iota"]), &[0.0, 1.0, 2.0]);
    assert_eq!(f32s(&out["t"]), &[8.0, 0.0, 4.0, 9.0, 1.0, 5.0, 2.0, 2.0, 6.0, 3.0, 3.0, 7.0]);
    assert_eq!(out["i8"].dtype, DType::I8);
    // 0, 2.5, 5.0 → RNE → 0, 2, 5
    assert_eq!(out["i32"].as_i64().unwrap(), &[0, 2, 5]);
}

#[test]
fn transpose_bshd_to_bhsd() {
    let (b, s, h, d) = (2, 5, 3, 4);
    let x = rand_vec(b * s * h * d, 21);
    let src = r#"graph "t" {
  %0 = input "x" : f32[2,5,3,4]
  %1 = transpose %0 {perm=[0,2,1,3]} : f32[2,3,5,4]
  %2 = transpose %0 {perm=[3,1,0,2]} : f32[4,5,2,3]
  return "y" = %1, "z" = %2
}"#;
    let out = run(src, vec![("x", Tensor::f32(vec![b, s, h, d], x.clone()))]);
    let at = |i0, i1, i2, i3| x[((i0 * s + i1) * h + i2) * d + i3];
    let (y, z) = (f32s(&out["y"]), f32s(&out["z"]));
    for (i0, i1, i2, i3) in (0..b).flat_map(|a| (0..s).flat_map(move |c| (0..h).flat_map(move |e| (0..d).map(move |f| (a, c, e, f))))) {
        assert_eq!(y[((i0 * h + i2) * s + i1) * d + i3], at(i0, i1, i2, i3));
        assert_eq!(z[((i3 * s + i1) * b + i0) * h + i2], at(i0, i1, i2, i3));
    }
}

#[test]
fn reductions_and_mean_pool() {
    let src = r#"graph "r" {
  %0 = input "x" : f32[2,3,2]
  %1 = reduce_sum %0 {axes=[1]} : f32[2,2]
  %2 = reduce_mean %0 {axes=[-1], keep_dims} : f32[2,3,1]
  %3 = reduce_max %0 {axes=[0, 2]} : f32[3]
  %4 = input "mask" : i64[2,3]
  %5 = mean_pool %0, %4 : f32[2,2]
  return "sum" = %1, "mean" = %2, "max" = %3, "pool" = %5
}"#;
    let x: Vec<f32> = (0..12).map(|v| v as f32).collect();
    let out = run(src, vec![("x", Tensor::f32(vec![2, 3, 2], x)), ("mask", Tensor::i64(vec![2, 3], vec![1, 1, 0, 0, 0, 0]))]);
    assert_eq!(f32s(&out["sum"]), &[6.0, 9.0, 24.0, 27.0]);
    assert_eq!(f32s(&out["mean"]), &[0.5, 2.5, 4.5, 6.5, 8.5, 10.5]);
    assert_eq!(f32s(&out["max"]), &[7.0, 9.0, 11.0]);
    // Batch 0: mean of tokens 0 and 1; batch 1: no tokens → 0 / 1e-9 = 0.
    assert_eq!(f32s(&out["pool"]), &[1.0, 2.0, 0.0, 0.0]);
}

// ---------------------------------------------------------------------------------------------
// Quantize / dequantize
// ---------------------------------------------------------------------------------------------

#[test]
fn quantize_per_tensor_i8_rne_and_saturation() {
    let src = r#"graph "q" {
  %0 = input "x" : f32[8]
  %1 = quantize %0 {i8, per_tensor, scale=0.5} : i8[8]
  %2 = dequantize %1 {i8, per_tensor, scale=0.5} : f32[8]
  return "q" = %1, "dq" = %2
}"#;
    // x/s = 2.5, 3.5, -2.5, -0.5, 1000, -1000, 0.5, NaN
    let x = vec![1.25, 1.75, -1.25, -0.25, 500.0, -500.0, 0.25, f32::NAN];
    let out = run(src, vec![("x", Tensor::f32(vec![8], x))]);
    assert_eq!(out["q"].dtype, DType::I8);
    let q = f32s(&out["q"]);
    assert_eq!(q, &[2.0, 4.0, -2.0, 0.0, 127.0, -128.0, 0.0, 0.0]);
    assert!(q.iter().all(|v| v.is_sign_positive() || *v < 0.0), "no -0 in integers");
    assert_eq!(f32s(&out["dq"]), &[1.0, 2.0, -1.0, 0.0, 63.5, -64.0, 0.0, 0.0]);
}

#[test]
fn quantize_divides_by_the_scale() {
    // 8.25 / 1.1 = 7.5 exactly in f32 → RNE 8; 8.25 · f32(1/1.1) = 7.4999995 would round to 7.
    assert_eq!(8.25f32 / 1.1, 7.5);
    assert_eq!(8.25f32 * (1.0f32 / 1.1), 7.4999995);
    let src = r#"graph "q" {
  %0 = input "x" : f32[2]
  %1 = quantize %0 {i8, per_tensor, scale=1.1} : i8[2]
  return "q" = %1
}"#;
    let out = run(src, vec![("x", Tensor::f32(vec![2], vec![8.25, -8.25]))]);
    assert_eq!(f32s(&out["q"]), &[8.0, -8.0]);
}

#[test]
fn quantize_f8e4m3_saturates_and_rounds() {
    let src = r#"graph "q" {
  %0 = input "x" : f32[6]
  %1 = input "s" : f32[1]
  %2 = quantize %0 {f8e4m3, per_tensor, scale=%1} : f8e4m3[6]
  return "q" = %2
}"#;
    // x/s = 1000 → 448; -1e9 → -448; 17 → 16 (tie 16/18 → even mantissa 16); 19 → 20 (tie 18/20 → 20);
    // 300 → 288 (step 32 above 256); 0.0009765625 = 2^-10 → 0 (half of the smallest subnormal 2^-9, tie → 0).
    let x = vec![2000.0, -2e9, 34.0, 38.0, 600.0, 2f32.powi(-9)];
    let out = run(src, vec![("x", Tensor::f32(vec![6], x)), ("s", Tensor::f32(vec![1], vec![2.0]))]);
    assert_eq!(f32s(&out["q"]), &[448.0, -448.0, 16.0, 20.0, 288.0, 0.0]);
}

#[test]
fn quantize_i4_with_zero_point_and_per_channel_inputs() {
    let src = r#"graph "q" {
  %0 = input "x" : f32[2,4]
  %1 = quantize %0 {i4, per_tensor, scale=1.0, zero=3} : i4[2,4]
  %2 = dequantize %1 {i4, per_tensor, scale=1.0, zero=3} : f32[2,4]
  %3 = input "s" : f32[2]
  %4 = input "z" : i32[2]
  %5 = quantize %0 {i4, per_channel(0), scale=%3, zero=%4} : i4[2,4]
  %6 = dequantize %5 {i4, per_channel(0), scale=%3, zero=%4} : f32[2,4]
  return "q" = %1, "dq" = %2, "qc" = %5, "dqc" = %6
}"#;
    let x = vec![0.5, 1.5, -20.0, 20.0, 2.5, -2.5, 3.0, -11.0];
    let out = run(
        src,
        vec![
            ("x", Tensor::f32(vec![2, 4], x)),
            ("s", Tensor::f32(vec![2], vec![1.0, 0.5])),
            ("z", Tensor { dtype: DType::I32, shape: vec![2], data: qfuse::interp::TensorData::I64(vec![0, -2]) }),
        ],
    );
    // RNE(x) + 3, clamped to [-8, 7]: 0+3, 2+3, -20+3 → -8, 20+3 → 7, 2+3, -2+3, 3+3, -11+3 → -8
    assert_eq!(f32s(&out["q"]), &[3.0, 5.0, -8.0, 7.0, 5.0, 1.0, 6.0, -8.0]);
    assert_eq!(f32s(&out["dq"]), &[0.0, 2.0, -11.0, 4.0, 2.0, -2.0, 3.0, -11.0]);
    // Row 0: s=1, z=0: 0, 2, -8, 7. Row 1: s=0.5, z=-2: x/s = 5, -5, 6, -22 → 3, -7, 4, -8.
    assert_eq!(f32s(&out["qc"]), &[0.0, 2.0, -8.0, 7.0, 3.0, -7.0, 4.0, -8.0]);
    assert_eq!(f32s(&out["dqc"]), &[0.0, 2.0, -8.0, 7.0, 2.5, -2.5, 3.0, -3.0]);
}

#[test]
fn quantize_f4e2m1_ragged_blocks() {
    let src = r#"graph "q" {
  %0 = input "x" : f32[2,10]
  %1 = input "s" : f32[2,3]
  %2 = quantize %0 {f4e2m1, block(-1:4), scale=%1} : f4e2m1[2,10]
  %3 = dequantize %2 {f4e2m1, block(-1:4), scale=%1} : f32[2,10]
  return "q" = %2, "dq" = %3
}"#;
    #[rustfmt::skip]
    let x = vec![
        2.5, 5.0, 7.0, 0.25,   2.5, 5.0, 7.0, 0.25,   -2.5, 1.25,
        1.0, 1.0, 1.0, 1.0,    4.0, 4.0, 4.0, 4.0,    100.0, -0.75,
    ];
    let s = vec![1.0, 2.0, 0.5, 0.25, 0.5, 4.0];
    let out = run(src, vec![("x", Tensor::f32(vec![2, 10], x)), ("s", Tensor::f32(vec![2, 3], s))]);
    #[rustfmt::skip]
    let want = [
        2.0, 4.0, 6.0, 0.0,    1.0, 2.0, 4.0, 0.0,    -4.0, 2.0,   // x/s: 2.5→2, 5→4, 7→6, .25→0 | 1.25→1, 2.5→2, 3.5→4, .125→0 | -5→-4, 2.5→2
        4.0, 4.0, 4.0, 4.0,    6.0, 6.0, 6.0, 6.0,    6.0, 0.0,    // x/s: 4 | 8→6 | 25→6, -0.1875→-0
    ];
    assert_eq!(f32s(&out["q"]), &want);
    assert_eq!(f32s(&out["dq"])[8..10], [-2.0, 1.0]);
    assert_eq!(f32s(&out["dq"])[18..20], [24.0, 0.0]);
}

#[test]
fn quantize_dynamic_per_token_f8_with_zero_row() {
    let src = r#"graph "q" {
  sym M max=8
  %0 = input "x" : f32[M,4]
  %1, %2 = quantize %0 {f8e4m3, per_token, scale=dynamic(f32)} : f8e4m3[M,4], f32[M,1]
  %3 = dequantize %1 {f8e4m3, per_token, scale=%2} : f32[M,4]
  return "q" = %1, "s" = %2, "dq" = %3
}"#;
    let x = vec![1.0, -3.0, 0.5, 2.0, 0.0, 0.0, 0.0, -0.0, 100.0, 7.0, -448.0, 0.001];
    let out = run(src, vec![("x", Tensor::f32(vec![3, 4], x.clone()))]);
    let s = f32s(&out["s"]);
    assert_eq!(out["s"].shape, vec![3, 1]);
    assert_eq!(s, &[3.0f32 / 448.0, 1.0, 448.0 / 448.0]);
    let q = f32s(&out["q"]);
    assert_eq!(q[1], -448.0, "the row amax maps to qmax");
    assert_eq!(&q[4..8], &[0.0, 0.0, 0.0, -0.0]);
    assert_eq!(q[10], -448.0);
    for (i, &v) in q.iter().enumerate() {
        let want = qfuse::numerics::cast(x[i] / s[i / 4], DType::F8E4M3);
        assert_eq!(v.to_bits(), want.to_bits(), "q[{i}]");
    }
    assert_close(f32s(&out["dq"]), &x.iter().map(|&v| v as f64).collect::<Vec<_>>(), 0.07, "dq ≈ x");
}

#[test]
fn quantize_dynamic_mx_e8m0_and_2d_blocks() {
    let src = r#"graph "q" {
  %0 = input "x" : f32[3,5]
  %1, %2 = quantize %0 {f4e2m1, block(-1:4), scale=dynamic(e8m0, up)} : f4e2m1[3,5], e8m0[3,2]
  %3, %4 = quantize %0 {i8, block(0:2, 1:3), scale=dynamic(f32)} : i8[3,5], f32[2,2]
  return "q" = %1, "s" = %2, "q2" = %3, "s2" = %4
}"#;
    #[rustfmt::skip]
    let x = vec![
        1.0, -7.0, 2.0, 0.5,   3.0,
        0.0,  0.0, 0.0, 0.0,  -12.5,
        6.0,  1.0, 2.0, 3.0,  100.0,
    ];
    let out = run(src, vec![("x", Tensor::f32(vec![3, 5], x))]);
    // amax/6 rounded up to a power of two: 7/6 → 2, 3/6 → 0.5, 0 → 1, 12.5/6 → 4, 6/6 → 1, 100/6 → 32.
    assert_eq!(f32s(&out["s"]), &[2.0, 0.5, 1.0, 4.0, 1.0, 32.0]);
    // Row 0: x/2 = 0.5, -3.5→-4, 1, 0.25→0 | 3/0.5 = 6. Row 2: 6,1,2,3 | 100/32 = 3.125 → 3.
    assert_eq!(&f32s(&out["q"])[..5], &[0.5, -4.0, 1.0, 0.0, 6.0]);
    assert_eq!(&f32s(&out["q"])[10..], &[6.0, 1.0, 2.0, 3.0, 3.0]);
    // 2-D blocks of 2×3 (ragged): regions rows{0,1}×cols{0..3}, rows{0,1}×cols{3,4}, row{2}×..
    assert_eq!(f32s(&out["s2"]), &[7.0 / 127.0, 12.5 / 127.0, 6.0 / 127.0, 100.0 / 127.0]);
    let q2 = f32s(&out["q2"]);
    assert_eq!(q2[1], -127.0);
    assert_eq!(q2[9], -127.0);
    assert_eq!(q2[14], 127.0);
}

#[test]
fn dequantize_per_channel_i8_with_zero_and_f16_output() {
    let src = r#"graph "dq" {
  %0 = weight @w : i8[2,3]
  %1 = weight @s : f32[2]
  %2 = dequantize %0 {i8, per_channel(0), scale=%1, zero=3} : f32[2,3]
  %3 = dequantize %0 {i8, per_channel(0), scale=%1, zero=3} : f16[2,3]
  return "x" = %2, "h" = %3
}"#;
    let w = weights(vec![
        ("w", Tensor::from_f32_as(DType::I8, vec![2, 3], vec![3.0, 4.0, -128.0, 127.0, 0.0, 5.0])),
        ("s", Tensor::f32(vec![2], vec![0.5, 1.0 / 3.0])),
    ]);
    let out = run_w(src, &w, vec![]);
    let third = 1.0f32 / 3.0;
    assert_eq!(f32s(&out["x"]), &[0.0, 0.5, -65.5, 124.0 * third, -3.0 * third, 2.0 * third]);
    let h: Vec<f32> = f32s(&out["x"]).iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    assert_eq!(f32s(&out["h"]), h.as_slice());
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

const ERR_SRC: &str = r#"graph "e" {
  sym B max=2
  sym S max=8
  %0 = input "ids" : i64[B,S]
  %1 = input "x" : f32[B,4]
  %2 = weight @emb : f32[10,4]
  %3 = gather %2, %0 : f32[B,S,4] loc("embeddings")
  %4 = reduce_sum %3 {axes=[1]} : f32[B,4]
  %5 = add %4, %1 : f32[B,4]
  return "y" = %5
}"#;

fn err_weights() -> HashMap<String, Arc<Tensor>> {
    weights(vec![("emb", Tensor::f32(vec![10, 4], vec![0.5; 40]))])
}

#[test]
fn error_cases_name_the_culprit() {
    let w = err_weights();
    let ids = |b: usize, s: usize, v: i64| Tensor::i64(vec![b, s], vec![v; b * s]);
    let x = |b: usize| Tensor::f32(vec![b, 4], vec![1.0; b * 4]);

    // Happy path first.
    let ok = run_w(ERR_SRC, &w, vec![("ids", ids(2, 3, 1)), ("x", x(2))]);
    assert_eq!(f32s(&ok["y"]), &[2.5; 8]);

    match run_err(ERR_SRC, &w, vec![("ids", ids(2, 3, 1))]) {
        InterpError::MissingInput { name } => assert_eq!(name, "x"),
        e => panic!("{e:?}"),
    }
    match run_err(ERR_SRC, &w, vec![("ids", ids(2, 3, 1)), ("x", Tensor::f32(vec![2, 5], vec![0.0; 10]))]) {
        InterpError::InputShape { name, expected, got } => {
            assert_eq!((name.as_str(), expected.as_str(), got), ("x", "[B, 4]", vec![2, 5]));
        }
        e => panic!("{e:?}"),
    }
    match run_err(ERR_SRC, &w, vec![("ids", ids(2, 9, 1)), ("x", x(2))]) {
        InterpError::SymbolTooLarge { sym, value, max } => assert_eq!((sym.as_str(), value, max), ("S", 9, 8)),
        e => panic!("{e:?}"),
    }
    match run_err(ERR_SRC, &w, vec![("ids", ids(2, 3, 1)), ("x", x(1))]) {
        InterpError::SymbolConflict { sym, first, second, input } => {
            assert_eq!((sym.as_str(), first, second, input.as_str()), ("B", 2, 1, "x"))
        }
        e => panic!("{e:?}"),
    }
    match run_err(ERR_SRC, &w, vec![("ids", Tensor::f32(vec![2, 3], vec![0.0; 6])), ("x", x(2))]) {
        InterpError::InputDType { name, expected, got } => assert_eq!((name.as_str(), expected, got), ("ids", DType::I64, DType::F32)),
        e => panic!("{e:?}"),
    }
    match run_err(ERR_SRC, &w, vec![("ids", Tensor::i64(vec![2, 3], vec![0; 5])), ("x", x(2))]) {
        InterpError::MalformedTensor { name, .. } => assert_eq!(name, "ids"),
        e => panic!("{e:?}"),
    }
    let e = run_err(ERR_SRC, &w, vec![("ids", Tensor::i64(vec![1, 2], vec![3, 10])), ("x", x(1))]);
    match &e {
        InterpError::Op { op, name, message, .. } => {
            assert_eq!((op.as_str(), name.as_deref()), ("gather", Some("embeddings")));
            assert!(message.contains("index 10"), "{message}");
        }
        e => panic!("{e:?}"),
    }
    assert!(e.to_string().contains("embeddings"), "{e}");
    let neg = run_err(ERR_SRC, &w, vec![("ids", Tensor::i64(vec![1, 1], vec![-1])), ("x", x(1))]);
    assert!(matches!(neg, InterpError::Op { ref op, .. } if op == "gather"), "{neg:?}");
}

#[test]
fn weight_errors() {
    let inputs = || vec![("ids", Tensor::i64(vec![1, 1], vec![0])), ("x", Tensor::f32(vec![1, 4], vec![0.0; 4]))];
    match run_err(ERR_SRC, &NoWeights, inputs()) {
        InterpError::Weight { name, .. } => assert_eq!(name, "emb"),
        e => panic!("{e:?}"),
    }
    let empty: HashMap<String, Arc<Tensor>> = HashMap::new();
    assert!(matches!(run_err(ERR_SRC, &empty, inputs()), InterpError::Weight { name, .. } if name == "emb"));
    let w = weights(vec![("emb", Tensor::f32(vec![4, 10], vec![0.0; 40]))]);
    match run_err(ERR_SRC, &w, inputs()) {
        InterpError::WeightShape { name, expected, got } => assert_eq!((name.as_str(), expected, got), ("emb", vec![10, 4], vec![4, 10])),
        e => panic!("{e:?}"),
    }
    let w = weights(vec![("emb", Tensor::from_f32_as(DType::F16, vec![10, 4], vec![0.0; 40]))]);
    match run_err(ERR_SRC, &w, inputs()) {
        InterpError::WeightDType { name, expected, got } => assert_eq!((name.as_str(), expected, got), ("emb", DType::F32, DType::F16)),
        e => panic!("{e:?}"),
    }
}

#[test]
fn cycle_is_an_error_not_a_hang() {
    let mut g = graph(
        r#"graph "c" {
  %0 = input "x" : f32[2]
  %1 = neg %0 : f32[2]
  %2 = neg %1 : f32[2]
  return "y" = %2
}"#,
    );
    let n1 = g.values[g.outputs[0].1].producer;
    let first_neg = g.nodes[n1].inputs[0];
    g.nodes[g.values[first_neg].producer].inputs[0] = g.outputs[0].1;
    let r = interp::run(&g, &NoWeights, &[("x", Tensor::f32(vec![2], vec![1.0, 2.0]))]);
    assert!(matches!(r, Err(InterpError::Cycle)), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Observation and options
// ---------------------------------------------------------------------------------------------

#[test]
fn run_observed_sees_every_value_once() {
    let src = r#"graph "o" {
  sym M max=4
  %0 = input "x" : f32[M,8]
  %1 = weight @w : f32[6,8]
  %2 = matmul %0, %1 {transpose_b} : f32[M,6]
  %3, %4 = quantize %2 {f8e4m3, per_token, scale=dynamic(f32)} : f8e4m3[M,6], f32[M,1]
  %5 = dequantize %3 {f8e4m3, per_token, scale=%4} : f32[M,6]
  %6 = gelu %5 : f32[M,6]
  %7 = add %6, %5 : f32[M,6]
  return "y" = %7, "h" = %2
}"#;
    let g = graph(src);
    let w = weights(vec![("w", Tensor::f32(vec![6, 8], rand_vec(48, 31)))]);
    let inputs = [("x", Tensor::f32(vec![3, 8], rand_vec(24, 32)))];
    let mut seen = vec![0usize; g.values.len()];
    let mut shapes = HashMap::new();
    let out = interp::run_observed(&g, &w, &inputs, &mut |v, t| {
        seen[v.index()] += 1;
        shapes.insert(v.index(), t.shape.clone());
    })
    .unwrap();
    assert!(seen.iter().all(|&n| n == 1), "{seen:?}");
    assert_eq!(shapes[&4], vec![3, 1]);
    let plain = interp::run(&g, &w, &inputs).unwrap();
    assert_eq!(out, plain);
    let one_thread = interp::run_with(&g, &w, &inputs, &RunOptions { threads: 1, ..Default::default() }, &mut |_, _| {}).unwrap();
    assert_eq!(one_thread, plain);
}

// ---------------------------------------------------------------------------------------------
// MiniLM-shaped speed check (run: cargo test --release --test interp -- --ignored --nocapture)
// ---------------------------------------------------------------------------------------------

/// A BERT encoder in IR text with MiniLM-L6's shapes: 6 layers, hidden 384, 12 heads, MLP 1536.
fn bert_src(layers: usize) -> String {
    let mut s = String::from("graph \"minilm\" {\n sym B max=64\n sym S max=512\n");
    let mut n = 0;
    let mut node = |s: &mut String, text: String| -> usize {
        s.push_str(&format!(" %{n} = {text}\n"));
        n += 1;
        n - 1
    };
    let ids = node(&mut s, "input \"input_ids\" : i64[B,S]".into());
    let mask = node(&mut s, "input \"attention_mask\" : i64[B,S]".into());
    let wemb = node(&mut s, "weight @emb.word : f32[30522,384]".into());
    let e = node(&mut s, format!("gather %{wemb}, %{ids} : f32[B,S,384]"));
    let pos = node(&mut s, "weight @emb.pos : f32[S,384]".into());
    let e = node(&mut s, format!("add %{e}, %{pos} : f32[B,S,384]"));
    let (g, b) = (node(&mut s, "weight @ln.g : f32[384]".into()), node(&mut s, "weight @ln.b : f32[384]".into()));
    let mut h = node(&mut s, format!("layernorm %{e}, %{g}, %{b} {{eps=1e-12}} : f32[B,S,384]"));
    let mf = node(&mut s, format!("cast %{mask} : f32[B,S]"));
    let one = node(&mut s, "scalar 1.0 : f32[]".into());
    let big = node(&mut s, "scalar -10000.0 : f32[]".into());
    let inv = node(&mut s, format!("sub %{one}, %{mf} : f32[B,S]"));
    let bias = node(&mut s, format!("mul %{inv}, %{big} : f32[B,S]"));
    let bias = node(&mut s, format!("reshape %{bias} : f32[B,1,1,S]"));
    let scale = node(&mut s, "scalar 0.17677669529663687 : f32[]".into());
    for l in 0..layers {
        let lin = |s: &mut String, node: &mut dyn FnMut(&mut String, String) -> usize, x: usize, name: &str, o: usize, i: usize| {
            let w = node(s, format!("weight @l{l}.{name}.w : f32[{o},{i}]"));
            let bw = node(s, format!("weight @l{l}.{name}.b : f32[{o}]"));
            let y = node(s, format!("matmul %{x}, %{w} {{transpose_b}} : f32[B,S,{o}]"));
            node(s, format!("add %{y}, %{bw} : f32[B,S,{o}]"))
        };
        let heads = |s: &mut String, node: &mut dyn FnMut(&mut String, String) -> usize, x: usize| {
            let r = node(s, format!("reshape %{x} : f32[B,S,12,32]"));
            node(s, format!("transpose %{r} {{perm=[0,2,1,3]}} : f32[B,12,S,32]"))
        };
        let q = lin(&mut s, &mut node, h, "q", 384, 384);
        let k = lin(&mut s, &mut node, h, "k", 384, 384);
        let v = lin(&mut s, &mut node, h, "v", 384, 384);
        let (q, k, v) = (heads(&mut s, &mut node, q), heads(&mut s, &mut node, k), heads(&mut s, &mut node, v));
        let sc = node(&mut s, format!("matmul %{q}, %{k} {{transpose_b}} : f32[B,12,S,S]"));
        let sc = node(&mut s, format!("mul %{sc}, %{scale} : f32[B,12,S,S]"));
        let sc = node(&mut s, format!("add %{sc}, %{bias} : f32[B,12,S,S]"));
        let p = node(&mut s, format!("softmax %{sc} {{axis=-1}} : f32[B,12,S,S]"));
        let c = node(&mut s, format!("matmul %{p}, %{v} : f32[B,12,S,32]"));
        let c = node(&mut s, format!("transpose %{c} {{perm=[0,2,1,3]}} : f32[B,S,12,32]"));
        let c = node(&mut s, format!("reshape %{c} : f32[B,S,384]"));
        let o = lin(&mut s, &mut node, c, "o", 384, 384);
        let o = node(&mut s, format!("add %{o}, %{h} : f32[B,S,384]"));
        let (g1, b1) = (node(&mut s, format!("weight @l{l}.ln1.g : f32[384]")), node(&mut s, format!("weight @l{l}.ln1.b : f32[384]")));
        let h1 = node(&mut s, format!("layernorm %{o}, %{g1}, %{b1} {{eps=1e-12}} : f32[B,S,384]"));
        let f = lin(&mut s, &mut node, h1, "up", 1536, 384);
        let f = node(&mut s, format!("gelu %{f} : f32[B,S,1536]"));
        let f = lin(&mut s, &mut node, f, "down", 384, 1536);
        let f = node(&mut s, format!("add %{f}, %{h1} : f32[B,S,384]"));
        let (g2, b2) = (node(&mut s, format!("weight @l{l}.ln2.g : f32[384]")), node(&mut s, format!("weight @l{l}.ln2.b : f32[384]")));
        h = node(&mut s, format!("layernorm %{f}, %{g2}, %{b2} {{eps=1e-12}} : f32[B,S,384]"));
    }
    let p = node(&mut s, format!("mean_pool %{h}, %{mask} : f32[B,384]"));
    let y = node(&mut s, format!("l2_normalize %{p} {{eps=1e-12}} : f32[B,384]"));
    s.push_str(&format!(" return \"embedding\" = %{y}\n}}\n"));
    s
}

/// Random weights for every `weight` node of `g` (LayerNorm gains near 1).
fn random_weights(g: &Graph) -> HashMap<String, Arc<Tensor>> {
    let mut w = HashMap::new();
    for (i, node) in g.nodes.values().enumerate() {
        if let ir::Op::Weight { name } = &node.op {
            let shape: Vec<usize> = g.shape(node.outputs[0]).iter().map(|d| d.fixed().unwrap_or(128) as usize).collect();
            let n = shape.iter().product();
            let scale = if name.ends_with(".g") { 0.0 } else { 0.08 };
            let data = rand_vec(n, i as u64).iter().map(|v| v * scale + if name.ends_with(".g") { 1.0 } else { 0.0 }).collect();
            w.insert(name.clone(), Arc::new(Tensor::f32(shape, data)));
        }
    }
    w
}

#[test]
#[ignore = "speed benchmark: prints the time, run in release"]
fn minilm_shaped_encoder_speed() {
    let g = graph(&bert_src(6));
    let w = random_weights(&g);
    let (b, s) = (32, 128);
    let ids: Vec<i64> = (0..b * s).map(|i| (i as i64 * 7919) % 30522).collect();
    let mask: Vec<i64> = (0..b * s).map(|i| i64::from(i % s < 16 + (i / s) * 3)).collect();
    let inputs = [("input_ids", Tensor::i64(vec![b, s], ids)), ("attention_mask", Tensor::i64(vec![b, s], mask))];
    let t = Instant::now();
    let out = interp::run(&g, &w, &inputs).unwrap();
    let dt = t.elapsed();
    eprintln!("MiniLM-shaped encoder, {b}×{s} tokens: {dt:?}");
    let y = f32s(&out[0].1);
    assert!(y.iter().all(|v| v.is_finite()));
    for row in y.chunks(384) {
        let n: f32 = row.iter().map(|v| v * v).sum::<f32>().sqrt();
        assert!((n - 1.0).abs() < 1e-4, "row norm {n}");
    }
}

#[test]
fn corrupt_graph_is_an_error_not_a_panic() {
    let mut g = graph(
        r#"graph "c" {
  %0 = input "x" : f32[2]
  %1 = neg %0 : f32[2]
  return "y" = %1
}"#,
    );
    let neg = g.values[g.outputs[0].1].producer;
    g.nodes[neg].inputs[0] = ir::ValueId(99);
    let r = interp::run(&g, &NoWeights, &[("x", Tensor::f32(vec![2], vec![1.0, 2.0]))]);
    assert!(matches!(r, Err(InterpError::InvalidGraph { .. })), "{r:?}");
}

// ---------------------------------------------------------------------------------------------
// Fused attention and embedding vs naive references
// ---------------------------------------------------------------------------------------------

/// `attention` on `[B,S,H·D]` operands with heads interleaved along the last axis, against a naive
/// per-(batch, head) reference that rounds to f16 where the op does.
#[test]
fn attention_vs_naive_per_head() {
    let (b, s, h, d) = (2usize, 5usize, 3usize, 4usize);
    let e = h * d;
    let r16 = |x: f64| qfuse::numerics::cast(x as f32, DType::F16) as f64;
    let tensor = |seed: u64| Tensor::from_f32_as(DType::F16, vec![b, s, e], rand_vec(b * s * e, seed).iter().map(|x| x * 2.0).collect());
    let (q, k, v) = (tensor(1), tensor(2), tensor(3));
    let mask: Vec<f32> = (0..b * s).map(|i| if i == s - 1 || i == 2 * s - 2 { -65504.0 } else { 0.0 }).collect();
    let mask = Tensor::from_f32_as(DType::F16, vec![b, s], mask);
    let src = format!(
        "graph \"t\" {{\n  %0 = input \"q\" : f16[{b},{s},{e}]\n  %1 = input \"k\" : f16[{b},{s},{e}]\n  %2 = input \"v\" : f16[{b},{s},{e}]\n  \
         %3 = input \"m\" : f16[{b},{s}]\n  %4 = attention %0, %1, %2 {{heads={h}, scale=0.5, mask=%3}} : f16[{b},{s},{e}]\n  \
         return \"y\" = %4\n}}"
    );
    let out = run(&src, vec![("q", q.clone()), ("k", k.clone()), ("v", v.clone()), ("m", mask.clone())]);
    let (qv, kv, vv, mv) = (f32s(&q), f32s(&k), f32s(&v), f32s(&mask));
    let at = |t: &[f32], bi: usize, i: usize, hi: usize, di: usize| t[(bi * s + i) * e + hi * d + di] as f64;
    let mut want = vec![0f64; b * s * e];
    for bi in 0..b {
        for hi in 0..h {
            for i in 0..s {
                let scores: Vec<f64> = (0..s)
                    .map(|j| {
                        let dot = r16((0..d).map(|di| at(qv, bi, i, hi, di) * at(kv, bi, j, hi, di)).sum());
                        r16(r16(dot * 0.5) + mv[bi * s + j] as f64)
                    })
                    .collect();
                let max = scores.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                let exps: Vec<f64> = scores.iter().map(|x| (x - max).exp()).collect();
                let sum: f64 = exps.iter().sum();
                let p: Vec<f64> = exps.iter().map(|x| r16(x / sum)).collect();
                for di in 0..d {
                    want[(bi * s + i) * e + hi * d + di] = (0..s).map(|j| p[j] * at(vv, bi, j, hi, di)).sum();
                }
            }
        }
    }
    assert_close(f32s(&out["y"]), &want, 2e-3, "attention");
}

/// `embed_layernorm` gathers word rows by id, position rows by position and type rows by type id.
#[test]
fn embed_layernorm_vs_naive() {
    let (b, s, hd) = (2usize, 3usize, 4usize);
    let table = |rows: usize, seed: u64| Tensor::from_f32_as(DType::F16, vec![rows, hd], rand_vec(rows * hd, seed));
    let w = weights(vec![
        ("word", table(7, 1)),
        ("pos", table(4, 2)),
        ("type", table(2, 3)),
        ("gamma", Tensor::from_f32_as(DType::F16, vec![hd], vec![1.0, 0.5, 2.0, 1.0])),
        ("beta", Tensor::from_f32_as(DType::F16, vec![hd], vec![0.0, 0.25, -0.5, 1.0])),
    ]);
    let ids = vec![3i64, 6, 0, 1, 1, 5];
    let types = vec![0i64, 1, 1, 0, 0, 1];
    let src = format!(
        "graph \"t\" {{\n  %0 = input \"ids\" : i64[{b},{s}]\n  %1 = input \"types\" : i64[{b},{s}]\n  %2 = weight @word : f16[7,{hd}]\n  \
         %3 = weight @pos : f16[4,{hd}]\n  %4 = weight @type : f16[2,{hd}]\n  %5 = weight @gamma : f16[{hd}]\n  %6 = weight @beta : f16[{hd}]\n  \
         %7 = embed_layernorm %0, %1, %2, %3, %4, %5, %6 {{eps=1e-5, via=f16}} : f16[{b},{s},{hd}]\n  return \"y\" = %7\n}}"
    );
    let out = run_w(&src, &w, vec![("ids", Tensor::i64(vec![b, s], ids.clone())), ("types", Tensor::i64(vec![b, s], types.clone()))]);
    let row = |name: &str, r: usize| f32s(&w[name])[r * hd..(r + 1) * hd].iter().map(|&x| x as f64).collect::<Vec<_>>();
    let (gamma, beta) = (row("gamma", 0), row("beta", 0));
    let mut want = vec![];
    for t in 0..b * s {
        let x: Vec<f64> =
            (0..hd).map(|c| row("word", ids[t] as usize)[c] + row("pos", t % s)[c] + row("type", types[t] as usize)[c]).collect();
        let mean = x.iter().sum::<f64>() / hd as f64;
        let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / hd as f64;
        want.extend((0..hd).map(|c| (x[c] - mean) / (var + 1e-5).sqrt() * gamma[c] + beta[c]));
    }
    assert_close(f32s(&out["y"]), &want, 1e-2, "embed_layernorm");
}

// ---------------------------------------------------------------------------------------------
// Accumulation
// ---------------------------------------------------------------------------------------------

/// E4M3 codes `qmatmul` sums: with `Accumulation::F64` the result is the exact sum rounded to f32
/// once, whatever the order of K; with the default f32 sums it is within f32 rounding of that, and
/// on this many long rows it is not bit-identical (else the floor `qfuse check` reports would be
/// vacuous).
#[test]
fn f64_accumulation_is_exact_for_e4m3_codes() {
    let (m, n, k) = (64, 48, 1536);
    let src = format!(
        "graph \"t\" {{\n  %0 = input \"a\" : f8e4m3[{m},{k}]\n  %1 = input \"b\" : f8e4m3[{n},{k}]\n  \
         %2 = qmatmul %0, %1 {{transpose_b, alpha=1, acc=f32}} : f32[{m},{n}]\n  return \"y\" = %2\n}}\n"
    );
    let g = graph(&src);
    // Codes over E4M3's whole range (subnormals to 448), both signs.
    let codes = |len: usize, seed: u64| {
        rand_vec(len, seed).iter().map(|&u| qfuse::numerics::cast(u.signum() * 2f32.powf(u.abs() * 17.0 - 9.0), DType::F8E4M3)).collect()
    };
    let (a, b): (Vec<f32>, Vec<f32>) = (codes(m * k, 1), codes(n * k, 2));
    let inputs = |a: &[f32], b: &[f32]| {
        vec![
            ("a", Tensor::from_f32_as(DType::F8E4M3, vec![m, k], a.to_vec())),
            ("b", Tensor::from_f32_as(DType::F8E4M3, vec![n, k], b.to_vec())),
        ]
    };
    let run = |acc, a: &[f32], b: &[f32]| {
        let opts = RunOptions { accumulation: acc, ..Default::default() };
        let out = interp::run_with(&g, &NoWeights, &inputs(a, b), &opts, &mut |_, _| {}).unwrap_or_else(|e| panic!("{e}"));
        f32s(&out[0].1).to_vec()
    };
    // The exact sums: every product is a multiple of 2^-18 below 2^18, so i128 fixed point is exact.
    let fixed = |x: f32| (x as f64 * 2f64.powi(9)) as i128;
    let exact: Vec<f32> = (0..m * n)
        .map(|i| {
            let (r, c) = (i / n, i % n);
            let s: i128 = (0..k).map(|j| fixed(a[r * k + j]) * fixed(b[c * k + j])).sum();
            (s as f64 / 2f64.powi(18)) as f32
        })
        .collect();
    let wide = run(interp::Accumulation::F64, &a, &b);
    assert_eq!(wide, exact, "f64 sums of E4M3 products are exact, rounded once");
    // Reversing K changes nothing in f64.
    let rev = |x: &[f32], rows: usize| -> Vec<f32> { x.chunks(k).take(rows).flat_map(|row| row.iter().rev().copied()).collect() };
    assert_eq!(run(interp::Accumulation::F64, &rev(&a, m), &rev(&b, n)), exact);
    let narrow = run(interp::Accumulation::F32, &a, &b);
    let scale: f64 = exact.iter().map(|&x| (x as f64).abs()).fold(0.0, f64::max);
    assert_close(&narrow, &exact.iter().map(|&x| x as f64).collect::<Vec<_>>(), 1e-5 * scale.max(1.0), "f32 sums");
    assert!(narrow != exact, "f32 sums over K = {k} should differ from the exact ones somewhere");
    // Split-K f32 sums: the same values within f32 rounding, in another order (not bit-identical).
    let split = run(interp::Accumulation::F32SplitK { parts: 2 }, &a, &b);
    assert_close(&split, &exact.iter().map(|&x| x as f64).collect::<Vec<_>>(), 1e-5 * scale.max(1.0), "split-K f32 sums");
    assert!(split != narrow, "two f32 orders over K = {k} should differ somewhere");
}

// ---------------------------------------------------------------------------------------------
// Partial runs
// ---------------------------------------------------------------------------------------------

/// `run_part` computes the targets from given values and runs nothing else: the nodes before a
/// given value and those no target needs are skipped (their weights, left out of the store
/// here, are never read), and its results equal a whole run's.
#[test]
fn partial_runs_start_from_given_values_and_stop_at_targets() {
    let g = graph(
        r#"graph "part" {
  %0 = input "x" : f32[2,3]
  %1 = weight @w : f32[3,3]
  %2 = matmul %0, %1 : f32[2,3]
  %3 = add %2, %0 : f32[2,3]
  %4 = weight @v : f32[3,3]
  %5 = matmul %3, %4 : f32[2,3]
  return "y" = %5, "z" = %3
}"#,
    );
    let (y, z) = (g.outputs[0].1, g.outputs[1].1);
    let x = Tensor::f32(vec![2, 3], rand_vec(6, 1));
    let (w, v) = (Tensor::f32(vec![3, 3], rand_vec(9, 2)), Tensor::f32(vec![3, 3], rand_vec(9, 3)));
    let inputs = vec![("x", x)];
    let all = weights(vec![("w", w.clone()), ("v", v.clone())]);
    let whole = interp::run(&g, &all, &inputs).expect("whole run");
    // From the given %3 to %5: `w`, %0 and %2 are not needed.
    let mut seen = vec![];
    let given = vec![(z, Arc::new(whole[1].1.clone()))];
    let out =
        interp::run_part(&g, &weights(vec![("v", v)]), &inputs, given, (&[y], &[]), &RunOptions::default(), &mut |id, _| seen.push(id))
            .expect("second half");
    assert_eq!(f32s(&out[0]), f32s(&whole[0].1));
    assert_eq!(seen, vec![g.nodes[g.values[y].producer].inputs[1], y], "only @v and the matmul run");
    // From the inputs to %3: `v` is never read.
    let out = interp::run_part(&g, &weights(vec![("w", w)]), &inputs, vec![], (&[z, z], &[z]), &RunOptions::default(), &mut |_, _| {})
        .expect("first half");
    assert_eq!((f32s(&out[0]), f32s(&out[1])), (f32s(&whole[1].1), f32s(&whole[1].1)));
    // A value that is not the graph's is an error, not a panic.
    let err = interp::run_part(&g, &all, &inputs, vec![], (&[], &[ir::ValueId(99)]), &RunOptions::default(), &mut |_, _| {})
        .expect_err("unknown target");
    assert!(err.to_string().contains("not a value of this graph"), "{err}");
}
