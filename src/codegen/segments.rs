//! Segmented GEMM epilogues (`qmatmul_split`): one GEMM over concatenated weights whose output
//! columns fall into segments, each with its own epilogue, result pointer and row stride.
//!
//! Every GEMM template (tiled, skinny, weight-only) inserts stage 2 of `gemm_store_tile.cuh` where
//! `tile`, `m0`, `n0`, `N`, `Y` and the epilogue inputs are in scope. A segmented epilogue
//! inserts instead a chain `if (n0 < end_0) { … } else if (n0 < end_1) { … } else { … }` whose
//! block `i` re-declares, in a nested scope, `N` as the segment's width, `n0` relative to the
//! segment's first column, `Y` as `Y<i>`, the segment's epilogue inputs and per-launch `f32`s
//! from their renamed kernel parameters (`s<i>_add0`, `s<i>_alpha`, …) and a shared per-column
//! input (`b_scale`, concatenated like the weight) offset to the segment, then runs the
//! segment's own unmodified stage 2. A block of the kernel's N tile must lie in one segment: the
//! lowering picks tiles dividing every segment width ([`check_tile`]). The branch is uniform per
//! block, so no thread diverges.
//!
//! Kernel parameters: the shared epilogue inputs (`a_scale`, `b_scale`: one pointer each), then
//! each segment's own inputs renamed `s<i>_<name>`, then `Y0, Y1, …`, `M`, then each segment's
//! scalars renamed `s<i>_<name>` — all per-layer values are arguments, so the layers of one
//! model share the kernel.

use super::expr::Expr;
use super::gemm::{c_type, store_tile, Epilogue, EpilogueInput, GemmError, Index};

/// One column range of a segmented GEMM: output columns `[lo, lo + n)`, stored by `epilogue`
/// (whose input names and scalars are the unsegmented kernel's: `a_scale`, `b_scale`, `add0`,
/// `alpha`, …) into its own `[.., M, n]` result.
#[derive(Debug, Clone, PartialEq)]
pub struct EpilogueSegment {
    /// First column of the segment in the concatenated weight.
    pub lo: u32,
    /// Columns of the segment (its result's N).
    pub n: u32,
    /// The segment's epilogue.
    pub epilogue: Epilogue,
}

/// Epilogue input names read from one kernel parameter by every segment.
pub const SHARED: [&str; 2] = ["a_scale", "b_scale"];

impl Epilogue {
    /// The segmented epilogue over `segments` (two or more, consecutive from column 0): the
    /// kernel's inputs are the shared ones (from the first segment) and every segment's others,
    /// renamed.
    pub fn segmented(segments: Vec<EpilogueSegment>) -> Result<Epilogue, String> {
        let first = segments.first().filter(|_| segments.len() >= 2).ok_or("a segmented epilogue needs two segments or more")?;
        let mut inputs: Vec<EpilogueInput> = first.epilogue.inputs.iter().filter(|i| is_shared(i)).cloned().collect();
        for (i, s) in segments.iter().enumerate() {
            let own = s.epilogue.inputs.iter().filter(|inp| !is_shared(inp));
            inputs.extend(own.map(|inp| EpilogueInput { name: renamed(i, &inp.name), ..inp.clone() }));
        }
        let store = first.epilogue.store;
        Ok(Epilogue { inputs, value: Expr::var("acc"), store, segments, glu: None })
    }
}

fn is_shared(i: &EpilogueInput) -> bool {
    SHARED.contains(&i.name.as_str())
}

fn renamed(segment: usize, name: &str) -> String {
    format!("s{segment}_{name}")
}

/// Every segment's per-launch `f32`s, renamed `s<i>_<name>`, in segment order.
pub(crate) fn scalars(segments: &[EpilogueSegment]) -> Vec<(String, f32)> {
    let each = |(i, s): (usize, &EpilogueSegment)| s.epilogue.scalars().into_iter().map(move |(n, v)| (renamed(i, &n), v));
    segments.iter().enumerate().flat_map(each).collect()
}

/// Checks each segment's epilogue, that the segments tile the columns from 0, agree on the
/// shared inputs, and that the kernel inputs are what [`Epilogue::segmented`] builds.
pub(crate) fn validate(epi: &Epilogue) -> Result<(), String> {
    let mut lo = 0u32;
    for (i, s) in epi.segments.iter().enumerate() {
        s.epilogue.validate().map_err(|e| format!("segment {i}: {e}"))?;
        if !s.epilogue.segments.is_empty() || s.lo != lo || s.n == 0 || s.n % 4 != 0 {
            return Err(format!("segment {i} covers [{}, +{}); expected a non-empty multiple of 4 columns from {lo}", s.lo, s.n));
        }
        lo = s.lo.checked_add(s.n).ok_or("segment columns overflow")?;
        let shared: Vec<&EpilogueInput> = s.epilogue.inputs.iter().filter(|i| is_shared(i)).collect();
        let first: Vec<&EpilogueInput> = epi.segments[0].epilogue.inputs.iter().filter(|i| is_shared(i)).collect();
        if shared != first {
            return Err(format!("segment {i} reads other shared inputs than segment 0"));
        }
    }
    let rebuilt = Epilogue::segmented(epi.segments.clone())?;
    if rebuilt.inputs != epi.inputs {
        return Err("the segmented epilogue's kernel inputs are not its segments' inputs".into());
    }
    Ok(())
}

/// A block of `tile` columns lies in one segment when `tile` divides every segment boundary.
pub fn check_tile(segments: &[EpilogueSegment], tile: u32) -> Result<(), String> {
    match segments.iter().find(|s| tile == 0 || s.lo % tile != 0 || s.n % tile != 0) {
        Some(s) => Err(format!("the kernel's {tile}-column tile straddles the segment [{}, +{})", s.lo, s.n)),
        None => Ok(()),
    }
}

/// The `store_tile` text of a segmented epilogue: the dispatch chain of the module doc.
pub(crate) fn store_chain(epi: &Epilogue) -> Result<String, GemmError> {
    epi.validate().map_err(GemmError::Epilogue)?;
    let mut out = String::from("    const int qf_n0_all = n0;\n");
    for inp in epi.inputs.iter().filter(|i| is_shared(i) && i.index == Index::PerColumn) {
        out += &format!("    const {ty}* const qf_{name}_all = {name};\n", ty = c_type(inp.dtype), name = inp.name);
    }
    let last = epi.segments.len() - 1;
    for (i, s) in epi.segments.iter().enumerate() {
        let test = if i == 0 {
            format!("    if (qf_n0_all < {}) {{\n", s.lo + s.n)
        } else if i < last {
            format!("    }} else if (qf_n0_all < {}) {{\n", s.lo + s.n)
        } else {
            "    } else {\n".to_string()
        };
        out += &test;
        out += &aliases(i, s);
        out += &store_tile(&s.epilogue)?;
    }
    out += "    }\n";
    Ok(out)
}

/// The nested-scope declarations of segment `i` (module doc).
fn aliases(i: usize, s: &EpilogueSegment) -> String {
    let mut out = format!(
        "    constexpr int N = {n};\n    const int n0 = qf_n0_all - {lo};\n    {y}* __restrict__ const Y = Y{i};\n",
        n = s.n,
        lo = s.lo,
        y = c_type(s.epilogue.store.dtype()),
    );
    for inp in &s.epilogue.inputs {
        let ty = c_type(inp.dtype);
        out += &match (is_shared(inp), inp.index) {
            (true, Index::PerColumn) => format!("    const {ty}* __restrict__ const {0} = qf_{0}_all + {1};\n", inp.name, s.lo),
            (true, _) => continue,
            (false, _) => format!("    const {ty}* __restrict__ const {0} = {1};\n", inp.name, renamed(i, &inp.name)),
        };
    }
    for (name, _) in s.epilogue.scalars() {
        out += &format!("    const float {name} = {};\n", renamed(i, &name));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codegen::gemm::Store;
    use crate::ir::DType;

    fn segment(lo: u32, n: u32, bias: bool) -> EpilogueSegment {
        let mut epilogue = Epilogue::bias_f16(0.5, bias);
        if !bias {
            epilogue.store = Store::E4M3 { scale: 0.25 };
        }
        EpilogueSegment { lo, n, epilogue }
    }

    /// Kernel inputs are each segment's own inputs renamed; scalars too, per segment, in order.
    #[test]
    fn segments_rename_inputs_and_scalars() {
        let e = Epilogue::segmented(vec![segment(0, 128, true), segment(128, 64, false)]).expect("segmented");
        let names: Vec<&str> = e.inputs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, ["s0_bias"]);
        let scalars: Vec<String> = e.scalars().into_iter().map(|(n, _)| n).collect();
        assert_eq!(scalars, ["s1_out_scale", "s1_out_rcp"]);
        assert_eq!(e.outputs(), [("Y0".to_string(), DType::F16), ("Y1".to_string(), DType::F8E4M3)]);
        e.validate().expect("valid");
    }

    /// Gaps, overlaps and a tile straddling two segments are errors.
    #[test]
    fn misplaced_segments_and_tiles_are_errors() {
        let gap = Epilogue::segmented(vec![segment(0, 128, true), segment(192, 64, true)]).expect("built");
        assert!(gap.validate().unwrap_err().contains("expected a non-empty multiple of 4 columns from 128"));
        let ok = [segment(0, 192, true), segment(192, 64, true)];
        assert!(check_tile(&ok, 64).is_ok());
        assert!(check_tile(&ok, 128).unwrap_err().contains("straddles the segment [0, +192)"));
        assert!(Epilogue::segmented(vec![segment(0, 64, true)]).is_err(), "one segment is no split");
    }
}
