//! Every pass on IR text: each `tests/ir/<pass>/<case>.ir` runs through that one pass.
//!
//! A case's leading comments say what to expect:
//! - `# expect: fires` or `# expect: unchanged` (required; "must not fire" cases use the latter),
//! - `# tolerance: exact` (default), `ulp` (one unit in the last place of the output dtype, at
//!   the value or at the output's largest value, whichever is larger), or
//!   `code` (one step of the output's quantized storage code).
//!
//! For each case the before/after diff is an insta snapshot (`snapshots/passes__<pass>__<case>`),
//! the result must verify, and the interpreter must give the same outputs before and after on
//! random inputs (the pass keeps the numbers).

use qfuse::interp::{self, Tensor};
use qfuse::ir::{self, DType, Dim, Graph, Op};
use qfuse::passes::{pipeline, MemoryWeights, PassCx, Weights};
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Tolerance {
    Exact,
    Ulp,
    Code,
}

struct Case {
    pass: String,
    name: String,
    path: PathBuf,
    text: String,
    fires: bool,
    tolerance: Tolerance,
}

fn directive<'a>(text: &'a str, key: &str) -> Option<&'a str> {
    text.lines().filter_map(|l| l.trim().strip_prefix('#')).find_map(|l| l.trim().strip_prefix(key)).map(str::trim)
}

fn cases() -> Vec<Case> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/ir");
    let mut out = vec![];
    for pass in pipeline::fusion() {
        let dir = root.join(pass.name());
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        let mut files: Vec<PathBuf> =
            entries.filter_map(|e| e.ok().map(|e| e.path())).filter(|p| p.extension().is_some_and(|x| x == "ir")).collect();
        files.sort();
        for path in files {
            if out.iter().any(|c: &Case| c.path == path) {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            let fires = match directive(&text, "expect:") {
                Some("fires") => true,
                Some("unchanged") => false,
                other => panic!("{}: needs `# expect: fires|unchanged`, got {other:?}", path.display()),
            };
            let tolerance = match directive(&text, "tolerance:") {
                None | Some("exact") => Tolerance::Exact,
                Some("ulp") => Tolerance::Ulp,
                Some("code") => Tolerance::Code,
                Some(other) => panic!("{}: unknown tolerance {other}", path.display()),
            };
            let name = path.file_stem().unwrap().to_string_lossy().into_owned();
            out.push(Case { pass: pass.name().into(), name, path, text, fires, tolerance });
        }
    }
    out
}

/// Deterministic values in [-1, 1).
fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

fn concrete(g: &Graph, shape: &[Dim]) -> Vec<usize> {
    shape
        .iter()
        .map(|d| match d {
            Dim::Fixed(n) => *n as usize,
            Dim::Sym(s) => g.symbols[*s].max.min(3) as usize,
        })
        .collect()
}

/// A tensor of `dtype` and `shape` with values typical for its role.
fn random_tensor(dtype: DType, shape: Vec<usize>, seed: u64, positive: bool) -> Tensor {
    let n = shape.iter().product();
    if matches!(dtype, DType::I64 | DType::I32) {
        return Tensor::i64(shape, noise(n, seed).iter().map(|x| (x.abs() * 2.0) as i64).collect());
    }
    let top = if dtype.is_quantized_storage() { dtype.max_finite() as f32 } else { 2.0 };
    let vals = noise(n, seed).into_iter().map(|x| if positive { 0.01 + x.abs() * 0.05 } else { x * top });
    Tensor::from_f32_as(dtype, shape, vals.collect())
}

fn weights_for(g: &Graph) -> MemoryWeights {
    let w = MemoryWeights::default();
    for (i, node) in g.nodes.values().enumerate() {
        if let Op::Weight { name } = &node.op {
            let ty = g.ty(node.outputs[0]);
            let positive = name.contains("scale");
            w.insert(name.clone(), random_tensor(ty.dtype, concrete(g, &ty.shape), 1000 + i as u64, positive));
        }
    }
    w
}

fn inputs_for(g: &Graph, seed: u64) -> Vec<(String, Tensor)> {
    g.inputs()
        .into_iter()
        .enumerate()
        .map(|(i, (name, v))| {
            let ty = g.ty(v);
            (name.to_string(), random_tensor(ty.dtype, concrete(g, &ty.shape), seed + i as u64, false))
        })
        .collect()
}

/// The spacing of `dtype` at magnitude `x`, subnormals included.
fn spacing(x: f32, dtype: DType) -> f32 {
    let (mantissa, min_normal) = match dtype {
        DType::F16 => (10, 2f32.powi(-14)),
        DType::BF16 => (7, f32::MIN_POSITIVE),
        _ => (23, f32::MIN_POSITIVE),
    };
    let x = x.abs().max(min_normal);
    2f32.powi(x.log2().floor() as i32 - mantissa)
}

fn compare(case: &Case, before: &[(String, Tensor)], after: &[(String, Tensor)]) {
    for ((name, a), (_, b)) in before.iter().zip(after) {
        assert_eq!(a.shape, b.shape, "{}: output {name} changed shape", case.path.display());
        let (x, y) = (a.to_f32_vec(), b.to_f32_vec());
        // Reassociating a sum errs relative to Σ|terms|, bounded by the tensor's largest value.
        let amax = x.iter().chain(&y).fold(0.0f32, |m, v| if v.is_finite() { m.max(v.abs()) } else { m });
        for (i, (&p, &q)) in x.iter().zip(&y).enumerate() {
            let same = p == q || (p.is_nan() && q.is_nan());
            let ok = same
                || match case.tolerance {
                    Tolerance::Exact => false,
                    Tolerance::Ulp => (p - q).abs() <= spacing(p.abs().max(q.abs()), b.dtype).max(spacing(amax, b.dtype)),
                    Tolerance::Code => {
                        let code = |v: f32| qfuse::numerics::encode_bits(v, b.dtype) as i64;
                        (code(p) - code(q)).abs() <= 1 || (p - q).abs() <= spacing(p.abs().max(q.abs()), DType::F32)
                    }
                };
            assert!(ok, "{}: output {name}[{i}] was {p} before the pass, {q} after (tolerance {:?})", case.path.display(), case.tolerance);
        }
    }
}

fn run_case(case: &Case) {
    let before = ir::parse(&case.text).unwrap_or_else(|e| panic!("{}: {e}", case.path.display()));
    ir::verify(&before, "before the pass").unwrap_or_else(|e| panic!("{}: {e}", case.path.display()));
    let weights = weights_for(&before);
    let mut after = before.clone();
    let pass = pipeline::by_name(&case.pass).unwrap();
    let mut cx = PassCx::new(&weights);
    let changed = pass.run(&mut after, &mut cx).unwrap_or_else(|e| panic!("{}: {e}", case.path.display()));
    ir::verify(&after, &format!("after pass {}", case.pass)).unwrap_or_else(|e| panic!("{}: {e}", case.path.display()));
    let (old, new) = (ir::print(&before), ir::print(&after));
    assert_eq!(changed, case.fires, "{}: pass reported changed={changed}", case.path.display());
    if !case.fires {
        assert_eq!(old, new, "{}: a pass that reports no change must leave the graph alone", case.path.display());
    }
    let diff = similar::TextDiff::from_lines(&old, &new).unified_diff().context_radius(2).header("before", "after").to_string();
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path(concat!(env!("CARGO_MANIFEST_DIR"), "/snapshots"));
    settings.set_prepend_module_to_snapshot(false);
    settings.set_input_file(&case.path);
    settings.bind(|| {
        insta::assert_snapshot!(
            format!("passes__{}__{}", case.pass, case.name),
            if diff.is_empty() { "(no change)\n".into() } else { diff }
        )
    });
    for seed in [1u64, 2, 3] {
        let inputs = inputs_for(&before, seed * 7919);
        let bind: Vec<(&str, Tensor)> = inputs.iter().map(|(n, t)| (n.as_str(), t.clone())).collect();
        let a = interp::run(&before, &weights, &bind).unwrap_or_else(|e| panic!("{}: before: {e}", case.path.display()));
        let b = interp::run(&after, &weights, &bind).unwrap_or_else(|e| panic!("{}: after: {e}", case.path.display()));
        compare(case, &a, &b);
    }
}

#[test]
fn pass_cases() {
    let cases = cases();
    let mut failures = vec![];
    for case in &cases {
        if let Err(e) = std::panic::catch_unwind(|| run_case(case)) {
            let msg = e.downcast_ref::<String>().cloned().or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()));
            failures.push(format!("{}: {}", case.path.display(), msg.unwrap_or_default()));
        }
    }
    assert!(failures.is_empty(), "{} of {} pass cases failed:\n{}", failures.len(), cases.len(), failures.join("\n\n"));
}

#[test]
fn every_pass_has_firing_and_non_firing_cases() {
    let cases = cases();
    for pass in pipeline::fusion() {
        let mine: Vec<&Case> = cases.iter().filter(|c| c.pass == pass.name()).collect();
        assert!(mine.iter().any(|c| c.fires), "pass {} has no `# expect: fires` case under tests/ir/{}/", pass.name(), pass.name());
        assert!(mine.iter().any(|c| !c.fires), "pass {} has no `# expect: unchanged` case under tests/ir/{}/", pass.name(), pass.name());
    }
}
