//! Kernels that record how they sum (a promoted FP8 `wgmma` GEMM) are judged against their node
//! summed the same way: the kernel's own sums pass, and wrong sums — exact f32 sums presented as
//! the kernel's, one code off — fail, where the dtype tolerance let them through.

use std::collections::HashMap;
use std::sync::Arc;

use super::*;
use crate::interp::tensor_core::H100_E4M3;
use crate::interp::{self, Accumulation, Perturbation, RunOptions};
use crate::ir::{DType, Graph};
use crate::plan::{BufferMeta, LaunchSums, Sums, TensorCoreModel};

/// Two FP8 GEMMs over K = 512 with a bias and GeLU (most results in its curved range, where
/// `erfcf`'s error can move them): `%3` quantized to E4M3, `%4` in f16.
const GRAPH: &str = r#"graph "g" {
  %0 = input "x" : f8e4m3[256,512]
  %1 = weight @w : f8e4m3[64,512]
  %2 = weight @b : f16[64]
  %3 = qmatmul %0, %1 {transpose_b, alpha=0.000002, acc=f32, epilogue=[cast(f16),add(%2,f16),gelu(f16)], out=f8e4m3, out_scale=0.008} : f8e4m3[256,64]
  %4 = qmatmul %0, %1 {transpose_b, alpha=0.000002, acc=f32, epilogue=[cast(f16),add(%2,f16),gelu(f16)]} : f16[256,64]
  return "q" = %3, "y" = %4
}"#;

/// Promoted FP8 `wgmma` with 128-deep k-tiles, as gemm.cu's default FP8 mainloop sums.
const PROMOTED: Sums = Sums::Promoted { model: TensorCoreModel::H100E4M3, every: 128 };

struct Plan {
    graph: Graph,
    meta: PlanMeta,
    refs: References,
}

/// E4M3 values spread over 2^-6 .. 2^8 with both signs, so that a 32-product tensor-core step
/// spans more than its 13 alignment bits.
fn spread(n: usize, seed: u32) -> Vec<f32> {
    (0..n)
        .map(|i| {
            let h = (i as u32 ^ seed).wrapping_mul(2_654_435_761).rotate_left(7).wrapping_mul(40_503);
            let sign = if h & 1 == 0 { 1.0 } else { -1.0 };
            sign * (1.0 + ((h >> 1) % 8) as f32 / 8.0) * 2f32.powi(((h >> 4) % 15) as i32 - 6)
        })
        .collect()
}

fn plan(recorded: bool) -> Plan {
    let graph = crate::ir::parse(GRAPH).unwrap();
    let weights: HashMap<String, Arc<Tensor>> = [
        ("w".to_string(), Arc::new(Tensor::from_f32_as(DType::F8E4M3, vec![64, 512], spread(64 * 512, 7)))),
        ("b".to_string(), Arc::new(Tensor::from_f32_as(DType::F16, vec![64], (0..64).map(|i| (i as f32 * 0.3).sin()).collect()))),
    ]
    .into();
    let x = Tensor::from_f32_as(DType::F8E4M3, vec![256, 512], spread(256 * 512, 11));
    let mut values = HashMap::new();
    interp::run_observed(&graph, &weights, &[("x", x)], &mut |v, t| {
        values.insert(v, t.clone());
    })
    .unwrap();
    let refs = crate::check::references_of(&graph, values).unwrap();
    let buffer = |name: &str, dtype: &str| BufferMeta { name: name.into(), dtype: dtype.into(), ..Default::default() };
    let launch = |w: u32| LaunchMeta { kernel: 0, args: vec![], label: "gemm".into(), writes: vec![w] };
    let launch_sums = if recorded { (0..2).map(|launch| LaunchSums { launch, sums: PROMOTED }).collect() } else { vec![] };
    let meta = PlanMeta {
        buffers: vec![buffer("%3", "f8e4m3"), buffer("%4", "f16")],
        schedule: vec![launch(0), launch(1)],
        launch_sums,
        ..Default::default()
    };
    Plan { graph, meta, refs }
}

impl Plan {
    /// The node of `value` evaluated on the reference operands with `acc` and `perturbation`.
    fn eval(&self, value: usize, acc: Accumulation, perturbation: Option<Perturbation>) -> Tensor {
        let node = self.graph.producer(ValueId::from(value));
        let args = node.inputs.iter().map(|v| Arc::new(self.refs.values[v].clone())).collect();
        let want = &self.refs.values[&ValueId::from(value)];
        let opts = RunOptions { accumulation: acc, perturbation, ..Default::default() };
        interp::eval_op(&node.op, args, &[(want.dtype, want.shape.clone())], &opts).unwrap().remove(0)
    }

    /// The verdict on launch `launch` (writing buffer `launch`) when the GPU wrote `gpu`.
    fn judge(&self, launch: usize, gpu: &Tensor) -> Comparison {
        let written = [(launch as u32, to_host(gpu))];
        judge_launch(&self.graph, &self.meta, &self.refs, launch, &self.meta.schedule[launch], &written).0.remove(0).comparison
    }
}

/// `t` with element `i` changed by `f`.
fn planted(t: &Tensor, i: usize, f: impl Fn(f32) -> f32) -> Tensor {
    let mut xs = t.to_f32_vec();
    xs[i] = f(xs[i]);
    Tensor::from_f32_as(t.dtype, t.shape.clone(), xs)
}

fn differing(a: &Tensor, b: &Tensor) -> usize {
    a.to_f32_vec().iter().zip(b.to_f32_vec()).filter(|(x, y)| x.to_bits() != y.to_bits()).count()
}

const KERNEL: Accumulation = Accumulation::Promoted { sums: H100_E4M3, every: 128 };

#[test]
fn the_kernels_own_sums_pass_exactly() {
    let p = plan(true);
    for (launch, value) in [(0, 3), (1, 4)] {
        let c = p.judge(launch, &p.eval(value, KERNEL, None));
        assert!(c.pass && c.transcendental_cases == 0 && c.boundary_cases == 0, "launch {launch}: {c:?}");
        assert_eq!(c.tolerance, crate::check::Tolerance::KernelSums.describe());
    }
}

#[test]
fn exact_sums_presented_as_the_kernels_fail() {
    let (p, old) = (plan(true), plan(false));
    for (launch, value) in [(0, 3), (1, 4)] {
        let exact = p.eval(value, Accumulation::F64, None);
        let kernel = p.eval(value, KERNEL, None);
        let n = differing(&exact, &kernel);
        assert!(n > 0, "launch {launch}: the FP8 tensor cores' sums differ from exact ones somewhere");
        let c = p.judge(launch, &exact);
        assert!(!c.pass, "launch {launch}: {n} results from exact sums: {c:?}");
        // A plan that does not record its sums is judged as before: against f32 sums within the
        // dtype's tolerance (f64-sum codes as boundary cases), which exact sums pass.
        let before = old.judge(launch, &exact);
        assert!(before.pass, "launch {launch}, unrecorded: {before:?}");
    }
    // The chained FP8 sum (fast accumulation) is not the promoted one either.
    let chained = p.eval(4, Accumulation::TensorCore(H100_E4M3), None);
    assert!(differing(&chained, &p.eval(4, KERNEL, None)) > 0);
    assert!(!p.judge(1, &chained).pass);
}

#[test]
fn one_code_or_one_f16_step_off_fails_away_from_the_transcendental_window() {
    let p = plan(true);
    for (launch, value) in [(0, 3), (1, 4)] {
        let summed = kernel_sums(&p.graph, &p.meta, &p.refs, &p.meta.schedule[launch], KERNEL).unwrap();
        let s = &summed[&ValueId::from(value)];
        let (want, lo, hi) = (s.value.to_f32_vec(), s.low.to_f32_vec(), s.high.to_f32_vec());
        let far = (0..want.len()).find(|&i| lo[i] == hi[i] && want[i] > 0.0 && want[i] < 400.0).expect("an element away from a boundary");
        let dtype = s.value.dtype;
        let next = |x: f32| crate::numerics::decode_bits(crate::numerics::encode_bits(x, dtype) + 1, dtype);
        let c = p.judge(launch, &planted(&s.value, far, next));
        assert!(!c.pass && c.measured.contains(&format!("element {far}")), "launch {launch}: {c:?}");
    }
}

#[test]
fn the_epilogues_transcendental_error_is_allowed_inside_its_window_only() {
    let p = plan(true);
    // Kernels whose erfcf lies elsewhere within CUDA's bound: every one passes, and some of their
    // results differ from the host's (allowed as transcendental cases).
    let mut cases = 0;
    for seed in 0..4 {
        for (launch, value) in [(0, 3), (1, 4)] {
            let gpu = p.eval(value, KERNEL, Some(Perturbation::Draw { seed }));
            let c = p.judge(launch, &gpu);
            assert!(c.pass, "seed {seed}, launch {launch}: {c:?}");
            cases += c.transcendental_cases;
        }
    }
    assert!(cases > 0, "some results sit within erfcf's error of a rounding boundary");
    // The window is narrow: 22 of the 16,384 f16 results here reach a neighbour.
    let summed = kernel_sums(&p.graph, &p.meta, &p.refs, &p.meta.schedule[1], KERNEL).unwrap();
    let s = &summed[&ValueId::from(4)];
    let (lo, hi) = (s.low.to_f32_vec(), s.high.to_f32_vec());
    let wide = (0..lo.len()).filter(|&i| lo[i] != hi[i]).count();
    assert!(wide > 0 && wide * 200 < lo.len(), "{wide} of {} results have a window", lo.len());
    // Exact sums with the host's erfc stay outside the window.
    assert!(!p.judge(1, &p.eval(4, Accumulation::F64, None)).pass);
}
