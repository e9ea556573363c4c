//! `fold-smoothing`: the per-input-channel factor that SmoothQuant and AWQ divide a linear layer's
//! activation by moves into the LayerNorm (RMSNorm) that produces the activation, so no kernel
//! multiplies by it at run time.
//!
//! ```text
//! before:
//!   %1 = weight @ln.gamma : f16[384]
//!   %2 = weight @ln.beta : f16[384]
//!   %3 = layernorm %0, %1, %2 {eps=1e-12} : f16[B,S,384] loc("ln")
//!   %4 = weight @L.smooth : f16[384]
//!   %5 = mul %3, %4 : f16[B,S,384] loc("L:smooth")
//!   %6 = add %3, %0 : f16[B,S,384] loc("residual")
//! after:
//!   %1 = weight @ln.gamma : f16[384]
//!   %2 = weight @ln.beta : f16[384]
//!   %3 = layernorm %0, %1, %2 {eps=1e-12} : f16[B,S,384] loc("ln")      (kept: the residual reads it)
//!   %4 = weight @ln.gamma.smooth : f16[384]
//!   %5 = weight @ln.beta.smooth : f16[384]
//!   %6 = layernorm %0, %4, %5 {eps=1e-12} : f16[B,S,384] loc("ln")      (the mul's readers read it)
//!   %7 = add %3, %0 : f16[B,S,384] loc("residual")
//! ```
//!
//! Rule `smoothing`: `mul(norm(x, γ[, β]), s)` (either operand order) ⇒ `norm(x, γ'[, β'])` with
//! `γ' = round(γ·s)`, `β' = round(β·s)`, where `norm` is `layernorm` or `rmsnorm`, `γ`, `β` and `s`
//! are constant chains (a `weight` seen through `cast`s), `s` is `[K]` or `[1, …, 1, K]` (broadcast
//! along the norm's last axis only, so the product has the norm's shape) and all three have fixed
//! shapes. `γ'`, `β'` are computed in f32 and rounded to γ's (β's) dtype, stored as
//! `<γ root>.smooth` (`<β root>.smooth`; `.1`, `.2`, … appended for other contents, equal contents
//! shared, as `fold-constants` names its tensors) and read through new `weight` nodes. The new norm
//! keeps the norm's loc. When the norm has other live readers (BERT's residual add reads the same
//! LayerNorm output), the original norm stays for them and the scaled copy serves the mul's readers.
//!
//! Not exact: the unfused graph computes `m = round_T(round_T(n·γ + β)·s)` (n the normalised row),
//! the rewritten one `round_T(n·round(γ·s) + round(β·s))`. Each rounding errs by at most half an
//! ulp of its value, so the results differ by at most `½ulp(y)·|s| + ½ulp(m)` (unfused) plus
//! `½ulp(n·γ') + ½ulp(β') + ½ulp(m)` (fused): about one ulp of the result where the two terms do
//! not cancel, more (measured against the row's largest magnitude) where `n·γ'` and `β'` nearly
//! cancel. The pass cases declare `# tolerance: ulp` (one ulp of T at the element or at the
//! output's largest magnitude, whichever is larger), which bounds that sum on them, and `code`
//! where a quantize follows (a one-ulp change of its input can move a value across a rounding
//! boundary: one code). Quantization error downstream dwarfs it: an f16 ulp is 2^-11 relative, an
//! int8 step 2^-7 of the range.
//!
//! Not fired, and nothing reported (no Q/DQ is involved): a factor that is not a constant chain,
//! a factor broadcast over other axes (its shape has a non-1 extent before the last axis, or its
//! last extent is not the norm's), a mul whose other operand is not a `layernorm`/`rmsnorm`, a norm
//! whose γ or β is not a constant chain, and symbolic parameter shapes.
//!
//! Terminates: each rewrite removes one `mul` from the live graph (a chain of muls folds one link
//! at a time); a second run finds nothing. A changed graph is compacted.
//!
//! Interacting passes: runs first, before `fold-constants` (it evaluates γ, β and the factor
//! through their casts itself) and before `fuse-layernorm-quantize`, which then finds
//! `quantize(layernorm)` where the recipe wrote `quantize(mul(layernorm, s))`. Several muls of one
//! norm by equal factors give equal weights under one name, so `cse` merges their norms.

use super::dce::{live_users, output_uses};
use super::fold_constants::{constant_root, evaluate, store};
use super::{loc, Pass, PassCx, PassError, Weights};
use crate::interp::Tensor;
use crate::ir::{order, BinaryOp, Builder, Dim, Graph, NodeId, Op, ValueId};

/// `fold-smoothing`.
pub struct FoldSmoothing;

impl Pass for FoldSmoothing {
    fn name(&self) -> &'static str {
        "fold-smoothing"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        let users = live_users(g);
        let mut changed = false;
        for id in g.nodes.ids().collect::<Vec<_>>() {
            let out = g.nodes[id].outputs[0];
            if users[out].is_empty() && output_uses(g, out) == 0 {
                continue;
            }
            let Some(m) = match_smoothing(g, id) else { continue };
            apply_smoothing(g, cx.weights, id, &m).map_err(|e| fail(format!("{id} ({}): {e}", loc(g, id))))?;
            tracing::debug!(rule = "smoothing", node = %id);
            changed = true;
        }
        if changed {
            *g = order::compact(g);
        }
        Ok(changed)
    }
}

fn fail(message: String) -> PassError {
    PassError::Failed { pass: "fold-smoothing", message }
}

/// A norm whose result a mul scales by a constant factor.
struct Smoothing {
    /// The `layernorm` / `rmsnorm` node.
    norm: NodeId,
    /// The factor `s`.
    factor: ValueId,
}

/// `mul(norm(x, γ[, β]), s) => norm(x, γ·s[, β·s])` for constant γ, β and a constant factor `s`
/// broadcast along the last axis only: `(n·γ + β)·s = n·(γ·s) + β·s` element by element.
fn match_smoothing(g: &Graph, id: NodeId) -> Option<Smoothing> {
    let node = &g.nodes[id];
    let Op::Binary(BinaryOp::Mul) = node.op else { return None };
    let [l, r] = [node.inputs[0], node.inputs[1]];
    let (y, factor) = if is_norm(g, l) { (l, r) } else { (r, l) };
    let norm = g.values[y].producer;
    if !is_norm(g, y) || constant_root(g, factor).is_none() || !last_axis_only(g, y, factor) {
        return None;
    }
    let params = &g.nodes[norm].inputs[1..];
    let fixed = |v: &ValueId| g.ty(*v).fixed_numel().is_some();
    if !params.iter().all(|&p| constant_root(g, p).is_some()) || !params.iter().chain([&factor]).all(fixed) {
        return None;
    }
    Some(Smoothing { norm, factor })
}

/// True when `v` is the result of a `layernorm` or `rmsnorm`.
fn is_norm(g: &Graph, v: ValueId) -> bool {
    matches!(g.producer(v).op, Op::LayerNorm { .. } | Op::RmsNorm { .. })
}

/// True when `factor` is `[K]` or `[1, …, 1, K]` with K the last extent of `y`, of rank ≤ y's.
fn last_axis_only(g: &Graph, y: ValueId, factor: ValueId) -> bool {
    let (ys, fs) = (g.shape(y), g.shape(factor));
    let Some((last, lead)) = fs.split_last() else { return false };
    fs.len() <= ys.len() && ys.last() == Some(last) && lead.iter().all(|d| *d == Dim::Fixed(1))
}

/// Adds the scaled parameters and the norm reading them, and redirects the mul's readers to it.
fn apply_smoothing(g: &mut Graph, weights: &dyn Weights, mul: NodeId, m: &Smoothing) -> Result<(), String> {
    let s = constant(g, m.factor, weights)?.to_f32_vec();
    let norm = g.nodes[m.norm].clone();
    let mut inputs = vec![norm.inputs[0]];
    for &p in &norm.inputs[1..] {
        let scaled = scale_param(&*constant(g, p, weights)?, &s)?;
        let name = store(weights, format!("{}.smooth", constant_root(g, p).expect("matched a constant chain")), scaled);
        let ty = g.ty(p).clone();
        inputs.push(Builder::new(g).weight(&name, ty)?);
    }
    let mut b = Builder::new(g);
    b.scope = norm.name.clone();
    let out = b.add1(norm.op.clone(), &inputs, None)?;
    g.replace_all_uses(g.nodes[mul].outputs[0], out);
    Ok(())
}

/// The value of the constant chain `v`, evaluated by the interpreter.
fn constant(g: &Graph, v: ValueId, weights: &dyn Weights) -> Result<std::sync::Arc<Tensor>, String> {
    let slot = g.values[v].slot as usize;
    let mut outs = evaluate(g, g.values[v].producer, weights)?;
    (slot < outs.len()).then(|| std::sync::Arc::new(outs.swap_remove(slot))).ok_or_else(|| "missing constant output".into())
}

/// `round(p·s)` element by element, computed in f32 and rounded to `p`'s dtype.
fn scale_param(p: &Tensor, s: &[f32]) -> Result<Tensor, String> {
    let values = p.to_f32_vec();
    if values.len() != s.len() {
        return Err(format!("norm parameter of {} elements, smoothing factor of {}", values.len(), s.len()));
    }
    let scaled = values.iter().zip(s).map(|(&a, &b)| a * b).collect();
    Ok(Tensor::from_f32_as(p.dtype, p.shape.clone(), scaled))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::WeightSource;
    use crate::ir::DType;
    use crate::passes::MemoryWeights;

    const SHARED: &str = r#"
graph "t" {
  sym B max=2
  %0 = input "x" : f16[B,4]
  %1 = weight @ln.gamma : f32[4]
  %2 = cast %1 : f16[4]
  %3 = weight @ln.beta : f16[4]
  %4 = layernorm %0, %2, %3 {eps=1e-05} : f16[B,4] loc("ln")
  %5 = weight @L.smooth : f16[4]
  %6 = mul %5, %4 : f16[B,4] loc("L:smooth")
  %7 = add %4, %0 : f16[B,4] loc("residual")
  return "m" = %6, "r" = %7
}"#;

    /// γ' and β' are the f32 products rounded to the parameters' dtype (f16 here, γ read through
    /// its cast), stored under the roots' names; the original norm stays for the residual.
    #[test]
    fn scaled_parameters_are_rounded_products() {
        let mut g = crate::ir::parse(SHARED).unwrap();
        let w = MemoryWeights::default();
        let (gamma, beta, s) = ([0.3f32, -1.7, 2.2, 0.9], [0.1f32, 0.25, -0.6, 1.1], [0.7f32, 1.3, 0.45, 2.5]);
        w.insert("ln.gamma".into(), Tensor::f32(vec![4], gamma.to_vec()));
        w.insert("ln.beta".into(), Tensor::from_f32_as(DType::F16, vec![4], beta.to_vec()));
        w.insert("L.smooth".into(), Tensor::from_f32_as(DType::F16, vec![4], s.to_vec()));
        let mut cx = PassCx::new(&w);
        assert!(FoldSmoothing.run(&mut g, &mut cx).unwrap());
        let f16 = |x: f32| crate::numerics::cast(x, DType::F16);
        let s16: Vec<f32> = s.iter().map(|&x| f16(x)).collect();
        let want = |p: &[f32]| -> Vec<f32> { p.iter().zip(&s16).map(|(&a, &b)| f16(f16(a) * b)).collect() };
        assert_eq!(w.weight("ln.gamma.smooth").unwrap().to_f32_vec(), want(&gamma));
        assert_eq!(w.weight("ln.beta.smooth").unwrap().to_f32_vec(), want(&beta));
        let text = crate::ir::print(&g);
        assert_eq!(text.matches("= layernorm").count(), 2, "{text}");
        assert!(!text.contains("mul"), "{text}");
        assert!(!FoldSmoothing.run(&mut g, &mut cx).unwrap(), "a second run finds nothing");
    }

    /// Run first, the pass leaves `quantize(layernorm)` where the recipe wrote
    /// `quantize(mul(layernorm, s))`, which `fuse-layernorm-quantize` then fuses.
    #[test]
    fn layernorm_quantize_fuses_after_smoothing() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/ir/fold-smoothing/layernorm_residual_reader.ir");
        let mut g = crate::ir::parse(&std::fs::read_to_string(path).unwrap()).unwrap();
        let w = MemoryWeights::default();
        for name in ["ln.gamma", "ln.beta", "L.smooth"] {
            w.insert(name.into(), Tensor::from_f32_as(DType::F16, vec![16], (0..16).map(|i| 0.5 + i as f32 / 16.0).collect()));
        }
        let mut cx = PassCx::new(&w);
        assert!(FoldSmoothing.run(&mut g, &mut cx).unwrap());
        assert!(crate::passes::fuse_layernorm_quantize::FuseLayerNormQuantize.run(&mut g, &mut cx).unwrap());
        let text = crate::ir::print(&g);
        assert!(text.contains("= layernorm_quantize %0, %1, %2 {eps=1e-12, via=f16, i8, per_tensor, scale=0.02}"), "{text}");
    }
}
