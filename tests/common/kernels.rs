//! Lowering one GEMM node and compiling its kernels, for the codegen tests (no GPU: NVRTC only).

use qfuse::codegen::kernel::{KernelDef, Launch, LowerCx, Lowered};
use qfuse::codegen::nvrtc;
use qfuse::codegen::ops::lower_node;
use qfuse::ir::{Graph, Op};

/// The launches of the graph's first `qmatmul` (weight-only ones included: the dispatcher sends
/// them to `wonly::lower`), for sm_90; panics unless it lowers to launches.
pub fn qmatmul_launches(g: &Graph) -> Vec<Launch> {
    let node = g.nodes.ids().find(|&id| matches!(g.nodes[id].op, Op::QMatMul(_))).expect("qmatmul");
    match lower_node(&LowerCx::new(g, 90), node) {
        Ok(Lowered::Launches(l)) => l,
        other => panic!("expected launches, got {other:?}"),
    }
}

/// Compiles `k` to an sm_90a CUBIN with NVRTC; panics with the compiler's log otherwise.
pub fn compile_sm90a(k: &KernelDef) {
    let cubin = nvrtc::compile_cubin(&k.name, &k.source, "sm_90a", &[]).unwrap_or_else(|e| panic!("{}:\n{e}", k.name));
    assert!(cubin.starts_with(b"\x7fELF"), "{}: not an ELF", k.name);
}

/// Compiles every kernel of `kernels` to sm_90a CUBIN ([`compile_sm90a`]) on up to 8 threads.
pub fn compile_all_sm90a(kernels: &[KernelDef]) {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()).min(8);
    std::thread::scope(|s| {
        for chunk in kernels.chunks(kernels.len().div_ceil(threads).max(1)) {
            s.spawn(move || chunk.iter().for_each(compile_sm90a));
        }
    });
}
