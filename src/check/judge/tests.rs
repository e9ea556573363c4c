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
    let refs = References { values: values(&graph, Accumulation::F32), wide: HashMap::new() };
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
