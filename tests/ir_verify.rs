//! Negative tests for the IR front end: invalid IR must be rejected with a helpful report.
//!
//! - `tests/ir/verify/<case>.ir`: text that parses but breaks a verifier invariant; the full
//!   report is an `insta` snapshot in `snapshots/ir_verify__<case>.snap`.
//! - Parse errors: each names its 1-based line and column and what went wrong.
//! - Structural corruption that the text format cannot express (dangling ids, producer mismatch,
//!   cycles), built programmatically: the verifier must report it and never panic.
//!
//! Bless changed reports with `INSTA_UPDATE=always cargo test --test ir_verify` (or
//! `cargo insta review`) and read every changed snapshot.

use qfuse::ir::{self, DType, Dim, Granularity, Graph, NodeId, Op, ParseError, QuantSpec, ScaleSource, SymId, ValueId};
use std::path::PathBuf;

fn case_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/ir/verify")
}

/// Snapshots `report` as `snapshots/ir_verify__<name>.snap`, described by `description`.
fn snapshot(name: &str, description: &str, input_file: Option<&PathBuf>, report: &str) {
    let mut settings = insta::Settings::clone_current();
    settings.set_snapshot_path("../snapshots");
    settings.set_prepend_module_to_snapshot(false);
    settings.set_omit_expression(true);
    settings.set_description(description);
    if let Some(path) = input_file {
        settings.set_input_file(path);
    }
    settings.bind(|| insta::assert_snapshot!(format!("ir_verify__{name}"), report));
}

/// The verifier's report for `g`, which must be invalid.
fn report(g: &Graph) -> String {
    match ir::verify(g, "after parse") {
        Ok(()) => panic!("the verifier accepted an invalid graph:\n{}", ir::print::print_exact(g)),
        Err(e) => {
            assert!(!e.errors.is_empty(), "Err with no errors");
            e.to_string()
        }
    }
}

/// Parses `tests/ir/verify/<case>.ir` (which must parse) and snapshots the verifier's report.
fn check_invalid(case: &str) {
    let path = case_dir().join(format!("{case}.ir"));
    let src = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let g = ir::parse(&src).unwrap_or_else(|e| panic!("{case}.ir must parse (the verifier is under test): {e}"));
    // The file's leading `#` comment says what is wrong.
    let description: Vec<&str> = src.lines().map_while(|l| l.strip_prefix('#')).map(str::trim).collect();
    assert!(!description.is_empty(), "{case}.ir should start with a `# what is wrong` comment");
    snapshot(case, &description.join(" "), Some(&path), &report(&g));
}

macro_rules! invalid_ir {
    ($($case:ident),* $(,)?) => {
        const CASES: &[&str] = &[$(stringify!($case)),*];
        $(
            #[test]
            fn $case() {
                check_invalid(stringify!($case));
            }
        )*
    };
}

invalid_ir!(
    matmul_contraction_mismatch,
    wrong_output_type,
    broadcast_failure,
    dequantize_storage_mismatch,
    per_channel_scale_wrong_length,
    dequantize_dynamic_scale,
    zero_point_on_f8,
    quantize_to_f32,
    reshape_element_count,
    transpose_bad_perm,
    layernorm_gamma_wrong_length,
    gather_f32_indices,
    duplicate_input_names,
    no_outputs,
    several_errors,
    qmatmul_mixed_families,
    attention_heads_do_not_divide,
    attention_fp8_f16_operands,
    attention_f8_operands_without_fp8,
    attention_fp8_via_f32,
    attention_fp8_nonpositive_p_scale,
    embed_layernorm_table_dtype,
    prologue_norm_two_readers,
    prologue_norm_dynamic_quantize,
);

/// Every `.ir` file in the case directory has a test above (and vice versa).
#[test]
fn every_case_file_is_tested() {
    let mut files: Vec<String> = std::fs::read_dir(case_dir())
        .expect("tests/ir/verify exists")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|x| x == "ir"))
        .map(|p| p.file_stem().expect("stem").to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut cases: Vec<String> = CASES.iter().map(|s| s.to_string()).collect();
    cases.sort();
    assert_eq!(files, cases, "add new .ir files to invalid_ir!(...)");
}

/// The report lists every violation, not only the first.
#[test]
fn several_errors_are_all_reported() {
    let src = std::fs::read_to_string(case_dir().join("several_errors.ir")).unwrap();
    let err = ir::verify(&ir::parse(&src).unwrap(), "after parse").unwrap_err();
    let mut nodes: Vec<Option<NodeId>> = err.errors.iter().map(|e| e.node).collect();
    nodes.sort();
    assert_eq!(nodes, [None, Some(NodeId(1)), Some(NodeId(3)), Some(NodeId(5)), Some(NodeId(7)), Some(NodeId(8))]);
}

// ---------------------------------------------------------------------------------------------
// Parse errors
// ---------------------------------------------------------------------------------------------

fn parse_err(src: &str) -> ParseError {
    match ir::parse(src) {
        Ok(g) => panic!("parsed invalid text:\n{}", ir::print::print_exact(&g)),
        Err(e) => e,
    }
}

fn err(line: usize, col: usize, message: &str) -> ParseError {
    ParseError { line, col, message: message.into() }
}

const USE_BEFORE_DEF: &str = "graph \"t\" {
  %0 = input \"x\" : f32[4]
  %1 = add %0, %5 : f32[4]
  return \"y\" = %1
}";

const UNDECLARED_SYMBOL: &str = "graph \"t\" {
  sym B max=4
  %0 = input \"x\" : f32[B,S]
  return \"y\" = %0
}";

const UNKNOWN_OP: &str = "graph \"t\" {
  %0 = input \"x\" : f32[4]
  %1 = frobnicate %0 : f32[4]
  return \"y\" = %1
}";

const UNKNOWN_DTYPE: &str = "graph \"t\" {
  %0 = input \"x\" : f33[4]
  return \"y\" = %0
}";

#[test]
fn parse_error_use_before_def() {
    assert_eq!(parse_err(USE_BEFORE_DEF), err(3, 16, "%5 is used before it is defined"));
}

#[test]
fn parse_error_undeclared_symbol() {
    let e = parse_err(UNDECLARED_SYMBOL);
    assert_eq!((e.line, e.message.as_str()), (3, "undeclared symbol `S`"));
}

#[test]

fn parse_error_undeclared_symbol_column() {
    assert_eq!(parse_err(UNDECLARED_SYMBOL), err(3, 26, "undeclared symbol `S`"));
}

#[test]
fn parse_error_unknown_op() {
    let e = parse_err(UNKNOWN_OP);
    assert_eq!((e.line, e.message.as_str()), (3, "unknown op `frobnicate`"));
}

#[test]

fn parse_error_unknown_op_column() {
    assert_eq!(parse_err(UNKNOWN_OP), err(3, 8, "unknown op `frobnicate`"));
}

#[test]
fn parse_error_unknown_dtype() {
    let e = parse_err(UNKNOWN_DTYPE);
    assert_eq!((e.line, e.message.as_str()), (2, "unknown dtype `f33`"));
}

#[test]

fn parse_error_unknown_dtype_column() {
    assert_eq!(parse_err(UNKNOWN_DTYPE), err(2, 20, "unknown dtype `f33`"));
}

#[test]
fn parse_error_double_definition() {
    let src = "graph \"t\" {\n  %0 = input \"x\" : f32[4]\n  %1 = neg %0 : f32[4]\n  %1 = abs %0 : f32[4]\n  return \"y\" = %1\n}";
    assert_eq!(parse_err(src), err(4, 3, "%1 is defined twice"));
}

#[test]
fn parse_error_double_definition_in_one_node() {
    let src = "graph \"t\" {\n  %0 = input \"x\" : f32[4]\n  %1, %1 = quantize %0 {i8, per_tensor, scale=dynamic(f32)} : i8[4], f32[]\n}";
    assert_eq!(parse_err(src), err(3, 7, "%1 is defined twice"));
}

#[test]
fn parse_error_unterminated_string() {
    let src = "graph \"t\" {\n  %0 = input \"x\" : f32[4]\n  return \"y = %0\n}\n";
    assert_eq!(parse_err(src), err(3, 10, "unterminated string"));
}

#[test]
fn parse_error_unterminated_string_mid_file() {
    // Strings may span lines (a `loc` can hold a newline), so an unclosed quote swallows text up
    // to the next quote and the error names the *last* opening quote, here `"y` on line 3.
    let src = "graph \"t\" {\n  %0 = input \"x : f32[4]\n  return \"y\" = %0\n}\n";
    assert_eq!(parse_err(src), err(3, 12, "unterminated string"));
}

#[test]
fn parse_error_undeclared_symbol_declared_later() {
    // Symbols must be declared before the first use, like values.
    let src = "graph \"t\" {\n  %0 = input \"x\" : f32[B]\n  sym B max=4\n}";
    assert_eq!(parse_err(src).line, 2);
}

#[test]
fn parse_error_symbol_declared_twice() {
    let src = "graph \"t\" {\n  sym B max=4\n  sym B max=8\n}";
    let e = parse_err(src);
    assert_eq!((e.line, e.message.as_str()), (3, "symbol `B` declared twice"));
}

const TYPE_COUNT: &str = "graph \"t\" {\n  %0 = input \"x\" : f32[4]\n  %1, %2 = neg %0 : f32[4]\n}";

#[test]
fn parse_error_type_count() {
    assert_eq!(parse_err(TYPE_COUNT).message, "2 value(s) defined but 1 type(s) given");
}

#[test]

fn parse_error_type_count_position() {
    assert_eq!(parse_err(TYPE_COUNT), err(3, 3, "2 value(s) defined but 1 type(s) given"));
}

#[test]
fn parse_error_unexpected_character() {
    let src = "graph \"t\" {\n  %0 = input \"x\" : f32[4] ;\n}";
    assert_eq!(parse_err(src), err(2, 27, "unexpected character `;`"));
}

#[test]
fn parse_error_bad_escape() {
    let src = "graph \"t\" {\n  %0 = input \"a\\nb\" : f32[4]\n}";
    assert_eq!(parse_err(src), err(2, 14, "bad escape in string"));
}

#[test]
fn parse_error_missing_attribute() {
    let src = "graph \"t\" {\n  %0 = input \"x\" : f32[4]\n  %1 = softmax %0 : f32[4]\n}";
    let e = parse_err(src);
    assert_eq!((e.line, e.message.as_str()), (3, "missing attribute `axis`"));
}

#[test]
fn parse_error_unknown_rounding() {
    let src = "graph \"t\" {\n  %0 = input \"x\" : f32[4]\n  %1, %2 = quantize %0 {f4e2m1, block(0:2), scale=dynamic(e8m0,sideways)} : f4e2m1[4], e8m0[2]\n}";
    let e = parse_err(src);
    assert_eq!((e.line, e.message.as_str()), (3, "unknown e8m0 rounding `sideways`"));
}

#[test]
fn parse_error_trailing_text() {
    let src = "graph \"t\" {\n}\ngraph";
    assert_eq!(parse_err(src), err(3, 1, "unexpected `graph` after the graph"));
}

// ---------------------------------------------------------------------------------------------
// Structural corruption (not expressible in text)
// ---------------------------------------------------------------------------------------------

/// `x → neg → abs → y`, then `corrupt` breaks it.
fn corrupted(corrupt: impl FnOnce(&mut Graph)) -> Graph {
    let mut g =
        ir::parse("graph \"t\" {\n  %0 = input \"x\" : f32[4]\n  %1 = neg %0 : f32[4]\n  %2 = abs %1 : f32[4]\n  return \"y\" = %2\n}")
            .unwrap();
    ir::verify(&g, "before corruption").unwrap();
    corrupt(&mut g);
    g
}

#[test]
fn structural_operand_out_of_range() {
    let g = corrupted(|g| g.nodes[NodeId(1)].inputs[0] = ValueId(99));
    snapshot("structural_operand_out_of_range", "neg reads %99, which does not exist", None, &report(&g));
}

#[test]
fn structural_output_out_of_range() {
    let g = corrupted(|g| g.nodes[NodeId(1)].outputs[0] = ValueId(99));
    snapshot("structural_output_out_of_range", "neg defines %99, which does not exist", None, &report(&g));
}

#[test]
fn structural_graph_output_out_of_range() {
    let g = corrupted(|g| g.outputs[0].1 = ValueId(99));
    snapshot("structural_graph_output_out_of_range", "the graph returns %99, which does not exist", None, &report(&g));
}

#[test]
fn structural_producer_mismatch() {
    let g = corrupted(|g| g.values[ValueId(1)].producer = NodeId(0));
    snapshot("structural_producer_mismatch", "%1 claims input n0 as its producer; neg defines it", None, &report(&g));
}

#[test]
fn structural_slot_mismatch() {
    let g = corrupted(|g| g.values[ValueId(1)].slot = 1);
    snapshot("structural_slot_mismatch", "%1 claims slot 1 of neg, which has one output", None, &report(&g));
}

#[test]
fn structural_self_loop() {
    let g = corrupted(|g| g.nodes[NodeId(1)].inputs[0] = ValueId(1));
    snapshot("structural_self_loop", "neg reads its own result", None, &report(&g));
}

#[test]
fn structural_cycle() {
    // neg reads abs's result and abs reads neg's.
    let g = corrupted(|g| g.nodes[NodeId(1)].inputs[0] = ValueId(2));
    snapshot("structural_cycle", "neg reads abs's result and abs reads neg's", None, &report(&g));
}

#[test]
fn structural_undeclared_symbol() {
    let g = corrupted(|g| {
        g.values[ValueId(0)].ty.shape[0] = Dim::Sym(SymId(3));
        g.values[ValueId(1)].ty.shape[0] = Dim::Sym(SymId(3));
        g.values[ValueId(2)].ty.shape[0] = Dim::Sym(SymId(3));
    });
    snapshot("structural_undeclared_symbol", "every value uses symbol 3 of a graph with no symbols", None, &report(&g));
}

#[test]
fn structural_wrong_arity() {
    let g = corrupted(|g| g.nodes[NodeId(2)].inputs.push(ValueId(0)));
    snapshot("structural_wrong_arity", "abs gets a second operand", None, &report(&g));
}

#[test]

fn structural_producer_out_of_range() {
    let g = corrupted(|g| g.values[ValueId(1)].producer = NodeId(99));
    let r = report(&g);
    assert!(r.contains("%1 is not an output of its producer n99"), "{r}");
}

#[test]

fn structural_dequantize_missing_scale_operand() {
    let g = corrupted(|g| {
        let spec = QuantSpec { storage: DType::I8, granularity: Granularity::PerTensor, scale: ScaleSource::Input, zero_point: None };
        g.nodes[NodeId(1)].op = Op::Dequantize(spec);
    });
    let r = report(&g);
    assert!(r.contains("dequantize takes 2 input(s), got 1"), "{r}");
}

#[test]

fn structural_input_without_outputs() {
    let g = corrupted(|g| g.nodes[NodeId(0)].outputs.clear());
    let r = report(&g);
    assert!(r.contains("missing declared output type"), "{r}");
}
