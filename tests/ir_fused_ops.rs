//! The fused ops' text form round-trips, their type rules reject malformed uses, and the
//! interpreter evaluates them as the composition of the unfused ops they replace.

use qfuse::interp::{self, Tensor, WeightSource};
use qfuse::ir;
use std::collections::HashMap;
use std::sync::Arc;

const FUSED: &str = r#"
graph "fused" {
  sym B max=4
  %0 = input "x" : f16[B,8]
  %1 = weight @ln.gamma : f16[8]
  %2 = weight @ln.beta : f16[8]
  %3, %30 = layernorm_quantize %0, %1, %2 {eps=1e-12, via=f16, keep_normed=true, f8e4m3, per_tensor, scale=0.0123} : f8e4m3[B,8], f16[B,8] loc("ln")
  %4 = weight @w : f8e4m3[16,8]
  %5 = weight @bias : f16[16]
  %6 = qmatmul %3, %4 {transpose_b, alpha=0.0005, acc=f32, epilogue=[cast(f16), add(%5,f16), gelu(f16)], out=f8e4m3, out_scale=0.05} : f8e4m3[B,16] loc("up")
  %7 = requantize %6 {from_scale=0.05, via=f16, f8e4m3, per_tensor, scale=0.1} : f8e4m3[B,16]
  %8, %9 = rmsnorm_quantize %0, %1 {eps=1e-06, via=f32, f8e4m3, per_token, scale=dynamic(f32)} : f8e4m3[B,8], f32[B,1]
  %10 = weight @ws : f32[16]
  %11 = qmatmul %8, %4 {transpose_b, alpha=1.0, a_scale=%9, b_scale=%10, acc=f16} : f16[B,16]
  return "y" = %7, "z" = %11
}
"#;

#[test]
fn fused_ops_round_trip() {
    let g = ir::parse(FUSED).unwrap();
    ir::verify(&g, "after parse").unwrap();
    let text = ir::print(&g);
    assert_eq!(ir::parse(&text).unwrap(), ir::order::renumber(&g));
    assert!(text.contains(",f16),gelu(f16)], out=f8e4m3, out_scale=0.05") && text.contains("epilogue=[cast(f16),add(%"), "{text}");
}

#[test]
fn fused_type_rules_reject_misuse() {
    let bad = [
        ("qmatmul %3, %4 {transpose_b, alpha=1.0, acc=f32} : f16[B,16]", "acc=f32 result declared f16", "declared type"),
        ("qmatmul %0, %4 {transpose_b, alpha=1.0, acc=f32} : f32[B,16]", "wide-float lhs", "lhs must be quantized storage"),
        ("qmatmul %3, %4 {transpose_b, alpha=1.0, acc=f32, epilogue=[add(%1,f32)]} : f32[B,16]", "bias of wrong width", "does not fit"),
        (
            "requantize %3 {from_scale=0.1, via=f16, f8e4m3, per_token, scale=dynamic(f32)} : f8e4m3[B,8]",
            "dynamic requantize",
            "per-tensor quantization with a literal scale",
        ),
    ];
    for (line, what, want) in bad {
        let src = FUSED.replace("  return", &format!("  %50 = {line}\n  return"));
        let g = ir::parse(&src).unwrap_or_else(|e| panic!("{what}: {e}"));
        let err = ir::verify(&g, "test").expect_err(what).to_string();
        assert!(err.contains(want), "{what}: {err}");
    }
}

struct Mem(HashMap<String, Arc<Tensor>>);
impl WeightSource for Mem {
    fn weight(&self, name: &str) -> Result<Arc<Tensor>, String> {
        self.0.get(name).cloned().ok_or_else(|| format!("no weight {name}"))
    }
}

fn weights() -> Mem {
    let grid = |n: usize, f: &dyn Fn(usize) -> f32| (0..n).map(f).collect::<Vec<f32>>();
    let mut m = HashMap::new();
    let f16 = |v: Vec<f32>, shape: Vec<usize>| Arc::new(Tensor::from_f32_as(ir::DType::F16, shape, v));
    m.insert("ln.gamma".into(), f16(grid(8, &|i| 0.5 + i as f32 / 8.0), vec![8]));
    m.insert("ln.beta".into(), f16(grid(8, &|i| i as f32 / 16.0 - 0.2), vec![8]));
    let w: Vec<f32> = grid(128, &|i| qfuse::numerics::cast(((i * 37 % 29) as f32 - 14.0) * 9.0, ir::DType::F8E4M3));
    m.insert("w".into(), Arc::new(Tensor::from_f32_as(ir::DType::F8E4M3, vec![16, 8], w)));
    m.insert("bias".into(), f16(grid(16, &|i| i as f32 / 10.0 - 0.8), vec![16]));
    m.insert("ws".into(), Arc::new(Tensor::f32(vec![16], grid(16, &|i| 0.001 * (i + 1) as f32))));
    Mem(m)
}

/// The same computation written with unfused ops.
const UNFUSED: &str = r#"
graph "unfused" {
  sym B max=4
  %0 = input "x" : f16[B,8]
  %1 = weight @ln.gamma : f16[8]
  %2 = weight @ln.beta : f16[8]
  %3 = layernorm %0, %1, %2 {eps=1e-12} : f16[B,8]
  %4 = quantize %3 {f8e4m3, per_tensor, scale=0.0123} : f8e4m3[B,8]
  %5 = dequantize %4 {f8e4m3, per_tensor, scale=0.0123} : f32[B,8]
  %6 = weight @w : f8e4m3[16,8]
  %7 = dequantize %6 {f8e4m3, per_tensor, scale=0.040650405} : f32[16,8]
  %8 = matmul %5, %7 {transpose_b} : f32[B,16]
  %9 = cast %8 : f16[B,16]
  %10 = weight @bias : f16[16]
  %11 = add %9, %10 : f16[B,16]
  %12 = gelu %11 : f16[B,16]
  %13 = quantize %12 {f8e4m3, per_tensor, scale=0.05} : f8e4m3[B,16]
  %14 = dequantize %13 {f8e4m3, per_tensor, scale=0.05} : f16[B,16]
  %15 = quantize %14 {f8e4m3, per_tensor, scale=0.1} : f8e4m3[B,16]
  return "y" = %15
}
"#;

#[test]
fn fused_ops_compute_what_they_replace() {
    let w = weights();
    let x: Vec<f32> = (0..24).map(|i| ((i * 7 % 11) as f32 - 5.0) * 0.37).collect();
    let inputs = [("x", Tensor::from_f32_as(ir::DType::F16, vec![3, 8], x))];
    let fused = interp::run(&ir::parse(FUSED).unwrap(), &w, &inputs).unwrap();
    let unfused = interp::run(&ir::parse(UNFUSED).unwrap(), &w, &inputs).unwrap();
    let (a, b) = (fused[0].1.as_f32().unwrap(), unfused[0].1.as_f32().unwrap());
    // alpha = 0.0123·0.040650405 rounds differently from the two DQ products: allow one FP8 code.
    let code = |v: f32| {
        let c = qfuse::numerics::encode_bits(v, ir::DType::F8E4M3) as i32;
        if c & 0x80 != 0 {
            -(c & 0x7f)
        } else {
            c
        }
    };
    let differing = a.iter().zip(b).filter(|(x, y)| x != y).count();
    let close = a.iter().zip(b).all(|(&x, &y)| (code(x) - code(y)).abs() <= 1);
    assert!(close, "fused {a:?}\nunfused {b:?}");
    assert!(differing <= a.len() / 8, "{differing} of {} values differ", a.len());
    assert!(a.iter().any(|&v| v != 0.0), "the test data must not quantize to all zeros");
}
