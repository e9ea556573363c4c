//! Wrong "GPU" results planted into what the comparison sees: each must fail its check.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::interp::{self, Accumulation, RunOptions};
use crate::ir::DType;
use crate::plan::BufferMeta;

const GRAPH: &str = r#"graph "t" {
  %0 = input "x" : f16[4,8]
  %1 = weight @w : f16[8,8]
  %2 = matmul %0, %1 {transpose_b} : f16[4,8]
  %3 = quantize %2 {f8e4m3, per_tensor, scale=0.05} : f8e4m3[4,8]
  return "y" = %2, "q" = %3
}"#;

struct Case {
    graph: Graph,
    meta: PlanMeta,
    refs: References,
    launch: LaunchMeta,
}

fn values(graph: &Graph, accumulation: Accumulation) -> HashMap<ValueId, Tensor> {
    let wave = |n: usize, k: f32| (0..n).map(|i| (i as f32 * k).sin() * 2.0).collect::<Vec<f32>>();
    let weights: HashMap<String, Arc<Tensor>> =
        [("w".to_string(), Arc::new(Tensor::from_f32_as(DType::F16, vec![8, 8], wave(64, 0.7))))].into();
    let inputs = [("x", Tensor::from_f32_as(DType::F16, vec![4, 8], wave(32, 1.3)))];
    let mut out = HashMap::new();
    let opts = RunOptions { accumulation, ..Default::default() };
    interp::run_with(graph, &weights, &inputs, &opts, &mut |v, t| {
        out.insert(v, t.clone());
    })
    .unwrap();
    out
}

fn case() -> Case {
    let graph = crate::ir::parse(GRAPH).unwrap();
    let buffer = |name: &str, dtype: &str| BufferMeta { name: name.into(), dtype: dtype.into(), ..Default::default() };
    let mut meta = PlanMeta::default();
    meta.buffers = vec![buffer("%2", "f16"), buffer("%3", "f8e4m3"), buffer("%99", "f16")];
    let refs = References { values: values(&graph, Accumulation::F32), wide: HashMap::new(), windows: HashMap::new() };
    let launch = LaunchMeta { kernel: 0, args: vec![], label: "gemm+quantize".into(), writes: vec![0, 1] };
    Case { graph, meta, refs, launch }
}

impl Case {
    /// The reference of `value` as the GPU would hand it back, changed by `plant`.
    fn gpu(&self, value: usize, plant: impl FnOnce(&mut Vec<f32>)) -> HostTensor {
        let want = &self.refs.values[&ValueId::from(value)];
        let mut xs = want.to_f32_vec();
        plant(&mut xs);
        to_host(&Tensor::from_f32_as(want.dtype, want.shape.clone(), xs))
    }

    fn judge(&self, written: &[(u32, HostTensor)]) -> Vec<KernelCheck> {
        judge_launch(&self.graph, &self.meta, &self.refs, 0, &self.launch, written).0
    }
}

fn next_code(x: f32) -> f32 {
    let mut bits = crate::numerics::encode_bits(x, DType::F8E4M3);
    bits = if x >= 0.0 { bits + 1 } else { bits - 1 };
    crate::numerics::decode_bits(bits, DType::F8E4M3)
}

#[test]
fn exact_results_pass() {
    let c = case();
    let checks = c.judge(&[(0, c.gpu(2, |_| {})), (1, c.gpu(3, |_| {}))]);
    assert!(checks.iter().all(|k| k.comparison.pass), "{checks:?}");
    assert_eq!(checks.len(), 2);
}

#[test]
fn an_off_by_one_code_fails_unless_the_f64_sum_holds_it() {
    let mut c = case();
    let plant = |xs: &mut Vec<f32>| xs[5] = next_code(xs[5]);
    let checks = c.judge(&[(1, c.gpu(3, plant))]);
    assert!(!checks[0].comparison.pass, "{checks:?}");
    // The same code in the f64-sum reference marks a rounding-boundary case: allowed, counted.
    let mut wide = c.refs.values[&ValueId::from(3)].to_f32_vec();
    plant(&mut wide);
    c.refs.wide.insert(ValueId::from(3), Tensor::from_f32_as(DType::F8E4M3, vec![4, 8], wide));
    let checks = c.judge(&[(1, c.gpu(3, plant))]);
    assert!(checks[0].comparison.pass && checks[0].comparison.boundary_cases == 1, "{checks:?}");
}

#[test]
fn a_swapped_row_fails() {
    let c = case();
    let checks = c.judge(&[(0, c.gpu(2, |xs| swap_rows(xs, 0, 1, 8))), (1, c.gpu(3, |xs| swap_rows(xs, 2, 3, 8)))]);
    assert!(checks.iter().all(|k| !k.comparison.pass), "{checks:?}");
}

#[test]
fn a_nan_fails() {
    let c = case();
    let checks = c.judge(&[(0, c.gpu(2, |xs| xs[9] = f32::NAN)), (1, c.gpu(3, |xs| xs[0] = f32::NAN))]);
    assert!(checks.iter().all(|k| !k.comparison.pass && k.comparison.measured.contains("NaN")), "{checks:?}");
}

#[test]
fn a_buffer_without_reference_fails() {
    let c = case();
    let checks = c.judge(&[(2, c.gpu(2, |_| {})), (7, c.gpu(2, |_| {}))]);
    assert_eq!(checks.len(), 2);
    assert!(checks.iter().all(|k| !k.comparison.pass), "{checks:?}");
}

fn swap_rows(xs: &mut [f32], a: usize, b: usize, width: usize) {
    for j in 0..width {
        xs.swap(a * width + j, b * width + j);
    }
}

/// One attention over 64 keys (2 heads of 16) whose output is quantized to E4M3 with `out_scale`.
fn attention_case(out_scale: f32) -> Case {
    let text = format!(
        r#"graph "a" {{
  %0 = input "q" : f16[1,64,32]
  %1 = input "k" : f16[1,64,32]
  %2 = input "v" : f16[1,64,32]
  %3 = attention %0, %1, %2 {{heads=2, scale=0.25, out=f8e4m3, out_scale={out_scale:?}}} : f8e4m3[1,64,32]
  return "y" = %3
}}"#
    );
    let graph = crate::ir::parse(&text).unwrap();
    let wave =
        |k: f32, amp: f32| Tensor::from_f32_as(DType::F16, vec![1, 64, 32], (0..64 * 32).map(|i| (i as f32 * k).sin() * amp).collect());
    let inputs = [("q", wave(0.37, 2.0)), ("k", wave(0.91, 2.0)), ("v", wave(1.71, 1.5))];
    let mut values = HashMap::new();
    interp::run_observed(&graph, &HashMap::<String, Arc<Tensor>>::new(), &inputs, &mut |v, t| {
        values.insert(v, t.clone());
    })
    .unwrap();
    let windows = crate::check::code_windows(&graph, &values).unwrap();
    let mut meta = PlanMeta::default();
    meta.buffers = vec![BufferMeta { name: "%3".into(), dtype: "f8e4m3".into(), ..Default::default() }];
    let refs = References { values, wide: HashMap::new(), windows };
    let launch = LaunchMeta { kernel: 0, args: vec![], label: "attention+quantize".into(), writes: vec![0] };
    Case { graph, meta, refs, launch }
}

/// The reference codes and the window's ends of the attention output.
fn window_of(c: &Case) -> (Vec<f32>, Vec<f32>, Vec<f32>) {
    let v = ValueId::from(3);
    let (lo, hi) = &c.refs.windows[&v];
    (c.refs.values[&v].to_f32_vec(), lo.to_f32_vec(), hi.to_f32_vec())
}

#[test]
fn the_transcendental_bounds_have_their_documented_size() {
    // ε_p at 128 keys: 10 ulps of f32 (expf on both sides, 2 tile rescales) plus 129·2^-24.
    let eps = interp::softmax_relative_bound(128);
    assert!((eps - (10.0 * 2f64.powi(-23) + 129.0 * 2f64.powi(-24))).abs() < 1e-15 && (8.8e-6..9.0e-6).contains(&eps), "{eps}");
    assert!(interp::softmax_relative_bound(512) > eps, "more keys, more error");
    let gamma = interp::f32_sum_bound(128);
    assert!((1.5e-5..1.6e-5).contains(&gamma), "{gamma}");
    assert_eq!(interp::CUDA_EXPF_ULP, 2.0);
}

#[test]
fn the_attention_code_window_holds_the_reference_and_is_mostly_one_code() {
    let c = attention_case(0.01);
    let (want, lo, hi) = window_of(&c);
    assert_eq!(want.len(), 64 * 32);
    for i in 0..want.len() {
        assert!(lo[i] <= want[i] && want[i] <= hi[i], "element {i}: {} not in [{}, {}]", want[i], lo[i], hi[i]);
    }
    let wide = (0..want.len()).filter(|&i| lo[i] != hi[i]).count();
    // Worst-case bounds: 48 of 2,048 here (docs/runtime.md); most codes keep a one-code window.
    assert!(wide * 100 < want.len() * 4, "the window must stay tight: {wide} of {} elements reach a second code", want.len());
    assert!(wide > 0, "some outputs sit within the bound of a code boundary");
}

/// The code of E4M3 next to `x`, above or below.
fn neighbour(x: f32, up: bool) -> f32 {
    let codes = (0..256u32).map(|c| crate::numerics::decode_bits(c, DType::F8E4M3)).filter(|v| v.is_finite());
    if up {
        codes.filter(|&v| v > x).fold(f32::INFINITY, f32::min)
    } else {
        codes.filter(|&v| v < x).fold(f32::NEG_INFINITY, f32::max)
    }
}

#[test]
fn an_attention_code_flip_passes_only_within_the_exp_bound_of_a_boundary() {
    // Find an output scale that puts some element within the exp bound of a code boundary.
    let (c, at, other, wrong_way) = (0..400)
        .find_map(|k| {
            let c = attention_case(0.005 + k as f32 * 1e-4);
            let (want, lo, hi) = window_of(&c);
            let i = (0..want.len()).find(|&i| lo[i] != hi[i] && (lo[i] == want[i] || hi[i] == want[i]))?;
            let up = hi[i] > want[i];
            Some((c, i, neighbour(want[i], up), neighbour(want[i], !up)))
        })
        .expect("some scale puts an output within the exp bound of a code boundary");
    // The neighbour on the far side of the window fails.
    let checks = c.judge(&[(0, c.gpu(3, |xs| xs[at] = wrong_way))]);
    assert!(!checks[0].comparison.pass, "{checks:?}");
    let checks = c.judge(&[(0, c.gpu(3, |xs| xs[at] = other))]);
    assert!(checks[0].comparison.pass, "{checks:?}");
    assert_eq!((checks[0].comparison.transcendental_cases, checks[0].comparison.boundary_cases), (1, 0), "{checks:?}");
    assert!(checks[0].comparison.measured.contains("1 codes within transcendental rounding of a boundary"), "{checks:?}");
    // The same flip at an element whose window holds only its own code fails.
    let (want, lo, hi) = window_of(&c);
    let far = (0..want.len()).find(|&i| lo[i] == hi[i] && want[i] > 0.0 && want[i] < 400.0).unwrap();
    let checks = c.judge(&[(0, c.gpu(3, |xs| xs[far] = next_code(xs[far])))]);
    assert_eq!(next_code(want[far]), neighbour(want[far], true));
    assert!(!checks[0].comparison.pass && checks[0].comparison.measured.contains(&format!("element {far}")), "{checks:?}");
    // Without the window, the boundary flip fails too: the window is what allows it.
    let mut strict = c;
    strict.refs.windows.clear();
    let checks = strict.judge(&[(0, strict.gpu(3, |xs| xs[at] = other))]);
    assert!(!checks[0].comparison.pass, "{checks:?}");
}
