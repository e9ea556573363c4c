//! `fold-scales`: a `dequantize` feeding a `quantize` becomes nothing (equal specs) or one
//! `requantize` (different per-tensor scales).
//!
//! ```text
//! before:  %2 = dequantize %1 {f8e4m3, per_tensor, scale=0.02} : f32[B,384] loc("a:out.dq")
//!          %3 = quantize %2 {f8e4m3, per_tensor, scale=0.05} : f8e4m3[B,384] loc("b:a.q")
//! after:   %2 = requantize %1 {from_scale=0.02, via=f32, f8e4m3, per_tensor, scale=0.05} : f8e4m3[B,384] loc("b:a.q")
//!
//! before:  %2 = dequantize %1 {i8, per_tensor, scale=0.02} : f32[B,384] loc("a:out.dq")
//!          %3 = quantize %2 {i8, per_tensor, scale=0.02} : i8[B,384] loc("b:a.q")
//! after:   (uses of %3 read %1)
//! ```
//!
//! Rules, for `quantize(dequantize(q, s1), s2)` where the dequantize's result is read by quantizes
//! only (no other node, no graph output; otherwise it must stay and the pair is declined):
//! - `elide_round_trip`: `quantize(dequantize(q, s), s) => q` when the specs are equal (storage,
//!   granularity, literal scale, literal zero point) and the round trip is exact for every code
//!   (below). Both Q and DQ are reported folded, "DQ→Q with equal scales removed".
//! - `requantize`: otherwise, with per-tensor literal scales (no zero point on either side):
//!   `quantize(dequantize(q, s1) : via, s2) => requantize(q, from_scale=s1, via, to=s2)`, exact by
//!   definition (`requantize` is that composition, rounding through the DQ's output dtype `via`).
//!   Both are reported fused into the requantize, which takes the quantize's loc.
//! - Anything else (per-channel, per-token or block specs that differ, scale or zero-point
//!   inputs, a dynamic quantize, a zero point on a requantize side) is declined with the reason.
//!
//! Why eliding is exact. Let `c = q − z` (`z = 0` for floats) and `u` the unit roundoff of `via`
//! (f32 2⁻²⁴, f16 2⁻¹¹, bf16 2⁻⁸). The DQ computes `x = round_via(round_f32(c·s))`, the Q
//! `round_storage(round_f32(x/s)) + z`. While every `|c·s|` is a normal number of `via`, the
//! quotient is `c·(1+ε)` with `|ε| ≤ e = u + 2⁻²²` (u, two f32 roundings, second-order terms),
//! and it rounds back to `c` when that error is below half the storage spacing at `c`: for
//! integers `max|c|·e < ½`; for floats with `p` significand bits (E4M3 4, E5M2 3, E2M1 2), whose
//! half-spacing is at least `|c|·2^−(p+1)`, `e < 2^−(p+1)`. So f32 passes whenever the range
//! does, f16 and bf16 pass for FP8/FP4, f16 for 8-bit integers, bf16 not for 8-bit integers. `±0`
//! and NaN round-trip. E5M2's `±inf` codes would saturate to ±57344, so E5M2 elides only when `q`
//! comes from a (saturating) `quantize`. Where the guard fails the pair becomes a `requantize`
//! (per-tensor) or is declined. Its exclusions are real, f32 included: E5M2 code 512 with scale
//! 7e35 overflows to inf and comes back as 57344, and `u8` code 167 (scale 0.0123) comes back
//! through bf16 as 166. A unit test checks every code of every storage type against the guard.
//!
//! Idempotent: no rule matches its own output. A changed graph is compacted (README.md §4).
//! Interactions: after `propagate-qdq` (which makes DQ and Q meet), before the fusions.

use super::dce::{live_users, output_uses, Users};
use super::{loc, Pass, PassCx, PassError};
use crate::ir::{order, DType, Granularity, Graph, NodeId, Op, QuantSpec, ScaleSource, ValueId, ZeroPoint};

/// `fold-scales`.
pub struct FoldScales;

impl Pass for FoldScales {
    fn name(&self) -> &'static str {
        "fold-scales"
    }

    fn run(&self, g: &mut Graph, cx: &mut PassCx) -> Result<bool, PassError> {
        let order =
            order::canonical_order(g).ok_or_else(|| PassError::Failed { pass: "fold-scales", message: "the graph has a cycle".into() })?;
        let (live, users) = (g.live_nodes(), live_users(g));
        let mut rewrites = vec![];
        for id in order.into_iter().filter(|id| live[id.index()]) {
            match match_dq_q(g, &users, id) {
                Some(Match::Apply(rw)) => rewrites.push(*rw),
                Some(Match::Decline { nodes, reason }) => nodes.iter().for_each(|&n| cx.report.declined(&loc(g, n), reason.clone())),
                None => {}
            }
        }
        for rw in &rewrites {
            apply(g, cx, rw);
        }
        if !rewrites.is_empty() {
            *g = order::compact(g);
        }
        Ok(!rewrites.is_empty())
    }
}

/// A matched DQ→Q pair and what it becomes.
struct Rewrite {
    dequantize: NodeId,
    quantize: NodeId,
    /// `None`: the pair is removed; `Some`: it becomes this `requantize`.
    requantize: Option<Op>,
}

/// What a match found.
enum Match {
    Apply(Box<Rewrite>),
    Decline { nodes: [NodeId; 2], reason: String },
}

/// `quantize(dequantize(q, s1), s2)`: elided, requantized, or declined (module doc).
fn match_dq_q(g: &Graph, users: &Users, id: NodeId) -> Option<Match> {
    let Op::Quantize(to) = &g.nodes[id].op else { return None };
    let d = g.nodes[id].inputs[0];
    let dequantize = g.values[d].producer;
    let Op::Dequantize(from) = &g.nodes[dequantize].op else { return None };
    let decline = |reason: &str| Some(Match::Decline { nodes: [dequantize, id], reason: reason.into() });
    if !read_by_quantizes_only(g, users, d) {
        return decline("the dequantize has readers other than quantizes, so it must stay");
    }
    let via = g.ty(d).dtype;
    let same_inputs = g.nodes[id].inputs[1..] == g.nodes[dequantize].inputs[1..];
    let q = g.nodes[dequantize].inputs[0];
    if from == to && same_inputs && round_trips(to, via, matches!(g.producer(q).op, Op::Quantize(_))) {
        return Some(Match::Apply(Box::new(Rewrite { dequantize, quantize: id, requantize: None })));
    }
    match requantize_op(from, to, via) {
        Ok(op) => Some(Match::Apply(Box::new(Rewrite { dequantize, quantize: id, requantize: Some(op) }))),
        Err(reason) => decline(&reason),
    }
}

/// True when every reader of `d` is a live quantize reading it as its data and `d` is no output.
fn read_by_quantizes_only(g: &Graph, users: &Users, d: ValueId) -> bool {
    let data_only = |&u: &NodeId| matches!(g.nodes[u].op, Op::Quantize(_)) && !g.nodes[u].inputs[1..].contains(&d);
    output_uses(g, d) == 0 && users[d].iter().all(data_only)
}

/// The literal per-tensor scale of `spec` with no (or a zero) zero point.
fn plain_per_tensor(spec: &QuantSpec) -> Option<f32> {
    let ScaleSource::Literal(s) = spec.scale else { return None };
    let no_zero = matches!(spec.zero_point, None | Some(ZeroPoint::Literal(0)));
    (spec.granularity == Granularity::PerTensor && no_zero).then_some(s)
}

/// `quantize(dequantize(q, s1) : via, s2) => requantize(q, s1, via, s2)` when both are plain
/// per-tensor (the requantize's output carries no zero point at all).
fn requantize_op(from: &QuantSpec, to: &QuantSpec, via: DType) -> Result<Op, String> {
    let Some(from_scale) = plain_per_tensor(from) else {
        return Err("the dequantize is not per-tensor with a literal scale and no zero point, so no requantize".into());
    };
    if to.is_dynamic() {
        return Err("the quantize computes its scale at run time, so no requantize".into());
    }
    if plain_per_tensor(to).is_none() || to.zero_point.is_some() {
        return Err("the quantize is not per-tensor with a literal scale and no zero point, so no requantize".into());
    }
    Ok(Op::Requantize { from_scale, via, to: to.clone() })
}

/// True when `quantize(dequantize(c, s) : via, s)` gives back every code `c` of `spec` (module doc).
fn round_trips(spec: &QuantSpec, via: DType, saturated: bool) -> bool {
    let ScaleSource::Literal(s) = spec.scale else { return false };
    let z = match spec.zero_point {
        None => 0.0,
        Some(ZeroPoint::Literal(z)) => z as f64,
        Some(ZeroPoint::Input) => return false,
    };
    let (unit, min_normal) = match via {
        DType::F32 => (2f64.powi(-24), f32::MIN_POSITIVE as f64),
        DType::F16 => (2f64.powi(-11), 2f64.powi(-14)),
        DType::BF16 => (2f64.powi(-8), f32::MIN_POSITIVE as f64),
        _ => return false,
    };
    // u for the rounding to `via`, 2⁻²⁴ each for the f32 product and quotient, and room for
    // the second-order terms.
    let e = unit + 2f64.powi(-22);
    let storage = spec.storage;
    let (min_c, max_c, precise) = match storage {
        DType::F8E4M3 | DType::F8E5M2 | DType::F4E2M1 => {
            let p = match storage {
                DType::F8E4M3 => 4,
                DType::F8E5M2 => 3,
                _ => 2,
            };
            let min = crate::numerics::decode_bits(1, storage) as f64;
            (min, storage.max_finite(), e < 2f64.powi(-(p + 1)))
        }
        _ => {
            let max = (storage.max_finite() - z).abs().max((storage.min_value() - z).abs());
            (1.0, max, max * e < 0.5)
        }
    };
    let s = s as f64;
    let in_range = s.is_finite() && s > 0.0 && min_c * s >= min_normal && max_c * s <= via.max_finite() / 2.0;
    let no_inf = storage != DType::F8E5M2 || saturated;
    precise && in_range && no_inf
}

fn apply(g: &mut Graph, cx: &mut PassCx, rw: &Rewrite) {
    let (dq_loc, q_loc) = (loc(g, rw.dequantize), loc(g, rw.quantize));
    let q = g.nodes[rw.dequantize].inputs[0];
    let out = g.nodes[rw.quantize].outputs[0];
    match &rw.requantize {
        None => {
            g.replace_all_uses(out, q);
            tracing::debug!(rule = "elide_round_trip", node = %rw.quantize);
            cx.report.folded(&dq_loc, "DQ→Q with equal scales removed");
            cx.report.folded(&q_loc, "DQ→Q with equal scales removed");
        }
        Some(op) => {
            let ty = g.ty(out).clone();
            let name = g.nodes[rw.quantize].name.clone();
            let node = g.add_node(op.clone(), &[q], vec![ty], name);
            g.replace_all_uses(out, g.nodes[node].outputs[0]);
            tracing::debug!(rule = "requantize", node = %rw.quantize);
            cx.report.fused(&dq_loc, "requantize", &q_loc);
            cx.report.fused(&q_loc, "requantize", &q_loc);
            cx.report.declined(&q_loc, "DQ→Q with different scales: one requantize kernel remains");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interp::{self, NoWeights, Tensor};

    /// `quantize(dequantize(c) : via)` on every finite code `c` of a per-tensor literal `spec`,
    /// through the interpreter: `(c, result)` pairs.
    fn round_trip_all_codes(spec: &QuantSpec, via: DType) -> Vec<(f32, f32)> {
        let (st, ScaleSource::Literal(s)) = (spec.storage, &spec.scale) else { unreachable!("literal scales only") };
        let zero = match spec.zero_point {
            Some(ZeroPoint::Literal(z)) => format!(", zero={z}"),
            _ => String::new(),
        };
        let attrs = format!("{{{st}, per_tensor, scale={s:?}{zero}}}");
        let codes: Vec<f32> = (0..1u32 << st.bits()).map(|b| crate::numerics::decode_bits(b, st)).filter(|c| c.is_finite()).collect();
        let n = codes.len();
        let text = format!(
            "graph \"t\" {{\n  %0 = input \"q\" : {st}[{n}]\n  %1 = dequantize %0 {attrs} : {via}[{n}]\n  %2 = quantize %1 {attrs} : {st}[{n}]\n  return \"q\" = %2\n}}"
        );
        let g = crate::ir::parse(&text).unwrap();
        let out = interp::run(&g, &NoWeights, &[("q", Tensor::from_f32_as(st, vec![n], codes.clone()))]).unwrap();
        codes.into_iter().zip(out[0].1.to_f32_vec()).collect()
    }

    /// Wherever the guard allows eliding, every finite code comes back bit for bit (NaN as NaN),
    /// over all storage types, the three `via` types and scales from tiny to huge.
    #[test]
    fn elision_guard_is_sound_for_every_code() {
        let scales = [1e-3, 0.0123, 0.037, 0.05, 1.0, 3.0, 100.0, 1e-30, 2f32.powi(-117), 1e-38, 1e30, 7e35];
        let mut specs = vec![];
        for st in [DType::F8E4M3, DType::F8E5M2, DType::F4E2M1, DType::I8, DType::U8, DType::I4, DType::U4] {
            for &s in &scales {
                specs.push(QuantSpec::per_tensor(st, s));
            }
        }
        specs
            .extend(scales.iter().map(|&s| QuantSpec { zero_point: Some(ZeroPoint::Literal(128)), ..QuantSpec::per_tensor(DType::U8, s) }));
        let mut elided = 0;
        for spec in &specs {
            for via in [DType::F32, DType::F16, DType::BF16] {
                if !round_trips(spec, via, true) {
                    continue;
                }
                elided += 1;
                for (c, back) in round_trip_all_codes(spec, via) {
                    let same = c.to_bits() == back.to_bits()
                        || (c.is_nan() && back.is_nan())
                        || (c == 0.0 && back == 0.0 && spec.storage.is_int());
                    assert!(same, "{spec:?} via {via}: code {c} came back as {back}");
                }
            }
        }
        assert!(elided > 60, "the guard should allow the common cases, allowed {elided}");
        for st in [DType::F8E4M3, DType::I8] {
            assert!(round_trips(&QuantSpec::per_tensor(st, 0.0123), DType::F32, false));
        }
    }

    /// The guard is not just cautious: these pairs it refuses really change codes.
    #[test]
    fn guard_refuses_real_counterexamples() {
        let u8_bf16 = QuantSpec::per_tensor(DType::U8, 0.0123);
        let e5m2_huge = QuantSpec::per_tensor(DType::F8E5M2, 7e35);
        for (spec, via, code, back) in [(&u8_bf16, DType::BF16, 167.0, 166.0), (&e5m2_huge, DType::F32, 512.0, 57344.0)] {
            assert!(!round_trips(spec, via, true));
            assert!(round_trip_all_codes(spec, via).contains(&(code, back)), "{spec:?} via {via}");
        }
    }

    #[test]
    fn report_names_folded_fused_and_declined_pairs() {
        let text = r#"
graph "t" {
  %0 = input "q" : f8e4m3[4,16]
  %1 = dequantize %0 {f8e4m3, per_tensor, scale=0.01} : f32[4,16] loc("a:out.dq")
  %2 = quantize %1 {f8e4m3, per_tensor, scale=0.01} : f8e4m3[4,16] loc("b:a.q")
  %3 = dequantize %0 {f8e4m3, per_tensor, scale=0.02} : f32[4,16] loc("c:out.dq")
  %4 = quantize %3 {f8e4m3, per_tensor, scale=0.03} : f8e4m3[4,16] loc("d:a.q")
  %5 = dequantize %0 {f8e4m3, per_tensor, scale=0.04} : f32[4,16] loc("e:out.dq")
  %6 = quantize %5 {f8e4m3, per_tensor, scale=0.04} : f8e4m3[4,16] loc("f:a.q")
  %7 = add %5, %5 : f32[4,16]
  return "b" = %2, "d" = %4, "f" = %6, "a" = %7
}"#;
        let mut g = crate::ir::parse(text).unwrap();
        let w = crate::passes::MemoryWeights::default();
        let mut cx = PassCx::new(&w);
        assert!(FoldScales.run(&mut g, &mut cx).unwrap());
        let report: Vec<String> = cx.report.finish(&g).iter().map(|e| format!("{} {:?}", e.qdq, e.outcome)).collect();
        let want = [
            r#"a:out.dq Folded { how: "DQ→Q with equal scales removed" }"#,
            r#"b:a.q Folded { how: "DQ→Q with equal scales removed" }"#,
            r#"c:out.dq Fused { into: "requantize", node: "d:a.q" }"#,
            r#"d:a.q Standalone { reason: "DQ→Q with different scales: one requantize kernel remains" }"#,
            r#"e:out.dq Standalone { reason: "the dequantize has readers other than quantizes, so it must stay" }"#,
            r#"f:a.q Standalone { reason: "the dequantize has readers other than quantizes, so it must stay" }"#,
        ];
        assert_eq!(report, want);
    }
}
