use qfuse::ir::{self, *};

fn base() -> Graph {
    ir::parse("graph \"t\" {\n  %0 = input \"x\" : f32[4]\n  %1 = neg %0 : f32[4]\n  %2 = abs %1 : f32[4]\n  return \"y\" = %2\n}\n").unwrap()
}

fn run(name: &str, f: impl FnOnce(&mut Graph)) {
    let mut g = base();
    f(&mut g);
    let r = std::panic::catch_unwind(move || ir::verify(&g, "x").map_err(|e| e.to_string()));
    println!("== {name}: {r:?}");
}

#[test]
fn explore() {
    run("operand oob", |g| g.nodes[NodeId(1)].inputs[0] = ValueId(99));
    run("output oob", |g| g.nodes[NodeId(1)].outputs[0] = ValueId(99));
    run("producer other", |g| g.values[ValueId(1)].producer = NodeId(2));
    run("producer oob", |g| g.values[ValueId(1)].producer = NodeId(99));
    run("slot wrong", |g| g.values[ValueId(1)].slot = 3);
    run("self cycle", |g| g.nodes[NodeId(1)].inputs[0] = ValueId(1));
    run("2 cycle", |g| g.nodes[NodeId(1)].inputs[0] = ValueId(2));
    run("graph output oob", |g| g.outputs[0].1 = ValueId(99));
    run("input no outputs", |g| g.nodes[NodeId(0)].outputs.clear());
    run("undeclared sym", |g| g.values[ValueId(0)].ty.shape[0] = Dim::Sym(SymId(5)));
    run("dq missing scale", |g| { g.nodes[NodeId(1)].op = Op::Dequantize(QuantSpec { storage: DType::I8, granularity: Granularity::PerTensor, scale: ScaleSource::Input, zero_point: None }); });
    run("q missing zero", |g| { g.nodes[NodeId(1)].op = Op::Quantize(QuantSpec { storage: DType::I8, granularity: Granularity::PerTensor, scale: ScaleSource::Literal(1.0), zero_point: Some(ZeroPoint::Input) }); });
    run("undeclared sym on oob producer", |g| { g.values[ValueId(1)].ty.shape[0] = Dim::Sym(SymId(5)); g.values[ValueId(1)].producer = NodeId(99); });
    run("input output oob", |g| g.nodes[NodeId(0)].outputs[0] = ValueId(99));
}
