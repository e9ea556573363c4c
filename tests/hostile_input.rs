//! Hostile input never aborts: the reproductions of issue 14 (deep dimension expressions in a plan
//! with valid checksums, a megabyte of `[` for the IR parser, deeply nested JSON) each return an
//! error, every input the fuzzers ever crashed on (`tests/fixtures/fuzz/<target>/`) returns Ok or
//! Err, and the seed plan of the fuzz corpus stays valid.

use std::path::{Path, PathBuf};
use std::process::Command;

use qfuse::harness;
use qfuse::plan::{BufferMeta, DimExpr, Plan, PlanBuilder, PlanMeta, SectionKind, TensorSig, WeightMeta, MAX_DIM_DEPTH};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Runs `f` on a thread with a large stack: building, encoding and dropping a 100,000-deep
/// expression recurses (the writer trusts its input; only readers must not).
fn with_big_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new().stack_size(1 << 30).spawn(f).unwrap().join().unwrap()
}

/// A plan whose only input has one dimension, `depth` nested `CeilDiv`s of `B`, with valid
/// checksums (written by the ordinary writer).
fn plan_with_nested_dims(path: PathBuf, depth: usize) {
    with_big_stack(move || {
        let deep = (0..depth).fold(DimExpr::sym("B"), |e, _| DimExpr::CeilDiv(Box::new(e), 2));
        let mut meta = PlanMeta::new("deep", "sm_90a", (13, 0));
        meta.symbols = vec![("B".into(), 4)];
        meta.inputs = vec![TensorSig { name: "ids".into(), dtype: "i64".into(), shape: vec![deep], buffer: 0 }];
        meta.buffers = vec![BufferMeta { name: "%0".into(), dtype: "i64".into(), shape: vec![], bytes: 8, offset: 0 }];
        meta.peak_activation_bytes = 8;
        PlanBuilder::new(meta).write(&path).unwrap();
    })
}

#[test]
fn a_plan_with_100_000_nested_dims_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("deep.plan");
    plan_with_nested_dims(deep.clone(), 100_000);
    assert!(std::fs::metadata(&deep).unwrap().len() > 190_000);
    let err = Plan::load(&deep, None).map(drop).unwrap_err().to_string();
    assert!(err.contains(&format!("nested deeper than {MAX_DIM_DEPTH}")), "{err}");
    assert!(err.contains("deep.plan"), "the error names the file: {err}");
    let shallow = dir.path().join("shallow.plan");
    plan_with_nested_dims(shallow.clone(), MAX_DIM_DEPTH - 1);
    Plan::load(&shallow, None).unwrap();
}

#[test]
fn qfuse_inspect_exits_1_on_a_deep_plan() {
    let dir = tempfile::tempdir().unwrap();
    let deep = dir.path().join("deep.plan");
    plan_with_nested_dims(deep.clone(), 100_000);
    let out = Command::new(env!("CARGO_BIN_EXE_qfuse")).arg("inspect").arg(&deep).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("nested deeper"), "{stderr}");
}

/// Malformed `qmatmul_split` texts (no segment, one segment, widths overflowing u64, widths not
/// matching the weight) are errors, never panics.
#[test]
fn malformed_qmatmul_splits_are_errors() {
    let split = |segments: &str, rows: u64| {
        format!(
            "graph \"g\" {{\n  %0 = input \"x\" : f16[2,16]\n  %1 = weight @w : f16[{rows},16]\n  %2, %3 = qmatmul_split %0, %1 {{transpose_b, segments=[{segments}]}} : f16[2,64], f16[2,64]\n  return \"y\" = %2\n}}"
        )
    };
    let seg = |n: &str| format!("seg(n={n},alpha=1.0,acc=f16)");
    let huge = "9223372036854775807";
    for (segments, rows) in [
        (String::new(), 128),
        (seg("64"), 64),
        (format!("{},{},{}", seg(huge), seg(huge), seg(huge)), 128),
        (format!("{},{}", seg("64"), seg("32")), 128),
        (format!("{},{}", seg("-1"), seg("64")), 128),
    ] {
        let text = split(&segments, rows);
        assert!(parse_and_verify(&text).is_err(), "accepted:\n{text}");
    }
    let good = split(&format!("{},{}", seg("64"), seg("64")), 128);
    parse_and_verify(&good).unwrap_or_else(|e| panic!("the well-formed split is valid: {e}"));
}

/// Malformed `qmatmul_glu` texts (no step reading `up`, two, `up` in the up projection, a zero
/// or misfitting piece, an odd row count, an up projection with an output quantize) are errors,
/// never panics.
#[test]
fn malformed_qmatmul_glus_are_errors() {
    let glu = |rows: u64, tile: &str, gate: &str, up: &str| {
        format!(
            "graph \"g\" {{\n  %0 = input \"x\" : f16[2,16]\n  %1 = weight @w : f16[{rows},16]\n  %2 = qmatmul_glu %0, %1 {{transpose_b, tile={tile}, gate=seg({gate}), up=seg({up})}} : f16[2,16]\n  return \"y\" = %2\n}}"
        )
    };
    let gate = "alpha=1.0,acc=f16,epilogue=[silu(f16),mul(up,f16)]";
    let up = "alpha=1.0,acc=f16";
    for text in [
        glu(32, "8", "alpha=1.0,acc=f16,epilogue=[silu(f16)]", up),
        glu(32, "8", "alpha=1.0,acc=f16,epilogue=[mul(up,f16),mul(up,f16)]", up),
        glu(32, "8", gate, "alpha=1.0,acc=f16,epilogue=[mul(up,f16)]"),
        glu(32, "0", gate, up),
        glu(32, "-8", gate, up),
        glu(32, "12", gate, up),
        glu(33, "8", gate, up),
        glu(32, "8", gate, "alpha=1.0,acc=f16,out=f8e4m3,out_scale=0.5"),
        glu(32, "99999999999999999999", gate, up),
    ] {
        assert!(parse_and_verify(&text).is_err(), "accepted:\n{text}");
    }
    parse_and_verify(&glu(32, "8", gate, up)).unwrap_or_else(|e| panic!("the well-formed GLU is valid: {e}"));
}

fn parse_and_verify(text: &str) -> Result<(), String> {
    let g = qfuse::ir::parse(text).map_err(|e| e.to_string())?;
    qfuse::ir::verify(&g, "hostile").map_err(|e| format!("{e:?}"))
}

#[test]
fn a_megabyte_of_brackets_is_an_ir_parse_error() {
    let brackets = "[".repeat(1 << 20);
    assert!(qfuse::ir::parse(&brackets).is_err());
    let in_attribute = format!("graph \"g\" {{\n  %0 = input \"x\" : f32[4]\n  %1 = relu %0 {{{brackets}");
    let err = qfuse::ir::parse(&in_attribute).unwrap_err();
    assert!(err.message.contains("nested deeper"), "{err}");
    let calls = format!("graph \"g\" {{\n  %0 = input \"x\" : f32[4]\n  %1 = relu %0 {{{}", "f(".repeat(1 << 20));
    assert!(qfuse::ir::parse(&calls).unwrap_err().message.contains("nested deeper"));
}

#[test]
fn deeply_nested_json_is_an_error_naming_the_file() {
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("config.json"), &deep).unwrap();
    let err = qfuse::import::read_config(dir.path()).map(drop).unwrap_err().to_string();
    assert!(err.contains("config.json") && err.contains("recursion limit"), "{err}");
    let keyed = format!("{}1{}", r#"{"a":"#.repeat(100_000), "}".repeat(100_000));
    assert!(harness::config(keyed.as_bytes()).is_err());
    assert!(harness::tokenizer(deep.as_bytes()).is_err());
    let deep_normalizer =
        format!(r#"{{"normalizer":{}null{}}}"#, r#"{"type":"Sequence","normalizers":["#.repeat(10_000), "]}".repeat(10_000));
    assert!(harness::tokenizer(deep_normalizer.as_bytes()).is_err());
}

/// Every file under `tests/fixtures/fuzz/<target>/` (inputs a fuzzer crashed on, and smaller
/// hand-built copies of the issue's reproductions) through its target: Ok or Err, never a panic.
#[test]
fn fuzz_crashes_replay_without_panicking() {
    let mut replayed = 0;
    for (target, parse) in harness::TARGETS {
        let Ok(entries) = std::fs::read_dir(repo("tests/fixtures/fuzz").join(target)) else { continue };
        for entry in entries {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            let result = std::panic::catch_unwind(|| parse(&bytes));
            assert!(result.is_ok(), "{target}: {} panics", path.display());
            replayed += 1;
        }
    }
    eprintln!("{replayed} fuzz regression inputs replayed");
}

/// The seeds of the fuzz corpus (`fuzz/seeds/<target>/`) are valid inputs, so the fuzzers start
/// from files that reach deep into each parser.
#[test]
fn fuzz_seeds_are_valid_inputs() {
    for (target, parse) in harness::TARGETS {
        for entry in std::fs::read_dir(repo("fuzz/seeds").join(target)).unwrap() {
            let path = entry.unwrap().path();
            let result = parse(&std::fs::read(&path).unwrap());
            assert!(result.is_ok(), "{target}: {}: {result:?}", path.display());
        }
    }
}

/// Writes the generated plans: the fuzz seed `fuzz/seeds/plan/tiny.plan` (IR text, weight
/// sections of several storage widths, built without a GPU like `tests/plan_format.rs` builds its
/// plans) and the regression input `tests/fixtures/fuzz/plan/nested_dims_1000.plan`.
#[test]
#[ignore = "writes the generated fuzz plans; run after a format change"]
fn write_fuzz_plans() {
    plan_with_nested_dims(repo("tests/fixtures/fuzz/plan/nested_dims_1000.plan"), 1000);
    let ir_text = std::fs::read_to_string(repo("tests/ir/propagate-qdq/attention_qk_chain.ir")).unwrap();
    let mut meta = PlanMeta::new("tiny", "sm_90a", (13, 0));
    meta.ir_text = ir_text;
    meta.symbols = vec![("B".into(), 4), ("S".into(), 8)];
    let bs = DimExpr::sym("B").mul(DimExpr::sym("S"));
    meta.inputs =
        vec![TensorSig { name: "input_ids".into(), dtype: "i64".into(), shape: vec![DimExpr::sym("B"), DimExpr::sym("S")], buffer: 0 }];
    meta.outputs = vec![TensorSig { name: "y".into(), dtype: "f16".into(), shape: vec![bs.clone().ceil_div(2), 8.into()], buffer: 1 }];
    meta.buffers = vec![
        BufferMeta { name: "%0".into(), dtype: "i64".into(), shape: meta.inputs[0].shape.clone(), bytes: 256, offset: 0 },
        BufferMeta { name: "%1".into(), dtype: "f16".into(), shape: meta.outputs[0].shape.clone(), bytes: 256, offset: 256 },
    ];
    meta.peak_activation_bytes = 512;
    let weights: [(&str, &str, Vec<u64>, Vec<u8>); 3] = [
        ("w.f16", "f16", vec![2, 4], [0x00, 0x3c].repeat(8)),
        ("w.i8", "i8", vec![3, 3], (0..9).collect()),
        ("w.f4", "f4e2m1", vec![5], vec![0x21, 0x43, 0x05]),
    ];
    let mut b = PlanBuilder::new(meta);
    for (name, dtype, shape, bytes) in weights {
        let section = b.add_section(SectionKind::Weights, name, bytes);
        b.meta_mut().weights.push(WeightMeta { name: name.into(), dtype: dtype.into(), shape, section });
    }
    std::fs::create_dir_all(repo("fuzz/seeds/plan")).unwrap();
    b.write(&repo("fuzz/seeds/plan/tiny.plan")).unwrap();
}
