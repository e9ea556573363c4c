//! GLU GEMM epilogues (`qmatmul_glu`): one GEMM over the gate and up weights interleaved in
//! pieces of `piece` rows whose epilogue combines, per output column, the gate's accumulator and
//! the up projection's into the gate's result.
//!
//! Every GEMM template (tiled, skinny, weight-only) stages its block's f32 accumulators in shared
//! memory and inserts stage 2 of `gemm_store_tile.cuh`. A block's `BN` weight columns are
//! `BN / (2·piece)` (gate, up) piece pairs, so its `BN / 2` output columns are whole and the
//! thread storing output column `n` reads both accumulators from the staged tile: the gate's at
//! tile column `c = col / piece · 2·piece + col % piece` (`col` the column within the block's
//! outputs) and the up projection's at `c + piece`. [`store_tile`] inserts stage 2 in a nested
//! scope that re-declares `N` and `BN` as the result's (half the weight's), `n0` as the block's
//! first output column and `THREADS` as the threads stage 2 splits the output tile among (the
//! others skip it; stage 2 has no barrier). The value is one [`Expr`]: the gate's epilogue whose
//! `up` operand is the up projection's epilogue over `acc_up` — every rounding step of both
//! `qmatmul`s where they were ([`combine`]).
//!
//! Kernel parameters: the shared epilogue inputs (`a_scale` per row; `b_scale` per weight
//! column, interleaved like the weight, read at the gate's and at the up projection's column),
//! the gate's own inputs renamed `g_<name>`, the up projection's renamed `u_<name>`, `Y`, `M`,
//! then the value's per-launch `f32`s (`g_alpha`, `u_alpha`) and the gate's `out_scale`,
//! `out_rcp`: every layer's gate/up GEMM of one shape is one kernel.

use super::expr::Expr;
use super::gemm::{index_offset, render_store_tile, Epilogue, EpilogueInput, GemmError, Index, InputLines};
use super::segments::SHARED;

/// Checks a piece width: positive and whole 4-column vectors (the stage-2 `VEC`).
pub fn check_piece(piece: u32) -> Result<(), String> {
    if piece == 0 || piece % 4 != 0 {
        return Err(format!("a GLU piece of {piece} columns is not a positive multiple of 4"));
    }
    Ok(())
}

/// A block of `tile` weight columns holds whole (gate, up) piece pairs.
pub fn check_tile(tile: u32, piece: u32) -> Result<(), String> {
    if piece == 0 || tile % (2 * piece) != 0 {
        return Err(format!("the kernel's {tile}-column tile splits a pair of {piece}-row gate/up pieces"));
    }
    Ok(())
}

/// True for an input read in the weight's (interleaved) columns: a shared per-column scale.
pub fn weight_columns(inp: &EpilogueInput) -> bool {
    inp.index == Index::PerColumn && SHARED.contains(&inp.name.as_str())
}

/// The GLU epilogue: `gate`'s (as `qmatmul::epilogue` builds it, its input `up_input` being the
/// up result) with that input's value replaced by `up`'s value over `acc_up`; own inputs and
/// parameters renamed `g_…` / `u_…` (module doc), the gate's store.
pub fn combine(gate: &Epilogue, up: &Epilogue, up_input: &str, piece: u32) -> Result<Epilogue, String> {
    check_piece(piece)?;
    if !gate.segments.is_empty() || !up.segments.is_empty() || gate.glu.is_some() || up.glu.is_some() {
        return Err("a GLU epilogue combines two plain epilogues".into());
    }
    if !gate.inputs.iter().any(|i| i.name == up_input) {
        return Err(format!("the gate's epilogue has no input `{up_input}` for the up result"));
    }
    let shared = |e: &Epilogue| e.inputs.iter().filter(|i| SHARED.contains(&i.name.as_str())).cloned().collect::<Vec<_>>();
    if shared(gate) != shared(up) {
        return Err("gate and up read different shared scales".into());
    }
    let up_value = up.value.substitute(&|x| rename(x, "u", &|v| (v == "acc").then(|| "acc_up".to_string())));
    let value = gate.value.substitute(&|x| match x {
        Expr::Var(v) if *v == format!("{up_input}_v") => Some(up_value.clone()),
        _ => rename(x, "g", &|_| None),
    });
    let mut inputs = shared(gate);
    let own = |e: &Epilogue, prefix: &str| -> Vec<EpilogueInput> {
        let own = e.inputs.iter().filter(|i| !SHARED.contains(&i.name.as_str()) && i.name != up_input);
        own.map(|i| EpilogueInput { name: format!("{prefix}_{}", i.name), ..i.clone() }).collect()
    };
    inputs.extend(own(gate, "g"));
    inputs.extend(own(up, "u"));
    Ok(Epilogue { inputs, value, store: gate.store, segments: vec![], glu: Some(piece) })
}

/// A leaf of one side's value renamed for the combined epilogue: parameters and own inputs'
/// values get `prefix`, a shared per-column value of the up side (`u`) its `_up_v` twin,
/// `special` maps the rest (`acc` of the up side).
fn rename(x: &Expr, prefix: &str, special: &dyn Fn(&str) -> Option<String>) -> Option<Expr> {
    match x {
        Expr::Param { name, value } => Some(Expr::param(format!("{prefix}_{name}"), *value)),
        Expr::Var(v) => {
            if let Some(s) = special(v) {
                return Some(Expr::var(s));
            }
            let base = v.strip_suffix("_v")?;
            match (SHARED.contains(&base), prefix, base == "b_scale") {
                (true, "u", true) => Some(Expr::var(format!("{base}_up_v"))),
                (true, _, _) => None,
                (false, _, _) => Some(Expr::var(format!("{prefix}_{v}"))),
            }
        }
        Expr::Lit(_) | Expr::Call(..) | Expr::Bin(..) | Expr::Round(..) => None,
    }
}

/// The `store_tile` text of a GLU epilogue (module doc).
pub(crate) fn store_tile(epi: &Epilogue) -> Result<String, GemmError> {
    epi.validate().map_err(GemmError::Epilogue)?;
    let piece = epi.glu.ok_or_else(|| GemmError::Epilogue("not a GLU epilogue".into()))?;
    let tc = format!("(col / {piece} * {} + col % {piece})", 2 * piece);
    let mut lines = InputLines::default();
    for inp in &epi.inputs {
        if weight_columns(inp) {
            lines.push(inp, &inp.name, &format!("qf_n0_all + {tc}"));
            lines.push(inp, &format!("{}_up", inp.name), &format!("qf_n0_all + {tc} + {piece}"));
        } else {
            lines.push(inp, &inp.name, index_offset(inp.index));
        }
    }
    lines.push_raw("acc_up", &format!("qf_ld4_f32(tile + row * OUT_STRIDE + {tc} + {piece}, acc_up_c[u]);"));
    let body = render_store_tile(epi, lines, &tc)?;
    Ok(format!(
        "    // GLU GEMM (src/codegen/glu.rs): gate and up columns pair up in the staged tile.
    const int qf_n0_all = n0;
    constexpr int qf_n_all = N;
    constexpr int qf_bn_all = BN;
    constexpr int qf_threads_all = THREADS;
    static_assert(qf_bn_all % {pair} == 0 && qf_n_all % {pair} == 0, \"whole gate/up piece pairs per block\");
    {{
    constexpr int N = qf_n_all / 2;
    constexpr int BN = qf_bn_all / 2;
    const int n0 = qf_n0_all / 2;
    constexpr int THREADS = BM * BN / VEC < qf_threads_all ? BM * BN / VEC : qf_threads_all;
    static_assert((BM * BN / VEC) % THREADS == 0, \"even GLU epilogue split\");
    if (tid < THREADS) {{
{body}    }}
    }}
",
        pair = 2 * piece
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::gemm::Store;
    use crate::ir::DType;

    fn side(alpha: f32, up_operand: bool, b_scale: bool) -> Epilogue {
        let mut inputs = vec![];
        let mut value = Expr::var("acc").mul(Expr::param("alpha", alpha));
        if b_scale {
            let s = EpilogueInput { name: "b_scale".into(), dtype: DType::F32, index: Index::PerColumn };
            value = value.mul(s.value());
            inputs.push(s);
        }
        value = value.round(DType::F16);
        if up_operand {
            let u = EpilogueInput { name: "add0".into(), dtype: DType::F16, index: Index::Full };
            value = value.apply(super::super::expr::Fn1::Silu).round(DType::F16).mul(u.value()).round(DType::F16);
            inputs.push(u);
        }
        Epilogue { inputs, value, store: Store::Float(DType::F16), segments: vec![], glu: None }
    }

    /// The gate's `up` operand becomes the up value over `acc_up`; parameters get their side's
    /// prefix; the shared weight scale is read at both columns.
    #[test]
    fn combine_nests_the_up_value_in_the_gate() {
        let e = combine(&side(0.5, true, true), &side(0.25, false, true), "add0", 8).expect("combines");
        assert_eq!(
            e.value.to_cuda(),
            "qf_round_f16(qf_round_f16(qf_silu(qf_round_f16(acc * g_alpha * b_scale_v))) * qf_round_f16(acc_up * u_alpha * b_scale_up_v))"
        );
        let names: Vec<&str> = e.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["b_scale"]);
        assert_eq!(e.scalars(), vec![("g_alpha".to_string(), 0.5), ("u_alpha".to_string(), 0.25)]);
        e.validate().expect("valid");
    }

    /// A piece off the 4-column vectors, a tile splitting a pair, a missing up input are errors.
    #[test]
    fn misfits_are_errors() {
        assert!(combine(&side(0.5, true, false), &side(0.25, false, false), "add0", 6).is_err());
        assert!(combine(&side(0.5, true, false), &side(0.25, false, false), "add1", 8).unwrap_err().contains("no input `add1`"));
        assert!(check_tile(16, 8).is_ok());
        assert!(check_tile(24, 8).unwrap_err().contains("splits a pair"));
    }
}
