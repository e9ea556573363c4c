//! How a plan's kernels sum their products, as the interpreter's numerics: each GEMM launch's
//! [`crate::plan::Sums`] (recorded at compile time from the kernel's mainloop, format 2.3) mapped
//! to the measured tensor-core model it names ([`accumulation`]), per launch for the per-kernel
//! judge ([`launch_accumulation`]) and per IR node for the end-to-end floor ([`KernelSums`]).
//! Launches without a record (CUDA-core kernels, exact integer sums, plans before 2.3) sum as
//! the interpreter's default, f32.

use std::sync::Arc;

use crate::interp::{self, tensor_core, Accumulation};
use crate::ir::{Graph, NodeId};
use crate::plan::{Guard, LaunchMeta, PlanMeta, Sums, TensorCoreModel};

use super::value_id;

/// The interpreter's accumulation for a kernel that sums as `sums` says.
pub fn accumulation(sums: Sums) -> Accumulation {
    let model = |m: TensorCoreModel| match m {
        TensorCoreModel::H100F16 => tensor_core::H100_F16,
        TensorCoreModel::H100E4M3 => tensor_core::H100_E4M3,
    };
    match sums {
        Sums::TensorCore(m) => Accumulation::TensorCore(model(m)),
        Sums::Promoted { model: m, every } => Accumulation::Promoted { sums: model(m), every },
    }
}

/// How launch `index` of `meta` sums, where the plan records it.
pub fn launch_accumulation(meta: &PlanMeta, index: usize) -> Option<Accumulation> {
    meta.sums_of(index).map(accumulation)
}

/// The IR node whose results `launch` writes (the producer of its first written buffer's value).
pub fn launch_node(graph: &Graph, meta: &PlanMeta, launch: &LaunchMeta) -> Option<NodeId> {
    let buffer = meta.buffers.get(*launch.writes.first()? as usize)?;
    Some(graph.values[value_id(graph, &buffer.name)?].producer)
}

/// Per IR node, how the plan's kernel for it sums, under the launch guard that picks the kernel
/// (a node's skinny CUDA-core kernel for few rows and its tensor-core GEMM for more).
#[derive(Debug, Clone, Default)]
pub struct KernelSums {
    entries: Vec<(NodeId, Option<Guard>, Accumulation)>,
}

impl KernelSums {
    /// The recorded launches of `meta` (a plan of `graph`, its stored IR).
    pub fn of_plan(meta: &PlanMeta, graph: &Graph) -> Self {
        let entries = meta
            .launch_sums
            .iter()
            .filter_map(|l| {
                let node = launch_node(graph, meta, meta.schedule.get(l.launch as usize)?)?;
                Some((node, meta.guard_of(l.launch as usize).cloned(), accumulation(l.sums)))
            })
            .collect();
        Self { entries }
    }

    /// No launch records its sums (every node sums as the default).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// How `node` sums when the shape symbols are `symbols`: as its recorded launch whose guard
    /// holds (an unguarded one always), else `None` (the default).
    pub fn of(&self, node: NodeId, symbols: &[(String, u64)]) -> Option<Accumulation> {
        let runs = |when: &Option<Guard>| when.as_ref().is_none_or(|g| g.holds(symbols).unwrap_or(false));
        self.entries.iter().find(|(n, when, _)| *n == node && runs(when)).map(|&(_, _, acc)| acc)
    }

    /// These sums as the interpreter's per-node override ([`interp::RunOptions::node_accumulation`]).
    pub fn node_accumulation(&self) -> interp::NodeAccumulation {
        let sums = self.clone();
        interp::NodeAccumulation(Arc::new(move |node, symbols| sums.of(node, symbols)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::Tensor;
    use crate::plan::{BufferMeta, DimExpr, LaunchGuard, LaunchSums};
    use std::collections::HashMap;

    #[test]
    fn recorded_launches_map_to_their_nodes_under_their_guards() {
        let (graph, meta, _) = two_gemms();
        let promoted = Sums::Promoted { model: TensorCoreModel::H100E4M3, every: 128 };
        let sums = KernelSums::of_plan(&meta, &graph);
        let (first, second) =
            (graph.values[value_id(&graph, "%2").unwrap()].producer, graph.values[value_id(&graph, "%3").unwrap()].producer);
        let at = |b: u64| vec![("B".to_string(), b)];
        assert_eq!(sums.of(first, &at(8)), None, "the skinny kernel sums in f32");
        assert_eq!(sums.of(first, &at(32)), Some(Accumulation::Promoted { sums: tensor_core::H100_E4M3, every: 128 }));
        assert_eq!(sums.of(second, &at(8)), Some(Accumulation::TensorCore(tensor_core::H100_F16)));
        assert_eq!(sums.node_accumulation().of(second, &at(64)), sums.of(second, &at(64)));
        assert_eq!(launch_accumulation(&meta, 0), None);
        assert_eq!(launch_accumulation(&meta, 1), Some(accumulation(promoted)));
        assert!(KernelSums::of_plan(&PlanMeta { launch_sums: vec![], ..meta }, &graph).is_empty());
    }

    /// Two chained f32 GEMMs: `%2` recorded as promoted FP8 sums above 16 rows (a skinny f32
    /// kernel below), `%3` as f16 tensor-core sums always.
    fn two_gemms() -> (Graph, PlanMeta, HashMap<String, Arc<Tensor>>) {
        let graph = crate::ir::parse(
            r#"graph "t" {
  sym B max=64
  %0 = input "x" : f32[B,256]
  %1 = weight @w : f32[256,256]
  %2 = matmul %0, %1 {transpose_b} : f32[B,256]
  %3 = matmul %2, %1 {transpose_b} : f32[B,256]
  return "y" = %3
}"#,
        )
        .unwrap();
        let buffer = |name: &str| BufferMeta { name: name.into(), dtype: "f32".into(), ..Default::default() };
        let launch = |w: u32| LaunchMeta { kernel: 0, args: vec![], label: String::new(), writes: vec![w] };
        let rows = DimExpr::sym("B");
        let meta = PlanMeta {
            buffers: vec![buffer("%2"), buffer("%3")],
            schedule: vec![launch(0), launch(0), launch(1)],
            launch_guards: vec![
                LaunchGuard { launch: 0, when: Guard::RowsAtMost { rows: rows.clone(), max: 16 } },
                LaunchGuard { launch: 1, when: Guard::RowsAbove { rows, min: 16 } },
            ],
            launch_sums: vec![
                LaunchSums { launch: 1, sums: Sums::Promoted { model: TensorCoreModel::H100E4M3, every: 128 } },
                LaunchSums { launch: 2, sums: Sums::TensorCore(TensorCoreModel::H100F16) },
            ],
            ..Default::default()
        };
        let w = (0..256 * 256).map(|i| ((i * 37 % 101) as f32 - 50.0) * 2f32.powi(i % 9 - 4)).collect();
        let weights = [("w".to_string(), Arc::new(Tensor::f32(vec![256, 256], w)))].into();
        (graph, meta, weights)
    }

    fn input(rows: usize) -> Tensor {
        Tensor::f32(vec![rows, 256], (0..rows * 256).map(|i| ((i as f32) * 0.61).sin() * 2f32.powi((i % 7) as i32 - 3)).collect())
    }

    /// The interpreter sums each node as its plan's kernel for the run's shapes does
    /// ([`interp::RunOptions::node_accumulation`]), every other node as the run's default.
    #[test]
    fn a_run_sums_each_gemm_as_its_kernel_for_the_shapes() {
        let (graph, meta, weights) = two_gemms();
        let opts =
            interp::RunOptions { node_accumulation: Some(KernelSums::of_plan(&meta, &graph).node_accumulation()), ..Default::default() };
        let node = |v: &str| graph.producer(value_id(&graph, v).unwrap());
        for (rows, first) in [(32, Accumulation::Promoted { sums: tensor_core::H100_E4M3, every: 128 }), (8, Accumulation::F32)] {
            let mut seen = HashMap::new();
            interp::run_with(&graph, &weights, &[("x", input(rows))], &opts, &mut |v, t| {
                seen.insert(v, t.clone());
            })
            .unwrap();
            let eval = |v: &str, acc| {
                let n = node(v);
                let args = n.inputs.iter().map(|i| Arc::new(seen[i].clone())).collect();
                let opts = interp::RunOptions { accumulation: acc, ..Default::default() };
                interp::eval_op(&n.op, args, &[(crate::ir::DType::F32, vec![rows, 256])], &opts).unwrap().remove(0).to_f32_vec()
            };
            let got = |v: &str| seen[&value_id(&graph, v).unwrap()].to_f32_vec();
            assert_eq!(got("%2"), eval("%2", first), "{rows} rows");
            assert_eq!(got("%3"), eval("%3", Accumulation::TensorCore(tensor_core::H100_F16)), "{rows} rows");
            assert_ne!(got("%3"), eval("%3", Accumulation::F32), "{rows} rows: the tensor-core sums differ from f32 ones");
        }
    }

    /// The end-to-end floor gains a ninth implementation where the plan records its kernels' sums.
    #[test]
    fn the_floor_sums_every_gemm_as_the_plans_kernels() {
        let (graph, meta, weights) = two_gemms();
        let inputs = [("x", input(32))];
        let out = interp::run(&graph, &weights, &inputs).unwrap();
        let reference = [(graph.outputs[0].1, out[0].1.clone())].into_iter().collect();
        let sums = KernelSums::of_plan(&meta, &graph);
        let (_, variants) = crate::check::interpreter_floor(&graph, &weights, &inputs, &reference, Some(&sums)).unwrap();
        assert_eq!(variants.len(), 9);
        let last = &variants[8];
        assert!(last.name.starts_with("every GEMM summed as the plan's kernels sum"), "{}", last.name);
        assert!(last.cosines[0].1.iter().all(|&c| c < 1.0 && c > 0.999), "{:?}", last.cosines);
        let (_, unrecorded) = crate::check::interpreter_floor(&graph, &weights, &inputs, &reference, Some(&KernelSums::default())).unwrap();
        assert_eq!(unrecorded.len(), 8, "no record, no ninth implementation");
    }
}
